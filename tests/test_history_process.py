"""The history writer process: what crosses to it, and what happens when it or its driver dies."""

from __future__ import annotations

import enum
import json
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maze import MaClient
from maze.core.history import HistoryReader, HistoryWriter, plan_of
from maze.core.history_process import unpack
from maze.core.history_store import start_time
from maze.core.history_values import json_text
from maze.core.messages import MessageType

WF, RUN = "wf-process", "run-process"


def plan() -> Any:
    tasks = [{"id": "t", "name": "t", "resources": {"cpu": 1, "cpu_mem": 0, "gpu": 0, "gpu_mem": 0}, "upstream": [],
              "inputs": [], "outputs": ["y"]}]
    return plan_of({"name": "process", "tasks": tasks, "edges": []}, WF)


def msg(kind: MessageType, **data: Any) -> dict[str, Any]:
    return {"type": kind.value, "data": {"workflow_id": WF, "run_id": RUN, "task_id": "t", "task_name": "t",
                                         "time": 1.0, **data}}


def gone(pid: int, within: float = 30) -> bool:
    """Whether process ``pid`` has ended (a zombie counts) before ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while start_time(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def finishes(call: Any, within: float = 60) -> bool:
    """Whether ``call()`` returns (on a thread) before ``within`` seconds pass: a guard against a hang."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(within)
    return not thread.is_alive()


class Mkdir:
    """Unpickling this creates a directory: it tells whether anything loaded a pickle of it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.target),)

    def __repr__(self) -> str:
        return f"Mkdir({self.target.name})"


class Colour(enum.IntEnum):
    RED = 1


class Tag(str):
    """A str subclass: JSON writes it as its text."""


# -- what crosses to the writer ------------------------------------------------------------------------

ODD_DATA = {
    "path": Path("/x/y"),
    "enum": MessageType.START_TASK,          # a str enum: JSON writes its value
    "colour": Colour.RED,                    # an int enum: JSON writes its number
    "tag": Tag("t"),
    "float64": np.float64(1.5),
    "array": np.arange(3),
    "nested": {"tuple": (1, Path("/z")), "set": {"only"}, Colour.RED: "key", (1, 2): "pair"},
    "complex": 1j,
}


def test_data_of_any_type_is_stored_as_the_driver_would_have_encoded_it(tmp_path):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan())
    writer.message(RUN, 1, msg(MessageType.START_TASK, **ODD_DATA))
    writer.flush()  # through the writer process (a writer closed before it started writes in a thread)
    assert writer.writer_pid is not None
    writer.close()

    [stored] = HistoryReader(path).messages(RUN)
    expected = json.loads(json_text(msg(MessageType.START_TASK, **ODD_DATA)["data"]))
    assert stored["data"] == expected
    assert stored["data"]["colour"] == 1 and stored["data"]["tag"] == "t" and stored["data"]["path"] == "PosixPath('/x/y')"
    assert stored["data"]["nested"]["1"] == "key" and stored["data"]["nested"]["(1, 2)"] == "pair"


def test_the_writer_never_loads_a_pickle_of_the_users_objects(tmp_path):
    path, in_data, in_result = tmp_path / "h.sqlite3", tmp_path / "in-data", tmp_path / "in-result"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan())
    writer.message(RUN, 1, msg(MessageType.START_TASK, where=Mkdir(in_data)))
    writer.message(RUN, 2, msg(MessageType.FINISH_TASK, result={"y": Mkdir(in_result)}, duration=0.1))
    writer.flush()
    assert writer.writer_pid is not None  # it was a process of its own
    writer.close()
    assert not in_data.exists() and not in_result.exists()

    reader = HistoryReader(path)
    start, finish = reader.messages(RUN, values=False)
    assert start["data"]["where"] == "Mkdir(in-data)"
    assert finish["data"]["result"] == {"y": "<Mkdir, stored in the history>"}
    reader.messages(RUN)  # values=True: the driver's own pickle of the value is what was stored
    assert in_result.is_dir() and not in_data.exists()


def test_the_writer_reads_builtin_values_and_its_stand_ins_only(tmp_path):
    ran = tmp_path / "ran"
    with pytest.raises(pickle.UnpicklingError, match="builtin values, Kept and Foreign only, not posix.mkdir"):
        unpack(pickle.dumps([Mkdir(ran)]))
    assert not ran.exists()


# -- the writer process's life ---------------------------------------------------------------------------

def test_the_writer_process_starts_lazily_and_leaves_nothing_behind(tmp_path):
    from tasks_misc import inc

    path = tmp_path / "h.sqlite3"
    with MaClient(backend="inline", history=path) as client:
        assert client._history.writer_pid is None  # creating a client starts no process
        wf = client.create_workflow("life")
        wf.add_task(inc, inputs={"x": 1})
        run_id = wf.run()
        wf.wait(run_id)
        assert [r["status"] for r in client.runs()] == ["completed"]
        pid = client._history.writer_pid
        assert pid is not None and pid != os.getpid()
        # in a session of its own: a Ctrl-C in the driver's terminal does not reach it; and in the background
        assert os.getsid(pid) != os.getsid(0)
        assert os.getpriority(os.PRIO_PROCESS, pid) >= 10
    assert start_time(pid) is None  # ended and reaped by close()
    assert sorted(os.listdir(tmp_path)) == ["h.sqlite3"]
    assert [r["run_id"] for r in HistoryReader(path).runs()] == [run_id]


def test_a_killed_writer_stops_neither_the_run_nor_flush_nor_close(tmp_path, caplog):
    from tasks_misc import inc, sleeper

    path = tmp_path / "h.sqlite3"
    client = MaClient(history=path)
    try:
        wf = client.create_workflow("survivor")
        first = wf.add_task(sleeper, inputs={"seconds": 0.5})
        last = wf.add_task(inc, inputs={"x": 1})
        wf.add_edge(first, last)
        run_id = wf.run()
        client._history.flush()  # the run's row is in the file
        with caplog.at_level(logging.WARNING, logger="maze"):
            os.kill(client._history.writer_pid, signal.SIGKILL)
            assert wf.wait(run_id)["workflow_completed"]
            # returns though no writer will answer (its own timeout is far beyond the guard's)
            assert finishes(lambda: client._history.flush(timeout=600))
            assert [r["run_id"] for r in client.runs()] == [run_id]
            assert wf.get_task_result(wf.run(), last.task_id)["result"] == {"y": 2}  # later runs go on too
            assert finishes(client.close)
        [warning] = [r for r in caplog.records if r.name == "maze"]   # not other libraries' late records
        assert str(path) in warning.getMessage() and "is gone" in warning.getMessage()
        assert "recorded no further; they go on" in warning.getMessage()
    finally:
        client.close()


DRIVER = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from maze.core import messages
    from maze.core.history import HistoryWriter, plan_of

    writer = HistoryWriter(Path(sys.argv[1]), log_head=1, log_tail=1)
    run = {"workflow_id": "wf", "run_id": "run-k"}
    writer.run_started("run-k", plan_of({"name": "k", "tasks": [], "edges": []}, "wf"))
    for i in range(3):
        writer.message("run-k", i + 1, messages.task_log(run, "t", "t", at=float(i), stream="stdout",
                                                        text=f"line {i}\\n"))
    writer.flush()  # handed over and committed, but for the tail its log bound holds back
    holder = 0
    if sys.argv[2] == "fork":
        holder = os.fork()
        if holder == 0:  # a child that inherits the pipe to the writer and keeps it open
            time.sleep(120)
            os._exit(0)
    print(writer.writer_pid, holder, flush=True)
    time.sleep(120)
''')


@pytest.mark.parametrize("pipe", ["closed", "fork"])
def test_a_driver_killed_with_sigkill_takes_its_writer_along(tmp_path, pipe):
    path = tmp_path / "h.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(path), pipe], stdout=subprocess.PIPE, text=True)
    writer_pid, holder = map(int, proc.stdout.readline().split())
    try:
        assert start_time(writer_pid) is not None
        proc.kill()  # SIGKILL: nothing of the driver runs any more
        proc.wait()
        assert gone(writer_pid)  # with "fork", the pipe stays open: the writer sees its parent change
    finally:
        proc.stdout.close()
        if holder:
            os.kill(holder, signal.SIGKILL)

    messages = HistoryReader(path).messages("run-k")
    assert [m["data"].get("text", m["type"]) for m in messages] == [
        "line 0\n", "[maze: 1 lines of output not kept in the history]\n", "line 2\n", "finish_workflow"]
    assert messages[-1]["data"]["status"] == "interrupted"
    assert messages[-1]["data"]["interrupted"].startswith(f"the process {proc.pid} on ")  # the driver owned it
    assert sorted(os.listdir(tmp_path)) == ["h.sqlite3"]  # the writer closed its database: no -wal, no -shm


def test_a_writer_closed_before_it_started_writes_in_a_thread(tmp_path, monkeypatch):
    from maze.core import history

    monkeypatch.setattr(history, "_LATEST_S", 60.0)   # a slow moment here must not count as "not closed soon"
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan())
    writer.message(RUN, 1, msg(MessageType.FINISH_TASK, result={"y": (1, 2)}, duration=0.1))
    writer.close()  # a short script: no process is started just to write this
    assert writer.writer_pid is None
    assert HistoryReader(path).messages(RUN)[0]["data"]["result"] == {"y": (1, 2)}


# -- when no writer process can be started ---------------------------------------------------------------

@pytest.mark.parametrize("executable", ["", "/bin/true"])
def test_without_a_writer_process_a_thread_writes(tmp_path, monkeypatch, caplog, executable):
    path = tmp_path / "h.sqlite3"
    monkeypatch.setattr(sys, "executable", executable)
    with caplog.at_level(logging.WARNING, logger="maze"):
        writer = HistoryWriter(path)
        writer.run_started(RUN, plan())
        writer.message(RUN, 1, msg(MessageType.FINISH_TASK, result={"y": (1, 2)}, duration=0.1))
        writer.flush()
        assert writer.writer_pid is None
        assert HistoryReader(path).messages(RUN)[0]["data"]["result"] == {"y": (1, 2)}
        writer.close()
    if executable:
        [warning] = [r for r in caplog.records if r.name == "maze"]   # not other libraries' late records
        assert ("could not start its run history writer process (/bin/true did not answer; it ended with exit "
                "code 0)") in warning.getMessage()
    else:
        assert [r for r in caplog.records if r.name == "maze"] == []


def test_what_comes_for_a_run_already_marked_interrupted_is_dropped(tmp_path):
    path = tmp_path / "h.sqlite3"
    writer = HistoryWriter(path)
    writer.run_started(RUN, plan())
    writer.message(RUN, 1, msg(MessageType.START_TASK))
    writer.flush()
    db = sqlite3.connect(path)
    with db:  # what a reader does once the driver is dead: its writer may still be committing its last words
        db.execute("UPDATE runs SET status = 'interrupted'")
        db.execute("INSERT INTO messages VALUES (?, 2, 'finish_workflow', NULL, '{}')", (RUN,))
    db.close()
    writer.message(RUN, 2, msg(MessageType.FINISH_TASK, result={"y": 1}, duration=0.1))
    writer.message(RUN, 3, {"type": "finish_workflow", "data": {"workflow_id": WF, "run_id": RUN,
                                                                "status": "completed"}})
    writer.close()
    reader = HistoryReader(path)
    assert [r["status"] for r in reader.runs()] == ["interrupted"]
    assert [m["type"] for m in reader.messages(RUN)] == ["start_task", "finish_workflow"]
