"""Resource admission: which task may start now, and on which GPUs.

A :class:`ResourcePool` is shared by every run of one client, because runs of
one client share one machine (or one cluster). It only does arithmetic; the
scheduler decides *when* to ask. The pool is not thread-safe on its own: the
scheduler calls it under its lock.

GPU placement: a fractional demand (``gpu < 1``) goes to one device whose free
fraction *and* free memory fit, choosing the fullest such device so that whole
devices stay free for whole-device tasks (best fit). A demand of ``n`` whole
GPUs takes ``n`` devices that are entirely free.
"""

from __future__ import annotations

from dataclasses import dataclass

from .resources import Capacity, Resources

# Fractions such as 0.1 + 0.2 do not add up exactly in binary floating point;
# comparisons allow this much slack so that ten tasks of 0.1 GPU fit one GPU.
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Grant:
    """Resources handed to one task attempt; given back with :meth:`ResourcePool.release`."""

    resources: Resources
    gpu_ids: tuple[int, ...] = ()


class ResourcePool:
    """Free CPU, memory and per-GPU fraction and memory of one capacity."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._cpu = capacity.cpu
        self._cpu_mem = capacity.cpu_mem
        self._gpu_free = [1.0] * capacity.gpu          # free fraction of each device
        self._gpu_mem_free = list(capacity.gpu_mem)    # free MB of each device

    def why_never(self, need: Resources) -> str | None:
        """Why ``need`` can never be granted, even on an idle machine; ``None`` if it can."""
        if not self.capacity.nodes:
            return _why_never(self.capacity, need)
        reasons = [_why_never(node, need) for node in self.capacity.nodes]
        if all(reasons):
            return f"no node of the cluster can hold it ({'; '.join(f'node {i}: {r}' for i, r in enumerate(reasons))})"
        return None

    def try_acquire(self, need: Resources) -> Grant | None:
        """Take ``need`` if it fits what is free now; otherwise take nothing."""
        if self.capacity.managed:
            return Grant(need)  # the backend queues by resources itself
        if need.cpu > self._cpu + _EPS or need.cpu_mem > self._cpu_mem + _EPS:
            return None
        gpu_ids: tuple[int, ...] = ()
        if need.gpu > 0:
            picked = self._place_gpus(need)
            if picked is None:
                return None
            gpu_ids = picked
        self._cpu -= need.cpu
        self._cpu_mem -= need.cpu_mem
        share = min(need.gpu, 1.0)
        for i in gpu_ids:
            self._gpu_free[i] -= share
            self._gpu_mem_free[i] -= need.gpu_mem
        return Grant(need, gpu_ids)

    def release(self, grant: Grant) -> None:
        if self.capacity.managed:
            return
        need = grant.resources
        self._cpu += need.cpu
        self._cpu_mem += need.cpu_mem
        share = min(need.gpu, 1.0)
        for i in grant.gpu_ids:
            self._gpu_free[i] += share
            self._gpu_mem_free[i] += need.gpu_mem

    def _place_gpus(self, need: Resources) -> tuple[int, ...] | None:
        mem_ok = [self._gpu_mem_free[i] + _EPS >= need.gpu_mem for i in range(self.capacity.gpu)]
        if need.gpu >= 1:
            free = [i for i in range(self.capacity.gpu) if self._gpu_free[i] >= 1 - _EPS and mem_ok[i]]
            count = int(need.gpu)
            return tuple(free[:count]) if len(free) >= count else None
        fitting = [
            i for i in range(self.capacity.gpu) if self._gpu_free[i] + _EPS >= need.gpu and mem_ok[i]
        ]
        if not fitting:
            return None
        return (min(fitting, key=lambda i: (self._gpu_free[i], i)),)


def _why_never(cap: Capacity, need: Resources) -> str | None:
    """Why ``need`` exceeds one machine's ``cap``; ``None`` if it fits an idle one."""
    if need.cpu > cap.cpu + _EPS:
        return f"cpu={_n(need.cpu)} exceeds the capacity of {_n(cap.cpu)} cpu"
    if need.cpu_mem > cap.cpu_mem + _EPS:
        return f"cpu_mem={_n(need.cpu_mem)} MB exceeds the capacity of {_n(cap.cpu_mem)} MB"
    if need.gpu > 0:
        wanted = max(1, int(need.gpu)) if need.gpu >= 1 else 1
        if wanted > cap.gpu:
            return f"gpu={_n(need.gpu)} exceeds the capacity of {cap.gpu} GPU"
        roomy = [m for m in cap.gpu_mem if m + _EPS >= need.gpu_mem]
        if len(roomy) < wanted:
            return (
                f"gpu_mem={_n(need.gpu_mem)} MB per GPU exceeds the memory of the "
                f"GPUs ({', '.join(_n(m) + ' MB' for m in cap.gpu_mem)})"
            )
    elif need.gpu_mem > 0:
        return f"gpu_mem={_n(need.gpu_mem)} MB is asked without any gpu"
    return None


def _n(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
