"""maze: DAG workflows of Python tasks, from a notebook to a Ray cluster.

>>> from maze import MaClient, task
"""

from __future__ import annotations

from maze.client import MaClient
from maze.core.errors import (
    BackendError,
    CycleError,
    MazeError,
    RendererError,
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

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CycleError",
    "MaClient",
    "MaTask",
    "MaWorkflow",
    "MazeError",
    "RendererError",
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
