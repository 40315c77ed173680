"""Shared fixtures: one client per backend, reused by the tests of a module."""

from __future__ import annotations

import os

import pytest

from maze import MaClient

# Every behaviour test runs on each of these. The Ray backend joins this list
# where Ray is installed (see test_ray.py for its cluster fixture).
BACKENDS = ["joblib", "inline"]


@pytest.fixture(scope="module", params=BACKENDS)
def client(request: pytest.FixtureRequest):
    with MaClient(backend=request.param) as c:
        yield c


@pytest.fixture(scope="module")
def local_client():
    with MaClient() as c:
        yield c


def pytest_configure(config: pytest.Config) -> None:
    # Keep any Ray a test starts on loopback and out of other users' clusters.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
