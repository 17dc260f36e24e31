"""tunnel.rewrite: address rewriting of MOVED/ASK and CLUSTER replies, byte-exact elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tunnel.rewrite import (
    AddressBook,
    Endpoint,
    Missing,
    NodeRef,
    Topic,
    is_suppressed_push,
    rewrite_nodes_text,
    rewrite_redirect,
    rewrite_reply,
)

ID_A = b"3d0e4d2e0870d6fc0ebb610a6202067a9201800f"
ID_B = b"d6457736b4e6997d86e4155e6c643b045893cec8"


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def book() -> AddressBook:
    b = AddressBook()
    b.add("10.0.0.1", 6380, Endpoint("127.0.0.1", 7001), ID_A.decode())
    b.add("10.0.0.2", 6380, Endpoint("127.0.0.1", 7002), ID_B.decode())
    return b


# -- MOVED / ASK ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"-MOVED 3999 10.0.0.1:6380\r\n", b"-MOVED 3999 127.0.0.1:7001\r\n"),
        (b"-ASK 12 10.0.0.2:6380\r\n", b"-ASK 12 127.0.0.1:7002\r\n"),
        # an empty host means "the node you asked" (cluster-preferred-endpoint-type unknown)
        (b"-MOVED 3999 :6380\r\n", b"-MOVED 3999 127.0.0.1:7001\r\n"),
    ],
)
def test_redirects_are_rewritten(frame: bytes, expected: bytes) -> None:
    assert rewrite_redirect(frame, book(), "10.0.0.1") == expected


def test_empty_host_uses_the_origin_of_this_connection() -> None:
    assert rewrite_redirect(b"-MOVED 1 :6380\r\n", book(), "10.0.0.2") == (
        b"-MOVED 1 127.0.0.1:7002\r\n"
    )


def test_hostnames_compare_case_insensitively() -> None:
    b = AddressBook()
    b.add("Node-1.Example.COM", 6379, Endpoint("127.0.0.1", 7001))
    assert rewrite_redirect(b"-MOVED 5 node-1.example.com:6379\r\n", b, "x") == (
        b"-MOVED 5 127.0.0.1:7001\r\n"
    )


def test_unknown_target_is_missing() -> None:
    result = rewrite_redirect(b"-MOVED 3999 10.9.9.9:6390\r\n", book(), "10.0.0.1")
    assert result == Missing((NodeRef("10.9.9.9", 6390),))


def test_ipv6_redirect_and_listener() -> None:
    b = AddressBook()
    b.add("fe80::1", 6379, Endpoint("::1", 7001))
    assert rewrite_redirect(b"-MOVED 7 fe80::1:6379\r\n", b, "x") == b"-MOVED 7 ::1:7001\r\n"


@pytest.mark.parametrize(
    "frame",
    [
        b"-ERR unknown command\r\n",
        b"-MOVED\r\n",
        b"-MOVED 3999\r\n",
        b"-MOVED abc 10.0.0.1:6380\r\n",
        b"-MOVED 3999 10.0.0.1\r\n",
        b"-MOVED 3999 10.0.0.1:63x\r\n",
        b"-MOVED 1 10.0.0.1:6380 extra\r\n",
        b"-ASKING 1 10.0.0.1:6380\r\n",
        b"-MOVED 3999 10.0.0.1:6380",
    ],
)
def test_non_redirects_are_left_alone(frame: bytes) -> None:
    assert rewrite_redirect(frame, book(), "10.0.0.1") is None


# -- CLUSTER SLOTS ----------------------------------------------------------------------------


def slots_node(host: bytes | None, port: int, node_id: bytes, meta: bytes = b"*0\r\n") -> bytes:
    first = bulk(host) if host is not None else b"$-1\r\n"
    return b"*4\r\n" + first + b":%d\r\n" % port + bulk(node_id) + meta


def test_slots_resp2_real_shape() -> None:
    frame = (
        b"*1\r\n*4\r\n:0\r\n:5460\r\n"
        + slots_node(b"10.0.0.1", 6380, ID_A)
        + slots_node(b"10.0.0.2", 6380, ID_B)
    )
    expected = (
        b"*1\r\n*4\r\n:0\r\n:5460\r\n"
        + slots_node(b"127.0.0.1", 7001, ID_A)
        + slots_node(b"127.0.0.1", 7002, ID_B)
    )
    assert rewrite_reply(Topic.SLOTS, frame, book(), "10.0.0.1") == expected


def test_slots_metadata_hostname_and_ip_in_resp2_and_resp3() -> None:
    meta2 = (
        b"*4\r\n" + bulk(b"hostname") + bulk(b"node1.example.com") + bulk(b"ip") + bulk(b"10.0.0.1")
    )
    meta3 = (
        b"%2\r\n" + bulk(b"hostname") + bulk(b"node1.example.com") + bulk(b"ip") + bulk(b"10.0.0.1")
    )
    for meta, kind in ((meta2, b"*"), (meta3, b"%")):
        frame = b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"node1.example.com", 6380, ID_A, meta)
        new = rewrite_reply(Topic.SLOTS, frame, book(), "10.0.0.1")
        assert new == (
            b"*1\r\n*3\r\n:0\r\n:16383\r\n"
            + slots_node(
                b"127.0.0.1",
                7001,
                ID_A,
                kind
                + b"%s\r\n" % (b"4" if kind == b"*" else b"2")
                + bulk(b"hostname")
                + bulk(b"127.0.0.1")
                + bulk(b"ip")
                + bulk(b"127.0.0.1"),
            )
        )


def test_slots_null_endpoint_keeps_null_and_rewrites_port() -> None:
    frame = b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(None, 6380, ID_A)
    assert rewrite_reply(Topic.SLOTS, frame, book(), "10.0.0.1") == (
        b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(None, 7001, ID_A)
    )


def test_slots_unknown_endpoint_question_mark_is_looked_up_by_id() -> None:
    frame = b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"?", 6380, ID_B)
    assert rewrite_reply(Topic.SLOTS, frame, book(), "10.0.0.1") == (
        b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"?", 7002, ID_B)
    )


def test_slots_with_an_unknown_node_is_missing_with_its_id() -> None:
    frame = b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"10.0.0.3", 6390, b"c" * 40)
    result = rewrite_reply(Topic.SLOTS, frame, book(), "10.0.0.1")
    assert result == Missing((NodeRef("10.0.0.3", 6390, "c" * 40),))


def test_node_found_by_id_when_its_address_changed() -> None:
    frame = b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"10.0.0.77", 6380, ID_A)
    assert rewrite_reply(Topic.SLOTS, frame, book(), "x") == (
        b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"127.0.0.1", 7001, ID_A)
    )


# -- CLUSTER SHARDS ---------------------------------------------------------------------------


def shard_node(pairs: list[tuple[bytes, bytes | int]], resp3: bool) -> bytes:
    head = b"%%%d\r\n" % len(pairs) if resp3 else b"*%d\r\n" % (2 * len(pairs))
    body = b""
    for key, value in pairs:
        body += bulk(key) + (b":%d\r\n" % value if isinstance(value, int) else bulk(value))
    return head + body


def shards(nodes: list[bytes], resp3: bool) -> bytes:
    head = b"%2\r\n" if resp3 else b"*4\r\n"
    return (
        b"*1\r\n"
        + head
        + bulk(b"slots")
        + b"*2\r\n:0\r\n:16383\r\n"
        + bulk(b"nodes")
        + b"*%d\r\n" % len(nodes)
        + b"".join(nodes)
    )


def node_pairs(
    node_id: bytes, ip: bytes, port: int, role: bytes
) -> list[tuple[bytes, bytes | int]]:
    return [
        (b"id", node_id),
        (b"port", port),
        (b"tls-port", port),
        (b"ip", ip),
        (b"endpoint", ip),
        (b"hostname", b"node.example.com"),
        (b"role", role),
        (b"replication-offset", 70),
        (b"health", b"online"),
    ]


@pytest.mark.parametrize("resp3", [False, True])
def test_shards_rewrite_addresses_and_ports_only(resp3: bool) -> None:
    frame = shards(
        [
            shard_node(node_pairs(ID_A, b"10.0.0.1", 6380, b"master"), resp3),
            shard_node(node_pairs(ID_B, b"10.0.0.2", 6380, b"replica"), resp3),
        ],
        resp3,
    )
    local = [
        [
            (k, b"127.0.0.1" if k in (b"ip", b"endpoint", b"hostname") else v)
            for k, v in node_pairs(i, b"", 0, r)
        ]
        for i, r in ((ID_A, b"master"), (ID_B, b"replica"))
    ]
    for pairs, port in zip(local, (7001, 7002), strict=True):
        for idx, (k, _v) in enumerate(pairs):
            if k in (b"port", b"tls-port"):
                pairs[idx] = (k, port)
    expected = shards([shard_node(p, resp3) for p in local], resp3)
    assert rewrite_reply(Topic.SHARDS, frame, book(), "10.0.0.1") == expected


def test_shards_tls_only_node_real_shape() -> None:
    # A TLS-only cluster reports tls-port and no port (captured from redis 7.0).
    pairs: list[tuple[bytes, bytes | int]] = [
        (b"id", ID_A),
        (b"tls-port", 6380),
        (b"ip", b"10.0.0.1"),
        (b"endpoint", b"10.0.0.1"),
        (b"role", b"master"),
        (b"replication-offset", 56),
        (b"health", b"online"),
    ]
    frame = shards([shard_node(pairs, True)], True)
    new = rewrite_reply(Topic.SHARDS, frame, book(), "x")
    assert isinstance(new, bytes)
    assert new == frame.replace(b":6380\r\n", b":7001\r\n").replace(
        b"$8\r\n10.0.0.1\r\n", b"$9\r\n127.0.0.1\r\n"
    )


def test_shards_plaintext_port_is_used_when_tunnel_dials_plaintext() -> None:
    b = AddressBook()
    b.add("10.0.0.1", 6379, Endpoint("127.0.0.1", 7001))
    pairs: list[tuple[bytes, bytes | int]] = [
        (b"id", ID_A),
        (b"port", 6379),
        (b"tls-port", 6380),
        (b"endpoint", b"10.0.0.1"),
    ]
    frame = shards([shard_node(pairs, False)], False)
    assert isinstance(rewrite_reply(Topic.SHARDS, frame, b, "x", prefer_tls=False), bytes)
    assert isinstance(rewrite_reply(Topic.SHARDS, frame, AddressBook(), "x"), Missing)


# -- CLUSTER NODES / REPLICAS -----------------------------------------------------------------

NODES = (
    ID_A
    + b" 10.0.0.1:6380@16380,node1.example.com master - 0 1795665877114 3 connected 0-5460\n"
    + ID_B
    + b" 10.0.0.2:6380@16380 myself,slave "
    + ID_A
    + b" 0 1795665877000 1 connected\n"
    + b"e" * 40
    + b" :0@0 master,noaddr - 1 2 0 disconnected\n"
)
NODES_LOCAL = (
    ID_A
    + b" 127.0.0.1:7001@16380,127.0.0.1 master - 0 1795665877114 3 connected 0-5460\n"
    + ID_B
    + b" 127.0.0.1:7002@16380 myself,slave "
    + ID_A
    + b" 0 1795665877000 1 connected\n"
    + b"e" * 40
    + b" :0@0 master,noaddr - 1 2 0 disconnected\n"
)


def test_nodes_as_bulk_string() -> None:
    assert rewrite_reply(Topic.NODES, bulk(NODES), book(), "x") == bulk(NODES_LOCAL)


def test_nodes_as_resp3_verbatim_string() -> None:
    frame = b"=%d\r\ntxt:%s\r\n" % (len(NODES) + 4, NODES)
    expected = b"=%d\r\ntxt:%s\r\n" % (len(NODES_LOCAL) + 4, NODES_LOCAL)
    assert rewrite_reply(Topic.NODES, frame, book(), "x") == expected


def test_nodes_line_with_aux_fields_and_empty_ip() -> None:
    text = ID_A + b" :6380@16380,,shard-id=abc myself,master - 0 0 1 connected 0-16383\n"
    assert rewrite_nodes_text(text, book(), "10.0.0.1") == (
        ID_A + b" 127.0.0.1:7001@16380,,shard-id=abc myself,master - 0 0 1 connected 0-16383\n"
    )


def test_nodes_old_format_without_bus_port() -> None:
    text = ID_A + b" 10.0.0.1:6380 master - 0 0 1 connected 0-16383"
    assert rewrite_nodes_text(text, book(), "x") == (
        ID_A + b" 127.0.0.1:7001 master - 0 0 1 connected 0-16383"
    )


def test_nodes_handshake_node_is_left_alone_and_not_missing() -> None:
    text = b"f" * 40 + b" 10.0.0.9:6390@16390 handshake - 0 0 0 connected"
    assert rewrite_nodes_text(text, book(), "x") == text


def test_nodes_unknown_node_is_missing() -> None:
    text = b"f" * 40 + b" 10.0.0.9:6390@16390 master - 0 0 0 connected"
    assert rewrite_nodes_text(text, book(), "x") == Missing((NodeRef("10.0.0.9", 6390, "f" * 40),))


def test_replicas_reply() -> None:
    line = ID_B + b" 10.0.0.2:6380@16380 slave " + ID_A + b" 0 1 1 connected"
    local = ID_B + b" 127.0.0.1:7002@16380 slave " + ID_A + b" 0 1 1 connected"
    frame = b"*1\r\n" + bulk(line)
    assert rewrite_reply(Topic.REPLICAS, frame, book(), "x") == b"*1\r\n" + bulk(local)


# -- what is never touched ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(Topic))
@pytest.mark.parametrize(
    "frame",
    [
        b"-ERR This instance has cluster support disabled\r\n",
        b"-NOAUTH Authentication required.\r\n",
        b"+QUEUED\r\n",
        b"*1\r\n$3\r\nabc",  # truncated
        b"*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$8\r\n10.0.0.1\r\n:6380\r\ntrailing",
        b"$5\r\nhello\r\n",
        b"*0\r\n",
        b"_\r\n",
    ],
)
def test_errors_and_odd_frames_are_unchanged(topic: Topic, frame: bytes) -> None:
    assert rewrite_reply(topic, frame, book(), "10.0.0.1") == frame


def test_attribute_before_the_reply_is_kept() -> None:
    attr = b"|1\r\n+key\r\n+10.0.0.1:6380\r\n"
    frame = b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"10.0.0.1", 6380, ID_A)
    new = rewrite_reply(Topic.SLOTS, attr + frame, book(), "x")
    assert new == attr + b"*1\r\n*3\r\n:0\r\n:16383\r\n" + slots_node(b"127.0.0.1", 7001, ID_A)


@pytest.mark.parametrize(
    ("kind", "dropped"),
    [
        (b"MOVING", True),
        (b"moving", True),
        (b"SMIGRATED", True),
        (b"MIGRATING", False),
        (b"FAILED_OVER", False),
        (b"message", False),
        (None, False),
    ],
)
def test_suppressed_pushes(kind: bytes | None, dropped: bool) -> None:
    assert is_suppressed_push(kind) is dropped


def test_address_book_remove_forgets_ids_too() -> None:
    b = book()
    b.remove("10.0.0.1", 6380)
    assert b.lookup("10.0.0.1", 6380) is None
    assert b.lookup("", -1, ID_A.decode()) is None
    assert b.lookup("10.0.0.2", 6380) == Endpoint("127.0.0.1", 7002)
    assert len(b) == 1


@pytest.mark.parametrize("module", ["rewrite.py", "tracking.py"])
def test_pure_modules_import_no_io(module: str) -> None:
    path = Path(__file__).resolve().parents[2] / "tunnel" / module
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"trio", "anyio", "socket", "ssl", "asyncio", "selectors"}
