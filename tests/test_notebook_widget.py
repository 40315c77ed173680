"""The live DAG widget, tested without a browser by recording its comm messages."""

from __future__ import annotations

import comm
import pytest

from tasks_misc import boom, inc, sleeper


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


def state_updates(recorded: RecordingComm) -> list[dict]:
    return [m["state"]["states"] for m in recorded.messages if m and m.get("method") == "update" and "states" in m["state"]]


def test_live_widget_follows_a_run_with_few_updates(local_client, comms):
    wf = local_client.create_workflow("chain")
    prev = wf.add_task(sleeper, inputs={"seconds": 0.3})
    for _ in range(60):
        prev = wf.add_task(inc, inputs={"x": 1}, resources={"cpu": 0.5})
        wf.add_edge(wf.get_tasks()[-2]["id"], prev)
    run_id = wf.run()
    widget = wf.show_graph(run_id)
    widget.wait(30)
    opened = dag_comm(comms).opened["data"]["state"]
    assert opened["nodes"]["sleeper"] == "task-t0"
    svgs = [m["state"]["svg"] for m in dag_comm(comms).messages if m and "svg" in m.get("state", {})]
    assert len(svgs) == 1 and svgs[0].startswith("<svg")      # laid out once, in the background
    updates = [opened["states"], *state_updates(dag_comm(comms))]   # the first frame, then each update
    assert updates[-1] == {t["id"]: "finished" for t in wf.get_tasks()}
    assert any(u.get("sleeper") == "running" for u in updates)         # seen running, live
    assert len(updates) < len(wf.get_results(run_id)) / 4               # throttled: not one per message
    statuses = [m["state"]["status"] for m in dag_comm(comms).messages if m and "status" in m.get("state", {})]
    assert statuses[-1] == "completed"


def test_replay_of_a_finished_run(local_client, comms):
    wf = local_client.create_workflow()
    a = wf.add_task(inc, inputs={"x": 1})
    b = wf.add_task(boom, inputs={"x": a.outputs["y"]})
    c = wf.add_task(inc, inputs={"x": b.outputs["y"]})
    run_id = wf.run()
    wf.wait(run_id)
    widget = wf.show_graph(run_id)
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
