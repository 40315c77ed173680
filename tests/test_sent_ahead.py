"""A call lined up behind a running one is sent to that worker at once (the local backend).

The worker finds it waiting when the call before ends, with no round trip
through the driver in between. What must hold, as when it waited in the
driver: it never starts before the call ahead has ended; stopped before it
starts, it never runs (the worker drops it); after a failure the worker starts
nothing until the driver says so, once the scheduler has heard of the failure;
and if the worker goes (killed, timed out), the call runs elsewhere.
"""

from __future__ import annotations

import socket
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from calls import call_taking_x

from maze import MaClient, task
from maze.backends import _packing
from maze.backends._wire import FrameReader
from maze.backends._worker import CallHeader, Drop, Dropped, Fed, Go, _Inbox, decode, encode
from maze.backends.local import LocalBackend
from maze.core.protocol import Failure, TaskCall
from maze.core.resources import Resources
from maze.core.shipping import ship


def mark(params):
    import os as _os
    import time as _time

    start = _time.time()
    _time.sleep(params["seconds"])
    if params["marker"]:
        Path(params["marker"]).write_text("ran")
    if params["fail"]:
        raise RuntimeError("this one fails")
    return {"pid": _os.getpid(), "start": start, "end": _time.time()}


def other(params):
    import os as _os
    import time as _time

    return {"pid": _os.getpid(), "start": _time.time(), "end": _time.time()}


# A call with calls lined up behind it runs 1 s: the test lines them up before it ends, on a busy
# machine too.
def _call(name: str, seconds: float = 0.0, *, fail: bool = False, marker: str = "",
          timeout: float | None = None, func=mark) -> TaskCall:
    return TaskCall(
        call_id=f"run:{name}:1", run_id="run", task_id=name, task_name=name, attempt=1, func=func,
        code=ship(func), constants={"seconds": seconds, "fail": fail, "marker": marker}, inputs={},
        outputs=("pid", "start", "end"), resources=Resources(), timeout=timeout,
    )


def _quiet(event: object) -> None:
    pass


def _holder(backend: LocalBackend, call_id: str):
    """The worker a call was sent to ahead of its turn, if it was (looked up under the backend's lock)."""
    with backend._lock:
        job = backend._jobs.get(call_id)
        return None if job is None else job.sent_to


@pytest.fixture(scope="module")
def backend():
    with LocalBackend(max_workers=4) as b:
        yield b


def test_a_lined_up_call_waits_on_its_worker_and_starts_when_the_one_ahead_ends(backend):
    first = backend.submit(_call("a", 1.0), _quiet)
    second = backend.submit_behind(_call("b"), _quiet, behind="run:a:1")
    assert _holder(backend, "run:b:1") is not None      # on the worker already, the one running a
    a, b = first.result(10).result, second.result(10).result
    assert a is not None and b is not None
    assert b["pid"] == a["pid"] and b["start"] >= a["end"]


def test_a_call_of_other_code_waits_in_the_driver(backend):
    first = backend.submit(_call("a1", 1.0), _quiet)
    second = backend.submit_behind(_call("b1", func=other), _quiet, behind="run:a1:1")
    assert _holder(backend, "run:b1:1") is None         # its code might not be loaded when its turn comes
    a, b = first.result(10).result, second.result(10).result
    assert a is not None and b is not None and b["start"] >= a["end"]


def test_a_call_stopped_on_its_worker_never_runs_and_the_worker_goes_on(backend, tmp_path):
    marker = tmp_path / "b2"
    first = backend.submit(_call("a2", 1.0), _quiet)
    second = backend.submit_behind(_call("b2", marker=str(marker)), _quiet, behind="run:a2:1")
    assert _holder(backend, "run:b2:1") is not None
    backend.stop("run:b2:1")
    assert second.result(10).error.kind is Failure.CANCELLED
    a = first.result(10).result
    assert a is not None
    after = backend.submit_behind(_call("c2"), _quiet, behind="run:a2:1").result(10).result   # a2 has ended
    assert after is not None
    time.sleep(0.2)
    assert not marker.exists()


def test_after_a_failure_the_worker_waits_for_the_driver_then_runs_what_is_behind(backend):
    first = backend.submit(_call("a3", 1.0, fail=True), _quiet)
    second = backend.submit_behind(_call("b3"), _quiet, behind="run:a3:1")
    assert _holder(backend, "run:b3:1") is not None
    assert first.result(10).error is not None
    b = second.result(10).result                        # nothing stopped it: it runs once the driver says go
    assert b is not None
    # A worker whose call failed with nothing behind it takes new calls too.
    failed = backend.submit(_call("a4", fail=True), _quiet).result(10)
    assert failed.error is not None
    assert all(backend.submit(_call(f"n{i}"), _quiet).result(10).ok for i in range(6))


def test_when_the_call_ahead_times_out_the_one_behind_runs_on_another_worker(backend, tmp_path):
    first = backend.submit(_call("a5", 30.0, timeout=0.5), _quiet)
    second = backend.submit_behind(_call("b5", marker=str(tmp_path / "b5")), _quiet, behind="run:a5:1")
    assert _holder(backend, "run:b5:1") is not None
    assert first.result(10).error.kind is Failure.TIMED_OUT
    b = second.result(10).result
    assert b is not None and (tmp_path / "b5").read_text() == "ran"


@task(inputs=["i", "folder"], outputs=["i"])
def note(params):
    Path(params["folder"], f"{params['i']}-{time.time():.6f}").touch()
    time.sleep(0.002)
    return {"i": params["i"]}


def test_cancelling_a_fan_out_of_quick_tasks_starts_nothing_beyond_the_calls_already_begun(tmp_path):
    with MaClient(history=None) as client:
        wf = client.create_workflow()
        for i in range(3000):
            wf.add_task(note, inputs={"i": i, "folder": str(tmp_path)})
        run_id = wf.run()
        deadline = time.monotonic() + 60
        while sum(1 for _ in tmp_path.iterdir()) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)   # cancel once the fan-out is well under way
        wf.cancel(run_id)
        cancelled_at = time.time()
        summary = wf.wait(run_id, timeout=30)
        workers = client.backend.max_workers
    assert summary["status"] == "cancelled"
    finished = len(summary["task_results"])
    started = [float(p.name.split("-")[1]) for p in tmp_path.iterdir()]
    assert 20 <= len(started) < 3000
    # A worker may have begun one call just before its drop arrived, and been paused before the
    # call noted its start; nothing lined up behind that may start.
    late = [t for t in started if t > cancelled_at + 0.05]
    assert len(late) <= workers, f"{len(late)} tasks started after the cancel"
    assert finished <= len(started)


def unreadable(params):
    import os as _os
    import sys as _sys
    import time as _time
    import types as _types

    _time.sleep(params["seconds"])
    if params["marker"]:
        Path(params["marker"]).write_text("ran")
    # A class of a module that exists in this worker only: it pickles by reference, which the
    # driver cannot follow.
    module = _sys.modules.setdefault("made_in_the_worker", _types.ModuleType("made_in_the_worker"))
    module.Made = type("Made", (), {"__module__": "made_in_the_worker"})
    return {"pid": _os.getpid(), "start": module.Made(), "end": 0.0}


def test_after_a_result_the_driver_cannot_read_a_stop_stops_the_call_behind_it_as_a_running_one(backend, tmp_path):
    from maze.core.protocol import TaskStarted

    seen: list[object] = []
    first = backend.submit(_call("u1", 1.0, func=unreadable), _quiet)
    second = backend.submit_behind(_call("u2", 6.0, marker=str(tmp_path / "u2"), func=unreadable),
                                   seen.append, behind="run:u1:1")
    assert _holder(backend, "run:u2:1") is not None
    first.add_done_callback(lambda _: backend.stop("run:u2:1"))     # what fail-fast does
    assert "could not be unpickled" in first.result(10).error.error
    assert second.result(10).error.kind is Failure.CANCELLED
    # The worker saw no failure and had gone on to it: it is told as started, and stopped (killed).
    assert any(isinstance(e, TaskStarted) for e in seen)
    began = time.monotonic()
    assert backend.submit(_call("u3"), _quiet).result(10).ok
    assert time.monotonic() - began < 4                        # no worker is left busy with it (6 s)
    time.sleep(max(0.0, began + 6.5 - time.monotonic()))
    assert not (tmp_path / "u2").exists()


def test_a_call_the_worker_started_before_its_drop_arrived_is_killed(tmp_path):
    marker = tmp_path / "s2"
    with LocalBackend(max_workers=2) as backend:
        heard = threading.Event()
        go_on = threading.Event()
        on_done = backend._on_done

        def slow_to_hear(worker, job, done):   # the driver hears of s1's end late; its worker goes on
            if job.call.task_id == "s1":
                heard.set()
                go_on.wait(10)
            return on_done(worker, job, done)

        backend._on_done = slow_to_hear  # type: ignore[method-assign]
        first = backend.submit(_call("s1", 0.05), _quiet)
        second = backend.submit_behind(_call("s2", 1.5, marker=str(marker)), _quiet, behind="run:s1:1")
        assert _holder(backend, "run:s2:1") is not None
        assert heard.wait(10)
        time.sleep(0.2)                        # s2 runs on the worker by now
        backend.stop("run:s2:1")               # to the driver it has not started: a Drop, too late
        assert second.result(10).error.kind is Failure.CANCELLED
        go_on.set()
        assert first.result(10).ok
        assert all(backend.submit(_call(f"s3-{i}"), _quiet).result(10).ok for i in range(4))
        time.sleep(1.6)
        assert not marker.exists()             # killed once it said it runs, not left to its end


# -- the worker's side ----------------------------------------------------------------


def _header(call_id: str, ahead: bool = True) -> bytes:
    return encode(CallHeader(call_id, call_id, "key", False, [], [], [], ("x",), False, ahead))


@pytest.fixture
def wire():
    """The driver's end of a socket pair, and a worker's inbox on the other end."""
    ours, theirs = socket.socketpair()
    driver, worker = Connection(ours.detach()), Connection(theirs.detach())
    yield driver, _Inbox(FrameReader(worker.fileno()), worker.send_bytes)
    driver.close()
    worker.close()


def test_the_worker_drops_a_call_before_it_starts_and_after_a_failure_holds_until_go(wire):
    driver, inbox = wire
    for frame in (_header("x"), _header("y"), encode(Drop("x"))):
        driver.send_bytes(frame)
    call, _, packs = inbox.next_call()                  # x was dropped before its turn
    assert call.call_id == "y" and packs == []
    assert decode(driver.recv_bytes()) == Dropped("x", ran=False)
    driver.send_bytes(_header("w", ahead=False))         # sent to an idle worker: no Drop can follow
    driver.send_bytes(encode(Drop("v")))
    assert inbox.next_call()[0].call_id == "w"          # taken without reading on
    driver.send_bytes(encode(Drop("y")))                 # too late for y: moot
    inbox.holding = True                                 # as after a failed call
    driver.send_bytes(_header("z"))
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(inbox.next_call()[0].call_id))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and got == []              # z waits for the driver's go
    driver.send_bytes(encode(Go()))
    reader.join(5)
    assert got == ["z"]
    answers = [decode(driver.recv_bytes()) for _ in range(2)]
    assert answers == [Dropped("v", ran=True), Dropped("y", ran=True)] or \
        answers == [Dropped("y", ran=True), Dropped("v", ran=True)]   # too late: the driver must stop them
    driver.send_bytes(b"")                               # goodbye
    assert inbox.next_call() is None


def test_a_call_taking_the_outputs_of_the_one_before_waits_until_the_driver_has_read_them(wire):
    driver, inbox = wire
    driver.send_bytes(_header("a", ahead=False))
    driver.send_bytes(encode(CallHeader("b", "b", "key", False, [], ["x"], [None], ("x",), False, True,
                                        ("a", [(0, "x")]))))
    assert inbox.next_call()[0].call_id == "a"
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(inbox.next_call()[0].call_id))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and got == []              # a's result is not read yet: b waits
    driver.send_bytes(encode(Fed("a")))
    reader.join(5)
    assert got == ["b"]
    # Taken back instead (the driver could not read a's result): dropped, never run.
    driver.send_bytes(encode(CallHeader("d", "d", "key", False, [], ["x"], [None], ("x",), False, True,
                                        ("c", [(0, "x")]))))
    driver.send_bytes(_header("e"))
    driver.send_bytes(encode(Drop("d")))
    assert inbox.next_call()[0].call_id == "e"
    assert decode(driver.recv_bytes()) == Dropped("d", ran=False)


def test_a_call_read_ahead_keeps_its_inputs_frames_in_order(wire):
    driver, inbox = wire
    small = _packing.pack(b"abc" * 10, "test-owner")
    framed = _packing.pack(bytearray(b"z" * 1000), "test-owner")
    for name, value in (("p", small), ("q", framed)):
        driver.send_bytes(encode(CallHeader(name, name, "key", False, [], ["v"], [value.descriptor()], ("x",), False)))
        for frame in value.frames:
            driver.send_bytes(frame)
    first, second = inbox.next_call(), inbox.next_call()
    assert _packing.unpack(first[2][0]) == b"abc" * 10
    assert _packing.unpack(second[2][0]) == bytearray(b"z" * 1000)


# -- a call that takes the outputs of the call ahead of it (a chain's next link) -----------------


def step(params):
    import os as _os
    import time as _time

    _time.sleep(params["seconds"])
    if params["marker"]:
        Path(params["marker"]).write_text("ran")
    if params["size"]:
        import numpy as _np

        return {"y": _np.full(params["size"], params["x"], dtype=_np.int64), "pid": _os.getpid()}
    if params["fail"]:
        raise RuntimeError("this link fails")
    pid: object = _os.getpid()
    if params["junk"]:   # a class of a module only this worker has: the driver cannot read it
        import sys as _sys
        import types as _types

        module = _sys.modules.setdefault("made_in_the_worker", _types.ModuleType("made_in_the_worker"))
        module.Made = type("Made", (), {"__module__": "made_in_the_worker"})
        pid = module.Made()
    return {"y": params["x"] + 1, "pid": pid}


def _step(name: str, x, seconds: float = 0.0, *, marker: str = "", size: int = 0, fail: bool = False,
          junk: bool = False, timeout: float | None = None) -> TaskCall:
    return call_taking_x(step, name, x, ("y", "pid"), timeout=timeout, seconds=seconds, marker=marker, size=size,
                         fail=fail, junk=junk)


def _link_behind(backend: LocalBackend, name: str, ahead: str, **kw):
    upcoming = backend.upcoming_outputs(f"run:{ahead}:1")
    assert upcoming is not None
    return backend.submit_behind(_step(name, upcoming["y"], **kw), _quiet, behind=f"run:{ahead}:1")


def test_a_link_taking_the_outputs_of_the_call_ahead_goes_to_its_worker_once_a_call_is_lined_up_behind_it(backend):
    first = backend.submit(_step("l1", 41, 1.0), _quiet)
    second = _link_behind(backend, "l2", "l1")
    assert _holder(backend, "run:l2:1") is None          # alone: it goes when l1's result arrives
    third = backend.submit_behind(_step("l3", 7), _quiet, behind="run:l2:1")
    assert _holder(backend, "run:l2:1") is not None and _holder(backend, "run:l3:1") is not None
    a, b, c = (f.result(10).result for f in (first, second, third))
    assert a is not None and b is not None and c is not None
    assert (a["y"], b["y"], c["y"]) == (42, 43, 8) and a["pid"] == b["pid"] == c["pid"]


def test_a_large_output_taken_on_the_worker_reaches_the_next_link_and_leaves_no_file(backend):
    import numpy as np

    def ours() -> set[Path]:   # this backend's files only: other processes may use maze at the same time
        return set(Path(_packing._SHM_DIR).glob(f"{_packing.FILE_PREFIX}{backend._owner}-*"))

    before = ours()
    first = backend.submit(_step("s1", 7, 1.0, size=300_000), _quiet)   # 2.4 MB: through shared memory
    second = _link_behind(backend, "s2", "s1", size=300_000)
    third = backend.submit_behind(_step("s3", 1), _quiet, behind="run:s2:1")
    assert _holder(backend, "run:s2:1") is not None
    a, b = first.result(10).result, second.result(10).result
    assert a is not None and b is not None and third.result(10).ok
    assert np.array_equal(b["y"], np.full(300_000, 7)) and a["pid"] == b["pid"]
    del a, b, first, second
    import gc

    gc.collect()
    assert ours() <= before


def test_a_link_behind_a_call_stopped_before_it_started_is_stopped_with_it(backend, tmp_path):
    marker = tmp_path / "k3"
    head = backend.submit(_step("k1", 0, 1.0), _quiet)
    middle = backend.submit_behind(_step("k2", 1), _quiet, behind="run:k1:1")
    link = _link_behind(backend, "k3", "k2", marker=str(marker))
    last = backend.submit_behind(_step("k4", 4), _quiet, behind="run:k3:1")
    assert all(_holder(backend, f"run:k{i}:1") is not None for i in (2, 3, 4))
    backend.stop("run:k2:1")
    assert middle.result(10).error.kind is Failure.CANCELLED
    stopped = link.result(10).error
    assert stopped is not None and stopped.kind is Failure.CANCELLED and "was stopped" in stopped.error
    assert head.result(10).ok
    after = last.result(10).result                       # it takes nothing of theirs: it runs, after k1
    assert after is not None and after["y"] == 5
    time.sleep(0.2)
    assert not marker.exists()                           # the link never ran (on k1's outputs, or any)


def test_after_the_worker_is_killed_links_sent_ahead_follow_their_calls_elsewhere(backend):
    head = backend.submit(_step("t1", 0, 5.0, timeout=0.5), _quiet)
    middle = backend.submit_behind(_step("t2", 10), _quiet, behind="run:t1:1")
    link = _link_behind(backend, "t3", "t2")
    last = backend.submit_behind(_step("t4", 20), _quiet, behind="run:t3:1")
    assert all(_holder(backend, f"run:t{i}:1") is not None for i in (2, 3, 4))
    assert head.result(10).error.kind is Failure.TIMED_OUT   # its worker was killed, with all three waiting there
    b, c, d = (f.result(10).result for f in (middle, link, last))
    assert b is not None and c is not None and d is not None
    assert (b["y"], c["y"], d["y"]) == (11, 12, 21) and b["pid"] == c["pid"]


def test_a_link_sent_ahead_of_a_result_the_driver_cannot_read_is_taken_back_unrun(backend, tmp_path):
    marker = tmp_path / "v2"
    first = backend.submit(_step("v1", 1, 1.0, junk=True), _quiet)
    link = _link_behind(backend, "v2", "v1", marker=str(marker))
    last = backend.submit_behind(_step("v3", 3), _quiet, behind="run:v2:1")
    assert _holder(backend, "run:v2:1") is not None       # on the worker, which would have v1's outputs at hand
    assert "could not be unpickled" in first.result(10).error.error
    taken_back = link.result(10).error
    assert taken_back is not None and taken_back.kind is Failure.CANCELLED and "could not be read" in taken_back.error
    after = last.result(10).result
    assert after is not None and after["y"] == 4
    time.sleep(0.2)
    assert not marker.exists()


@task(inputs=["i", "blob"], outputs=["i", "blob"])
def echo_blob(params):
    return {"i": params["i"], "blob": params["blob"]}


@pytest.mark.timeout(120)
def test_quick_calls_with_inputs_and_outputs_larger_than_a_socket_buffer_do_not_deadlock():
    # Each input and output is 600 KB, under the shared-memory threshold: it travels through
    # the socket. Calls lined up behind a running one fill the worker's socket while that
    # worker waits to send its own result: the driver must go on reading as it writes.
    import numpy as np

    with MaClient(history=None) as client:
        wf = client.create_workflow("big-frames")
        tasks = [wf.add_task(echo_blob, inputs={"i": i, "blob": np.full(600_000, i % 251, dtype=np.uint8)})
                 for i in range(200)]
        for _ in range(2):
            summary = wf.wait(wf.run(), timeout=60)
            assert summary["workflow_completed"]
            results = summary["task_results"]
            assert all(results[t.task_id]["i"] == i and results[t.task_id]["blob"][-1] == i % 251
                       for i, t in enumerate(tasks))


@task(inputs=["v", "junk", "folder"], outputs=["v", "junk"])
def chain_link(params):
    import sys as _sys
    import types as _types
    from pathlib import Path as _Path

    _Path(params["folder"], f"ran-{params['v']}").touch()
    junk = None
    if params["junk"]:   # a class of a module only this worker has: the driver cannot read it
        module = _sys.modules.setdefault("made_in_the_worker", _types.ModuleType("made_in_the_worker"))
        module.Made = type("Made", (), {"__module__": "made_in_the_worker"})
        junk = module.Made()
    return {"v": params["v"] + 1, "junk": junk}


def test_the_next_link_of_a_result_the_driver_cannot_read_is_skipped_and_never_runs(tmp_path):
    # The next link waits on the worker, which saw no failure and holds the outputs it
    # would take: it must wait for the driver to have read them, not run on them.
    with MaClient(history=None) as client:
        wf = client.create_workflow("unreadable-chain")
        links = []
        for i in range(30):
            v = links[-1].outputs["v"] if links else 0
            links.append(wf.add_task(chain_link, inputs={"v": v, "junk": i == 20, "folder": str(tmp_path)}))
        run_id = wf.run()
        summary = wf.wait(run_id, timeout=60)
        ends = {m["data"]["task_id"]: m["type"] for m in wf.get_results(run_id)
                if m["type"] in ("finish_task", "task_exception", "task_skipped")}
    assert [ends[t.task_id] for t in links[19:22]] == ["finish_task", "task_exception", "task_skipped"]
    assert summary["skipped_tasks"] == [t.task_id for t in links[21:]]
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir()) == list(range(21))


def test_several_calls_lined_up_one_behind_another_all_wait_on_the_worker_and_run_in_order(backend):
    first = backend.submit(_call("m0", 1.0), _quiet)
    behind = [backend.submit_behind(_call(f"m{i}", 0.05), _quiet, behind=f"run:m{i - 1}:1") for i in range(1, 4)]
    assert all(_holder(backend, f"run:m{i}:1") is not None for i in range(1, 4))   # all on m0's worker
    results = [f.result(10).result for f in [first, *behind]]
    assert all(r is not None for r in results)
    assert len({r["pid"] for r in results}) == 1
    assert all(later["start"] >= earlier["end"] for earlier, later in zip(results, results[1:]))


def test_a_stop_that_comes_as_the_call_ends_kills_nothing_and_the_call_behind_runs_once(backend, tmp_path):
    # The worker has ended a and gone on to b; the stop of a comes before the driver has read a's
    # result (here: while it reports a's start, just before). Killing the worker then would stop
    # b midway, and b would run a second time elsewhere.
    from maze.core.protocol import TaskStarted

    ran = tmp_path / "b-ran"

    def report_a(event: object) -> None:
        if isinstance(event, TaskStarted):
            deadline = time.time() + 5
            while not ran.exists() and time.time() < deadline:   # b has started on the worker
                time.sleep(0.01)
            backend.stop("run:w1:1")

    first = backend.submit(_step("w1", 1, 1.0), report_a)
    second = backend.submit_behind(_step("w2", 2, 0.5, marker=str(ran)), _quiet, behind="run:w1:1")
    assert _holder(backend, "run:w2:1") is not None
    a, b = first.result(10), second.result(10)
    assert a.ok and b.ok                                  # a had ended: its result stands
    assert a.result["pid"] == b.result["pid"]             # b ran once, where it started


def test_a_running_call_stopped_with_calls_sent_behind_it_is_killed_and_they_run_once_elsewhere(backend, tmp_path):
    head = backend.submit(_step("x1", 1, 5.0), _quiet)
    behind = [backend.submit_behind(_step(f"x{i}", i), _quiet, behind=f"run:x{i - 1}:1") for i in (2, 3)]
    assert all(_holder(backend, f"run:x{i}:1") is not None for i in (2, 3))
    time.sleep(0.3)
    backend.stop("run:x1:1")
    assert head.result(10).error.kind is Failure.CANCELLED
    results = [f.result(10).result for f in behind]
    assert [r["y"] for r in results] == [3, 4]
