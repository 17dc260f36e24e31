"""``redis-client cli -c --read-from master|replica|prefer-replica`` against real TLS clusters.

The session cluster (3 masters + 3 replicas) is shared: these tests write their own keys and
reset only INFO commandstats, which is how they see where each command ran. A cluster
without replicas (private, from ``redis_factory``) shows the error and the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from servers import RedisFactory, redis_py, redis_py_cluster
from test_cli import Terminal, cli, cluster_flags, terminal  # noqa: F401 - terminal: fixture

from client.embedded import LocalCluster, RedisNode
from client.slots import key_slot, tag_for_slot

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@dataclass(frozen=True)
class Shard:
    master: RedisNode
    replica: RedisNode | None
    keys: tuple[str, ...]  # keys of this shard's slots


def shards(cluster: LocalCluster, name: str, count: int = 3) -> list[Shard]:
    """Every shard with ``count`` keys in its slots, masters in CLUSTER SLOTS order."""
    replicas: dict[int, RedisNode] = {}
    for node in cluster.replicas():
        replicas[int(node.info("replication")["master_port"])] = node
    found = []
    seen: set[int] = set()
    for entry in cast("list[list[Any]]", cluster.seed.call("CLUSTER", "SLOTS")):
        start, port = int(entry[0]), int(entry[2][1])
        if port in seen:
            continue
        seen.add(port)
        keys = tuple(f"{{{tag_for_slot(start + i)}}}:{name}" for i in range(count))
        found.append(Shard(cluster.node_by_port(port), replicas.get(port), keys))
    return found


def reset_stats(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        node.call("CONFIG", "RESETSTAT")


def calls(node: RedisNode, command: str, field: str = "calls") -> int:
    text = node.info("commandstats").get(f"cmdstat_{command}", "")
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    return int(fields.get(field, 0))


def replicate(cluster: LocalCluster) -> None:
    """Wait until every master's writes reached its replica."""
    for master in cluster.masters():
        assert master.call("WAIT", cluster.replicas_per_master, 5000) == (
            cluster.replicas_per_master
        )


def where(node: RedisNode) -> str:
    return f"127.0.0.1:{node.port}"


def test_gets_run_on_replicas_and_sets_on_masters(redis_cluster: LocalCluster) -> None:
    found = shards(redis_cluster, "clirr:get")
    with redis_py_cluster(redis_cluster) as rc:
        for shard in found:
            for key in shard.keys:
                rc.set(key, key)
    replicate(redis_cluster)
    reset_stats(redis_cluster)

    script = []
    expected = []
    for shard in found:  # reads: a replica of each key's master answers
        assert shard.replica is not None
        for key in shard.keys:
            script.append(f"GET {key}")
            expected += [f"-> Read from replica {where(shard.replica)}", key]
    current = redis_cluster.seed.port
    for shard in found:  # writes: the masters, redirects as redis-cli prints them
        key = shard.keys[0] + ":w"
        script.append(f"SET {key} x")
        if shard.master.port != current:
            slot = key_slot(key.encode())
            expected.append(f"-> Redirected to slot [{slot}] located at {where(shard.master)}")
            current = shard.master.port
        expected.append("OK")
    script.append("PING")  # neither a read nor a write: reads may leave the master again
    expected.append("PONG")
    for shard in found:
        assert shard.replica is not None
        script.append(f"GET {shard.keys[0]}")
        expected += [f"-> Read from replica {where(shard.replica)}", shard.keys[0]]

    done = cli(
        *cluster_flags(redis_cluster), "--read-from", "replica", stdin="\n".join(script).encode()
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.decode().splitlines() == expected

    for shard in found:
        assert shard.replica is not None
        assert calls(shard.master, "get") == 0
        assert calls(shard.master, "set") == 1
        assert calls(shard.replica, "get") == len(shard.keys) + 1
        assert calls(shard.replica, "get", "rejected_calls") == 0  # READONLY was sent
        assert calls(shard.replica, "set", "rejected_calls") == 0  # no SET of ours went there
        assert calls(shard.replica, "set") == 1  # the replication stream's


def test_read_your_writes(redis_cluster: LocalCluster) -> None:
    shard = shards(redis_cluster, "clirr:ryw", count=1)[1]
    assert shard.replica is not None
    (key,) = shard.keys
    with redis_py(shard.master) as r:
        r.set(key, "old")
    replicate(redis_cluster)
    reset_stats(redis_cluster)
    master, replica = where(shard.master), where(shard.replica)
    script = [
        f"SET {key} new",
        f"GET {key}",  # right after the write: the master, on the connection that wrote
        "MULTI",
        f"GET {key}",  # queued on the master
        "EXEC",
        f"GET {key}",  # still after the write (reads and EXEC do not end the window)
        "WAIT 1 5000",  # neither a read nor a write: the window ends
        f"WATCH {key}",
        f"GET {key}",  # a watched key is read where EXEC would check it
        "UNWATCH",
        f"GET {key}",
    ]
    done = cli(
        *cluster_flags(redis_cluster),
        "--no-raw",
        "--read-from",
        "prefer-replica",
        stdin="\n".join(script).encode(),
    )
    assert (done.returncode, done.stderr) == (0, b"")
    lines = done.stdout.decode().splitlines()
    if lines[0].startswith("-> Redirected"):
        lines = lines[1:]
    assert lines == [
        "OK",
        f"-> Read from master {master} (after a write)",
        '"new"',
        "OK",
        "QUEUED",
        '1) "new"',
        f"-> Read from master {master} (after a write)",
        '"new"',
        "(integer) 1",
        "OK",
        f"-> Read from master {master} (after WATCH)",
        '"new"',
        "OK",
        f"-> Read from replica {replica}",
        '"new"',
    ]
    assert calls(shard.master, "get") == 4
    assert calls(shard.replica, "get") == 1


def test_one_shot_names_the_node_on_stderr(redis_cluster: LocalCluster) -> None:
    shard = shards(redis_cluster, "clirr:one", count=1)[2]
    assert shard.replica is not None
    (key,) = shard.keys
    with redis_py(shard.master) as r:
        r.set(key, "v")
    replicate(redis_cluster)
    done = cli(*cluster_flags(redis_cluster), "--read-from", "replica", "-r", "2", "GET", key)
    assert done.returncode == 0
    assert done.stdout == b"v\nv\n"  # stdout keeps only the replies, for scripts
    note = f"-> Read from replica {where(shard.replica)}\n"
    assert done.stderr.decode() == note * 2
    write = cli(*cluster_flags(redis_cluster), "--read-from", "replica", "SET", key, "w")
    assert (write.stdout, write.stderr) == (b"OK\n", b"")  # writes: no note


def test_repl_prompt_shows_the_replica(
    redis_cluster: LocalCluster,
    terminal: Callable[..., Terminal],  # noqa: F811
) -> None:
    shard = shards(redis_cluster, "clirr:repl", count=1)[0]
    assert shard.replica is not None
    (key,) = shard.keys
    term = terminal(*cluster_flags(redis_cluster), "--read-from", "replica")
    term.expect(re.escape(f"{where(redis_cluster.seed)}> ".encode()))
    term.send(f"GET {key}\r".encode())
    term.expect(re.escape(f"-> Read from replica {where(shard.replica)}".encode()))
    term.expect(re.escape(f"{where(shard.replica)}> ".encode()))
    term.send(b"PING\r")  # keyless: the node in use, a master
    term.expect(b"PONG")
    term.expect(re.escape(f"{where(redis_cluster.seed)}> ".encode()))
    term.send(b"quit\r")
    assert term.wait() == 0


def test_read_from_needs_cluster_mode_and_a_known_policy(redis_cluster: LocalCluster) -> None:
    flags = cluster_flags(redis_cluster)
    standalone = [f for f in flags if f != "-c"]
    done = cli(*standalone, "--read-from", "replica", "PING")
    assert done.returncode == 2
    assert "-c" in done.stderr.decode()
    assert cli(*flags, "--read-from", "slave", "PING").returncode == 2
    assert cli(*flags, "--read-from", "MASTER", "PING").stdout == b"PONG\n"


@pytest.mark.slow
def test_no_replica_error_and_prefer_replica_fallback(redis_factory: RedisFactory) -> None:
    cluster = redis_factory.cluster(masters=3, replicas_per_master=0, tls=False, password="pw")
    shard = shards(cluster, "clirr:none", count=1)[0]
    (key,) = shard.keys
    with redis_py(shard.master) as r:
        r.set(key, "v")
    flags = [*cluster_flags(cluster)]

    done = cli(*flags, "--read-from", "replica", "GET", key)
    assert (done.returncode, done.stdout) == (1, b"")
    err = done.stderr.decode().strip()
    assert len(err.splitlines()) == 1
    assert "no healthy replica" in err
    assert where(shard.master) in err
    assert "prefer-replica" in err  # the hint

    piped = cli(*flags, "--read-from", "replica", stdin=f"GET {key}\nSET {key} w\n".encode())
    assert piped.stdout.endswith(b"OK\n")  # the read failed, the write ran, the run went on
    assert b"Read from" not in piped.stdout
    assert piped.stderr.decode().startswith("Error: no healthy replica")
    assert piped.returncode == 1

    fallback = cli(*flags, "--read-from", "prefer-replica", stdin=f"GET {key}\n".encode())
    assert fallback.returncode == 0
    assert fallback.stdout.decode() == (
        f"-> Read from master {where(shard.master)} (no healthy replica)\nw\n"
    )
