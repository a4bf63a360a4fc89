"""The exceptions users see: bad input (what was wrong, where, what was expected) and cancellation."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a file, a geometry, a model, an option). The message is meant for the user as is.

    ``source`` names the file or the option's field (``"optimizer"``, not ``"--optimizer"``): the
    command line and the Slicer panel each translate fields into their own words.
    """

    def __init__(self, source, problem: str, expected: str | None = None):
        self.source = str(source) if source is not None else None
        self.problem = problem
        self.expected = expected
        where = f"{self.source}: " if self.source else ""
        tail = f" (expected {expected})" if expected else ""
        super().__init__(f"{where}{problem}{tail}")

    def renamed(self, source) -> "InputError":
        """The same error attributed to ``source`` (a flag, a widget) instead of a field."""
        return InputError(source, self.problem, self.expected)


class Cancelled(RuntimeError):
    """Raised when the caller's cancel flag is set between iterations."""
