"""How task values travel between the driver and local workers.

A value is pickled once, in the process that made it, with pickle protocol 5,
so large buffers (numpy arrays, anything whose pickling hands over a
``PickleBuffer``) come out *out of band* instead of being copied into the
pickle:

* a value of under 1 MB in all travels on the socket: its pickle in the
  header of each call that takes it, its buffers as extra frames after it,
  copied by the reader into buffers of its own (writable, as a mapped file is);
* a value of 1 MB or more is written once to a file in shared memory
  (``/dev/shm``): its buffers, and its pickle too unless that is a few bytes
  (``bytes``, ``str``, lists and dicts pickle in band), so that a header
  names the file instead of carrying the value. Every reader maps that file
  copy-on-write: no copy is made however many tasks read the value, and a
  task may still modify its input in place (the change stays private to that
  task).

The driver keeps a :class:`Packed` per output and passes it, unopened, to every
dependent task; constant inputs are packed the same way, by the driver. A
shared-memory file is removed when the last ``Packed`` referring to it is
dropped (and any mapping made before stays valid).

Shared memory outlives a killed process, so its files are created readable by
their owner only and named ``maze-<driver pid>-<pid namespace>-<backend>-...``:
the driver's workers remove a dead driver's files
(:func:`remove_files_of_driver`), and a new driver removes those of any driver
of its pid namespace that no longer exists (:func:`remove_orphaned_files`). The
namespace is in the name because ``/dev/shm`` may be shared by containers whose
pids mean different processes.
"""

from __future__ import annotations

import mmap
import os
import pickle
import tempfile
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from maze.backends._jobs import pid_exists

SHARED_THRESHOLD = 1 << 20
# In a value that goes to shared memory, a pickle up to this size stays in the headers (a numpy
# array's is about 150 bytes); a larger one is the file's last part.
_PICKLE_IN_HEADER = 4096
_ALIGN = 64   # each part of a file starts at a multiple of this: arrays mapped from it are aligned


def _shared_dir() -> str:
    """Where large buffers go: ``$MAZE_SHM_DIR`` if set, else ``/dev/shm``, else the temp directory.

    ``/dev/shm`` is memory on Linux. Where there is none (macOS) the user's
    temporary directory serves: a mapped file there is read through the page
    cache, still one copy for every reader, and it can be listed and swept like
    ``/dev/shm`` (POSIX shared-memory names on macOS cannot be listed, so an
    orphan could never be found). ``$MAZE_SHM_DIR`` is for machines whose
    ``/dev/shm`` is small (a container's default is 64 MB); workers inherit it.
    """
    chosen = os.environ.get("MAZE_SHM_DIR")
    if chosen:
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


_SHM_DIR = _shared_dir()
FILE_PREFIX = "maze-"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"  # no /proc: one namespace as far as we can tell


_PID_NAMESPACE = _pid_namespace()

# What a header says of a value whose small frames follow it on the socket:
# (pickle, shared-memory file or None, sizes of the buffers in that file, number
# of small frames). A plain tuple: headers carry one per value, and a named
# tuple pickles several times slower.
Descriptor = tuple[bytes, str | None, tuple[int, ...], int]


@dataclass(eq=False)
class Packed:
    """A pickled value: the pickle, its small buffers, and where its large ones live."""

    data: bytes                                       # empty: the pickle is the file's last part
    frames: list[Any] = field(default_factory=list)   # small out-of-band buffers
    path: str | None = None                           # shared-memory file of the large ones
    sizes: tuple[int, ...] = ()                       # sizes of the parts of that file

    @property
    def nbytes(self) -> int:
        """The size of the pickled value: the pickle and all its buffers."""
        return len(self.data) + sum(memoryview(f).nbytes for f in self.frames) + sum(self.sizes)

    def descriptor(self) -> Descriptor:
        return (self.data, self.path, self.sizes, len(self.frames))

    def own_file(self) -> None:
        """Delete the shared-memory file when this object goes away, in this process only."""
        if self.path is not None:
            # Finalizers also run at exit, in a forked child too (user code may fork the driver): that
            # child must leave the parent's files, which the parent's later tasks still read.
            weakref.finalize(self, _unlink_in, self.path, os.getpid())


def new_owner() -> str:
    """A name for the shared-memory files of a new backend of this process (the driver)."""
    return f"{os.getpid()}-{_PID_NAMESPACE}-{uuid.uuid4().hex[:8]}"


def pack(value: Any, owner: str) -> Packed:
    """Pickle ``value``; put large buffers in a shared-memory file named after ``owner`` (see :func:`new_owner`)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001
        buffers = []
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    if len(data) + sum(v.nbytes for v in views) < SHARED_THRESHOLD:
        return Packed(data, views)
    if len(data) > _PICKLE_IN_HEADER:   # the pickle goes in the file; an empty one in the header says so
        views.append(memoryview(data))   # last: the buffers keep their offsets (an array's alignment)
        data = b""
    path = os.path.join(_SHM_DIR, f"{FILE_PREFIX}{owner}-{uuid.uuid4().hex}")
    # Private to this user (task data), and never an existing file: O_EXCL.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as fh:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask: the owner must read it back
            offsets, end = _layout([v.nbytes for v in views])
            for view, offset in zip(views, offsets):
                fh.seek(offset)   # the gap before it reads as zeros
                fh.write(view)
            fh.truncate(end)   # as long as _map maps, even if the last part is empty
    except BaseException:
        _unlink(path)  # e.g. /dev/shm is full: leave no partial file behind
        raise
    return Packed(data, [], path, tuple(v.nbytes for v in views))


def unpack(packed: Packed) -> Any:
    """The value, its arrays writable and its own: small buffers are copied, large ones mapped copy-on-write."""
    data: Any = packed.data
    buffers: list[Any] = [bytearray(frame) for frame in packed.frames]   # a frame read is bytes: read-only
    if packed.path is not None:
        buffers = _map(packed.path, packed.sizes)
        if not data:   # a pickle is never empty: this one is the file's last part (see pack)
            data, buffers = buffers[-1], buffers[:-1]
    return pickle.loads(data, buffers=buffers)


def _layout(sizes: Iterable[int]) -> tuple[list[int], int]:
    """Where each part of a shared-memory file starts (one after the other, each aligned to ``_ALIGN``),
    and where the last one ends: the file's length."""
    starts: list[int] = []
    end = 0
    for size in sizes:
        start = -(-end // _ALIGN) * _ALIGN
        starts.append(start)
        end = start + size
    return starts, end


def _map(path: str, sizes: tuple[int, ...]) -> list[memoryview]:
    offsets, total = _layout(sizes)
    if total == 0:
        return [memoryview(b"") for _ in sizes]
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), total, access=mmap.ACCESS_COPY)
    view = memoryview(mapped)
    return [view[offset : offset + size] for offset, size in zip(offsets, sizes)]


def send(send_bytes: Callable[[Any], None], packs: list[Packed]) -> None:
    """Send the small frames of each value, in order (descriptors travel in a header)."""
    for p in packs:
        for frame in p.frames:
            send_bytes(frame)


def frame_count(descriptors: list[Descriptor]) -> int:
    """How many small frames follow a header that carries these descriptors."""
    return sum(n for _data, _path, _sizes, n in descriptors)


def receive(recv_bytes: Callable[[], bytes], descriptors: list[Descriptor]) -> list[Packed]:
    """The values a header describes, their small frames read from the socket."""
    return [Packed(data, [recv_bytes() for _ in range(n)], path, sizes) for data, path, sizes, n in descriptors]


def _unlink_in(path: str, pid: int) -> None:
    if os.getpid() == pid:
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_files_of(owner: str) -> None:
    """Remove the shared-memory files of ``owner`` (e.g. of a worker killed while writing one)."""
    _remove_prefixed(f"{FILE_PREFIX}{owner}-")


def remove_files_of_driver(pid: int) -> None:
    """Remove the shared-memory files of every backend of driver ``pid`` (one of our pid namespace)."""
    _remove_prefixed(f"{FILE_PREFIX}{pid}-{_PID_NAMESPACE}-")


def _remove_prefixed(prefix: str) -> None:
    for name in os.listdir(_SHM_DIR):
        if name.startswith(prefix):
            _unlink(os.path.join(_SHM_DIR, name))


def remove_orphaned_files() -> None:
    """Remove the shared-memory files of the drivers of our pid namespace that no longer exist."""
    for name in os.listdir(_SHM_DIR):
        parts = name.split("-", 3)  # "maze", pid, namespace, the rest
        if len(parts) == 4 and f"{parts[0]}-" == FILE_PREFIX and parts[2] == _PID_NAMESPACE \
                and parts[1].isdigit() and not pid_exists(int(parts[1])):
            try:
                os.unlink(os.path.join(_SHM_DIR, name))
            except OSError:
                pass  # gone already, or another user's (the sticky /dev/shm keeps those)

