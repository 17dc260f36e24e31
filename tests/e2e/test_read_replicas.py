"""Replica reads (read_from) of the Trio cluster client, against real TLS clusters.

The session cluster (``redis_cluster``, 3 masters + 3 replicas) is shared: tests here read and
write their own keys and reset only INFO commandstats. Killing and pausing nodes happens on
private clusters from ``redis_factory``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from client.cluster import ClusterClient, open_cluster
from client.embedded import LocalCluster, RedisNode
from client.errors import ConfigError, UnroutableError
from client.options import ServerOptions, TlsOptions
from client.replicas import NoReplicaError
from client.slots import key_slot, tag_for_slot
from client.topology import Node

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def cluster_opts(cluster: LocalCluster) -> ServerOptions:
    return ServerOptions(
        host="localhost",
        port=cluster.seed.port,
        tls=TlsOptions(cacert=str(cluster.certs.ca)),
        password=cluster.password,
        cluster=True,
    )


def key_on(node: Node, name: str, index: int = 0) -> str:
    """A key that hashes into ``node``'s first slot range."""
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


def calls(stats: dict[str, dict[str, int]], command: str, field: str = "calls") -> int:
    return stats.get(command, {}).get(field, 0)


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def replica_of(client: ClusterClient, master: Node) -> Node:
    (replica,) = client.topology.replicas_of(master)
    return replica


async def replicate(client: ClusterClient) -> None:
    """Wait until every master's writes reached its replicas (WAIT on each master)."""
    for master in client.topology.masters():
        want = len(client.topology.replicas_of(master))
        assert await client.execute_on(master, "WAIT", want, 5000) == want


async def replica_serves(
    client: ClusterClient, index: int, name: str, value: bytes
) -> tuple[Node, Node, str]:
    """Write ``value`` on master ``index``, wait for replication, and check that a read of it
    is served by that master's replica. Returns (master, replica, key)."""
    master = client.topology.masters()[index]
    replica = replica_of(client, master)
    key = key_on(master, name)
    await client.execute("SET", key, value)
    await replicate(client)
    reply, node = await client.request_routed("GET", key)
    assert (reply, node.id) == (value, replica.id)
    return master, replica, key


# --------------------------------------------------------------------------- session cluster


async def test_gets_run_on_replicas_and_sets_on_masters(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(60):
        async with open_cluster(
            cluster_opts(redis_cluster), read_from="replica", client_name="rr-stats"
        ) as client:
            assert client.read_from == "replica"
            topo = client.topology
            stats = client.statistics()
            assert len(stats.replica_health) == 3
            assert set(stats.replica_health.values()) == {"up"}  # probed before open returned
            keys = {m.id: [key_on(m, f"rr:{i}", i) for i in range(4)] for m in topo.masters()}
            nodes = await in_thread(lambda: list(redis_cluster.nodes))
            for server in nodes:
                await in_thread(server.call, "CONFIG", "RESETSTAT")

            for shard in keys.values():
                for key in shard:
                    assert await client.execute("SET", key, key) == b"OK"
            await replicate(client)
            for shard in keys.values():
                for key in shard:
                    reply, node = await client.request_routed("GET", key)
                    assert reply == key.encode()
                    assert not node.is_master

            for master in topo.masters():
                replica = replica_of(client, master)
                on_master = await in_thread(command_stats, redis_cluster.node_by_port(master.port))
                on_replica = await in_thread(
                    command_stats, redis_cluster.node_by_port(replica.port)
                )
                # The masters ran every SET of their shard and no GET.
                assert calls(on_master, "set") == 4
                assert calls(on_master, "set", "rejected_calls") == 0
                assert calls(on_master, "get") == 0
                assert calls(on_master, "get", "rejected_calls") == 0
                # The replicas ran every GET (none refused with MOVED: READONLY was sent) and
                # no SET of ours: their SET calls are the replication stream, none rejected.
                assert calls(on_replica, "get") == 4
                assert calls(on_replica, "get", "rejected_calls") == 0
                assert calls(on_replica, "set", "rejected_calls") == 0
                assert calls(on_replica, "set") == calls(on_master, "set")
            stats = client.statistics()
            assert stats.moved == 0
            assert stats.master_fallbacks == 0
            assert sorted(stats.replica_reads.values()) == [4, 4, 4]
            for master in topo.masters():
                address = client.options_for(replica_of(client, master)).address
                assert stats.replica_reads[address] == 4
                assert stats.connections[address] >= 1

            # READONLY shows as flag 'r' in CLIENT LIST (7.0) on our replica connections only.
            for node in topo.nodes:
                listing = await in_thread(
                    redis_cluster.node_by_port(node.port).call, "CLIENT", "LIST"
                )
                assert isinstance(listing, bytes)
                ours = [
                    dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
                    for line in listing.decode().splitlines()
                    if " name=rr-stats " in line
                ]
                assert ours
                for conn in ours:
                    assert ("r" in conn["flags"]) == (not node.is_master), (node, conn)


async def test_per_call_policy_and_routing_queries(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(30):
        async with open_cluster(cluster_opts(redis_cluster)) as client:
            assert client.read_from == "master"
            master = client.topology.masters()[1]
            replica = replica_of(client, master)
            key = key_on(master, "percall")
            await client.execute("SET", key, "v")
            await replicate(client)
            # The client's policy: everything on the master; no replica connection at all.
            reply, node = await client.request_routed("GET", key)
            assert (reply, node.id) == (b"v", master.id)
            assert client.node_for_args(["GET", key]) is master
            stats = client.statistics()
            assert stats.replica_health == {}
            assert client.options_for(replica).address not in stats.connections
            # Per call: replica (waits for the first probe), prefer-replica, master.
            reply, node = await client.request_routed("GET", key, read_from="replica")
            assert (reply, node.id) == (b"v", replica.id)
            reply, node = await client.request_routed("GET", key, read_from="prefer-replica")
            assert (reply, node.id) == (b"v", replica.id)
            assert await client.execute("STRLEN", key, read_from="replica") == 1
            assert await client.execute("GET", key, read_from="master") == b"v"
            # Writes and commands without the readonly flag stay on the master.
            reply, node = await client.request_routed("SET", key, "w", read_from="replica")
            assert (reply, node.id) == (b"OK", master.id)
            reply, node = await client.request_routed("PING", read_from="replica")
            assert node.is_master
            # A keyless read-only command goes to a replica of the first master.
            reply, node = await client.request_routed("DBSIZE", read_from="replica")
            assert isinstance(reply, int)
            assert node.id == replica_of(client, client.topology.masters()[0]).id
            # Routing queries agree.
            assert client.node_for_args(["GET", key], read_from="replica") == replica
            assert client.node_for_args(["GET", key], read_from="prefer-replica") == replica
            assert client.node_for_args(["SET", key, "x"], read_from="replica") is master
            assert client.node_for_args(["DBSIZE"], read_from="replica") is None
            with pytest.raises(ConfigError, match="--read-from 'nearest'"):
                client.node_for_args(["GET", key], read_from="nearest")
            with pytest.raises(ConfigError):
                await client.execute("GET", key, read_from="slave")
            assert client.statistics().replica_reads[client.options_for(replica).address] == 3
    with pytest.raises(ConfigError):
        async with open_cluster(cluster_opts(redis_cluster), read_from="any"):
            pass


async def test_moved_from_a_replica_updates_the_map(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(30):
        async with open_cluster(
            cluster_opts(redis_cluster), read_from="replica", refresh_interval=0, protocol=3
        ) as client:
            key = "rr:moved"
            await client.execute("SET", key, "m")
            await replicate(client)
            slot = key_slot(key.encode())
            right = client.topology.slot_owner(slot)
            assert right is not None
            wrong = next(m for m in client.topology.masters() if m.id != right.id)
            client.topology = client.topology.with_slot_owner(slot, wrong)
            before = client.statistics()
            # The read goes to a replica of the wrong master, which answers MOVED.
            reply, node = await client.request_routed("GET", key)
            assert reply == b"m"
            assert node.id == replica_of(client, right).id
            after = client.statistics()
            assert after.moved == before.moved + 1
            assert client.node_for_key(key).id == right.id  # patched at once
            await client.refresh()
            assert client.node_for_key(key).id == right.id
            assert set(client.statistics().replica_health.values()) == {"up"}


# --------------------------------------------------------------------------- private clusters


async def test_reads_spread_over_replicas_and_a_dead_one_leaves_and_rejoins(
    redis_factory: Any,
) -> None:
    cluster: LocalCluster = await in_thread(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=2)
    )
    with trio.fail_after(120):
        async with open_cluster(
            cluster_opts(cluster), read_from="replica", refresh_interval=0, refresh_timeout=1.0
        ) as client:
            master = client.topology.masters()[0]
            first, second = client.topology.replicas_of(master)
            key = key_on(master, "spread")
            await client.execute("SET", key, "s")
            await replicate(client)
            for server in cluster.nodes:
                await in_thread(server.call, "CONFIG", "RESETSTAT")
            served: list[str] = []
            for _ in range(20):
                reply, node = await client.request_routed("GET", key)
                assert reply == b"s"
                served.append(node.id)
            # One caller, one read at a time: the two replicas take turns.
            assert served.count(first.id) == served.count(second.id) == 10
            assert served[0] != served[1]
            for replica in (first, second):
                stats = await in_thread(command_stats, cluster.node_by_port(replica.port))
                assert calls(stats, "get") == 10
            assert (
                calls(await in_thread(command_stats, cluster.node_by_port(master.port)), "get") == 0
            )

            # Reads concurrent with each other also share the load.
            results: list[Node] = []

            async def read() -> None:
                reply, node = await client.request_routed("GET", key)
                assert reply == b"s"
                results.append(node)

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(read)
            assert {n.id for n in results} == {first.id, second.id}

            # Kill one: its reads go to the other, never to the master, never an error.
            dead = cluster.node_by_port(first.port)
            await in_thread(dead.kill)
            for _ in range(10):
                reply, node = await client.request_routed("GET", key)
                assert (reply, node.id) == (b"s", second.id)
            health = client.statistics().replica_health[client.options_for(first).address]
            assert health.startswith("down"), health

            # Restarted, it is probed (backoff) and rejoins the rotation.
            await in_thread(dead.restart)
            while True:
                reply, node = await client.request_routed("GET", key)
                assert reply == b"s"
                if node.id == first.id:
                    break
                await trio.sleep(0.1)
            health = client.statistics().replica_health[client.options_for(first).address]
            assert health == "up"


async def test_dead_replica_falls_back_or_fails_clearly(redis_factory: Any) -> None:
    cluster: LocalCluster = await in_thread(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    with trio.fail_after(90):
        async with open_cluster(
            cluster_opts(cluster),
            read_from="prefer-replica",
            refresh_interval=0,
            refresh_timeout=1.0,
        ) as client:
            master, other = client.topology.masters()[:2]
            replica = replica_of(client, master)
            key = key_on(master, "dead")
            other_key = key_on(other, "alive")
            await client.execute("SET", key, "d")
            await client.execute("SET", other_key, "a")
            await replicate(client)
            reply, node = await client.request_routed("GET", key)
            assert (reply, node.id) == (b"d", replica.id)

            await in_thread(cluster.node_by_port(replica.port).kill)
            # prefer-replica: the read goes to the master, at once.
            with trio.fail_after(10):
                reply, node = await client.request_routed("GET", key)
            assert (reply, node.id) == (b"d", master.id)
            stats = client.statistics()
            assert stats.master_fallbacks >= 1
            assert stats.replica_health[client.options_for(replica).address].startswith("down")
            # Other shards keep reading from their replicas; writes are unaffected.
            reply, node = await client.request_routed("GET", other_key)
            assert (reply, node.id) == (b"a", replica_of(client, other).id)
            assert await client.execute("SET", key, "d2") == b"OK"
            # replica: a clear error, without a hang.
            with trio.fail_after(10), pytest.raises(NoReplicaError) as info:
                await client.execute("GET", key, read_from="replica")
            text = str(info.value)
            assert isinstance(info.value, UnroutableError)
            assert f"slot {key_slot(key.encode())}" in text
            assert client.options_for(replica).address in text
            assert client.options_for(master).address in text
            assert "prefer-replica" in text
            assert "\n" not in text
            assert info.value.master is not None
            assert info.value.master.id == master.id

        # A client opened while the replica is dead: the same, from the start.
        async with open_cluster(
            cluster_opts(cluster), read_from="replica", refresh_interval=0, refresh_timeout=1.0
        ) as strict:
            with pytest.raises(NoReplicaError):
                await strict.execute("GET", key)
            assert await strict.execute("GET", other_key) == b"a"
            assert await strict.execute("GET", key, read_from="prefer-replica") == b"d2"


async def test_paused_replica_does_not_hang_reads_forever(redis_factory: Any) -> None:
    cluster: LocalCluster = await in_thread(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    with trio.fail_after(90):
        async with open_cluster(
            cluster_opts(cluster),
            read_from="prefer-replica",
            refresh_interval=0,
            refresh_timeout=1.0,
        ) as client:
            master, replica, key = await replica_serves(client, 2, "paused", b"p")
            address = client.options_for(replica).address

            paused = cluster.node_by_port(replica.port)
            paused.pause()
            try:
                # A read already sent to the hung replica waits for the caller's deadline...
                with trio.move_on_after(2) as scope:
                    await client.execute("GET", key)
                assert scope.cancelled_caught
                # ...and it is still unanswered, so new reads leave that replica at once.
                with trio.fail_after(10):
                    reply, node = await client.request_routed("GET", key)
                assert (reply, node.id) == (b"p", master.id)
                health = client.statistics().replica_health[address]
                assert health.startswith(("down", "probing")), health
                # replica policy: a clear error within about refresh_timeout, not a hang.
                with trio.fail_after(10), pytest.raises(NoReplicaError):
                    await client.execute("GET", key, read_from="replica")
            finally:
                paused.resume()
            # Once it answers again, a probe brings it back.
            while True:
                reply, node = await client.request_routed("GET", key)
                assert reply == b"p"
                if node.id == replica.id:
                    break
                await trio.sleep(0.1)
            assert client.statistics().replica_health[address] == "up"


async def test_read_without_deadline_on_a_paused_replica_fails_over(redis_factory: Any) -> None:
    cluster: LocalCluster = await in_thread(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    with trio.fail_after(90):
        async with open_cluster(
            cluster_opts(cluster),
            read_from="prefer-replica",
            refresh_interval=1.0,
            refresh_timeout=1.0,
        ) as client:
            master, replica, key = await replica_serves(client, 1, "no-deadline", b"n")
            paused = cluster.node_by_port(replica.port)
            paused.pause()
            try:
                # No deadline of ours: the periodic check's probe goes unanswered, the
                # replica connections are dropped, and the read is retried on the master.
                with trio.fail_after(30):  # a safety net for the test, far above the bound
                    reply, node = await client.request_routed("GET", key)
                assert (reply, node.id) == (b"n", master.id)
                assert client.statistics().master_fallbacks >= 1
            finally:
                paused.resume()
