"""What runs in a Ray worker for each maze call, and what travels between it and the driver.

The driver side is :mod:`maze.backends.ray`. Everything here is kept small on
the wire: a call is a :class:`RayCall` and a report a :class:`Report`, both
sent as plain nested lists, which Ray packs with msgpack (classes would be
pickled, by reference, per call). A worker holds a little state of its own
across calls: the task functions it has loaded (by code key), the hub of each
client it has served, and where it runs (node and worker ids, fixed for the
process).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import cloudpickle
import ray

from maze.backends._jobs import pid_exists, wrapped_error
from maze.core.errors import BackendError
from maze.core.execute import error_of
from maze.core.protocol import Failure, TaskError, TaskLog
from maze.core.task import TaskBody

INLINE_LIMIT = 64 * 1024  # outputs smaller than this ride along in the report
CODE_CACHE = 64           # task functions kept, by code key, in each worker
HUB_CODE = 1024           # code keys the hub keeps, the last added
SENT_CODE = HUB_CODE // 2  # code keys the driver remembers sending: fewer than the hub keeps (see RayBackend._ship)
KILL_WAIT_S = 10.0        # how long a group kill waits for the stopped worker to be gone


class RayCall(NamedTuple):
    """What a worker needs of a call besides its inputs (one argument: Ray serializes each separately).

    Sent as a plain list, which Ray packs with msgpack (this class would be
    pickled, by reference, per call); an object reference in it would cost an
    ownership record per call,
    and a top-level one a fetch from the object store per call. The
    client's session and the call's code travel as keys: a worker asks the
    client's hub (a named actor) for them the first time it meets a key.
    """

    session: str                      # the client's session key (its hub is named after it)
    code_key: str
    call_id: str
    task_id: str
    constants: dict[str, Any]         # inputs given as plain values
    input_keys: list[str]             # the names of the inputs that follow this argument, in order
    outputs: tuple[str, ...]          # declared outputs, checked by the worker
    gpus: bool                        # whether Ray reserves GPUs for it (else its start note names none, unasked)
    # after the inputs come this many reports of upstream calls it only waits for (TaskCall.after)


class Failed(NamedTuple):
    """What each output of a call that did not succeed holds: a dependent submitted ahead skips its body on it."""

    task_id: str


class Shared(NamedTuple):
    """A constant input pickled by the driver, once for the calls in flight that take it; in a call, or put in
    the object store when large.

    Each call unpickles its own copy: a task may change it in place (an array
    Ray maps from its store is read-only), and it is what it was (Ray's own
    serialization makes a ``bytearray`` ``bytes``).
    """

    pickled: bytes


class StartNote(NamedTuple):
    """A worker to the driver, through the hub, as a call starts (its report repeats it)."""

    call_id: str
    host: str                         # the node's IP address
    node: str                         # Ray's node id
    worker: str                       # Ray's worker id
    gpu_ids: tuple[int, ...]
    at: float                         # time.time() at the start
    group: int | None                 # the process group the worker leads, killed on stop; None: none to kill safely


class Printed(NamedTuple):
    """A worker to the driver, through the hub: lines a call printed while it runs (its report has the rest)."""

    call_id: str
    first: int                        # the index of the first of these lines among all the call printed
    lines: list[list[Any]]            # [stream, text, at] each, in order


class Report(NamedTuple):
    """A call's first return value; one object per declared output follows it."""

    start: StartNote | None           # None: skipped, an upstream call failed (the driver skips the task itself)
    ok: bool
    keys: list[str]                   # what the task returned, in order (empty when not ok)
    inline: dict[str, Any]            # the values small enough to ride here (see INLINE_LIMIT)
    error: TaskError | None
    logs: list[TaskLog]               # what the task printed, in order, from line ``logs_from`` on
    logs_from: int                    # the lines before it went through the hub while the task ran
    finished: float                   # time.time() at the end

    # On the wire a report is nested lists of plain values, which Ray packs with
    # msgpack; these classes would be pickled (by reference) per call.

    def wire(self) -> list[Any]:
        s, e = self.start, self.error
        return [None if s is None else [s.call_id, s.host, s.node, s.worker, list(s.gpu_ids), s.at, s.group],
                self.ok, self.keys, self.inline,
                None if e is None else [e.error_type, e.error, e.traceback, e.kind.value],
                [[log.call_id, log.stream, log.text, log.at] for log in self.logs], self.logs_from, self.finished]

    @classmethod
    def of_wire(cls, wire: list[Any]) -> Report:
        start, ok, keys, inline, error, logs, logs_from, finished = wire
        return cls(
            None if start is None else StartNote(start[0], start[1], start[2], start[3], tuple(start[4]), start[5],
                                                 start[6]),
            ok, keys, inline,
            None if error is None else TaskError(error[0], error[1], error[2], Failure(error[3])),
            [TaskLog(*log) for log in logs], logs_from, finished,
        )


@ray.remote(num_cpus=0)
class Hub:
    """One per client: collects what workers say of running calls (the driver drains it), and hands workers the
    session and code."""

    def __init__(self, sys_path: list[str]) -> None:
        self._notes: list[StartNote | Printed] = []
        self._sys_path = sys_path
        self._code: OrderedDict[str, bytes] = OrderedDict()

    def noted(self, notes: list[StartNote | Printed]) -> None:
        self._notes.extend(notes)

    def drain(self) -> list[StartNote | Printed]:
        notes, self._notes = self._notes, []
        return notes

    def sys_path(self) -> list[str]:
        return self._sys_path

    def add_code(self, key: str, data: bytes) -> None:
        self._code[key] = data
        self._code.move_to_end(key)
        if len(self._code) > HUB_CODE:
            self._code.popitem(last=False)

    def code(self, key: str) -> bytes | None:
        return self._code.get(key)


def hub_name(session: str) -> str:
    return f"maze-hub-{session}"


# -- in each Ray worker process ----------------------------------------------------------------

_functions: OrderedDict[str, TaskBody] = OrderedDict()  # unpickled task functions by code key
_sessions: dict[str, tuple[Any, list[str]]] = {}        # session key -> (hub, the driver's sys.path)
_where: tuple[str, str, str] | None = None               # (node IP, node id, worker id): fixed for the process
_NOTE_DELAY_S = 0.02  # a call still running after this long has its start note sent (see _Notes)
_LINES_S = 0.1        # a running call's new lines go at most this often
_HUB_WAIT_S = 10.0    # how long an ended call waits for the hub to hold the lines it sent


class _Running:
    """A call this worker runs, as :class:`_Notes` sees it."""

    __slots__ = ("session", "note", "logs", "since", "start_sent", "lines_sent", "lines_at", "lines_ref")

    def __init__(self, session: str, note: StartNote, logs: list[TaskLog], since: float) -> None:
        self.session = session
        self.note = note
        self.logs = logs              # appended to by the task's output capture, read here
        self.since = since
        self.start_sent = False
        self.lines_sent = 0           # how many of its lines went to the hub
        self.lines_at = since         # when they last went
        self.lines_ref: Any = None    # the hub call that took the last of them


class _Notes:
    """Sends what the calls still running have to say (their start, their new lines), a batch per hub call.

    A call says nothing for its first ``_NOTE_DELAY_S``: one over by then has
    its report carry its start and its lines, so a short task costs no actor
    call. A longer one's start note goes then, with whatever else started, and
    the lines it prints go every ``_LINES_S`` at most. When the call ends,
    :meth:`ended` waits until the hub holds the lines it sent, so that the
    driver, when it reads the report, finds them at the hub if it has not
    drained them yet; the report carries the lines after those.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[Any], object] = lambda ref: _fetch(ref, timeout=_HUB_WAIT_S)) -> None:
        self._clock = clock   # when a call started, and how long ago (a test's clock may stand still)
        self._wait = wait     # until a hub call is done
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}   # by call id
        self._wake = threading.Event()   # something may be due: a call started, or one printed
        self._thread: threading.Thread | None = None

    def started(self, session: str, note: StartNote, logs: list[TaskLog]) -> None:
        with self._lock:
            self._running[note.call_id] = _Running(session, note, logs, self._clock())
            if self._thread is None:
                self._thread = threading.Thread(target=self._send, name="maze-notes", daemon=True)
                self._thread.start()
        self.printed()

    def printed(self) -> None:
        """A running call printed a line (appended to its ``logs``)."""
        # Set already: the sender will look again (it clears the flag before it looks, under the
        # lock). Setting an Event costs a lock and a notify; a chatty task calls this per line.
        if not self._wake.is_set():
            self._wake.set()

    def ended(self, call_id: str) -> int:
        """The call is over: how many of its first lines the hub holds (its report carries the rest)."""
        with self._lock:
            running = self._running.pop(call_id, None)
        if running is None or running.lines_ref is None:
            return 0
        try:
            self._wait(running.lines_ref)
        except Exception:  # noqa: BLE001 - the hub is gone or slow: the report carries every line (the driver keeps each once)
            return 0
        return running.lines_sent

    def _send(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(_NOTE_DELAY_S)
            with self._lock:
                # Cleared before looking: a line printed from now on sets it again.
                self._wake.clear()
                now = self._clock()
                batches: dict[str, list[StartNote | Printed]] = {}
                saying: dict[str, list[tuple[_Running, bool]]] = {}   # the calls in each batch; with lines?
                later = False   # something is not due yet: look again next turn
                for running in self._running.values():
                    # Only calls that have run that long: one that started just now waits for
                    # the next turn (it is likely over by then, and says nothing).
                    if now - running.since < _NOTE_DELAY_S:
                        later = True
                        continue
                    said: list[StartNote | Printed] = []
                    if not running.start_sent:
                        running.start_sent = True
                        said.append(running.note)
                    new = len(running.logs) - running.lines_sent
                    if new > 0 and now - running.lines_at < _LINES_S and running.lines_sent:
                        later = True
                    elif new > 0:
                        first = running.lines_sent
                        lines = [[log.stream, log.text, log.at] for log in running.logs[first:first + new]]
                        said.append(Printed(running.note.call_id, first, lines))
                        running.lines_sent = first + new
                        running.lines_at = now
                    if said:
                        batches.setdefault(running.session, []).extend(said)
                        saying.setdefault(running.session, []).append((running, type(said[-1]) is Printed))
                if later:
                    self._wake.set()
                # Sent under the lock, so that ended() finds the hub call of every line counted as sent.
                for session, notes in batches.items():
                    try:
                        ref = _sessions[session][0].noted.remote(notes)
                    except Exception:  # noqa: BLE001 - the driver left: the reports carry the starts and the lines
                        for running, _ in saying[session]:
                            running.start_sent, running.lines_sent, running.lines_ref = False, 0, None
                        continue
                    for running, with_lines in saying[session]:
                        if with_lines:
                            running.lines_ref = ref


_notes = _Notes()


def run_call(packed: list[Any], *args: Any) -> Any:
    """The body of every maze task on Ray (runs in a Ray worker): a :class:`Report`, then the outputs.

    Few arguments on purpose: Ray serializes each one separately on submit.
    ``args`` are the inputs, then the reports of the upstream calls it only
    waits for. An upstream call that failed shows as a :class:`Failed` input
    or a report that is not ok: then the body does not run.
    """
    call = RayCall._make(packed)
    outputs = tuple(call.outputs)
    n = len(call.input_keys)
    inputs = args[:n]
    failed = next((v.task_id for v in inputs if isinstance(v, Failed)), None)
    if failed is None and any(not r[1] for r in args[n:]):  # reports, on the wire: [start, ok, ...]
        failed = "an upstream task"
    if failed is not None:
        skipped = Report(None, False, [], {}, TaskError.simple("UpstreamFailed", f"upstream task {failed!r} failed"),
                         [], 0, time.time()).wire()
        return (skipped, *[Failed(call.task_id)] * len(outputs)) if outputs else skipped
    from maze.core.execute import captured_output, gather_params, run_body

    global _where
    if _where is None:
        ctx = ray.get_runtime_context()
        _where = (ray.util.get_node_ip_address(), ctx.get_node_id(), ctx.get_worker_id())
    group = _lead_process_group()
    # Asking Ray for the GPU ids costs more than a no-op task's body: only a call that reserved GPUs has any.
    gpu_ids = tuple(int(g) for g in ray.get_gpu_ids()) if call.gpus else ()
    start = StartNote(call.call_id, *_where, gpu_ids, time.time(), group)
    logs: list[TaskLog] = []

    def printed(stream: str, text: str) -> None:
        logs.append(TaskLog(call.call_id, stream, text, time.time()))
        _notes.printed()

    result: dict[str, Any] | None = None
    error = None
    try:
        session = _sessions.get(call.session)
        if session is None:
            hub = ray.get_actor(hub_name(call.session))
            session = _sessions[call.session] = (hub, _fetch(hub.sys_path.remote()))
        _notes.started(call.session, start, logs)
        func = _load(call.code_key, *session)
        given = gather_params(call.constants, dict(zip(call.input_keys, inputs)))
        params = {k: _own_copy(v, k, call.task_id) for k, v in given.items()}
    except _Unloadable as exc:
        error = exc.error
    except BaseException as exc:  # noqa: BLE001
        error = error_of(exc)
    else:
        with captured_output(printed):
            result, error = run_body(func, params, outputs, call.task_id)
    sent = _notes.ended(call.call_id)
    values: list[Any] = [Failed(call.task_id)] * len(outputs)
    inline: dict[str, Any] = {}
    if result is not None:
        try:
            # Ray would fail to store an unpicklable output only after this report
            # said "ok"; find out here, and measure each value on the way.
            fits = {k: small(v) for k, v in result.items()}
        except Exception as exc:  # noqa: BLE001
            result, error = None, wrapped_error(exc, f"the result of task {call.task_id!r} could not be pickled")
    if result is not None:
        values = [result[k] for k in outputs]
        inline = {k: v for k, v in result.items() if k not in outputs or fits[k]}
    report = Report(start, result is not None, list(result or ()), inline, error, logs[sent:], sent, time.time()).wire()
    return (report, *values) if outputs else report


class _Unloadable(Exception):
    def __init__(self, error: TaskError) -> None:
        super().__init__(error.text)
        self.error = error


def _own_copy(value: Any, key: str, task_id: str) -> Any:
    """A constant the driver pickled (:class:`Shared`), unpickled for this call; any other input as it came."""
    if type(value) is not Shared:
        return value
    try:
        return cloudpickle.loads(value.pickled)
    except BaseException as exc:  # noqa: BLE001 - e.g. its class cannot be imported here
        raise _Unloadable(wrapped_error(exc, f"the input {key!r} of task {task_id!r} could not be unpickled "
                                             "in the worker")) from exc


def _load(key: str, hub: Any, sys_path: list[str]) -> TaskBody:
    """The task function for a code key: fetched from the hub and unpickled once per worker, the last few kept."""
    func = _functions.get(key)
    if func is None:
        sys.path.extend(p for p in sys_path if p not in sys.path)  # where the driver found its modules
        data = _fetch(hub.code.remote(key))
        if data is None:
            raise BackendError(f"the code of this task (key {key}) is no longer held by the client's hub; "
                               f"more than {HUB_CODE} task functions were sent since it was submitted")
        func = _functions[key] = cloudpickle.loads(data)
        if len(_functions) > CODE_CACHE:
            _functions.popitem(last=False)
    else:
        _functions.move_to_end(key)
    return func


_fetcher = ThreadPoolExecutor(1, thread_name_prefix="maze-fetch")


def _fetch(ref: Any, timeout: float | None = None) -> Any:
    """``ray.get`` from a thread of the worker's own, for what a call asks the hub.

    A worker whose main thread waits in ``ray.get`` lends its CPU to Ray while it
    waits, and Ray may start one more worker process to use it: on a small
    machine, a second or more of a new interpreter competing with the tasks, then
    one task too many for the CPUs. A wait on another thread lends nothing.
    """
    return _fetcher.submit(ray.get, ref, timeout=timeout).result()


def _lead_process_group() -> int | None:
    """Make this worker the leader of a process group of its own, so that a stop can kill what the task starts.

    Returns the group's id, or None where there is none to kill safely: no
    process groups (Windows), or a group this worker does not lead (without
    Ray's own per-worker groups a worker starts in the raylet's group, or the
    driver's, which a kill must never reach).
    """
    if not hasattr(os, "setpgid"):
        return None
    pid = os.getpid()
    if os.getpgid(0) == pid:
        return pid  # leads its group already (an earlier call on this reused worker, or Ray, made it)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # a session leader leads its group already
    return pid if os.getpgid(0) == pid else None


def kill_group(pgid: int) -> None:
    """Kill a stopped task's process group once its leader, the Ray worker, is gone (runs on the worker's node).

    Waiting for the leader first keeps the kill to that task's processes: a
    leader still alive when the wait ends had finished the task before the
    cancel reached it, and may be running another one. While any member of the
    group lives, no new process can take the group's id.
    """
    give_up = time.monotonic() + KILL_WAIT_S
    while _running(pgid):
        if time.monotonic() > give_up:
            return
        time.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the task started nothing that outlived it


def _running(pid: int) -> bool:
    """Whether a process runs; a zombie (dead, not yet reaped) does not."""
    if not pid_exists(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except OSError:  # no /proc (macOS), or gone meanwhile: ask again on the next turn
        return True
    return state != b"Z"


PLAIN = (int, float, bool, type(None))  # always picklable, always small


def small(value: Any) -> bool:
    """Whether an output is small enough to ride in the report; raises if it cannot be pickled."""
    if type(value) in PLAIN:
        return True
    if type(value) in (bytes, bytearray, str):   # pickled whole just to be measured: their length says enough
        if len(value) < INLINE_LIMIT // 4:
            return True
        if len(value) >= INLINE_LIMIT or type(value) is not str:
            return len(value) + 64 < INLINE_LIMIT
    buffers = 0

    def out_of_band(buffer: Any) -> None:  # large buffers are not copied, only counted
        nonlocal buffers
        buffers += memoryview(buffer.raw()).nbytes

    pickled = len(cloudpickle.dumps(value, protocol=5, buffer_callback=out_of_band))
    return pickled + buffers < INLINE_LIMIT   # the buffers counted while pickling, so added after

