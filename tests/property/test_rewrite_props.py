"""Property tests for pinned-mode rewriting and the streaming scanners (tunnel/)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.resp import encode_command, encode_value
from client.values import (
    Attributed,
    BigNumber,
    Double,
    RespMap,
    RespSet,
    RespValue,
    SimpleString,
    Verbatim,
)
from tunnel.rewrite import AddressBook, Endpoint, Missing, Topic, rewrite_redirect, rewrite_reply
from tunnel.tracking import (
    NOTED,
    Captured,
    Command,
    ReplyScanner,
    ReplyTracker,
    RequestScanner,
    render,
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The upstream nodes: IPs, a hostname and an IPv6 address, all on a few ports. Each gets its
# own listener on 127.0.0.1.
UPSTREAM = [
    (host, port)
    for host in ("10.0.0.1", "10.0.0.2", "node-3.cache.example.com", "fe80::4")
    for port in (6379, 6380)
]
LOCAL = {addr: Endpoint("127.0.0.1", 7000 + i) for i, addr in enumerate(UPSTREAM)}
ORIGIN = "10.0.0.1"


def node_id(index: int) -> bytes:
    return b"%040x" % (index * 0x1234567 + 1)


def make_book() -> AddressBook:
    book = AddressBook()
    for i, (addr, local) in enumerate(LOCAL.items()):
        book.add(addr[0], addr[1], local, node_id(i).decode())
    return book


nodes = st.integers(min_value=0, max_value=len(UPSTREAM) - 1)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


# -- a model of CLUSTER SLOTS / SHARDS / NODES, encoded with upstream or local addresses --------


@dataclass(frozen=True)
class SlotsModel:
    ranges: tuple[tuple[int, int, tuple[int, ...]], ...]  # start, end, node indexes
    meta: bool
    resp3: bool

    def encode(self, local: bool) -> bytes:
        out: list[RespValue] = []
        for start, end, members in self.ranges:
            entry: list[RespValue] = [start, end]
            for idx in members:
                host, port = UPSTREAM[idx]
                if local:
                    host, port = LOCAL[UPSTREAM[idx]].host, LOCAL[UPSTREAM[idx]].port
                node: list[RespValue] = [host.encode(), port, node_id(idx)]
                if self.meta:
                    pairs = [(b"hostname", host.encode())]
                    node.append(RespMap(pairs) if self.resp3 else [b"hostname", host.encode()])
                entry.append(node)
            out.append(entry)
        return encode_value(out, resp3=self.resp3)


slots_models = st.builds(
    SlotsModel,
    st.lists(
        st.tuples(
            st.integers(0, 16383), st.integers(0, 16383), st.lists(nodes, min_size=1, max_size=3)
        ).map(lambda t: (t[0], t[1], tuple(t[2]))),
        max_size=5,
    ).map(tuple),
    st.booleans(),
    st.booleans(),
)


@dataclass(frozen=True)
class ShardsModel:
    shards: tuple[tuple[int, ...], ...]
    resp3: bool
    offset: int

    def encode(self, local: bool) -> bytes:
        out: list[RespValue] = []
        for members in self.shards:
            node_values: list[RespValue] = []
            for idx in members:
                host, port = UPSTREAM[idx]
                if local:
                    host, port = LOCAL[UPSTREAM[idx]].host, LOCAL[UPSTREAM[idx]].port
                pairs: list[tuple[RespValue, RespValue]] = [
                    (b"id", node_id(idx)),
                    (b"tls-port", port),
                    (b"ip", host.encode()),
                    (b"endpoint", host.encode()),
                    (b"role", b"master"),
                    (b"replication-offset", self.offset),
                    (b"health", b"online"),
                ]
                node_values.append(RespMap(pairs))
            shard = RespMap([(b"slots", [0, 16383]), (b"nodes", node_values)])
            out.append(shard)
        return encode_value(out, resp3=self.resp3)


shards_models = st.builds(
    ShardsModel,
    st.lists(st.lists(nodes, min_size=1, max_size=3).map(tuple), max_size=4).map(tuple),
    st.booleans(),
    st.integers(0, 10**9),
)


@dataclass(frozen=True)
class NodesModel:
    lines: tuple[tuple[int, int, str], ...]  # node, bus port, flags
    verbatim: bool

    def text(self, local: bool) -> bytes:
        rows = []
        for idx, bus, flags in self.lines:
            host, port = UPSTREAM[idx]
            if local:
                host, port = LOCAL[UPSTREAM[idx]].host, LOCAL[UPSTREAM[idx]].port
            rows.append(
                b"%s %s:%d@%d %s - 0 1700000000000 1 connected 0-100"
                % (node_id(idx), host.encode(), port, bus, flags.encode())
            )
        return b"\n".join(rows) + b"\n"

    def encode(self, local: bool) -> bytes:
        text = self.text(local)
        if self.verbatim:
            return encode_value(Verbatim(b"txt", text))
        return encode_value(text)


nodes_models = st.builds(
    NodesModel,
    st.lists(
        st.tuples(nodes, st.integers(1, 65535), st.sampled_from(["master", "myself,slave"])),
        max_size=6,
    ).map(tuple),
    st.booleans(),
)


@SETTINGS
@given(slots_models)
def test_slots_rewrite_changes_only_addresses(model: SlotsModel) -> None:
    assert rewrite_reply(Topic.SLOTS, model.encode(False), make_book(), ORIGIN) == model.encode(
        True
    )


@SETTINGS
@given(shards_models)
def test_shards_rewrite_changes_only_addresses(model: ShardsModel) -> None:
    assert rewrite_reply(Topic.SHARDS, model.encode(False), make_book(), ORIGIN) == model.encode(
        True
    )


@SETTINGS
@given(nodes_models)
def test_nodes_rewrite_changes_only_addresses(model: NodesModel) -> None:
    assert rewrite_reply(Topic.NODES, model.encode(False), make_book(), ORIGIN) == model.encode(
        True
    )


@SETTINGS
@given(st.sampled_from([slots_models, shards_models, nodes_models]).flatmap(lambda s: s))
def test_rewriting_twice_is_rewriting_once(model: SlotsModel | ShardsModel | NodesModel) -> None:
    # A book that also knows the listeners themselves (as a tunnel chained behind another
    # would): the second pass finds only local addresses and must change nothing.
    book = make_book()
    for local in LOCAL.values():
        book.add(local.host, local.port, local)
    topic = {SlotsModel: Topic.SLOTS, ShardsModel: Topic.SHARDS, NodesModel: Topic.NODES}[
        type(model)
    ]
    once = rewrite_reply(topic, model.encode(False), book, ORIGIN)
    assert isinstance(once, bytes)
    assert rewrite_reply(topic, once, book, ORIGIN) == once


@SETTINGS
@given(st.integers(0, 16383), nodes, st.sampled_from([b"MOVED", b"ASK"]))
def test_redirects(slot: int, idx: int, kind: bytes) -> None:
    host, port = UPSTREAM[idx]
    local = LOCAL[(host, port)]
    frame = b"-%s %d %s:%d\r\n" % (kind, slot, host.encode(), port)
    assert rewrite_redirect(frame, make_book(), ORIGIN) == b"-%s %d %s:%d\r\n" % (
        kind,
        slot,
        local.host.encode(),
        local.port,
    )
    unknown = b"-%s %d 192.0.2.1:%d\r\n" % (kind, slot, port)
    assert isinstance(rewrite_redirect(unknown, make_book(), ORIGIN), Missing)


# -- user values --------------------------------------------------------------------------------

# Strings that look like addresses or like topology replies: the classic false positives.
lookalikes = st.one_of(
    st.sampled_from(
        [
            b"10.0.0.1:6379",
            b"10.0.0.1",
            b"node-3.cache.example.com",
            b"fe80::4:6380",
            NodesModel(((0, 16379, "master"),), False).text(False),
            SlotsModel(((0, 1, (0,)),), False, False).encode(False),
            b"MOVED 1 10.0.0.1:6379",
        ]
    ),
    st.builds(
        lambda h, p: b"%s:%d" % (h.encode(), p),
        st.sampled_from([a[0] for a in UPSTREAM]),
        st.sampled_from([6379, 6380]),
    ),
)
scalars: st.SearchStrategy[RespValue] = st.one_of(
    lookalikes,
    st.binary(max_size=40),
    lookalikes.filter(lambda b: b"\r" not in b and b"\n" not in b).map(SimpleString),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    st.booleans(),
    st.floats().map(Double.from_float),
    st.integers(min_value=-(10**30), max_value=10**30).map(BigNumber),
    lookalikes.map(lambda b: Verbatim(b"txt", b)),
)


def _aggregates(children: st.SearchStrategy[RespValue]) -> st.SearchStrategy[RespValue]:
    pairs = st.lists(st.tuples(children, children), max_size=3).map(RespMap)
    return st.one_of(
        st.lists(children, max_size=4),
        pairs,
        st.lists(children, max_size=4).map(RespSet),
        st.builds(Attributed, pairs, children),
    )


# What a GET, HGETALL, LRANGE... may return: any value but a push or a top-level error.
user_values = st.recursive(scalars, _aggregates, max_leaves=12)


@dataclass(frozen=True)
class Step:
    request: bytes
    reply: bytes
    expected: bytes


def user_step(value: RespValue, resp3: bool) -> Step:
    frame = encode_value(value, resp3=resp3)
    return Step(encode_command("GET", "k"), frame, frame)


def slots_step(model: SlotsModel) -> Step:
    return Step(encode_command("CLUSTER", "SLOTS"), model.encode(False), model.encode(True))


def moved_step(slot: int, idx: int) -> Step:
    host, port = UPSTREAM[idx]
    local = LOCAL[(host, port)]
    return Step(
        encode_command("SET", "k", "v"),
        b"-MOVED %d %s:%d\r\n" % (slot, host.encode(), port),
        b"-MOVED %d %s:%d\r\n" % (slot, local.host.encode(), local.port),
    )


def steps(resp3: bool) -> st.SearchStrategy[list[Step]]:
    one = st.one_of(
        user_values.map(lambda v: user_step(v, resp3)),
        slots_models.map(slots_step),
        st.builds(moved_step, st.integers(0, 16383), nodes),
    )
    return st.lists(one, max_size=8)


def relay(requests: bytes, replies: bytes, cuts: list[int]) -> bytes:
    tracker = ReplyTracker()
    for item in RequestScanner(track=True).feed(requests):
        if isinstance(item, Command):
            tracker.on_request(item)
        elif type(item) is int:
            tracker.push_plain(item)
    scanner = ReplyScanner(tracker)
    book = make_book()
    out = b""
    for piece in chunked(replies, cuts):
        for reply in scanner.feed(piece):
            if isinstance(reply, Captured):
                result = render(reply, book, ORIGIN)
                assert isinstance(result, bytes)
                out += result
            else:
                out += reply
    assert tracker.pending == 0
    assert scanner.buffered == 0
    return out


@SETTINGS
@given(st.booleans().flatmap(lambda r3: st.tuples(st.just(r3), steps(r3))), st.lists(st.integers()))
def test_pipelines_rewrite_topology_and_never_user_values(
    case: tuple[bool, list[Step]], cuts: list[int]
) -> None:
    resp3, plan = case
    hello = Step(encode_command("HELLO", "3"), b"%1\r\n+proto\r\n:3\r\n", b"%1\r\n+proto\r\n:3\r\n")
    plan = ([hello] if resp3 else []) + plan
    requests = b"".join(s.request for s in plan)
    replies = b"".join(s.reply for s in plan)
    assert relay(requests, replies, cuts) == b"".join(s.expected for s in plan)


# -- the request scanner ------------------------------------------------------------------------

names = st.sampled_from(
    ["GET", "set", "CLUSTER", "client", "subscribe", "MULTI", "exec", "hello", "x" * 80]
)
commands = st.tuples(names, st.lists(st.binary(max_size=300), max_size=5))
inline_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789:", min_size=1, max_size=10)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            commands.map(lambda c: (c[0], len(c[1]) + 1, encode_command(c[0], *c[1]))),
            st.lists(inline_words, min_size=1, max_size=4).map(
                lambda w: (w[0], len(w), " ".join(w).encode() + b"\r\n")
            ),
        ),
        max_size=12,
    ),
    st.lists(st.integers()),
)
def test_request_scanning_is_chunking_invariant(
    frames: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    data = b"".join(f for _, _, f in frames)
    scanner = RequestScanner(track=True)
    raw = b""
    seen: list[tuple[bytes, int] | None] = []
    for piece in chunked(data, cuts):
        for item in scanner.feed(piece):
            if isinstance(item, bytes):
                raw += item
            elif type(item) is int:
                seen += [None] * item  # ordinary commands are only counted
            else:
                assert isinstance(item, Command)
                seen.append((item.name, item.argc))
    assert raw == data
    expected = [
        (name.upper().encode(), argc) if name.upper().encode() in NOTED else None
        for name, argc, _ in frames
    ]
    assert seen == expected
    assert scanner.buffered == 0
