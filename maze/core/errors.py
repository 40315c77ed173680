"""The one error hierarchy of maze.

Every error maze raises on purpose derives from :class:`MazeError`. Errors that
mean "the value you passed is wrong" also derive from the built-in exception a
Python user would expect, so ``except ValueError`` keeps working::

    MazeError
    ├── TaskDefinitionError (ValueError)   bad @task arguments, bad resources
    ├── WorkflowError (ValueError)         bad add_task / add_edge / del_edge input
    │   └── CycleError                     an edge would close a cycle
    ├── UnknownOutputError (KeyError)      task.outputs["nope"]
    ├── UnsatisfiableError (ValueError)    a task can never fit the capacity
    ├── UnknownRunError (KeyError)         a run id this workflow never started
    ├── UnknownTaskError (KeyError)        a task id (or prefix) that matches nothing
    ├── BackendError                       a backend could not be created or used
    │   └── UnknownBackendError (ValueError)
    ├── UnsafeHistoryError                 a run history others could write, or in a format not read (old)
    └── RendererError                      no Graphviz renderer to draw with

Errors *inside* a task are not raised to the caller: they become
``task_exception`` messages, so one failing task never loses the results of the
others.
"""

from __future__ import annotations

from collections.abc import Sequence


class MazeError(Exception):
    """Base class of every error maze raises on purpose."""


class TaskDefinitionError(MazeError, ValueError):
    """A ``@task`` declaration (names, resources, options) is not valid."""


class WorkflowError(MazeError, ValueError):
    """A workflow edit is not valid: missing inputs, foreign outputs, bad edges."""


class CycleError(WorkflowError):
    """An edge would close a cycle. ``cycle`` lists the task ids on it, in order."""

    def __init__(self, message: str, cycle: Sequence[str]) -> None:
        super().__init__(message)
        self.cycle = tuple(cycle)


class UnknownOutputError(MazeError, KeyError):
    """A task output that the task does not declare."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


class UnsatisfiableError(MazeError, ValueError):
    """A task demands more than the capacity can ever offer, so it could never start."""


class UnknownRunError(MazeError, KeyError):
    """A run id that this workflow did not start (or whose record was cleared)."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownTaskError(MazeError, KeyError):
    """A task id or prefix that matches no task, or more than one."""

    def __str__(self) -> str:
        return str(self.args[0])


class BackendError(MazeError):
    """A backend could not be created or has been closed."""


class UnknownBackendError(BackendError, ValueError):
    """A backend name that is not registered."""


class RendererError(MazeError):
    """No Graphviz renderer is available to draw a workflow."""


class TaskOutputError(MazeError, TypeError):
    """A task returned something other than a dict, or left out a declared output.

    Raised inside the worker and reported as a ``task_exception`` message.
    """


class TaskCancelled(MazeError):
    """A task attempt was stopped because its run was cancelled."""


class TaskTimeoutError(MazeError, TimeoutError):
    """A task attempt ran longer than its ``timeout``."""


class WorkerDiedError(MazeError):
    """The process running a task ended before the task did."""


class UnsafeHistoryError(MazeError):
    """A run history file whose pickled values maze will not load.

    Either the file (or its ``-wal`` file) could have been written by someone
    else (another owner, or writable by group or others), or it is in a format
    this maze does not read: the old one, which stored every message as a
    pickle, or a newer one.
    """


class StaleCodeError(MazeError):
    """A worker found another version of one of the user's module files than the one its run took at
    ``run()`` (raised in the worker: the task fails with it). See :mod:`maze.core.stamps`."""
