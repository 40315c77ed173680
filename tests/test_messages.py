"""The message stream: shapes, ordering rules, and the live list-like view."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from guide_tasks import merge_results, prepare_data, process_method_a, process_method_b
from tasks_misc import sleeper

TASK_KEYS = {"workflow_id", "run_id", "task_id", "task_name", "time"}


def diamond(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(prepare_data, inputs={"input": "x"})
    t2 = workflow.add_task(process_method_a, inputs={"data": t1.outputs["data"]})
    t3 = workflow.add_task(process_method_b, inputs={"data": t1.outputs["data"]})
    workflow.add_task(merge_results, inputs={"result_a": t2.outputs["result_a"], "result_b": t3.outputs["result_b"]})
    return workflow


def check_order(workflow, messages):
    plan = workflow.plan()
    position = {}
    for i, m in enumerate(messages):
        position.setdefault((m["type"], m["data"].get("task_id")), i)
    for tid, t in plan.tasks.items():
        assert position[("start_task", tid)] < position[("finish_task", tid)]
        for up in t.upstream:
            assert position[("finish_task", up)] < position[("start_task", tid)], (up, tid)
    assert [m["type"] for m in messages].count("finish_workflow") == 1
    assert messages[-1]["type"] == "finish_workflow"


def test_message_shapes(client):
    workflow = diamond(client)
    run_id = workflow.run()
    messages = list(workflow.get_results(run_id))
    for m in messages:
        assert set(m) == {"type", "data"}
        assert m["data"]["workflow_id"] == workflow.workflow_id and m["data"]["run_id"] == run_id
        if m["type"] != "finish_workflow":
            assert TASK_KEYS <= set(m["data"])
    starts = [m["data"] for m in messages if m["type"] == "start_task"]
    assert all({"node", "worker", "gpu_ids"} <= set(d) and d["gpu_ids"] == [] for d in starts)
    finishes = [m["data"] for m in messages if m["type"] == "finish_task"]
    assert all(isinstance(d["result"], Mapping) and d["duration"] >= 0 for d in finishes)
    end = messages[-1]["data"]
    assert end["status"] == "completed" and end["has_exception"] is False and end["duration"] > 0


def test_ordering_rules_hold_over_many_runs(client):
    workflow = diamond(client)
    run_ids = [workflow.run() for _ in range(10)]
    for run_id in run_ids:
        check_order(workflow, list(workflow.get_results(run_id)))


def test_iteration_is_live_and_repeatable(client):
    workflow = client.create_workflow()
    workflow.add_task(sleeper, inputs={"seconds": 2.0})
    run_id = workflow.run()
    log = workflow.get_results(run_id)
    first = next(iter(log))
    assert first["type"] == "start_task"          # seen while the task still runs
    assert not workflow.run_state(run_id).ended.is_set()
    assert len(log) == 3                          # waits for the end
    assert [m["type"] for m in log] == ["start_task", "finish_task", "finish_workflow"]
    assert log[-1]["type"] == "finish_workflow"
    assert log == list(log)


def test_get_task_result_waits_for_the_task(client):
    workflow = client.create_workflow()
    t = workflow.add_task(sleeper, inputs={"seconds": 0.3})
    run_id = workflow.run()
    started = time.perf_counter()
    got = workflow.get_task_result(run_id, t.task_id)
    assert got["status"] == "success" and got["result"]["end"] - got["result"]["start"] >= 0.29
    assert time.perf_counter() - started >= 0.2


def test_two_readers_see_the_same_stream(client):
    workflow = diamond(client)
    run_id = workflow.run()
    seen: list[list[dict]] = [[], []]

    def read(i: int) -> None:
        seen[i] = list(workflow.get_results(run_id))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert seen[0] == seen[1] and len(seen[0]) == 9
