"""Run by another interpreter (Python 3.9, the oldest Slicer release's; 3.12): every module of
SphericalRegLib and of the Slicer module compiles and imports, and annotations evaluate.

    python3.9 import_check.py REPO_ROOT [--all-hints]

Third-party packages that interpreter lacks (torch, numpy, slicer, qt ...) are stand-ins that
accept any attribute, call, subscript or subclassing, so importing runs every module's top-level
code: a ``str | None`` evaluated at definition time (a default, a module-level annotation
without ``from __future__ import annotations``, a dataclass field default) fails here as it
would in Slicer. ``typing.get_type_hints`` is then evaluated on the parameter-node classes,
which Slicer's parameterNodeWrapper evaluates at run time, and with ``--all-hints`` on every
function and class (meaningful on 3.10+, where ``X | None`` evaluates). Prints one line per
failure; exit status 1 if any.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import types
import typing
from pathlib import Path


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub(name)

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and (inspect.isfunction(args[0]) or inspect.isclass(args[0])):
            return args[0]  # used as a decorator
        return _stub("value")

    def __getitem__(cls, item):
        return cls

    def __iter__(cls):
        return iter(())

    def __len__(cls):
        return 0

    def __bool__(cls):
        return True

    def __mro_entries__(cls, bases):
        return (object,)


def _binary(name):
    return lambda self, *other: _stub("value")


for _op in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "matmul", "rmatmul", "neg",
            "pow", "floordiv", "mod", "lt", "gt", "le", "ge"):
    setattr(_Meta, f"__{_op}__", _binary(_op))


def _stub(name):
    return _Meta(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub(name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stand-ins for the top-level packages in ``names`` (those this interpreter cannot import)."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


THIRD_PARTY = ("torch", "torchvision", "numpy", "SimpleITK", "vtk", "slicer", "qt", "ctk", "diffdrr", "e3nn",
               "timm", "roma", "kornia", "torchio", "matplotlib", "scipy", "packaging", "PyTorchUtils",
               "SampleData", "nibabel", "PIL")


def _type_checking_names(module) -> dict:
    """Names a module imports only under ``if TYPE_CHECKING:`` (forward references by design)."""
    import ast

    try:
        tree = ast.parse(Path(module.__file__).read_text())
    except (OSError, TypeError, SyntaxError):
        return {}
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for inner in node.body:
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    for alias in inner.names:
                        names[alias.asname or alias.name.split(".")[0]] = _stub(alias.name)
    return names


def main(argv):
    root = Path(argv[0]).resolve()
    all_hints = "--all-hints" in argv
    failures = []
    files = sorted((root / "SphericalRegLib").rglob("*.py")) + sorted((root / "SphericalReg").rglob("*.py"))
    for f in files:
        try:
            compile(f.read_text(encoding="utf-8"), str(f), "exec", dont_inherit=True)
        except SyntaxError as e:
            failures.append(f"compile {f.relative_to(root)}: {e}")
    absent = [n for n in THIRD_PARTY if importlib.util.find_spec(n) is None]
    sys.meta_path.insert(0, _StubFinder(absent))
    sys.dont_write_bytecode = True
    sys.path[:0] = [str(root), str(root / "SphericalReg")]
    modules = []
    for f in sorted((root / "SphericalRegLib").rglob("*.py")):
        rel = f.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules.append(".".join(parts))
    modules += ["SphericalRegLogic." + f.stem for f in sorted((root / "SphericalReg" / "SphericalRegLogic").glob("*.py"))
                if f.stem != "__init__"] + ["SphericalRegLogic", "SphericalReg"]
    loaded = []
    for name in modules:
        if name.endswith("__main__"):
            continue
        try:
            loaded.append(importlib.import_module(name))
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failures.append(f"import {name}: {type(e).__name__}: {e}")
    for module in loaded:
        forward = _type_checking_names(module)
        for obj_name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            is_parameter_node = module.__name__ == "SphericalRegLogic.parameters" and inspect.isclass(obj)
            if not (all_hints or is_parameter_node):
                continue
            targets = [obj]
            if inspect.isclass(obj):
                targets += [m for m in vars(obj).values() if inspect.isfunction(m)]
            for target in targets:
                if not (inspect.isclass(target) or inspect.isfunction(target)):
                    continue
                try:
                    typing.get_type_hints(target, localns=forward, include_extras=True)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"annotations {module.__name__}.{getattr(target, '__qualname__', obj_name)}: "
                                    f"{type(e).__name__}: {e}")
    for line in failures:
        print(line)
    print(f"{len(loaded)} modules imported on Python {sys.version.split()[0]}; {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
