"""Smart tunnel statistics (issue 7): exact counts in the snapshot, in Prometheus text and in
``TUNNEL INFO`` after a known amount of traffic, on a private TLS cluster.

The traffic is sent from a raw socket so every byte is known: N SETs to keys on known nodes,
one error reply, two MOVED (slots migrated behind the tunnel's back, then written to in one
pipelined write, so both reach the stale owners), one ASK (a key moved out of a MIGRATING
slot), one command the tunnel answers itself.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import pytest
import trio
from test_tunnel_smart import _migrate, in_thread, start_smart

from client.embedded import LocalCluster
from client.resp import NEED_DATA, RespParser, encode_command
from client.slots import tag_for_slot
from client.topology import Node, parse_cluster_nodes
from client.values import ErrorReply, RespValue
from tunnel.stats import LOCAL_NODE, TunnelStats

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


class Raw:
    """A plain RESP client on one socket (the bytes it sends are the ones counted)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = RespParser()

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *frames: bytes) -> list[RespValue]:
        await self.stream.send_all(b"".join(frames))
        replies: list[RespValue] = []
        while len(replies) < len(frames):
            value = self.parser.next_value()
            if value is NEED_DATA:
                data = await self.stream.receive_some(65536)
                assert data, "the tunnel closed the connection"
                self.parser.feed(data)
                continue
            replies.append(value)
        return replies


def key_in(slot: int, name: str) -> bytes:
    return f"{{{tag_for_slot(slot)}}}:{name}".encode()


def counted(node_line: str) -> dict[str, str]:
    """One ``nodeN:k=v,k=v`` line of TUNNEL INFO as a dict."""
    return dict(part.split("=", 1) for part in node_line.partition(":")[2].split(","))


def prometheus_values(text: str, metric: str) -> dict[str, int]:
    pattern = re.compile(rf'^{metric}{{node="([^"]+)"}} (\d+)$', re.M)
    return {node: int(value) for node, value in pattern.findall(text)}


async def test_counts_are_exact(redis_factory: Any, nursery: trio.Nursery) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=0)
    )
    stats = TunnelStats("smart")
    smart = await start_smart(nursery, cluster, stats=stats)
    topo = parse_cluster_nodes(await in_thread(lambda: cluster.seed.call("CLUSTER", "NODES")))
    masters: list[Node] = list(topo.masters())
    addr = [m.address for m in masters]
    servers = [cluster.node_by_port(m.port) for m in masters]
    expect: dict[str, Counter[str]] = defaultdict(Counter)

    def sent(where: int, frame: bytes, reply: bytes | None) -> None:
        """``frame`` was written to master ``where``; ``reply`` is what the client got from it
        (None: a redirect the tunnel followed)."""
        expect[addr[where]]["bytes_in"] += len(frame)
        if reply is not None:
            expect[addr[where]]["ops"] += 1
            expect[addr[where]]["bytes_out"] += len(reply)

    raw = await Raw.open(smart.port)
    # N SETs to keys on known nodes: 3, 4 and 5 of them
    for index, master in enumerate(masters):
        start = master.slots[0][0]
        for n in range(3 + index):
            frame = encode_command(b"SET", key_in(start + n, "s"), b"v%d" % n)
            assert await raw.send(frame) == [b"OK"]
            sent(index, frame, b"+OK\r\n")
    # one error reply from master 0
    frame = encode_command(b"INCR", key_in(masters[0].slots[0][0], "s"))
    (reply,) = await raw.send(frame)
    error = b"-ERR value is not an integer or out of range\r\n"
    assert isinstance(reply, ErrorReply)
    assert reply.message == error[1:-2]
    sent(0, frame, error)
    expect[addr[0]]["errors"] += 1

    # two MOVED: slots migrated behind the tunnel's back, written to in one pipelined write
    moves = [(0, 1), (1, 2)]
    slots = [masters[src].slots[0][1] for src, _ in moves]  # the last slot of each range
    for (src, dst), slot in zip(moves, slots, strict=True):
        await in_thread(lambda s=slot, a=src, b=dst: _migrate(cluster, s, servers[a], servers[b]))
    frames = [encode_command(b"SET", key_in(slot, "moved"), b"m") for slot in slots]
    assert await raw.send(*frames) == [b"OK", b"OK"]
    for (src, dst), frame in zip(moves, frames, strict=True):
        sent(src, frame, None)
        expect[addr[src]]["moved"] += 1
        expect[addr[src]]["retries"] += 1
        sent(dst, frame, b"+OK\r\n")

    # one ASK: the key left a slot that is still MIGRATING from master 2 to master 0
    ask_slot = masters[2].slots[0][0] + 100
    ask_key = key_in(ask_slot, "asked")
    frame = encode_command(b"SET", ask_key, b"here")
    assert await raw.send(frame) == [b"OK"]
    sent(2, frame, b"+OK\r\n")

    def start_migration() -> None:
        src, dst = servers[2], servers[0]
        dst.call("CLUSTER", "SETSLOT", ask_slot, "IMPORTING", src.node_id or "")
        src.call("CLUSTER", "SETSLOT", ask_slot, "MIGRATING", dst.node_id or "")
        src.call("MIGRATE", dst.host, dst.port, ask_key, 0, 10_000, "AUTH", cluster.password)

    await in_thread(start_migration)
    frame = encode_command(b"GET", ask_key)
    assert await raw.send(frame) == [b"here"]
    sent(2, frame, None)
    expect[addr[2]]["ask"] += 1
    expect[addr[2]]["retries"] += 1
    sent(0, frame, b"$4\r\nhere\r\n")

    # one command the tunnel answers itself
    assert await raw.send(encode_command(b"PING")) == [b"PONG"]
    expect[LOCAL_NODE]["ops"] += 1
    expect[LOCAL_NODE]["bytes_out"] += len(b"+PONG\r\n")

    # TUNNEL INFO publishes every counter first, so it and what follows are exact
    (info,) = await raw.send(encode_command(b"TUNNEL", b"INFO"))
    assert isinstance(info, bytes)
    text = info.decode()
    snapshot = stats.snapshot()
    prometheus = stats.prometheus()

    names = ("ops", "bytes_in", "bytes_out", "errors", "moved", "ask", "retries")
    by_address = {node["address"]: node for node in snapshot["nodes"]}
    lines = {
        counted(line)["address"]: counted(line)
        for line in text.splitlines()
        if line.startswith("node")
    }
    for address, want in expect.items():
        node = by_address[address]
        got = {name: node[name] for name in names}
        assert got == {name: want[name] for name in names}, address
        assert node["latency"]["count"] == want["ops"], address
        assert node["upstream_reconnects"] == 0
        assert {name: int(lines[address][name]) for name in names} == got, address
        for name, metric in (
            ("ops", "redis_tunnel_commands_total"),
            ("bytes_in", "redis_tunnel_bytes_in_total"),
            ("bytes_out", "redis_tunnel_bytes_out_total"),
            ("errors", "redis_tunnel_errors_total"),
            ("moved", "redis_tunnel_moved_total"),
            ("ask", "redis_tunnel_ask_total"),
            ("retries", "redis_tunnel_retries_total"),
        ):
            assert prometheus_values(prometheus, metric)[address] == want[name], (address, name)
    totals = snapshot["totals"]
    assert totals["ops"] == sum(c["ops"] for c in expect.values())
    assert totals["moved"] == 2
    assert totals["ask"] == 1
    assert totals["errors"] == 1
    assert f"total_commands_processed:{totals['ops']}" in text
    assert snapshot["clients"] == {"connected": 1, "total": 1}
    # the topology: every master with its role and slots (16384 in all)
    roles = {n["address"]: n["role"] for n in snapshot["nodes"] if n["in_topology"]}
    assert roles == dict.fromkeys(addr, "master")
    assert sum(n["slot_count"] for n in snapshot["nodes"] if n["in_topology"]) == 16384
    assert smart.counters.moved == 2
    assert smart.counters.ask == 1

    # without TUNNEL INFO, the counters reach the registry within a second or so
    frames = [encode_command(b"SET", key_in(masters[1].slots[0][0], "late"), b"x")] * 3
    assert await raw.send(*frames) == [b"OK"] * 3
    want_ops = by_address[addr[1]]["ops"] + 3
    with trio.fail_after(10):
        while True:
            ops = prometheus_values(stats.prometheus(), "redis_tunnel_commands_total")[addr[1]]
            if ops >= want_ops:
                break
            await trio.sleep(0.05)
    assert ops == want_ops
    await raw.stream.aclose()
    for _ in range(200):  # the session ends in the tunnel's own time
        if not stats.clients_connected:
            break
        await trio.sleep(0.05)
    assert stats.snapshot()["clients"] == {"connected": 0, "total": 1}


async def test_tunnel_info_without_statistics(
    redis_cluster: LocalCluster, nursery: trio.Nursery
) -> None:
    smart = await start_smart(nursery, redis_cluster)
    raw = await Raw.open(smart.port)
    replies = await raw.send(
        encode_command(b"TUNNEL", b"INFO"),
        encode_command(b"tunnel", b"help"),
        encode_command(b"PING"),
    )
    assert "keeps no statistics" in str(replies[0])
    assert "keeps no statistics" in str(replies[1])
    assert replies[2] == b"PONG"
    await raw.stream.aclose()


async def test_tunnel_help_and_errors(redis_cluster: LocalCluster, nursery: trio.Nursery) -> None:
    stats = TunnelStats("smart")
    smart = await start_smart(nursery, redis_cluster, stats=stats)
    raw = await Raw.open(smart.port)
    helped, unknown, bare = await raw.send(
        encode_command(b"TUNNEL", b"HELP"),
        encode_command(b"TUNNEL", b"NOPE"),
        encode_command(b"TUNNEL"),
    )
    assert isinstance(helped, list)
    assert b"INFO" in helped
    assert "unknown subcommand 'NOPE'" in str(unknown)
    assert "wrong number of arguments" in str(bare)
    await raw.stream.aclose()
