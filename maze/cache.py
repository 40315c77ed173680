"""Opt-in result caching across runs (``@task(cache=True)``), stored with joblib.

Results are kept by task fingerprint (:mod:`maze.core.fingerprint`) in a
joblib ``Memory`` store: the same code on the same inputs is not run again,
in this session or a later one. Location: ``MaClient(cache_dir=...)``, else
``$MAZE_CACHE``, else ``$XDG_CACHE_HOME/maze`` (``~/.cache/maze``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def default_location() -> Path:
    if os.environ.get("MAZE_CACHE"):
        return Path(os.environ["MAZE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maze"


class JoblibStore:
    """A :class:`maze.core.protocol.ResultStore` on joblib's file-system store.

    The store is opened on first use: most clients never cache a result, and
    importing joblib costs a fresh interpreter a noticeable moment.
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = Path(location)
        self._opened: Any = None

    @property
    def _backend(self) -> Any:
        if self._opened is None:
            from joblib import Memory

            self._opened = Memory(self.location, verbose=0).store_backend
        return self._opened

    @staticmethod
    def _item(key: str) -> list[str]:
        return ["maze-results", key]

    def get(self, key: str) -> dict[str, Any] | None:
        if not self._backend.contains_item(self._item(key)):
            return None
        try:
            found: dict[str, Any] = self._backend.load_item(self._item(key), verbose=0)
            return found
        except Exception:  # noqa: BLE001 - a damaged or foreign entry: recompute
            return None

    def put(self, key: str, result: dict[str, Any]) -> None:
        self._backend.dump_item(self._item(key), dict(result), verbose=0)

    def clear(self) -> None:
        self._backend.clear_item(["maze-results"])
