"""The package surface and its layering rules."""

from __future__ import annotations

import ast
import subprocess
import sys

import maze


def test_exported_members_are_complete_and_sorted():
    modules = {name for name in maze._SUBMODULES} | {"annotations"}   # subpackages appear once imported
    public = {name for name in dir(maze) if not name.startswith("_")} - modules
    assert set(maze.__all__) - {"__version__"} == public
    assert maze.__all__ == sorted(maze.__all__, key=str.lower) or maze.__all__ == sorted(maze.__all__)


def _imported(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds after running ``statement``."""
    code = f"import sys; {statement}; print([m for m in {modules!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    found: list[str] = ast.literal_eval(out)
    return found


def test_core_imports_nothing_heavy():
    heavy = ("ray", "joblib", "ipywidgets", "graphviz", "maze.backends.local", "maze.notebook.widget")
    assert _imported("import maze, maze.core.scheduler, maze.core.workflow", heavy) == []


def test_a_worker_starts_without_the_schedulers_side_of_the_core():
    # A worker process boots on every cold start; what it imports is on the path to the first result.
    scheduling = ("maze.core.protocol", "maze.core.scheduler", "maze.core.task", "maze.core.run", "concurrent.futures")
    assert _imported("from maze.backends._worker import main", scheduling) == []


def test_core_never_imports_backends_or_notebook():
    from pathlib import Path

    core = Path(maze.__file__).parent / "core"
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith(("maze.backends", "maze.notebook")), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith(("maze.backends", "maze.notebook", "ray", "ipywidgets")) for a in node.names), path


def test_py_typed_ships():
    from pathlib import Path

    assert (Path(maze.__file__).parent / "py.typed").exists()


def test_subpackages_are_attributes_after_a_plain_import():
    code = "import maze; print(maze.core.__name__, maze.client.__name__, maze.notebook.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["maze.core", "maze.client", "maze.notebook"]
