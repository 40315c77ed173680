"""The built documentation, seen in a real browser (Debian's chromium through Playwright).

The site is built once per session (``test_docs.built_site``: ``sphinx-build -W -n``,
tutorials executed), served by ``python -m http.server`` on 127.0.0.1 and a free port,
and the first tutorial's page is opened: the DAG picture of its first run must be drawn
on the page, visible, of a readable size, with every task of the pipeline in it and in
its final state (``artifacts/docs-tutorial-dag.png``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from test_browser import ARGS, CHROMIUM
from test_docs import built_site

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
PAGE = "tutorials/01-getting-started.html"

PICTURES_JS = """() => Array.from(document.querySelectorAll('.cell_output svg')).filter(s => s.querySelector('g.graph')).map(s => {
    const box = s.getBoundingClientRect();
    return {
        width: box.width, height: box.height,
        texts: Array.from(s.querySelectorAll('g.node text')).map(t => t.textContent),
        states: Array.from(s.querySelectorAll('g.node')).map(g => g.getAttribute('class')),
    };
})"""


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``folder`` on loopback; yields its URL."""
    # Port 0: the server takes a free port itself and says which, so no other process can take it first.
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0",
                             "--directory", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        said = proc.stdout.readline()   # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        found = re.search(r" port (\d+) ", said)
        assert found, f"the HTTP server did not start: {said!r}"
        base = f"http://127.0.0.1:{found.group(1)}"
        urllib.request.urlopen(f"{base}/index.html", timeout=10)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_first_tutorial_page_shows_the_dag_in_a_browser():
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM} (scripts/setup.sh installs it)"
    site = built_site()
    ARTIFACTS.mkdir(exist_ok=True)
    with served(site) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            response = page.goto(f"{base}/{PAGE}")
            assert response is not None and response.ok, response and response.status
            page.wait_for_selector(".cell_output svg g.graph", state="visible", timeout=30_000)
            pictures = page.evaluate(PICTURES_JS)
            first = page.locator(".cell_output svg:has(g.graph)").first
            first.scroll_into_view_if_needed()
            assert first.is_visible()
            first.screenshot(path=str(ARTIFACTS / "docs-tutorial-dag.png"))
        finally:
            browser.close()

    pipeline = next((pic for pic in pictures if any("load_data" in t for t in pic["texts"])), None)
    assert pipeline is not None, pictures
    labels = " ".join(pipeline["texts"])
    for name in ("load_data", "clean_data", "analyze_data"):
        assert name in labels, pipeline
    # Drawn at a size a reader can see (three stacked boxes), not collapsed by the theme's CSS.
    assert pipeline["width"] >= 60 and pipeline["height"] >= 120, pipeline
    # The final picture of the run: every task finished.
    assert pipeline["states"] and all("maze-finished" in (c or "") for c in pipeline["states"]), pipeline
