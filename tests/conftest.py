"""Shared pytest setup: hypothesis profiles and real-redis-server fixtures.

Fixtures (all sync, so they work from trio tests too):

- ``certs_dir`` (session): a local PKI (:class:`certs.CertPaths`), generated once.
- ``redis_plain`` (session): plaintext standalone node, no password.
- ``redis_tls`` (session): TLS-only standalone node, password ``tls-secret`` (``.password``).
- ``redis_cluster`` (session): TLS cluster, 3 masters + 3 replicas, password ``cluster-secret``;
  handed out only once every node agrees the cluster is fully up. Do not kill its nodes:
  use ``redis_factory.cluster()`` for failover tests.
- ``redis_factory`` (function): private disposable servers, stopped after the test.

Servers start lazily on first use and are stopped by PID at session end. A missing
redis-server skips locally and fails under ``CI=true``. Independent clients for assertions:
``from servers import redis_cli, redis_py, redis_py_cluster``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from servers import (
    CLUSTER_PASSWORD,
    TLS_PASSWORD,
    RedisFactory,
    is_ci,
)

from certs import CertPaths, generate
from client.embedded import LocalCluster, RedisNode

__all__: list[str] = []

settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if is_ci() else "default"))


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def _session_servers(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: CertPaths
) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path_factory.mktemp("redis-session"), certs_dir)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def redis_plain(_session_servers: RedisFactory) -> RedisNode:
    return _session_servers.standalone(tls=False, password=None)


@pytest.fixture(scope="session")
def redis_tls(_session_servers: RedisFactory) -> RedisNode:
    return _session_servers.standalone(tls=True, password=TLS_PASSWORD)


@pytest.fixture(scope="session")
def redis_cluster(_session_servers: RedisFactory) -> LocalCluster:
    return _session_servers.cluster(
        masters=3, replicas_per_master=1, password=CLUSTER_PASSWORD, tls=True
    )


@pytest.fixture
def redis_factory(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: CertPaths
) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path_factory.mktemp("redis-private"), certs_dir)
    try:
        yield factory
    finally:
        factory.close()
