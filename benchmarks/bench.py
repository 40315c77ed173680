"""maze's local backend beside the tools a user would otherwise reach for.

Workloads (each framework runs the same task bodies, warm unless noted):

W1  1 -> 1000 no-op tasks -> 1      overhead per task (us)
W2  a chain of 200 no-op tasks      latency per dependent edge (us)
W3  8 CPU-bound tasks of ~0.25 s    speedup over running them one after another
W4  a 50 MB numpy array -> 4 tasks  wall time (ms) to produce it and consume it 4 times
W5  a fresh process to the first task's result (s), interpreter start included

Load checks: ``--load`` (maze's local backend: a 10,000-task DAG, 20 runs at
once, 1,000 runs in a row); ``--load-ray`` (maze on Ray against raw Ray, the
same DAGs in the same process: 10,000 tasks as 100 chains of 100, and 200
wide x 50 deep, each task reading two of the layer above).

Usage: python benchmarks/bench.py [--only maze,ppe,joblib,dask,distributed,ray,maze-ray,maze-ray-waiting]
       [--workloads W1,W2,W3,W4,W5] [--repeat 3] [--load] [--load-ray]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as w  # noqa: E402

N_FANOUT, N_CHAIN, N_CPU, ARRAY_MB = 1000, 200, 8, 50
TARGETS = {"W1": "<= 50 us", "W2": "<= 150 us", "W3": ">= 1.9x", "W4": "<= 40 ms", "W5": "<= 0.2 s"}


def best(fn: Callable[[], object], repeat: int, between: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        between()  # untimed: let background work of this repetition finish
    return min(times)


def fresh_process(code: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, env=env, capture_output=True)
    return time.perf_counter() - started


class Framework:
    name = ""

    def setup(self) -> None: ...
    def close(self) -> None: ...
    def settle(self) -> None: ...
    def w1(self) -> None: raise NotImplementedError
    def w2(self) -> None: raise NotImplementedError
    def w3(self, turns: int) -> None: raise NotImplementedError
    def w4(self) -> None: raise NotImplementedError
    w5_code = ""


class Maze(Framework):
    name = "maze (local)"
    backend = "joblib"
    options: dict[str, object] = {}

    def setup(self) -> None:
        from maze import MaClient

        self.client = MaClient(backend=self.backend, **self.options)
        self._fanout = self.client.create_workflow("w1")
        src = self._fanout.add_task(w.noop, inputs={"x": 0})
        mids = [self._fanout.add_task(w.noop, inputs={"x": src.outputs["x"]}) for _ in range(N_FANOUT)]
        sink = self._fanout.add_task(w.noop, inputs={"x": 0})
        for m in mids:
            self._fanout.add_edge(m, sink)
        self._chain = self.client.create_workflow("w2")
        prev = self._chain.add_task(w.noop, inputs={"x": 0})
        for _ in range(N_CHAIN - 1):
            prev = self._chain.add_task(w.noop, inputs={"x": prev.outputs["x"]})
        self._array = self.client.create_workflow("w4")
        arr = self._array.add_task(w.make_array, inputs={"mb": ARRAY_MB})
        for _ in range(4):
            self._array.add_task(w.total, inputs={"array": arr.outputs["array"]})
        self.w2()  # warm the workers
        self.settle()

    def _run(self, wf) -> None:
        summary = wf.wait(wf.run())
        assert summary["workflow_completed"], summary
        wf.clear_cache()

    def settle(self) -> None:
        history = self.client._history
        if history is not None:
            history.flush()  # the run history is written in the background; let it catch up

    def w1(self) -> None:
        self._run(self._fanout)

    def w2(self) -> None:
        self._run(self._chain)

    def w3(self, turns: int) -> None:
        wf = self.client.create_workflow("w3")
        for _ in range(N_CPU):
            wf.add_task(w.spin, inputs={"turns": turns})
        self._run(wf)

    def w4(self) -> None:
        self._run(self._array)

    def close(self) -> None:
        self.client.close()

    w5_code = """
        from maze import MaClient
        from workloads import noop
        client = MaClient()
        wf = client.create_workflow()
        t = wf.add_task(noop, inputs={"x": 1})
        assert wf.get_task_result(wf.run(), t.task_id)["result"] == {"x": 1}
    """


class MazeWidget(Maze):
    """W1 with the live DAG widget following every run (what a notebook user gets)."""

    name = "maze (local) + widget"

    widget = None

    def _run(self, wf) -> None:
        # Timed until the run ends; the widget's layout (low priority, in the
        # background) may still be drawing a large graph, which settle() waits for.
        from maze.notebook.widget import DagWidget

        run_id = wf.run()
        self.widget = DagWidget(wf.plan(), wf.run_state(run_id))
        assert wf.wait(run_id)["workflow_completed"]
        wf.clear_cache()

    def settle(self) -> None:
        super().settle()
        if self.widget is not None:
            self.widget.wait()
            assert set(self.widget.states.values()) == {"finished"}
            self.widget.close()
            self.widget = None


class MazeRay(Maze):
    name = "maze (ray)"
    backend = "ray"
    w5_code = Maze.w5_code.replace("MaClient()", 'MaClient(backend="ray")')


class MazeRayWaiting(MazeRay):
    """maze on Ray submitting each task only once its upstream tasks have finished (``eager=False``)."""

    name = "maze (ray, eager=False)"
    options = {"eager": False}
    w5_code = Maze.w5_code.replace("MaClient()", 'MaClient(backend="ray", eager=False)')


class PPE(Framework):
    name = "ProcessPoolExecutor"

    def setup(self) -> None:
        self.pool = ProcessPoolExecutor(os.cpu_count())
        list(self.pool.map(w.noop_plain, range(8)))

    def w1(self) -> None:
        x = self.pool.submit(w.noop_plain, 0).result()
        futures = [self.pool.submit(w.noop_plain, x) for _ in range(N_FANOUT)]
        for f in futures:
            f.result()
        self.pool.submit(w.noop_plain, 0).result()

    def w2(self) -> None:
        x = 0
        for _ in range(N_CHAIN):
            x = self.pool.submit(w.noop_plain, x).result()

    def w3(self, turns: int) -> None:
        list(self.pool.map(w.spin_plain, [turns] * N_CPU))

    def w4(self) -> None:
        array = self.pool.submit(w.make_array_plain, ARRAY_MB).result()
        for f in [self.pool.submit(w.total_plain, array) for _ in range(4)]:
            f.result()

    def close(self) -> None:
        self.pool.shutdown()

    w5_code = """
        from concurrent.futures import ProcessPoolExecutor
        from workloads import noop_plain
        if __name__ == "__main__":
            with ProcessPoolExecutor(2) as pool:
                assert pool.submit(noop_plain, 1).result() == 1
    """


class Joblib(Framework):
    name = "joblib.Parallel"

    def setup(self) -> None:
        from joblib import Parallel, delayed

        self.parallel, self.delayed = Parallel(n_jobs=-1), delayed
        self.parallel(delayed(w.noop_plain)(i) for i in range(8))

    def w1(self) -> None:
        x = self.parallel([self.delayed(w.noop_plain)(0)])[0]
        self.parallel(self.delayed(w.noop_plain)(x) for _ in range(N_FANOUT))
        self.parallel([self.delayed(w.noop_plain)(0)])

    def w2(self) -> None:
        x = 0
        for _ in range(N_CHAIN):
            x = self.parallel([self.delayed(w.noop_plain)(x)])[0]

    def w3(self, turns: int) -> None:
        self.parallel(self.delayed(w.spin_plain)(turns) for _ in range(N_CPU))

    def w4(self) -> None:
        array = self.parallel([self.delayed(w.make_array_plain)(ARRAY_MB)])[0]
        self.parallel(self.delayed(w.total_plain)(array) for _ in range(4))

    w5_code = """
        from joblib import Parallel, delayed
        from workloads import noop_plain
        assert Parallel(n_jobs=-1)([delayed(noop_plain)(1)]) == [1]
    """


class DaskThreaded(Framework):
    name = "dask (threads)"

    def setup(self) -> None:
        from dask.threaded import get

        self.get = get

    def w1(self) -> None:
        graph = {"src": (w.noop_plain, 0)}
        graph.update({f"m{i}": (w.noop_plain, "src") for i in range(N_FANOUT)})
        graph["sink"] = (lambda *xs: 0, *[f"m{i}" for i in range(N_FANOUT)])
        self.get(graph, "sink")

    def w2(self) -> None:
        graph = {"c0": (w.noop_plain, 0)}
        graph.update({f"c{i}": (w.noop_plain, f"c{i - 1}") for i in range(1, N_CHAIN)})
        self.get(graph, f"c{N_CHAIN - 1}")

    def w3(self, turns: int) -> None:
        graph = {f"s{i}": (w.spin_plain, turns) for i in range(N_CPU)}
        self.get(graph, list(graph))

    def w4(self) -> None:
        graph = {"a": (w.make_array_plain, ARRAY_MB)}
        graph.update({f"t{i}": (w.total_plain, "a") for i in range(4)})
        self.get(graph, [f"t{i}" for i in range(4)])

    w5_code = """
        from dask.threaded import get
        from workloads import noop_plain
        assert get({"a": (noop_plain, 1)}, "a") == 1
    """


class DaskDistributed(Framework):
    name = "dask.distributed"

    def setup(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None)
        self.client = Client(self.cluster)
        self.client.gather(self.client.map(w.noop_plain, range(8)))

    def w1(self) -> None:
        c = self.client
        src = c.submit(w.noop_plain, 0, pure=False)
        mids = [c.submit(w.noop_plain, src, pure=False) for _ in range(N_FANOUT)]
        c.submit(lambda *xs: 0, *mids, pure=False).result()

    def w2(self) -> None:
        x = self.client.submit(w.noop_plain, 0, pure=False)
        for _ in range(N_CHAIN - 1):
            x = self.client.submit(w.noop_plain, x, pure=False)
        x.result()

    def w3(self, turns: int) -> None:
        self.client.gather([self.client.submit(w.spin_plain, turns, pure=False) for _ in range(N_CPU)])

    def w4(self) -> None:
        a = self.client.submit(w.make_array_plain, ARRAY_MB, pure=False)
        self.client.gather([self.client.submit(w.total_plain, a, pure=False) for _ in range(4)])

    def close(self) -> None:
        self.client.close()
        self.cluster.close()

    w5_code = """
        from distributed import Client, LocalCluster
        from workloads import noop_plain
        if __name__ == "__main__":
            with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as c:
                assert c.submit(noop_plain, 1).result() == 1
    """


class Ray(Framework):
    name = "ray (raw)"

    def setup(self) -> None:
        import ray

        self.ray = ray
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        self.noop = ray.remote(w.noop_plain)
        self.spin = ray.remote(w.spin_plain)
        self.make = ray.remote(w.make_array_plain)
        self.total = ray.remote(w.total_plain)
        ray.get([self.noop.remote(i) for i in range(8)])

    def w1(self) -> None:
        src = self.noop.remote(0)
        mids = [self.noop.remote(src) for _ in range(N_FANOUT)]
        self.ray.get(self.ray.remote(lambda *xs: 0).remote(*mids))

    def w2(self) -> None:
        x = self.noop.remote(0)
        for _ in range(N_CHAIN - 1):
            x = self.noop.remote(x)
        self.ray.get(x)

    def w3(self, turns: int) -> None:
        self.ray.get([self.spin.remote(turns) for _ in range(N_CPU)])

    def w4(self) -> None:
        a = self.make.remote(ARRAY_MB)
        self.ray.get([self.total.remote(a) for _ in range(4)])

    def close(self) -> None:
        self.ray.shutdown()

    w5_code = """
        import ray
        from workloads import noop_plain
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        assert ray.get(ray.remote(noop_plain).remote(1)) == 1
        ray.shutdown()
    """


FRAMEWORKS = {"maze": Maze, "maze-widget": MazeWidget, "ppe": PPE, "joblib": Joblib, "dask": DaskThreaded,
              "distributed": DaskDistributed, "ray": Ray, "maze-ray": MazeRay, "maze-ray-waiting": MazeRayWaiting}


def available(key: str) -> bool:
    module = {"distributed": "distributed", "ray": "ray", "maze-ray": "ray", "maze-ray-waiting": "ray",
              "dask": "dask"}.get(key)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def sequential_time(turns: int, repeat: int = 2) -> float:
    """The W3 baseline: the 8 tasks one after another in this process (best of ``repeat``)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(N_CPU):
            w.spin_plain(turns)
        times.append(time.perf_counter() - started)
    return min(times)


def measure(fw: Framework, turns: int, repeat: int, which: set[str] | None = None) -> dict[str, float]:
    """Each workload in ``which`` (all by default); the others read as NaN."""
    steps: dict[str, Callable[[], float]] = {
        "W1": lambda: best(fw.w1, repeat, fw.settle) / (N_FANOUT + 2) * 1e6,
        "W2": lambda: best(fw.w2, repeat, fw.settle) / N_CHAIN * 1e6,
        # the sequential baseline is taken right before, on the same (possibly busy) machine
        "W3": lambda: sequential_time(turns) / best(lambda: fw.w3(turns), 2, fw.settle),
        "W4": lambda: best(fw.w4, repeat, fw.settle) * 1e3,
    }
    fw.setup()
    try:
        out = {k: step() if which is None or k in which else math.nan for k, step in steps.items()}
    finally:
        fw.close()
    out["W5"] = min(fresh_process(fw.w5_code) for _ in range(2)) if which is None or "W5" in which else math.nan
    return out


def scale_checks(sizes: tuple[int, ...] = (10_000, 100_000)) -> None:
    """Large DAGs with the run history on (the default): time, and the driver's memory per task.

    Each DAG is chains of 100 no-op tasks side by side (so 1% of the tasks are ready at first),
    built in a fresh client writing to a throw-away history.
    """
    import tempfile

    import psutil

    from maze import MaClient

    print("\nscale (maze local backend, history on)")
    me = psutil.Process()
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp, MaClient(history=os.path.join(tmp, "runs.sqlite3")) as client:
            wf = client.create_workflow(f"{n}-tasks")
            started = time.perf_counter()
            for _ in range(n // 100):
                prev = wf.add_task(w.noop, inputs={"x": 0})
                for _ in range(99):
                    prev = wf.add_task(w.noop, inputs={"x": prev.outputs["x"]})
            built = time.perf_counter() - started
            before = me.memory_info().rss
            started = time.perf_counter()
            summary = wf.wait(wf.run())
            ran = time.perf_counter() - started
            grew = me.memory_info().rss - before
            client._history.flush()
            flushed = time.perf_counter() - started
            print(f"  {n:>7,} tasks: {summary['status']}, built in {built:.1f} s, ran in {ran:.2f} s "
                  f"({ran / n * 1e6:.0f} us/task; history written {flushed:.2f} s after the start), "
                  f"driver RSS +{grew / 2**20:.0f} MB ({grew / n / 1024:.1f} kB per task, messages and results kept)")


def load_checks() -> None:
    """Scale and soak: a 10,000-task DAG, 20 runs at once, 1,000 runs in a row."""
    import psutil

    from maze import MaClient

    print("\nload checks (maze local backend)")
    with MaClient(history=None) as client:
        wf = client.create_workflow("10k")
        for _ in range(100):  # 100 chains of 100 tasks
            prev = wf.add_task(w.noop, inputs={"x": 0})
            for _ in range(99):
                prev = wf.add_task(w.noop, inputs={"x": prev.outputs["x"]})
        started = time.perf_counter()
        summary = wf.wait(wf.run())
        print(f"  10,000-task DAG: {summary['status']} in {time.perf_counter() - started:.1f} s, "
              f"{len(summary['task_results'])} results")

        wf = client.create_workflow("concurrent")
        t1 = wf.add_task(w.token)
        t2 = wf.add_task(w.echo, inputs={"token": t1.outputs["token"]})
        started = time.perf_counter()
        runs = [wf.run() for _ in range(20)]
        summaries = [wf.wait(r) for r in runs]
        tokens = [s["task_results"][t1.task_id]["token"] for s in summaries]
        ok = all(s["task_results"][t2.task_id]["echo"] == tok for s, tok in zip(summaries, tokens))
        print(f"  20 runs at once: {sum(s['workflow_completed'] for s in summaries)}/20 completed, "
              f"{len(set(tokens))} distinct results, each run saw its own upstream: {ok}, "
              f"{time.perf_counter() - started:.2f} s")

        me = psutil.Process()
        for keep in (False, True):
            for _ in range(50):  # warm up allocator pools
                wf.wait(r := wf.run())
                wf.clear_cache(r)
            before = me.memory_info().rss
            for _ in range(1000):
                r = wf.run()
                wf.wait(r)
                if not keep:
                    wf.clear_cache(r)
            growth = (me.memory_info().rss - before) / 2**20
            what = "records kept (list_cached_runs)" if keep else "clear_cache after each"
            print(f"  1,000 sequential runs, {what}: RSS grew {growth:.1f} MB")
            wf.clear_cache()


def chains_dag(add: Callable[..., object], ref: Callable[[object], object]) -> list[object]:
    """10,000 no-op tasks as 100 chains of 100; the last task of each chain."""
    ends = []
    for _ in range(100):
        prev = add(w.noop, 0)
        for _ in range(99):
            prev = add(w.noop, ref(prev))
        ends.append(prev)
    return ends


def layers_dag(add: Callable[..., object], ref: Callable[[object], object]) -> list[object]:
    """200 wide x 50 deep: each task below the first layer reads two tasks of the layer above."""
    layer = [add(w.noop, 0) for _ in range(200)]
    for _ in range(49):
        layer = [add(w.join, ref(layer[j]), ref(layer[(j + 1) % 200])) for j in range(200)]
    return layer


def load_checks_ray() -> None:
    """maze on Ray against raw Ray, the same DAGs in the same process (each run once, after a warm-up)."""
    import ray

    from maze import MaClient

    shapes = {"10,000 tasks (100 chains of 100)": chains_dag, "200 wide x 50 deep (10,000 tasks)": layers_dag}
    times: dict[str, dict[str, float]] = {name: {} for name in shapes}
    for label, options in (("maze (ray)", {}), ("maze (ray, eager=False)", {"eager": False})):
        with MaClient(backend="ray", **options) as client:
            for name, build in shapes.items():
                wf = client.create_workflow(name)

                def add(fn: object, *args: object, wf=wf) -> object:
                    keys = ["x"] if len(args) == 1 else ["a", "b"]
                    return wf.add_task(fn, inputs=dict(zip(keys, args)))

                build(add, lambda t: t.outputs["x"])  # type: ignore[attr-defined]
                warm = client.create_workflow("warm")
                prev = warm.add_task(w.noop, inputs={"x": 0})
                for _ in range(50):
                    prev = warm.add_task(w.noop, inputs={"x": prev.outputs["x"]})
                assert warm.wait(warm.run())["workflow_completed"]
                started = time.perf_counter()
                summary = wf.wait(wf.run())
                times[name][label] = time.perf_counter() - started
                assert summary["workflow_completed"] and len(summary["task_results"]) == 10_000, summary["status"]
                wf.clear_cache()
                client._history.flush() if client._history is not None else None
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        noop, join = ray.remote(w.noop_plain), ray.remote(w.join_plain)
        ray.get([noop.remote(i) for i in range(50)])
        remote = {w.noop: noop, w.join: join}
        for name, build in shapes.items():
            started = time.perf_counter()
            ends = build(lambda fn, *args: remote[fn].remote(*args), lambda r: r)
            ray.get(ends)
            times[name]["ray (raw)"] = time.perf_counter() - started
    finally:
        ray.shutdown()
    print("\nload checks on Ray (s, one run each; maze with its run history on, as by default)")
    for name, row in times.items():
        raw = row["ray (raw)"]
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f} s ({v / raw:.2f}x)" for k, v in row.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="maze benchmark")
    parser.add_argument("--only", default=",".join(FRAMEWORKS), help="comma-separated: " + ", ".join(FRAMEWORKS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5", help="comma-separated: W1, ..., W5")
    parser.add_argument("--load", action="store_true", help="also run the load checks (local backend)")
    parser.add_argument("--load-ray", action="store_true", help="also run the load checks on Ray, against raw Ray")
    args = parser.parse_args(argv)
    which = set(args.workloads.split(","))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)

    turns = w.calibrate()
    sequential = sequential_time(turns)
    print(f"machine: {os.cpu_count()} cpus; W3 tasks: {sequential / N_CPU:.3f} s each, {sequential:.2f} s in sequence\n")

    rows = []
    for key in args.only.split(","):
        if not available(key):
            print(f"(skipping {key}: not installed)")
            continue
        fw = FRAMEWORKS[key]()
        rows.append((fw.name, measure(fw, turns, args.repeat, which)))
        print(f"measured {fw.name}", flush=True)

    header = f"{'':22}{'W1 us/task':>12}{'W2 us/edge':>12}{'W3 speedup':>12}{'W4 ms':>10}{'W5 s':>8}"
    print("\n" + header)
    print(f"{'target (maze local)':22}" + "".join(f"{TARGETS[k]:>{n}}" for k, n in zip(TARGETS, (12, 12, 12, 10, 8))))
    for name, r in rows:
        print(f"{name:22}{r['W1']:>12.0f}{r['W2']:>12.0f}{r['W3']:>11.2f}x{r['W4']:>10.0f}{r['W5']:>8.2f}")
    if args.load:
        scale_checks()
        load_checks()
    if args.load_ray:
        load_checks_ray()
    return 0


if __name__ == "__main__":
    sys.exit(main())
