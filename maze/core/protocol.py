"""The contract between the scheduler and a backend.

A backend only *executes*: it gets a :class:`TaskCall` whose resources the
scheduler has already granted, runs it somewhere, and resolves a
``concurrent.futures.Future`` with a :class:`TaskOutcome`. It never decides
what runs next and keeps no run state. The protocol is four members::

    capacity() -> Capacity                     what it can run at once
    submit(call, report) -> Future[TaskOutcome]
    stop(call_id)                              stop a queued or running call
    close()                                    release workers and connections

Two promises make the message stream ordered without any extra bookkeeping:

* ``report`` receives :class:`TaskStarted` when the call really starts on a
  worker, and :class:`TaskLog` for what the task prints, always *before* the
  future resolves;
* the future always resolves with an outcome, never an exception: a task that
  raised, timed out, was stopped, or whose worker died is an outcome whose
  :attr:`TaskOutcome.error` says so.

``TaskOutcome.handles`` are the task's outputs in whatever form the backend
passes them on (values in memory, pickled bytes, Ray object references); the
scheduler hands them back unchanged in the ``inputs`` of dependent calls.

Two capabilities are optional. :class:`EagerBackend`: a backend that *resolves
handles of submitted calls* (Ray: object references of tasks still queued or
running) says so with ``resolves_submitted = True`` and offers
``submit_ahead``, which returns, with the future, the handles of the call's
outputs and of its end (:class:`Submitted`). The scheduler then submits a
dependent as soon as its upstream calls are *submitted*, passing those handles,
and the backend makes the dependent wait for them and skip its body when one of
them failed. Everything the run records (states, messages, their order) is
still decided by the scheduler from outcomes, as for any backend.
:class:`LiningBackend`: a backend that can line a call up behind another one
sharing its resources (``submit_behind``) and start it the moment that one
ends; the scheduler lines up quick tasks so that a worker never waits for it
between them, and a quick task's one dependent behind it, taking its outputs
as they come (the local backend).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .failure import Failure as Failure  # re-exported: part of the contract, defined apart for workers
from .failure import TaskError as TaskError
from .resources import Capacity, Resources
from .shipping import ShippedCode
from .task import TaskBody

if TYPE_CHECKING:  # for annotations only: the run and the plan import this module
    from .messages import Message, MessageLog
    from .plan import Plan
    from .run import RunStatus, TaskState


@dataclass(frozen=True, slots=True)
class TaskCall:
    """One attempt of one task of one run."""

    call_id: str
    run_id: str
    task_id: str
    task_name: str
    attempt: int
    func: TaskBody                      # the function itself (what an in-process backend calls)
    code: ShippedCode                   # the same function pickled at run() time (what workers load)
    constants: Mapping[str, Any]        # inputs given as plain values
    inputs: Mapping[str, Any]           # inputs from upstream outputs, as backend handles
    outputs: tuple[str, ...]            # declared outputs, checked by the worker
    resources: Resources
    gpu_ids: tuple[int, ...] = ()
    timeout: float | None = None
    # Only for a backend that resolves submitted calls: the ``Submitted.done``
    # handles of upstream calls, not finished yet, whose outputs this call does
    # not take (ordering-only edges). It must not start before they end, and
    # must not run its body if one of them failed.
    after: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    result: Mapping[str, Any] | None = None              # what the task returned, when it succeeded
    handles: Mapping[str, Any] = field(default_factory=dict)
    error: TaskError | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class TaskStarted:
    call_id: str
    node: str                   # host name (or Ray node)
    worker: str | int           # pid, or Ray worker id
    gpu_ids: tuple[int, ...]
    at: float
    node_id: str | None = None  # a cluster's id for the node, where it has one


@dataclass(frozen=True, slots=True)
class TaskLog:
    call_id: str
    stream: str                 # "stdout" or "stderr"
    text: str
    at: float


WorkerEvent = TaskStarted | TaskLog
Reporter = Callable[[WorkerEvent], None]


@runtime_checkable
class Backend(Protocol):
    """What the scheduler needs from an executor. See the module docstring."""

    name: str

    def capacity(self) -> Capacity: ...

    def submit(self, call: TaskCall, report: Reporter) -> Future[TaskOutcome]: ...

    def stop(self, call_id: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Submitted:
    """Handles of a call that was submitted and may not have finished: what dependents submitted ahead take."""

    outputs: Mapping[str, Any]   # one handle per declared output (the same as the outcome's ``handles``)
    done: Any                    # a handle that resolves when the call ends, for ``TaskCall.after``


@runtime_checkable
class EagerBackend(Backend, Protocol):
    """A backend that resolves handles of *submitted* calls (see the module docstring).

    ``resolves_submitted`` turns the capability on (a backend may offer it
    conditionally). ``submit_ahead`` is ``submit`` that also returns the
    call's :class:`Submitted` handles, or ``None`` when the call never reached
    the backend (its future then says why). Handles passed in ``inputs`` or
    ``after`` of a later call must make that call wait for the upstream call
    to end; when the upstream failed (raised, timed out, was stopped, its
    worker died, or it was itself skipped) the later call must not run its
    body, and its outcome is an error the scheduler ignores, because it has
    already skipped that task.
    """

    resolves_submitted: bool

    def submit_ahead(self, call: TaskCall, report: Reporter) -> tuple[Future[TaskOutcome], Submitted | None]: ...


@runtime_checkable
class LiningBackend(Backend, Protocol):
    """A backend that can line a call up behind another, to start it the moment that one ends.

    ``submit_behind`` is ``submit`` for a call that shares the resources of
    the call ``behind`` (the scheduler admitted them once, for both): it must
    not start before ``behind`` has ended. When ``behind`` ends well, the
    backend starts it at once on the worker that ran ``behind``, without
    waiting for the scheduler to hear of that end, which keeps a worker busy
    while the scheduler concludes the call before. When ``behind`` fails, the
    backend resolves ``behind``'s future first, so that a scheduler stopping
    everything (fail-fast) stops the lined-up call before it starts. If
    ``behind`` has ended already, the call is submitted as usual.

    A call lined up behind another may take that one's outputs before they
    exist: ``upcoming_outputs(behind)`` gives handles for them, or None once
    ``behind`` has ended (or is unknown). They are valid in the ``inputs`` of
    calls submitted behind ``behind`` and, once it has ended well, of any
    call. When ``behind`` ends without outputs, a call taking them never runs:
    its outcome is an error the scheduler ignores, having skipped that task.
    """

    def submit_behind(self, call: TaskCall, report: Reporter, behind: str) -> Future[TaskOutcome]: ...

    def upcoming_outputs(self, call_id: str) -> Mapping[str, Any] | None: ...


# -- what a reader of a run sees ---------------------------------------------------------------


class RunView(Protocol):
    """A run as its readers see it (``show_results``, the widget, ``get_results``): read-only.

    :class:`~maze.core.run.RunState` is the one implementation; only the
    scheduler calls its transitions. Read ``messages`` under ``changed``.
    """

    changed: threading.Condition      # notified on every message
    ended: threading.Event            # set after ``finish_workflow`` was recorded
    prepared: threading.Event         # fingerprints and reuse decided

    @property
    def run_id(self) -> str: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def status(self) -> RunStatus: ...
    @property
    def started_at(self) -> float: ...
    @property
    def duration(self) -> float | None: ...
    @property
    def messages(self) -> Sequence[Message]: ...
    @property
    def states(self) -> Mapping[str, TaskState]: ...
    @property
    def reasons(self) -> Mapping[str, str]: ...

    def log(self) -> MessageLog: ...
    def follow_logs(self) -> Iterator[Message]: ...
    def interrupted(self) -> None: ...
    def resolve_task(self, task_id: str) -> str: ...
    def wait_task(self, task_id: str, timeout: float | None = None) -> bool: ...
    def task_result(self, task_id: str) -> dict[str, Any]: ...
    def summary(self) -> dict[str, Any]: ...


# -- the other plug-ins of the core ------------------------------------------------------------
# Besides a backend, the core calls three things it does not implement: where
# results are cached, where messages are recorded, and what draws a run.


class ResultStore(Protocol):
    """Where ``@task(cache=True)`` results are kept across runs (see :mod:`maze.cache`)."""

    def get(self, key: str) -> Mapping[str, Any] | None: ...

    def put(self, key: str, result: dict[str, Any]) -> None: ...


class Recorder(Protocol):
    """Where a run's messages are kept beyond memory (see :mod:`maze.core.history`)."""

    def message(self, run_id: str, seq: int, message: Message) -> None: ...


class Viewer(Protocol):
    """Pictures of a workflow and its runs (provided by the client; see ``maze.notebook``)."""

    def graph(self, plan: Plan, run: RunView | None = None) -> Any:
        """A displayable DAG, coloured by ``run``'s task states when given."""

    def watch(self, run: RunView) -> Callable[[], None] | None:
        """Show ``run`` live where a notebook front end is listening.

        Returns what to call once the run has ended (it leaves the final picture in
        the cell, for viewers without a widget front end), or None if nothing is shown.
        """
