"""The version of a task's code, stable across processes: what ``resume_from`` and ``cache=True`` compare.

A function computes with more than its text. In a notebook the everyday edit
changes a global, a helper, a class or a closure variable, and the task's own
source stays the same. So a code version hashes:

* the function's source text and its byte code (two lambdas on one line share
  their text, not their byte code);
* the values it reads from outside: the globals it names (in nested code
  too), its closure cells and its default arguments;
* for each of those values, its content; a function or class inside them (a
  helper, a dict of handlers, a ``functools.partial``) counts by *its* code
  version, recursively, so editing a helper changes the version of every task
  that calls it.

Modules count by name: a version does not follow code into installed
packages. The result is a hex digest; it does not depend on memory addresses,
so a version taken after a restart equals the one taken before.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import pickle
import types
import weakref
from typing import Any

from .stamps import installed
from .task import TaskFunction

# A function's text and byte code never change, so that part is cached per function object.
_text_cache: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def code_version(func: Any) -> str:
    """The version of ``func`` (a ``@task``, a function, a partial or another callable)."""
    return _Versioner().of_callable(func)


def digest(*parts: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:32]


class _Versioner:
    """One code version computation; ``seen`` cuts recursion (a helper that calls itself)."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    def of_callable(self, obj: Any) -> str:
        obj = getattr(getattr(obj, "spec", None), "func", obj)   # a @task: the function it wraps
        key = id(obj)
        if key in self.seen:
            return self.seen[key]
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
            module = getattr(obj, "__module__", None) or ""
            if module == "builtins" or installed(module):
                return f"{module}.{obj.__qualname__}"  # not the user's code: by name
        self.seen[key] = "recursive"
        if isinstance(obj, functools.partial):
            version = digest(f"partial {self.of_callable(obj.func)}/{self.of_value((obj.args, obj.keywords))}".encode())
        elif isinstance(obj, types.MethodType):
            version = digest(f"method {self.of_callable(obj.__func__)}/{self.of_value(obj.__self__)}".encode())
        elif isinstance(obj, types.FunctionType):
            version = digest(f"{_text(obj)}/{self._environment(obj)}".encode())
        elif isinstance(obj, type):
            version = self._class(obj)
        else:  # a callable object: its class and its state
            version = digest(f"object {self._class(type(obj))}/{self.of_value(getattr(obj, '__dict__', None))}".encode())
        self.seen[key] = version
        return version

    def _environment(self, func: types.FunctionType) -> str:
        parts: list[str] = []
        scope = func.__globals__
        for name in sorted(_global_names(func.__code__)):
            if name in scope:
                parts.append(f"{name}={self.of_value(scope[name])}")
        for i, cell in enumerate(func.__closure__ or ()):
            try:
                parts.append(f"cell{i}={self.of_value(cell.cell_contents)}")
            except ValueError:  # an empty cell
                parts.append(f"cell{i}=empty")
        parts.append(f"defaults={self.of_value(func.__defaults__)}")
        parts.append(f"kwdefaults={self.of_value(func.__kwdefaults__)}")
        return digest("|".join(parts).encode())

    def _class(self, cls: type) -> str:
        # A class of the user's (a notebook cell, a script) counts by its methods and
        # attributes, so re-running its cell with a changed method changes the version.
        # (Classes of installed packages count by name: see of_callable.)
        name = f"{cls.__module__}.{cls.__qualname__}"
        members = [f"{k}={self.of_value(v)}" for k, v in sorted(vars(cls).items())
                   if not (k.startswith("__") and k.endswith("__")) or k in {"__init__", "__call__", "__post_init__"}]
        return digest(f"class {name}|{'|'.join(members)}".encode())

    def of_value(self, value: Any) -> str:
        if isinstance(value, types.ModuleType):
            return f"module {value.__name__}"
        if isinstance(value, (types.FunctionType, functools.partial, type, types.MethodType, TaskFunction)):
            return self.of_callable(value)
        if isinstance(value, (staticmethod, classmethod)):
            return self.of_callable(value.__func__)
        if isinstance(value, property):
            return self.of_value((value.fget, value.fset, value.fdel))
        buffers: list[pickle.PickleBuffer] = []
        out = io.BytesIO()
        try:
            _VersionPickler(out, self, buffers.append).dump(value)
        except Exception:  # noqa: BLE001 - a lock, a connection...: only its type can be told
            return f"unpicklable {type(value).__qualname__}"
        return digest(out.getvalue(), *(b.raw() for b in buffers))


class _VersionPickler(pickle.Pickler):
    """Pickles a value for hashing, with the functions and classes in it replaced by their versions."""

    def __init__(self, file: io.BytesIO, versioner: _Versioner, buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._versioner = versioner

    def reducer_override(self, obj: Any) -> Any:
        module = getattr(obj, "__module__", None) or ""
        if isinstance(obj, type) and (module == "builtins" or installed(module)):
            return NotImplemented   # by reference, as pickle does (``str`` itself passes here)
        if isinstance(obj, (types.FunctionType, functools.partial, type, TaskFunction)):
            return str, (f"callable {self._versioner.of_callable(obj)}",)
        if isinstance(obj, (set, frozenset)):
            # Set order follows string hashing, which differs from one process to the next.
            return type(obj), (sorted(obj, key=repr),)
        return NotImplemented


def _text(func: types.FunctionType) -> str:
    try:
        return _text_cache[func]
    except KeyError:
        pass
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        source = ""
    version = digest(source.encode(), _code_bytes(func.__code__))
    try:
        _text_cache[func] = version
    except TypeError:
        pass
    return version


def _code_bytes(code: types.CodeType) -> bytes:
    """Byte code, names and constants, nested code included: no addresses, no line numbers."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_bytes(const))
        elif isinstance(const, frozenset):  # ``x in {"a", "b"}``: its order follows string hashing
            parts.append(repr(sorted(map(repr, const))).encode())
        else:
            parts.append(repr(const).encode())
    return b"\x00".join(parts)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):   # nested functions, comprehensions, lambdas
            names |= _global_names(const)
    return names
