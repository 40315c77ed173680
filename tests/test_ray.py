"""What is special to the Ray backend: install hint, GPUs, object store, nodes, hygiene."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
from tasks_misc import boom, inc

from maze import task


def test_missing_ray_says_how_to_install():
    code = "import sys; sys.modules['ray'] = None\nfrom maze import MaClient\nMaClient(backend='ray')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "backend='ray' needs Ray, which is not installed; install it with: pip install 'maze-dag[ray]'" in proc.stderr


@task(inputs=["seconds"], outputs=["visible"], resources={"cpu": 0.5, "gpu": 1})
def slow_gpu(params):
    time.sleep(params["seconds"])
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_gpu_tasks_get_their_own_device(ray_client):
    wf = ray_client.create_workflow()
    ts = [wf.add_task(slow_gpu, inputs={"seconds": 1.0}) for _ in range(2)]
    run_id = wf.run()
    summary = wf.wait(run_id)
    visible = sorted(summary["task_results"][t.task_id]["visible"] for t in ts)
    assert visible == ["0", "1"]   # two whole-GPU tasks at once: one device each
    starts = {m["data"]["task_id"]: m["data"] for m in wf.get_results(run_id) if m["type"] == "start_task"}
    for t in ts:
        assert starts[t.task_id]["gpu_ids"] == [int(summary["task_results"][t.task_id]["visible"])]


@task(inputs=["seconds"], outputs=["gpu", "start", "end"], resources={"cpu": 0.1, "gpu": 0.5, "gpu_mem": 3000})
def gpu_share(params):
    import ray

    start = time.time()
    time.sleep(params["seconds"])
    return {"gpu": ray.get_gpu_ids()[0], "start": start, "end": time.time()}


def spans_by_gpu(summary, tasks):
    by_gpu: dict[int, list[tuple[float, float]]] = {}
    for t in tasks:
        r = summary["task_results"][t.task_id]
        by_gpu.setdefault(r["gpu"], []).append((r["start"], r["end"]))
    return by_gpu


def overlap(spans):
    spans = sorted(spans)
    return any(e1 > s2 + 0.01 for (s1, e1), (s2, e2) in zip(spans, spans[1:]))


def test_gpu_memory_is_respected_on_ray(ray_client):
    # 3000 MB of 8000: four halves fit two GPUs, two per GPU at once.
    warm = ray_client.create_workflow()   # Ray starts a worker per task, slowly when cold: not what is tested
    [warm.add_task(gpu_share, inputs={"seconds": 0.6}) for _ in range(4)]
    warm.wait(warm.run())
    wf = ray_client.create_workflow()
    # Long enough that the two halves on a GPU overlap even when a loaded machine starts one late.
    ts = [wf.add_task(gpu_share, inputs={"seconds": 3.0}) for _ in range(4)]
    by_gpu = spans_by_gpu(wf.wait(wf.run()), ts)
    assert sorted(len(v) for v in by_gpu.values()) == [2, 2]
    assert all(overlap(v) for v in by_gpu.values())   # the halves shared their GPU
    # 5000 MB of 8000: two such tasks must never share a GPU, whatever their fraction.
    wf = ray_client.create_workflow()
    ts = [wf.add_task(gpu_share, inputs={"seconds": 0.4}, resources={"gpu_mem": 5000}) for _ in range(4)]
    by_gpu = spans_by_gpu(wf.wait(wf.run()), ts)
    assert not any(overlap(v) for v in by_gpu.values()), by_gpu


@task(inputs=["mb"], outputs=["array"], resources={"cpu": 0.5})
def big_array(params):
    return {"array": np.ones(params["mb"] * 2**20 // 8)}


@task(inputs=["array"], outputs=["total"], resources={"cpu": 0.5})
def array_total(params):
    return {"total": float(params["array"].sum())}


def test_large_outputs_do_not_pass_through_the_driver(ray_client):
    wf = ray_client.create_workflow()
    a = wf.add_task(big_array, inputs={"mb": 100})
    t1 = wf.add_task(array_total, inputs={"array": a.outputs["array"]})
    t2 = wf.add_task(array_total, inputs={"array": a.outputs["array"]})
    me = psutil.Process()
    before = me.memory_info().rss
    run_id = wf.run()
    peak = before
    while not wf.run_state(run_id).ended.is_set():
        peak = max(peak, me.memory_info().rss)
        time.sleep(0.01)
    summary = wf.wait(run_id)
    n = 100 * 2**20 // 8
    assert summary["task_results"][t1.task_id] == {"total": float(n)}
    assert summary["task_results"][t2.task_id] == {"total": float(n)}
    assert peak - before < 30 * 2**20, f"driver grew by {(peak - before) / 2**20:.0f} MB"
    # The driver fetched the output when the task ended: the result is the array itself.
    assert wf.get_task_result(run_id, a.task_id)["result"]["array"].shape == (n,)


def adder(k: int):
    def add(params):
        return {"y": params["x"] + k}
    return task(inputs=["x"], outputs=["y"])(add)


class CountingHub:
    """The client's hub, with its code additions counted."""

    def __init__(self, hub) -> None:
        self._hub = hub
        self.sent: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self._hub, name)

    @property
    def add_code(self):
        hub, sent = self._hub, self.sent

        class Method:
            @staticmethod
            def remote(key, data):
                sent.append(key)
                return hub.add_code.remote(key, data)
        return Method


def test_the_code_of_many_task_functions_is_sent_to_the_hub_once(ray_client):
    backend = ray_client.backend
    counting = CountingHub(backend._hub)
    backend._hub = counting
    try:
        wf = ray_client.create_workflow()
        tasks = [wf.add_task(adder(k), inputs={"x": 1}) for k in range(70)]   # 70 code keys, more than a worker keeps
        for run in range(2):
            summary = wf.wait(wf.run(), timeout=120)
            assert [summary["task_results"][t.task_id]["y"] for t in tasks] == [1 + k for k in range(70)]
            assert len(counting.sent) == 70, f"run {run + 1}: {len(counting.sent)} code sends in all"
    finally:
        backend._hub = counting._hub


@task(inputs=["table", "i"], outputs=["total"])
def scale_in_place(params):
    params["table"] *= params["i"]   # its own copy, as on every backend
    return {"total": float(params["table"].sum())}


def test_a_large_constant_is_put_in_the_object_store_once_per_run_and_each_call_gets_its_own_copy(
        ray_client, monkeypatch):
    import maze.backends.ray as ray_backend
    puts = []
    real_put = ray_backend.ray.put
    monkeypatch.setattr(ray_backend.ray, "put", lambda value, **kw: puts.append(type(value).__name__) or real_put(value, **kw))
    table = np.ones(2**18)   # 2 MB
    wf = ray_client.create_workflow()
    tasks = [wf.add_task(scale_in_place, inputs={"table": table, "i": i}) for i in range(6)]
    for run in (1, 2):
        summary = wf.wait(wf.run(), timeout=120)
        assert [summary["task_results"][t.task_id]["total"] for t in tasks] == [float(i * table.size) for i in range(6)]
        assert puts == ["Shared"] * run, "once per run, not once per call"
    assert (table == 1).all()
    wf.clear_cache()
    deadline = time.monotonic() + 5
    while ray_client.backend._constants and time.monotonic() < deadline:   # nothing keeps a finished run's copy
        time.sleep(0.05)
    assert not ray_client.backend._constants


@task(inputs=["blob", "small", "nested", "pair"], outputs=["kinds", "total"])
def constant_kinds(params):
    params["small"] *= 2   # a small array too is the task's own
    return {"kinds": [type(params[k]).__name__ for k in ("blob", "small", "nested", "pair")],
            "total": float(params["small"].sum()) + len(params["nested"]["b"])}


def test_constants_arrive_as_what_they_were_and_writable(ray_client):
    wf = ray_client.create_workflow()
    t = wf.add_task(constant_kinds, inputs={"blob": bytearray(b"abc"), "small": np.ones(10),
                                            "nested": {"b": bytearray(100)}, "pair": (1, 2)})
    result = wf.wait(wf.run(), timeout=60)["task_results"][t.task_id]
    assert result == {"kinds": ["bytearray", "ndarray", "dict", "tuple"], "total": 20.0 + 100}


def sequence(workflow, run_id):
    out = []
    for m in workflow.get_results(run_id):
        d = m["data"]
        out.append((m["type"], d.get("task_id"), dict(d["result"]) if m["type"] == "finish_task" else d.get("error_type")))
    return out


def test_local_and_ray_give_the_same_messages(ray_client, local_client):
    def build(client):
        wf = client.create_workflow()
        a = wf.add_task(inc, inputs={"x": 1})
        b = wf.add_task(inc, inputs={"x": a.outputs["y"]})
        c = wf.add_task(boom, inputs={"x": b.outputs["y"]})
        wf.add_task(inc, inputs={"x": c.outputs["y"]})
        return wf

    local, remote = build(local_client), build(ray_client)
    r1, r2 = local.run(), remote.run()
    local.wait(r1), remote.wait(r2)
    assert sequence(local, r1) == sequence(remote, r2)
    assert [m["type"] for m in local.get_results(r1)][-3:] == ["task_exception", "task_skipped", "finish_workflow"]


MULTINODE = textwrap.dedent('''
    import os, sys, time
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray.cluster_utils import Cluster
    from maze import MaClient, task

    @task(inputs=["seconds"], outputs=["node"], resources={"cpu": 1, "gpu": 1})
    def on_gpu_node(params):
        time.sleep(params["seconds"])
        return {"node": ray.get_runtime_context().get_node_id()}

    @task(inputs=[], outputs=["ok"], resources={"cpu": 1})
    def anywhere(params):
        return {"ok": True}

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, resources={"maze_gpu_mem_mb": 4000})
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    gpu_node_id = gpu_node.node_id
    client = MaClient(backend="ray", address=cluster.address)
    wf = client.create_workflow()
    t = wf.add_task(on_gpu_node, inputs={"seconds": 0})
    run_id = wf.run()
    summary = wf.wait(run_id, timeout=120)
    start = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "start_task")
    print("PLACED", summary["task_results"][t.task_id]["node"] == gpu_node_id, start["node_id"] == gpu_node_id, flush=True)

    try:
        wf.add_task(anywhere, resources={"cpu": 2})
        wf.run()
    except ValueError as exc:
        print("NEVER", "no node of the cluster can hold it" in str(exc), flush=True)

    wf = client.create_workflow()
    lost = wf.add_task(on_gpu_node, inputs={"seconds": 30})
    fine = wf.add_task(anywhere)
    run_id = wf.run()
    for m in wf.get_results(run_id):
        if m["type"] == "start_task" and m["data"]["task_id"] == lost.task_id:
            break
    cluster.remove_node(gpu_node)
    summary = wf.wait(run_id, timeout=120)
    failure = next(m["data"] for m in wf.get_results(run_id) if m["type"] == "task_exception")
    print("LOST", summary["status"], failure["task_id"], failure["error_type"], fine.task_id in summary["task_results"], flush=True)
    client.close()
    ray.shutdown()
    cluster.shutdown()
''')


def test_two_nodes_placement_and_a_lost_node(tmp_path):
    script = tmp_path / "multinode.py"
    script.write_text(MULTINODE)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    lines = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.split() and line.split()[0] in {"PLACED", "NEVER", "LOST"}}
    assert lines.get("PLACED") == ["True", "True"], proc.stdout + proc.stderr[-3000:]
    assert lines.get("NEVER") == ["True"], proc.stdout
    assert lines.get("LOST") == ["failed", "on_gpu_node", "WorkerDiedError", "True"], proc.stdout + proc.stderr[-3000:]


def test_a_private_ray_leaves_no_process_behind():
    code = textwrap.dedent('''
        import psutil
        from maze import MaClient, task
        @task(inputs=[], outputs=["pid"])
        def pid(params):
            import os
            return {"pid": os.getpid()}
        with MaClient(backend="ray", resources={"cpu": 1}) as client:
            wf = client.create_workflow()
            t = wf.add_task(pid)
            print("WORKER", wf.wait(wf.run())["task_results"][t.task_id]["pid"], flush=True)
            print("CHILDREN", " ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    pids = [int(p) for p in out["CHILDREN"].split()] + [int(out["WORKER"])]
    deadline = time.time() + 20
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [psutil.Process(p).cmdline()[:3] for p in alive]
