"""Durable run history: replay after a restart, concurrent writers, retention."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from maze import MaClient, UnknownRunError

PAST_SESSION = textwrap.dedent('''
    import sys
    import numpy as np
    from maze import MaClient, task

    @task(inputs=["x"], outputs=["y"])
    def double(params):
        print("doubling", params["x"])
        return {"y": params["x"] * 2}

    @task(inputs=["x"], outputs=["y"])
    def explode(params):
        raise RuntimeError("boom")

    @task(inputs=[], outputs=["big"])
    def big(params):
        return {"big": np.zeros(1_000_000)}

    with MaClient(history=sys.argv[1]) as client:
        wf = client.create_workflow("past")
        a = wf.add_task(double, inputs={"x": 21})
        b = wf.add_task(explode, inputs={"x": a.outputs["y"]})
        wf.add_task(double, inputs={"x": b.outputs["y"]})
        wf.add_task(big)
        run_id = wf.run()
        wf.wait(run_id)
        print(run_id)
''')


@pytest.fixture(scope="module")
def past(tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "runs.sqlite3"
    script = path.parent / "past.py"
    script.write_text(PAST_SESSION)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return path, proc.stdout.split()[-1]


def test_a_new_session_lists_and_replays_past_runs(past, capsys):
    path, run_id = past
    with MaClient(backend="inline", history=path) as client:
        runs = client.runs()
        assert [(r["run_id"], r["workflow"], r["status"], r["tasks"]) for r in runs] == [(run_id, "past", "failed", 4)]
        messages = client.get_results(run_id)
        assert [m["type"] for m in messages].count("start_task") == 3
        assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["status"] == "failed"
        logs = [m["data"]["text"] for m in messages if m["type"] == "task_log"]
        assert logs == ["doubling 21\n"]
        summary = client.show_results(run_id)
        assert summary["task_results"]["double"] == {"y": 42}
        assert summary["exception_tasks"] == ["explode"] and summary["skipped_tasks"] == ["double-2"]
        assert summary["task_results"]["big"]["big"] == "<ndarray of 7.6 MB, not kept in the history>"
        out = capsys.readouterr().out
        assert "✘ failed    explode  RuntimeError: boom" in out and "[double] doubling 21" in out
        widget = client.show_graph(run_id)
        assert widget.states == {"double": "finished", "explode": "failed", "double-2": "skipped", "big": "finished"}
        widget.close()


def test_history_of_this_session(tmp_path):
    from tasks_misc import inc

    with MaClient(backend="inline", history=tmp_path / "h.sqlite3") as client:
        wf = client.create_workflow("now")
        wf.add_task(inc, inputs={"x": 1})
        run_ids = [wf.run() for _ in range(3)]
        for r in run_ids:
            wf.wait(r)
        assert [r["run_id"] for r in client.runs()] == run_ids[::-1]
        assert client.get_results(run_ids[0]) == list(wf.get_results(run_ids[0]))
        assert client.delete_runs(keep_last=1) == 2
        assert [r["run_id"] for r in client.runs()] == [run_ids[-1]]
        with pytest.raises(UnknownRunError, match="no run 'run-gone'"):
            client.get_results("run-gone")


def test_history_can_be_off():
    with MaClient(backend="inline", history=None) as client:
        assert client.history_path is None
        with pytest.raises(UnknownRunError, match="keeps no run history"):
            client.runs()


WRITER = textwrap.dedent('''
    import sys
    from maze import MaClient, task

    @task(inputs=["x"], outputs=["y"])
    def inc(params):
        return {"y": params["x"] + 1}

    with MaClient(history=sys.argv[1]) as client:
        wf = client.create_workflow(sys.argv[2])
        a = wf.add_task(inc, inputs={"x": 1})
        for _ in range(5):
            a = wf.add_task(inc, inputs={"x": a.outputs["y"]})
        runs = [wf.run() for _ in range(15)]
        assert all(wf.wait(r)["workflow_completed"] for r in runs)
''')


OPEN_AT = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from maze.core.history_store import connect

    at = float(sys.argv[1])
    for i, name in enumerate(sys.argv[2:]):
        while time.time() < at + 0.05 * i:  # each file opened by all at the same moment
            pass
        connect(Path(name)).close()
''')


def test_processes_opening_a_new_history_at_once_all_open_it(tmp_path):
    # SQLite refuses the switch to WAL at once, without its busy timeout, while another
    # process opens the same new file: clients started together must still all open it.
    script = tmp_path / "opener.py"
    script.write_text(OPEN_AT)
    names = [str(tmp_path / f"h{i}.sqlite3") for i in range(40)]
    at = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, str(script), str(at), *names], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    for name in names:
        db = sqlite3.connect(name)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "shared.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), name], stderr=subprocess.PIPE, text=True)
             for name in ("left", "right")]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT workflow_name, status, COUNT(*) FROM runs GROUP BY workflow_name, status").fetchall()
    assert sorted(rows) == [("left", "completed", 15), ("right", "completed", 15)]
    # 6 tasks: 6 start + 6 finish + 1 end per run
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (30 * 13,)
