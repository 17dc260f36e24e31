"""Smart tunnel with ``read_from`` (issue 9) against real TLS clusters with replicas.

Where commands ran is read from each node's ``INFO commandstats`` (deltas after ``CONFIG
RESETSTAT``), never from the tunnel's own counters. The session cluster is shared: tests here
use their own keys and reset only INFO commandstats. Killing nodes and moving slots happen on
private clusters from ``redis_factory``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import trio
from test_tunnel_smart import GUARD, Smart, _migrate, in_thread, start_smart

from client.embedded import LocalCluster, RedisNode
from client.slots import key_slot, tag_for_slot
from client.topology import Node, Topology, parse_cluster_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def topology_of(cluster: LocalCluster) -> Topology:
    return parse_cluster_nodes(cluster.seed.call("CLUSTER", "NODES"))


def server(cluster: LocalCluster, node: Node) -> RedisNode:
    return cluster.node_by_port(node.port)


def key_on(node: Node, name: str, index: int = 0) -> str:
    """A key in ``node``'s first slot range (index picks the slot within it)."""
    start, _ = node.slots[0]
    return f"{{{tag_for_slot(start + index)}}}:{name}"


def command_stats(node: RedisNode) -> dict[str, dict[str, int]]:
    """INFO commandstats as {'get': {'calls': 3, 'rejected_calls': 0, ...}, ...}."""
    out: dict[str, dict[str, int]] = {}
    for name, text in node.info("commandstats").items():
        fields = dict(part.split("=", 1) for part in text.split(","))
        out[name.removeprefix("cmdstat_")] = {
            k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()
        }
    return out


def calls(node: RedisNode, command: str, field: str = "calls") -> int:
    return command_stats(node).get(command, {}).get(field, 0)


def reset_stats(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        if node.alive():
            node.call("CONFIG", "RESETSTAT")


def shards(cluster: LocalCluster) -> list[tuple[Node, RedisNode, RedisNode]]:
    """(master node, master server, its one replica's server) for every shard."""
    topo = topology_of(cluster)
    out = []
    for master in topo.masters():
        (replica,) = topo.replicas_of(master)
        out.append((master, server(cluster, master), server(cluster, replica)))
    return out


# --------------------------------------------------------------------------- session cluster


async def test_gets_on_replicas_sets_on_masters(
    redis_cluster: LocalCluster, nursery: trio.Nursery
) -> None:
    smart = await start_smart(nursery, redis_cluster, read_from="replica")
    layout = await in_thread(lambda: shards(redis_cluster))
    keys = {m.id: [key_on(m, f"rr:{i}", i) for i in range(4)] for m, _, _ in layout}
    await in_thread(lambda: reset_stats(redis_cluster))

    def body() -> None:
        with smart.client() as writer:
            for shard in keys.values():
                for key in shard:
                    assert writer.set(key, key)
            # every master's writes reached its replica before anyone reads
            assert writer.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        with smart.client() as reader:  # a new client: no write of its own to read back
            for shard in keys.values():
                for key in shard:
                    assert reader.get(key) == key.encode()
            everything = [k for shard in keys.values() for k in shard]
            assert reader.mget(everything) == [k.encode() for k in everything]
        for master, on_master, on_replica in layout:
            # the masters ran every SET of their shard (and the one in WAIT's marker script,
            # see tunnel.smart), and no read
            assert calls(on_master, "eval") == 1
            assert calls(on_master, "set") == 4 + 1
            assert calls(on_master, "get") == 0
            assert calls(on_master, "mget") == 0
            # the replicas ran every read (none refused: READONLY was sent), and their SETs
            # are the replication stream only (none of ours was refused)
            assert calls(on_replica, "get") == 4
            assert calls(on_replica, "get", "rejected_calls") == 0
            assert calls(on_replica, "mget") == 4  # the MGET split by slot: 4 slots here
            assert calls(on_replica, "set", "rejected_calls") == 0
            assert calls(on_replica, "set") == calls(on_master, "set"), master.address

    await in_thread(body)
    assert smart.counters.moved == 0


async def test_read_your_writes(redis_cluster: LocalCluster, nursery: trio.Nursery) -> None:
    smart = await start_smart(nursery, redis_cluster, read_from="replica")
    master, on_master, on_replica = (await in_thread(lambda: shards(redis_cluster)))[1]
    key = key_on(master, "ryw")
    await in_thread(lambda: reset_stats(redis_cluster))

    def body() -> None:
        expected_master = expected_replica = 0
        with smart.client() as r:
            for n in range(25):
                # a read right after the client's own write: the master, never stale
                pipe = r.pipeline(transaction=False)
                pipe.set(key, f"v{n}")
                pipe.get(key)
                pipe.get(key)
                assert pipe.execute() == [True, f"v{n}".encode(), f"v{n}".encode()]
                expected_master += 2
            assert r.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
            assert r.ping()  # a command that is neither a read nor a write ends the affinity
            assert r.get(key) == b"v24"
            expected_replica += 1
            assert (calls(on_master, "get"), calls(on_replica, "get")) == (
                expected_master,
                expected_replica,
            )
            # inside MULTI ... EXEC: the master
            pipe = r.pipeline(transaction=True)
            pipe.get(key)
            pipe.set(key, "in-multi")
            pipe.get(key)
            assert pipe.execute() == [b"v24", True, b"in-multi"]
            expected_master += 2
            assert r.get(key) == b"in-multi"  # EXEC wrote: still the master
            expected_master += 1
            # WATCHed keys are read from the master until UNWATCH
            assert r.ping()
            r.execute_command("WATCH", key)  # type: ignore[no-untyped-call]
            assert r.get(key) == b"in-multi"
            expected_master += 1
            r.execute_command("UNWATCH")  # type: ignore[no-untyped-call]
            assert r.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
            assert r.ping()
            assert r.get(key) == b"in-multi"
            expected_replica += 1
        assert (calls(on_master, "get"), calls(on_replica, "get")) == (
            expected_master,
            expected_replica,
        )

    await in_thread(body)


# --------------------------------------------------------------------------- private clusters


async def test_a_killed_replica_moves_reads_to_the_master_or_to_an_error(
    redis_factory: Any, nursery: trio.Nursery
) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    prefer = await start_smart(nursery, cluster, read_from="prefer-replica")
    strict = await start_smart(nursery, cluster, read_from="replica")
    layout = await in_thread(lambda: shards(cluster))
    (victim_master, on_master, victim), (other, _, other_replica) = layout[0], layout[1]
    key, other_key = key_on(victim_master, "kill"), key_on(other, "kill")

    def before() -> None:
        with prefer.client() as w:
            assert w.set(key, "v")
            assert w.set(other_key, "w")
            assert w.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        reset_stats(cluster)
        for smart in (prefer, strict):
            with smart.client() as r:  # both tunnels now have a link to the victim
                assert r.get(key) == b"v"
        assert calls(victim, "get") == 2
        assert calls(on_master, "get") == 0
        victim.kill()

    await in_thread(before)

    def after() -> None:
        # prefer-replica: the same reads, now served by the master, and nothing hangs
        with prefer.client(socket_timeout=GUARD) as r:
            for _ in range(10):
                assert r.get(key) == b"v"
        assert calls(on_master, "get") == 10
        # replica: a clear error at once, and the other shards still read from replicas
        with strict.client(socket_timeout=GUARD) as r:
            for _ in range(3):
                with pytest.raises(redis.ResponseError, match="no healthy replica") as caught:
                    r.get(key)
                assert str(victim.port) in str(caught.value)
                assert "prefer-replica" in str(caught.value)
            before_other = calls(other_replica, "get")
            assert r.get(other_key) == b"w"
            assert calls(other_replica, "get") == before_other + 1
        assert calls(on_master, "get") == 10  # the strict tunnel never fell back

    with trio.fail_after(GUARD):
        await trio.to_thread.run_sync(after)


async def test_moved_from_a_replica_updates_the_map(
    redis_factory: Any, nursery: trio.Nursery
) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    smart = await start_smart(nursery, cluster, read_from="replica")
    layout = await in_thread(lambda: shards(cluster))
    (source, on_source, source_replica), (_target, on_target, target_replica) = layout[:2]
    key = key_on(source, "moving")
    slot = key_slot(key.encode())

    def body() -> None:
        with smart.client() as w:
            assert w.set(key, "payload")
            assert w.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        _migrate(cluster, slot, on_source, on_target)
        # every node, the replicas included, knows the new owner; the moved key reached the
        # target's replica (the tunnel's map is still the old one: no refresh in between)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owners = {_slot_owner_port(n, slot) for n in cluster.nodes}
            if (
                owners == {on_target.port}
                and target_replica.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
            ):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the cluster did not settle on the new owner")
        reset_stats(cluster)
        with smart.client() as r:
            assert r.get(key) == b"payload"  # MOVED from the source's replica, followed
            assert r.get(key) == b"payload"  # the map knows now: no redirect
        assert calls(source_replica, "get", "rejected_calls") == 1  # the MOVED came from it
        assert calls(target_replica, "get") == 2
        assert calls(on_target, "get") == 0

    await in_thread(body)
    assert smart.counters.moved == 1


def _slot_owner_port(node: RedisNode, slot: int) -> int | None:
    table: Any = node.call("CLUSTER", "SLOTS")
    for entry in table:
        if entry[0] <= slot <= entry[1]:
            return int(entry[2][1])
    return None


async def test_tunnel_info_shows_reads_per_replica(
    redis_cluster: LocalCluster, nursery: trio.Nursery
) -> None:
    from tunnel.stats import TunnelStats

    stats = TunnelStats("smart")
    smart: Smart = await start_smart(
        nursery, redis_cluster, read_from="prefer-replica", stats=stats
    )
    layout = await in_thread(lambda: shards(redis_cluster))
    master, _, replica = layout[2]
    key = key_on(master, "visible")

    def body() -> str:
        with smart.client() as r:
            assert r.set(key, "x")
            assert r.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        with smart.client() as r:
            for _ in range(7):
                assert r.get(key) == b"x"
            info = r.execute_command("TUNNEL", "INFO")  # type: ignore[no-untyped-call]
            assert isinstance(info, bytes)
            return info.decode()

    text = await in_thread(body)
    line = next(x for x in text.splitlines() if f"address={replica.address}," in x)
    assert "role=replica" in line
    assert ",ops=7," in line
    node = next(n for n in stats.snapshot()["nodes"] if n["address"] == replica.address)
    assert node["ops"] == 7
    assert node["role"] == "replica"
