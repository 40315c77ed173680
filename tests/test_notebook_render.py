"""The DAG picture as DOT (pure), and task states folded from messages."""

from __future__ import annotations

import pytest
from guide_tasks import clean_data, load_data
from tasks_misc import boom, inc

from maze import MaClient
from maze.notebook.render import LOOKS, to_dot, to_svg
from maze.notebook.states import Board


@pytest.fixture(scope="module")
def inline():
    with MaClient(backend="inline") as c:
        yield c


def test_every_state_differs_in_colour_and_in_a_non_colour_cue():
    fills = [lk.fill for lk in LOOKS.values()]
    assert len(set(fills)) == len(fills)
    cues = [(lk.icon, lk.style, lk.width) for lk in LOOKS.values()]
    assert len(set(cues)) == len(cues)
    assert len({lk.icon for lk in LOOKS.values()}) == len(LOOKS)   # icons alone tell states apart
    failed, skipped = LOOKS["failed"], LOOKS["skipped"]
    assert failed.fill != skipped.fill and "bold" in failed.style and "dotted" in skipped.style


def test_dot_carries_each_state(inline):
    wf = inline.create_workflow("pipe")
    a = wf.add_task(load_data, inputs={"filename": "x"})
    wf.add_task(clean_data, inputs={"data": a.outputs["data"]})
    dot = to_dot(wf.plan(), {"load_data": "failed"}, {"load_data": "ValueError: no"})
    assert 't0 [label="✘ load_data", id="task-t0", tooltip="ValueError: no", fillcolor="#D55E00", ' \
           'fontcolor="#FFFFFF", color="#7A2E00", style="rounded,filled,bold", penwidth="3.5", class="maze-failed"];' in dot
    assert 't1 [label="○ clean_data", id="task-t1", tooltip="clean_data", fillcolor="#FFFFFF"' in dot
    assert "t0 -> t1;" in dot


def test_svg_keeps_node_ids_for_the_front_end(inline):
    wf = inline.create_workflow()
    wf.add_task(load_data, inputs={"filename": "x"})
    svg = to_svg(to_dot(wf.plan()))
    assert svg.startswith("<svg") and 'id="task&#45;t0"' in svg and "load_data" in svg


def test_board_replays_a_failed_run(inline):
    wf = inline.create_workflow()
    ok = wf.add_task(inc, inputs={"x": 1})
    bad = wf.add_task(boom, inputs={"x": 2})
    child = wf.add_task(inc, inputs={"x": bad.outputs["y"]})
    run_id = wf.run()
    wf.wait(run_id)
    board = Board(wf.plan())
    board.apply(wf.get_results(run_id))
    assert board.states == {ok.task_id: "finished", bad.task_id: "failed", child.task_id: "skipped"}
    assert board.status == "failed"
    assert board.counts() == {"finished": 1, "failed": 1, "skipped": 1}
    tip = board.tooltip(bad.task_id).splitlines()
    assert tip[0] == "boom  (failed)" and tip[-1] == "ValueError: bad value 2" and tip[2] == "resources: cpu=1"
    assert board.tooltip(ok.task_id).splitlines()[1].startswith("duration: ")


def test_board_midway_shows_running(inline):
    wf = inline.create_workflow()
    t = wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    wf.wait(run_id)
    board = Board(wf.plan())
    board.apply(list(wf.get_results(run_id))[:1])
    assert board.states[t.task_id] == "running" and board.status == "running"
