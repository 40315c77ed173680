"""Whether a worker runs the code its driver runs: stamps of the modules a task's code comes from.

A task function defined at the top of an importable module travels by name
(:meth:`~maze.core.task.TaskFunction.__reduce__`): the worker imports its
module. A worker outlives runs, so after the user edits that module's file and
reloads it (``importlib.reload``, IPython's ``%autoreload``), the worker would
still hold the module as it first imported it, and return what the old code
computes under the new code's fingerprint. So such a task travels with the
stamps of the user's modules its code comes from: its own module, and the
modules whose functions, classes or selves that module names, and theirs
(installed packages, the standard library, and modules an import hook
rewrote, such as pytest's test modules, are left out: their byte code differs
between processes anyway).

A stamp hashes the byte code of what a module defines (its functions, its
classes' methods) and of the user's functions and classes it names, not its
data: a module-level cache that tasks fill does not make a stamp differ.

In the worker, :func:`refresh` reloads each module whose stamp differs, those
it names first (so that ``from helpers import f`` binds the new ``f``), and
raises :class:`StaleCodeError` for a module that still differs: its file is not
what the driver runs (edited, and not reloaded there).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.machinery
import sys
import types
import weakref
from typing import Any, NamedTuple

from .errors import StaleCodeError


class Stamps(NamedTuple):
    """What a task travels with: the driver's stamps of the user's modules its code comes from."""

    modules: tuple[tuple[str, str], ...]   # (name, stamp), the modules a module names before it
    optimize: int                          # the driver's ``-O`` level: it strips asserts from byte code


_MAX_MODULES = 64   # a task's code rarely spans more of the user's modules; a walk stops there
_digests: weakref.WeakKeyDictionary[types.CodeType, str] = weakref.WeakKeyDictionary()   # code -> its digest
# Loaders that compile a module's file as it is: a module another loader made (pytest's assertion
# rewriting, an instrumenting import hook) has other byte code in the driver than in a worker.
_PLAIN_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)


def stamps(func: Any) -> Stamps:
    """The stamps of the user's modules that ``func``'s code comes from, those named first (none: not the user's)."""
    name = getattr(func, "__module__", None)
    module = sys.modules.get(name) if name else None
    if module is None or not _users(module):
        return Stamps((), sys.flags.optimize)
    order: list[types.ModuleType] = []
    seen = {module.__name__}
    _walk(module, seen, order)
    return Stamps(tuple((m.__name__, module_stamp(m)) for m in order), sys.flags.optimize)


def module_stamp(module: types.ModuleType) -> str:
    """A hash of the byte code of what ``module`` defines and of the user's functions and classes it names."""
    h = hashlib.sha256()
    for key, value in sorted(vars(module).items(), key=lambda item: item[0]):
        code = _code_of(value)
        if code is not None:
            h.update(f"{key}={code};".encode())
    return h.hexdigest()[:32]


def refresh(expected: Stamps) -> None:
    """Import each module, reloading one whose stamp differs; raise :class:`StaleCodeError` if one still does.

    Nothing is compared in a worker whose ``-O`` level is not the driver's: the same file compiles to
    other byte code there.
    """
    if expected.optimize != sys.flags.optimize:
        return
    stale = []
    for name, stamp in expected.modules:
        module = importlib.import_module(name)
        if module_stamp(module) == stamp:
            continue
        importlib.reload(module)
        if module_stamp(module) != stamp:
            stale.append(f"{name!r} ({getattr(module, '__file__', None) or 'no file'})")
    if stale:
        raise StaleCodeError(
            f"the code of module {', '.join(stale)} differs between the driver and the file this worker "
            f"imports: the file was edited since the driver imported it (or the module was changed in the "
            f"driver). Reload the module where you run the workflow (importlib.reload, or IPython's "
            f"%autoreload), or restart that Python process")


def _walk(module: types.ModuleType, seen: set[str], order: list[types.ModuleType]) -> None:
    """Add to ``order`` the user's modules ``module`` names (theirs first), then ``module``."""
    for value in list(vars(module).values()):
        if len(seen) >= _MAX_MODULES:
            break
        named = value if isinstance(value, types.ModuleType) else sys.modules.get(_module_name(value) or "")
        if named is not None and named.__name__ not in seen and _users(named):
            seen.add(named.__name__)
            _walk(named, seen, order)
    order.append(module)


def _body(value: Any) -> Any:
    """The function a ``@task`` wraps; any other value as it is. (By its type only: a module's globals
    may hold objects whose attribute lookups do anything.)"""
    kind = type(value)
    if kind.__name__ == "TaskFunction" and kind.__module__ == "maze.core.task":
        return value.spec.func
    return value


def _module_name(value: Any) -> str | None:
    value = _body(value)
    if isinstance(value, (types.FunctionType, type)):
        return getattr(value, "__module__", None)
    return None


def _code_of(value: Any) -> str | None:
    """The digest of a user's function's or class's byte code; ``None`` for anything else (data, modules, the
    installed packages' code)."""
    value = _body(value)
    if isinstance(value, types.FunctionType):
        return _function_digest(value) if not installed(value.__module__ or "") else None
    if isinstance(value, type) and not installed(value.__module__ or ""):
        parts = []
        for key, member in sorted(vars(value).items(), key=lambda item: item[0]):
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                parts += [_function_digest(f) for f in (member.fget, member.fset, member.fdel)
                          if isinstance(f, types.FunctionType)]
            elif isinstance(member, types.FunctionType):
                parts.append(f"{key}:{_function_digest(member)}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
    return None


def _function_digest(func: types.FunctionType) -> str:
    code = func.__code__   # the key: IPython's %autoreload gives an old function the new code object
    try:
        return _digests[code]
    except KeyError:
        pass
    found = _digests[code] = hashlib.sha256(code_bytes(code)).hexdigest()[:32]
    return found


def code_bytes(code: types.CodeType) -> bytes:
    """Byte code, names and constants, nested code included: no addresses, no line numbers."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(code_bytes(const))
        elif isinstance(const, frozenset):  # ``x in {"a", "b"}``: its order follows string hashing
            parts.append(repr(sorted(map(repr, const))).encode())
        else:
            parts.append(repr(const).encode())
    return b"\x00".join(parts)


def _users(module: types.ModuleType) -> bool:
    """Whether ``module`` is the user's code, loaded from its file as it is: not ``__main__`` (its
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
