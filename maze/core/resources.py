"""What a task needs and what a machine (or cluster) offers.

:class:`Resources` is a task's demand, :class:`Capacity` the supply a client
schedules against. Both are parsed from the plain dicts of the user API
(``{"cpu": 1, "cpu_mem": 128, "gpu": 0, "gpu_mem": 0}``) and validated here, so
every error about a resource value has one wording.

Units: ``cpu`` in cores (fractions allowed), ``cpu_mem`` in MB, ``gpu`` in
devices (a fraction of one device, or a whole number of devices), ``gpu_mem``
in MB *per device*.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import TaskDefinitionError

RESOURCE_KEYS = ("cpu", "cpu_mem", "gpu", "gpu_mem")

_ACCEPTED = {
    "cpu": "a number of cores greater than 0 (fractions allowed)",
    "cpu_mem": "a number of MB, 0 or more",
    "gpu": "0, a fraction of one GPU up to 1 (e.g. 0.5), or a whole number of GPUs",
    "gpu_mem": "a number of MB per GPU, 0 or more",
}


def _number(owner: str, key: str, value: Any) -> float:
    # bool is an int subclass; {"gpu": True} is a mistake, not "1 GPU".
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TaskDefinitionError(
            f"{owner}: resource {key!r}={value!r} is not a number; expected {_ACCEPTED[key]}"
        )
    if math.isinf(value):
        raise TaskDefinitionError(
            f"{owner}: resource {key!r}={value!r} is infinite; expected {_ACCEPTED[key]}"
        )
    return float(value)


def _check_keys(owner: str, spec: Mapping[str, Any]) -> None:
    if not isinstance(spec, Mapping):
        raise TaskDefinitionError(
            f"{owner}: resources must be a dict with keys {', '.join(RESOURCE_KEYS)}; "
            f"got {type(spec).__name__}"
        )
    unknown = [k for k in spec if k not in RESOURCE_KEYS]
    if unknown:
        raise TaskDefinitionError(
            f"{owner}: unknown resource key {unknown[0]!r}; accepted keys are "
            + ", ".join(RESOURCE_KEYS)
        )


@dataclass(frozen=True, slots=True)
class Resources:
    """A task's demand. Missing keys default to one core and nothing else."""

    cpu: float = 1.0
    cpu_mem: float = 0.0
    gpu: float = 0.0
    gpu_mem: float = 0.0

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, *, owner: str, base: Resources | None = None) -> Resources:
        """Validate a user dict. Keys absent from ``spec`` come from ``base`` (or the defaults)."""
        base = base or cls()
        if spec is None:
            return base
        _check_keys(owner, spec)
        values = {k: getattr(base, k) for k in RESOURCE_KEYS}
        for key, raw in spec.items():
            value = _number(owner, key, raw)
            if key == "cpu" and value <= 0:
                raise TaskDefinitionError(
                    f"{owner}: resource 'cpu'={raw!r} is not accepted; expected {_ACCEPTED['cpu']}"
                )
            if value < 0:
                raise TaskDefinitionError(
                    f"{owner}: resource {key!r}={raw!r} is negative; expected {_ACCEPTED[key]}"
                )
            if key == "gpu" and value > 1 and not value.is_integer():
                raise TaskDefinitionError(
                    f"{owner}: resource 'gpu'={raw!r} is not accepted; expected {_ACCEPTED['gpu']}"
                )
            values[key] = value
        return cls(**values)

    def as_dict(self) -> dict[str, float]:
        """The user-facing dict form, e.g. for messages and graph views."""
        return {k: _plain(getattr(self, k)) for k in RESOURCE_KEYS}


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a client may schedule against.

    ``gpu_mem`` holds the memory of each GPU in MB, one entry per device;
    ``math.inf`` means the device's memory is not tracked (a declared GPU
    without ``gpu_mem``).
    """

    cpu: float
    cpu_mem: float
    gpu_mem: tuple[float, ...] = field(default=())
    # For a cluster: each node's own capacity (the fields above are the sums).
    # A task must fit one node; empty for a single machine.
    nodes: tuple[Capacity, ...] = field(default=())
    # True when the backend's own scheduler enforces resources (a Ray cluster,
    # perhaps shared with other jobs): maze then only checks that every task
    # fits somewhere, and hands ready tasks straight to the backend.
    managed: bool = False

    @property
    def gpu(self) -> int:
        return len(self.gpu_mem)

    @classmethod
    def of_nodes(cls, nodes: tuple[Capacity, ...], *, managed: bool = False) -> Capacity:
        return cls(
            cpu=sum(n.cpu for n in nodes),
            cpu_mem=sum(n.cpu_mem for n in nodes),
            gpu_mem=tuple(m for n in nodes for m in n.gpu_mem),
            nodes=nodes if len(nodes) > 1 else (),
            managed=managed,
        )

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, detected: Capacity) -> Capacity:
        """A client's ``resources=`` override; keys it leaves out are detected."""
        owner = "MaClient(resources=...)"
        _check_keys(owner, spec)
        values = {k: _number(owner, k, v) for k, v in spec.items()}
        for key, value in values.items():
            if value < 0 or (key == "cpu" and value == 0):
                raise TaskDefinitionError(
                    f"{owner}: {key!r}={spec[key]!r} is not accepted; expected {_ACCEPTED[key]}"
                )
        if "gpu" in values and not values["gpu"].is_integer():
            raise TaskDefinitionError(
                f"{owner}: 'gpu'={spec['gpu']!r} is not accepted; "
                "a machine has a whole number of GPUs"
            )
        cpu = values.get("cpu", detected.cpu)
        cpu_mem = values.get("cpu_mem", detected.cpu_mem)
        if "gpu" in values or "gpu_mem" in values:
            count = int(values["gpu"]) if "gpu" in values else detected.gpu
            per_gpu = values.get("gpu_mem") or math.inf
            gpu_mem = (per_gpu,) * count
        else:
            gpu_mem = detected.gpu_mem
        return cls(cpu=cpu, cpu_mem=cpu_mem, gpu_mem=gpu_mem, nodes=detected.nodes if not spec else (),
                   managed=detected.managed)

    def describe(self) -> str:
        gpus = f"{self.gpu} GPU"
        if self.gpu and not math.isinf(self.gpu_mem[0]):
            gpus += f" ({_plain(min(self.gpu_mem))} MB each)"
        return f"{_plain(self.cpu)} cpu, {_plain(self.cpu_mem)} MB cpu_mem, {gpus}"


def usable_cpus() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def detect_capacity() -> Capacity:
    """This machine: usable cores, physical memory, NVIDIA GPUs through NVML."""
    cpu = usable_cpus()
    try:
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        mem_mb = math.inf
    return Capacity(cpu=float(cpu), cpu_mem=float(int(mem_mb)), gpu_mem=detect_gpus())


def detect_gpus() -> tuple[float, ...]:
    """Memory (MB) of each NVIDIA GPU; ``()`` when there is no driver or no NVML."""
    if not _nvidia_driver_may_be_present():
        return ()
    try:
        import pynvml  # nvidia-ml-py; small, and only needed here
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        return ()  # no driver: a machine without GPUs, not an error
    try:
        return tuple(
            pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total / 2**20
            for i in range(pynvml.nvmlDeviceGetCount())
        )
    except pynvml.NVMLError:
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _nvidia_driver_may_be_present() -> bool:
    """False where no NVIDIA driver can be loaded, known without importing NVML's bindings (30 ms).

    A Linux machine with the driver has ``/proc/driver/nvidia`` and
    ``/dev/nvidiactl`` (containers given GPUs have them mounted); WSL 2 has
    ``/dev/dxg`` instead. macOS has no NVIDIA driver. Elsewhere, ask NVML.
    """
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"))
    return True
