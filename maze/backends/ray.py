"""The Ray backend: the same workflows on a Ray cluster.

``MaClient(backend="ray")`` starts a private local Ray (on 127.0.0.1, in its
own temporary directory, which ``close()`` removes after shutting Ray down);
``MaClient(backend="ray", address="auto" | "ray://host:10001")`` joins an
existing cluster and only disconnects on ``close()``. One connection per
client, reused by every run.

How a call runs:

* the code is the call's :class:`~maze.core.shipping.ShippedCode`, pickled at
  ``run()`` time and keyed by a hash of its bytes. The driver hands the bytes
  to the client's hub (a named actor on the driver's node) once per key, and a
  call carries only the key: a Ray worker asks the hub for a key it has not
  met, unpickles it once and keeps the last few functions by key. A changed
  global, closure cell or default argument is new bytes, hence a new key: the
  next run, and every worker, uses the new code. A call travels as plain lists
  (msgpack); a constant input other than a number, a short string or a short
  list or dict of those is pickled by the driver, once for the calls that take
  it while any is in flight, and unpickled by each call (its own copy, of the
  type it was); a large one goes to the object store and travels as an input;
* submitting ahead (:class:`~maze.core.protocol.EagerBackend`, on unless
  ``eager=False``): a call may take the object references of calls still
  queued or running, in its inputs or, for upstream calls it only waits for,
  as their reports (``TaskCall.after``). Ray starts it once they exist; if one
  failed (a ``Failed`` marker in place of an output, a report that is not ok,
  or Ray's own error for a stopped or lost call) the body does not run;
* each call is one Ray task, given its code, a ``RayCall`` (the rest of what
  the worker needs) and the inputs, with ``num_returns = 1 + len(outputs)``:
  a small ``Report`` (status, error, timing, the ``StartNote``, captured
  output not sent while it ran, and the small output values), then one object per declared output
  (these classes, and what runs in the worker, are in
  :mod:`maze.backends._ray_task`). Those object references are the outcome's
  ``handles``: dependent calls receive them, so outputs move between workers
  through Ray's object store, never through the driver;
* the outcome's ``result`` is a plain ``dict`` of the task's values: small
  ones ride in the report, the others are fetched with one ``ray.get`` when
  the task ends (in this backend's thread, never on Ray's callback thread). A
  numpy array comes back zero-copy from the local object store. There is no
  lazy mode, by decision: a result must print, pickle and ``json.dumps`` as
  what the task returned, which a lazy mapping did not;
* an error is a :class:`~maze.core.protocol.TaskError` of strings, built in
  the worker, so a task's exception object never has to travel (one whose
  ``__str__`` raises, or that cannot be pickled, is reported like any other);
* resources map to ``num_cpus``, ``memory`` (bytes) and ``num_gpus``. Ray has
  no GPU-memory resource, so a fractional task reserves
  ``max(gpu, gpu_mem / memory of one GPU)`` of a device: fractions on one GPU
  never exceed 1, hence their ``gpu_mem`` never exceeds that GPU's memory. The
  memory per GPU is the node resource ``maze_gpu_mem_mb``, which maze declares
  on the Ray it starts and which nodes of other clusters declare with
  ``ray start --resources='{"maze_gpu_mem_mb": <MB per GPU>}'``. Nothing holds
  a task to its ``gpu_mem`` once it runs, so a run whose tasks declare it gets
  one :class:`UserWarning` saying so (:func:`gpu_mem_warning`);
* the hub receives a ``StartNote`` for each call still running 20 to 40 ms
  after it started, and then what the call prints (``Printed``, every 0.1 s at
  most), batched per worker, so ``start_task`` and ``task_log`` arrive while a
  longer task runs and a short one costs no actor call. The report repeats the
  start and carries the lines the hub did not; a worker that sent lines waits,
  before it reports, until the hub holds them, and the driver drains the hub
  before it reads a report whose lines begin after those it has. So each line
  is reported once, in order, and the start before the lines, before the future
  resolves;
* ``stop`` (cancel, fail-fast, timeout) ends the task and what it started.
  The worker makes itself the leader of a process group before running the
  task, and its start note names its node and that group. ``ray.cancel(force=
  True)`` ends the worker; then a tiny task pinned to that node
  (``NodeAffinitySchedulingStrategy``, ``num_cpus=0``) kills the group, so the
  task's subprocesses and theirs (and anything an earlier task of the same
  worker left running) end too. That task first waits for the worker to be
  gone: a worker that outlives the cancel had already finished the call and
  may be running another task, whose processes are not ours to kill. Recent
  Ray does the same itself (``RAY_process_group_cleanup_enabled``, on by
  default in 2.60); older Ray, and clusters that turn it off, end only the
  worker's direct children. A child that starts a session of its own
  (``start_new_session=True``, daemons) escapes. A call stopped before its
  start note went out (its first 20 ms) names no group: there, only Ray's
  own cleanup applies. The attempt is reported as
  cancelled or timed out, not as a dead worker. A call not yet started is
  cancelled only once Ray has surely taken it in (Ray cannot cancel a call
  while it takes it in and resolves its arguments; see
  :meth:`RayBackend._cancel_resolved`).
  A timeout runs from the start
  note (or the report, if it comes first) and this backend's thread enforces
  it (see :mod:`maze.backends._jobs`). Ray's own retries are off (maze
  retries).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from maze.backends._jobs import Job, sweep, wrapped_error
from maze.core.errors import BackendError
from maze.core.execute import error_of
from maze.core.protocol import Reporter, Submitted, TaskCall, TaskError, TaskLog, TaskOutcome, TaskStarted
from maze.core.resources import Capacity, Resources
from maze.core.shipping import ShippedCode

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendError(
        "backend='ray' needs Ray, which is not installed; install it with: pip install 'maze-dag[ray]'"
    ) from exc


from maze.backends._ray_task import (  # noqa: E402 - needs Ray, checked just above
    INLINE_LIMIT,
    KILL_WAIT_S,
    PLAIN,
    SENT_CODE,
    Hub,
    Printed,
    Report,
    Shared,
    StartNote,
    hub_name,
    kill_group,
    run_call,
)

GPU_MEM_RESOURCE = "maze_gpu_mem_mb"
_POLL_S = 0.05
_NOTES_S = 0.1
_CANCEL_GRACE_S = 0.25    # how long after its submission (and its inputs resolved) Ray has surely taken a call in
_WARNED_RUNS = 1024       # runs remembered as warned about gpu_mem (the oldest are forgotten)
_SHORT = 64   # items of a list or dict constant that goes in a call as it is, characters of a string in it


def _travels_as_is(value: Any) -> bool:
    """Whether a constant goes in a call as it is: a number, a short string, or a short list or dict of
    those, which Ray's own serialization gives back exactly, new and writable."""
    kind = type(value)
    if kind in PLAIN or (kind in (str, bytes) and len(value) < INLINE_LIMIT // 4):
        return True
    if kind is list and len(value) <= _SHORT:
        return all(map(_short_scalar, value))
    if kind is dict and len(value) <= _SHORT:
        return all(type(k) is str and _short_scalar(v) for k, v in value.items())
    return False


def _short_scalar(value: Any) -> bool:
    kind = type(value)
    return kind in PLAIN or (kind is str and len(value) <= _SHORT)


class _UnsentConstant(Exception):
    """A constant input that could not be made ready to send: ``doing`` says at what step."""

    def __init__(self, key: str, doing: str, error: Exception) -> None:
        super().__init__(key, doing, error)
        self.key, self.doing, self.error = key, doing, error


class _Constant:
    """A constant input of a run's calls, pickled once: the pickle, or its object reference once put."""

    __slots__ = ("value", "shared", "__weakref__")

    def __init__(self, value: Any, shared: Any) -> None:
        self.value = value   # held, so that its id names it while this lives
        self.shared = shared


@dataclass(eq=False, kw_only=True)
class _Job(Job):
    refs: list[Any]                       # the report's object reference, then the outputs'
    # Object references among its arguments: until they have resolved, Ray cannot
    # cancel the call safely (see RayBackend._cancel_resolved).
    waits_on: list[Any] = field(default_factory=list)
    upstream: list[_Job] = field(default_factory=list)   # the calls of this backend that make them
    # Its outputs are markers or Ray's errors (it failed in Ray, or was stopped there): a call
    # taking them ends without running its body. Not so when only the driver failed to read them.
    outputs_failed: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    constants: list[_Constant] = field(default_factory=list)   # its pickled constants, shared while held
    over: bool = False                    # its report (or Ray's error) is being read: nothing is left to stop
    started: bool = False
    lines: int = 0                        # how many of the lines it printed were reported
    # Held while reporting the start or lines: the notes thread and the result thread may
    # both try, and each must be reported once, in order, before the future resolves.
    start_lock: threading.Lock = field(default_factory=threading.Lock)
    # ``stop_reason`` and ``group`` are set together under ``lock``: the stop and
    # the start note (which names the group) race, and exactly one of them must
    # kill the group. ``lock`` is taken last and nothing is taken under it
    # (stop() runs under the scheduler's lock).
    group: tuple[str, int] | None = None  # (node id, process group id) of the worker running it
    lock: threading.Lock = field(default_factory=threading.Lock)


class RayBackend:
    """Runs tasks as Ray tasks. See the module docstring."""

    name = "ray"

    def __init__(self, *, address: str | None = None, resources: Mapping[str, Any] | None = None,
                 eager: bool = True, **init_options: Any) -> None:
        # Dependents are submitted with the object references of upstream tasks still
        # queued or running (see maze.core.protocol.EagerBackend); eager=False: only
        # once their upstream tasks have finished, as on the other backends.
        self.resolves_submitted = eager
        self._owns_ray = False
        self._temp_dir: str | None = None
        if ray.is_initialized():
            pass  # the user connected already; use that connection and leave it open
        elif address is None:
            self._start_local(dict(resources or {}), init_options)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **init_options)
        self._remote = ray.remote(max_retries=0)(run_call)
        self._killer = ray.remote(num_cpus=0, max_retries=0)(kill_group)
        self._session_key = os.urandom(8).hex()
        # On the driver's node: workers fetch code from it, so it must not live on a node that may leave.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._hub = Hub.options(  # type: ignore[attr-defined]
            name=hub_name(self._session_key), scheduling_strategy=here).remote(list(sys.path))
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._by_ref: dict[Any, _Job] = {}
        self._timed: dict[str, _Job] = {}                  # the jobs with a timeout, by call id (see _enforce_timeouts)
        self._producers: dict[Any, _Job] = {}              # object reference -> the call in flight that makes it
        self._to_cancel: dict[_Job, float | None] = {}     # stopped, not started: since when its inputs were seen resolved
        self._code: OrderedDict[str, None] = OrderedDict()  # code keys the hub holds (the last few sent)
        self._kills: set[Any] = set()                      # group kills still running
        self._notes_lock = threading.Lock()                # one drain of the hub at a time, delivered whole
        self._gpu_mem_per_node = self._read_gpu_memory()
        self._shapes: dict[tuple[Resources, int], Any] = {}
        # (run id, id(value)) -> a constant pickled for the run's calls; an entry lives while a job holds it.
        self._constants: weakref.WeakValueDictionary[tuple[str, int], _Constant] = weakref.WeakValueDictionary()
        self._gpu_mem_warned: OrderedDict[str, None] = OrderedDict()  # runs told that gpu_mem is not enforced
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
        try:
            ray.init(
                address="local", num_cpus=int(math.ceil(cap.cpu)), num_gpus=cap.gpu, resources=custom or None,
                include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                _temp_dir=self._temp_dir, _memory=int(cap.cpu_mem * 2**20) if math.isfinite(cap.cpu_mem) else None,
                **options,
            )
        except BaseException:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            raise
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
        return self.submit_ahead(call, report)[0]

    def submit_ahead(self, call: TaskCall, report: Reporter) -> tuple[Future[TaskOutcome], Submitted | None]:
        """Submit a call; with its future, the references of its outputs and of its report (None: not sent)."""
        if self._closed:
            raise BackendError("the Ray backend is closed; create a new MaClient")
        if call.resources.gpu_mem:
            self._warn_gpu_mem(call)
        keys = list(call.inputs)
        try:
            constants, held, put = self._constants_of(call)
        except _UnsentConstant as exc:   # as the local backend says it
            unsent: Future[TaskOutcome] = Future()
            unsent.set_result(TaskOutcome(error=wrapped_error(
                exc.error, f"the input {exc.key!r} of task {call.task_id!r} could not be {exc.doing}")))
            return unsent, None
        try:
            refs = self._remote_for(call.resources, len(call.outputs)).remote(
                [self._session_key, self._ship(call.code), call.call_id, call.task_id, constants, keys + list(put),
                 list(call.outputs), bool(call.resources.gpu)],
                *[call.inputs[k] for k in keys], *put.values(), *call.after,
            )
        except Exception as exc:  # noqa: BLE001 - e.g. an input Ray cannot serialize
            failed: Future[TaskOutcome] = Future()
            root = error_of(_root_cause(exc))
            failed.set_result(TaskOutcome(error=TaskError.simple(
                root.error_type, f"task {call.task_id!r} could not be sent to Ray: {root.error}"
            )))
            return failed, None
        refs = refs if isinstance(refs, list) else [refs]
        waits_on = [v for v in (*call.inputs.values(), *call.after) if isinstance(v, ray.ObjectRef)]
        job = _Job(call, report, Future(), refs=refs, waits_on=waits_on, constants=held)
        job.future.set_running_or_notify_cancel()
        with self._lock:
            job.upstream = [up for up in map(self._producers.get, waits_on) if up is not None]
            self._jobs[call.call_id] = job
            self._by_ref[refs[0]] = job
            for ref in refs:
                self._producers[ref] = job
            if call.timeout:
                self._timed[call.call_id] = job
        # Ray calls back when the report is ready; no polling over all pending refs.
        refs[0].future().add_done_callback(lambda done, ref=refs[0]: self._ready.put((ref, done)))
        return job.future, Submitted(dict(zip(call.outputs, refs[1:])), refs[0])

    def stop(self, call_id: str) -> None:
        with self._lock:
            job = self._jobs.get(call_id)
        if job is not None and not job.over:
            self._stop(job, TaskError.cancelled(job.call.task_id))

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
        with self._lock:
            kills = list(self._kills)
        if kills:  # let them finish: the tasks of a driver that leaves are ended by Ray, groups are not
            ray.wait(kills, num_returns=len(kills), timeout=KILL_WAIT_S + 5)
        if self._owns_ray:
            ray.shutdown()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)  # Ray leaves its session directories behind

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------

    def _constants_of(self, call: TaskCall) -> tuple[dict[str, Any], list[_Constant], dict[str, Any]]:
        """The call's constants as they travel in it, the holders of those pickled, and the object
        references of those put in the object store (they go as inputs).

        A constant that does not travel as it is (:func:`_travels_as_is`) is
        pickled once for the calls that take it while one of them holds it, and
        each call unpickles its own copy (:class:`~maze.backends._ray_task.Shared`):
        a task may change it in place, and it arrives as what it was (Ray's own
        serialization would make a ``bytearray`` ``bytes``, and map small arrays
        read-only). A large one (a lookup table, an array) is put in the object
        store, rather than serialized into every call that takes it. Raises
        :class:`_UnsentConstant` if a constant cannot be pickled or put.
        """
        inline: dict[str, Any] = {}
        held: list[_Constant] = []
        put: dict[str, Any] = {}
        for key, value in call.constants.items():
            if _travels_as_is(value):
                inline[key] = value
                continue
            # An entry holds its value, so while it lives the id names that value and no other.
            constant = self._constants.get((call.run_id, id(value)))
            if constant is None:
                try:
                    shared = Shared(cloudpickle.dumps(value, protocol=5))
                except Exception as exc:  # noqa: BLE001 - a lock, a generator...
                    raise _UnsentConstant(key, "pickled", exc) from exc
                if len(shared.pickled) >= INLINE_LIMIT:
                    try:
                        constant = _Constant(value, ray.put(shared))
                    except Exception as exc:  # noqa: BLE001 - e.g. the object store is full
                        raise _UnsentConstant(key, "put in Ray's object store", exc) from exc
                else:
                    constant = _Constant(value, shared)
                self._constants[(call.run_id, id(value))] = constant
            held.append(constant)
            if type(constant.shared) is Shared:
                inline[key] = constant.shared
            else:
                put[key] = constant.shared
        return inline, held, put

    def _ship(self, code: ShippedCode) -> str:
        """Make sure the hub holds a call's code; its key.

        Sent once per key (a round trip, so that it is there before any worker
        asks), again only after this side forgot it: the hub keeps many more
        keys than this side remembers, so a key remembered here is held there.
        This side remembers the last keys *sent* (oldest forgotten first), each
        send being one addition at the hub, so a key found here needs no lock.
        """
        if code.key not in self._code:
            ray.get(self._hub.add_code.remote(code.key, code.data))
            with self._lock:
                self._code[code.key] = None
                if len(self._code) > SENT_CODE:
                    self._code.popitem(last=False)
        return code.key

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

    def _warn_gpu_mem(self, call: TaskCall) -> None:
        """Warn, once per run, that a task's ``gpu_mem`` is not enforced here."""
        with self._lock:
            if call.run_id in self._gpu_mem_warned:
                return
            self._gpu_mem_warned[call.run_id] = None
            if len(self._gpu_mem_warned) > _WARNED_RUNS:
                self._gpu_mem_warned.popitem(last=False)
        need = call.resources
        per_gpu = [m for m in self._gpu_mem_per_node.values() if m > 0]
        warnings.warn(gpu_mem_warning(call.task_id, call.run_id, need.gpu, need.gpu_mem,
                                      self._gpu_share(need.gpu, need.gpu_mem) if need.gpu else 0.0,
                                      min(per_gpu) if per_gpu else None), UserWarning, stacklevel=2)

    def _stop(self, job: _Job, reason: TaskError) -> None:
        with job.lock:
            if job.stop_reason is not None:
                return  # stopping already
            job.stop_reason = reason
            group = job.group
        if job.started:
            self._cancel(job)
        else:
            with self._lock:
                self._to_cancel[job] = None  # _cancel_resolved cancels it once Ray has surely taken it in
        if group is not None:
            self._kill_group(*group)
        # else: not started, or its start note is not here yet; _started kills the group when it comes

    def _cancel_resolved(self) -> None:
        """Cancel the stopped calls that Ray can cancel safely by now.

        Ray (2.x) cannot safely cancel a call it has not yet fully taken in:
        ``.remote()`` returns before Ray's own I/O thread has submitted the call
        and resolved its arguments, and a cancel in that window races them in
        Ray's core worker, which then fails an internal check and ends the
        driver (``submitted_task_ref_count > 0``, "Tried to complete task that
        was not pending"). So a stopped call is cancelled at once only when it
        has started (Ray runs it: a cancel is safe); any other is cancelled from
        here once ``_CANCEL_GRACE_S`` has passed since its submission and since
        its inputs were seen resolved, ample time for Ray's I/O thread even on a
        loaded machine. A call one of whose upstream calls has ended badly
        (failed, or stopped: a run's cancel and fail-fast stop every call) is
        not cancelled at all: its inputs are markers or Ray's errors, so it ends
        by itself without running its body, and a stopped chain unwinds at Ray's
        pace, not a grace period per link. A call that starts meanwhile is
        stopped as a started call (its group killed).
        """
        now = time.monotonic()
        with self._lock:
            waiting = [(job, since) for job, since in self._to_cancel.items() if job.refs[0] in self._by_ref]
            self._to_cancel = dict(waiting)   # those over already are forgotten
        for job, since in waiting:
            if not job.started and any(up.outputs_failed for up in job.upstream):
                # An input is a failed or stopped call's output (a marker, or Ray's error): the
                # call ends by itself without running its body, and needs no cancel.
                with self._lock:
                    self._to_cancel.pop(job, None)
                continue
            if not job.started:
                if job.waits_on:
                    resolved, _ = ray.wait(job.waits_on, num_returns=len(job.waits_on), timeout=0,
                                           fetch_local=False)
                    if len(resolved) < len(job.waits_on):
                        continue
                    if since is None:
                        since = now        # seen resolved now, so after its submission too
                        with self._lock:
                            self._to_cancel[job] = since
                else:
                    since = job.submitted_at
                if now - since < _CANCEL_GRACE_S:
                    continue
            with self._lock:
                self._to_cancel.pop(job, None)
            self._cancel(job)

    @staticmethod
    def _cancel(job: _Job) -> None:
        """Cancel the call in Ray, unless it has ended already.

        A start note comes up to ``_NOTES_S`` after the start, so a quick call
        stopped on its start has mostly ended by then. A cancel landing as Ray's
        I/O thread takes in a call's end races it in Ray's core worker, which then
        fails an internal check and ends the driver ("Tried to complete task that
        was not pending"); a call whose result is in needs no cancel.
        """
        ref = job.refs[0]
        ended, _ = ray.wait([ref], timeout=0, fetch_local=False)
        if not ended:
            ray.cancel(ref, force=True)

    def _kill_group(self, node: str, pgid: int) -> None:
        pinned = self._killer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        ref = pinned.remote(pgid)
        with self._lock:
            self._kills.add(ref)
        ref.future().add_done_callback(lambda _: self._forget_kill(ref))

    def _forget_kill(self, ref: Any) -> None:
        with self._lock:
            self._kills.discard(ref)

    def _watch(self) -> None:
        """Deliver finished reports (in this thread, not Ray's) and enforce timeouts."""
        while True:
            with self._lock:
                if self._closed and not self._by_ref:
                    return
            done = self._take_ready()
            if done:
                self._deliver(done)
            del done   # nothing of a finished call is held here while waiting (its constants, say)
            self._enforce_timeouts()
            if self._to_cancel:
                self._cancel_resolved()

    def _deliver(self, done: list[tuple[Any, Future[Any]]]) -> None:
        with self._lock:
            jobs = [(self._by_ref.get(ref), future) for ref, future in done]
        if any(job is not None and (job.stop_reason is not None and not job.started or future.exception() is not None)
               for job, future in jobs):
            # Stopped, or ended in Ray (its worker lost, say), and not heard from since it
            # started: what it said meanwhile may still wait at the hub. Its start note names
            # the process group to kill; its lines are what it printed before it ended.
            self._deliver_notes()
        for job, future in jobs:
            if job is not None:
                self._finish(job, future)

    def _take_ready(self) -> list[tuple[Any, Future[Any]]]:
        """The reports done now: waits up to a poll interval for the first."""
        try:
            done = [self._ready.get(timeout=_POLL_S)]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self._ready.get_nowait())
            except queue.Empty:
                return done

    def _watch_notes(self) -> None:
        """Turn workers' "started" notes into ``start_task`` while tasks run (off the result path)."""
        while not self._closed:
            self._deliver_notes()
            time.sleep(_NOTES_S)

    def _deliver_notes(self) -> None:
        with self._notes_lock:
            try:
                notes = ray.get(self._hub.drain.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the hub is gone (shutdown); reports still carry the start
                return
            for note in notes:
                with self._lock:
                    job = self._jobs.get(note.call_id)
                if job is None:
                    continue
                if type(note) is Printed:
                    self._printed(job, note.first, [TaskLog(note.call_id, *line) for line in note.lines])
                else:
                    self._started(job, note, note.group)

    def _started(self, job: _Job, note: StartNote, group: int | None) -> None:
        """Report the start, once; start the timeout's clock, and kill ``group`` (the note's, or None) if a stop came first."""
        node = note.node
        with job.start_lock:
            if job.started:
                return
            job.started = True
            with job.lock:
                job.group = (node, group) if group is not None else None
                stopped = job.stop_reason is not None
            if not stopped:
                job.start_clock(time.monotonic())
            job.report(TaskStarted(job.call.call_id, note.host, note.worker, tuple(note.gpu_ids), note.at, node_id=node))
        if stopped and group is not None:
            self._kill_group(node, group)  # the stop came first and could not name the group

    def _printed(self, job: _Job, first: int, logs: list[TaskLog]) -> None:
        """Report the lines that ``logs`` (lines ``first`` on of the call's) holds beyond those reported."""
        with job.start_lock:
            if not job.started:
                return   # cannot be: a call's start note goes before its lines, and its report repeats both
            if first > job.lines:   # the hub lost lines it had (it was gone, or slow to drain): say so
                job.report(TaskLog(job.call.call_id, "stderr",
                                   f"[maze: {first - job.lines} lines of this task's output were lost on the way "
                                   f"from its Ray worker]\n", time.time()))
            for log in logs[max(0, job.lines - first):]:
                job.report(log)
            job.lines = max(job.lines, first + len(logs))

    def _finish(self, job: _Job, done: Future[Any]) -> None:
        with self._lock:
            for ref in job.refs:
                self._producers.pop(ref, None)
            self._by_ref.pop(job.refs[0], None)
            self._timed.pop(job.call.call_id, None)
            job.over = True
        try:
            outcome = self._outcome(job, done)
        except Exception as exc:  # noqa: BLE001 - one bad report must not stop the thread that delivers all
            outcome = TaskOutcome(error=error_of(exc))
        finally:
            # Found by call id until now: lines the hub still held for it are delivered to it.
            with self._lock:
                self._jobs.pop(job.call.call_id, None)
        job.future.set_result(outcome)

    def _outcome(self, job: _Job, done: Future[Any]) -> TaskOutcome:
        try:
            report = Report.of_wire(done.result())  # Ray fetched the (small) report already
        except Exception as exc:  # noqa: BLE001 - cancelled, worker or node died
            job.outputs_failed = isinstance(exc, _FAILED_IN_RAY)
            return TaskOutcome(error=job.stop_reason or _ray_error(job.call, exc))
        if report.start is None:  # an upstream call failed: the scheduler has skipped this task already
            job.outputs_failed = True
            return TaskOutcome(error=job.stop_reason or report.error)
        # The group comes with the hub's note only: a report means the task is over.
        self._started(job, report.start, None)
        if report.logs_from > job.lines:
            # Lines went through the hub while the task ran: the worker made sure the hub has them
            # before it reported; take them first, so that every line is reported once, in order.
            self._deliver_notes()
        self._printed(job, report.logs_from, report.logs)
        started, finished = report.start.at, report.finished
        if not report.ok:
            job.outputs_failed = True
            return TaskOutcome(error=report.error, started_at=started, finished_at=finished)
        handles = dict(zip(job.call.outputs, job.refs[1:]))
        inline = report.inline
        missing = [k for k in report.keys if k not in inline]
        try:
            fetched = dict(zip(missing, ray.get([handles[k] for k in missing]))) if missing else {}
        except Exception as exc:  # noqa: BLE001 - e.g. the node holding it died, or a class the driver cannot import
            return TaskOutcome(error=job.stop_reason or _ray_error(job.call, exc), started_at=started, finished_at=finished)
        result = {k: inline[k] if k in inline else fetched[k] for k in report.keys}
        return TaskOutcome(result, handles, None, started, finished)

    def _enforce_timeouts(self) -> None:
        """Stop the jobs past their deadline; only jobs with a timeout are looked at (this runs once per batch of reports)."""
        if not self._timed:
            return
        with self._lock:
            late, _ = sweep(self._timed.values(), time.monotonic())
        for job in late:
            self._stop(job, job.timed_out())


def gpu_mem_warning(task_id: str, run_id: str, gpu: float, gpu_mem: float, share: float,
                    per_gpu: float | None) -> str:
    """What the once-per-run warning says: the task, its figure, what Ray reserves instead, and why."""
    if gpu >= 1:
        instead = f"it is given {gpu:g} whole GPU(s), and the figure is only checked against the GPUs' memory"
    elif gpu and per_gpu:
        instead = (f"maze reserves {share:.3g} of a GPU for it instead (the larger of gpu={gpu:g} and {gpu_mem:g} MB "
                   f"of the {per_gpu:g} MB of one GPU), so that tasks sharing a GPU fit on paper")
    elif gpu:
        instead = (f"no node declares its GPU memory (the {GPU_MEM_RESOURCE} resource), so only gpu={gpu:g} "
                   f"is reserved")
    else:
        instead = "the task asks for no GPU (gpu=0), so nothing is reserved for the figure"
    return (f"task {task_id!r} of run {run_id!r} declares gpu_mem={gpu_mem:g} MB, which the Ray backend cannot "
            f"enforce: Ray has no GPU-memory resource; {instead}, and nothing stops the task from using more GPU "
            f"memory than it declared. Keep each task within its gpu_mem, or give it whole GPUs (gpu=1). "
            f"(Said once per run: other tasks of this run that declare gpu_mem are in the same case.)")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: Ray wraps the error that says what went wrong."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _ray_error(call: TaskCall, exc: BaseException) -> TaskError:
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.LocalRayletDiedError)):
        return TaskError.worker_died(call.task_id, f"a Ray worker: {error_of(exc).text}")
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return TaskError.cancelled(call.task_id, "Ray cancelled it")
    if isinstance(exc, ray.exceptions.RayError):
        # Ray failed before or around the task's body (e.g. an input the worker could not
        # unpickle): say so, naming the task and the cause, without Ray's terminal colours.
        cause: BaseException = exc
        while isinstance(cause, ray.exceptions.RayTaskError) and isinstance(cause.cause, BaseException):
            cause = cause.cause   # what the worker hit, not Ray's wrapper of it
        cause = _root_cause(cause)
        text = _ANSI.sub("", f"{type(cause).__name__}: {cause}").strip()
        return TaskError.simple("RuntimeError", f"task {call.task_id!r} could not be run by Ray: {text}")
    return error_of(exc)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Ray's errors of a call that failed or was stopped in Ray: its outputs are errors too.
_FAILED_IN_RAY = (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError,
                  ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError)
