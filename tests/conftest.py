"""Shared fixtures: one client per backend, reused by the tests of a module.

``client`` runs a test on every backend (the conformance suite);
``stopping_client`` on the backends that run tasks in processes they can
stop (cancel, timeouts, dead workers). The Ray backend shares one private
local Ray for the whole session, started on 127.0.0.1 with two declared
(fake) GPUs of 8000 MB.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

# Keep any Ray a test starts on loopback, private and quiet, before Ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("RAY_ADDRESS", None)
# Runs of the test session go to a history of their own, not the user's.
_STATE = tempfile.mkdtemp(prefix="maze-test-state-")
os.environ["MAZE_HISTORY"] = os.path.join(_STATE, "history.sqlite3")
os.environ["MAZE_CACHE"] = os.path.join(_STATE, "cache")
# Modules a test writes, edits and reloads: on the path before any client starts, so that workers find them.
MODULES = os.path.join(_STATE, "modules")
os.makedirs(MODULES)
sys.path.insert(0, MODULES)

from maze import MaClient  # noqa: E402

BACKENDS = ["joblib", "inline", "ray"]
STOPPING_BACKENDS = ["joblib", "ray"]
RAY_RESOURCES = {"cpu": 2, "gpu": 2, "gpu_mem": 8000}


@pytest.fixture(scope="session")
def ray_client():
    with MaClient(backend="ray", resources=RAY_RESOURCES) as c:
        yield c


def _client_for(request: pytest.FixtureRequest, name: str):
    if name == "ray":
        yield request.getfixturevalue("ray_client")
        return
    with MaClient(backend=name) as c:
        yield c


@pytest.fixture(scope="module", params=BACKENDS)
def client(request: pytest.FixtureRequest):
    yield from _client_for(request, request.param)


@pytest.fixture(scope="module", params=STOPPING_BACKENDS)
def stopping_client(request: pytest.FixtureRequest):
    yield from _client_for(request, request.param)


@pytest.fixture(scope="module")
def local_client():
    with MaClient() as c:
        yield c
