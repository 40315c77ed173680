"""The Ray backend says, once per run, that it cannot enforce a task's ``gpu_mem`` (a real local Ray)."""

from __future__ import annotations

import warnings

from tasks_misc import inc

from maze import task


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1, "gpu": 0.5, "gpu_mem": 3000})
def on_half_gpu(params):
    return {"y": params["x"]}


def _gpu_mem_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "gpu_mem" in str(w.message)]


def test_gpu_mem_on_ray_is_warned_about_once_per_run(ray_client):
    wf = ray_client.create_workflow()
    ts = [wf.add_task(on_half_gpu, inputs={"x": i}) for i in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = wf.run()
        assert wf.wait(first)["status"] == "completed"
        second = wf.run()
        assert wf.wait(second)["status"] == "completed"
    said = _gpu_mem_warnings(caught)
    assert len(said) == 2, said                       # three tasks each run, one warning per run
    assert f"of run {first!r}" in said[0] and f"of run {second!r}" in said[1]
    for text in said:
        assert any(f"task {t.task_id!r}" in text for t in ts)
        assert "gpu_mem=3000 MB" in text and "cannot enforce" in text
        # The session's Ray declares 8000 MB per GPU: 3000 MB is 0.375 of one, less than gpu=0.5.
        assert "reserves 0.5 of a GPU" in text and "3000 MB of the 8000 MB of one GPU" in text


def test_a_run_without_gpu_mem_is_not_warned_about(ray_client):
    wf = ray_client.create_workflow()
    wf.add_task(inc, inputs={"x": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wf.wait(wf.run())["status"] == "completed"
    assert _gpu_mem_warnings(caught) == []
