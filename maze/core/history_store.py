"""The run history's SQLite file: its format, its owners, and the writing of messages into it.

:mod:`maze.core.history` describes the history as a whole. This module holds
what both sides of it need and nothing heavier than the standard library
and :mod:`maze.core.history_values`, because the writer process
(:mod:`maze.core.history_process`) imports it and should start quickly: the
schema and :func:`connect`, the owners of runs and the marking of
``interrupted`` runs (:func:`settle_orphans`), and :class:`Recording`, which
turns the batches the driver hands over into rows, with bounded output.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import UnsafeHistoryError
from .history_values import encode, json_text

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
DEFAULT_NAME = "runs.sqlite3"  # the first format's default was history.sqlite3: never opened now
_TASK_ENDS = frozenset({"finish_task", "task_exception", "task_skipped"})


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "maze"


def default_path() -> Path:
    if os.environ.get("MAZE_HISTORY"):
        return Path(os.environ["MAZE_HISTORY"])
    return data_home() / DEFAULT_NAME


def prepare(path: Path) -> None:
    """Create the directory (0700) and the file (0600) before SQLite does, with umask-proof modes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent == data_home() and path.parent.stat().st_mode & 0o077:
        path.parent.chmod(0o700)  # maze's own directory: nobody else has business in it
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


OPEN_WAIT_S = 30.0   # how long opening a history waits for other processes' locks, in all
_STEP_S = 0.05       # SQLite's own wait per try while opening: Ctrl-C is heard between tries


def connect(path: Path, *, wait_s: float = OPEN_WAIT_S) -> sqlite3.Connection:
    """Open (creating if needed) a history database in the current format.

    Opening waits at most ``wait_s`` in all for locks other processes hold, in
    short tries: SQLite's busy timeout applies to each statement anew, and
    ignores Ctrl-C while it waits. Once open, statements wait ``wait_s`` each.
    """
    prepare(path)
    db = sqlite3.connect(path, timeout=_STEP_S, check_same_thread=False)
    try:
        deadline = time.monotonic() + wait_s
        # One statement, one snapshot: a file another process is creating reads as empty or complete.
        version, tables = _try(db, deadline, wait_s, lambda: db.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), (SELECT COUNT(*) FROM sqlite_master)"
        ).fetchone())
        if version != FORMAT and (version or tables):
            raise UnsafeHistoryError(format_problem(path, version))
        # WAL stays set in the file. SQLite refuses the switch at once, without its busy
        # timeout, while another process opens the same new file: the tries cover that too.
        _try(db, deadline, wait_s, lambda: db.execute("PRAGMA journal_mode=WAL"))
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        if version == 0:
            _try(db, deadline, wait_s, lambda: db.executescript(_SCHEMA))
        db.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
    except BaseException:
        db.close()
        raise
    return db


class LockWaitOver(sqlite3.OperationalError):
    """Another process held a lock on the file for as long as this one would wait."""


def _try(db: sqlite3.Connection, deadline: float, wait_s: float, step: Callable[[], Any]) -> Any:
    """``step()``, tried again while another process holds a lock, until ``deadline``."""
    pause = 0.005
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if db.in_transaction:
                db.rollback()   # the schema's script stopped after its BEGIN: begin it again
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockWaitOver(f"database is locked: another process has held a lock on it for "
                                   f"{wait_s:g} s") from exc
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


@contextlib.contextmanager
def snapshot(db: sqlite3.Connection) -> Iterator[None]:
    """Read in one transaction: the statements inside see the file as it was at the first of them."""
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.rollback()


def writable(path: Path) -> bool:
    """Whether this user may write the history at ``path``: the file (if it exists), and its folder, which
    holds SQLite's ``-wal`` and ``-shm`` files."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def connect_to_read(path: Path) -> sqlite3.Connection:
    """Open a history to read it: as :func:`connect` where this user may write it, else read-only.

    A copied history, a colleague's, a CI artifact: reading one needs no write access. SQLite's
    read-only mode still needs the ``-shm`` file of a WAL database; where that cannot be made
    either, the file is read as immutable (it must then not change while it is read).
    """
    if not path.exists() or writable(path):
        return connect(path)
    for mode in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=30, check_same_thread=False)
        try:
            version, tables = db.execute(
                "SELECT (SELECT user_version FROM pragma_user_version), (SELECT COUNT(*) FROM sqlite_master)"
            ).fetchone()
        except sqlite3.OperationalError:
            db.close()
            continue
        if version == 0 and not tables:
            # An empty file (made, never written): it holds no runs, like a history not made yet.
            db.close()
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.executescript(_SCHEMA)
            return db
        if version != FORMAT:
            db.close()
            raise UnsafeHistoryError(format_problem(path, version))
        return db
    return connect(path)   # raises the error that says why it cannot be opened


def format_problem(path: Path, version: int) -> str:
    if version == 0:
        return (f"{path} is not a run history this maze reads: it is in maze's old format, which stored every "
                f"message as a pickle (loading one runs code), or it is not a maze history. Move it aside or "
                f"delete it, and record runs in a new file (maze's default is now {data_home() / DEFAULT_NAME}).")
    return (f"{path} is a run history in format {version}, written by a newer maze; this one reads format "
            f"{FORMAT}. Use a newer maze, or record runs in another file.")


# -- owners ------------------------------------------------------------------------------------------

def start_time(pid: int) -> int | None:
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


def alive(pid: int, started: int | None) -> bool:
    if started is not None:  # recorded on Linux: /proc says whether that very process still runs
        return start_time(pid) == started
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


def settle_orphans(db: sqlite3.Connection, path: Path, *, wait_s: float = 1.0) -> list[str]:
    """Mark this host's ``running`` runs whose owner has ended as ``interrupted``; return those left unmarked.

    Marking is housekeeping, done by whoever opens the file next: it waits at
    most ``wait_s`` (in short tries) for another process's lock, and is left
    to a later opener after that, or where this user may not write the file.
    A reader shows the runs left unmarked as interrupted all the same (see
    :func:`interruption`).
    """
    host = socket.gethostname()
    rows = db.execute("SELECT run_id, pid, pid_started FROM runs WHERE status = 'running' AND host = ?",
                      (host,)).fetchall()
    orphans = [run_id for run_id, pid, started in rows if not alive(pid, started)]
    if not orphans or not writable(path):
        return orphans
    (waits_ms,) = db.execute("PRAGMA busy_timeout").fetchone()
    db.execute(f"PRAGMA busy_timeout={int(_STEP_S * 1000)}")
    try:
        _try(db, time.monotonic() + wait_s, wait_s, lambda: db.execute("BEGIN IMMEDIATE"))
    except LockWaitOver:
        return orphans   # another process is writing the file: a later opener marks them
    finally:
        db.execute(f"PRAGMA busy_timeout={waits_ms}")
    try:
        for run_id in orphans:
            interrupt(db, run_id)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return []


def interruption(db: sqlite3.Connection, run_id: str) -> tuple[int, dict[str, Any], float] | None:
    """The ``finish_workflow`` that ends a run whose owner has ended: ``(seq, data, ended_at)``; ``None`` if the
    run is not ``running``."""
    row = db.execute("SELECT workflow_id, started_at, host, pid FROM runs WHERE run_id = ? AND status = 'running'",
                     (run_id,)).fetchone()
    if row is None:
        return None
    workflow_id, started_at, host, pid = row
    last_seq, last_at, failed = db.execute(
        "SELECT MAX(seq), MAX(json_extract(data, '$.time')), MAX(type = 'task_exception') FROM messages"
        " WHERE run_id = ?", (run_id,)).fetchone()
    ended_at = max(last_at or started_at, started_at)
    data = {"workflow_id": workflow_id, "run_id": run_id, "status": "interrupted", "has_exception": bool(failed),
            "duration": ended_at - started_at,
            "interrupted": f"the process {pid} on {host} that drove the run ended before the run did"}
    return (last_seq or 0) + 1, data, ended_at


def interrupt(db: sqlite3.Connection, run_id: str) -> None:
    ended = interruption(db, run_id)
    if ended is None:
        return  # another process settled it between our look and our lock
    seq, data, ended_at = ended
    db.execute("INSERT INTO messages VALUES (?, ?, 'finish_workflow', NULL, ?)", (run_id, seq, json_text(data)))
    db.execute("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE run_id = ?", (ended_at, run_id))


# -- writing -----------------------------------------------------------------------------------------

Row = tuple[str, int, str, dict[str, Any]]  # run_id, seq, type, data
#: What the driver hands over, in order: a message as ``(run_id, seq, message)``, or
#: ``(kind, args)`` with kind "run" (the runs row), "end" (status, ended_at, run_id),
#: "flush" (a token to answer once what came before is committed) or "close".
Item = tuple[Any, ...]


class _Output:
    """One task's ``task_log`` messages: how many more go in whole, the held-back tail, what was left out."""

    __slots__ = ("head_left", "tail", "lines_out", "first_out")

    def __init__(self, head: int) -> None:
        self.head_left = head
        self.tail: deque[tuple[int, dict[str, Any]]] = deque()
        self.lines_out = 0
        self.first_out: tuple[int, dict[str, Any]] | None = None


class Recording:
    """Writes batches of :data:`Item` into an open history: one per writer, used by one thread.

    A batch that cannot be committed is left out, with one warning (through
    ``warn``) per recording, and the next one is written; rows of a run no
    longer in the file, or already marked ``interrupted`` by a reader (its
    driver died, and these are its last words), are dropped.
    """

    def __init__(self, db: sqlite3.Connection, path: Path, log_head: int, log_tail: int,
                 warn: Callable[[str], None]) -> None:
        self.db = db
        self.path = path
        self._log_head = log_head
        self._log_tail = log_tail
        self._warn_with = warn
        self._warned = False
        self._outputs: dict[str, dict[str | None, _Output]] = {}  # run -> task -> output

    def write(self, batch: list[Item]) -> None:
        """Commit ``batch`` (held-back output stays held back, unless the batch closes the writer)."""
        try:
            self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - the batch is lost, the writer and the later batches not
            self.warn_once(exc)

    def finish(self) -> None:
        """Commit the output held back for runs still going (the writer closes, or its driver is gone)."""
        self.write([("close", ())])

    def warn_once(self, error: Exception) -> None:
        if not self._warned:  # once: a full disk would otherwise say so every 50 ms
            self._warned = True
            self._warn_with(f"maze could not write to the run history {self.path} ({type(error).__name__}: {error}), "
                            f"so messages of this process's runs are missing from it; it goes on writing and will "
                            f"not say so again")

    def _commit(self, batch: list[Item]) -> None:
        # Rows keep their order: a run's row before its messages, its end after them.
        with self.db:
            rows: list[Row] = []
            for item in batch:
                if len(item) == 3:
                    run_id, seq, message = item
                    rows += self._admit(run_id, seq, message["type"], message["data"])
                    continue
                kind, args = item
                if kind == "flush":
                    continue
                self._insert(rows)
                rows = []
                if kind == "run":
                    self.db.execute(
                        "INSERT OR REPLACE INTO runs (run_id, workflow_id, workflow_name, started_at, status, tasks,"
                        " host, pid, pid_started, dag) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)", args)
                elif kind == "end":
                    self.db.execute("UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ? AND status = 'running'",
                                    args)
                elif kind == "close":
                    rows = [r for run_id in list(self._outputs) for r in self._release_run(run_id)]
            self._insert(rows)

    def _insert(self, rows: list[Row]) -> None:
        messages, vals = [], []
        for run_id, seq, kind, data in rows:
            text, described = encode(kind, data)
            messages.append((run_id, seq, kind, data.get("task_id"), text, run_id))
            vals += [(run_id, seq, key, blob, run_id) for key, blob in described]
        # Only rows of runs still in the file and not settled: delete() spares runs still going, but rows of one
        # deleted by other means would fail their foreign key, and with it every batch they are in; and a run a
        # reader marked interrupted (its driver is dead) already ends with the finish_workflow that reader wrote.
        live = "WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ? AND status != 'interrupted')"
        self.db.executemany(f"INSERT OR REPLACE INTO messages SELECT ?, ?, ?, ?, ? {live}", messages)
        self.db.executemany(f"INSERT OR REPLACE INTO vals SELECT ?, ?, ?, ? {live}", vals)

    def _admit(self, run_id: str, seq: int, kind: str, data: dict[str, Any]) -> list[Row]:
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

    def _log_line(self, run_id: str, seq: int, data: dict[str, Any]) -> list[Row]:
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

    def _release_run(self, run_id: str) -> list[Row]:
        return [r for output in self._outputs.pop(run_id, {}).values() for r in self._release(run_id, output)]

    @staticmethod
    def _release(run_id: str, output: _Output) -> list[Row]:
        rows: list[Row] = []
        if output.first_out is not None:
            seq, data = output.first_out
            text = f"[maze: {output.lines_out:,} lines of output not kept in the history]\n"
            rows.append((run_id, seq, "task_log", {**data, "stream": "stderr", "text": text}))
        rows += [(run_id, seq, "task_log", data) for seq, data in output.tail]
        return rows
