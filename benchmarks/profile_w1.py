"""Where maze's driver spends its time on W1 (1 -> 1000 no-op tasks -> 1), per task.

Runs W1 five times under yappi's CPU clock (``pip install yappi``) with the
run history off, and prints, per task, the time inside the functions of the
driver's hot path: the backend's socket frames, the scheduler's decisions, the
run's transitions (messages) and the futures. A profiler inflates every
figure several times over; read the shares, not the microseconds.

Usage: python benchmarks/profile_w1.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as w  # noqa: E402

HOT_PATH = [
    "LocalBackend._on_readable", "LocalBackend._on_done", "Engine._on_done", "Engine._on_event",
    "Engine._dispatch", "Engine._launch", "Work.first_call", "LocalBackend.submit", "LocalBackend._send",
    "Engine._succeed", "RunState.finish", "RunState.start", "RunState._record", "Future.set_result",
    "FrameReader.recv_bytes", "FrameWriter.flush", "decode", "encode", "EpollSelector.select",
    "Engine._queue_ready", "ResourcePool.try_acquire", "ResourcePool.release", "Snapshot.fingerprints",
    "TopologicalSorter.done", "TopologicalSorter.get_ready", "Engine._line_up", "Lining.behind",
]


def main(runs: int = 5, fanout: int = 1000) -> None:
    import yappi

    from maze import MaClient

    with MaClient(history=None) as client:
        wf = client.create_workflow("w1")
        src = wf.add_task(w.noop, inputs={"x": 0})
        mids = [wf.add_task(w.noop, inputs={"x": src.outputs["x"]}) for _ in range(fanout)]
        sink = wf.add_task(w.noop, inputs={"x": 0})
        for m in mids:
            wf.add_edge(m, sink)
        for _ in range(3):  # warm the workers
            wf.wait(wf.run())
        yappi.set_clock_type("cpu")
        yappi.start()
        for _ in range(runs):
            wf.wait(wf.run())
        yappi.stop()
    per_task = runs * (fanout + 2) / 1e6
    totals: dict[str, list[float]] = {}
    for stat in yappi.get_func_stats():
        if stat.name in HOT_PATH:
            row = totals.setdefault(stat.name, [0.0, 0.0, 0])
            row[0] += stat.ttot
            row[1] += stat.tsub
            row[2] += stat.ncall
    print(f"{'function':32}{'total us/task':>15}{'own us/task':>13}{'calls/task':>12}")
    for name in HOT_PATH:
        if name in totals:
            total, own, calls = totals[name]
            print(f"{name:32}{total / per_task:15.1f}{own / per_task:13.1f}{calls / per_task * 1e-6:12.1f}")


if __name__ == "__main__":
    main()
