"""Durable run history: every run's DAG and messages in a SQLite database.

Writing. Messages are written as they happen, by one background thread per
client that commits in small batches, so recording never slows the scheduler.
The database is in WAL mode with a busy timeout, so several processes (two
notebooks, a script and a notebook) can write to it at once. Recording never
stops a run: a batch that cannot be committed is left out, with one warning
per writer on the ``maze`` logger, and the next one is written.
``HistoryWriter.close()`` commits everything handed over, held-back output
included; a second call does nothing, so it can also be an ``atexit`` hook,
and a process that ends without closing its client loses nothing.

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
:class:`Stored` placeholders) read JSON only, from any readable file.

Format. ``PRAGMA user_version`` is 2. The first format (0) pickled every
message and is never read: the default file name changed from
``history.sqlite3`` to ``runs.sqlite3``, so an old default file is simply left
alone (it can be deleted), and opening an old file by name raises
``UnsafeHistoryError`` naming it.

Private. A directory created for the history is 0700, and maze's own default
directory is set back to 0700 if it is wider; the database is created 0600
before SQLite opens it, and SQLite gives its ``-wal`` and ``-shm`` files the
same mode. Existing files and directories the user chose keep their modes.

Interrupted runs. Each run row names its owner: host, pid and, on Linux, the
process's start time, so that a reused pid is not taken for the owner. A run
still ``running`` whose owner on this host has ended is marked ``interrupted``
by the next reader that lists, reads or deletes runs and by the next writer
that opens the file: its ``ended_at`` becomes the time of its last message and a
``finish_workflow`` is appended, so a replay ends. Both happen in one
transaction that re-checks the status, so two processes never both do it.

Bounded output. Per run and task, the first ``log_head`` ``task_log`` messages
are written as they come and the last ``log_tail`` are held back until the
task or the run ends (or the writer closes); between them one ``task_log``
says how many lines were not kept. It takes the sequence number of the first
message left out, so a replay keeps the order.

Default location: ``$MAZE_HISTORY`` if set, else
``$XDG_DATA_HOME/maze/runs.sqlite3`` (``~/.local/share/maze/...``).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import queue
import socket
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .errors import UnsafeHistoryError
from .history_values import VALUE_LIMIT, Dropped, Stored, check_private, encode, json_text, load_value
from .messages import Message
from .plan import OutputRef, Plan, PlannedTask
from .resources import Resources
from .run import RunState
from .task import TaskFunction, TaskOptions, TaskSpec

__all__ = ["FORMAT", "VALUE_LIMIT", "Dropped", "HistoryReader", "HistoryWriter", "Stored", "connect", "dag_json",
           "default_path", "plan_of"]

FORMAT = 2
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    workflow_name TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_started INTEGER,  -- the owner's start time in clock ticks since boot (Linux), else NULL
    dag TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    task_id TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS vals (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    data BLOB,  -- the pickle of result[key] of message seq; NULL: described only
    PRIMARY KEY (run_id, seq, key)
);
PRAGMA user_version = {FORMAT};
COMMIT;
"""
_DEFAULT_NAME = "runs.sqlite3"  # the first format's default was history.sqlite3: never opened now
_BATCH_S = 0.05
_log = logging.getLogger("maze")
_TASK_ENDS = frozenset({"finish_task", "task_exception", "task_skipped"})
_RUN_KEYS = ("run_id", "workflow_id", "workflow", "started_at", "ended_at", "status", "tasks", "host", "pid")
_RUN_COLUMNS = "run_id, workflow_id, workflow_name, started_at, ended_at, status, tasks, host, pid"


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "maze"


def default_path() -> Path:
    if os.environ.get("MAZE_HISTORY"):
        return Path(os.environ["MAZE_HISTORY"])
    return _data_home() / _DEFAULT_NAME


def _prepare(path: Path) -> None:
    """Create the directory (0700) and the file (0600) before SQLite does, with umask-proof modes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent == _data_home() and path.parent.stat().st_mode & 0o077:
        path.parent.chmod(0o700)  # maze's own directory: nobody else has business in it
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) a history database in the current format."""
    _prepare(path)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    try:
        # One statement, one snapshot: a file another process is creating reads as empty or complete.
        version, tables = db.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), (SELECT COUNT(*) FROM sqlite_master)"
        ).fetchone()
        if version != FORMAT and (version or tables):
            raise UnsafeHistoryError(_format_problem(path, version))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        if version == 0:
            db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def _format_problem(path: Path, version: int) -> str:
    if version == 0:
        return (f"{path} is not a run history this maze reads: it is in maze's old format, which stored every "
                f"message as a pickle (loading one runs code), or it is not a maze history. Move it aside or "
                f"delete it, and record runs in a new file (maze's default is now {_data_home() / _DEFAULT_NAME}).")
    return (f"{path} is a run history in format {version}, written by a newer maze; this one reads format "
            f"{FORMAT}. Use a newer maze, or record runs in another file.")


def dag_json(plan: Plan) -> str:
    return json.dumps({
        "name": plan.name,
        "tasks": [{"id": tid, "name": t.name, "resources": t.spec.resources.as_dict(), "upstream": list(t.upstream),
                   "inputs": list(t.spec.inputs), "outputs": list(t.spec.outputs)} for tid, t in plan.tasks.items()],
        "edges": [{"source": e.source, "target": e.target, "keys": list(e.keys)} for e in plan.edges],
    })


# -- owners ------------------------------------------------------------------------------------------

def _start_time(pid: int) -> int | None:
    """Linux: when ``pid`` started, in clock ticks since boot (``None``: no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # after the command name, which may hold spaces
    if fields[0] == b"Z":
        return None  # a zombie has ended; only its exit status is left
    return int(fields[19])  # field 22 of the whole line


def _alive(pid: int, started: int | None) -> bool:
    if started is not None:  # recorded on Linux: /proc says whether that very process still runs
        return _start_time(pid) == started
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


def _settle_orphans(db: sqlite3.Connection, path: Path) -> None:
    """Mark this host's ``running`` runs whose owner has ended as ``interrupted``."""
    host = socket.gethostname()
    rows = db.execute("SELECT run_id, pid, pid_started FROM runs WHERE status = 'running' AND host = ?",
                      (host,)).fetchall()
    orphans = [run_id for run_id, pid, started in rows if not _alive(pid, started)]
    if not orphans or not os.access(path, os.W_OK):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for run_id in orphans:
            _interrupt(db, run_id)
        db.commit()
    except BaseException:
        db.rollback()
        raise


def _interrupt(db: sqlite3.Connection, run_id: str) -> None:
    row = db.execute("SELECT workflow_id, started_at, host, pid FROM runs WHERE run_id = ? AND status = 'running'",
                     (run_id,)).fetchone()
    if row is None:
        return  # another process settled it between our look and our lock
    workflow_id, started_at, host, pid = row
    last_seq, last_at, failed = db.execute(
        "SELECT MAX(seq), MAX(json_extract(data, '$.time')), MAX(type = 'task_exception') FROM messages"
        " WHERE run_id = ?", (run_id,)).fetchone()
    ended_at = max(last_at or started_at, started_at)
    data = {"workflow_id": workflow_id, "run_id": run_id, "status": "interrupted", "has_exception": bool(failed),
            "duration": ended_at - started_at,
            "interrupted": f"the process {pid} on {host} that drove the run ended before the run did"}
    db.execute("INSERT INTO messages VALUES (?, ?, 'finish_workflow', NULL, ?)",
               (run_id, (last_seq or 0) + 1, json_text(data)))
    db.execute("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE run_id = ?", (ended_at, run_id))


# -- writing -----------------------------------------------------------------------------------------

_Row = tuple[str, int, str, dict[str, Any]]  # run_id, seq, type, data
_Item = tuple[str, tuple[Any, ...]]  # what the writer thread is handed: "run", "msg", "end", "flush" or "close"


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


class _Output:
    """One task's ``task_log`` messages: how many more go in whole, the held-back tail, what was left out."""

    __slots__ = ("head_left", "tail", "lines_out", "first_out")

    def __init__(self, head: int) -> None:
        self.head_left = head
        self.tail: deque[tuple[int, dict[str, Any]]] = deque()
        self.lines_out = 0
        self.first_out: tuple[int, dict[str, Any]] | None = None


class HistoryWriter:
    """Appends runs and messages from one process; a daemon thread does the writing.

    ``path`` is the database file; it and its folder are created if missing.
    Per run and task, the first ``log_head`` and the last ``log_tail``
    ``task_log`` messages are kept (see the module docstring).

    Recording never stops a run: a batch that cannot be committed is left out,
    with one warning per writer on the ``maze`` logger, and the next batch is
    written; what comes for a run no longer in the file is dropped.
    """

    def __init__(self, path: str | os.PathLike[str], *, log_head: int = 1000, log_tail: int = 1000) -> None:
        self.path = _history_file(path)
        self._log_head = _line_count("log_head", log_head)
        self._log_tail = _line_count("log_tail", log_tail)
        # Opened here, so that a file maze will not write raises to the caller; from now on the thread's alone.
        self._db = connect(self.path)
        _settle_orphans(self._db, self.path)
        self._owner = (socket.gethostname(), os.getpid(), _start_time(os.getpid()))
        self._outputs: dict[str, dict[str | None, _Output]] = {}  # run -> task -> output (writer thread only)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._warned = False  # writer thread only
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="maze-history", daemon=True)
        self._thread.start()

    def run_started(self, run_id: str, plan: Plan) -> None:
        self._queue.put(("run", (run_id, plan.workflow_id, plan.name, time.time(), len(plan.tasks), *self._owner,
                                 dag_json(plan))))

    def message(self, run_id: str, seq: int, message: Message) -> None:
        # Encoding waits for the writer thread: here is the scheduler's time.
        self._queue.put(("msg", (run_id, seq, message["type"], message["data"])))
        if message["type"] == "finish_workflow":
            self._queue.put(("end", (message["data"]["status"], time.time(), run_id)))

    def flush(self, timeout: float = 10) -> None:
        """Wait, at most ``timeout`` s, until everything handed over so far is committed (held-back output excepted).

        Once the writer is closed there is nothing to wait for: it returns at once.
        """
        done = threading.Event()
        self._queue.put(("flush", (done,)))
        deadline = time.monotonic() + timeout
        # Short waits, each after a look at the thread: one closed meanwhile (by another thread) never answers.
        while self._thread.is_alive() and not done.is_set() and time.monotonic() < deadline:
            done.wait(_BATCH_S)

    def close(self, timeout: float = 10) -> None:
        """Commit everything handed over, the output held back for runs still going included, then stop.

        A second call does nothing, so a process can both close the writer and
        leave that to an :mod:`atexit` hook (the writer thread still runs while
        the hooks do). Waits at most ``timeout`` s for the writing to end.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(("close", ()))
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning("maze: the run history %s was still being written %s s after the writer was closed; what "
                         "is left of it may be lost", self.path, timeout)

    def _write_loop(self) -> None:
        # Wake once per batch, not once per message: waking this thread on every
        # message would take the interpreter lock from the scheduler each time.
        closing = False
        try:
            while not closing:
                batch = [self._queue.get()]
                time.sleep(_BATCH_S)
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._commit(batch)
                except Exception as exc:  # noqa: BLE001 - the batch is lost, the thread and the later batches not
                    self._warn(exc)
                for kind, args in batch:
                    if kind == "flush":
                        args[0].set()
                    closing |= kind == "close"
        finally:
            self._db.close()

    def _warn(self, error: Exception) -> None:
        if not self._warned:  # once: a full disk would otherwise say so every 50 ms
            self._warned = True
            _log.warning("maze could not write to the run history %s (%s: %s), so messages of this process's runs "
                         "are missing from it; it goes on writing and will not say so again", self.path,
                         type(error).__name__, error)

    def _commit(self, batch: list[_Item]) -> None:
        # Rows keep their order: a run's row before its messages, its end after them.
        with self._db:
            rows: list[_Row] = []
            for kind, item in batch:
                if kind == "msg":
                    rows += self._admit(*item)
                    continue
                self._insert(rows)
                rows = []
                if kind == "run":
                    self._db.execute(
                        "INSERT OR REPLACE INTO runs (run_id, workflow_id, workflow_name, started_at, status, tasks,"
                        " host, pid, pid_started, dag) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)", item)
                elif kind == "end":
                    self._db.execute("UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?", item)
                elif kind == "close":
                    rows = [r for run_id in list(self._outputs) for r in self._release_run(run_id)]
            self._insert(rows)

    def _insert(self, rows: list[_Row]) -> None:
        messages, vals = [], []
        for run_id, seq, kind, data in rows:
            text, described = encode(kind, data)
            messages.append((run_id, seq, kind, data.get("task_id"), text, run_id))
            vals += [(run_id, seq, key, blob, run_id) for key, blob in described]
        # Only rows of runs still in the file: delete() spares runs still going, but rows of one deleted by other
        # means would fail their foreign key, and with it every batch they are in.
        exists = "WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?)"
        self._db.executemany(f"INSERT OR REPLACE INTO messages SELECT ?, ?, ?, ?, ? {exists}", messages)
        self._db.executemany(f"INSERT OR REPLACE INTO vals SELECT ?, ?, ?, ? {exists}", vals)

    def _admit(self, run_id: str, seq: int, kind: str, data: dict[str, Any]) -> list[_Row]:
        """The rows to write now for this message: bounded output, and held-back output it releases."""
        if kind == "task_log":
            return self._log_line(run_id, seq, data)
        if kind in _TASK_ENDS:
            output = self._outputs.get(run_id, {}).pop(data.get("task_id"), None)
            rows = self._release(run_id, output) if output else []
        elif kind == "finish_workflow":
            rows = self._release_run(run_id)
        else:
            rows = []
        rows.append((run_id, seq, kind, data))
        return rows

    def _log_line(self, run_id: str, seq: int, data: dict[str, Any]) -> list[_Row]:
        task_id = data.get("task_id")
        output = self._outputs.setdefault(run_id, {}).get(task_id)
        if output is None:
            output = self._outputs[run_id][task_id] = _Output(self._log_head)
        if output.head_left:
            output.head_left -= 1
            return [(run_id, seq, "task_log", data)]
        output.tail.append((seq, data))
        if len(output.tail) > self._log_tail:
            gone = output.tail.popleft()
            text = gone[1].get("text", "")
            output.lines_out += text.count("\n") + (not text.endswith("\n"))
            if output.first_out is None:
                output.first_out = gone
        return []

    def _release_run(self, run_id: str) -> list[_Row]:
        return [r for output in self._outputs.pop(run_id, {}).values() for r in self._release(run_id, output)]

    @staticmethod
    def _release(run_id: str, output: _Output) -> list[_Row]:
        rows: list[_Row] = []
        if output.first_out is not None:
            seq, data = output.first_out
            text = f"[maze: {output.lines_out:,} lines of output not kept in the history]\n"
            rows.append((run_id, seq, "task_log", {**data, "stream": "stderr", "text": text}))
        rows += [(run_id, seq, "task_log", data) for seq, data in output.tail]
        return rows


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
        return connect(self.path)

    def _settled_db(self) -> sqlite3.Connection:
        db = connect(self.path)
        try:
            _settle_orphans(db, self.path)
        except BaseException:
            db.close()
            raise
        return db

    def runs(self, workflow: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {_RUN_COLUMNS} FROM runs"
        args: list[Any] = []
        if workflow is not None:
            query += " WHERE workflow_id = ? OR workflow_name = ?"
            args += [workflow, workflow]
        query += " ORDER BY started_at DESC" + (f" LIMIT {int(limit)}" if limit else "")
        db = self._settled_db()
        try:
            rows = db.execute(query, args).fetchall()
        finally:
            db.close()
        return [dict(zip(_RUN_KEYS, r)) for r in rows]

    def runs_by_id(self, run_id: str) -> dict[str, Any]:
        db = self._settled_db()
        try:
            row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            db.close()
        return dict(zip(_RUN_KEYS, row))

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
        db = self._settled_db()
        try:
            rows = db.execute("SELECT seq, type, data FROM messages WHERE run_id = ? AND seq > ? ORDER BY seq",
                              (run_id, after)).fetchall()
            # Read after the messages: values commit with their message, so each message read has its values.
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
        that process dies), so reading it live works as for a run of this process.
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
            except Exception:  # noqa: BLE001 - e.g. the run was deleted: show what was seen, and end
                _log.warning("maze: stopped following run %s in %s", run.run_id, self.path, exc_info=True)
                run.ended.set()
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
        db = self._settled_db()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")  # no run begins or ends between choosing runs and deleting them
                runs = db.execute("SELECT run_id, started_at, status FROM runs ORDER BY started_at DESC").fetchall()
                doomed = [(run_id,) for newer, (run_id, started_at, status) in enumerate(runs) if status != "running"
                          and (run_id in named or (before is not None and started_at < before)
                               or (keep_last is not None and newer >= keep_last))]
                for table in ("vals", "messages", "runs"):
                    db.executemany(f"DELETE FROM {table} WHERE run_id = ?", doomed)
            return len(doomed)
        finally:
            db.close()
