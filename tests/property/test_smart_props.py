"""Laws of the smart tunnel's pure parts: routing splits, merges and the SCAN cursor."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from client.commands import CommandTable
from client.errors import RespProtocolError
from client.resp import FrameScanner, RespParser, encode_command, encode_value
from client.slots import SLOTS, key_slot
from client.values import ErrorReply, RespValue, SimpleString
from tunnel.merge import (
    merge_fanout,
    merge_info,
    merge_split,
    scan_cursor,
    scan_decode,
    scan_encode,
)
from tunnel.route import (
    Agg,
    Reject,
    Router,
    Single,
    Split,
    crossslot_message,
    split_replies,
    split_requests,
)

ROUTER = Router(CommandTable.bundled())

# Keys: short random bytes, sometimes with a hash tag from a small pool, so that some keys
# share a slot and some commands stay on one slot.
_tags = st.sampled_from([b"", b"{a}", b"{b}", b"{user:1}", b"{}"])
keys = st.builds(lambda tag, body: tag + body, _tags, st.binary(min_size=1, max_size=12))
key_lists = st.lists(keys, min_size=1, max_size=30)


@given(key_lists)
def test_mget_split_covers_every_key_once(ks: list[bytes]) -> None:
    plan = ROUTER.route([b"MGET", *ks])
    slots = {key_slot(k) for k in ks}
    if len(slots) == 1:
        assert plan == Single(key_slot(ks[0]), True, False)
        return
    assert isinstance(plan, Split)
    positions = sorted(i for part in plan.parts for i in part.positions)
    assert positions == list(range(len(ks)))
    assert len({part.slot for part in plan.parts}) == len(plan.parts) == len(slots)
    for part in plan.parts:
        assert part.args[0] == b"MGET"
        assert all(key_slot(k) == part.slot for k in part.args[1:])
        assert [ks[i] for i in part.positions] == list(part.args[1:])


@given(key_lists, st.randoms(use_true_random=False))
def test_mget_merge_is_what_one_server_answers(ks: list[bytes], rnd: random.Random) -> None:
    store: dict[bytes, bytes] = {k: b"v" + k for k in ks if rnd.random() < 0.6}
    plan = ROUTER.route([b"MGET", *ks])
    if not isinstance(plan, Split):
        return
    results: list[RespValue] = [[store.get(k) for k in part.args[1:]] for part in plan.parts]
    assert merge_split(plan, results) == [store.get(k) for k in ks]


@given(key_lists)
def test_del_split_sums_to_the_standalone_count(ks: list[bytes]) -> None:
    plan = ROUTER.route([b"DEL", *ks])
    if not isinstance(plan, Split):
        return
    present = {k for k in ks if len(k) % 2}
    # a standalone DEL counts each existing key once, even when repeated
    results: list[RespValue] = [len(set(part.args[1:]) & present) for part in plan.parts]
    assert merge_split(plan, results) == len(set(ks) & present)


@given(st.lists(st.tuples(keys, st.binary(max_size=8)), min_size=1, max_size=20))
def test_mset_split_keeps_each_value_with_its_key(pairs: list[tuple[bytes, bytes]]) -> None:
    args = [b"MSET"] + [x for pair in pairs for x in pair]
    plan = ROUTER.route(args)
    if not isinstance(plan, Split):
        return
    seen = []
    for part in plan.parts:
        body = part.args[1:]
        seen += list(zip(body[0::2], body[1::2], strict=True))
        assert all(key_slot(k) == part.slot for k in body[0::2])
    assert sorted(seen) == sorted(pairs)


@given(st.sampled_from([b"RENAME", b"SMOVE", b"MSETNX", b"SUNIONSTORE"]), key_lists)
def test_atomic_commands_never_split(name: bytes, ks: list[bytes]) -> None:
    first, last = ks[0], ks[-1]
    if name == b"RENAME":
        args, found = [name, first, last], [first, last]
    elif name == b"SMOVE":
        args, found = [name, first, last, b"member"], [first, last]
    elif name == b"MSETNX":
        args, found = [name] + [x for k in ks for x in (k, b"1")], ks
    else:
        args, found = [name, b"dest", *ks], [b"dest", *ks]
    plan = ROUTER.route(args)
    assert not isinstance(plan, Split)
    if len({key_slot(k) for k in found}) > 1:
        assert isinstance(plan, Reject)
        assert plan.message.startswith(b"CROSSSLOT ")
    else:
        assert isinstance(plan, Single)


@given(st.binary(max_size=10), st.lists(st.binary(max_size=200), min_size=1, max_size=50))
def test_crossslot_message_is_one_bounded_line(name: bytes, ks: list[bytes]) -> None:
    text = crossslot_message(name, ks)
    assert b"\r" not in text
    assert b"\n" not in text
    assert len(text) < 1000


@given(st.integers(0, SLOTS - 1), st.integers(0, (1 << 50) - 1))
def test_scan_cursor_roundtrip(start: int, node_cursor: int) -> None:
    assert scan_decode(scan_encode(start, node_cursor)) == (start, node_cursor)


@given(
    st.lists(st.integers(1, SLOTS - 1), max_size=20, unique=True),
    st.lists(st.integers(0, 5), min_size=21, max_size=21),
)
def test_scan_visits_every_master_once_in_order(extra: list[int], steps: list[int]) -> None:
    starts = sorted({0, *extra})
    visited: list[int] = []
    cursor = 0
    for _ in range(10_000):
        slot, node_cursor = scan_decode(cursor)
        if not visited or visited[-1] != slot:
            visited.append(slot)
        # the node answers node_cursor + 1 a few times, then 0 (done)
        answer = node_cursor + 1 if node_cursor < steps[len(visited) - 1] else 0
        cursor = scan_cursor(starts, slot, answer)
        if cursor == 0:
            break
    assert visited == starts


# A fan-out's replies: one per master.
_ints = st.lists(st.integers(-1000, 1000), min_size=1, max_size=8)


@given(_ints)
def test_sum_min_max(values: list[int]) -> None:
    results: list[RespValue] = list(values)
    assert merge_fanout(Agg.SUM, results) == sum(values)
    assert merge_fanout(Agg.MIN, results) == min(values)
    assert merge_fanout(Agg.MAX, results) == max(values)


@given(st.lists(st.lists(st.binary(max_size=6), max_size=6), min_size=1, max_size=5))
def test_keys_concat_and_union(per_node: list[list[bytes]]) -> None:
    results: list[RespValue] = [list(keys) for keys in per_node]
    assert merge_fanout(Agg.CONCAT, results) == [k for keys in per_node for k in keys]
    union = merge_fanout(Agg.UNION, results)
    assert isinstance(union, list)
    assert len(union) == len(set(union))
    assert set(union) == {k for keys in per_node for k in keys}


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**5)), min_size=1, max_size=6))
def test_info_keyspace_sums(dbs: list[tuple[int, int]]) -> None:
    replies: list[RespValue] = [
        f"# Keyspace\r\ndb0:keys={keys},expires={min(exp, keys)},avg_ttl=5\r\n".encode()
        for keys, exp in dbs
    ]
    merged = merge_info(replies)
    assert isinstance(merged, bytes)
    line = merged.decode().split("\r\n")[1]
    fields = dict(p.split("=") for p in line.partition(":")[2].split(","))
    assert int(fields["keys"]) == sum(k for k, _ in dbs)
    assert int(fields["expires"]) == sum(min(e, k) for k, e in dbs)


@given(_ints, st.booleans())
def test_merged_replies_encode_in_both_protocols(values: list[int], resp3: bool) -> None:
    merged = merge_fanout(Agg.SUM, list(values))
    parser = RespParser()
    parser.feed(encode_value(merged, resp3=resp3))
    assert parser.next_value() == sum(values)


# --------------------------------------------------------------------------- fast framing
# The smart tunnel splits plain frames itself (route.split_requests / split_replies) and hands
# everything else to client.resp. Law: what the fast path takes means exactly what the parser
# and the scanner would make of the same bytes, and nothing is lost at the hand-over.

_args = st.lists(st.binary(max_size=20), min_size=1, max_size=6)
_commands = st.lists(_args, max_size=12)


def _parse_requests(data: bytes) -> list[list[bytes] | None]:
    """Every command the parser finds; None at the end when it rejects what follows."""
    parser = RespParser(requests=True)
    parser.feed(data)
    out: list[list[bytes] | None] = []
    while True:
        try:
            command = parser.next_command()
        except RespProtocolError:
            out.append(None)
            return out
        if not isinstance(command, list):
            return out
        out.append(command)


@given(_commands, st.binary(max_size=30))
def test_split_requests_then_parser_see_every_command(
    commands: list[list[bytes]], tail: bytes
) -> None:
    data = b"".join(encode_command(*c) for c in commands) + tail
    taken, used = split_requests(data)
    position = 0
    for args, start, end in taken:
        assert start == position
        assert _parse_requests(data[start:end]) == [args]
        position = end
    assert used == position
    fast: list[list[bytes] | None] = [a for a, _, _ in taken]
    assert fast + _parse_requests(data[used:]) == _parse_requests(data)


@given(st.binary(max_size=200))
def test_split_requests_takes_only_what_the_parser_accepts(data: bytes) -> None:
    taken, used = split_requests(data)
    if taken:
        assert _parse_requests(data[:used]) == [a for a, _, _ in taken]


def _one_line(text: bytes) -> bool:
    return b"\r" not in text and b"\n" not in text


_simple_replies = st.lists(
    st.one_of(
        st.builds(SimpleString, st.binary(max_size=8).filter(_one_line)),
        st.builds(ErrorReply, st.binary(min_size=1, max_size=8).filter(_one_line)),
        st.integers(-(2**63), 2**63 - 1),
        st.binary(max_size=12),
        st.none(),
        st.lists(st.binary(max_size=3), max_size=3),
    ),
    max_size=12,
)


@given(_simple_replies, st.booleans(), st.binary(max_size=20))
def test_split_replies_agrees_with_the_scanner(
    replies: list[RespValue], resp3: bool, tail: bytes
) -> None:
    data = b"".join(encode_value(r, resp3=resp3) for r in replies) + tail
    ends, used = split_replies(data)
    scanner = FrameScanner()
    scanner.feed(data)
    frames = []
    try:
        while (frame := scanner.next_frame()) is not None:
            frames.append(frame)
    except RespProtocolError:
        pass  # a garbage tail: only the frames before it matter
    assert len(frames) >= len(ends)
    start = 0
    for n, end in enumerate(ends):
        assert frames[n].data == data[start:end]
        start = end
    assert used == start


# --------------------------------------------------------------------------- link replies
# An upstream link completes its FIFO of holders from chunks of replies: one frame per plain
# holder, a pipelined run's frames all at once when they are all in the chunk and none is an
# error. Law: whatever the chunking, each holder gets exactly its own frames, in order.


class _Session:
    now = 0.0
    waiting = False
    closed = False


class _Proxy:
    batching = False
    dirty: list[object] = []

    def retry_reply(self, item: object, frame: bytes, link: object) -> None:
        raise AssertionError(f"no retry expected for {frame!r}")

    def lost(self, *args: object) -> None:
        raise AssertionError("the link must not break")


class _Upstream:
    address = "node:1"
    replica = False

    def __init__(self) -> None:
        from tunnel.stats import ConnectionCounters

        self.counters = ConnectionCounters()


_reply_values = st.one_of(
    st.builds(SimpleString, st.binary(max_size=8).filter(_one_line)),
    st.builds(
        ErrorReply,
        st.binary(min_size=1, max_size=8)
        .filter(_one_line)
        .filter(
            lambda b: not b.upper().startswith((b"MOVED", b"ASK", b"TRY", b"CLUSTER", b"LOAD"))
        ),
    ),
    st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=12),  # CR LF inside, or a leading '-', included
    st.builds(lambda b: b"-" + b, st.binary(max_size=6)),
    st.none(),
    st.lists(st.binary(max_size=3), max_size=3),  # an array: the scanner's part
)


@given(
    st.lists(st.lists(_reply_values, min_size=1, max_size=6), min_size=1, max_size=10),
    st.booleans(),
    st.lists(st.integers(1, 40), max_size=10),
)
def test_link_replies_give_each_holder_its_frames(
    groups: list[list[RespValue]], resp3: bool, cuts: list[int]
) -> None:
    import trio

    from tunnel.holders import Item, Run
    from tunnel.upstream import Link

    async def run() -> None:
        proxy, session, up = _Proxy(), _Session(), _Upstream()
        link = Link(proxy, up, resp3)  # type: ignore[arg-type]
        holders: list[tuple[Item, bytes]] = []
        for group in groups:
            frames = [encode_value(v, resp3=resp3) for v in group]
            item = Item(session, b"x", 0, True, resp3)  # type: ignore[arg-type]
            if len(frames) > 1:
                item = Run(session, item, link)  # type: ignore[arg-type]
                item.expect = len(frames)
            link.pending.append(item)
            holders.append((item, b"".join(frames)))
        data = b"".join(expected for _, expected in holders)
        scanner = FrameScanner()
        position = 0
        for cut in [*cuts, len(data)]:
            chunk = data[position : position + cut]
            position += len(chunk)
            if chunk:
                assert link.replies(chunk, scanner)
        assert not link.pending
        for item, expected in holders:
            assert item.data == expected
        # and the node's statistics saw every frame and every error reply
        values = [v for group in groups for v in group]
        assert up.counters.ops == len(values)
        assert up.counters.errors == sum(isinstance(v, ErrorReply) for v in values)
        assert up.counters.bytes_out == len(data)

    trio.run(run)
