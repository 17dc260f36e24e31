"""Rotating credentials through a real tunnel: live re-AUTH in place, under load.

How the tests prove the re-AUTH happened in place, on the same upstream connections:

* Password rotation (the issue's scenario: ``ACL SETUSER u >B``, the password command starts
  printing B, then ``ACL SETUSER u <A``). Redis keeps a connection logged in when its password
  is removed, so "zero failures" alone proves nothing. The proof is the server's own
  bookkeeping: the set of upstream connection ids of the user is the same before and after,
  and ``INFO commandstats`` counts exactly one more successful ``AUTH`` per such connection.
  Every client keeps its connection (its upstream ``CLIENT ID`` does not change) and sees no
  error; a new client afterwards logs in with B (A is gone by then).
* User switch (``--entra``: a fake ``az`` hands out a token for user A, then one for user B,
  the token's ``oid`` naming the user). Every client connection then answers ``ACL WHOAMI``
  with B on the same ``CLIENT ID``; and ``ACL DELUSER A``, which closes every connection still
  logged in as A, does not disturb a single client.

A failing password command keeps the tunnel and its connections running and says so in one
line. No secret ever appears in the tunnel's output or in ``ps``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry
from tunnel_process import (
    TIMEOUT,
    Raw,
    Tunnel,
    free_port,
    pinned_args,
    run_tunnel,
    secrets_absent,
    standalone_args,
    wait_until,
)

from client.embedded import LocalCluster, RedisNode
from tunnel.server import TOPOLOGY_CLIENT_NAME

pytestmark = pytest.mark.e2e

ADMIN = "admin-secret-7f3a"
PASSWORD_A = "rotate-A-5c1e9d0b"
PASSWORD_B = "rotate-B-82f4aa17"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def no_retry() -> dict[str, Any]:
    return {
        "socket_timeout": 20,
        "socket_connect_timeout": 10,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
    }


class Load:
    """Client threads running SET/GET through the tunnel until stopped; every error is kept.

    Each thread uses one connection for its whole life and notes its upstream ``CLIENT ID``
    (and ``ACL WHOAMI``) at the start and the end.
    """

    def __init__(self, make: Callable[[], Any], count: int, *, ids: bool = True) -> None:
        self.make = make
        self.ids = ids
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.ops = [0] * count
        self.first: list[tuple[Any, Any]] = [(None, None)] * count
        self.last: list[tuple[Any, Any]] = [(None, None)] * count
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _who(self, client: Any) -> tuple[Any, Any]:
        if not self.ids:
            return (None, None)
        return (client.client_id(), client.execute_command("ACL", "WHOAMI"))

    def _run(self, index: int) -> None:
        try:
            client = self.make()
        except Exception as exc:
            self.errors.append(f"connect: {exc!r}")
            return
        try:
            self.first[index] = self._who(client)
            key = f"reauth:{index}"
            n = 0
            while not self.stop_event.is_set():
                n += 1
                client.set(key, n)
                value = client.get(key)
                if value not in (str(n).encode(), str(n)):
                    self.errors.append(f"{key}: got {value!r}, expected {n}")
                    return
                self.ops[index] += 1
            self.last[index] = self._who(client)
        except Exception as exc:
            self.errors.append(f"thread {index}: {exc!r}")
        finally:
            client.close()

    def progress(self, at_least: int) -> None:
        marks = list(self.ops)
        wait_until(
            f"every client did {at_least} more commands",
            lambda: (
                self.errors != []
                or all(b - a >= at_least for a, b in zip(marks, self.ops, strict=True))
            ),
        )
        assert not self.errors, self.errors

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(TIMEOUT)


def auth_stats(wire: Any) -> dict[str, int]:
    raw = wire.call("INFO", "commandstats")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    found = re.search(r"cmdstat_auth:(\S+)", text)
    if not found:
        return {"calls": 0, "failed_calls": 0, "rejected_calls": 0}
    fields = dict(item.split("=") for item in found.group(1).split(","))
    return {k: int(float(v)) for k, v in fields.items() if k.endswith("calls")}


def connections_of(wire: Any, user: str, *, unnamed: bool = True, name: str = "") -> set[int]:
    raw = wire.call("CLIENT", "LIST")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ids = set()
    for line in text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split(" ") if "=" in item)
        if fields.get("user") == user and (not unnamed or fields.get("name") == name):
            ids.add(int(fields["id"]))
    return ids


# -- standalone: password rotation ----------------------------------------------------------


@pytest.fixture
def rotating_server(redis_factory: Any) -> RedisNode:
    node: RedisNode = redis_factory.standalone(tls=True, password=ADMIN)
    node.call("ACL", "SETUSER", "rot", "on", f">{PASSWORD_A}", "~*", "&*", "+@all")
    return node


def test_password_rotation_reauths_every_connection_in_place(
    rotating_server: RedisNode, tmp_path: Path
) -> None:
    node = rotating_server
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD_A + "\n")
    args = standalone_args(node, node.certs.ca)  # type: ignore[union-attr]
    args += ["-u", "rot", "--password-command", f"cat {secret_file}"]
    args += ["--credential-refresh", "0.5", "--local-port", str(free_port())]
    tunnel = Tunnel(args)  # default worker processes: rotations must reach them too
    admin = node.connect()
    load: Load | None = None
    try:
        port = tunnel.port
        load = Load(lambda: redis.Redis(host="127.0.0.1", port=port, **no_retry()), 6)
        load.progress(20)
        before_ids = connections_of(admin, "rot")
        assert len(before_ids) == 6
        before = auth_stats(admin)

        admin.call("ACL", "SETUSER", "rot", f">{PASSWORD_B}")  # A and B both work now
        write_atomically(secret_file, PASSWORD_B + "\n")
        wait_until(
            "the tunnel re-authenticated its connections",
            lambda: auth_stats(admin)["calls"] - before["calls"] >= len(before_ids),
        )
        admin.call("ACL", "SETUSER", "rot", f"<{PASSWORD_A}")  # only B from now on
        load.progress(20)
        after = auth_stats(admin)
        assert after["calls"] - before["calls"] == len(before_ids)  # one AUTH each, no more
        assert after.get("failed_calls", 0) == before.get("failed_calls", 0)
        assert after.get("rejected_calls", 0) == before.get("rejected_calls", 0)
        assert connections_of(admin, "rot") == before_ids  # the same upstream connections

        # A new client now: the tunnel dials with B (A would be refused).
        with redis.Redis(host="127.0.0.1", port=port, **no_retry()) as fresh:
            assert fresh.ping()
            assert fresh.execute_command("ACL", "WHOAMI") in (b"rot", "rot")
    finally:
        if load is not None:
            load.stop()
        admin.close()
        assert tunnel.stop() == 0, tunnel.err
    assert load is not None
    assert not load.errors, load.errors
    assert all(ops > 40 for ops in load.ops)
    assert load.first == load.last  # same upstream connection (CLIENT ID) and user throughout
    assert any("new credential for user rot" in line for line in tunnel.err), tunnel.err
    secrets_absent(tunnel, PASSWORD_A, PASSWORD_B, ADMIN)


# -- standalone: user switch with --entra (a fake az) ---------------------------------------


def fake_token(user: str, serial: int) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"oid": user, "iat": int(time.time()), "exp": int(time.time()) + 3600, "n": serial}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJlX{serial}"


def install_fake_az(directory: Path) -> Path:
    """An ``az`` that prints the token in $FAKE_AZ_TOKEN_FILE the way the Azure CLI does."""
    bindir = directory / "bin"
    bindir.mkdir()
    script = bindir / "az"
    script.write_text(
        "#!/bin/sh\n"
        'printf \'{"accessToken": "%s", "tokenType": "Bearer"}\\n\' '
        '"$(cat "$FAKE_AZ_TOKEN_FILE")"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


def entra_users(node: RedisNode, directory: Path) -> tuple[str, str, Path, dict[str, str]]:
    """Users A and B (their tokens as passwords) on ``node``; a fake ``az`` handing out A.

    Returns both tokens, the file the fake ``az`` reads (write B there to switch) and the
    environment for the tunnel.
    """
    token_a, token_b = fake_token("oid-user-a", 1), fake_token("oid-user-b", 2)
    node.call("ACL", "SETUSER", "oid-user-a", "on", f">{token_a}", "~*", "&*", "+@all")
    node.call("ACL", "SETUSER", "oid-user-b", "on", f">{token_b}", "~*", "&*", "+@all")
    token_file = directory / "token"
    token_file.write_text(token_a)
    env = {
        "PATH": f"{install_fake_az(directory)}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_AZ_TOKEN_FILE": str(token_file),
    }
    return token_a, token_b, token_file, env


def entra_args(node: RedisNode) -> list[str]:
    """A standalone tunnel in front of ``node`` that logs in with --entra, refreshing often."""
    args = standalone_args(node, node.certs.ca)  # type: ignore[union-attr]
    return [*args, "--entra", "--credential-refresh", "0.5", "--local-port", str(free_port())]


def test_entra_user_switch_moves_every_connection_to_the_new_user(
    rotating_server: RedisNode, tmp_path: Path
) -> None:
    node = rotating_server
    token_a, token_b, token_file, env = entra_users(node, tmp_path)
    args = entra_args(node)
    args += ["--dashboard", "0"]  # re-AUTH and statistics together
    tunnel = Tunnel(args, env=env)
    load: Load | None = None
    try:
        port = tunnel.port
        load = Load(lambda: redis.Redis(host="127.0.0.1", port=port, **no_retry()), 4)
        load.progress(20)
        write_atomically(token_file, token_b)
        admin = node.connect()
        try:
            wait_until(
                "no connection is logged in as the old user",
                lambda: (
                    not connections_of(admin, "oid-user-a")
                    and len(connections_of(admin, "oid-user-b")) == 4
                ),
            )
            ids = connections_of(admin, "oid-user-b")
        finally:
            admin.close()
        node.call("ACL", "DELUSER", "oid-user-a")  # would close any connection still A
        load.progress(20)
    finally:
        if load is not None:
            load.stop()
        assert tunnel.stop() == 0, tunnel.err
    assert load is not None
    assert not load.errors, load.errors
    assert [who for _, who in load.first] == [b"oid-user-a"] * 4
    assert [who for _, who in load.last] == [b"oid-user-b"] * 4
    assert [cid for cid, _ in load.first] == [cid for cid, _ in load.last]
    assert {cid for cid, _ in load.last} == ids
    secrets_absent(tunnel, token_a, token_b, ADMIN)


# -- pinned: password rotation on every node ------------------------------------------------


@pytest.mark.cluster
def test_pinned_password_rotation_reauths_every_relay(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    nodes = redis_cluster.nodes
    user = f"rot-pinned-{os.getpid()}"
    for n in nodes:
        n.call("ACL", "SETUSER", user, "on", f">{PASSWORD_A}", "~*", "&*", "+@all")
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD_A)
    seed = redis_cluster.seed
    args = pinned_args(redis_cluster, "--refresh", "0")
    args += ["-u", user, "--password-command", f"cat {secret_file}", "--credential-refresh", "0.5"]
    tunnel = Tunnel(args)
    admins = {n.port: n.connect() for n in nodes}
    load: Load | None = None
    try:
        entry = tunnel.listener_for(seed.port)

        def make() -> redis.cluster.RedisCluster:
            return redis.cluster.RedisCluster(
                host="127.0.0.1",
                port=entry,
                **no_retry(),
            )

        load = Load(make, 4, ids=False)
        load.progress(30)
        before_ids = {p: connections_of(w, user) for p, w in admins.items()}
        # The tunnel's own topology client logs in as the user too, and follows the rotation.
        topo = {p: connections_of(w, user, name=TOPOLOGY_CLIENT_NAME) for p, w in admins.items()}
        before = {p: auth_stats(w)["calls"] for p, w in admins.items()}
        assert sum(map(len, before_ids.values())) >= 4
        assert sum(map(len, topo.values())) >= 1
        for wire in admins.values():
            wire.call("ACL", "SETUSER", user, f">{PASSWORD_B}")
        write_atomically(secret_file, PASSWORD_B)
        wait_until(
            "every relay connection re-authenticated",
            lambda: all(
                auth_stats(admins[p])["calls"] - before[p] >= len(before_ids[p]) + len(topo[p])
                for p in admins
            ),
        )
        for wire in admins.values():
            wire.call("ACL", "SETUSER", user, f"<{PASSWORD_A}")
        load.progress(30)
        for p, wire in admins.items():
            assert auth_stats(wire)["calls"] - before[p] == len(before_ids[p]) + len(topo[p]), p
            assert connections_of(wire, user) == before_ids[p], p
            assert connections_of(wire, user, name=TOPOLOGY_CLIENT_NAME) == topo[p], p
    finally:
        if load is not None:
            load.stop()
        for wire in admins.values():
            wire.close()
        assert tunnel.stop() == 0, tunnel.err
        for n in nodes:
            n.call("ACL", "DELUSER", user)
    assert not load.errors, load.errors
    secrets_absent(tunnel, PASSWORD_A, PASSWORD_B)


# -- a failing provider ------------------------------------------------------------------------


def test_a_failing_password_command_keeps_connections_and_says_so(
    rotating_server: RedisNode, tmp_path: Path
) -> None:
    node = rotating_server
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD_A)
    args = standalone_args(node, node.certs.ca)  # type: ignore[union-attr]
    args += ["-u", "rot", "--password-command", f"cat {secret_file}"]
    args += ["--credential-refresh", "0.5", "--local-port", str(free_port()), "--workers", "1"]
    tunnel = Tunnel(args)
    load: Load | None = None
    try:
        port = tunnel.port
        load = Load(lambda: redis.Redis(host="127.0.0.1", port=port, **no_retry()), 3)
        load.progress(10)
        secret_file.unlink()  # the command fails from now on
        wait_until(
            "the failure is reported",
            lambda: any("credential refresh failed" in line for line in tunnel.err),
        )
        load.progress(20)
        with redis.Redis(host="127.0.0.1", port=port, **no_retry()) as fresh:
            assert fresh.ping()  # new connections still log in with the current credential
    finally:
        if load is not None:
            load.stop()
        assert tunnel.stop() == 0, tunnel.err
    assert load is not None
    assert not load.errors, load.errors
    assert load.first == load.last
    [line, *_] = [line for line in tunnel.err if "credential refresh failed" in line]
    assert "password command failed" in line
    assert "No such file or directory" in line
    assert "keeping the current credential" in line
    assert not any("Traceback" in line for line in tunnel.err), tunnel.err
    secrets_absent(tunnel, PASSWORD_A, ADMIN)


def test_a_broken_password_command_at_start_is_one_clear_line(
    rotating_server: RedisNode, tmp_path: Path
) -> None:
    node = rotating_server
    args = standalone_args(node, node.certs.ca)  # type: ignore[union-attr]
    args += ["-u", "rot", "--password-command", f"cat {tmp_path / 'missing'}"]
    args += ["--local-port", str(free_port())]
    done = run_tunnel(args, text=True)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("redis-client tunn: password command failed")
    assert "ready" not in done.stdout


# -- where the re-AUTH waits: transactions and RESP2 subscriptions ------------------------------


def test_reauth_waits_for_transactions_and_resp2_subscriptions(
    rotating_server: RedisNode, tmp_path: Path
) -> None:
    node = rotating_server
    token_a, token_b, token_file, env = entra_users(node, tmp_path)
    args = entra_args(node)
    tunnel = Tunnel([*args, "--workers", "1"], env=env)
    who_a, who_b = b"$10\r\noid-user-a\r\n", b"$10\r\noid-user-b\r\n"
    idle, multi, sub2, sub3 = (Raw.tunnel(tunnel.port) for _ in range(4))
    try:
        assert idle.call("ACL", "WHOAMI") == who_a
        assert multi.call("MULTI") == b"+OK\r\n"
        assert multi.call("SET", "tx:a", "1") == b"+QUEUED\r\n"
        assert sub2.call("SUBSCRIBE", "news") == (b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
        assert sub3.call("HELLO", "3").startswith(b"%")
        assert sub3.call("SUBSCRIBE", "news") == b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"

        write_atomically(token_file, token_b)
        admin = node.connect()
        try:
            # The idle connection and the RESP3 subscriber log in again at once; the
            # transaction and the RESP2 subscriber keep user A for now.
            wait_until(
                "two connections moved to user B",
                lambda: len(connections_of(admin, "oid-user-b")) == 2,
            )
            assert len(connections_of(admin, "oid-user-a")) == 2
            assert admin.call("PUBLISH", "news", "hello") == 2
        finally:
            admin.close()
        assert idle.call("ACL", "WHOAMI") == who_b
        assert sub3.read() == b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
        assert sub3.call("ACL", "WHOAMI") == who_b  # allowed while subscribed in RESP3
        # RESP2 subscriber: the message, nothing else (no AUTH reply, no refusal).
        assert sub2.read() == b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
        assert sub2.call("UNSUBSCRIBE") == b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n"
        assert sub2.call("ACL", "WHOAMI") == who_b, tunnel.err
        # The transaction: EXEC answers exactly the two queued commands; AUTH comes after.
        assert multi.call("SET", "tx:b", "2") == b"+QUEUED\r\n"
        assert multi.call("EXEC") == b"*2\r\n+OK\r\n+OK\r\n"
        assert multi.call("ACL", "WHOAMI") == who_b
    finally:
        for conn in (idle, multi, sub2, sub3):
            conn.close()
        assert tunnel.stop() == 0, tunnel.err
    secrets_absent(tunnel, token_a, token_b, ADMIN)
