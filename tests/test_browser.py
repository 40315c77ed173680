"""The live DAG in a real JupyterLab, driven by a real browser (Debian's chromium).

Starts JupyterLab on 127.0.0.1 with a token in a temporary folder (JupyterLab
autosaves), runs all a notebook's cells from the Run menu, and watches the
widget's DOM.

- ``test_live_dag_in_jupyterlab``: the first tutorial; the widget must appear,
  show a task running before the run ends, and end with every node finished
  (``artifacts/browser-dag.png``).
- ``test_a_thousand_task_fan_out_is_readable_and_live``: ``src -> work × 1,000
  -> sink`` (each ``work`` sleeps 10 ms). The picture is the grouped graph, tall
  enough and with legible labels; a recorder in the page (a MutationObserver)
  notes every change of the widget's state with the browser's clock, so the
  test counts how many distinct states were shown per second while the run
  went, and how long after the kernel's end of run (same machine, same clock)
  the widget said ``completed`` (``artifacts/browser-fanout-1000.png``).
- ``test_ten_thousand_task_fan_out_completes``: the same figures for a fan-out
  of 10,000 no-op tasks into a sink, printed for the notes; it asserts only that the run
  is shown completed, all tasks done, within a generous bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
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


@contextlib.contextmanager
def jupyter_lab(tmp_path: Path, root: Path) -> Iterator[str]:
    """A JupyterLab serving ``root`` (settings, config and runtime kept in ``tmp_path``); yields its URL."""
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Keep every cell in the DOM: by default JupyterLab drops cells scrolled out of view.
    notebook = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    notebook.mkdir(parents=True)
    (notebook / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    log = open(tmp_path / "lab.log", "wb")

    def start() -> tuple[subprocess.Popen, str]:
        # The port was free a moment ago; another process may take it first. The server then
        # exits (no retries on other ports, which this test would not know of) and starts again.
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", "--allow-root",
             f"--ServerApp.root_dir={root}"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        return proc, f"http://127.0.0.1:{port}"

    proc, base = start()
    try:
        deadline, starts = time.time() + 60, 1
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=1)
                break
            except OSError:
                if proc.poll() is not None and starts < 3:
                    proc, base = start()
                    starts += 1
                time.sleep(0.3)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    with jupyter_lab(tmp_path, root) as base:
        yield base


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
    for _ in range(4):   # a kernel that starts slowly on a busy machine gets a minute a try
        accept_dialogs(page)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(executed, timeout=60_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try again
            continue
    raise AssertionError("Run All Cells never executed a cell")


PROMPTS_JS = "() => Array.from(document.querySelectorAll('.jp-InputArea-prompt')).map(p => p.textContent)"


def wait_for_dag(page, timeout_s: float = 90, selector: str = ".maze-dag g.node") -> None:
    """Wait for the first DAG widget's nodes (or ``selector``); if Run All stalled (the kernel idle, cells
    never run), ask again.

    On a busy machine JupyterLab can drop a Run All between two cells,
    leaving later cells unqueued with the kernel idle; nothing of maze runs then.
    """
    deadline = time.time() + timeout_s
    while True:
        try:
            page.wait_for_selector(selector, state="attached", timeout=15_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError
            if time.time() > deadline:
                raise
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count()
        if idle and any(p.strip() in ("[ ]:", "[ ]") for p in page.evaluate(PROMPTS_JS)):
            run_all_cells(page)


def open_notebook(page, lab: str, name: str) -> None:
    """Open ``name`` and wait until its kernel is idle."""
    page.goto(f"{lab}/lab/tree/{name}?token={TOKEN}")
    deadline = time.time() + 90
    while not page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count():
        accept_dialogs(page)
        assert time.time() < deadline, "the kernel never became idle"
        page.wait_for_timeout(250)


def test_live_dag_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    seen_running = False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            try:
                open_notebook(page, lab, NOTEBOOK)
                run_all_cells(page)
                wait_for_dag(page)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
                (ARTIFACTS / "browser-failure-prompts.txt").write_text(" ".join(page.evaluate(PROMPTS_JS)))
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
            page.screenshot(path=str(ARTIFACTS / "browser-dag.png"), full_page=False)
            page.locator(".maze-dag").nth(2).screenshot(path=str(ARTIFACTS / "browser-dag-diamond.png"))
        finally:
            browser.close()
    assert first_seen, "the DAG widget never appeared"
    assert seen_running, "no task was ever seen running while its run was going"
    assert len(widgets) >= 3, widgets   # three runs in the notebook (more if Run All had to be asked twice)
    for w in widgets:
        assert w["status"] == "completed" and w["nodes"] and set(w["nodes"]) == {"finished"}, widgets


# -- large fan-outs ---------------------------------------------------------------------

def fan_out_notebook(path: Path, width: int, *, sleep: float, sink: bool) -> None:
    """A notebook that runs ``src -> work × width (-> sink)`` and prints the kernel's clock at the run's ends."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    define = f'''import time
from maze import MaClient, task

@task(inputs=[], outputs=["x"])
def src(params):
    return {{"x": 1}}

@task(inputs=["x"], outputs=["y"])
def work(params):
    time.sleep({sleep!r})
    return {{"y": params["x"]}}

@task(inputs=[], outputs=[])
def sink(params):
    return {{}}'''
    build = f'''client = MaClient()
wf = client.create_workflow("fanout")
s = wf.add_task(src)
middle = [wf.add_task(work, inputs={{"x": s.outputs["x"]}}) for _ in range({width})]'''
    if sink:
        build += '''
k = wf.add_task(sink)
for m in middle:
    wf.add_edge(m, k)'''
    build += '\nlen(wf.get_tasks())'
    # The run's start and end on the kernel's wall clock: RunState.started_at is
    # time.time() when the run began, and the summary's duration is measured
    # from there to the moment finish_workflow was recorded.
    run = '''run_id = wf.run()
summary = wf.show_results(run_id)
shown = time.time()
state = wf.run_state(run_id)
print("KERNEL_TIMES", json.dumps({"start": state.started_at, "end": state.started_at + summary["duration"],
                                  "returned": shown, "status": summary["status"]}))'''
    nb = new_notebook(
        cells=[new_code_cell("import json\n" + define), new_code_cell(build), new_code_cell(run)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, str(path))


@pytest.fixture
def fan_out_lab(tmp_path):
    """Start a JupyterLab serving one fan-out notebook: ``fan_out_lab(width, sleep=, sink=)`` -> (url, name)."""
    stack = contextlib.ExitStack()

    def start(width: int, *, sleep: float, sink: bool) -> tuple[str, str]:
        root = tmp_path / "root"
        root.mkdir()
        name = f"fanout-{width}.ipynb"
        fan_out_notebook(root / name, width, sleep=sleep, sink=sink)
        return stack.enter_context(jupyter_lab(tmp_path, root)), name

    with stack:
        yield start


# Installed before JupyterLab loads: notes, with the browser's clock, every change
# of the (last) widget's status, header count and group counts. The observer's
# callback runs right after the DOM changed (a microtask), so each time is the
# moment the change reached the page, whatever the test's polling does.
RECORDER_JS = """(() => {
  const rec = window.__mazeRecord = [];
  let last = null;
  const read = () => {
    const all = document.querySelectorAll('.maze-dag');
    const w = all[all.length - 1];
    if (!w) return;
    const status = w.querySelector('.maze-status')?.textContent || '';
    const count = w.querySelector('.maze-count')?.textContent || '';
    const groups = Array.from(w.querySelectorAll('g.node[data-counts]'), g => g.getAttribute('data-counts')).join('|');
    const key = status + '#' + count + '#' + groups;
    if (key !== last) { last = key; rec.push([Date.now(), status, count, groups]); }
  };
  const start = () => new MutationObserver(read).observe(document.documentElement, {
    subtree: true, childList: true, characterData: true,
    attributes: true, attributeFilter: ['data-counts', 'data-status', 'data-state'],
  });
  if (document.documentElement) start(); else document.addEventListener('DOMContentLoaded', start);
})();"""

KERNEL_TIMES_JS = """() => {
  for (const o of document.querySelectorAll('.jp-OutputArea-output')) {
    const m = /KERNEL_TIMES (\\{.*\\})/.exec(o.textContent);
    if (m) return m[1];
  }
  return null;
}"""

# The picture: the <svg>'s size and each group's label (its first <text>), with the
# label's rendered height and its font size in screen pixels.
PICTURE_JS = """() => {
  const all = document.querySelectorAll('.maze-dag');
  const w = all[all.length - 1];
  const svg = w?.querySelector('.maze-graph svg');
  if (!svg) return null;
  const box = svg.getBoundingClientRect();
  const labels = Array.from(svg.querySelectorAll('g.node[data-counts]'), g => {
    const t = g.querySelector('text');
    const r = t.getBoundingClientRect();
    const scale = t.getScreenCTM().a;
    const shape = Array.from(g.querySelectorAll('path, polygon')).find(s => s.getAttribute('fill') !== 'none');
    const bar = Array.from(g.querySelectorAll('.maze-gbar rect'), b => [b.getAttribute('fill'), parseFloat(b.getAttribute('width'))]);
    return {id: g.id, text: t.textContent, height: r.height,
            font_px: parseFloat(getComputedStyle(t).fontSize) * scale,
            state: g.getAttribute('data-state'), fill: shape?.getAttribute('fill'), ink: t.getAttribute('fill'),
            bar: bar.filter(([, width]) => width > 0)};
  });
  return {width: box.width, height: box.height, labels,
          status: w.querySelector('.maze-status')?.textContent,
          count: w.querySelector('.maze-count')?.textContent};
}"""


def watch_fan_out(lab: str, name: str, *, tasks: int, timeout: float, shot: str) -> dict:
    """Run the notebook in chromium; return the kernel's times, the page's record and the picture."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.add_init_script(RECORDER_JS)
            try:
                open_notebook(page, lab, name)
                run_all_cells(page)
                wait_for_dag(page, timeout_s=120, selector=".maze-dag .maze-graph svg")
                page.wait_for_function(KERNEL_TIMES_JS, timeout=timeout * 1000)
                # The kernel has printed its end of run: give the widget a generous while to say so.
                page.wait_for_function(
                    """() => { const a = document.querySelectorAll('.maze-dag');
                               return a.length && a[a.length - 1].querySelector('.maze-status')?.textContent === 'completed'; }""",
                    timeout=30_000)
                page.wait_for_timeout(300)   # let a late header repaint land in the record
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
                raise
            kernel = json.loads(page.evaluate(KERNEL_TIMES_JS))
            record = page.evaluate("() => window.__mazeRecord")
            widget = page.locator(".maze-dag").last
            widget.scroll_into_view_if_needed()
            picture = page.evaluate(PICTURE_JS)
            widget.screenshot(path=str(ARTIFACTS / shot))
        finally:
            browser.close()
    return figures(kernel, record, picture, tasks)


def figures(kernel: dict, record: list, picture: dict, tasks: int) -> dict:
    """What the record says: states shown per second while the run went, and the lag of ``completed``."""
    start, end = kernel["start"], kernel["end"]
    completed_at = next((t / 1000 for t, status, _, _ in record if status == "completed"), None)
    # The busy part: from the first state the widget showed after the run began
    # (it appears once the cell displays it) to the kernel's end of run.
    during = [r for r in record if start <= r[0] / 1000 <= end and r[1] != "completed"]
    first = during[0][0] / 1000 if during else end
    busy = max(end - first, 1e-9)
    distinct = len({(r[2], r[3]) for r in during})
    gaps = [(b[0] - a[0]) / 1000 for a, b in zip(during, during[1:])]
    out = {
        "tasks": tasks,
        "run_s": round(end - start, 3),
        "busy_s": round(busy, 3),
        "states": distinct,
        "states_per_s": round(distinct / busy, 2),
        "longest_gap_s": round(max(gaps), 3) if gaps else None,
        "completed_lag_s": round(completed_at - end, 3) if completed_at else None,
        "show_results_returned_after_s": round(kernel["returned"] - end, 3),
        "svg_px": (round(picture["width"]), round(picture["height"])),
        "labels": [(lb["text"], round(lb["height"], 1), round(lb["font_px"], 1)) for lb in picture["labels"]],
        "groups": [{k: lb[k] for k in ("state", "fill", "ink", "bar")} for lb in picture["labels"]],
        "final_count": picture["count"],
        "status": picture["status"],
        "kernel_status": kernel["status"],
    }
    print(f"\nFAN-OUT {tasks:,} tasks: " + json.dumps(out, ensure_ascii=False))
    return out


def assert_group_painted_done(f: dict) -> None:
    """The group node is painted as finished: its box in the finished colour, its label in a
    different ink (so it shows), its bar all in the finished colour."""
    from maze.notebook.render import LOOKS

    for g in f["groups"]:
        assert g["state"] == "finished" and g["fill"].upper() == LOOKS["finished"].fill.upper(), f
        assert g["ink"].upper() != g["fill"].upper(), f"the group's label is drawn in its box's colour: {f}"
        assert [fill.upper() for fill, _ in g["bar"]] == [LOOKS["finished"].fill.upper()], f


def test_a_thousand_task_fan_out_is_readable_and_live(fan_out_lab):
    lab, name = fan_out_lab(1000, sleep=0.01, sink=True)
    f = watch_fan_out(lab, name, tasks=1002, timeout=300, shot="browser-fanout-1000.png")
    assert f["kernel_status"] == "completed", f
    # Readable: the grouped picture is tall enough, and the group's label is legible.
    assert f["svg_px"][1] >= 200, f
    work = [lb for lb in f["labels"] if lb[0].startswith("work ×")]
    assert work and work[0][0] == "work × 1,000", f
    assert work[0][1] >= 9, f"the group's label is {work[0][1]} px high: {f}"
    assert_group_painted_done(f)
    # Live: the picture moves while the run goes (the widget sends at most 10 states a second, from
    # a niced thread that shares the cores with the workers, the server and the browser) ...
    assert f["states_per_s"] >= 3, f
    # ... and the end is shown within moments of the kernel's.
    assert f["completed_lag_s"] is not None and f["completed_lag_s"] <= 3.0, f
    assert f["status"] == "completed" and f["final_count"] == "1,002/1,002 done", f


def test_ten_thousand_task_fan_out_completes(fan_out_lab):
    # With the sink: 10,000 add_edge calls into one task take about 10 ms.
    lab, name = fan_out_lab(10_000, sleep=0.0, sink=True)
    f = watch_fan_out(lab, name, tasks=10_002, timeout=480, shot="browser-fanout-10000.png")
    assert f["kernel_status"] == "completed", f
    assert f["status"] == "completed" and f["final_count"] == "10,002/10,002 done", f
    assert f["completed_lag_s"] is not None and f["completed_lag_s"] <= 5.0, f
    assert_group_painted_done(f)
