"""Showing runs in Jupyter: the live DAG next to ``show_results``' printed lines.

Importing this module is cheap; ipywidgets, anywidget and graphviz are
imported only when a picture is actually made.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from maze.core.plan import Plan
from maze.core.protocol import RunView


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget front end may be listening)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class NotebookViewer:
    """What ``MaWorkflow`` calls to show runs; see :class:`maze.core.protocol.Viewer`."""

    def __init__(self) -> None:
        self._told = False   # the user has been told why there is no widget (once is enough)

    def graph(self, plan: Plan, run: RunView | None = None) -> Any:
        try:
            from .widget import DagWidget
        except ImportError as exc:
            raise ImportError(
                f"the DAG widget needs {exc.name}, which is not installed (it comes with maze: "
                "reinstall with: pip install --force-reinstall maze-dag)"
            ) from exc
        return DagWidget(plan, run)

    def watch(self, run: RunView) -> Callable[[], None] | None:
        """Display the live DAG of ``run`` in the current cell, if in a notebook.

        Returns what ``show_results`` calls when the run has ended: it re-sends the
        cell's output from the caller's thread, so that viewers without a widget
        front end (nbconvert, nbviewer, GitHub) keep the final picture, not the
        first; sent later, from another thread, a notebook runner may already have
        moved on to the next cell and drop it. None if nothing was shown.
        """
        if not in_notebook():
            return None
        try:
            widget = self.graph(run.plan, run)
        except ImportError as exc:
            # No widget libraries: show_results prints progress lines instead; say why, once.
            if not self._told:
                self._told = True
                print(f"maze: no live DAG in this notebook: {exc}", file=sys.stderr)
            return None
        from IPython.display import display

        handle = display(widget, display_id=True)
        if handle is None:
            return None

        def show_final() -> None:
            widget.wait()
            handle.update(widget)

        return show_final
