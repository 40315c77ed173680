"""The local backend runs what the user has now, and leaves nothing behind.

* Fresh code: a changed global, closure cell, default argument or helper is
  seen by the next run, in the same client; unchanged code is loaded once per
  worker.
* Stopping a task (timeout, cancel, close) stops the processes it started.
* Shared memory is private; nothing of a killed driver stays (no ``/dev/shm``
  file, no process); closing one client leaves another's values alone.
* A large constant input is pickled once per run however many tasks take it.

All with real worker processes.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from maze import MaClient, task
from maze.backends import _packing
from maze.backends.local import LocalBackend

SHM = Path(_packing._SHM_DIR)


@pytest.fixture(scope="module")
def client():
    with MaClient(backend="joblib", history=None) as c:
        yield c


def results(wf, run_id: str | None = None) -> dict[str, Any]:
    summary = wf.wait(run_id or wf.run(), timeout=60)
    assert summary["workflow_completed"], summary
    return summary["task_results"]


def in_main(source: str) -> dict[str, Any]:
    """Run ``source`` as a notebook cell: in a ``__main__`` namespace, so its functions travel by value."""
    namespace: dict[str, Any] = {"__name__": "__main__", "task": task}
    exec(textwrap.dedent(source), namespace)
    return namespace


def eventually(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- fresh code on every run --------------------------------------------------------------


def test_a_changed_global_is_seen_by_every_task_of_the_next_run(client):
    cell = in_main('''
        @task(outputs=["y"])
        def read_global(params):
            return {"y": FACTOR}
    ''')
    cell["FACTOR"] = 1
    wf = client.create_workflow()
    for _ in range(6):  # several tasks, so that several workers hold the code
        wf.add_task(cell["read_global"])
    assert {r["y"] for r in results(wf).values()} == {1}
    cell["FACTOR"] = 2
    assert {r["y"] for r in results(wf).values()} == {2}          # the same workflow
    other = client.create_workflow()
    other.add_task(cell["read_global"])
    assert {r["y"] for r in results(other).values()} == {2}       # a new workflow
    cell["FACTOR"] = 3
    assert {r["y"] for r in results(other).values()} == {3}
    assert {r["y"] for r in results(wf).values()} == {3}


def test_a_redefined_helper_is_seen_by_the_task_that_calls_it(client):
    cell = in_main('''
        def helper():
            return "old"

        @task(outputs=["y"])
        def calls_helper(params):
            return {"y": helper()}
    ''')
    wf = client.create_workflow()
    t = wf.add_task(cell["calls_helper"])
    assert results(wf)[t.task_id]["y"] == "old"
    exec("def helper():\n    return 'new'\n", cell)   # the user edits and reruns the helper's cell
    assert results(wf)[t.task_id]["y"] == "new"


def test_a_changed_closure_cell_is_seen(client):
    factor = 1

    def scaled(params):
        return {"y": params["x"] * factor}

    wf = client.create_workflow()
    t = wf.add_task(task(inputs=["x"], outputs=["y"])(scaled), inputs={"x": 10})
    assert results(wf)[t.task_id]["y"] == 10
    factor = 2
    assert results(wf)[t.task_id]["y"] == 20


def test_a_changed_nonlocal_is_seen(client):
    state = 0

    def bump() -> None:
        nonlocal state
        state += 1

    def read(params):
        return {"y": state}

    wf = client.create_workflow()
    t = wf.add_task(task(outputs=["y"])(read))
    assert results(wf)[t.task_id]["y"] == 0
    bump()
    assert results(wf)[t.task_id]["y"] == 1


def test_a_changed_default_argument_is_seen(client):
    def configured(params, config={"mode": "fast"}):  # noqa: B006 - the mutable default is the point
        return {"y": config["mode"]}

    wf = client.create_workflow()
    t = wf.add_task(task(outputs=["y"])(configured))
    assert results(wf)[t.task_id]["y"] == "fast"
    configured.__defaults__[0]["mode"] = "exact"
    assert results(wf)[t.task_id]["y"] == "exact"
    configured.__defaults__ = ({"mode": "replaced"},)
    assert results(wf)[t.task_id]["y"] == "replaced"


def test_a_redefined_task_function_is_run(client):
    first = in_main('''
        @task(outputs=["y"])
        def version(params):
            return {"y": 1}
    ''')["version"]
    second = in_main('''
        @task(outputs=["y"])
        def version(params):
            return {"y": 2}
    ''')["version"]
    for func, expected in ((first, 1), (second, 2), (first, 1)):
        wf = client.create_workflow()
        t = wf.add_task(func)
        assert results(wf)[t.task_id]["y"] == expected


class CountsLoads:
    """Appends a line to ``path`` each time it is unpickled (loaded in a worker)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_loaded, (self.path,))


def _loaded(path: str) -> CountsLoads:
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return CountsLoads(path)


def test_unchanged_code_is_loaded_once_per_worker(client, tmp_path):
    log = tmp_path / "loads"
    cell = in_main('''
        import os

        @task(outputs=["pid"])
        def where(params):
            TOKEN  # a global: it travels with the code and logs each load
            return {"pid": os.getpid(), "version": VERSION}
    ''')
    cell["TOKEN"], cell["VERSION"] = CountsLoads(str(log)), 1
    wf = client.create_workflow()
    for _ in range(20):
        wf.add_task(cell["where"])
    pids: set[int] = set()
    for version in (1, 1, 2):
        cell["VERSION"] = version
        before = len(log.read_text().split()) if log.exists() else 0
        ran = results(wf).values()
        assert {r["version"] for r in ran} == {version}
        loads = log.read_text().split()[before:]
        assert len(loads) == len(set(loads))                     # never twice in one worker in a run
        if version == 1 and pids:                                # unchanged: only workers new to it load it
            assert set(map(int, loads)) <= {r["pid"] for r in ran} - pids
        pids |= {r["pid"] for r in ran}


# -- stopping a task stops what it started ----------------------------------------------------


# By value (as from a notebook), so that a fresh worker need not import this module within the timeout.
starts_a_child = in_main('''
    import os, subprocess, time

    @task(inputs=["pidfile"], outputs=["never"])
    def starts_a_child(params):
        child = subprocess.Popen(["sleep", "300"])
        with open(params["pidfile"] + ".tmp", "w") as fh:
            fh.write(str(child.pid))
        os.rename(params["pidfile"] + ".tmp", params["pidfile"])
        time.sleep(300)
        return {"never": True}
''')["starts_a_child"]


def child_of(pidfile: Path) -> int:
    assert eventually(pidfile.exists, within=20), "the task did not start its child"
    return int(pidfile.read_text())


def assert_stopped(child: int) -> None:
    try:
        assert eventually(lambda: gone(child), within=10), f"the task's child {child} outlived its task"
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_timeout_stops_the_tasks_children(client, tmp_path):
    wf = client.create_workflow()
    t = wf.add_task(starts_a_child, inputs={"pidfile": str(tmp_path / "child")}, timeout=3)
    summary = wf.wait(wf.run(), timeout=30)
    assert summary["exception_tasks"] == [t.task_id]
    failure = next(m["data"] for m in wf.get_results(summary["run_id"]) if m["type"] == "task_exception")
    assert failure["error_type"] == "TimeoutError"
    assert_stopped(child_of(tmp_path / "child"))


def test_cancel_stops_the_tasks_children(client, tmp_path):
    wf = client.create_workflow()
    wf.add_task(starts_a_child, inputs={"pidfile": str(tmp_path / "child")})
    run_id = wf.run()
    child = child_of(tmp_path / "child")
    wf.cancel(run_id)
    assert wf.wait(run_id, timeout=30)["status"] == "cancelled"
    assert_stopped(child)


def test_close_stops_the_tasks_children(tmp_path):
    c = MaClient(backend="joblib", history=None)
    try:
        wf = c.create_workflow()
        wf.add_task(starts_a_child, inputs={"pidfile": str(tmp_path / "child")})
        wf.run()
        child = child_of(tmp_path / "child")
    finally:
        c.close()
    assert_stopped(child)


# -- shared memory ----------------------------------------------------------------------------


@task(inputs=["mb"], outputs=["array"])
def make_array(params):
    return {"array": np.ones(params["mb"] * 2**20 // 8)}


@task(inputs=["array", "constant"], outputs=["modes"])
def shm_modes(params):
    # The files of our driver now in shared memory: the input's and the constant's, at least.
    prefix = f"{_packing.FILE_PREFIX}{os.getppid()}-"
    return {"modes": [stat.S_IMODE(p.stat().st_mode) for p in SHM.iterdir() if p.name.startswith(prefix)]}


def test_shared_memory_files_are_private(tmp_path):
    old = os.umask(0)  # what a permissive umask would let through
    try:
        with MaClient(backend="joblib", history=None) as c:
            wf = c.create_workflow()
            a = wf.add_task(make_array, inputs={"mb": 2})
            t = wf.add_task(shm_modes, inputs={"array": a.outputs["array"], "constant": np.zeros(2**18)})
            modes = results(wf)[t.task_id]["modes"]
    finally:
        os.umask(old)
    assert len(modes) >= 2 and set(modes) == {0o600}


DRIVER = textwrap.dedent('''
    import subprocess, time
    import numpy as np
    from maze import MaClient, task

    @task(outputs=["array"])
    def big(params):
        return {"array": np.ones(100 * 2**20 // 8)}

    @task(inputs=["array"], outputs=["total"])
    def slow(params):
        subprocess.Popen(["sleep", "300"])
        time.sleep(300)
        return {"total": float(params["array"].sum())}

    client = MaClient(backend="joblib", history=None)
    wf = client.create_workflow()
    a = wf.add_task(big)
    wf.add_task(slow, inputs={"array": a.outputs["array"]})
    wf.wait(wf.run())
''')


def test_a_killed_driver_leaves_no_shared_memory_and_no_worker(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    prefix = f"{_packing.FILE_PREFIX}{driver.pid}-"

    def files() -> list[str]:
        return [name for name in os.listdir(SHM) if name.startswith(prefix)]

    def descendants() -> dict[int, str]:
        found = {}
        for p in psutil.Process(driver.pid).children(recursive=True):
            try:
                found[p.pid] = p.name()
            except psutil.NoSuchProcess:
                pass
        return found

    try:
        # The array is in shared memory, and the task reading it has started a child of its own.
        assert eventually(lambda: bool(files()) and "sleep" in descendants().values(), within=30)
        left = list(descendants())   # workers, and the task's child
    finally:
        driver.kill()
        driver.wait()
    assert eventually(lambda: not files(), within=5), f"left in shared memory: {files()}"
    assert eventually(lambda: all(gone(pid) for pid in left), within=5), "a process outlived its driver"


def test_a_new_backend_removes_the_files_of_dead_drivers_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not psutil.pid_exists(dead.pid)
    namespace = _packing._PID_NAMESPACE
    orphan = SHM / f"{_packing.FILE_PREFIX}{dead.pid}-{namespace}-leftover"
    alive = SHM / f"{_packing.FILE_PREFIX}{os.getpid()}-{namespace}-in-use"
    elsewhere = SHM / f"{_packing.FILE_PREFIX}{dead.pid}-1{namespace}-another-container"  # its pid is not ours
    for path in (orphan, alive, elsewhere):
        path.write_bytes(b"x")
    try:
        LocalBackend(prestart=False).close()
        assert not orphan.exists()
        assert alive.exists() and elsewhere.exists()
    finally:
        for path in (orphan, alive, elsewhere):
            path.unlink(missing_ok=True)


@task(inputs=["array"], outputs=["total"])
def total(params):
    return {"total": float(params["array"].sum())}


@task(inputs=["seconds"], outputs=[])
def pause(params):
    time.sleep(params["seconds"])
    return {}


def test_closing_one_client_leaves_another_clients_shared_memory(client):
    wf = client.create_workflow()
    a = wf.add_task(make_array, inputs={"mb": 2})
    wait = wf.add_task(pause, inputs={"seconds": 1.0})
    wf.add_edge(a, wait)
    t = wf.add_task(total, inputs={"array": a.outputs["array"]})
    wf.add_edge(wait, t)  # reads the array only after the other client has closed
    run_id = wf.run()
    for message in wf.get_results(run_id):
        if message["type"] == "finish_task" and message["data"]["task_id"] == a.task_id:
            break
    MaClient(backend="joblib", history=None).close()
    assert results(wf, run_id)[t.task_id]["total"] == 2 * 2**20 // 8


# -- constant inputs ----------------------------------------------------------------------------


class CountsPickles:
    """A large value that appends to ``path`` the file that pickles it, each time it is pickled."""

    def __init__(self, path: str, payload: bytes = bytes(1 << 20)) -> None:
        self.path, self.payload = path, payload

    def __reduce__(self) -> tuple[Any, ...]:
        with open(self.path, "a") as fh:
            fh.write(os.path.basename(sys._getframe(1).f_code.co_filename) + "\n")
        return (CountsPickles, (self.path, self.payload))


@task(inputs=["value"], outputs=["kind"])
def kind_of(params):
    return {"kind": type(params["value"]).__name__}


def test_a_large_constant_is_pickled_once_per_run(client, tmp_path):
    log = tmp_path / "pickles"
    value = CountsPickles(str(log))
    wf = client.create_workflow()
    for _ in range(10):
        wf.add_task(kind_of, inputs={"value": value})
    for run in (1, 2):
        assert {r["kind"] for r in results(wf).values()} == {"CountsPickles"}
        # Other parts of maze may pickle it too (e.g. to fingerprint the inputs): count the backend's.
        assert log.read_text().split().count("_packing.py") == run


@task(inputs=["array", "i"], outputs=["total"])
def scaled_total(params):
    params["array"] *= params["i"]  # in place: each task's copy is its own
    return {"total": float(params["array"].sum())}


def test_a_large_constant_fans_out_through_shared_memory(client):
    array = np.ones(50 * 2**20 // 8)
    wf = client.create_workflow()
    tasks = [wf.add_task(scaled_total, inputs={"array": array, "i": i}) for i in range(20)]
    started = time.perf_counter()
    ran = results(wf)
    print(f"20 tasks of a 50 MB constant: {time.perf_counter() - started:.2f} s")
    assert [ran[t.task_id]["total"] for t in tasks] == [float(i * array.size) for i in range(20)]
    assert (array == 1).all()
    owner = f"{_packing.FILE_PREFIX}{client.backend._owner}-"
    assert eventually(lambda: not [n for n in os.listdir(SHM) if n.startswith(owner)], within=2)


@task(inputs=["n"], outputs=["text"])
def long_text(params):
    return {"text": "é" * params["n"]}


@task(inputs=["text", "blob", "prefix"], outputs=["chars", "blob_bytes", "files"])
def read_both(params):
    import os as _os

    from maze.backends import _packing as packing
    files = [n for n in _os.listdir(packing._SHM_DIR) if n.startswith(params["prefix"])]
    return {"chars": len(params["text"]), "blob_bytes": len(params["blob"]), "files": len(files)}


def test_large_values_that_pickle_in_band_travel_through_shared_memory(client):
    """``bytes``, ``str`` and lists pickle in band: the pickle itself goes to the file, not in every call."""
    owner = f"{_packing.FILE_PREFIX}{client.backend._owner}-"
    blob = bytes(range(256)) * 8192   # 2 MB
    wf = client.create_workflow()
    text = wf.add_task(long_text, inputs={"n": 2**20})   # 2 MB in UTF-8
    readers = [wf.add_task(read_both, inputs={"text": text.outputs["text"], "blob": blob, "prefix": owner})
               for _ in range(3)]
    ran = results(wf)
    for r in readers:
        # both values are files while the readers run: the constant's and the upstream output's
        assert ran[r.task_id] == {"chars": 2**20, "blob_bytes": len(blob), "files": 2}
    assert ran[text.task_id]["text"] == "é" * 2**20
    assert eventually(lambda: not [n for n in os.listdir(SHM) if n.startswith(owner)], within=2)


@task(inputs=["n"], outputs=["array"])
def small_array(params):
    return {"array": np.ones(params["n"])}


def test_a_task_may_change_a_small_array_input_in_place_and_no_one_else_sees_it(client):
    """Under 1 MB an array travels on the socket; the task still gets its own, writable copy."""
    constant = np.ones(12_500)   # 100 KB
    wf = client.create_workflow()
    made = wf.add_task(small_array, inputs={"n": 12_500})
    tasks = [wf.add_task(scaled_total, inputs={"array": source, "i": i})
             for i in (2, 3) for source in (constant, made.outputs["array"])]
    ran = results(wf)
    assert [ran[t.task_id]["total"] for t in tasks] == [2 * 12_500.0] * 2 + [3 * 12_500.0] * 2
    assert (constant == 1).all() and (ran[made.task_id]["array"] == 1).all()
    assert ran[made.task_id]["array"].flags.writeable   # the result handed back is the caller's to change


def test_a_constant_mutated_between_runs_is_sent_anew(client):
    values = [1]
    wf = client.create_workflow()

    def count(params):
        return {"n": len(params["v"])}

    t = wf.add_task(task(inputs=["v"], outputs=["n"])(count), inputs={"v": values})
    assert results(wf)[t.task_id]["n"] == 1
    values.append(2)
    assert results(wf)[t.task_id]["n"] == 2


def test_large_values_go_where_maze_shm_dir_says_and_are_removed(tmp_path):
    """Without a /dev/shm (macOS) or with a small one (containers), values travel through another directory."""
    shared = tmp_path / "shm"
    shared.mkdir(mode=0o700)
    script = textwrap.dedent(f"""
        import os, numpy as np
        from maze import MaClient, task

        @task(inputs=["n"], outputs=["a"])
        def make(params):
            return {{"a": np.arange(params["n"], dtype=np.float64)}}

        @task(inputs=["a"], outputs=["total", "files"])
        def total(params):
            return {{"total": float(params["a"].sum()), "files": len(os.listdir({str(shared)!r}))}}

        with MaClient(history=None) as client:
            wf = client.create_workflow()
            a = wf.add_task(make, inputs={{"n": 1_000_000}})   # 8 MB: through shared memory
            t = wf.add_task(total, inputs={{"a": a.outputs["a"]}})
            r = wf.wait(wf.run())["task_results"][t.task_id]
            print(r["total"], r["files"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, MAZE_SHM_DIR=str(shared)))
    assert out.returncode == 0, out.stderr
    total, files = out.stdout.split()
    assert float(total) == float(sum(range(1_000_000)))
    assert int(files) >= 1                      # the array was in that directory while the task read it
    assert list(shared.iterdir()) == []         # and nothing is left once the client closed
