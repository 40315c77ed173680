"""The documentation site builds cleanly and shows what it promises.

One real Sphinx build (``sphinx-build -W -n``: every warning is an error and every
cross reference must resolve) into a temporary folder, shared by the tests here and by
``tests/test_docs_browser.py``. The build executes the tutorial notebooks in a Jupyter
kernel (myst-nb), so the first tutorial's page must hold the finished DAG picture that
the notebook's run produced.
"""

from __future__ import annotations

import atexit
import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import maze

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@functools.cache
def built_site() -> Path:
    """Build the site once per test session; return the HTML folder (the build log beside it)."""
    work = Path(tempfile.mkdtemp(prefix="maze-docs-test-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    out = work / "html"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled", PYTHONWARNINGS="ignore::DeprecationWarning")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-D", "nitpicky=1", "-b", "html",
         "-d", str(work / "doctrees"), str(DOCS), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    (work / "build.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"sphinx-build failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
    return out


def test_the_site_builds_with_warnings_as_errors():
    out = built_site()
    log = (out.parent / "build.log").read_text()
    assert "build succeeded" in log
    # Sphinx's own warnings ("file:line: WARNING: ..."); the kernels' log lines are not Sphinx's.
    assert not re.search(r": (WARNING|ERROR):", log), log[-4000:]
    for page in ["index", "install", "comparison", "changelog", "guide", "reliability", "api/index"]:
        assert (out / f"{page}.html").is_file(), page


def test_every_public_name_has_an_api_entry():
    page = (built_site() / "api" / "index.html").read_text()
    anchors = set(re.findall(r'id="(maze\.[\w.]+)"', page))
    missing = [name for name in maze.__all__ if f"maze.{name}" not in anchors]
    assert not missing, f"no API entry for {missing}"
    # The two classes users drive everything with are documented method by method.
    for cls in ("MaClient", "MaWorkflow"):
        methods = [m for m in vars(getattr(maze, cls)) if not m.startswith("_")]
        assert methods
        undocumented = [m for m in methods if f"maze.{cls}.{m}" not in anchors]
        assert not undocumented, f"{cls} members without an API entry: {undocumented}"


def test_every_tutorial_notebook_has_a_page():
    out = built_site()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (DOCS / "tutorials" / notebook.name).resolve() == notebook.resolve(), (
            f"docs/tutorials/{notebook.name} should link to notebooks/{notebook.name}")
        assert (out / "tutorials" / f"{notebook.stem}.html").is_file(), notebook.name


def _cell_outputs(page: str) -> list[str]:
    """The HTML of each rendered cell output of a myst-nb page."""
    starts = [m.start() for m in re.finditer(r'<div class="cell_output docutils container">', page)]
    return [page[s:e] for s, e in zip(starts, [*starts[1:], len(page)])]


def test_the_first_tutorial_page_shows_the_finished_dag():
    page = (built_site() / "tutorials" / "01-getting-started.html").read_text()
    notebook = json.loads((ROOT / "notebooks" / "01-getting-started.ipynb").read_text())
    source = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "load_data" in source and "clean_data" in source  # the pipeline the picture must show

    pictures = [out for out in _cell_outputs(page)
                if (re.search(r"<svg\b", out) and 'class="graph"' in out) or re.search(r'<img[^>]+\.svg"', out)]
    assert pictures, "no DAG picture (an inline <svg> or an <img> of one) in the cell outputs"
    pipeline = next((p for p in pictures if "load_data" in html.unescape(p)), None)
    assert pipeline is not None, "no picture names the tutorial's first task"
    text = html.unescape(pipeline)
    for name in ("load_data", "clean_data", "analyze_data"):
        assert name in text, name
    # The picture is the run's final state, not a placeholder drawn while it was still going.
    assert "maze-finished" in text or "(finished)" in text, text[:2000]
