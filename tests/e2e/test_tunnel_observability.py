"""Statistics of a real tunnel (``--dashboard``): exact counts in /metrics, the WebSocket and
``TUNNEL INFO``, after known traffic through real standalone and pinned tunnels.

The tunnel runs as a real process (the console entry point); the standalone one with its
default worker processes, so the counts of every process must reach the parent's dashboard.
Traffic goes through raw sockets, so the exact bytes and commands are known.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio_websocket
from tunnel_process import TIMEOUT, Tunnel, free_port, pinned_args, standalone_args

from certs import CertPaths
from client.embedded import LocalCluster, RedisNode
from client.main import main
from client.resp import FrameScanner, encode_command
from client.slots import key_slot
from tunnel.main import dashboard_address

pytestmark = pytest.mark.e2e

#: Statistics reach the dashboard within about two seconds (publish + worker report).
SETTLE = 20.0

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- traffic and readings ---------------------------------------------------------------------


def exchange(port: int, frames: list[bytes]) -> list[bytes]:
    """Send ``frames`` in one write on a new connection; return the replies; close."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(frames))
        scanner = FrameScanner()
        replies: list[bytes] = []
        while len(replies) < len(frames):
            frame = scanner.next_frame()
            if frame is not None:
                replies.append(frame.data)
                continue
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"closed after {len(replies)} replies")
            scanner.feed(data)
        return replies


def metrics(port: int) -> Series:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    samples: Series = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        value = match.group(3)
        samples[(match.group(1), labels)] = math.inf if value == "+Inf" else float(value)
    return samples


def sample(samples: Series, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def settled(port: int, done: Callable[[Series], bool]) -> Series:
    """/metrics once ``done`` holds (statistics arrive within a second or two)."""
    deadline = time.monotonic() + SETTLE
    while True:
        samples = metrics(port)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def websocket_snapshot(port: int, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first snapshot the WebSocket pushes for which ``done`` holds (or the last one)."""

    async def read() -> dict[str, Any]:
        snap: dict[str, Any] = {}
        origin = [(b"Origin", f"http://127.0.0.1:{port}".encode())]
        async with trio_websocket.open_websocket(
            "127.0.0.1", port, "/ws", use_ssl=False, extra_headers=origin
        ) as ws:
            with trio.move_on_after(SETTLE):
                while True:
                    message = await ws.get_message()
                    assert isinstance(message, str)
                    snap = json.loads(message)
                    if done(snap):
                        break
        return snap

    return trio.run(read)


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            fields[key] = value
    return fields


def node_line(info: str, address: str) -> dict[str, str]:
    for value in info_fields(info).values():
        if value.startswith(f"address={address},"):
            return dict(item.split("=", 1) for item in value.split(","))
    raise AssertionError(f"no node {address} in {info}")


# -- standalone ---------------------------------------------------------------------------------

#: SETs per connection (several connections, so both worker processes get some).
SETS = [5, 17, 1, 40, 3, 9, 12, 13]
#: Connections that also send one malformed GET (an error reply from the server).
ERRORS = [1, 4, 6]


@pytest.fixture(scope="module")
def standalone(redis_tls: RedisNode, certs_dir: CertPaths) -> Iterator[Tunnel]:
    args = standalone_args(redis_tls, certs_dir.ca)
    t = Tunnel(
        [*args, "--local-port", str(free_port()), "--dashboard", "0"],
        password=redis_tls.password,
    )
    try:
        yield t
    finally:
        assert t.stop() == 0, t.stderr


def test_standalone_counts_are_exact(standalone: Tunnel, redis_tls: RedisNode) -> None:
    port = standalone.port
    node = f"127.0.0.1:{redis_tls.port}"
    sent = received = 0
    commands = errors = 0
    for index, count in enumerate(SETS):
        frames = [encode_command("SET", f"obs:{index}:{i}", "v" * (i % 7)) for i in range(count)]
        if index in ERRORS:
            frames.append(encode_command("GET"))
        replies = exchange(port, frames)
        assert replies[:count] == [b"+OK\r\n"] * count
        sent += sum(map(len, frames))
        received += sum(map(len, replies))
        commands += len(frames)
        errors += index in ERRORS

    samples = settled(
        standalone.dashboard,
        lambda s: (
            sample(s, "redis_tunnel_commands_total", node=node) >= commands
            and sample(s, "redis_tunnel_clients_connected") == 0
        ),
    )
    assert sample(samples, "redis_tunnel_commands_total", node=node) == commands
    assert sample(samples, "redis_tunnel_bytes_in_total", node=node) == sent
    assert sample(samples, "redis_tunnel_bytes_out_total", node=node) == received
    assert sample(samples, "redis_tunnel_errors_total", node=node) == errors == len(ERRORS)
    assert sample(samples, "redis_tunnel_moved_total", node=node) == 0
    assert sample(samples, "redis_tunnel_latency_seconds_count", node=node) == commands
    assert sample(samples, "redis_tunnel_clients_total") == len(SETS)
    assert sample(samples, "redis_tunnel_clients_connected") == 0
    info = sample(samples, "redis_tunnel_node_info", node=node, role="standalone",
                  listener=f"127.0.0.1:{port}")  # fmt: skip
    assert info == 1

    snap = websocket_snapshot(standalone.dashboard, lambda s: s["totals"]["ops"] >= commands)
    assert snap["mode"] == "standalone"
    assert snap["totals"]["ops"] == commands
    assert snap["totals"]["bytes_in"] == sent
    assert snap["totals"]["bytes_out"] == received
    assert snap["totals"]["errors"] == len(ERRORS)
    assert snap["clients"] == {"connected": 0, "total": len(SETS)}
    [entry] = [n for n in snap["nodes"] if n["address"] == node]
    assert entry["listener"] == f"127.0.0.1:{port}"
    assert entry["role"] == "standalone"
    assert entry["ops"] == commands
    assert entry["latency"]["count"] == commands

    # TUNNEL INFO, answered by the tunnel (whichever process redis-cli lands on).
    text = redis_cli(port, "TUNNEL", "INFO")
    fields = info_fields(text)
    assert fields["tunnel_mode"] == "standalone"
    assert fields["connected_clients"] == "1"  # redis-cli itself
    assert fields["total_connections_received"] == str(len(SETS) + 1)
    line = node_line(text, node)
    assert line["ops"] == str(commands)
    assert line["errors"] == str(len(ERRORS))
    assert line["listener"] == f"127.0.0.1:{port}"
    assert "Subcommands are" in redis_cli(port, "TUNNEL", "HELP")
    assert "unknown subcommand" in redis_cli(port, "TUNNEL", "NOPE")
    # The tunnel's own replies are counted under the pseudo-node "tunnel", not the server's.
    samples = settled(
        standalone.dashboard, lambda s: sample(s, "redis_tunnel_commands_total", node="tunnel") >= 3
    )
    assert sample(samples, "redis_tunnel_commands_total", node="tunnel") == 3
    assert sample(samples, "redis_tunnel_errors_total", node="tunnel") == 1
    assert sample(samples, "redis_tunnel_commands_total", node=node) == commands


def test_tunnel_info_in_order_and_in_a_transaction(standalone: Tunnel) -> None:
    port = standalone.port
    replies = exchange(
        port,
        [
            encode_command("SET", "obs:order", "1"),
            encode_command("tunnel", "info"),
            encode_command("GET", "obs:order"),
            encode_command("MULTI"),
            encode_command("TUNNEL", "INFO"),
            encode_command("EXEC"),
        ],
    )
    assert replies[0] == b"+OK\r\n"
    assert replies[1].startswith(b"$")
    assert b"tunnel_mode:standalone" in replies[1]
    assert replies[2] == b"$1\r\n1\r\n"
    assert replies[3] == b"+OK\r\n"
    # Inside MULTI the server has failed the transaction, as for any unknown command.
    assert replies[4].startswith(b"$")
    assert b"# Tunnel" in replies[4]
    assert replies[5].startswith(b"-EXECABORT")


def test_without_statistics_tunnel_reaches_the_server(
    redis_tls: RedisNode, certs_dir: CertPaths
) -> None:
    args = standalone_args(redis_tls, certs_dir.ca)
    t = Tunnel([*args, "--local-port", str(free_port())], password=redis_tls.password)
    try:
        port = t.port
        [reply] = exchange(port, [encode_command("TUNNEL", "INFO")])
        assert reply.startswith(b"-ERR unknown command 'TUNNEL'")
    finally:
        assert t.stop() == 0, t.stderr


# -- pinned ---------------------------------------------------------------------------------


def masters_by_slot(cluster: LocalCluster) -> list[tuple[int, int, RedisNode]]:
    reply = cluster.seed.call("CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    return [(start, end, cluster.node_by_port(int(m[1]))) for start, end, m, *_ in reply]


def keys_for(cluster: LocalCluster, prefix: str) -> dict[int, list[str]]:
    """Per master port, keys it owns (200 candidates spread over the masters)."""
    ranges = masters_by_slot(cluster)
    found: dict[int, list[str]] = {}
    for i in range(200):
        key = f"{prefix}:{i}"
        slot = key_slot(key.encode())
        owner = next(node for start, end, node in ranges if start <= slot <= end)
        found.setdefault(owner.port, []).append(key)
    return found


@pytest.mark.cluster
def test_pinned_counts_redirects_and_topology(redis_cluster: LocalCluster) -> None:
    args = pinned_args(redis_cluster, "--refresh", "0", "--dashboard", "0")
    t = Tunnel(args, password=redis_cluster.password)
    try:
        owned = keys_for(redis_cluster, "obs-pinned")
        masters = sorted(owned)
        assert len(masters) == 3
        sets = dict(zip(masters, (7, 11, 2), strict=True))
        moved = dict(zip(masters, (3, 0, 5), strict=True))
        for index, port in enumerate(masters):
            other = masters[(index + 1) % 3]
            local = t.listener_for(port)
            frames = [encode_command("SET", key, "x") for key in owned[port][: sets[port]]]
            frames += [encode_command("SET", key, "y") for key in owned[other][: moved[port]]]
            replies = exchange(local, frames)
            assert replies[: sets[port]] == [b"+OK\r\n"] * sets[port]
            for reply in replies[sets[port] :]:
                # MOVED names the owner's listener, never the node itself.
                assert reply.startswith(b"-MOVED ")
                assert reply.endswith(f":{t.listener_for(other)}\r\n".encode())

        total = sum(sets.values()) + sum(moved.values())

        def complete(s: Series) -> bool:
            return (
                sum(
                    sample(s, "redis_tunnel_commands_total", node=f"127.0.0.1:{p}") for p in masters
                )
                >= total
            )

        samples = settled(t.dashboard, complete)
        for port in masters:
            node = f"127.0.0.1:{port}"
            assert sample(samples, "redis_tunnel_commands_total", node=node) == (
                sets[port] + moved[port]
            )
            assert sample(samples, "redis_tunnel_moved_total", node=node) == moved[port]
            assert sample(samples, "redis_tunnel_errors_total", node=node) == 0
        # The topology table: every node, masters and replicas, with its listener.
        listed = {
            dict(labels)["node"]: dict(labels)
            for (name, labels) in samples
            if name == "redis_tunnel_node_info"
        }
        assert len(listed) == 6
        for address, labels in listed.items():
            upstream_port = int(address.rpartition(":")[2])
            assert labels["listener"] == f"127.0.0.1:{t.listener_for(upstream_port)}"
            assert labels["role"] in ("master", "replica")
        slots = sum(
            sample(samples, "redis_tunnel_node_slots", node=f"127.0.0.1:{p}") for p in masters
        )
        assert slots == 16384

        snap = websocket_snapshot(t.dashboard, lambda s: s["totals"]["ops"] >= total)
        assert snap["mode"] == "pinned"
        assert snap["totals"]["ops"] == total
        assert snap["totals"]["moved"] == sum(moved.values())
        by_address = {n["address"]: n for n in snap["nodes"]}
        for port in masters:
            entry = by_address[f"127.0.0.1:{port}"]
            assert entry["moved"] == moved[port]
            assert entry["role"] == "master"
            assert entry["listener"] == f"127.0.0.1:{t.listener_for(port)}"
            assert entry["slot_count"] > 0

        text = redis_cli(t.listener_for(masters[0]), "TUNNEL", "INFO")
        assert info_fields(text)["tunnel_mode"] == "pinned"
        assert node_line(text, f"127.0.0.1:{masters[1]}")["moved"] == str(moved[masters[1]])
    finally:
        assert t.stop() == 0, t.stderr


# -- flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),  # loopback unless an address is given
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_dashboard_address_forms(text: str, expected: tuple[str, int]) -> None:
    assert dashboard_address(text) == expected


@pytest.mark.parametrize("text", ["", ":8080", "host:", "host:x", "70000", "a:99999", "-1"])
def test_bad_dashboard_addresses_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        dashboard_address(text)


@pytest.mark.parametrize(
    "flags",
    [
        ["--read-from", "replica"],
        ["--pool-size", "3"],
        ["-c", "--tunnel-mode", "pinned", "--pool-size", "3"],
    ],
)
def test_smart_flags_elsewhere_are_usage_errors(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tunn", "-h", "127.0.0.1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "applies to smart cluster mode" in err[0]


def test_stats_without_a_dashboard(redis_tls: RedisNode, certs_dir: CertPaths) -> None:
    args = standalone_args(redis_tls, certs_dir.ca)
    t = Tunnel([*args, "--local-port", str(free_port()), "--stats"], password=redis_tls.password)
    try:
        port = t.port
        exchange(port, [encode_command("SET", "obs:stats", "1")] * 3)
        # Another process's counts reach the one that answers within a second or two.
        deadline = time.monotonic() + SETTLE
        while True:
            text = redis_cli(port, "TUNNEL", "INFO")
            ops = node_line(text, f"127.0.0.1:{redis_tls.port}")["ops"]
            if ops == "3" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert info_fields(text)["tunnel_mode"] == "standalone"
        assert ops == "3"
    finally:
        assert t.stop() == 0, t.stderr
    assert t.dashboard == 0
