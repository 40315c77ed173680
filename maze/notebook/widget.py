"""The live DAG widget.

The graph is laid out once per plan, by Graphviz, in a background thread at
low priority, into an SVG that never changes afterwards (a :class:`Picture`,
shared by the widgets of an unchanged workflow's runs, which then start with
it in their first frame); a large plan is laid out by groups
(:mod:`maze.core.grouping`), so a thousand-task fan-out is three readable
boxes, each group showing its own progress. The front end (dag.js,
served through anywidget) indexes the SVG's nodes once and then does constant
work per changed task: recolour one node, or move one count of its group.

A watcher thread, at low priority, folds the run's messages into a
:class:`~.states.Board` at most :data:`UPDATES_PER_S` times a second, in
slices that leave the interpreter to the run's own threads in between, and
sends only what changed (the
``diff`` trait: the states and hover texts of the tasks that changed since
the last update). The full ``states`` map, which a view opened later starts
from, is re-sent only every :data:`SNAPSHOT_S` seconds and at the end. The
front end asks for a task's whole error and output when the user picks it
(a custom message), so they never travel unasked.

Where no widget front end exists (nbconvert, nbval, GitHub's viewer) the
display falls back to a static SVG of the current states, and
:func:`~maze.notebook.display.show_live` refreshes it when the run ends.
"""

from __future__ import annotations

import html
import os
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from maze.core.grouping import Grouping, group_plan
from maze.core.plan import PerPlan, Plan
from maze.core.protocol import RunView

from .render import LOOKS, NO_RENDERER_HINT, counts_text, to_dot, to_svg
from .states import Board

_HERE = Path(__file__).parent

#: At most this many updates a second reach the front end during a run.
UPDATES_PER_S = 10
#: The full map of states is re-sent this often (for views opened later); diffs in between.
SNAPSHOT_S = 2.0
#: The log pane (the run's last printed lines) is re-sent at most this often.
LOG_S = 1.0
#: Messages folded at a time before the watcher lets the run's threads take the interpreter.
FOLD_SLICE = 100


@dataclass(frozen=True)
class Picture:
    """A plan's laid-out graph, and which drawn node shows each task."""

    grouping: Grouping
    dot: str
    svg: str | None                        # None without Graphviz: the front end shows ``dot``
    nodes: dict[str, str]                  # task id -> SVG element id (its own node's or its group's)
    groups: dict[str, dict[str, Any]]      # group element id -> {label, size}
    alone: frozenset[str]                  # tasks drawn as their own node (they get hover texts)


def draw(plan: Plan) -> Picture:
    """Group and lay out ``plan`` (Graphviz at low priority): 0.7 s for 1,000 nodes ungrouped."""
    grouping = group_plan(plan)
    dot = to_dot(plan, grouping=grouping)
    nodes: dict[str, str] = {}
    groups: dict[str, dict[str, Any]] = {}
    positions = {tid: i for i, tid in enumerate(plan.tasks)}
    for g in grouping.groups:
        if len(g.task_ids) == 1:
            nodes[g.task_ids[0]] = f"task-t{positions[g.task_ids[0]]}"
        else:
            element = f"group-{g.group_id}"
            groups[element] = {"label": g.label, "size": len(g.task_ids)}
            nodes.update(dict.fromkeys(g.task_ids, element))
    alone = frozenset(t for g in grouping.groups if len(g.task_ids) == 1 for t in g.task_ids)
    return Picture(grouping, dot, to_svg(dot, background=True), nodes, groups, alone)


#: The pictures of the plans in use: the runs of an unchanged workflow share one.
_pictures: PerPlan[Picture] = PerPlan()


def _lower_priority() -> None:
    """Let the run's own threads and its workers go first (Linux schedules threads one by one)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass


class DagWidget(anywidget.AnyWidget):
    """A workflow's DAG, coloured by the states of one run's tasks."""

    # The sources themselves, not their paths: anywidget watches a path for edits and keeps
    # every widget ever made alive through that watch (with its plan and the plan's inputs).
    _esm = (_HERE / "dag.js").read_text(encoding="utf-8")
    _css = (_HERE / "dag.css").read_text(encoding="utf-8")

    svg = traitlets.Unicode("", help="The laid-out graph; set once.").tag(sync=True)
    dot = traitlets.Unicode("", help="DOT source, shown when Graphviz is missing.").tag(sync=True)
    nodes = traitlets.Dict({}, help="Task id -> the id of the SVG element that draws it (its own or its group's).").tag(sync=True)
    groups = traitlets.Dict({}, help="Group element id -> {label, size} for nodes that draw several tasks.").tag(sync=True)
    states = traitlets.Dict({}, help="Task id -> state name: the full map, re-sent now and then.").tag(sync=True)
    diff = traitlets.Dict({}, help="{seq, states, tooltips}: what changed since the last update.").tag(sync=True)
    tooltips = traitlets.Dict({}, help="Task id -> hover text, as of the last full map.").tag(sync=True)
    looks = traitlets.Dict({}, help="State name -> colours, icon and border of that state.").tag(sync=True)
    failures: traitlets.List[dict[str, str]] = traitlets.List([], help="The first failed tasks: [{task, error}] (error's first line).").tag(sync=True)
    failed = traitlets.Int(0, help="How many tasks failed in all.").tag(sync=True)
    log = traitlets.Unicode("", help="The run's last printed lines, marked with their task.").tag(sync=True)
    log_lines = traitlets.Int(0, help="How many lines the run's tasks printed in all.").tag(sync=True)
    status = traitlets.Unicode("pending", help="The run's status.").tag(sync=True)
    title = traitlets.Unicode("", help="Workflow name and run id.").tag(sync=True)
    hint = traitlets.Unicode("", help="Why there is no picture, if there is none.").tag(sync=True)

    def __init__(self, plan: Plan, run: RunView | None = None, *, interval: float = 1 / UPDATES_PER_S,
                 **kwargs: Any) -> None:
        self._plan = plan
        self._run = run
        self._board = Board(plan)
        self._interval = interval
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._layout: threading.Thread | None = None
        self._picture = _pictures.find(plan)        # None until laid out (in the background)
        self._drawn = threading.Event()
        self._seq = 0
        self._snapshot_at = time.monotonic()
        self._log_at = 0.0
        seen = 0
        if run is not None:  # replay what happened so far, so the first frame is already right
            with run.changed:
                recorded = list(run.messages)
            self._board.apply(recorded)
            seen = len(recorded)
        self._board.take_changed()
        drawn = self._drawing(self._picture) if self._picture is not None else {"tooltips": {}}
        super().__init__(
            looks={name: {"fill": lk.fill, "font": lk.font, "border": lk.border, "icon": lk.icon,
                          "dash": _dash(lk.style), "width": lk.width} for name, lk in LOOKS.items()},
            title=plan.name + (f" · {run.run_id}" if run else ""),
            states=self._board.states,
            status=self._board.status,
            failures=self._board.failures(),
            failed=self._board.failed_count(),
            log="\n".join(self._board.log),
            log_lines=self._board.log_lines,
            **drawn,
            **kwargs,
        )
        self.on_msg(self._on_front_end_msg)
        if self._picture is not None:
            self._drawn.set()
        else:  # a first layout takes a while: off the caller's thread, beside the watcher
            self._layout = threading.Thread(target=self._lay_out, name="maze-layout", daemon=True)
            self._layout.start()
        if run is not None and not (run.ended.is_set() and seen == len(run.messages)):
            self._watcher = threading.Thread(target=self._watch, args=(run, seen), name="maze-widget", daemon=True)
            self._watcher.start()

    def _drawing(self, picture: Picture) -> dict[str, Any]:
        """The traits that show ``picture``."""
        drawn: dict[str, Any] = {"nodes": picture.nodes, "groups": picture.groups,
                                 "tooltips": self._board.tooltips(picture.alone)}
        if picture.svg:
            drawn["svg"] = picture.svg
        else:
            drawn.update(dot=picture.dot, hint=NO_RENDERER_HINT)
        return drawn

    def _lay_out(self) -> None:
        _lower_priority()
        try:
            picture = self._picture = _pictures.get(self._plan, partial(draw, self._plan))
        finally:
            self._drawn.set()   # whatever happened: the static forms wait for this, never forever
        with self.hold_sync():
            for name, value in self._drawing(picture).items():
                setattr(self, name, value)

    @property
    def _alone(self) -> frozenset[str]:
        return self._picture.alone if self._picture is not None else frozenset()

    @property
    def board(self) -> Board:
        return self._board

    def _catch_up(self, run: RunView, seen: int, *, last: bool = False) -> int:
        with run.changed:
            batch = run.messages[seen:]
        for i in range(0, len(batch), FOLD_SLICE):
            if i:
                # Folding a busy run's thousand messages in one go would hold the interpreter
                # for milliseconds while the scheduler's thread waits, and the workers with it.
                time.sleep(0)
            self._board.apply(batch[i:i + FOLD_SLICE])
        if batch or last:
            self._publish(full=last)
        return seen + len(batch)

    def _watch(self, run: RunView, seen: int) -> None:
        # Poll rather than wait on every message: the run never waits for the
        # front end, and a burst of messages becomes one update.
        _lower_priority()
        while not self._stop.is_set():
            ended = run.ended.wait(self._interval)
            seen = self._catch_up(run, seen, last=ended)
            if ended:
                return

    def wait(self, timeout: float | None = None) -> None:
        """Block until the graph is laid out and the widget has shown the end of its run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in (self._layout, self._watcher):
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _publish(self, *, full: bool = False) -> None:
        """Send what changed: a diff of the changed tasks; now and then (and at the end) the full map."""
        b = self._board
        changed = b.take_changed()
        states = b.states
        full = full or time.monotonic() - self._snapshot_at >= SNAPSHOT_S
        with self.hold_sync():
            if changed:
                self._seq += 1
                self.diff = {"seq": self._seq, "states": {tid: states[tid] for tid in changed},
                             "tooltips": b.tooltips(t for t in changed if t in self._alone)}
                if b.failed_count() != self.failed:
                    self.failures, self.failed = b.failures(), b.failed_count()
            if b.log_changed and (full or time.monotonic() - self._log_at >= LOG_S):
                b.log_changed = False
                self._log_at = time.monotonic()
                self.log, self.log_lines = "\n".join(b.log), b.log_lines
            if full:
                self._snapshot_at = time.monotonic()
                self.states, self.tooltips = states, b.tooltips(self._alone)
            self.status = b.status

    def _on_front_end_msg(self, widget: Any, content: Any, buffers: Any) -> None:
        """The front end asks for the details of a task or a group the user picked."""
        if not isinstance(content, dict):
            return
        task_id = content.get("task")
        if content.get("type") == "task" and isinstance(task_id, str) and task_id in self._plan.tasks:
            self.send({"type": "detail", **self._board.detail(task_id)})
        elif content.get("type") == "group" and self._picture is not None:
            group = next((g for g in self._picture.grouping.groups if f"group-{g.group_id}" == content.get("group")), None)
            if group is not None:
                self.send({"type": "group", "group": content["group"], **self._group_detail(group.task_ids)})

    def _group_detail(self, task_ids: tuple[str, ...], limit: int = 200) -> dict[str, Any]:
        states = self._board.states
        order = {s: i for i, s in enumerate(("failed", "running", "retrying", "cancelled", "interrupted",
                                              "skipped", "pending", "cached", "finished"))}
        ranked = sorted(task_ids, key=lambda t: order.get(states[t], 99))
        counts: dict[str, int] = {}
        for t in task_ids:
            counts[states[t]] = counts.get(states[t], 0) + 1
        return {"counts": counts_text(counts), "tasks": [[t, states[t]] for t in ranked[:limit]],
                "more": max(0, len(task_ids) - limit)}

    def close(self) -> None:
        self._stop.set()
        super().close()

    # -- static forms ------------------------------------------------------------------

    def static_svg(self) -> str | None:
        """The current picture as a standalone SVG (states and legend drawn in), drawn at low priority."""
        self._drawn.wait()
        grouping = self._picture.grouping if self._picture is not None else None
        return to_svg(to_dot(self._plan, self._board.states, self._board.tooltips(self._alone), grouping=grouping),
                      background=True)

    def static_html(self, svg: str | None = None) -> str:
        """The cell's copy for viewers without a widget front end (``svg``: the picture, if made already)."""
        if self._live():
            # A live run: the widget shows it; the cell's static copy is made once, when it ends
            # (display.NotebookViewer.watch updates it), not here on the caller's thread.
            return ('<div class="maze-static"><p>The live DAG of this run is shown by the maze widget; '
                    "the final picture replaces this text when the run ends.</p></div>")
        svg = svg or self.static_svg()
        body = svg if svg else f"<pre>{html.escape(to_dot(self._plan, self._board.states))}</pre><p>{html.escape(NO_RENDERER_HINT)}</p>"
        return f'<div class="maze-static">{body}{legend_html(self._board)}</div>'

    def _live(self) -> bool:
        return self._run is not None and not self._run.ended.is_set()

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self._board.counts().items())
        return f"<DAG {self.title}: {self._board.status}; {counts}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[Any, Any], dict[Any, Any]]:
        if self._run is not None and not self._live() and self._watcher is not None:
            self._watcher.join()   # the run has ended: let the board take in its last messages first
        bundle = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        data = dict(data or {})
        data["text/plain"] = self.text()
        # The finished picture travels with the widget view, so that nbconvert, nbviewer,
        # GitHub and the docs site show the DAG with its final colours.
        svg = None if self._live() else self.static_svg()
        if svg:
            data["image/svg+xml"] = svg
        data["text/html"] = self.static_html(svg)
        return data, meta

    def __repr__(self) -> str:  # keep ipywidgets from serializing every trait for a repr
        return self.text()


def _dash(style: str) -> str:
    return {"dashed": "5 3", "dotted": "1.5 2.5"}.get(next((p for p in style.split(",") if p in {"dashed", "dotted"}), ""), "")


def legend_html(board: Board) -> str:
    counts = board.counts()
    items = []
    for name, lk in LOOKS.items():
        if name in {"retrying", "cached"} and not counts.get(name):
            continue
        items.append(
            f'<span style="display:inline-block;margin-right:12px;font:12px sans-serif">'
            f'<span style="display:inline-block;padding:0 6px;border-radius:4px;background:{lk.fill};'
            f'color:{lk.font};border:1px solid {lk.border}">{lk.icon}</span> {name} {counts.get(name, 0)}</span>'
        )
    return f'<div class="maze-legend">{"".join(items)}</div>'
