"""The live DAG widget.

The graph is laid out once, by Graphviz, into an SVG that never changes
afterwards; the widget then only syncs each task's state and hover text, and
its front end (a few lines of JavaScript, served through anywidget) recolours
the nodes in place. A watcher thread reads the run's message stream, at most
a few times a second, so a run of thousands of tasks sends a handful of small
updates instead of one per message, and the run itself never waits for it.

Where no widget front end exists (nbconvert, nbval, GitHub's viewer) the
display falls back to a static SVG of the current states, and
:func:`~maze.notebook.display.show_live` refreshes it when the run ends.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from maze.core.plan import Plan
from maze.core.run import RunState

from .render import LOOKS, NO_RENDERER_HINT, to_dot, to_svg
from .states import Board

_HERE = Path(__file__).parent


class DagWidget(anywidget.AnyWidget):
    """A workflow's DAG, coloured by the states of one run's tasks."""

    _esm = _HERE / "dag.js"
    _css = _HERE / "dag.css"

    svg = traitlets.Unicode("", help="The laid-out graph; set once.").tag(sync=True)
    dot = traitlets.Unicode("", help="DOT source, shown when Graphviz is missing.").tag(sync=True)
    nodes = traitlets.Dict({}, help="Task id -> the id of its SVG element.").tag(sync=True)
    states = traitlets.Dict({}, help="Task id -> state name.").tag(sync=True)
    tooltips = traitlets.Dict({}, help="Task id -> text shown on hover.").tag(sync=True)
    looks = traitlets.Dict({}, help="State name -> colours, icon and border of that state.").tag(sync=True)
    status = traitlets.Unicode("pending", help="The run's status.").tag(sync=True)
    title = traitlets.Unicode("", help="Workflow name and run id.").tag(sync=True)
    hint = traitlets.Unicode("", help="Why there is no picture, if there is none.").tag(sync=True)

    def __init__(self, plan: Plan, run: RunState | None = None, *, interval: float = 0.25, **kwargs: Any) -> None:
        self._plan = plan
        self._run = run
        self._board = Board(plan)
        self._interval = interval
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        seen = 0
        if run is not None:  # replay what happened so far, so the first frame is already right
            with run.changed:
                recorded = list(run.messages)
            self._board.apply(recorded)
            seen = len(recorded)
        self._tips = self._board.tooltips()
        self._board.take_changed()
        super().__init__(
            nodes={tid: f"task-t{i}" for i, tid in enumerate(plan.tasks)},
            looks={name: {"fill": lk.fill, "font": lk.font, "border": lk.border, "icon": lk.icon,
                          "dash": _dash(lk.style), "width": lk.width} for name, lk in LOOKS.items()},
            title=plan.name + (f" · {run.run_id}" if run else ""),
            states=dict(self._board.states),
            tooltips=self._tips,
            status=self._board.status,
            **kwargs,
        )
        # Laying out a large graph takes a while (0.7 s for 1,000 nodes): do it
        # off the caller's thread, at low priority, and show it when ready.
        self._layout = threading.Thread(target=self._lay_out, name="maze-layout", daemon=True)
        self._layout.start()
        if run is not None and not (run.ended.is_set() and seen == len(run.messages)):
            self._watcher = threading.Thread(target=self._watch, args=(run, seen), name="maze-widget", daemon=True)
            self._watcher.start()

    def _lay_out(self) -> None:
        layout = to_dot(self._plan)
        svg = to_svg(layout, background=True)
        with self.hold_sync():
            if svg:
                self.svg = svg
            else:
                self.dot, self.hint = layout, NO_RENDERER_HINT

    @property
    def board(self) -> Board:
        return self._board

    def _catch_up(self, run: RunState, seen: int) -> int:
        with run.changed:
            batch = run.messages[seen:]
        if batch:
            self._board.apply(batch)
            self._publish()
        return seen + len(batch)

    def _watch(self, run: RunState, seen: int) -> None:
        # Poll rather than wait on every message: the run never waits for the
        # front end, and a burst of messages becomes one update.
        while not self._stop.is_set():
            ended = run.ended.wait(self._interval)
            seen = self._catch_up(run, seen)
            if ended:
                return

    def wait(self, timeout: float | None = None) -> None:
        """Block until the graph is laid out and the widget has shown the end of its run."""
        self._layout.join(timeout)
        if self._watcher is not None:
            self._watcher.join(timeout)

    def _publish(self) -> None:
        b = self._board
        tips = dict(self._tips)
        for tid in b.take_changed():  # hover texts change only with their task
            tips[tid] = b.tooltip(tid)
        self._tips = tips
        with self.hold_sync():
            self.states = dict(b.states)
            self.tooltips = tips
            self.status = b.status

    def close(self) -> None:
        self._stop.set()
        super().close()

    # -- static forms ------------------------------------------------------------------

    def static_svg(self) -> str | None:
        """The current picture as a standalone SVG (states and legend drawn in)."""
        return to_svg(to_dot(self._plan, self._board.states, self._board.tooltips()))

    def static_html(self) -> str:
        svg = self.static_svg()
        body = svg if svg else f"<pre>{html.escape(to_dot(self._plan, self._board.states))}</pre><p>{html.escape(NO_RENDERER_HINT)}</p>"
        return f'<div class="maze-static">{body}{legend_html(self._board)}</div>'

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self._board.counts().items())
        return f"<DAG {self.title}: {self._board.status}; {counts}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[Any, Any], dict[Any, Any]]:
        bundle = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        data = dict(data or {})
        data["text/plain"] = self.text()
        data["text/html"] = self.static_html()
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
