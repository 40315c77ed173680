"""A failing task never loses finished results: skips, fail-fast, retries, timeouts, cancel."""

from __future__ import annotations

import os
import time

import pytest
from tasks_misc import boom, inc, missing_output, not_a_dict, sleeper

from maze import task


def types(workflow, run_id):
    return [(m["type"], m["data"].get("task_id")) for m in workflow.get_results(run_id)]


def test_raising_task_skips_dependents_and_spares_other_branches(client):
    wf = client.create_workflow()
    ok = wf.add_task(inc, inputs={"x": 1})
    bad = wf.add_task(boom, inputs={"x": 7})
    child = wf.add_task(inc, inputs={"x": bad.outputs["y"]})
    grandchild = wf.add_task(inc, inputs={"x": child.outputs["y"]})
    after_ok = wf.add_task(inc, inputs={"x": ok.outputs["y"]})
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert summary["status"] == "failed" and summary["workflow_completed"] is False
    assert summary["has_exception"] is True
    assert summary["exception_tasks"] == [bad.task_id]
    assert summary["skipped_tasks"] == [child.task_id, grandchild.task_id]
    assert summary["task_results"] == {ok.task_id: {"y": 2}, after_ok.task_id: {"y": 3}}

    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["error_type"] == "ValueError" and failure["error"] == "bad value 7"
    assert "Traceback" in failure["result"] and "raise ValueError" in failure["result"]
    assert failure["attempt"] == 1
    skipped = [m["data"] for m in wf.get_results(run_id) if m["type"] == "task_skipped"]
    assert [(d["task_id"], d["upstream"]) for d in skipped] == [(child.task_id, "boom"), (grandchild.task_id, "boom")]
    assert skipped[0]["reason"] == "upstream task 'boom' failed"
    end = wf.get_results(run_id)[-1]["data"]
    assert end["status"] == "failed" and end["has_exception"] is True

    assert wf.get_task_result(run_id, bad.task_id) == {
        "task_id": "boom", "result": None, "status": "exception", "error": "ValueError: bad value 7",
    }
    assert wf.get_task_result(run_id, child.task_id)["status"] == "skipped"


def test_non_dict_result_fails_with_a_clear_message(client):
    wf = client.create_workflow()
    t = wf.add_task(not_a_dict, inputs={"x": 3})
    run_id = wf.run()
    wf.wait(run_id)
    err = wf.get_task_result(run_id, t.task_id)
    assert err["status"] == "exception"
    assert err["error"] == "TaskOutputError: task 'not_a_dict' returned list [3]; expected a dict with the keys ['y']"


def test_missing_output_names_the_keys(client):
    wf = client.create_workflow()
    t = wf.add_task(missing_output, inputs={"x": 3})
    run_id = wf.run()
    wf.wait(run_id)
    assert wf.get_task_result(run_id, t.task_id)["error"] == (
        "TaskOutputError: task 'missing_output' did not return its declared output(s) ['z']; it returned the keys ['y']"
    )


def test_fail_fast_cancels_the_rest(stopping_client):
    wf = stopping_client.create_workflow()
    slow = wf.add_task(sleeper, inputs={"seconds": 30})
    wf.add_task(boom, inputs={"x": 1})
    later = wf.add_task(inc, inputs={"x": slow.outputs["pid"]})
    started = time.perf_counter()
    run_id = wf.run(fail_fast=True)
    summary = wf.wait(run_id)
    assert time.perf_counter() - started < 20   # the sleeper was stopped, not waited for
    assert summary["status"] == "failed"
    assert summary["exception_tasks"] == ["boom"]
    assert sorted(summary["cancelled_tasks"]) == sorted([slow.task_id, later.task_id])
    assert wf.get_task_result(run_id, slow.task_id)["status"] == "cancelled"


_FLAKY_DIR = os.environ.get("TMPDIR", "/tmp")


@task(inputs=["marker"], outputs=["attempts"], retries=2, retry_delay=0.05)
def flaky(params):
    path = params["marker"]
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as fh:
        fh.write(str(count))
    if count < 3:
        raise ConnectionError(f"attempt {count} failed")
    return {"attempts": count}


def test_retries_recover_a_flaky_task(client, tmp_path):
    wf = client.create_workflow()
    t = wf.add_task(flaky, inputs={"marker": str(tmp_path / "count")})
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert summary["task_results"] == {t.task_id: {"attempts": 3}}
    retries = [m["data"] for m in wf.get_results(run_id) if m["type"] == "task_retry"]
    assert [(r["attempt"], r["error"], r["delay"]) for r in retries] == [
        (1, "ConnectionError: attempt 1 failed", 0.05), (2, "ConnectionError: attempt 2 failed", 0.05),
    ]


def test_retries_exhausted_report_the_attempt(client, tmp_path):
    wf = client.create_workflow()
    wf.add_task(flaky, inputs={"marker": str(tmp_path / "count")}, retries=1)
    run_id = wf.run()
    wf.wait(run_id)
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["attempt"] == 2 and failure["error"] == "attempt 2 failed"


def test_timeout_stops_the_task_and_the_run_goes_on(stopping_client):
    wf = stopping_client.create_workflow()
    slow = wf.add_task(sleeper, inputs={"seconds": 30}, timeout=0.5)
    fine = wf.add_task(inc, inputs={"x": 1})
    started = time.perf_counter()
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert time.perf_counter() - started < 20   # stopped, not left to sleep its 30 s (a busy machine starts slowly)
    assert summary["exception_tasks"] == [slow.task_id]
    assert summary["task_results"] == {fine.task_id: {"y": 2}}
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["error_type"] == "TimeoutError"
    assert failure["error"] == "task 'sleeper' ran longer than its timeout of 0.5 s and was stopped"


@task(inputs=[], outputs=["never"])
def dies(params):
    os._exit(3)


def test_a_dead_worker_fails_only_its_task(stopping_client):
    wf = stopping_client.create_workflow()
    d = wf.add_task(dies)
    ok = wf.add_task(sleeper, inputs={"seconds": 0.2})
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert summary["exception_tasks"] == [d.task_id]
    assert ok.task_id in summary["task_results"]
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["error_type"] == "WorkerDiedError"
    if stopping_client.backend.name == "joblib":
        assert "exit code 3" in failure["error"]
    # the pool recovers: the next run works
    assert wf.wait(wf.run())["task_results"][ok.task_id]["end"] > 0


@task(inputs=["path", "seconds"], outputs=["done"])
def sleep_then_touch(params):
    time.sleep(params["seconds"])
    open(params["path"], "w").close()
    return {"done": True}


def test_cancel_stops_running_and_pending_tasks(stopping_client, tmp_path):
    wf = stopping_client.create_workflow()
    marker = tmp_path / "still-running"
    a = wf.add_task(sleep_then_touch, inputs={"path": str(marker), "seconds": 8})
    b = wf.add_task(inc, inputs={"x": a.outputs["done"]})
    run_id = wf.run()
    first = next(iter(wf.get_results(run_id)))
    assert first["type"] == "start_task"
    started = time.perf_counter()
    wf.cancel(run_id)
    summary = wf.wait(run_id)
    assert time.perf_counter() - started < 7   # before the task would have ended by itself
    assert summary["status"] == "cancelled"
    assert sorted(summary["cancelled_tasks"]) == sorted([a.task_id, b.task_id])
    assert wf.get_results(run_id)[-1]["data"]["status"] == "cancelled"
    time.sleep(max(0.0, started + 8.5 - time.perf_counter()))
    assert not marker.exists()            # the task was stopped, not left running
    worker = first["data"]["worker"]
    if isinstance(worker, int):           # a local worker process: gone
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)


@task(inputs=["pidfile", "seconds"], outputs=["done"])
def report_pid_and_sleep(params):
    with open(params["pidfile"], "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(params["seconds"])
    return {"done": True}


def test_a_worker_killed_from_outside_fails_only_its_task(stopping_client, tmp_path):
    import signal

    wf = stopping_client.create_workflow()
    pidfile = tmp_path / "pid"
    victim = wf.add_task(report_pid_and_sleep, inputs={"pidfile": str(pidfile), "seconds": 30})
    after = wf.add_task(inc, inputs={"x": victim.outputs["done"]})
    others = [wf.add_task(sleeper, inputs={"seconds": 0.5}) for _ in range(2)]
    run_id = wf.run()
    deadline = time.time() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    summary = wf.wait(run_id)
    assert summary["exception_tasks"] == [victim.task_id]
    assert summary["skipped_tasks"] == [after.task_id]
    assert all(t.task_id in summary["task_results"] for t in others)
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["error_type"] == "WorkerDiedError"
    if stopping_client.backend.name == "joblib":
        assert "SIGKILL" in failure["error"]


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


@task(inputs=["value"], outputs=["y"])
def takes(params):
    return {"y": 1}


@task(inputs=[], outputs=["y"])
def gives_unpicklable(params):
    return {"y": Unpicklable()}


def test_unpicklable_input_and_result_fail_clearly(stopping_client):
    wf = stopping_client.create_workflow()
    bad_in = wf.add_task(takes, inputs={"value": Unpicklable()})
    bad_out = wf.add_task(gives_unpicklable)
    fine = wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert sorted(summary["exception_tasks"]) == sorted([bad_in.task_id, bad_out.task_id])
    assert summary["task_results"] == {fine.task_id: {"y": 2}}
    errors = {m["data"]["task_id"]: m["data"]["error"] for m in wf.get_results(run_id) if m["type"] == "task_exception"}
    # names the input and the task, on every backend
    assert "refuses to be pickled" in errors[bad_in.task_id] and f"the input 'value' of task {bad_in.task_id!r}" in errors[bad_in.task_id]
    assert "refuses to be pickled" in errors[bad_out.task_id] or "gives_unpicklable" in errors[bad_out.task_id]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be shown")


class PicklingRaisesUnprintable:
    def __reduce__(self):
        raise Unprintable()


def test_an_input_whose_pickling_raises_an_unprintable_exception_fails_its_task_only(stopping_client):
    wf = stopping_client.create_workflow()
    bad = wf.add_task(takes, inputs={"value": PicklingRaisesUnprintable()})
    fine = wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    summary = wf.wait(run_id, timeout=60)
    assert summary["exception_tasks"] == [bad.task_id]
    assert summary["task_results"] == {fine.task_id: {"y": 2}}
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["error_type"] == "Unprintable" and "the input 'value' of task" in failure["error"]


def test_an_input_the_worker_cannot_unpickle_fails_its_task_clearly(stopping_client):
    from tasks_misc import OnlyInDriver

    wf = stopping_client.create_workflow()
    bad = wf.add_task(takes, inputs={"value": OnlyInDriver(os.getpid())})
    fine = wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    summary = wf.wait(run_id, timeout=60)
    assert summary["exception_tasks"] == [bad.task_id]
    assert summary["task_results"] == {fine.task_id: {"y": 2}}
    error = wf.get_task_result(run_id, bad.task_id)["error"]
    assert "cannot be rebuilt outside the driver" in error and repr(bad.task_id) in error
    if stopping_client.backend.name == "ray":   # unpickled input by input there (the local worker loads them all at once)
        assert "the input 'value'" in error


def test_an_unpicklable_task_function_fails_clearly(stopping_client):
    import threading

    lock = threading.Lock()

    def holds_a_lock(params):
        with lock:
            return {"y": 1}

    wf = stopping_client.create_workflow()
    bad = wf.add_task(task(inputs=[], outputs=["y"])(holds_a_lock))
    fine = wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert summary["exception_tasks"] == [bad.task_id]
    assert summary["task_results"] == {fine.task_id: {"y": 2}}
    error = next(m["data"]["error"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert "holds_a_lock" in error and "lock" in error


def test_after_all_these_faults_no_worker_is_left_busy(local_client):
    """Runs last in this module: every worker process the faults touched is idle again."""
    import psutil

    wf = local_client.create_workflow()
    wf.add_task(inc, inputs={"x": 1})
    assert wf.wait(wf.run())["workflow_completed"]          # the pool still works
    workers = [p for p in psutil.Process().children(recursive=True)
               if "maze.backends._worker" in " ".join(p.cmdline())]
    assert workers
    # A worker still starting (the pool refills itself) is busy for a moment: look for up to 10 s
    # for one second in which all are idle. A worker left running a task is busy in every one.
    for _ in range(10):
        for p in workers:
            p.cpu_percent(None)
        time.sleep(1.0)
        busy = {p.pid: p.cpu_percent(None) for p in workers if p.is_running()}
        if all(load < 20 for load in busy.values()):
            break
    assert all(load < 20 for load in busy.values()), busy
