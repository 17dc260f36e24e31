"""The real-redis-server harness: fixtures, independent clients, skip/fail policy, failover."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis
from servers import (
    CLUSTER_PASSWORD,
    TLS_PASSWORD,
    RedisFactory,
    redis_cli,
    redis_py,
    redis_py_cluster,
    require_redis,
    skip_or_fail,
    starting,
)

from certs import CertPaths
from client.embedded import LocalCluster, RedisNode, ServerStartError, start_standalone
from client.errors import ReplyError

pytestmark = pytest.mark.e2e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- standalone


def test_plain_ping(redis_plain: RedisNode) -> None:
    assert not redis_plain.tls
    assert redis_cli(redis_plain, "PING") == "PONG"
    with redis_py(redis_plain) as r:
        assert r.ping() is True
        r.set("harness:plain", "v1")
        assert r.get("harness:plain") == b"v1"
    assert redis_cli(redis_plain, "GET", "harness:plain") == "v1"


def test_tls_ping_with_password(redis_tls: RedisNode) -> None:
    assert redis_tls.tls
    assert redis_tls.password == TLS_PASSWORD
    with redis_py(redis_tls) as r:
        assert r.ping() is True
        r.set("harness:tls", "v2")
    assert redis_cli(redis_tls, "GET", "harness:tls") == "v2"


def test_tls_server_requires_the_password(redis_tls: RedisNode) -> None:
    # redis-py 8 speaks RESP3: HELLO without (or with a wrong) password is refused.
    for password in (None, "wrong"):
        with redis_py(redis_tls, password=password) as r, pytest.raises(redis.AuthenticationError):
            r.ping()
    assert "NOAUTH" in redis_cli(redis_tls, "PING", password="", check=False)


def test_tls_server_has_no_plaintext_port(redis_tls: RedisNode) -> None:
    assert redis_tls.call("CONFIG", "GET", "port") == [b"port", b"0"]
    with redis_py(redis_tls, ssl=False) as r, pytest.raises(redis.ConnectionError):
        r.ping()


def test_tls_client_cert_is_optional(redis_tls: RedisNode) -> None:
    with redis_py(redis_tls, ssl_certfile=None, ssl_keyfile=None) as r:
        assert r.ping() is True


def test_embedded_call_helper(redis_tls: RedisNode) -> None:
    assert redis_tls.call("ECHO", b"\x00\r\nbin") == b"\x00\r\nbin"
    assert redis_tls.call("INCRBY", "harness:counter", 0) == 0
    with pytest.raises(ReplyError, match="unknown command"):
        redis_tls.call("NO-SUCH-COMMAND")


# --------------------------------------------------------------------------- cluster


@pytest.mark.cluster
def test_cluster_slots_show_three_masters_with_replicas(redis_cluster: LocalCluster) -> None:
    assert len(redis_cluster.masters()) == 3
    assert len(redis_cluster.replicas()) == 3
    for node in redis_cluster.nodes:
        slots = json.loads(redis_cli(node, "--json", "CLUSTER", "SLOTS", cluster_mode=False))
        assert len(slots) == 3
        covered = sum(end - start + 1 for start, end, *_ in slots)
        assert covered == 16384
        master_ports = {entry[2][1] for entry in slots}
        assert master_ports == {m.port for m in redis_cluster.masters()}
        replica_ports = {r[1] for entry in slots for r in entry[3:]}
        assert replica_ports == {r.port for r in redis_cluster.replicas()}
        assert all(len(entry) == 4 for entry in slots)  # exactly one replica per range


@pytest.mark.cluster
def test_cluster_state_ok_on_every_node(redis_cluster: LocalCluster) -> None:
    for node in redis_cluster.nodes:
        info = redis_cli(node, "CLUSTER", "INFO", cluster_mode=False)
        assert "cluster_state:ok" in info.splitlines()
        assert "cluster_known_nodes:6" in info.splitlines()


@pytest.mark.cluster
def test_cluster_roles_match_cluster_nodes(redis_cluster: LocalCluster) -> None:
    table = redis_cli(redis_cluster, "CLUSTER", "NODES", cluster_mode=False)
    by_id = {line.split()[0]: line.split() for line in table.splitlines()}
    assert len(by_id) == 6
    for node in redis_cluster.nodes:
        assert node.node_id in by_id
        flags = by_id[node.node_id][2]
        assert ("slave" in flags) == (node.role == "replica")
        assert node.tls
        assert node.password == CLUSTER_PASSWORD


@pytest.mark.cluster
def test_cluster_independent_clients_route_keys(redis_cluster: LocalCluster) -> None:
    keys = [f"harness:{i}" for i in range(20)]  # spread over all three masters
    for key in keys:
        assert redis_cli(redis_cluster, "SET", key, key.upper()) == "OK"
    with redis_py_cluster(redis_cluster) as rc:
        assert [rc.get(k) for k in keys] == [k.upper().encode() for k in keys]


# --------------------------------------------------------------------------- policy and failures


def test_skip_or_fail_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server here"):
        skip_or_fail("no server here")


def test_skip_or_fail_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no server here.*CI=true"):
        skip_or_fail("no server here")


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", None)])
def test_missing_redis_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException] | None
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no redis-server on PATH
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    monkeypatch.setenv("CI", ci)
    expected = outcome or pytest.skip.Exception
    with pytest.raises(expected, match=r"redis-server not found.*apt-get install"):
        require_redis()


def test_start_failure_shows_log_tail(certs_dir: CertPaths, tmp_path: Path) -> None:
    require_redis()
    with pytest.raises(ServerStartError) as info:
        start_standalone(
            tls=False,
            password=None,
            certs=None,
            workdir=tmp_path,
            extra_config={"no-such-directive": "1"},
        )
    assert "exited" in str(info.value)
    assert "no-such-directive" in info.value.log_tail

    failed = pytest.raises(pytest.fail.Exception, match=r"(?s)could not start.*no-such-directive")
    with failed, starting("a broken server"):
        start_standalone(
            tls=False,
            password=None,
            certs=None,
            workdir=tmp_path / "again",
            extra_config={"no-such-directive": "1"},
        )


def test_factory_stops_its_servers(redis_factory: RedisFactory) -> None:
    node = redis_factory.standalone(tls=True, password="p")
    assert redis_cli(node, "PING") == "PONG"
    pid = node.pid
    redis_factory.close()
    assert node.process.returncode is not None
    assert not _pid_alive(pid)


def test_stop_escalates_to_sigkill(redis_factory: RedisFactory) -> None:
    node = redis_factory.standalone()
    node.process.send_signal(signal.SIGSTOP)  # SIGTERM alone cannot stop it now...
    try:
        node.stop(timeout=0.2)  # ...but stop() also sends SIGCONT, then SIGKILL if needed
    finally:
        node.process.send_signal(signal.SIGCONT)
    assert node.process.returncode is not None


def test_owned_temp_dir_is_removed() -> None:
    require_redis()
    node = start_standalone(tls=False, password=None, certs=None)
    try:
        assert redis_cli(node, "PING") == "PONG"
        root = node.cleanup_dir
        assert root is not None
        assert node.workdir.is_relative_to(root)
    finally:
        node.stop()
    assert not root.exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_private_cluster_failover_and_restart(redis_factory: RedisFactory) -> None:
    cluster = redis_factory.cluster(node_timeout_ms=1000)
    victim = cluster.masters()[0]
    victim_id = victim.node_id
    victim.kill()
    assert not victim.alive()

    deadline = time.monotonic() + 30
    promoted = None
    while promoted is None:
        others = [n for n in cluster.nodes if n.alive()]
        for line in redis_cli(others[0], "CLUSTER", "NODES", cluster_mode=False).splitlines():
            fields = line.split()
            if fields[0] == victim_id and "fail" in fields[2].split(","):
                promoted = next(
                    (
                        n
                        for n in others
                        if n.info("replication").get("role") == "master"
                        and n not in cluster.masters()
                    ),
                    None,
                )
        if promoted is None:
            assert time.monotonic() < deadline, "no replica was promoted within 30 s"
            time.sleep(0.1)

    victim.restart()
    cluster.wait_healthy(timeout=30)
    assert victim.role == "replica"
    assert promoted.role == "master"
    assert victim.node_id == victim_id
