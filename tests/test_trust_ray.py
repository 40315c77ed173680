"""What the Ray backend must get right to be trusted: fresh code, plain results, stops that stop, no leftovers.

Each test failed on the backend before these were fixed: stale code after a
changed global, results that could not be json-dumped or pickled whole,
subprocesses that outlived a stopped task, Ray's temporary directory left
behind, and an exception that cannot print itself.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

from maze import task
from maze.backends import _ray_task as ray_task


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a script that starts a Ray of its own: private, on loopback, quiet."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", **extra)
    return env


# -- 1. fresh code on every run -------------------------------------------------------

# A task built as a notebook builds it: in a namespace named __main__, so that
# cloudpickle sends it by value, with the global it reads.
NOTEBOOK_CELL = textwrap.dedent('''
    from maze import task
    FACTOR = 1

    @task(inputs=["x"], outputs=["y"])
    def scaled(params):
        return {"y": params["x"] * FACTOR}
''')


def from_a_notebook():
    namespace = {"__name__": "__main__"}
    exec(NOTEBOOK_CELL, namespace)

    def set_factor(value):
        namespace["FACTOR"] = value

    return namespace["scaled"], set_factor


def from_a_closure():
    factor = 1

    @task(inputs=["x"], outputs=["y"])
    def scaled(params):
        return {"y": params["x"] * factor}

    def set_factor(value):
        nonlocal factor
        factor = value

    return scaled, set_factor


@pytest.mark.parametrize("make", [from_a_notebook, from_a_closure], ids=["global", "closure"])
def test_a_changed_global_or_closure_is_seen_by_the_next_run(ray_client, make):
    scaled, set_factor = make()
    wf = ray_client.create_workflow()
    t = wf.add_task(scaled, inputs={"x": 2})

    def y(workflow):
        summary = workflow.wait(workflow.run(), timeout=60)
        return summary["task_results"][t.task_id]["y"]

    assert y(wf) == 2
    set_factor(10)
    assert y(wf) == 20                      # the same workflow, run again
    other = ray_client.create_workflow()
    t = other.add_task(scaled, inputs={"x": 2})
    assert y(other) == 20                   # a new workflow with the same function
    set_factor(100)
    assert y(other) == 200


# -- 2. plain results -----------------------------------------------------------------


@task(inputs=["x"], outputs=["text", "number", "small", "large"])
def mixed(params):
    # "large" pickles to more than the report carries inline, so the driver fetches it.
    return {"text": "hello", "number": params["x"], "small": [1, 2, 3], "large": list(range(30_000))}


def test_a_summary_is_plain_json(ray_client):
    wf = ray_client.create_workflow()
    t = wf.add_task(mixed, inputs={"x": 7})
    run_id = wf.run()
    summary = wf.wait(run_id, timeout=60)
    expected = {"text": "hello", "number": 7, "small": [1, 2, 3], "large": list(range(30_000))}
    assert json.loads(json.dumps(summary))["task_results"][t.task_id] == expected
    finish = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "finish_task")
    for result in (summary["task_results"][t.task_id], wf.get_task_result(run_id, t.task_id)["result"], finish["result"]):
        assert type(result) is dict
        assert result == expected


@task(inputs=["mb"], outputs=["array"])
def array_of(params):
    return {"array": np.arange(params["mb"] * 2**20 // 8, dtype=np.float64)}


def test_a_summary_with_an_array_pickles_whole(ray_client):
    wf = ray_client.create_workflow()
    t = wf.add_task(array_of, inputs={"mb": 10})
    summary = wf.wait(wf.run(), timeout=60)
    assert type(summary["task_results"][t.task_id]) is dict
    copy = pickle.loads(pickle.dumps(summary))
    assert np.array_equal(copy["task_results"][t.task_id]["array"], np.arange(10 * 2**20 // 8, dtype=np.float64))


# -- 3. stopping a task stops what it started -----------------------------------------

# Run with a Ray of its own that leaves a killed worker's process group alone, as
# Ray did before RAY_process_group_cleanup_enabled (on by default in recent Ray).
# There, ray.cancel(force=True) ends the worker and its direct children only.
STOPS = textwrap.dedent('''
    import subprocess, sys, time
    from pathlib import Path
    import psutil
    from maze import MaClient, task

    @task(inputs=["pidfile"], outputs=["never"])
    def spawns_and_sleeps(params):
        # A shell that starts a sleep: a child and a grandchild, as a script or a pool would.
        subprocess.Popen(["sh", "-c", 'sleep 300 & echo $$ $! > "$0"; wait', params["pidfile"]])
        time.sleep(300)
        return {"never": None}

    def started_by(pidfile):
        while not (pidfile.exists() and pidfile.read_text().endswith("\\n")):
            time.sleep(0.1)
        return [int(p) for p in pidfile.read_text().split()]

    def running(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    with MaClient(backend="ray", resources={"cpu": 2}) as client:
        for how in ("timeout", "cancel"):
            pidfile = Path(sys.argv[1]) / how
            wf = client.create_workflow()
            wf.add_task(spawns_and_sleeps, inputs={"pidfile": str(pidfile)}, timeout=2 if how == "timeout" else None)
            run_id = wf.run()
            pids = started_by(pidfile)
            print("PIDS", *pids, flush=True)
            if how == "cancel":
                # Once its start is reported: the report names the process group a stop must end.
                while not any(m["type"] == "start_task" for m in list(wf.run_state(run_id).messages)):
                    time.sleep(0.05)
                wf.cancel(run_id)
            wf.wait(run_id, timeout=60)
            error_type = next(m["data"]["error_type"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
            deadline = time.monotonic() + 10
            while any(map(running, pids)) and time.monotonic() < deadline:
                time.sleep(0.1)
            print("STOPPED", how, error_type, "alive:", *filter(running, pids), flush=True)
''')


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead; this container's init may not reap it
    except psutil.NoSuchProcess:
        return True


def test_a_stopped_task_takes_its_subprocesses_with_it(tmp_path):
    env = ray_env(RAY_process_group_cleanup_enabled="0")
    proc = subprocess.run([sys.executable, "-c", STOPS, str(tmp_path)], capture_output=True, text=True,
                          timeout=240, env=env)
    pids = [int(p) for line in proc.stdout.splitlines() if line.startswith("PIDS") for p in line.split()[1:]]
    try:
        stopped = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("STOPPED")]
        # Reported as what stopped it (not as a dead worker), and nothing it started is left.
        assert stopped == [["timeout", "TimeoutError", "alive:"], ["cancel", "TaskCancelled", "alive:"]], \
            proc.stdout + proc.stderr[-3000:]
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_group_is_killed_only_once_its_leader_is_gone(monkeypatch):
    # The kill runs on the stopped worker's node; a worker still alive had finished
    # its task before the cancel and may run another, whose processes it must spare.
    monkeypatch.setattr(ray_task, "KILL_WAIT_S", 0.5)
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(leader.stdout.readline())
    try:
        ray_task.kill_group(leader.pid)
        assert not gone(leader.pid) and not gone(child)
        leader.kill()
        leader.wait()
        ray_task.kill_group(leader.pid)
        deadline = time.monotonic() + 5
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child)
    finally:
        leader.kill()
        if not gone(child):
            os.kill(child, signal.SIGKILL)


# -- 4. a private Ray leaves no temporary directory -----------------------------------

PRIVATE_RAY = textwrap.dedent('''
    import glob, os, tempfile
    from maze import MaClient, task

    @task(inputs=[], outputs=["ok"])
    def ok(params):
        return {"ok": True}

    with MaClient(backend="ray", resources={"cpu": 1}) as client:
        wf = client.create_workflow()
        t = wf.add_task(ok)
        assert wf.wait(wf.run(), timeout=120)["task_results"][t.task_id] == {"ok": True}
        print("TEMP", *glob.glob(os.path.join(tempfile.gettempdir(), "maze-ray-*")), flush=True)
''')


def test_a_private_ray_removes_its_temporary_directory():
    # In a process of its own: this one already holds the session's Ray, and
    # ray.init runs once per process. A short TMPDIR keeps Ray's socket paths short.
    tmp = tempfile.mkdtemp(prefix="mz-")
    try:
        proc = subprocess.run([sys.executable, "-c", PRIVATE_RAY], capture_output=True, text=True, timeout=240,
                              env=ray_env(TMPDIR=tmp))
        assert proc.returncode == 0, proc.stderr[-3000:]
        temp_dirs = next(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("TEMP"))
        assert len(temp_dirs) == 1, temp_dirs      # Ray's directory, while the client was open
        assert not os.path.exists(temp_dirs[0])    # and after close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- 5. an exception that cannot print itself -----------------------------------------


class Unprintable(Exception):
    """Raises from __str__, and cannot be pickled either: it must never have to travel."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be shown")


class Unsendable:
    """An input whose pickling raises an Unprintable: the call fails on its way to Ray."""

    def __reduce__(self):
        raise Unprintable()


@task(inputs=["x"], outputs=["y"])
def raises_unprintable(params):
    raise Unprintable()


@pytest.mark.parametrize("where", ["raised by the task", "raised sending its input"])
def test_an_exception_that_cannot_print_itself_is_reported(ray_client, where):
    wf = ray_client.create_workflow()
    t = wf.add_task(raises_unprintable, inputs={"x": 1 if where == "raised by the task" else Unsendable()})
    run_id = wf.run()
    summary = wf.wait(run_id, timeout=60)
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert summary["exception_tasks"] == [t.task_id]
    assert (failure["task_id"], failure["error_type"]) == (t.task_id, "Unprintable")
    assert all(type(failure[k]) is str for k in ("error", "result"))
