"""tunnel.tracking: streaming request/reply scanning and the pairing state machine."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from client.errors import RespProtocolError
from client.resp import encode_command
from tunnel import tracking
from tunnel.rewrite import AddressBook, Endpoint, Missing
from tunnel.tracking import (
    CROSS_PROTOCOL,
    Captured,
    Command,
    CountingTracker,
    ReplyScanner,
    ReplyTracker,
    RequestScanner,
    render,
)

ID_A = b"3d0e4d2e0870d6fc0ebb610a6202067a9201800f"


def cmd(*args: bytes | str | int) -> bytes:
    return encode_command(*args)


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def chunks(data: bytes, size: int | None) -> Iterable[bytes]:
    if size is None:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


SIZES = [None, 1, 2, 3, 7, 64]


# -- requests ---------------------------------------------------------------------------------


def scan_requests(
    scanner: RequestScanner, data: bytes, size: int | None
) -> tuple[bytes, list[object]]:
    raw = b""
    events: list[object] = []
    for piece in chunks(data, size):
        for item in scanner.feed(piece):
            if isinstance(item, bytes):
                raw += item
            else:
                events.append(item)
    return raw, events


PLAIN_CMD = ("plain",)


def names(events: list[object]) -> list[object]:
    """Commands as (name, args, argc); an ordinary command (reported as a count) as PLAIN_CMD."""
    out: list[object] = []
    for e in events:
        if isinstance(e, Command):
            out.append((e.name, e.args, e.argc))
        elif type(e) is int:
            out += [PLAIN_CMD] * e
    return out


PIPELINE = (
    cmd("SET", "k", "v" * 100)
    + cmd("cluster", "slots")
    + b"PING\r\n"
    + b"\r\n"  # an empty inline line: ignored
    + b"*0\r\n"  # an empty multibulk: ignored
    + cmd("CLIENT", "REPLY", "on")
    + b"set \"a b\" 'c'\n"
    + cmd("GET", "x" * 1000)
)


@pytest.mark.parametrize("size", SIZES)
def test_requests_are_forwarded_whole_and_reported_in_any_chunking(size: int | None) -> None:
    scanner = RequestScanner(track=True)
    raw, events = scan_requests(scanner, PIPELINE, size)
    assert raw == PIPELINE
    assert names(events) == [
        PLAIN_CMD,
        (b"CLUSTER", [b"slots"], 2),
        PLAIN_CMD,
        (b"CLIENT", [b"REPLY", b"on"], 3),
        PLAIN_CMD,
        PLAIN_CMD,
    ]
    assert scanner.buffered == 0


def test_detach_hands_back_what_was_held() -> None:
    scanner = RequestScanner()
    assert scanner.feed(cmd("PING") + b"*2\r\n$3\r\nGE") == [cmd("PING")]
    assert scanner.detach() == b"*2\r\n$3\r\nGE"
    assert scanner.feed(b"T\r\n") == []  # scanning is over


def test_without_tracking_only_bytes_come_out() -> None:
    out = RequestScanner().feed(PIPELINE)
    assert out == [PIPELINE]  # one piece: the very chunk, no copy


def test_a_huge_argument_streams_with_a_small_carry() -> None:
    value = b"x" * (3 * 1024 * 1024)
    data = cmd("SET", "big", value) + cmd("PING")
    scanner = RequestScanner(track=True)
    raw = b""
    events: list[object] = []
    for piece in chunks(data, 65536):
        for item in scanner.feed(piece):
            if isinstance(item, bytes):
                raw += item
            else:
                events.append(item)
        assert scanner.buffered < 128
    assert raw == data
    assert names(events) == [PLAIN_CMD, PLAIN_CMD]


def test_a_long_command_name_is_forwarded_for_redis_to_reject() -> None:
    data = cmd("X" * 100, "a") + cmd("PING")
    raw, events = scan_requests(RequestScanner(track=True), data, 5)
    assert raw == data
    assert names(events) == [PLAIN_CMD, PLAIN_CMD]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*3000000000\r\n", "invalid multibulk length"),
        (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
        (b"*2\r\n$4\r\nECHO\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*2\r\n$3\r\nSET\r\n$999999999999\r\n", "invalid bulk length"),
        (b'SET "a b\r\n', "unbalanced quotes in request"),
        (b"A" * (70 * 1024), "too big inline request"),
        (b"*" + b"1" * (70 * 1024), "too big mbulk count string"),
    ],
)
def test_protocol_errors_match_redis_and_keep_the_valid_prefix(data: bytes, message: str) -> None:
    prefix = cmd("PING")
    for size in (None, 1000):
        scanner = RequestScanner(track=True)
        raw, events = scan_requests(scanner, prefix + data + cmd("PING"), size)
        assert raw.startswith(prefix)
        assert raw.count(b"PING") == 1  # nothing after the error is forwarded
        errors = [e for e in events if isinstance(e, RespProtocolError)]
        assert [e.message for e in errors] == [message]
        assert errors[0].resp_line() == b"-ERR Protocol error: " + message.encode() + b"\r\n"
        assert scanner.feed(cmd("PING")) == []  # the stream is over


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"post /x HTTP/1.0\r\n",
        b"Host: example.com\r\n",
        cmd("POST", "x"),
        cmd("host:"),
    ],
)
def test_cross_protocol_guard(data: bytes) -> None:
    for size in (None, 1):
        raw, events = scan_requests(RequestScanner(), cmd("PING") + data + cmd("PING"), size)
        assert raw == cmd("PING")
        assert events == [CROSS_PROTOCOL]


def shape_cmds(shape: list[object]) -> list[bytes | Command]:
    out: list[bytes | Command] = []
    for item in shape:
        assert isinstance(item, bytes | Command)
        out.append(item)
    return out


def test_intercepted_frames_are_captured_in_order() -> None:
    auth = cmd("AUTH", "secret")
    hello = b"HELLO 3 AUTH default secret\r\n"
    data = cmd("PING") + auth + cmd("GET", "a") + hello + cmd("PING")
    for size in SIZES:
        scanner = RequestScanner(intercept=frozenset((b"AUTH", b"HELLO")))
        out: list[object] = []
        for piece in chunks(data, size):
            out += scanner.feed(piece)
        # join adjacent raw pieces to compare the shape
        shape: list[object] = []
        for item in out:
            if isinstance(item, bytes):
                if shape and isinstance(shape[-1], bytes):
                    shape[-1] += item
                elif item:
                    shape.append(item)
            else:
                shape.append(item)
        assert [
            s if isinstance(s, bytes) else (s.name, s.args, s.frame) for s in shape_cmds(shape)
        ] == [
            cmd("PING"),
            (b"AUTH", [b"secret"], auth),
            cmd("GET", "a"),
            (b"HELLO", [b"3", b"AUTH", b"default", b"secret"], hello),
            cmd("PING"),
        ]


def test_capture_all_pauses_after_each_frame() -> None:
    scanner = RequestScanner(intercept=frozenset((b"AUTH",)))
    scanner.capture_all = True
    data = cmd("GET", "a") + cmd("AUTH", "pw") + cmd("SET", "b", "1")
    first = scanner.feed(data)
    assert [(c.name, c.frame) for c in first if isinstance(c, Command)] == [
        (b"GET", cmd("GET", "a"))
    ]
    assert scanner.paused
    second = scanner.feed(b"")
    assert [c.name for c in second if isinstance(c, Command)] == [b"AUTH"]
    scanner.capture_all = False
    third = scanner.feed(b"")
    assert third == [cmd("SET", "b", "1")]
    assert not scanner.paused


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*11\r\n" + b"$1\r\na\r\n" * 11, "unauthenticated multibulk length"),
        (cmd("AUTH", "x" * 70000), "unauthenticated bulk length"),
    ],
)
def test_before_login_the_limits_are_tight(data: bytes, message: str) -> None:
    scanner = RequestScanner()
    scanner.capture_all = True
    errors = [e for e in scanner.feed(data) if isinstance(e, RespProtocolError)]
    assert [e.message for e in errors] == [message]


# -- replies ----------------------------------------------------------------------------------


def book() -> AddressBook:
    b = AddressBook()
    b.add("10.0.0.1", 6380, Endpoint("127.0.0.1", 7001), ID_A.decode())
    return b


SLOTS = b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n" + bulk(b"10.0.0.1") + b":6380\r\n" + bulk(ID_A)
SLOTS_LOCAL = b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n" + bulk(b"127.0.0.1") + b":7001\r\n" + bulk(ID_A)
NODES_TEXT = ID_A + b" 10.0.0.1:6380@16380 myself,master - 0 0 1 connected 0-16383\n"
NODES_LOCAL = ID_A + b" 127.0.0.1:7001@16380 myself,master - 0 0 1 connected 0-16383\n"
LOOKALIKES = [b"10.0.0.1:6380", b"redis.example.com", b"10.0.0.1", NODES_TEXT]


class Pair:
    """A request scanner, a tracker and a reply scanner, as the relay wires them."""

    def __init__(self) -> None:
        self.tracker = ReplyTracker()
        self.requests = RequestScanner(track=True)
        self.replies = ReplyScanner(self.tracker)

    def send(self, data: bytes) -> None:
        for item in self.requests.feed(data):
            if isinstance(item, Command):
                self.tracker.on_request(item)
            elif type(item) is int:
                self.tracker.push_plain(item)

    def receive(self, data: bytes, size: int | None = None) -> bytes:
        out = b""
        for piece in chunks(data, size):
            for item in self.replies.feed(piece):
                if isinstance(item, Captured):
                    result = render(item, book(), "10.0.0.1")
                    assert not isinstance(result, Missing)
                    out += result
                else:
                    out += item
        return out


def exchange(requests: bytes, replies: bytes, size: int | None = None) -> tuple[bytes, Pair]:
    pair = Pair()
    pair.send(requests)
    return pair.receive(replies, size), pair


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("value", LOOKALIKES)
def test_user_values_that_look_like_addresses_are_untouched(value: bytes, size: int | None) -> None:
    requests = cmd("GET", "a") + cmd("CLUSTER", "SLOTS") + cmd("GET", "b") + cmd("LRANGE", "l")
    replies = bulk(value) + SLOTS + bulk(value) + b"*2\r\n" + bulk(value) + bulk(value)
    out, pair = exchange(requests, replies, size)
    assert out == bulk(value) + SLOTS_LOCAL + bulk(value) + b"*2\r\n" + bulk(value) + bulk(value)
    assert pair.tracker.pending == 0


@pytest.mark.parametrize("size", SIZES)
def test_cluster_nodes_in_resp2_and_resp3(size: int | None) -> None:
    verbatim = b"=%d\r\ntxt:%s\r\n" % (len(NODES_TEXT) + 4, NODES_TEXT)
    requests = cmd("CLUSTER", "NODES") + cmd("HELLO", "3") + cmd("CLUSTER", "NODES")
    hello = b"%1\r\n+proto\r\n:3\r\n"
    out, pair = exchange(requests, bulk(NODES_TEXT) + hello + verbatim, size)
    assert out == (
        bulk(NODES_LOCAL) + hello + b"=%d\r\ntxt:%s\r\n" % (len(NODES_LOCAL) + 4, NODES_LOCAL)
    )
    assert pair.tracker.proto == 3


@pytest.mark.parametrize("size", SIZES)
def test_redirects_are_rewritten_for_any_command(size: int | None) -> None:
    replies = b"-MOVED 1 10.0.0.1:6380\r\n-ASK 2 :6380\r\n-ERR MOVED 1 10.0.0.1:6380\r\n"
    out, pair = exchange(cmd("GET", "a") * 3, replies, size)
    assert (
        out
        == b"-MOVED 1 127.0.0.1:7001\r\n-ASK 2 127.0.0.1:7001\r\n"
        + replies.split(b"\r\n")[2]
        + b"\r\n"
    )
    assert pair.tracker.pending == 0


@pytest.mark.parametrize("size", SIZES)
def test_exec_answers_the_queued_commands(size: int | None) -> None:
    requests = (
        cmd("MULTI") + cmd("CLUSTER", "SLOTS") + cmd("GET", "a") + cmd("EXEC") + cmd("GET", "b")
    )
    replies = (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n"
        + b"*2\r\n"
        + SLOTS
        + bulk(NODES_TEXT)
        + bulk(b"10.0.0.1:6380")
    )
    out, pair = exchange(requests, replies, size)
    assert out == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n"
        + SLOTS_LOCAL
        + bulk(NODES_TEXT)
        + bulk(b"10.0.0.1:6380")
    )
    assert pair.tracker.pending == 0
    assert not pair.tracker.in_multi


def test_exec_elements_pair_by_position() -> None:
    requests = cmd("MULTI") + cmd("GET", "a") + cmd("CLUSTER", "SLOTS") + cmd("EXEC")
    replies = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n" + bulk(b"10.0.0.1:6380") + SLOTS
    out, _ = exchange(requests, replies)
    assert out == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n" + bulk(b"10.0.0.1:6380") + SLOTS_LOCAL


def test_exec_without_topology_inside_is_raw_and_cheap() -> None:
    pair = Pair()
    pair.send(cmd("MULTI") + cmd("GET", "a") + cmd("EXEC"))
    replies = b"+OK\r\n+QUEUED\r\n*1\r\n" + bulk(NODES_TEXT)
    assert pair.replies.feed(replies) == [replies]


@pytest.mark.parametrize(
    "exec_reply",
    [b"*-1\r\n", b"_\r\n", b"-EXECABORT Transaction discarded because of previous errors.\r\n"],
)
def test_aborted_transactions_keep_the_pairing(exec_reply: bytes) -> None:
    requests = cmd("MULTI") + cmd("CLUSTER", "SLOTS") + cmd("EXEC") + cmd("CLUSTER", "SLOTS")
    out, pair = exchange(requests, b"+OK\r\n+QUEUED\r\n" + exec_reply + SLOTS)
    assert out == b"+OK\r\n+QUEUED\r\n" + exec_reply + SLOTS_LOCAL
    assert pair.tracker.pending == 0
    assert not pair.tracker.in_multi


def test_discard_and_errors_while_queueing() -> None:
    requests = (
        cmd("MULTI")
        + cmd("NOPE")
        + cmd("CLUSTER", "SLOTS")
        + cmd("DISCARD")
        + cmd("CLUSTER", "SLOTS")
    )
    replies = b"+OK\r\n-ERR unknown command 'NOPE'\r\n+QUEUED\r\n+OK\r\n" + SLOTS
    out, pair = exchange(requests, replies)
    assert out.endswith(SLOTS_LOCAL)
    assert not pair.tracker.in_multi


def confirm(kind: bytes, channel: bytes | None, count: int, push: bool = False) -> bytes:
    head = b">3\r\n" if push else b"*3\r\n"
    return (
        head
        + bulk(kind)
        + (bulk(channel) if channel is not None else b"$-1\r\n")
        + (b":%d\r\n" % count)
    )


def message(channel: bytes, payload: bytes, push: bool = False) -> bytes:
    return (b">3\r\n" if push else b"*3\r\n") + bulk(b"message") + bulk(channel) + bulk(payload)


@pytest.mark.parametrize("size", SIZES)
def test_resp2_pubsub_unasked_messages_do_not_pop(size: int | None) -> None:
    requests = (
        cmd("SUBSCRIBE", "a", "b")
        + cmd("PSUBSCRIBE", "p*")
        + cmd("PING")
        + cmd("UNSUBSCRIBE")
        + cmd("PUNSUBSCRIBE")
        + cmd("CLUSTER", "SLOTS")
    )
    replies = (
        confirm(b"subscribe", b"a", 1)
        + message(b"a", SLOTS)  # a payload shaped like a topology reply: untouched
        + confirm(b"subscribe", b"b", 2)
        + confirm(b"psubscribe", b"p*", 3)
        + b"*4\r\n"
        + bulk(b"pmessage")
        + bulk(b"p*")
        + bulk(b"px")
        + bulk(b"10.0.0.1:6380")
        + b"*2\r\n"
        + bulk(b"pong")
        + bulk(b"")
        + message(b"b", b"hi")
        + confirm(b"unsubscribe", b"a", 2)
        + confirm(b"unsubscribe", b"b", 1)
        + confirm(b"punsubscribe", b"p*", 0)
        + SLOTS
    )
    out, pair = exchange(requests, replies, size)
    assert out == replies[: -len(SLOTS)] + SLOTS_LOCAL
    assert pair.tracker.pending == 0
    assert not pair.tracker.subscribed


def test_resp2_each_unasked_message_leaves_the_fifo_alone() -> None:
    pair = Pair()
    pair.send(cmd("SUBSCRIBE", "a") + cmd("PING") + cmd("PING"))
    pair.receive(confirm(b"subscribe", b"a", 1))
    assert pair.tracker.pending == 2
    for kind in (b"message", b"smessage"):
        pair.receive(message(b"a", b"x").replace(bulk(b"message"), bulk(kind)))
        assert pair.tracker.pending == 2
    pair.receive(b"*4\r\n" + bulk(b"pmessage") + bulk(b"a*") + bulk(b"a") + bulk(b"x"))
    assert pair.tracker.pending == 2
    pair.receive(b"*2\r\n" + bulk(b"pong") + bulk(b""))
    assert pair.tracker.pending == 1


def test_resp2_bare_unsubscribe_when_not_subscribed() -> None:
    out, pair = exchange(
        cmd("UNSUBSCRIBE") + cmd("CLUSTER", "SLOTS"), confirm(b"unsubscribe", None, 0) + SLOTS
    )
    assert out.endswith(SLOTS_LOCAL)
    assert pair.tracker.pending == 0


def test_resp2_message_shaped_array_is_a_reply_when_not_subscribed() -> None:
    requests = cmd("LRANGE", "l", "0", "-1") + cmd("CLUSTER", "SLOTS")
    reply = message(b"a", b"b")
    out, _ = exchange(requests, reply + SLOTS)
    assert out == reply + SLOTS_LOCAL


@pytest.mark.parametrize("size", SIZES)
def test_resp3_pubsub_uses_pushes(size: int | None) -> None:
    requests = (
        cmd("HELLO", "3")
        + cmd("SUBSCRIBE", "a")
        + cmd("LRANGE", "l", "0", "-1")
        + cmd("SSUBSCRIBE", "s")
        + cmd("CLUSTER", "SLOTS")
    )
    hello = b"%1\r\n+proto\r\n:3\r\n"
    lrange = message(b"a", b"b")  # an ordinary array reply in RESP3 subscribed state
    replies = (
        hello
        + confirm(b"subscribe", b"a", 1, push=True)
        + message(b"a", b"x", push=True)
        + lrange
        + message(b"a", b"y", push=True)
        + confirm(b"ssubscribe", b"s", 1, push=True)
        + b">2\r\n"
        + bulk(b"invalidate")
        + b"*1\r\n"
        + bulk(b"k")
        + SLOTS
    )
    out, pair = exchange(requests, replies, size)
    assert out == replies[: -len(SLOTS)] + SLOTS_LOCAL
    assert pair.tracker.pending == 0
    assert pair.tracker.channels == 1
    assert pair.tracker.shards == 1


def test_unasked_shard_unsubscribe_does_not_pop() -> None:
    pair = Pair()
    pair.send(cmd("HELLO", "3") + cmd("SSUBSCRIBE", "s") + cmd("CLUSTER", "SLOTS"))
    pair.receive(b"%1\r\n+proto\r\n:3\r\n" + confirm(b"ssubscribe", b"s", 1, push=True))
    # the slot moved: the server unsubscribes the client on its own
    out = pair.receive(confirm(b"sunsubscribe", b"s", 0, push=True) + SLOTS)
    assert out.endswith(SLOTS_LOCAL)


@pytest.mark.parametrize("size", SIZES)
def test_endpoint_pushes_are_dropped(size: int | None) -> None:
    moving = b">4\r\n" + bulk(b"MOVING") + b":1\r\n:15\r\n" + bulk(b"10.0.0.9:6379")
    migrating = b">3\r\n" + bulk(b"MIGRATING") + b":2\r\n:15\r\n"
    out, _ = exchange(cmd("GET", "a"), moving + migrating + bulk(b"v"), size)
    assert out == migrating + bulk(b"v")


def test_large_push_streams_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "MAX_PUSH_HOLD", 100)
    big = message(b"a", b"z" * 1000, push=True)
    pair = Pair()
    pair.send(cmd("HELLO", "3") + cmd("SUBSCRIBE", "a"))
    out = b""
    for piece in chunks(b"%1\r\n+proto\r\n:3\r\n" + confirm(b"subscribe", b"a", 1, True) + big, 64):
        for item in pair.replies.feed(piece):
            out += item if isinstance(item, bytes) else item.frame
        assert pair.replies.buffered < 300
    assert out.endswith(big)


@pytest.mark.parametrize("size", SIZES)
def test_client_reply_off_and_skip(size: int | None) -> None:
    requests = (
        cmd("CLIENT", "REPLY", "OFF")
        + cmd("SET", "a", "1") * 3
        + cmd("CLIENT", "REPLY", "ON")
        + cmd("CLIENT", "REPLY", "SKIP")
        + cmd("SET", "b", "1")
        + cmd("CLUSTER", "SLOTS")
    )
    out, pair = exchange(requests, b"+OK\r\n" + SLOTS, size)
    assert out == b"+OK\r\n" + SLOTS_LOCAL
    assert pair.tracker.pending == 0


def test_monitor_ends_pairing_but_not_redirect_rewriting() -> None:
    pair = Pair()
    pair.send(cmd("MONITOR") + cmd("CLUSTER", "SLOTS"))
    lines = b'+1700000000.1 [0 127.0.0.1:1] "get" "10.0.0.1:6380"\r\n' * 3
    out = pair.receive(b"+OK\r\n" + lines + b"-MOVED 1 10.0.0.1:6380\r\n")
    assert out == b"+OK\r\n" + lines + b"-MOVED 1 127.0.0.1:7001\r\n"
    assert pair.tracker.monitor


def test_a_long_monitor_line_streams() -> None:
    pair = Pair()
    pair.send(cmd("MONITOR"))
    pair.receive(b"+OK\r\n")
    line = b"+" + b"m" * 200_000 + b"\r\n"
    out = b""
    for piece in chunks(line, 4096):
        for item in pair.replies.feed(piece):
            assert isinstance(item, bytes)
            out += item
        assert pair.replies.buffered < 2048
    assert out == line


def test_reset_returns_to_the_start_state() -> None:
    pair = Pair()
    pair.send(cmd("HELLO", "3") + cmd("SUBSCRIBE", "a") + cmd("RESET") + cmd("LRANGE", "l"))
    pair.send(cmd("CLUSTER", "SLOTS"))
    replies = (
        b"%1\r\n+proto\r\n:3\r\n"
        + confirm(b"subscribe", b"a", 1, push=True)
        + b"+RESET\r\n"
        + message(b"a", b"b")  # RESP2 again, not subscribed: an ordinary reply
        + SLOTS
    )
    out = pair.receive(replies)
    assert out.endswith(message(b"a", b"b") + SLOTS_LOCAL)
    assert pair.tracker.proto == 2
    assert not pair.tracker.subscribed


def test_sync_switches_to_raw() -> None:
    pair = Pair()
    pair.send(cmd("PSYNC", "?", "-1"))
    assert pair.tracker.raw
    rdb = b"+FULLRESYNC abc 0\r\n$5\r\nREDIS*3\r\n$3\r\nSET"  # an RDB has no CRLF: not RESP
    assert pair.replies.feed(rdb) == [rdb]


def test_run_length_fifo_keeps_a_million_commands_cheap() -> None:
    pair = Pair()
    pair.send(cmd("GET", "a") * 100_000)
    assert pair.tracker.pending == 100_000
    assert pair.tracker.backlog == 1
    pair.send(cmd("CLUSTER", "SLOTS") + cmd("GET", "a"))
    assert pair.tracker.backlog == 3


def test_a_huge_reply_streams_with_a_small_carry() -> None:
    value = b"v" * (2 * 1024 * 1024)
    pair = Pair()
    pair.send(cmd("GET", "big") + cmd("CLUSTER", "SLOTS"))
    out = b""
    for piece in chunks(bulk(value) + SLOTS, 65536):
        out += pair.receive(piece)
        assert pair.replies.buffered < 4096
    assert out == bulk(value) + SLOTS_LOCAL


def test_an_oversized_topology_reply_is_forwarded_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracking, "MAX_CAPTURE", 50)
    text = NODES_TEXT * 4
    out, pair = exchange(cmd("CLUSTER", "NODES") + cmd("CLUSTER", "SLOTS"), bulk(text) + SLOTS, 16)
    assert out == bulk(text) + SLOTS  # SLOTS itself is over 50 bytes too
    assert pair.replies.oversized == 2
    assert pair.tracker.pending == 0


@pytest.mark.parametrize(
    "garbage",
    [b"?what\r\n", b"$abc\r\n", b"*x\r\n", b"*?\r\n", b"$" + b"9" * 100],
)
def test_invalid_upstream_resp_raises(garbage: bytes) -> None:
    pair = Pair()
    pair.send(cmd("GET", "a"))
    with pytest.raises(RespProtocolError):
        pair.receive(garbage)


def test_unknown_node_in_a_reply_is_reported_missing() -> None:
    pair = Pair()
    pair.send(cmd("GET", "a"))
    items = pair.replies.feed(b"-MOVED 9 10.0.0.9:6390\r\n")
    assert len(items) == 1
    assert isinstance(items[0], Captured)
    assert isinstance(render(items[0], book(), "10.0.0.1"), Missing)


def test_attribute_and_its_reply_pop_once() -> None:
    attr = b"|1\r\n+ttl\r\n:3\r\n"
    out, pair = exchange(cmd("GET", "a") + cmd("CLUSTER", "SLOTS"), attr + bulk(b"v") + SLOTS)
    assert out == attr + bulk(b"v") + SLOTS_LOCAL
    assert pair.tracker.pending == 0


# -- frame boundaries, answered replies, injected frames (live re-AUTH) -----------------------


def test_tracker_kinds_are_exactly_the_noted_commands() -> None:
    kinds = {*tracking._SIMPLE_KINDS, *tracking._SUBSCRIBES, b"CLUSTER", b"CLIENT"}
    assert kinds | {b"SYNC", b"PSYNC"} == set(tracking.NOTED)


def test_at_boundary_only_between_frames() -> None:
    scanner = RequestScanner(track=True)
    frame = cmd("SET", "k", "v" * 1000)
    seen = [scanner.at_boundary]
    scanner.feed(frame[:600])  # inside the value: part of the frame went out
    seen.append(scanner.at_boundary)
    scanner.feed(frame[600:] + b"*2\r\n$3\r\nGE")  # a partial head is held back, not forwarded
    seen.append(scanner.at_boundary)
    scanner.feed(b"T\r\n$1\r\nk")  # the name is out, an argument is still due
    seen.append(scanner.at_boundary)
    scanner.feed(b"\r\n")
    seen.append(scanner.at_boundary)
    assert seen == [True, False, True, False, True]


def test_answered_counts_commands_once_each() -> None:
    pair = Pair()
    pair.send(
        cmd("SET", "a", "1") * 3 + cmd("SUBSCRIBE", "x", "y") + cmd("UNSUBSCRIBE") + cmd("PING")
    )
    pair.receive(
        b"+OK\r\n" * 3
        + confirm(b"subscribe", b"x", 1)
        + confirm(b"subscribe", b"y", 2)
        + message(b"x", b"hello")
        + confirm(b"unsubscribe", b"x", 1)
        + confirm(b"unsubscribe", b"y", 0)
        + b"+PONG\r\n"
    )
    assert pair.tracker.answered == 6  # 3 SETs, SUBSCRIBE, UNSUBSCRIBE, PING; no message
    assert pair.tracker.pending == 0


@pytest.mark.parametrize("size", SIZES)
def test_an_injected_frame_reply_is_swallowed_in_place(size: int | None) -> None:
    pair = Pair()
    pair.send(cmd("GET", "a") + cmd("CLUSTER", "SLOTS"))
    assert pair.tracker.may_inject()
    pair.tracker.push_injected()  # AUTH sent by the relay after those two
    pair.send(cmd("SET", "b", "1") + cmd("CLUSTER", "SLOTS"))
    out = pair.receive(b"$1\r\nv\r\n" + SLOTS + b"+OK\r\n" + b"+OK\r\n" + SLOTS, size)
    assert out == b"$1\r\nv\r\n" + SLOTS_LOCAL + b"+OK\r\n" + SLOTS_LOCAL
    assert pair.tracker.pending == 0
    assert pair.tracker.answered == 4  # the injected AUTH is not a command answered


def test_a_refused_injected_frame_is_handed_over_as_injected() -> None:
    pair = Pair()
    pair.tracker.push_injected()
    items = pair.replies.feed(b"-WRONGPASS invalid username-password pair\r\n+PONG\r\n")
    captured = [i for i in items if isinstance(i, Captured)]
    assert [c.injected for c in captured] == [True]
    assert render(captured[0], book(), "10.0.0.1") == b""


def states(requests: bytes, replies: bytes = b"") -> bool:
    pair = Pair()
    pair.send(requests)
    if replies:
        pair.receive(replies)
    return pair.tracker.may_inject()


def test_may_inject_only_where_the_reply_is_sure_to_come_in_order() -> None:
    assert states(cmd("GET", "a"))
    # A transaction is open from MULTI until EXEC/DISCARD/RESET is sent.
    assert not states(cmd("MULTI") + cmd("SET", "a", "1"))
    assert states(cmd("MULTI") + cmd("SET", "a", "1") + cmd("EXEC"))
    assert states(cmd("MULTI") + cmd("DISCARD"))
    # RESP2: subscribing (even before the confirmation) or subscribed: Redis refuses AUTH.
    assert not states(cmd("SUBSCRIBE", "x"))
    assert not states(cmd("SUBSCRIBE", "x"), confirm(b"subscribe", b"x", 1))
    assert states(
        cmd("SUBSCRIBE", "x") + cmd("UNSUBSCRIBE"),
        confirm(b"subscribe", b"x", 1) + confirm(b"unsubscribe", b"x", 0),
    )
    # RESP3: AUTH is allowed while subscribed.
    hello3 = b"%1\r\n$5\r\nproto\r\n:3\r\n"
    assert states(
        cmd("HELLO", "3") + cmd("SUBSCRIBE", "x"),
        hello3 + confirm(b"subscribe", b"x", 1, push=True),
    )
    # Replies switched off or skipped, MONITOR, SYNC: no reply in order.
    assert not states(cmd("CLIENT", "REPLY", "OFF"))
    assert not states(cmd("CLIENT", "REPLY", "SKIP"))
    assert states(cmd("CLIENT", "REPLY", "OFF") + cmd("CLIENT", "REPLY", "ON"), b"+OK\r\n")
    assert not states(cmd("MONITOR"), b"+OK\r\n")
    assert not states(cmd("SYNC"))


# -- counting without requests (standalone with statistics) -----------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_counting_tracker_counts_reply_frames(size: int | None) -> None:
    tracker = CountingTracker()
    scanner = ReplyScanner(tracker)
    replies = (
        b"+OK\r\n" * 5
        + b"$3\r\nabc\r\n"
        + b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n"  # a nested array: one reply
        + b"-ERR unknown command 'TUNNEL', with args beginning with: 'INFO' \r\n"
        + confirm(b"subscribe", b"ch", 1)  # counts: it answers SUBSCRIBE
        + message(b"ch", b"payload")  # does not: nobody asked
        + b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"  # a push never counts
        + b"%1\r\n$1\r\nk\r\n$1\r\nv\r\n"
    )
    out = b""
    errors = []
    for piece in chunks(replies, size):
        for item in scanner.feed(piece):
            if isinstance(item, Captured):
                errors.append(item.frame)
                out += item.frame
            else:
                out += item
    assert out == replies
    assert errors == [b"-ERR unknown command 'TUNNEL', with args beginning with: 'INFO' \r\n"]
    assert tracker.answered == 10
    assert tracker.pending == 0
    assert not tracker.may_inject()
