"""The Trio cluster client against real TLS clusters.

The session cluster (``redis_cluster``) is shared: tests here only read and write their own
keys and never change its configuration. Migrations, endpoint changes and failovers run on
private clusters from ``redis_factory``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import trio

from client.cluster import ClusterClient, open_cluster
from client.commands import CommandTable
from client.embedded import LocalCluster, RedisNode
from client.errors import (
    ConnectError,
    ConnectionLost,
    CrossSlotError,
    RedisConnectionError,
    RedisToolkitError,
    ReplyError,
    TlsError,
    TryAgainError,
)
from client.options import ServerOptions, TlsOptions
from client.slots import key_slot, tag_for_slot
from client.topology import (
    Node,
    Topology,
    parse_cluster_nodes,
    parse_cluster_shards,
    parse_cluster_slots,
)
from client.values import ErrorReply, RespMap, SimpleString

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def cluster_opts(cluster: LocalCluster, *, host: str = "localhost", **tls: Any) -> ServerOptions:
    return ServerOptions(
        host=host,
        port=cluster.seed.port,
        tls=TlsOptions(cacert=str(cluster.certs.ca), **tls),
        password=cluster.password,
        cluster=True,
    )


def key_on(node: Node, name: str, index: int = 0) -> str:
    """A key that hashes into ``node``'s first slot range."""
    start, _ = node.slots[0]
    return f"{{{tag_for_slot(start + index)}}}:{name}"


def shape(
    topology: Topology,
) -> list[tuple[str, int, str, str | None, tuple[tuple[int, int], ...]]]:
    return [(n.id, n.port, n.role, n.master_id, n.slots) for n in topology.nodes]


async def wait_until(check: Any, *, limit: float = 30.0) -> None:
    """Poll a blocking check in a thread until it is true (bounded)."""
    with trio.fail_after(limit):
        while not await trio.to_thread.run_sync(check):  # noqa: ASYNC110 - polling a server
            await trio.sleep(0.1)


def is_master(node: RedisNode) -> bool:
    try:
        role = node.call("ROLE")
    except (OSError, RedisToolkitError):
        return False
    return isinstance(role, list) and role[0] == b"master"


# --------------------------------------------------------------------------- session cluster


async def test_topology_of_the_session_cluster(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster)) as client:
            topo = client.topology
            assert topo.source == "shards"
            assert topo.covered()
            assert len(topo.masters()) == 3
            assert len(topo.replicas()) == 3
            harness = {n.port: n for n in redis_cluster.nodes}
            for master in topo.masters():
                assert harness[master.port].role == "master"
                assert harness[master.port].node_id == master.id
                (replica,) = topo.replicas_of(master)
                assert harness[replica.port].role == "replica"
                assert replica.master_id == master.id
            # Every parser reads the live replies (RESP2 here) to the same cluster.
            node = topo.masters()[1]
            shards = parse_cluster_shards(await client.execute_on(node, "CLUSTER", "SHARDS"))
            slots = parse_cluster_slots(await client.execute_on(node, "CLUSTER", "SLOTS"))
            nodes = parse_cluster_nodes(await client.execute_on(node, "CLUSTER", "NODES"))
            assert shape(shards) == shape(slots) == shape(nodes) == shape(topo)
            # Slot ownership agrees with the server's CLUSTER KEYSLOT and with the node itself.
            for i in range(30):
                key = f"topo:{i}"
                slot = await client.execute("CLUSTER", "KEYSLOT", key)
                assert slot == key_slot(key.encode())
                owner = client.node_for_key(key)
                assert owner is topo.slot_owner(key_slot(key.encode()))
                assert await client.request_on(owner, "GET", key) is None  # no MOVED


async def test_resp3_client_reads_resp3_topology(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster), protocol=3) as client:
            assert client.topology.covered()
            node = client.topology.masters()[0]
            shards = await client.execute_on(node, "CLUSTER", "SHARDS")
            assert isinstance(shards, list)
            assert isinstance(shards[0], RespMap)
            nodes = await client.execute_on(node, "CLUSTER", "NODES")
            assert shape(parse_cluster_nodes(nodes)) == shape(client.topology)
            await client.execute("DEL", "r3:h")
            await client.execute("HSET", "r3:h", "f", "v")
            reply = await client.execute("HGETALL", "r3:h")
            assert isinstance(reply, RespMap)
            assert list(reply) == [(b"f", b"v")]


async def test_set_get_on_every_master(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster)) as client:
            masters = client.topology.masters()
            for master in masters:
                for i in range(5):
                    key = key_on(master, f"every:{i}", i)
                    assert client.node_for_key(key) is master
                    assert await client.execute("SET", key, f"v{i}") == SimpleString(b"OK")
                    assert await client.execute("GET", key) == f"v{i}".encode()
                    # The key really lives on that master (a direct read gets no MOVED).
                    direct = redis_cluster.node_by_port(master.port).call("GET", key)
                    assert direct == f"v{i}".encode()
            stats = client.statistics()
            assert stats.moved == 0
            assert stats.commands == 30
            assert set(stats.connections) >= {client.options_for(m).address for m in masters}


async def test_routing_cross_slot_and_keyless(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster)) as client:
            assert client.node_for_args(["PING"]) is None
            assert client.node_for_args(["GET", "a"]) is client.node_for_key("a")
            assert client.node_for_args(["SPUBLISH", "chan", "m"]) is client.node_for_key("chan")
            with pytest.raises(CrossSlotError) as info:
                client.node_for_args(["MSET", "a", "1", "b", "2"])
            with pytest.raises(CrossSlotError) as info:
                await client.execute("MSET", "cs:a", "1", "cs:b", "2", "cs:c", "3")
            text = str(info.value)
            for key in ("cs:a", "cs:b", "cs:c"):
                assert f"'{key}' -> slot {key_slot(key.encode())}" in text
            assert "hash tag" in text
            assert info.value.kind == "CROSSSLOT"
            assert info.value.resp_line().startswith(b"-CROSSSLOT Keys in request")
            assert await client.execute("EXISTS", "cs:a") == 0  # nothing was sent
            # Same tag, same slot: fine.
            assert await client.execute("MSET", "{cs}:a", "1", "{cs}:b", "2") == b"OK"
            assert await client.execute("MGET", "{cs}:a", "{cs}:b") == [b"1", b"2"]
            # Keyless commands and server-side errors.
            assert await client.execute("PING") == SimpleString(b"PONG")
            reply = await client.request("GET")
            assert isinstance(reply, ErrorReply)
            assert "wrong number of arguments" in reply.text
            with pytest.raises(ReplyError, match="unknown command"):
                await client.execute("NOSUCHCOMMAND", "x")
            await client.execute("SET", "{cs}:str", "abc")
            with pytest.raises(ReplyError) as err:
                await client.execute("INCR", "{cs}:str")
            assert err.value.kind == "ERR"
            for master in client.topology.masters():
                assert isinstance(await client.execute_on(master, "DBSIZE"), int)
            replies = await client.pipeline_on(
                client.node_for_key("{cs}"), [["GET", "{cs}:a"], ["INCR", "{cs}:str"]]
            )
            assert replies[0] == b"1"
            assert isinstance(replies[1], ErrorReply)
            # The table came from the server.
            assert client.commands is not CommandTable.bundled()
            assert client.commands.redis_version.startswith("7.")


async def test_moved_after_a_corrupted_map(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster), refresh_interval=0) as client:
            key = "moved:key"
            await client.execute("SET", key, "v")
            slot = key_slot(key.encode())
            right = client.topology.slot_owner(slot)
            assert right is not None
            wrong = next(m for m in client.topology.masters() if m.id != right.id)
            client.topology = client.topology.with_slot_owner(slot, wrong)
            assert client.node_for_key(key) is not right
            before = client.statistics()
            assert await client.execute("GET", key) == b"v"
            after = client.statistics()
            assert after.moved == before.moved + 1
            # The map is patched at once, and a background refresh follows.
            assert client.node_for_key(key).id == right.id
            await client.refresh()
            assert client.statistics().refreshes > before.refreshes
            assert client.node_for_key(key).id == right.id
            assert client.topology.covered()


async def test_concurrent_refreshes_collapse_into_one(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster), refresh_interval=0) as client:
            for _round in range(2):
                before = client.statistics()
                async with trio.open_nursery() as nursery:
                    for _ in range(50):
                        nursery.start_soon(client.refresh)
                after = client.statistics()
                assert after.topology_queries == before.topology_queries + 1
                assert after.refreshes == before.refreshes + 1
            assert client.topology.covered()


async def test_periodic_refresh_runs_in_the_background(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(cluster_opts(redis_cluster), refresh_interval=0.05) as client:
            while client.statistics().refreshes < 4:  # noqa: ASYNC110 - polling counters
                await trio.sleep(0.05)
            assert client.topology.covered()


async def test_connection_pools(redis_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with open_cluster(
            cluster_opts(redis_cluster), connections_per_node=3, client_name="pool-test"
        ) as client:
            master = client.topology.masters()[2]
            keys = [key_on(master, f"pool:{i}", i) for i in range(60)]

            async def touch(key: str) -> None:
                await client.execute("SET", key, key)
                assert await client.execute("GET", key) == key.encode()

            async with trio.open_nursery() as nursery:
                for key in keys:
                    nursery.start_soon(touch, key)
            address = client.options_for(master).address
            assert client.statistics().connections[address] == 3
            # Kill our connections to that master from the server side; they are replaced.
            listing = await client.execute_on(master, "CLIENT", "LIST")
            assert isinstance(listing, bytes)
            ids = [
                line.split(b" ")[0].partition(b"=")[2]
                for line in listing.splitlines()
                if b" name=pool-test " in line
            ]
            assert len(ids) == 3
            opened = client.statistics().connections_opened
            harness = redis_cluster.node_by_port(master.port)
            for client_id in ids:
                assert harness.call("CLIENT", "KILL", "ID", client_id) == 1
            for key in keys:
                assert await client.execute("GET", key) == key.encode()
            stats = client.statistics()
            assert stats.connections[address] == 3
            assert stats.connections_opened >= opened + 3  # (+1 if a refresh dialled a node)


async def test_tls_names_and_errors(redis_cluster: LocalCluster, redis_tls: RedisNode) -> None:
    with trio.fail_after(30):
        async with open_cluster(cluster_opts(redis_cluster, host="localhost")) as client:
            node = client.topology.masters()[0]
            assert node.host == "127.0.0.1"
            opts = client.options_for(node)
            assert opts.tls is not None
            assert (opts.host, opts.port, opts.tls.sni) == ("127.0.0.1", node.port, "localhost")
            assert opts.password == redis_cluster.password
            blank = Node(id="x", host="", port=node.port)
            assert client.options_for(blank).host == "localhost"
        async with open_cluster(cluster_opts(redis_cluster, host="127.0.0.1")) as client:
            opts = client.options_for(client.topology.masters()[0])
            assert opts.tls is not None
            assert opts.tls.sni is None
        sni = cluster_opts(redis_cluster, host="127.0.0.1", sni="localhost")
        async with open_cluster(sni) as client:
            opts = client.options_for(client.topology.masters()[0])
            assert opts.tls is not None
            assert opts.tls.sni == "localhost"
            assert await client.execute("PING") == b"PONG"
        # The name really is verified: a name the certificate lacks fails the handshake.
        with pytest.raises(TlsError):
            async with open_cluster(cluster_opts(redis_cluster, sni="wrong.example.test")):
                pass
        # Not a cluster: one clear line.
        standalone = ServerOptions(
            host="localhost",
            port=redis_tls.port,
            tls=TlsOptions(cacert=str(redis_cluster.certs.ca)),
            password=redis_tls.password,
        )
        with pytest.raises(RedisToolkitError) as info:
            async with open_cluster(standalone):
                pass
        assert "cluster support disabled" in str(info.value)
        assert "-c/--cluster" in str(info.value)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- private clusters


async def test_ask_moved_and_unknown_endpoint_during_a_real_migration(
    redis_factory: Any,
) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=0)
    )
    with trio.fail_after(60):
        async with open_cluster(cluster_opts(cluster), refresh_interval=0) as client:
            source, target, third = client.topology.masters()
            slot = source.slots[0][0] + 7
            tag = tag_for_slot(slot)
            keys = [f"{{{tag}}}:k{i}" for i in range(4)]
            for i, key in enumerate(keys):
                await client.execute("SET", key, f"v{i}")
            assert (
                await client.execute_on(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
                == b"OK"
            )
            assert (
                await client.execute_on(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
                == b"OK"
            )
            migrate = ["MIGRATE", target.host, target.port, "", 0, 5000]
            migrate += ["AUTH", cluster.password, "KEYS", keys[0], keys[1]]
            assert await client.execute_on(source, *migrate) == b"OK"

            before = client.statistics()
            # Migrated keys: the source answers ASK; ASKING + GET go to the target.
            assert await client.execute("GET", keys[0]) == b"v0"
            assert await client.execute("GET", keys[1]) == b"v1"
            # Keys not migrated yet are still served by the source.
            assert await client.execute("GET", keys[2]) == b"v2"
            # A new key in a migrating slot is created on the target.
            assert await client.execute("SET", f"{{{tag}}}:new", "n") == b"OK"
            asked = await client.pipeline_on(target, [["ASKING"], ["GET", f"{{{tag}}}:new"]])
            assert asked == [b"OK", b"n"]
            after = client.statistics()
            assert after.ask == before.ask + 3
            assert after.moved == before.moved
            assert after.refreshes == before.refreshes  # ASK never refreshes
            assert client.topology.slot_owner(slot).id == source.id  # type: ignore[union-attr]

            # Keys split by the migration: TRYAGAIN, retried a bounded number of times.
            with pytest.raises(TryAgainError):
                await client.execute("MGET", keys[0], keys[2])
            assert client.statistics().retries == after.retries + 5

            # Finish the migration; the old owner now answers MOVED.
            assert await client.execute_on(source, *migrate[:-2], keys[2], keys[3]) == b"OK"
            for node in (target, source, third):
                await client.execute_on(node, "CLUSTER", "SETSLOT", slot, "NODE", target.id)
            assert await client.execute("GET", keys[3]) == b"v3"
            assert client.statistics().moved == after.moved + 1
            assert client.topology.slot_owner(slot).id == target.id  # type: ignore[union-attr]
            await client.refresh()
            # The source now owns two ranges around the moved slot.
            assert len(client.topology.ranges(source.id)) == 2
            assert client.topology.slot_owner(slot).id == target.id  # type: ignore[union-attr]

            # Nodes that announce no endpoint are dialled at the seed host.
            for node in cluster.nodes:
                node.call("CONFIG", "SET", "cluster-preferred-endpoint-type", "unknown-endpoint")
            await client.refresh()
            assert {n.host for n in client.topology.nodes} == {""}
            for master in client.topology.masters():
                assert client.options_for(master).host == "localhost"
                key = key_on(master, "unknown-endpoint")
                assert await client.execute("SET", key, "u") == b"OK"
                assert await client.execute("GET", key) == b"u"
            # MOVED with an empty host (-MOVED slot :port) is followed too.
            key = key_on(third, "moved-empty-host")
            await client.execute("SET", key, "e")
            owner = client.node_for_key(key)
            client.topology = client.topology.with_slot_owner(key_slot(key.encode()), source)
            moved = client.statistics().moved
            assert await client.execute("GET", key) == b"e"
            assert client.statistics().moved == moved + 1
            assert client.node_for_key(key).id == owner.id

            # A master that dies without a replica: a bounded failure, not a hang.
            cluster.node_by_port(third.port).kill()
            with trio.fail_after(15), pytest.raises(RedisConnectionError):
                await client.execute("GET", key)
            assert client.statistics().connect_failures > 0


async def test_failover_retries_reads_and_refuses_to_repeat_writes(redis_factory: Any) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    with trio.fail_after(90):
        async with open_cluster(
            cluster_opts(cluster), refresh_interval=0, refresh_timeout=1.0
        ) as client:
            master = client.topology.masters()[0]
            (replica,) = client.topology.replicas_of(master)
            key = key_on(master, "failover")
            await client.execute("SET", key, "v1")
            assert await client.execute_on(master, "WAIT", 1, 5000) == 1
            old = cluster.node_by_port(master.port)
            new = cluster.node_by_port(replica.port)

            old.pause()  # the node hangs with our commands in flight
            results: dict[str, Any] = {}

            async def read() -> None:
                results["read"] = await client.execute("GET", key)

            async def write() -> None:
                try:
                    await client.execute("SET", key, "v2")
                except ConnectionLost as exc:
                    results["write"] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(write)
                await wait_until(lambda: is_master(new))
                old.kill()  # now the in-flight connection breaks
            assert results["read"] == b"v1"  # read-only: retried on the new master
            lost = results["write"]
            assert isinstance(lost, ConnectionLost)
            assert "may or may not have run" in str(lost)
            owner = client.node_for_key(key)
            assert owner.port == replica.port
            assert await client.execute("SET", key, "v3") == b"OK"
            assert await client.execute("GET", key) == b"v3"
            # The dead node is still listed (failed), but routes nothing any more.
            await client.refresh()
            # A refresh may reach a node whose CLUSTER SHARDS still lists the dead master beside
            # its successor (flagged failed); either way, no slot may route to it.
            assert client.topology.covered()
            owners = {client.topology.slot_owner(s).id for s in range(16384)}  # type: ignore[union-attr]
            assert master.id not in owners


async def test_seed_unreachable(redis_factory: Any) -> None:
    node: RedisNode = await trio.to_thread.run_sync(
        lambda: redis_factory.standalone(tls=True, password="x")
    )
    port = node.port
    await trio.to_thread.run_sync(node.stop)
    opts = ServerOptions(host="127.0.0.1", port=port, tls=TlsOptions(), password="x")
    with trio.fail_after(10), pytest.raises(ConnectError):
        async with open_cluster(opts):
            pass


async def test_errors_in_the_body_propagate_unwrapped(redis_cluster: LocalCluster) -> None:
    async def body() -> None:
        async with open_cluster(cluster_opts(redis_cluster)) as client:
            assert isinstance(client, ClusterClient)
            await client.execute("NOSUCHCOMMAND")

    with trio.fail_after(20), pytest.raises(ReplyError, match="unknown command"):
        await body()


async def test_set_login_switches_live_connections_in_place(redis_cluster: LocalCluster) -> None:
    """Rotating credentials: every pooled connection is re-authenticated, none is reopened."""
    names = ("rot-a", "rot-b")
    for node in redis_cluster.nodes:
        for name in names:
            node.call("ACL", "SETUSER", name, "on", f">{name}-pw", "~*", "&*", "+@all")
    try:
        opts = replace(cluster_opts(redis_cluster), username="rot-a", password="rot-a-pw")
        async with open_cluster(opts, connections_per_node=2) as client:
            keys = [f"{{{tag}}}:rot" for tag in ("a", "b", "c", "d", "e", "f")]
            for key in keys * 2:  # both connections of every master's pool
                await client.execute("SET", key, "1")
            opened = client.statistics().connections_opened
            assert await client.set_login("rot-b", "rot-b-pw") >= 6
            for master in client.topology.masters():
                for _ in range(2):
                    assert await client.execute_on(master, "ACL", "WHOAMI") == b"rot-b"
            for key in keys:
                assert await client.execute("GET", key) == b"1"
            assert client.statistics().connections_opened == opened
    finally:
        for node in redis_cluster.nodes:
            node.call("ACL", "DELUSER", *names)
