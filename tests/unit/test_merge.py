"""Replies the smart tunnel builds itself (tunnel.merge)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from client.commands import CommandTable
from client.resp import RespParser, encode_value
from client.values import ErrorReply, RespMap, RespSet, RespValue, SimpleString, Verbatim
from tunnel.merge import (
    NOAUTH,
    OK,
    AuthRequest,
    HelloRequest,
    SelfNode,
    check_password,
    client_info_line,
    cluster_info,
    cluster_nodes,
    cluster_shards,
    cluster_slots,
    fake_node_id,
    hello_reply,
    merge_fanout,
    merge_info,
    merge_split,
    parse_auth,
    parse_client_reply,
    parse_hello,
    parse_select,
    parse_setname,
    scan_cursor,
    scan_decode,
    scan_encode,
    scan_reply,
)
from tunnel.route import Agg, Router, Split

NOTBUSY = ErrorReply(b"NOTBUSY x")
ME = SelfNode("127.0.0.1", 6379, fake_node_id("127.0.0.1", 6379), "7.0.15")


def roundtrip(value: RespValue, *, resp3: bool) -> RespValue:
    parser = RespParser()
    parser.feed(encode_value(value, resp3=resp3))
    out = parser.next_value()
    assert parser.buffered == 0
    return out  # type: ignore[return-value]


def split_plan(line: str) -> Split:
    plan = Router(CommandTable.bundled()).route([w.encode() for w in line.split()])
    assert isinstance(plan, Split)
    return plan


# --------------------------------------------------------------------------- split


def test_mget_merge_restores_key_order() -> None:
    plan = split_plan("MGET a b {a}c d")
    values = {b"a": b"1", b"b": None, b"{a}c": b"3", b"d": b"4"}
    results: list[RespValue] = [[values[k] for k in part.args[1:]] for part in plan.parts]
    assert merge_split(plan, results) == [b"1", None, b"3", b"4"]


def test_counting_merge_sums() -> None:
    plan = split_plan("DEL a b c d")
    results: list[RespValue] = [len(part.args) - 1 for part in plan.parts]
    assert merge_split(plan, results) == 4


def test_mset_merge_is_ok_or_first_error() -> None:
    plan = split_plan("MSET a 1 b 2")
    assert merge_split(plan, [OK, OK]) == OK
    oom = ErrorReply(b"OOM command not allowed")
    assert merge_split(plan, [OK, oom]) == oom


def test_split_merge_rejects_a_malformed_part() -> None:
    plan = split_plan("MGET a b")
    bad = merge_split(plan, [[b"x", b"y"], [b"z"]])
    assert isinstance(bad, ErrorReply)
    assert bad.kind == "ERR"


# --------------------------------------------------------------------------- fan-out


@pytest.mark.parametrize(
    ("agg", "results", "expected"),
    [
        (Agg.SUM, [1, 2, 3], 6),
        (Agg.MIN, [4, 2, 3], 2),
        (Agg.MAX, [4, 2, 3], 4),
        (Agg.CONCAT, [[b"a"], [], [b"b", b"c"]], [b"a", b"b", b"c"]),
        (Agg.UNION, [[b"a", b"b"], [b"b", b"c"]], [b"a", b"b", b"c"]),
        (Agg.UNION, [RespSet([b"a"]), RespSet([b"a", b"c"])], RespSet([b"a", b"c"])),
        (Agg.PAIRS_SUM, [[b"a", 1, b"b", 0], [b"a", 2, b"b", 5]], [b"a", 3, b"b", 5]),
        (
            Agg.PAIRS_SUM,
            [RespMap([(b"a", 1)]), RespMap([(b"a", 2)])],
            RespMap([(b"a", 3)]),
        ),
        (Agg.AND, [[1, 1, 0], [1, 0, 0]], [1, 0, 0]),
        (Agg.OR, [[1, 0, 0], [0, 0, 1]], [1, 0, 1]),
        (Agg.AND, [[True, True], [True, False]], [True, False]),
        (Agg.ALL_OK, [OK, OK, OK], OK),
        (Agg.ALL_OK, [b"sha", b"sha"], b"sha"),
        (Agg.ONE_OK, [ErrorReply(b"NOTBUSY"), OK], OK),
        (Agg.ONE_OK, [NOTBUSY, ErrorReply(b"NOTBUSY y")], NOTBUSY),
    ],
)
def test_fanout_aggregations(agg: Agg, results: list[RespValue], expected: RespValue) -> None:
    assert merge_fanout(agg, results) == expected


@pytest.mark.parametrize("agg", [a for a in Agg if a is not Agg.ONE_OK])
def test_fanout_error_wins(agg: Agg) -> None:
    err = ErrorReply(b"LOADING Redis is loading the dataset in memory")
    good: RespValue = 1 if agg in (Agg.SUM, Agg.MIN, Agg.MAX) else [b"x"]
    assert merge_fanout(agg, [good, err, good]) == err


def test_fanout_without_masters_is_an_error() -> None:
    out = merge_fanout(Agg.SUM, [])
    assert isinstance(out, ErrorReply)
    assert out.kind == "CLUSTERDOWN"


def test_randomkey_picks_a_non_nil_reply() -> None:
    rng = random.Random(7)
    picks = {merge_fanout(Agg.RANDOM, [None, b"k1", None, b"k2"], rng=rng) for _ in range(50)}
    assert picks == {b"k1", b"k2"}
    assert merge_fanout(Agg.RANDOM, [None, None]) is None


# --------------------------------------------------------------------------- INFO

INFO_A = (
    "# Server\r\nredis_version:7.0.15\r\ntcp_port:7001\r\n\r\n"
    "# Clients\r\nconnected_clients:3\r\nmaxclients:10000\r\n"
    "client_recent_max_input_buffer:20\r\n\r\n"
    "# Stats\r\ntotal_commands_processed:100\r\ninstantaneous_input_kbps:1.50\r\n\r\n"
    "# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=1000\r\n"
)
INFO_B = (
    "# Server\r\nredis_version:7.0.15\r\ntcp_port:7002\r\n\r\n"
    "# Clients\r\nconnected_clients:4\r\nmaxclients:10000\r\n"
    "client_recent_max_input_buffer:8\r\n\r\n"
    "# Stats\r\ntotal_commands_processed:50\r\ninstantaneous_input_kbps:0.25\r\n\r\n"
    "# Keyspace\r\ndb0:keys=5,expires=2,avg_ttl=3000\r\n"
)


def info_fields(value: RespValue) -> dict[str, str]:
    text = value.text if isinstance(value, Verbatim) else value
    assert isinstance(text, bytes)
    out = {}
    for line in text.decode().split("\r\n"):
        if line and not line.startswith("#"):
            key, _, val = line.partition(":")
            out[key] = val
    return out


def test_info_sums_keyspace_clients_and_stats() -> None:
    merged = merge_info([INFO_A.encode(), INFO_B.encode()])
    fields = info_fields(merged)
    assert fields["db0"] == "keys=15,expires=4,avg_ttl=2000"
    assert fields["connected_clients"] == "7"
    assert fields["total_commands_processed"] == "150"
    assert fields["instantaneous_input_kbps"] == "1.75"
    assert fields["client_recent_max_input_buffer"] == "20"  # a maximum, not a sum
    assert fields["tcp_port"] == "7001"  # per-process sections come from the first master
    assert fields["maxclients"] == "10000"  # "max" in the name: a maximum


def test_info_keeps_the_reply_type_and_sections() -> None:
    merged = merge_info([Verbatim(b"txt", INFO_A.encode()), Verbatim(b"txt", INFO_B.encode())])
    assert isinstance(merged, Verbatim)
    assert merged.text.count(b"# ") == 4
    assert merged.text.endswith(b"\r\n")


def test_info_keyspace_only_on_some_nodes() -> None:
    empty = "# Keyspace\r\n"
    merged = merge_info([empty.encode(), b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n"])
    assert info_fields(merged) == {"db0": "keys=3,expires=0,avg_ttl=0"}


def test_info_error_and_garbage() -> None:
    err = ErrorReply(b"LOADING x")
    assert merge_info([INFO_A.encode(), err]) == err
    assert isinstance(merge_info([INFO_A.encode(), 5]), ErrorReply)


# --------------------------------------------------------------------------- SCAN


def test_scan_cursor_roundtrip() -> None:
    assert scan_decode(0) == (0, 0)
    assert scan_decode(scan_encode(5461, 12345)) == (5461, 12345)


def test_scan_walks_masters_in_slot_order() -> None:
    starts = [0, 5461, 10923]
    assert scan_cursor(starts, 0, 7) == scan_encode(0, 7)
    assert scan_cursor(starts, 0, 0) == scan_encode(5461, 0)
    assert scan_cursor(starts, 5461, 0) == scan_encode(10923, 0)
    assert scan_cursor(starts, 10923, 0) == 0
    assert scan_cursor(starts, 5461, 1) != 0


def test_scan_reply_rewrites_only_the_cursor() -> None:
    out = scan_reply([b"0", [b"k1", b"k2"]], [0, 100], 0)
    assert out == [b"%d" % scan_encode(100, 0), [b"k1", b"k2"]]
    assert isinstance(scan_reply([b"x", []], [0], 0), ErrorReply)
    err = ErrorReply(b"ERR nope")
    assert scan_reply(err, [0], 0) == err


# --------------------------------------------------------------------------- one-node cluster


@pytest.mark.parametrize("resp3", [False, True])
def test_cluster_slots_shape(resp3: bool) -> None:
    value: Any = roundtrip(cluster_slots(ME), resp3=resp3)
    ((start, end, node),) = value
    assert (start, end) == (0, 16383)
    assert node[:3] == [b"127.0.0.1", 6379, ME.node_id.encode()]


def as_fields(value: Any) -> dict[Any, Any]:
    if isinstance(value, RespMap):
        return dict(value)
    assert isinstance(value, list)
    return dict(zip(value[0::2], value[1::2], strict=True))


@pytest.mark.parametrize("resp3", [False, True])
def test_cluster_shards_shape(resp3: bool) -> None:
    value: Any = roundtrip(cluster_shards(ME), resp3=resp3)
    (shard,) = value
    fields = as_fields(shard)
    assert fields[b"slots"] == [0, 16383]
    (node,) = fields[b"nodes"]
    node_fields = as_fields(node)
    assert node_fields[b"ip"] == b"127.0.0.1"
    assert node_fields[b"port"] == 6379
    assert node_fields[b"role"] == b"master"


def test_cluster_nodes_and_info_text() -> None:
    nodes = cluster_nodes(ME)
    assert isinstance(nodes, Verbatim)
    parts = nodes.text.decode().split()
    assert parts[0] == ME.node_id
    assert parts[1].startswith("127.0.0.1:6379@")
    assert set(parts[2].split(",")) == {"myself", "master"}
    assert parts[-1] == "0-16383"
    assert roundtrip(nodes, resp3=False) == nodes.text
    ok = cluster_info(healthy=True)
    assert isinstance(ok, Verbatim)
    assert b"cluster_state:ok\r\n" in ok.text
    assert b"cluster_known_nodes:1\r\n" in ok.text
    bad = cluster_info(healthy=False)
    assert isinstance(bad, Verbatim)
    assert b"cluster_state:fail" in bad.text


def test_fake_node_id() -> None:
    node_id = fake_node_id("127.0.0.1", 6379)
    assert len(node_id) == 40
    assert int(node_id, 16) >= 0
    assert node_id != fake_node_id("127.0.0.1", 6380)


# --------------------------------------------------------------------------- per client


def test_hello_parsing() -> None:
    assert parse_hello([b"HELLO"]) == HelloRequest(None, None, None)
    assert parse_hello([b"HELLO", b"3"]) == HelloRequest(3, None, None)
    assert parse_hello([b"HELLO", b"2", b"auth", b"u", b"p", b"SETNAME", b"n"]) == HelloRequest(
        2, AuthRequest(b"u", b"p"), b"n"
    )
    for args, kind in [
        ([b"HELLO", b"4"], "NOPROTO"),
        ([b"HELLO", b"x"], "ERR"),
        ([b"HELLO", b"3", b"AUTH", b"u"], "ERR"),
        ([b"HELLO", b"3", b"SETNAME", b"a b"], "ERR"),
    ]:
        out = parse_hello(args)
        assert isinstance(out, ErrorReply)
        assert out.kind == kind


@pytest.mark.parametrize("resp3", [False, True])
def test_hello_reply(resp3: bool) -> None:
    value = roundtrip(hello_reply(ME, protocol=3 if resp3 else 2, client_id=9), resp3=resp3)
    if resp3:
        assert isinstance(value, RespMap)
        fields = dict(value)
    else:
        assert isinstance(value, list)
        fields = dict(zip(value[0::2], value[1::2], strict=True))  # type: ignore[arg-type]
    assert fields[b"server"] == b"redis"
    assert fields[b"version"] == b"7.0.15"
    assert fields[b"proto"] == (3 if resp3 else 2)
    assert fields[b"id"] == 9
    assert fields[b"role"] == b"master"


def test_auth() -> None:
    assert parse_auth([b"AUTH", b"pw"]) == AuthRequest(None, b"pw")
    assert parse_auth([b"AUTH", b"u", b"pw"]) == AuthRequest(b"u", b"pw")
    assert isinstance(parse_auth([b"AUTH", b"a", b"b", b"c"]), ErrorReply)
    assert check_password(AuthRequest(None, b"anything"), None)
    assert check_password(AuthRequest(None, b"s3"), "s3")
    assert check_password(AuthRequest(b"default", b"s3"), "s3")
    assert not check_password(AuthRequest(None, b"no"), "s3")
    assert not check_password(AuthRequest(b"bob", b"s3"), "s3")
    assert NOAUTH.kind == "NOAUTH"


def test_select_setname_reply() -> None:
    assert parse_select([b"SELECT", b"0"]) is None
    out = parse_select([b"SELECT", b"1"])
    assert isinstance(out, ErrorReply)
    assert out.text.startswith("ERR DB index is out of range")
    assert isinstance(parse_select([b"SELECT", b"x"]), ErrorReply)
    assert parse_setname(b"worker-1") == b"worker-1"
    assert parse_setname(b"") == b""
    assert isinstance(parse_setname(b"a b"), ErrorReply)
    assert parse_client_reply([b"CLIENT", b"REPLY", b"off"]) == "off"
    assert isinstance(parse_client_reply([b"CLIENT", b"REPLY", b"maybe"]), ErrorReply)


def test_client_info_line() -> None:
    line = client_info_line(
        client_id=4,
        addr="127.0.0.1:5000",
        laddr="127.0.0.1:6379",
        name=b"w1",
        protocol=3,
        age=2,
        multi=-1,
        sub=1,
        psub=0,
        ssub=0,
    )
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    fields = dict(f.split(b"=", 1) for f in line.split())
    assert fields[b"id"] == b"4"
    assert fields[b"name"] == b"w1"
    assert fields[b"resp"] == b"3"
    assert fields[b"sub"] == b"1"
    assert isinstance(SimpleString(b"OK"), bytes)
