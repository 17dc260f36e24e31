"""Smart-mode replies the tunnel builds itself (pure; no I/O).

* Merging the replies of a split multi-key command (:func:`merge_split`) or of a fan-out to
  every master (:func:`merge_fanout`, :func:`merge_info`).
* The SCAN cursor that walks every master in turn (:func:`scan_decode`, :func:`scan_cursor`).
* The one-node cluster the listener pretends to be: CLUSTER SLOTS, SHARDS, NODES, INFO, MYID.
* The per-client commands: HELLO, AUTH, SELECT, CLIENT SETNAME / INFO / LIST.

Every function returns :mod:`client.values` values; the session encodes them for the client's
protocol with :func:`client.resp.encode_value`, so RESP2 clients get flat arrays and bulks
where RESP3 clients get maps, sets and verbatim strings.

SCAN cursor
-----------
A standalone cursor is an opaque unsigned 64-bit number; ours packs a node and that node's
own cursor: ``cursor = node_cursor << 14 | start``, where ``start`` is the lowest slot the node
owns. Masters are visited in the order of their lowest slot. The first node is the owner of
slot 0, so the start cursor ``0`` means "slot 0's owner, from its beginning", and a node's
cursor 0 (it is done) moves on to the next master, or returns ``0`` after the last one. A
full iteration therefore returns every key that existed throughout, as on one server. A
cursor names a *slot*, not a node address, so it survives a failover (the replica that took
over continues, with the usual SCAN guarantee across a dict that changed).

INFO
----
INFO goes to every master. The reply is the first master's text, with the sections that
describe the *dataset* or the *traffic* aggregated: ``# Keyspace`` (``keys``/``expires``
summed, ``avg_ttl`` averaged over the keys that expire), ``# Clients`` and ``# Stats``
(numbers summed, fields with ``max``/``peak`` in the name maximised). Everything else
(server, memory, persistence, replication, CPU, cluster) is the first master's, as it
describes one process.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from client.slots import SLOTS, key_slot
from client.values import (
    Attributed,
    ErrorReply,
    RespMap,
    RespSet,
    RespValue,
    SimpleString,
    Verbatim,
)
from tunnel.route import Agg, Split, SplitKind

__all__ = [
    "NOAUTH",
    "OK",
    "PONG",
    "WRONGPASS",
    "AuthRequest",
    "HelloRequest",
    "SelfNode",
    "check_password",
    "client_info_line",
    "cluster_info",
    "cluster_nodes",
    "cluster_shards",
    "cluster_slots",
    "error",
    "fake_node_id",
    "hello_reply",
    "merge_fanout",
    "merge_info",
    "merge_split",
    "parse_auth",
    "parse_client_reply",
    "parse_hello",
    "parse_select",
    "parse_setname",
    "scan_cursor",
    "scan_decode",
    "scan_encode",
    "scan_reply",
]

OK = SimpleString(b"OK")
PONG = SimpleString(b"PONG")
NOAUTH = ErrorReply(b"NOAUTH Authentication required.")
WRONGPASS = ErrorReply(b"WRONGPASS invalid username-password pair or user is disabled.")

_SLOT_BITS = 14
_SLOT_MASK = SLOTS - 1
_MAX_CURSOR = (1 << 64) - 1


def error(text: str) -> ErrorReply:
    """An error reply from one line of text (CR/LF folded to spaces)."""
    return ErrorReply(text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace"))


def _unwrap(value: RespValue) -> RespValue:
    while isinstance(value, Attributed):
        value = value.value
    return value


def _first_error(results: Sequence[RespValue]) -> ErrorReply | None:
    for result in results:
        if isinstance(result, ErrorReply):
            return result
    return None


def _array(value: RespValue) -> list[RespValue] | None:
    """The elements of an array (or set/push) reply; None for anything else (maps included)."""
    value = _unwrap(value)
    if isinstance(value, list) and not isinstance(value, RespMap):
        return value
    return None


def _as_int(value: RespValue) -> int | None:
    value = _unwrap(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return None


def _bad_reply(what: str, value: RespValue) -> ErrorReply:
    return error(f"ERR unexpected reply to {what} from a cluster node: {value!r:.60}")


# --------------------------------------------------------------------------- split / fan-out


def merge_split(plan: Split, results: Sequence[RespValue]) -> RespValue:
    """The reply to a split command from its parts' replies (``results[i]`` for part ``i``).

    MGET values go back in the order of the keys; DEL/UNLINK/EXISTS/TOUCH counts are summed;
    MSET answers OK. The first error reply of any part wins (it is what the client must see).
    """
    failed = _first_error(results)
    if failed is not None:
        return failed
    if plan.kind is SplitKind.ORDERED:
        out: list[RespValue] = [None] * plan.size
        for part, result in zip(plan.parts, results, strict=True):
            values = _array(result)
            if values is None or len(values) != len(part.positions):
                return _bad_reply(part.args[0].decode("ascii", "replace").upper(), result)
            for pos, value in zip(part.positions, values, strict=True):
                out[pos] = value
        return out
    if plan.kind is SplitKind.SUM:
        total = 0
        for result in results:
            n = _as_int(result)
            if n is None:
                return _bad_reply("a counting command", result)
            total += n
        return total
    return OK


def _elementwise(results: Sequence[RespValue], combine: str) -> RespValue:
    rows: list[list[RespValue]] = []
    for result in results:
        row = _array(result)
        if row is None:
            return _bad_reply("SCRIPT EXISTS", result)
        rows.append(row)
    if not rows:
        return _bad_reply("SCRIPT EXISTS", None)
    out: list[RespValue] = []
    for i in range(len(rows[0])):
        column: list[RespValue] = [r[i] if len(r) > i else 0 for r in rows]
        truths = [bool(_as_int(v)) for v in column]
        value = all(truths) if combine == "and" else any(truths)
        first = _unwrap(column[0])
        out.append(value if isinstance(first, bool) else int(value))
    return out


def _union(results: Sequence[RespValue]) -> RespValue:
    seen: set[bytes] = set()
    out: list[RespValue] = []
    for result in results:
        values = _array(result)
        if values is None:
            return _bad_reply("PUBSUB", result)
        for value in values:
            key = value if isinstance(value, bytes) else repr(value).encode()
            if key not in seen:
                seen.add(key)
                out.append(value)
    first = _unwrap(results[0]) if results else None
    return RespSet(out) if isinstance(first, RespSet) else out


def _pairs(value: RespValue) -> list[tuple[RespValue, RespValue]] | None:
    value = _unwrap(value)
    if isinstance(value, RespMap):
        return list(value)
    flat = _array(value)
    if flat is not None and len(flat) % 2 == 0:
        return list(zip(flat[0::2], flat[1::2], strict=True))
    return None


def _pairs_sum(results: Sequence[RespValue]) -> RespValue:
    order: list[RespValue] = []
    totals: dict[bytes, int] = {}
    for result in results:
        pairs = _pairs(result)
        if pairs is None:
            return _bad_reply("PUBSUB NUMSUB", result)
        for name, count in pairs:
            key = name if isinstance(name, bytes) else repr(name).encode()
            if key not in totals:
                order.append(name)
                totals[key] = 0
            totals[key] += _as_int(count) or 0
    merged = [(n, totals[n if isinstance(n, bytes) else repr(n).encode()]) for n in order]
    if results and isinstance(_unwrap(results[0]), RespMap):
        return RespMap(merged)
    flat: list[RespValue] = []
    for name, count in merged:
        flat += [name, count]
    return flat


def merge_fanout(
    agg: Agg, results: Sequence[RespValue], *, rng: random.Random | None = None
) -> RespValue:
    """Combine the replies of every master (``results``, one per master) by ``agg``.

    ``ALL_OK`` answers the first error if any node failed, else the first reply;
    ``ONE_OK`` answers the first success, else the first error; the aggregations answer the
    first error if any node failed. An empty ``results`` (no master) is an error.
    """
    if not results:
        return error("CLUSTERDOWN the cluster has no reachable master")
    if agg is Agg.ONE_OK:
        for result in results:
            if not isinstance(result, ErrorReply):
                return result
        return results[0]
    failed = _first_error(results)
    if failed is not None:
        return failed
    if agg is Agg.ALL_OK:
        return results[0]
    if agg in (Agg.SUM, Agg.MIN, Agg.MAX):
        numbers = [_as_int(r) for r in results]
        if any(n is None for n in numbers):
            return _bad_reply("an aggregated command", results[0])
        ints = [n for n in numbers if n is not None]
        return sum(ints) if agg is Agg.SUM else min(ints) if agg is Agg.MIN else max(ints)
    if agg is Agg.CONCAT:
        out: list[RespValue] = []
        for result in results:
            values = _array(result)
            if values is None:
                return _bad_reply("KEYS", result)
            out.extend(values)
        return out
    if agg is Agg.UNION:
        return _union(results)
    if agg is Agg.PAIRS_SUM:
        return _pairs_sum(results)
    if agg in (Agg.AND, Agg.OR):
        return _elementwise(results, "and" if agg is Agg.AND else "or")
    if agg is Agg.RANDOM:
        found = [r for r in results if _unwrap(r) is not None]
        if not found:
            return None
        return (rng or random).choice(found)
    return merge_info(results)


# --------------------------------------------------------------------------- INFO

_SUMMED_SECTIONS = frozenset({"clients", "stats"})


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _format_number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


def _info_text(value: RespValue) -> str | None:
    value = _unwrap(value)
    if isinstance(value, Verbatim):
        return value.text.decode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def _sections(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """INFO text as (section name, [(field, value)]) in order; '' for lines before a header."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    current: list[tuple[str, str]] | None = None
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if not line:
            continue
        if line.startswith("#"):
            current = []
            out.append((line[1:].strip(), current))
            continue
        if current is None:
            current = []
            out.append(("", current))
        field, _, value = line.partition(":")
        current.append((field, value))
    return out


def _merge_keyspace(nodes: Sequence[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    dbs: dict[str, dict[str, int]] = {}
    order: list[str] = []
    weighted: dict[str, int] = {}
    for fields in nodes:
        for db, value in fields:
            parts = dict(p.partition("=")[::2] for p in value.split(","))
            if db not in dbs:
                dbs[db] = {}
                order.append(db)
                weighted[db] = 0
            totals = dbs[db]
            numbers = {k: int(v) for k, v in parts.items() if v.lstrip("-").isdigit()}
            for key, n in numbers.items():
                if key != "avg_ttl":
                    totals[key] = totals.get(key, 0) + n
            weighted[db] += numbers.get("avg_ttl", 0) * numbers.get("expires", 0)
            totals.setdefault("avg_ttl", 0)
    out: list[tuple[str, str]] = []
    for db in sorted(order, key=lambda d: (len(d), d)):
        totals = dbs[db]
        expires = totals.get("expires", 0)
        totals["avg_ttl"] = weighted[db] // expires if expires else 0
        main = ("keys", "expires", "avg_ttl")
        keys = [*main, *sorted(k for k in totals if k not in main)]
        out.append((db, ",".join(f"{k}={totals[k]}" for k in keys if k in totals)))
    return out


def _merge_counters(nodes: Sequence[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    first = nodes[0]
    others = [dict(fields) for fields in nodes[1:]]
    out: list[tuple[str, str]] = []
    for field, value in first:
        number = _number(value)
        if number is None:
            out.append((field, value))
            continue
        values = [number]
        for other in others:
            n = _number(other.get(field, ""))
            if n is not None:
                values.append(n)
        keep_max = "max" in field or "peak" in field
        merged = max(values) if keep_max else sum(values)
        if isinstance(number, int) and all(isinstance(v, int) for v in values):
            merged = int(merged)
        out.append((field, _format_number(merged)))
    return out


def merge_info(results: Sequence[RespValue]) -> RespValue:
    """Merge INFO replies of every master (see the module notes for what is aggregated)."""
    failed = _first_error(results)
    if failed is not None:
        return failed
    texts = [_info_text(r) for r in results]
    if not texts or any(t is None for t in texts):
        return _bad_reply("INFO", results[0] if results else None)
    parsed = [_sections(t) for t in texts if t is not None]
    by_node = [dict(p) for p in parsed]
    lines: list[str] = []
    for name, fields in parsed[0]:
        key = name.lower()
        same = [d.get(name, []) for d in by_node]
        if key == "keyspace":
            fields = _merge_keyspace(same)
        elif key in _SUMMED_SECTIONS:
            fields = _merge_counters(same)
        if lines:
            lines.append("")
        if name:
            lines.append(f"# {name}")
        lines.extend(f"{f}:{v}" for f, v in fields)
    text = ("\r\n".join(lines) + "\r\n").encode()
    if isinstance(_unwrap(results[0]), Verbatim):
        return Verbatim(b"txt", text)
    return text


# --------------------------------------------------------------------------- SCAN


def scan_encode(start: int, node_cursor: int) -> int:
    """The tunnel's cursor for ``node_cursor`` on the master whose lowest slot is ``start``."""
    return (node_cursor << _SLOT_BITS) | start


def scan_decode(cursor: int) -> tuple[int, int]:
    """``(slot, node_cursor)`` of a tunnel cursor: continue on ``slot``'s owner."""
    return cursor & _SLOT_MASK, cursor >> _SLOT_BITS


def scan_cursor(starts: Sequence[int], start: int, node_cursor: int) -> int:
    """The cursor to return after the master whose lowest slot is ``start`` answered with
    ``node_cursor``; ``starts`` are the lowest slots of every master.

    Returns 0 when the last master is done. A node cursor too large to pack (never seen in
    practice: it would need a hash table of 2^50 buckets) ends that node's walk.
    """
    if node_cursor and scan_encode(start, node_cursor) <= _MAX_CURSOR:
        return scan_encode(start, node_cursor)
    later = [s for s in starts if s > start]
    return scan_encode(min(later), 0) if later else 0


def scan_reply(reply: RespValue, starts: Sequence[int], start: int) -> RespValue:
    """Rewrite a node's SCAN reply ``[cursor, keys]`` with the tunnel's cursor."""
    if isinstance(reply, ErrorReply):
        return reply
    value = _array(reply)
    if value is None or len(value) != 2:
        return _bad_reply("SCAN", reply)
    raw, keys = value
    try:
        node_cursor = int(raw) if isinstance(raw, bytes) else -1
    except ValueError:
        node_cursor = -1
    if node_cursor < 0:
        return _bad_reply("SCAN", reply)
    return [b"%d" % scan_cursor(starts, start, node_cursor), keys]


# --------------------------------------------------------------------------- one-node cluster


@dataclass(frozen=True, slots=True)
class SelfNode:
    """The listener as the one node of the fake cluster (and what HELLO reports)."""

    host: str
    port: int
    node_id: str
    version: str = "7.0.0"

    @property
    def cport(self) -> int:
        return 0


def fake_node_id(host: str, port: int) -> str:
    """A stable 40-hex-digit node ID for a listener address."""
    return hashlib.sha1(f"redis-client smart {host}:{port}".encode()).hexdigest()


def cluster_slots(me: SelfNode) -> RespValue:
    """CLUSTER SLOTS: one range 0-16383 served by the listener (Redis 7 entry shape)."""
    node: list[RespValue] = [me.host.encode(), me.port, me.node_id.encode(), RespMap()]
    return [[0, SLOTS - 1, node]]


def cluster_shards(me: SelfNode) -> RespValue:
    """CLUSTER SHARDS: one shard, one master node, all slots."""
    node = RespMap(
        [
            (b"id", me.node_id.encode()),
            (b"port", me.port),
            (b"ip", me.host.encode()),
            (b"endpoint", me.host.encode()),
            (b"role", b"master"),
            (b"replication-offset", 0),
            (b"health", b"online"),
        ]
    )
    shard = RespMap([(b"slots", [0, SLOTS - 1]), (b"nodes", [node])])
    return [shard]


def cluster_nodes(me: SelfNode) -> RespValue:
    """CLUSTER NODES: one line, ``myself,master``, connected, slots 0-16383."""
    line = (
        f"{me.node_id} {me.host}:{me.port}@{me.cport} myself,master - 0 0 1 connected "
        f"0-{SLOTS - 1}\n"
    )
    return Verbatim(b"txt", line.encode())


def cluster_info(*, healthy: bool) -> RespValue:
    """CLUSTER INFO of the one-node cluster; ``healthy``: the real cluster covers every slot."""
    state = "ok" if healthy else "fail"
    fields = [
        ("cluster_state", state),
        ("cluster_slots_assigned", SLOTS),
        ("cluster_slots_ok", SLOTS if healthy else 0),
        ("cluster_slots_pfail", 0),
        ("cluster_slots_fail", 0 if healthy else SLOTS),
        ("cluster_known_nodes", 1),
        ("cluster_size", 1),
        ("cluster_current_epoch", 1),
        ("cluster_my_epoch", 1),
        ("cluster_stats_messages_sent", 0),
        ("cluster_stats_messages_received", 0),
        ("total_cluster_links_buffer_limit_exceeded", 0),
    ]
    text = "".join(f"{k}:{v}\r\n" for k, v in fields)
    return Verbatim(b"txt", text.encode())


def cluster_keyslot(args: Sequence[bytes]) -> RespValue:
    return key_slot(args[2])


# --------------------------------------------------------------------------- per-client commands


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """AUTH [username] password."""

    username: bytes | None
    password: bytes


@dataclass(frozen=True, slots=True)
class HelloRequest:
    """HELLO [protover [AUTH username password] [SETNAME clientname]]."""

    protocol: int | None
    auth: AuthRequest | None
    setname: bytes | None


def parse_auth(args: Sequence[bytes]) -> AuthRequest | ErrorReply:
    """AUTH's arguments (``args[0]`` is ``AUTH``)."""
    if len(args) == 2:
        return AuthRequest(None, args[1])
    if len(args) == 3:
        return AuthRequest(args[1], args[2])
    if len(args) < 2:
        return error("ERR wrong number of arguments for 'auth' command")
    return error("ERR syntax error")


def check_password(request: AuthRequest, password: str | None) -> bool:
    """True when the AUTH succeeds: no local password is set, or it matches (user ``default``)."""
    if password is None:
        return True
    if request.username not in (None, b"default"):
        return False
    return hashlib.sha256(request.password).digest() == hashlib.sha256(password.encode()).digest()


def parse_hello(args: Sequence[bytes]) -> HelloRequest | ErrorReply:
    """HELLO's arguments, with Redis's own error texts."""
    if len(args) == 1:
        return HelloRequest(None, None, None)
    try:
        protocol = int(args[1])
    except ValueError:
        return error("ERR Protocol version is not an integer or out of range")
    if protocol not in (2, 3):
        return error("NOPROTO unsupported protocol version")
    auth: AuthRequest | None = None
    setname: bytes | None = None
    i = 2
    while i < len(args):
        option = args[i].lower()
        more = len(args) - i - 1
        if option == b"auth" and more >= 2:
            auth = AuthRequest(args[i + 1], args[i + 2])
            i += 3
        elif option == b"setname" and more >= 1:
            setname = args[i + 1]
            i += 2
        else:
            shown = args[i].decode("utf-8", "replace")
            return error(f"ERR Syntax error in HELLO option '{shown}'")
    if setname is not None:
        bad = parse_setname(setname)
        if isinstance(bad, ErrorReply):
            return bad
    return HelloRequest(protocol, auth, setname)


def hello_reply(me: SelfNode, *, protocol: int, client_id: int) -> RespValue:
    """The HELLO reply map (a flat array for RESP2 clients once encoded)."""
    return RespMap(
        [
            (b"server", b"redis"),
            (b"version", me.version.encode()),
            (b"proto", protocol),
            (b"id", client_id),
            (b"mode", b"standalone"),
            (b"role", b"master"),
            (b"modules", []),
        ]
    )


def parse_select(args: Sequence[bytes]) -> ErrorReply | None:
    """None when SELECT is accepted (DB 0), else the error."""
    try:
        db = int(args[1])
    except ValueError:
        return error("ERR value is not an integer or out of range")
    if db == 0:
        return None
    return error(
        "ERR DB index is out of range: the smart tunnel serves a Redis Cluster, which has only "
        "DB 0 (use key prefixes or hash tags instead of databases)"
    )


def parse_setname(name: bytes) -> bytes | ErrorReply:
    """A valid client name (empty clears it), or Redis's error for a bad one."""
    if any(c <= 0x20 or c > 0x7E for c in name):
        return error("ERR Client names cannot contain spaces, newlines or special characters.")
    return name


def parse_client_reply(args: Sequence[bytes]) -> str | ErrorReply:
    """CLIENT REPLY ON|OFF|SKIP as ``"on"``, ``"off"`` or ``"skip"``."""
    mode = args[2].lower() if len(args) == 3 else b""
    if mode in (b"on", b"off", b"skip"):
        return mode.decode()
    return error("ERR syntax error")


def client_info_line(
    *,
    client_id: int,
    addr: str,
    laddr: str,
    name: bytes,
    protocol: int,
    age: int,
    multi: int,
    sub: int,
    psub: int,
    ssub: int,
    lib_name: bytes = b"",
    lib_ver: bytes = b"",
    command: str = "NULL",
) -> bytes:
    """One CLIENT INFO / CLIENT LIST line, with the fields that mean something for the tunnel."""
    fields = [
        f"id={client_id}",
        f"addr={addr}",
        f"laddr={laddr}",
        "fd=-1",
        f"name={name.decode('ascii', 'replace')}",
        f"age={age}",
        "idle=0",
        "flags=N",
        "db=0",
        f"sub={sub}",
        f"psub={psub}",
        f"ssub={ssub}",
        f"multi={multi}",
        "user=default",
        f"lib-name={lib_name.decode('ascii', 'replace')}",
        f"lib-ver={lib_ver.decode('ascii', 'replace')}",
        f"resp={protocol}",
        f"cmd={command}",
    ]
    return (" ".join(fields) + "\n").encode()
