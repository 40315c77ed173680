"""The message stream of a run.

Messages keep the wire form of the API, plain ``{"type": str, "data": dict}``
dicts, because that is what users iterate, print and store. This module is
the only place that builds them, so every field is spelled once.
:class:`MessageLog` is the list-like live view handed to users.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypedDict, cast

from . import waiting

Message = dict[str, Any]

#: Longest ``error`` line and ``result`` traceback a ``task_exception`` message carries.
ERROR_LINE_LIMIT = 1_000
TRACEBACK_LIMIT = 20_000


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters; never raises (a broken ``__repr__`` gives the type)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - whatever a user's __repr__ raises, a message still gets written
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a note of what was cut."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - 60) // 2
    return f"{text[:keep]}\n[... {len(text) - 2 * keep:,} characters not shown ...]\n{text[len(text) - keep:]}"


class MessageType(str, enum.Enum):
    START_TASK = "start_task"
    FINISH_TASK = "finish_task"
    TASK_EXCEPTION = "task_exception"
    TASK_RETRY = "task_retry"
    TASK_SKIPPED = "task_skipped"
    TASK_LOG = "task_log"
    FINISH_WORKFLOW = "finish_workflow"


# -- the vocabulary: the data of each message type, spelled once ------------------------------
# Producers build messages with the functions below; readers (the fold, the
# reports) read ``message["data"]`` as the matching TypedDict, so a misspelt
# field is a type error, not a silent ``None``. On the wire they stay plain dicts.


class RunData(TypedDict):
    workflow_id: str
    run_id: str


class TaskData(RunData):
    task_id: str
    task_name: str
    time: float


class _OnRay(TypedDict, total=False):
    node_id: str                       # Ray's id of the node


class StartTaskData(TaskData, _OnRay):
    node: str
    worker: str | int
    gpu_ids: list[int]
    attempt: int


class _Reused(TypedDict, total=False):
    cached: bool                       # a reused result: from an earlier run or the result cache
    reused_from: str


class FinishTaskData(TaskData, _Reused):
    result: Any                        # the dict the task returned
    duration: float
    fingerprint: dict[str, str]


class TaskExceptionData(TaskData):
    result: str                        # the traceback (bounded)
    error_type: str
    error: str                         # one line (bounded)
    attempt: int


class TaskRetryData(TaskData):
    attempt: int
    error: str
    delay: float


class TaskSkippedData(TaskData):
    reason: str
    upstream: str | None
    cancelled: bool


class TaskLogData(TaskData):
    stream: str                        # "stdout" or "stderr"
    text: str


class _Interrupted(TypedDict, total=False):
    interrupted: str                   # why, for a run whose driving process died


class FinishWorkflowData(RunData, _Interrupted):
    status: str
    has_exception: bool
    duration: float | None


# Each type's wire name, looked up once: an enum member's ``.value`` costs a Python call, and
# messages are made several times per task.
_FINISH_TASK = MessageType.FINISH_TASK.value
_FINISH_WORKFLOW = MessageType.FINISH_WORKFLOW.value
_START_TASK = MessageType.START_TASK.value
_TASK_EXCEPTION = MessageType.TASK_EXCEPTION.value
_TASK_LOG = MessageType.TASK_LOG.value
_TASK_RETRY = MessageType.TASK_RETRY.value
_TASK_SKIPPED = MessageType.TASK_SKIPPED.value


def _message(kind: str, data: RunData) -> Message:
    return {"type": kind, "data": data}


def _task(run: RunData, task_id: str, task_name: str, at: float | None) -> TaskData:
    return {**run, "task_id": task_id, "task_name": task_name, "time": time.time() if at is None else at}


def start_task(run: RunData, task_id: str, task_name: str, *, at: float, node: str, worker: str | int,
               gpu_ids: list[int], attempt: int, node_id: str | None = None) -> Message:
    data: StartTaskData = {**_task(run, task_id, task_name, at), "node": node, "worker": worker,
                           "gpu_ids": gpu_ids, "attempt": attempt}
    if node_id:
        data["node_id"] = node_id
    return _message(_START_TASK, data)


def finish_task(run: RunData, task_id: str, task_name: str, *, at: float | None, result: Any, duration: float,
                fingerprint: dict[str, str], reused_from: str | None = None) -> Message:
    data: FinishTaskData = {**_task(run, task_id, task_name, at), "result": result, "duration": duration,
                            "fingerprint": fingerprint}
    if reused_from:
        data["cached"], data["reused_from"] = True, reused_from
    return _message(_FINISH_TASK, data)


def task_exception(run: RunData, task_id: str, task_name: str, *, traceback: str, error_type: str, error: str,
                   attempt: int) -> Message:
    data: TaskExceptionData = {**_task(run, task_id, task_name, None), "result": clip(traceback, TRACEBACK_LIMIT),
                               "error_type": error_type, "error": clip(error, ERROR_LINE_LIMIT), "attempt": attempt}
    return _message(_TASK_EXCEPTION, data)


def task_retry(run: RunData, task_id: str, task_name: str, *, attempt: int, error: str, delay: float) -> Message:
    data: TaskRetryData = {**_task(run, task_id, task_name, None), "attempt": attempt,
                           "error": clip(error, ERROR_LINE_LIMIT), "delay": delay}
    return _message(_TASK_RETRY, data)


def task_skipped(run: RunData, task_id: str, task_name: str, *, reason: str, upstream: str | None,
                 cancelled: bool) -> Message:
    data: TaskSkippedData = {**_task(run, task_id, task_name, None), "reason": reason, "upstream": upstream,
                             "cancelled": cancelled}
    return _message(_TASK_SKIPPED, data)


def task_log(run: RunData, task_id: str, task_name: str, *, at: float, stream: str, text: str) -> Message:
    data: TaskLogData = {**_task(run, task_id, task_name, at), "stream": stream, "text": text}
    return _message(_TASK_LOG, data)


def finish_workflow(run: RunData, *, status: str, has_exception: bool, duration: float | None,
                    interrupted: str | None = None) -> Message:
    data: FinishWorkflowData = {**run, "status": status, "has_exception": has_exception, "duration": duration}
    if interrupted:
        data["interrupted"] = interrupted
    return _message(_FINISH_WORKFLOW, data)


def copy_message(message: Message) -> Message:
    """A copy of ``message`` that its reader may change: its data, and a result dict in it, are new.

    The values inside stay the task's own objects: a large array is not copied
    for each reader.
    """
    data = dict(message["data"])
    if isinstance(data.get("result"), dict):
        data["result"] = dict(data["result"])
    return cast(Message, {"type": message["type"], "data": data})


class MessageLog:
    """The messages of one run, in order: a live, re-iterable, list-like view.

    Iterating yields each message as it is recorded and stops after
    ``finish_workflow``; a second iteration starts again from the first
    message. What it yields are copies (``copy_message``): changing one
    never changes the run's record, its history or what another reader sees.
    Ctrl-C while an iteration waits or hands over a message cancels the run.
    ``len()``, indexing and ``==`` wait for the run to end, because their
    answer would change otherwise.
    """

    def __init__(
        self, records: list[Message], changed: threading.Condition, ended: threading.Event,
        reading: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self._records = records    # owned by the run; only appended to
        self._changed = changed    # notified on every append
        self._ended = ended
        self._reading = reading    # the run's: Ctrl-C inside it stops the run (RunState.reading)

    def __iter__(self) -> Iterator[Message]:
        index = 0
        with self._reading():   # spans the yields: Ctrl-C raised as this generator resumes (in list(log)) too
            while True:
                with self._changed:
                    while index >= len(self._records) and not self._ended.is_set():
                        self._changed.wait(waiting.SLICE_S)   # a slice: see waiting's docstring
                    batch = self._records[index:]
                    done = self._ended.is_set()
                yield from map(copy_message, batch)
                index += len(batch)
                if done and index >= len(self._records):
                    return

    def _complete(self) -> list[Message]:
        with self._reading():
            waiting.wait(self._ended.wait)
        return self._records

    def __len__(self) -> int:
        return len(self._complete())

    def __getitem__(self, index: Any) -> Any:
        found = self._complete()[index]
        return [copy_message(m) for m in found] if isinstance(index, slice) else copy_message(found)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageLog):
            other = other._complete()
        return self._complete() == other

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so not hashable

    def __repr__(self) -> str:
        state = "ended" if self._ended.is_set() else "live"
        return f"<MessageLog {state}, {len(self._records)} messages so far>"
