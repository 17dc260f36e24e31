"""tunnel.stats: counters, histograms, snapshot, Prometheus text, INFO text, TUNNEL command."""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.topology import Node, Topology
from tunnel.stats import (
    BUCKET_BOUNDS_NS,
    COUNTER_NAMES,
    LOCAL_NODE,
    PUBLISH_INTERVAL,
    ConnectionCounters,
    LiveCounters,
    TunnelStats,
    is_tunnel_command,
    is_tunnel_info,
    percentile_us,
    topology_nodes,
    tunnel_args,
    tunnel_reply,
)

__all__: list[str] = []

A, B, C = "10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str) -> tuple[dict[str, str], Series]:
    """Strict-enough parser of text format 0.0.4: (family -> type, series -> value).

    Fails on malformed lines, samples before their TYPE line, and duplicate series.
    """
    types: dict[str, str] = {}
    samples: Series = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"duplicate TYPE {name}"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed line {line!r}"
        name, raw_labels, raw_value = match.groups()
        labels: list[tuple[str, str]] = []
        if raw_labels:
            position = 0
            for label in _LABEL.finditer(raw_labels):
                assert label.start() == position, f"bad labels in {line!r}"
                labels.append((label.group(1), _unescape(label.group(2))))
                position = label.end()
            assert position == len(raw_labels), f"bad labels in {line!r}"
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or (family in types and types[family] == "histogram"), line
        key = (name, frozenset(labels))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = math.inf if raw_value == "+Inf" else float(raw_value)
    return types, samples


def series(samples: Series, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def info_fields(text: bytes) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Parse INFO-style text: (key -> value, node entries as dicts)."""
    assert text.endswith(b"\r\n")
    assert b"\n" not in text.replace(b"\r\n", b"")
    fields: dict[str, str] = {}
    nodes: list[dict[str, str]] = []
    for line in text.decode().split("\r\n"):
        if not line or line.startswith("# "):
            continue
        key, value = line.split(":", 1)
        if re.fullmatch(r"node\d+", key):
            assert int(key[4:]) == len(nodes)
            nodes.append(dict(item.split("=", 1) for item in value.split(",")))
        else:
            fields[key] = value
    return fields, nodes


# -- ConnectionCounters ----------------------------------------------------------------------


def test_bucket_bounds_are_log_spaced_from_1us_to_10s() -> None:
    assert BUCKET_BOUNDS_NS[0] == 1_000
    assert BUCKET_BOUNDS_NS[-1] == 10_000_000_000
    assert all(a < b for a, b in itertools.pairwise(BUCKET_BOUNDS_NS))
    assert all(b / a <= 2.0 for a, b in itertools.pairwise(BUCKET_BOUNDS_NS))


@pytest.mark.parametrize(
    ("latency_ns", "bucket"),
    [
        (0, 0),
        (1_000, 0),  # a bound belongs to its own bucket (Prometheus "le")
        (1_001, 1),
        (1_500, 1),
        (100_000, BUCKET_BOUNDS_NS.index(100_000)),
        (100_001, BUCKET_BOUNDS_NS.index(100_000) + 1),
        (10_000_000_000, len(BUCKET_BOUNDS_NS) - 1),
        (10_000_000_001, len(BUCKET_BOUNDS_NS)),  # overflow
        (10**15, len(BUCKET_BOUNDS_NS)),
    ],
)
def test_record_puts_the_sample_in_the_le_bucket(latency_ns: int, bucket: int) -> None:
    counters = ConnectionCounters()
    counters.record(latency_ns)
    assert counters.ops == 1
    assert counters.latency_sum_ns == latency_ns
    assert [i for i, count in enumerate(counters.latency) if count] == [bucket]
    assert len(counters.latency) == len(BUCKET_BOUNDS_NS) + 1


def test_record_counts_a_pipelined_batch() -> None:
    counters = ConnectionCounters()
    counters.record(250_000, ops=16)
    assert counters.ops == 16
    assert sum(counters.latency) == 16
    assert counters.latency_sum_ns == 16 * 250_000


def test_publish_adds_into_the_node_and_resets_the_counters() -> None:
    stats = TunnelStats("smart")
    counters = ConnectionCounters()
    latency = counters.latency
    for _ in range(3):
        counters.record(2_000)
        counters.bytes_in += 10
        counters.bytes_out += 20
        counters.errors += 1
        counters.moved += 2
        counters.ask += 3
        counters.retries += 4
        assert not counters.is_empty()
        stats.publish(A, counters)
        assert counters.is_empty()
        assert counters.latency is latency  # reset in place
    node = stats.node(A)
    assert node.counts() == (3, 30, 60, 3, 6, 9, 12, 0)
    assert node.latency_count == 3
    assert node.latency_sum_ns == 6_000


def test_maybe_publish_publishes_at_most_once_per_interval() -> None:
    stats = TunnelStats("standalone")
    counters = ConnectionCounters()
    counters.record(1_000)
    stats.maybe_publish(A, counters, now=10.0)
    assert stats.node(A).ops == 1
    counters.record(1_000)
    stats.maybe_publish(A, counters, now=10.0 + PUBLISH_INTERVAL / 2)
    assert stats.node(A).ops == 1
    assert counters.ops == 1
    stats.maybe_publish(A, counters, now=10.0 + PUBLISH_INTERVAL)
    assert stats.node(A).ops == 2
    assert counters.is_empty()


# -- percentiles -----------------------------------------------------------------------------


def _histogram(samples: list[int]) -> list[int]:
    counters = ConnectionCounters()
    for sample in samples:
        counters.record(sample)
    return counters.latency


def test_percentile_of_empty_histogram_is_none() -> None:
    assert percentile_us(_histogram([]), 0.5) is None


def test_percentile_stays_inside_the_bucket_of_the_rank() -> None:
    buckets = _histogram([100_000] * 98 + [10_000_000] * 2)
    p50 = percentile_us(buckets, 0.5)
    p99 = percentile_us(buckets, 0.99)
    assert p50 is not None
    assert p99 is not None
    assert 70 < p50 <= 100  # bucket (70 µs, 100 µs]
    assert 7_000 < p99 <= 10_000  # bucket (7 ms, 10 ms]


def test_percentile_in_overflow_is_the_last_bound() -> None:
    assert percentile_us(_histogram([60 * 10**9]), 0.99) == 10_000_000


# -- snapshot --------------------------------------------------------------------------------


def _traffic(stats: TunnelStats) -> None:
    plan = {A: (5, 100_000), B: (7, 300_000), C: (0, 0)}
    for address, (ops, latency) in plan.items():
        counters = ConnectionCounters()
        for _ in range(ops):
            counters.record(latency)
            counters.bytes_in += 30
            counters.bytes_out += 5
        stats.publish(address, counters)
    redirects = ConnectionCounters()
    redirects.moved += 4
    redirects.ask += 2
    redirects.retries += 6
    redirects.errors += 1
    stats.publish(B, redirects)
    stats.upstream_reconnect(C)


def test_snapshot_totals_are_exact_and_json_able() -> None:
    clock = Clock()
    stats = TunnelStats("smart", clock=clock)
    stats.set_topology(
        [
            {"address": A, "role": "master", "slots": [(0, 8191)]},
            {"address": B, "role": "master", "slots": [(8192, 16383)]},
            {"address": C, "role": "replica"},
        ]
    )
    for _ in range(3):
        stats.client_opened()
    stats.client_closed()
    _traffic(stats)
    clock.now += 2.0
    snap = json.loads(stats.snapshot_json())
    assert snap["mode"] == "smart"
    assert snap["clients"] == {"connected": 2, "total": 3}
    assert snap["totals"] == {
        "ops": 12,
        "bytes_in": 360,
        "bytes_out": 60,
        "errors": 1,
        "moved": 4,
        "ask": 2,
        "retries": 6,
        "upstream_reconnects": 1,
    }
    assert snap["rates"]["ops"] == pytest.approx(6.0)
    assert snap["rates"]["moved"] == pytest.approx(2.0)
    by_address = {node["address"]: node for node in snap["nodes"]}
    assert [node["address"] for node in snap["nodes"]] == [A, B, C]
    assert by_address[A]["ops"] == 5
    assert by_address[B]["ops"] == 7
    assert by_address[C]["ops"] == 0
    assert by_address[B]["moved"] == 4
    assert by_address[B]["ask"] == 2
    assert by_address[C]["upstream_reconnects"] == 1
    assert by_address[A]["slots"] == [[0, 8191]]
    assert by_address[A]["slot_count"] == 8192
    assert by_address[A]["rates"]["ops"] == pytest.approx(2.5)
    assert by_address[A]["latency"]["count"] == 5
    assert 70 < by_address[A]["latency"]["p50_us"] <= 100
    assert 200 < by_address[B]["latency"]["p99_us"] <= 300
    assert by_address[C]["latency"]["p50_us"] is None
    assert snap["latency"]["count"] == 12


def test_rates_cover_the_window_since_the_previous_snapshot() -> None:
    clock = Clock()
    stats = TunnelStats("standalone", clock=clock)
    counters = ConnectionCounters()
    counters.record(5_000, ops=10)
    stats.publish(A, counters)
    clock.now += 1.0
    assert stats.snapshot()["rates"]["ops"] == pytest.approx(10.0)
    # Too soon for a new window: the previous rates are reused.
    counters.record(5_000, ops=10)
    stats.publish(A, counters)
    clock.now += 0.1
    assert stats.snapshot()["rates"]["ops"] == pytest.approx(10.0)
    clock.now += 0.9
    snap = stats.snapshot()
    assert snap["rates"]["ops"] == pytest.approx(10 / 1.0)
    assert snap["totals"]["ops"] == 20
    # No traffic in the next window: zero rate, no windowed percentile, totals unchanged.
    clock.now += 1.0
    snap = stats.snapshot()
    assert snap["rates"]["ops"] == 0
    assert snap["latency"]["p50_us"] is None
    assert snap["latency"]["p50_us_all"] is not None
    assert snap["totals"]["ops"] == 20


def test_topology_order_flags_and_listeners() -> None:
    stats = TunnelStats("pinned")
    stats.publish("10.9.9.9:1", ConnectionCounters())
    stats.set_topology(
        [
            {"address": C, "role": "replica", "listener": "127.0.0.1:7102"},
            {
                "address": B,
                "role": "master",
                "slots": [(8192, 16383)],
                "listener": "127.0.0.1:7101",
            },
            {"address": A, "role": "master", "slots": [(0, 8191)], "listener": "127.0.0.1:7100"},
        ]
    )
    snap = stats.snapshot()
    assert [(n["address"], n["in_topology"]) for n in snap["nodes"]] == [
        (A, True),
        (B, True),
        (C, True),
        ("10.9.9.9:1", False),
    ]
    assert snap["nodes"][0]["listener"] == "127.0.0.1:7100"
    stats.set_topology([{"address": A, "role": "master", "slots": [(0, 16383)]}])
    flags = {n["address"]: n["in_topology"] for n in stats.snapshot()["nodes"]}
    assert flags == {A: True, B: False, C: False, "10.9.9.9:1": False}


def test_topology_nodes_from_a_client_topology() -> None:
    topology = Topology(
        [
            Node(id="a" * 40, host="10.0.0.1", port=7000, slots=((0, 16383),)),
            Node(id="b" * 40, host="10.0.0.2", port=7001, role="replica", master_id="a" * 40),
        ]
    )
    nodes = topology_nodes(topology, {"10.0.0.1:7000": "127.0.0.1:17000"})
    assert nodes == [
        {
            "address": A,
            "role": "master",
            "slots": ((0, 16383),),
            "listener": "127.0.0.1:17000",
            "health": "online",
        },
        {
            "address": "10.0.0.2:7001",
            "role": "replica",
            "slots": (),
            "listener": None,
            "health": "online",
        },
    ]


# -- Prometheus ------------------------------------------------------------------------------


def test_prometheus_reports_exact_counts_and_valid_histograms() -> None:
    stats = TunnelStats("smart")
    stats.set_topology(
        [{"address": A, "role": "master", "slots": [(0, 16383)], "listener": "127.0.0.1:17000"}]
    )
    stats.client_opened()
    _traffic(stats)
    types, samples = parse_prometheus(stats.prometheus())
    assert types["redis_tunnel_commands_total"] == "counter"
    assert types["redis_tunnel_latency_seconds"] == "histogram"
    assert types["redis_tunnel_clients_connected"] == "gauge"
    assert series(samples, "redis_tunnel_info", mode="smart") == 1
    assert series(samples, "redis_tunnel_clients_connected") == 1
    assert series(samples, "redis_tunnel_clients_total") == 1
    assert series(samples, "redis_tunnel_commands_total", node=A) == 5
    assert series(samples, "redis_tunnel_commands_total", node=B) == 7
    assert series(samples, "redis_tunnel_bytes_in_total", node=B) == 210
    assert series(samples, "redis_tunnel_bytes_out_total", node=B) == 35
    assert series(samples, "redis_tunnel_moved_total", node=B) == 4
    assert series(samples, "redis_tunnel_ask_total", node=B) == 2
    assert series(samples, "redis_tunnel_retries_total", node=B) == 6
    assert series(samples, "redis_tunnel_errors_total", node=B) == 1
    assert series(samples, "redis_tunnel_upstream_reconnects_total", node=C) == 1
    assert (
        series(samples, "redis_tunnel_node_info", node=A, role="master", listener="127.0.0.1:17000")
        == 1
    )
    assert series(samples, "redis_tunnel_node_slots", node=A) == 16384
    for node, count, total_s in ((A, 5, 5 * 100e-6), (B, 7, 7 * 300e-6), (C, 0, 0.0)):
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (name, labels), value in samples.items()
            if name == "redis_tunnel_latency_seconds_bucket" and dict(labels)["node"] == node
        )
        assert len(buckets) == len(BUCKET_BOUNDS_NS) + 1
        assert buckets[-1][0] == math.inf
        assert buckets[-1][1] == count
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
        assert series(samples, "redis_tunnel_latency_seconds_count", node=node) == count
        assert series(samples, "redis_tunnel_latency_seconds_sum", node=node) == pytest.approx(
            total_s
        )
    # 100 µs samples are in le="0.0001" (a bound is inclusive), none below it.
    assert series(samples, "redis_tunnel_latency_seconds_bucket", node=A, le="0.0001") == 5
    assert series(samples, "redis_tunnel_latency_seconds_bucket", node=A, le="7e-05") == 0


def test_prometheus_escapes_label_values() -> None:
    stats = TunnelStats('we"ird\\mode\n')
    stats.publish('h"o\\st\n:1', ConnectionCounters())
    _, samples = parse_prometheus(stats.prometheus())
    assert series(samples, "redis_tunnel_info", mode='we"ird\\mode\n') == 1
    assert series(samples, "redis_tunnel_commands_total", node='h"o\\st\n:1') == 0


def test_prometheus_without_nodes_is_valid() -> None:
    types, samples = parse_prometheus(TunnelStats("standalone").prometheus())
    assert "redis_tunnel_commands_total" in types
    assert series(samples, "redis_tunnel_clients_connected") == 0


# -- INFO text and the TUNNEL command --------------------------------------------------------


def test_info_text_is_info_style_with_exact_counts() -> None:
    stats = TunnelStats("pinned")
    stats.set_topology(
        [
            {
                "address": A,
                "role": "master",
                "slots": [(0, 100), (200, 200)],
                "listener": "127.0.0.1:17000",
            }
        ]
    )
    stats.client_opened()
    _traffic(stats)
    text = stats.info_text()
    assert text.startswith(b"# Tunnel\r\n")
    assert b"\r\n# Nodes\r\n" in text
    fields, nodes = info_fields(text)
    assert fields["tunnel_mode"] == "pinned"
    assert fields["connected_clients"] == "1"
    assert fields["total_commands_processed"] == "12"
    assert fields["total_net_input_bytes"] == "360"
    assert fields["total_moved"] == "4"
    assert fields["total_ask"] == "2"
    assert fields["total_upstream_reconnects"] == "1"
    assert nodes[0] == nodes[0] | {
        "address": A,
        "role": "master",
        "slots": "0-100 200",
        "listener": "127.0.0.1:17000",
        "ops": "5",
    }
    assert {node["address"]: node["moved"] for node in nodes} == {A: "0", B: "4", C: "0"}


@pytest.mark.parametrize(
    ("args", "command", "info"),
    [
        ([b"TUNNEL", b"INFO"], True, True),
        ([b"tunnel", b"info"], True, True),
        ([b"Tunnel", b"Info", b"x"], True, False),
        ([b"TUNNEL"], True, False),
        ([b"TUNNELS", b"INFO"], False, False),
        ([b"INFO"], False, False),
        ([], False, False),
    ],
)
def test_tunnel_command_detection(args: list[bytes], command: bool, info: bool) -> None:
    assert is_tunnel_command(args) is command
    assert is_tunnel_info(args) is info


def test_tunnel_info_reply_is_a_bulk_string_of_info_text() -> None:
    stats = TunnelStats("smart")
    _traffic(stats)
    reply = tunnel_reply(stats, [b"tunnel", b"INFO"])
    header, _, rest = reply.partition(b"\r\n")
    assert header.startswith(b"$")
    assert len(rest) == int(header[1:]) + 2
    assert rest.endswith(b"\r\n")
    fields, _ = info_fields(rest[:-2])
    assert fields["total_commands_processed"] == "12"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([b"TUNNEL"], b"-ERR wrong number of arguments for 'tunnel' command\r\n"),
        (
            [b"TUNNEL", b"INFO", b"all"],
            b"-ERR wrong number of arguments for 'tunnel|info' command\r\n",
        ),
        ([b"TUNNEL", b"nope\r\n"], b"-ERR unknown subcommand 'nope  '. Try TUNNEL HELP.\r\n"),
    ],
)
def test_tunnel_reply_errors(args: list[bytes], expected: bytes) -> None:
    assert tunnel_reply(TunnelStats("smart"), args) == expected


def test_tunnel_help_is_an_array_of_simple_strings() -> None:
    reply = tunnel_reply(TunnelStats("smart"), [b"TUNNEL", b"HELP"])
    lines = reply.split(b"\r\n")
    assert lines[0] == b"*%d" % (len(lines) - 2)
    assert lines[-1] == b""
    assert all(line.startswith(b"+") for line in lines[1:-1])


# -- properties ------------------------------------------------------------------------------

_event = st.one_of(
    st.tuples(
        st.just("record"), st.sampled_from([A, B]), st.integers(0, 2 * 10**10), st.integers(1, 50)
    ),
    st.tuples(
        st.just("bytes"), st.sampled_from([A, B]), st.integers(0, 10**6), st.integers(0, 10**6)
    ),
    st.tuples(st.just("redirect"), st.sampled_from([A, B]), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("publish"), st.sampled_from([A, B]), st.just(0), st.just(0)),
    st.tuples(st.just("reconnect"), st.sampled_from([A, B]), st.just(0), st.just(0)),
)


@given(st.lists(_event, max_size=60))
def test_published_totals_equal_what_was_counted(events: list[tuple[str, str, int, int]]) -> None:
    """Whatever the interleaving, after a final publish every view reports the exact sums."""
    stats = TunnelStats("smart")
    counters = {A: ConnectionCounters(), B: ConnectionCounters()}
    model = {address: dict.fromkeys(COUNTER_NAMES, 0) for address in (A, B)}
    samples = {A: 0, B: 0}
    for kind, address, x, y in events:
        c, m = counters[address], model[address]
        if kind == "record":
            c.record(x, y)
            m["ops"] += y
            samples[address] += y
        elif kind == "bytes":
            c.bytes_in += x
            c.bytes_out += y
            m["bytes_in"] += x
            m["bytes_out"] += y
        elif kind == "redirect":
            c.moved += x
            c.ask += y
            m["moved"] += x
            m["ask"] += y
        elif kind == "publish":
            stats.publish(address, c)
        else:
            stats.upstream_reconnect(address)
            m["upstream_reconnects"] += 1
    for address, c in counters.items():
        stats.publish(address, c)
    snap = stats.snapshot()
    _, prom = parse_prometheus(stats.prometheus())
    for node in snap["nodes"]:
        address = node["address"]
        assert {name: node[name] for name in COUNTER_NAMES} == model[address]
        assert node["latency"]["count"] == samples[address]
        assert series(prom, "redis_tunnel_commands_total", node=address) == model[address]["ops"]
        assert series(prom, "redis_tunnel_latency_seconds_count", node=address) == samples[address]
    for name in COUNTER_NAMES:
        assert snap["totals"][name] == sum(model[address][name] for address in model)


@given(st.lists(st.integers(0, 2 * 10**10), min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_percentile_is_monotonic_and_bounded(samples: list[int], q: float) -> None:
    buckets = _histogram(samples)
    value = percentile_us(buckets, q)
    assert value is not None
    assert 0 <= value <= BUCKET_BOUNDS_NS[-1] / 1000
    higher = percentile_us(buckets, min(q + 0.1, 1.0))
    assert higher is not None
    assert higher >= value


# -- layering --------------------------------------------------------------------------------


def test_stats_module_is_pure() -> None:
    source = Path(__file__).parents[2] / "tunnel" / "stats.py"
    tree = ast.parse(source.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "anyio", "socket", "ssl", "asyncio", "h11", "trio_websocket"}


# -- TUNNEL read from the server's unknown-command error -----------------------------------------


@pytest.mark.parametrize(
    ("error", "args"),
    [
        (
            b"-ERR unknown command 'TUNNEL', with args beginning with: 'INFO' \r\n",
            [b"TUNNEL", b"INFO"],
        ),
        (
            b"-ERR unknown command 'tunnel', with args beginning with: 'info' \r\n",
            [b"tunnel", b"info"],
        ),
        (b"-ERR unknown command 'Tunnel', with args beginning with: \r\n", [b"Tunnel"]),
        (
            b"-ERR unknown command 'TUNNEL', with args beginning with: 'help' 'x' \r\n",
            [b"TUNNEL", b"help", b"x"],
        ),
        # Redis 6: backticks, a comma after each argument
        (
            b"-ERR unknown command `TUNNEL`, with args beginning with: `INFO`, \r\n",
            [b"TUNNEL", b"INFO"],
        ),
        (b"-ERR unknown command 'TUNNEL'\r\n", [b"TUNNEL"]),  # before Redis 5
    ],
)
def test_tunnel_args_from_the_servers_error(error: bytes, args: list[bytes]) -> None:
    assert tunnel_args(error) == args
    assert is_tunnel_command(args)


@pytest.mark.parametrize(
    "error",
    [
        b"-ERR unknown command 'TUNNELS', with args beginning with: 'INFO' \r\n",
        b"-ERR unknown command 'GETT', with args beginning with: 'TUNNEL' \r\n",
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        b"-ERR unknown command 'TUNNEL', with args beginning with: 'INFO' \r\nextra",
        b"+OK\r\n",
    ],
)
def test_other_errors_are_not_tunnel_commands(error: bytes) -> None:
    assert tunnel_args(error) is None


def test_tunnel_args_give_the_same_replies_as_parsed_requests() -> None:
    stats = TunnelStats("standalone")
    error = b"-ERR unknown command 'TUNNEL', with args beginning with: 'HELP' \r\n"
    args = tunnel_args(error)
    assert args is not None
    assert tunnel_reply(stats, args) == tunnel_reply(stats, [b"TUNNEL", b"HELP"])
    assert is_tunnel_info(
        tunnel_args(b"-ERR unknown command 'TUNNEL', with args beginning with: 'info' \r\n") or []
    )


# -- worker processes: deltas --------------------------------------------------------------------


def traffic(stats: TunnelStats, node: str, ops: int, latency_ns: int, **extra: int) -> None:
    counters = ConnectionCounters()
    counters.record(latency_ns, ops)
    counters.bytes_in = 10 * ops
    counters.bytes_out = 5 * ops
    for name, value in extra.items():
        setattr(counters, name, value)
    stats.publish(node, counters)


def test_deltas_from_workers_add_up_exactly() -> None:
    parent, worker = TunnelStats("standalone"), TunnelStats("standalone")
    traffic(parent, A, 7, 3_000)
    worker.client_opened()
    traffic(worker, A, 5, 40_000, errors=2)
    traffic(worker, B, 1, 9_000_000, moved=1)
    worker.upstream_reconnect(B)
    first = worker.export_delta()
    assert first is not None
    parent.merge_delta(json.loads(json.dumps(first)))  # it travels as JSON
    assert worker.export_delta() is None  # nothing new since
    worker.client_closed()
    traffic(worker, A, 2, 40_000)
    second = worker.export_delta()
    assert second is not None
    assert second["clients_connected"] == -1
    parent.merge_delta(second)

    by_node = {entry.address: entry for entry in parent.nodes()}
    assert by_node[A].ops == 7 + 5 + 2
    assert by_node[A].bytes_in == 140
    assert by_node[A].errors == 2
    assert by_node[B].moved == 1
    assert by_node[B].upstream_reconnects == 1
    assert by_node[A].latency_count == 14
    assert by_node[A].latency_sum_ns == 7 * 3_000 + 7 * 40_000
    expected = TunnelStats("standalone")
    for ops, latency in ((7, 3_000), (5, 40_000), (2, 40_000)):
        traffic(expected, A, ops, latency)
    assert by_node[A].latency == {e.address: e for e in expected.nodes()}[A].latency
    assert parent.clients_connected == 0
    assert parent.clients_total == 1


@pytest.mark.parametrize(
    "delta",
    [
        {"nodes": {A: {"ops": -1}}},
        {"nodes": {A: {"latency": {"999": 1}}}},
        {"nodes": {A: {"ops": "many"}}},
        {"nodes": [1, 2]},
    ],
)
def test_a_bad_delta_is_refused_whole(delta: dict[str, object]) -> None:
    stats = TunnelStats("standalone")
    with pytest.raises(ValueError):
        stats.merge_delta(delta)
    assert stats.nodes() == []


def test_live_counters_publish_idle_connections_and_on_close() -> None:
    stats = TunnelStats("standalone")
    live = LiveCounters(stats)
    first, second = live.open(A), live.open(B)
    assert stats.clients_connected == 2
    assert live.connections == 2
    first.record(1_000, 3)
    live.publish_all()  # the ticker: idle or not, what was counted shows
    assert {e.address: e.ops for e in stats.nodes()} == {A: 3}
    second.bytes_in += 42
    live.close(second)
    live.close(second)  # closing twice is harmless
    assert stats.clients_connected == 1
    assert {e.address: e.bytes_in for e in stats.nodes()} == {A: 0, B: 42}
    assert LOCAL_NODE == "tunnel"
