"""A task from a module the user edits and reloads runs its new code on every backend, never the old one.

Such a task travels by name, and workers outlive runs: each checks its copy of
the module (and of the user's modules it names) against the driver's, and
reloads it if it differs (:mod:`maze.core.stamps`).
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import MODULES

TASK = textwrap.dedent('''
    from maze import task
    {imports}

    @task(inputs=["x"], outputs=["answer"])
    def answer(params):
        return {{"answer": {body}}}
''')
HELPER = "def value():\n    return {value}\n"


def write(name: str, text: str) -> None:
    """Write a module's file so that a reload sees it changed (the bytecode cache compares mtime and size)."""
    path = Path(MODULES) / f"{name}.py"
    later = max(time.time(), path.stat().st_mtime if path.exists() else 0) + 2
    path.write_text(text)
    os.utime(path, (later, later))


def answers(client, func, n: int = 4) -> list:
    workflow = client.create_workflow()
    tasks = [workflow.add_task(func, inputs={"x": i}) for i in range(n)]
    summary = workflow.wait(workflow.run())
    assert summary["workflow_completed"], [workflow.get_task_result(summary["run_id"], t.task_id) for t in tasks]
    return sorted(summary["task_results"][t.task_id]["answer"] for t in tasks)


def fresh(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_an_edited_and_reloaded_task_module_runs_its_new_code(client):
    name = fresh("edited")
    write(name, TASK.format(imports="", body="1"))
    module = importlib.import_module(name)
    assert answers(client, module.answer) == [1] * 4
    for version in (22, 333):
        write(name, TASK.format(imports="", body=str(version)))
        module = importlib.reload(module)
        assert answers(client, module.answer) == [version] * 4


def test_an_edited_helper_module_reloaded_with_the_task_module_runs_its_new_code(client):
    helper, name = fresh("helper"), fresh("uses_helper")
    write(helper, HELPER.format(value=1))
    write(name, TASK.format(imports=f"from {helper} import value", body="value()"))
    module = importlib.import_module(name)
    assert answers(client, module.answer) == [1] * 4
    write(helper, HELPER.format(value=22))
    importlib.reload(sys.modules[helper])   # what %autoreload does: the helper, then the modules using it
    module = importlib.reload(module)
    assert answers(client, module.answer) == [22] * 4


@pytest.mark.parametrize("stopping_client", ["joblib", "ray"], indirect=True)
def test_a_module_edited_but_not_reloaded_in_the_driver_fails_its_tasks_saying_so(stopping_client):
    name = fresh("not_reloaded")
    write(name, TASK.format(imports="", body="1"))
    module = importlib.import_module(name)
    write(name, TASK.format(imports="", body="22"))   # the workers have not imported it yet: they find this
    workflow = stopping_client.create_workflow()
    t = workflow.add_task(module.answer, inputs={"x": 0})
    run_id = workflow.run()
    summary = workflow.wait(run_id)
    assert summary["exception_tasks"] == [t.task_id]
    error = workflow.get_task_result(run_id, t.task_id)["error"]
    assert "StaleCodeError" in error and repr(name) in error and "importlib.reload" in error


def test_a_stamp_follows_code_not_data():
    from maze.core.stamps import module_stamp, stamps

    name = fresh("stamped")
    write(name, textwrap.dedent('''
        import json
        CACHE = {}

        class Scaler:
            def scale(self, x):
                return 2 * x

        def helper(x):
            return Scaler().scale(x)
    ''') + TASK.format(imports="", body="helper(params['x'])"))
    module = importlib.import_module(name)
    before = module_stamp(module)
    module.CACHE["filled"] = list(range(100))    # data, as a task's cache fills it: the same stamp
    assert module_stamp(module) == before
    assert stamps(module.answer).modules == ((name, before),)   # json is installed: it is not followed
    module.Scaler.scale = lambda self, x: 3 * x    # code: another stamp
    assert module_stamp(module) != before


def test_a_driver_run_with_python_O_runs_tasks_whose_module_has_asserts(tmp_path):
    # ``-O`` strips asserts from the driver's byte code, not from a worker's: the stamps cannot be
    # compared there, and the task runs as it did before stamps.
    (tmp_path / "asserting.py").write_text(TASK.format(imports="", body="params['x'] + 1") +
                                           "\n\ndef check(x):\n    assert x >= 0\n    return x\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from maze import MaClient
        import asserting
        with MaClient(history=None) as client:
            wf = client.create_workflow()
            t = wf.add_task(asserting.answer, inputs={{"x": 1}})
            summary = wf.wait(wf.run())
            print(summary["status"], summary["task_results"][t.task_id]["answer"])
    """)
    import subprocess

    proc = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["completed", "2"], proc.stderr
