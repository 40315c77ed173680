"""Content fingerprints of tasks: what makes a result reusable, and why not.

A task's fingerprint hashes three things, so that a result is reused only
when the same code ran on the same inputs:

* the code: the function's source text (or, where there is none, its byte code
  and constants);
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
    try:
        return _code_cache[func]
    except (KeyError, TypeError):
        pass
    try:
        text = inspect.getsource(func)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        text = repr((getattr(func, "__qualname__", ""), code.co_code, code.co_consts)) if code else repr(func)
    version = hashlib.sha256(text.encode()).hexdigest()[:32]
    try:
        _code_cache[func] = version
    except TypeError:
        pass
    return version


def _inputs_version(constants: Mapping[str, Any]) -> str:
    try:
        data = pickle.dumps(sorted(constants.items()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. a lock or an open file: never reuse
        return ""
    return hashlib.sha256(data).hexdigest()[:32]


def fingerprints(plan: Plan) -> dict[str, Fingerprint]:
    """The fingerprint of every task of ``plan`` (upstream before downstream)."""
    out: dict[str, Fingerprint] = {}
    # A data input always names a task added before, so insertion order is upstream-first.
    for tid, t in plan.tasks.items():
        ups = sorted(f"{key}<-{out[ref.task_id].digest}.{ref.key}" for key, ref in t.refs.items())
        out[tid] = Fingerprint(
            code=code_version(t.spec.func),
            inputs=_inputs_version(t.constants),
            upstream=hashlib.sha256("|".join(ups).encode()).hexdigest()[:32],
        )
    return out
