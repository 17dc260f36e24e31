"""The smart tunnel against a real TLS cluster: real clients (redis-py 2/3, redis-cli,
redis-benchmark), every emulated semantic, and slot migration / failover under load."""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import pytest
import redis
import redis.cluster
import trio
from servers import redis_py_cluster, skip_or_fail

from client.credentials import Credential, CredentialProvider
from client.embedded import LocalCluster, RedisNode
from client.options import ServerOptions, TlsOptions
from client.slots import key_slot, tag_for_slot
from tunnel.relay import Reauth
from tunnel.server import TunnelConfig, TunnelInfo
from tunnel.smart import SmartStats, serve_smart
from tunnel.stats import TunnelStats

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

T = TypeVar("T")
GUARD = 60  # seconds: every test body is bounded


@dataclass
class Smart:
    port: int
    out: io.StringIO
    info: TunnelInfo
    counters: SmartStats

    def client(self, protocol: int = 2, **kw: Any) -> redis.Redis:
        options: dict[str, Any] = {"socket_timeout": 20, "socket_connect_timeout": 10}
        options.update(kw)
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=protocol, **options)


def tunnel_config(cluster: LocalCluster, **kw: Any) -> TunnelConfig:
    seed = cluster.seed
    upstream = ServerOptions(
        host=seed.host,
        port=seed.port,
        tls=TlsOptions(cacert=str(cluster.certs.ca)),
        password=cluster.password,
        cluster=True,
    )
    return TunnelConfig(
        upstream=upstream, listen="127.0.0.1", local_port=0, out=io.StringIO(), **kw
    )


async def start_smart(
    nursery: trio.Nursery,
    cluster: LocalCluster,
    *,
    pool_size: int = 2,
    retry_window: float = 20.0,
    stall_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    **kw: Any,
) -> Smart:
    config = tunnel_config(cluster, **kw)
    counters = SmartStats()
    info: TunnelInfo = await nursery.start(
        lambda task_status: serve_smart(
            config,
            pool_size=pool_size,
            retry_window=retry_window,
            stall_timeout=stall_timeout,
            connect_timeout=connect_timeout,
            counters=counters,
            task_status=task_status,
        )
    )
    assert isinstance(config.out, io.StringIO)
    return Smart(info.listeners[0].local.port, config.out, info, counters)


@pytest.fixture
async def smart(redis_cluster: LocalCluster, nursery: trio.Nursery) -> Smart:
    return await start_smart(nursery, redis_cluster)


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(GUARD):
        return await trio.to_thread.run_sync(fn)


def keys_on_every_master(prefix: str, per_slot: int = 1) -> list[str]:
    """Keys whose slots spread over the default 3-master layout (0-5460, 5461-10922, ...)."""
    out = []
    for slot in (0, 100, 5461, 7000, 10923, 16383):
        tag = tag_for_slot(slot)
        out += [f"{{{tag}}}{prefix}:{n}" for n in range(per_slot)]
    return out


def masters_dbsize(cluster: LocalCluster) -> int:
    total = 0
    for node in cluster.masters():
        size = node.call("DBSIZE")
        assert isinstance(size, int)
        total += size
    return total


def raw_exchange(port: int, data: bytes, *, until: bytes | None = None, limit: float = 10) -> bytes:
    """Send bytes on a plain socket; read until ``until`` is seen, or EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(data)
        got = b""
        while until is None or until not in got:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        return got


# --------------------------------------------------------------------------- basics


async def test_listener_and_ready_lines(smart: Smart, redis_cluster: LocalCluster) -> None:
    lines = smart.out.getvalue().splitlines()
    seed = redis_cluster.seed
    assert lines[0] == f"127.0.0.1:{smart.port} -> {seed.host}:{seed.port} (cluster)"
    assert lines[1].startswith("ready")


@pytest.mark.parametrize("protocol", [2, 3])
async def test_redis_py_plain_client(smart: Smart, protocol: int) -> None:
    def body() -> None:
        with smart.client(protocol) as r:
            keys = keys_on_every_master(f"basic{protocol}")
            for n, key in enumerate(keys):
                assert r.set(key, n)
            assert [r.get(k) for k in keys] == [str(n).encode() for n in range(len(keys))]
            h = f"{{h{protocol}}}hash"
            r.delete(h)
            r.hset(h, mapping={"a": "1", "b": "2"})
            assert r.hgetall(h) == {b"a": b"1", b"b": b"2"}
            z = f"{{h{protocol}}}zset"
            r.delete(z)
            r.zadd(z, {"m1": 1.5, "m2": 2})
            assert r.zrange(z, 0, -1, withscores=True) in (
                [(b"m1", 1.5), (b"m2", 2.0)],
                [[b"m1", 1.5], [b"m2", 2.0]],
            )
            assert r.zscore(z, "m1") == 1.5
            assert r.ping()
            assert r.echo("x") == b"x"
            assert isinstance(r.time()[0], int)

    await in_thread(body)


async def test_pipeline_mixing_nodes_keeps_order(smart: Smart) -> None:
    keys = keys_on_every_master("order", per_slot=20)

    def body() -> None:
        with smart.client() as r:
            pipe = r.pipeline(transaction=False)
            for n, key in enumerate(keys):
                pipe.set(key, n)
                pipe.echo(f"e{n}")
                pipe.get(key)
                pipe.incr(f"{key}:ctr")
            replies = pipe.execute()
            expected: list[Any] = []
            for n, key in enumerate(keys):
                counter = r.get(f"{key}:ctr")
                expected += [True, f"e{n}".encode(), str(n).encode(), int(counter or 0)]
            assert replies == expected

    await in_thread(body)


async def test_raw_pipeline_in_one_write(smart: Smart) -> None:
    keys = keys_on_every_master("raw", per_slot=50)
    commands = []
    for n, key in enumerate(keys):
        commands.append(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(str(n))}\r\n{n}\r\n")
        commands.append(f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n")
        commands.append("PING\r\n")  # inline, answered by the tunnel itself
    expected = b"".join(
        b"+OK\r\n$%d\r\n%d\r\n+PONG\r\n" % (len(str(n)), n) for n in range(len(keys))
    )
    got = await in_thread(
        lambda: raw_exchange(smart.port, "".join(commands).encode(), until=expected[-30:])
    )
    assert got == expected


async def test_mget_mset_split_by_node(smart: Smart, redis_cluster: LocalCluster) -> None:
    keys = keys_on_every_master("split", per_slot=3)
    assert len({key_slot(k.encode()) for k in keys}) == 6

    def body() -> None:
        with smart.client() as r:
            r.delete(*keys)
            assert r.mset({k: f"v{n}" for n, k in enumerate(keys) if n % 2 == 0})
            values = r.mget(keys)
            assert values == [f"v{n}".encode() if n % 2 == 0 else None for n in range(len(keys))]
            assert r.exists(*keys, keys[0]) == (len(keys) + 1) // 2 + 1
            assert r.touch(*keys) == (len(keys) + 1) // 2
            assert r.unlink(*keys[:4]) == 2
            assert r.delete(*keys) == (len(keys) + 1) // 2 - 2
        with redis_py_cluster(redis_cluster) as direct:
            assert direct.exists(*keys) == 0

    await in_thread(body)


async def test_dbsize_sums_and_keys_unions(smart: Smart, redis_cluster: LocalCluster) -> None:
    keys = keys_on_every_master("union", per_slot=5)

    def body() -> None:
        with smart.client() as r:
            r.mset(dict.fromkeys(keys, "1"))
            assert r.dbsize() == masters_dbsize(redis_cluster)
            assert sorted(r.keys("*union:*")) == sorted(k.encode() for k in keys)
            info = r.info("keyspace")
            assert info["db0"]["keys"] == masters_dbsize(redis_cluster)

    await in_thread(body)


async def test_full_scan_returns_every_key(smart: Smart) -> None:
    keys = {f"scan:{n}" for n in range(400)}

    def body() -> None:
        with smart.client() as r:
            r.mset(dict.fromkeys(keys, "x"))
            seen: set[bytes] = set()
            cursor = 0
            rounds = 0
            while True:
                cursor, batch = r.scan(cursor, match="scan:*", count=37)
                seen.update(batch)
                rounds += 1
                assert rounds < 10_000
                if cursor == 0:
                    break
            assert seen == {k.encode() for k in keys}
            assert rounds > 3  # the cursor walked node after node

    await in_thread(body)


async def test_crossslot_names_slots_and_suggests_a_tag(smart: Smart) -> None:
    def body() -> None:
        with smart.client() as r:
            r.set("cs:a", 1)
            with pytest.raises(redis.ResponseError) as caught:
                r.rename("cs:a", "cs:b")
            text = str(caught.value)
            assert text.startswith("Keys in request don't hash to the same slot")
            assert f"slot {key_slot(b'cs:a')}" in text
            assert f"slot {key_slot(b'cs:b')}" in text
            assert "hash tag" in text
            with pytest.raises(redis.ResponseError, match="same slot"):
                r.msetnx({"cs:x": 1, "cs:y": 2})
            assert r.msetnx({"{cs}x": 1, "{cs}y": 2}) in (True, False)
            r.set("{cs}a", 1)
            assert r.rename("{cs}a", "{cs}b")

    await in_thread(body)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_multi_exec_and_watch(smart: Smart, protocol: int) -> None:
    def body() -> None:
        with smart.client(protocol) as r:
            r.delete("{tx}n", "{tx}list")
            with r.pipeline(transaction=True) as pipe:
                pipe.incr("{tx}n").incr("{tx}n").rpush("{tx}list", "a").lrange("{tx}list", 0, -1)
                assert pipe.execute() == [1, 2, 1, [b"a"]]
            # WATCH: a change by another client aborts the transaction
            with r.pipeline(transaction=True) as pipe, smart.client(protocol) as other:
                pipe.watch("{tx}n")
                other.incr("{tx}n")
                pipe.multi()
                pipe.incr("{tx}n")
                with pytest.raises(redis.WatchError):
                    pipe.execute()
            assert r.get("{tx}n") == b"3"
            r.delete("{tx}n")
            # keys of several slots in one transaction: refused, nothing runs
            with r.pipeline(transaction=True) as pipe:
                pipe.set("tx:one", 1).set("tx:two", 2)
                with pytest.raises(redis.ResponseError, match="same slot"):
                    pipe.execute()
            assert r.exists("tx:one", "tx:two") == 0

    await in_thread(body)


async def test_blpop_does_not_stall_other_clients(
    smart: Smart, redis_cluster: LocalCluster
) -> None:
    key = "{bl}queue"
    popped: list[Any] = []
    node = _owner(redis_cluster, key_slot(key.encode()))

    def blocker() -> None:
        with smart.client() as r:
            popped.append(r.blpop([key], timeout=0))

    def others() -> None:
        with smart.client() as r:
            r.delete(key)
        thread = threading.Thread(target=blocker)
        thread.start()
        try:
            for _ in range(500):  # until the BLPOP really waits on its node
                if int(node.info("clients").get("blocked_clients", "0")) >= 1:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the BLPOP never reached its node")
            for _ in range(5):  # many clients work while the BLPOP waits on its node
                with smart.client() as r:
                    for n in range(50):
                        assert r.set(f"{{bl}}other:{n}", n)
                        assert r.get(f"{{bl}}other:{n}") == str(n).encode()
            assert thread.is_alive()  # still blocked: nothing was pushed yet
            with smart.client() as r:
                r.rpush(key, "done")
        finally:
            thread.join(GUARD)
        assert popped == [(b"{bl}queue", b"done")]

    await in_thread(others)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_pubsub(smart: Smart, protocol: int) -> None:
    def body() -> None:
        with smart.client(protocol) as r, smart.client(protocol) as pub:
            ps = r.pubsub()
            ps.subscribe(f"news{protocol}")
            first = ps.get_message(timeout=5)
            assert first is not None
            assert first["type"] == "subscribe"
            assert pub.publish(f"news{protocol}", "hello") == 1
            message = ps.get_message(timeout=5)
            assert message is not None
            assert (message["type"], message["data"]) == ("message", b"hello")
            ps.psubscribe(f"new*{protocol}")
            confirm = ps.get_message(timeout=5)
            assert confirm is not None
            assert (confirm["type"], confirm["data"]) == ("psubscribe", 2)
            pub.publish(f"news{protocol}", "again")
            got = [ps.get_message(timeout=5), ps.get_message(timeout=5)]
            assert sorted(m["type"] for m in got if m) == ["message", "pmessage"]
            ps.unsubscribe()
            ps.punsubscribe()
            kinds = [ps.get_message(timeout=5), ps.get_message(timeout=5)]
            assert [m["type"] for m in kinds if m] == ["unsubscribe", "punsubscribe"]
            assert pub.publish(f"news{protocol}", "gone") == 0
            ps.close()

    await in_thread(body)


async def test_resp2_pubsub_over_resp3_links_when_the_credential_can_rotate(
    redis_cluster: LocalCluster, nursery: trio.Nursery
) -> None:
    """With a rotating credential, pub/sub links speak RESP3 (so AUTH works on them); a RESP2
    client still gets RESP2 frames, the null channel of a bare UNSUBSCRIBE included."""
    password = redis_cluster.password

    async def source() -> str:
        return password

    provider = CredentialProvider(username="default", source=source, refresh_every=3600)
    smart = await start_smart(nursery, redis_cluster, credentials=provider)
    wire = (
        b"SUBSCRIBE rot:a rot:b\r\nUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nPSUBSCRIBE rot:*\r\n"
        b"PUNSUBSCRIBE rot:*\r\nPING\r\n"
    )
    got = await in_thread(lambda: raw_exchange(smart.port, wire, until=b"+PONG\r\n"))
    head = (
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nrot:a\r\n:1\r\n"
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nrot:b\r\n:2\r\n"
    )
    unsubscribed = [  # the server picks the order of a bare UNSUBSCRIBE
        b"*3\r\n$11\r\nunsubscribe\r\n$5\r\n%s\r\n:%d\r\n" % (channel, count)
        for channel, count in ((b"rot:a", 1), (b"rot:b", 0))
    ]
    other_order = [
        b"*3\r\n$11\r\nunsubscribe\r\n$5\r\n%s\r\n:%d\r\n" % (channel, count)
        for channel, count in ((b"rot:b", 1), (b"rot:a", 0))
    ]
    tail = (
        b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"  # RESP3's null channel, in RESP2
        b"*3\r\n$10\r\npsubscribe\r\n$5\r\nrot:*\r\n:1\r\n"
        b"*3\r\n$12\r\npunsubscribe\r\n$5\r\nrot:*\r\n:0\r\n"
        b"+PONG\r\n"
    )
    assert got in (
        head + b"".join(unsubscribed) + tail,
        head + b"".join(other_order) + tail,
    )

    def messages() -> None:
        with smart.client(2) as r, smart.client(2) as pub:
            ps = r.pubsub()
            ps.subscribe("rot:news")
            ps.psubscribe("rot:n*")
            assert [ps.get_message(timeout=5)["type"] for _ in range(2)] == [
                "subscribe",
                "psubscribe",
            ]
            assert pub.publish("rot:news", "hello") == 2
            got = [ps.get_message(timeout=5) for _ in range(2)]
            assert sorted((m["type"], m["data"]) for m in got) == [
                ("message", b"hello"),
                ("pmessage", b"hello"),
            ]
            ps.close()

    await in_thread(messages)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_ssubscribe(smart: Smart, protocol: int) -> None:
    channel = f"{{shard}}ch{protocol}"

    def body() -> None:
        with smart.client(protocol) as r, smart.client(protocol) as pub:
            ps = r.pubsub()
            ps.ssubscribe(channel)
            confirm = ps.get_sharded_message(timeout=5)
            assert confirm is not None
            assert confirm["type"] == "ssubscribe"
            assert pub.spublish(channel, "s-hello") == 1
            message = ps.get_sharded_message(timeout=5)
            assert message is not None
            assert (message["type"], message["data"]) == ("smessage", b"s-hello")
            ps.sunsubscribe()
            ps.close()

    await in_thread(body)


async def test_hello_client_name_and_select(smart: Smart) -> None:
    hello = await in_thread(
        lambda: raw_exchange(smart.port, b"HELLO 3\r\nCLIENT ID\r\n", until=b"modules")
    )
    assert hello.startswith(b"%7\r\n")
    assert b"proto\r\n:3\r\n" in hello
    assert b"server\r\n$5\r\nredis\r\n" in hello

    def body() -> None:
        with smart.client() as a, smart.client() as b:
            a.client_setname("alpha")
            b.client_setname("beta")
            assert a.client_getname() == "alpha" or a.client_getname() == b"alpha"
            assert b.client_getname() in ("beta", b"beta")
            assert a.client_id() != b.client_id()
            assert a.execute_command("SELECT", 0)
            with pytest.raises(redis.ResponseError, match="DB index is out of range"):
                a.execute_command("SELECT", 1)
            with pytest.raises(redis.ResponseError, match="unknown command"):
                a.execute_command("NOSUCHCOMMAND", "x")

    await in_thread(body)


async def test_cluster_commands_show_one_node(smart: Smart) -> None:
    def body() -> None:
        with smart.client() as r:
            slots = r.execute_command("CLUSTER", "SLOTS")
            assert slots[0][:2] == [0, 16383]
            assert slots[0][2][:2] == [b"127.0.0.1", smart.port]
            info = r.execute_command("CLUSTER", "INFO")
            assert b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode())
        # a cluster-mode client works against the single listener
        with redis.cluster.RedisCluster(host="127.0.0.1", port=smart.port) as rc:
            rc.set("rc:k", "v")
            assert rc.get("rc:k") == b"v"

    await in_thread(body)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not installed")
    return path


async def test_redis_cli_without_c(smart: Smart) -> None:
    cli = _tool("redis-cli")

    def run(*args: str) -> str:
        done = subprocess.run(
            [cli, "-p", str(smart.port), *args], capture_output=True, timeout=GUARD, check=True
        )
        return done.stdout.decode().strip()

    def body() -> None:
        assert run("SET", "cli:a", "1") == "OK"
        assert run("SET", "cli:b", "2") == "OK"
        assert run("MGET", "cli:a", "cli:b").split() == ["1", "2"]
        assert run("PING") == "PONG"
        assert "cluster_known_nodes:1" in run("CLUSTER", "INFO")

    await in_thread(body)


async def test_redis_benchmark_without_cluster(smart: Smart) -> None:
    bench = _tool("redis-benchmark")
    done = await in_thread(
        lambda: subprocess.run(
            [bench, "-p", str(smart.port), "-t", "set,get", "-n", "2000", "-c", "10", "-q"],
            capture_output=True,
            timeout=GUARD,
            check=False,
        )
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "SET:" in out
    assert "GET:" in out


async def test_script_load_reaches_every_master(smart: Smart, redis_cluster: LocalCluster) -> None:
    def body() -> None:
        with smart.client() as r:
            sha = r.script_load("return KEYS[1]")
            for node in redis_cluster.masters():
                assert node.call("SCRIPT", "EXISTS", sha) == [1]
            for key in keys_on_every_master("script"):
                assert r.evalsha(sha, 1, key) == key.encode()
            assert r.script_exists(sha, "0" * 40) == [True, False]

    await in_thread(body)


async def test_wait_counts_replicas_after_writes(smart: Smart) -> None:
    def body() -> None:
        with smart.client() as r:
            for key in keys_on_every_master("wait"):
                r.set(key, 1)
            assert r.execute_command("WAIT", 1, 5000) == 1
            assert r.execute_command("WAIT", 0, 0) >= 0

    await in_thread(body)


async def test_client_reply_and_resp2_subscribed_state(smart: Smart) -> None:
    got = await in_thread(
        lambda: raw_exchange(
            smart.port,
            b"CLIENT REPLY SKIP\r\nPING\r\nECHO shown\r\n"
            b"CLIENT REPLY OFF\r\nPING\r\nCLIENT REPLY ON\r\nECHO last\r\n",
            until=b"last\r\n",
        )
    )
    assert got == b"$5\r\nshown\r\n+OK\r\n$4\r\nlast\r\n"
    got = await in_thread(
        lambda: raw_exchange(
            smart.port, b"SUBSCRIBE sub2\r\nGET x\r\nPING\r\n", until=b"pong\r\n$0\r\n\r\n"
        )
    )
    assert got.startswith(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nsub2\r\n:1\r\n")
    assert b"-ERR Can't execute 'get'" in got
    assert got.endswith(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")


async def test_a_client_that_does_not_read_is_not_buffered(smart: Smart) -> None:
    def body() -> tuple[int, int]:
        total = 40 * 1024 * 1024
        chunk = b"PING\r\n" * 10_000
        sent = 0
        with socket.create_connection(("127.0.0.1", smart.port)) as sock:
            sock.setblocking(False)
            stalls = 0
            while sent < total and stalls < 20:
                try:
                    sent += sock.send(chunk)
                    stalls = 0
                except BlockingIOError:
                    stalls += 1
                    time.sleep(0.1)
            with smart.client() as other:  # the tunnel still serves everyone else
                assert other.ping()
        return sent, total

    sent, total = await in_thread(body)
    assert sent < total  # the tunnel stopped reading that client: it holds a bounded backlog


# --------------------------------------------------------------------------- bad input


async def test_protocol_error_closes_only_that_client(smart: Smart) -> None:
    def body() -> None:
        with smart.client() as ok:
            ok.set("proto:ok", 1)
            got = raw_exchange(smart.port, b"*1\r\n$abc\r\nxx\r\n")
            assert got.startswith(b"-ERR Protocol error")
            assert ok.get("proto:ok") == b"1"

    await in_thread(body)


async def test_cross_protocol_guard(smart: Smart) -> None:
    got = await in_thread(lambda: raw_exchange(smart.port, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert got == b""


async def test_local_password(redis_cluster: LocalCluster, nursery: trio.Nursery) -> None:
    guarded = await start_smart(nursery, redis_cluster, local_password="s3cret")

    def body() -> None:
        sent = b"GET x\r\nAUTH nope\r\nAUTH s3cret\r\nPING\r\n"
        got = raw_exchange(guarded.port, sent, until=b"PONG")
        assert got == (
            b"-NOAUTH Authentication required.\r\n"
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            b"+OK\r\n+PONG\r\n"
        )
        with guarded.client(3, password="s3cret") as r:
            assert r.ping()

    await in_thread(body)


# --------------------------------------------------------------------------- events under load


@contextmanager
def writers(
    port: int, tag: str, count: int, stop: threading.Event, *, wait: bool = False
) -> Iterator[dict[str, Any]]:
    """Client threads writing through the tunnel until ``stop``; yields their results."""
    acked: dict[str, int] = {}
    errors: list[str] = []
    counters: dict[str, int] = {}
    written = [0]
    lock = threading.Lock()

    def work(n: int) -> None:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        ctr = f"{{{tag}}}ctr:{n}"
        i = 0
        try:
            while not stop.is_set() and i < 20_000:
                key = f"{{{tag}}}w{n}:{i}"
                try:
                    pipe = r.pipeline(transaction=False)
                    pipe.set(key, i)
                    pipe.incr(ctr)
                    pipe.mget(key, ctr)
                    if wait:
                        pipe.execute_command("WAIT", 1, 100)  # type: ignore[no-untyped-call]
                    replies = pipe.execute(raise_on_error=False)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
                    i += 1
                    continue
                with lock:
                    for reply in replies:
                        if isinstance(reply, Exception):
                            errors.append(str(reply))
                    durable = not wait or (isinstance(replies[-1], int) and replies[-1] >= 1)
                    if replies[0] is True:
                        written[0] += 1
                        if durable:
                            acked[key] = i
                    if isinstance(replies[1], int):
                        counters[ctr] = replies[1]
                i += 1
        finally:
            r.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    result: dict[str, Any] = {
        "acked": acked,
        "errors": errors,
        "counters": counters,
        "written": written,
    }
    try:
        yield result
    finally:
        stop.set()
        for thread in threads:
            thread.join(GUARD)


def _no_redirects(errors: list[str]) -> None:
    for text in errors:
        assert not text.startswith(("MOVED", "ASK")), text
        assert "MOVED " not in text, text
        assert " ASK " not in text, text


def _verify(cluster: LocalCluster, result: dict[str, Any]) -> None:
    with redis_py_cluster(cluster) as direct:
        acked: dict[str, int] = result["acked"]
        keys = list(acked)
        for start in range(0, len(keys), 200):
            batch = keys[start : start + 200]
            values = direct.mget(batch)
            lost = [k for k, v in zip(batch, values, strict=True) if v != str(acked[k]).encode()]
            assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        for ctr, value in result["counters"].items():
            assert int(direct.get(ctr) or 0) >= value


def _migrate(cluster: LocalCluster, slot: int, src: RedisNode, dst: RedisNode) -> None:
    dst.call("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id or "")
    src.call("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id or "")
    time.sleep(0.5)  # let the writers meet the MIGRATING state (ASK, TRYAGAIN)
    for _ in range(10_000):
        keys = src.call("CLUSTER", "GETKEYSINSLOT", slot, 20)
        assert isinstance(keys, list)
        if not keys:
            break
        src.call(
            "MIGRATE", dst.host, dst.port, "", 0, 10_000, "AUTH", cluster.password, "KEYS", *keys
        )
        time.sleep(0.02)
    for node in cluster.masters():
        node.call("CLUSTER", "SETSLOT", slot, "NODE", dst.node_id or "")


def _owner(cluster: LocalCluster, slot: int) -> RedisNode:
    table: Any = cluster.seed.call("CLUSTER", "SLOTS")
    for entry in table:
        start, end, master = entry[0], entry[1], entry[2]
        if start <= slot <= end:
            return cluster.node_by_port(int(master[1]))
    raise AssertionError(f"slot {slot} has no owner")


@pytest.mark.slow
async def test_slot_migration_under_load(redis_factory: Any, nursery: trio.Nursery) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=0)
    )
    smart = await start_smart(nursery, cluster)
    slot = 777
    tag = tag_for_slot(slot)

    def body() -> dict[str, Any]:
        with smart.client() as r:  # FLUSHALL goes to every master (a private cluster)
            r.mset(dict.fromkeys(keys_on_every_master("flush"), "x"))
            assert r.flushall()
            assert masters_dbsize(cluster) == 0
        src = _owner(cluster, slot)
        dst = next(n for n in cluster.masters() if n is not src)
        stop = threading.Event()
        with writers(smart.port, tag, 6, stop) as result:
            time.sleep(0.5)
            _migrate(cluster, slot, src, dst)
            time.sleep(0.5)
        assert _owner(cluster, slot) is dst
        return result

    result = await in_thread(body)
    assert result["acked"]
    _no_redirects(result["errors"])
    assert result["errors"] == []
    assert smart.counters.moved > 0  # the clients met the move, and never saw it
    assert smart.counters.ask > 0
    await in_thread(lambda: _verify(cluster, result))


@pytest.mark.slow
async def test_failover_under_load(redis_factory: Any, nursery: trio.Nursery) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=1)
    )
    smart = await start_smart(nursery, cluster)
    slot = 9000
    tag = tag_for_slot(slot)

    def body() -> dict[str, Any]:
        victim = _owner(cluster, slot)
        stop = threading.Event()
        with writers(smart.port, tag, 4, stop, wait=True) as result:
            time.sleep(1.0)
            victim.kill()
            before = result["written"][0]
            # the replica takes over; writes through the tunnel resume on their own
            deadline = time.monotonic() + 45
            while result["written"][0] < before + 40 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert result["written"][0] >= before + 40, "writes did not resume after failover"
            with redis.Redis(host="127.0.0.1", port=smart.port, socket_timeout=30) as r:
                assert r.set(f"{{{tag}}}after", 1)
        assert _owner(cluster, slot) is not victim
        return result

    result = await in_thread(body)
    assert result["acked"]
    _no_redirects(result["errors"])
    await in_thread(lambda: _verify(cluster, result))


async def test_every_command_answers_when_a_node_dies(
    redis_factory: Any, nursery: trio.Nursery
) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=0)
    )
    smart = await start_smart(nursery, cluster, retry_window=2.0)
    victim = _owner(cluster, 0)

    def body() -> None:
        with smart.client(socket_timeout=GUARD) as r:
            key = "{" + tag_for_slot(0) + "}k"
            assert r.set(key, 1)
            victim.kill()
            # no replica: the slot is gone; the command must come back with an error
            with pytest.raises((redis.ResponseError, redis.ConnectionError)) as caught:
                r.incr(key)
            assert "MOVED" not in str(caught.value)
        assert smart.counters.retries > 0

    with trio.fail_after(GUARD + 30):
        await trio.to_thread.run_sync(body)


async def test_every_command_answers_when_a_node_hangs(
    redis_factory: Any, nursery: trio.Nursery
) -> None:
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=0)
    )
    smart = await start_smart(
        nursery, cluster, retry_window=2.0, stall_timeout=2.0, connect_timeout=2.0
    )
    victim = _owner(cluster, 0)
    key = "{" + tag_for_slot(0) + "}hang"

    def body() -> None:
        with smart.client(socket_timeout=GUARD) as r:
            assert r.set(key, 1)
            victim.pause()  # SIGSTOP: the node keeps its sockets open and answers nothing
            try:
                with pytest.raises(redis.ResponseError) as caught:
                    r.get(key)
                assert "no reply" in str(caught.value) or "cannot connect" in str(caught.value)
                assert r.ping()  # the session itself is fine
            finally:
                victim.resume()

    with trio.fail_after(GUARD + 30):
        await trio.to_thread.run_sync(body)


# --------------------------------------------------------------------------- rotating credentials


def _token(user: str) -> str:
    """An Entra-like token: a JWT whose ``oid`` names the ACL user (no signature check)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"oid": user, "exp": int(time.time()) + 3600, "nonce": secrets.token_hex(8)}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


class _Load:
    """Client threads that run through the tunnel until stopped, on every kind of link:
    shared (pipelines, protocol 2 and 3), blocking (BLPOP), WATCH/MULTI/EXEC, pub/sub (a
    RESP2 subscriber that keeps subscribing). Every exception is a failure."""

    def __init__(self, port: int, tag: str) -> None:
        self.port = port
        self.tag = tag
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.rounds: dict[str, int] = {}
        self.threads = [
            threading.Thread(target=self._run, args=(name, work), daemon=True)
            for name, work in (
                ("pipeline2", partial(self._pipeline, 2)),
                ("pipeline3", partial(self._pipeline, 3)),
                ("blocking", self._blocking),
                ("watch", self._watch),
                ("pubsub", self._pubsub),
            )
        ]

    def client(self, protocol: int = 2) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=protocol, socket_timeout=20)

    def _run(self, name: str, work: Callable[[Callable[[], None]], None]) -> None:
        def tick() -> None:
            with self.lock:
                self.rounds[name] = self.rounds.get(name, 0) + 1

        try:
            work(tick)
        except Exception as exc:
            with self.lock:
                self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    def _pipeline(self, protocol: int, tick: Callable[[], None]) -> None:
        key = f"{{{self.tag}}}p{protocol}"
        with self.client(protocol) as r:
            for n in range(100_000):
                if self.stop.is_set():
                    return
                pipe = r.pipeline(transaction=False)
                pipe.set(key, n)
                pipe.get(key)
                pipe.incr(f"{key}:n")
                pipe.lpush(f"{{{self.tag}}}list", n)
                pipe.publish(f"{self.tag}:ch", n)
                replies = pipe.execute()
                assert replies[:2] == [True, str(n).encode()]
                tick()

    def _blocking(self, tick: Callable[[], None]) -> None:
        with self.client() as r:
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                r.blpop([f"{{{self.tag}}}list"], timeout=0.2)
                tick()

    def _watch(self, tick: Callable[[], None]) -> None:
        key = f"{{{self.tag}}}watched"
        with self.client() as r:
            for n in range(100_000):
                if self.stop.is_set():
                    return
                with r.pipeline(transaction=True) as pipe:
                    pipe.watch(key)
                    pipe.get(key)
                    pipe.multi()
                    pipe.set(key, n)
                    assert pipe.execute() == [True]
                tick()

    def _pubsub(self, tick: Callable[[], None]) -> None:
        with self.client() as r, r.pubsub() as p:
            p.subscribe(f"{self.tag}:ch")
            for n in range(100_000):
                if self.stop.is_set():
                    return
                p.subscribe(f"{self.tag}:extra:{n % 50}")  # a round trip on the pub/sub link
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    message = p.get_message(timeout=1.0)
                    wanted = f"{self.tag}:extra:{n % 50}".encode()
                    if message and message["type"] == "subscribe" and message["channel"] == wanted:
                        break
                else:
                    raise AssertionError("no SUBSCRIBE confirmation")
                tick()

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(GUARD)

    def wait_rounds(self, more: int = 3) -> None:
        """Until every thread did ``more`` rounds from now (each a round trip on its link)."""
        with self.lock:
            target = {name: self.rounds.get(name, 0) + more for name in self._names()}
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            with self.lock:
                assert not self.failures, self.failures
                if all(self.rounds.get(name, 0) >= want for name, want in target.items()):
                    return
            time.sleep(0.02)
        raise AssertionError(f"the load stalled: {self.rounds} (wanted {target})")

    def _names(self) -> list[str]:
        return ["pipeline2", "pipeline3", "blocking", "watch", "pubsub"]


@pytest.mark.slow
@pytest.mark.parametrize("refresh_loop", ["serve_smart", "main"])
async def test_credential_rotation_reauths_every_live_connection(
    redis_factory: Any, nursery: trio.Nursery, refresh_loop: str
) -> None:
    """A password rotation (add the new one, let the tunnel pick it up, remove the old one),
    then a user swap whose old user is deleted (which closes every connection still logged in
    as it): the load never fails and the tunnel never dials again. The provider's refresh loop
    runs in serve_smart, or in main (which hands serve_smart a re-AUTH hub)."""
    cluster: LocalCluster = await trio.to_thread.run_sync(
        lambda: redis_factory.cluster(masters=3, replicas_per_master=0)
    )
    first, rotated, swapped = _token("rot1"), _token("rot1"), _token("rot2")

    def acl(*args: str) -> None:
        for node in cluster.nodes:
            assert node.call("ACL", "SETUSER", *args) == b"OK"

    await in_thread(lambda: acl("rot1", "on", f">{first}", "~*", "&*", "+@all"))
    secret = [first]

    async def source() -> str:
        return secret[0]

    provider = CredentialProvider(username=None, source=source, refresh_every=0.2)
    stats = TunnelStats("smart")
    seed = cluster.seed
    config = TunnelConfig(
        upstream=ServerOptions(
            host=seed.host, port=seed.port, tls=TlsOptions(cacert=str(cluster.certs.ca))
        ),
        listen="127.0.0.1",
        local_port=0,
        out=io.StringIO(),
        credentials=provider,
        stats=stats,
    )
    if refresh_loop == "main":  # as tunnel.main does it
        hub: list[Reauth] = []

        async def on_new(credential: Credential) -> None:
            hub[0].rotate(credential)

        hub.append(Reauth(await nursery.start(provider.serve_refresh, on_new)))
        config = replace(config, reauth=hub[0])
    counters = SmartStats()
    info: TunnelInfo = await nursery.start(
        lambda task_status: serve_smart(config, counters=counters, task_status=task_status)
    )
    port = info.listeners[0].local.port

    def wait_reauths(before: int) -> None:
        deadline = time.monotonic() + GUARD
        while counters.reauths <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counters.reauths > before, "the tunnel did not pick up the new credential"

    def body() -> None:
        with _Load(port, tag_for_slot(4321)) as load:
            load.wait_rounds()
            # 1. the password rotates: the new one is added, the tunnel logs in again, the old
            # one is removed
            acl("rot1", f">{rotated}")
            before = counters.reauths
            secret[0] = rotated
            wait_reauths(before)
            load.wait_rounds()  # every link answered a command sent after its AUTH
            acl("rot1", f"<{first}")
            load.wait_rounds()
            # 2. the user changes, and the old user is deleted: Redis closes every connection
            # still logged in as rot1 (here: only the cluster client's topology connections)
            acl("rot2", "on", f">{swapped}", "~*", "&*", "+@all")
            before = counters.reauths
            secret[0] = swapped
            wait_reauths(before)
            load.wait_rounds()
            for node in cluster.nodes:
                node.call("ACL", "DELUSER", "rot1")
            load.wait_rounds(10)
            # new connections log in with the current credential
            with load.client() as r:
                assert r.blpop([f"{{{load.tag}}}empty"], timeout=0.1) is None
        assert load.failures == []

    links = counters.links
    await in_thread(body)
    assert counters.links - links >= 0
    totals = stats.snapshot()["totals"]
    assert totals["upstream_reconnects"] == 0
    assert provider.statistics().refreshes == 2
