"""Quick tasks on the local backend: lined up behind each other, and announced only if they run a while.

The scheduler lines a quick task up behind another one holding the same
grant; the backend starts it on that worker the moment the first one's result
arrives. What must hold: it never starts before the one ahead has ended (so
admission holds), a stop before it starts keeps it from starting, and after a
failure it waits until the scheduler has heard of the failure. A worker
announces a call (its ``Started`` frame) only once it has run a while, or
prints, or has a timeout; a quick call's start comes with its end.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future

import pytest
from calls import call_taking_x

from maze import MaClient, task
from maze.backends.local import LocalBackend
from maze.core.lining import Lining
from maze.core.protocol import Failure, TaskCall, TaskOutcome, TaskStarted, WorkerEvent
from maze.core.resources import Resources
from maze.core.shipping import ship


def stamp(params):
    import os
    import time as _time

    start = _time.time()
    if params.get("say"):
        print(params["say"])
    _time.sleep(params["seconds"])
    if params["fail"]:
        raise RuntimeError("the first one fails")
    return {"pid": os.getpid(), "start": start, "end": _time.time()}


# A call with calls lined up behind it runs 1 s: the test lines them up before it ends, on a busy
# machine too.
def _call(name: str, seconds: float = 0.0, fail: bool = False, say: str = "",
          timeout: float | None = None) -> TaskCall:
    return TaskCall(
        call_id=f"run:{name}:1", run_id="run", task_id=name, task_name=name, attempt=1, func=stamp,
        code=ship(stamp), constants={"seconds": seconds, "fail": fail, "say": say}, inputs={},
        outputs=("pid", "start", "end"), resources=Resources(), timeout=timeout,
    )


class Events:
    """What a backend reported for each call, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, WorkerEvent]] = []

    def reporter(self, name: str):
        return lambda event: self.seen.append((name, event))

    def started(self, name: str) -> bool:
        return any(n == name and isinstance(e, TaskStarted) for n, e in self.seen)


@pytest.fixture(scope="module")
def backend():
    with LocalBackend(max_workers=4) as b:
        yield b


def test_a_lined_up_call_runs_on_the_same_worker_right_after(backend):
    events = Events()
    first = backend.submit(_call("a", 1.0), events.reporter("a"))
    second = backend.submit_behind(_call("b"), events.reporter("b"), behind="run:a:1")
    a, b = first.result(10).result, second.result(10).result
    assert a is not None and b is not None
    assert b["pid"] == a["pid"]                 # the worker that ran a
    assert b["start"] >= a["end"]               # never alongside it: they share one grant


def test_a_call_lined_up_behind_one_that_ended_runs_as_usual(backend):
    events = Events()
    backend.submit(_call("a2"), events.reporter("a2")).result(10)
    late = backend.submit_behind(_call("b2"), events.reporter("b2"), behind="run:a2:1")
    assert late.result(10).ok and events.started("b2")


def test_stopping_a_lined_up_call_keeps_it_from_starting(backend):
    events = Events()
    first = backend.submit(_call("a3", 1.0), events.reporter("a3"))
    second = backend.submit_behind(_call("b3"), events.reporter("b3"), behind="run:a3:1")
    backend.stop("run:b3:1")
    outcome = second.result(10)
    assert outcome.error is not None and outcome.error.kind is Failure.CANCELLED
    assert first.result(10).ok                  # the one ahead is untouched
    time.sleep(0.2)
    assert not events.started("b3")


def test_after_a_failure_the_lined_up_call_waits_for_the_scheduler(backend):
    events = Events()
    first = backend.submit(_call("a4", 1.0, fail=True), events.reporter("a4"))
    second = backend.submit_behind(_call("b4"), events.reporter("b4"), behind="run:a4:1")
    seen_when_failed: list[bool] = []

    def on_failed(done: Future[TaskOutcome]) -> None:   # what a fail-fast scheduler does
        seen_when_failed.append(events.started("b4"))
        backend.stop("run:b4:1")

    first.add_done_callback(on_failed)
    assert first.result(10).error is not None
    assert second.result(10).error.kind is Failure.CANCELLED
    assert seen_when_failed == [False]
    time.sleep(0.2)
    assert not events.started("b4")


def test_when_the_worker_ahead_is_killed_the_lined_up_call_runs_elsewhere(backend):
    events = Events()
    first = backend.submit(_call("a5", 30.0), events.reporter("a5"))
    second = backend.submit_behind(_call("b5"), events.reporter("b5"), behind="run:a5:1")
    deadline = time.monotonic() + 10
    while not events.started("a5") and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.stop("run:a5:1")                    # kills its worker's process group
    assert first.result(10).error.kind is Failure.CANCELLED
    b = second.result(10).result
    a_pid = next(e.worker for n, e in events.seen if n == "a5" and isinstance(e, TaskStarted))
    assert b is not None and b["pid"] != a_pid


def test_a_quick_call_reports_its_start_with_its_end(backend):
    events = Events()
    outcome = backend.submit(_call("q"), events.reporter("q")).result(10)
    starts = [e for _, e in events.seen if isinstance(e, TaskStarted)]
    assert len(starts) == 1 and starts[0].at == outcome.started_at   # the worker's own clock, once


def test_a_call_still_running_is_announced_while_it_runs(backend):
    events = Events()
    future = backend.submit(_call("long", 3.0), events.reporter("long"))
    deadline = time.monotonic() + 30   # from the submit: a worker may have to start first
    while not events.started("long") and not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert events.started("long") and not future.done()
    assert future.result(10).ok
    assert sum(isinstance(e, TaskStarted) for _, e in events.seen) == 1


def test_a_call_that_prints_is_announced_before_its_first_line(backend):
    events = Events()
    assert backend.submit(_call("loud", say="hello"), events.reporter("loud")).result(10).ok
    kinds = [type(e).__name__ for _, e in events.seen]
    assert kinds[:2] == ["TaskStarted", "TaskLog"], kinds


def test_the_announcer_sends_at_once_when_told_else_only_after_a_while():
    import socket
    from multiprocessing.connection import Connection

    from maze.backends._wire import FrameWriter
    from maze.backends._worker import ANNOUNCE_S, Started, _Announcer, decode

    ours, theirs = socket.socketpair()
    driver, worker = Connection(ours.detach()), Connection(theirs.detach())
    announcer = _Announcer(FrameWriter(worker.fileno()))
    at = time.time()
    announcer.begin("timed", at, now=True)               # a call with a timeout: its clock starts now
    assert driver.poll(0) and decode(driver.recv_bytes()) == Started("timed", at)   # sent before begin returned
    announcer.end([])
    began = time.time()
    announcer.begin("slow", began, now=False)
    assert driver.poll(2) and time.time() - began >= ANNOUNCE_S   # not before it has run a while
    assert decode(driver.recv_bytes()) == Started("slow", began)
    announcer.end([])
    # Over before it was due: never announced. A pause of this thread past ANNOUNCE_S between
    # begin and end rightly announces it; then the next try.
    for _ in range(50):
        at = time.time()
        announcer.begin("quick", at, now=False)
        announcer.end([b"done", b"output"])
        if time.time() - at < ANNOUNCE_S:
            break
        while driver.poll(0.2):
            driver.recv_bytes()
    else:
        pytest.fail("this thread never got from begin to end within ANNOUNCE_S")
    assert [driver.recv_bytes(), driver.recv_bytes()] == [b"done", b"output"]
    assert not driver.poll(ANNOUNCE_S * 5)


# -- through the scheduler --------------------------------------------------------------------


@task(inputs=["i"], outputs=["pid", "start", "end"])
def quick(params):
    import os
    import time as _time

    start = _time.time()
    return {"pid": os.getpid(), "start": start, "end": _time.time()}


@task(inputs=["i"], outputs=["y"])
def quick_or_fail(params):
    if params["i"] == 150:
        raise RuntimeError("one of many fails")
    return {"y": params["i"]}


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_a_fan_out_of_quick_tasks_never_runs_more_than_the_capacity_at_once():
    with MaClient(resources={"cpu": 2}, history=None) as client:
        wf = client.create_workflow("quick fan-out")
        tasks = [wf.add_task(quick, inputs={"i": i}) for i in range(400)]
        wf.wait(wf.run())                       # the scheduler learns these are quick
        summary = wf.wait(wf.run())
    results = [summary["task_results"][t.task_id] for t in tasks]
    assert summary["status"] == "completed"
    assert _most_at_once([(r["start"], r["end"]) for r in results]) <= 2
    # Lined up: each worker ran long runs of tasks one after the other.
    assert len({r["pid"] for r in results}) <= 4


def test_fail_fast_among_quick_tasks_starts_nothing_after_the_failure():
    with MaClient(resources={"cpu": 2}, history=None) as client:
        wf = client.create_workflow("quick fail-fast")
        for i in range(300):
            wf.add_task(quick_or_fail, inputs={"i": i if i != 150 else 0})
        wf.wait(wf.run())                       # all quick and well: learnt as quick
        wf2 = client.create_workflow("quick fail-fast 2")
        for i in range(300):
            wf2.add_task(quick_or_fail, inputs={"i": i})
        run_id = wf2.run(fail_fast=True)
        summary = wf2.wait(run_id)
        messages = list(wf2.get_results(run_id))
    assert summary["status"] == "failed"
    failed_at = next(i for i, m in enumerate(messages) if m["type"] == "task_exception"
                     and "one of many fails" in str(m["data"]))
    started_after = [m for m in messages[failed_at:] if m["type"] == "start_task"]
    # At most the task already running on the other worker, and what that worker had been handed.
    assert len(started_after) <= 2, started_after
    assert len(summary["task_results"]) + len(summary["cancelled_tasks"]) + 1 == 300   # none lost, none ran twice


def test_cancelling_a_run_of_quick_tasks_ends_it_promptly():
    with MaClient(resources={"cpu": 2}, history=None) as client:
        wf = client.create_workflow("quick cancel")
        for i in range(2000):
            wf.add_task(quick, inputs={"i": i})
        wf.wait(wf.run())
        run_id = wf.run()
        finished = threading.Event()

        def cancel_after_some() -> None:
            for m in wf.get_results(run_id):
                if m["type"] == "finish_task":
                    wf.cancel(run_id)
                    break
            finished.set()

        threading.Thread(target=cancel_after_some, daemon=True).start()
        summary = wf.wait(run_id, timeout=30)
        assert finished.wait(10)
    assert summary["status"] == "cancelled"
    done, stopped = summary["task_results"], summary["cancelled_tasks"] + summary["skipped_tasks"]
    assert done, "tasks finished before the cancel keep their results"
    assert len(done) + len(stopped) == 2000 and not set(done) & set(stopped)


# -- regressions: what a lined-up task must never do ------------------------------------------------


@task(inputs=["x"], outputs=["span"])
def spanned(params):
    import time as _time

    start = _time.time()
    if params["x"] == "boom":
        _time.sleep(0.3)
        raise ValueError("boom")
    if isinstance(params["x"], float):
        _time.sleep(params["x"])
    return {"span": (start, _time.time())}


def _warm(client, n: int = 12) -> None:
    wf = client.create_workflow("warm")
    for i in range(n):
        wf.add_task(spanned, inputs={"x": i})
    wf.wait(wf.run())                              # spanned is now known to be quick (its code loaded)


def test_fail_fast_in_one_run_leaves_the_tasks_of_another_lined_up_behind_it_to_run():
    with MaClient(resources={"cpu": 1}, history=None) as client:
        _warm(client)
        warm = client.create_workflow("warm quick")
        for i in range(3):
            warm.add_task(quick, inputs={"i": i})
        warm.wait(warm.run())
        a = client.create_workflow("A")
        a.add_task(spanned, inputs={"x": "boom"})
        a.add_task(quick, inputs={"i": 1})         # lined up behind the failing one
        b = client.create_workflow("B")
        for i in range(3):
            b.add_task(quick, inputs={"i": i})     # one of these lined up behind A's second task
        run_a, run_b = a.run(fail_fast=True), b.run()
        assert a.wait(run_a, timeout=20)["status"] == "failed"
        assert b.wait(run_b, timeout=20)["status"] == "completed"
        c = client.create_workflow("C")
        c.add_task(quick, inputs={"i": 0})
        assert c.wait(c.run(), timeout=20)["status"] == "completed"   # no grant was kept


def test_a_task_failing_at_submit_does_not_let_the_next_one_run_beside_the_running_one():
    with MaClient(resources={"cpu": 1}, history=None) as client:
        _warm(client)
        wf = client.create_workflow("W")
        first = wf.add_task(spanned, inputs={"x": 0.5})
        wf.add_task(spanned, inputs={"x": threading.Lock()})   # cannot be pickled: fails when submitted
        last = wf.add_task(spanned, inputs={"x": 0.5})
        summary = wf.wait(wf.run(), timeout=30)
    (a0, a1), (b0, b1) = summary["task_results"][first.task_id]["span"], summary["task_results"][last.task_id]["span"]
    assert min(a1, b1) <= max(a0, b0), "two tasks ran at once on one cpu"


class Unreadable:
    """A value that pickles in the worker and cannot be unpickled in the driver."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    import os

    if os.environ.get("MAZE_TEST_DRIVER") == str(os.getpid()):
        raise RuntimeError("cannot be read here")
    return "read"


@task(inputs=["x"], outputs=["y"])
def unreadable_or_mark(params):
    import os

    if params["x"] == "unreadable":
        return {"y": Unreadable()}
    open(os.path.join(params["x"], "ran"), "a").close()   # a body that ran leaves a mark
    return {"y": 1}


def test_a_result_the_driver_cannot_read_stops_what_is_lined_up_behind_it(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("MAZE_TEST_DRIVER", str(os.getpid()))
    (tmp_path / "warm").mkdir()
    with MaClient(resources={"cpu": 1}, history=None) as client:
        warm = client.create_workflow("warm")
        for _ in range(3):
            warm.add_task(unreadable_or_mark, inputs={"x": str(tmp_path / "warm")})
        warm.wait(warm.run())
        wf = client.create_workflow("ff")
        wf.add_task(unreadable_or_mark, inputs={"x": "unreadable"})
        for _ in range(3):
            wf.add_task(unreadable_or_mark, inputs={"x": str(tmp_path)})
        summary = wf.wait(wf.run(fail_fast=True), timeout=30)
    assert summary["status"] == "failed"
    assert not (tmp_path / "ran").exists(), "a task lined up behind the failure ran its body"


@task(inputs=["x"], outputs=["y"])
def dies_or_not(params):
    import os

    if params["x"] == "die":
        os._exit(1)
    return {"y": params["x"]}


def test_a_worker_that_dies_before_announcing_its_task_still_reports_the_start():
    with MaClient(resources={"cpu": 1}, history=None) as client:
        warm = client.create_workflow("warm")
        for i in range(3):
            warm.add_task(dies_or_not, inputs={"x": i})
        warm.wait(warm.run())                      # loaded in the worker: it dies within 10 ms
        wf = client.create_workflow("dies")
        t = wf.add_task(dies_or_not, inputs={"x": "die"})
        after = wf.add_task(dies_or_not, inputs={"x": 1})
        run_id = wf.run()
        summary = wf.wait(run_id, timeout=30)
        messages = list(wf.get_results(run_id))
    kinds = [m["type"] for m in messages if m["data"].get("task_id") == t.task_id]
    assert kinds == ["start_task", "task_exception"], kinds
    assert summary["task_results"][after.task_id] == {"y": 1}


def test_a_task_is_not_lined_up_while_resources_of_its_own_are_free():
    # spanned is known to be quick, then one call is slow: the task after it must not wait
    # behind it while the second cpu is free.
    with MaClient(resources={"cpu": 2}, history=None) as client:
        _warm(client)
        wf = client.create_workflow("slow head")
        slow = wf.add_task(spanned, inputs={"x": 1.0})
        nxt = wf.add_task(spanned, inputs={"x": 0})
        summary = wf.wait(wf.run(), timeout=30)
    (_, slow_end), (nxt_start, _) = (summary["task_results"][t.task_id]["span"] for t in (slow, nxt))
    assert nxt_start < slow_end - 0.5, "it waited behind the slow call"


# -- chains: a quick task's dependent lined up behind it, taking its outputs as they come -------------


def plus_one(params):
    import os
    import time as _time

    start = _time.time()
    if params.get("seconds"):
        _time.sleep(params["seconds"])
    if params.get("fail"):
        raise RuntimeError("this link fails")
    return {"y": params["x"] + 1, "pid": os.getpid(), "start": start, "end": _time.time()}


def _link(name: str, x: object, seconds: float = 0.0, fail: bool = False) -> TaskCall:
    return call_taking_x(plus_one, name, x, ("y", "pid", "start", "end"), seconds=seconds, fail=fail)


def test_a_call_lined_up_behind_another_takes_its_outputs_as_they_come(backend):
    events = Events()
    first = backend.submit(_link("c1", 41, seconds=0.3), events.reporter("c1"))
    upcoming = backend.upcoming_outputs("run:c1:1")
    assert upcoming is not None and set(upcoming) == {"y", "pid", "start", "end"}
    second = backend.submit_behind(_link("c2", upcoming["y"]), events.reporter("c2"), behind="run:c1:1")
    a, b = first.result(10).result, second.result(10).result
    assert a is not None and b is not None
    assert (a["y"], b["y"]) == (42, 43)
    assert b["pid"] == a["pid"] and b["start"] >= a["end"]


def test_a_call_taking_the_outputs_of_one_that_fails_never_runs(backend):
    events = Events()
    first = backend.submit(_link("c3", 1, seconds=0.2, fail=True), events.reporter("c3"))
    upcoming = backend.upcoming_outputs("run:c3:1")
    assert upcoming is not None
    second = backend.submit_behind(_link("c4", upcoming["y"]), events.reporter("c4"), behind="run:c3:1")
    assert first.result(10).error is not None
    outcome = second.result(10)          # no scheduler stops it here: the backend must not run it
    assert outcome.error is not None and outcome.error.kind is Failure.CANCELLED
    assert "ended without outputs" in outcome.error.error
    assert not events.started("c4")


def test_outputs_of_a_call_that_ended_are_filled_in_at_once(backend):
    events = Events()
    first = backend.submit(_link("c5", 10, seconds=0.1), events.reporter("c5"))
    upcoming = backend.upcoming_outputs("run:c5:1")
    assert upcoming is not None
    assert first.result(10).ok
    assert backend.upcoming_outputs("run:c5:1") is None      # ended: the scheduler passes its outputs itself
    late = backend.submit_behind(_link("c6", upcoming["y"]), events.reporter("c6"), behind="run:c5:1")
    assert late.result(10).result["y"] == 12
    again = backend.submit(_link("c7", upcoming["y"]), events.reporter("c7"))   # a retry of a dependent
    assert again.result(10).result["y"] == 12


def test_outputs_still_to_come_are_refused_outside_a_line(backend):
    from maze.core.errors import BackendError

    first = backend.submit(_link("c8", 1, seconds=0.3), Events().reporter("c8"))
    upcoming = backend.upcoming_outputs("run:c8:1")
    assert upcoming is not None
    with pytest.raises(BackendError, match=r"takes an output of call 'run:c8:1', still going"):
        backend.submit(_link("c9", upcoming["y"]), Events().reporter("c9"))
    assert first.result(10).ok


@task(inputs=["x", "mark", "fail_at", "i"], outputs=["x"])
def link(params):
    import os

    if params["mark"]:
        open(os.path.join(params["mark"], f"ran-{params['i']}"), "a").close()
    if params["i"] == params["fail_at"]:
        raise ValueError(f"link {params['i']} fails")
    return {"x": params["x"] + 1}


def _chain(client, name: str, n: int, *, mark: str = "", fail_at: int = -1):
    wf = client.create_workflow(name)
    prev = wf.add_task(link, inputs={"x": 0, "mark": mark, "fail_at": fail_at, "i": 0})
    tasks = [prev]
    for i in range(1, n):
        prev = wf.add_task(link, inputs={"x": prev.outputs["x"], "mark": mark, "fail_at": fail_at, "i": i})
        tasks.append(prev)
    return wf, tasks


class LinedUp:
    """Counts the calls the scheduler lines up behind the one whose outputs they take."""

    def __init__(self, monkeypatch) -> None:
        from maze.backends._local_records import Upcoming

        self.count = 0
        submit_behind = LocalBackend.submit_behind

        def spy(backend, call, report, behind):
            if any(isinstance(v, Upcoming) for v in call.inputs.values()):
                self.count += 1
            return submit_behind(backend, call, report, behind)

        monkeypatch.setattr(LocalBackend, "submit_behind", spy)


def test_a_chain_of_quick_tasks_runs_link_after_link_in_order(monkeypatch):
    lined = LinedUp(monkeypatch)
    with MaClient(resources={"cpu": 2}, history=None) as client:
        wf, tasks = _chain(client, "chain", 60)
        wf.wait(wf.run())                       # learnt as quick
        lined.count = 0
        run_id = wf.run()
        summary = wf.wait(run_id, timeout=30)
        messages = list(wf.get_results(run_id))
    assert summary["status"] == "completed"
    assert summary["task_results"][tasks[-1].task_id] == {"x": 60}
    assert lined.count >= 50, lined.count
    at = {(m["type"], m["data"].get("task_id")): i for i, m in enumerate(messages)}
    for up, down in zip(tasks, tasks[1:]):
        assert at[("finish_task", up.task_id)] < at[("start_task", down.task_id)], (up.task_id, down.task_id)


def test_a_failing_link_skips_the_rest_of_its_chain_and_keeps_what_finished(tmp_path, monkeypatch):
    lined = LinedUp(monkeypatch)
    with MaClient(resources={"cpu": 2}, history=None) as client:
        warm, _ = _chain(client, "warm", 20)
        warm.wait(warm.run())
        lined.count = 0
        wf, tasks = _chain(client, "chain", 40, mark=str(tmp_path), fail_at=20)
        run_id = wf.run()
        summary = wf.wait(run_id, timeout=30)
        messages = list(wf.get_results(run_id))
    assert lined.count >= 10, lined.count
    assert summary["status"] == "failed"
    assert [t.task_id for t in tasks[:20]] == list(summary["task_results"])   # nothing that finished is lost
    assert sorted(summary["skipped_tasks"]) == sorted(t.task_id for t in tasks[21:])
    exceptions = [m for m in messages if m["type"] == "task_exception"]
    assert [m["data"]["task_id"] for m in exceptions] == [tasks[20].task_id]   # skipped, not failed again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"ran-{i}" for i in range(21))


@task(inputs=["x", "mark"], outputs=["x"], retries=1, retry_delay=0.0)
def flaky_link(params):
    import os

    if not os.path.exists(params["mark"]):
        open(params["mark"], "a").close()
        raise RuntimeError("the first attempt fails")
    return {"x": params["x"] + 1}


def test_a_link_that_retries_hands_its_dependents_the_outputs_of_the_attempt_that_worked(tmp_path):
    with MaClient(resources={"cpu": 2}, history=None) as client:
        warm, _ = _chain(client, "warm", 10)
        warm.wait(warm.run())
        wf = client.create_workflow("retrying chain")
        prev = wf.add_task(link, inputs={"x": 0, "mark": "", "fail_at": -1, "i": 0})
        for i in range(1, 30):
            if i == 15:
                prev = wf.add_task(flaky_link, inputs={"x": prev.outputs["x"], "mark": str(tmp_path / "once")})
            else:
                prev = wf.add_task(link, inputs={"x": prev.outputs["x"], "mark": "", "fail_at": -1, "i": i})
        run_id = wf.run()
        summary = wf.wait(run_id, timeout=30)
        kinds = [m["type"] for m in wf.get_results(run_id)]
    assert summary["status"] == "completed"
    assert summary["task_results"][prev.task_id] == {"x": 30}
    assert kinds.count("task_retry") == 1


def test_cancelling_a_long_chain_of_quick_tasks_ends_it_promptly():
    with MaClient(resources={"cpu": 2}, history=None) as client:
        wf, tasks = _chain(client, "long chain", 3000)
        wf.wait(wf.run(), timeout=60)
        run_id = wf.run()
        for m in wf.get_results(run_id):
            if m["type"] == "finish_task" and m["data"]["task_id"] == tasks[100].task_id:
                wf.cancel(run_id)
                break
        summary = wf.wait(run_id, timeout=30)
        again = wf.wait(wf.run(), timeout=60)     # nothing was left holding a grant or a worker
    assert summary["status"] == "cancelled"
    done = summary["task_results"]
    stopped = summary["cancelled_tasks"] + summary["skipped_tasks"]
    assert 100 < len(done) < 3000 and len(done) + len(stopped) == 3000
    assert list(done) == [t.task_id for t in tasks[:len(done)]]     # a prefix of the chain, values kept
    assert again["status"] == "completed" and again["task_results"][tasks[-1].task_id] == {"x": 3000}


@task(inputs=["x"], outputs=["y"])
def next_array(params):
    return {"y": params["x"] + 1}


def test_a_chain_of_quick_array_tasks_keeps_only_the_outputs_still_needed():
    # Each link returns a 2 MiB array, which travels through a shared-memory file. A lined-up
    # link must hold its upstream's outputs only, not (through it) those of every link before.
    import os

    import numpy as np

    from maze.backends import _packing

    with MaClient(resources={"cpu": 2}, history=None) as client:
        owner = client._backend._owner

        def files() -> int:
            return sum(1 for n in os.listdir(_packing._SHM_DIR) if n.startswith(f"{_packing.FILE_PREFIX}{owner}-"))

        def chain(n: int):
            wf = client.create_workflow("arrays")
            prev = wf.add_task(next_array, inputs={"x": np.zeros(1 << 18)})
            for _ in range(n - 1):
                prev = wf.add_task(next_array, inputs={"x": prev.outputs["y"]})
            return wf, prev

        warm, _ = chain(20)
        warm.wait(warm.run(), timeout=60)
        wf, last = chain(300)
        peak, done = [0], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], files())
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run_id = wf.run()
            summary = wf.wait(run_id, timeout=120)
        finally:
            done.set()
            watcher.join()
        assert summary["status"] == "completed"
        assert float(summary["task_results"][last.task_id]["y"][0]) == 300
    assert peak[0] <= 12, f"{peak[0]} shared-memory files at once: earlier links' outputs were kept"


def stamp_again(params):   # stamp's body under another code key: a call of it is not sent ahead behind stamp's
    import os
    import time as _time

    start = _time.time()
    _time.sleep(params["seconds"])
    return {"pid": os.getpid(), "start": start, "end": _time.time()}


def test_a_worker_stopped_as_its_call_ended_is_not_handed_the_next_one(backend):
    # The stop (a timeout, a cancel) kills the worker's group; if the call's result was already on
    # its way, the call ends well, but the worker is dying and must not run the call lined up behind
    # (waiting in the driver here: of other code; for one sent ahead, see test_sent_ahead.py).
    events = Events()
    # s1 runs long enough to be announced while it runs (a worker announces a call once it has run
    # 10 ms), so that its job is still in the backend when the lock below is taken.
    first = backend.submit(_call("s1", 0.5), events.reporter("s1"))
    again = dataclasses.replace(_call("s2"), func=stamp_again, code=ship(stamp_again))
    second = backend.submit_behind(again, events.reporter("s2"), behind="run:s1:1")
    deadline = time.monotonic() + 30
    while not events.started("s1") and time.monotonic() < deadline:
        time.sleep(0.005)
    [began] = [e for n, e in events.seen if n == "s1" and isinstance(e, TaskStarted)]
    with backend._lock:                      # the I/O thread reads s1's result, then waits here
        time.sleep(max(0.0, began.at + 0.5 + 2.0 - time.time()))   # s1 ends 0.5 s after its start
        job = backend._jobs.get("run:s1:1")
        assert job is not None, "s1's job had ended before the lock was taken"
        job.stop_reason = job.timed_out()    # what the timeout sweep does, as the result arrived
        backend._kill_running(job)
    assert first.result(10).ok
    outcome = second.result(10)
    assert outcome.ok, outcome.error
    pids = {e.worker for n, e in events.seen if isinstance(e, TaskStarted)}
    assert len(pids) == 2                    # s2 ran on another worker


def _took(seconds: float | None) -> TaskOutcome:
    if seconds is None:   # stopped before it started: no times
        return TaskOutcome(error=None)
    return TaskOutcome(result={}, started_at=1000.0, finished_at=1000.0 + seconds)


def test_a_function_is_lined_up_only_once_its_calls_have_been_quick_and_stops_at_its_first_slow_one(backend):
    lining = Lining(backend)
    call = _call("a")
    assert not lining.quick(call.code.key), "a function never seen is not lined up"
    lining.learn(call, _took(None))
    assert not lining.quick(call.code.key), "a call that never ran says nothing"
    lining.learn(call, _took(0.001))
    assert lining.quick(call.code.key)
    lining.learn(call, _took(0.5))
    assert not lining.quick(call.code.key), "one slow call is enough to stop lining it up"
    for _ in range(3):
        lining.learn(call, _took(0.001))
    assert not lining.quick(call.code.key), "a few quick calls do not outweigh a slow one at once"
    for _ in range(10):
        lining.learn(call, _took(0.001))
    assert lining.quick(call.code.key)
