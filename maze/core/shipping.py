"""What a run takes from the caller's world at ``run()``: its code and its constant inputs.

A run must compute with the code and the values as they are when ``run()`` is
called, whatever the caller does next (edit a global, fill an array with
zeros, re-run a cell), and whenever each task happens to start.

Code. ``run()`` pickles each distinct task function of the plan (cloudpickle,
so a function defined in a notebook travels *by value*, with the globals, closure
cells and defaults it refers to as they are at that moment). The key is a hash
of those bytes, so:

* a changed global, closure variable, default argument or a redefined
  function gives new bytes, hence a new key, and workers load the new code;
* a function from an importable module travels by name, with the digests of
  the user's module files its code comes from (:mod:`maze.core.stamps`): an
  edited file gives a new key too, and workers load the file as it is at
  ``run()``;
* unchanged code gives the same key, and a worker that has loaded it already
  is not sent it again (sending stays once per content, not once per task).

Backends must key their worker-side caches by :attr:`ShippedCode.key`, never
by the identity of the function object: the same object may hold different
globals from one run to the next.

Constant inputs. :func:`freeze` takes a private copy of each value by one
pickle round trip (protocol 5: array buffers are copied once, with no pickle
framing), so a later in-place change of the caller's object reaches neither
the run nor its fingerprint; the value's digest hashes those same bytes, so a
cached result is always filed under the inputs it was computed from. A value
that cannot be pickled is passed as it is, and is never reused from a cache.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle

from .stamps import Checked, stamps

if TYPE_CHECKING:
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
    """Pickle ``func`` now. Raises what cloudpickle raises for code that cannot travel.

    When its code comes from the user's module files (it may travel by name:
    :mod:`maze.core.stamps`), with their stamps: a worker loads those files as
    they are now before it unpickles the function, and again before each call.
    """
    data = cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    files = stamps(func)
    if files.modules:
        data = pickle.dumps(Checked(files, data), protocol=pickle.HIGHEST_PROTOCOL)
    return ShippedCode(hashlib.blake2b(data, digest_size=16).hexdigest(), data)


@dataclass(frozen=True, slots=True)
class FrozenValue:
    """A constant input as it was at ``run()``: a private copy, and the bytes it was copied through."""

    value: Any                                  # the copy (the original, when it cannot be pickled)
    data: bytes | None                          # its pickle; None when it cannot be pickled
    buffers: tuple[bytearray, ...] = field(default=(), repr=False)   # its out-of-band buffers

    def digest(self) -> str:
        """A hash of the value's bytes; ``""`` when it cannot be pickled (it is never reused)."""
        if self.data is None:
            return ""
        h = hashlib.sha256(self.data)
        for b in self.buffers:
            h.update(b)
        return h.hexdigest()[:32]


def freeze(value: Any) -> FrozenValue:
    """A private copy of ``value``, taken now (see the module docstring)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - lambdas, local classes: cloudpickle, which unpickles with pickle
        buffers = []
        try:
            data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception:  # noqa: BLE001 - a lock, an open file: passed as it is
            return FrozenValue(value, None)
    copies = tuple(bytearray(b.raw()) for b in buffers)   # writable, like the caller's array was
    return FrozenValue(pickle.loads(data, buffers=copies), data, copies)

