"""Backends execute tasks; the scheduler in :mod:`maze.core` decides what runs.

Each backend is one module implementing :class:`maze.core.protocol.Backend`
and is imported only when chosen, so ``import maze`` never imports Ray:

========  ===============================  ==========================================
name      class                            runs tasks in
========  ===============================  ==========================================
joblib    ``local.LocalBackend``           worker processes on this machine (default)
local     ``local.LocalBackend``           (the same)
ray       ``ray.RayBackend``               a Ray cluster, started for you or joined
inline    ``inline.InlineBackend``         one thread of this process (debugging)
========  ===============================  ==========================================

Third-party backends register under the entry-point group ``maze.backends``.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from maze.core.errors import UnknownBackendError

if TYPE_CHECKING:   # a worker process imports this package, and needs none of the protocol
    from maze.core.protocol import Backend

_BUILTIN = {
    "joblib": "maze.backends.local:LocalBackend",
    "local": "maze.backends.local:LocalBackend",
    "ray": "maze.backends.ray:RayBackend",
    "inline": "maze.backends.inline:InlineBackend",
}


@lru_cache(maxsize=1)
def _plugins() -> dict[str, str]:
    from importlib.metadata import entry_points  # slow to import; only needed here

    return {ep.name: ep.value for ep in entry_points(group="maze.backends")}


def available() -> list[str]:
    """Names accepted by ``MaClient(backend=...)``."""
    return sorted({*_BUILTIN, *_plugins()})


def create_backend(name: str, **options: Any) -> Backend:
    """Import and construct the backend registered as ``name``."""
    target = _BUILTIN.get(name) or _plugins().get(name)
    if target is None:
        raise UnknownBackendError(
            f"{name!r} is not a maze backend; available: {', '.join(available())}"
        )
    module, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    backend: Backend = factory(**options)
    return backend
