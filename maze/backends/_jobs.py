"""What the local and the Ray backend share: the job record, timeouts, and a few helpers.

A :class:`Job` is one submitted :class:`~maze.core.protocol.TaskCall` in a
backend's hands: the call, where its events go, the future its outcome
resolves, and two pieces of stop bookkeeping. Each backend subclasses it with
what only it needs (the local one the packed constants, the Ray one its object
references and locks).

Timeouts are the same everywhere: a call's clock starts when a worker really
starts it (:meth:`Job.start_clock`), not when it is submitted or queued; a
backend's own thread sweeps its running jobs now and then (:func:`sweep`),
takes those past their deadline (once each) and stops them, reporting
:meth:`Job.timed_out` as the attempt's error. A job stopped on purpose keeps
the reason in :attr:`Job.stop_reason`, which the backend reports instead of
whatever the stop made happen (a dead worker, a cancelled Ray task).

Plain attributes, no locks here: each backend says under which of its locks
they change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from maze.core.execute import error_of
from maze.core.failure import TaskError

if TYPE_CHECKING:   # a worker imports this module too, and needs none of these
    from concurrent.futures import Future

    from maze.core.protocol import Reporter, TaskCall, TaskOutcome


@dataclass(eq=False)
class Job:
    """One call submitted to a backend, until its future resolves."""

    call: TaskCall
    report: Reporter
    future: Future[TaskOutcome]
    deadline: float | None = None          # monotonic time at which the attempt is stopped; None: no timeout (yet)
    stop_reason: TaskError | None = None   # why we stopped it on purpose (cancel, timeout, close)

    def start_clock(self, now: float) -> None:
        """The call started on a worker at ``now`` (monotonic): it must end within its timeout."""
        if self.call.timeout:
            self.deadline = now + self.call.timeout

    def timed_out(self) -> TaskError:
        """The error of an attempt stopped for running past its timeout."""
        return TaskError.timed_out(self.call.task_id, self.call.timeout or 0)


J = TypeVar("J", bound=Job)


def sweep(jobs: Iterable[J], now: float) -> tuple[list[J], float | None]:
    """The jobs past their deadline at ``now``, and the earliest deadline of the others.

    A job taken has its deadline cleared, so it is taken once however long its
    stop takes. The caller stops the jobs taken (see :meth:`Job.timed_out`).
    """
    late: list[J] = []
    earliest: float | None = None
    for job in jobs:
        deadline = job.deadline
        if deadline is None:
            continue
        if deadline <= now:
            job.deadline = None
            late.append(job)
        elif earliest is None or deadline < earliest:
            earliest = deadline
    return late, earliest


def wrapped_error(exc: BaseException, context: str) -> TaskError:
    """The error of ``exc``, its line prefixed with what was being done (``"the result of task 'x' could not be pickled"``)."""
    inner = error_of(exc)
    return TaskError(inner.error_type, f"{context}: {inner.error}", inner.traceback)


def pid_exists(pid: int) -> bool:
    """Whether a process of this id exists (a zombie does; so does another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
