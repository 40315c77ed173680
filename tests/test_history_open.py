"""Opening a run history: other processes' locks, Ctrl-C while waiting, a file that cannot be written."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from maze import MaClient, task
from maze.core.history_store import connect

# Holds a lock on the file until its stdin closes; says "held" once it has it.
HOLDER = textwrap.dedent('''
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("held", flush=True)
    sys.stdin.read()
''')

# Opens the history while another process holds its lock.
OPENER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from maze.core.history_store import connect

    began = time.monotonic()
    try:
        print("opening", flush=True)   # inside the try: Ctrl-C may come as soon as it is read
        connect(Path(sys.argv[1]))
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - began:.2f}", flush=True)
''')


@pytest.fixture
def locked(tmp_path):
    """A history file another process holds an exclusive lock on."""
    path = tmp_path / "h.sqlite3"
    sqlite3.connect(path).close()   # a new, empty file: still in rollback mode
    (tmp_path / "holder.py").write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield path
    holder.stdin.close()
    holder.wait(timeout=30)


def test_opening_waits_for_a_lock_at_most_its_bound_in_all_and_says_why(locked):
    began = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match=r"database is locked: another process has held a lock "
                                                        r"on it for 3 s"):
        connect(locked, wait_s=3)
    # The bound is for the whole open, not for each statement (each would wait 3 s of its own).
    assert 3 <= time.monotonic() - began < 5.5


def test_ctrl_c_stops_a_wait_for_a_lock(locked, tmp_path):
    (tmp_path / "opener.py").write_text(OPENER)
    opener = subprocess.Popen([sys.executable, str(tmp_path / "opener.py"), str(locked)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert opener.stdout.readline() == "opening\n"
    time.sleep(1.0)   # waiting for the lock by now (it waits up to 30 s)
    opener.send_signal(signal.SIGINT)
    out, err = opener.communicate(timeout=30)
    assert opener.returncode == 0, err
    assert out.startswith("interrupted after ")
    assert float(out.split()[-1]) < 5   # heard at once, not when SQLite's own wait ran out


@task(inputs=["x"], outputs=["y"])
def inc(params):
    return {"y": params["x"] + 1}


def _said(caplog) -> list[str]:
    """What maze logged (other libraries' late records, Ray's from earlier tests say, are not maze's)."""
    return [r.getMessage() for r in caplog.records if r.name == "maze"]


def _one_run(client: MaClient) -> dict:
    wf = client.create_workflow("w")
    wf.add_task(inc, inputs={"x": 1})
    return wf.wait(wf.run())


def test_a_history_this_user_may_not_write_records_nothing_and_says_so_once(tmp_path, monkeypatch, caplog):
    # As root (this suite's usual user) every file is writable: the check that the file and its
    # folder are is replaced by its answer for a read-only folder.
    import maze.core.history as history

    path = tmp_path / "h.sqlite3"
    with MaClient(history=path):
        pass   # the file exists, in the current format
    monkeypatch.setattr(history, "writable", lambda p: False)
    with caplog.at_level(logging.WARNING, logger="maze"), MaClient(history=path) as client:
        assert all(_one_run(client)["workflow_completed"] for _ in range(3))
        assert client.runs() == []
        assert client._history.writer_pid is None   # no writer was started for it
    [warning] = _said(caplog)
    assert warning.startswith(f"maze: the run history {path} cannot be written here: this user may only read it")
    assert "runs are not recorded. They go on." in warning


def test_a_writer_that_cannot_open_the_file_says_why_once_and_the_runs_go_on(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    with caplog.at_level(logging.WARNING, logger="maze"), MaClient(history=path) as client:
        # Spoiled after the client opened it, before the first run starts its writer.
        for extra in Path(tmp_path).glob("h.sqlite3-*"):
            extra.unlink()
        path.write_bytes(b"not a database " * 1000)
        assert all(_one_run(client)["workflow_completed"] for _ in range(3))
        client._history.flush()
    warnings = _said(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"maze: the run history {path} cannot be written here: it cannot be opened for "
                                  "writing (DatabaseError: file is not a database)")
    assert "runs are not recorded. They go on." in warnings[0]


def test_an_empty_history_this_user_may_only_read_holds_no_runs(tmp_path, monkeypatch):
    # Root may write any file: the check is replaced by its answer for a file of another user.
    import maze.core.history_store as history_store
    from maze.core.history import HistoryReader

    path = tmp_path / "h.sqlite3"
    path.touch()   # made, never written
    monkeypatch.setattr(history_store, "writable", lambda p: False)
    assert HistoryReader(path).runs() == []
    assert path.stat().st_size == 0


# A driver that dies while its run goes on: its run stays `running` in the file.
ORPHAN = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    from maze.core.history import HistoryWriter, plan_of

    writer = HistoryWriter(Path(sys.argv[1]))
    writer.run_started("run-orphan", plan_of({"name": "o", "tasks": [], "edges": []}, "wf-o"))
    writer.flush()
    os._exit(0)
''')


def _orphan(tmp_path: Path) -> Path:
    path = tmp_path / "h.sqlite3"
    (tmp_path / "orphan.py").write_text(ORPHAN)
    subprocess.run([sys.executable, str(tmp_path / "orphan.py"), str(path)], check=True, timeout=60)
    return path


def _status_in_file(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT status FROM runs WHERE run_id = 'run-orphan'").fetchone()[0]
    finally:
        db.close()


def _shows_interrupted(path: Path) -> None:
    from maze.core.history import HistoryReader

    reader = HistoryReader(path)
    [run] = reader.runs()
    assert run["status"] == "interrupted" and run["ended_at"] is not None
    assert reader.runs_by_id("run-orphan")["status"] == "interrupted"
    [end] = reader.messages("run-orphan")
    assert end["type"] == "finish_workflow" and end["data"]["status"] == "interrupted"
    replayed = reader.replay("run-orphan")
    assert replayed.ended.wait(5)   # not followed forever: nobody is left to end it


def test_a_run_whose_driver_died_shows_interrupted_in_a_history_this_user_may_only_read(tmp_path, monkeypatch):
    # Root may write any file: the check is replaced by its answer for a file of another user.
    import maze.core.history_store as history_store

    path = _orphan(tmp_path)
    monkeypatch.setattr(history_store, "writable", lambda p: False)
    _shows_interrupted(path)
    assert _status_in_file(path) == "running"   # shown so, not written


def test_a_run_whose_driver_died_is_shown_interrupted_at_once_while_another_process_writes_the_file(tmp_path):
    path = _orphan(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent('''
        import sqlite3, sys
        db = sqlite3.connect(sys.argv[1], isolation_level=None)
        db.execute("BEGIN IMMEDIATE")   # a writer in the middle of a long transaction
        print("held", flush=True)
        sys.stdin.read()
    '''), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        began = time.monotonic()
        with MaClient(history=path) as client:
            assert [r["status"] for r in client.runs()] == ["interrupted"]
        _shows_interrupted(path)
        assert time.monotonic() - began < 25   # each marking waits a second, not the 30 s a write may wait
        assert _status_in_file(path) == "running"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    _shows_interrupted(path)
    assert _status_in_file(path) == "interrupted"   # the next opener once the file was free


def test_removing_runs_from_a_history_this_user_may_only_read_says_so(tmp_path, monkeypatch, capsys):
    # Root may write any file: the check is replaced by its answer for a file of another user.
    import maze.core.history as history
    from maze.cli import main

    path = tmp_path / "h.sqlite3"
    with MaClient(history=path) as client:
        _one_run(client)
    monkeypatch.setattr(history, "writable", lambda p: False)
    assert main(["prune", "--keep-last", "0", "--history", str(path)]) == 2
    assert capsys.readouterr().err == (f"maze prune: cannot remove runs from the run history {path}: this user may "
                                       "only read it (the file or its folder is not writable)\n")
    assert len(history.HistoryReader(path).runs()) == 1


def test_a_writer_in_a_thread_that_cannot_open_the_file_says_why_once(tmp_path, caplog):
    # A client closed before its first batch was handed over writes that batch in a thread.
    for i in range(20):
        path = tmp_path / f"h{i}.sqlite3"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="maze"), MaClient(backend="inline", history=path) as client:
            for extra in Path(tmp_path).glob(f"h{i}.sqlite3-*"):
                extra.unlink()
            path.write_bytes(b"not a database " * 1000)
            assert _one_run(client)["workflow_completed"]
        warnings = _said(caplog)
        assert len(warnings) == 1 and "it cannot be opened for writing" in warnings[0], warnings


def test_runs_of_dead_drivers_are_removed_once_another_writer_lets_go(tmp_path):
    from maze.core.history import HistoryReader

    path = _orphan(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent('''
        import sqlite3, sys, time
        db = sqlite3.connect(sys.argv[1], isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("held", flush=True)
        time.sleep(2.5)   # longer than marking waits, shorter than a removal waits
    '''), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert HistoryReader(path).delete(keep_last=0) == 1
    finally:
        holder.wait(timeout=30)
    assert HistoryReader(path).runs() == []
