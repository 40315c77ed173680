"""The Ray backend: the same workflows on a Ray cluster.

``MaClient(backend="ray")`` starts a private local Ray (on 127.0.0.1, in its
own temporary directory) and shuts it down on ``close()``;
``MaClient(backend="ray", address="auto" | "ray://host:10001")`` joins an
existing cluster and only disconnects on ``close()``. One connection per
client, reused by every run.

How a call runs:

* the task function is pickled once per client (``ray.put``) and every call
  passes that reference; the worker unpickles it once and caches it;
* each call is one Ray task with ``num_returns = 1 + len(outputs)``: a small
  *report* (status, error, timing, node, worker, GPU ids, captured output,
  and the small output values), then one object per declared output. Dependent
  calls receive those object references, so outputs stay in Ray's object store
  and move between workers directly; the driver fetches a large value only when
  someone reads it (the message ``result`` is a :class:`LazyResult`);
* resources map to ``num_cpus``, ``memory`` (bytes) and ``num_gpus``. Ray has
  no GPU-memory resource, so a fractional task reserves
  ``max(gpu, gpu_mem / memory of one GPU)`` of a device: fractions on one GPU
  never exceed 1, hence their ``gpu_mem`` never exceeds that GPU's memory. The
  memory per GPU is the node resource ``maze_gpu_mem_mb``, which maze declares
  on the Ray it starts and which nodes of other clusters declare with
  ``ray start --resources='{"maze_gpu_mem_mb": <MB per GPU>}'``;
* a hub actor receives "started" notes from workers as they start, so
  ``start_task`` arrives while the task runs; the report repeats it, and the
  backend always reports start before resolving the future;
* ``stop`` (cancel, fail-fast, timeout) is ``ray.cancel(force=True)``, which
  kills the worker process; Ray's own retries are off (maze retries).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from maze.core.errors import BackendError
from maze.core.protocol import Reporter, TaskCall, TaskError, TaskLog, TaskOutcome, TaskStarted
from maze.core.resources import Capacity, Resources

try:
    import ray
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendError(
        "backend='ray' needs Ray, which is not installed; install it with: pip install 'maze[ray]'"
    ) from exc

GPU_MEM_RESOURCE = "maze_gpu_mem_mb"
INLINE_LIMIT = 64 * 1024  # outputs smaller than this ride along in the report
_POLL_S = 0.05
_NOTES_S = 0.1


class LazyResult(Mapping[str, Any]):
    """A task's returned dict whose large values stay in Ray until read."""

    def __init__(self, inline: dict[str, Any], refs: dict[str, Any]) -> None:
        self._values = dict(inline)
        self._refs = {k: r for k, r in refs.items() if k not in inline}
        self._order = list(dict.fromkeys([*refs, *inline]))

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = ray.get(self._refs[key])  # KeyError for unknown keys
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (e.g. into the run history) as a plain dict of what was fetched;
        # values still in Ray are described, not fetched.
        return (dict, ({k: self._values.get(k, "<in Ray, not fetched>") for k in self._order},))

    def __repr__(self) -> str:
        parts = [f"{k!r}: {self._values[k]!r}" if k in self._values else f"{k!r}: <in Ray>" for k in self._order]
        return "{" + ", ".join(parts) + "}"


@ray.remote(num_cpus=0)
class _Hub:
    """Collects "started" notes from workers; the driver drains it."""

    def __init__(self) -> None:
        self._notes: list[tuple[Any, ...]] = []

    def started(self, *note: Any) -> None:
        self._notes.append(note)

    def drain(self) -> list[tuple[Any, ...]]:
        notes, self._notes = self._notes, []
        return notes


_functions: dict[str, Any] = {}  # per Ray worker process: unpickled task functions by key


def _run(session: tuple[Any, list[str]], fn_bytes: bytes, call: tuple[Any, ...], *inputs: Any) -> Any:
    """The body of every maze task on Ray (runs in a Ray worker).

    Few arguments on purpose: Ray serializes each one separately on submit.
    """
    hub, sys_path = session  # put in the object store once per client, not pickled per call
    fn_key, call_id, task_id, constants, input_keys, outputs = call
    from maze.core.execute import captured_output, error_of, gather_params, run_body

    ctx = ray.get_runtime_context()
    node, worker = ctx.get_node_id(), ctx.get_worker_id()
    host = ray.util.get_node_ip_address()
    gpu_ids = tuple(int(g) for g in ray.get_gpu_ids())
    started = time.time()
    hub.started.remote(call_id, host, node, worker, gpu_ids, started)
    logs: list[tuple[str, str, float]] = []
    result: dict[str, Any] | None = None
    error = None
    try:
        func = _functions.get(fn_key)
        if func is None:
            sys.path.extend(p for p in sys_path if p not in sys.path)  # where the driver found its modules
            func = _functions[fn_key] = cloudpickle.loads(fn_bytes)
        params = gather_params(constants, dict(zip(input_keys, inputs)))
    except BaseException as exc:  # noqa: BLE001
        error = error_of(exc)
    else:
        with captured_output(lambda stream, text: logs.append((stream, text, time.time()))):
            result, error = run_body(func, params, outputs, task_id)
    values = [None] * len(outputs)
    inline: dict[str, Any] = {}
    if result is not None:
        try:
            # Ray would fail to store an unpicklable output only after this report
            # said "ok"; find out here (large buffers go out of band: no copy).
            for v in result.values():
                cloudpickle.dumps(v, protocol=5, buffer_callback=lambda _: None)
        except Exception as exc:  # noqa: BLE001
            err = error_of(exc)
            result, error = None, type(err)(err.error_type, f"the result of task {task_id!r} could not be pickled: {err.error}", err.traceback)
    if result is not None:
        values = [result[k] for k in outputs]
        inline = {k: v for k, v in result.items() if k not in outputs or _small(v)}
    report = {"ok": result is not None, "keys": list(result or ()), "inline": inline, "error": error,
              "host": host, "node": node, "worker": worker, "gpu_ids": gpu_ids, "logs": logs,
              "started": started, "finished": time.time()}
    return (report, *values) if outputs else report


def _small(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) < INLINE_LIMIT
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes < INLINE_LIMIT
    try:
        return len(cloudpickle.dumps(value)) < INLINE_LIMIT
    except Exception:  # noqa: BLE001 - Ray will say why when it stores it
        return False


@dataclass(eq=False)
class _Job:
    call: TaskCall
    report: Reporter
    future: Future[TaskOutcome]
    refs: list[Any]
    started: bool = False
    deadline: float | None = None
    stop_reason: TaskError | None = None
    # Held while reporting the start: the notes thread and the result thread may
    # both try, and the start must be reported, once, before the future resolves.
    start_lock: threading.Lock = field(default_factory=threading.Lock)


class RayBackend:
    """Runs tasks as Ray tasks. See the module docstring."""

    name = "ray"

    def __init__(self, *, address: str | None = None, resources: Mapping[str, Any] | None = None,
                 **init_options: Any) -> None:
        self._owns_ray = False
        self._temp_dir: str | None = None
        if ray.is_initialized():
            pass  # the user connected already; use that connection and leave it open
        elif address is None:
            self._start_local(dict(resources or {}), init_options)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **init_options)
        self._remote = ray.remote(max_retries=0)(_run)
        self._hub = _Hub.remote()  # type: ignore[attr-defined]
        self._session = ray.put((self._hub, list(sys.path)))
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._by_ref: dict[Any, _Job] = {}
        self._functions: weakref.WeakKeyDictionary[Any, tuple[str, Any]] = weakref.WeakKeyDictionary()
        self._gpu_mem_per_node = self._read_gpu_memory()
        self._shapes: dict[tuple[Resources, int], Any] = {}
        self._ready: queue.SimpleQueue[Any] = queue.SimpleQueue()   # report refs that are done
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="maze-ray", daemon=True)
        self._thread.start()
        self._notes_thread = threading.Thread(target=self._watch_notes, name="maze-ray-notes", daemon=True)
        self._notes_thread.start()

    def _start_local(self, resources: dict[str, Any], options: dict[str, Any]) -> None:
        from maze.core.resources import detect_capacity

        detected = detect_capacity()
        cap = Capacity.parse(resources, detected=detected) if resources else detected
        custom = dict(options.pop("resources", {}) or {})
        if cap.gpu:
            per_gpu = min(cap.gpu_mem)
            custom[GPU_MEM_RESOURCE] = per_gpu if math.isfinite(per_gpu) else 0
        self._temp_dir = tempfile.mkdtemp(prefix="maze-ray-")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keeps a local Ray on 127.0.0.1
        ray.init(
            address="local", num_cpus=int(math.ceil(cap.cpu)), num_gpus=cap.gpu, resources=custom or None,
            include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
            _temp_dir=self._temp_dir, _memory=int(cap.cpu_mem * 2**20) if math.isfinite(cap.cpu_mem) else None,
            **options,
        )
        self._owns_ray = True

    def _read_gpu_memory(self) -> dict[str, float]:
        return {n["NodeID"]: n["Resources"].get(GPU_MEM_RESOURCE, 0.0) for n in ray.nodes() if n.get("Alive")}

    # -- protocol -------------------------------------------------------------------

    def capacity(self) -> Capacity:
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            r = n["Resources"]
            gpus = int(r.get("GPU", 0))
            per_gpu = r.get(GPU_MEM_RESOURCE) or math.inf
            nodes.append(Capacity(cpu=r.get("CPU", 0.0), cpu_mem=r.get("memory", 0.0) / 2**20,
                                  gpu_mem=(per_gpu,) * gpus))
        return Capacity.of_nodes(tuple(nodes), managed=True)

    def submit(self, call: TaskCall, report: Reporter) -> Future[TaskOutcome]:
        if self._closed:
            raise BackendError("the Ray backend is closed; create a new MaClient")
        keys = list(call.inputs)
        try:
            fn_key, fn_ref = self._function(call.func)
            refs = self._remote_for(call.resources, len(call.outputs)).remote(
                self._session, fn_ref,
                (fn_key, call.call_id, call.task_id, dict(call.constants), keys, call.outputs),
                *[call.inputs[k] for k in keys],
            )
        except Exception as exc:  # noqa: BLE001 - e.g. an input Ray cannot serialize
            failed: Future[TaskOutcome] = Future()
            root = _root_cause(exc)
            failed.set_result(TaskOutcome(error=TaskError.simple(
                type(root).__name__, f"task {call.task_id!r} could not be sent to Ray: {root}"
            )))
            return failed
        refs = refs if isinstance(refs, list) else [refs]
        job = _Job(call, report, Future(), refs)
        job.future.set_running_or_notify_cancel()
        with self._lock:
            self._jobs[call.call_id] = job
            self._by_ref[refs[0]] = job
        # Ray calls back when the report is ready; no polling over all pending refs.
        refs[0].future().add_done_callback(lambda done, ref=refs[0]: self._ready.put((ref, done)))
        return job.future

    def stop(self, call_id: str) -> None:
        with self._lock:
            job = self._jobs.get(call_id)
        if job is None:
            return
        if job.stop_reason is None:
            job.stop_reason = TaskError.cancelled(job.call.task_id)
        ray.cancel(job.refs[0], force=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.stop(job.call.call_id)
        self._thread.join(timeout=10)
        self._notes_thread.join(timeout=10)
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------

    def _function(self, func: Any) -> tuple[str, Any]:
        try:
            return self._functions[func]
        except KeyError:
            entry = (uuid.uuid4().hex, ray.put(cloudpickle.dumps(func)))
            self._functions[func] = entry
            return entry

    def _remote_for(self, need: Resources, n_outputs: int) -> Any:
        """The remote function with the Ray options for this resource shape (cached: options() is slow)."""
        key = (need, n_outputs)
        remote = self._shapes.get(key)
        if remote is None:
            options: dict[str, Any] = {"num_cpus": need.cpu, "num_returns": 1 + n_outputs if n_outputs else 1}
            if need.cpu_mem:
                options["memory"] = int(need.cpu_mem * 2**20)
            if need.gpu:
                options["num_gpus"] = self._gpu_share(need.gpu, need.gpu_mem)
            remote = self._shapes[key] = self._remote.options(**options)
        return remote

    def _gpu_share(self, gpu: float, gpu_mem: float) -> float:
        if gpu >= 1:
            return gpu
        per_gpu = [m for m in self._gpu_mem_per_node.values() if m > 0]
        if gpu_mem and per_gpu:
            return min(1.0, max(gpu, gpu_mem / min(per_gpu)))
        return gpu

    def _watch(self) -> None:
        """Deliver finished reports (in this thread, not Ray's) and enforce timeouts."""
        while True:
            with self._lock:
                if self._closed and not self._by_ref:
                    return
            try:
                ref, done = self._ready.get(timeout=_POLL_S)
            except queue.Empty:
                pass
            else:
                self._finish(ref, done)
            self._enforce_timeouts()

    def _watch_notes(self) -> None:
        """Turn workers' "started" notes into ``start_task`` while tasks run (off the result path)."""
        while not self._closed:
            self._deliver_notes()
            time.sleep(_NOTES_S)

    def _deliver_notes(self) -> None:
        try:
            notes = ray.get(self._hub.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the hub is gone (shutdown); reports still carry the start
            return
        for call_id, host, node, worker, gpu_ids, at in notes:
            with self._lock:
                job = self._jobs.get(call_id)
            if job is not None:
                self._started(job, host, node, worker, gpu_ids, at)

    def _started(self, job: _Job, host: str, node: str, worker: str, gpu_ids: tuple[int, ...], at: float) -> None:
        with job.start_lock:
            if job.started:
                return
            job.started = True
            if job.call.timeout:
                job.deadline = time.monotonic() + job.call.timeout
            job.report(TaskStarted(job.call.call_id, host, worker, tuple(gpu_ids), at, node_id=node))

    def _finish(self, ref: Any, done: Future[Any]) -> None:
        with self._lock:
            job = self._by_ref.pop(ref, None)
            if job is not None:
                self._jobs.pop(job.call.call_id, None)
        if job is None:
            return
        try:
            report = done.result()  # Ray fetched the (small) report already
        except Exception as exc:  # noqa: BLE001 - cancelled, worker or node died
            job.future.set_result(TaskOutcome(error=job.stop_reason or _ray_error(job.call, exc)))
            return
        self._started(job, report["host"], report["node"], report["worker"], report["gpu_ids"], report["started"])
        for stream, text, at in report["logs"]:
            job.report(TaskLog(job.call.call_id, stream, text, at))
        if not report["ok"]:
            outcome = TaskOutcome(error=report["error"], started_at=report["started"], finished_at=report["finished"])
        else:
            out_refs = dict(zip(job.call.outputs, job.refs[1:]))
            outcome = TaskOutcome(LazyResult(report["inline"], out_refs), out_refs, None,
                                  report["started"], report["finished"])
        job.future.set_result(outcome)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [j for j in self._jobs.values() if j.deadline and j.deadline <= now and j.stop_reason is None]
        for job in late:
            job.stop_reason = TaskError.timed_out(job.call.task_id, job.call.timeout or 0)
            job.deadline = None
            ray.cancel(job.refs[0], force=True)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: Ray wraps the error that says what went wrong."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _ray_error(call: TaskCall, exc: BaseException) -> TaskError:
    kind = type(exc).__name__
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.LocalRayletDiedError)):
        return TaskError.simple("WorkerDiedError", f"the Ray worker running task {call.task_id!r} died ({kind}: {exc})")
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return TaskError.simple("TaskCancelled", f"task {call.task_id!r} was cancelled")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return TaskError(kind, first, str(exc))
