"""The command table against a real redis-server: snapshot, reply shapes and COMMAND GETKEYS.

For every command and subcommand the server knows we generate argument lists, from the
COMMAND DOCS argument tree and as random junk built from the words key specs look for, and
check that :meth:`CommandTable.keys` equals ``COMMAND GETKEYS`` (keys in order), or raises
UnroutableError exactly where GETKEYS answers an error other than "no key arguments".
redis-py (and a raw socket, for RESP3) is the independent client.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis
from servers import redis_py

from client.commands import Argument, CommandSpec, CommandTable
from client.embedded import RedisNode
from client.errors import UnroutableError
from client.values import ErrorReply, RespMap, RespSet, RespValue, SimpleString

pytestmark = pytest.mark.e2e

SEED = 0x5EED_C0DE
DOCS_CASES_PER_COMMAND = 30
RANDOM_CASES_PER_COMMAND = 30


# --------------------------------------------------------------------------- raw access


def _raw_many(node: RedisNode, commands: Sequence[Sequence[bytes | str]]) -> list[Any]:
    """Send commands pipelined on one connection; replies as parsed RESP2 or the exception,
    without redis-py's response callbacks."""
    client: Any = redis_py(node, protocol=2)
    out: list[Any] = []
    try:
        conn = client.connection_pool.get_connection()
        try:
            for start in range(0, len(commands), 500):
                chunk = commands[start : start + 500]
                conn.send_packed_command(conn.pack_commands(chunk))
                for _ in chunk:
                    try:
                        out.append(conn.read_response())
                    except redis.ResponseError as exc:
                        out.append(exc)
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()
    return out


class _Resp3Reader:
    """A tiny independent RESP3 reader over a blocking socket (test-only)."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def line(self) -> bytes:
        data = self.file.readline()
        assert data.endswith(b"\r\n"), data
        return data[:-2]

    def read(self) -> RespValue:
        head = self.line()
        kind, rest = head[:1], head[1:]
        if kind == b"+":
            return SimpleString(rest)
        if kind in (b"-", b"!"):
            if kind == b"!":
                rest = self.file.read(int(rest) + 2)[:-2]
            return ErrorReply(rest, blob=kind == b"!")
        if kind == b":":
            return int(rest)
        if kind == b"_":
            return None
        if kind == b"#":
            return rest == b"t"
        if kind in (b"$", b"="):
            if rest == b"-1":
                return None
            return self.file.read(int(rest) + 2)[:-2]
        if kind in (b"*", b"~", b">"):
            items = [self.read() for _ in range(int(rest))]
            return RespSet(items) if kind == b"~" else items
        if kind == b"%":
            return RespMap((self.read(), self.read()) for _ in range(int(rest)))
        raise AssertionError(f"unexpected RESP3 frame {head!r}")


def _resp3_replies(node: RedisNode, *commands: Sequence[str]) -> list[RespValue]:
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        payload = b""
        for command in [("HELLO", "3"), *commands]:
            payload += f"*{len(command)}\r\n".encode()
            for word in command:
                payload += f"${len(word.encode())}\r\n{word}\r\n".encode()
        sock.sendall(payload)
        reader = _Resp3Reader(sock)
        replies = [reader.read() for _ in range(1 + len(commands))]
    hello = replies[0]
    assert isinstance(hello, RespMap), "HELLO 3 did not switch to RESP3"
    return replies[1:]


@pytest.fixture(scope="module")
def live_table(redis_plain: RedisNode) -> CommandTable:
    command, docs = _raw_many(redis_plain, [("COMMAND",), ("COMMAND", "DOCS")])
    return CommandTable.from_replies(command, docs)


# --------------------------------------------------------------------------- snapshot + shapes


def test_bundled_snapshot_equals_live_server_table(live_table: CommandTable) -> None:
    bundled = CommandTable.bundled()
    assert len(live_table) > 200
    missing = sorted(set(live_table.names()) ^ set(bundled.names()))
    assert not missing, f"snapshot and server disagree on commands: {missing[:20]}"
    different = [s.name for s in live_table.all_commands() if bundled.get(s.name) != s]
    assert not different, f"snapshot differs from the server for {different[:20]}"
    assert bundled == live_table


def test_resp3_replies_build_the_same_table(
    redis_plain: RedisNode, live_table: CommandTable
) -> None:
    command, docs = _resp3_replies(redis_plain, ("COMMAND",), ("COMMAND", "DOCS"))
    assert isinstance(docs, RespMap)  # really the RESP3 shapes
    first = command[0] if isinstance(command, list) else None
    assert isinstance(first, list)
    assert isinstance(first[2], RespSet)
    assert CommandTable.from_replies(command, docs) == live_table


def test_command_info_subset_and_unknown_names(redis_plain: RedisNode) -> None:
    (info,) = _raw_many(redis_plain, [("COMMAND", "INFO", "get", "no-such-command", "config")])
    table = CommandTable.from_replies(info)
    assert sorted(table.commands) == ["config", "get"]
    assert table.key_indexes([b"GET", b"k"]) == [1]
    spec = table.get("config get")
    assert spec is not None
    assert spec.summary  # docs came from the bundled snapshot
    assert spec == CommandTable.bundled().get("config|get")


# --------------------------------------------------------------------------- argument generation


class _ArgGen:
    """Random argument lists following a COMMAND DOCS argument tree."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = 0

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def case(self, word: str) -> str:
        change: Callable[[str], str] = self.rng.choice((str.upper, str.lower, str.title))
        return change(word)

    def value(self, arg: Argument) -> list[str]:
        kind = arg.type
        if kind == "key":
            return [self.unique("{k}")]
        if kind == "integer":
            return [str(self.rng.choice((0, 1, 2, 3, 5, 10, -1)))]
        if kind == "double":
            return [self.rng.choice(("1.5", "0", "-2.25", "inf"))]
        if kind == "unix-time":
            return ["1700000000"]
        if kind == "pure-token":
            return [self.case(arg.token or arg.name)]
        if kind == "oneof":
            return self.one(self.rng.choice(arg.arguments), force=True)
        if kind == "block":
            return self.seq(arg.arguments)
        return [self.unique("v")]

    def one(self, arg: Argument, *, force: bool = False, reps: int | None = None) -> list[str]:
        if arg.optional and not force and self.rng.random() < 0.5:
            return []
        if reps is None:
            reps = self.rng.choice((1, 1, 2, 3)) if arg.multiple else 1
        out: list[str] = []
        for i in range(reps):
            if (
                arg.token is not None
                and arg.type != "pure-token"
                and (i == 0 or arg.multiple_token)
            ):
                out.append(self.case(arg.token))
            out += self.value(arg)
        return out

    def seq(self, args: Sequence[Argument]) -> list[str]:
        out: list[str] = []
        numkeys_at: int | None = None
        multiples = [a for a in args if a.multiple and not a.optional]
        shared = self.rng.choice((1, 2, 3)) if len(multiples) == 2 else None
        for arg in args:
            if arg.type == "integer" and arg.name == "numkeys":
                numkeys_at = len(out)
                out.append("?")
                continue
            reps = shared if shared is not None and arg in multiples else None
            if shared is not None and arg in multiples and self.rng.random() < 0.2:
                reps = None  # sometimes unbalanced (XREAD ... STREAMS a b 0)
            part = self.one(arg, reps=reps)
            if numkeys_at is not None and arg.type == "key":
                count = len(part)
                if self.rng.random() < 0.15:
                    count = self.rng.choice((0, count + 1, count + 7, -1, count - 1))
                    out[numkeys_at] = self.rng.choice((str(count), "x", ""))
                else:
                    out[numkeys_at] = str(count)
                numkeys_at = None
            out += part
        if numkeys_at is not None:
            out[numkeys_at] = "0"
        return out


def _words(spec: CommandSpec) -> list[str]:
    return spec.name.split("|")


def _docs_cases(table: CommandTable, rng: random.Random) -> Iterator[list[bytes]]:
    gen = _ArgGen(rng)
    for spec in table.all_commands():
        if spec.is_container:
            yield [gen.case(spec.name).encode()]
            yield [spec.name.encode(), b"no-such-subcommand", b"{k}x"]
            continue
        for _ in range(DOCS_CASES_PER_COMMAND):
            words = [gen.case(w) for w in _words(spec)]
            yield [w.encode() for w in words + gen.seq(spec.arguments)]


def _vocabulary(table: CommandTable) -> list[str]:
    words = {"limit", "get", "by", "store", "storedist", "keys", "copy", "replace", "auth"}
    words |= {"auth2", "streams", "block", "count", "group", "noack"}
    for spec in table.all_commands():
        for key_spec in spec.key_specs:
            if key_spec.begin_search.keyword:
                words.add(key_spec.begin_search.keyword.lower())
    return [*sorted(words), "0", "1", "2", "3", "4", "-1", "", "99"]


def _random_cases(table: CommandTable, rng: random.Random) -> Iterator[list[bytes]]:
    vocabulary = _vocabulary(table)
    gen = _ArgGen(rng)
    for spec in table.all_commands():
        if spec.is_container:
            continue
        base = abs(spec.arity) - len(_words(spec))
        for _ in range(RANDOM_CASES_PER_COMMAND):
            count = max(0, base + rng.randint(-1, 7))
            args = [
                gen.case(rng.choice(vocabulary)) if rng.random() < 0.5 else gen.unique("{w}")
                for _ in range(count)
            ]
            yield [w.encode() for w in _words(spec) + args]


# Hand-picked corner cases: native key finders, keyword searches, numkeys edges, NUL bytes.
TARGETED: list[list[bytes | str]] = [
    ["SORT", "k", "STORE", "store", "x"],
    ["SORT", "k", "store", "d1", "STORE", "d2"],
    ["SORT", "k", "LIMIT", "store", "x", "GET", "store", "BY", "store", "STORE"],
    ["SORT", "k", "STORE"],
    ["SORT_RO", "k", "BY", "w", "GET", "x"],
    ["MIGRATE", "h", "1", "", "0", "5000", "AUTH", "keys", "KEYS", "a", "b"],
    ["MIGRATE", "h", "1", "", "0", "5000", "AUTH2", "u", "keys", "KEYS", "a"],
    ["MIGRATE", "h", "1", "k", "0", "5000", "KEYS", "a", "b"],
    ["MIGRATE", "h", "1", "", "0", "5000"],
    ["MIGRATE", "h", "1", "", "0", "5000", "COPY", "REPLACE", "KEYS"],
    ["MIGRATE", "h", "1", "k", "0", "5000", "COPY"],
    ["XREAD", "STREAMS", "a", "b", "0", "0"],
    ["XREAD", "COUNT", "2", "STREAMS", "streams", "b", "0"],
    ["XREAD", "STREAMS", "a", "b", "c"],
    ["XREAD", "COUNT", "1", "BLOCK", "0"],
    ["XREAD", b"STREAMS\x00junk", "a", "0"],
    ["XREADGROUP", "GROUP", "streams", "c", "STREAMS", "a", "0"],
    ["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "a", "b", ">", ">"],
    ["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d1", "STOREDIST", "d2"],
    ["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d1", "STORE", "d2"],
    ["GEORADIUS", "k", "0", "0", "1", "STORE", "d1"],
    ["GEORADIUSBYMEMBER", "k", "m", "1", "km", "STOREDIST", "d"],
    ["GEORADIUS_RO", "k", "0", "0", "1", "km", "STORE", "d"],
    ["EVAL", "s", "0"],
    ["EVAL", "s", "2", "a", "b", "c"],
    ["EVAL", "s", "3", "a", "b"],
    ["EVAL", "s", "-1", "a"],
    ["EVAL", "s", "x", "a"],
    ["EVALSHA_RO", "sha", "1", "a"],
    ["FCALL", "f", "2", "a", "b"],
    ["FCALL_RO", "f", "0"],
    ["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
    ["ZUNIONSTORE", "d", "0", "a"],
    ["ZUNIONSTORE", "d", "3", "a", "b"],
    ["ZINTER", "2", "a", "b", "WITHSCORES"],
    ["ZDIFFSTORE", "d", "1", "a"],
    ["SINTERCARD", "2", "a", "b", "LIMIT", "1"],
    ["LMPOP", "2", "a", "b", "LEFT", "COUNT", "2"],
    ["LMPOP", "3", "a", "LEFT"],
    ["BLMPOP", "0", "2", "a", "b", "RIGHT"],
    ["ZMPOP", "1", "a", "MIN"],
    ["BZMPOP", "1.5", "1", "a", "MAX"],
    ["OBJECT", "ENCODING", "k"],
    ["object", "freq", "k"],
    ["MEMORY", "USAGE", "k", "SAMPLES", "5"],
    ["XINFO", "STREAM", "s", "FULL"],
    ["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"],
    ["CONFIG", "GET", "maxmemory"],
    ["CLUSTER", "SLOTS"],
    ["CLUSTER", "COUNTKEYSINSLOT", "1"],
    ["MSET", "a", "1", "b", "2"],
    ["MSET", "a", "1", "b"],
    ["MSETNX", "a", "1"],
    ["BLPOP", "a", "b", "0"],
    ["BITFIELD", "k", "GET", "u8", "0"],
    ["SET", "k", "v", "GET"],
    ["DEL", "a", "b", "c"],
    ["GET"],
    ["GET", "a", "b"],
    ["PING", "x", "y", "z"],
    ["SPUBLISH", "ch", "msg"],
    ["SSUBSCRIBE", "a", "b"],
    ["PUBLISH", "ch", "msg"],
    ["RENAME", "a", "b"],
    ["LMOVE", "a", "b", "LEFT", "RIGHT"],
    ["COPY", "a", "b", "DB", "1"],
]


def _check(table: CommandTable, cases: Sequence[Sequence[bytes]], replies: Sequence[Any]) -> Any:
    """Compare; returns (mismatches, commands with keys seen) for the caller to assert on."""
    mismatches: list[str] = []
    keyed: set[str] = set()
    for args, reply in zip(cases, replies, strict=True):
        try:
            ours: list[bytes] | UnroutableError = table.keys(args)
        except UnroutableError as exc:
            ours = exc
        if isinstance(reply, redis.ResponseError):
            text = str(reply)
            if "has no key arguments" in text:
                ok = ours == []
            elif "for 'command|getkeys' command" in text:
                # GETKEYS needs a word after the name; alone, a name has keys only by error.
                spec = table.lookup(args)
                keyless = spec is not None and not spec.has_keys
                ok = ours == [] if keyless else isinstance(ours, UnroutableError)
            elif "Invalid number of arguments" in text:
                ok = isinstance(ours, UnroutableError) and "wrong number of arguments" in str(ours)
            elif "Invalid arguments specified" in text or "Invalid command specified" in text:
                ok = isinstance(ours, UnroutableError)
            else:
                ok = False
            theirs: Any = f"error: {text}"
        else:
            theirs = list(reply)
            ok = ours == theirs
            spec = table.lookup(args)
            if theirs and spec is not None:
                keyed.add(spec.name)
        if not ok:
            mismatches.append(f"{[bytes(a) for a in args]!r}: ours {ours!r}, GETKEYS {theirs!r}")
    return mismatches, keyed


def _getkeys(node: RedisNode, cases: Sequence[Sequence[bytes]]) -> list[Any]:
    return _raw_many(node, [[b"COMMAND", b"GETKEYS", *args] for args in cases])


def test_docs_generated_args_match_getkeys(
    redis_plain: RedisNode, live_table: CommandTable
) -> None:
    cases = list(_docs_cases(live_table, random.Random(SEED)))
    mismatches, keyed = _check(live_table, cases, _getkeys(redis_plain, cases))
    assert not mismatches, f"{len(mismatches)} mismatches, first: " + "\n".join(mismatches[:15])
    # The test is not vacuous: every command that takes keys got keys at least once.
    expected = {s.name for s in live_table.all_commands() if s.has_keys}
    assert expected - keyed == set()
    assert len(cases) > 5000


def test_random_args_match_getkeys(redis_plain: RedisNode, live_table: CommandTable) -> None:
    cases = list(_random_cases(live_table, random.Random(SEED + 1)))
    mismatches, keyed = _check(live_table, cases, _getkeys(redis_plain, cases))
    assert not mismatches, f"{len(mismatches)} mismatches, first: " + "\n".join(mismatches[:15])
    assert len(keyed) > 100


def test_targeted_args_match_getkeys(redis_plain: RedisNode, live_table: CommandTable) -> None:
    cases = [[w if isinstance(w, bytes) else w.encode() for w in case] for case in TARGETED]
    mismatches, keyed = _check(live_table, cases, _getkeys(redis_plain, cases))
    assert not mismatches, "\n".join(mismatches)
    assert {"sort", "migrate", "xread", "georadius", "eval", "object|encoding"} <= keyed


def test_bundled_table_matches_getkeys_too(redis_plain: RedisNode) -> None:
    table = CommandTable.bundled()
    cases = list(_docs_cases(table, random.Random(SEED + 2)))[:3000]
    mismatches, _ = _check(table, cases, _getkeys(redis_plain, cases))
    assert not mismatches, "\n".join(mismatches[:15])


@pytest.mark.parametrize(
    "args",
    [
        ["EVAL", "return 1", "01", "k"],
        ["EVAL", "return 1", "1x", "k"],
        ["ZUNIONSTORE", "d", "01", "a"],
        ["LMPOP", "+1", "a", "LEFT"],
        ["SINTERCARD", "01", "a"],
    ],
)
def test_noncanonical_numkeys_is_rejected_by_the_server(
    redis_plain: RedisNode, live_table: CommandTable, args: list[str]
) -> None:
    """The one documented divergence from GETKEYS (which atoi()s these): we find no keys, and
    the server refuses to run the command anyway, so routing it anywhere is right."""
    raw = [a.encode() for a in args]
    try:
        ours = live_table.key_indexes(raw)
    except UnroutableError:
        ours = []
    assert ours == []
    (executed,) = _raw_many(redis_plain, [raw])
    assert isinstance(executed, redis.ResponseError)
    assert any(word in str(executed) for word in ("not an integer", "numkeys", "out of range"))


def test_sharded_channels_route_like_keys(redis_plain: RedisNode, live_table: CommandTable) -> None:
    (getkeys,) = _getkeys(redis_plain, [[b"SPUBLISH", b"ch", b"m"]])
    assert isinstance(getkeys, redis.ResponseError)  # channels are not keys for GETKEYS ...
    assert live_table.key_indexes([b"SPUBLISH", b"ch", b"m"]) == []
    # ... but they hash to slots, so the router asks for them explicitly.
    assert live_table.key_indexes([b"SPUBLISH", b"ch", b"m"], channels=True) == [1]
    assert live_table.keys([b"SSUBSCRIBE", b"a", b"b"], channels=True) == [b"a", b"b"]
    assert live_table.keys([b"MGET", b"a", b"b"], channels=True) == [b"a", b"b"]
