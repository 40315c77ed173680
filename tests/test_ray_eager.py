"""Submitting ahead on Ray: dependents go to Ray before their upstream tasks finish, and nothing else changes.

Some tests look at the backend's calls in flight (``backend._jobs``) to see
that a dependent really was handed to Ray while its upstream task still ran.
"""

from __future__ import annotations

import time
from pathlib import Path

from maze import task


@task(inputs=["seconds"], outputs=["x"])
def slow(params):
    time.sleep(params["seconds"])
    return {"x": 1}


@task(inputs=["seconds"], outputs=["x"])
def slow_boom(params):
    time.sleep(params["seconds"])
    raise ValueError("upstream broke")


@task(inputs=["x"], outputs=["x"])
def passthrough(params):
    return {"x": params["x"]}


@task(inputs=["x", "marker"], outputs=["y"])
def mark(params):
    Path(params["marker"]).write_text("ran")
    return {"y": params["x"]}


@task(inputs=["marker"], outputs=["y"])
def mark_after(params):
    Path(params["marker"]).write_text("ran")
    return {"y": 0}


@task(inputs=["counter"], outputs=["attempt"])
def flaky(params):
    counter = Path(params["counter"])
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    time.sleep(0.5)
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": attempt}


@task(inputs=["attempt"], outputs=["seen"])
def read_attempt(params):
    return {"seen": params["attempt"]}


def in_flight(client) -> set[str]:
    with client.backend._lock:
        return {job.call.task_id for job in client.backend._jobs.values()}


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def order_ok(messages: list[dict], plan) -> bool:
    """Every start_task comes after the finish_task of each upstream task."""
    finished: set[str] = set()
    for m in messages:
        tid = m["data"].get("task_id")
        if m["type"] == "start_task" and not set(plan.tasks[tid].upstream) <= finished:
            return False
        if m["type"] == "finish_task":
            finished.add(tid)
    return True


def test_a_chain_goes_to_ray_at_once_and_reads_in_order(ray_client):
    wf = ray_client.create_workflow()
    prev = first = wf.add_task(slow, inputs={"seconds": 3.0})
    for _ in range(20):
        prev = wf.add_task(passthrough, inputs={"x": prev.outputs["x"]})
    run_id = wf.run()
    wait_for(lambda: prev.task_id in in_flight(ray_client))  # the last one, while the first still sleeps
    states = wf.run_state(run_id).states
    assert states[first.task_id].value in ("submitted", "running") and states[prev.task_id].value == "pending"
    summary = wf.wait(run_id, timeout=60)
    assert summary["workflow_completed"] and summary["task_results"][prev.task_id] == {"x": 1}
    messages = list(wf.get_results(run_id))
    assert order_ok(messages, wf.plan())
    assert [m["type"] for m in messages].count("start_task") == 21


def test_dependents_of_a_failed_task_are_skipped_without_running(ray_client, tmp_path):
    wf = ray_client.create_workflow()
    up = wf.add_task(slow_boom, inputs={"seconds": 1.0})
    fed = wf.add_task(mark, inputs={"x": up.outputs["x"], "marker": str(tmp_path / "fed")})
    after = wf.add_task(mark_after, inputs={"marker": str(tmp_path / "after")})
    wf.add_edge(up, after)                                       # ordering only: no data from it
    below = wf.add_task(passthrough, inputs={"x": fed.outputs["y"]})
    run_id = wf.run()
    wait_for(lambda: {fed.task_id, after.task_id, below.task_id} <= in_flight(ray_client))
    summary = wf.wait(run_id, timeout=60)
    messages = list(wf.get_results(run_id))
    assert [(m["type"], m["data"]["task_id"]) for m in messages if m["type"] in ("task_exception", "start_task")] == \
        [("start_task", up.task_id), ("task_exception", up.task_id)]
    skipped = {m["data"]["task_id"]: m["data"] for m in messages if m["type"] == "task_skipped"}
    assert set(skipped) == {fed.task_id, after.task_id, below.task_id}
    assert all(d["reason"] == f"upstream task {up.task_id!r} failed" for d in skipped.values())
    assert summary["exception_tasks"] == [up.task_id]
    wait_for(lambda: not in_flight(ray_client))
    assert not (tmp_path / "fed").exists() and not (tmp_path / "after").exists()   # no body ran


def test_cancel_stops_the_tasks_waiting_in_ray(ray_client, tmp_path):
    wf = ray_client.create_workflow()
    up = wf.add_task(slow, inputs={"seconds": 30})
    down = wf.add_task(mark, inputs={"x": up.outputs["x"], "marker": str(tmp_path / "down")})
    run_id = wf.run()
    wait_for(lambda: down.task_id in in_flight(ray_client))
    wait_for(lambda: any(m["type"] == "start_task" for m in wf.get_results(run_id)))
    wf.cancel(run_id)
    summary = wf.wait(run_id, timeout=60)
    assert summary["status"] == "cancelled"
    assert summary["cancelled_tasks"] == [up.task_id, down.task_id]
    skipped = [m["data"] for m in wf.get_results(run_id) if m["type"] == "task_skipped"]
    assert [(d["task_id"], d["cancelled"]) for d in skipped] == [(down.task_id, True)]
    wait_for(lambda: not in_flight(ray_client))   # both stopped in Ray, not left to run
    assert not (tmp_path / "down").exists()


def test_a_task_that_may_retry_holds_its_dependents_until_it_finishes(ray_client, tmp_path):
    wf = ray_client.create_workflow()
    up = wf.add_task(flaky, inputs={"counter": str(tmp_path / "counter")}, retries=1)
    down = wf.add_task(read_attempt, inputs={"attempt": up.outputs["attempt"]})
    run_id = wf.run()
    wait_for(lambda: up.task_id in in_flight(ray_client))
    assert down.task_id not in in_flight(ray_client)   # not bound to the outputs of an attempt that may fail
    summary = wf.wait(run_id, timeout=60)
    assert summary["task_results"][down.task_id] == {"seen": 2}
    types = [(m["type"], m["data"].get("task_id")) for m in wf.get_results(run_id)]
    assert types.index(("task_retry", up.task_id)) < types.index(("finish_task", up.task_id)) \
        < types.index(("start_task", down.task_id))


def test_eager_false_waits_for_upstream_tasks_to_finish(tmp_path):
    from maze import MaClient

    with MaClient(backend="ray", eager=False, resources={"cpu": 2}, history=None) as client:
        wf = client.create_workflow()
        up = wf.add_task(slow, inputs={"seconds": 1.0})
        down = wf.add_task(passthrough, inputs={"x": up.outputs["x"]})
        run_id = wf.run()
        wait_for(lambda: up.task_id in in_flight(client))
        assert down.task_id not in in_flight(client)
        assert wf.wait(run_id, timeout=60)["task_results"][down.task_id] == {"x": 1}


@task(inputs=["n"], outputs=["x"])
def noisy(params):
    for i in range(params["n"]):   # its report is slow to reach the driver: dependents start first
        print("line", i)
    return {"x": 1}


@task(inputs=["x", "marker"], outputs=["y"])
def mark_and_wait(params):
    Path(params["marker"]).write_text("ran")
    time.sleep(5)
    return {"y": params["x"]}


def test_a_task_that_ran_ahead_is_stopped_not_skipped_when_the_run_is_cancelled(ray_client, tmp_path):
    wf = ray_client.create_workflow()
    a = wf.add_task(noisy, inputs={"n": 300_000})
    b = wf.add_task(mark_and_wait, inputs={"x": a.outputs["x"], "marker": str(tmp_path / "b")})
    run_id = wf.run()
    deadline = time.monotonic() + 60
    while not (tmp_path / "b").exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert (tmp_path / "b").exists()          # b's body runs in Ray...
    wf.cancel(run_id)                          # ...maybe before the driver heard of a's end
    assert wf.wait(run_id, timeout=60)["status"] == "cancelled"
    kinds = [m["type"] for m in wf.get_results(run_id) if m["data"].get("task_id") == b.task_id]
    assert kinds == ["start_task", "task_exception"]   # as on every backend: it ran, so it was stopped


CANCEL_MANY = """
import os, random, sys, tempfile, time
from maze import MaClient, task

@task(inputs=["mode", "marker", "up"], outputs=["y"], retries=1)
def step(params):
    if params["mode"] == "slow":
        time.sleep(0.3)
    if params["mode"] == "raise":
        raise RuntimeError("this task always fails")
    if params["mode"] == "flaky" and not os.path.exists(params["marker"]):
        open(params["marker"], "w").close()
        raise RuntimeError("the first attempt fails")
    return {"y": 1}

with MaClient(backend="ray", resources={"cpu": 2}) as client:
    for round_ in range(int(sys.argv[1])):
        rng, markers = random.Random(3), tempfile.mkdtemp()
        wf = client.create_workflow("cancel-many")
        made = []
        for i in range(14):
            mode = rng.choice(["ok", "ok", "ok", "slow", "raise", "flaky"])
            up = made[rng.randrange(len(made))].outputs["y"] if made and rng.random() < 0.7 else 0
            made.append(wf.add_task(step, inputs={"mode": mode, "marker": f"{markers}/{i}", "up": up}))
        run_id = wf.run()
        for m in wf.get_results(run_id):
            if m["type"] == "start_task":
                wf.cancel(run_id)
                break
        print(round_, wf.wait(run_id)["status"], flush=True)
        again = wf.wait(wf.run(resume_from=run_id))
        print(round_, again["status"], flush=True)
"""


def test_cancelling_runs_with_dependents_waiting_in_ray_never_breaks_the_driver(tmp_path):
    # Ray's core worker fails an internal check (and ends the driver) when a call is cancelled
    # while it resolves its arguments; dependents submitted ahead are cancelled only after.
    import os
    import subprocess
    import sys

    script = tmp_path / "cancel_many.py"
    script.write_text(CANCEL_MANY)
    env = dict(os.environ, MAZE_HISTORY=str(tmp_path / "history.sqlite3"))
    done = subprocess.run([sys.executable, str(script), "12"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.split() == [w for i in range(12) for w in (str(i), "cancelled", str(i), "failed")], done.stdout


class OnlyWorkersRead:
    """An output that unpickles in Ray's workers and not in the driver (whose pid it carries)."""

    def __init__(self, driver: int) -> None:
        self.driver = driver

    def __reduce__(self):
        return (_read_unless_driver, (self.driver,))


def _read_unless_driver(driver: int) -> OnlyWorkersRead:
    import os

    if os.getpid() == driver:
        raise RuntimeError("cannot be read in the driver")
    return OnlyWorkersRead(driver)


@task(inputs=["driver"], outputs=["y"])
def unreadable_here(params):
    return {"y": OnlyWorkersRead(params["driver"])}


@task(inputs=["x", "marks"], outputs=["z"])
def slow_mark(params):
    import os as _os
    import time as _time

    _time.sleep(3)
    open(_os.path.join(params["marks"], "end"), "w").close()
    return {"z": 1}


def test_a_dependent_of_a_task_only_the_driver_failed_to_read_is_stopped(ray_client, tmp_path):
    # Its input is a real value in Ray, so it would run: it must be cancelled, not left to end.
    import os

    wf = ray_client.create_workflow()
    up = wf.add_task(unreadable_here, inputs={"driver": os.getpid()})
    wf.add_task(slow_mark, inputs={"x": up.outputs["y"], "marks": str(tmp_path)})
    summary = wf.wait(wf.run(), timeout=60)
    assert summary["exception_tasks"] == [up.task_id]
    time.sleep(3.5)
    assert not (tmp_path / "end").exists(), "the dependent ran to its end"
