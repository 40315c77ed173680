"""The live DAG in a real JupyterLab, driven by a real browser (Debian's chromium).

Starts JupyterLab on 127.0.0.1 with a token in a temporary copy of the first
tutorial (JupyterLab autosaves), runs all its cells from the Run menu, and
watches the widget's DOM: it must appear, show a task running before the run
ends, and end with every node finished. A screenshot is kept in
``artifacts/browser-dag.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "maze-browser-test"
NOTEBOOK = "01-getting-started.ipynb"

STATES_JS = """() => Array.from(document.querySelectorAll('.maze-dag')).map(w => ({
    status: w.querySelector('.maze-status')?.textContent,
    nodes: Array.from(w.querySelectorAll('g.node')).map(g => g.getAttribute('data-state')),
}))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Keep every cell in the DOM: by default JupyterLab drops cells scrolled out of view.
    notebook = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    notebook.mkdir(parents=True)
    (notebook / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    port = free_port()
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
    yield base
    proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def accept_dialogs(page) -> None:
    """Accept what JupyterLab asks first: on a busy machine it may ask which kernel to start."""
    buttons = page.locator(".jp-Dialog .jp-mod-accept")
    while buttons.count():
        buttons.first.click()
        page.wait_for_timeout(500)


def run_all_cells(page) -> None:
    """Run > Run All Cells, until a cell has really executed.

    Right after start-up JupyterLab can report the kernel idle before it takes
    requests (more so on a busy machine); a request lost then is asked again.
    """
    executed = "() => Array.from(document.querySelectorAll('.jp-InputArea-prompt')).some(p => /\\[\\d+\\]/.test(p.textContent))"
    for _ in range(4):
        accept_dialogs(page)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(executed, timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try again
            continue
    raise AssertionError("Run All Cells never executed a cell")


def test_live_dag_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    seen_running = False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            try:
                page.goto(f"{lab}/lab/tree/{NOTEBOOK}?token={TOKEN}")
                deadline = time.time() + 90
                while not page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count():
                    accept_dialogs(page)
                    assert time.time() < deadline, "the kernel never became idle"
                    page.wait_for_timeout(250)
                run_all_cells(page)
                page.wait_for_selector(".maze-dag g.node", state="attached", timeout=90_000)
            except Exception:
                page.screenshot(path=str(artifacts / "browser-failure.png"))
                raise
            first_seen = page.evaluate(STATES_JS)
            deadline = time.time() + 120
            widgets = first_seen
            while time.time() < deadline:
                widgets = page.evaluate(STATES_JS)
                seen_running |= any("running" in w["nodes"] for w in widgets if w["status"] != "completed")
                if len(widgets) >= 3 and all(w["status"] == "completed" for w in widgets):
                    break
                time.sleep(0.1)
            page.locator(".maze-dag").first.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts / "browser-dag.png"), full_page=False)
            page.locator(".maze-dag").nth(2).screenshot(path=str(artifacts / "browser-dag-diamond.png"))
        finally:
            browser.close()
    assert first_seen, "the DAG widget never appeared"
    assert seen_running, "no task was ever seen running while its run was going"
    assert len(widgets) >= 3, widgets   # three runs in the notebook (more if Run All had to be asked twice)
    for w in widgets:
        assert w["status"] == "completed" and w["nodes"] and set(w["nodes"]) == {"finished"}, widgets
