"""Resume a run without recomputing what finished, and opt-in caching across runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tasks_counted import counted, expensive, fails_unless_fixed


def count(d, name):
    p = d / name
    return int(p.read_text()) if p.exists() else 0


def test_resume_reuses_finished_tasks_and_says_why(client, tmp_path):
    wf = client.create_workflow()
    a = wf.add_task(counted, inputs={"dir": str(tmp_path), "x": 1})
    b = wf.add_task(fails_unless_fixed, inputs={"dir": str(tmp_path), "x": a.outputs["y"]})
    c = wf.add_task(counted, inputs={"dir": str(tmp_path), "x": b.outputs["y"]})
    first = wf.run()
    assert wf.wait(first)["status"] == "failed"
    assert count(tmp_path, "counted") == 1

    (tmp_path / "fixed").touch()
    second = wf.run(resume_from=first)
    summary = wf.wait(second)
    assert summary["workflow_completed"]
    assert summary["task_results"] == {a.task_id: {"y": 2}, b.task_id: {"y": 20}, c.task_id: {"y": 21}}
    assert count(tmp_path, "counted") == 2        # a was not run again; c ran once
    assert summary["cached_tasks"] == [a.task_id]
    reused = next(m["data"] for m in wf.get_results(second) if m["data"].get("task_id") == a.task_id)
    assert reused["cached"] is True and reused["reused_from"] == f"run {first}"
    assert wf.explain(second) == {
        a.task_id: f"reused: unchanged since run {first}",
        b.task_id: f"it did not finish in run {first} (failed)",
        c.task_id: f"it did not finish in run {first} (skipped)",
    }

    third = wf.run(resume_from=second)            # nothing changed: nothing runs
    assert wf.wait(third)["cached_tasks"] == [a.task_id, b.task_id, c.task_id]
    assert count(tmp_path, "counted") == 2 and count(tmp_path, "fragile") == 2


def test_changed_inputs_are_run_again(client, tmp_path):
    first_wf = client.create_workflow("w")
    first_wf.add_task(counted, inputs={"dir": str(tmp_path), "x": 1})
    first = first_wf.run()
    first_wf.wait(first)
    wf = client.create_workflow("w")
    a = wf.add_task(counted, inputs={"dir": str(tmp_path), "x": 2})
    second = wf.run(resume_from=first)
    assert wf.wait(second)["task_results"] == {a.task_id: {"y": 3}}
    assert wf.explain(second) == {a.task_id: "its inputs changed"}


def test_cache_true_reuses_across_workflows(client, tmp_path):
    results = []
    for _ in range(2):
        wf = client.create_workflow()
        t = wf.add_task(expensive, inputs={"dir": str(tmp_path), "x": 7})
        run_id = wf.run()
        results.append((wf.wait(run_id), wf, run_id, t))
    (s1, _, _, t1), (s2, wf2, run2, t2) = results
    assert s1["task_results"][t1.task_id] == s2["task_results"][t2.task_id] == {"y": 49}
    assert count(tmp_path, "expensive") == 1
    assert s1["cached_tasks"] == [] and s2["cached_tasks"] == [t2.task_id]
    assert wf2.explain(run2)[t2.task_id].startswith("reused: in the result cache (code ")
    assert [m["type"] for m in wf2.get_results(run2)] == ["finish_task", "finish_workflow"]
    assert wf2.show_graph(run2).states == {t2.task_id: "cached"}


SESSION = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[3])
    from maze import MaClient
    from tasks_counted import counted, fails_unless_fixed

    with MaClient(history=sys.argv[1]) as client:
        wf = client.create_workflow("restartable")
        a = wf.add_task(counted, inputs={"dir": sys.argv[2], "x": 1})
        b = wf.add_task(fails_unless_fixed, inputs={"dir": sys.argv[2], "x": a.outputs["y"]})
        resume = sys.argv[4] if len(sys.argv) > 4 else None
        run_id = wf.run(resume_from=resume)
        summary = wf.wait(run_id)
        print(run_id, summary["status"], ",".join(summary["cached_tasks"]) or "-")
''')


def test_resume_after_a_restart_from_the_history(tmp_path):
    from pathlib import Path

    script = tmp_path / "session.py"
    script.write_text(SESSION)
    history = tmp_path / "h.sqlite3"
    tests_dir = str(Path(__file__).parent)
    first = subprocess.run([sys.executable, str(script), str(history), str(tmp_path), tests_dir],
                           capture_output=True, text=True, timeout=120)
    run_id, status, _ = first.stdout.split()
    assert status == "failed"
    (tmp_path / "fixed").touch()
    second = subprocess.run([sys.executable, str(script), str(history), str(tmp_path), tests_dir, run_id],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    _, status, cached = second.stdout.split()
    assert (status, cached) == ("completed", "counted")
    assert count(tmp_path, "counted") == 1
