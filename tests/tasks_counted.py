"""Tasks that count their executions in files, to tell a reused result from a re-run."""

import os

from maze import task


def bump(path: str) -> int:
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as fh:
        fh.write(str(count))
    return count


@task(inputs=["dir", "x"], outputs=["y"])
def counted(params):
    bump(os.path.join(params["dir"], "counted"))
    return {"y": params["x"] + 1}


@task(inputs=["dir", "x"], outputs=["y"])
def fails_unless_fixed(params):
    bump(os.path.join(params["dir"], "fragile"))
    if not os.path.exists(os.path.join(params["dir"], "fixed")):
        raise RuntimeError("not fixed yet")
    return {"y": params["x"] * 10}


@task(inputs=["dir", "x"], outputs=["y"], cache=True)
def expensive(params):
    bump(os.path.join(params["dir"], "expensive"))
    return {"y": params["x"] ** 2}
