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
from typing import Any

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


def make(kind: MessageType, workflow_id: str, run_id: str, **data: Any) -> Message:
    return {"type": kind.value, "data": {"workflow_id": workflow_id, "run_id": run_id, **data}}


def task_message(
    kind: MessageType, workflow_id: str, run_id: str, task_id: str, task_name: str,
    at: float | None = None, **data: Any,
) -> Message:
    return make(
        kind, workflow_id, run_id,
        task_id=task_id, task_name=task_name, time=time.time() if at is None else at, **data,
    )


class MessageLog:
    """The messages of one run, in order: a live, re-iterable, list-like view.

    Iterating yields each message as it is recorded and stops after
    ``finish_workflow``; a second iteration starts again from the first
    message. Ctrl-C while an iteration waits cancels the run. ``len()``, indexing and ``==`` wait for the run to end, because
    their answer would change otherwise.
    """

    def __init__(
        self, records: list[Message], changed: threading.Condition, ended: threading.Event,
        on_interrupt: Callable[[], None] | None = None,
    ) -> None:
        self._records = records    # owned by the run; only appended to
        self._changed = changed    # notified on every append
        self._ended = ended
        self._on_interrupt = on_interrupt   # Ctrl-C while waiting: what stops the run

    def __iter__(self) -> Iterator[Message]:
        index = 0
        while True:
            try:
                with self._changed:
                    while index >= len(self._records) and not self._ended.is_set():
                        self._changed.wait()
                    batch = self._records[index:]
                    done = self._ended.is_set()
            except KeyboardInterrupt:
                self._interrupted()
                raise
            yield from batch
            index += len(batch)
            if done and index >= len(self._records):
                return

    def _complete(self) -> list[Message]:
        try:
            self._ended.wait()
        except KeyboardInterrupt:
            self._interrupted()
            raise
        return self._records

    def _interrupted(self) -> None:
        # A reader interrupted while waiting means "stop this run", as in wait().
        if self._on_interrupt is not None:
            self._on_interrupt()

    def __len__(self) -> int:
        return len(self._complete())

    def __getitem__(self, index: Any) -> Any:
        return self._complete()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageLog):
            other = other._complete()
        return self._complete() == other

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so not hashable

    def __repr__(self) -> str:
        state = "ended" if self._ended.is_set() else "live"
        return f"<MessageLog {state}, {len(self._records)} messages so far>"
