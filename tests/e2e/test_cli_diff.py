"""Differential test: our CLI and the real ``redis-cli`` print the same bytes.

The same data is loaded into the same real server before each run, then the same commands go
through both programs, as piped lines (redis-cli's REPL path) and as one-shot arguments, in
RESP2 and RESP3 (``-3``), typed (``--no-raw``) and raw (``--raw``). The corpus covers every reply
type a server sends (status, error, integer, bulk, nil, arrays, nested arrays, empty
aggregates, maps, sets, doubles, booleans, verbatim strings), the texts redis-cli prints
verbatim (INFO...), binary and non-ASCII values, and redis-cli's own line errors.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from servers import redis_py, skip_or_fail

from client.cliformat import split_line
from client.commands import CommandTable
from client.connection import open_connection
from client.embedded import RedisNode, find_redis_cli
from client.options import ServerOptions
from client.values import RespValue

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from client.main import main; sys.exit(main())"

# Lines typed as a user would type them (redis-cli's quoting rules apply to both programs).
CORPUS: list[bytes] = [
    b"PING",
    b'PING "hello there"',
    b'ECHO "\\x00\\xff\\r\\n\\t\\"\\\\"',
    b"ECHO \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
    b"ECHO 'single \\' quoted'",
    b"ECHO \xff\xfe",
    b'ECHO ""',
    b"GET diff:str",
    b"GET diff:bin",
    b"GET diff:utf8",
    b"GET diff:missing",
    b"MGET diff:str diff:missing diff:bin",
    b'SET diff:new "a\\tb"',
    b"GET diff:new",
    b"SET diff:new x NX",
    b"INCR diff:int",
    b"INCRBYFLOAT diff:float 1.5",
    b"STRLEN diff:utf8",
    b"LRANGE diff:list 0 -1",
    b"LRANGE diff:missing 0 -1",
    b"LPOP diff:missing",
    b"HGETALL diff:hash",
    b"HGETALL diff:missing",
    b"HMGET diff:hash f1 nope",
    b"SMEMBERS diff:set",
    b"SMEMBERS diff:missing",
    b"SISMEMBER diff:set x",
    b"ZRANGE diff:zset 0 -1 WITHSCORES",
    b"ZRANGE diff:zset 0 -1 WITHSCORES REV",
    b"ZSCORE diff:zset b",
    b"ZSCORE diff:zset nope",
    b"ZRANK diff:zset c",
    b"ZRANGE diff:long 0 -1",
    b"XRANGE diff:stream - +",
    b"XREAD STREAMS diff:stream 0",
    b"TYPE diff:hash",
    b"OBJECT ENCODING diff:list",
    b"EXISTS diff:str diff:missing diff:bin",
    b"GET diff:list",
    b"NOSUCHCOMMAND arg",
    b"GET",
    b"CONFIG GET maxmemory-policy",
    b"COMMAND INFO get",
    b"COMMAND DOCS get",
    b"COMMAND GETKEYS SET a b",
    b"MULTI",
    b"SET diff:tx 1",
    b"INCR diff:tx",
    b"EXEC",
    b"EVAL \"return {1, 'two', {3, 'four', {}}, false}\" 0",
    b'EVAL "redis.setresp(3); return {map={a=1}}" 0',
    b'EVAL "redis.setresp(3); return {set={a=true}}" 0',
    b'EVAL "redis.setresp(3); return {double=3.5}" 0',
    b'EVAL "redis.setresp(3); return true" 0',
    b'EVAL "redis.setresp(3); return false" 0',
    b"EVAL \"redis.setresp(3); return {verbatim_string={format='txt', string='a\\nb'}}\" 0",
    b"EVAL \"return redis.error_reply('MYERR custom')\" 0",
    b"EVAL \"return redis.status_reply('FINE')\" 0",
    b"OBJECT HELP",
    b"INFO keyspace",
    b"CLUSTER INFO",
    b"SCAN 0 MATCH diff:str* COUNT 1000",
    b'SET diff:bad "unbalanced',
    b"'closing'quote",
    b"3 ECHO thrice",
    b"-1 PING",
]

# One-shot runs are a subprocess each, so they take a representative few.
ONE_SHOT: list[bytes] = [
    b"GET diff:bin",
    b"HGETALL diff:hash",
    b"ZRANGE diff:zset 0 -1 WITHSCORES",
    b"XRANGE diff:stream - +",
    b"NOSUCHCOMMAND arg",
    b"INFO keyspace",
    b"EVAL \"return {1, 'two', {3, 'four', {}}, false}\" 0",
    b"LRANGE diff:missing 0 -1",
]

MODES = [
    pytest.param(["--no-raw"], id="resp2-typed"),
    pytest.param(["--raw"], id="resp2-raw"),
    pytest.param(["-3", "--no-raw"], id="resp3-typed"),
    pytest.param(["-3", "--raw"], id="resp3-raw"),
]


def load(node: RedisNode) -> None:
    """Put the same data in place before each run (the corpus also writes)."""
    with redis_py(node) as r:
        for key in r.scan_iter(match="diff:*"):
            r.delete(key)
        r.set("diff:str", "hello world")
        r.set("diff:bin", b"\x00\x01\xff\xfe\r\n\t\"\\'")
        r.set("diff:utf8", "héllo wörld 日本語 🎉")
        r.set("diff:int", 41)
        r.set("diff:float", "3.14")
        r.rpush("diff:list", "a", "b c", b"\xff", "", "日本")
        r.hset("diff:hash", mapping={"f1": "v1", "f 2": b"\x00", "ключ": "значение"})
        r.sadd("diff:set", "x", "y")
        r.zadd("diff:zset", {"a": 1, "b": 2.5, "c": float("-inf"), "d": 1e20})
        r.rpush("diff:long", *[f"item{i}" for i in range(12)])
        r.xadd("diff:stream", {"f": "v"}, id="1-1")
        r.xadd("diff:stream", {"a": "b", "c": "d"}, id="2-1")


def run(program: list[str], flags: list[str], *, stdin: bytes | None, args: list[bytes]) -> bytes:
    done = subprocess.run(
        [*program, *flags, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("REDISCLI", "REDIS_CL"))},
            "PYTHONPATH": str(ROOT),
        },
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def compare(theirs: bytes, ours: bytes) -> None:
    if theirs != ours:
        diff = difflib.unified_diff(
            theirs.decode("latin-1").splitlines(keepends=True),
            ours.decode("latin-1").splitlines(keepends=True),
            "redis-cli",
            "redis-client cli",
        )
        pytest.fail("outputs differ:\n" + "".join(diff), pytrace=False)


def programs(node: RedisNode) -> tuple[list[str], list[str]]:
    where = ["-h", node.host, "-p", str(node.port)]
    return [find_redis_cli(), *where], [sys.executable, "-c", ENTRY, "cli", *where]


@pytest.mark.parametrize("flags", MODES)
def test_piped_corpus(redis_plain: RedisNode, flags: list[str]) -> None:
    redis_cli, ours = programs(redis_plain)
    script = b"".join(line + b"\n" for line in CORPUS)
    load(redis_plain)
    theirs_out = run(redis_cli, flags, stdin=script, args=[])
    load(redis_plain)
    ours_out = run(ours, flags, stdin=script, args=[])
    assert theirs_out.count(b"\n") > len(CORPUS)  # the corpus ran
    compare(theirs_out, ours_out)


@pytest.mark.parametrize("flags", MODES)
def test_one_shot(redis_plain: RedisNode, flags: list[str]) -> None:
    redis_cli, ours = programs(redis_plain)
    load(redis_plain)
    for line in ONE_SHOT:
        args = split_line(line)
        compare(
            run(redis_cli, flags, stdin=None, args=args), run(ours, flags, stdin=None, args=args)
        )


def test_default_output_when_stdout_is_not_a_tty(redis_plain: RedisNode) -> None:
    """Without --raw/--no-raw both pick raw output, since stdout is a pipe here."""
    redis_cli, ours = programs(redis_plain)
    load(redis_plain)
    script = b"HGETALL diff:hash\nLRANGE diff:list 0 -1\nGET diff:missing\n"
    compare(run(redis_cli, [], stdin=script, args=[]), run(ours, [], stdin=script, args=[]))


def test_help_matches_redis_cli_for_every_command(redis_plain: RedisNode) -> None:
    """``help CMD`` shows the same synopsis, summary, since and group as redis-cli (COMMAND DOCS).

    redis-cli always colours help; ours colours only a terminal, so colours and CRs are dropped.
    """
    redis_cli, ours = programs(redis_plain)
    names = run(redis_cli, ["--raw"], stdin=None, args=[b"COMMAND", b"LIST"]).split()
    script = b"".join(b"help " + name + b"\n" for name in names if b"|" not in name)

    def lines(out: bytes) -> list[bytes]:
        plain = re.sub(rb"\x1b\[[0-9;]*m", b"", out).replace(b"\r", b"")
        return [line.rstrip() for line in plain.splitlines() if line.strip()]

    theirs, mine = (
        lines(run(redis_cli, [], stdin=script, args=[])),
        lines(run(ours, [], stdin=script, args=[])),
    )
    assert len(theirs) > 4 * 200  # four lines per command
    compare(b"\n".join(theirs), b"\n".join(mine))


def test_bundled_help_matches_the_server(redis_plain: RedisNode) -> None:
    """Offline help (not connected, or Redis < 7) says what the server's COMMAND DOCS says."""
    from client.cliformat import bundled_docs, parse_command_docs

    async def fetch() -> RespValue:
        async with open_connection(
            ServerOptions(host=redis_plain.host, port=redis_plain.port)
        ) as c:
            return await c.request("COMMAND", "DOCS")

    bundled_version = CommandTable.bundled().redis_version
    with redis_py(redis_plain) as r:
        server_version = r.info("server")["redis_version"]
    if server_version != bundled_version:
        skip_or_fail(f"snapshot from Redis {bundled_version}, server is {server_version}")
    server = parse_command_docs(trio.run(fetch))
    assert len(server) > 300
    assert bundled_docs() == server


# Client-side caching: our own writes invalidate the keys we read (no NOLOOP), and the server
# sends the invalidation right after the write's reply, so both CLIs see it at the same point.
PUSH_SCRIPT: list[bytes] = [
    b"CLIENT TRACKING ON",
    b"GET diff:push:a",
    b"GET diff:push:b",
    b'GET "diff:push:\\xff"',
    b"SET diff:push:a 1",
    b"PING",
    b"MSET diff:push:a 2 diff:push:b 3",
    b"PING",
    b"GET diff:push:a",
    b'SET "diff:push:\\xff" x',
    b"DEL diff:push:a",
    b"ECHO last",
    b"CLIENT TRACKING OFF",
    b"CLIENT TRACKING ON BCAST PREFIX diff:push:b",
    b"SET diff:push:b 4",
    b"PING",
]


@pytest.mark.parametrize("show", [["--show-pushes", "yes"], ["--show-pushes", "no"], []])
@pytest.mark.parametrize("flags", [["-3", "--no-raw"], ["-3", "--raw"], ["-3"]])
def test_pushes_between_replies(redis_plain: RedisNode, flags: list[str], show: list[str]) -> None:
    """RESP3 invalidation pushes: printed (or not) where and as redis-cli prints them."""
    redis_cli, ours = programs(redis_plain)
    script = b"".join(line + b"\n" for line in PUSH_SCRIPT)
    outputs = []
    for program in (redis_cli, ours):
        with redis_py(redis_plain) as r:
            r.delete("diff:push:a", "diff:push:b", b"diff:push:\xff")
        outputs.append(run(program, [*flags, *show], stdin=script, args=[]))
    theirs, mine = outputs
    compare(theirs, mine)
    shown = show == ["--show-pushes", "yes"]  # the default is "when stdout is a terminal"
    typed = "--no-raw" in flags
    assert (b"-> invalidate: 'diff:push:a'\n" in mine) is (shown and typed)
    assert (b"invalidate\ndiff:push:a\n" in mine) is (shown and not typed)
