"""The tasks of the user guide, as written there (shared by several test modules)."""

import json

from maze import task


@task(inputs=["filename"], outputs=["data"])
def load_data(params):
    filename = params.get("filename")
    data = f"Data from {filename}"
    return {"data": data}


@task(inputs=["data"], outputs=["cleaned_data"])
def clean_data(params):
    data = params.get("data")
    cleaned = data.strip().upper()
    return {"cleaned_data": cleaned}


@task(inputs=["data"], outputs=["result"])
def analyze_data(params):
    data = params.get("data")
    result = f"Analysis: {len(data)} characters"
    return {"result": result}


@task(inputs=["source"], outputs=["data"])
def fetch_data(params):
    """Fetch data from a source"""
    source = params.get("source")
    data = f"Data from {source}"
    return {"data": data}


@task(inputs=["data"], outputs=["json_result"])
def export_json(params):
    """Export data as JSON"""
    data = params.get("data")
    result = json.dumps({"data": data})
    return {"json_result": result}


@task(inputs=["data"], outputs=["csv_result"])
def export_csv(params):
    """Export data as CSV"""
    data = params.get("data")
    result = f"data\n{data}"
    return {"csv_result": result}


@task(inputs=["input"], outputs=["data"])
def prepare_data(params):
    """Prepare data for processing"""
    input_data = params.get("input")
    return {"data": f"Prepared: {input_data}"}


@task(inputs=["data"], outputs=["result_a"])
def process_method_a(params):
    """Process using method A"""
    data = params.get("data")
    return {"result_a": f"{data} -> Method A"}


@task(inputs=["data"], outputs=["result_b"])
def process_method_b(params):
    """Process using method B"""
    data = params.get("data")
    return {"result_b": f"{data} -> Method B"}


@task(inputs=["result_a", "result_b"], outputs=["final_result"])
def merge_results(params):
    """Merge results from both methods"""
    result_a = params.get("result_a")
    result_b = params.get("result_b")
    return {"final_result": f"Combined: [{result_a}] + [{result_b}]"}


# The guide's "complex workflow" leaves these five to the reader.
@task(inputs=["data"], outputs=["out"])
def initial_process(params):
    return {"out": f"init({params['data']})"}


@task(inputs=["in"], outputs=["out"])
def process_a(params):
    return {"out": f"a({params['in']})"}


@task(inputs=["in"], outputs=["out"])
def process_b(params):
    return {"out": f"b({params['in']})"}


@task(inputs=["in"], outputs=["out"])
def export_data(params):
    return {"out": f"export({params['in']})"}


@task(inputs=["a", "b"], outputs=["out"])
def final_process(params):
    return {"out": f"final({params['a']}, {params['b']})"}


@task(inputs=["a", "b"], outputs=["sum", "product", "difference"])
def calculate(params):
    a = params.get("a")
    b = params.get("b")
    return {
        "sum": a + b,
        "product": a * b,
        "difference": a - b,
    }


@task(inputs=["value"], outputs=["result"])
def use_sum(params):
    return {"result": f"sum is {params['value']}"}


@task(inputs=["value"], outputs=["result"])
def use_product(params):
    return {"result": f"product is {params['value']}"}


@task(inputs=["value"], outputs=["result"])
def debug_task(params):
    value = params.get("value")
    print(f"DEBUG: Input value = {value}")  # Visible in worker logs
    result = value * 2
    print(f"DEBUG: Output value = {result}")
    return {"result": result}


@task(
    inputs=["input_key"],
    outputs=["output_key"],
    resources={"cpu": 1, "cpu_mem": 128, "gpu": 0, "gpu_mem": 0},
)
def my_task(params):
    value = params.get("input_key")
    result = value.upper()
    return {"output_key": result}
