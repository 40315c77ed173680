"""The DAG as text, Mermaid, a dict, DOT, and a drawn file.

All views are pure functions of a :class:`~maze.core.plan.Plan`, except
:func:`draw`, which runs the Graphviz ``dot`` program (found on ``PATH``, or
the pip-installable ``graphviz-pure``) in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from .errors import RendererError
from .grouping import Grouping, group_plan
from .plan import Plan

FORMATS = ("svg", "png", "pdf")
METHODS = ("auto", "dot")


def _inputs_text(plan: Plan, tid: str) -> str:
    t = plan.tasks[tid]
    parts = [f"{k}={v!r}" for k, v in t.constants.items()]
    parts += [f"{k}<-{r.task_id}.{r.key}" for k, r in t.refs.items()]
    return ", ".join(parts) or "-"


def to_text(plan: Plan) -> str:
    """One block per task: its inputs, outputs, and the tasks it waits for."""
    lines = [f"Workflow {plan.name!r} ({plan.workflow_id}): {len(plan.tasks)} tasks, {len(plan.edges)} edges"]
    for tid, t in plan.tasks.items():
        lines.append(f"  {tid}")
        lines.append(f"      inputs:     {_inputs_text(plan, tid)}")
        lines.append(f"      outputs:    {', '.join(t.spec.outputs) or '-'}")
        lines.append(f"      depends on: {', '.join(t.upstream) or '-'}")
    return "\n".join(lines)


def _ids(plan: Plan) -> dict[str, str]:
    # Task ids may hold characters Mermaid and DOT treat as syntax; use positional ids.
    return {tid: f"t{i}" for i, tid in enumerate(plan.tasks)}


def to_mermaid(plan: Plan) -> str:
    ids = _ids(plan)
    lines = ["graph TD"]
    for tid in plan.tasks:
        lines.append(f'    {ids[tid]}["{_mermaid_text(tid)}"]')
    for e in plan.edges:
        label = f"|{_mermaid_text(', '.join(e.keys))}|" if e.keys else ""
        arrow = "-->" if e.keys else "-.->"
        lines.append(f"    {ids[e.source]} {arrow}{label} {ids[e.target]}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("|", "#124;")


def graph_info(plan: Plan) -> dict[str, Any]:
    nodes = [
        {
            "task_id": tid,
            "task_id_short": tid[:8],
            "name": t.name,
            "func_name": getattr(t.spec.func, "__name__", t.name),
            "inputs": list(t.spec.inputs),
            "outputs": list(t.spec.outputs),
            "resources": t.spec.resources.as_dict(),
        }
        for tid, t in plan.tasks.items()
    ]
    edges = [
        {
            "source_id": e.source,
            "source_name": plan.tasks[e.source].name,
            "target_id": e.target,
            "target_name": plan.tasks[e.target].name,
        }
        for e in plan.edges
    ]
    has_up = {e.target for e in plan.edges}
    has_down = {e.source for e in plan.edges}
    return {
        "nodes": nodes,
        "edges": edges,
        "stats": {
            "total_tasks": len(nodes),
            "total_edges": len(edges),
            "start_tasks": [tid for tid in plan.tasks if tid not in has_up],
            "end_tasks": [tid for tid in plan.tasks if tid not in has_down],
        },
    }


def dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(
    plan: Plan,
    node_attrs: Mapping[str, Mapping[str, str]] | None = None,
    graph_attrs: Mapping[str, str] | None = None,
    *,
    grouping: Grouping | None = None,
) -> str:
    """Graphviz DOT source, by groups for a large plan (see :mod:`.grouping`).

    ``node_attrs`` adds or overrides attributes per node: keyed by task id for
    a task drawn alone, by group id ("g3") for a group. A task drawn alone has
    the DOM id ``task-t<i>`` (``i`` its position in the plan), a group
    ``group-g<j>``.
    """
    ids = _ids(plan)
    grouping = grouping or group_plan(plan)
    graph = {"rankdir": "TB", "fontname": "Helvetica", "bgcolor": "transparent", **(graph_attrs or {})}
    lines = [
        f"digraph {dot_quote(plan.name)} {{",
        f"  graph [{_attrs(graph)}];",
        '  node [shape="box", style="rounded,filled", fillcolor="#f2f2f2", color="#555555", '
        'fontname="Helvetica", fontsize="11"];',
        '  edge [color="#777777", fontname="Helvetica", fontsize="9"];',
    ]
    names: dict[str, str] = {}   # group id -> DOT node name
    for g in grouping.groups:
        if len(g.task_ids) == 1:
            tid = g.task_ids[0]
            t = plan.tasks[tid]
            names[g.group_id] = ids[tid]
            attrs = {"label": tid if tid == t.name else f"{tid}\n({t.name})", "id": f"task-{ids[tid]}", "tooltip": tid}
            attrs.update((node_attrs or {}).get(tid, {}))
        else:
            names[g.group_id] = g.group_id
            attrs = {"label": g.label, "id": f"group-{g.group_id}", "tooltip": f"{g.label}: {len(g.task_ids):,} tasks",
                     "peripheries": "2"}
            attrs.update((node_attrs or {}).get(g.group_id, {}))
        lines.append(f"  {names[g.group_id]} [{_attrs(attrs)}];")
    for source, target, data in grouping.edges:
        style = "" if data else f" [{_attrs({'style': 'dashed'})}]"
        lines.append(f"  {names[source]} -> {names[target]}{style};")
    lines.append("}")
    return "\n".join(lines)


class HtmlLabel(str):
    """A Graphviz HTML-like label (``<<TABLE>...</TABLE>>``), written as is; every other value is quoted.

    A type, not a guess from the text: a task may well be named ``<b>``.
    """

    __slots__ = ()


def _attrs(attrs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, HtmlLabel) else dot_quote(v)}" for k, v in attrs.items())


def find_dot() -> str | None:
    """The Graphviz executable: ``dot`` on PATH, else the pip-installed ``graphviz-pure``."""
    return shutil.which("dot") or shutil.which("graphviz-pure")


def render(dot_source: str, fmt: str = "svg", dpi: int | None = None, *, background: bool = False) -> bytes:
    """Lay out and render DOT source; raises :class:`RendererError` without Graphviz.

    ``background=True`` runs Graphviz at a lower CPU priority, so drawing a
    large graph does not slow the tasks of a run it is watching.
    """
    exe = find_dot()
    if exe is None:
        raise RendererError(
            "drawing needs Graphviz: install it with your system's package manager "
            "(apt-get install graphviz, brew install graphviz) or `pip install graphviz-pure`"
        )
    args = [exe, f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if dpi and fmt == "png" else [])
    nice = (lambda: os.nice(10)) if background and hasattr(os, "nice") else None
    try:
        proc = subprocess.run(args, input=dot_source.encode(), capture_output=True, timeout=300, preexec_fn=nice)
    except (OSError, subprocess.TimeoutExpired) as exc:  # a broken install, or a graph too large to lay out
        raise RendererError(f"{os.path.basename(exe)} could not draw the graph: {exc}") from exc
    if proc.returncode != 0:
        raise RendererError(f"{os.path.basename(exe)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def draw(plan: Plan, output_path: str, *, method: str = "auto", dpi: int = 150) -> str:
    if method not in METHODS:
        raise ValueError(f"draw_graph: method={method!r} is not accepted; expected one of {', '.join(METHODS)}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 0 < dpi <= 2400:
        raise ValueError(f"draw_graph: dpi={dpi!r} is not accepted; expected dots per inch, a number from 1 to 2400 (e.g. 150)")
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"draw_graph: cannot write {str(output_path)!r}: the folder {folder!r} does not exist; create it first"
        )
    fmt = os.path.splitext(str(output_path))[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(
            f"draw_graph: cannot tell the format of {str(output_path)!r}; "
            f"name the file with one of the suffixes {', '.join('.' + f for f in FORMATS)}"
        )
    data = render(to_dot(plan), fmt, dpi)
    with open(output_path, "wb") as fh:
        fh.write(data)
    return str(output_path)
