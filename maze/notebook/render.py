"""The DAG picture: task states to DOT (pure), and DOT to SVG.

:func:`to_dot` is a pure function of a plan and the tasks' states, so the
picture can be tested with string comparisons. Each state has a colour from
the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies) *and* a cue that needs no colour at all: an icon before the
name and a border style.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from maze.core.errors import RendererError
from maze.core.graphviews import render
from maze.core.graphviews import to_dot as plan_to_dot
from maze.core.plan import Plan


@dataclass(frozen=True, slots=True)
class Look:
    """How one state is drawn."""

    fill: str
    font: str
    border: str       # colour of the border
    style: str        # DOT style: the border pattern is the non-colour cue
    width: str        # border width
    icon: str         # the second non-colour cue, before the task's name
    label: str        # the word shown in the legend


# Okabe-Ito: orange #E69F00, sky blue #56B4E9, bluish green #009E73, yellow #F0E442,
# blue #0072B2, vermillion #D55E00, reddish purple #CC79A7.
LOOKS: dict[str, Look] = {
    "pending": Look("#FFFFFF", "#333333", "#8C8C8C", "rounded,filled,dashed", "1.2", "○", "pending"),
    "running": Look("#56B4E9", "#000000", "#0072B2", "rounded,filled,bold", "2.5", "▶", "running"),
    "retrying": Look("#F0E442", "#000000", "#E69F00", "rounded,filled,bold", "2.5", "↻", "retrying"),
    "finished": Look("#009E73", "#FFFFFF", "#00604A", "rounded,filled", "1.2", "✔", "finished"),
    "cached": Look("#0072B2", "#FFFFFF", "#004C78", "rounded,filled", "1.2", "≡", "cached"),
    "failed": Look("#D55E00", "#FFFFFF", "#7A2E00", "rounded,filled,bold", "3.5", "✘", "failed"),
    "skipped": Look("#EDEDED", "#555555", "#555555", "rounded,filled,dotted", "1.5", "⊘", "skipped"),
    "cancelled": Look("#CC79A7", "#000000", "#7D3A63", "rounded,filled,dashed", "2.0", "■", "cancelled"),
    "interrupted": Look("#BFBFBF", "#000000", "#404040", "rounded,filled,dashed", "2.0", "⚡", "interrupted"),
}

STATES = tuple(LOOKS)


def node_attrs(state: str, task_id: str, tooltip: str | None = None) -> dict[str, str]:
    look = LOOKS[state]
    attrs = {
        "label": f"{look.icon} {task_id}",
        "fillcolor": look.fill,
        "fontcolor": look.font,
        "color": look.border,
        "style": look.style,
        "penwidth": look.width,
        "class": f"maze-{state}",
    }
    if tooltip is not None:
        attrs["tooltip"] = tooltip
    return attrs


def to_dot(
    plan: Plan,
    states: Mapping[str, str] | None = None,
    tooltips: Mapping[str, str] | None = None,
) -> str:
    """DOT for ``plan`` with each task drawn in its state (``pending`` when absent)."""
    states = states or {}
    tooltips = tooltips or {}
    attrs = {tid: node_attrs(states.get(tid, "pending"), tid, tooltips.get(tid)) for tid in plan.tasks}
    return plan_to_dot(plan, node_attrs=attrs, graph_attrs={"pad": "0.2", "nodesep": "0.35", "ranksep": "0.45"})


def to_svg(dot: str, *, background: bool = False) -> str | None:
    """Lay out and render with Graphviz; ``None`` when no renderer is installed."""
    try:
        svg = render(dot, "svg", background=background).decode("utf-8")
    except RendererError:
        return None
    return svg[svg.index("<svg"):] if "<svg" in svg else svg


NO_RENDERER_HINT = (
    "Graphviz is not installed, so the DAG is shown as DOT text. "
    "Install it for a picture: apt-get install graphviz, brew install graphviz, or pip install graphviz-pure."
)
