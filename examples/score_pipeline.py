"""A maze workflow as a plain script: progress on stdout, the outcome in the exit code.

Generates seeded random scores, normalises them, and summarises them, on the local
backend. The run is recorded in the run history (``$MAZE_HISTORY``, or ``--history``),
so a notebook or another process can replay it by the run id the script prints.

    python examples/score_pipeline.py [--seed N] [--count N] [--scale X] [--history FILE]

Exit codes: 0 when the run completed, 1 when a task failed (``--scale 0`` makes the
normalising task fail, to show it), 2 for bad arguments (argparse's convention).
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from maze import MaClient, task


@task(inputs=["seed", "count"], outputs=["scores"])
def generate(params: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(params["seed"])  # seeded: the same scores on every run
    return {"scores": [rng.randint(0, 100) for _ in range(params["count"])]}


@task(inputs=["scores", "scale"], outputs=["normalised"])
def normalise(params: dict[str, Any]) -> dict[str, Any]:
    if params["scale"] <= 0:
        raise ValueError(f"scale must be positive, got {params['scale']}")
    print(f"normalising {len(params['scores'])} scores by {params['scale']}")
    return {"normalised": [round(s / params["scale"], 3) for s in params["scores"]]}


@task(inputs=["normalised"], outputs=["mean", "best"])
def summarise(params: dict[str, Any]) -> dict[str, Any]:
    values = params["normalised"]
    return {"mean": round(sum(values) / len(values), 3), "best": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed of the scores (default 7)")
    parser.add_argument("--count", type=int, default=10, help="how many scores (default 10)")
    parser.add_argument("--scale", type=float, default=100.0, help="divide the scores by this (default 100)")
    parser.add_argument("--history", help="the run history file (default: $MAZE_HISTORY, else maze's default)")
    args = parser.parse_args(argv)

    options: dict[str, Any] = {"history": args.history} if args.history else {}
    with MaClient(**options) as client:
        workflow = client.create_workflow("scores")
        gen = workflow.add_task(generate, inputs={"seed": args.seed, "count": args.count})
        norm = workflow.add_task(normalise, inputs={"scores": gen.outputs["scores"], "scale": args.scale})
        summary_task = workflow.add_task(summarise, inputs={"normalised": norm.outputs["normalised"]})

        run_id = workflow.run()
        print(f"run id: {run_id}", flush=True)
        summary = workflow.show_results(run_id)  # outside a notebook: progress lines on stdout
        if summary["status"] != "completed":
            print(f"failed tasks: {', '.join(summary['exception_tasks'])}", file=sys.stderr)
            return 1
        print(f"result: {summary['task_results'][summary_task.task_id]}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
