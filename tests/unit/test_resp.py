"""Table-driven unit tests for client.resp (cases after hiredis's test_reader and the RESP3 spec).

Every parser case goes through :func:`tr` (h11 style): the whole buffer at once, one byte at a
time, and with trailing bytes of a partial frame that must stay buffered.  The frame scanner
runs on the same inputs and must report the same boundaries.
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Any

import pytest
from resp_equality import same

import client.resp as resp_module
from client.errors import RespProtocolError
from client.resp import (
    DEFAULT_MAX_BULK,
    MAX_AGGREGATE_LEN,
    NEED_DATA,
    Frame,
    FrameScanner,
    RespParser,
    encode_command,
    encode_commands,
    encode_value,
    peek_command,
    split_inline,
)
from client.values import (
    Attributed,
    BigNumber,
    Double,
    ErrorReply,
    Push,
    RespMap,
    RespSet,
    RespValue,
    SimpleString,
    Verbatim,
)


def drain(parser: RespParser) -> list[RespValue]:
    return list(parser)


def feed_in_chunks(obj: RespParser | FrameScanner, data: bytes, chunk: int) -> None:
    """Feed ``data`` in pieces of ``chunk`` bytes, draining after each piece."""
    for i in range(0, len(data), chunk):
        obj.feed(data[i : i + chunk])
        if isinstance(obj, RespParser):
            drain(obj)
        else:
            obj.pop_frames()


TRAILING = b"*2\r\n$1\r\na"  # a partial frame that must remain buffered


def tr(data: bytes, expected: list[Any], **kwargs: Any) -> None:
    """Parse ``data`` whole, byte by byte, and with trailing bytes; scan it the same ways."""
    # Whole buffer.
    p = RespParser(**kwargs)
    p.feed(data)
    got = drain(p)
    assert same(got, expected), got
    assert p.buffered == 0
    assert p.next_value() is NEED_DATA
    # One byte at a time, draining after every byte.
    p = RespParser(**kwargs)
    got = []
    for i in range(len(data)):
        p.feed(data[i : i + 1])
        got.extend(drain(p))
    assert same(got, expected), got
    assert p.buffered == 0
    # Trailing bytes stay buffered.
    if not kwargs.get("requests"):
        p = RespParser(**kwargs)
        p.feed(data + TRAILING)
        got = drain(p)
        assert same(got, expected), got
        assert p.next_value() is NEED_DATA
        assert 0 < p.buffered <= len(TRAILING)  # the open array header lives on the stack
        p.feed(b"\r\n:5\r\n")
        assert same(drain(p), [[b"a", 5]])
        p = RespParser(**kwargs)
        p.feed(data + b"$5\r\nhel")
        assert same(drain(p), expected)
        assert p.buffered == 7  # an incomplete scalar stays buffered as bytes
        p.feed(b"lo\r\n")
        assert drain(p) == [b"hello"]
    # The scanner agrees, whole and byte by byte.
    s = FrameScanner(**kwargs)
    s.feed(data + (b"" if kwargs.get("requests") else TRAILING))
    frames = s.pop_frames()
    assert len(frames) == len(expected)
    assert s.buffered == (0 if kwargs.get("requests") else len(TRAILING))
    for frame, value in zip(frames, expected, strict=True):
        q = RespParser(**kwargs)
        q.feed(frame.data)
        assert same(drain(q), [value])
        assert frame.kind == (
            frame.data[0] if frame.data[:1] == b"*" or not kwargs.get("requests") else 0
        )
    s = FrameScanner(**kwargs)
    frames = []
    for i in range(len(data)):
        s.feed(data[i : i + 1])
        frames.extend(s.pop_frames())
    assert len(frames) == len(expected)
    assert s.buffered == 0


# (id, wire bytes, expected values)
REPLY_CASES: list[tuple[str, bytes, list[Any]]] = [
    ("status", b"+OK\r\n", [SimpleString(b"OK")]),
    ("empty status", b"+\r\n", [SimpleString(b"")]),
    ("error", b"-ERR unknown command\r\n", [ErrorReply(b"ERR unknown command")]),
    ("integer", b":1000\r\n", [1000]),
    ("negative integer", b":-1\r\n", [-1]),
    ("int64 max", b":9223372036854775807\r\n", [9223372036854775807]),
    ("int64 min", b":-9223372036854775808\r\n", [-9223372036854775808]),
    ("bulk", b"$5\r\nhello\r\n", [b"hello"]),
    ("empty bulk", b"$0\r\n\r\n", [b""]),
    ("null bulk", b"$-1\r\n", [None]),
    ("binary bulk with CRLF inside", b"$4\r\n\r\n\r\n\r\n", [b"\r\n\r\n"]),
    ("null array", b"*-1\r\n", [None]),
    ("empty array", b"*0\r\n", [[]]),
    ("array", b"*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n", [[b"foo", b"bar"]]),
    (
        "nested arrays",
        b"*2\r\n*2\r\n$1\r\nA\r\n$1\r\nB\r\n*1\r\n:1\r\n",
        [[[b"A", b"B"], [1]]],
    ),
    ("deeply nested", b"*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n", [[[[[7]]]]]),
    ("null bulk in array", b"*3\r\n$-1\r\n$0\r\n\r\n*-1\r\n", [[None, b"", None]]),
    (
        "error in array",
        b"*2\r\n-ERR a\r\n$1\r\nb\r\n",
        [[ErrorReply(b"ERR a"), b"b"]],
    ),
    ("error in nested array", b"*1\r\n*1\r\n-ERR x\r\n", [[[ErrorReply(b"ERR x")]]]),
    ("pipeline", b"+OK\r\n:1\r\n$1\r\nx\r\n", [SimpleString(b"OK"), 1, b"x"]),
    ("resp3 null", b"_\r\n", [None]),
    ("double", b",3.14\r\n", [Double(b"3.14")]),
    ("double exponent", b",1e+100\r\n", [Double(b"1e+100")]),
    ("double inf", b",inf\r\n", [Double(b"inf")]),
    ("double -inf", b",-inf\r\n", [Double(b"-inf")]),
    ("double nan", b",nan\r\n", [Double(b"nan")]),
    ("true", b"#t\r\n", [True]),
    ("false", b"#f\r\n", [False]),
    (
        "big number",
        b"(3492890328409238509324850943850943825024385\r\n",
        [BigNumber(3492890328409238509324850943850943825024385)],
    ),
    ("negative big number", b"(-12\r\n", [BigNumber(-12)]),
    ("verbatim", b"=15\r\ntxt:Some string\r\n", [Verbatim(b"txt", b"Some string")]),
    ("empty verbatim", b"=4\r\nmkd:\r\n", [Verbatim(b"mkd", b"")]),
    (
        "blob error",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        [ErrorReply(b"SYNTAX invalid syntax", True)],
    ),
    (
        "map",
        b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
        [RespMap([(SimpleString(b"first"), 1), (SimpleString(b"second"), 2)])],
    ),
    ("empty map", b"%0\r\n", [RespMap()]),
    ("map with array key", b"%1\r\n*1\r\n:1\r\n_\r\n", [RespMap([([1], None)])]),
    ("set", b"~3\r\n+a\r\n:1\r\n#f\r\n", [RespSet([SimpleString(b"a"), 1, False])]),
    ("empty set", b"~0\r\n", [RespSet()]),
    (
        "push",
        b">4\r\n+pubsub\r\n+message\r\n+somechannel\r\n+this is the message\r\n",
        [
            Push(
                [
                    SimpleString(s)
                    for s in (b"pubsub", b"message", b"somechannel", b"this is the message")
                ]
            )
        ],
    ),
    (
        "attribute (spec example)",
        b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n"
        b"*2\r\n:2039123\r\n:9543892\r\n",
        [
            Attributed(
                RespMap(
                    [
                        (
                            SimpleString(b"key-popularity"),
                            RespMap([(b"a", Double(b"0.1923")), (b"b", Double(b"0.0012"))]),
                        )
                    ]
                ),
                [2039123, 9543892],
            )
        ],
    ),
    (
        "attribute inside array counts as one element",
        b"*2\r\n|1\r\n+ttl\r\n:3600\r\n:2\r\n:3\r\n",
        [[Attributed(RespMap([(SimpleString(b"ttl"), 3600)]), 2), 3]],
    ),
    ("empty attribute", b"|0\r\n:1\r\n", [Attributed(RespMap(), 1)]),
    (
        "attribute on attribute",
        b"|0\r\n|0\r\n+x\r\n",
        [Attributed(RespMap(), Attributed(RespMap(), SimpleString(b"x")))],
    ),
    (
        "push after reply",
        b"+OK\r\n>2\r\n+a\r\n:1\r\n",
        [SimpleString(b"OK"), Push([SimpleString(b"a"), 1])],
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in REPLY_CASES], ids=[c[0] for c in REPLY_CASES]
)
def test_reply_cases(data: bytes, expected: list[Any]) -> None:
    tr(data, expected)


# (id, wire bytes, message fragment, parser kwargs)
REPLY_ERRORS: list[tuple[str, bytes, str, dict[str, Any]]] = [
    ("unknown type byte", b"?hello\r\n", "unknown reply type byte '?'", {}),
    ("unknown control byte", b"\x00\r\n", "unknown reply type byte 0x00", {}),
    ("empty line", b"\r\n", "unknown reply type", {}),
    ("bulk over limit", b"$11\r\nhello world\r\n", "exceeds the limit of 10", {"max_bulk_len": 10}),
    ("bulk over default limit", b"$%d\r\n" % (DEFAULT_MAX_BULK + 1), "exceeds the limit", {}),
    ("negative bulk length", b"$-2\r\n", "negative bulk length -2", {}),
    ("garbage bulk length", b"$abc\r\n", "invalid bulk length", {}),
    ("spaced bulk length", b"$ 3\r\nabc\r\n", "invalid bulk length", {}),
    ("plus-signed bulk length", b"$+3\r\nabc\r\n", "invalid bulk length", {}),
    ("empty bulk length", b"$\r\n", "invalid bulk length", {}),
    ("huge bulk length digits", b"$" + b"9" * 40 + b"\r\n", "too large", {}),
    ("bulk without CRLF", b"$3\r\nabcXY", "not terminated by CRLF", {}),
    ("negative array length", b"*-2\r\n", "negative aggregate length", {}),
    ("garbage array length", b"*x\r\n", "invalid aggregate length", {}),
    ("aggregate over bound", b"*%d\r\n" % (MAX_AGGREGATE_LEN + 1), "exceeds", {}),
    ("null attribute", b"|-1\r\n", "aggregate length", {}),
    ("depth", b"*1\r\n" * 3 + b":1\r\n", "nested deeper than 2", {"max_depth": 2}),
    ("depth via attribute", b"|0\r\n|0\r\n|0\r\n:1\r\n", "nested deeper than 2", {"max_depth": 2}),
    ("depth default", b"*1\r\n" * 65 + b":1\r\n", "nested deeper than 64", {}),
    ("integer garbage", b":12a\r\n", "invalid integer", {}),
    ("integer with space", b": 12\r\n", "invalid integer", {}),
    ("integer underscore", b":1_000\r\n", "invalid integer", {}),
    ("empty integer", b":\r\n", "invalid integer", {}),
    ("bad boolean", b"#x\r\n", "invalid boolean", {}),
    ("bad double", b",abc\r\n", "invalid double", {}),
    ("double with space", b", 1.5\r\n", "invalid double", {}),
    ("null with payload", b"_x\r\n", "null", {}),
    ("big number garbage", b"(12x\r\n", "invalid big number", {}),
    ("verbatim without format", b"=3\r\nabc\r\n", "verbatim", {}),
    ("verbatim bad separator", b"=5\r\ntxtxa\r\n", "verbatim", {}),
    ("line too long", b"+" + b"a" * 100 + b"\r\n", "longer than 64 bytes", {"max_line_len": 64}),
    ("line too long, no CRLF", b"+" + b"a" * 100, "longer than 64 bytes", {"max_line_len": 64}),
    ("header too long", b"$" + b"1" * 100, "longer than 64 bytes", {"max_line_len": 64}),
    ("error inside array after values", b"*3\r\n:1\r\n:2\r\n?\r\n", "unknown reply type", {}),
]


@pytest.mark.parametrize(
    ("data", "message", "kwargs"),
    [c[1:] for c in REPLY_ERRORS],
    ids=[c[0] for c in REPLY_ERRORS],
)
def test_reply_errors(data: bytes, message: str, kwargs: dict[str, Any]) -> None:
    for chunk in (len(data), 1, 3):
        p = RespParser(**kwargs)
        with pytest.raises(RespProtocolError, match=re.escape(message)):
            feed_in_chunks(p, data, chunk)
        # The parser is poisoned: the same error again, whatever comes next.
        p.feed(b"+OK\r\n")
        with pytest.raises(RespProtocolError, match=re.escape(message)):
            p.next_value()


SCANNER_LENIENT = {
    "integer garbage",
    "integer with space",
    "integer underscore",
    "empty integer",
    "bad boolean",
    "bad double",
    "double with space",
    "big number garbage",
}


@pytest.mark.parametrize(
    ("data", "message", "kwargs"),
    [c[1:] for c in REPLY_ERRORS if c[0] not in SCANNER_LENIENT],
    ids=[c[0] for c in REPLY_ERRORS if c[0] not in SCANNER_LENIENT],
)
def test_scanner_errors(data: bytes, message: str, kwargs: dict[str, Any]) -> None:
    for chunk in (len(data), 1):
        s = FrameScanner(**kwargs)
        with pytest.raises(RespProtocolError):
            feed_in_chunks(s, data, chunk)
        with pytest.raises(RespProtocolError):
            s.next_frame()


def test_scanner_does_not_validate_scalar_contents() -> None:
    s = FrameScanner()
    s.feed(b":12a\r\n#x\r\n")
    assert [f.data for f in s.pop_frames()] == [b":12a\r\n", b"#x\r\n"]


def test_line_limit_boundary() -> None:
    ok = b"+" + b"a" * 63 + b"\r\n"  # 64 bytes before CRLF: allowed with max_line_len=64
    tr(ok, [SimpleString(b"a" * 63)], max_line_len=64)
    p = RespParser(max_line_len=64)
    p.feed(b"+" + b"a" * 64 + b"\r\n")
    with pytest.raises(RespProtocolError):
        p.next_value()


def test_line_limit_triggers_without_newline() -> None:
    """A line that never ends is refused once it is provably too long (bounded memory)."""
    p = RespParser(max_line_len=64)
    for _ in range(65):
        p.feed(b"+")
        if p.buffered > 65:
            break
        assert p.next_value() is NEED_DATA
    p.feed(b"a")
    with pytest.raises(RespProtocolError, match="longer than 64"):
        p.next_value()


def test_feed_eof() -> None:
    p = RespParser()
    p.feed(b"+OK\r\n")
    p.feed_eof()
    assert same(p.next_value(), SimpleString(b"OK"))
    assert p.next_value() is NEED_DATA  # clean EOF between replies
    for partial in (b"$5\r\nhel", b"*2\r\n:1\r\n", b"+O", b"|1\r\n"):
        p = RespParser()
        p.feed(partial)
        assert p.next_value() is NEED_DATA
        p.feed_eof()
        with pytest.raises(RespProtocolError, match="connection closed mid-reply"):
            p.next_value()
    p = RespParser(requests=True)
    p.feed(b"*1\r\n$4\r\nPI")
    p.feed_eof()
    with pytest.raises(RespProtocolError, match="connection closed mid-command"):
        p.next_value()


def test_feed_copies_mutable_input() -> None:
    data = bytearray(b"$3\r\nabc\r\n")
    p = RespParser()
    p.feed(data[:5])
    p.feed(memoryview(data)[5:])
    data[4:7] = b"XYZ"
    assert p.next_value() == b"abc"


def test_iteration_and_values() -> None:
    p = RespParser()
    p.feed(b":1\r\n:2\r\n:3")
    assert list(p.values()) == [1, 2]
    p.feed(b"\r\n")
    assert list(p) == [3]


def test_huge_bulk_in_tiny_chunks_is_gated() -> None:
    """While a bulk is incomplete, feeding only queues chunks: nothing is merged or rescanned."""
    size = 1 << 20
    p = RespParser()
    p.feed(b"$%d\r\n" % size)
    assert p.next_value() is NEED_DATA
    payload = bytes(range(256)) * (size // 256)
    for i in range(0, size, 1000):
        p.feed(payload[i : i + 1000])
        assert p.next_value() is NEED_DATA
        assert len(p._buf) < 64  # still just the header: the chunks wait, unmerged
    p.feed(b"\r\n")
    assert p.next_value() == payload


def test_long_array_releases_consumed_bytes() -> None:
    """Elements of an open aggregate are parsed as they arrive; their bytes are released."""
    n = 20000
    data = b"*%d\r\n" % n + b"$3\r\nabc\r\n" * n
    p = RespParser()
    for i in range(0, len(data), 7):
        p.feed(data[i : i + 7])
        value = p.next_value()
        assert p.buffered < 16 + 7
    assert value == [b"abc"] * n


def test_scanner_long_frame_in_chunks() -> None:
    n = 20000
    data = b"*%d\r\n" % n + b"$3\r\nabc\r\n" * n
    s = FrameScanner()
    frames: list[Frame] = []
    for i in range(0, len(data), 5):
        s.feed(data[i : i + 5])
        frames.extend(s.pop_frames())
        assert len(s._buf) - s._pos < 32  # scanned bytes moved out; only the tail is kept
    assert len(frames) == 1
    assert frames[0].data == data
    assert frames[0].kind == ord("*")


def test_scanner_pop_complete() -> None:
    stream = b"+OK\r\n$3\r\nabc\r\n*1\r\n:1\r\n*2\r\n:1"
    s = FrameScanner()
    s.feed(stream[:7])
    assert s.pop_complete() == (b"+OK\r\n", 1)
    s.feed(stream[7:])
    assert s.pop_complete() == (b"$3\r\nabc\r\n*1\r\n:1\r\n", 2)
    assert s.pop_complete() == (b"", 0)
    assert s.buffered == len(b"*2\r\n:1")
    s.feed(b"\r\n:2\r\n")
    assert s.pop_complete() == (b"*2\r\n:1\r\n:2\r\n", 1)
    assert s.buffered == 0


def test_scanner_buffered_counts_frame_in_progress() -> None:
    s = FrameScanner()
    s.feed(b"*3\r\n:1\r\n")
    assert s.next_frame() is None
    s.feed(b":2\r\n")
    assert s.next_frame() is None
    assert s.buffered == 12
    s.feed(b":3\r\n+x")
    frame = s.next_frame()
    assert frame == Frame(b"*3\r\n:1\r\n:2\r\n:3\r\n", ord("*"))
    assert s.buffered == 2


# ------------------------------------------------------------------------------------------
# Requests mode (server side)

REQUEST_CASES: list[tuple[str, bytes, list[Any]]] = [
    ("multibulk", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", [[b"SET", b"k", b"v"]]),
    ("binary arg", b"*2\r\n$3\r\nGET\r\n$2\r\n\r\n\r\n", [[b"GET", b"\r\n"]]),
    ("empty arg", b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [[b"ECHO", b""]]),
    ("pipeline", b"*1\r\n$4\r\nPING\r\n" * 3, [[b"PING"]] * 3),
    ("empty multibulk skipped", b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    ("inline", b"PING\r\n", [[b"PING"]]),
    ("inline LF only", b"SET a b\n", [[b"SET", b"a", b"b"]]),
    ("inline blanks skipped", b"\r\n\n   \r\nPING\n", [[b"PING"]]),
    ("inline extra spaces", b"  GET   foo  \r\n", [[b"GET", b"foo"]]),
    ("inline double quotes", b'SET "a b" "c\\"d"\r\n', [[b"SET", b"a b", b'c"d']]),
    ("inline escapes", b'SET k "\\x41\\n\\t\\r\\b\\a\\q"\r\n', [[b"SET", b"k", b"A\n\t\r\b\x07q"]]),
    ("inline single quotes", b"SET k 'it\\'s \"x\"'\r\n", [[b"SET", b"k", b'it\'s "x"']]),
    ("inline empty quoted", b'SET k ""\r\n', [[b"SET", b"k", b""]]),
    ("inline quote mid-token", b'ab"c d"e\r\n'[:0] + b'ab"c d" e\r\n', [[b"abc d", b"e"]]),
    ("inline vertical tab inside token", b"a\x0bb c\r\n", [[b"a\x0bb", b"c"]]),
    ("inline bad hex is literal", b'SET k "\\xZZ"\r\n', [[b"SET", b"k", b"xZZ"]]),
    ("inline then multibulk", b"PING\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"], [b"PING"]]),
    ("inline starting with plus", b"+OK\r\n", [[b"+OK"]]),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_request_cases(data: bytes, expected: list[Any]) -> None:
    tr(data, expected, requests=True)


REQUEST_ERRORS: list[tuple[str, bytes, str]] = [
    ("simple string element", b"*1\r\n+OK\r\n", "expected '$', got '+'"),
    ("integer element", b"*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$', got ':'"),
    ("nested array", b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
    ("null bulk arg", b"*1\r\n$-1\r\n", "negative bulk length -1"),
    ("bad count", b"*x\r\n", "invalid multibulk length"),
    ("bulk over limit", b"*1\r\n$%d\r\n" % (DEFAULT_MAX_BULK + 1), "exceeds the limit"),
    ("bulk without CRLF", b"*1\r\n$1\r\naXY", "not terminated by CRLF"),
    ("unbalanced double quote", b'SET "a\r\n', "unbalanced quotes"),
    ("unbalanced single quote", b"SET 'a\r\n", "unbalanced quotes"),
    ("closing quote then text", b'SET "a"b\r\n', "unbalanced quotes"),
    ("inline too long", b"A" * 70000, "longer than 65536"),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in REQUEST_ERRORS], ids=[c[0] for c in REQUEST_ERRORS]
)
def test_request_errors(data: bytes, message: str) -> None:
    for chunk in (len(data), 1):
        p = RespParser(requests=True)
        with pytest.raises(RespProtocolError, match=re.escape(message)):
            feed_in_chunks(p, data, chunk)
        s = FrameScanner(requests=True)
        with pytest.raises(RespProtocolError, match=re.escape(message)):
            feed_in_chunks(s, data, chunk)


def test_request_next_command() -> None:
    p = RespParser(requests=True)
    p.feed(b"GET x\r\n")
    assert p.next_command() == [b"GET", b"x"]
    assert p.next_command() is NEED_DATA
    with pytest.raises(TypeError):
        RespParser().next_command()


def test_request_scanner_kinds() -> None:
    s = FrameScanner(requests=True)
    s.feed(b"PING\r\n\r\n*0\r\n*1\r\n$4\r\nPING\r\nGET 'x'\n")
    frames = s.pop_frames()
    assert frames == [
        Frame(b"PING\r\n", 0),
        Frame(b"*1\r\n$4\r\nPING\r\n", ord("*")),
        Frame(b"GET 'x'\n", 0),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"", []),
        (b"   ", []),
        (b"a b", [b"a", b"b"]),
        (b'"a\\x4a"', [b"aJ"]),
        (b'"\\x4"', [b"x4"]),
        (b'"a', None),
        (b"'a", None),
        (b'"a"b', None),
        (b"'a'b", None),
        (b"a\0b c", [b"a"]),  # C string semantics: NUL ends the line
        (b'"\\', None),
        (b"'\\n'", [b"\\n"]),
        (b"\t\x0b a\x0c\x0bb ", [b"a\x0c\x0bb"]),  # \v \f separate only between args
    ],
)
def test_split_inline(line: bytes, expected: list[bytes] | None) -> None:
    assert split_inline(line) == expected


@pytest.mark.parametrize(
    ("frame", "n", "expected"),
    [
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", 2, [b"SET", b"k"]),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", 5, [b"SET", b"k", b"v"]),
        (b"*1\r\n$4\r\nPING\r\n", 2, [b"PING"]),
        (b"*2\r\n$3\r\nGET\r\n$2\r\n\r\n\r\n", 2, [b"GET", b"\r\n"]),
        (b"get   foo bar\r\n", 2, [b"get", b"foo"]),
        (b"get 'a b'\n", 3, [b"get", b"a b"]),
        (b"*3\r\n$3\r\nSET\r\n", 1, [b"SET"]),  # only what is asked for must be present
    ],
)
def test_peek_command(frame: bytes, n: int, expected: list[bytes]) -> None:
    assert peek_command(frame, n) == expected


@pytest.mark.parametrize(
    "frame", [b"*2\r\n$3\r\nSET\r\n", b"*x\r\n", b"*1\r\n:1\r\n", b"*1\r\n$9\r\nab\r\n", b'"a\r\n']
)
def test_peek_command_malformed(frame: bytes) -> None:
    with pytest.raises(RespProtocolError):
        peek_command(frame, 3)


# ------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize(
    ("args", "wire"),
    [
        ((b"PING",), b"*1\r\n$4\r\nPING\r\n"),
        (("SET", "k", "vé"), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\xc3\xa9\r\n"),
        (("EXPIRE", b"k", 10), b"*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n10\r\n"),
        (("INCRBYFLOAT", "k", 1.5), b"*3\r\n$11\r\nINCRBYFLOAT\r\n$1\r\nk\r\n$3\r\n1.5\r\n"),
        (
            ("ZADD", "z", float("inf"), "m"),
            b"*4\r\n$4\r\nZADD\r\n$1\r\nz\r\n$3\r\ninf\r\n$1\r\nm\r\n",
        ),
        ((memoryview(b"ab"), bytearray(b"c")), b"*2\r\n$2\r\nab\r\n$1\r\nc\r\n"),
        ((), b"*0\r\n"),
        ((b"",), b"*1\r\n$0\r\n\r\n"),
    ],
)
def test_encode_command(args: tuple[Any, ...], wire: bytes) -> None:
    assert encode_command(*args) == wire


def test_encode_command_big_arg_and_refusals() -> None:
    big = b"x" * 100_000
    assert (
        encode_command("SET", "k", big)
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + big + b"\r\n"
    )
    with pytest.raises(TypeError):
        encode_command("SET", "k", True)
    with pytest.raises(TypeError):
        encode_command("SET", "k", None)  # type: ignore[arg-type]


def test_encode_commands() -> None:
    assert encode_commands([["PING"], ("GET", b"k")]) == encode_command("PING") + encode_command(
        "GET", "k"
    )


# (value, resp3 wire, resp2 wire)
ENCODE_CASES: list[tuple[Any, bytes, bytes]] = [
    (b"abc", b"$3\r\nabc\r\n", b"$3\r\nabc\r\n"),
    (SimpleString(b"OK"), b"+OK\r\n", b"+OK\r\n"),
    (ErrorReply(b"ERR x"), b"-ERR x\r\n", b"-ERR x\r\n"),
    (ErrorReply(b"ERR a\r\nb", True), b"!8\r\nERR a\r\nb\r\n", b"-ERR a  b\r\n"),
    (5, b":5\r\n", b":5\r\n"),
    (None, b"_\r\n", b"$-1\r\n"),
    (True, b"#t\r\n", b":1\r\n"),
    (False, b"#f\r\n", b":0\r\n"),
    (Double(b"1.5"), b",1.5\r\n", b"$3\r\n1.5\r\n"),
    (BigNumber(10**30), b"(" + b"1" + b"0" * 30 + b"\r\n", b"$31\r\n1" + b"0" * 30 + b"\r\n"),
    (Verbatim(b"txt", b"hi"), b"=6\r\ntxt:hi\r\n", b"$2\r\nhi\r\n"),
    ([1, [b"a"]], b"*2\r\n:1\r\n*1\r\n$1\r\na\r\n", b"*2\r\n:1\r\n*1\r\n$1\r\na\r\n"),
    (RespMap([(b"k", 1)]), b"%1\r\n$1\r\nk\r\n:1\r\n", b"*2\r\n$1\r\nk\r\n:1\r\n"),
    (RespSet([1]), b"~1\r\n:1\r\n", b"*1\r\n:1\r\n"),
    (Push([b"m"]), b">1\r\n$1\r\nm\r\n", b"*1\r\n$1\r\nm\r\n"),
    (Attributed(RespMap([(b"a", 1)]), 2), b"|1\r\n$1\r\na\r\n:1\r\n:2\r\n", b":2\r\n"),
    ([None], b"*1\r\n_\r\n", b"*1\r\n$-1\r\n"),
]


@pytest.mark.parametrize(("value", "wire3", "wire2"), ENCODE_CASES)
def test_encode_value(value: Any, wire3: bytes, wire2: bytes) -> None:
    assert encode_value(value) == wire3
    assert encode_value(value, resp3=False) == wire2
    p = RespParser()
    p.feed(wire3)
    assert same(p.next_value(), value)


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (SimpleString(b"a\r\nb"), ValueError),
        (ErrorReply(b"ERR\n"), ValueError),
        (Verbatim(b"text", b"x"), ValueError),
        (object(), TypeError),
        ({1: 2}, TypeError),
    ],
)
def test_encode_value_refusals(value: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        encode_value(value)


def test_encode_value_conveniences() -> None:
    assert encode_value("é") == b"$2\r\n\xc3\xa9\r\n"  # type: ignore[arg-type]
    assert encode_value(1.5) == b",1.5\r\n"  # type: ignore[arg-type]
    assert encode_value((1, 2)) == b"*2\r\n:1\r\n:2\r\n"  # type: ignore[arg-type]
    assert encode_value(bytearray(b"x")) == b"$1\r\nx\r\n"  # type: ignore[arg-type]


def test_resp_module_is_pure() -> None:
    """resp.py is sans-IO: it must not import trio, anyio, socket or ssl."""
    tree = ast.parse(pathlib.Path(resp_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "anyio", "socket", "ssl", "asyncio"}


def test_batch_drains_return_good_items_before_an_error() -> None:
    stream = b"+OK\r\n:1\r\n?bad\r\n"
    p = RespParser()
    p.feed(stream)
    assert same(p.pop_values(), [SimpleString(b"OK"), 1])
    with pytest.raises(RespProtocolError, match="unknown reply type"):
        p.pop_values()
    s = FrameScanner()
    s.feed(stream)
    assert [f.data for f in s.pop_frames()] == [b"+OK\r\n", b":1\r\n"]
    with pytest.raises(RespProtocolError, match="unknown reply type"):
        s.pop_frames()
    s = FrameScanner()
    s.feed(stream)
    assert s.pop_complete() == (b"+OK\r\n:1\r\n", 2)
    with pytest.raises(RespProtocolError):
        s.pop_complete()
    # The iterator yields the good values, then raises.
    p = RespParser()
    p.feed(stream)
    it = iter(p)
    assert same([next(it), next(it)], [SimpleString(b"OK"), 1])
    with pytest.raises(RespProtocolError):
        next(it)


def test_next_value_and_pop_values_mix() -> None:
    p = RespParser()
    p.feed(b":1\r\n:2\r\n+OK\r\n$1")
    assert p.next_value() == 1
    assert same(p.pop_values(), [2, SimpleString(b"OK")])
    assert p.pop_values() == []
    p.feed(b"\r\nx\r\n")
    assert p.next_value() == b"x"
    assert p.buffered == 0


def test_eof_with_batch_drain() -> None:
    p = RespParser()
    p.feed(b":1\r\n:2")
    p.feed_eof()
    assert p.pop_values() == [1]
    with pytest.raises(RespProtocolError, match="connection closed mid-reply"):
        p.pop_values()
