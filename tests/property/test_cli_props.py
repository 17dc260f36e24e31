"""Properties of client.cliformat, checked against the real redis-cli where it matters.

* quoting round trip: any list of byte strings, quoted and joined, splits back into itself;
* splitting is total: any bytes give a list or an ArgumentError, never anything else;
* formatting is total: any RESP3 value renders, in both modes, without raising (pushes too);
* read-your-writes (client.shell.Affinity): whatever the command sequence, a read right after
  a write, inside MULTI or after WATCH is kept on the master, and reads never change that;
* agreement with redis-cli on arbitrary replies: a tiny canned-reply server hands a generated
  reply to the real ``redis-cli`` (typed and raw), and our rendering must be byte-identical;
* agreement with redis-cli on values stored in a real redis-server and read back (RESP2 and
  RESP3), fetched by our own connection and by redis-cli.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import redis_py, require_redis

from client.cliformat import ArgumentError, format_push, format_reply, join_args, split_line
from client.commands import CommandTable
from client.connection import open_connection
from client.embedded import RedisNode, find_redis_cli
from client.options import ServerOptions
from client.shell import Affinity
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

# --- strategies -----------------------------------------------------------------------------

# A line of a simple string or error: any bytes but CR and LF.
_line = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# hiredis accepts inf, -inf and finite strtod() text; redis-cli prints the server's text.
_double = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Double(repr(f).encode())),
    st.sampled_from([Double(b"inf"), Double(b"-inf"), Double(b"1"), Double(b"-0.5e-3")]),
)
_verbatim = st.builds(Verbatim, st.sampled_from([b"txt", b"mkd"]), st.binary(max_size=20))

# What redis-cli 7.0 (through hiredis) can parse and print: everything but big numbers,
# attributes and blob errors, which make it exit with "Unknown reply type" / "Protocol error".
_cli_scalars: st.SearchStrategy[RespValue] = st.one_of(
    st.binary(max_size=24),
    _line.map(SimpleString),
    _line.map(ErrorReply),
    _int64,
    st.none(),
    st.booleans(),
    _double,
    _verbatim,
)


def _aggregates(children: st.SearchStrategy[RespValue]) -> st.SearchStrategy[RespValue]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(RespSet),
        st.lists(st.tuples(children, children), max_size=3).map(RespMap),
        st.lists(children, max_size=3).map(Push),
    )


# Recursive RESP values as redis-cli sees them; max_leaves keeps the nesting well under hiredis'
# depth limit (7) and the output small.
cli_values = st.recursive(_cli_scalars, _aggregates, max_leaves=12)

# Every RESP3 value our model can hold, including NULs and the types redis-cli 7.0 lacks.
_all_scalars: st.SearchStrategy[RespValue] = st.one_of(
    _cli_scalars,
    st.integers().map(BigNumber),
    st.builds(ErrorReply, st.binary(max_size=20), st.booleans()),
    st.binary(max_size=10).map(SimpleString),
    st.binary(max_size=10).map(lambda raw: Double(raw)),
    st.builds(Verbatim, st.binary(max_size=4), st.binary(max_size=10)),
)


def _all_aggregates(children: st.SearchStrategy[RespValue]) -> st.SearchStrategy[RespValue]:
    pairs = st.lists(st.tuples(children, children), max_size=3).map(RespMap)
    return st.one_of(_aggregates(children), st.builds(Attributed, pairs, children))


all_values = st.recursive(_all_scalars, _all_aggregates, max_leaves=25)


# --- pure properties ------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=30), max_size=8))
def test_quoting_round_trip(args: list[bytes]) -> None:
    assert split_line(join_args(args).encode()) == args


@given(st.binary(max_size=60))
def test_split_line_is_total(line: bytes) -> None:
    try:
        args = split_line(line)
    except ArgumentError:
        return
    assert all(isinstance(a, bytes) for a in args)


@given(all_values)
def test_format_reply_is_total(value: RespValue) -> None:
    typed = format_reply(value, raw=False)
    raw = format_reply(value, raw=True)
    assert typed.endswith(b"\n")
    assert raw.endswith(b"\n")
    assert isinstance(format_reply(value, raw=True, verbatim=True), bytes)


@given(all_values)
def test_format_push_is_total(value: RespValue) -> None:
    for raw in (False, True):
        assert format_push(Push([b"invalidate", value]), raw=raw).endswith(b"\n")
        assert format_push(value, raw=raw).endswith(b"\n")


_SESSION_LINES = [
    b"GET k",
    b"MGET k j",
    b"SCAN 0",
    b"SET k v",
    b"DEL k",
    b"EVAL x 1 k",
    b"FLUSHALL",
    b"PING",
    b"INFO",
    b"MULTI",
    b"EXEC",
    b"DISCARD",
    b"WATCH k",
    b"UNWATCH",
]


@given(st.lists(st.tuples(st.sampled_from(_SESSION_LINES), st.booleans()), max_size=30))
def test_reads_after_writes_stay_on_the_master(commands: list[tuple[bytes, bool]]) -> None:
    table = CommandTable.bundled()
    affinity = Affinity()
    in_multi = watching = False
    for line, ok in commands:
        args = split_line(line)
        spec = table.lookup(args)
        assert spec is not None
        before = affinity.master_reason()
        affinity.record(args[0].lower(), spec, bool(table.key_indexes(args)), ok)
        name = args[0].lower()
        in_multi = (in_multi or (name == b"multi" and ok)) and name not in (b"exec", b"discard")
        watching = (watching or (name == b"watch" and ok)) and name not in (
            b"exec",
            b"discard",
            b"unwatch",
        )
        reason = affinity.master_reason()
        if spec.readonly:
            assert reason == before  # a read never opens or closes a window
        if spec.write:
            assert reason is not None  # the next read sees this write
        if in_multi:
            assert reason == "in MULTI"
        elif watching:
            assert reason == "after WATCH"
        assert affinity.in_multi == in_multi


# --- agreement with redis-cli on arbitrary replies --------------------------------------------


def encode(value: RespValue) -> bytes:
    """RESP3 bytes for a value (independent of client.resp, on purpose)."""
    if isinstance(value, SimpleString):
        return b"+" + value + b"\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return b"_\r\n"
    if isinstance(value, bool):
        return b"#t\r\n" if value else b"#f\r\n"
    if isinstance(value, BigNumber):
        return b"(%d\r\n" % value
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, ErrorReply):
        if value.blob:
            return b"!%d\r\n%s\r\n" % (len(value.message), value.message)
        return b"-" + value.message + b"\r\n"
    if isinstance(value, Double):
        return b"," + value.raw + b"\r\n"
    if isinstance(value, Verbatim):
        body = value.format + b":" + value.text
        return b"=%d\r\n%s\r\n" % (len(body), body)
    if isinstance(value, Attributed):
        return encode_pairs(b"|", value.attributes) + encode(value.value)
    if isinstance(value, RespMap):
        return encode_pairs(b"%", value)
    head = b"~" if isinstance(value, RespSet) else b">" if isinstance(value, Push) else b"*"
    return head + b"%d\r\n" % len(value) + b"".join(encode(v) for v in value)


def encode_pairs(head: bytes, pairs: list[tuple[RespValue, RespValue]]) -> bytes:
    return head + b"%d\r\n" % len(pairs) + b"".join(encode(k) + encode(v) for k, v in pairs)


class CannedServer:
    """Answers every command with :attr:`payload` (a RESP3 reply): a renderer test bench.

    This is not a stand-in for Redis: it only lets the real redis-cli render replies a real
    server would rarely produce (deep maps, NUL bytes in status lines...). It speaks just
    enough to serve one command per connection.
    """

    def __init__(self) -> None:
        self.payload = b"+OK\r\n"
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    data = b""
                    while not data.endswith(b"\r\n") or data.count(b"\r\n") < 3:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(self.payload)
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def canned() -> Iterator[CannedServer]:
    require_redis()
    server = CannedServer()
    yield server
    server.close()


def redis_cli_output(port: int, *flags: str) -> bytes:
    done = subprocess.run(
        [find_redis_cli(), "-p", str(port), *flags, "X"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cli_values.filter(lambda v: not isinstance(v, Push)))
def test_rendering_agrees_with_redis_cli(canned: CannedServer, value: RespValue) -> None:
    # A top-level push is out-of-band for redis-cli (it would wait for the real reply).
    canned.payload = encode(value)
    assert format_reply(value, raw=False) == redis_cli_output(canned.port, "--no-raw")
    assert format_reply(value, raw=True) == redis_cli_output(canned.port, "--raw")


def test_doubles_keep_the_server_text(canned: CannedServer) -> None:
    for text in (b"3.0", b"1e+300", b"-inf", repr(math.pi).encode()):
        canned.payload = b"," + text + b"\r\n"
        assert redis_cli_output(canned.port, "--no-raw") == b"(double) " + text + b"\n"
        assert format_reply(Double(text), raw=False) == b"(double) " + text + b"\n"


# --- agreement with redis-cli on values stored in a real server ---------------------------------

# What gets stored: a string, a hash, a list and a sorted set of arbitrary bytes and scores.
_stored = st.fixed_dictionaries(
    {
        "string": st.binary(max_size=40),
        "hash": st.dictionaries(st.binary(max_size=12), st.binary(max_size=20), max_size=5),
        "list": st.lists(st.binary(max_size=20), max_size=5),
        "zset": st.dictionaries(
            st.binary(max_size=12),
            st.floats(allow_nan=False, min_value=-1e300, max_value=1e300) | st.just(math.inf),
            max_size=4,
        ),
    }
)
_READS = [
    [b"GET", b"prop:string"],
    [b"HGETALL", b"prop:hash"],
    [b"LRANGE", b"prop:list", b"0", b"-1"],
    [b"ZRANGE", b"prop:zset", b"0", b"-1", b"WITHSCORES"],
    [b"HMGET", b"prop:hash", b"", b"nope"],
    [b"MGET", b"prop:string", b"prop:none"],
]


def _ours(node: RedisNode, protocol: int, raw: bool) -> bytes:
    async def fetch() -> bytes:
        opts = ServerOptions(host=node.host, port=node.port)
        async with open_connection(opts, protocol=protocol) as conn:
            replies = await conn.pipeline(_READS)
        return b"".join(format_reply(r, raw=raw) for r in replies)

    return trio.run(fetch)


def _theirs(node: RedisNode, protocol: int, raw: bool) -> bytes:
    flags = ["-3"] if protocol == 3 else []
    flags.append("--raw" if raw else "--no-raw")
    done = subprocess.run(
        [find_redis_cli(), "-h", node.host, "-p", str(node.port), *flags],
        input=b"".join(join_args(cmd).encode() + b"\n" for cmd in _READS),
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@settings(max_examples=25)
@given(_stored)
def test_stored_values_render_like_redis_cli(redis_plain: RedisNode, data: dict[str, Any]) -> None:
    with redis_py(redis_plain) as r:
        r.delete("prop:string", "prop:hash", "prop:list", "prop:zset")
        r.set("prop:string", data["string"])
        if data["hash"]:
            r.hset("prop:hash", mapping=data["hash"])
        if data["list"]:
            r.rpush("prop:list", *data["list"])
        if data["zset"]:
            r.zadd("prop:zset", data["zset"])
    for protocol in (2, 3):
        for raw in (False, True):
            assert _ours(redis_plain, protocol, raw) == _theirs(redis_plain, protocol, raw)
