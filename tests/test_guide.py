"""Every example of the user guide, with its exact results, on every backend."""

from __future__ import annotations

import json

from guide_tasks import (
    analyze_data,
    calculate,
    clean_data,
    debug_task,
    export_csv,
    export_data,
    export_json,
    fetch_data,
    final_process,
    initial_process,
    load_data,
    merge_results,
    my_task,
    prepare_data,
    process_a,
    process_b,
    process_method_a,
    process_method_b,
    use_product,
    use_sum,
)


def test_single_end_pipeline(client, capsys):
    workflow = client.create_workflow()
    t1 = workflow.add_task(load_data, inputs={"filename": "data.txt"})
    t2 = workflow.add_task(clean_data, inputs={"data": t1.outputs["data"]})
    t3 = workflow.add_task(analyze_data, inputs={"data": t2.outputs["cleaned_data"]})
    run_id = workflow.run()
    result = workflow.show_results(run_id)
    assert result["workflow_completed"] is True
    assert result["status"] == "completed"
    assert result["task_results"] == {
        t1.task_id: {"data": "Data from data.txt"},
        t2.task_id: {"cleaned_data": "DATA FROM DATA.TXT"},
        t3.task_id: {"result": "Analysis: 18 characters"},
    }
    printed = capsys.readouterr().out
    assert "finished  analyze_data" in printed
    assert "workflow completed" in printed and "3 finished" in printed


def test_multiple_end_tasks(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(fetch_data, inputs={"source": "database"})
    t2 = workflow.add_task(export_json, inputs={"data": t1.outputs["data"]})
    t3 = workflow.add_task(export_csv, inputs={"data": t1.outputs["data"]})
    result = workflow.wait(workflow.run())
    assert result["task_results"][t2.task_id] == {"json_result": json.dumps({"data": "Data from database"})}
    assert result["task_results"][t3.task_id] == {"csv_result": "data\nData from database"}
    info = workflow.get_graph_info()
    assert info["stats"]["start_tasks"] == [t1.task_id]
    assert info["stats"]["end_tasks"] == [t2.task_id, t3.task_id]


def test_diamond(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(prepare_data, inputs={"input": "raw_data"})
    t2 = workflow.add_task(process_method_a, inputs={"data": t1.outputs["data"]})
    t3 = workflow.add_task(process_method_b, inputs={"data": t1.outputs["data"]})
    t4 = workflow.add_task(
        merge_results,
        inputs={"result_a": t2.outputs["result_a"], "result_b": t3.outputs["result_b"]},
    )
    result = workflow.wait(workflow.run())
    assert result["task_results"][t4.task_id] == {
        "final_result": "Combined: [Prepared: raw_data -> Method A] + [Prepared: raw_data -> Method B]"
    }


def test_complex_workflow(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(initial_process, inputs={"data": "input"})
    t2 = workflow.add_task(process_a, inputs={"in": t1.outputs["out"]})
    t3 = workflow.add_task(process_b, inputs={"in": t1.outputs["out"]})
    t4 = workflow.add_task(export_data, inputs={"in": t3.outputs["out"]})
    t5 = workflow.add_task(final_process, inputs={"a": t2.outputs["out"], "b": t3.outputs["out"]})
    result = workflow.wait(workflow.run())
    assert result["task_results"][t4.task_id] == {"out": "export(b(init(input)))"}
    assert result["task_results"][t5.task_id] == {"out": "final(a(init(input)), b(init(input)))"}
    assert workflow.get_graph_info()["stats"]["end_tasks"] == [t4.task_id, t5.task_id]


def test_multiple_outputs(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(calculate, inputs={"a": 10, "b": 5})
    t2 = workflow.add_task(use_sum, inputs={"value": t1.outputs["sum"]})
    t3 = workflow.add_task(use_product, inputs={"value": t1.outputs["product"]})
    result = workflow.wait(workflow.run())
    assert result["task_results"] == {
        t1.task_id: {"sum": 15, "product": 50, "difference": 5},
        t2.task_id: {"result": "sum is 15"},
        t3.task_id: {"result": "product is 50"},
    }


def test_resource_declaration_example(client):
    workflow = client.create_workflow()
    t = workflow.add_task(my_task, inputs={"input_key": "shout"})
    assert workflow.wait(workflow.run())["task_results"] == {t.task_id: {"output_key": "SHOUT"}}
    assert my_task({"input_key": "direct call"}) == {"output_key": "DIRECT CALL"}


def test_multiple_runs_are_independent(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(calculate, inputs={"a": 2, "b": 3})
    run_id1 = workflow.run()
    run_id2 = workflow.run()
    run_id3 = workflow.run()
    assert len({run_id1, run_id2, run_id3}) == 3
    results = [workflow.show_results(r) for r in (run_id1, run_id2, run_id3)]
    assert [r["run_id"] for r in results] == [run_id1, run_id2, run_id3]
    assert all(r["task_results"] == {t1.task_id: {"sum": 5, "product": 6, "difference": -1}} for r in results)


def test_streaming_and_collecting(client):
    workflow = client.create_workflow()
    t1 = workflow.add_task(load_data, inputs={"filename": "f.csv"})
    t2 = workflow.add_task(clean_data, inputs={"data": t1.outputs["data"]})
    run_id = workflow.run()
    messages = workflow.get_results(run_id, verbose=False)
    task_results = {}
    seen = []
    for message in messages:
        seen.append(message.get("type"))
        if message.get("type") == "finish_task":
            task_results[message["data"]["task_id"]] = message["data"]["result"]
    assert seen == ["start_task", "finish_task", "start_task", "finish_task", "finish_workflow"]
    assert task_results == {t1.task_id: {"data": "Data from f.csv"}, t2.task_id: {"cleaned_data": "DATA FROM F.CSV"}}


def test_query_specific_task_results(client):
    workflow = client.create_workflow()
    task1 = workflow.add_task(load_data, inputs={"filename": "q.txt"})
    task2 = workflow.add_task(clean_data, inputs={"data": task1.outputs["data"]})
    run_id = workflow.run()
    workflow.get_results(run_id, verbose=False)
    assert workflow.get_task_result(run_id, task1.task_id) == {
        "task_id": task1.task_id, "result": {"data": "Data from q.txt"}, "status": "success",
    }
    assert workflow.get_task_result(run_id, task2.task_id)["result"] == {"cleaned_data": "DATA FROM Q.TXT"}
    # a unique prefix is enough
    assert workflow.get_task_result(run_id, "clean")["task_id"] == task2.task_id


def test_results_caching(client):
    workflow = client.create_workflow()
    workflow.add_task(load_data, inputs={"filename": "c.txt"})
    run_id = workflow.run()
    messages1 = workflow.get_results(run_id, verbose=False)
    messages2 = workflow.get_results(run_id, verbose=False)
    assert messages1 == messages2
    assert list(messages1) == list(messages2) and len(messages1) == 3
    assert workflow.list_cached_runs() == [run_id]
    workflow.clear_cache(run_id)
    assert workflow.list_cached_runs() == []
    workflow.clear_cache("no-such-run")  # a no-op
    workflow.run()
    workflow.clear_cache()
    assert workflow.list_cached_runs() == []


def test_debug_prints_reach_the_user(client, capsys):
    workflow = client.create_workflow()
    t = workflow.add_task(debug_task, inputs={"value": 21})
    run_id = workflow.run()
    summary = workflow.show_results(run_id)
    assert summary["task_results"] == {t.task_id: {"result": 42}}
    out = capsys.readouterr().out
    assert f"[{t.task_id}] DEBUG: Input value = 21" in out
    assert f"[{t.task_id}] DEBUG: Output value = 42" in out
    logs = [m["data"] for m in workflow.get_results(run_id) if m["type"] == "task_log"]
    assert "".join(d["text"] for d in logs) == "DEBUG: Input value = 21\nDEBUG: Output value = 42\n"
    assert {d["stream"] for d in logs} == {"stdout"}


def test_wait_echoes_prints(client, capsys):
    workflow = client.create_workflow()
    t = workflow.add_task(debug_task, inputs={"value": 1})
    workflow.wait(workflow.run())
    assert f"[{t.task_id}] DEBUG: Input value = 1" in capsys.readouterr().out
