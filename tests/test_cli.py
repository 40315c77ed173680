"""The command line, end to end: ``python -m maze`` in a subprocess, over a history made by real runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maze import MaClient, task

SAMPLE_SIZE = 3


@task(inputs=["x"], outputs=["y"])
def double(params):
    print("doubling", params["x"])
    return {"y": params["x"] * 2}


@task(inputs=["x"], outputs=["y"])
def explode(params):
    raise RuntimeError(f"boom at {params['x']}\nsecond line of the error")


def maze(*args: str, history: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "maze", *args] + (["--history", str(history)] if history else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def record(path: Path, *, failing: bool, name: str, tasks: int = SAMPLE_SIZE) -> str:
    """One real run on the local backend, recorded in the history at ``path``; its id."""
    with MaClient(history=path) as client:
        wf = client.create_workflow(name)
        first = wf.add_task(double, inputs={"x": 1})
        for i in range(1, tasks - (2 if failing else 0)):
            wf.add_task(double, inputs={"x": i + 1})
        if failing:
            bad = wf.add_task(explode, inputs={"x": first.outputs["y"]})
            wf.add_task(double, inputs={"x": bad.outputs["y"]})  # skipped: its upstream fails
        run_id = wf.run()
        wf.wait(run_id)
    return run_id


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("cli") / "runs.sqlite3"
    good = record(path, failing=False, name="good")
    bad = record(path, failing=True, name="bad", tasks=4)
    return path, good, bad


def test_runs_lists_the_runs_newest_first(history):
    path, good, bad = history
    proc = maze("runs", history=path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["RUN", "ID", "WORKFLOW", "STATUS", "TASKS", "STARTED", "DURATION"]
    assert [line.split()[:4] for line in lines[1:]] == [[bad, "bad", "failed", "4"], [good, "good", "completed", "3"]]
    assert all(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d+\.\d s$", line) for line in lines[1:])
    limited = maze("runs", "--limit", "1", history=path)
    assert [line.split()[0] for line in limited.stdout.splitlines()[1:]] == [bad]
    assert maze("runs", "--workflow", "good", history=path).stdout.splitlines()[1].split()[0] == good


def test_show_replays_a_completed_run_and_exits_0(history):
    path, good, _ = history
    proc = maze("show", good, history=path)
    assert proc.returncode == 0, proc.stderr
    assert "✔ finished  double" in proc.stdout and "[double] doubling 1" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("■ workflow completed in ")
    assert "3 finished" in proc.stdout.splitlines()[-1]


def test_show_of_a_failed_run_by_prefix_exits_1(history):
    path, _, bad = history
    for prefix in (bad[:8], bad.removeprefix("run-")[:5]):   # "run-3fa2" and "3fa2" both name it
        proc = maze("show", prefix, history=path)
        assert proc.returncode == 1, proc.stderr
        assert "✘ failed    explode  RuntimeError: boom at 2" in proc.stdout
        assert "⊘ skipped   double-3" in proc.stdout
        last = proc.stdout.splitlines()[-1]
        assert last.startswith("■ workflow failed in ") and "1 failed" in last and "1 skipped" in last
    compact = maze("show", bad, "--compact", history=path)
    assert compact.returncode == 1
    assert "started" not in compact.stdout                 # no line per event, the failure still shown
    assert "✘ failed    explode" in compact.stdout and "workflow failed" in compact.stdout


def test_an_unknown_or_ambiguous_run_id_is_bad_input(history, tmp_path):
    path, _, _ = history
    proc = maze("show", "run-nosuchrun", history=path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"no run 'run-nosuchrun' in the history at {path}" in proc.stderr
    assert f"`maze runs --history {path}` lists the runs it holds" in proc.stderr
    ambiguous = maze("graph", "run-", "-o", str(tmp_path / "x.svg"), history=path)
    assert ambiguous.returncode == 2 and "run id prefix 'run-' is ambiguous" in ambiguous.stderr
    missing = maze("show", "run-1", history=tmp_path / "none.sqlite3")
    assert missing.returncode == 2 and "no run history at" in missing.stderr
    assert not (tmp_path / "none.sqlite3").exists()          # looking does not create a history


def test_graph_writes_an_svg_coloured_by_final_states(history, tmp_path):
    path, _, bad = history
    out = tmp_path / "dag.svg"
    proc = maze("graph", bad[:10], "-o", str(out), history=path)
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    # Each task in its final state's colour and icon (render.LOOKS): finished, failed, skipped.
    assert 'fill="#009e73"' in svg.lower() and 'fill="#d55e00"' in svg.lower() and 'fill="#ededed"' in svg.lower()
    assert "✔ double<" in svg and "✘ explode<" in svg and "⊘ double&#45;3<" in svg   # "-" written as an entity
    assert f"wrote {out}: run {bad} (bad), failed; 2 finished, 1 failed, 1 skipped" in proc.stdout


def test_graph_without_graphviz_says_how_to_install_it_and_dot_still_works(history, tmp_path):
    path, good, _ = history
    empty = tmp_path / "bin"
    empty.mkdir()
    no_dot = {"PATH": str(empty)}   # neither `dot` nor graphviz-pure can be found
    proc = maze("graph", good, "-o", str(tmp_path / "dag.svg"), history=path, env=no_dot)
    assert proc.returncode == 2 and not (tmp_path / "dag.svg").exists()
    assert "needs Graphviz's `dot` program, which is not installed" in proc.stderr
    assert "apt-get install graphviz" in proc.stderr and f"-o {tmp_path / 'dag.dot'}" in proc.stderr
    proc = maze("graph", good, "-o", str(tmp_path / "dag.dot"), history=path, env=no_dot)
    assert proc.returncode == 0, proc.stderr
    dot = (tmp_path / "dag.dot").read_text()
    assert dot.startswith('digraph "good" {') and dot.count("maze-finished") == 3
    wrong = maze("graph", good, "-o", str(tmp_path / "dag.txt"), history=path)
    assert wrong.returncode == 2 and ".svg, .png, .pdf, .dot" in wrong.stderr


def test_prune_keeps_the_newest_runs(history, tmp_path):
    path = tmp_path / "runs.sqlite3"
    shutil.copyfile(history[0], path)        # its own copy (the writers closed: everything is in the main file)
    newest = record(path, failing=False, name="newest", tasks=1)
    proc = maze("prune", "--keep-last", "1", history=path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"removed 2 runs from {path}; 1 left")
    assert [line.split()[0] for line in maze("runs", history=path).stdout.splitlines()[1:]] == [newest]
    again = maze("prune", "--keep-last", "1", history=path)
    assert again.stdout.startswith("removed 0 runs")
    bad = maze("prune", "--keep-last", "-1", history=path)
    assert bad.returncode == 2 and "not a whole number, 0 or more" in bad.stderr


def test_help_and_version():
    proc = maze("--help")
    assert proc.returncode == 0
    for command in ("runs", "show", "graph", "prune"):
        assert command in proc.stdout
    assert maze("--version").stdout.strip().startswith("maze ")
    assert maze().returncode == 2                       # a command is required
    assert maze("show", "--help").stdout.startswith("usage: maze show")


def test_main_returns_the_exit_code(history, capsys):
    from maze.cli import main

    path, good, bad = history
    assert main(["show", good, "--history", str(path), "--compact"]) == 0
    assert main(["show", bad, "--history", str(path), "--compact"]) == 1
    assert main(["show", "zzz", "--history", str(path)]) == 2
    assert main(["--version"]) == 0
    assert "no run 'zzz'" in capsys.readouterr().err


def test_a_terminal_that_is_not_utf8_gets_the_output_with_plain_glyphs(history):
    path, good, _ = history
    out = maze("show", good, history=path, env={"PYTHONIOENCODING": "ascii"})
    assert out.returncode == 0, out.stderr
    assert "workflow completed" in out.stdout and "?" in out.stdout   # the glyphs, replaced


def test_a_file_that_is_not_a_history_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("not a database " * 100)
    out = maze("runs", history=junk)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"the run history {junk}" in out.stderr and "not a database" in out.stderr


def test_a_huge_limit_is_taken_as_no_limit(history):
    path, good, bad = history
    out = maze("runs", "--limit", str(2**70), history=path)
    assert out.returncode == 0, out.stderr
    assert good in out.stdout and bad in out.stdout
