"""The benchmark's task bodies, importable by every framework's workers."""

from __future__ import annotations

import os
import time

import numpy as np

from maze import task

# Set by calibrate(); the number of loop turns that take about 0.25 s here.
SPIN_TURNS = 2_000_000


def calibrate(seconds: float = 0.25) -> int:
    turns = 200_000
    started = time.perf_counter()
    spin_plain(turns)
    elapsed = time.perf_counter() - started
    return int(turns * seconds / elapsed)


def spin_plain(turns: int) -> int:
    total = 0
    for i in range(turns):
        total += i * i % 7
    return total


def noop_plain(x=None):
    return x


def join_plain(a=None, b=None):
    return a


def make_array_plain(mb: int) -> np.ndarray:
    return np.ones(mb * 2**20 // 8, dtype=np.float64)


def total_plain(array: np.ndarray) -> float:
    return float(array.sum())


@task(inputs=["x"], outputs=["x"])
def noop(params):
    return {"x": params["x"]}


@task(inputs=["a", "b"], outputs=["x"])
def join(params):
    return {"x": params["a"]}


@task(inputs=["turns"], outputs=["total"])
def spin(params):
    return {"total": spin_plain(params["turns"])}


@task(inputs=["mb"], outputs=["array"])
def make_array(params):
    return {"array": make_array_plain(params["mb"])}


@task(inputs=["array"], outputs=["total"])
def total(params):
    return {"total": total_plain(params["array"])}


@task(inputs=[], outputs=["token"])
def token(params):
    return {"token": os.urandom(8).hex()}


@task(inputs=["token"], outputs=["echo"])
def echo(params):
    return {"echo": params["token"]}
