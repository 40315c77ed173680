"""maze: DAG workflows of Python tasks, from a notebook to a Ray cluster.

>>> from maze import MaClient, task

The names below are imported on first use (PEP 562), so that a worker
process, which imports only what it runs, does not pay for the client, the
scheduler and the history: that keeps a first result quick.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "MaClient": "maze.client",
    "MaTask": "maze.core.workflow",
    "MaWorkflow": "maze.core.workflow",
    "TaskOutput": "maze.core.workflow",
    "TaskOutputs": "maze.core.workflow",
    "TaskFunction": "maze.core.task",
    "task": "maze.core.task",
    **dict.fromkeys(
        ("BackendError", "CycleError", "MazeError", "RendererError", "TaskDefinitionError", "UnknownBackendError",
         "UnknownOutputError", "UnknownRunError", "UnknownTaskError", "UnsafeHistoryError", "UnsatisfiableError",
         "StaleCodeError", "WorkflowError"),
        "maze.core.errors",
    ),
}

if _TYPE_CHECKING:
    from maze.client import MaClient
    from maze.core.errors import (
        BackendError,
        CycleError,
        MazeError,
        RendererError,
        StaleCodeError,
        TaskDefinitionError,
        UnknownBackendError,
        UnknownOutputError,
        UnknownRunError,
        UnknownTaskError,
        UnsafeHistoryError,
        UnsatisfiableError,
        WorkflowError,
    )
    from maze.core.task import TaskFunction, task
    from maze.core.workflow import MaTask, MaWorkflow, TaskOutput, TaskOutputs


# Subpackages reachable as attributes after a plain ``import maze``, as they were before it was lazy.
_SUBMODULES = frozenset({"backends", "cache", "cli", "client", "core", "notebook"})


def __getattr__(name: str) -> _Any:
    if name in _SUBMODULES:
        return _importlib.import_module(f"maze.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maze' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value   # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BackendError",
    "CycleError",
    "MaClient",
    "MaTask",
    "MaWorkflow",
    "MazeError",
    "RendererError",
    "StaleCodeError",
    "TaskDefinitionError",
    "TaskFunction",
    "TaskOutput",
    "TaskOutputs",
    "UnknownBackendError",
    "UnknownOutputError",
    "UnknownRunError",
    "UnknownTaskError",
    "UnsafeHistoryError",
    "UnsatisfiableError",
    "WorkflowError",
    "__version__",
    "task",
]
