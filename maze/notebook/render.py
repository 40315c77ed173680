"""The DAG picture: task states to DOT (pure), and DOT to SVG.

:func:`to_dot` is a pure function of a plan and the tasks' states, so the
picture can be tested with string comparisons. Each state has a colour from
the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies) *and* a cue that needs no colour at all: an icon before the
name and a border style.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from maze.core.errors import RendererError
from maze.core.graphviews import HtmlLabel, render
from maze.core.graphviews import to_dot as plan_to_dot
from maze.core.grouping import Group, Grouping, group_plan
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
    *,
    grouping: Grouping | None = None,
) -> str:
    """DOT for ``plan`` with each task drawn in its state (``pending`` when absent).

    A large plan is drawn by groups (:mod:`maze.core.grouping`); a group shows
    its own progress: a count per state and a stacked bar, its colour the
    state that matters most (failed, then running, then pending, then done).
    """
    states = states or {}
    tooltips = tooltips or {}
    grouping = grouping or group_plan(plan)
    attrs: dict[str, dict[str, str]] = {}
    for g in grouping.groups:
        if len(g.task_ids) == 1:
            tid = g.task_ids[0]
            attrs[tid] = node_attrs(states.get(tid, "pending"), tid, tooltips.get(tid))
        else:
            counts = Counter(states.get(tid, "pending") for tid in g.task_ids)
            attrs[g.group_id] = group_attrs(g, counts)
    return plan_to_dot(plan, node_attrs=attrs, grouping=grouping,
                       graph_attrs={"pad": "0.2", "nodesep": "0.35", "ranksep": "0.45"})


#: Which state colours a group: the first of these that any of its tasks is in.
GROUP_PRECEDENCE = ("failed", "running", "retrying", "interrupted", "cancelled", "pending",
                    "skipped", "cached", "finished")
BAR_WIDTH = 140     # points: the stacked bar of a group node
COUNTS_WIDTH = 230  # points: the line of counts above it


def group_state(counts: Mapping[str, int]) -> str:
    """The state a group is drawn in (dag.js has the same rule): a failure shows first; a group
    partly done and partly pending is running."""
    present = [s for s in GROUP_PRECEDENCE if counts.get(s)]
    if not present:
        return "pending"
    if present[0] == "pending" and any(s in present for s in ("finished", "cached", "skipped")):
        return "running"
    return present[0]


def counts_text(counts: Mapping[str, int]) -> str:
    """``412 ✔  3 ✘  585 ○``: the count of each state present, with its icon."""
    return "  ".join(f"{counts[s]:,} {LOOKS[s].icon}" for s in STATES if counts.get(s))


def _bar_widths(counts: list[int], total: int) -> list[int]:
    """Whole-point widths, at least 1 each, adding up to :data:`BAR_WIDTH` (largest remainders first)."""
    room = BAR_WIDTH - len(counts)          # one point each is given up front
    exact = [room * n / total for n in counts]
    widths = [int(x) for x in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: exact[i] - widths[i], reverse=True)
    for i in by_remainder[: room - sum(widths)]:
        widths[i] += 1
    return [w + 1 for w in widths]


def group_attrs(group: Group, counts: Mapping[str, int]) -> dict[str, str]:
    """A group node: its name and size, a count per state, and a stacked bar (an HTML-like label)."""
    look = LOOKS[group_state(counts)]
    total = sum(counts.values()) or 1
    cells = []
    for s in STATES:   # widths in whole points that add up to the bar's width
        if counts.get(s):
            cells.append((s, counts[s]))
    widths = _bar_widths([n for _, n in cells], total)
    bar = "".join(f'<TD WIDTH="{w}" HEIGHT="8" FIXEDSIZE="TRUE" BGCOLOR="{LOOKS[s].fill if LOOKS[s].fill != "#FFFFFF" else "#DDDDDD"}"></TD>'
                  for (s, _), w in zip(cells, widths))
    label = HtmlLabel(
        f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
        f'<TR><TD COLSPAN="{len(cells)}"><B>{html.escape(group.label)}</B></TD></TR>'
        # The counts line is sized for a busy group (several states of thousands), so the
        # live widget, which lays the node out once, has room for the text as it grows.
        f'<TR><TD COLSPAN="{len(cells)}" WIDTH="{COUNTS_WIDTH}">{html.escape(counts_text(counts))}</TD></TR>'
        f"<TR>{bar}</TR></TABLE>>"
    )
    return {
        "label": label, "fillcolor": look.fill, "fontcolor": look.font, "color": look.border,
        "style": look.style, "penwidth": look.width, "class": f"maze-group maze-{group_state(counts)}",
    }


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
