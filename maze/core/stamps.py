"""Whether a worker runs the code its driver runs: the user's module files a task's code comes from.

A task function defined at the top of an importable module travels by name
(:meth:`~maze.core.task.TaskFunction.__reduce__`): the worker imports its
module. A worker outlives runs, so after the user edits that module's file and
reloads it (``importlib.reload``, IPython's ``%autoreload``), the worker would
still hold the module as it first imported it, and return what the old code
computes under the new code's fingerprint.

So such a task travels with :class:`Stamps`: a digest of the file of each of
the user's modules its code comes from, as the file is at ``run()``. Those are
its own module and, transitively, the user's modules it imports (read from its
source: at the top, inside functions, relative imports too) or names (its
globals that are modules, or functions, classes and objects from them). The
file is what a worker can load, so a stamp covers whatever an edit changes:
functions, constants, default arguments, decorators, classes. Installed
packages, the standard library, maze, ``__main__`` (its functions travel by
value) and modules an import hook rewrote (pytest's test modules) are left out.

In the worker, :func:`refresh` loads each module from the file the driver
stamped, those it imports first, so that ``from helpers import f`` binds the
new ``f``: a module this worker loaded from another version of its file is
reloaded, also when the user went back to an earlier version. It runs before
the function is unpickled, and before every call (:class:`FreshTask`), since a
worker keeps unpickled tasks by content and the same task may come back after
another version ran. Only a worker unpickles what carries stamps
(:class:`Checked`): a task function pickled anywhere else travels as before. :class:`~maze.core.errors.StaleCodeError` says that a file
still differs after that: on a cluster, a node whose copy of the file is not the
driver's; on one machine, a file edited again between ``run()`` and the call.

Where the driver has not reloaded a module whose file was edited, workers run
the file as it is, not the code the driver holds (which cannot travel by name).
A module imported by a string (``importlib.import_module("helpers")``) is not
followed, unless something the walk reaches names it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import itertools
import os
import pickle
import sys
import types
from typing import Any, NamedTuple

from .errors import StaleCodeError


class Stamps(NamedTuple):
    """The user's module files a task's code comes from, as they were at ``run()``."""

    # (module name, digest of its file, the modules before it that it imports or names), those first
    modules: tuple[tuple[str, str, tuple[str, ...]], ...]


_MAX_MODULES = 512   # a walk stops there: a task's code spanning more of the user's modules is rare
# Loaders that compile a module's file as it is; another loader (pytest's assertion rewriting, an
# instrumenting hook, zipimport) may make code that its file alone does not give a worker.
_PLAIN_LOADERS = (importlib.machinery.SourceFileLoader,)
# In a worker: module name -> how this process has it: (id of the module, the digest of the file it was
# loaded from, when: a count of the loads here, the loads of the modules it imports when it was loaded).
_loaded: dict[str, _Load] = {}
_loads = itertools.count(1)


class _Load(NamedTuple):
    module: int
    digest: str
    at: int
    imports_at: tuple[int, ...]


def stamps(func: Any) -> Stamps:
    """The stamps of the user's modules that ``func``'s code comes from, those it imports first."""
    name = getattr(func, "__module__", None)
    module = sys.modules.get(name) if name else None
    if module is None or not _users(module):
        return Stamps(())
    order: list[tuple[str, str, tuple[str, ...]]] = []
    _walk(module, {module.__name__}, order)
    return Stamps(tuple(order))


def refresh(expected: Stamps) -> None:
    """Make each stamped module the one its file gave the driver. Raises :class:`StaleCodeError` if a file
    differs.

    A module this process loaded from another version of its file is reloaded, and so is one that
    imports a module reloaded here (its ``from ... import`` names would keep the old objects). A module
    first loaded some other way (as a module before it imported it, or to read an input) is taken as
    it is when its file is the driver's: reloading it would run it twice, which a module that
    registers something when imported may refuse.
    """
    for name, digest, imports in expected.modules:
        module = sys.modules.get(name)
        known = _loaded.get(name)
        imports_at = tuple(_loaded[i].at if i in _loaded else 0 for i in imports)
        if (module is not None and known is not None and known.module == id(module) and known.digest == digest
                and known.imports_at == imports_at):
            continue
        path = _file_of(name, module)
        found = _digest(path) if path else None
        if found is None and module is None:
            continue   # not to be found here: the task fails to import it if it needs it
        if found == digest:
            if module is None:
                module = importlib.import_module(name)
            elif known is not None and known.module == id(module):   # loaded here from another version
                module = importlib.reload(module)                      # of its file, or before one it imports
            _loaded[name] = _Load(id(module), digest, next(_loads), imports_at)
        else:
            raise StaleCodeError(
                f"the file of module {name!r} ({path or 'not found'}) is not the one the driver ran it from: "
                f"it was edited after run(), or this worker's machine has another copy. Run the workflow "
                f"again, with the same files on every machine")


class Checked(NamedTuple):
    """A task function's pickle with the stamps of its files: what the driver ships (see ``shipping.ship``).

    Unpickled (only in a worker, which is what it is made for), it loads the
    files first, then the function, and gives a :class:`FreshTask`.
    """

    expected: Stamps
    pickled: bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_checked, (self.expected, self.pickled))


class FreshTask:
    """A task loaded in a worker with the stamps of its files: each call first makes sure they are the
    driver's (the worker keeps what it unpickled, by content, and another version may have run since)."""

    __slots__ = ("task", "expected")

    def __init__(self, task: Any, expected: Stamps) -> None:
        self.task = task
        self.expected = expected

    def __call__(self, params: dict[str, Any]) -> Any:
        refresh(self.expected)
        return self.task(params)


def _load_checked(expected: Stamps, pickled: bytes) -> FreshTask:
    refresh(expected)   # before unpickling: a function that travels by name comes from the module as it is now
    return FreshTask(pickle.loads(pickled), expected)


def _walk(module: types.ModuleType, seen: set[str], order: list[tuple[str, str, tuple[str, ...]]]) -> None:
    """Add to ``order`` the user's modules ``module`` imports or names (theirs first), then ``module``."""
    path = _file_of(module.__name__, module)
    users = [named for named in _named(module, path) if _users(named)]
    for named in users:
        if len(seen) >= _MAX_MODULES:
            break
        if named.__name__ not in seen:
            seen.add(named.__name__)
            _walk(named, seen, order)
    before = {entry[0] for entry in order}   # in a cycle of imports, the modules after it are left out
    imports = tuple(m.__name__ for m in users if m.__name__ in before)
    order.append((module.__name__, (_digest(path) if path else None) or "", imports))


def _named(module: types.ModuleType, path: str | None) -> list[types.ModuleType]:
    """The modules ``module``'s source (at ``path``) imports, and those its globals come from."""
    names: list[str] = []
    if path:
        names += _imports(path, module.__package__ or "")
    for value in list(vars(module).values()):
        if isinstance(value, types.ModuleType):
            names.append(value.__name__)
        else:
            names.append(_module_name(value))
    found = []
    for name in dict.fromkeys(names):
        named = sys.modules.get(name)
        if named is not None and named is not module:
            found.append(named)
    return found


def _module_name(value: Any) -> str:
    """The module a global's value comes from: a function's or class's own, else its type's. (Read without
    attribute lookups on the value itself, which may do anything.)"""
    kind = type(value)
    if kind.__name__ == "TaskFunction" and kind.__module__ == "maze.core.task":
        value = value.spec.func
    if isinstance(value, (types.FunctionType, type)):
        return str(value.__module__ or "")
    return str(kind.__module__ or "")


@functools.lru_cache(maxsize=4096)
def _imports_cached(path: str, package: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), path)
    except (OSError, SyntaxError, ValueError):
        return ()
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the package, up ``level - 1`` levels
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(p for p in (*parts, base) if p)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]   # ``from pkg import sub``
    return tuple(n for n in names if n)


def _imports(path: str, package: str) -> tuple[str, ...]:
    """The modules the source at ``path`` imports, anywhere in it (parsed once per version of the file)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return _imports_cached(path, package, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _digest_cached(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.blake2b(fh.read(), digest_size=16).hexdigest()


def _digest(path: str) -> str | None:
    """A digest of the file at ``path`` as it is now (read again only when its time or size changed)."""
    try:
        st = os.stat(path)
        return _digest_cached(path, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


def _file_of(name: str, module: types.ModuleType | None) -> str | None:
    """The source file a module is (or would be) loaded from."""
    if module is not None:
        path = getattr(module, "__file__", None)
        return path if isinstance(path, str) else None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and isinstance(spec.origin, str) else None


def _users(module: types.ModuleType) -> bool:
    """Whether ``module`` is the user's code, loaded from its source file as it is: not ``__main__`` (its
    functions travel by value), not an installed package, not maze, not made by an import hook."""
    name = module.__name__
    return (name != "__main__" and isinstance(getattr(module, "__loader__", None), _PLAIN_LOADERS)
            and not installed(name) and name != "maze" and not name.startswith("maze."))


@functools.lru_cache(maxsize=1024)
def installed(module: str) -> bool:
    """Whether ``module`` comes from an installed package (site-packages or the standard library)."""
    import sysconfig

    if module == "__main__":   # the user's script or notebook, wherever the interpreter was started from
        return False
    found = sys.modules.get(module)
    path = getattr(found, "__file__", None) or ""
    if not path:
        return False
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.startswith(root) for root in roots)
