"""``MaClient``: the entry point that ties a backend, a capacity and workflows together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maze.backends import create_backend
from maze.core.errors import UnknownBackendError
from maze.core.protocol import Backend
from maze.core.resources import RESOURCE_KEYS, Capacity
from maze.core.scheduler import Engine
from maze.core.workflow import MaWorkflow
from maze.notebook.display import NotebookViewer


class MaClient:
    """Where workflows run.

    Args:
        backend: ``"joblib"`` (worker processes on this machine, the default),
            ``"ray"``, ``"inline"``, another registered name, or a backend object.
        address: for ``backend="ray"``, the cluster to join (``"auto"`` or
            ``"ray://host:10001"``); ``None`` starts a local Ray.
        resources: the capacity to schedule against, ``{"cpu", "cpu_mem",
            "gpu", "gpu_mem"}``; keys left out are detected on this machine.
        **backend_options: passed to the backend's constructor.
    """

    def __init__(
        self,
        backend: str | Backend = "joblib",
        *,
        address: str | None = None,
        resources: Mapping[str, Any] | None = None,
        **backend_options: Any,
    ) -> None:
        if isinstance(backend, str):
            if address is not None:
                backend_options["address"] = address
            if resources is not None and backend == "ray":
                backend_options["resources"] = dict(resources)
            self._backend = create_backend(backend, **backend_options)
        elif isinstance(backend, Backend):
            self._backend = backend
        else:
            raise UnknownBackendError(
                f"backend={backend!r} is neither a backend name nor an object with "
                "capacity/submit/stop/close; see maze.backends.available()"
            )
        detected = self._backend.capacity()
        capacity = Capacity.parse(resources, detected=detected) if resources else detected
        self._engine = Engine(self._backend, capacity)
        self._viewer = NotebookViewer()
        self._closed = False

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def resources(self) -> dict[str, Any]:
        """The capacity this client schedules against, in the ``resources=`` form."""
        cap = self._engine.capacity
        values = {"cpu": cap.cpu, "cpu_mem": cap.cpu_mem, "gpu": cap.gpu,
                  "gpu_mem": min(cap.gpu_mem) if cap.gpu_mem else 0}
        return {k: values[k] for k in RESOURCE_KEYS}

    def create_workflow(self, name: str | None = None) -> MaWorkflow:
        return MaWorkflow(self._engine, name, viewer=self._viewer)

    def close(self) -> None:
        """Release the backend: worker processes, Ray connection. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> MaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MaClient backend={getattr(self._backend, 'name', type(self._backend).__name__)!r} capacity={self._engine.capacity.describe()}>"
