"""The one exception type users see: what was wrong, where, and what was expected."""


class InputError(ValueError):
    """Bad user input (a file, a geometry, a model). The message is meant for the user as is."""

    def __init__(self, source, problem: str, expected: str | None = None):
        self.source = str(source) if source is not None else None
        self.problem = problem
        self.expected = expected
        where = f"{self.source}: " if self.source else ""
        tail = f" (expected {expected})" if expected else ""
        super().__init__(f"{where}{problem}{tail}")
