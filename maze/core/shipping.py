"""Task code as it travels to workers: pickled once per run, keyed by content.

``run()`` pickles each distinct task function of the plan (cloudpickle, so a
function defined in a notebook travels *by value*, with the globals, closure
cells and defaults it refers to as they are at that moment). The key is a hash
of those bytes, so:

* a changed global, closure variable, default argument or a redefined
  function gives new bytes, hence a new key, and workers load the new code;
* unchanged code gives the same key, and a worker that has loaded it already
  is not sent it again (sending stays once per content, not once per task).

Backends must key their worker-side caches by :attr:`ShippedCode.key`, never
by the identity of the function object: the same object may hold different
globals from one run to the next.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass

import cloudpickle

from .task import TaskBody


@dataclass(frozen=True, slots=True)
class ShippedCode:
    """A task function pickled at ``run()`` time."""

    key: str        # hash of ``data``: equal keys mean equal code
    data: bytes     # cloudpickle bytes of the function

    def load(self) -> TaskBody:
        """The function, in the process that runs it."""
        func: TaskBody = pickle.loads(self.data)
        return func

    def __repr__(self) -> str:
        return f"ShippedCode({self.key[:12]}, {len(self.data)} bytes)"


def ship(func: TaskBody) -> ShippedCode:
    """Pickle ``func`` now. Raises what cloudpickle raises for code that cannot travel."""
    data = cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    return ShippedCode(hashlib.blake2b(data, digest_size=16).hexdigest(), data)
