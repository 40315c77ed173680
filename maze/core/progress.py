"""Following a run in a terminal: ``show_results``'s printing, and the ``maze.run`` logger.

One reader, :func:`follow`, reads a run's message stream (live, or replayed
from the history) in batches and prints it in one of three styles:

* ``"events"``: a line per event (``report.format_message``), as a log;
* ``"compact"``: one progress line (counts by state, done/total, elapsed,
  ETA), for runs too large for a line per event. On a TTY it is redrawn in
  place with ``\\r`` at most :data:`REDRAW_S` apart; elsewhere (CI logs, files)
  it is printed as a new line at most every :data:`LINE_EVERY_S` seconds, so
  a short run prints none. What must not be lost is still printed as lines of
  its own: task output (``[task_id] ...``) and the first
  :data:`NOTABLE_SHOWN` failures and retries; on a TTY the progress line is
  cleared first and redrawn after, so nothing is garbled;
* ``"summary"``: nothing until the end (the notebook widget shows the run).

Every style ends with nothing printed but the caller's summary line, and
every style logs each event to the ``maze.run`` logger (:func:`log_event`),
which has a ``NullHandler`` only: nothing is shown unless the application
configures :mod:`logging`. Logging here, in a reader, keeps it off the
scheduler's hot path; a run is logged when, and each time, it is followed.

States are counted with the one fold (:class:`~maze.core.fold.RunFold`),
as every other reader of the stream does.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Literal, TextIO, cast

from . import report, waiting
from .fold import CANCELLED_ERROR, RunFold, TaskView
from .messages import (
    FinishTaskData,
    FinishWorkflowData,
    Message,
    MessageType,
    StartTaskData,
    TaskExceptionData,
    TaskRetryData,
    TaskSkippedData,
)
from .run import RunState

Style = Literal["events", "compact", "summary"]

#: A run of at most this many tasks gets a line per event in a terminal; a larger one the progress line.
EVENT_LINES_UP_TO = 20
#: On a TTY, the progress line is redrawn at most this often (seconds).
REDRAW_S = 0.2
#: Elsewhere (a file, a pipe, a CI log), a progress line is printed at most this often (seconds).
LINE_EVERY_S = 5.0
#: How many failures and retries the compact style prints as lines of their own; the rest are counted.
NOTABLE_SHOWN = 10

#: Where each event goes: DEBUG task start/finish, INFO retries/skips/cancellations/run end, WARNING failures.
log = logging.getLogger("maze.run")
# The library's only handler: the events reach the application's handlers (and caplog) by propagation,
# and nothing is printed by logging's last-resort handler when the application configured none.
log.addHandler(logging.NullHandler())

# The order states are listed in on the progress line: outcomes first, then what is still going.
_ORDER = (TaskView.FINISHED, TaskView.CACHED, TaskView.FAILED, TaskView.SKIPPED, TaskView.CANCELLED,
          TaskView.INTERRUPTED, TaskView.RETRYING, TaskView.RUNNING, TaskView.PENDING)
_BAR_WIDTH = 20


def choose_style(tasks: int, *, verbose: bool | None, shown: bool) -> Style:
    """``show_results``'s rule: ``verbose=True`` every event; the widget shown (and not verbose) the summary only;
    otherwise a line per event up to :data:`EVENT_LINES_UP_TO` tasks (and never with ``verbose=False``),
    the progress line above."""
    if verbose:
        return "events"
    if shown:
        return "summary"
    if verbose is None and tasks <= EVENT_LINES_UP_TO:
        return "events"
    return "compact"


def is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError, OSError):  # a closed or bare file-like object
        return False


def batches(run: RunState, wake_s: float) -> Iterator[Sequence[Message]]:
    """The run's messages in order, a batch at a time, until its ``finish_workflow``.

    Unlike iterating ``run.log()``, a quiet run yields an empty batch every
    ``wake_s`` seconds, so a progress line's clock moves while nothing happens.
    Its reader holds ``run.reading()``, so that Ctrl-C cancels the run, as everywhere a run is waited on.
    """
    seen = 0
    while True:
        with run.changed:
            # The state is checked again after each slice: a notify can be used up by a slice that
            # times out at that moment (Condition.wait then returns False though it was notified).
            waiting.wait_for(run.changed.wait, partial(_news, run, seen), wake_s)
            batch = list(run.messages[seen:])
            done = run.ended.is_set()
        seen += len(batch)
        yield batch
        if done:  # read under the lock with done set: the batch held everything
            return


def _news(run: RunState, seen: int) -> bool:
    return seen < len(run.messages) or run.ended.is_set()


def follow(run: RunState, out: TextIO, style: Style, *, tty: bool | None = None,
           clock: Callable[[], float] = time.monotonic) -> None:
    """Read ``run`` to its end, printing to ``out`` in ``style`` and logging each event (see the module docstring)."""
    fold = RunFold(tuple(run.plan.tasks))
    compact = _Compact(run, out, is_tty(out) if tty is None else tty, clock) if style == "compact" else None
    wake_s = (REDRAW_S if compact.tty else LINE_EVERY_S) if compact is not None else 3600.0
    try:
        with run.reading():   # Ctrl-C while printing cancels the run too, not only Ctrl-C while waiting
            for batch in batches(run, wake_s):
                fold.apply(batch)
                for message in batch:
                    log_event(run, message, fold)
                    if style == "events":
                        line = report.format_message(message)
                        if line is not None:
                            print(line, file=out, flush=True)
                    elif compact is not None:
                        compact.message(message)
                if compact is not None:
                    compact.tick(fold, ended=fold.ended)
    finally:   # also on Ctrl-C: what follows starts on a clean line
        if compact is not None:
            compact.clear()


class _Compact:
    """The progress line and the lines printed above it."""

    def __init__(self, run: RunState, out: TextIO, tty: bool, clock: Callable[[], float]) -> None:
        self.run, self.out, self.tty, self.clock = run, out, tty, clock
        self.total = len(run.plan.tasks)
        self.t0 = self._since(run.started_at)   # elapsed time counts from the run's start, not this reader's
        self.dated = False      # t0 checked against the first message's time
        self.last_draw = -math.inf if tty else clock()   # a file gets its first line only after LINE_EVERY_S
        self.drawn = 0          # width of the progress line now on the TTY (0: none shown)
        self.notable = 0        # failures and retries seen
        self.pending: list[str] = []   # lines to print above the progress line at the next tick

    def _since(self, wall: float) -> float:
        """The ``clock()`` reading of a ``time.time()`` moment in the past."""
        return self.clock() - max(0.0, time.time() - wall)

    def message(self, message: Message) -> None:
        kind, data = message["type"], message["data"]
        if not self.dated and "time" in data:
            # A run followed from the history began before its replay was built: its first message says when.
            self.t0, self.dated = min(self.t0, self._since(data["time"])), True
        if kind == MessageType.TASK_LOG:
            self.pending.append(report.log_line(message).rstrip("\n"))
        elif kind == MessageType.TASK_RETRY or (
                kind == MessageType.TASK_EXCEPTION and data.get("error_type") != CANCELLED_ERROR):
            self.notable += 1
            if self.notable <= NOTABLE_SHOWN:
                self.pending.append(cast(str, report.format_message(message)))
            elif self.notable == NOTABLE_SHOWN + 1:
                self.pending.append("… more failures and retries are counted, not shown (verbose=True shows "
                                    "every event)")

    def tick(self, fold: RunFold, *, ended: bool) -> None:
        if self.pending:
            self.clear()
            self.out.write("".join(line + "\n" for line in self.pending))
            self.pending.clear()
            if self.tty and not ended:
                self._draw(fold)  # back at once: output must not make the line blink away
            self.out.flush()
        if ended:
            return
        now = self.clock()
        if now - self.last_draw >= (REDRAW_S if self.tty else LINE_EVERY_S):
            self._draw(fold)
            self.out.flush()

    def _draw(self, fold: RunFold) -> None:
        self.last_draw = now = self.clock()
        line = progress_line(fold.counts(), self.total, now - self.t0, bar=self.tty)
        if self.tty:
            line = line[:_columns(self.out) - 1]  # a wrapped line could not be redrawn with \r
            self.out.write("\r" + line + " " * max(0, self.drawn - len(line)))
            self.drawn = len(line)
        else:
            self.out.write(line + "\n")

    def clear(self) -> None:
        if self.drawn:
            self.out.write("\r" + " " * self.drawn + "\r")
            self.out.flush()
            self.drawn = 0


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def progress_line(counts: Mapping[str, int], total: int, elapsed: float, *, bar: bool = False) -> str:
    """``[██████░░░░] 412/1,000  0:07, ETA 0:10  400 finished · 2 failed · 10 running · 588 pending``.

    The bar is for a TTY; ``done`` counts tasks in a terminal state, and the ETA assumes the rest go
    at the pace so far (``?`` until one is done).
    """
    done = sum(n for state, n in counts.items() if TaskView(state).terminal)
    parts = " · ".join(f"{counts[s.value]:,} {s.value}" for s in _ORDER if counts.get(s.value))
    head = f"{done:,}/{total:,}"
    if bar:
        filled = round(_BAR_WIDTH * done / total) if total else _BAR_WIDTH
        head = f"[{'█' * filled}{'░' * (_BAR_WIDTH - filled)}] {head}"
    eta = clock_text(elapsed * (total - done) / done) if done else "?"
    # Times before the counts: a line cut to the terminal's width loses counts, not the ETA.
    return f"{head}  {clock_text(elapsed)}, ETA {eta}  {parts}"


def clock_text(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03``."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def log_event(run: RunState, message: Message, fold: RunFold) -> None:
    """Log one message to ``maze.run`` at its level (task_log output is printed, not logged)."""
    kind, data = message["type"], message["data"]
    level = _LEVELS.get(kind)
    if level is None or not log.isEnabledFor(level):
        return  # the common case when logging is not configured: no formatting at all
    extra = {"run_id": run.run_id, "task_id": data.get("task_id"), "event": kind}
    tid = data.get("task_id")
    if kind == MessageType.START_TASK:
        start = cast(StartTaskData, data)
        log.debug("run %s: task %s started (worker %s on %s)", run.run_id, tid, start.get("worker"),
                  start.get("node"), extra=extra)
    elif kind == MessageType.FINISH_TASK:
        done = cast(FinishTaskData, data)
        how = f"reused from {done.get('reused_from')}" if done.get("cached") else f"in {done.get('duration', 0):.3f} s"
        log.debug("run %s: task %s finished %s", run.run_id, tid, how, extra=extra)
    elif kind == MessageType.TASK_RETRY:
        retry = cast(TaskRetryData, data)
        log.info("run %s: task %s attempt %s failed (%s); retrying in %s s", run.run_id, tid, retry.get("attempt"),
                 _first_line(retry.get("error", "")), retry.get("delay"), extra=extra)
    elif kind == MessageType.TASK_SKIPPED:
        skipped = cast(TaskSkippedData, data)
        word = "cancelled" if skipped.get("cancelled") else "skipped"
        log.info("run %s: task %s %s: %s", run.run_id, tid, word, skipped.get("reason"), extra=extra)
    elif kind == MessageType.TASK_EXCEPTION:
        failed = cast(TaskExceptionData, data)
        if failed.get("error_type") == CANCELLED_ERROR:  # stopped by a cancel: not a failure of the task
            log.info("run %s: task %s cancelled: %s", run.run_id, tid, _first_line(failed.get("error", "")),
                     extra=extra)
        else:
            log.warning("run %s: task %s failed: %s: %s", run.run_id, tid, failed.get("error_type"),
                        _first_line(failed.get("error", "")), extra=extra)
    elif kind == MessageType.FINISH_WORKFLOW:
        end = cast(FinishWorkflowData, data)
        counts = ", ".join(f"{n} {state}" for state, n in fold.counts().items() if n)
        duration = end.get("duration")
        log.info("run %s (%s) %s in %s: %s", run.run_id, run.plan.name, end.get("status"),
                 f"{duration:.3f} s" if duration is not None else "an unknown time", counts, extra=extra)


_LEVELS = {
    MessageType.START_TASK.value: logging.DEBUG,
    MessageType.FINISH_TASK.value: logging.DEBUG,
    MessageType.TASK_RETRY.value: logging.INFO,
    MessageType.TASK_SKIPPED.value: logging.INFO,
    MessageType.TASK_EXCEPTION.value: logging.WARNING,  # a cancelled attempt is logged at INFO, below
    MessageType.FINISH_WORKFLOW.value: logging.INFO,
}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
