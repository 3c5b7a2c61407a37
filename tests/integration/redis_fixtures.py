"""pytest fixtures running a real redis-server (see ``redis_service.py``).

Import the ones a test module needs::

    from .redis_fixtures import redis_cluster, redis_server, redis_server_aof

Without ``redis-server``/``redis-cli`` on PATH (Debian: ``apt-get install
redis-server``) or the ``redis`` Python package, the tests using these
fixtures are skipped, unless ``CI=true``: then they fail, since CI must
install them (``.ci/run`` does).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator

import pytest

from .redis_service import RedisCluster, RedisServer


def require_redis() -> None:
    """Skip the test (fail it under ``CI=true``) unless Redis can be run."""
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    problems = []
    if missing:
        problems.append(f"{' and '.join(missing)} not on PATH (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        problems.append("the redis Python package is not installed (pip install 'redis[hiredis]')")
    if not problems:
        return
    reason = "; ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} -- CI must install it")
    pytest.skip(f"{reason}; with CI=true this is a failure")


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A started redis-server (no persistence); stopped after the test."""
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_server_aof(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A started redis-server with ``appendonly yes``, ``appendfsync always``:
    what it acknowledged survives ``kill()`` + ``restart()``."""
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis-aof"), appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster (all slots covered, ``cluster_state:ok``),
    shared by the tests of a module; stopped after them."""
    require_redis()
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


__all__ = ["redis_cluster", "redis_server", "redis_server_aof", "require_redis"]
