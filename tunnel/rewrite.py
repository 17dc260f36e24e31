"""Node-address rewriting for pinned mode (pure; no I/O).

In pinned mode every cluster node gets a local listener. A cluster-aware client learns node
addresses from a handful of replies, and each of those addresses must become the matching
listener's address, or the client would dial the real (unreachable, TLS-only) node:

=====================================  ======================================================
reply                                  what is rewritten
=====================================  ======================================================
``-MOVED slot host:port``, ``-ASK``    ``host:port`` (an empty host means "the node you asked")
CLUSTER SLOTS                          each node's host and port, metadata ``ip``/``hostname``
CLUSTER SHARDS                         ``ip``, ``endpoint``, ``hostname``, ``port``, ``tls-port``
CLUSTER NODES (``$`` or ``=txt:``)     ``ip:port`` and ``,hostname`` of each line
CLUSTER REPLICAS / SLAVES              the same, for each NODES-format line
=====================================  ======================================================

Theory of operation
-------------------
# The relay (tunnel/tracking.py) knows *which command* a reply answers, so rewriting is scoped
# by command, never by the look of the data: a GET whose value is "10.0.0.5:6379" or a whole
# CLUSTER NODES-shaped text is never handed to this module. That is the difference from the
# earlier tool, which rewrote every dotted string in every reply.
#
# Rewriting is byte-exact. A complete reply frame is parsed into a light tree that records the
# byte span of every element, the address leaves are located, and the output is the input with
# only those spans spliced. Node IDs, slots, flags, attribute maps, RESP3 map/array shapes and
# every byte we did not choose to replace stay identical. A frame we cannot parse (or an error
# reply, e.g. "-ERR This instance has cluster support disabled") is returned unchanged.
#
# Addresses are looked up in an :class:`AddressBook` (upstream endpoint -> local listener). A
# node that has no listener yet is reported as :class:`Missing`; the I/O layer opens listeners
# for it and calls the rewrite again, so the client never sees an address it cannot dial.
#
# RESP3 maintenance pushes (Redis 8 ``CLIENT MAINT_NOTIFICATIONS``): ``MOVING`` and
# ``SMIGRATED`` carry endpoints. They are SUPPRESSED, not rewritten (see
# :func:`is_suppressed_push`): their formats are young and vary between servers, a push never
# answers a command (dropping one cannot shift the reply order), and a client that misses one
# still learns the new layout the ordinary way, through MOVED/ASK and the rewritten CLUSTER
# replies. The other maintenance pushes (MIGRATING, MIGRATED, FAILING_OVER, FAILED_OVER,
# SMIGRATING) carry no endpoint and pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "AddressBook",
    "Endpoint",
    "Missing",
    "NodeRef",
    "Topic",
    "format_hostport",
    "is_suppressed_push",
    "rewrite_nodes_text",
    "rewrite_redirect",
    "rewrite_reply",
]

#: Deepest nesting the frame walker follows; CLUSTER replies need 5.
_MAX_DEPTH = 32

_CRLF = b"\r\n"
_STRINGS = frozenset(b"$!=")  # length-prefixed leaves
_LINES = frozenset(b"+-:,(#_")  # single-line leaves
_AGGREGATES = frozenset(b"*~>%|")


class Topic(Enum):
    """Which topology command a reply answers."""

    SLOTS = "slots"
    SHARDS = "shards"
    NODES = "nodes"
    REPLICAS = "replicas"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host and port: an upstream node's, or a local listener's."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node named by a reply that has no listener yet (the address the tunnel would dial)."""

    host: str
    port: int
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class Missing:
    """The rewrite needs listeners for these nodes first; open them and rewrite again."""

    nodes: tuple[NodeRef, ...]


def format_hostport(host: str, port: int) -> str:
    """``host:port`` the way Redis writes it (IPv6 addresses without brackets)."""
    return f"{host}:{port}"


def _norm(host: str) -> str:
    return host.strip("[]").lower()


class AddressBook:
    """Upstream node endpoint (and node ID) -> the local listener that relays to it.

    The I/O layer owns one book per tunnel and updates it as listeners open and retire. Hosts
    compare case-insensitively and IPv6 brackets are ignored.
    """

    def __init__(self) -> None:
        self._by_addr: dict[tuple[str, int], Endpoint] = {}
        self._by_id: dict[str, Endpoint] = {}

    def add(self, host: str, port: int, local: Endpoint, node_id: str | None = None) -> None:
        """Route ``host:port`` (and ``node_id``, when known) to the listener at ``local``."""
        self._by_addr[(_norm(host), port)] = local
        if node_id:
            self._by_id[node_id] = local

    def remove(self, host: str, port: int) -> None:
        """Forget ``host:port`` and every node ID that pointed at the same listener."""
        local = self._by_addr.pop((_norm(host), port), None)
        if local is not None:
            for node_id in [k for k, v in self._by_id.items() if v == local]:
                del self._by_id[node_id]

    def lookup(self, host: str, port: int, node_id: str | None = None) -> Endpoint | None:
        """The listener for a node: by address first, then by node ID."""
        found = self._by_addr.get((_norm(host), port))
        if found is None and node_id:
            found = self._by_id.get(node_id)
        return found

    def __len__(self) -> int:
        return len(self._by_addr)


# ---------------------------------------------------------------------------------------------
# MOVED / ASK


def rewrite_redirect(frame: bytes, book: AddressBook, origin: str) -> bytes | Missing | None:
    """Rewrite a ``-MOVED``/``-ASK`` error frame.

    Args:
        frame: one complete error frame, ``-MOVED 3999 10.0.0.5:6380\\r\\n``.
        book: the listener table.
        origin: the host of the node this reply came from; an empty host in the redirect
            (``-MOVED 3999 :6380``) means that node's host.

    Returns:
        The rewritten frame, :class:`Missing` when the target has no listener yet, or None
        when the frame is not a well-formed redirect (forward it unchanged).
    """
    if not frame.endswith(_CRLF):
        return None
    parts = frame[1:-2].split(b" ")
    if len(parts) != 3 or parts[0] not in (b"MOVED", b"ASK") or not parts[1].isdigit():
        return None
    host_b, sep, port_b = parts[2].rpartition(b":")
    if not sep or not port_b.isdigit():
        return None
    host = host_b.decode("utf-8", "replace") or origin
    port = int(port_b)
    local = book.lookup(host, port)
    if local is None:
        return Missing((NodeRef(host, port),))
    target = format_hostport(local.host, local.port).encode()
    return b"-" + parts[0] + b" " + parts[1] + b" " + target + _CRLF


def is_suppressed_push(kind: bytes | None) -> bool:
    """Whether a RESP3 push of this type (its first element) is dropped in pinned mode.

    ``MOVING`` and ``SMIGRATED`` maintenance notifications name node endpoints that a local
    client cannot reach; see the module docstring for why they are dropped, not rewritten.
    """
    return kind is not None and kind.upper() in (b"MOVING", b"SMIGRATED")


# ---------------------------------------------------------------------------------------------
# A byte-span tree of one complete frame


class _Malformed(Exception):
    """The frame is not the complete, valid RESP we expected: forward it unchanged."""


class _Node:
    """One element of a parsed frame: its type byte, byte span and payload or children."""

    __slots__ = ("children", "end", "kind", "start", "value")

    def __init__(
        self,
        kind: int,
        start: int,
        end: int,
        value: bytes | None = None,
        children: list[_Node] | None = None,
    ) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.value = value
        self.children = children

    def text(self) -> str | None:
        """The payload of a string leaf as text (None for other elements)."""
        if self.value is None or self.kind not in (ord("$"), ord("+")):
            return None
        return self.value.decode("utf-8", "replace")

    def integer(self) -> int | None:
        if self.kind != ord(":") or self.value is None:
            return None
        try:
            return int(self.value)
        except ValueError:
            return None


def _line_end(buf: bytes, pos: int) -> int:
    eol = buf.find(_CRLF, pos)
    if eol < 0:
        raise _Malformed
    return eol


def _length(buf: bytes, start: int, eol: int) -> int:
    try:
        return int(buf[start:eol])
    except ValueError:
        raise _Malformed from None


def _parse(buf: bytes, pos: int, depth: int) -> tuple[_Node, int]:
    """Parse the element at ``pos``; return it and the offset just past it.

    An attribute map (``|``) is skipped: the node returned is the value it annotates, and the
    attribute bytes stay in the output because splicing copies everything not replaced.
    """
    if pos >= len(buf) or depth > _MAX_DEPTH:
        raise _Malformed
    kind = buf[pos]
    eol = _line_end(buf, pos)
    if kind in _STRINGS:
        n = _length(buf, pos + 1, eol)
        if n < 0:
            return _Node(kind, pos, eol + 2), eol + 2
        start = eol + 2
        end = start + n
        if buf[end : end + 2] != _CRLF:
            raise _Malformed
        return _Node(kind, pos, end + 2, buf[start:end]), end + 2
    if kind in _AGGREGATES:
        n = _length(buf, pos + 1, eol)
        if n < 0:
            return _Node(kind, pos, eol + 2), eol + 2
        count = 2 * n if kind in (ord("%"), ord("|")) else n
        children: list[_Node] = []
        p = eol + 2
        for _ in range(count):
            child, p = _parse(buf, p, depth + 1)
            children.append(child)
        if kind == ord("|"):
            return _parse(buf, p, depth + 1)
        return _Node(kind, pos, p, None, children), p
    if kind in _LINES:
        return _Node(kind, pos, eol + 2, buf[pos + 1 : eol]), eol + 2
    raise _Malformed


def _parse_frame(frame: bytes) -> _Node:
    node, end = _parse(frame, 0, 0)
    if end != len(frame):
        raise _Malformed
    return node


def _pairs(node: _Node) -> list[tuple[str, _Node]]:
    """Key/value pairs of a RESP3 map or a RESP2 flat ``[k1, v1, k2, v2]`` array."""
    kids = node.children
    if kids is None or len(kids) % 2:
        return []
    out: list[tuple[str, _Node]] = []
    for i in range(0, len(kids), 2):
        key = kids[i].text()
        if key is not None:
            out.append((key, kids[i + 1]))
    return out


def _splice(frame: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    if not edits:
        return frame
    edits.sort()
    out: list[bytes] = []
    pos = 0
    for start, end, new in edits:
        out.append(frame[pos:start])
        out.append(new)
        pos = end
    out.append(frame[pos:])
    return b"".join(out)


def _string_like(node: _Node, text: str) -> bytes:
    """``text`` encoded as the same RESP type as ``node`` (simple or bulk string)."""
    data = text.encode()
    if node.kind == ord("+"):
        return b"+" + data + _CRLF
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _int_like(value: int) -> bytes:
    return b":%d\r\n" % value


class _Rewriter:
    """Collects edits and missing nodes while one frame is walked."""

    def __init__(self, book: AddressBook, origin: str) -> None:
        self.book = book
        self.origin = origin
        self.edits: list[tuple[int, int, bytes]] = []
        self.missing: list[NodeRef] = []

    def resolve(self, candidates: list[tuple[str, int]], node_id: str | None) -> Endpoint | None:
        """Find the listener for a node named by any of ``candidates`` or by its ID.

        Records the node as missing (dialled at the first usable candidate) when none is known.
        """
        usable = [(h or self.origin, p) for h, p in candidates if h != "?" and p > 0]
        for host, port in usable:
            found = self.book.lookup(host, port)
            if found is not None:
                return found
        if node_id:
            found = self.book.lookup("", -1, node_id)
            if found is not None:
                return found
        if usable:
            ref = NodeRef(usable[0][0], usable[0][1], node_id)
            if ref not in self.missing:
                self.missing.append(ref)
        return None

    def set_string(self, node: _Node, text: str) -> None:
        if node.kind in (ord("$"), ord("+")) and node.value:
            self.edits.append((node.start, node.end, _string_like(node, text)))

    def set_int(self, node: _Node, value: int) -> None:
        current = node.integer()
        if current is not None and current > 0:
            self.edits.append((node.start, node.end, _int_like(value)))

    def result(self, frame: bytes) -> bytes | Missing:
        if self.missing:
            return Missing(tuple(self.missing))
        return _splice(frame, self.edits)


# ---------------------------------------------------------------------------------------------
# CLUSTER SLOTS


def _slots(top: _Node, rw: _Rewriter) -> None:
    # [[start, end, [host, port, id, {meta}], [replica...]], ...]
    for rng in top.children or ():
        kids = rng.children
        if rng.kind != ord("*") or kids is None or len(kids) < 3:
            continue
        for node in kids[2:]:
            _slots_node(node, rw)


def _slots_node(node: _Node, rw: _Rewriter) -> None:
    kids = node.children
    if node.kind != ord("*") or kids is None or len(kids) < 2:
        return
    host, port = kids[0].text(), kids[1].integer()
    if port is None:
        return
    if host is None:
        if kids[0].value is not None or kids[0].kind not in (ord("$"), ord("_")):
            return
        host = ""  # a null endpoint ("unknown-endpoint"): the node the client asked
    node_id = kids[2].text() if len(kids) > 2 else None
    meta = _pairs(kids[3]) if len(kids) > 3 else []
    candidates = [(host, port)]
    for key, value in meta:
        text = value.text()
        if key in ("ip", "hostname") and text:
            candidates.append((text, port))
    local = rw.resolve(candidates, node_id)
    if local is None:
        return
    if host not in ("", "?"):
        rw.set_string(kids[0], local.host)
    rw.set_int(kids[1], local.port)
    for key, value in meta:
        if key in ("ip", "hostname"):
            rw.set_string(value, local.host)


# ---------------------------------------------------------------------------------------------
# CLUSTER SHARDS


def _shards(top: _Node, rw: _Rewriter, prefer_tls: bool) -> None:
    # [{slots: [...], nodes: [{id, port, tls-port, ip, endpoint, hostname, ...}, ...]}, ...]
    for shard in top.children or ():
        for key, value in _pairs(shard):
            if key == "nodes":
                for node in value.children or ():
                    _shards_node(node, rw, prefer_tls)


def _shards_node(node: _Node, rw: _Rewriter, prefer_tls: bool) -> None:
    fields = dict(_pairs(node))
    node_id = fields["id"].text() if "id" in fields else None
    port = fields["port"].integer() if "port" in fields else None
    tls_port = fields["tls-port"].integer() if "tls-port" in fields else None
    ports = [p for p in ((tls_port, port) if prefer_tls else (port, tls_port)) if p]
    if not ports:
        return
    hosts = [fields[k].text() for k in ("endpoint", "ip", "hostname") if k in fields]
    candidates = [(h, ports[0]) for h in hosts if h]
    local = rw.resolve(candidates, node_id)
    if local is None:
        return
    for key in ("endpoint", "ip", "hostname"):
        leaf = fields.get(key)
        if leaf is not None and leaf.text() not in (None, "?"):
            rw.set_string(leaf, local.host)
    for key in ("port", "tls-port"):
        leaf = fields.get(key)
        if leaf is not None:
            rw.set_int(leaf, local.port)


# ---------------------------------------------------------------------------------------------
# CLUSTER NODES and CLUSTER REPLICAS: "<id> <ip:port@cport[,hostname[,aux=v]*]> <flags> ..."


def _nodes_line(line: bytes, rw: _Rewriter) -> bytes:
    fields = line.split(b" ")
    if len(fields) < 3:
        return line
    addr = fields[1]
    cut = len(addr)
    for mark in (b"@", b","):
        i = addr.find(mark)
        if 0 <= i < cut:
            cut = i
    host_b, sep, port_b = addr[:cut].rpartition(b":")
    if not sep or not port_b.isdigit() or int(port_b) == 0:
        return line
    flags = fields[2].split(b",")
    if b"noaddr" in flags or b"handshake" in flags:
        return line
    node_id = fields[0].decode("ascii", "replace")
    host = host_b.decode("utf-8", "replace")
    local = rw.resolve([(host, int(port_b))], node_id)
    if local is None:
        return line
    tail = addr[cut:]
    if tail.startswith(b"@"):
        cport, comma, extra = tail.partition(b",")
        tail = cport + comma + _nodes_hostname(extra, local.host) if comma else cport
    elif tail.startswith(b","):
        tail = b"," + _nodes_hostname(tail[1:], local.host)
    fields[1] = format_hostport(local.host, local.port).encode() + tail
    return b" ".join(fields)


def _nodes_hostname(extra: bytes, host: str) -> bytes:
    """Replace the hostname (the first field after the comma) unless empty or ``key=value``."""
    name, comma, rest = extra.partition(b",")
    if name and b"=" not in name:
        name = host.encode()
    return name + comma + rest


def rewrite_nodes_text(text: bytes, book: AddressBook, origin: str) -> bytes | Missing:
    """Rewrite the addresses in CLUSTER NODES text (one node per line)."""
    rw = _Rewriter(book, origin)
    out = b"\n".join(_nodes_line(line, rw) for line in text.split(b"\n"))
    if rw.missing:
        return Missing(tuple(rw.missing))
    return out


def _nodes(top: _Node, frame: bytes, rw: _Rewriter) -> None:
    if top.value is None:
        return
    prefix = b""
    text = top.value
    if top.kind == ord("="):
        prefix, text = text[:4], text[4:]
    elif top.kind != ord("$"):
        return
    new = b"\n".join(_nodes_line(line, rw) for line in text.split(b"\n"))
    if new != text:
        payload = prefix + new
        head = b"%c%d\r\n" % (top.kind, len(payload))
        rw.edits.append((top.start, top.end, head + payload + _CRLF))


def _replicas(top: _Node, rw: _Rewriter) -> None:
    for item in top.children or ():
        if item.kind == ord("$") and item.value is not None:
            new = _nodes_line(item.value, rw)
            if new != item.value:
                rw.edits.append((item.start, item.end, b"$%d\r\n%s\r\n" % (len(new), new)))


# ---------------------------------------------------------------------------------------------


def rewrite_reply(
    topic: Topic, frame: bytes, book: AddressBook, origin: str, *, prefer_tls: bool = True
) -> bytes | Missing:
    """Rewrite the node addresses in one complete reply to a topology command.

    Args:
        topic: the command the reply answers.
        frame: the complete reply frame, RESP2 or RESP3.
        book: the listener table.
        origin: the host of the node that sent the reply (for empty endpoints).
        prefer_tls: the tunnel dials TLS, so a CLUSTER SHARDS ``tls-port`` names the node.

    Returns:
        The frame with only address bytes changed (the frame itself when there is nothing to
        change, or it is an error reply or not valid RESP), or :class:`Missing`.
    """
    try:
        top = _parse_frame(frame)
    except (_Malformed, RecursionError):
        return frame
    rw = _Rewriter(book, origin)
    if topic is Topic.NODES:
        _nodes(top, frame, rw)
    elif top.kind not in (ord("*"), ord("~")) or top.children is None:
        return frame
    elif topic is Topic.SLOTS:
        _slots(top, rw)
    elif topic is Topic.SHARDS:
        _shards(top, rw, prefer_tls)
    else:
        _replicas(top, rw)
    return rw.result(frame)
