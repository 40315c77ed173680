"""Content fingerprints of tasks: what makes a result reusable, and why not.

A task's fingerprint hashes three things, so that a result is reused only
when the same code ran on the same inputs:

* the code: its :func:`~maze.core.code_version.code_version` (source, byte code
  and the values the function reads from outside);
* its constant inputs: the digest of each value's snapshot, taken at ``run()``
  (:mod:`maze.core.shipping`), the very bytes the task receives;
* for each input wired to another task, that task's fingerprint and the name of
  the output it reads.

:class:`Fingerprint` keeps the parts apart, so the reason for a re-run can be
told: "its code changed", "its inputs changed", "an upstream task changed".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .code_version import digest
from .plan import Plan


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


def inputs_version(digests: Mapping[str, str]) -> str:
    """The version of a task's constant inputs, from each value's digest; ``""`` if one has none."""
    if any(not d for d in digests.values()):
        return ""  # a value that cannot be pickled cannot be compared: never reuse
    return digest("|".join(f"{k}={d}" for k, d in sorted(digests.items())).encode())


def fingerprints(plan: Plan, code: Mapping[str, str], inputs: Mapping[str, str]) -> dict[str, Fingerprint]:
    """The fingerprint of every task of ``plan`` (upstream before downstream).

    ``code`` and ``inputs`` give each task's code version and inputs version,
    taken when the run started (see :mod:`.code_version` and :mod:`.shipping`).
    """
    out: dict[str, Fingerprint] = {}
    digests: dict[Fingerprint, str] = {}   # a fan-out's thousand tasks share a few fingerprints: hash each once
    wiring: dict[str, str] = {}
    # A data input always names a task added before, so insertion order is upstream-first.
    for tid, t in plan.tasks.items():
        ups = []
        for key, ref in t.refs.items():
            fp = out[ref.task_id]
            up = digests.get(fp)
            if up is None:
                up = digests[fp] = fp.digest
            ups.append(f"{key}<-{up}.{ref.key}")
        text = "|".join(sorted(ups))
        upstream = wiring.get(text)
        if upstream is None:
            upstream = wiring[text] = digest(text.encode())
        out[tid] = Fingerprint(code=code[tid], inputs=inputs[tid], upstream=upstream)
    return out
