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


def load(name: str):
    """Import the module, or reload it (as the user would after an edit)."""
    return importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)


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


def test_going_back_to_an_earlier_version_runs_that_version(client):
    # A worker keeps the task it unpickled, by content: version 1 comes back as the same bytes, after
    # version 22 was loaded into the same module.
    helper, name = fresh("helper"), fresh("back_and_forth")
    write(name, TASK.format(imports=f"import {helper}", body=f"{helper}.value()"))
    for version in (1, 22, 1, 22, 1):
        write(helper, HELPER.format(value=version))
        load(helper)
        assert answers(client, load(name).answer) == [version] * 4


EDITS = {
    "a constant": ("K = {v}\n", "K"),
    "a default argument": ("def f(x={v}):\n    return x\n", "f()"),
    "a decorated helper": ("import functools\n\ndef deco(fn):\n    @functools.wraps(fn)\n    def inner():\n"
                           "        return fn()\n    return inner\n\n@deco\ndef f():\n    return {v}\n", "f()"),
    "a function in a dict": ("HANDLERS = {{'f': lambda: {v}}}\n", "HANDLERS['f']()"),
    "an object's method": ("class C:\n    def get(self):\n        return {v}\n\nINSTANCE = C()\n", "INSTANCE.get()"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_any_edit_of_the_file_reaches_the_workers(client, edit):
    source, expression = EDITS[edit]
    name = fresh("edit")
    for version in (1, 22):
        write(name, source.format(v=version) + TASK.format(imports="", body=expression))
        assert answers(client, load(name).answer, n=2) == [version] * 2


def test_a_helper_imported_inside_the_task_or_as_a_constant_is_followed(client):
    helper, name = fresh("helper"), fresh("imports_inside")
    write(name, textwrap.dedent(f'''
        from maze import task
        from {helper} import CONST

        @task(inputs=["x"], outputs=["answer"])
        def answer(params):
            from {helper} import value
            return {{"answer": [CONST, value()]}}
    '''))
    for version in (1, 22):
        write(helper, HELPER.format(value=version) + f"CONST = {version}\n")
        load(helper)
        assert answers(client, load(name).answer, n=2) == [[version, version]] * 2


def test_a_helper_reloaded_for_one_task_module_is_seen_by_the_other(client):
    # A worker that reloads the helper for a task of one module must also reload the other module
    # that imported the helper's old function, when a task of that one comes next.
    helper, first, second = fresh("helper"), fresh("first"), fresh("second")
    for name in (first, second):
        write(name, TASK.format(imports=f"from {helper} import value", body="value()"))
    for version in (1, 22):
        write(helper, HELPER.format(value=version))
        load(helper)
        modules = [load(first), load(second)]
        assert answers(client, modules[0].answer) == [version] * 4
        assert answers(client, modules[1].answer) == [version] * 4


def test_a_module_edited_but_not_reloaded_runs_as_its_file_is_now(client):
    # What the driver holds cannot travel by name: every worker loads the file as it is at run().
    name = fresh("not_reloaded")
    write(name, TASK.format(imports="", body="1"))
    module = load(name)
    assert answers(client, module.answer) == [1] * 4
    write(name, TASK.format(imports="", body="22"))
    inline = type(client.backend).__name__ == "InlineBackend"   # runs the driver's own function
    assert answers(client, module.answer) == [1 if inline else 22] * 4


def test_state_the_code_sets_at_run_time_raises_no_alarm(client):
    # A global a function binds when first called (here, by the driver itself), and a class of one
    # module that another module patches when imported: neither is in a file's text.
    target, patcher, name = fresh("target"), fresh("patcher"), fresh("lazy")
    write(target, "class K:\n    def f(self):\n        return 0\n")
    write(patcher, f"from {target} import K\n\ndef _better(self):\n    return 1\n\nK.f = _better\n")
    write(name, textwrap.dedent(f'''
        from maze import task
        from {target} import K
        import {patcher}
        _impl = None

        def get():
            global _impl
            if _impl is None:
                def _impl():
                    return 2
            return _impl()

        @task(inputs=["x"], outputs=["answer"])
        def answer(params):
            return {{"answer": K().f() + get()}}
    '''))
    module = load(name)
    assert module.answer({"x": 0}) == {"answer": 3}
    assert answers(client, module.answer) == [3] * 4


def test_a_module_runs_once_in_a_worker_and_its_patches_of_other_modules_stay(client):
    # A registry that refuses a second registration, a cycle of imports that leads a module to
    # import the next one in the list, and a module that replaces another one's function.
    registry, first, second, target, patcher, name = (fresh(p) for p in ("reg", "a", "b", "tgt", "pat", "once"))
    write(registry, "SEEN = set()\n\ndef register(key):\n    if key in SEEN:\n"
                    "        raise ValueError(f'already registered: {key}')\n    SEEN.add(key)\n")
    write(first, f"import {registry}\nimport {second}\n{registry}.register('a')\n\ndef value():\n    return 1\n")
    write(second, f"import {first}\n\ndef value():\n    return {first}.value() + 1\n")
    write(target, "def f():\n    return 0\n")
    write(patcher, f"import {target}\n\ndef _better():\n    return 10\n\n{target}.f = _better\n")
    write(name, textwrap.dedent(f'''
        from maze import task
        import {first}, {second}, {target}, {patcher}

        @task(inputs=["x"], outputs=["answer"])
        def answer(params):
            return {{"answer": {second}.value() + {target}.f()}}
    '''))
    module = load(name)
    assert module.answer({"x": 0}) == {"answer": 12}
    assert answers(client, module.answer) == [12] * 4


def test_a_file_that_is_not_the_drivers_fails_the_task_saying_so():
    from maze.core.errors import StaleCodeError
    from maze.core.stamps import Stamps, refresh

    name = fresh("other_copy")
    write(name, "X = 1\n")
    with pytest.raises(StaleCodeError, match=f"the file of module {name!r} .* is not the one the driver ran it from"):
        refresh(Stamps(((name, "0" * 32, ()),)))   # as on a node whose copy of the file is another
    assert name not in sys.modules   # not imported from the wrong file


def test_a_stamp_follows_the_file_not_the_state_of_the_module():
    from maze.core.stamps import stamps

    name = fresh("stamped")
    write(name, "import json\nCACHE = {}\nK = 1\n" + TASK.format(imports="", body="K"))
    module = load(name)
    before = stamps(module.answer)
    assert [m[0] for m in before.modules] == [name]   # json is installed: it is not followed
    module.CACHE["filled"] = list(range(100))   # as a task's cache fills it: the same stamps
    module.K = 5
    assert stamps(module.answer) == before
    write(name, "import json\nCACHE = {}\nK = 2\n" + TASK.format(imports="", body="K"))
    assert stamps(module.answer) != before   # the file: what a worker would load


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
