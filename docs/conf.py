"""Sphinx configuration of maze's documentation site.

Build it with ``bash scripts/docs.sh`` (or ``sphinx-build -W -n docs docs/_build/html``).

The pages are the Markdown files in this folder (read by MyST), the tutorial notebooks
(``docs/tutorials/`` links to ``notebooks/``), executed by myst-nb at build time so each page
shows its outputs and the DAG pictures, and an API reference written from docstrings.

The build works offline: intersphinx is off unless ``MAZE_DOCS_INTERSPHINX=1`` (under ``-W`` a
failed inventory download would fail the build), and references to the standard library and to
third-party types in signatures are accepted unresolved (see ``nitpick_ignore_regex``).
"""

from __future__ import annotations

import atexit
import importlib
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import maze  # noqa: E402  (after the path is set, so a source checkout documents itself)

# sphinx-autodoc-typehints still calls an API Sphinx 10 will remove; that is its concern, not a
# problem of these pages, and the notice would repeat for every docstring.
warnings.filterwarnings("ignore", message=".*set_application.*")

project = "maze"
author = "the maze authors"
copyright = "2026, the maze authors"
release = maze.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
    "sphinx.ext.viewcode",
]
if os.environ.get("MAZE_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {"python": ("https://docs.python.org/3", None)}

exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "images/*.svg"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}

html_theme = "furo"
html_title = f"maze {release}"
html_static_path = ["_static"]
html_css_files = ["maze.css"]

# -- MyST and notebooks -------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Every tutorial runs at each build, so its page shows what the code does today.
nb_execution_mode = "force"
nb_execution_timeout = 180  # per cell; the slowest tutorial cell takes a few seconds
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# The Ray tutorial starts a private Ray (several seconds, several processes); its page is
# rendered from the outputs committed in notebooks/06-ray.ipynb.
nb_execution_excludepatterns = ["tutorials/06-ray.ipynb"]
# A static page has no widget front end: show each DAG widget's static picture
# (its text/html, or image/svg+xml) instead of an empty widget placeholder.
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]
nb_merge_streams = True

# The tutorials' runs go to a private, throw-away history and result cache, not the reader's.
_scratch = Path(tempfile.mkdtemp(prefix="maze-docs-"))
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
os.environ["MAZE_HISTORY"] = str(_scratch / "runs.sqlite3")
os.environ["MAZE_CACHE"] = str(_scratch / "cache")

# -- API reference ------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
autodoc_typehints = "none"  # sphinx-autodoc-typehints writes the types into the descriptions
typehints_use_signature = False
typehints_use_signature_return = False
always_document_param_types = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = True
nitpick_ignore_regex = [
    # The standard library and third-party packages: resolvable only with intersphinx.
    ("py:.*", r"(typing|typing_extensions|collections\.abc|os|pathlib|io|types|threading|concurrent\.futures)\..*"),
    ("py:.*", r"(numpy|ray|ipywidgets|anywidget|traitlets|joblib)\..*"),
    ("py:class", r"(Any|Path|TextIO|Mapping|Iterator|Iterable|Callable|Sequence|PathLike|Future|NoneType|ModuleType)"),
    ("py:class", r"(str|int|float|bool|bytes|dict|list|tuple|set|frozenset|object|type|Exception|BaseException)"),
    ("py:(exc|class)", r"(ValueError|TypeError|KeyError|RuntimeError|TimeoutError|KeyboardInterrupt|ImportError|LookupError|OSError)"),
    # MaClient(history=...)'s sentinel for "the default location" (documented in the parameter's text).
    ("py:class", r"maze\.client\._Default"),
]


def _public_target(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a reference the way a reader of the docstring means it.

    Type hints name a public class by its defining module (``maze.core.workflow.MaWorkflow``)
    while the reference documents it where users import it (``maze.MaWorkflow``); docstrings
    also say ``RunState.interrupted`` for short. A target that is unresolved as written is
    tried as a public name, then as the unique documented object whose name ends with it.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target:
        return None
    domain = env.get_domain("py")
    candidates: list[str] = []
    parts = target.split(".")
    if parts[0] == "maze":
        candidates += [".".join(["maze", *parts[i:]]) for i, part in enumerate(parts) if part in maze.__all__]
    suffix = "." + target.lstrip(".~")
    candidates += [name for name in domain.objects if name.startswith("maze.") and name.endswith(suffix)]
    found = sorted({c for c in candidates if c != target and c in domain.objects})
    if len(found) == 1:
        return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], found[0], node, contnode)
    if len(found) == 0 and _exists(target):
        # A docstring naming an internal object that really exists (``maze.core.workflow.show_progress``):
        # shown as code without a link, since internals have no page. A name that exists nowhere
        # (a typo, a renamed function) is still an error under nitpicky.
        return contnode
    return None


def _exists(dotted: str) -> bool:
    """Whether ``dotted`` names an object inside maze (a module, then attributes)."""
    parts = dotted.lstrip("~.").split(".")
    if parts[0] != "maze":
        return False
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# Classes readers receive but never construct: their __init__ parameters are internal
# (the engine, the viewer, ...), so the parameter list is left out of their entries.
_NOT_CONSTRUCTED = {
    "maze.MaWorkflow", "maze.MaTask", "maze.TaskOutputs", "maze.TaskOutput", "maze.TaskFunction",
    "maze.core.messages.MessageLog", "maze.core.run.RunState", "maze.core.plan.Plan",
    "maze.core.task.TaskSpec", "maze.core.protocol.Backend",
}


def _drop_constructor_fields(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what not in {"class", "exception"} or name not in _NOT_CONSTRUCTED:
        return
    kept: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith((":param ", ":type ")):
            skipping = True
            continue
        if skipping and line.startswith("   "):
            continue  # the continuation of a dropped field
        skipping = False
        kept.append(line)
    lines[:] = kept


def _signature(app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None,
               return_annotation: str | None) -> tuple[str | None, str | None] | None:
    if what == "class" and name in _NOT_CONSTRUCTED:
        return "", None  # no constructor signature: readers receive these objects, never build them
    if signature and "maze.client._Default" in signature:
        # MaClient(history=...)'s sentinel reads as a class repr; say what it means instead.
        return re.sub(r"<class 'maze\.client\._Default'>", "<default location>", signature), return_annotation
    return None


def setup(app: Any) -> None:
    app.connect("missing-reference", _public_target)
    # Before sphinx-autodoc-typehints (priority 500), whose own signature would win otherwise.
    app.connect("autodoc-process-signature", _signature, priority=400)
    # After sphinx-autodoc-typehints (priority 500) has added the fields.
    app.connect("autodoc-process-docstring", _drop_constructor_fields, priority=900)
