"""client.commands against the bundled snapshot and hand-made replies (pure, no server).

The e2e twin (tests/e2e/test_commands_real.py) checks every command against COMMAND GETKEYS;
here we pin representative answers, the error texts, tips and the reply-shape parsing.
"""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client.commands
from client.commands import BeginSearch, CommandSpec, CommandTable, FindKeys, KeySpec
from client.errors import ReplyError, RespProtocolError, UnroutableError
from client.values import Attributed, ErrorReply, RespMap, RespSet, RespValue, SimpleString


@pytest.fixture(scope="module")
def table() -> CommandTable:
    return CommandTable.bundled()


def b(*words: str) -> list[bytes]:
    return [w.encode() for w in words]


def test_bundled_is_loaded_once(table: CommandTable) -> None:
    assert CommandTable.bundled() is table
    assert table.redis_version.startswith("7.")
    assert len(table) > 200
    assert "get" in table
    assert "config get" in table
    assert "nosuch" not in table


def test_json_round_trip(table: CommandTable) -> None:
    again = CommandTable.from_json(table.to_json())
    assert again == table
    assert again.redis_version == table.redis_version
    assert "\n" not in table.to_json()  # compact


# --------------------------------------------------------------------------- key positions


@pytest.mark.parametrize(
    ("args", "indexes"),
    [
        (b("GET", "k"), [1]),
        (b("get", "k"), [1]),
        (b("SET", "k", "v", "EX", "10", "GET"), [1]),
        (b("MGET", "a", "b", "c"), [1, 2, 3]),
        (b("MSET", "a", "1", "b", "2"), [1, 3]),
        (b("DEL", "a"), [1]),
        (b("RENAME", "a", "b"), [1, 2]),
        (b("LMOVE", "a", "b", "LEFT", "RIGHT"), [1, 2]),
        (b("BLPOP", "a", "b", "0"), [1, 2]),
        (b("EVAL", "s", "2", "a", "b", "x"), [3, 4]),
        (b("EVAL", "s", "0"), []),
        (b("EVAL", "s", "0", "x"), []),
        (b("EVALSHA", "sha", "1", "k"), [3]),
        (b("FCALL", "f", "1", "k", "x"), [3]),
        (b("ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"), [1, 3, 4]),
        (b("ZINTER", "2", "a", "b"), [2, 3]),
        (b("SINTERCARD", "2", "a", "b", "LIMIT", "1"), [2, 3]),
        (b("LMPOP", "2", "a", "b", "LEFT"), [2, 3]),
        (b("BLMPOP", "0", "2", "a", "b", "LEFT"), [3, 4]),
        (b("ZMPOP", "1", "a", "MIN"), [2]),
        (b("BZMPOP", "0", "1", "a", "MAX"), [3]),
        (b("XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"), [4, 5]),
        (b("xread", "streams", "a", "b", "c"), [2]),  # unbalanced: the server's own answer
        (b("XREADGROUP", "GROUP", "g", "c", "STREAMS", "a", ">"), [5]),
        (b("MIGRATE", "h", "1", "k", "0", "5000"), [3]),
        (b("MIGRATE", "h", "1", "", "0", "5000", "KEYS", "a", "b"), [7, 8]),
        (b("MIGRATE", "h", "1", "", "0", "5000", "AUTH", "keys", "KEYS", "a"), [9]),
        (b("MIGRATE", "h", "1", "", "0", "5000", "COPY", "KEYS"), [3]),
        (b("SORT", "k"), [1]),
        (b("SORT", "k", "BY", "store", "STORE", "d"), [1, 5]),
        (b("SORT", "k", "STORE", "store", "x"), [1, 4]),  # last STORE wins, unskipped
        (b("SORT_RO", "k", "GET", "p"), [1]),
        (b("GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d"), [1, 7]),
        (b("GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d", "STOREDIST", "e"), [1, 7, 9]),
        (b("GEORADIUSBYMEMBER", "k", "m", "1", "km", "STOREDIST", "d"), [1, 6]),
        (b("OBJECT", "ENCODING", "k"), [2]),
        (b("object", "freq", "k"), [2]),
        (b("MEMORY", "USAGE", "k", "SAMPLES", "5"), [2]),
        (b("XINFO", "STREAM", "s", "FULL"), [2]),
        (b("XGROUP", "CREATE", "s", "g", "$"), [2]),
        (b("PING"), []),
        (b("PING", "x", "y", "z"), []),  # keyless: no arity check (GETKEYS says "no keys")
        (b("CLUSTER", "SLOTS"), []),
        (b("CONFIG"), []),
        (b("CONFIG", "GET", "x"), []),
        (b("PUBLISH", "ch", "m"), []),
        (b("SPUBLISH", "ch", "m"), []),  # a channel, not a key ...
    ],
)
def test_key_indexes(table: CommandTable, args: list[bytes], indexes: list[int]) -> None:
    assert table.key_indexes(args) == indexes
    assert table.keys(args) == [args[i] for i in indexes]


def test_sharded_channels(table: CommandTable) -> None:
    assert table.key_indexes(b("SPUBLISH", "ch", "m"), channels=True) == [1]  # ... unless asked
    assert table.keys(b("SSUBSCRIBE", "a", "b"), channels=True) == b("a", "b")
    assert table.keys(b("SUNSUBSCRIBE"), channels=True) == []
    assert table.keys(b("GET", "k"), channels=True) == b("k")


def test_keyword_match_is_c_strcasecmp(table: CommandTable) -> None:
    # strcasecmp stops at a NUL byte, so the server reads "STREAMS\0junk" as STREAMS.
    assert table.key_indexes([b"XREAD", b"STREAMS\x00junk", b"a", b"0"]) == [2]
    assert table.key_indexes([b"XREAD", b"sTrEaMs", b"a", b"0"]) == [2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (b("GET"), "wrong number of arguments for 'get' command"),
        (b("GET", "a", "b"), "wrong number of arguments for 'get' command"),
        (b("OBJECT", "ENCODING"), "wrong number of arguments for 'object|encoding' command"),
        (b("MGET"), "wrong number of arguments for 'mget' command"),
        (b("NOSUCH", "a"), "unknown command 'NOSUCH', with args beginning with: 'a'"),
        (b("CONFIG", "NOSUCH"), "unknown subcommand 'NOSUCH'. Try CONFIG HELP."),
        ([], "empty command"),
        (b("ZUNIONSTORE", "d", "x", "a"), "numkeys b'x' is not a valid number of keys"),
        (b("ZUNIONSTORE", "d", "-1", "a"), "is not a valid number of keys"),
        (b("ZUNIONSTORE", "d", "01", "a"), "is not a valid number of keys"),
        (b("ZUNIONSTORE", "d", "3", "a", "b"), "past the last argument"),
        (b("ZUNIONSTORE", "d", "0", "a"), "no key is given"),
        (b("LMPOP", "5", "a", "LEFT"), "past the last argument"),
        (b("XREAD", "COUNT", "1", "BLOCK", "0"), "no key is given"),
        (b("MIGRATE", "h", "1", "k", "0", "5000", "KEYS", "a"), "no key is given"),
    ],
)
def test_unroutable(table: CommandTable, args: list[bytes], message: str) -> None:
    with pytest.raises(UnroutableError, match=message.replace("(", r"\(").replace("[", r"\[")):
        table.key_indexes(args)


def test_arity_error_is_the_servers_own_text(table: CommandTable) -> None:
    with pytest.raises(UnroutableError) as info:
        table.key_indexes(b("GET"))
    assert info.value.resp_line() == b"-ERR wrong number of arguments for 'get' command\r\n"


def test_no_mandatory_keys_gives_empty(table: CommandTable) -> None:
    for args in (b("EVAL", "s", "x"), b("FCALL", "f", "-1"), b("EVAL_RO", "s", "5", "a")):
        assert table.key_indexes(args) == []


@given(
    st.sampled_from(sorted(CommandTable.bundled().names())),
    st.lists(
        st.sampled_from([b"STREAMS", b"STORE", b"KEYS", b"0", b"1", b"2", b"-1", b"", b"x"])
        | st.binary(max_size=4),
        max_size=8,
    ),
)
def test_key_indexes_total(name: str, rest: list[bytes]) -> None:
    """Any argument list: positions inside the list, or UnroutableError, nothing else."""
    args = [w.encode() for w in name.split()] + rest
    try:
        indexes = CommandTable.bundled().key_indexes(args)
    except UnroutableError:
        return
    assert all(1 <= i < len(args) for i in indexes)


# --------------------------------------------------------------------------- lookup and specs


def test_lookup(table: CommandTable) -> None:
    spec = table.lookup(b("cluster", "SLOTS"))
    assert spec is not None
    assert spec.name == "cluster|slots"
    assert spec.container == "cluster"
    assert spec.display_name == "CLUSTER SLOTS"
    config = table.lookup(b("Config"))
    assert config is not None
    assert config.is_container
    assert "get" in config.subcommands
    assert table.lookup(b("config", "nosuch")) is None
    assert table.lookup(b("nosuch")) is None
    assert table.lookup([]) is None
    assert table.lookup(b("XINFO", "stream", "s")) is table.get("xinfo|stream")
    assert table.get("XINFO STREAM") is table.get("xinfo|stream")
    assert table.get("get nosuch") is None


def test_names(table: CommandTable) -> None:
    names = table.names()
    assert "get" in names
    assert "config get" in names
    assert "cluster slots" in names
    assert "config|get" not in names
    assert len(names) == len(list(table.all_commands()))


@pytest.mark.parametrize(
    ("name", "request_policy", "response_policy"),
    [
        ("dbsize", "all_shards", "agg_sum"),
        ("keys", "all_shards", None),
        ("mget", "multi_shard", None),
        ("del", "multi_shard", "agg_sum"),
        ("mset", "multi_shard", "all_succeeded"),
        ("flushall", "all_shards", "all_succeeded"),
        ("scan", "special", None),
        ("randomkey", "all_shards", None),
        ("ping", "all_shards", "all_succeeded"),
        ("script|exists", "all_shards", "agg_logical_and"),
        ("config|set", "all_nodes", "all_succeeded"),
        ("info", "all_shards", "special"),
        ("get", None, None),
    ],
)
def test_routing_tips(
    table: CommandTable, name: str, request_policy: str | None, response_policy: str | None
) -> None:
    spec = table.get(name)
    assert spec is not None
    assert spec.request_policy == request_policy
    assert spec.response_policy == response_policy


def test_tips_and_flags(table: CommandTable) -> None:
    keys, randomkey, get, blpop = (table.get(n) for n in ("keys", "randomkey", "get", "blpop"))
    assert keys is not None
    assert randomkey is not None
    assert get is not None
    assert blpop is not None
    assert "nondeterministic_output_order" in keys.tips
    assert randomkey.nondeterministic_output
    assert get.readonly
    assert get.fast
    assert not get.write
    assert get.has_keys
    assert blpop.blocking
    assert blpop.write
    subscribe, evalc, config_set = (table.get(n) for n in ("subscribe", "eval", "config set"))
    assert subscribe is not None
    assert evalc is not None
    assert config_set is not None
    assert subscribe.pubsub
    assert not subscribe.has_keys
    assert evalc.movablekeys
    assert evalc.noscript
    assert evalc.no_mandatory_keys
    assert config_set.admin
    assert config_set.check_arity(4)
    assert not config_set.check_arity(2)


def test_key_specs_and_docs(table: CommandTable) -> None:
    xread = table.get("xread")
    assert xread is not None
    (spec,) = xread.key_specs
    assert spec.begin_search == BeginSearch("keyword", keyword="STREAMS", startfrom=1)
    assert spec.find_keys == FindKeys("range", lastkey=-1, keystep=1, limit=2)
    assert spec.flags == {"RO", "access"}
    zunionstore = table.get("zunionstore")
    assert zunionstore is not None
    assert zunionstore.key_specs[1].find_keys == FindKeys("keynum", keynumidx=0, firstkey=1)
    assert zunionstore.summary
    assert zunionstore.group == "sorted-set"
    assert zunionstore.since == "2.0.0"
    assert [a.name for a in zunionstore.arguments][:3] == ["destination", "numkeys", "key"]
    assert zunionstore.arguments[2].multiple
    sort = table.get("sort")
    assert sort is not None
    assert not all(s.complete for s in sort.key_specs)
    georadius = table.get("georadius")
    assert georadius is not None
    assert "deprecated" in georadius.doc_flags
    assert georadius.replaced_by


# --------------------------------------------------------------------------- reply shapes


GET_RESP2: list[RespValue] = [
    b"get",
    2,
    [SimpleString(b"readonly"), SimpleString(b"fast")],
    1,
    1,
    1,
    [SimpleString(b"@read")],
    [],
    [
        [
            b"flags",
            [SimpleString(b"RO"), SimpleString(b"access")],
            b"begin_search",
            [b"type", b"index", b"spec", [b"index", 1]],
            b"find_keys",
            [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
        ]
    ],
    [],
]

GET_RESP3: list[RespValue] = [
    b"get",
    2,
    RespSet([SimpleString(b"readonly"), SimpleString(b"fast")]),
    1,
    1,
    1,
    RespSet([SimpleString(b"@read")]),
    RespSet([]),
    [
        RespMap(
            [
                (b"flags", RespSet([SimpleString(b"RO"), SimpleString(b"access")])),
                (
                    b"begin_search",
                    RespMap([(b"type", b"index"), (b"spec", RespMap([(b"index", 1)]))]),
                ),
                (
                    b"find_keys",
                    RespMap(
                        [
                            (b"type", b"range"),
                            (
                                b"spec",
                                RespMap([(b"lastkey", 0), (b"keystep", 1), (b"limit", 0)]),
                            ),
                        ]
                    ),
                ),
            ]
        )
    ],
    RespSet([]),
]

DBSIZE_RESP2: list[RespValue] = [
    b"dbsize",
    1,
    [b"readonly", b"fast"],
    0,
    0,
    0,
    [b"@keyspace"],
    [b"request_policy:all_shards", b"response_policy:agg_sum"],
    [],
    [],
]

DOCS_RESP2: list[RespValue] = [
    b"get",
    [
        b"summary",
        b"Get the value of a key",
        b"since",
        b"1.0.0",
        b"group",
        b"string",
        b"complexity",
        b"O(1)",
        b"arguments",
        [[b"name", b"key", b"type", b"key", b"key_spec_index", 0]],
    ],
]

DOCS_RESP3 = RespMap(
    [
        (
            b"get",
            RespMap(
                [
                    (b"summary", b"Get the value of a key"),
                    (b"since", b"1.0.0"),
                    (b"group", b"string"),
                    (b"complexity", b"O(1)"),
                    (
                        b"arguments",
                        [RespMap([(b"name", b"key"), (b"type", b"key"), (b"key_spec_index", 0)])],
                    ),
                ]
            ),
        )
    ]
)


def test_from_replies_resp2_and_resp3_agree() -> None:
    resp2 = CommandTable.from_replies([GET_RESP2, DBSIZE_RESP2], DOCS_RESP2)
    resp3 = CommandTable.from_replies([GET_RESP3, DBSIZE_RESP2], DOCS_RESP3)
    assert resp2 == resp3
    get = resp2.get("get")
    assert get is not None
    assert get == CommandSpec(
        name="get",
        arity=2,
        flags=frozenset({"readonly", "fast"}),
        first_key=1,
        last_key=1,
        step=1,
        acl_categories=frozenset({"@read"}),
        key_specs=(
            KeySpec(BeginSearch("index", 1), FindKeys("range"), frozenset({"RO", "access"})),
        ),
        summary="Get the value of a key",
        since="1.0.0",
        group="string",
        complexity="O(1)",
        arguments=get.arguments,
    )
    assert get.arguments[0].key_spec_index == 0
    assert resp2.key_indexes(b("GET", "k")) == [1]
    dbsize = resp2.get("dbsize")
    assert dbsize is not None
    assert dbsize.request_policy == "all_shards"
    assert dbsize.summary == ""  # docs were given, and say nothing about dbsize


def test_from_replies_unwraps_attributes_and_skips_unknown() -> None:
    wrapped = Attributed(RespMap([]), [None, Attributed(RespMap([]), GET_RESP2)])
    table = CommandTable.from_replies(wrapped, DOCS_RESP2)
    assert list(table.commands) == ["get"]


def test_from_replies_without_docs_uses_the_snapshot() -> None:
    for docs in (None, ErrorReply(b"ERR unknown subcommand 'DOCS'")):
        table = CommandTable.from_replies([GET_RESP2], docs)
        get = table.get("get")
        assert get is not None
        assert get.summary == "Get the value of a key"


def test_from_replies_redis6_entries() -> None:
    # Redis 6: 7 fields, no tips, key specs or subcommands.
    legacy_eval: list[RespValue] = [b"eval", -3, [b"noscript", b"movablekeys"], 0, 0, 0, []]
    legacy_mget: list[RespValue] = [b"mget", -2, [b"readonly"], 1, -1, 1, []]
    module_cmd: list[RespValue] = [b"my.cmd", -3, [b"write"], 2, 3, 1, []]
    table = CommandTable.from_replies([legacy_eval, legacy_mget, module_cmd], None)
    assert table.key_indexes(b("EVAL", "s", "1", "k")) == [3]  # specs from the snapshot
    assert table.key_indexes(b("MGET", "a", "b")) == [1, 2]
    assert table.key_indexes(b("MY.CMD", "x", "a", "b", "c")) == [2, 3]  # first/last/step


def test_from_replies_errors() -> None:
    with pytest.raises(ReplyError, match="NOPERM"):
        CommandTable.from_replies(ErrorReply(b"NOPERM this user has no permissions"))
    with pytest.raises(RespProtocolError):
        CommandTable.from_replies(b"nonsense")
    with pytest.raises(RespProtocolError):
        CommandTable.from_replies([[b"get", 2]])


def test_movablekeys_without_specs_is_unroutable() -> None:
    table = CommandTable.from_replies([[b"my.movable", -2, [b"movablekeys"], 0, 0, 0, []]])
    with pytest.raises(UnroutableError, match="unknown"):
        table.key_indexes(b("MY.MOVABLE", "a"))


def test_commands_module_is_pure() -> None:
    tree = ast.parse(inspect.getsource(client.commands))
    modules = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m.split(".")[0] for m in modules} & {"trio", "anyio", "socket", "ssl"}
