"""The worker process of the local backend, and the frames it exchanges with the driver.

Started by :mod:`maze.backends.local` as ``python -c ...``, in a session of its
own, with one end of a socket pair; speaks length-prefixed frames
(``multiprocessing.connection``) over it. One task at a time, so capturing
``print()`` process-wide is safe.

From the driver: a :class:`CallHeader` (the content key of the task's code,
the names and descriptors of its inputs, constants included), the code itself
when this worker has not loaded that key yet, then the small frames of the
inputs. An empty frame says goodbye: the worker exits.
A call may come while the one before still runs (the driver sends a call lined
up behind it at once, so that the worker finds it waiting): before it starts
a call sent that way, the worker reads everything that has arrived, so a
:class:`Drop` sent for it is seen in time, and that call never runs. After a
call that failed, the worker starts nothing more until the driver says
:class:`Go`, which it does once the scheduler has heard of the failure (and
has dropped what it stops, fail-fast). A call sent that way may take outputs
of the call before it (``CallHeader.chain``, a chain's next link): the worker
fills them in from the outputs of the last call it ran (:class:`_Made`),
having checked that it is that call.
To the driver: :class:`Ready` once, then for each call, in order,
:class:`Started`, any number of :class:`Log`, then :class:`Done` with the
descriptors of the output values and the code keys this worker no longer
holds, then the outputs' small frames; and for each Drop, a :class:`Dropped`
saying whether the call had started already. Because everything shares one
ordered socket, the driver sees a task's start and its prints before its
result.
``Started`` goes out only for a call still running after ``ANNOUNCE_S``, or
that prints, or that has a timeout (whose clock starts with it): a quick
call's start comes in its ``Done``, one frame and one wake-up of the driver
fewer per task.
Values are packed as :mod:`._packing` describes. Frames are read in bulk, and
a call's ``Done`` goes out with its output frames in one write
(:mod:`._wire`).

The frames are named tuples, defined here once for both sides; on the wire
each is a plain tuple led by its kind's number (:func:`encode`,
:func:`decode`), because pickling a named tuple by its class costs about
3 us more per frame each way, some ten times what the tag costs.

Loaded code is kept by content key (least recently used dropped first, within
a count and a size), so a task whose code did not change is not sent again,
and one whose globals, closure or defaults changed arrives as new code.

The worker leads its process group, so stopping it (the driver kills the
group) stops whatever its task started. If the driver disappears without a
goodbye (killed), the worker removes the driver's shared-memory files and
kills its own group: nothing of a dead driver is left running or allocated.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from maze.backends import _packing, _wire
from maze.backends._jobs import wrapped_error
from maze.backends._packing import Descriptor
from maze.backends._wire import FrameReader, FrameWriter
from maze.core.execute import captured_output, gather_params, run_body
from maze.core.failure import TaskError
from maze.core.shipping import ShippedCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from maze.core.task import TaskBody

ANNOUNCE_S = 0.01               # a call still running after this long is announced (Started)
STALE_EXIT = 86                 # how a worker exits when its code of the wire is not its driver's (see WIRE)
_CODE_CACHE_COUNT = 256
_CODE_CACHE_BYTES = 256 << 20   # code pickled by value carries the globals it reads, maybe large ones


# -- the frames ------------------------------------------------------------------------


class CallHeader(NamedTuple):
    """Driver to worker: run this call. The code's bytes follow when ``ship``, then the inputs' small frames."""

    call_id: str
    task_id: str
    code_key: str
    ship: bool                        # the worker lacks this code key: its bytes come next
    constant_names: list[str]
    input_names: list[str]
    descriptors: list[Descriptor | None]   # the constants' values, then the inputs', in the order of the names
    outputs: tuple[str, ...]          # declared outputs, checked here
    announce: bool                    # send Started at once (the call has a timeout), not only if it runs a while
    ahead: bool = False               # sent behind the call running here: a Drop for it may follow
    # Inputs that the call before it here makes (it was sent ahead, behind that call): that call's id,
    # and (place among the values, output name) of each. Their descriptors are None.
    chain: tuple[str, list[tuple[int, str]]] | None = None


class Drop(NamedTuple):
    """Driver to worker: do not start this call, sent earlier; it was stopped before it started."""

    call_id: str


class Dropped(NamedTuple):
    """Worker to driver, for each Drop: whether the call had started already (then it ran, or runs)."""

    call_id: str
    ran: bool


class Go(NamedTuple):
    """Driver to worker: the scheduler has heard of the failed call; start the next one."""


class Fed(NamedTuple):
    """Driver to worker: it has read this call's outputs, so the call sent behind it that takes them may start.

    Until then that call waits: if the driver cannot read them (a class it
    cannot import), the call before failed as far as the run is concerned, and
    its dependent must not run; the driver drops it instead.
    """

    call_id: str


class Ready(NamedTuple):
    """Worker to driver, once, first: the worker is up."""

    pid: int
    host: str


class Started(NamedTuple):
    """Worker to driver: the call started, and still runs (see :class:`_Announcer`)."""

    call_id: str
    at: float                         # time.time()


class Log(NamedTuple):
    """Worker to driver: what the task printed; the driver reports it as a :class:`~maze.core.protocol.TaskLog`."""

    call_id: str
    stream: str                       # "stdout" or "stderr"
    text: str
    at: float


class Done(NamedTuple):
    """Worker to driver: the call ended. The outputs' small frames follow."""

    call_id: str
    keys: list[str]                   # the outputs, in the order of ``descriptors``; empty on error
    error: TaskError | None
    started: float
    finished: float
    descriptors: list[Descriptor]
    dropped: list[str]                # code keys this worker no longer holds: send them again when needed


Frame = Union[CallHeader, Ready, Started, Log, Done, Drop, Go, Dropped, Fed]
# New kinds go last: a kind's number is its place here.
_KINDS: tuple[type[Frame], ...] = (CallHeader, Ready, Started, Log, Done, Drop, Go, Dropped, Fed)
_TAGS: dict[type[Frame], int] = {kind: tag for tag, kind in enumerate(_KINDS)}


def encode(frame: Frame) -> bytes:
    """The bytes of a frame: a plain tuple, its kind's number first."""
    return pickle.dumps((_TAGS[type(frame)], *frame), protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Frame:
    """The frame of :func:`encode`'s bytes."""
    tagged = pickle.loads(data)
    frame: Frame = tuple.__new__(_KINDS[tagged[0]], tagged[1:])  # what a named tuple's __new__ does, in C
    return frame


# -- the worker ------------------------------------------------------------------------


class _CodeCache:
    """Task functions loaded in this worker, by content key."""

    def __init__(self) -> None:
        self._loaded: OrderedDict[str, tuple[TaskBody, int]] = OrderedDict()
        self._bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._loaded

    def get(self, key: str, data: bytes | None) -> TaskBody:
        """The function of ``key``, loaded from ``data`` when sent (the driver sends it when we lack it)."""
        if data is None:
            if key not in self._loaded:   # sent ahead, behind a call whose load of the same code failed
                raise RuntimeError(f"the task's code {key} did not load in this worker (see the call before)")
            self._loaded.move_to_end(key)
            return self._loaded[key][0]
        func = ShippedCode(key, data).load()
        self._loaded[key] = (func, len(data))
        self._bytes += len(data)
        return func

    def trim(self) -> list[str]:
        """Drop the least recently used beyond the bounds (never the last one used); their keys."""
        dropped = []
        while len(self._loaded) > 1 and (len(self._loaded) > _CODE_CACHE_COUNT or self._bytes > _CODE_CACHE_BYTES):
            key, (_, size) = self._loaded.popitem(last=False)
            self._bytes -= size
            dropped.append(key)
        return dropped


class _Announcer:
    """Sends the current call's :class:`Started` frame once it has run ``ANNOUNCE_S`` (from its own thread).

    Every frame to the driver goes out through here, under ``lock``, so that
    ``Started`` comes before any ``Log`` and never after ``Done``. The thread
    polls only while a call is current, and sleeps between calls.
    """

    def __init__(self, writer: FrameWriter) -> None:
        self._writer = writer
        self.lock = threading.Lock()
        self._current: Started | None = None     # the call running and not yet announced
        self._idle = True
        self._wake = threading.Event()
        threading.Thread(target=self._watch, name="maze-announce", daemon=True).start()

    def begin(self, call_id: str, at: float, now: bool) -> None:
        with self.lock:
            self._current = Started(call_id, at)
            if now:
                self._announce()
            elif self._idle:
                self._idle = False
                self._wake.set()

    def send(self, data: bytes) -> None:
        """Send a frame of the current call (a Log), announcing the call first; or one between calls."""
        with self.lock:
            self._announce()
            self._writer.put(data)
            self._writer.flush()

    def end(self, frames: list[Any]) -> None:
        """The current call has ended: send its ``Done`` and output frames, in one write."""
        with self.lock:
            self._current = None
            for frame in frames:
                self._writer.put(frame)
            self._writer.flush()

    def _announce(self) -> None:   # lock held
        if self._current is not None:
            self._writer.put(encode(self._current))
            self._writer.flush()
            self._current = None

    def _watch(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(ANNOUNCE_S)
            with self.lock:
                current = self._current
                if current is not None and time.time() - current.at >= ANNOUNCE_S:
                    try:
                        self._announce()
                    except OSError:
                        return   # the driver is gone; the task's thread finds out too
                elif current is None:
                    self._idle = True
                    self._wake.clear()


def _wire_digest() -> str:
    """A digest of the code of both ends of the wire, as this process imported it.

    A worker is a new interpreter that imports maze from disk. If maze was
    upgraded or edited since its driver imported it, the two would read each
    other's frames and files by different rules, and could mistake one value
    for another: such a worker exits at once (``STALE_EXIT``) instead.
    """
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], _packing, _wire):
        try:
            with open(module.__file__ or "", "rb") as source:
                digest.update(source.read())
        except OSError:   # no source file (a frozen install): its name stands in
            digest.update(module.__name__.encode())
    return digest.hexdigest()[:16]


WIRE = _wire_digest()   # what a driver passes its workers, and each worker checks


def main(fd: int, parent: int, owner: str, wire: str) -> None:
    if wire != WIRE:
        print(f"maze worker: the maze this worker imported ({WIRE}) is not its driver's ({wire}): "
              "maze was upgraded or edited since the driver imported it", file=sys.stderr)
        sys.exit(STALE_EXIT)
    # Tasks' children must not hold the driver's connection open after we die
    # (the driver learns of our death by its end of the socket).
    os.set_inheritable(fd, False)
    try:
        _serve(fd, parent, owner)
    except (EOFError, OSError):
        # The connection ended without a goodbye. Clean up only when the driver
        # is really gone: it may be alive and have closed us some other way.
        deadline = time.monotonic() + 2.0
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.getppid() != parent:
            _orphaned(parent)


def _watch_parent(parent: int) -> None:
    # A busy worker does not read its socket, so it learns of a killed driver here.
    while os.getppid() == parent:
        time.sleep(0.5)
    _orphaned(parent)


def _orphaned(parent: int) -> None:
    """The driver died without closing us: free its shared memory, and end our process group."""
    _packing.remove_files_of_driver(parent)
    if os.getpgrp() == os.getpid():  # we lead our group (always, when started by the driver)
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


class _Inbox:
    """What the driver sent: calls not started yet, in order, and whether to hold them (after a failure)."""

    def __init__(self, reader: FrameReader, reply: Callable[[bytes], None]) -> None:
        self._reader = reader
        self._reply = reply
        self.calls: deque[tuple[CallHeader, bytes | None, list[_packing.Packed]]] = deque()
        self.holding = False
        self.fed = ""          # the last call whose outputs the driver says it has read (see Fed)
        self.open = True

    def next_call(self) -> tuple[CallHeader, bytes | None, list[_packing.Packed]] | None:
        """The call to run next; ``None`` on goodbye.

        A call sent ahead is taken only once everything sent after it has been
        read, so that a Drop for it is seen in time; any other is taken at once
        (reading on would cost a system call per call for nothing).
        """
        while self.open and (not self.calls or self.holding or self._waits(self.calls[0][0])):
            self._take()
        return self.calls.popleft() if self.open else None

    def _waits(self, call: CallHeader) -> bool:
        """Whether ``call`` must wait for the driver: for what else has arrived (a Drop), or for its inputs to be read."""
        if not call.ahead:
            return False
        return self._reader.pending() or (call.chain is not None and call.chain[0] != self.fed)

    def _take(self) -> None:
        """Read one thing the driver sent (a call with its code and inputs, a Drop, a Go, goodbye)."""
        data = self._reader.recv_bytes()
        if not data:
            self.open = False   # goodbye
            return
        frame = decode(data)
        if isinstance(frame, CallHeader):
            code_bytes = self._reader.recv_bytes() if frame.ship else None
            packs: list[Any] = _packing.receive(self._reader.recv_bytes, [d for d in frame.descriptors if d is not None])
            if frame.chain is not None:   # the values the call before makes: filled in when this one starts
                sent = iter(packs)
                packs = [None if d is None else next(sent) for d in frame.descriptors]
            self.calls.append((frame, code_bytes, packs))
        elif isinstance(frame, Drop):   # too late when the call has started: the driver learns it ran
            kept = deque(c for c in self.calls if c[0].call_id != frame.call_id)
            self._reply(encode(Dropped(frame.call_id, ran=len(kept) == len(self.calls))))
            self.calls = kept
        elif isinstance(frame, Go):
            self.holding = False
        elif isinstance(frame, Fed):
            self.fed = frame.call_id


class _Made:
    """The outputs of the last call that ended well here, for a call sent behind it that takes them."""

    def __init__(self) -> None:
        self._call_id = ""
        self._outputs: dict[str, _packing.Packed] = {}

    def keep(self, call_id: str, keys: list[str], out: list[_packing.Packed]) -> None:
        # Kept as packed, buffers and all: the taker unpacks them (_packing.unpack), which copies
        # small buffers, so it gets values of its own, not views of what the call before returned.
        self._call_id = call_id
        self._outputs = dict(zip(keys, out))

    def forget(self) -> None:
        self._call_id, self._outputs = "", {}

    def feed(self, packs: list[_packing.Packed], chain: tuple[str, list[tuple[int, str]]]) -> None:
        """Fill in, in a call's values, those the call before makes."""
        before, wanted = chain
        if before != self._call_id:
            raise RuntimeError(f"the call {before!r}, whose outputs it takes, did not end well in this worker just before")
        for place, key in wanted:
            packs[place] = self._outputs[key]


def _serve(fd: int, parent: int, owner: str) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    host, pid = socket.gethostname(), os.getpid()
    code = _CodeCache()
    announcer = _Announcer(FrameWriter(fd))
    inbox = _Inbox(FrameReader(fd), announcer.send)
    made = _Made()
    announcer.send(encode(Ready(pid, host)))
    while True:
        taken = inbox.next_call()
        if taken is None:
            return  # goodbye
        call, code_bytes, packs = taken
        call_id, task_id, code_key = call.call_id, call.task_id, call.code_key
        started = time.time()
        announcer.begin(call_id, started, call.announce)

        def emit(stream: str, text: str, _call_id: str = call_id) -> None:
            announcer.send(encode(Log(_call_id, stream, text, time.time())))

        result: dict[str, Any] | None = None
        error: TaskError | None = None
        try:
            func = code.get(code_key, code_bytes)
            if call.chain is not None:
                made.feed(packs, call.chain)
            values = [_packing.unpack(p) for p in packs]
        except BaseException as exc:  # noqa: BLE001 - e.g. a module the worker cannot import
            error = wrapped_error(exc, f"task {task_id!r} could not be loaded in the worker")
        else:
            n = len(call.constant_names)
            params = gather_params(dict(zip(call.constant_names, values[:n])), dict(zip(call.input_names, values[n:])))
            del values
            with captured_output(emit):
                result, error = run_body(func, params, call.outputs, task_id)
            del params
        out: list[_packing.Packed] = []
        if result is not None:
            try:
                out = [_packing.pack(v, owner) for v in result.values()]
            except BaseException as exc:  # noqa: BLE001
                result, error = None, wrapped_error(exc, f"the result of task {task_id!r} could not be pickled")
        keys = list(result) if result is not None else []
        if error is None:
            made.keep(call_id, keys, out)
        else:
            made.forget()
        dropped = code.trim()
        if code_key not in code:  # it failed to load: the driver must send it again next time
            dropped.append(code_key)
        frames = [encode(Done(call_id, keys, error, started, time.time(), [p.descriptor() for p in out], dropped))]
        _packing.send(frames.append, out)
        announcer.end(frames)
        inbox.holding = error is not None
        # Drop references now, so an idle worker does not hold the last task's data (``made`` keeps
        # only its outputs' pickles and small buffers, for a call sent behind it that takes them).
        result, out, packs, taken = None, [], [], None
        del call


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
