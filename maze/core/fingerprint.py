"""Content fingerprints of tasks: what makes a result reusable, and why not.

A task's fingerprint hashes three things, so that a result is reused only
when the same code ran on the same inputs:

* the code: the function's source text (or, where there is none, its byte code
  and constants), and the values it reads from outside: the globals it names,
  its closure cells and default arguments (helper functions by their own code
  version, modules and classes by name);
* its constant inputs, pickled;
* for each input wired to another task, that task's fingerprint and the name of
  the output it reads.

:class:`Fingerprint` keeps the parts apart, so the reason for a re-run can be
told: "its code changed", "its inputs changed", "an upstream task changed".
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
import types
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .plan import Plan

_code_cache: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    code: str
    inputs: str      # "" when the inputs cannot be pickled: never reusable
    upstream: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.code}/{self.inputs}/{self.upstream}".encode()).hexdigest()[:32]

    def __str__(self) -> str:
        return f"code {self.code[:10]} · inputs {self.inputs[:10] or '(unhashable)'} · upstream {self.upstream[:10]}"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "inputs": self.inputs, "upstream": self.upstream}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> Fingerprint:
        return cls(d["code"], d["inputs"], d["upstream"])

    def why_different(self, old: Fingerprint) -> str | None:
        """Why a result made under ``old`` cannot stand for this one; ``None`` if it can."""
        if not self.inputs:
            return "its inputs cannot be hashed (they do not pickle)"
        if self.code != old.code:
            return "its code changed"
        if self.inputs != old.inputs:
            return "its inputs changed"
        if self.upstream != old.upstream:
            return "a task it depends on changed"
        return None


def code_version(func: Any) -> str:
    """The version of a task's code: its source, and the values it reads from outside.

    The source alone would miss the notebook's everyday edit: a changed global,
    closure variable or default argument changes what the function computes
    while its text stays the same. So the values it refers to are hashed too.
    """
    return _hash(f"{_source_version(func)}/{_environment_version(func, set())}".encode())


def _source_version(func: Any) -> str:
    # A function object's source never changes, so this part is cached per object.
    try:
        return _code_cache[func]
    except (KeyError, TypeError):
        pass
    try:
        text = inspect.getsource(func)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        text = repr((getattr(func, "__qualname__", ""), code.co_code, code.co_consts)) if code else repr(func)
    version = _hash(text.encode())
    try:
        _code_cache[func] = version
    except TypeError:
        pass
    return version


def _environment_version(func: Any, seen: set[int]) -> str:
    """A hash of the globals, closure cells and defaults ``func`` refers to."""
    func = getattr(getattr(func, "spec", None), "func", func)   # a @task: the function it wraps
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or id(func) in seen:
        return ""
    seen.add(id(func))
    parts: list[str] = []
    scope = getattr(func, "__globals__", {})
    for name in sorted(_global_names(code)):
        if name in scope:
            parts.append(f"{name}={_value_version(scope[name], seen)}")
    for i, cell in enumerate(getattr(func, "__closure__", None) or ()):
        try:
            parts.append(f"cell{i}={_value_version(cell.cell_contents, seen)}")
        except ValueError:  # an empty cell
            parts.append(f"cell{i}=empty")
    parts.append(f"defaults={_value_version(getattr(func, '__defaults__', None), seen)}")
    parts.append(f"kwdefaults={_value_version(getattr(func, '__kwdefaults__', None), seen)}")
    return _hash("|".join(parts).encode())


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):   # nested functions, comprehensions, lambdas
            names |= _global_names(const)
    return names


def _value_version(value: Any, seen: set[int]) -> str:
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    if callable(value) and hasattr(inspect.unwrap(getattr(getattr(value, "spec", None), "func", value)), "__code__"):
        # A helper function: its own code and what it reads, so editing a helper counts too.
        return f"function {_source_version(value)}/{_environment_version(value, seen)}"
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - a lock, a connection...: only its type can be told
        return f"unpicklable {type(value).__qualname__}"
    return _hash(data, *(b.raw() for b in buffers))


def _hash(*parts: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:32]


def _inputs_version(constants: Mapping[str, Any]) -> str:
    # Protocol 5 hands large buffers (arrays) out of band: they are hashed where
    # they lie instead of being copied into the pickle first.
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(sorted(constants.items()), protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - e.g. a lock or an open file: never reuse
        return ""
    return _hash(data, *(b.raw() for b in buffers))


def fingerprints(plan: Plan) -> dict[str, Fingerprint]:
    """The fingerprint of every task of ``plan`` (upstream before downstream)."""
    out: dict[str, Fingerprint] = {}
    versions: dict[int, str] = {}   # per distinct function, within this call (the plan holds them all)
    # A data input always names a task added before, so insertion order is upstream-first.
    for tid, t in plan.tasks.items():
        ups = sorted(f"{key}<-{out[ref.task_id].digest}.{ref.key}" for key, ref in t.refs.items())
        if id(t.spec.func) not in versions:
            versions[id(t.spec.func)] = code_version(t.spec.func)
        out[tid] = Fingerprint(
            code=versions[id(t.spec.func)],
            inputs=_inputs_version(t.constants),
            upstream=hashlib.sha256("|".join(ups).encode()).hexdigest()[:32],
        )
    return out
