"""Property tests (hypothesis) for client.resp: round trips, chunking, scanner, garbage."""

from __future__ import annotations

import itertools
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resp_equality import same

from client.errors import RespProtocolError
from client.resp import (
    NEED_DATA,
    FrameScanner,
    RespParser,
    encode_command,
    encode_value,
    peek_command,
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

# max_examples comes from the active profile (a conftest may register a "ci" profile).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that may appear in a RESP line (simple string, error): anything but CR and LF.
line_bytes = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

# One strategy per RESP type.  Integers stay far below Python's 4300-digit int/str limit;
# doubles come from real floats (NaN and infinities included) and keep their text, so
# Double(b"nan") == Double(b"nan") even though nan != nan.
scalars: st.SearchStrategy[RespValue] = st.one_of(
    st.binary(max_size=30),  # bulk
    line_bytes.map(SimpleString),
    line_bytes.map(ErrorReply),
    st.binary(max_size=20).map(lambda b: ErrorReply(b, True)),  # blob error
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True).map(Double.from_float),
    st.integers(min_value=-(10**60), max_value=10**60).map(BigNumber),
    st.builds(Verbatim, st.binary(min_size=3, max_size=3), st.binary(max_size=20)),
)


def _aggregates(children: st.SearchStrategy[RespValue]) -> st.SearchStrategy[RespValue]:
    pairs = st.lists(st.tuples(children, children), max_size=4).map(RespMap)
    return st.one_of(
        st.lists(children, max_size=5),
        pairs,
        st.lists(children, max_size=5).map(RespSet),
        st.lists(children, max_size=5).map(Push),
        st.builds(Attributed, pairs, children),
    )


# Any RESP value, nested (st.recursive: leaves are scalars, branches every aggregate type,
# including attributes in any position).
resp_values: st.SearchStrategy[RespValue] = st.recursive(scalars, _aggregates, max_leaves=25)


def downgrade(v: RespValue) -> RespValue:
    """What a RESP2 encoding of ``v`` parses back to (the documented downgrade)."""
    if isinstance(v, Attributed):
        return downgrade(v.value)
    if isinstance(v, RespMap):
        return [downgrade(x) for key, val in v for x in (key, val)]
    if isinstance(v, list):  # list, RespSet, Push
        return [downgrade(x) for x in cast("list[RespValue]", v)]
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, BigNumber):
        return str(int(v)).encode()
    if isinstance(v, Double):
        return v.raw
    if isinstance(v, Verbatim):
        return v.text
    if isinstance(v, ErrorReply) and v.blob:
        return ErrorReply(v.message.replace(b"\r", b" ").replace(b"\n", b" "))
    return v


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def parse_chunks(chunks: list[bytes], **kwargs: Any) -> list[RespValue]:
    p = RespParser(**kwargs)
    out: list[RespValue] = []
    for chunk in chunks:
        p.feed(chunk)
        out.extend(p)
    p.feed_eof()
    assert p.next_value() is NEED_DATA
    assert p.buffered == 0
    return out


def scan_chunks(chunks: list[bytes], **kwargs: Any) -> list[bytes]:
    s = FrameScanner(**kwargs)
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        s.feed(chunk)
        if i % 2:
            out.extend(f.data for f in s.pop_frames())
        else:  # exercise both drain paths
            data, count = s.pop_complete()
            if count:
                q = FrameScanner(**kwargs)
                q.feed(data)
                frames = q.pop_frames()
                assert len(frames) == count
                out.extend(f.data for f in frames)
    out.extend(f.data for f in s.pop_frames())
    assert s.buffered == 0
    return out


@SETTINGS
@given(resp_values)
def test_round_trip_resp3(value: RespValue) -> None:
    p = RespParser()
    p.feed(encode_value(value))
    got = p.next_value()
    assert same(got, value), (got, value)
    assert p.buffered == 0


@SETTINGS
@given(resp_values)
def test_round_trip_resp2_downgrade(value: RespValue) -> None:
    wire = encode_value(value, resp3=False)
    p = RespParser()
    p.feed(wire)
    assert same(p.next_value(), downgrade(value))
    # RESP2 output uses only RESP2 types.
    s = FrameScanner()
    s.feed(wire)
    frame = s.next_frame()
    assert frame is not None
    assert frame.data == wire
    assert frame.kind in b"+-:$*"


@SETTINGS
@given(st.lists(resp_values, max_size=6), st.lists(st.integers(min_value=0), max_size=30))
def test_chunking_invariance(values: list[RespValue], cuts: list[int]) -> None:
    stream = b"".join(encode_value(v) for v in values)
    got = parse_chunks(chunked(stream, cuts))
    assert same(got, values)


@SETTINGS
@given(st.lists(resp_values, max_size=6), st.data())
def test_byte_by_byte_and_split_points(values: list[RespValue], data: st.DataObject) -> None:
    stream = b"".join(encode_value(v) for v in values)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) + 1))
    assert same(parse_chunks(chunked(stream, cuts)), values)
    if len(stream) < 400:
        assert same(parse_chunks([stream[i : i + 1] for i in range(len(stream))]), values)


@SETTINGS
@given(st.lists(resp_values, max_size=6), st.lists(st.integers(min_value=0), max_size=30))
def test_scanner_agrees_with_parser(values: list[RespValue], cuts: list[int]) -> None:
    frames = [encode_value(v) for v in values]
    stream = b"".join(frames)
    assert scan_chunks(chunked(stream, cuts)) == frames
    s = FrameScanner()
    s.feed(stream)
    kinds = [f.kind for f in s.pop_frames()]
    assert kinds == [f[0] for f in frames]


# Commands: arguments of every accepted type.
command_args = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.text(max_size=20),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
    ),
    min_size=1,
    max_size=8,
)


def expected_arg(a: bytes | str | int | float) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, int):
        return str(a).encode()
    return repr(a).encode()


# Inline commands: tokens that need no quoting, or quoted tokens with escapes.
inline_token = st.one_of(
    st.text(alphabet="abcXYZ019-_:{}", min_size=1, max_size=8).map(str.encode),
    st.binary(max_size=8).map(lambda b: (b'"' + b"".join(b"\\x%02x" % c for c in b) + b'"', b)),
)


@SETTINGS
@given(st.lists(command_args, max_size=6), st.lists(st.integers(min_value=0), max_size=20))
def test_encode_command_parses_back(commands: list[list[Any]], cuts: list[int]) -> None:
    wires = [encode_command(*c) for c in commands]
    stream = b"".join(wires)
    got = parse_chunks(chunked(stream, cuts), requests=True)
    assert got == [[expected_arg(a) for a in c] for c in commands]
    assert scan_chunks(chunked(stream, cuts), requests=True) == wires
    for wire, c in zip(wires, commands, strict=True):
        assert peek_command(wire) == [expected_arg(a) for a in c[:2]]


@SETTINGS
@given(
    st.lists(
        st.one_of(
            command_args.map(lambda c: ("bulk", c)),
            st.lists(inline_token, min_size=1, max_size=4).map(lambda t: ("inline", t)),
            st.sampled_from([b"\r\n", b"\n", b"   \n", b"*0\r\n", b"*-1\r\n"]).map(
                lambda b: ("skip", b)
            ),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_requests_mixed_inline(items: list[tuple[str, Any]], cuts: list[int]) -> None:
    wire = []
    expected: list[list[bytes]] = []
    frames: list[bytes] = []
    for kind, item in items:
        if kind == "bulk":
            w = encode_command(*item)
            expected.append([expected_arg(a) for a in item])
            frames.append(w)
        elif kind == "inline":
            toks = [t if isinstance(t, bytes) else t[0] for t in item]
            w = b" ".join(toks) + b"\r\n"
            expected.append([t if isinstance(t, bytes) else t[1] for t in item])
            frames.append(w)
        else:
            w = item
        wire.append(w)
    stream = b"".join(wire)
    assert parse_chunks(chunked(stream, cuts), requests=True) == expected
    assert scan_chunks(chunked(stream, cuts), requests=True) == frames
    for frame, args in zip(frames, expected, strict=True):
        assert peek_command(frame, 3) == args[:3]


# Garbage: random bytes, and valid streams with bytes flipped, cut or inserted.  RESP type
# bytes are over-represented so the garbage reaches deep into the parser.
resp_alphabet = st.sampled_from(list(b"+-:$*_,#(=%~>|!\r\n0123456789-tfx "))
garbage_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(resp_alphabet, max_size=200).map(bytes),
)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    values = draw(st.lists(resp_values, min_size=1, max_size=4))
    data = bytearray(b"".join(encode_value(v) for v in values))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] = draw(resp_alphabet)
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 5))]
        else:
            data[i:i] = draw(garbage_bytes)[:8]
    return bytes(data)


any_garbage = st.one_of(garbage_bytes, mutated_streams())

small_limits = st.fixed_dictionaries(
    {},
    optional={
        "max_bulk_len": st.integers(0, 50),
        "max_depth": st.integers(1, 4),
        "max_line_len": st.integers(16, 40),
    },
)


def drain_values(data: bytes, cuts: list[int], **kwargs: Any) -> tuple[list[RespValue], bool]:
    """Parse; return the values before any protocol error and whether one was raised."""
    p = RespParser(**kwargs)
    out: list[RespValue] = []
    try:
        for chunk in chunked(data, cuts):
            p.feed(chunk)
            out.extend(p)
        p.feed_eof()
        out.extend(p)
    except RespProtocolError:
        return out, True
    return out, False


def drain_frames(data: bytes, cuts: list[int], **kwargs: Any) -> tuple[list[bytes], bool]:
    s = FrameScanner(**kwargs)
    out: list[bytes] = []
    try:
        for chunk in chunked(data, cuts):
            s.feed(chunk)
            while (frame := s.next_frame()) is not None:
                out.append(frame.data)
    except RespProtocolError:
        return out, True
    return out, False


@SETTINGS
@given(any_garbage, st.lists(st.integers(min_value=0), max_size=10), small_limits, st.booleans())
def test_garbage_raises_only_protocol_errors(
    data: bytes, cuts: list[int], limits: dict[str, int], requests: bool
) -> None:
    values, failed = drain_values(data, cuts, requests=requests, **limits)
    frames, scan_failed = drain_frames(data, cuts, requests=requests, **limits)
    # The scanner checks framing only, so it accepts at least what the parser accepts, with the
    # same boundaries; each of those frames parses on its own to the same value.
    assert len(frames) >= len(values)
    if not failed:
        assert not scan_failed
    for frame, value in zip(frames, values, strict=False):
        p = RespParser(requests=requests, **limits)
        p.feed(frame)
        assert same(p.next_value(), value)
        assert p.buffered == 0
    # The same outcome whatever the chunking.
    values2, failed2 = drain_values(data, [], requests=requests, **limits)
    assert failed2 == failed
    assert same(values2, values)


@SETTINGS
@given(st.binary(max_size=64))
def test_peek_command_garbage(data: bytes) -> None:
    try:
        peek_command(data, 3)
    except RespProtocolError:
        pass
