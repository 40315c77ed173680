"""How an attempt failed: what a worker reports and the scheduler acts on.

Kept apart from :mod:`maze.core.protocol` (which re-exports both) so that a
worker process, which needs these and little else of the core, starts without
importing the scheduler's side of the contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import TaskCancelled, WorkerDiedError


class Failure(str, enum.Enum):
    """What kind of failure an attempt had: the scheduler acts on this, never on a type name."""

    RAISED = "raised"              # the task raised, or returned something other than its outputs
    CANCELLED = "cancelled"        # stopped because its run was cancelled (or its backend closed)
    TIMED_OUT = "timed_out"        # stopped because it ran past its timeout
    WORKER_DIED = "worker_died"    # the process running it ended first


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why an attempt failed, in the words of the ``task_exception`` message."""

    error_type: str     # the exception's class name, e.g. "ValueError"
    error: str          # one line
    traceback: str      # the full text, for the message's ``result``
    kind: Failure = Failure.RAISED

    @property
    def text(self) -> str:
        """``"ValueError: bad input"``: the type and the line, as ``get_task_result`` reports it."""
        return f"{self.error_type}: {self.error}" if self.error else self.error_type

    @classmethod
    def simple(cls, error_type: str, error: str, kind: Failure = Failure.RAISED) -> TaskError:
        return cls(error_type, error, f"{error_type}: {error}", kind)

    # The type names on the wire (``error_type``) are those of maze's own errors,
    # so ``except maze.core.errors.TaskCancelled`` and the message agree.

    @classmethod
    def cancelled(cls, task_id: str, why: str = "its run was cancelled") -> TaskError:
        """What a backend reports for an attempt it stopped because the run was cancelled."""
        return cls.simple(TaskCancelled.__name__, f"task {task_id!r} was stopped: {why}", Failure.CANCELLED)

    @classmethod
    def timed_out(cls, task_id: str, timeout: float, *, stopped: bool = True) -> TaskError:
        what = "and was stopped" if stopped else "(it could not be stopped; reported when it returned)"
        return cls.simple(TimeoutError.__name__, f"task {task_id!r} ran longer than its timeout of {timeout:g} s {what}",
                          Failure.TIMED_OUT)

    @classmethod
    def worker_died(cls, task_id: str, how: str) -> TaskError:
        return cls.simple(WorkerDiedError.__name__, f"the worker process running task {task_id!r} died ({how})",
                          Failure.WORKER_DIED)
