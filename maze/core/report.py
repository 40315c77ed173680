"""Plain-text progress lines for ``show_results`` and ``wait``.

Everything here reads messages only, exactly as a user's own loop over
``get_results`` would; the notebook widget is a second reader of the same
stream.
"""

from __future__ import annotations

import codecs
import io
import sys
from collections import Counter
from typing import Any, TextIO, cast

from .messages import MessageType, short_repr

_RESULT_WIDTH = 100


def short(value: Any, width: int = _RESULT_WIDTH) -> str:
    return short_repr(value, width)


def log_line(message: dict[str, Any]) -> str:
    d = message["data"]
    return "".join(f"[{d['task_id']}] {line}\n" for line in d["text"].splitlines() or [""])


def format_message(message: dict[str, Any]) -> str | None:
    """One line (or a few, for task output) describing a message."""
    kind, d = message["type"], message["data"]
    tid = d.get("task_id", "")
    if kind == MessageType.START_TASK:
        gpus = f", gpu {','.join(map(str, d['gpu_ids']))}" if d.get("gpu_ids") else ""
        return f"▶ started   {tid}  (worker {d.get('worker')} on {d.get('node')}{gpus})"
    if kind == MessageType.FINISH_TASK:
        return f"✔ finished  {tid}  in {d.get('duration', 0):.3f} s -> {short(d.get('result'))}"
    if kind == MessageType.TASK_EXCEPTION:
        return f"✘ failed    {tid}  {d.get('error_type')}: {d.get('error')}"
    if kind == MessageType.TASK_RETRY:
        return f"↻ retrying  {tid}  attempt {d.get('attempt')} failed ({d.get('error')}); next in {d.get('delay')} s"
    if kind == MessageType.TASK_SKIPPED:
        return f"⊘ skipped   {tid}  {d.get('reason')}"
    if kind == MessageType.TASK_LOG:
        return log_line(message).rstrip("\n")
    return None


def summary_line(summary: dict[str, Any], states: Counter[str]) -> str:
    """The last line of ``show_results``: the outcome, a count per task state, the wall time."""
    counts = ", ".join(f"{n} {state}" for state, n in states.items() if n)
    took = f"{summary['duration']:.3f} s" if summary.get("duration") is not None else "an unknown time"
    return f"■ workflow {summary['status']} in {took}: {counts}"


def echo_log(message: dict[str, Any]) -> None:
    """Print a ``task_log`` message to the stream the task wrote to, marked with the task id."""
    if message["type"] == MessageType.TASK_LOG:
        stream = encodable(sys.stderr if message["data"].get("stream") == "stderr" else sys.stdout)
        stream.write(log_line(message))
        stream.flush()


def encodable(stream: TextIO) -> TextIO:
    """``stream``, or, where its encoding is not UTF-8 (an ASCII or Latin-1 terminal, a log file
    opened so), a view of it that writes what that encoding cannot show as ``?``: the progress
    glyphs, or what a task printed, never raise ``UnicodeEncodeError`` in the middle of a run."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        if codecs.lookup(encoding).name.startswith("utf"):
            return stream
    except LookupError:
        pass
    return cast(TextIO, _Replacing(stream, encoding))


class _Replacing(io.TextIOBase):
    """A text stream's view that replaces what its encoding cannot write."""

    def __init__(self, stream: TextIO, encoding: str) -> None:
        self._stream = stream
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]  # a plain attribute in typeshed, read-only here
        return self._encoding

    def write(self, text: str) -> int:
        self._stream.write(text.encode(self._encoding, "replace").decode(self._encoding))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()
