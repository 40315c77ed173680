"""Durable run history: every run's DAG and messages in a SQLite database.

Messages are written as they happen, by one background thread per client
that commits in small batches, so recording never slows the scheduler. The
database is in WAL mode with a busy timeout, so several processes (two
notebooks, a script and a notebook) can write to it at once.

Message data is stored pickled (so a replayed result is the original object
where its class can be imported), falling back to its ``repr`` text for what
cannot be pickled. The DAG is stored as JSON: task ids, names, resources and
edges, enough to draw it again.

Default location: ``$MAZE_HISTORY`` if set, else
``$XDG_DATA_HOME/maze/history.sqlite3`` (``~/.local/share/maze/...``).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .messages import Message
from .plan import OutputRef, Plan, PlannedTask
from .resources import Resources
from .task import TaskFunction, TaskOptions, TaskSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    workflow_name TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    dag TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    task_id TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""
_BATCH_S = 0.05


def default_path() -> Path:
    if os.environ.get("MAZE_HISTORY"):
        return Path(os.environ["MAZE_HISTORY"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "maze" / "history.sqlite3"


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(_SCHEMA)
    return db


def dag_json(plan: Plan) -> str:
    return json.dumps({
        "name": plan.name,
        "tasks": [{"id": tid, "name": t.name, "resources": t.spec.resources.as_dict(), "upstream": list(t.upstream),
                   "inputs": list(t.spec.inputs), "outputs": list(t.spec.outputs)} for tid, t in plan.tasks.items()],
        "edges": [{"source": e.source, "target": e.target, "keys": list(e.keys)} for e in plan.edges],
    })


#: Values whose buffers are larger than this are kept as a short text, not the data.
VALUE_LIMIT = 1 << 20


class Dropped(str):
    """Stands, in the history, for a value too large to keep (it reads as a short description)."""

    __slots__ = ()


def _dump(data: dict[str, Any]) -> bytes:
    # Common case first: one pickle, with big buffers (arrays) handed out of band
    # so that their size is known without copying them.
    buffers: list[pickle.PickleBuffer] = []
    try:
        blob = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - something in it does not pickle: sort it out per value
        blob = None
    if blob is not None and not buffers and len(blob) <= VALUE_LIMIT:
        return blob
    return pickle.dumps({k: _keepable(v) for k, v in data.items()}, protocol=pickle.HIGHEST_PROTOCOL)


def _keepable(value: Any) -> Any:
    """``value`` if it pickles to a modest size, else a text saying what it was."""
    if isinstance(value, dict):
        return {k: _keepable(v) for k, v in value.items()}
    buffers: list[pickle.PickleBuffer] = []
    try:
        # protocol 5 hands big buffers (arrays) out of band: sized without copying them
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - keep what can be kept, as text
        return _short_repr(value)
    size = len(data) + sum(b.raw().nbytes for b in buffers)
    if size > VALUE_LIMIT:
        return Dropped(f"<{type(value).__name__} of {size / 2**20:.1f} MB, not kept in the history>")
    return value


def _short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load(blob: bytes) -> dict[str, Any]:
    try:
        return pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - e.g. a class that no longer exists
        return {"unreadable": f"{type(exc).__name__}: {exc}"}


class HistoryWriter:
    """Appends runs and messages from one process; a daemon thread does the writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._write_loop, name="maze-history", daemon=True)
        self._thread.start()

    def run_started(self, run_id: str, plan: Plan) -> None:
        self._put("run", (run_id, plan.workflow_id, plan.name, time.time(), len(plan.tasks), os.getpid(), dag_json(plan)))

    def message(self, run_id: str, seq: int, message: Message) -> None:
        data = message["data"]
        self._put("msg", (run_id, seq, message["type"], data.get("task_id"), data))
        if message["type"] == "finish_workflow":
            self._put("end", (data["status"], time.time(), run_id))

    def _put(self, kind: str, row: tuple[Any, ...]) -> None:
        self._idle.clear()
        self._queue.put((kind, row))

    def flush(self, timeout: float = 10) -> None:
        """Wait until everything handed over so far is committed."""
        self._put("flush", ())
        self._idle.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._db.close()

    def _write_loop(self) -> None:
        # Wake once per batch, not once per message: waking this thread on every
        # message would take the interpreter lock from the scheduler each time.
        while True:
            item = self._queue.get()
            time.sleep(_BATCH_S)
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            self._commit([b for b in batch if b is not None])
            if self._queue.empty():
                self._idle.set()
            if stop:
                return

    def _commit(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        # Rows keep their order: a run's row before its messages, its end after them.
        with self._db:
            messages: list[tuple[Any, ...]] = []
            for kind, row in batch:
                if kind == "msg":
                    run_id, seq, kind_, task_id, data = row
                    messages.append((run_id, seq, kind_, task_id, _dump(data)))
                    continue
                if messages:
                    self._db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)", messages)
                    messages = []
                if kind == "run":
                    self._db.execute(
                        "INSERT OR REPLACE INTO runs (run_id, workflow_id, workflow_name, started_at, status, tasks, pid, dag)"
                        " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)", row)
                elif kind == "end":
                    self._db.execute("UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?", row)
            if messages:
                self._db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)", messages)


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


class HistoryReader:
    """Reads the database: past runs, their messages and DAGs. Any process, any time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> sqlite3.Connection:
        return connect(self.path)

    def runs(self, workflow: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        query = "SELECT run_id, workflow_id, workflow_name, started_at, ended_at, status, tasks, pid FROM runs"
        args: list[Any] = []
        if workflow is not None:
            query += " WHERE workflow_id = ? OR workflow_name = ?"
            args += [workflow, workflow]
        query += " ORDER BY started_at DESC" + (f" LIMIT {int(limit)}" if limit else "")
        db = self._db()
        try:
            rows = db.execute(query, args).fetchall()
        finally:
            db.close()
        keys = ("run_id", "workflow_id", "workflow", "started_at", "ended_at", "status", "tasks", "pid")
        return [dict(zip(keys, r)) for r in rows]

    def runs_by_id(self, run_id: str) -> dict[str, Any]:
        db = self._db()
        try:
            row = db.execute("SELECT run_id, workflow_id, workflow_name, started_at, ended_at, status, tasks, pid"
                             " FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            db.close()
        keys = ("run_id", "workflow_id", "workflow", "started_at", "ended_at", "status", "tasks", "pid")
        return dict(zip(keys, row))

    def exists(self, run_id: str) -> bool:
        db = self._db()
        try:
            return db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
        finally:
            db.close()

    def messages(self, run_id: str) -> list[Message]:
        db = self._db()
        try:
            rows = db.execute("SELECT type, data FROM messages WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        finally:
            db.close()
        return [{"type": kind, "data": _load(blob)} for kind, blob in rows]

    def dag(self, run_id: str) -> dict[str, Any]:
        db = self._db()
        try:
            row = db.execute("SELECT dag FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            db.close()
        return json.loads(row[0])

    def delete(self, *, before: float | None = None, keep_last: int | None = None, run_ids: list[str] | None = None) -> int:
        """Delete runs started before ``before`` (epoch s), beyond the newest ``keep_last``, or by id."""
        db = self._db()
        try:
            doomed: set[str] = set(run_ids or ())
            if before is not None:
                doomed |= {r for (r,) in db.execute("SELECT run_id FROM runs WHERE started_at < ?", (before,))}
            if keep_last is not None:
                doomed |= {r for (r,) in db.execute(
                    "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT -1 OFFSET ?", (keep_last,))}
            with db:
                db.executemany("DELETE FROM messages WHERE run_id = ?", [(r,) for r in doomed])
                db.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in doomed])
            return len(doomed)
        finally:
            db.close()
