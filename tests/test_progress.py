"""``show_results`` in a terminal: per-event lines for small runs, one progress line for large ones, the logger."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
import textwrap

import pytest
from tasks_misc import boom, inc

from maze import task
from maze.core import progress


@task(inputs=["x"], outputs=["y"])
def noisy(params):
    if params["x"] % 250 == 0:
        print("at", params["x"])
    return {"y": params["x"]}


@task(inputs=["x"], outputs=["y"], retries=1)
def flaky(params):
    raise ValueError("always\nand a second line")


def test_the_rule_for_each_place():
    assert progress.choose_style(progress.EVENT_LINES_UP_TO, verbose=None, shown=False) == "events"
    assert progress.choose_style(progress.EVENT_LINES_UP_TO + 1, verbose=None, shown=False) == "compact"
    assert progress.choose_style(3, verbose=False, shown=False) == "compact"
    assert progress.choose_style(3, verbose=None, shown=True) == "summary"
    assert progress.choose_style(5000, verbose=True, shown=True) == "events"


def test_progress_line_counts_done_total_and_eta():
    line = progress.progress_line({"finished": 300, "failed": 2, "running": 8, "pending": 690}, 1000, 30.0)
    assert line == "302/1,000  0:30, ETA 1:09  300 finished · 2 failed · 8 running · 690 pending"
    bar = progress.progress_line({"pending": 10}, 10, 0.0, bar=True)
    assert bar.startswith("[░░░░░░░░░░░░░░░░░░░░] 0/10  0:00, ETA ?")


def test_a_1000_task_run_prints_a_few_lines_with_task_output(local_client):
    wf = local_client.create_workflow()
    for i in range(1000):
        wf.add_task(noisy, inputs={"x": i})
    out = io.StringIO()                              # not a TTY: no redraws, a line every few seconds at most
    summary = wf.show_results(wf.run(), file=out)
    lines = out.getvalue().splitlines()
    assert summary["status"] == "completed"
    assert len(lines) < 20, lines
    assert "\r" not in out.getvalue()
    assert sorted(line for line in lines if " at " in line) == sorted(
        f"[{tid}] at {x}" for tid, x in (("noisy", 0), ("noisy-251", 250), ("noisy-501", 500), ("noisy-751", 750)))
    assert lines[-1].startswith("■ workflow completed in ") and "1000 finished" in lines[-1]
    assert not any("started" in line or "finished  " in line for line in lines)


def test_verbose_still_prints_every_event(local_client):
    wf = local_client.create_workflow()
    for i in range(1000):
        wf.add_task(inc, inputs={"x": i})
    out = io.StringIO()
    wf.show_results(wf.run(), file=out, verbose=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2001
    assert sum(line.startswith("▶ started   ") for line in lines) == 1000
    assert sum(line.startswith("✔ finished  ") for line in lines) == 1000


def test_a_large_run_shows_the_first_failures_and_counts_the_rest(local_client):
    wf = local_client.create_workflow()
    for i in range(100):
        wf.add_task(inc, inputs={"x": i})
    for i in range(30):
        wf.add_task(boom, inputs={"x": i})
    out = io.StringIO()
    summary = wf.show_results(wf.run(), file=out)
    lines = out.getvalue().splitlines()
    assert len(summary["exception_tasks"]) == 30
    assert sum(line.startswith("✘ failed    boom") for line in lines) == progress.NOTABLE_SHOWN
    assert any(line.startswith("… more failures and retries are counted") for line in lines)
    assert len(lines) < 20 and "30 failed" in lines[-1]


def test_events_go_to_the_maze_logger(local_client, caplog):
    wf = local_client.create_workflow()
    ok = wf.add_task(inc, inputs={"x": 1})
    bad = wf.add_task(flaky, inputs={"x": ok.outputs["y"]})
    wf.add_task(inc, inputs={"x": bad.outputs["y"]})
    with caplog.at_level(logging.DEBUG, logger="maze"):
        run_id = wf.run()
        wf.show_results(run_id, file=io.StringIO())
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == "maze.run"]
    assert (("maze.run", logging.DEBUG, f"run {run_id}: task inc started") in
            [(n, lv, m.split(" (worker")[0]) for n, lv, m in records])
    assert any(lv == logging.DEBUG and m.startswith(f"run {run_id}: task inc finished in ") for _, lv, m in records)
    assert ("maze.run", logging.INFO,
            f"run {run_id}: task flaky attempt 1 failed (ValueError: always); retrying in 0.0 s") in records
    assert ("maze.run", logging.WARNING, f"run {run_id}: task flaky failed: ValueError: always") in records
    assert ("maze.run", logging.INFO, f"run {run_id}: task inc-2 skipped: upstream task 'flaky' failed") in records
    assert records[-1][1] == logging.INFO and records[-1][2].startswith(f"run {run_id} ({wf.plan().name}) failed in ")
    assert records[-1][2].endswith(": 1 finished, 1 failed, 1 skipped")
    ends = [r for r in caplog.records if r.name == "maze.run" and r.levelno == logging.WARNING]
    assert ends[0].run_id == run_id and ends[0].task_id == "flaky" and ends[0].event == "task_exception"


def test_the_logger_prints_nothing_unless_configured():
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("maze.run").handlers)
    script = textwrap.dedent("""
        import io
        from maze import MaClient
        from tasks_misc import boom
        with MaClient(backend="inline", history=None) as client:
            wf = client.create_workflow()
            wf.add_task(boom, inputs={"x": 1})
            print(wf.show_results(wf.run(), file=io.StringIO())["status"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0 and proc.stdout.strip() == "failed"
    assert "maze.run" not in proc.stderr and "task boom failed" not in proc.stderr   # no last-resort handler output


TTY_SCRIPT = textwrap.dedent("""
    import time
    from maze import MaClient, task

    @task(inputs=["x"], outputs=["y"])
    def nap(params):
        time.sleep(0.01)
        if params["x"] == 100:
            print("halfway")
        return {"y": params["x"]}

    with MaClient(history=None) as client:
        wf = client.create_workflow()
        for i in range(300):
            wf.add_task(nap, inputs={"x": i})
        wf.show_results(wf.run())
""")


def test_on_a_tty_the_progress_line_is_redrawn_in_place(tmp_path):
    script = tmp_path / "tty_run.py"
    script.write_text(TTY_SCRIPT)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], stdin=follower, stdout=follower, stderr=follower,
                            cwd=tmp_path, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:          # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode()
    assert text.count("\r[") >= 2, text                 # drawn, then redrawn in place
    assert "/300  " in text and "ETA " in text
    lines = text.replace("\r\n", "\n").split("\n")
    assert len(lines) < 20                               # never a line per task
    # The task's output is a line of its own: the bar was cleared (spaces, then \r) before it.
    halfway = next(line for line in lines if "halfway" in line)
    assert halfway.endswith("[nap-101] halfway") and halfway.split("[nap-101]")[0].strip(" ").endswith("\r")
    assert lines[-2].split("\r")[-1].startswith("■ workflow completed in ")


@pytest.fixture(autouse=True)
def _tasks_importable(monkeypatch):
    # The subprocess tests import tests/tasks_misc.py by name.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                    os.environ.get("PYTHONPATH")])))


def test_a_message_recorded_as_a_wait_slice_times_out_is_not_missed():
    # The reader waits in 0.2 s slices (so that Ctrl-C is heard). A slice that times out while the
    # recorder holds the lock may return False although the recorder then notified it: the reader
    # must look at the messages again, not wait out its wake-up interval (5 s here).
    import threading
    import time
    import types

    lock = threading.RLock()
    run = types.SimpleNamespace(changed=threading.Condition(lock), messages=[], ended=threading.Event())

    def recorder():
        time.sleep(0.05)
        with run.changed:   # held across the end of the reader's first slice
            time.sleep(0.3)
            run.messages.append({"type": "finish_workflow", "data": {}})
            run.ended.set()
            run.changed.notify_all()

    threading.Thread(target=recorder, daemon=True).start()
    began = time.monotonic()
    first = next(progress.batches(run, 5.0))
    assert first == [{"type": "finish_workflow", "data": {}}] and time.monotonic() - began < 3
