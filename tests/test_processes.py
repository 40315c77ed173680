"""Worker processes: reused, gone after close() and at exit; scripts need no main guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from tasks_misc import sleeper

from maze import MaClient


def children() -> set[int]:
    """This process's descendants, less a Ray cluster's: the session's Ray starts workers of its own."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:   # the program and its first argument: maze's own processes carry sys.path further on
            line, name = " ".join(p.cmdline()[:2]), p.name()
        except psutil.Error:   # gone meanwhile
            continue
        if not ("/ray/" in line or "ray::" in line or name.startswith(("ray", "gcs_server"))):
            found.add(p.pid)
    return found


def test_workers_are_reused_and_gone_after_close():
    before = children()
    client = MaClient()
    wf = client.create_workflow()
    wf.add_task(sleeper, inputs={"seconds": 0})
    pids = {wf.wait(wf.run())["task_results"]["sleeper"]["pid"] for _ in range(5)}
    workers = children() - before
    assert pids <= workers and len(workers) <= client.backend.max_workers
    client.close()
    deadline = time.time() + 5
    while children() - before and time.time() < deadline:
        time.sleep(0.05)
    assert children() - before == set()


SCRIPT = textwrap.dedent('''
    import os
    from maze import MaClient, task

    @task(inputs=["x"], outputs=["y"])
    def double(params):
        print("doubling", params["x"])
        return {"y": params["x"] * 2, "pid": os.getpid()}

    client = MaClient()
    workflow = client.create_workflow()
    t = workflow.add_task(double, inputs={"x": 21})
    summary = workflow.show_results(workflow.run())
    print("RESULT", summary["task_results"][t.task_id]["y"], "WORKER", summary["task_results"][t.task_id]["pid"], "DRIVER", os.getpid())
''')


def test_a_script_without_main_guard_runs_and_leaves_no_worker(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[double] doubling 21" in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert line.split()[1] == "42"
    worker, driver = int(line.split()[3]), int(line.split()[5])
    assert worker != driver
    time.sleep(0.2)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


INTERRUPT = textwrap.dedent('''
    import os, signal, sys, threading, time
    from maze import MaClient, task

    @task(inputs=["pidfile"], outputs=["never"])
    def forever(params):
        with open(params["pidfile"], "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(60)
        return {"never": 1}

    client = MaClient(backend=sys.argv[1], history=None)
    wf = client.create_workflow()
    wf.add_task(forever, inputs={"pidfile": "worker.pid"})
    run_id = wf.run()
    while not (os.path.exists("worker.pid") and open("worker.pid").read()):
        time.sleep(0.05)
    print("WORKER", open("worker.pid").read(), flush=True)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        wf.wait(run_id)
    except KeyboardInterrupt:
        print("STATUS", wf.wait(run_id)["status"], flush=True)
    client.close()
''')


@pytest.mark.parametrize("backend", ["joblib", "ray"])
def test_ctrl_c_while_waiting_cancels_the_run(tmp_path, backend):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    proc = subprocess.run([sys.executable, str(script), backend], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0] in {"WORKER", "STATUS"})
    assert lines["STATUS"] == "cancelled"
    worker = int(lines["WORKER"])
    deadline = time.time() + 10
    while psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


def test_a_forked_child_that_exits_leaves_the_parent_s_client_alone(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time
        from maze import MaClient, task

        @task(inputs=["seconds"], outputs=["y"])
        def nap(p):
            time.sleep(p["seconds"])
            return {{"y": 1}}

        @task(inputs=["n"], outputs=["array"])
        def big(p):
            import numpy as np
            return {{"array": np.ones(p["n"])}}   # large: it waits in shared memory for its reader

        @task(inputs=["array", "after"], outputs=["total"])
        def total(p):
            return {{"total": float(p["array"].sum())}}

        client = MaClient(history={str(tmp_path / "h.sqlite3")!r})
        wf = client.create_workflow()
        gate = wf.add_task(nap, inputs={{"seconds": 1.0}})
        made = wf.add_task(big, inputs={{"n": 2_000_000}})
        summed = wf.add_task(total, inputs={{"array": made.outputs["array"], "after": gate.outputs["y"]}})
        run_id = wf.run()
        time.sleep(0.3)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)            # a child that exits normally: its exit hooks run
        started = time.monotonic()
        os.waitpid(pid, 0)
        print("child", round(time.monotonic() - started, 1))
        summary = wf.wait(run_id)
        print("run", summary["status"])
        print("total", summary["task_results"].get(summed.task_id, {{}}).get("total"))
        print("next", wf.wait(wf.run())["status"])
        client.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split() for line in out.stdout.splitlines())
    assert lines["run"] == "completed" and lines["next"] == "completed"   # the parent's workers were not stopped
    assert lines["total"] == "2000000.0"   # nor its values' shared-memory files removed, which a later task reads
    assert float(lines["child"]) < 5                                       # and the child did not wait on them


def test_a_worker_whose_maze_differs_from_its_driver_s_exits_and_its_task_says_why(monkeypatch):
    """maze upgraded or edited on disk while a kernel runs: a new worker would read frames by other rules."""
    from tasks_misc import inc

    import maze.backends._local_records as records
    monkeypatch.setattr(records, "WIRE", "0123456789abcdef")   # as if the driver had imported another maze
    with MaClient(history=None) as client:
        wf = client.create_workflow()
        t = wf.add_task(inc, inputs={"x": 1})
        run_id = wf.run()
        summary = wf.wait(run_id, timeout=60)
        assert summary["exception_tasks"] == [t.task_id]
        error = wf.get_task_result(run_id, t.task_id)["error"]
        assert "exit code 86" in error and "restart this Python process" in error
