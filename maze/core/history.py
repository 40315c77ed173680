"""Durable run history: every run's DAG and messages in a SQLite database.

Writing. Messages are written as they happen, by a writer process of each
client's own, so recording never slows the scheduler: the scheduler appends
each message to a list (no lock, no encoding); a sender thread hands what
gathered over as one pickle on a private pipe when a run ends, when a flush
or close asks, and otherwise once a second (so it never interrupts a burst of
short tasks); and the writer process encodes it and commits it in one
transaction
(:mod:`maze.core.history_process`). The writer starts neither with the client
nor at the first run's start, but at the first flush, or a second after the
first message, so it takes no cores from the first tasks; the scheduler never
waits for it. A writer closed before then (a short script) writes its one
batch in a thread instead. It runs in a session of its own (a
Ctrl-C in the terminal stops the run, not its recording), at nice 10. The
database is in WAL mode with a busy timeout, so several processes (two
notebooks, a script and a notebook) can write to it at once. Recording never
stops a run: a batch that cannot be committed is left out, with one warning
per writer on the driver's ``maze`` logger, and the next one is written; a
writer process that dies is said once, and the runs go on unrecorded.
``HistoryWriter.flush()`` returns once what was handed over is committed, so a
reader sees it. ``HistoryWriter.close()`` commits everything handed over,
held-back output included, and waits for the writer to end; a second call does
nothing, so it can also be an ``atexit`` hook, and a process that ends without
closing its client loses nothing. A driver killed outright (SIGKILL) loses only
what it had not handed over yet (at most its last second of messages): the
writer sees the pipe close, or its parent change, commits everything it got
and ends. Where no
Python process can be started (an interpreter embedded in another program),
the same writer runs in a thread of the driver.

Deleting. ``HistoryReader.delete`` never deletes a run still going, whose
process would go on recording it; one deleted by other means (by hand) has its
later messages dropped by the writer.

Safe to open (:mod:`maze.core.history_values` does the encoding and the
check). Unpickling runs whatever code the pickle names, so the history
is JSON text: the DAG, and each message's data, where what JSON cannot hold
becomes its short ``repr`` text. The one exception is a ``finish_task``
result, whose values must come back as themselves for ``resume_from``: a value
that is not exactly JSON (``str``, ``int``, ``float``, ``bool``, ``None``, and
lists and str-keyed dicts of them, by exact type) is replaced in the JSON by a
descriptor, and its pickle, when at most :data:`VALUE_LIMIT` bytes, goes to
the ``vals`` table; a larger value is described only (:class:`Dropped`).
Pickles are loaded only when asked for (``HistoryReader.messages(values=True)``)
and only from a file, and ``-wal`` file, owned by this user and writable by no
one else, else :class:`~maze.core.errors.UnsafeHistoryError`. Listing runs,
reading a DAG and reading messages with ``values=False`` (which gives
:class:`Stored` placeholders) read JSON only, from any readable file. The
writer process loads no user object either: the driver pickles the result
values and stands in for other objects, so what it hands over holds builtin
values only.

Format. ``PRAGMA user_version`` is 2. The first format (0) pickled every
message and is never read: the default file name changed from
``history.sqlite3`` to ``runs.sqlite3``, so an old default file is simply left
alone (it can be deleted), and opening an old file by name raises
``UnsafeHistoryError`` naming it.

Private. A directory created for the history is 0700, and maze's own default
directory is set back to 0700 if it is wider; the database is created 0600
before SQLite opens it, and SQLite gives its ``-wal`` and ``-shm`` files the
same mode. Existing files and directories the user chose keep their modes.

Interrupted runs. Each run row names its owner, the driver (not its writer
process): host, pid and, on Linux, the process's start time, so that a reused
pid is not taken for the owner. A run still ``running`` whose owner on this
host has ended is marked ``interrupted`` by the next reader that lists, reads
or deletes runs and by the next writer that opens the file: its ``ended_at``
becomes the time of its last message and a ``finish_workflow`` is appended, so
a replay ends. Both happen in one
transaction that re-checks the status, so two processes never both do it. What
a dead driver's writer commits after that is dropped: the run has ended.
Marking waits at most a second for another process writing the file; a reader
that could not mark such a run (that, or a file it may only read) shows it
interrupted all the same, without writing it.

Bounded output. Per run and task, the first ``log_head`` ``task_log`` messages
are written as they come and the last ``log_tail`` are held back until the
task or the run ends (or the writer closes); between them one ``task_log``
says how many lines were not kept. It takes the sequence number of the first
message left out, so a replay keeps the order.

Default location: ``$MAZE_HISTORY`` if set, else
``$XDG_DATA_HOME/maze/runs.sqlite3`` (``~/.local/share/maze/...``).
"""

from __future__ import annotations

import itertools
import json
import logging
import numbers
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from .errors import BackendError, UnsafeHistoryError
from .history_process import Link, not_recorded, pack
from .history_store import DEFAULT_NAME as _DEFAULT_NAME
from .history_store import (
    FORMAT,
    Item,
    connect,
    connect_to_read,
    default_path,
    interrupt,
    interruption,
    snapshot,
    start_time,
    writable,
)
from .history_store import settle_orphans as _settle_orphans
from .history_values import VALUE_LIMIT, Dropped, Stored, check_private, json_text, load_value
from .messages import Message
from .plan import OutputRef, PerPlan, Plan, PlannedTask
from .resources import Resources
from .run import RunState
from .task import TaskFunction, TaskOptions, TaskSpec

__all__ = ["FORMAT", "VALUE_LIMIT", "Dropped", "HistoryReader", "HistoryWriter", "Stored", "connect", "dag_json",
           "default_path", "plan_of"]

_LATEST_S = 1.0  # what was handed over is sent when a run ends, a flush or close asks, or this long after
_dags: PerPlan[str] = PerPlan()  # the DAG JSON of the plans last run: an unchanged workflow's runs share it
_log = logging.getLogger("maze")
_RUN_KEYS = ("run_id", "workflow_id", "workflow", "started_at", "ended_at", "status", "tasks", "host", "pid")
_RUN_COLUMNS = "run_id, workflow_id, workflow_name, started_at, ended_at, status, tasks, host, pid"


def dag_json(plan: Plan) -> str:
    return json.dumps({
        "name": plan.name,
        "tasks": [{"id": tid, "name": t.name, "resources": t.spec.resources.as_dict(), "upstream": list(t.upstream),
                   "inputs": list(t.spec.inputs), "outputs": list(t.spec.outputs)} for tid, t in plan.tasks.items()],
        "edges": [{"source": e.source, "target": e.target, "keys": list(e.keys)} for e in plan.edges],
    })


# -- writing -----------------------------------------------------------------------------------------

def _history_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a history file's :class:`Path`; a :class:`ValueError` saying what is accepted if it cannot be one."""
    text = os.fspath(path)
    if text and not os.path.isdir(text):
        return Path(text)
    why, example = ("is a directory", os.path.join(text, _DEFAULT_NAME)) if text else ("is empty", _DEFAULT_NAME)
    raise ValueError(f"the run history path {text!r} {why}: give the path of a file, such as {example!r} (the "
                     f"file and its folder are created if missing)")


def _line_count(name: str, value: object) -> int:
    """The value of the argument ``name``, a number of ``task_log`` messages; a :class:`ValueError` if it is not one."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    raise ValueError(f"{name}={value!r} is not accepted: give a whole number >= 0 (how many task_log messages of "
                     f"each task to keep)")


class HistoryWriter:
    """Appends runs and messages from one process; a writer process of its own does the writing.

    ``path`` is the database file; it and its folder are created if missing.
    Per run and task, the first ``log_head`` and the last ``log_tail``
    ``task_log`` messages are kept (see the module docstring).

    Recording never stops a run: a batch that cannot be committed is left out,
    with one warning per writer on the ``maze`` logger, and the next batch is
    written; what comes for a run no longer in the file is dropped. A writer
    process that ends before it is closed is said once, too, and what comes
    after is dropped.
    """

    def __init__(self, path: str | os.PathLike[str], *, log_head: int = 1000, log_tail: int = 1000) -> None:
        self.path = _history_file(path)
        self._log_head = _line_count("log_head", log_head)
        self._log_tail = _line_count("log_tail", log_tail)
        # Opened here, so that a file maze will not write raises to the caller; the writer opens its own.
        # A history this user may only read (a copy, a colleague's) opens read-only: the runs it
        # holds can be listed and shown; runs made here are not recorded (the writer says so once).
        try:
            db = connect_to_read(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(f"cannot open the run history {self.path}: {exc}; choose another file with "
                               "MaClient(history=...) or $MAZE_HISTORY, or turn it off with history=None") from exc
        self._writable = writable(self.path)
        try:
            _settle_orphans(db, self.path)
        finally:
            db.close()
        # The driver owns its runs (not the writer process): a run is interrupted when the driver dies.
        self._owner = (socket.gethostname(), os.getpid(), start_time(os.getpid()))
        # What the scheduler hands over, in order, until the sender takes it: appending to a deque is
        # atomic, so message() takes no lock.
        self._items: deque[Item] = deque()
        self._wake = threading.Event()  # something was handed over
        self._hurry = threading.Event()  # a run ended, or a flush or close waits: send now
        self._asked = threading.Event()  # a flush or close waits
        self._lock = threading.Lock()  # the start, the flush tokens, the loss
        self._sender: threading.Thread | None = None
        self._link: Link | None = None
        self._tokens = itertools.count(1)
        self._flushes: dict[int, threading.Event] = {}
        self._lost = False  # the writer has ended: what comes now is dropped
        self._closed = False

    @property
    def writer_pid(self) -> int | None:
        """The pid of the writer process, once the first run started it (``None`` before, or in a thread)."""
        return self._link.pid if self._link is not None else None

    def run_started(self, run_id: str, plan: Plan) -> None:
        # The plan goes as it is: the sender makes its DAG's JSON, once per plan (reruns share it).
        self._hand(("run", (run_id, plan.workflow_id, plan.name, time.time(), len(plan.tasks), *self._owner, plan)))

    def message(self, run_id: str, seq: int, message: Message) -> None:
        # The scheduler's time, under its lock: an append, and a wake-up when the sender sleeps.
        self._items.append((run_id, seq, message))
        if message["type"] == "finish_workflow":
            self._items.append(("end", (message["data"]["status"], time.time(), run_id)))
            self._hurry.set()  # the run's burst is over: hand it over now
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float = 10) -> None:
        """Wait, at most ``timeout`` s, until everything handed over so far is committed (held-back output excepted).

        Once the writer is closed (or its process has ended) there is nothing to
        wait for: it returns at once. So it does before the first run.
        """
        if self._sender is None:
            return
        done = threading.Event()
        with self._lock:
            if self._closed or self._lost:
                return
            token = next(self._tokens)
            self._flushes[token] = done
        self._hand(("flush", (token,)), hurry=True)
        done.wait(timeout)
        with self._lock:
            self._flushes.pop(token, None)

    def close(self, timeout: float = 10) -> None:
        """Commit everything handed over, the output held back for runs still going included, then stop.

        A second call does nothing, so a process can both close the writer and
        leave that to an :mod:`atexit` hook (the writer process still runs while
        the hooks do). Waits at most ``timeout`` s for the writing to end.
        """
        if self._closed:
            return
        self._closed = True
        if self._sender is None:
            return  # no run was ever handed over: no writer was started
        deadline = time.monotonic() + timeout
        self._hand(("close", ()), hurry=True)
        self._sender.join(timeout)
        link = self._link
        # A writer never started (the file cannot be written here, or it could not start): nothing to wait for.
        if self._sender.is_alive() or (link is not None and link.started
                                       and not link.ended(max(0.0, deadline - time.monotonic()))):
            _log.warning("maze: the run history %s was still being written %s s after the writer was closed; what "
                         "is left of it may be lost", self.path, timeout)

    def _hand(self, item: Item, *, hurry: bool = False) -> None:
        if self._sender is None:
            with self._lock:
                if self._sender is None:  # the first run: the sender starts the writer, the run does not wait
                    self._sender = threading.Thread(target=self._send_loop, name="maze-history", daemon=True)
                    self._sender.start()
        self._items.append(item)
        if hurry:
            self._asked.set()
            self._hurry.set()
        self._wake.set()

    def _send_loop(self) -> None:
        link = self._link = Link(self.path, self._log_head, self._log_tail, on_flushed=self._flushed,
                                 on_warning=lambda text: _log.warning("%s", text), on_end=self._ended)
        while True:
            self._wake.wait()
            # Not woken again before a run ends, a flush or close asks, or a second passed: packing a
            # batch holds the interpreter lock, and even a look at the list takes it from the scheduler.
            # The first batch waits for a flush or close, or the second: a script that closes right
            # after its run has its history written in a thread, not by a process started for it.
            (self._hurry if link.started else self._asked).wait(_LATEST_S)
            # Cleared before taking the items: an item handed over from now on sets them again.
            self._wake.clear()
            self._hurry.clear()
            self._asked.clear()
            items = self._items
            batch = [items.popleft() for _ in range(len(items))]
            if batch and not self._writable and not self._lost:
                self._lose(None)
                _log.warning("%s", not_recorded(self.path, "this user may only read it (the file or its folder is "
                                                           "not writable)"))
            if batch and not link.started and not self._lost:
                try:
                    # A writer closed before it started (a short script) writes in a thread: it
                    # would be a process started only to write one batch.
                    link.start(in_thread=self._closed)
                except Exception as exc:  # noqa: BLE001 - e.g. no pipe left: runs go on, unrecorded
                    self._lose(f"it could not start: {type(exc).__name__}: {exc}")
                if link.refused:   # it could not open the file, and has said why: nothing more to say
                    self._lose(None)
            if batch and not self._lost:
                batch = [("run", (*item[1][:-1], _dags.get(item[1][-1], partial(dag_json, item[1][-1]))))
                         if len(item) == 2 and item[0] == "run" else item for item in batch]
                try:
                    link.send(pack(batch))
                except OSError as exc:  # the writer process has gone (a broken pipe)
                    self._lose(f"{type(exc).__name__}: {exc}")
            if any(len(item) == 2 and item[0] == "close" for item in batch):
                return

    def _flushed(self, token: int) -> None:
        with self._lock:
            done = self._flushes.pop(token, None)
        if done is not None:
            done.set()

    def _ended(self) -> None:
        # A writer that could not open the file has said why (a warning): no second word.
        self._lose(None if self._closed or (self._link is not None and self._link.refused) else "it ended")

    def _lose(self, why: str | None) -> None:
        """The writer has ended (``why``: before it was closed): drop what comes, release who waits, say so once."""
        with self._lock:
            said, self._lost = self._lost, True
            waiting, self._flushes = list(self._flushes.values()), {}
        if why is not None and not said:
            pid = self._link.pid if self._link is not None else None
            _log.warning("maze: the writer of the run history %s (process %s) is gone (%s), so this process's runs "
                         "are recorded no further; they go on", self.path, pid, why)
        for done in waiting:  # nothing more will be committed: no flush waits for it
            done.set()


# -- reading -----------------------------------------------------------------------------------------

def plan_of(dag: dict[str, Any], workflow_id: str) -> Plan:
    """A drawable (not runnable) plan rebuilt from :func:`dag_json`'s record."""
    refs: dict[str, dict[str, OutputRef]] = {}
    for e in dag["edges"]:
        for label in e["keys"]:
            out, _, inp = label.partition("->")
            refs.setdefault(e["target"], {})[inp] = OutputRef(e["source"], out)
    tasks = []
    for t in dag["tasks"]:
        spec = TaskSpec(func=_replayed, name=t["name"], inputs=tuple(t["inputs"]), outputs=tuple(t["outputs"]),
                        resources=Resources(**t["resources"]), options=TaskOptions())
        tasks.append(PlannedTask(t["id"], spec, TaskFunction(spec), {}, refs.get(t["id"], {}), tuple(t["upstream"])))
    ordering = {(e["source"], e["target"]) for e in dag["edges"] if not e["keys"]}
    return Plan.build(workflow_id, dag["name"], tasks, ordering)


def _replayed(params: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("this task was rebuilt from the run history to be shown; it cannot run")


#: How often a run going on in another process is read again, when followed.
FOLLOW_S = 0.5


class HistoryReader:
    """Reads the database: past runs, their messages and DAGs. Any process, any time.

    ``path`` is the database file, as for :class:`HistoryWriter`. Listing or
    reading runs first marks those whose process has ended as ``interrupted``
    (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _history_file(path)

    def _db(self) -> sqlite3.Connection:
        return connect_to_read(self.path)

    def _settled(self) -> tuple[sqlite3.Connection, frozenset[str]]:
        """The file, with the runs of owners that have ended marked ``interrupted``; and those it could not mark
        (the file is read-only here, or another process holds it locked), which this reader shows as
        interrupted without writing them."""
        db = connect_to_read(self.path)
        try:
            return db, frozenset(_settle_orphans(db, self.path))
        except BaseException:
            db.close()
            raise

    def _run_rows(self, clauses: str, args: list[Any]) -> list[dict[str, Any]]:
        db, unmarked = self._settled()
        try:
            with snapshot(db):
                runs = [dict(zip(_RUN_KEYS, r)) for r in db.execute(f"SELECT {_RUN_COLUMNS} FROM runs {clauses}", args)]
                for run in runs:
                    if run["run_id"] in unmarked and (ended := interruption(db, run["run_id"])) is not None:
                        run.update(status="interrupted", ended_at=ended[2])
        finally:
            db.close()
        return runs

    def runs(self, workflow: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        clauses = ""
        args: list[Any] = []
        if workflow is not None:
            clauses = "WHERE workflow_id = ? OR workflow_name = ?"
            args += [workflow, workflow]
        clauses += " ORDER BY started_at DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return self._run_rows(clauses, args)

    def runs_by_id(self, run_id: str) -> dict[str, Any]:
        [run] = self._run_rows("WHERE run_id = ?", [run_id])
        return run

    def exists(self, run_id: str) -> bool:
        db = self._db()
        try:
            return db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
        finally:
            db.close()

    def messages(self, run_id: str, *, values: bool = True) -> list[Message]:
        """A run's messages, in order.

        ``values=True`` loads the result values kept as pickles (only from a
        private file: :class:`UnsafeHistoryError` otherwise); ``values=False``
        reads JSON only and puts a :class:`Stored` text in their place.
        """
        return [message for _, message in self._numbered(run_id, values=values, after=0)]

    def _numbered(self, run_id: str, *, values: bool, after: int) -> list[tuple[int, Message]]:
        """``(seq, message)`` of the run's messages numbered above ``after``, in order."""
        db, unmarked = self._settled()
        try:
            with snapshot(db):   # the interruption shown follows the last message read, whatever commits meanwhile
                rows = db.execute("SELECT seq, type, data FROM messages WHERE run_id = ? AND seq > ? ORDER BY seq",
                                  (run_id, after)).fetchall()
                if run_id in unmarked and (ended := interruption(db, run_id)) is not None and ended[0] > after:
                    rows.append((ended[0], "finish_workflow", json_text(ended[1])))
                column = "data" if values else "NULL"
                described = db.execute(f"SELECT seq, key, data IS NOT NULL, {column} FROM vals"
                                       " WHERE run_id = ? AND seq > ?", (run_id, after)).fetchall()
        finally:
            db.close()
        if values and any(kept for _, _, kept, _ in described):
            check_private(self.path)
        by_seq: dict[int, list[tuple[str, bool, bytes | None]]] = {}
        for seq, key, kept, pickled in described:
            by_seq.setdefault(seq, []).append((key, bool(kept), pickled))
        out: list[tuple[int, Message]] = []
        for seq, kind, encoded in rows:
            data = json.loads(encoded)
            for key, kept, blob in by_seq.get(seq, ()):
                data["result"][key] = load_value(data["result"][key], kept, blob)
            out.append((seq, {"type": kind, "data": data}))
        return out

    def replay(self, run_id: str, *, values: bool = True) -> RunState:
        """A recorded run as a read-only :class:`RunState`, folded from its messages.

        A run still going in another (live) process is followed: a thread reads
        its new messages every :data:`FOLLOW_S` seconds until its
        ``finish_workflow`` (which this reader writes itself, ``interrupted``, if
        that process dies, or shows without writing where it cannot), so reading
        it live works as for a run of this process.
        """
        info = self.runs_by_id(run_id)
        plan = plan_of(self.dag(run_id), info["workflow_id"])
        numbered = self._numbered(run_id, values=values, after=0)
        recorded = [message for _, message in numbered]
        going = not (recorded and recorded[-1]["type"] == "finish_workflow")
        run = RunState.replayed(run_id, plan, recorded, complete=not going)
        if going:
            last = numbered[-1][0] if numbered else 0
            threading.Thread(target=self._follow, args=(run, values, last), name=f"maze-follow-{run_id}",
                             daemon=True).start()
        return run

    def _follow(self, run: RunState, values: bool, last: int) -> None:
        # Reads only what is numbered after the last message seen. (Output lines a task's
        # log bound held back are numbered earlier and written at its end: a followed
        # run shows them on a later replay, not live.)
        while not run.ended.is_set():
            time.sleep(FOLLOW_S)
            try:
                numbered = self._numbered(run.run_id, values=values, after=last)
            except UnsafeHistoryError as exc:  # its values cannot be loaded safely: follow without them
                _log.warning("maze: following run %s without its result values: %s", run.run_id, exc)
                values = False
                continue
            except Exception:  # noqa: BLE001 - e.g. the run was deleted: show what was seen, and end
                _log.warning("maze: stopped following run %s in %s", run.run_id, self.path, exc_info=True)
                run.unfollowed()
                return
            if numbered:
                last = numbered[-1][0]
                run.recorded([message for _, message in numbered])

    def dag(self, run_id: str) -> dict[str, Any]:
        db = self._db()
        try:
            row = db.execute("SELECT dag FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            db.close()
        dag: dict[str, Any] = json.loads(row[0])
        return dag

    def delete(self, *, before: float | None = None, keep_last: int | None = None, run_ids: list[str] | None = None) -> int:
        """Delete runs started before ``before`` (epoch s), beyond the newest ``keep_last``, or by id; return how many.

        A run still going is never deleted, however it is named: its process
        goes on recording it. Runs whose process has ended are first marked
        ``interrupted`` (see the module docstring), so they can be deleted; a
        ``running`` run of another host, whose process cannot be checked from
        here, is kept.
        """
        named = set(run_ids or ())
        if not writable(self.path):
            raise BackendError(f"cannot remove runs from the run history {self.path}: this user may only read it "
                               "(the file or its folder is not writable)")
        db, unmarked = self._settled()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")  # no run begins or ends between choosing runs and deleting them
                for run_id in unmarked:   # another process was writing when they were looked at: mark them now
                    interrupt(db, run_id)
                runs = db.execute("SELECT run_id, started_at, status FROM runs ORDER BY started_at DESC").fetchall()
                doomed = [(run_id,) for newer, (run_id, started_at, status) in enumerate(runs) if status != "running"
                          and (run_id in named or (before is not None and started_at < before)
                               or (keep_last is not None and newer >= keep_last))]
                for table in ("vals", "messages", "runs"):
                    db.executemany(f"DELETE FROM {table} WHERE run_id = ?", doomed)
            return len(doomed)
        finally:
            db.close()
