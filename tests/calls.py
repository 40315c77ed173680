"""Building a backend's ``TaskCall`` by hand, for the tests that drive a backend without a scheduler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maze.core.protocol import TaskCall
from maze.core.resources import Resources
from maze.core.shipping import ship


def call_taking_x(func: Callable[..., Any], name: str, x: object, outputs: tuple[str, ...], *,
                  timeout: float | None = None, **constants: Any) -> TaskCall:
    """Call ``name`` (of run ``run``, attempt 1) of ``func``; ``x`` a plain int, else a backend's handle."""
    inputs = {}
    if isinstance(x, int):
        constants["x"] = x
    else:
        inputs["x"] = x
    return TaskCall(
        call_id=f"run:{name}:1", run_id="run", task_id=name, task_name=name, attempt=1, func=func,
        code=ship(func), constants=constants, inputs=inputs, outputs=outputs, resources=Resources(),
        timeout=timeout,
    )
