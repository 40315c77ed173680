"""The live DAG widget, tested without a browser by recording its comm messages."""

from __future__ import annotations

import comm
import pytest
from tasks_misc import boom, inc, sleeper

from maze import task
from maze.notebook.states import LOG_LINES


class RecordingComm:
    """Stands in for a kernel comm and keeps what the widget sends."""

    comm_id = "recording"
    kernel = "present"

    def __init__(self, **kwargs):
        self.opened = kwargs
        self.messages: list[dict] = []

    def send(self, data=None, metadata=None, buffers=None):
        self.messages.append(data)

    def on_msg(self, callback):
        pass

    def close(self, *args, **kwargs):
        pass

    def open(self, *args, **kwargs):
        pass


@pytest.fixture
def comms(monkeypatch):
    made: list[RecordingComm] = []

    def create_comm(**kwargs):
        made.append(RecordingComm(**kwargs))
        return made[-1]

    monkeypatch.setattr(comm, "create_comm", create_comm)
    return made


def dag_comm(made: list[RecordingComm]) -> RecordingComm:
    """The DAG widget's comm (its Layout child opens one too)."""
    return next(c for c in made if c.opened["data"]["state"].get("_model_name") == "AnyModel")


def updates(recorded: RecordingComm, trait: str) -> list:
    return [m["state"][trait] for m in recorded.messages
            if m and m.get("method") == "update" and trait in m.get("state", {})]


def customs(recorded: RecordingComm) -> list[dict]:
    return [m["content"] for m in recorded.messages if m and m.get("method") == "custom"]


def test_live_widget_sends_diffs_of_changed_tasks_only(local_client, comms):
    wf = local_client.create_workflow("chain")
    prev = wf.add_task(sleeper, inputs={"seconds": 1.5})
    for _ in range(60):
        prev = wf.add_task(inc, inputs={"x": 1}, resources={"cpu": 0.5})
        wf.add_edge(wf.get_tasks()[-2]["id"], prev)
    run_id = wf.run()
    widget = wf.show_graph(run_id)
    widget.wait(30)
    recorded = dag_comm(comms)
    opened = recorded.opened["data"]["state"]
    [nodes] = updates(recorded, "nodes")                         # sent once, with the layout
    assert nodes["sleeper"] == "task-t0" and widget.groups == {}   # a chain: no groups
    svgs = updates(recorded, "svg")
    assert len(svgs) == 1 and svgs[0].startswith("<svg")      # laid out once, in the background
    diffs = updates(recorded, "diff")
    seen = dict(opened["states"])
    for d in diffs:
        assert d["states"] and all(seen.get(t) != s for t, s in d["states"].items())   # only what changed
        assert set(d["tooltips"]) <= set(d["states"])                    # hover texts of changed tasks only
        seen.update(d["states"])
    assert seen == {t["id"]: "finished" for t in wf.get_tasks()}
    frames = [opened["states"]] + [d["states"] for d in diffs]
    assert any(f.get("sleeper") == "running" for f in frames)            # seen running, live
    assert [d["seq"] for d in diffs] == list(range(1, len(diffs) + 1))
    # Throttled: at most one diff per interval of the watcher (10 a second), not one per message.
    messages = wf.get_results(run_id)
    times = [m["data"]["time"] for m in messages if "time" in m["data"]]   # the tasks' messages
    assert len(diffs) <= 10 * (max(times) - min(times)) + 3 < len(messages)
    assert updates(recorded, "states")[-1] == seen                       # the full map, at the end
    assert updates(recorded, "status")[-1] == "completed"


@task(inputs=["i"], outputs=["y"])
def work(params):
    if params["i"] % 100 == 7:
        print(f"item {params['i']} is bad")
        raise ValueError(f"bad item {params['i']}\nsecond line")
    print(f"item {params['i']} ok")
    return {"y": params["i"]}


def test_a_fan_out_is_one_group_with_its_own_progress_failures_and_log(local_client, comms):
    wf = local_client.create_workflow("fan")
    src = wf.add_task(inc, inputs={"x": 0})
    for i in range(300):
        wf.add_task(work, inputs={"i": i})
        wf.add_edge(src, wf.get_tasks()[-1]["id"])
    run_id = wf.run()
    widget = wf.show_graph(run_id)
    widget.wait(60)
    recorded = dag_comm(comms)
    [nodes], [groups] = updates(recorded, "nodes"), updates(recorded, "groups")
    assert groups == {"group-g1": {"label": "work × 300", "size": 300}}
    assert nodes["inc"] == "task-t0" and {nodes[t["id"]] for t in wf.get_tasks()[1:]} == {"group-g1"}
    [svg] = updates(recorded, "svg")
    assert svg.count('class="node') == 2 and "work × 300" in svg     # two boxes, not 301
    assert widget.failed == 3 and [f["task"] for f in widget.failures] == ["work-8", "work-108", "work-208"]
    assert widget.failures[0]["error"] == "ValueError: bad item 7"    # the first line, in the widget itself
    assert widget.log_lines == 300 and len(widget.log.splitlines()) == LOG_LINES   # the pane is bounded
    odd = [line for line in widget.log.splitlines() if not (line.startswith("[work") and " item " in line)]
    assert not odd, odd
    assert "3 ✘" in widget.static_svg() and "297 ✔" in widget.static_svg()

    widget._on_front_end_msg(widget, {"type": "task", "task": "work-8"}, [])   # the user clicks a failure
    detail = customs(recorded)[-1]
    assert detail["type"] == "detail" and detail["state"] == "failed"
    assert "second line" in detail["error"] and "Traceback" in detail["error"]
    assert detail["output"] == "item 7 is bad"
    widget._on_front_end_msg(widget, {"type": "group", "group": "group-g1"}, [])  # ... and the group
    listing = customs(recorded)[-1]
    assert listing["counts"] == "297 ✔  3 ✘" and listing["tasks"][0] == ["work-8", "failed"]


def test_replay_of_a_finished_run(local_client, comms):
    wf = local_client.create_workflow()
    a = wf.add_task(inc, inputs={"x": 1})
    b = wf.add_task(boom, inputs={"x": a.outputs["y"]})
    c = wf.add_task(inc, inputs={"x": b.outputs["y"]})
    run_id = wf.run()
    wf.wait(run_id)
    widget = wf.show_graph(run_id)
    widget.wait(30)
    assert widget.states == {a.task_id: "finished", b.task_id: "failed", c.task_id: "skipped"}
    assert widget.status == "failed"
    assert "ValueError: bad value 2" in widget.tooltips[b.task_id]
    assert dag_comm(comms).opened["data"]["state"]["states"][b.task_id] == "failed"  # right from the first frame


def test_static_fallback_for_viewers_without_widgets(local_client, comms):
    wf = local_client.create_workflow("tiny")
    wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    wf.wait(run_id)
    data, _ = wf.show_graph(run_id)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"] == f"<DAG tiny · {run_id}: completed; 1 finished>"
    assert data["text/html"].startswith('<div class="maze-static"><svg') and "✔ inc" in data["text/html"]
    # the finished picture also as an image, for nbconvert, nbviewer, GitHub and the docs site
    assert data["image/svg+xml"].lstrip().startswith("<svg") and "✔ inc" in data["image/svg+xml"]


def test_a_live_run_has_no_static_picture_until_it_ends(local_client, comms):
    wf = local_client.create_workflow("slow")
    wf.add_task(sleeper, inputs={"seconds": 2.0})
    run_id = wf.run()
    widget = wf.show_graph(run_id)
    data, _ = widget._repr_mimebundle_()
    assert "image/svg+xml" not in data and "replaces this text when the run ends" in data["text/html"]
    wf.wait(run_id)
    widget.wait(30)
    data, _ = widget._repr_mimebundle_()
    assert "✔ sleeper" in data["image/svg+xml"]


def test_without_graphviz_the_widget_shows_dot_and_a_hint(local_client, comms, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    wf = local_client.create_workflow()
    wf.add_task(inc, inputs={"x": 1})
    widget = wf.show_graph()
    widget.wait(30)
    assert widget.svg == "" and widget.dot.startswith("digraph") and "pip install graphviz-pure" in widget.hint
    assert "<pre>digraph" in widget.static_html()


def test_workflow_rich_display(local_client):
    wf = local_client.create_workflow("shown")
    wf.add_task(inc, inputs={"x": 1})
    data = wf._repr_mimebundle_()
    assert data["text/plain"].startswith("Workflow 'shown'")
    assert data["image/svg+xml"].lstrip().startswith(("<?xml", "<svg", "<!--"))


class ShownViewer:
    """A viewer that reports the live DAG as shown, as the notebook's does in a Jupyter cell."""

    def graph(self, plan, run=None):
        return None

    def watch(self, run):
        return lambda: None


def test_show_results_in_a_notebook_prints_one_summary_line(local_client, capsys):
    wf = local_client.create_workflow()
    wf._viewer = ShownViewer()
    for i in range(50):
        wf.add_task(inc, inputs={"x": i})
    summary = wf.show_results(wf.run())
    lines = capsys.readouterr().out.splitlines()
    assert summary["status"] == "completed" and len(lines) == 1
    assert lines[0].startswith("■ workflow completed in ") and "50 finished" in lines[0]
    wf.show_results(wf.run(), verbose=True)          # every event on request
    assert len(capsys.readouterr().out.splitlines()) == 101


def test_without_widget_libraries_a_notebook_is_told_once_why(local_client, monkeypatch, capsys):
    import sys

    from maze.notebook import display

    monkeypatch.setattr(display, "in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "anywidget", None)            # as if it were not installed
    monkeypatch.delitem(sys.modules, "maze.notebook.widget", raising=False)
    wf = local_client.create_workflow()
    wf.add_task(inc, inputs={"x": 1})
    viewer = display.NotebookViewer()
    for _ in range(2):
        run = wf.run_state(wf.run())
        assert viewer.watch(run) is None        # show_results falls back to printed progress
        wf.wait(run.run_id)
    err = capsys.readouterr().err
    assert err.count("no live DAG in this notebook") == 1 and "anywidget" in err and "pip install" in err


def test_a_broken_graphviz_gives_the_dot_text_never_a_hang(local_client, comms, monkeypatch, tmp_path):
    dot = tmp_path / "dot"
    dot.write_text("#!/no/such/interpreter\n")   # on PATH, but cannot start
    dot.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    wf = local_client.create_workflow()
    wf.add_task(inc, inputs={"x": 1})
    run_id = wf.run()
    wf.wait(run_id)
    widget = wf.show_graph(run_id)
    widget.wait(30)
    data, _ = widget._repr_mimebundle_()           # returned at all: the static forms never wait forever
    assert "<pre>digraph" in data["text/html"] and widget.dot.startswith("digraph")


def test_the_picture_right_after_the_run_ended_shows_its_end(local_client, comms):
    for _ in range(5):
        wf = local_client.create_workflow()
        wf.add_task(inc, inputs={"x": 1})
        wf.add_task(sleeper, inputs={"seconds": 0.2})
        run_id = wf.run()
        widget = wf.show_graph(run_id)
        wf.wait(run_id)
        data, _ = widget._repr_mimebundle_()
        assert "completed" in data["text/plain"] and "▶" not in data["image/svg+xml"]


def test_a_closed_widget_frees_its_plan_and_the_plan_s_inputs(local_client, comms):
    import gc
    import weakref

    class Big:
        pass

    wf = local_client.create_workflow()
    big = Big()
    gone = weakref.ref(big)
    wf.add_task(inc, inputs={"x": big})
    widget = wf.show_graph()
    widget.wait(30)
    widget.close()
    del widget, wf, big
    gc.collect()
    assert gone() is None
