"""Tables for client.cliformat. Expected bytes were taken from redis-cli 7.0.15 itself."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import cast

import pytest

from client.cliformat import (
    GENERIC_HELP,
    ArgumentError,
    CommandDoc,
    common_prefix,
    crossslot_hint,
    format_command_help,
    format_help,
    format_invalidate,
    format_push,
    format_ranges,
    format_reply,
    format_slot,
    format_topology,
    join_args,
    parse_command_docs,
    quote,
    repr_bytes,
    split_line,
    synopsis,
    wants_raw_output,
)
from client.commands import CommandTable
from client.lineedit import LineBuffer, command_hint, completions, decode_keys, is_secret_line
from client.shell import Affinity
from client.slots import key_slot
from client.topology import Node, Topology
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

# --- splitting ------------------------------------------------------------------------------

SPLITS: list[tuple[bytes, list[bytes]]] = [
    (b"", []),
    (b"   \t\r\n", []),
    (b"\x0b\x0c", []),  # \v \f are skipped between tokens...
    (b"a\x0bb", [b"a\x0bb"]),  # ...but do not end a bare token (sdssplitargs' switch)
    (b"GET key", [b"GET", b"key"]),
    (b"  set   a  b \n", [b"set", b"a", b"b"]),
    (b'set "a b" c', [b"set", b"a b", b"c"]),
    (b'"\\n\\r\\t\\b\\a\\\\\\""', [b'\n\r\t\b\a\\"']),
    (b'"\\x41\\x4a\\xfF"', [b"AJ\xff"]),
    (b'"\\x4g"', [b"x4g"]),  # not two hex digits: backslash + x is just "x"
    (b'"\\q"', [b"q"]),
    (b"'a b'", [b"a b"]),
    (b"'it\\'s'", [b"it's"]),
    (b"'a\\nb'", [b"a\\nb"]),  # single quotes are literal
    (b'a"b c"', [b"ab c"]),  # a quote may open mid-token
    (b"a'b c'", [b"ab c"]),
    (b'""', [b""]),
    (b"'' x", [b"", b"x"]),
    (b'"a"\x0bb', [b"a", b"b"]),  # \v is whitespace after a closing quote
    (b"back\\slash", [b"back\\slash"]),
    (b"caf\xc3\xa9 \xff", [b"caf\xc3\xa9", b"\xff"]),
]


@pytest.mark.parametrize(("line", "expected"), SPLITS)
def test_split_line(line: bytes, expected: list[bytes]) -> None:
    assert split_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [b'"abc', b"'abc", b'"a"b', b"'a'b", b'set "a b', b'"abc\\"', b'"trailing\\', b"a\x00b"],
)
def test_split_line_rejects(line: bytes) -> None:
    with pytest.raises(ArgumentError):
        split_line(line)


def test_argument_error_is_value_error() -> None:
    assert issubclass(ArgumentError, ValueError)


# --- quoting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (b"GET", "GET"),
        (b"user:1{x}", "user:1{x}"),
        (b"", '""'),
        (b"a b", '"a b"'),
        (b"it's", '"it\'s"'),
        (b'"', '"\\""'),
        (b"\\", "\\"),
        (b"\x00\xff\n", '"\\x00\\xff\\n"'),
        (b"caf\xc3\xa9", '"caf\\xc3\\xa9"'),
    ],
)
def test_quote(arg: bytes, expected: str) -> None:
    assert quote(arg) == expected
    assert split_line(expected.encode()) == [arg]


def test_join_args_round_trip() -> None:
    args = [b"SET", b"", b"a b", b"'", b'"', b"\x00\x7f\x80", b"\\x41"]
    assert split_line(join_args(args).encode()) == args


def test_repr_bytes_matches_sdscatrepr() -> None:
    assert repr_bytes(b'\\"\n\r\t\a\b\x00\x1f ~\x7f\xff') == (
        b'"\\\\\\"\\n\\r\\t\\a\\b\\x00\\x1f ~\\x7f\\xff"'
    )


# --- typed output (cliFormatReplyTTY) ---------------------------------------------------------

TYPED: list[tuple[RespValue, bytes]] = [
    (SimpleString(b"OK"), b"OK\n"),
    (SimpleString(b""), b"\n"),
    (SimpleString(b"st\x00at"), b"st\n"),  # a C string in redis-cli
    (ErrorReply(b"ERR bad thing"), b"(error) ERR bad thing\n"),
    (ErrorReply(b"ER\x00R"), b"(error) ER\n"),
    (ErrorReply(b"ERR blob", blob=True), b"(error) ERR blob\n"),
    (-42, b"(integer) -42\n"),
    (None, b"(nil)\n"),
    (Double(b"3.14"), b"(double) 3.14\n"),
    (Double(b"inf"), b"(double) inf\n"),
    (True, b"(true)\n"),
    (False, b"(false)\n"),
    (BigNumber(12345678901234567890), b"(big number) 12345678901234567890\n"),
    (Verbatim(b"txt", b"Some string"), b"Some string\n"),
    (b"", b'""\n'),
    (b"\x00\xff\x7f ", b'"\\x00\\xff\\x7f "\n'),
    (b"\xc3\xa9x", b'"\\xc3\\xa9x"\n'),
    ([], b"(empty array)\n"),
    (RespMap(), b"(empty hash)\n"),
    (RespSet(), b"(empty set)\n"),
    (Push(), b"(empty push)\n"),
    ([b"a", []], b'1) "a"\n2) (empty array)\n'),
    (RespMap([(b"k", b"v")]), b'1# "k" => "v"\n'),
    (RespSet([b"a", 1]), b'1~ "a"\n2~ (integer) 1\n'),
    (RespSet([True, RespMap()]), b"1~ (true)\n2~ (empty hash)\n"),
    (Push([b"message", b"x"]), b'1) "message"\n2) "x"\n'),
    ([[[b""]]], b'1) 1) 1) ""\n'),
    ([None, None], b"1) (nil)\n2) (nil)\n"),
    ([Verbatim(b"mkd", b"a\nb"), Double(b"1.5")], b"1) a\nb\n2) (double) 1.5\n"),
    (
        [SimpleString(b"st\x00at"), ErrorReply(b"ER\x00R"), None],
        b"1) st\n2) (error) ER\n3) (nil)\n",
    ),
    (Attributed(RespMap([(SimpleString(b"ttl"), 3)]), b"hello"), b'"hello"\n'),
    # A map whose value spans lines starts it on a new, aligned line (redis-cli 7.0).
    (
        RespMap([(b"k", [1, 2]), ([1], RespMap([(1, 2)]))]),
        b'1# "k" => \n   1) (integer) 1\n   2) (integer) 2\n'
        b"2# 1) (integer) 1 => 1# (integer) 1 => (integer) 2\n",
    ),
    (
        [*range(1, 11), [b"a", [1, []]], ErrorReply(b"ERR in array")],
        b" 1) (integer) 1\n 2) (integer) 2\n 3) (integer) 3\n 4) (integer) 4\n"
        b" 5) (integer) 5\n 6) (integer) 6\n 7) (integer) 7\n 8) (integer) 8\n"
        b" 9) (integer) 9\n10) (integer) 10\n"
        b'11) 1) "a"\n    2) 1) (integer) 1\n       2) (empty array)\n'
        b"12) (error) ERR in array\n",
    ),
    (
        RespMap([(0, False), (1, True), (2, False)]),
        b"1# (integer) 0 => (false)\n2# (integer) 1 => (true)\n3# (integer) 2 => (false)\n",
    ),
]


@pytest.mark.parametrize(("value", "expected"), TYPED)
def test_format_typed(value: RespValue, expected: bytes) -> None:
    assert format_reply(value, raw=False) == expected


# --- raw output (cliFormatReplyRaw + "\n") ----------------------------------------------------

RAW: list[tuple[RespValue, bytes]] = [
    (SimpleString(b"OK"), b"OK\n"),
    (SimpleString(b"st\x00at"), b"st\x00at\n"),
    (ErrorReply(b"ERR bad thing"), b"ERR bad thing\n\n"),
    (-42, b"-42\n"),
    (None, b"\n"),
    (Double(b"3.14"), b"3.14\n"),
    (True, b"(true)\n"),
    (False, b"(false)\n"),
    (BigNumber(-7), b"-7\n"),
    (Verbatim(b"txt", b"Some string"), b"Some string\n"),
    (b"\x00\xff\x7f ", b"\x00\xff\x7f \n"),
    ([], b"\n"),
    (RespMap(), b"\n"),
    (RespMap([(b"k", b"v")]), b"k v\n"),
    (RespMap([(b"k", [1, 2]), ([1], RespMap([(1, 2)]))]), b"k 1\n2\n1 1 2\n"),
    (RespSet([b"a", 1]), b"a\n1\n"),
    (RespSet([True, RespMap()]), b"(true)\n\n"),
    ([[[b""]]], b"\n"),
    ([None, None], b"\n\n"),
    ([[], []], b"\n\n"),
    (
        [SimpleString(b"st\x00at"), ErrorReply(b"ER\x00R"), None],
        b"st\x00at\nER\x00R\n\n\n",
    ),
    ([*range(1, 4), [b"a", [1, []]], ErrorReply(b"ERR x")], b"1\n2\n3\na\n1\n\nERR x\n\n"),
    (Attributed(RespMap([(SimpleString(b"ttl"), 3)]), b"hello"), b"hello\n"),
]


@pytest.mark.parametrize(("value", "expected"), RAW)
def test_format_raw(value: RespValue, expected: bytes) -> None:
    assert format_reply(value, raw=True) == expected


def test_verbatim_output_has_no_trailing_newline() -> None:
    text = b"# Server\r\nredis_version:7.0.15\r\n"
    assert format_reply(text, raw=False, verbatim=True) == text
    assert format_reply(text, raw=True, verbatim=True) == text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([b"INFO"], True),
        ([b"info", b"server"], True),
        ([b"lolwut"], True),
        ([b"CLIENT", b"LIST"], True),
        ([b"client", b"info"], True),
        ([b"client", b"id"], False),
        ([b"cluster", b"nodes"], True),
        ([b"cluster", b"nodes", b"x"], False),
        ([b"cluster", b"slots"], False),
        ([b"memory", b"doctor"], True),
        ([b"latency", b"doctor"], True),
        ([b"latency", b"graph", b"command"], True),
        ([b"latency", b"graph"], False),
        ([b"debug", b"htstats", b"0"], True),
        ([b"get", b"info"], False),
        ([], False),
    ],
)
def test_wants_raw_output(args: list[bytes], expected: bool) -> None:
    assert wants_raw_output(args) is expected


def test_format_invalidate() -> None:
    push = Push([b"invalidate", [b"k1", b"k2"]])
    assert format_invalidate(push) == b"-> invalidate: 'k1', 'k2'\n"
    assert format_invalidate(Push([b"message", b"ch", b"x"])) is None
    assert format_invalidate(Push([b"invalidate", None])) is None


def test_format_push_like_cli_push_handler() -> None:
    """redis-cli 7.0.15 ``--show-pushes yes``: typed invalidations on one line, else replies."""
    invalidate = Push([b"invalidate", [b"k", b"a\xffb"]])
    assert format_push(invalidate, raw=False) == b"-> invalidate: 'k', 'a\xffb'\n"
    assert format_push(invalidate, raw=True) == b"invalidate\nk\na\xffb\n"
    flushed = Push([b"invalidate", None])  # FLUSHALL: every key
    assert format_push(flushed, raw=False) == b'1) "invalidate"\n2) (nil)\n'
    assert format_push(flushed, raw=True) == b"invalidate\n\n"
    message = Push([b"message", b"ch", b"hi"])
    assert format_push(message, raw=False) == b'1) "message"\n2) "ch"\n3) "hi"\n'
    assert format_push(b"odd", raw=False) == b'"odd"\n'  # not a push frame: still printed


def _topology() -> Topology:
    m1 = Node(id="a" * 40, host="127.0.0.1", port=7001, slots=((0, 5460), (5462, 5462)))
    m2 = Node(id="b" * 40, host="127.0.0.1", port=7002, slots=((5463, 16383),))
    r1 = Node(id="c" * 40, host="127.0.0.1", port=7003, role="replica", master_id="a" * 40)
    r2 = Node(
        id="d" * 40, host="127.0.0.1", port=7004, role="replica", master_id="b" * 40, health="fail"
    )
    return Topology([m1, m2, r1, r2])


def test_format_topology() -> None:
    assert format_topology(_topology(), "x:1") == (
        "master  aaaaaaaa  127.0.0.1:7001  slots 0-5460,5462 (5462)\n"
        "  replica cccccccc  127.0.0.1:7003\n"
        "master  bbbbbbbb  127.0.0.1:7002  slots 5463-16383 (10921)\n"
        "  replica dddddddd  127.0.0.1:7004 [fail]\n"
        "unassigned slots: 5461\n"
    )
    assert format_topology(None, "h:6379") == "not a cluster: standalone server h:6379\n"
    assert format_ranges([(1, 1), (3, 9)]) == "1,3-9"


def test_format_slot_and_crossslot_hint() -> None:
    topo = _topology()
    key = b"{user:1}:a"
    owner = topo.slot_owner(key_slot(key))
    assert owner is not None
    assert format_slot(key, owner) == (
        f"{{user:1}}:a: slot {key_slot(b'user:1')} (hash tag user:1), "
        f"master {owner.address} ({owner.id[:8]})"
    )
    assert format_slot(b"a b", None) == f'"a b": slot {key_slot(b"a b")}'
    keys = [b"user:1:a", b"user:1:b"]
    hint = crossslot_hint(keys, topo).splitlines()
    assert len(hint) == 4
    for key, line in zip(keys, hint[1:3], strict=True):
        found = topo.slot_owner(key_slot(key))
        assert found is not None
        assert line == f"  {key.decode()} -> slot {key_slot(key)} on {found.address}"
    assert hint[-1].endswith("e.g. {user:1}:a {user:1}:b")
    assert crossslot_hint([b"x", b"y"], None).splitlines()[1] == f"  x -> slot {key_slot(b'x')}"
    assert common_prefix(["abc", "abd"]) == "ab"
    with pytest.raises(ValueError, match="no items"):
        common_prefix([])


def test_format_help() -> None:
    doc = CommandDoc(name="GET", params="key", summary="Get it", since="1.0.0", group="string")
    sub = CommandDoc(name="GET SUB", params="", summary="sub", since="7.0.0", group="string")
    docs = {"GET": doc, "GET SUB": sub}
    assert format_help([], docs, color=False) == GENERIC_HELP
    assert format_help([b"get"], docs, color=False) == (
        format_command_help(doc, color=False) + format_command_help(sub, color=False) + "\n"
    )
    group = format_help([b"@string"], docs, color=False)
    assert "group:" not in group
    assert "summary: Get it" in group
    assert format_help([b"nope"], docs, color=False).startswith("no help for 'nope'")


def _record(affinity: Affinity, line: bytes, ok: bool = True) -> None:
    table = CommandTable.bundled()
    args = split_line(line)
    spec = table.lookup(args)
    has_keys = bool(table.key_indexes(args)) if spec is not None else False
    affinity.record(args[0].lower(), spec, has_keys, ok)


def test_affinity_read_your_writes() -> None:
    a = Affinity()
    assert a.master_reason() is None
    _record(a, b"GET k")
    assert a.master_reason() is None  # reads never open the window
    _record(a, b"SET k v")
    assert a.master_reason() == "after a write"
    _record(a, b"GET k")
    _record(a, b"MGET k j")
    assert a.master_reason() == "after a write"  # reads keep it open
    _record(a, b"PING")
    assert a.master_reason() is None  # a command that neither reads nor writes closes it
    _record(a, b"EVAL x 1 k")  # not flagged write, but it has keys: it may write
    assert a.master_reason() == "after a write"
    _record(a, b"INFO")
    _record(a, b"FLUSHALL")  # keyless, flagged write
    assert a.master_reason() == "after a write"


def test_affinity_transactions() -> None:
    a = Affinity()
    _record(a, b"MULTI", ok=False)
    assert a.master_reason() is None  # refused: no transaction
    _record(a, b"WATCH k")
    assert a.master_reason() == "after WATCH"
    _record(a, b"MULTI")
    assert a.master_reason() == "in MULTI"
    _record(a, b"GET k")
    _record(a, b"EXEC")
    assert a.master_reason() is None  # EXEC ends MULTI and WATCH
    _record(a, b"WATCH k")
    _record(a, b"UNWATCH")
    assert a.master_reason() is None
    _record(a, b"MULTI")
    _record(a, b"SET k v")
    _record(a, b"DISCARD")
    assert a.master_reason() == "after a write"  # conservative: a write was queued
    _record(a, b"WATCH k")
    _record(a, b"MULTI")
    a.reset()  # the connection was dropped: its transaction and watches are gone
    assert (a.in_multi, a.watching) == (False, False)


def test_cliformat_is_pure() -> None:
    """The formatter is sans-IO: no trio, socket or ssl import."""
    source = Path(__file__).parents[2] / "client" / "cliformat.py"
    tree = ast.parse(source.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "anyio", "socket", "ssl"}


# --- help, hints, completion ------------------------------------------------------------------


def _arg(name: str, kind: str, **extra: RespValue) -> RespMap:
    pairs: list[tuple[RespValue, RespValue]] = [(b"name", name.encode()), (b"type", kind.encode())]
    pairs += [(k.encode(), v) for k, v in extra.items()]
    return RespMap(pairs)


# COMMAND DOCS as RESP3 (maps) for SET and CLIENT (a container), trimmed.
DOCS_REPLY = RespMap(
    [
        (
            b"set",
            RespMap(
                [
                    (b"summary", b"Set the string value of a key"),
                    (b"since", b"1.0.0"),
                    (b"group", b"string"),
                    (
                        b"arguments",
                        [
                            _arg("key", "key"),
                            _arg("value", "string"),
                            _arg(
                                "condition",
                                "oneof",
                                flags=RespSet([SimpleString(b"optional")]),
                                arguments=[
                                    _arg("nx", "pure-token", token=b"NX"),
                                    _arg("xx", "pure-token", token=b"XX"),
                                ],
                            ),
                            _arg(
                                "expiration",
                                "oneof",
                                flags=RespSet([SimpleString(b"optional")]),
                                arguments=[
                                    _arg("seconds", "integer", token=b"EX"),
                                    _arg("keepttl", "pure-token", token=b"KEEPTTL"),
                                ],
                            ),
                        ],
                    ),
                ]
            ),
        ),
        (
            b"client",
            RespMap(
                [
                    (b"summary", b"A container for client connection commands"),
                    (b"since", b"2.4.0"),
                    (b"group", b"connection"),
                    (
                        b"subcommands",
                        RespMap(
                            [
                                (
                                    b"client|kill",
                                    RespMap(
                                        [
                                            (b"summary", b"Kill"),
                                            (b"since", b"2.4.0"),
                                            (b"group", b"connection"),
                                            (
                                                b"arguments",
                                                [
                                                    _arg(
                                                        "id",
                                                        "integer",
                                                        token=b"ID",
                                                        flags=[
                                                            SimpleString(b"optional"),
                                                            SimpleString(b"multiple"),
                                                            SimpleString(b"multiple_token"),
                                                        ],
                                                    ),
                                                    _arg("empty", "pure-token", token=b""),
                                                ],
                                            ),
                                        ]
                                    ),
                                ),
                                (b"client|list", RespMap([(b"summary", b"List")])),
                            ]
                        ),
                    ),
                ]
            ),
        ),
    ]
)


def _resp2(value: RespValue) -> RespValue:
    """The same reply as RESP2 sends it: maps flattened, sets as arrays."""
    if isinstance(value, RespMap):
        return [x for k, v in value for x in (_resp2(k), _resp2(v))]
    if isinstance(value, list):
        return [_resp2(v) for v in cast("list[RespValue]", value)]
    return value


@pytest.mark.parametrize("reply", [DOCS_REPLY, _resp2(DOCS_REPLY)], ids=["resp3", "resp2"])
def test_parse_command_docs(reply: RespValue) -> None:
    docs = parse_command_docs(reply)
    assert sorted(docs) == ["CLIENT", "CLIENT KILL", "CLIENT LIST", "SET"]
    assert docs["SET"].params == "key value [NX|XX] [EX seconds|KEEPTTL]"
    assert docs["SET"].group == "string"
    assert docs["CLIENT KILL"].params == '[ID id [ID id ...]] ""'
    assert docs["CLIENT"].params == ""


def test_parse_command_docs_tolerates_junk() -> None:
    assert parse_command_docs(None) == {}
    assert parse_command_docs(ErrorReply(b"ERR unknown subcommand")) == {}
    assert parse_command_docs([b"get", 5]) == {}


def test_format_command_help() -> None:
    doc = parse_command_docs(DOCS_REPLY)["SET"]
    assert format_command_help(doc, color=False) == (
        "\n  SET key value [NX|XX] [EX seconds|KEEPTTL]\n"
        "  summary: Set the string value of a key\n  since: 1.0.0\n  group: string\n"
    )
    assert "\x1b[1mSET\x1b[0m" in format_command_help(doc, color=True)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("set", " key value [NX|XX] [EX seconds|KEEPTTL]"),
        ("SET ", "key value [NX|XX] [EX seconds|KEEPTTL]"),
        ("set k", " value [NX|XX] [EX seconds|KEEPTTL]"),
        ("set k v", " [NX|XX] [EX seconds|KEEPTTL]"),
        ("set k v NX", " [NX|XX] [EX seconds|KEEPTTL]"),  # redis-cli stops at an optional part
        ("client kill ", '[ID id [ID id ...]] ""'),
        ("client", None),  # a container has no synopsis
        ("nosuch", None),
        ("set 'k", None),  # unbalanced: no hint
    ],
)
def test_command_hint(line: str, expected: str | None) -> None:
    assert command_hint(line, parse_command_docs(DOCS_REPLY)) == expected


def test_completions() -> None:
    docs = parse_command_docs(DOCS_REPLY)
    assert completions("s", docs) == ["SET"]
    assert completions("cl", docs) == ["CLIENT"]
    assert completions("client k", docs) == ["client KILL"]
    assert completions("CLIENT ", docs) == ["CLIENT KILL", "CLIENT LIST"]
    assert completions("help cl", docs) == ["help CLIENT", "help CLIENT KILL", "help CLIENT LIST"]
    assert completions("help @con", docs) == ["help @connection"]
    assert completions(":c", docs, [":cluster", ":topology"]) == [":cluster"]
    assert completions("set key ", docs) == []


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("AUTH pass", True),
        ("auth user pass", True),
        ("3 auth pass", True),
        ("HELLO 3 AUTH default pw", True),
        ("hello 3", False),
        ("ACL SETUSER bob on >pw", True),
        ("ACL LIST", False),
        ("CONFIG SET requirepass x", True),
        ("CONFIG SET maxmemory 1mb", False),
        ("MIGRATE h 1 k 0 5 AUTH pw", True),
        ('AUTH "unbalanced', True),
        ("GET auth", False),
        ("", False),
    ],
)
def test_is_secret_line(line: str, secret: bool) -> None:
    assert is_secret_line(line) is secret


# --- line editing -----------------------------------------------------------------------------


def test_decode_keys() -> None:
    keys, rest = decode_keys("ab\x1b[D\x7f\r\x03\x1b[3~\x1bOH\x01\x17\x1b[")
    assert keys == [
        "text:ab",
        "left",
        "backspace",
        "enter",
        "interrupt",
        "delete",
        "home",
        "home",
        "kill-word",
    ]
    assert rest == "\x1b["
    assert decode_keys(rest + "A") == (["up"], "")
    assert decode_keys("\x1b[99~\x00") == (["ignore", "ignore"], "")


def test_line_buffer_editing() -> None:
    buf = LineBuffer()
    for key in ["text:set a b", "left", "left", "text:X", "home", "delete", "end", "backspace"]:
        buf.apply(key)
    assert (buf.text, buf.pos) == ("et aX ", 6)
    buf.apply("kill-word")
    assert buf.text == "et "
    buf.apply("left")
    buf.apply("kill-start")
    assert (buf.text, buf.pos) == (" ", 0)
    buf.apply("kill-end")
    assert buf.text == ""


def test_line_buffer_history_keeps_the_draft() -> None:
    buf = LineBuffer(["first", "second"])
    buf.apply("text:draft")
    buf.apply("up")
    assert buf.text == "second"
    buf.apply("up")
    buf.apply("up")  # stays on the oldest
    assert buf.text == "first"
    buf.apply("down")
    buf.apply("down")
    assert (buf.text, buf.pos) == ("draft", 5)


def test_line_buffer_render() -> None:
    buf = LineBuffer()
    buf.apply("text:get")
    assert buf.render("> ", " key", 80) == "\r> get\x1b[90m key\x1b[0m\x1b[0K\r\x1b[5C"
    buf.apply("left")  # the hint shows only with the cursor at the end
    assert buf.render("> ", " key", 80) == "\r> get\x1b[0K\r\x1b[4C"
    long = LineBuffer()
    long.apply("text:" + "x" * 30)
    frame = long.render("> ", None, 20)  # scrolled so the cursor stays visible
    assert frame == "\r> " + "x" * 17 + "\x1b[0K\r\x1b[19C"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("key", "key", None, set(), []), "key"),
        (("nx", "pure-token", "NX", {"optional"}, []), "[NX]"),
        (("empty", "pure-token", "", set(), []), '""'),
        (("seconds", "integer", "EX", set(), []), "EX seconds"),
        (("id", "integer", "ID", {"optional", "multiple"}, []), "[ID id [id ...]]"),
        (("id", "integer", "ID", {"multiple", "multiple_token"}, []), "ID id [ID id ...]"),
        (("c", "oneof", None, {"optional"}, ["NX", "XX"]), "[NX|XX]"),
        (("b", "block", "LIMIT", set(), ["offset", "count"]), "LIMIT offset count"),
    ],
)
def test_synopsis(args: tuple[str, str, str | None, set[str], list[str]], expected: str) -> None:
    assert synopsis(*args) == expected
