"""Smart-mode routing decisions (tunnel.route), table-driven."""

from __future__ import annotations

import pytest

from client.commands import CommandTable
from client.resp import encode_command
from client.slots import key_slot
from tunnel.route import (
    ANY_SLOT,
    Agg,
    Blocking,
    FanOut,
    Local,
    LocalKind,
    Plan,
    PubSub,
    Reject,
    Router,
    Scan,
    Single,
    Split,
    SplitKind,
    Txn,
    Wait,
    crossslot_message,
    split_replies,
    split_requests,
)


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(CommandTable.bundled())


def route(router: Router, line: str) -> Plan:
    return router.route([w.encode() for w in line.split()])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET a", Single(key_slot(b"a"), True, False)),
        ("get a", Single(key_slot(b"a"), True, False)),
        ("SET a 1", Single(key_slot(b"a"), False, True)),
        ("SET {tag}x 1 EX 5", Single(key_slot(b"tag"), False, True)),
        ("HSET h f v f2 v2", Single(key_slot(b"h"), False, True)),
        ("MGET {t}a {t}b", Single(key_slot(b"t"), True, False)),
        ("DEL {t}a {t}b", Single(key_slot(b"t"), False, True)),
        ("EVAL s 0", Single(ANY_SLOT, False, False)),
        ("EVAL s 2 {t}a {t}b x", Single(key_slot(b"t"), False, False)),
        ("PUBLISH ch m", Single(0, False, False)),
        ("SPUBLISH ch m", Single(key_slot(b"ch"), False, False)),
        ("TIME", Single(ANY_SLOT, False, False)),
        ("CONFIG GET maxmemory", Single(ANY_SLOT, False, False)),
        ("COMMAND COUNT", Single(ANY_SLOT, False, False)),
        ("XREAD COUNT 1 STREAMS s 0", Single(key_slot(b"s"), True, False)),
        # a key named "block" after STREAMS does not make XREAD blocking
        ("XREAD STREAMS block 0", Single(key_slot(b"block"), True, False)),
        ("CLUSTER COUNTKEYSINSLOT 42", Single(42, True, False)),
        ("ZUNIONSTORE {t}d 2 {t}a {t}b", Single(key_slot(b"t"), False, True)),
    ],
)
def test_single_node(router: Router, line: str, expected: Plan) -> None:
    assert route(router, line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("DBSIZE", FanOut(Agg.SUM, True)),
        ("KEYS *", FanOut(Agg.CONCAT, True)),
        ("FLUSHALL", FanOut(Agg.ALL_OK, False)),
        ("FLUSHDB ASYNC", FanOut(Agg.ALL_OK, False)),
        ("SCRIPT LOAD return", FanOut(Agg.ALL_OK, False)),
        ("SCRIPT FLUSH", FanOut(Agg.ALL_OK, False)),
        ("SCRIPT EXISTS a b", FanOut(Agg.AND, False)),
        ("SCRIPT KILL", FanOut(Agg.ONE_OK, False)),
        ("FUNCTION LOAD code", FanOut(Agg.ALL_OK, False)),
        ("RANDOMKEY", FanOut(Agg.RANDOM, True)),
        ("INFO", FanOut(Agg.INFO, False)),
        ("INFO keyspace clients", FanOut(Agg.INFO, False)),
        ("PUBSUB CHANNELS", FanOut(Agg.UNION, False)),
        ("PUBSUB NUMSUB a b", FanOut(Agg.PAIRS_SUM, False)),
        ("PUBSUB NUMPAT", FanOut(Agg.SUM, False)),
        ("CONFIG SET maxmemory 0", FanOut(Agg.ALL_OK, False)),
        ("SLOWLOG LEN", FanOut(Agg.SUM, False)),
    ],
)
def test_fan_out_follows_tips(router: Router, line: str, expected: Plan) -> None:
    assert route(router, line) == expected


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("PING", LocalKind.PING),
        ("PING hello", LocalKind.PING),
        ("ECHO x", LocalKind.ECHO),
        ("SELECT 0", LocalKind.SELECT),
        ("QUIT", LocalKind.QUIT),
        ("RESET", LocalKind.RESET),
        ("AUTH pw", LocalKind.AUTH),
        ("AUTH user pw", LocalKind.AUTH),
        ("HELLO", LocalKind.HELLO),
        ("HELLO 3 AUTH default pw SETNAME n", LocalKind.HELLO),
        ("READONLY", LocalKind.OK),
        ("ASKING", LocalKind.OK),
        ("CLIENT ID", LocalKind.CLIENT_ID),
        ("client setname x", LocalKind.CLIENT_SETNAME),
        ("CLIENT GETNAME", LocalKind.CLIENT_GETNAME),
        ("CLIENT INFO", LocalKind.CLIENT_INFO),
        ("CLIENT LIST", LocalKind.CLIENT_LIST),
        ("CLIENT SETINFO LIB-NAME redis-py", LocalKind.CLIENT_SETINFO),
        ("CLIENT REPLY OFF", LocalKind.CLIENT_REPLY),
        ("CLUSTER SLOTS", LocalKind.CLUSTER_SLOTS),
        ("cluster shards", LocalKind.CLUSTER_SHARDS),
        ("CLUSTER NODES", LocalKind.CLUSTER_NODES),
        ("CLUSTER INFO", LocalKind.CLUSTER_INFO),
        ("CLUSTER MYID", LocalKind.CLUSTER_MYID),
        ("CLUSTER KEYSLOT k", LocalKind.CLUSTER_KEYSLOT),
        ("CLUSTER REPLICAS abc", LocalKind.CLUSTER_REPLICAS),
    ],
)
def test_local(router: Router, line: str, kind: LocalKind) -> None:
    assert route(router, line) == Local(kind)


def test_mget_splits_by_slot_and_keeps_positions(router: Router) -> None:
    plan = route(router, "MGET a b {a}c d")
    assert isinstance(plan, Split)
    assert plan.kind is SplitKind.ORDERED
    assert plan.size == 4
    by_slot = {p.slot: p for p in plan.parts}
    assert by_slot[key_slot(b"a")].args == (b"MGET", b"a", b"{a}c")
    assert by_slot[key_slot(b"a")].positions == (0, 2)
    assert by_slot[key_slot(b"b")].positions == (1,)
    assert sorted(i for p in plan.parts for i in p.positions) == [0, 1, 2, 3]


def test_mset_split_keeps_values_with_keys(router: Router) -> None:
    plan = route(router, "MSET a 1 b 2 {a}x 3")
    assert isinstance(plan, Split)
    assert plan.kind is SplitKind.OK
    by_slot = {p.slot: p.args for p in plan.parts}
    assert by_slot[key_slot(b"a")] == (b"MSET", b"a", b"1", b"{a}x", b"3")
    assert by_slot[key_slot(b"b")] == (b"MSET", b"b", b"2")


@pytest.mark.parametrize("name", ["DEL", "UNLINK", "EXISTS", "TOUCH"])
def test_counting_commands_split_and_sum(router: Router, name: str) -> None:
    plan = route(router, f"{name} a b a")
    assert isinstance(plan, Split)
    assert plan.kind is SplitKind.SUM
    # duplicates stay (EXISTS a a counts 2 on a standalone server)
    assert sum(len(p.args) - 1 for p in plan.parts) == 3


@pytest.mark.parametrize(
    "line",
    [
        "MSETNX a 1 b 2",
        "RENAME a b",
        "SMOVE a b m",
        "LMOVE a b LEFT RIGHT",
        "SUNIONSTORE d a b",
        "BLPOP a b 0",
        "EVAL s 2 a b",
        "WATCH a b",
    ],
)
def test_atomic_multi_key_across_slots_is_crossslot(router: Router, line: str) -> None:
    plan = route(router, line)
    assert isinstance(plan, Reject)
    text = plan.message.decode()
    assert text.startswith("CROSSSLOT Keys in request don't hash to the same slot")
    assert f"'a' is in slot {key_slot(b'a')}" in text
    assert "hash tag" in text
    assert plan.frame.endswith(b"\r\n")
    assert b"\n" not in plan.frame[:-1]


def test_crossslot_message_is_bounded() -> None:
    keys = [b"k%d" % i for i in range(100)] + [b"x" * 10_000]
    text = crossslot_message(b"sunionstore", keys)
    assert len(text) < 600
    assert b"and 97 more" in text
    assert b"SUNIONSTORE" in text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("BLPOP a 0", Blocking(key_slot(b"a"), False)),
        ("BRPOP {t}a {t}b 1.5", Blocking(key_slot(b"t"), False)),
        ("BLMOVE a {a}b LEFT LEFT 0", Blocking(key_slot(b"a"), False)),
        ("BZPOPMIN z 0", Blocking(key_slot(b"z"), False)),
        ("BLMPOP 0 2 {t}a {t}b LEFT", Blocking(key_slot(b"t"), False)),
        ("XREAD BLOCK 0 STREAMS s $", Blocking(key_slot(b"s"), True)),
        ("XREADGROUP GROUP g c BLOCK 10 STREAMS s >", Blocking(key_slot(b"s"), False)),
        ("WAIT 1 100", Wait()),
    ],
)
def test_blocking(router: Router, line: str, expected: Plan) -> None:
    assert route(router, line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("MULTI", Txn("multi", ANY_SLOT)),
        ("EXEC", Txn("exec", ANY_SLOT)),
        ("DISCARD", Txn("discard", ANY_SLOT)),
        ("UNWATCH", Txn("unwatch", ANY_SLOT)),
        ("WATCH {u}a {u}b", Txn("watch", key_slot(b"u"))),
        ("SUBSCRIBE a b", PubSub("subscribe", (b"a", b"b"), ANY_SLOT)),
        ("PSUBSCRIBE n*", PubSub("psubscribe", (b"n*",), ANY_SLOT)),
        ("UNSUBSCRIBE", PubSub("unsubscribe", (), ANY_SLOT)),
        ("SSUBSCRIBE {s}a {s}b", PubSub("ssubscribe", (b"{s}a", b"{s}b"), key_slot(b"s"))),
        ("SUNSUBSCRIBE", PubSub("sunsubscribe", (), ANY_SLOT)),
        ("SCAN 0", Scan(0, ())),
        ("SCAN 123 MATCH k* COUNT 10", Scan(123, (b"MATCH", b"k*", b"COUNT", b"10"))),
    ],
)
def test_session_state_commands(router: Router, line: str, expected: Plan) -> None:
    assert route(router, line) == expected


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("FOO bar", "ERR unknown command 'FOO'"),
        ("CONFIG NOPE", "ERR unknown subcommand 'NOPE'"),
        ("GET", "ERR wrong number of arguments for 'get' command"),
        ("ECHO", "ERR wrong number of arguments for 'echo' command"),
        ("DBSIZE x", "ERR wrong number of arguments for 'dbsize' command"),
        ("CLIENT", "ERR wrong number of arguments for 'client' command"),
        ("MULTI x", "ERR wrong number of arguments for 'multi' command"),
        ("SUBSCRIBE", "ERR wrong number of arguments for 'subscribe' command"),
        ("SCAN abc", "ERR invalid cursor"),
        ("SCAN -1", "ERR invalid cursor"),
        ("SCAN 18446744073709551616", "ERR invalid cursor"),
        ("CLUSTER COUNTKEYSINSLOT 16384", "ERR Invalid slot"),
        ("MONITOR", "not supported through the smart tunnel"),
        ("CLIENT TRACKING on", "not supported through the smart tunnel"),
        ("CLIENT KILL ID 5", "not supported through the smart tunnel"),
        ("CLUSTER SETSLOT 1 STABLE", "not supported through the smart tunnel"),
        ("CLUSTER FAILOVER", "not supported through the smart tunnel"),
        ("SHUTDOWN", "not supported through the smart tunnel"),
    ],
)
def test_rejections_are_clear_errors(router: Router, line: str, needle: str) -> None:
    plan = route(router, line)
    assert isinstance(plan, Reject), plan
    assert needle in plan.message.decode()
    assert plan.message.split(b" ", 1)[0].isupper()


def test_empty_command(router: Router) -> None:
    assert isinstance(router.route([]), Reject)


def test_cache_is_bounded(router: Router) -> None:
    local = Router(CommandTable.bundled())
    for i in range(5000):
        name = "".join(c.upper() if i >> n & 1 else c for n, c in enumerate("getrange"))
        local.route([name.encode(), b"k", b"0", b"1"])
        local.route([b"x%d" % i])
    assert len(local._cache) <= 2048
    assert local.route([b"gEtRaNgE", b"k", b"0", b"1"]) == Single(key_slot(b"k"), True, False)


# --------------------------------------------------------------------------- fast framing


def test_split_requests_spans() -> None:
    frames = [encode_command(b"SET", b"k", b"v"), encode_command(b"GET", b"k"), b"*1\r\n$0\r\n\r\n"]
    data = b"".join(frames)
    commands, used = split_requests(data)
    assert used == len(data)
    assert [c[0] for c in commands] == [[b"SET", b"k", b"v"], [b"GET", b"k"], [b""]]
    assert [data[s:e] for _, s, e in commands] == frames


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b"*2\r\n$3\r\nGET\r\n$1\r\nk", "partial frame"),
        (b"*1\r\n$3\r\nGET", "payload without its CRLF"),
        (b"PING\r\n", "inline command"),
        (b"*2\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n", "bulk holding CRLF"),
        (b"*1\r\n$03\r\nGET\r\n", "leading zero"),
        (b"*01\r\n$3\r\nGET\r\n", "leading zero in the count"),
        (b"*0\r\n", "empty array"),
        (b"*-1\r\n", "null array"),
        (b"*1\r\n$-1\r\n", "null bulk in a request"),
        (b"*1\r\n+OK\r\n", "not a bulk"),
        (b"*+1\r\n$3\r\nGET\r\n", "signed count"),
    ],
)
def test_split_requests_stops_at_what_it_does_not_handle(tail: bytes, reason: str) -> None:
    head = encode_command(b"PING")
    commands, used = split_requests(head + tail)
    assert used == len(head), reason
    assert [c[0] for c in commands] == [[b"PING"]]


def test_split_replies_spans() -> None:
    frames = [b"+OK\r\n", b"$3\r\nxxx\r\n", b"$-1\r\n", b":12\r\n", b"-ERR x\r\n", b"$0\r\n\r\n"]
    frames += [b"_\r\n", b",1.5\r\n", b"#t\r\n", b"(12345678901234567890\r\n"]
    data = b"".join(frames)
    ends, used = split_replies(data + b"*2\r\n$1\r\na\r\n")
    assert used == len(data)
    starts = [0, *ends[:-1]]
    assert [data[s:e] for s, e in zip(starts, ends, strict=True)] == frames


@pytest.mark.parametrize(
    "tail",
    [
        b"$3\r\nxx",
        b"$3\r\nxxx",
        b"$4\r\na\r\nb\r\n",
        b"*1\r\n:1\r\n",
        b">2\r\n",
        b"=5\r\ntxt:x\r\n",
    ],
)
def test_split_replies_stops_at_what_it_does_not_handle(tail: bytes) -> None:
    ends, used = split_replies(b"+OK\r\n" + tail)
    assert (ends, used) == ([5], 5)
