"""tunnel.dashboard over real loopback sockets: /metrics, the WebSocket feed, the page, security.

The stats are fed directly (ConnectionCounters + publish), so the expected numbers are known
exactly. The same check through a real tunnel and redis-server comes with the wiring.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trio_websocket

from client.errors import ConfigError
from tunnel.dashboard import same_origin, serve_dashboard
from tunnel.stats import ConnectionCounters, TunnelStats

__all__: list[str] = []

A, B, C = "10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"
WAIT = 10.0
INTERVAL = 0.2  # seconds between two pushed snapshots

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Dashboard:
    def __init__(self, stats: TunnelStats, port: int) -> None:
        self.stats = stats
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"


async def start(nursery: trio.Nursery, stats: TunnelStats) -> Dashboard:
    listeners: list[trio.SocketListener] = await nursery.start(
        partial(serve_dashboard, interval=INTERVAL), stats, "127.0.0.1", 0
    )
    return Dashboard(stats, listeners[0].socket.getsockname()[1])


@pytest.fixture
async def dashboard(nursery: trio.Nursery) -> Dashboard:
    stats = TunnelStats("smart")
    stats.set_topology([{"address": A, "role": "master", "slots": [(0, 16383)]}])
    return await start(nursery, stats)


async def http(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    *,
    host: str | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """One request with h11 on a new connection: (status, headers, body)."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            all_headers = [("Host", host or f"127.0.0.1:{port}"), *headers]
            if body:
                all_headers.append(("Content-Length", str(len(body))))
            data = conn.send(h11.Request(method=method, target=path, headers=all_headers)) or b""
            if body:
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(data)
            return await read_response(conn, stream)


async def read_response(
    conn: h11.Connection, stream: trio.abc.Stream
) -> tuple[int, dict[str, str], bytes]:
    status, got, payload = 0, {}, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
            got = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            payload += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, got, bytes(payload)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
            return bytes(received)


def parse_samples(text: str) -> Series:
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
    return samples[(name, frozenset(labels.items()))]


def open_ws(
    port: int, origin: str | None
) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
    """A WebSocket to the dashboard, with ``Origin: origin`` (none when None)."""
    headers = [(b"Origin", origin.encode())] if origin is not None else []
    return trio_websocket.open_websocket(
        "127.0.0.1",
        port,
        "/ws",
        use_ssl=False,
        extra_headers=headers,
        connect_timeout=WAIT,
        disconnect_timeout=WAIT,
    )


async def next_snapshot(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        message = await ws.get_message()
    assert isinstance(message, str)
    snap: dict[str, Any] = json.loads(message)
    return snap


# -- exact numbers ---------------------------------------------------------------------------

SETS = {A: 1000, B: 777, C: 1}
MOVED = {A: 13, B: 0, C: 2}
ASK = {A: 0, B: 5, C: 0}
SET_FRAME = b"*3\r\n$3\r\nSET\r\n$8\r\nkey:0001\r\n$3\r\nxxx\r\n"


def feed_traffic(
    stats: TunnelStats,
    sets: dict[str, int],
    moved: dict[str, int],
    ask: dict[str, int],
    *,
    connections: int = 3,
) -> None:
    """N SETs and M redirects per node, spread over several connections, published in parts."""
    now = 0.0
    for address in sets:
        per_connection = [ConnectionCounters() for _ in range(connections)]
        for i in range(sets[address]):
            counters = per_connection[i % connections]
            counters.bytes_in += len(SET_FRAME)
            counters.bytes_out += 5  # +OK\r\n
            counters.record(50_000 + 1_000 * (i % 400))
            now += 0.01
            stats.maybe_publish(address, counters, now)
        for i in range(moved[address] + ask[address]):
            counters = per_connection[i % connections]
            if i < moved[address]:
                counters.moved += 1
            else:
                counters.ask += 1
            counters.retries += 1
        for counters in per_connection:  # the connections close
            stats.publish(address, counters)


async def test_metrics_and_websocket_report_exact_counts(nursery: trio.Nursery) -> None:
    stats = TunnelStats("smart")
    stats.set_topology(
        [
            {"address": A, "role": "master", "slots": [(0, 5460)]},
            {"address": B, "role": "master", "slots": [(5461, 10922)]},
            {"address": C, "role": "master", "slots": [(10923, 16383)]},
        ]
    )
    for _ in range(4):
        stats.client_opened()
    stats.client_closed()
    feed_traffic(stats, SETS, MOVED, ASK)
    dash = await start(nursery, stats)
    request_bytes = len(SET_FRAME)

    status, headers, body = await http(dash.port, path="/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_samples(body.decode())
    for address in SETS:
        assert sample(samples, "redis_tunnel_commands_total", node=address) == SETS[address]
        assert sample(samples, "redis_tunnel_latency_seconds_count", node=address) == SETS[address]
        assert (
            sample(samples, "redis_tunnel_latency_seconds_bucket", node=address, le="+Inf")
            == SETS[address]
        )
        assert sample(samples, "redis_tunnel_bytes_in_total", node=address) == (
            SETS[address] * request_bytes
        )
        assert sample(samples, "redis_tunnel_bytes_out_total", node=address) == SETS[address] * 5
        assert sample(samples, "redis_tunnel_moved_total", node=address) == MOVED[address]
        assert sample(samples, "redis_tunnel_ask_total", node=address) == ASK[address]
        assert sample(samples, "redis_tunnel_retries_total", node=address) == (
            MOVED[address] + ASK[address]
        )
    assert sample(samples, "redis_tunnel_clients_connected") == 3
    assert sample(samples, "redis_tunnel_clients_total") == 4

    async with open_ws(dash.port, dash.origin) as ws:
        snap = await next_snapshot(ws)
        assert snap["totals"] == {
            "ops": sum(SETS.values()),
            "bytes_in": sum(SETS.values()) * request_bytes,
            "bytes_out": sum(SETS.values()) * 5,
            "errors": 0,
            "moved": sum(MOVED.values()),
            "ask": sum(ASK.values()),
            "retries": sum(MOVED.values()) + sum(ASK.values()),
            "upstream_reconnects": 0,
        }
        assert snap["clients"] == {"connected": 3, "total": 4}
        nodes = {node["address"]: node for node in snap["nodes"]}
        for address in SETS:
            assert nodes[address]["ops"] == SETS[address]
            assert nodes[address]["moved"] == MOVED[address]
            assert nodes[address]["ask"] == ASK[address]
            assert nodes[address]["latency"]["count"] == SETS[address]

        # More traffic: the next snapshot that differs carries exactly the new totals.
        feed_traffic(stats, {A: 0, B: 10, C: 0}, {A: 3, B: 0, C: 0}, {A: 0, B: 0, C: 0})
        stats.upstream_reconnect(C)
        while snap["totals"]["ops"] == sum(SETS.values()):
            snap = await next_snapshot(ws)
        nodes = {node["address"]: node for node in snap["nodes"]}
        assert snap["totals"]["ops"] == sum(SETS.values()) + 10
        assert snap["totals"]["moved"] == sum(MOVED.values()) + 3
        assert nodes[B]["ops"] == SETS[B] + 10
        assert nodes[A]["moved"] == MOVED[A] + 3
        assert nodes[C]["upstream_reconnects"] == 1
    _, _, body = await http(dash.port, path="/metrics")
    samples = parse_samples(body.decode())
    assert sample(samples, "redis_tunnel_commands_total", node=B) == SETS[B] + 10
    assert sample(samples, "redis_tunnel_upstream_reconnects_total", node=C) == 1


async def test_snapshot_json_is_the_latest_pushed_snapshot(dashboard: Dashboard) -> None:
    status, headers, body = await http(dashboard.port, path="/snapshot.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["mode"] == "smart"


# -- WebSocket security ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://evil.example:{port}",
        "null",
        "http://localhost:{port}",  # same machine, but another origin than the Host used
        "http://127.0.0.1:{other}",
        "http://127.0.0.1",
        "file://",
        "not a url",
    ],
)
async def test_websocket_with_foreign_origin_is_refused(dashboard: Dashboard, origin: str) -> None:
    origin = origin.format(port=dashboard.port, other=dashboard.port + 1)
    status, _, body = await http(
        dashboard.port,
        path="/ws",
        headers=[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Origin", origin),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    assert status == 403
    assert b"cross-origin" in body


@pytest.mark.parametrize("drop", ["Sec-WebSocket-Key", "Sec-WebSocket-Version", "Connection"])
async def test_incomplete_websocket_handshake_is_a_bad_request(
    dashboard: Dashboard, drop: str
) -> None:
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Origin", dashboard.origin),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    status, _, _ = await http(
        dashboard.port, path="/ws", headers=[pair for pair in headers if pair[0] != drop]
    )
    assert status == 400


async def test_http10_websocket_handshake_is_a_bad_request(dashboard: Dashboard) -> None:
    reply = await raw_exchange(
        dashboard.port,
        (
            b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    assert reply.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("origin", ["same", None])
async def test_websocket_same_origin_or_no_origin_is_accepted(
    dashboard: Dashboard, origin: str | None
) -> None:
    async with open_ws(dashboard.port, dashboard.origin if origin == "same" else None) as ws:
        first = await next_snapshot(ws)
        second = await next_snapshot(ws)
    assert first["mode"] == second["mode"] == "smart"
    assert second["uptime"] > first["uptime"]


async def test_websocket_ignores_what_the_client_sends(dashboard: Dashboard) -> None:
    async with open_ws(dashboard.port, dashboard.origin) as ws:
        await ws.send_message("FLUSHALL")
        await ws.send_message(b"\x00" * 100)
        before = dashboard.stats.snapshot()["totals"]
        for _ in range(3):
            snap = await next_snapshot(ws)
            assert snap["totals"] == before
        assert ws.closed is None


def test_same_origin_rules() -> None:
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same_origin("http://LOCALHOST:8080", "localhost:8080")
    assert same_origin("http://[::1]:8080", "[::1]:8080")
    assert same_origin("http://example.com", "example.com:80")
    assert same_origin("https://example.com", "example.com:443")
    assert same_origin("https://example.com", "example.com")  # Host via a TLS proxy: 443
    assert not same_origin("http://example.com.evil.net", "example.com")
    assert not same_origin("http://127.0.0.1:8080/path", "127.0.0.1:8080")
    assert not same_origin("ws://127.0.0.1:8080", "127.0.0.1:8080")
    assert not same_origin("http://127.0.0.1:8080", "127.0.0.1:8080/x")
    assert not same_origin("http://127.0.0.1:99999", "127.0.0.1:99999")


# -- HTTP ------------------------------------------------------------------------------------


async def test_page_and_assets_are_served_with_a_strict_policy(dashboard: Dashboard) -> None:
    status, headers, page = await http(dashboard.port, path="/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert b'src="/static/app.js"' in page
    assert b'href="/static/app.css"' in page
    assert not re.search(rb"(src|href)=\"(https?:)?//", page), "no external assets"
    status, headers, script = await http(dashboard.port, path="/static/app.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"__dashboardState" in script
    status, headers, style = await http(dashboard.port, path="/static/app.css?v=1")
    assert status == 200
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert b"@import" not in style
    assert b"url(" not in style


async def test_the_page_offers_no_way_to_run_commands(dashboard: Dashboard) -> None:
    _, _, page = await http(dashboard.port, path="/")
    _, _, script = await http(dashboard.port, path="/static/app.js")
    for tag in (b"<form", b"<input", b"<textarea", b"<button", b"<select", b"contenteditable"):
        assert tag not in page.lower()
    assert b".send(" not in script
    assert b"fetch(" not in script
    assert b"XMLHttpRequest" not in script


async def test_head_keepalive_and_errors(dashboard: Dashboard) -> None:
    status, headers, body = await http(dashboard.port, "HEAD", "/")
    assert status == 200
    assert int(headers["content-length"]) > 100
    assert body == b""
    status, _, _ = await http(dashboard.port, path="/nope")
    assert status == 404
    status, headers, _ = await http(dashboard.port, "POST", "/metrics", body=b"x=1")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, headers, _ = await http(dashboard.port, path="/ws")
    assert status == 426
    # Two requests on one connection.
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", dashboard.port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            for path in ("/metrics", "/static/app.css"):
                await stream.send_all(
                    (
                        conn.send(
                            h11.Request(
                                method="GET",
                                target=path,
                                headers=[("Host", f"127.0.0.1:{dashboard.port}")],
                            )
                        )
                        or b""
                    )
                    + (conn.send(h11.EndOfMessage()) or b"")
                )
                status, _, body = await read_response(conn, stream)
                assert status == 200
                assert body
                conn.start_next_cycle()


async def test_malformed_and_oversized_requests_are_refused(dashboard: Dashboard) -> None:
    reply = await raw_exchange(dashboard.port, b"GARBAGE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    reply = await raw_exchange(dashboard.port, huge)
    assert reply.startswith(b"HTTP/1.1 431 ")
    big_body = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    )
    reply = await raw_exchange(dashboard.port, big_body)
    assert reply.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 403),
        ("evil.example:{port}", 403),
        ("10.1.2.3:{port}", 403),
        ("localhost:{port}", 200),
        ("127.0.0.2:{port}", 200),
        ("[::1]:{port}", 200),
    ],
)
async def test_loopback_dashboard_refuses_foreign_host_names(
    dashboard: Dashboard, host: str, status: int
) -> None:
    got, _, body = await http(
        dashboard.port, path="/metrics", host=host.format(port=dashboard.port)
    )
    assert got == status, body


async def test_busy_address_is_a_config_error(dashboard: Dashboard) -> None:
    with pytest.raises(ConfigError, match="cannot listen"):
        await serve_dashboard(dashboard.stats, "127.0.0.1", dashboard.port)
