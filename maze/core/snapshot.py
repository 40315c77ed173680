"""A run's snapshot: what it takes from the caller's world when ``run()`` is called.

Taken in the caller's thread, before ``run()`` returns, because nothing the
caller does afterwards may change the run: each distinct task function is
pickled (:func:`~maze.core.shipping.ship`) and versioned
(:func:`~maze.core.code_version.code_version`), and each distinct constant
input is copied (:func:`~maze.core.shipping.freeze`). Hashing the copies for
the fingerprints takes longer for large values and happens in the run's
start thread (:meth:`Snapshot.fingerprints`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .code_version import code_version
from .fingerprint import Fingerprint, fingerprints, inputs_version
from .plan import Plan
from .protocol import TaskError
from .shipping import FrozenValue, ShippedCode, freeze, ship


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a run takes at ``run()``, per task: its pickled code, code version and frozen constants."""

    code: Mapping[str, ShippedCode | TaskError]      # TaskError: the function could not be pickled
    code_versions: Mapping[str, str]
    constants: Mapping[str, Mapping[str, FrozenValue]]

    @classmethod
    def take(cls, plan: Plan) -> Snapshot:
        """Pickle each distinct function and copy each distinct constant once (the plan holds them all,
        so their ids are stable while this runs)."""
        shipped: dict[int, ShippedCode | TaskError] = {}
        versions: dict[int, str] = {}
        frozen: dict[int, FrozenValue] = {}
        code, code_versions, constants = {}, {}, {}
        for tid, t in plan.tasks.items():
            fid = id(t.function)
            if fid not in shipped:
                try:
                    shipped[fid] = ship(t.function)
                except Exception as exc:  # noqa: BLE001 - e.g. a function that refers to a lock
                    shipped[fid] = TaskError.simple(
                        type(exc).__name__, f"the function of task {tid!r} could not be pickled: {exc}"
                    )
                versions[fid] = code_version(t.function)
            code[tid], code_versions[tid] = shipped[fid], versions[fid]
            for value in t.constants.values():
                if id(value) not in frozen:
                    frozen[id(value)] = freeze(value)
            constants[tid] = {k: frozen[id(v)] for k, v in t.constants.items()}
        return cls(code, code_versions, constants)

    def fingerprints(self, plan: Plan) -> dict[str, Fingerprint]:
        """Hash the frozen inputs (slow for large ones: called off the caller's thread)."""
        digests: dict[int, str] = {}
        versions: dict[tuple[tuple[str, str], ...], str] = {}   # tasks given the same values: hashed once
        inputs = {}
        for tid, values in self.constants.items():
            for v in values.values():
                if id(v) not in digests:
                    digests[id(v)] = v.digest()
            named = tuple((k, digests[id(v)]) for k, v in values.items())
            version = versions.get(named)
            if version is None:
                version = versions[named] = inputs_version(dict(named))
            inputs[tid] = version
        return fingerprints(plan, self.code_versions, inputs)
