"""Text, Mermaid, info and drawn views of a workflow."""

from __future__ import annotations

import pytest
from guide_tasks import merge_results, prepare_data, process_method_a, process_method_b

from maze import MaClient


@pytest.fixture(scope="module")
def workflow():
    with MaClient(backend="inline") as client:
        wf = client.create_workflow("diamond")
        t1 = wf.add_task(prepare_data, inputs={"input": "raw_data"})
        t2 = wf.add_task(process_method_a, inputs={"data": t1.outputs["data"]})
        t3 = wf.add_task(process_method_b, inputs={"data": t1.outputs["data"]})
        wf.add_task(merge_results, inputs={"result_a": t2.outputs["result_a"], "result_b": t3.outputs["result_b"]})
        wf.add_edge(t2, t3)
        yield wf


def test_text(workflow, capsys):
    text = workflow.get_graph_ascii()
    assert text.splitlines()[0].startswith("Workflow 'diamond' (diamond-")
    assert "4 tasks, 5 edges" in text
    assert "      inputs:     input='raw_data'" in text
    assert "      inputs:     result_a<-process_method_a.result_a, result_b<-process_method_b.result_b" in text
    assert "      depends on: process_method_a, process_method_b" in text
    assert "      depends on: prepare_data, process_method_a" in text
    workflow.print_graph()
    assert capsys.readouterr().out.strip() == text


def test_mermaid(workflow):
    assert workflow.get_graph_mermaid().splitlines() == [
        "graph TD",
        '    t0["prepare_data"]',
        '    t1["process_method_a"]',
        '    t2["process_method_b"]',
        '    t3["merge_results"]',
        "    t0 -->|data->data| t1",
        "    t0 -->|data->data| t2",
        "    t1 -->|result_a->result_a| t3",
        "    t2 -->|result_b->result_b| t3",
        "    t1 -.-> t2",
    ]


def test_graph_info(workflow):
    info = workflow.get_graph_info()
    assert info["stats"] == {
        "total_tasks": 4, "total_edges": 5,
        "start_tasks": ["prepare_data"], "end_tasks": ["merge_results"],
    }
    node = info["nodes"][3]
    assert node == {
        "task_id": "merge_results", "task_id_short": "merge_re", "name": "merge_results",
        "func_name": "merge_results", "inputs": ["result_a", "result_b"], "outputs": ["final_result"],
        "resources": {"cpu": 1, "cpu_mem": 0, "gpu": 0, "gpu_mem": 0},
    }
    assert info["edges"][0] == {
        "source_id": "prepare_data", "source_name": "prepare_data",
        "target_id": "process_method_a", "target_name": "process_method_a",
    }


def test_dot(workflow):
    dot = workflow.get_graph_dot()
    assert dot.startswith('digraph "diamond" {')
    assert 't0 [label="prepare_data", id="task-t0", tooltip="prepare_data"];' in dot
    assert "t1 -> t2 [style=\"dashed\"];" in dot and "t0 -> t1;" in dot


@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_draw_graph(workflow, tmp_path, suffix):
    path = workflow.draw_graph(str(tmp_path / f"wf.{suffix}"))
    data = open(path, "rb").read()
    magic = {"svg": b"<svg", "png": b"\x89PNG", "pdf": b"%PDF"}[suffix]
    assert magic in data[:400]
    if suffix == "svg":
        assert b"merge_results" in data


def test_draw_graph_without_renderer(workflow, tmp_path, monkeypatch):
    from maze import RendererError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RendererError, match="apt-get install graphviz.*pip install graphviz-pure"):
        workflow.draw_graph(str(tmp_path / "x.svg"))
