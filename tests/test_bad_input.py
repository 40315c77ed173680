"""Every bad input named in the API contract gets a clear error, raised where it is made."""

from __future__ import annotations

import pytest
from guide_tasks import calculate, clean_data, load_data

from maze import (
    CycleError,
    MaClient,
    TaskDefinitionError,
    UnknownBackendError,
    UnknownOutputError,
    UnknownRunError,
    UnknownTaskError,
    WorkflowError,
    task,
)


def body(params):
    return {}


@pytest.mark.parametrize(
    ("resources", "needle"),
    [
        ({"cpus": 1}, "unknown resource key 'cpus'; accepted keys are cpu, cpu_mem, gpu, gpu_mem"),
        ({"cpu": -1}, "resource 'cpu'=-1 is not accepted; expected a number of cores greater than 0"),
        ({"cpu_mem": -5}, "resource 'cpu_mem'=-5 is negative; expected a number of MB, 0 or more"),
        ({"gpu": 1.5}, "resource 'gpu'=1.5 is not accepted; expected 0, a fraction of one GPU up to 1"),
        ({"gpu": "one"}, "resource 'gpu'='one' is not a number"),
        ({"gpu_mem": True}, "resource 'gpu_mem'=True is not a number"),
        ({"cpu": 0}, "resource 'cpu'=0 is not accepted"),
        ([("cpu", 1)], "resources must be a dict"),
    ],
)
def test_bad_resources_fail_at_decoration(resources, needle):
    with pytest.raises(ValueError) as info:
        task(inputs=["a"], outputs=["b"], resources=resources)(body)
    assert isinstance(info.value, TaskDefinitionError)
    assert needle in str(info.value) and "@task 'body'" in str(info.value)


def test_good_resources_and_defaults():
    spec = task(inputs=[], outputs=[], resources={"gpu": 0.25, "gpu_mem": 512})(body).spec
    assert spec.resources.as_dict() == {"cpu": 1, "cpu_mem": 0, "gpu": 0.25, "gpu_mem": 512}
    assert task(resources={"gpu": 2})(body).spec.resources.gpu == 2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"inputs": ["a", "a"]}, "input name 'a' is declared twice"),
        ({"outputs": ["x", "x"]}, "output name 'x' is declared twice"),
        ({"inputs": "a"}, "inputs must be a list of names, not the string 'a'"),
        ({"outputs": ["not valid"]}, "output name 'not valid' is not accepted; expected an identifier-like string"),
        ({"retries": -1}, "retries=-1 is not accepted"),
        ({"timeout": 0}, "timeout=0 is not accepted"),
    ],
)
def test_bad_declarations(kwargs, needle):
    with pytest.raises(TaskDefinitionError, match=needle):
        task(**kwargs)(body)


def test_decorator_misuse():
    with pytest.raises(TypeError, match="@task expects a function, got int 5"):
        task(inputs=[])(5)
    with pytest.raises(TypeError, match="applied twice"):
        task(task(body))


def test_decorated_function_stays_callable():
    assert calculate({"a": 4, "b": 2}) == {"sum": 6, "product": 8, "difference": 2}
    assert calculate.__name__ == "calculate"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UnknownBackendError, match="'rey' is not a maze backend; available: inline, joblib, local, ray"):
        MaClient(backend="rey")


def test_bad_client_resources():
    with pytest.raises(TaskDefinitionError, match="'gpu'=1.5 is not accepted; a machine has a whole number of GPUs"):
        MaClient(backend="inline", resources={"gpu": 1.5})
    with pytest.raises(TaskDefinitionError, match="unknown resource key 'gpus'"):
        MaClient(backend="inline", resources={"gpus": 1})


@pytest.fixture(scope="module")
def inline():
    with MaClient(backend="inline") as c:
        yield c


def test_add_task_input_errors(inline):
    wf = inline.create_workflow()
    with pytest.raises(WorkflowError, match=r"task 'load_data': missing input\(s\) \['filename'\]; the task declares inputs \['filename'\]"):
        wf.add_task(load_data, inputs={})
    with pytest.raises(WorkflowError, match=r"task 'load_data': input 'file' is not declared; the task declares inputs \['filename'\]"):
        wf.add_task(load_data, inputs={"filename": "x", "file": "y"})
    t1 = wf.add_task(load_data, inputs={"filename": "x"})
    with pytest.raises(WorkflowError, match=r"input 'data' is the task 'load_data' itself; pass one of its outputs instead, e.g. load_data.outputs\['data'\]"):
        wf.add_task(clean_data, inputs={"data": t1})
    other = inline.create_workflow()
    with pytest.raises(WorkflowError, match=r"task 'clean_data': input 'data' refers to output 'data' of task 'load_data' of another workflow"):
        other.add_task(clean_data, inputs={"data": t1.outputs["data"]})
    assert other.get_tasks() == []


def test_add_task_needs_a_task_function(inline):
    wf = inline.create_workflow()
    with pytest.raises(WorkflowError, match=r"add_task: 'body' is not a @task function; decorate it with @task"):
        wf.add_task(body, inputs={})


def test_add_task_override_errors(inline):
    wf = inline.create_workflow()
    with pytest.raises(TaskDefinitionError, match="task 'load_data': unknown resource key 'ram'"):
        wf.add_task(load_data, inputs={"filename": "x"}, resources={"ram": 1})
    with pytest.raises(TaskDefinitionError, match="task 'load_data': unknown option 'retry'; accepted options are retries, retry_delay, timeout"):
        wf.add_task(load_data, inputs={"filename": "x"}, retry=3)


def test_undeclared_output_is_a_key_error(inline):
    wf = inline.create_workflow()
    t1 = wf.add_task(calculate, inputs={"a": 1, "b": 2})
    with pytest.raises(KeyError) as info:
        t1.outputs["total"]
    assert isinstance(info.value, UnknownOutputError)
    assert str(info.value) == "task 'calculate' has no output 'total'; its declared outputs are ['sum', 'product', 'difference']"


def test_cycles_are_refused_and_leave_the_graph_unchanged(inline):
    wf = inline.create_workflow()
    a = wf.add_task(load_data, inputs={"filename": "x"})
    b = wf.add_task(clean_data, inputs={"data": a.outputs["data"]})
    c = wf.add_task(clean_data, inputs={"data": b.outputs["cleaned_data"]})
    before = wf.get_graph_info()
    with pytest.raises(CycleError) as info:
        wf.add_edge(c, a)
    assert "would close a cycle: load_data -> clean_data -> clean_data-2 -> load_data" in str(info.value)
    assert set(info.value.cycle) == {"load_data", "clean_data", "clean_data-2"}
    with pytest.raises(CycleError):
        wf.add_edge(a, a)
    assert wf.get_graph_info() == before


def test_edges(inline):
    wf = inline.create_workflow()
    a = wf.add_task(load_data, inputs={"filename": "x"})
    b = wf.add_task(load_data, inputs={"filename": "y"})
    wf.add_edge(a, b)
    assert [e["source_id"] + ">" + e["target_id"] for e in wf.get_graph_info()["edges"]] == ["load_data>load_data-2"]
    wf.del_edge(a, "load_data-2")
    assert wf.get_graph_info()["edges"] == []
    with pytest.raises(WorkflowError, match="there is no edge from 'load_data' to 'load_data-2'"):
        wf.del_edge(a, b)
    c = wf.add_task(clean_data, inputs={"data": a.outputs["data"]})
    with pytest.raises(WorkflowError, match=r"reads 'load_data''s output through its input\(s\) \['data'\]"):
        wf.del_edge(a, c)
    with pytest.raises(WorkflowError, match="'nope' is not a task of workflow"):
        wf.add_edge("nope", a)
    assert wf.get_tasks() == [
        {"id": "load_data", "name": "load_data"},
        {"id": "load_data-2", "name": "load_data"},
        {"id": "clean_data", "name": "clean_data"},
    ]


def test_unknown_run_and_task(inline):
    wf = inline.create_workflow()
    wf.add_task(load_data, inputs={"filename": "x"})
    wf.add_task(load_data, inputs={"filename": "y"})
    run_id = wf.run()
    with pytest.raises(UnknownRunError, match="has no run 'run-nope'"):
        wf.get_results("run-nope")
    with pytest.raises(UnknownTaskError, match="has no task 'zzz'; its tasks are: load_data, load_data-2"):
        wf.get_task_result(run_id, "zzz")
    with pytest.raises(UnknownTaskError, match="prefix 'load' is ambiguous"):
        wf.get_task_result(run_id, "load")


def test_bad_run_option(inline):
    wf = inline.create_workflow()
    with pytest.raises(TypeError, match="fail_fst"):
        wf.run(fail_fst=True)


def test_draw_graph_rejects_unknown_formats(inline, tmp_path):
    wf = inline.create_workflow()
    wf.add_task(load_data, inputs={"filename": "x"})
    with pytest.raises(ValueError, match=r"cannot tell the format of .*graph.jpg.*\.svg, \.png, \.pdf"):
        wf.draw_graph(str(tmp_path / "graph.jpg"))
    with pytest.raises(ValueError, match="method='magic' is not accepted"):
        wf.draw_graph(str(tmp_path / "graph.svg"), method="magic")
