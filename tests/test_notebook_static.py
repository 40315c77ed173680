"""A notebook with the live widget, executed and converted to HTML, keeps the finished DAG.

This is what nbviewer, GitHub and a docs build see: no widget front end, only
the outputs saved in the notebook. The notebook is executed by a real kernel
(nbclient), as ``jupyter nbconvert --execute`` does, and saved as JupyterLab
saves by default, without the widgets' state, so a converter cannot draw the
widget and must fall back on the static picture next to it; then converted to
HTML.
"""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

CELLS = [
    "from maze import MaClient, task",
    '''@task(inputs=["x"], outputs=["y"])
def double(params):
    return {"y": 2 * params["x"]}

@task(inputs=["y"], outputs=["z"])
def boom(params):
    raise ValueError("no luck")''',
    '''client = MaClient()
wf = client.create_workflow("static")
a = wf.add_task(double, inputs={"x": 1})
b = wf.add_task(double, inputs={"x": a.outputs["y"]})
c = wf.add_task(boom, inputs={"y": b.outputs["y"]})
summary = wf.show_results(wf.run())''',
    "client.close()",
]


def test_nbconvert_html_of_an_executed_notebook_shows_the_final_dag(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
    env_before = os.environ.get("MAZE_HISTORY")
    os.environ["MAZE_HISTORY"] = str(tmp_path / "history.sqlite3")   # the kernel inherits it
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=False, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_before is None:
            del os.environ["MAZE_HISTORY"]
        else:
            os.environ["MAZE_HISTORY"] = env_before

    outputs = nb.cells[2].outputs
    bundles = [o["data"] for o in outputs if o.get("output_type") in {"display_data", "execute_result"}]
    assert any("application/vnd.jupyter.widget-view+json" in b for b in bundles)   # the live widget was shown
    final = [b for b in bundles if "image/svg+xml" in b]
    assert final, "the cell kept no picture of the finished run"
    svg = final[-1]["image/svg+xml"]
    assert "✔ double" in svg and "✘ boom" in svg      # the final states, with their icons

    body, _ = HTMLExporter().from_notebook_node(nb)
    assert "<svg" in body and "✘ boom" in body
    assert "replaces this text when the run ends" not in body   # not the placeholder of a live run
    assert "■ workflow failed" in body                          # the one summary line
