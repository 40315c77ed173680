"""What a task prints reaches the driver while the task runs, on every backend, each line once and in order."""

from __future__ import annotations

import time

from tasks_misc import chatty, speaks_then_waits


def test_a_line_a_task_prints_arrives_while_it_still_runs(client, tmp_path):
    gate = tmp_path / "gate"
    workflow = client.create_workflow()
    t = workflow.add_task(speaks_then_waits, inputs={"gate": str(gate)})
    run_id = workflow.run()
    seen = []
    try:
        for message in workflow.get_results(run_id):   # live: each message as it comes
            seen.append(message)
            if message["type"] == "task_log":
                break
    finally:
        gate.touch()   # whatever happened, the task may end now
    assert [m["type"] for m in seen] == ["start_task", "task_log"]
    assert seen[-1]["data"]["text"] == "first line\n"
    assert not workflow.run_state(run_id).ended.is_set()   # the task was still waiting for the gate
    summary = workflow.wait(run_id)
    assert summary["task_results"] == {t.task_id: {"opened": True}}
    log = list(workflow.get_results(run_id))
    assert [m["type"] for m in log] == ["start_task", "task_log", "task_log", "finish_task", "finish_workflow"]
    assert [m["data"]["text"] for m in log if m["type"] == "task_log"] == ["first line\n", "second line\n"]


def test_many_lines_over_a_second_arrive_each_once_in_order(client):
    workflow = client.create_workflow()
    t = workflow.add_task(chatty, inputs={"lines": 400, "seconds": 1.2})
    run_id = workflow.run()
    first_line_at = finished_at = None
    for message in workflow.get_results(run_id):
        if message["type"] == "task_log" and first_line_at is None:
            first_line_at = time.monotonic()
        elif message["type"] == "finish_task":
            finished_at = time.monotonic()
    log = list(workflow.get_results(run_id))
    lines = [m["data"] for m in log if m["type"] == "task_log"]
    assert "".join(d["text"] for d in lines) == "".join(f"line {i}\n" for i in range(400))
    assert [d["stream"] for d in lines] == ["stderr" if i % 2 else "stdout" for i in range(400)]
    types = [m["type"] for m in log]
    assert types[0] == "start_task" and types[-2:] == ["finish_task", "finish_workflow"]
    assert workflow.get_task_result(run_id, t.task_id)["result"] == {"count": 400}
    # Not held until the task's end: lines printed over 1.2 s, the first one came well before the end.
    assert first_line_at is not None and finished_at is not None and finished_at - first_line_at > 0.5


def test_lines_sent_while_a_short_task_ran_are_kept_whoever_reads_them_first(client):
    # A task of about 50 ms sends some of its lines while it runs and reports the rest: the
    # driver may read its report before or after the lines it sent. Twenty such tasks at once.
    workflow = client.create_workflow()
    tasks = [workflow.add_task(chatty, inputs={"lines": 5, "seconds": 0.05}) for _ in range(20)]
    run_id = workflow.run()
    assert workflow.wait(run_id)["workflow_completed"]
    log = list(workflow.get_results(run_id))
    for t in tasks:
        mine = [m for m in log if m["data"].get("task_id") == t.task_id]
        assert [m["type"] for m in mine] == ["start_task"] + ["task_log"] * 5 + ["finish_task"]
        assert "".join(m["data"]["text"] for m in mine[1:-1]) == "".join(f"line {i}\n" for i in range(5))
