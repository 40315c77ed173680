"""How task values travel between the driver and local workers.

A value is pickled once, in the process that made it, with pickle protocol 5,
so large buffers (numpy arrays, bytes, anything exposing the buffer protocol)
come out *out of band* instead of being copied into the pickle:

* small buffers travel as extra socket frames after the pickle;
* buffers of 1 MB or more are written once to a file in shared memory
  (``/dev/shm``), and every reader maps that file copy-on-write: no copy is
  made however many tasks read the value, and a task may still modify its
  input in place (the change stays private to that task).

The driver keeps a :class:`Packed` per output and passes it, unopened, to every
dependent task. Its shared-memory file is removed when the last ``Packed``
referring to it is dropped (and any mapping made before stays valid).
"""

from __future__ import annotations

import mmap
import os
import pickle
import tempfile
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

SHARED_THRESHOLD = 1 << 20
_SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
FILE_PREFIX = "maze-"


@dataclass(eq=False)
class Packed:
    """A pickled value: the pickle, its small buffers, and where its large ones live."""

    data: bytes
    frames: list[Any] = field(default_factory=list)   # small out-of-band buffers
    path: str | None = None                           # shared-memory file of the large ones
    sizes: tuple[int, ...] = ()                       # sizes of the buffers in that file

    def descriptor(self) -> tuple[bytes, str | None, tuple[int, ...], int]:
        return (self.data, self.path, self.sizes, len(self.frames))

    def own_file(self) -> None:
        """Delete the shared-memory file when this object goes away."""
        if self.path is not None:
            weakref.finalize(self, _unlink, self.path)


def dumps(value: Any) -> bytes:
    """In-band pickle (for headers and small values); cloudpickle when plain pickle can't."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - lambdas, local classes, notebook objects
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def pack(value: Any, owner: str) -> Packed:
    """Pickle ``value``; put large buffers in a shared-memory file named after ``owner`` (a pid)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001
        buffers = []
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    if sum(v.nbytes for v in views) < SHARED_THRESHOLD:
        return Packed(data, views)
    path = os.path.join(_SHM_DIR, f"{FILE_PREFIX}{owner}-{uuid.uuid4().hex}")
    with open(path, "wb") as fh:
        for v in views:
            fh.write(v)
    return Packed(data, [], path, tuple(v.nbytes for v in views))


def unpack(packed: Packed) -> Any:
    buffers: list[Any] = list(packed.frames)
    if packed.path is not None:
        buffers = _map(packed.path, packed.sizes)
    return pickle.loads(packed.data, buffers=buffers)


def _map(path: str, sizes: tuple[int, ...]) -> list[memoryview]:
    total = sum(sizes)
    if total == 0:
        return [memoryview(b"") for _ in sizes]
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), total, access=mmap.ACCESS_COPY)
    view = memoryview(mapped)
    out, offset = [], 0
    for size in sizes:
        out.append(view[offset : offset + size])
        offset += size
    return out


def send(send_bytes: Callable[[Any], None], packs: list[Packed]) -> None:
    """Send the small frames of each value, in order (descriptors travel in a header)."""
    for p in packs:
        for frame in p.frames:
            send_bytes(frame)


def receive(recv_bytes: Callable[[], bytes], descriptors: list[tuple[bytes, str | None, tuple[int, ...], int]]) -> list[Packed]:
    return [Packed(data, [recv_bytes() for _ in range(n)], path, sizes) for data, path, sizes, n in descriptors]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_files_of(owner: str) -> None:
    """Remove shared-memory files left by ``owner`` (e.g. a worker that died mid-write)."""
    prefix = f"{FILE_PREFIX}{owner}-"
    for name in os.listdir(_SHM_DIR):
        if name.startswith(prefix):
            _unlink(os.path.join(_SHM_DIR, name))
