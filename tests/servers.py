"""Test-side helpers around :mod:`client.embedded`: real redis-server processes for tests.

Import from tests as ``from servers import redis_cli, redis_py`` (``tests/`` is on ``sys.path``
through ``tests/conftest.py``). The fixtures themselves live in ``tests/conftest.py``.

Nothing here uses our own client stack (client.connection, client.cluster, ...): the harness
and the independent checks must not depend on the code under test. Only ``certs`` and
``client.embedded`` (subprocess + blocking sockets) are used.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from certs import CertPaths
from client.embedded import (
    LocalCluster,
    RedisNode,
    ServerStartError,
    find_redis_cli,
    find_redis_server,
    start_cluster,
    start_standalone,
)
from client.errors import ConfigError

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = [
    "CLUSTER_PASSWORD",
    "TLS_PASSWORD",
    "RedisFactory",
    "is_ci",
    "redis_cli",
    "redis_py",
    "redis_py_cluster",
    "require_redis",
    "skip_or_fail",
    "starting",
]

TLS_PASSWORD = "tls-secret"
CLUSTER_PASSWORD = "cluster-secret"
_CLI_TIMEOUT = 60.0


def is_ci() -> bool:
    """True when the env says we run under CI (``CI=true``, as GitHub/GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test locally, but fail it under ``CI=true``: CI must never skip silently."""
    if is_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(reason)  # only outside CI: under CI=true the line above failed the test


def require_redis() -> str:
    """Path of redis-server (and check redis-cli); skip or fail (see :func:`skip_or_fail`)."""
    try:
        path = find_redis_server()
        find_redis_cli()
    except ConfigError as exc:
        skip_or_fail(str(exc))
    return path


@contextmanager
def starting(what: str) -> Iterator[None]:
    """Turn a start-up failure into one clear pytest failure that shows the server log tail."""
    try:
        yield
    except ServerStartError as exc:
        tail = f"\n--- redis-server log tail ---\n{exc.log_tail}" if exc.log_tail else ""
        pytest.fail(f"could not start {what}: {exc}{tail}", pytrace=False)
    except ConfigError as exc:
        skip_or_fail(f"could not start {what}: {exc}")


# Everything started through this module, so an interrupted run still stops it at exit.
_live_lock = threading.Lock()
_live: list[RedisNode | LocalCluster] = []


def _track(server: RedisNode | LocalCluster) -> None:
    with _live_lock:
        _live.append(server)


def _stop(server: RedisNode | LocalCluster) -> None:
    with _live_lock:
        if server in _live:
            _live.remove(server)
    server.stop()


@atexit.register
def _stop_all_at_exit() -> None:
    with _live_lock:
        leftovers = list(_live)
    for server in leftovers:
        _stop(server)


class RedisFactory:
    """Starts private, disposable servers for one test (or one session); :meth:`close` stops all.

    Servers get their directories under ``base`` (a pytest tmp dir), so logs survive a failure.
    """

    def __init__(self, base: Path, certs: CertPaths) -> None:
        self.base = base
        self.certs = certs
        self._started: list[RedisNode | LocalCluster] = []
        self._count = 0

    def _dir(self, kind: str) -> Path:
        self._count += 1
        path = self.base / f"{kind}-{self._count}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def standalone(
        self,
        *,
        tls: bool = False,
        password: str | None = None,
        extra_config: dict[str, str] | None = None,
    ) -> RedisNode:
        require_redis()
        what = f"{'TLS' if tls else 'plaintext'} standalone redis-server"
        with starting(what):
            node = start_standalone(
                tls=tls,
                password=password,
                certs=self.certs,
                workdir=self._dir("standalone"),
                extra_config=extra_config,
            )
        self._started.append(node)
        _track(node)
        return node

    def cluster(
        self,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        password: str = CLUSTER_PASSWORD,
        tls: bool = True,
        node_timeout_ms: int = 2000,
    ) -> LocalCluster:
        require_redis()
        what = f"{'TLS' if tls else 'plaintext'} cluster ({masters}x{1 + replicas_per_master})"
        with starting(what):
            cluster = start_cluster(
                masters=masters,
                replicas_per_master=replicas_per_master,
                password=password,
                certs=self.certs,
                tls=tls,
                workdir=self._dir("cluster"),
                node_timeout_ms=node_timeout_ms,
            )
        self._started.append(cluster)
        _track(cluster)
        return cluster

    def close(self) -> None:
        while self._started:
            _stop(self._started.pop())


# --------------------------------------------------------------------------- independent clients


def _target(server: RedisNode | LocalCluster) -> tuple[RedisNode, CertPaths | None, str | None]:
    if isinstance(server, LocalCluster):
        return server.seed, server.certs, server.password
    return server, server.certs, server.password


def redis_cli(
    server: RedisNode | LocalCluster,
    *args: str | int | bytes,
    tls: bool | None = None,
    password: str | None = None,
    cluster_mode: bool | None = None,
    input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
    check: bool = True,
) -> str:
    """Run the real ``redis-cli`` against a node (or a cluster's seed node); return its stdout.

    ``tls`` and ``password`` default to the server's own settings; a cluster gets ``-c``
    unless ``cluster_mode=False``. stdout is not a tty, so the output is redis-cli's raw form
    (``PONG``, ``1``, one array element a line), with the trailing newline stripped. A non-zero
    exit raises ``AssertionError`` with stderr, unless ``check=False``. Password via
    ``REDISCLI_AUTH`` so it never shows in ``ps``.
    """
    node, certs, default_password = _target(server)
    use_tls = node.tls if tls is None else tls
    secret = default_password if password is None else password
    if cluster_mode is None:
        cluster_mode = isinstance(server, LocalCluster)
    cmd = [find_redis_cli(), "-h", node.host, "-p", str(node.port)]
    if use_tls:
        if certs is None:
            raise AssertionError(f"redis_cli: TLS requested for {node.address} but no certs")
        cmd += ["--tls", "--cacert", str(certs.ca)]
        cmd += ["--cert", str(certs.client_cert), "--key", str(certs.client_key)]
    if cluster_mode:
        cmd.append("-c")
    words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
    cmd += words
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    if secret:
        env["REDISCLI_AUTH"] = secret
    data = input.encode() if isinstance(input, str) else input
    done = subprocess.run(
        cmd,
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=_CLI_TIMEOUT,
        check=False,
    )
    out = done.stdout.decode("utf-8", "replace")
    if check and done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise AssertionError(
            f"redis-cli {' '.join(words)} on {node.address} exited {done.returncode}: {err}"
        )
    return out.removesuffix("\n")


def _ssl_kwargs(certs: CertPaths | None) -> dict[str, Any]:
    if certs is None:
        raise AssertionError("TLS server without certs")
    return {
        "ssl": True,
        "ssl_ca_certs": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
    }


def redis_py(server: RedisNode | LocalCluster, **kw: Any) -> redis.Redis:
    """A configured redis-py client (``redis.Redis``) for one node (or a cluster's seed node).

    Keyword arguments override the defaults (host, port, password, TLS files, timeouts, and
    ``retry``: by default redis-py does NOT retry here, so a refused connection fails at once).
    The caller closes it (``with redis_py(node) as r:``).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    node, certs, password = _target(server)
    options: dict[str, Any] = {
        "host": node.host,
        "port": node.port,
        "password": password,
        "socket_timeout": 10,
        "socket_connect_timeout": 10,
        "retry": Retry(NoBackoff(), 0),
    }
    if node.tls:
        options.update(_ssl_kwargs(certs))
    options.update(kw)
    return redis.Redis(**options)


def redis_py_cluster(cluster: LocalCluster, **kw: Any) -> redis.cluster.RedisCluster:
    """A configured redis-py cluster client (``redis.cluster.RedisCluster``)."""
    import redis.cluster

    seed = cluster.seed
    options: dict[str, Any] = {
        "host": seed.host,
        "port": seed.port,
        "password": cluster.password,
        "socket_timeout": 10,
        "socket_connect_timeout": 10,
    }
    if cluster.tls:
        options.update(_ssl_kwargs(cluster.certs))
    options.update(kw)
    return redis.cluster.RedisCluster(**options)
