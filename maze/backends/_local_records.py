"""What the local backend keeps about its calls and its worker processes.

A :class:`LocalJob` is one call in the backend's hands. Calls lined up on a
worker are linked through ``behind`` and ``next``; one that takes outputs of
the call before it holds them as :class:`Upcoming` until that call's
:class:`Outbox` is filled. A :class:`Worker` is one worker process, joined to
the driver by a socket pair, with the calls it holds. The backend
(:mod:`maze.backends.local`) changes all of them under its lock, except what is
marked as its I/O thread's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maze.backends import _packing
from maze.backends._jobs import Job
from maze.backends._wire import FrameReader, FrameWriter
from maze.backends._worker import STALE_EXIT, WIRE, Done
from maze.core.protocol import TaskError, TaskOutcome

DeviceKey = tuple[int, ...] | None   # the GPUs a worker's CUDA_VISIBLE_DEVICES names; None: the variable is left alone

_BOOT = (
    "import sys, json; sys.path[:0] = [p for p in json.loads(sys.argv[4]) if p not in sys.path]; "
    "from maze.backends._worker import main; main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[5])"
)


@dataclass(eq=False)
class Constant:
    """A constant input, packed.

    Holding ``value`` keeps its ``id`` (part of the cache key) from being reused
    while a cache entry for it exists.
    """

    value: Any
    packed: _packing.Packed


@dataclass(eq=False, kw_only=True)
class LocalJob(Job):
    constants: list[Constant]              # packed ``call.constants``, in order; alive as long as the job
    inputs: dict[str, Any]                 # ``call.inputs``, with the upcoming outputs filled in once known
    outbox: Outbox                         # what it returned, for calls lined up behind it that take it
    started: bool = False                  # its start was reported
    sent_at: float | None = None           # when it was handed to a worker (time.time())
    sent_to: Worker | None = None          # the worker it was sent to, lined up behind that worker's call
    next: LocalJob | None = None           # the call lined up behind this one (submit_behind)
    behind: LocalJob | None = None         # the call this one is lined up behind, until that one ends
    chained: bool = False                  # sent ahead taking outputs of the call before it there (waits for Fed)


@dataclass(eq=False)
class Outbox:
    """The outputs of one call, once it has ended well.

    Apart from the call's job so that a lined-up call holds the outputs it
    takes and nothing more: holding the job would hold its inputs, which may be
    the outbox of the call before it, and so on down a chain.
    """

    call_id: str
    outputs: Mapping[str, _packing.Packed] | None = None


@dataclass(frozen=True, eq=False)
class Upcoming:
    """An output of a call that has not ended yet, in the inputs of the call lined up behind it."""

    outbox: Outbox
    key: str


@dataclass(frozen=True, eq=False)
class Unfed:
    """A job dropped because an output it takes will never be made, and why."""

    job: LocalJob
    error: TaskError


def end_unfed(unfed: Unfed | None) -> None:
    """Resolve a dropped job's future (with the backend's lock released: the scheduler's callbacks run)."""
    if unfed is not None:
        unfed.job.future.set_result(TaskOutcome(error=unfed.error))


@dataclass(eq=False)
class Worker:
    """One worker process (see :mod:`maze.backends._worker`) and the calls it holds."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket                             # read and written through the two below
    devices: DeviceKey
    reader: FrameReader = field(init=False)         # I/O thread only
    writer: FrameWriter = field(init=False)         # under the backend's lock; never waits
    host: str = ""
    known: set[str] = field(default_factory=set)   # content keys of the code this worker holds
    job: LocalJob | None = None                     # the call it runs (or is about to)
    ahead: deque[LocalJob] = field(default_factory=deque)  # calls sent behind ``job``, in order, not started yet
    dropping: set[str] = field(default_factory=set)  # calls told to drop, not yet answered (they may run)
    retiring: bool = False                          # told to exit; not an error when it ends
    unread_done: Done | None = None                 # a result whose output frames have not all arrived (I/O thread)
    read_at: float = 0.0                            # when the last of them arrived (time.monotonic(); I/O thread)

    @classmethod
    def start(cls, devices: DeviceKey, owner: str) -> Worker:
        """Start a worker process for ``devices``; ``owner`` names the shared-memory files of the driver's values.

        A fresh interpreter (``python -c``, so the user's script is never
        re-imported), leading a session and process group of its own, so that
        killing the group stops whatever its task started.
        """
        ours, theirs = socket.socketpair()
        env = None
        if devices is not None:
            env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=",".join(map(str, devices)))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid()), owner, json.dumps(sys.path), WIRE],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            theirs.close()
        return cls(proc, ours, devices)

    def __post_init__(self) -> None:
        sock = self.sock
        self.reader = FrameReader(sock.fileno())
        self.writer = FrameWriter(sock.fileno(), lambda view: sock.send(view, socket.MSG_DONTWAIT))

    @property
    def idle(self) -> bool:
        return self.job is None and not self.ahead and not self.dropping and not self.retiring

    @property
    def last(self) -> LocalJob | None:
        """The call this worker will run last of those it holds."""
        return self.ahead[-1] if self.ahead else self.job

    def kill_group(self) -> None:
        """SIGKILL the worker's process group: the worker and every process its task started.

        Safe from pid reuse while the worker is not reaped: its pid, which
        names the group, stays ours until then. Only the backend's I/O thread
        reaps a worker, after its last kill of it.
        """
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def describe_exit(code: int) -> str:
    """A worker's exit status in words: ``"killed by signal SIGKILL, exit code -9"``."""
    if code == STALE_EXIT:
        return (f"exit code {code}: the maze installed on disk is not the one this process imported (upgraded or "
                "edited since); restart this Python process (the notebook's kernel) to use it")
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}, exit code {code}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
