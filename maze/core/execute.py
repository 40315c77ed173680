"""Running one task body, wherever it runs.

Every backend calls :func:`run_body` in its worker (a process of the local
pool, a Ray worker, or a thread of the inline backend), so the checks on what
a task returns and the shape of its errors are the same everywhere.
"""

from __future__ import annotations

import io
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import TaskOutputError
from .failure import TaskError
from .messages import short_repr

if TYPE_CHECKING:
    from .task import TaskBody

Emit = Callable[[str, str], None]  # (stream, text)


def run_body(
    func: TaskBody, params: dict[str, Any], outputs: tuple[str, ...], task_id: str
) -> tuple[dict[str, Any] | None, TaskError | None]:
    """Call the task; return ``(result, None)`` or ``(None, error)``. Never raises."""
    try:
        result = func(params)
        check_result(result, outputs, task_id)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task is a failed task too
        return None, error_of(exc)
    return result, None


def check_result(result: Any, outputs: tuple[str, ...], task_id: str) -> None:
    if not isinstance(result, dict):
        raise TaskOutputError(
            f"task {task_id!r} returned {type(result).__name__} {short_repr(result, 60)}; "
            f"expected a dict with the keys {list(outputs)}"
        )
    missing = [key for key in outputs if key not in result]
    if missing:
        raise TaskOutputError(
            f"task {task_id!r} did not return its declared output(s) {missing}; "
            f"it returned the keys {list(result)}"
        )


def error_of(exc: BaseException) -> TaskError:
    """The task's own exception, as text. Never raises, whatever the exception's ``__str__`` does."""
    kind = type(exc).__name__
    try:
        message = str(exc).strip()
    except BaseException as inner:  # noqa: BLE001 - a broken __str__ must not take the worker down
        message = f"<{kind}: str() of the exception raised {type(inner).__name__}>"
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001
        text = f"{kind}: {message}"
    line = message.splitlines()[0] if message else ""
    return TaskError(error_type=kind, error=line, traceback=text)


class LineWriter(io.TextIOBase):
    """A text stream that hands complete lines to ``emit``; :meth:`flush` sends the rest."""

    def __init__(self, stream: str, emit: Emit) -> None:
        self._stream = stream
        self._emit = emit
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            head, _, self._pending = self._pending.rpartition("\n")
            self._emit(self._stream, head + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            text, self._pending = self._pending, ""
            self._emit(self._stream, text)


@contextmanager
def captured_output(emit: Emit) -> Iterator[None]:
    """Route ``print()`` (sys.stdout and sys.stderr) to ``emit`` for the duration.

    Process-wide, so only for workers that run one task at a time.
    """
    out, err = LineWriter("stdout", emit), LineWriter("stderr", emit)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        out.flush()
        err.flush()


def gather_params(constants: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params`` dict a task receives: constants and upstream values together."""
    return {**constants, **inputs}
