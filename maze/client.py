"""``MaClient``: the entry point that ties a backend, a capacity and workflows together."""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from maze.backends import create_backend
from maze.cache import JoblibStore, default_location
from maze.core.errors import UnknownBackendError, UnknownRunError
from maze.core.history import HistoryReader, HistoryWriter, default_path
from maze.core.protocol import Backend
from maze.core.resources import RESOURCE_KEYS, Capacity
from maze.core.run import RunState
from maze.core.scheduler import Engine
from maze.core.workflow import MaWorkflow, show_progress
from maze.notebook.display import NotebookViewer


class _Default:
    """The default history location (see :func:`maze.core.history.default_path`)."""

    def __repr__(self) -> str:   # as signatures show it
        return "<default location>"


_DEFAULT = _Default()


class MaClient:
    """Where workflows run.

    Args:
        backend: ``"joblib"`` (worker processes on this machine, the default),
            ``"ray"``, ``"inline"``, another registered name, or a backend object.
        address: for ``backend="ray"``, the cluster to join (``"auto"`` or
            ``"ray://host:10001"``); ``None`` starts a local Ray.
        resources: the capacity to schedule against, ``{"cpu", "cpu_mem",
            "gpu", "gpu_mem"}``; keys left out are detected on this machine.
        history: the SQLite file where every run's DAG and messages are kept
            (default: ``$MAZE_HISTORY``, else ``~/.local/share/maze/runs.sqlite3``);
            ``None`` keeps runs in memory only. The file is private (0600) and
            holds no pickles but result values, loaded only from a file no one
            else can write.
        history_log_lines: how many lines a task's output keeps in the history,
            ``(first, last)``; the lines between are counted, not kept.
        cache_dir: where ``@task(cache=True)`` results are kept (default:
            ``$MAZE_CACHE``, else ``~/.cache/maze``).
        **backend_options: passed to the backend's constructor.
    """

    def __init__(
        self,
        backend: str | Backend = "joblib",
        *,
        address: str | None = None,
        resources: Mapping[str, Any] | None = None,
        history: str | os.PathLike[str] | None | _Default = _DEFAULT,
        cache_dir: str | os.PathLike[str] | None = None,
        history_log_lines: tuple[int, int] = (1000, 1000),
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
        if history is None:
            self._history_path: Path | None = None
        elif isinstance(history, (str, os.PathLike)):
            self._history_path = Path(history)
        else:
            self._history_path = default_path()
        head, tail = history_log_lines
        self._history = (HistoryWriter(self._history_path, log_head=head, log_tail=tail)
                         if self._history_path else None)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_location()
        self._engine = Engine(self._backend, capacity, history=self._history, store=JoblibStore(self._cache_dir))
        self._viewer = NotebookViewer()
        self._closed = False
        self._pid = os.getpid()
        _at_exit.add(self)

    @property
    def backend(self) -> Backend:
        """The backend that runs this client's tasks."""
        return self._backend

    @property
    def resources(self) -> dict[str, Any]:
        """The capacity this client schedules against, in the ``resources=`` form."""
        cap = self._engine.capacity
        values = {"cpu": cap.cpu, "cpu_mem": cap.cpu_mem, "gpu": cap.gpu,
                  "gpu_mem": min(cap.gpu_mem) if cap.gpu_mem else 0}
        return {k: values[k] for k in RESOURCE_KEYS}

    def create_workflow(self, name: str | None = None) -> MaWorkflow:
        """A new, empty workflow run by this client (``name`` defaults to a generated one)."""
        return MaWorkflow(self._engine, name, viewer=self._viewer)

    # -- run history -------------------------------------------------------------------

    @property
    def history_path(self) -> Path | None:
        """The SQLite file of the run history; None with ``history=None``."""
        return self._history_path

    def _reader(self) -> HistoryReader:
        if self._history_path is None:
            raise UnknownRunError("this client keeps no run history (MaClient(history=None))")
        if self._history is not None:
            self._history.flush()
        return HistoryReader(self._history_path)

    def runs(self, workflow: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Past and current runs from the history, newest first (any process, any session)."""
        return self._reader().runs(workflow, limit)

    def run_state(self, run_id: str, *, values: bool = True) -> RunState:
        """A run of this client's workflows, or one rebuilt from the history."""
        if self._history_path is None:
            found = self._engine.find_run(run_id)
            if found is None:
                raise UnknownRunError(f"no run {run_id!r} in this client, which keeps no run history "
                                      "(MaClient(history=None))")
            return found
        found = self._engine.find_run(run_id, values=values)
        if found is None:
            raise UnknownRunError(f"no run {run_id!r} in this client or in the history at {self._history_path}")
        return found

    def get_results(self, run_id: str) -> list[dict[str, Any]]:
        """The messages of any run, live or recorded (replayed after a restart)."""
        run = self.run_state(run_id)
        with run.reading():
            return list(run.log())

    def show_results(self, run_id: str, *, file: TextIO | None = None, verbose: bool | None = None) -> dict[str, Any]:
        """Show a run's progress (live, or replayed from the history); return its summary.

        As :meth:`MaWorkflow.show_results`: in a notebook the live DAG and one
        summary line; elsewhere event lines or a progress line, by the run's size.
        """
        return show_progress(self.run_state(run_id), self._viewer, file or sys.stdout, verbose)

    def show_graph(self, run_id: str) -> Any:
        """The DAG widget of any run, live or replayed."""
        run = self.run_state(run_id, values=False)
        return self._viewer.graph(run.plan, run)

    def delete_runs(self, *, before: float | None = None, keep_last: int | None = None,
                    run_ids: list[str] | None = None) -> int:
        """Remove runs from the history: started before ``before`` (epoch s), all but the newest ``keep_last``, or by id.

        A run still going (in any live process) is never removed; returns how many were.
        """
        return self._reader().delete(before=before, keep_last=keep_last, run_ids=run_ids)

    def close(self) -> None:
        """Cancel runs still going, then release the backend (worker processes, Ray). Safe to call twice.

        Each task of a cancelled run ends with a message saying so; ``run()``
        afterwards raises :class:`~maze.core.errors.BackendError`.
        """
        if not self._closed:
            self._closed = True
            self._engine.close()
            self._backend.close()
            if self._history is not None:
                self._history.close()

    def __enter__(self) -> MaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MaClient backend={getattr(self._backend, 'name', type(self._backend).__name__)!r} capacity={self._engine.capacity.describe()}>"


class _ExitHook:
    """Closes the clients still open when the interpreter exits.

    So a script that ends without ``close()`` still records its runs' last
    messages and ends the runs still going as ``cancelled`` (not, later,
    ``interrupted``). Exit hooks run last-in first-out, and a backend's module
    (Ray's too) registers its own when it is imported: registering again with
    each new client, after its backend exists, makes clients close first.
    """

    def __init__(self) -> None:
        self._clients: weakref.WeakSet[MaClient] = weakref.WeakSet()

    def add(self, client: MaClient) -> None:
        self._clients.add(client)
        atexit.unregister(self._close_all)
        atexit.register(self._close_all)

    def _close_all(self) -> None:
        for client in list(self._clients):
            if client._pid == os.getpid():   # a forked child's copy is the parent's to close, not ours
                client.close()


_at_exit = _ExitHook()
