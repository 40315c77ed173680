"""Small tasks used across the behaviour tests."""

import os
import time

from maze import task


@task(inputs=["seconds"], outputs=["pid", "start", "end"])
def sleeper(params):
    start = time.time()
    time.sleep(params["seconds"])
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@task(inputs=["x"], outputs=["y"])
def inc(params):
    return {"y": params["x"] + 1}


@task(inputs=[], outputs=["token"])
def token(params):
    return {"token": os.urandom(8).hex()}


@task(inputs=["token"], outputs=["echo"])
def echo(params):
    time.sleep(0.05)
    return {"echo": params["token"]}


@task(inputs=["x"], outputs=["y"])
def boom(params):
    raise ValueError(f"bad value {params['x']}")


@task(inputs=["x"], outputs=["y"])
def not_a_dict(params):
    return [params["x"]]


@task(inputs=["x"], outputs=["y", "z"])
def missing_output(params):
    return {"y": 1}


@task(inputs=[], outputs=["visible"], resources={"cpu": 1, "gpu": 1})
def one_gpu(params):
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


@task(inputs=[], outputs=["visible", "start", "end"], resources={"cpu": 0.5, "gpu": 0.5, "gpu_mem": 1000})
def half_gpu(params):
    start = time.time()
    time.sleep(1.5)   # two started together overlap even when a busy machine starts one a second late
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}


@task(inputs=[], outputs=["visible"], resources={"cpu": 0.5, "gpu": 2})
def two_gpus(params):
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


class OnlyInDriver:
    """A value that unpickles only in the process that made it (a class a worker cannot import, say)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self):
        return (rebuild_only_in, (self.pid,))


def rebuild_only_in(pid: int) -> OnlyInDriver:
    if os.getpid() != pid:
        raise RuntimeError("this value cannot be rebuilt outside the driver")
    return OnlyInDriver(pid)


@task(inputs=["gate"], outputs=["opened"])
def speaks_then_waits(params):
    """Prints a line, then waits (30 s at most) for the file ``gate`` to exist, and prints another."""
    print("first line", flush=True)
    deadline = time.time() + 30
    while not os.path.exists(params["gate"]) and time.time() < deadline:
        time.sleep(0.02)
    print("second line")
    return {"opened": os.path.exists(params["gate"])}


@task(inputs=["lines", "seconds"], outputs=["count"])
def chatty(params):
    """Prints ``lines`` numbered lines, spread over ``seconds``, alternating stdout and stderr."""
    import sys

    for i in range(params["lines"]):
        print(f"line {i}", file=sys.stderr if i % 2 else sys.stdout, flush=True)
        time.sleep(params["seconds"] / params["lines"])
    return {"count": params["lines"]}
