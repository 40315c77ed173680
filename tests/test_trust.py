"""What a user must be able to trust, on every backend: fresh code, plain results,
a clean close, Ctrl-C that stops the run, bounded errors, replay equal to live."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from tasks_misc import boom, chatty, inc, sleeper

from maze import MaClient, task
from maze.core.errors import BackendError, TaskDefinitionError, WorkflowError
from maze.core.history import HistoryReader
from maze.core.messages import ERROR_LINE_LIMIT, TRACEBACK_LIMIT
from maze.core.run import RunState
from maze.notebook.states import Board


def notebook(source: str, ns: dict | None = None) -> dict:
    """Run ``source`` as a notebook cell would: in a ``__main__`` namespace, so its
    functions travel by value (cloudpickle), with the globals they read."""
    ns = ns if ns is not None else {"__name__": "__main__"}
    exec(source, ns)
    return ns


CELL = '''
from maze import task
SCALE = 2
def helper(x):
    return x * SCALE
@task(inputs=["x"], outputs=["y"])
def scaled(params):
    return {"y": helper(params["x"])}
'''


def result_of(wf, run_id, task_id):
    summary = wf.wait(run_id)
    assert summary["status"] == "completed", summary
    return summary["task_results"][task_id]["y"]


# -- fresh code on every run ---------------------------------------------------------------


def test_a_changed_global_is_seen_by_the_next_run(client):
    ns = notebook(CELL)
    wf = client.create_workflow()
    t = wf.add_task(ns["scaled"], inputs={"x": 5})
    assert result_of(wf, wf.run(), t.task_id) == 10
    ns["SCALE"] = 3                                   # the next cell changes a global
    assert result_of(wf, wf.run(), t.task_id) == 15   # the same workflow, run again
    other = client.create_workflow()
    t2 = other.add_task(ns["scaled"], inputs={"x": 5})
    assert result_of(other, other.run(), t2.task_id) == 15


def test_a_redefined_helper_is_seen_by_the_next_run(client):
    ns = notebook(CELL)
    wf = client.create_workflow()
    t = wf.add_task(ns["scaled"], inputs={"x": 5})
    assert result_of(wf, wf.run(), t.task_id) == 10
    notebook("def helper(x):\n    return x + 100\n", ns)   # the helper cell is edited and re-run
    assert result_of(wf, wf.run(), t.task_id) == 105


def test_a_changed_closure_cell_and_default_argument_are_seen(client):
    factor = 2

    @task(inputs=["x"], outputs=["y"])
    def by_closure(params):
        return {"y": params["x"] * factor}

    @task(inputs=["x"], outputs=["y"])
    def by_default(params, offset=1):
        return {"y": params["x"] + offset}

    wf = client.create_workflow()
    a = wf.add_task(by_closure, inputs={"x": 5})
    b = wf.add_task(by_default, inputs={"x": 5})
    run_id = wf.run()
    assert (result_of(wf, run_id, a.task_id), result_of(wf, run_id, b.task_id)) == (10, 6)
    factor = 7  # noqa: F841 - read through the closure
    by_default.spec.func.__defaults__ = (50,)
    run_id = wf.run()
    assert (result_of(wf, run_id, a.task_id), result_of(wf, run_id, b.task_id)) == (35, 55)


def test_a_redefined_task_function_runs_its_new_body(client):
    ns = notebook(CELL)
    first = client.create_workflow()
    t = first.add_task(ns["scaled"], inputs={"x": 5})
    assert result_of(first, first.run(), t.task_id) == 10
    notebook(CELL.replace("helper(params[\"x\"])", "-params[\"x\"]"), ns)
    second = client.create_workflow()
    t2 = second.add_task(ns["scaled"], inputs={"x": 5})
    assert result_of(second, second.run(), t2.task_id) == -5


def test_resume_and_cache_do_not_reuse_a_result_made_under_an_old_global(client):
    ns = notebook(CELL.replace("@task(", "@task(cache=True, "))
    wf = client.create_workflow()
    t = wf.add_task(ns["scaled"], inputs={"x": 5})
    first = wf.run()
    assert result_of(wf, first, t.task_id) == 10
    ns["SCALE"] = 4
    again = wf.run(resume_from=first)
    assert result_of(wf, again, t.task_id) == 20
    # (The result cache is shared by the backends' runs of this test, so it may hold SCALE=4's result.)
    assert wf.explain(again)[t.task_id].split(" (")[0] in ("its code changed", "reused: in the result cache")
    assert not wf.explain(again)[t.task_id].startswith("reused: unchanged since")


# -- plain results -------------------------------------------------------------------------


@task(inputs=["n"], outputs=["text", "count", "items", "array"])
def mixed(params):
    n = params["n"]
    return {"text": "x" * n, "count": n, "items": list(range(n)), "array": np.arange(n * 100_000, dtype=np.float64)}


def test_results_are_plain_dicts_json_and_pickle_without_loss(client):
    wf = client.create_workflow()
    t = wf.add_task(mixed, inputs={"n": 12})   # the array is 9.6 MB: held by reference where a backend can
    run_id = wf.run()
    summary = wf.wait(run_id)
    result = summary["task_results"][t.task_id]
    assert type(summary["task_results"]) is dict and type(result) is dict
    assert type(wf.get_task_result(run_id, t.task_id)["result"]) is dict
    finish = next(m for m in wf.get_results(run_id) if m["type"] == "finish_task")
    assert type(finish["data"]["result"]) is dict
    plain = {k: v for k, v in summary.items() if k != "task_results"}
    plain["task_results"] = {t.task_id: {k: v for k, v in result.items() if k != "array"}}
    assert json.loads(json.dumps(plain))["task_results"][t.task_id] == {"text": "x" * 12, "count": 12, "items": list(range(12))}
    back = pickle.loads(pickle.dumps(summary))
    assert np.array_equal(back["task_results"][t.task_id]["array"], np.arange(1_200_000, dtype=np.float64))
    assert back["task_results"][t.task_id]["text"] == "x" * 12


# -- close() during a run, run() after close ------------------------------------------------


def _close_mid_run(client: MaClient, capfd: pytest.CaptureFixture[str]) -> None:
    wf = client.create_workflow()
    first = wf.add_task(sleeper, inputs={"seconds": 30})
    wf.add_task(inc, inputs={"x": first.outputs["start"]})
    wf.add_task(sleeper, inputs={"seconds": 30})
    run_id = wf.run()
    log = wf.get_results(run_id)
    recorded = wf.run_state(run_id).messages   # what has been recorded so far, without waiting
    deadline = time.monotonic() + 60
    while sum(m["type"] == "start_task" for m in list(recorded)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    client.close()
    assert time.monotonic() - t0 < 20
    messages = list(log)
    summary = wf.wait(run_id, timeout=5)
    assert summary["status"] == "cancelled"
    assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["status"] == "cancelled"
    ended = {m["data"]["task_id"] for m in messages if m["type"] in ("finish_task", "task_exception", "task_skipped")}
    assert ended == set(wf.run_state(run_id).plan.tasks)
    assert not any(m["data"].get("error_type") == "WorkerDiedError" for m in messages)
    assert "Traceback" not in capfd.readouterr().err
    with pytest.raises(BackendError, match="closed"):
        wf.run()


def test_close_during_a_run_cancels_it_cleanly_local(capfd):
    _close_mid_run(MaClient(history=None), capfd)


def test_close_during_a_run_cancels_it_cleanly_ray(ray_client, capfd):
    # A second client on the session's Ray: it does not own that Ray, so close() leaves it up.
    _close_mid_run(MaClient(backend="ray", history=None), capfd)


# -- Ctrl-C while iterating get_results ------------------------------------------------------


def ctrl_c_in(seconds: float) -> None:
    # A real SIGINT (interrupt_main() would not wake a thread blocked on a lock).
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()


def test_ctrl_c_while_iterating_get_results_cancels_the_run(stopping_client):
    wf = stopping_client.create_workflow()
    wf.add_task(sleeper, inputs={"seconds": 30})
    run_id = wf.run()
    ctrl_c_in(1.0)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for _ in wf.get_results(run_id):
            pass
    summary = wf.wait(run_id, timeout=30)
    assert summary["status"] == "cancelled" and time.monotonic() - t0 < 25


def test_ctrl_c_in_client_get_results_cancels_the_run(local_client):
    wf = local_client.create_workflow()
    wf.add_task(sleeper, inputs={"seconds": 30})
    run_id = wf.run()
    ctrl_c_in(1.0)
    with pytest.raises(KeyboardInterrupt):
        local_client.get_results(run_id)
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"


# Ctrl-C lands wherever the reading thread is; on a loaded machine that is often in the reader's own work
# (copying a message, printing a line), not in a wait. Each case raises it there, at a chosen point.

class CtrlCOnWrite(io.StringIO):
    def write(self, text: str) -> int:
        raise KeyboardInterrupt


def _sleeping_run(client: MaClient) -> tuple[Any, str]:
    wf = client.create_workflow()
    wf.add_task(sleeper, inputs={"seconds": 30})
    return wf, wf.run()


def test_ctrl_c_as_a_message_log_resumes_cancels_the_run(local_client):
    wf, run_id = _sleeping_run(local_client)
    messages = iter(wf.get_results(run_id))
    next(messages)   # the generator now stands at a yield
    with pytest.raises(KeyboardInterrupt):
        messages.throw(KeyboardInterrupt)   # raised where the generator stands: at its yield, not in a wait
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"


def ctrl_c_to_another_thread_in(seconds: float) -> None:
    # The kernel hands a process-directed SIGINT (a terminal's Ctrl-C) to any thread of the process;
    # this hands it to the timer's own thread, not to the main thread that waits on the run.
    threading.Timer(seconds, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)).start()


READERS = {
    "client.get_results": lambda client, wf, run_id: client.get_results(run_id),
    "iterating get_results": lambda client, wf, run_id: [m for m in wf.get_results(run_id)],
    "wait": lambda client, wf, run_id: wf.wait(run_id),
    "wait with a timeout": lambda client, wf, run_id: wf.wait(run_id, timeout=60),
    "show_results": lambda client, wf, run_id: wf.show_results(run_id, file=io.StringIO(), verbose=True),
    "get_task_result": lambda client, wf, run_id: wf.get_task_result(run_id, "sleeper"),
    "len": lambda client, wf, run_id: len(wf.get_results(run_id)),
}


@pytest.mark.parametrize("reader", READERS)
def test_a_ctrl_c_the_kernel_hands_to_another_thread_cancels_the_run_at_once(local_client, reader):
    # The main thread must not sleep through it until the run's next message (here: its end, 30 s on).
    wf, run_id = _sleeping_run(local_client)
    ctrl_c_to_another_thread_in(1.0)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        READERS[reader](local_client, wf, run_id)
    assert time.monotonic() - began < 10
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"


def test_a_second_ctrl_c_gets_out_at_once_though_two_readers_hear_it(local_client):
    # wait() reads follow_logs(), so both hear a Ctrl-C. The first cancels the run and waits (up to
    # 30 s) for it to end; a second Ctrl-C during that wait means "let me out now", not a new wait.
    wf, run_id = _sleeping_run(local_client)
    run = wf.run_state(run_id)
    calls = []
    run._on_interrupt = lambda: (calls.append(1), ctrl_c_in(0.5))   # a run slow to stop: it goes on
    ctrl_c_in(1.0)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        wf.wait(run_id)
    assert calls == [1] and time.monotonic() - began < 10
    wf.cancel(run_id)
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"


def test_ctrl_c_while_show_results_prints_cancels_the_run(local_client):
    wf, run_id = _sleeping_run(local_client)
    with pytest.raises(KeyboardInterrupt):
        wf.show_results(run_id, file=CtrlCOnWrite(), verbose=True)
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"


def test_ctrl_c_while_wait_echoes_a_tasks_output_cancels_the_run(local_client, monkeypatch):
    from maze.core import report

    def interrupted(message: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "echo_log", interrupted)
    wf = local_client.create_workflow()
    wf.add_task(chatty, inputs={"lines": 1, "seconds": 30})   # prints a line, then sleeps 30 s
    run_id = wf.run()
    with pytest.raises(KeyboardInterrupt):
        wf.wait(run_id)
    assert wf.run_state(run_id).ended.is_set() and wf.wait(run_id, timeout=0)["status"] == "cancelled"


def test_ctrl_c_while_get_results_verbose_prints_cancels_the_run(local_client, monkeypatch):
    monkeypatch.setattr("sys.stdout", CtrlCOnWrite())
    wf, run_id = _sleeping_run(local_client)
    with pytest.raises(KeyboardInterrupt):
        wf.get_results(run_id, verbose=True)
    monkeypatch.undo()
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"


# -- run() returns at once ------------------------------------------------------------------


def test_run_returns_at_once_with_a_large_constant_and_keeps_it_as_it_was(local_client, monkeypatch):
    from maze.backends.local import LocalBackend
    from maze.core.snapshot import Snapshot

    threads: dict[str, set[str]] = {"hash": set(), "send": set()}

    def spy(kind, original):
        def wrapper(self, *args, **kwargs):
            threads[kind].add(threading.current_thread().name)
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(Snapshot, "fingerprints", spy("hash", Snapshot.fingerprints))
    monkeypatch.setattr(LocalBackend, "submit", spy("send", LocalBackend.submit))
    big = np.ones(25_000_000)   # 200 MB
    wf = local_client.create_workflow()
    t = wf.add_task(inc, inputs={"x": 1})
    wf.add_task(task(inputs=["a"], outputs=["n"])(lambda p: {"n": float(p["a"].sum())}), inputs={"a": big})
    run_id = wf.run()
    big[:] = 0   # the next cell changes the array in place: the run keeps what it was given
    summary = wf.wait(run_id)
    assert summary["status"] == "completed" and summary["task_results"]["<lambda>"] == {"n": 25_000_000.0}
    assert summary["task_results"][t.task_id] == {"y": 2}
    # run() copies the array once (the snapshot) but neither hashes it nor sends it on the
    # caller's thread: both happen in the background.
    caller = threading.current_thread().name
    assert threads["hash"] and caller not in threads["hash"]
    assert threads["send"] and caller not in threads["send"]


# -- bad input that used to slip through ------------------------------------------------------


def test_whole_outputs_as_an_input_is_refused_naming_the_keys(local_client):
    @task(inputs=[], outputs=["a", "b"])
    def two(params):
        return {"a": 1, "b": 2}

    wf = local_client.create_workflow()
    t = wf.add_task(two)
    with pytest.raises(WorkflowError, match=r"all the outputs of task 'two'.*two.outputs\['a'\], two.outputs\['b'\]"):
        wf.add_task(inc, inputs={"x": t.outputs})
    with pytest.raises(WorkflowError, match="list holding task outputs"):
        wf.add_task(inc, inputs={"x": [t.outputs["a"], t.outputs["b"]]})
    assert [d["id"] for d in wf.get_tasks()] == ["two"]


def test_a_function_that_cannot_take_params_is_refused_at_task():
    with pytest.raises(TaskDefinitionError, match=r"@task 'two_args': two_args\(a, b\) cannot be called with one argument"):
        @task(inputs=["a"], outputs=["b"])
        def two_args(a, b):
            return {}

    with pytest.raises(TaskDefinitionError, match="no_args"):
        @task(outputs=["b"])
        def no_args():
            return {}


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@task(inputs=["x"], outputs=["y"])
def raises_unprintable(params):
    raise Unprintable()


def test_an_exception_whose_str_raises_is_reported_as_itself(client):
    wf = client.create_workflow()
    t = wf.add_task(raises_unprintable, inputs={"x": 1})
    ok = wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    summary = wf.wait(run_id)
    assert summary["exception_tasks"] == [t.task_id] and summary["task_results"][ok.task_id] == {"y": 2}
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert failure["error_type"] == "Unprintable"
    assert "str() of the exception raised RuntimeError" in failure["error"]


@task(inputs=["size"], outputs=["y"])
def raises_huge(params):
    raise ValueError("E" * params["size"])


def test_a_huge_error_message_is_bounded_in_messages_but_whole_in_get_task_result(client):
    wf = client.create_workflow()
    t = wf.add_task(raises_huge, inputs={"size": 5_000_000})
    run_id = wf.run()
    wf.wait(run_id)
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    assert len(failure["error"]) <= ERROR_LINE_LIMIT and len(failure["result"]) <= TRACEBACK_LIMIT
    assert "characters not shown" in failure["error"]
    assert wf.get_task_result(run_id, t.task_id)["error"] == "ValueError: " + "E" * 5_000_000


def test_draw_graph_refuses_a_bad_dpi_and_names_a_missing_folder(local_client, tmp_path):
    wf = local_client.create_workflow()
    wf.add_task(inc, inputs={"x": 1})
    with pytest.raises(ValueError, match=r"dpi='high' is not accepted; expected dots per inch"):
        wf.draw_graph(str(tmp_path / "g.png"), dpi="high")
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=r"the folder .*no/such' does not exist; create it first"):
        wf.draw_graph(str(missing / "g.svg"))


# -- replay equals live -------------------------------------------------------------------------


@task(inputs=["x"], outputs=["y"], retries=1)
def flaky_once(params):
    marker = params["x"]
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return {"y": 1}


def _replay_matches_live(wf, run_id, client=None):
    live = wf.wait(run_id)
    run = wf.run_state(run_id)
    replayed = RunState.replayed(run_id, run.plan, list(wf.get_results(run_id)))
    if client is not None and client.history_path is not None:   # and as a new session reads it
        client.runs()   # flushes this client's history writer
        from maze.core.history import HistoryReader

        assert HistoryReader(client.history_path).replay(run_id).summary() == live
    board = Board(run.plan)
    board.apply(wf.get_results(run_id))
    assert replayed.summary() == live
    assert {t: s.value for t, s in replayed.states.items()} == {t: s.value for t, s in run.states.items()}
    shown = {t: ("finished" if s == "cached" else s) for t, s in board.states.items()}
    assert shown == {t: s.value for t, s in run.states.items()}
    assert {t for t, s in board.states.items() if s == "cached"} == set(live["cached_tasks"])
    return live


def test_replayed_summary_equals_live_with_failures_retries_skips_and_cache(client, tmp_path):
    wf = client.create_workflow()
    ok = wf.add_task(inc, inputs={"x": 1})
    bad = wf.add_task(boom, inputs={"x": 2})
    wf.add_task(inc, inputs={"x": bad.outputs["y"]})
    wf.add_task(flaky_once, inputs={"x": str(tmp_path / "marker")})
    first = wf.run()
    live = _replay_matches_live(wf, first)
    assert live["skipped_tasks"] and live["exception_tasks"] == [bad.task_id]
    assert any(m["type"] == "task_retry" for m in wf.get_results(first))
    resumed = wf.run(resume_from=first)   # ok and flaky_once are reused: cached
    live = _replay_matches_live(wf, resumed)
    assert ok.task_id in live["cached_tasks"]


def test_replayed_summary_equals_live_after_cancel(stopping_client):
    wf = stopping_client.create_workflow()
    s = wf.add_task(sleeper, inputs={"seconds": 30})
    wf.add_task(inc, inputs={"x": s.outputs["start"]})
    wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    for m in wf.get_results(run_id):
        if m["type"] == "start_task" and m["data"]["task_id"] == s.task_id:
            wf.cancel(run_id)
    live = _replay_matches_live(wf, run_id)
    assert live["status"] == "cancelled" and live["cancelled_tasks"], [
        (m["type"], m["data"].get("task_id"), m["data"].get("error")) for m in wf.get_results(run_id)]


# -- a run whose driver died ----------------------------------------------------------------


DRIVER = """
import sys
from maze import MaClient
from tasks_misc import inc, sleeper

client = MaClient()
wf = client.create_workflow("doomed")
wf.add_task(inc, inputs={"x": 1})
wf.add_task(sleeper, inputs={"seconds": 120})
run_id = wf.run()
print(run_id, flush=True)
wf.wait(run_id)
"""


def start_driver(script: str, path):
    """Another Python process running ``script`` with its history at ``path``; returns it and the
    run id it prints."""
    import subprocess
    import sys

    env = dict(os.environ, MAZE_HISTORY=str(path), PYTHONPATH=os.path.dirname(__file__))
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    return driver, driver.stdout.readline().strip()


def test_a_run_whose_driver_was_killed_replays_as_interrupted_and_resumes(tmp_path):
    path = tmp_path / "history.sqlite3"
    driver, run_id = start_driver(DRIVER, path)
    try:
        reader = HistoryReader(path)
        deadline = time.monotonic() + 60
        kinds: list = []
        while time.monotonic() < deadline:   # until inc finished and sleeper started
            recorded = reader.messages(run_id, values=False) if path.exists() else []
            kinds = [(m["type"], m["data"].get("task_id")) for m in recorded]
            if ("finish_task", "inc") in kinds and ("start_task", "sleeper") in kinds:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the driver did not get going: {kinds}")
    finally:
        driver.kill()
        driver.wait()

    with MaClient(history=path) as client:   # a new session, after the crash
        [run] = [r for r in client.runs() if r["run_id"] == run_id]
        assert run["status"] == "interrupted"
        messages = client.get_results(run_id)   # ends: it does not wait for a dead process
        assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["status"] == "interrupted"
        summary = client.show_results(run_id, file=open(os.devnull, "w"))
        assert summary["status"] == "interrupted" and summary["workflow_completed"] is False
        assert summary["interrupted_tasks"] == ["sleeper"] and summary["task_results"] == {"inc": {"y": 2}}
        assert client.show_graph(run_id).board.states == {"inc": "finished", "sleeper": "interrupted"}

        wf = client.create_workflow("doomed")
        wf.add_task(inc, inputs={"x": 1})
        wf.add_task(sleeper, inputs={"seconds": 0.1})
        again = wf.run(resume_from=run_id)
        assert wf.wait(again)["status"] == "completed"
        assert wf.explain(again)["inc"] == f"reused: unchanged since run {run_id}"


# -- the cache and resume see every edit a notebook makes ------------------------------------------

EDITS = {
    "a global read right after run()": ("""
X = 1
@task(inputs=["v"], outputs=["y"], cache=True)
def work(params):
    return {"y": params["v"] * X}
""", "X = 2"),
    "a class re-defined in its cell": ("""
class Scaler:
    def scale(self, v):
        return v * 2
@task(inputs=["v"], outputs=["y"], cache=True)
def work(params):
    return {"y": Scaler().scale(params["v"])}
""", "class Scaler:\n    def scale(self, v):\n        return v * 3\n"),
    "a helper held in a dict": ("""
def double(v):
    return v * 2
OPS = {"op": double}
@task(inputs=["v"], outputs=["y"], cache=True)
def work(params):
    return {"y": OPS["op"](params["v"])}
""", "def double(v):\n    return v * 3\nOPS = {'op': double}"),
    "a global read by a partial's function": ("""
import functools
F = 2
def body(params, k):
    return {"y": params["v"] * k * F}
work = task(inputs=["v"], outputs=["y"], cache=True)(functools.partial(body, k=1))
""", "F = 3"),
    "a decorator's argument": ("""
import functools
F = 2
def scaled(f):
    @functools.wraps(f)
    def wrapper(params):
        return {"y": f(params)["y"] * F}
    return wrapper
@task(inputs=["v"], outputs=["y"], cache=True)
@scaled
def work(params):
    return {"y": params["v"]}
""", "F = 3"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_the_cache_never_returns_a_result_made_before_an_edit(local_client, edit):
    cell, change = EDITS[edit]
    ns = notebook("from maze import task\n" + cell)
    wf = local_client.create_workflow()
    t = wf.add_task(ns["work"], inputs={"v": 10 + len(edit)})   # a value of its own: a cache shared by all
    first = wf.run()
    if edit.endswith("right after run()"):
        notebook(change, ns)       # before the run's start thread could look at it
    before = wf.wait(first)["task_results"][t.task_id]["y"]
    if not edit.endswith("right after run()"):
        notebook(change, ns)
    summary = wf.wait(wf.run())
    assert summary["task_results"][t.task_id] == ns["work"]({"v": 10 + len(edit)})
    assert summary["task_results"][t.task_id]["y"] != before or edit.endswith("right after run()")
    assert summary["cached_tasks"] == []


def test_two_lambdas_on_one_line_have_different_versions(local_client):
    add, mul = task(inputs=["v"], outputs=["y"], cache=True)(lambda p: {"y": p["v"] + 1}), task(inputs=["v"], outputs=["y"], cache=True)(lambda p: {"y": p["v"] * 5})
    wf = local_client.create_workflow()
    wf.add_task(add, inputs={"v": 101})
    assert wf.wait(wf.run())["task_results"]["<lambda>"] == {"y": 102}
    other = local_client.create_workflow()
    other.add_task(mul, inputs={"v": 101})
    summary = other.wait(other.run())
    assert summary["task_results"]["<lambda>"] == {"y": 505} and summary["cached_tasks"] == []


def test_an_array_changed_in_place_after_run_neither_changes_the_run_nor_poisons_the_cache(local_client):
    arr = np.ones(1000)
    total = task(inputs=["a"], outputs=["s"], cache=True)(lambda p: {"s": float(p["a"].sum()) + 0.5})
    wf = local_client.create_workflow()
    wf.add_task(total, inputs={"a": arr})
    first = wf.run()
    arr[:] = 0
    assert wf.wait(first)["task_results"]["<lambda>"] == {"s": 1000.5}
    second = wf.run()                      # zeros now: not the cached ones
    assert wf.wait(second)["task_results"]["<lambda>"] == {"s": 0.5}
    arr[:] = 1
    third = wf.wait(wf.run())              # ones again: the first run's result, rightly cached
    assert third["task_results"]["<lambda>"] == {"s": 1000.5} and third["cached_tasks"] == ["<lambda>"]


# -- live == replayed == widget board, over random runs ----------------------------------------------


@task(inputs=["mode", "marker", "up"], outputs=["y"], retries=1)
def random_step(params):
    import os as _os
    import time as _time

    mode = params["mode"]
    if mode == "slow":
        _time.sleep(0.3)
    if mode == "raise":
        raise RuntimeError("this task always fails")
    if mode == "flaky" and not _os.path.exists(params["marker"]):
        open(params["marker"], "w").close()
        raise RuntimeError("the first attempt fails")
    return {"y": 1}


def _random_workflow(client, rng, tmp_path, n=14):
    wf = client.create_workflow("random")
    made = []
    for i in range(n):
        mode = rng.choice(["ok", "ok", "ok", "slow", "raise", "flaky"])
        up = made[rng.randrange(len(made))].outputs["y"] if made and rng.random() < 0.7 else 0
        made.append(wf.add_task(random_step, inputs={"mode": mode, "marker": str(tmp_path / f"m{i}"), "up": up}))
    return wf


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_runs_live_equals_replayed_equals_board(client, tmp_path, seed):
    import random

    rng = random.Random(seed)
    wf = _random_workflow(client, rng, tmp_path)
    first = wf.run()
    if seed == 3:   # cancelled part way
        for m in wf.get_results(first):
            if m["type"] == "start_task":
                wf.cancel(first)
                break
    _replay_matches_live(wf, first, client)
    again = wf.run(resume_from=first)   # what finished is reused: cached tasks
    live = _replay_matches_live(wf, again, client)
    assert live["status"] in ("completed", "failed")
    if seed != 3:
        assert live["cached_tasks"], live


FOLLOWED = """
from maze import MaClient
from tasks_misc import inc, sleeper

with MaClient() as client:
    wf = client.create_workflow("elsewhere")
    s = wf.add_task(sleeper, inputs={"seconds": 1.5})
    wf.add_task(inc, inputs={"x": s.outputs["start"]})
    run_id = wf.run()
    print(run_id, flush=True)
    wf.wait(run_id)
"""


def test_a_run_going_on_in_another_process_is_followed_to_its_end(tmp_path):
    path = tmp_path / "history.sqlite3"
    driver, run_id = start_driver(FOLLOWED, path)
    try:
        with MaClient(backend="inline", history=path) as watcher:
            deadline = time.monotonic() + 30
            while not any(r["run_id"] == run_id for r in watcher.runs()):
                assert time.monotonic() < deadline, "the driver never recorded its run"
                time.sleep(0.1)
            widget = watcher.show_graph(run_id)             # opened while the run goes on elsewhere
            messages = watcher.get_results(run_id)          # waits for that run's end, as for a local one
            assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["status"] == "completed"
            assert [m["type"] for m in messages].count("finish_task") == 2
            widget.wait(30)
            assert widget.status == "completed" and set(widget.board.states.values()) == {"finished"}
    finally:
        driver.wait(60)


def test_what_a_reader_is_handed_can_be_changed_without_changing_the_run(tmp_path):
    with MaClient(history=tmp_path / "h.sqlite3") as c:
        wf = c.create_workflow()
        t = wf.add_task(inc, inputs={"x": 1})
        run_id = wf.run()
        summary = wf.wait(run_id)
        summary["task_results"][t.task_id]["y"] = "edited"              # a reader edits what it got
        wf.get_task_result(run_id, t.task_id)["result"]["y"] = "edited too"
        for m in wf.get_results(run_id):
            m["type"] = "seen"
            m["data"].pop("result", None)
        assert wf.wait(run_id)["task_results"][t.task_id] == {"y": 2}
        assert wf.get_task_result(run_id, t.task_id)["result"] == {"y": 2}
        assert [m["type"] for m in wf.get_results(run_id)] == ["start_task", "finish_task", "finish_workflow"]
        with pytest.raises((TypeError, AttributeError)):
            wf.run_state(run_id).messages.append({})   # the run's own list is not handed out
    with MaClient(history=tmp_path / "h.sqlite3") as later:                 # what the history kept
        assert later.run_state(run_id).summary()["task_results"][t.task_id] == {"y": 2}


def test_a_run_is_drawn_as_it_was_run_after_the_workflow_is_edited(local_client):
    wf = local_client.create_workflow()
    a = wf.add_task(inc, inputs={"x": 1})
    wf.add_task(inc, inputs={"x": a.outputs["y"]})
    first = wf.run()
    wf.wait(first)
    wf.add_task(inc, inputs={"x": 5})                                   # edited afterwards
    widget = wf.show_graph(first)
    widget.wait(30)
    assert sorted(widget.nodes) == sorted(wf.run_state(first).plan.tasks) and len(widget.nodes) == 2
    assert set(widget.states.values()) == {"finished"}
    wf.name = "renamed"
    assert wf.plan().name == "renamed"                                  # the next run carries the new name
