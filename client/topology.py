"""Cluster topology: who owns each slot, built from CLUSTER SHARDS, SLOTS or NODES (pure).

The three replies describe the same thing in three shapes, and each parser returns the same
:class:`Topology`: every node (masters and replicas), every slot range of every master (a
master may own several ranges after resharding), and a 16384-entry slot → owner table, so
routing a key is one list index.

Addresses. A node is dialled at :attr:`Node.host`, the address the server asks clients to use
(the *preferred endpoint*: an IP, or a hostname with ``cluster-preferred-endpoint-type
hostname``). The announced IP and hostname are kept beside it. An empty ``host`` means the
server announced no endpoint (``cluster-preferred-endpoint-type unknown-endpoint`` or a node
that does not know its own address yet): the caller dials the host it used to reach the
cluster, as redis-cli does with ``-MOVED 3999 :6380``.

Ports. When a TLS cluster (``tls-cluster yes``) reports ``port`` 0 and ``tls-port`` N in
CLUSTER SHARDS, the port to dial over TLS is N. CLUSTER SLOTS and NODES already report the
port that matches the asking client's transport.

Nothing here does I/O; the parsers take decoded RESP values (:mod:`client.values`) and raise
:class:`~client.errors.RedisToolkitError` with a one-line message on a reply they cannot read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

from client.errors import RedisToolkitError
from client.values import Attributed, ErrorReply, RespMap, RespValue, Verbatim

__all__ = [
    "SLOT_COUNT",
    "Node",
    "Topology",
    "parse_cluster_nodes",
    "parse_cluster_shards",
    "parse_cluster_slots",
    "parse_redirect",
]

SLOT_COUNT = 16384

_Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Node:
    """One cluster node.

    Attributes:
        id: the 40-character node ID (``host:port`` when the reply carries none).
        host: the address to dial (the preferred endpoint); ``""`` when the node announced
            none, in which case the caller uses the host it reached the cluster through.
        port: the port to dial (for a TLS cluster, the TLS port).
        role: ``"master"`` or ``"replica"``.
        master_id: the master's ID for a replica, else None.
        hostname: the announced hostname (``cluster-announce-hostname``), if any.
        ip: the announced IP, if known.
        tls_port: the TLS port when the reply reports it apart from the plaintext port.
        health: ``"online"``, ``"loading"``, ``"fail"`` (failed) or ``"pfail"`` (suspected,
            CLUSTER NODES only), as the server says.
        slots: the slot ranges (inclusive) this node serves as a master, ascending.
    """

    id: str
    host: str
    port: int
    role: str = "master"
    master_id: str | None = None
    hostname: str | None = None
    ip: str | None = None
    tls_port: int | None = None
    health: str = "online"
    slots: tuple[_Range, ...] = ()

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_master(self) -> bool:
        return self.role == "master"

    @property
    def failed(self) -> bool:
        return self.health == "fail"


class Topology:
    """An immutable view of the cluster: nodes, slot ranges and the slot → owner table.

    ``nodes`` is in a stable order that does not depend on the reply's order: masters by their
    first slot (masters without slots last, by ID), each followed by its replicas by address;
    replicas whose master is unknown come last. Two topologies are equal when their nodes are.
    """

    __slots__ = ("_by_address", "_by_id", "_masters", "_owners", "_replicas", "nodes", "source")

    nodes: tuple[Node, ...]
    source: str

    def __init__(self, nodes: Iterable[Node], *, source: str = "") -> None:
        by_id: dict[str, Node] = {}
        for node in nodes:
            by_id.setdefault(node.id, node)
        masters = sorted(
            (n for n in by_id.values() if n.is_master),
            key=lambda n: (0, n.slots[0][0], n.id) if n.slots else (1, 0, n.id),
        )
        replicas: dict[str, list[Node]] = {m.id: [] for m in masters}
        orphans: list[Node] = []
        for node in by_id.values():
            if node.is_master:
                continue
            if node.master_id is not None and node.master_id in replicas:
                replicas[node.master_id].append(node)
            else:
                orphans.append(node)
        ordered: list[Node] = []
        for master in masters:
            ordered.append(master)
            ordered.extend(sorted(replicas[master.id], key=_address_key))
        ordered.extend(sorted(orphans, key=_address_key))

        owners: list[Node | None] = [None] * SLOT_COUNT
        for master in masters:
            for start, end in master.slots:
                if owners[start : end + 1].count(None) == end + 1 - start:
                    owners[start : end + 1] = [master] * (end + 1 - start)
                    continue
                for slot in range(start, end + 1):
                    current = owners[slot]
                    # Two claims happen only mid-failover: a healthy node beats a failed one.
                    if current is None or (current.failed and not master.failed):
                        owners[slot] = master
        by_address: dict[tuple[str, int], Node] = {}
        for node in ordered:
            for host in (node.host, node.ip, node.hostname):
                if host is not None:
                    by_address.setdefault((host, node.port), node)

        self.nodes = tuple(ordered)
        self.source = source
        self._owners = owners
        self._by_id = {n.id: n for n in ordered}
        self._by_address = by_address
        self._masters = tuple(masters)
        self._replicas = {k: tuple(sorted(v, key=_address_key)) for k, v in replicas.items()}

    # -- lookups ---------------------------------------------------------------------------

    def slot_owner(self, slot: int) -> Node | None:
        """The master serving ``slot``, or None when no node owns it."""
        return self._owners[slot]

    def masters(self) -> tuple[Node, ...]:
        return self._masters

    def replicas(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.is_master)

    def replicas_of(self, master: Node | str) -> tuple[Node, ...]:
        """The replicas of a master (a node or its ID), in address order."""
        key = master if isinstance(master, str) else master.id
        return self._replicas.get(key, ())

    def node_by_id(self, node_id: str) -> Node | None:
        return self._by_id.get(node_id)

    def node_by_address(self, host: str, port: int) -> Node | None:
        """The node reachable at ``host:port``; ``host`` may be its endpoint, IP or hostname."""
        return self._by_address.get((host.strip("[]"), port))

    def ranges(self, master: Node | str) -> tuple[_Range, ...]:
        """Every slot range a master owns (ascending, inclusive)."""
        node = self._by_id.get(master if isinstance(master, str) else master.id)
        return node.slots if node is not None else ()

    def covered(self) -> bool:
        """True when every one of the 16384 slots has an owner."""
        return None not in self._owners

    def unassigned(self) -> tuple[_Range, ...]:
        """The slot ranges nobody owns."""
        return _ranges(s for s, owner in enumerate(self._owners) if owner is None)

    # -- updates (return new topologies) -----------------------------------------------------

    def with_slot_owner(self, slot: int, owner: Node) -> Topology:
        """This topology with ``slot`` moved to ``owner`` (a known node), as a MOVED reply says.

        A replica that receives a slot has been promoted, so it becomes a master.
        """
        if not 0 <= slot < SLOT_COUNT:
            msg = f"slot {slot} is out of range 0..{SLOT_COUNT - 1}"
            raise ValueError(msg)
        target = self._by_id.get(owner.id, owner)
        previous = self._owners[slot]
        if previous is not None and previous.id == target.id:
            return self
        changed: dict[str, Node] = {}
        if previous is not None:
            changed[previous.id] = replace(previous, slots=_without(previous.slots, slot))
        changed[target.id] = replace(
            target, role="master", master_id=None, slots=_with(target.slots, slot)
        )
        nodes = [changed.pop(n.id, n) for n in self.nodes]
        nodes.extend(changed.values())
        return Topology(nodes, source=self.source)

    # -- dunder ------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash(self.nodes)

    def __repr__(self) -> str:
        return (
            f"Topology({len(self._masters)} masters, {len(self.nodes) - len(self._masters)} "
            f"replicas, covered={self.covered()}, source={self.source!r})"
        )


def _address_key(node: Node) -> tuple[str, int, str]:
    return (node.host, node.port, node.id)


def _ranges(slots: Iterable[int]) -> tuple[_Range, ...]:
    """Collapse ascending slot numbers into inclusive ranges."""
    out: list[_Range] = []
    for slot in slots:
        if out and out[-1][1] == slot - 1:
            out[-1] = (out[-1][0], slot)
        else:
            out.append((slot, slot))
    return tuple(out)


def _normalise(ranges: Iterable[_Range]) -> tuple[_Range, ...]:
    """Sort and merge overlapping or adjacent ranges."""
    out: list[_Range] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


def _with(ranges: tuple[_Range, ...], slot: int) -> tuple[_Range, ...]:
    return _normalise((*ranges, (slot, slot)))


def _without(ranges: tuple[_Range, ...], slot: int) -> tuple[_Range, ...]:
    out: list[_Range] = []
    for start, end in ranges:
        if start <= slot <= end:
            if start < slot:
                out.append((start, slot - 1))
            if slot < end:
                out.append((slot + 1, end))
        else:
            out.append((start, end))
    return tuple(out)


# -- reading RESP values ---------------------------------------------------------------------


def _bad(source: str, why: str) -> RedisToolkitError:
    return RedisToolkitError(
        f"cannot read the {source} reply: {why}",
        hint="is this a Redis Cluster node (cluster-enabled yes)?",
    )


def _unwrap(value: RespValue) -> RespValue:
    while isinstance(value, Attributed):
        value = value.value
    return value


def _check_error(source: str, value: RespValue) -> RespValue:
    value = _unwrap(value)
    if isinstance(value, ErrorReply):
        raise RedisToolkitError(
            f"{source} failed: {value.text}",
            hint="is this a Redis Cluster node (cluster-enabled yes)?",
        )
    return value


def _text(value: RespValue) -> str:
    value = _unwrap(value)
    if value is None:
        return ""
    if isinstance(value, Verbatim):
        return value.text.decode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _int(value: RespValue) -> int:
    value = _unwrap(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, bytes) and value.strip().lstrip(b"-").isdigit():
        return int(value)
    raise TypeError(f"expected an integer, got {value!r:.40}")


def _list(value: RespValue) -> list[RespValue]:
    value = _unwrap(value)
    if isinstance(value, list) and not isinstance(value, RespMap):
        return value
    raise TypeError(f"expected an array, got {type(value).__name__}")


def _fields(value: RespValue) -> dict[str, RespValue]:
    """A RESP3 map, or a RESP2 flat array of alternating keys and values, as a dict."""
    value = _unwrap(value)
    if isinstance(value, RespMap):
        return {_text(k): v for k, v in value}
    if isinstance(value, list) and len(value) % 2 == 0:
        flat = cast("list[RespValue]", value)
        return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
    raise TypeError(f"expected a map, got {type(value).__name__}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _optional(text: str) -> str | None:
    return text or None


def _port_or_none(fields: Mapping[str, RespValue], name: str) -> int | None:
    if name not in fields:
        return None
    port = _int(fields[name])
    return port or None


# -- CLUSTER SHARDS -----------------------------------------------------------------------------


def parse_cluster_shards(reply: RespValue, *, tls: bool = True) -> Topology:
    """Read a CLUSTER SHARDS reply (RESP2 flat arrays or RESP3 maps).

    ``tls`` picks the port when a node reports both ``port`` and ``tls-port``; a node that
    reports only one of them (a TLS-only cluster has ``port`` 0) is dialled at that one.
    """
    reply = _check_error("CLUSTER SHARDS", reply)
    nodes: list[Node] = []
    try:
        for shard_value in _list(reply):
            shard = _fields(shard_value)
            flat = _list(shard.get("slots", []))
            ranges = _normalise(_slot_pairs(flat))
            members = [_shard_node(_fields(v), tls) for v in _list(shard.get("nodes", []))]
            masters = [n for n in members if n.is_master]
            # One master per shard; mid-failover prefer the healthy one.
            master = next((m for m in masters if not m.failed), masters[0] if masters else None)
            for node in members:
                if node is master:
                    nodes.append(replace(node, slots=ranges))
                elif node.is_master:
                    nodes.append(node)
                else:
                    master_id = master.id if master is not None else None
                    nodes.append(replace(node, master_id=master_id))
    except (TypeError, ValueError, KeyError) as exc:
        raise _bad("CLUSTER SHARDS", str(exc)) from exc
    return Topology(nodes, source="shards")


def _slot_pairs(flat: Sequence[RespValue]) -> list[_Range]:
    """Slot ranges as Redis sends them: [start, end, start, end, ...] (also [[s, e], ...])."""
    pairs: list[_Range] = []
    if flat and all(isinstance(_unwrap(x), list) for x in flat):
        for item in flat:
            start, end = (_int(x) for x in _list(item))
            pairs.append(_checked_range(start, end))
        return pairs
    if len(flat) % 2:
        raise ValueError(f"odd number of slot bounds ({len(flat)})")
    for i in range(0, len(flat), 2):
        pairs.append(_checked_range(_int(flat[i]), _int(flat[i + 1])))
    return pairs


def _checked_range(start: int, end: int) -> _Range:
    if not 0 <= start <= end < SLOT_COUNT:
        raise ValueError(f"bad slot range {start}-{end}")
    return (start, end)


def _shard_node(fields: dict[str, RespValue], tls: bool) -> Node:
    node_id = _text(fields["id"])
    plain = _port_or_none(fields, "port")
    tls_port = _port_or_none(fields, "tls-port")
    port = (tls_port or plain or 0) if tls else (plain or tls_port or 0)
    ip = _optional(_text(fields.get("ip")))
    hostname = _optional(_text(fields.get("hostname")))
    endpoint = _text(fields.get("endpoint"))
    if endpoint == "?":  # hostname preferred but the node has none: its IP still works
        endpoint = ip or ""
    role = _role(_text(fields.get("role", b"master")))
    health = _text(fields.get("health", b"online")) or "online"
    return Node(
        id=node_id,
        host=endpoint,
        port=port,
        role=role,
        hostname=hostname,
        ip=ip,
        tls_port=tls_port,
        health=health,
    )


def _role(text: str) -> str:
    return "replica" if text in ("replica", "slave") else "master"


# -- CLUSTER SLOTS --------------------------------------------------------------------------------


def parse_cluster_slots(reply: RespValue) -> Topology:
    """Read a CLUSTER SLOTS reply (RESP2 or RESP3; one entry per slot range).

    CLUSTER SLOTS leaves out failed replicas and has no health, so every node is ``online``.
    """
    reply = _check_error("CLUSTER SLOTS", reply)
    found: dict[str, Node] = {}
    ranges: dict[str, list[_Range]] = {}
    try:
        for entry_value in _list(reply):
            entry = _list(entry_value)
            if len(entry) < 3:
                raise ValueError(f"slot entry has {len(entry)} elements, expected at least 3")
            span = _checked_range(_int(entry[0]), _int(entry[1]))
            master = _slots_node(_list(entry[2]), "master", None)
            found.setdefault(master.id, master)
            ranges.setdefault(master.id, []).append(span)
            for replica_value in entry[3:]:
                replica = _slots_node(_list(replica_value), "replica", master.id)
                found.setdefault(replica.id, replica)
    except (TypeError, ValueError, KeyError) as exc:
        raise _bad("CLUSTER SLOTS", str(exc)) from exc
    nodes = [
        replace(n, slots=_normalise(ranges[n.id])) if n.id in ranges else n for n in found.values()
    ]
    return Topology(nodes, source="slots")


def _slots_node(item: list[RespValue], role: str, master_id: str | None) -> Node:
    if len(item) < 2:
        raise ValueError(f"node entry has {len(item)} elements, expected at least 2")
    host = _text(item[0])
    port = _int(item[1])
    meta = _fields(item[3]) if len(item) > 3 else {}
    ip = _optional(_text(meta.get("ip")))
    hostname = _optional(_text(meta.get("hostname")))
    if host == "?":
        host = ip or ""
    if host and ip is None and _is_ip(host):
        ip = host
    if host and hostname is None and not _is_ip(host):
        hostname = host
    node_id = _text(item[2]) if len(item) > 2 else ""
    if not node_id:
        node_id = f"{host}:{port}"
    return Node(
        id=node_id,
        host=host,
        port=port,
        role=role,
        master_id=master_id,
        hostname=hostname,
        ip=ip,
    )


# -- CLUSTER NODES ----------------------------------------------------------------------------


def parse_cluster_nodes(text: RespValue) -> Topology:
    """Read CLUSTER NODES text (a bulk string in RESP2, a verbatim string in RESP3).

    Each line: ``id ip:port@cport[,hostname[,aux=value...]] flags master ping pong epoch
    link slot...``. Nodes still in ``handshake`` are left out; ``fail`` and ``fail?`` become
    the health ``fail`` and ``pfail``; importing/migrating markers (``[5->-id]``) are skipped.
    """
    raw = _check_error("CLUSTER NODES", text)
    try:
        body = _text(raw)
    except TypeError as exc:
        raise _bad("CLUSTER NODES", str(exc)) from exc
    nodes: list[Node] = []
    for number, line in enumerate(body.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            node = _nodes_line(line)
        except (TypeError, ValueError, IndexError) as exc:
            raise _bad("CLUSTER NODES", f"line {number}: {exc}") from exc
        if node is not None:
            nodes.append(node)
    return Topology(nodes, source="nodes")


def _nodes_line(line: str) -> Node | None:
    fields = line.split()
    if len(fields) < 8:
        raise ValueError(f"{len(fields)} fields, expected at least 8")
    node_id, address, flag_text, master = fields[:4]
    flags = set(flag_text.split(","))
    if "handshake" in flags:
        return None
    base, *extras = address.split(",")
    host_port = base.rsplit("@", 1)[0]
    host, sep, port_text = host_port.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"bad address {address!r}")
    host = host.strip("[]")
    hostname: str | None = None
    tls_port: int | None = None
    for i, extra in enumerate(extras):
        key, eq, value = extra.partition("=")
        if not eq:
            if i == 0:
                hostname = extra or None
        elif key == "tls-port" and value.isdigit():
            tls_port = int(value) or None
        elif key == "hostname":
            hostname = value or None
    role = "replica" if ("slave" in flags or "replica" in flags) else "master"
    if "fail" in flags:
        health = "fail"
    elif "fail?" in flags:
        health = "pfail"
    else:
        health = "online"
    slots: list[_Range] = []
    if role == "master":
        for token in fields[8:]:
            if token.startswith("["):
                continue
            start, _, end = token.partition("-")
            slots.append(_checked_range(int(start), int(end or start)))
    return Node(
        id=node_id,
        host=host,
        port=int(port_text),
        role=role,
        master_id=None if master == "-" or role == "master" else master,
        hostname=hostname,
        ip=host or None,
        tls_port=tls_port,
        health=health,
        slots=_normalise(slots),
    )


# -- MOVED / ASK ---------------------------------------------------------------------------------


def parse_redirect(message: bytes) -> tuple[str, int, str, int] | None:
    """``(kind, slot, host, port)`` for a ``MOVED``/``ASK`` error text, else None.

    Accepts the text with or without the leading ``-`` and trailing CRLF. An empty host
    (``-MOVED 3999 :6380``, from ``unknown-endpoint`` clusters) is returned as ``""``: the
    caller substitutes the host of the node that replied. IPv6 hosts may be bare or bracketed.
    """
    text = message.strip()
    if text.startswith(b"-"):
        text = text[1:]
    parts = text.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"MOVED", b"ASK"):
        return None
    kind, slot_text, address = parts
    if not slot_text.isdigit():
        return None
    slot = int(slot_text)
    host, sep, port_text = address.rpartition(b":")
    if not sep or not port_text.isdigit() or slot >= SLOT_COUNT:
        return None
    port = int(port_text)
    if port > 65535:
        return None
    host_text = host.decode("utf-8", "replace")
    if host_text.startswith("[") and host_text.endswith("]"):
        host_text = host_text[1:-1]
    return (kind.decode(), slot, host_text, port)
