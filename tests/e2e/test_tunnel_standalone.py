"""The standalone tunnel (``redis-client tunn -h HOST -t``) against a real TLS redis-server.

The tunnel runs as a real process (the console entry point), so the printed table, signals,
exit codes and memory are those a user sees. Clients are real too: redis-py (RESP2 and
RESP3), redis-cli, redis-benchmark and raw sockets for the bad-input cases.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tunnel_process import TIMEOUT, Tunnel, free_port, redis_benchmark, run_tunnel, standalone_args

from certs import CertPaths
from client.embedded import RedisNode

pytestmark = pytest.mark.e2e


def local_args(node: RedisNode, certs: CertPaths, *extra: str) -> list[str]:
    """Upstream flags for ``node``, a free local port, then ``extra``."""
    return [*standalone_args(node, certs.ca), "--local-port", str(free_port()), *extra]


@pytest.fixture(scope="module")
def tunnel(redis_tls: RedisNode, certs_dir: CertPaths) -> Iterator[Tunnel]:
    t = Tunnel(local_args(redis_tls, certs_dir), password=redis_tls.password)
    try:
        yield t
    finally:
        assert t.stop() == 0, t.stderr


def client(tunnel: Tunnel, **kw: Any) -> redis.Redis:
    options: dict[str, Any] = {"socket_timeout": 20, "socket_connect_timeout": 10}
    options.update(kw)
    return redis.Redis(host="127.0.0.1", port=tunnel.port, **options)


def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def read_reply(sock: socket.socket, end: bytes = b"\r\n") -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


# -- the interface ------------------------------------------------------------------------------


def test_prints_the_listener_line_then_ready(tunnel: Tunnel, redis_tls: RedisNode) -> None:
    assert tunnel.table == [f"127.0.0.1:{tunnel.port} -> {redis_tls.address} (standalone)"]
    assert tunnel.seen[len(tunnel.table)].startswith("ready")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_cleanly_with_exit_0(
    redis_tls: RedisNode, certs_dir: CertPaths, sig: signal.Signals
) -> None:
    t = Tunnel(local_args(redis_tls, certs_dir), password=redis_tls.password)
    sock = raw(t.port)
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert read_reply(sock) == b"+PONG\r\n"
    sock.sendall(b"*3\r\n$5\r\nBLPOP\r\n$13\r\ntunnel:nolist\r\n$1\r\n0\r\n")  # waits forever
    time.sleep(0.2)
    assert t.stop(sig) == 0
    assert read_until_closed(sock) == b""  # the connection was closed, not left hanging
    sock.close()
    with pytest.raises(OSError):
        raw(t.port).recv(1)  # nothing listens any more


def ping_many(port: int, count: int, socks: list[socket.socket]) -> None:
    """Open ``count`` connections (added to ``socks``), PING on each, then check every PONG."""
    for _ in range(count):
        sock = raw(port)
        sock.sendall(b"PING\r\n")
        socks.append(sock)
    for sock in socks:
        assert read_reply(sock) == b"+PONG\r\n"


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def test_worker_processes_share_the_port_and_stop_together(
    redis_tls: RedisNode, certs_dir: CertPaths
) -> None:
    t = Tunnel(local_args(redis_tls, certs_dir, "--workers", "3"), password=redis_tls.password)
    socks = []
    try:
        assert "3 worker processes" in t.seen[-1]
        workers = t.family()
        assert len(workers) == 3
        baseline = {pid: sockets_of(pid) for pid in workers}
        ping_many(t.port, 60, socks)
        # the kernel spread the connections: every process relays some of them
        for pid in workers:
            assert sockets_of(pid) > baseline[pid]
    finally:
        for sock in socks:
            sock.close()
        assert t.stop() == 0
    for pid in workers[1:]:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()


def test_missing_host_is_a_usage_error() -> None:
    done = run_tunnel(["-t"])
    assert done.returncode == 2
    assert b"-h HOST" in done.stderr
    assert b"Traceback" not in done.stderr


def test_port_in_use_is_a_one_line_error(redis_tls: RedisNode, certs_dir: CertPaths) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AssertionError, match="port is in use"):
            Tunnel([*standalone_args(redis_tls, certs_dir.ca), "--local-port", str(port)])


# -- real clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_basic_pipeline_and_large_values(tunnel: Tunnel, protocol: int) -> None:
    with client(tunnel, protocol=protocol) as r:
        assert r.ping()
        big = os.urandom(3 * 1024 * 1024 + 17)
        assert r.set(f"sa:big:{protocol}", big)
        assert r.get(f"sa:big:{protocol}") == big
        pipe = r.pipeline(transaction=False)
        for i in range(2000):
            pipe.set(f"sa:p:{protocol}:{i}", i)
        for i in range(2000):
            pipe.get(f"sa:p:{protocol}:{i}")
        results = pipe.execute()
        assert results[:2000] == [True] * 2000
        assert [int(x) for x in results[2000:]] == list(range(2000))


def test_resp3_hello_passes_through(tunnel: Tunnel) -> None:
    with client(tunnel, protocol=3) as r:
        r.hset("sa:h", mapping={"f": "v"})
        assert r.hgetall("sa:h") == {b"f": b"v"}
        assert r.connection_pool.get_connection().protocol in (3, "3")
    sock = raw(tunnel.port)
    sock.sendall(b"HELLO 3\r\n")
    assert read_reply(sock, b"modules\r\n*0\r\n").startswith(b"%7\r\n")
    sock.sendall(b"*2\r\n$7\r\nHGETALL\r\n$4\r\nsa:h\r\n")
    assert read_reply(sock) == b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    sock.close()


@pytest.mark.parametrize("split", [1, 3, 9, 14, 20])
def test_a_frame_split_across_the_first_writes(tunnel: Tunnel, split: int) -> None:
    data = b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n"
    with raw(tunnel.port) as sock:
        sock.settimeout(5)
        sock.sendall(data[:split])
        time.sleep(0.1)
        sock.sendall(data[split:])
        assert read_reply(sock, b"hi\r\n") == b"+PONG\r\n$2\r\nhi\r\n"


def test_transactions_and_blocking_commands(tunnel: Tunnel) -> None:
    with client(tunnel) as r, client(tunnel) as other:
        r.delete("sa:list", "sa:counter")
        pipe = r.pipeline(transaction=True)
        pipe.incr("sa:counter").incr("sa:counter").get("sa:counter")
        assert pipe.execute() == [1, 2, b"2"]

        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(r.blpop(["sa:list"], timeout=10)))
        waiter.start()
        time.sleep(0.3)
        other.rpush("sa:list", "x")
        waiter.join(15)
        assert result == [(b"sa:list", b"x")]


@pytest.mark.parametrize("protocol", [2, 3])
def test_pubsub(tunnel: Tunnel, protocol: int) -> None:
    with client(tunnel, protocol=protocol) as sub_client, client(tunnel) as pub:
        sub = sub_client.pubsub()
        sub.subscribe(f"sa:chan:{protocol}")
        first = sub.get_message(timeout=5)
        assert first is not None
        assert first["type"] == "subscribe"
        deadline = time.monotonic() + 10
        while pub.publish(f"sa:chan:{protocol}", "hello") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        message = sub.get_message(timeout=5)
        assert message is not None
        assert message["data"] == b"hello"
        sub.close()


def test_redis_cli(tunnel: Tunnel) -> None:
    def cli(*args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(tunnel.port), *args],
            input=stdin,
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        return done.stdout.decode().strip()

    assert cli("PING") == "PONG"
    assert cli("SET", "sa:cli", "10.0.0.5:6379") == "OK"
    assert cli("GET", "sa:cli") == "10.0.0.5:6379"
    assert cli(stdin=b"SET sa:cli2 a\nGET sa:cli2\n") == "OK\na"
    assert "proto 3" in cli("-3", "HELLO", "3").splitlines()


@pytest.mark.parametrize("pipeline", ["1", "16"])
def test_redis_benchmark(tunnel: Tunnel, pipeline: str) -> None:
    done = redis_benchmark(
        "-p", str(tunnel.port), "-c", "20", "-n", "4000", "-P", pipeline, "-t", "set,get", "--csv"
    )
    lines = done.stdout.decode().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ['"SET"', '"GET"']
    assert b"rror" not in done.stderr


# -- local password -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(redis_tls: RedisNode, certs_dir: CertPaths) -> Iterator[Tunnel]:
    t = Tunnel(
        local_args(redis_tls, certs_dir, "--local-password", "local-secret"),
        password=redis_tls.password,
    )
    try:
        yield t
    finally:
        assert t.stop() == 0


def test_local_password_is_required_and_checked(guarded: Tunnel) -> None:
    with client(guarded) as r, pytest.raises(redis.AuthenticationError):
        r.ping()
    with client(guarded, password="wrong") as r, pytest.raises(redis.AuthenticationError):
        r.ping()
    for protocol in (2, 3):
        with client(guarded, password="local-secret", protocol=protocol) as r:
            assert r.ping()
            assert r.set("sa:local", "1")
            assert r.get("sa:local") == b"1"
    with client(guarded, password="local-secret", username="default") as r:
        assert r.ping()


def test_local_password_gate_answers_like_redis(guarded: Tunnel) -> None:
    sock = raw(guarded.port)
    sock.sendall(b"PING\r\n")
    assert read_reply(sock) == b"-NOAUTH Authentication required.\r\n"
    sock.sendall(b"AUTH nope\r\n")
    assert read_reply(sock).startswith(b"-WRONGPASS")
    # AUTH and the commands after it in one write (as redis-benchmark -a does)
    sock.sendall(b"AUTH local-secret\r\nPING\r\nECHO hi\r\n")
    assert read_reply(sock, b"hi\r\n") == b"+OK\r\n+PONG\r\n$2\r\nhi\r\n"
    # a later AUTH with the local password is answered in order, the upstream login stays
    sock.sendall(b"AUTH local-secret\r\nPING\r\n")
    assert read_reply(sock, b"PONG\r\n") == b"+OK\r\n+PONG\r\n"
    sock.close()


def test_local_password_with_redis_cli_and_benchmark(guarded: Tunnel) -> None:
    env = {**os.environ, "REDISCLI_AUTH": "local-secret"}
    done = subprocess.run(
        ["redis-cli", "-p", str(guarded.port), "PING"],
        capture_output=True,
        env=env,
        timeout=TIMEOUT,
        check=True,
    )
    assert done.stdout.strip() == b"PONG"
    done = redis_benchmark(
        "-p", str(guarded.port), "-a", "local-secret", "-c", "5", "-n", "500", "-t", "set", "--csv"
    )
    assert b'"SET"' in done.stdout


# -- bad input and faults -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"*1\r\n$x\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*a\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b'SET "a\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (b"*1\r\n$4\r\nPING\r\n*1\r\n+x\r\n", b"+PONG\r\n-ERR Protocol error: expected '$'"),
    ],
)
def test_malformed_resp_gets_an_error_and_only_that_client_is_closed(
    tunnel: Tunnel, data: bytes, error: bytes
) -> None:
    with client(tunnel) as bystander:
        assert bystander.set("sa:bystander", "1")
        sock = raw(tunnel.port)
        sock.sendall(data)
        got = read_until_closed(sock)
        assert got.startswith(error)
        sock.close()
        assert bystander.get("sa:bystander") == b"1"


def test_malformed_resp_after_valid_traffic(tunnel: Tunnel) -> None:
    sock = raw(tunnel.port)
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert read_reply(sock) == b"+PONG\r\n"
    sock.sendall(b"*1\r\n$-5\r\n")
    assert read_until_closed(sock) == b"-ERR Protocol error: invalid bulk length\r\n"
    sock.close()


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1:6379\r\nContent-Length: 9\r\n\r\nFLUSHALL\n",
        b"Host: evil.example.com\r\n",
        b"*1\r\n$4\r\nPING\r\nPOST / HTTP/1.1\r\n",
    ],
)
def test_cross_protocol_guard_closes_the_connection(tunnel: Tunnel, data: bytes) -> None:
    with client(tunnel) as r:
        r.set("sa:guard", "kept")
    sock = raw(tunnel.port)
    sock.sendall(data)
    got = read_until_closed(sock)
    assert got in (b"", b"+PONG\r\n")
    sock.close()
    with client(tunnel) as r:
        assert r.get("sa:guard") == b"kept"


def test_upstream_unreachable_gets_err_and_the_tunnel_keeps_serving(
    redis_factory: Any, certs_dir: CertPaths
) -> None:
    node = redis_factory.standalone(tls=True, password="pw")
    t = Tunnel(local_args(node, certs_dir), password="pw")
    try:
        node.stop()
        for _ in range(2):
            sock = raw(t.port)
            sock.sendall(b"PING\r\n")
            got = read_until_closed(sock)
            assert got.startswith(b"-ERR ")
            assert got.count(b"\r\n") == 1
            assert str(node.port).encode() in got
            sock.close()
        node.restart()
        with client(t) as r:
            assert r.ping()
    finally:
        assert t.stop() == 0


def test_upstream_dying_mid_pipeline_closes_the_client(
    redis_factory: Any, certs_dir: CertPaths
) -> None:
    node = redis_factory.standalone(tls=True, password="pw")
    t = Tunnel(local_args(node, certs_dir), password="pw")
    try:
        sock = raw(t.port)
        sock.settimeout(15)
        # a blocked command with more commands queued behind it
        sock.sendall(b"BLPOP sa:never 0\r\n" + b"PING\r\n" * 50)
        time.sleep(0.3)
        node.kill()
        assert read_until_closed(sock) == b""  # closed: nothing waits forever
        sock.close()
    finally:
        assert t.stop() == 0


def test_a_client_that_stops_reading_does_not_grow_memory(tunnel: Tunnel) -> None:
    value = b"m" * (1024 * 1024)
    count = 120  # 120 MB of replies that the client does not read for a while
    with client(tunnel) as r:
        r.set("sa:mb", value)
    before = tunnel.rss_mb()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", tunnel.port))
    sock.sendall(b"*2\r\n$3\r\nGET\r\n$5\r\nsa:mb\r\n" * count)
    time.sleep(2.0)  # let the tunnel fill every buffer it is willing to fill
    during = tunnel.rss_mb()
    assert during - before < 40, (before, during)
    # it is backpressure, not loss: every reply arrives intact once the client reads
    sock.settimeout(TIMEOUT)
    expected = b"$1048576\r\n" + value + b"\r\n"
    got = bytearray()
    while len(got) < len(expected) * count:
        chunk = sock.recv(1 << 20)
        assert chunk
        got += chunk
    assert got == expected * count
    sock.close()


def test_many_idle_clients_stay_cheap(tunnel: Tunnel) -> None:
    before = tunnel.rss_mb()
    socks = []
    try:
        ping_many(tunnel.port, 300, socks)
        # each holds its own upstream TLS connection; 1,000 are measured in bench/
        assert tunnel.rss_mb() - before < 60
    finally:
        for sock in socks:
            sock.close()
