"""Tunnel statistics: cheap per-connection counters, a shared registry, and its three views.

Pure (no trio, no sockets): the relays count, :mod:`tunnel.dashboard` serves.

How counting stays cheap
------------------------
# Each relayed client connection (or, in smart mode, each upstream node connection) owns one
# :class:`ConnectionCounters`: plain int attributes in ``__slots__`` that its tasks bump without
# locks (Trio is single-threaded) and without allocating anything per command. A latency sample
# is one ``bisect`` into a fixed tuple of bucket bounds and one list-item increment.
#
# Now and then (at most once a second: :meth:`TunnelStats.maybe_publish`) and when the
# connection closes, the relay calls :meth:`TunnelStats.publish`, which adds the counters into
# the per-node registry entry (:class:`NodeCounters`) and zeroes them. Only the registry is ever
# read by the views, so a view costs nothing on the hot path.
#
# Connections that stay open would never publish while they idle, so the tunnel also keeps
# the live counters in a :class:`LiveCounters` and publishes all of them once a second
# (``publish_all``, called by the server's ticker), and each one when its connection closes.
#
# Worker processes (the standalone tunnel's ``--workers``) keep their own registry and send
# :meth:`TunnelStats.export_delta` to the parent once a second; the parent adds it with
# :meth:`TunnelStats.merge_delta`, so its views cover every process.
#
# The views:
# - :meth:`TunnelStats.snapshot`: a JSON-able dict (totals, per-second rates and windowed p50/p99
#   since the previous snapshot, clients, topology), pushed by the dashboard's WebSocket;
# - :meth:`TunnelStats.prometheus`: Prometheus text exposition format 0.0.4 (counters, gauges,
#   one latency histogram per node);
# - :meth:`TunnelStats.info_text`: INFO-style text (``# Section`` / ``key:value``, CRLF) for the
#   ``TUNNEL INFO`` command the tunnel answers itself (:func:`tunnel_reply`).
#
# Meaning of the counters (per node, from the tunnel's point of view):
#   ops                 commands answered (replies forwarded to clients)
#   bytes_in            request bytes received from clients for this node
#   bytes_out           reply bytes sent to clients from this node
#   errors              error replies sent to clients (from the node or made by the tunnel);
#                       MOVED/ASK redirects count as moved/ask, not here
#   moved, ask          MOVED / ASK redirects received from the node
#   retries             commands sent again (after MOVED, ASK, TRYAGAIN or a reconnect)
#   upstream_reconnects upstream connections to the node dialled again after a loss (the
#                       standalone and pinned relays count an upstream lost under a connected
#                       client: that client reconnects, and the tunnel dials again for it)
# Latency: from the request reaching the tunnel to its reply leaving it, in nanoseconds, in
# log-spaced buckets (1-1.5-2-3-5-7 per decade, 1 µs .. 10 s, plus overflow).
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Required, TypedDict

from client.topology import Topology

__all__ = [
    "BUCKET_BOUNDS_NS",
    "COUNTER_NAMES",
    "LOCAL_NODE",
    "PUBLISH_INTERVAL",
    "ConnectionCounters",
    "LiveCounters",
    "NodeCounters",
    "TopologyNode",
    "TunnelStats",
    "is_tunnel_command",
    "is_tunnel_info",
    "percentile_us",
    "topology_nodes",
    "tunnel_args",
    "tunnel_reply",
]

#: Upper bounds (inclusive, ns) of the latency buckets; one more bucket counts what is above.
BUCKET_BOUNDS_NS: tuple[int, ...] = (
    *(m * 10**exp for exp in range(2, 9) for m in (10, 15, 20, 30, 50, 70)),
    10_000_000_000,
)
_BUCKETS = len(BUCKET_BOUNDS_NS) + 1
_ZEROS: tuple[int, ...] = (0,) * _BUCKETS
_LE = tuple(repr(bound / 1e9) for bound in BUCKET_BOUNDS_NS)

#: The counters every node has, in display order (``upstream_reconnects`` is not per connection).
COUNTER_NAMES = (
    "ops",
    "bytes_in",
    "bytes_out",
    "errors",
    "moved",
    "ask",
    "retries",
    "upstream_reconnects",
)
_CONNECTION_COUNTERS = COUNTER_NAMES[:-1]

#: Seconds between two publications of one connection's counters (see ``maybe_publish``).
PUBLISH_INTERVAL = 1.0
#: A snapshot taken sooner than this after the previous one reuses its rates (several readers:
#: dashboard ticker, TUNNEL INFO).
MIN_RATE_WINDOW = 0.5
#: Pseudo-node for what the tunnel answers itself (TUNNEL INFO, local errors, ...).
LOCAL_NODE = "tunnel"


class ConnectionCounters:
    """Counters of one relayed connection; bump the attributes directly, then publish.

    ``bytes_in``, ``bytes_out``, ``errors``, ``moved``, ``ask`` and ``retries`` are plain ints
    (``counters.bytes_in += len(chunk)``). :meth:`record` counts answered commands and their
    latency. Owned by one connection's tasks: no locks.

    Cost (bench/bench_stats.py): a ``record`` call is a few hundred ns in CPython, so relays
    call it once per forwarded chunk of replies with ``ops`` = the replies in it (one clock
    read per chunk), not once per command; a pipelined chunk then costs ~20 ns per command.
    """

    __slots__ = (
        "ask",
        "bytes_in",
        "bytes_out",
        "errors",
        "latency",
        "latency_sum_ns",
        "moved",
        "next_publish",
        "ops",
        "retries",
    )

    def __init__(self) -> None:
        self.ops = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors = 0
        self.moved = 0
        self.ask = 0
        self.retries = 0
        #: Samples per bucket (``len(BUCKET_BOUNDS_NS) + 1`` ints, the last one is overflow).
        self.latency = list(_ZEROS)
        self.latency_sum_ns = 0
        #: When :meth:`TunnelStats.maybe_publish` publishes next (caller's clock).
        self.next_publish = 0.0

    def record(self, latency_ns: int, ops: int = 1) -> None:
        """Count ``ops`` answered commands that each took ``latency_ns`` (a pipelined batch)."""
        self.ops += ops
        self.latency[bisect_left(BUCKET_BOUNDS_NS, latency_ns)] += ops
        self.latency_sum_ns += latency_ns * ops

    def is_empty(self) -> bool:
        """True when there is nothing to publish."""
        return not (
            self.ops
            or self.bytes_in
            or self.bytes_out
            or self.errors
            or self.moved
            or self.ask
            or self.retries
            or self.latency_sum_ns
            or any(self.latency)
        )

    def reset(self) -> None:
        """Zero every counter (in place: nothing is allocated)."""
        self.ops = self.bytes_in = self.bytes_out = 0
        self.errors = self.moved = self.ask = self.retries = 0
        self.latency[:] = _ZEROS
        self.latency_sum_ns = 0


class TopologyNode(TypedDict, total=False):
    """One node as :meth:`TunnelStats.set_topology` takes it."""

    address: Required[str]
    role: str
    slots: Sequence[tuple[int, int]]
    listener: str | None
    health: str


@dataclass(slots=True)
class NodeCounters:
    """The registry entry of one upstream node: cumulative counters and what the page shows."""

    address: str
    role: str = ""
    listener: str | None = None
    slots: tuple[tuple[int, int], ...] = ()
    health: str = ""
    in_topology: bool = False
    ops: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    moved: int = 0
    ask: int = 0
    retries: int = 0
    upstream_reconnects: int = 0
    latency: list[int] = field(default_factory=lambda: list(_ZEROS))
    latency_sum_ns: int = 0
    # State of the rate window (values at the previous snapshot, and the rates it computed).
    _previous: tuple[int, ...] = (0,) * len(COUNTER_NAMES)
    _previous_latency: tuple[int, ...] = _ZEROS
    _rates: dict[str, float] = field(default_factory=dict)
    _window_p50: float | None = None
    _window_p99: float | None = None

    def counts(self) -> tuple[int, ...]:
        """The counters in :data:`COUNTER_NAMES` order."""
        return (
            self.ops,
            self.bytes_in,
            self.bytes_out,
            self.errors,
            self.moved,
            self.ask,
            self.retries,
            self.upstream_reconnects,
        )

    @property
    def latency_count(self) -> int:
        return sum(self.latency)

    @property
    def slot_count(self) -> int:
        return sum(end - start + 1 for start, end in self.slots)


def percentile_us(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a bucket histogram, in µs, or None when it is empty.

    Interpolates linearly inside the bucket holding the rank (as Prometheus'
    ``histogram_quantile`` does); the overflow bucket answers its lower bound (10 s).
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(BUCKET_BOUNDS_NS):
                return BUCKET_BOUNDS_NS[-1] / 1000
            lower = BUCKET_BOUNDS_NS[index - 1] if index else 0
            upper = BUCKET_BOUNDS_NS[index]
            fraction = max(rank - seen, 0.0) / count
            return (lower + (upper - lower) * fraction) / 1000
        seen += count
    return BUCKET_BOUNDS_NS[-1] / 1000  # pragma: no cover - rank <= total always matches


class TunnelStats:
    """The shared registry of one tunnel: clients gauge, per-node counters, topology."""

    def __init__(self, mode: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.clients_connected = 0
        self.clients_total = 0
        self._clock = clock
        self._started = clock()
        self._window_start = self._started
        self._nodes: dict[str, NodeCounters] = {}
        self._rates: dict[str, float] = dict.fromkeys(COUNTER_NAMES, 0.0)
        self._window_p50: float | None = None
        self._window_p99: float | None = None
        self._exported: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._exported_clients = (0, 0)

    # -- what the relays call ---------------------------------------------------------------

    def node(
        self,
        address: str,
        *,
        role: str | None = None,
        listener: str | None = None,
        slots: Iterable[tuple[int, int]] | None = None,
    ) -> NodeCounters:
        """The entry of ``address`` (``host:port``), created on first use; updates what is given."""
        entry = self._nodes.get(address)
        if entry is None:
            entry = self._nodes[address] = NodeCounters(address)
        if role is not None:
            entry.role = role
        if listener is not None:
            entry.listener = listener
        if slots is not None:
            entry.slots = tuple((int(a), int(b)) for a, b in slots)
        return entry

    def client_opened(self) -> None:
        self.clients_connected += 1
        self.clients_total += 1

    def client_closed(self) -> None:
        self.clients_connected = max(self.clients_connected - 1, 0)

    def publish(self, node_address: str, counters: ConnectionCounters) -> None:
        """Add ``counters`` into the entry of ``node_address``, then zero them."""
        entry = self._nodes.get(node_address)
        if entry is None:
            entry = self.node(node_address)
        entry.ops += counters.ops
        entry.bytes_in += counters.bytes_in
        entry.bytes_out += counters.bytes_out
        entry.errors += counters.errors
        entry.moved += counters.moved
        entry.ask += counters.ask
        entry.retries += counters.retries
        latency = entry.latency
        for index, count in enumerate(counters.latency):
            if count:
                latency[index] += count
        entry.latency_sum_ns += counters.latency_sum_ns
        counters.reset()

    def maybe_publish(self, node_address: str, counters: ConnectionCounters, now: float) -> None:
        """:meth:`publish` if ``PUBLISH_INTERVAL`` passed since the last time (``now``: any
        monotonic clock the caller uses consistently, e.g. ``trio.current_time()``)."""
        if now >= counters.next_publish:
            counters.next_publish = now + PUBLISH_INTERVAL
            self.publish(node_address, counters)

    def upstream_reconnect(self, address: str) -> None:
        self.node(address).upstream_reconnects += 1

    def set_topology(self, nodes: Iterable[TopologyNode]) -> None:
        """Replace the topology: role, slots and listener of every node the tunnel serves.

        Nodes that are no longer listed keep their counters but leave the topology table.
        """
        for entry in self._nodes.values():
            entry.in_topology = False
        for info in nodes:
            entry = self.node(
                info["address"], role=info.get("role", ""), slots=info.get("slots", ())
            )
            entry.listener = info.get("listener")
            entry.health = info.get("health", "")
            entry.in_topology = True

    # -- other processes ------------------------------------------------------------------

    def export_delta(self) -> dict[str, Any] | None:
        """What changed since the previous export, JSON-able; None when nothing did.

        A worker process sends this to its parent, which adds it with :meth:`merge_delta`.
        Topology (roles, slots, listeners) is the parent's business and is not exported.
        """
        previous = self._exported
        out: dict[str, Any] = {}
        for address, entry in self._nodes.items():
            counts = (*entry.counts(), entry.latency_sum_ns)
            before, before_latency = previous.get(address, (_NO_COUNTS, _ZEROS))
            diff = [a - b for a, b in zip(counts, before, strict=True)]
            latency = [a - b for a, b in zip(entry.latency, before_latency, strict=True)]
            if any(diff) or any(latency):
                item: dict[str, Any] = {
                    name: value
                    for name, value in zip((*COUNTER_NAMES, "latency_sum_ns"), diff, strict=True)
                    if value
                }
                if any(latency):
                    item["latency"] = {str(i): n for i, n in enumerate(latency) if n}
                out[address] = item
                previous[address] = (counts, tuple(entry.latency))
        connected = self.clients_connected - self._exported_clients[0]
        total = self.clients_total - self._exported_clients[1]
        if not (out or connected or total):
            return None
        self._exported_clients = (self.clients_connected, self.clients_total)
        return {"nodes": out, "clients_connected": connected, "clients_total": total}

    def merge_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a delta from :meth:`export_delta` of another process's registry.

        Raises:
            ValueError: ``delta`` is not what :meth:`export_delta` makes (it is left unmerged).
        """
        try:
            nodes = [
                (str(address), _delta_counts(item), _delta_latency(item))
                for address, item in dict(delta.get("nodes") or {}).items()
            ]
            connected = int(delta.get("clients_connected", 0))
            total = int(delta.get("clients_total", 0))
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not a statistics delta: {exc}") from None
        for address, counts, latency in nodes:
            entry = self.node(address)
            for name, value in counts.items():
                setattr(entry, name, getattr(entry, name) + value)
            for index, count in latency:
                entry.latency[index] += count
        self.clients_connected = max(self.clients_connected + connected, 0)
        self.clients_total += total

    # -- views --------------------------------------------------------------------------------

    def nodes(self) -> list[NodeCounters]:
        """Every entry: topology nodes first (masters by first slot, then replicas), then others."""

        def key(entry: NodeCounters) -> tuple[bool, bool, int, str]:
            first = entry.slots[0][0] if entry.slots else 1 << 20
            return (not entry.in_topology, entry.role != "master", first, entry.address)

        return sorted(self._nodes.values(), key=key)

    def _advance(self, now: float) -> float:
        """Recompute rates and windowed percentiles if the window is long enough."""
        elapsed = now - self._window_start
        if elapsed < MIN_RATE_WINDOW:
            return elapsed
        totals = [0] * len(COUNTER_NAMES)
        window_latency = [0] * _BUCKETS
        for entry in self._nodes.values():
            counts = entry.counts()
            entry._rates = {
                name: (now_ - then) / elapsed
                for name, now_, then in zip(COUNTER_NAMES, counts, entry._previous, strict=True)
            }
            delta = [a - b for a, b in zip(entry.latency, entry._previous_latency, strict=True)]
            entry._window_p50 = percentile_us(delta, 0.5)
            entry._window_p99 = percentile_us(delta, 0.99)
            for index, value in enumerate(delta):
                window_latency[index] += value
            for index, (now_, then) in enumerate(zip(counts, entry._previous, strict=True)):
                totals[index] += now_ - then
            entry._previous = counts
            entry._previous_latency = tuple(entry.latency)
        self._rates = {
            name: total / elapsed for name, total in zip(COUNTER_NAMES, totals, strict=True)
        }
        self._window_p50 = percentile_us(window_latency, 0.5)
        self._window_p99 = percentile_us(window_latency, 0.99)
        self._window_start = now
        return elapsed

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything the dashboard shows, JSON-able.

        Totals are exact; ``rates`` (per second) and the windowed ``p50_us``/``p99_us`` cover
        the time since the previous snapshot (reused when that was under 0.5 s ago).
        """
        now = self._clock() if now is None else now
        self._advance(now)
        entries = self.nodes()
        totals = dict.fromkeys(COUNTER_NAMES, 0)
        all_latency = [0] * _BUCKETS
        nodes = []
        for entry in entries:
            counts = dict(zip(COUNTER_NAMES, entry.counts(), strict=True))
            for name, value in counts.items():
                totals[name] += value
            for index, value in enumerate(entry.latency):
                all_latency[index] += value
            nodes.append(
                {
                    "address": entry.address,
                    "role": entry.role,
                    "listener": entry.listener,
                    "slots": [list(pair) for pair in entry.slots],
                    "slot_count": entry.slot_count,
                    "health": entry.health,
                    "in_topology": entry.in_topology,
                    **counts,
                    "rates": entry._rates or dict.fromkeys(COUNTER_NAMES, 0.0),
                    "latency": {
                        "count": entry.latency_count,
                        "sum_us": entry.latency_sum_ns / 1000,
                        "p50_us": entry._window_p50,
                        "p99_us": entry._window_p99,
                        "p50_us_all": percentile_us(entry.latency, 0.5),
                        "p99_us_all": percentile_us(entry.latency, 0.99),
                    },
                }
            )
        return {
            "version": 1,
            "mode": self.mode,
            "time": time.time(),
            "uptime": now - self._started,
            "clients": {"connected": self.clients_connected, "total": self.clients_total},
            "totals": totals,
            "rates": dict(self._rates),
            "latency": {
                "count": sum(all_latency),
                "p50_us": self._window_p50,
                "p99_us": self._window_p99,
                "p50_us_all": percentile_us(all_latency, 0.5),
                "p99_us_all": percentile_us(all_latency, 0.99),
            },
            "nodes": nodes,
        }

    def snapshot_json(self, now: float | None = None) -> str:
        """:meth:`snapshot` as compact JSON text (what the WebSocket sends)."""
        return json.dumps(self.snapshot(now), separators=(",", ":"), allow_nan=False)

    def prometheus(self, now: float | None = None) -> str:
        """The registry in Prometheus text exposition format 0.0.4 (labels ``node="host:port"``).

        Does not move the rate window (Prometheus computes its own rates).
        """
        now = self._clock() if now is None else now
        entries = sorted(self._nodes.values(), key=lambda entry: entry.address)
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        family("redis_tunnel_info", "gauge", "Tunnel mode (always 1).")
        out.append(f'redis_tunnel_info{{mode="{_label(self.mode)}"}} 1\n')
        family("redis_tunnel_uptime_seconds", "gauge", "Seconds since the tunnel started.")
        out.append(f"redis_tunnel_uptime_seconds {_float(now - self._started)}\n")
        family("redis_tunnel_clients_connected", "gauge", "Client connections open now.")
        out.append(f"redis_tunnel_clients_connected {self.clients_connected}\n")
        family("redis_tunnel_clients_total", "counter", "Client connections accepted.")
        out.append(f"redis_tunnel_clients_total {self.clients_total}\n")
        for attribute, metric, text in _PROMETHEUS_COUNTERS:
            family(metric, "counter", text)
            for entry in entries:
                out.append(
                    f'{metric}{{node="{_label(entry.address)}"}} {getattr(entry, attribute)}\n'
                )
        family(
            "redis_tunnel_node_info",
            "gauge",
            "Nodes of the current topology (always 1): role and local listener.",
        )
        for entry in entries:
            if entry.in_topology:
                out.append(
                    f'redis_tunnel_node_info{{node="{_label(entry.address)}",'
                    f'role="{_label(entry.role)}",'
                    f'listener="{_label(entry.listener or "")}"}} 1\n'
                )
        family("redis_tunnel_node_slots", "gauge", "Hash slots the node serves.")
        for entry in entries:
            if entry.in_topology:
                out.append(
                    f'redis_tunnel_node_slots{{node="{_label(entry.address)}"}} '
                    f"{entry.slot_count}\n"
                )
        family(
            "redis_tunnel_latency_seconds",
            "histogram",
            "Time from a request reaching the tunnel to its reply leaving it.",
        )
        for entry in entries:
            node = _label(entry.address)
            cumulative = 0
            for le, count in zip(_LE, entry.latency, strict=False):
                cumulative += count
                out.append(
                    f'redis_tunnel_latency_seconds_bucket{{node="{node}",le="{le}"}} {cumulative}\n'
                )
            cumulative += entry.latency[-1]
            out.append(
                f'redis_tunnel_latency_seconds_bucket{{node="{node}",le="+Inf"}} {cumulative}\n'
            )
            out.append(
                f'redis_tunnel_latency_seconds_sum{{node="{node}"}} '
                f"{_float(entry.latency_sum_ns / 1e9)}\n"
            )
            out.append(f'redis_tunnel_latency_seconds_count{{node="{node}"}} {cumulative}\n')
        return "".join(out)

    def info_text(self, now: float | None = None) -> bytes:
        """INFO-style text (``# Section\\r\\nkey:value\\r\\n``) for ``TUNNEL INFO``."""
        snap = self.snapshot(now)
        totals, rates, latency = snap["totals"], snap["rates"], snap["latency"]
        lines = [
            "# Tunnel",
            f"tunnel_mode:{snap['mode']}",
            f"uptime_in_seconds:{int(snap['uptime'])}",
            f"connected_clients:{snap['clients']['connected']}",
            f"total_connections_received:{snap['clients']['total']}",
            f"total_commands_processed:{totals['ops']}",
            f"total_net_input_bytes:{totals['bytes_in']}",
            f"total_net_output_bytes:{totals['bytes_out']}",
            f"total_error_replies:{totals['errors']}",
            f"total_moved:{totals['moved']}",
            f"total_ask:{totals['ask']}",
            f"total_retries:{totals['retries']}",
            f"total_upstream_reconnects:{totals['upstream_reconnects']}",
            f"instantaneous_ops_per_sec:{rates['ops']:.0f}",
            f"instantaneous_input_kbps:{rates['bytes_in'] / 1024:.2f}",
            f"instantaneous_output_kbps:{rates['bytes_out'] / 1024:.2f}",
            f"latency_p50_usec:{_usec(latency['p50_us_all'])}",
            f"latency_p99_usec:{_usec(latency['p99_us_all'])}",
            "",
            "# Nodes",
        ]
        for index, node in enumerate(snap["nodes"]):
            fields = [f"address={node['address']}", f"role={node['role'] or '-'}"]
            if node["slots"]:
                fields.append(
                    "slots=" + " ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in node["slots"])
                )
            if node["listener"]:
                fields.append(f"listener={node['listener']}")
            fields.extend(f"{name}={node[name]}" for name in COUNTER_NAMES)
            fields.append(f"ops_per_sec={node['rates']['ops']:.0f}")
            fields.append(f"p50_usec={_usec(node['latency']['p50_us_all'])}")
            fields.append(f"p99_usec={_usec(node['latency']['p99_us_all'])}")
            lines.append(f"node{index}:" + ",".join(fields))
        return ("\r\n".join(lines) + "\r\n").encode()


_PROMETHEUS_COUNTERS = (
    ("ops", "redis_tunnel_commands_total", "Commands answered, per upstream node."),
    ("bytes_in", "redis_tunnel_bytes_in_total", "Request bytes received from clients."),
    ("bytes_out", "redis_tunnel_bytes_out_total", "Reply bytes sent to clients."),
    ("errors", "redis_tunnel_errors_total", "Error replies sent to clients."),
    ("moved", "redis_tunnel_moved_total", "MOVED redirects received."),
    ("ask", "redis_tunnel_ask_total", "ASK redirects received."),
    ("retries", "redis_tunnel_retries_total", "Commands sent again (redirect, TRYAGAIN, ...)."),
    (
        "upstream_reconnects",
        "redis_tunnel_upstream_reconnects_total",
        "Upstream connections dialled again after a loss.",
    ),
)


_NO_COUNTS = (0,) * (len(COUNTER_NAMES) + 1)
_DELTA_FIELDS = (*COUNTER_NAMES, "latency_sum_ns")


def _delta_counts(item: Mapping[str, Any]) -> dict[str, int]:
    counts = {name: int(item[name]) for name in _DELTA_FIELDS if name in item}
    if any(value < 0 for value in counts.values()):
        raise ValueError("negative counter in a statistics delta")
    return counts


def _delta_latency(item: Mapping[str, Any]) -> list[tuple[int, int]]:
    pairs = [(int(index), int(count)) for index, count in dict(item.get("latency") or {}).items()]
    for index, count in pairs:
        if not 0 <= index < _BUCKETS or count < 0:
            raise ValueError("bad latency bucket in a statistics delta")
    return pairs


class LiveCounters:
    """The counters of every open connection of one tunnel process, by node.

    The relays take a :class:`ConnectionCounters` with :meth:`open` and bump it; the server
    calls :meth:`publish_all` once a second, and :meth:`close` publishes a connection's last
    counts. Opening and closing also move the clients gauge.
    """

    def __init__(self, stats: TunnelStats) -> None:
        self.stats = stats
        self._live: dict[ConnectionCounters, str] = {}

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._live)

    def open(self, node_address: str) -> ConnectionCounters:
        """A client connected; its counters go to ``node_address``."""
        counters = ConnectionCounters()
        self._live[counters] = node_address
        self.stats.client_opened()
        return counters

    def close(self, counters: ConnectionCounters) -> None:
        """The connection closed: publish what it counted last; drop it."""
        node_address = self._live.pop(counters, None)
        if node_address is None:
            return
        self.stats.publish(node_address, counters)
        self.stats.client_closed()

    def publish_all(self) -> None:
        """Publish every open connection's counters (those that counted anything)."""
        publish = self.stats.publish
        for counters, node_address in self._live.items():
            if not counters.is_empty():
                publish(node_address, counters)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _float(value: float) -> str:
    return repr(float(value))


def _usec(value: float | None) -> str:
    return "0" if value is None else f"{value:.0f}"


def topology_nodes(
    topology: Topology, listeners: Mapping[str, str] | None = None
) -> list[TopologyNode]:
    """A :class:`client.topology.Topology` as :meth:`TunnelStats.set_topology` takes it.

    ``listeners`` maps a node's ``host:port`` to its local listener (pinned mode).
    """
    listeners = listeners or {}
    return [
        TopologyNode(
            address=node.address,
            role=node.role,
            slots=node.slots,
            listener=listeners.get(node.address),
            health=node.health,
        )
        for node in topology.nodes
    ]


# -- the command the tunnel answers itself ---------------------------------------------------

_TUNNEL = b"TUNNEL"
_HELP_LINES = (
    b"TUNNEL <subcommand> [<arg> ...]. Subcommands are:",
    b"INFO",
    b"    Return the tunnel's statistics as INFO-style text (clients, per-node counters).",
    b"HELP",
    b"    Print this help.",
)


def is_tunnel_command(args: Sequence[bytes]) -> bool:
    """True for any ``TUNNEL ...`` request (the tunnel answers it itself, never forwards it)."""
    return len(args) > 0 and len(args[0]) == 6 and args[0].upper() == _TUNNEL


def is_tunnel_info(args: Sequence[bytes]) -> bool:
    """True for exactly ``TUNNEL INFO`` (any case)."""
    return len(args) == 2 and is_tunnel_command(args) and args[1].upper() == b"INFO"


_UNKNOWN = re.compile(
    rb"-ERR unknown command ['`](tunnel)['`](?:, with args beginning with: (.*))?\r\n\Z",
    re.IGNORECASE | re.DOTALL,
)
_QUOTED = re.compile(rb"['`]([^'`]*)['`]")


def tunnel_args(error: bytes) -> list[bytes] | None:
    """The words of a ``TUNNEL ...`` request, read from the server's reply to it, or None.

    The standalone and pinned relays do not parse requests on their hot path, so they let
    ``TUNNEL`` go to the server and answer in place of its unknown-command error, whose text
    quotes the arguments: ``-ERR unknown command 'TUNNEL', with args beginning with: 'INFO'``
    (Redis 7 and Valkey; Redis 6 quotes with backticks and ends each with a comma; older
    servers quote only the name). The server keeps the reply in order, and in a transaction it
    aborts EXEC as for any unknown command.
    """
    if not error.startswith(b"-ERR unknown command "):
        return None
    match = _UNKNOWN.match(error)
    if match is None:
        return None
    args = [match.group(1)]
    if match.group(2):
        args += _QUOTED.findall(match.group(2))
    return args


def tunnel_reply(stats: TunnelStats, args: Sequence[bytes]) -> bytes:
    """The RESP reply (bytes, valid in RESP2 and RESP3) to a ``TUNNEL ...`` request."""
    sub = args[1].upper() if len(args) > 1 else b""
    if sub == b"INFO" and len(args) == 2:
        text = stats.info_text()
        return b"$%d\r\n%s\r\n" % (len(text), text)
    if sub == b"HELP" and len(args) == 2:
        return b"*%d\r\n" % len(_HELP_LINES) + b"".join(
            b"+" + line + b"\r\n" for line in _HELP_LINES
        )
    if sub in (b"INFO", b"HELP", b""):
        name = b"tunnel|" + sub.lower() if sub else b"tunnel"
        return b"-ERR wrong number of arguments for '%s' command\r\n" % name
    shown = args[1][:64].decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")
    return f"-ERR unknown subcommand '{shown}'. Try TUNNEL HELP.\r\n".encode()
