"""Check, on a machine with NVIDIA GPUs, that maze sees them and places tasks on them.

    python examples/gpu_check.py

Prints what NVML reports, runs GPU tasks (whole and fractional) and shows the
devices each one got, as ``start_task`` says and as CUDA inside the task sees it.
Needs PyTorch for the in-task check (it is skipped without it).
"""

from __future__ import annotations

import os
import time

from maze import MaClient, UnsatisfiableError, task
from maze.core.resources import detect_capacity


@task(inputs=["n"], outputs=["visible", "device", "checksum", "start", "end"], resources={"cpu": 1, "gpu": 1})
def whole_gpu(params):
    start = time.time()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch
    except ImportError:
        return {"visible": visible, "device": "no torch", "checksum": None, "start": start, "end": time.time()}
    a = torch.ones(params["n"], params["n"], device="cuda")
    checksum = float((a @ a).sum().item())
    return {"visible": visible, "device": torch.cuda.get_device_name(0), "checksum": checksum,
            "start": start, "end": time.time()}


@task(inputs=["seconds"], outputs=["visible", "start", "end"], resources={"cpu": 1, "gpu": 0.5, "gpu_mem": 1000})
def half_gpu(params):
    start = time.time()
    time.sleep(params["seconds"])
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}


def overlapping(spans):
    (s1, e1), (s2, e2) = sorted(spans)
    return s2 < e1


def main() -> None:
    cap = detect_capacity()
    print(f"NVML: {cap.gpu} GPU(s), memory {[round(m) for m in cap.gpu_mem]} MB; {cap.cpu:g} cpu, {cap.cpu_mem:.0f} MB")
    with MaClient(history=None) as client:
        print("client capacity:", client.resources)
        wf = client.create_workflow("gpu-check")
        t = wf.add_task(whole_gpu, inputs={"n": 2048})
        run_id = wf.run()
        summary = wf.wait(run_id)
        start = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "start_task")
        r = summary["task_results"][t.task_id]
        print(f"whole GPU: start_task gpu_ids={start['gpu_ids']} CUDA_VISIBLE_DEVICES={r['visible']} "
              f"device={r['device']!r} checksum={r['checksum']} (expected {2048.0 ** 3})")

        per_gpu = min(cap.gpu_mem) if cap.gpu else 0
        wf = client.create_workflow("sharing")
        ts = [wf.add_task(half_gpu, inputs={"seconds": 1.0}) for _ in range(2)]
        summary = wf.wait(wf.run())
        spans = [(summary["task_results"][x.task_id]["start"], summary["task_results"][x.task_id]["end"]) for x in ts]
        print(f"two halves with 1000 MB each: shared the GPU at once: {overlapping(spans)}")

        wf = client.create_workflow("too-big-to-share")
        ts = [wf.add_task(half_gpu, inputs={"seconds": 1.0}, resources={"gpu_mem": per_gpu * 0.6}) for _ in range(2)]
        summary = wf.wait(wf.run())
        spans = [(summary["task_results"][x.task_id]["start"], summary["task_results"][x.task_id]["end"]) for x in ts]
        print(f"two halves with 60% of the memory each: ran at once: {overlapping(spans)} (must be False)")

        wf = client.create_workflow("impossible")
        wf.add_task(whole_gpu, inputs={"n": 8}, resources={"gpu": cap.gpu + 1})
        try:
            wf.run()
        except UnsatisfiableError as exc:
            print("more GPUs than the machine has:", exc)


if __name__ == "__main__":
    main()
