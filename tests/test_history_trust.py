"""Trust in the run history: safe to open, private, no run left running forever, bounded output."""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maze.core.errors import UnsafeHistoryError
from maze.core.history import (
    FORMAT,
    VALUE_LIMIT,
    Dropped,
    HistoryReader,
    HistoryWriter,
    Stored,
    default_path,
    plan_of,
)
from maze.core.messages import Message, MessageType
from maze.core.plan import Plan
from maze.core.resources import Resources

WF, RUN = "wf-trust", "run-trust"
LINUX = os.path.exists("/proc/self/stat")


def make(kind: MessageType, workflow_id: str, run_id: str, **data: Any) -> Message:
    """A raw message of any shape: the history must store whatever it is handed."""
    return {"type": kind.value, "data": {"workflow_id": workflow_id, "run_id": run_id, **data}}


def task_message(kind: MessageType, workflow_id: str, run_id: str, task_id: str, task_name: str,
                 **data: Any) -> Message:
    return make(kind, workflow_id, run_id, task_id=task_id, task_name=task_name, time=time.time(), **data)


def plan(*task_ids: str) -> Plan:
    tasks = [{"id": t, "name": t, "resources": Resources().as_dict(), "upstream": [], "inputs": [], "outputs": ["y"]}
             for t in task_ids]
    return plan_of({"name": "trust", "tasks": tasks, "edges": []}, WF)


def msg(kind: MessageType, task_id: str, **data: Any) -> Message:
    return task_message(kind, WF, RUN, task_id, task_id, **data)


def record(path: Path, messages: list[Message], **writer_options: Any) -> None:
    writer = HistoryWriter(path, **writer_options)
    writer.run_started(RUN, plan("t"))
    for seq, m in enumerate(messages, 1):
        writer.message(RUN, seq, m)
    writer.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Mkdir:
    """Unpickling this creates a directory: the stand-in for code a planted pickle would run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.target),)


# -- 1. safe to open ----------------------------------------------------------------------------------

def test_messages_are_json_and_result_values_come_back_only_when_asked(tmp_path):
    path = tmp_path / "h.sqlite3"
    array = np.arange(10.0)
    result = {"n": 3, "doc": {"a": [1, 2.5, None, True, "s"]}, "pair": (1, 2), "tags": {"x"}, "array": array,
              "big": np.zeros(VALUE_LIMIT // 8 + 1), "long": [0.5] * (VALUE_LIMIT // 3),
              "blob": b"x" * (VALUE_LIMIT + 1), "text": "é" * (VALUE_LIMIT + 1)}
    record(path, [
        msg(MessageType.START_TASK, "t", gpu_ids=[0], where=Path("/x"), pair=(1, 2)),
        msg(MessageType.FINISH_TASK, "t", result=result, duration=0.1),
        make(MessageType.FINISH_WORKFLOW, WF, RUN, status="completed", has_exception=False, duration=0.2),
    ])

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (FORMAT,)
    texts = [t for (t,) in db.execute("SELECT data FROM messages WHERE typeof(data) = 'text'")]
    assert len(texts) == 3 and all(json.loads(t) for t in texts)
    assert db.execute("SELECT key FROM vals WHERE data IS NOT NULL ORDER BY key").fetchall() == [
        ("array",), ("pair",), ("tags",)]
    db.close()

    reader = HistoryReader(path)
    start = reader.messages(RUN)[0]["data"]
    assert start["where"] == "PosixPath('/x')" and start["pair"] == [1, 2]  # other data: JSON, else repr text
    loaded = reader.messages(RUN)[1]["data"]["result"]
    assert loaded["n"] == 3 and loaded["doc"] == result["doc"]
    assert type(loaded["pair"]) is tuple and loaded["pair"] == (1, 2) and loaded["tags"] == {"x"}
    assert np.array_equal(loaded["array"], array)
    assert isinstance(loaded["big"], Dropped) and loaded["big"] == "<ndarray of 1.0 MB, not kept in the history>"
    assert isinstance(loaded["long"], Dropped) and loaded["long"].startswith("<list of 1.")
    assert isinstance(loaded["blob"], Dropped) and loaded["blob"] == "<bytes of 1.0 MB, not kept in the history>"
    assert isinstance(loaded["text"], Dropped) and loaded["text"] == "<str of 2.0 MB, not kept in the history>"

    shown = reader.messages(RUN, values=False)[1]["data"]["result"]
    assert isinstance(shown["array"], Stored) and shown["array"] == "<ndarray, stored in the history>"
    assert isinstance(shown["big"], Dropped) and shown["n"] == 3


def test_a_value_too_long_to_keep_is_dropped_in_the_driver_not_sent_whole_to_the_writer():
    from maze.core.history_values import Kept, plain_result, with_kept_results
    data = {"result": {"text": "x" * (VALUE_LIMIT + 1), "blob": b"y" * (VALUE_LIMIT + 1), "n": 1}}
    assert not plain_result(data)
    sent = with_kept_results(data)["result"]
    for key in ("text", "blob"):
        assert type(sent[key]) is Kept and sent[key].blob is None   # a description, no pickle of it
    assert sent["n"] == 1 and data["result"]["text"] == "x" * (VALUE_LIMIT + 1)   # the run's own message unchanged
    assert plain_result({"result": {"text": "x" * 100, "n": 1}})


class Unprintable:
    """A dict key JSON cannot hold whose ``str`` fails."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<unprintable>"


def test_a_key_without_str_is_written_as_its_repr(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    with caplog.at_level(logging.WARNING, logger="maze"):
        record(path, [msg(MessageType.START_TASK, "t", where={Unprintable(): 1, (2, 3): 4})])
    assert HistoryReader(path).messages(RUN)[0]["data"]["where"] == {"<unprintable>": 1, "(2, 3)": 4}
    assert [r for r in caplog.records if r.name == "maze"] == []


def test_a_planted_pickle_is_loaded_only_from_a_private_file(tmp_path):
    path, ran = tmp_path / "h.sqlite3", tmp_path / "ran"
    record(path, [msg(MessageType.FINISH_TASK, "t", result={"y": (1, 2)}, duration=0.1)])
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE vals SET data = ?", (pickle.dumps(Mkdir(ran)),))
    db.close()
    path.chmod(0o666)  # as if anyone could have written it

    reader = HistoryReader(path)
    assert [r["run_id"] for r in reader.runs()] == [RUN] and reader.dag(RUN)["name"] == "trust"
    assert reader.messages(RUN, values=False)[0]["data"]["result"] == {"y": "<tuple, stored in the history>"}
    with pytest.raises(UnsafeHistoryError, match=re.escape(f"{path} is writable by group or others") + ".*chmod 600"):
        reader.messages(RUN)
    assert not ran.exists()

    path.chmod(0o600)  # the user vouches for it: now values load (and the planted code runs)
    reader.messages(RUN)
    assert ran.is_dir()


def test_a_wal_file_others_can_write_blocks_values(tmp_path):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan("t"))
    writer.message(RUN, 1, msg(MessageType.FINISH_TASK, "t", result={"y": (1, 2)}, duration=0.1))
    writer.flush()
    try:
        wal = tmp_path / "h.sqlite3-wal"
        wal.chmod(0o620)
        with pytest.raises(UnsafeHistoryError, match=re.escape(str(wal))):
            HistoryReader(path).messages(RUN)
        wal.chmod(0o600)
        assert HistoryReader(path).messages(RUN)[0]["data"]["result"] == {"y": (1, 2)}
    finally:
        writer.close()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="only root can give a file away")
def test_a_file_of_another_user_blocks_values(tmp_path):
    path = tmp_path / "h.sqlite3"
    record(path, [msg(MessageType.FINISH_TASK, "t", result={"y": (1, 2)}, duration=0.1)])
    os.chown(path, 65534, 65534)
    with pytest.raises(UnsafeHistoryError, match="owned by another user .*chown"):
        HistoryReader(path).messages(RUN)
    assert HistoryReader(path).messages(RUN, values=False)[0]["data"]["result"]["y"] == "<tuple, stored in the history>"


OLD_SCHEMA = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, workflow_name TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL, tasks INTEGER NOT NULL, pid INTEGER NOT NULL,
    dag TEXT NOT NULL);
CREATE TABLE messages (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    type TEXT NOT NULL, task_id TEXT, data BLOB NOT NULL, PRIMARY KEY (run_id, seq));
"""


def write_old_format(path: Path, ran: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    with db:
        db.execute("INSERT INTO runs VALUES (?, ?, 'old', 0, 1, 'completed', 1, 1, ?)",
                   (RUN, WF, json.dumps({"name": "old", "tasks": [], "edges": []})))
        db.execute("INSERT INTO messages VALUES (?, 1, 'finish_workflow', NULL, ?)", (RUN, pickle.dumps(Mkdir(ran))))
    db.close()


def test_an_old_format_file_is_refused_and_never_unpickled(tmp_path):
    path, ran = tmp_path / "old.sqlite3", tmp_path / "ran"
    write_old_format(path, ran)
    for open_it in (lambda: HistoryReader(path).messages(RUN), lambda: HistoryReader(path).runs(),
                    lambda: HistoryWriter(path)):
        with pytest.raises(UnsafeHistoryError, match=re.escape(str(path)) + ".*old format.*Move it aside"):
            open_it()
    assert not ran.exists()


def test_the_old_default_file_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("MAZE_HISTORY", raising=False)
    old, ran = tmp_path / "maze" / "history.sqlite3", tmp_path / "ran"
    write_old_format(old, ran)
    assert default_path() == tmp_path / "maze" / "runs.sqlite3"
    assert HistoryReader(default_path()).runs() == []
    assert not ran.exists()


# -- 2. private ---------------------------------------------------------------------------------------

def write_and_inspect(path: Path) -> dict[str, int]:
    """Modes of the directory and the three SQLite files while a writer has them open."""
    writer = HistoryWriter(path)
    try:
        writer.run_started(RUN, plan("t"))
        writer.flush()
        files = [path.parent, path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        return {p.name: mode(p) for p in files}
    finally:
        writer.close()


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual umask, which would make files 0644
    yield
    os.umask(old)


def test_the_default_directory_and_the_files_are_private(tmp_path, monkeypatch, umask_022):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("MAZE_HISTORY", raising=False)
    assert write_and_inspect(default_path()) == {
        "maze": 0o700, "runs.sqlite3": 0o600, "runs.sqlite3-wal": 0o600, "runs.sqlite3-shm": 0o600}


def test_maze_own_directory_is_made_private_again(tmp_path, monkeypatch, umask_022):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("MAZE_HISTORY", raising=False)
    (tmp_path / "maze").mkdir(mode=0o755)
    assert write_and_inspect(default_path())["maze"] == 0o700


def test_a_chosen_directory_keeps_its_mode_and_the_files_are_private(tmp_path, umask_022):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert write_and_inspect(mine / "h.sqlite3") == {
        "mine": 0o755, "h.sqlite3": 0o600, "h.sqlite3-wal": 0o600, "h.sqlite3-shm": 0o600}


# -- 3. a run whose process died ----------------------------------------------------------------------

DRIVER = textwrap.dedent('''
    import time
    from maze import MaClient, task

    @task(inputs=[], outputs=["y"])
    def slow(params):
        time.sleep(60)
        return {"y": 1}

    client = MaClient()
    wf = client.create_workflow("doomed")
    wf.add_task(slow)
    wf.wait(wf.run())
''')


def test_a_killed_driver_leaves_an_interrupted_run(tmp_path):
    path, script = tmp_path / "h.sqlite3", tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ, MAZE_HISTORY=str(path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = HistoryReader(path)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the run and its task's start are recorded
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the driver never recorded its run"
            runs = reader.runs() if path.exists() else []
            if runs and any(m["type"] == "start_task" for m in reader.messages(runs[0]["run_id"], values=False)):
                break
            time.sleep(0.1)
        assert runs[0]["status"] == "running"
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind; its workers notice and end themselves
        proc.wait()

    [run] = reader.runs()
    messages = reader.messages(run["run_id"])
    assert run["status"] == "interrupted" and run["ended_at"] == pytest.approx(messages[0]["data"]["time"], abs=1e-6)
    assert [m["type"] for m in messages] == ["start_task", "finish_workflow"]
    assert messages[-1]["data"] == {
        "workflow_id": run["workflow_id"], "run_id": run["run_id"], "status": "interrupted",
        "has_exception": False, "duration": run["ended_at"] - run["started_at"],
        "interrupted": f"the process {proc.pid} on {run['host']} that drove the run ended before the run did"}


def test_a_live_owner_keeps_its_run_running(tmp_path):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan("t"))
    writer.close()  # the run never ended, but this process (its owner) lives
    assert [r["status"] for r in HistoryReader(path).runs()] == ["running"]
    assert HistoryReader(path).runs()[0]["pid"] == os.getpid()


@pytest.mark.skipif(not LINUX, reason="process start times come from /proc")
def test_a_reused_pid_is_not_the_owner(tmp_path):
    path = tmp_path / "h.sqlite3"
    record(path, [msg(MessageType.START_TASK, "t")])
    db = sqlite3.connect(path)
    with db:  # this process's pid, but another process's start time: the owner ended and its pid was reused
        db.execute("UPDATE runs SET pid_started = pid_started - 1")
    db.close()
    assert [r["status"] for r in HistoryReader(path).runs()] == ["interrupted"]


ORPHAN = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    from maze.core.history import HistoryWriter, plan_of

    writer = HistoryWriter(Path(sys.argv[1]))
    writer.run_started("run-orphan", plan_of({"name": "o", "tasks": [], "edges": []}, "wf-o"))
    writer.message("run-orphan", 1, {"type": "task_exception", "data": {
        "workflow_id": "wf-o", "run_id": "run-orphan", "task_id": "t", "task_name": "t", "time": 0.0}})
    writer.flush()
    os._exit(0)  # gone before the run ended, without closing anything
''')

OPENER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from maze.core.history import HistoryReader, HistoryWriter

    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all openers at once
    if sys.argv[2] == "reader":
        HistoryReader(Path(sys.argv[1])).runs()
    else:
        HistoryWriter(Path(sys.argv[1])).close()
''')


def test_processes_opening_at_once_interrupt_an_orphan_once(tmp_path):
    path = tmp_path / "h.sqlite3"
    (tmp_path / "orphan.py").write_text(ORPHAN)
    (tmp_path / "opener.py").write_text(OPENER)
    subprocess.run([sys.executable, str(tmp_path / "orphan.py"), str(path)], check=True, timeout=60)
    at = str(time.time() + 3)
    openers = [subprocess.Popen([sys.executable, str(tmp_path / "opener.py"), str(path), kind, at],
                                stderr=subprocess.PIPE, text=True) for kind in ("reader", "writer") * 2]
    for p in openers:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    db = sqlite3.connect(path)
    assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
    [(data,)] = db.execute("SELECT data FROM messages WHERE type = 'finish_workflow'").fetchall()
    assert json.loads(data)["has_exception"] is True
    db.close()


# -- 4. bounded output --------------------------------------------------------------------------------

def test_output_keeps_its_head_and_tail_and_says_what_it_left_out(tmp_path):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan("t"))
    seq = itertools.count(1)
    writer.message(RUN, next(seq), msg(MessageType.START_TASK, "t"))
    for i in range(200_000):
        writer.message(RUN, next(seq), msg(MessageType.TASK_LOG, "t", stream="stdout", text=f"line {i}\n"))
    writer.message(RUN, next(seq), msg(MessageType.FINISH_TASK, "t", result={"y": 1}, duration=1.0))
    writer.flush()  # the task ended, so its tail is written, though the run goes on
    messages = HistoryReader(path).messages(RUN)
    writer.close()

    assert [m["type"] for m in messages] == ["start_task"] + ["task_log"] * 2001 + ["finish_task"]
    assert [m["data"]["text"] for m in messages[1:-1]] == (
        [f"line {i}\n" for i in range(1000)]
        + ["[maze: 198,000 lines of output not kept in the history]\n"]
        + [f"line {i}\n" for i in range(199_000, 200_000)])
    assert messages[1001]["data"]["stream"] == "stderr"
    assert path.stat().st_size < 1 << 20  # 200,000 lines in full would be about 30 MB


def test_output_bounds_are_per_task_and_held_back_lines_reach_the_file(tmp_path):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path, log_head=2, log_tail=1)
    writer.run_started(RUN, plan("t", "u"))
    seq = itertools.count(1)
    for i in range(5):
        for tid in ("t", "u"):
            text = "a\nb\n" if (tid, i) == ("t", 2) else f"{tid}{i}\n"
            writer.message(RUN, next(seq), msg(MessageType.TASK_LOG, tid, stream="stdout", text=text))
    writer.message(RUN, next(seq), msg(MessageType.TASK_SKIPPED, "u", reason="why not"))
    writer.message(RUN, next(seq), make(MessageType.FINISH_WORKFLOW, WF, RUN, status="failed"))  # t never ended
    writer.run_started("run-2", plan("t"))
    for i in range(3):
        writer.message("run-2", i + 1, msg(MessageType.TASK_LOG, "t", stream="stdout", text=f"x{i}\n"))
    writer.close()  # run-2 still going: its held-back line is written on close

    reader = HistoryReader(path)
    shown = [(m["data"].get("task_id"), m["data"].get("text", m["type"])) for m in reader.messages(RUN)]
    marker = "[maze: {} lines of output not kept in the history]\n"
    assert shown == [
        ("t", "t0\n"), ("u", "u0\n"), ("t", "t1\n"), ("u", "u1\n"),
        ("t", marker.format(3)), ("u", marker.format(2)), ("t", "t4\n"), ("u", "u4\n"),
        ("u", "task_skipped"), (None, "finish_workflow")]
    assert [m["data"]["text"] for m in reader.messages("run-2")] == ["x0\n", "x1\n", "x2\n"]


# -- 5. deleting, failing, closing while runs are recorded --------------------------------------------

def test_a_run_still_going_is_never_deleted_and_its_recording_goes_on(tmp_path):
    path = tmp_path / "h.sqlite3"
    subprocess.run([sys.executable, "-c", ORPHAN, str(path)], check=True, timeout=60)  # its owner has ended
    writer = HistoryWriter(path)
    writer.run_started("run-done", plan("t"))
    writer.message("run-done", 1, make(MessageType.FINISH_WORKFLOW, WF, "run-done", status="completed"))
    writer.run_started(RUN, plan("t"))
    writer.message(RUN, 1, msg(MessageType.START_TASK, "t"))
    writer.flush()
    reader = HistoryReader(path)
    try:
        assert reader.delete(run_ids=[RUN, "run-unknown"]) == 0
        assert reader.delete(before=time.time() + 60) == 2  # the orphan (interrupted by now) and run-done
        assert reader.delete(keep_last=0) == 0
        assert [(r["run_id"], r["status"]) for r in reader.runs()] == [(RUN, "running")]

        writer.message(RUN, 2, msg(MessageType.FINISH_TASK, "t", result={"y": 1}, duration=0.1))
        writer.message(RUN, 3, make(MessageType.FINISH_WORKFLOW, WF, RUN, status="completed"))
        writer.flush()
        assert [m["type"] for m in reader.messages(RUN)] == ["start_task", "finish_task", "finish_workflow"]
        assert reader.delete(run_ids=[RUN]) == 1 and reader.runs() == []
    finally:
        writer.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_writer_outlives_a_failed_commit_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan("t"))
    writer.flush()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with caplog.at_level(logging.WARNING, logger="maze"):
            db.execute("ALTER TABLE messages RENAME TO gone")  # from now on every commit fails
            for seq in (1, 2):  # two batches, each lost
                writer.message(RUN, seq, msg(MessageType.START_TASK, "t"))
                writer.flush()
            db.execute("ALTER TABLE gone RENAME TO messages")
            writer.message(RUN, 3, msg(MessageType.FINISH_TASK, "t", result={"y": (1, 2)}, duration=0.1))
            writer.flush()
            assert [m["data"]["result"] for m in HistoryReader(path).messages(RUN)] == [{"y": (1, 2)}]

            db.executescript("DELETE FROM vals; DELETE FROM messages; DELETE FROM runs")  # the run goes, by hand
            writer.message(RUN, 4, make(MessageType.FINISH_WORKFLOW, WF, RUN, status="completed"))
            writer.run_started("run-2", plan("t"))
            writer.message("run-2", 1, msg(MessageType.START_TASK, "t"))
            writer.flush()  # the deleted run's rows are dropped; the batch with them commits the rest
        assert [r["run_id"] for r in HistoryReader(path).runs()] == ["run-2"]
        assert db.execute("SELECT run_id, seq FROM messages").fetchall() == [("run-2", 1)]
        [warning] = [r for r in caplog.records if r.name == "maze"]   # not other libraries' late records
        assert warning.levelno == logging.WARNING and warning.exc_info is None
        assert str(path) in warning.getMessage() and "no such table: messages" in warning.getMessage()
    finally:
        db.close()
        writer.close()


def test_flush_and_close_after_close_return_at_once(tmp_path):
    writer = HistoryWriter(tmp_path / "h.sqlite3")
    writer.run_started(RUN, plan("t"))
    writer.close()
    start = time.monotonic()
    writer.close()
    writer.flush()
    assert time.monotonic() - start < 1
    assert [r["run_id"] for r in HistoryReader(tmp_path / "h.sqlite3").runs()] == [RUN]


# -- 6. arguments -------------------------------------------------------------------------------------

def test_a_history_path_must_name_a_file(tmp_path):
    for path, why in ((tmp_path, "is a directory"), ("", "is empty")):
        for open_it in (HistoryWriter, HistoryReader):
            with pytest.raises(ValueError, match=re.escape(f"run history path {str(path)!r} {why}")
                               + ".*path of a file"):
                open_it(path)
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    writer = HistoryWriter(str(tmp_path / "sub" / "more" / "h.sqlite3"))  # a str will do; folders are made
    writer.close()
    assert writer.path == tmp_path / "sub" / "more" / "h.sqlite3" and writer.path.is_file()


@pytest.mark.parametrize("name", ["log_head", "log_tail"])
@pytest.mark.parametrize("value", [-1, 1.0, True, "3", None])
def test_log_bounds_must_be_whole_numbers(tmp_path, name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}") + ".*whole number >= 0"):
        HistoryWriter(tmp_path / "h.sqlite3", **{name: value})
    assert not (tmp_path / "h.sqlite3").exists()


# -- 7. a process that exits without closing ----------------------------------------------------------

AT_EXIT = textwrap.dedent('''
    import atexit, sys
    from pathlib import Path
    from maze.core.history import HistoryWriter, plan_of
    from maze.core import messages

    writer = HistoryWriter(Path(sys.argv[1]), log_head=1, log_tail=2)
    atexit.register(writer.close)  # what MaClient does
    for run in ("run-ended", "run-going"):
        at = {"workflow_id": "wf", "run_id": run}
        writer.run_started(run, plan_of({"name": "x", "tasks": [], "edges": []}, "wf"))
        for i in range(5):
            writer.message(run, i + 1, messages.task_log(at, "t", "t", at=0.0, stream="stdout", text=f"{run} {i}\\n"))
    writer.message("run-ended", 6, messages.finish_workflow(
        {"workflow_id": "wf", "run_id": "run-ended"}, status="completed", has_exception=False, duration=0.1))
    # the end of the script: nothing closes the writer, nothing waits for it
''')


def test_what_a_process_handed_over_is_written_when_it_exits(tmp_path):
    path = tmp_path / "h.sqlite3"
    proc = subprocess.run([sys.executable, "-c", AT_EXIT, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr

    reader = HistoryReader(path)
    assert {r["run_id"]: r["status"] for r in reader.runs()} == {"run-ended": "completed", "run-going": "interrupted"}
    for run in ("run-ended", "run-going"):
        assert [m["data"].get("text", m["type"]) for m in reader.messages(run)] == [
            f"{run} 0\n", "[maze: 2 lines of output not kept in the history]\n", f"{run} 3\n", f"{run} 4\n",
            "finish_workflow"]
