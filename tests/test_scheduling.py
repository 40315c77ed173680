"""Parallelism, resource admission and GPU placement (with declared GPUs)."""

from __future__ import annotations

import time

import pytest
from tasks_misc import echo, half_gpu, one_gpu, sleeper, token, two_gpus

from maze import MaClient, UnsatisfiableError, task


def test_independent_tasks_run_in_parallel(local_client):
    workflow = local_client.create_workflow()
    a = workflow.add_task(sleeper, inputs={"seconds": 1.0})
    b = workflow.add_task(sleeper, inputs={"seconds": 1.0})
    summary = workflow.wait(workflow.run())
    assert summary["workflow_completed"]
    ra, rb = summary["task_results"][a.task_id], summary["task_results"][b.task_id]
    assert ra["pid"] != rb["pid"]                       # two worker processes
    assert ra["start"] < rb["end"] and rb["start"] < ra["end"]   # overlapping in time


@task(inputs=["seconds"], outputs=["start", "end"], resources={"cpu": 2})
def all_cpus(params):
    start = time.time()
    time.sleep(params["seconds"])
    return {"start": start, "end": time.time()}


def test_tasks_needing_all_cpus_run_one_at_a_time():
    with MaClient(resources={"cpu": 2}) as client:
        workflow = client.create_workflow()
        ts = [workflow.add_task(all_cpus, inputs={"seconds": 0.3}) for _ in range(3)]
        summary = workflow.wait(workflow.run())
    spans = sorted((summary["task_results"][t.task_id]["start"], summary["task_results"][t.task_id]["end"]) for t in ts)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start + 0.01, spans


def test_cpu_memory_is_admitted_too():
    with MaClient(resources={"cpu": 4, "cpu_mem": 1000}) as client:
        workflow = client.create_workflow()
        ts = [workflow.add_task(sleeper, inputs={"seconds": 0.3}, resources={"cpu_mem": 600}) for _ in range(2)]
        summary = workflow.wait(workflow.run())
    (s1, e1), (s2, e2) = sorted((summary["task_results"][t.task_id]["start"], summary["task_results"][t.task_id]["end"]) for t in ts)
    assert e1 <= s2 + 0.01


def start_messages(workflow, run_id):
    return {m["data"]["task_id"]: m["data"] for m in workflow.get_results(run_id) if m["type"] == "start_task"}


def test_gpu_task_sees_only_its_device():
    with MaClient(resources={"cpu": 4, "gpu": 2, "gpu_mem": 8000}) as client:
        workflow = client.create_workflow()
        ts = [workflow.add_task(one_gpu) for _ in range(2)]
        run_id = workflow.run()
        summary = workflow.wait(run_id)
        starts = start_messages(workflow, run_id)
    seen = sorted(summary["task_results"][t.task_id]["visible"] for t in ts)
    assert seen == ["0", "1"]
    for t in ts:
        assert starts[t.task_id]["gpu_ids"] == [int(summary["task_results"][t.task_id]["visible"])]


def test_fractional_gpus_share_a_device_while_memory_fits():
    with MaClient(resources={"cpu": 4, "gpu": 1, "gpu_mem": 2000}) as client:
        workflow = client.create_workflow()
        ts = [workflow.add_task(half_gpu) for _ in range(2)]
        summary = workflow.wait(workflow.run())
        spans = [(summary["task_results"][t.task_id]["start"], summary["task_results"][t.task_id]["end"]) for t in ts]
        assert all(summary["task_results"][t.task_id]["visible"] == "0" for t in ts)
        assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # together on GPU 0

        # Two halves whose gpu_mem does not fit one device together: never at once.
        workflow = client.create_workflow()
        ts = [workflow.add_task(half_gpu, resources={"gpu_mem": 1500}) for _ in range(2)]
        summary = workflow.wait(workflow.run())
        (s1, e1), (s2, e2) = sorted((summary["task_results"][t.task_id]["start"], summary["task_results"][t.task_id]["end"]) for t in ts)
        assert e1 <= s2 + 0.01


def test_whole_gpus_and_their_environment():
    with MaClient(resources={"cpu": 4, "gpu": 3}) as client:
        workflow = client.create_workflow()
        t = workflow.add_task(two_gpus)
        run_id = workflow.run()
        summary = workflow.wait(run_id)
        assert summary["task_results"][t.task_id]["visible"] == "0,1"
        assert start_messages(workflow, run_id)[t.task_id]["gpu_ids"] == [0, 1]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"cpu": 64}, "cpu=64 exceeds the capacity of 4 cpu"),
        ({"gpu": 1}, "gpu=1 exceeds the capacity of 0 GPU"),
        ({"cpu_mem": 10**9}, "cpu_mem=1000000000 MB exceeds"),
    ],
)
def test_a_task_that_can_never_fit_is_an_error_at_run(override, needle):
    with MaClient(resources={"cpu": 4, "cpu_mem": 4000, "gpu": 0}) as client:
        workflow = client.create_workflow()
        workflow.add_task(sleeper, inputs={"seconds": 0}, task_name="big", resources=override)
        with pytest.raises(UnsatisfiableError) as info:
            workflow.run()
    message = str(info.value)
    assert "'big'" in message and needle in message and "the capacity is 4 cpu" in message
    assert workflow.list_cached_runs() == []


def test_gpu_memory_beyond_every_device_is_an_error():
    with MaClient(resources={"cpu": 4, "gpu": 2, "gpu_mem": 1000}) as client:
        workflow = client.create_workflow()
        workflow.add_task(one_gpu, resources={"gpu_mem": 4000})
        with pytest.raises(UnsatisfiableError, match=r"gpu_mem=4000 MB per GPU exceeds the memory of the GPUs \(1000 MB, 1000 MB\)"):
            workflow.run()


def test_three_concurrent_runs_have_distinct_results(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(token)
    t2 = workflow.add_task(echo, inputs={"token": t1.outputs["token"]})
    run_ids = [workflow.run() for _ in range(3)]
    summaries = [workflow.wait(r) for r in run_ids]
    tokens = [s["task_results"][t1.task_id]["token"] for s in summaries]
    assert len(set(tokens)) == 3
    for s, tok in zip(summaries, tokens):
        assert s["task_results"][t2.task_id] == {"echo": tok}   # each run saw its own upstream


def test_later_edits_do_not_change_a_started_run(client):
    workflow = client.create_workflow()
    workflow.add_task(sleeper, inputs={"seconds": 0.2})
    run_id = workflow.run()
    workflow.add_task(sleeper, inputs={"seconds": 0})
    assert list(workflow.wait(run_id)["task_results"]) == ["sleeper"]
    assert len(workflow.wait(workflow.run())["task_results"]) == 2


def test_nvml_is_asked_only_where_an_nvidia_driver_may_be(monkeypatch):
    import os
    import sys

    from maze.core import resources

    present: set[str] = set()
    monkeypatch.setattr(os.path, "exists", lambda p: p in present)
    monkeypatch.setattr(sys, "platform", "linux")
    assert not resources._nvidia_driver_may_be_present()
    assert resources.detect_gpus() == ()              # without importing NVML's bindings
    for path in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"):   # a driver, a container given GPUs, WSL 2
        present = {path}
        assert resources._nvidia_driver_may_be_present(), path
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not resources._nvidia_driver_may_be_present()
    monkeypatch.setattr(sys, "platform", "win32")
    assert resources._nvidia_driver_may_be_present()
