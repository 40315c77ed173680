"""The user guide's workflow patterns, run end to end.

Runs the single-end pipeline, the fan-out export, the diamond and the
multi-stage workflow on the local backend (or the one named with
``--backend``), prints each run's progress with ``show_results``, and writes
each DAG as SVG into ``--out`` (default: ``out/``).

    python examples/patterns.py [--backend joblib|ray|inline] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from maze import MaClient, RendererError, task


@task(inputs=["filename"], outputs=["data"])
def load_data(params):
    return {"data": f"Data from {params['filename']}"}


@task(inputs=["data"], outputs=["cleaned_data"])
def clean_data(params):
    return {"cleaned_data": params["data"].strip().upper()}


@task(inputs=["data"], outputs=["result"])
def analyze_data(params):
    return {"result": f"Analysis: {len(params['data'])} characters"}


@task(inputs=["source"], outputs=["data"])
def fetch_data(params):
    return {"data": f"Data from {params['source']}"}


@task(inputs=["data"], outputs=["json_result"])
def export_json(params):
    return {"json_result": json.dumps({"data": params["data"]})}


@task(inputs=["data"], outputs=["csv_result"])
def export_csv(params):
    return {"csv_result": f"data\n{params['data']}"}


@task(inputs=["input"], outputs=["data"])
def prepare_data(params):
    return {"data": f"Prepared: {params['input']}"}


@task(inputs=["data"], outputs=["result_a"])
def process_method_a(params):
    return {"result_a": f"{params['data']} -> Method A"}


@task(inputs=["data"], outputs=["result_b"])
def process_method_b(params):
    return {"result_b": f"{params['data']} -> Method B"}


@task(inputs=["result_a", "result_b"], outputs=["final_result"])
def merge_results(params):
    return {"final_result": f"Combined: [{params['result_a']}] + [{params['result_b']}]"}


@task(inputs=["data"], outputs=["out"])
def initial_process(params):
    print(f"initial processing of {params['data']!r}")
    return {"out": params["data"].split(",")}


@task(inputs=["in"], outputs=["out"])
def process_a(params):
    return {"out": [x.upper() for x in params["in"]]}


@task(inputs=["in"], outputs=["out"])
def process_b(params):
    return {"out": sorted(params["in"], reverse=True)}


@task(inputs=["in"], outputs=["out"])
def export_data(params):
    return {"out": ";".join(params["in"])}


@task(inputs=["a", "b"], outputs=["out"])
def final_process(params):
    return {"out": list(zip(params["a"], params["b"]))}


def build(client: MaClient):
    pipeline = client.create_workflow("pipeline")
    t1 = pipeline.add_task(load_data, inputs={"filename": "data.txt"})
    t2 = pipeline.add_task(clean_data, inputs={"data": t1.outputs["data"]})
    pipeline.add_task(analyze_data, inputs={"data": t2.outputs["cleaned_data"]})

    export = client.create_workflow("export")
    t1 = export.add_task(fetch_data, inputs={"source": "database"})
    export.add_task(export_json, inputs={"data": t1.outputs["data"]})
    export.add_task(export_csv, inputs={"data": t1.outputs["data"]})

    diamond = client.create_workflow("diamond")
    t1 = diamond.add_task(prepare_data, inputs={"input": "raw_data"})
    t2 = diamond.add_task(process_method_a, inputs={"data": t1.outputs["data"]})
    t3 = diamond.add_task(process_method_b, inputs={"data": t1.outputs["data"]})
    diamond.add_task(merge_results, inputs={"result_a": t2.outputs["result_a"], "result_b": t3.outputs["result_b"]})

    multistage = client.create_workflow("multistage")
    t1 = multistage.add_task(initial_process, inputs={"data": "b,c,a"})
    t2 = multistage.add_task(process_a, inputs={"in": t1.outputs["out"]})
    t3 = multistage.add_task(process_b, inputs={"in": t1.outputs["out"]})
    multistage.add_task(export_data, inputs={"in": t3.outputs["out"]})
    multistage.add_task(final_process, inputs={"a": t2.outputs["out"], "b": t3.outputs["out"]})
    return [pipeline, export, diamond, multistage]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="joblib")
    parser.add_argument("--out", default="out")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    with MaClient(backend=args.backend) as client:
        for workflow in build(client):
            print(f"\n=== {workflow.name} ===")
            workflow.print_graph()
            summary = workflow.show_results(workflow.run())
            failed += not summary["workflow_completed"]
            try:
                path = workflow.draw_graph(os.path.join(args.out, f"{workflow.name}.svg"))
                print(f"DAG written to {path}")
            except RendererError as exc:
                print(f"(no picture: {exc})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
