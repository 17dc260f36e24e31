"""``redis-client cli`` with rotating credentials (``--password-command``), end to end.

Real servers only: the session TLS node (one-shot login through a password command), ACL users
on the session plaintext node whose password rotates while a piped session, a transaction or a
SUBSCRIBE/MONITOR stream runs (the old password is removed once the CLI has the new one), the
TLS cluster (MOVED hops and replica reads after the old password is gone), failing and hanging
password commands, and the REPL history. Every test greps every output stream (and the history
file) for the secrets.

The CLI runs with ``--debug`` where a test must know that a rotation reached it: the session
logs ``new credential for user ...`` once it has applied one (client.clisession), and the debug
logs are then grepped for secrets too.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import TLS_PASSWORD, redis_py
from test_cli import (  # noqa: F401 - terminal: fixture
    ENTRY,
    ROOT,
    Terminal,
    _env,
    cli,
    node_flags,
    one_line_error,
    owner_port,
    terminal,
)

from certs import CertPaths
from client.embedded import LocalCluster, RedisNode
from client.slots import tag_for_slot

pytestmark = pytest.mark.e2e

ROTATED = b"new credential for user"
WAIT = 30.0  # the longest any single step may take


# ------------------------------------------------------------------------------------ helpers


def password_command(tmp_path: Path, password: str) -> tuple[Path, str]:
    """A password file holding ``password`` and a command printing it (via a script)."""
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    script = tmp_path / "print-password.sh"
    script.write_text('#!/bin/sh\nexec cat "$1"\n')
    return secret, f"sh {script} {secret}"


def replace_password(secret: Path, password: str) -> None:
    """Write the new password atomically (the CLI may run the command at any moment)."""
    fresh = secret.with_suffix(".new")
    fresh.write_text(password + "\n")
    os.replace(fresh, secret)


def acl_user(node: RedisNode, name: str, *rules: str) -> None:
    node.call("ACL", "SETUSER", name, *rules)


def auth_calls(node: RedisNode) -> int:
    text = node.info("commandstats").get("cmdstat_auth", "calls=0")
    return int(dict(p.split("=", 1) for p in text.split(","))["calls"])


def clients_of(node: RedisNode, user: str) -> list[dict[str, str]]:
    text = node.call("CLIENT", "LIST")
    assert isinstance(text, bytes)
    rows = [
        dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        for line in text.decode().splitlines()
    ]
    return [row for row in rows if row.get("user") == user]


def replica_clients(cluster: LocalCluster, user: str) -> set[tuple[int, str]]:
    """(port, client id) of every connection of ``user`` on the replicas."""
    return {(node.port, c["id"]) for node in cluster.replicas() for c in clients_of(node, user)}


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Running:
    """Our CLI with piped stdin, stdout and stderr; threads collect what it prints."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=_env(),
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: object, into: bytearray, queued: bool) -> None:
        assert hasattr(pipe, "readline")
        for line in iter(pipe.readline, b""):
            with self._lock:
                into += line
            if queued:
                self.lines.put(line)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def line(self) -> bytes:
        try:
            return self.lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no output; stderr: {self.err()!r}") from None

    def ask(self, line: str) -> bytes:
        """Send a command with one line of reply; return the line (without the newline)."""
        self.send(line)
        return self.line().rstrip(b"\n")

    def until(self, marker: bytes) -> list[bytes]:
        """The lines before ``marker`` (consumed too)."""
        seen = []
        while (line := self.line().rstrip(b"\n")) != marker:
            seen.append(line)
        return seen

    def err(self) -> bytes:
        with self._lock:
            return bytes(self.stderr)

    def rotations(self) -> int:
        return self.err().count(ROTATED)

    def finish(self) -> int:
        """Close stdin and wait for the exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.stop()

    def stop(self) -> int:
        try:
            code = self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(timeout=WAIT)
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return code


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        run = Running(*args)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
        run.stop()


def assert_no_secret(secrets: list[str], *outputs: bytes) -> None:
    for output in outputs:
        for secret in secrets:
            assert secret.encode() not in output, f"{secret!r} leaked: {output[-2000:]!r}"


class Rotating:
    """An ACL user on some nodes whose password the test rotates (new one added, then the old
    one removed), and the password command the CLI fetches it with."""

    def __init__(self, nodes: list[RedisNode], tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:12]
        self.nodes = nodes
        self.user = f"cli-rot-{tag}"
        self.old = f"old-{uuid.uuid4().hex}"
        self.new = f"new-{uuid.uuid4().hex}"
        for node in nodes:
            acl_user(node, self.user, "reset", "on", f">{self.old}", "~*", "&*", "+@all")
        self.file, self.command = password_command(tmp_path, self.old)

    def flags(self, refresh: float = 0.2) -> list[str]:
        return [
            "--debug",
            "-u",
            self.user,
            "--password-command",
            self.command,
            "--credential-refresh",
            str(refresh),
        ]

    def add_new(self) -> None:
        for node in self.nodes:
            acl_user(node, self.user, f">{self.new}")
        replace_password(self.file, self.new)

    def remove_old(self) -> None:
        for node in self.nodes:
            acl_user(node, self.user, f"<{self.old}")

    def delete(self) -> None:
        for node in self.nodes:
            node.call("ACL", "DELUSER", self.user)

    @property
    def secrets(self) -> list[str]:
        return [self.old, self.new]


@pytest.fixture
def rotating_plain(redis_plain: RedisNode, tmp_path: Path) -> Iterator[Rotating]:
    user = Rotating([redis_plain], tmp_path)
    try:
        yield user
    finally:
        user.delete()


# ------------------------------------------------------------------------------ one-shot


def test_one_shot_password_command_over_tls(
    redis_tls: RedisNode, certs_dir: CertPaths, tmp_path: Path
) -> None:
    secret, _ = password_command(tmp_path, TLS_PASSWORD)
    runs = tmp_path / "runs"
    script = tmp_path / "counting.sh"
    script.write_text(f'#!/bin/sh\necho run >> {runs}\nexec cat "$1"\n')
    command = f"sh {script} {secret}"
    flags = ["-h", redis_tls.host, "-p", str(redis_tls.port), "-t", "--cacert", str(certs_dir.ca)]
    done = cli(*flags, "--password-command", command, "PING")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"PONG\n", b"")
    assert runs.read_text() == "run\n"  # fetched once, before connecting
    done = cli(*flags, "--password-command", command, "CLIENT", "INFO")
    assert done.returncode == 0
    assert b" user=default " in done.stdout
    # Without the command the server refuses: the login above did come from it.
    assert b"NOAUTH" in cli(*flags, "PING").stdout
    assert_no_secret([TLS_PASSWORD], done.stdout, done.stderr)


def test_password_and_password_command_are_exclusive(redis_plain: RedisNode) -> None:
    done = cli(*node_flags(redis_plain), "-a", "x", "--password-command", "echo y", "PING")
    assert done.returncode == 2
    assert "pick one" in one_line_error(done)


@pytest.mark.parametrize("piped", [False, True], ids=["one-shot", "piped"])
def test_failing_password_command_is_one_redacted_line(redis_plain: RedisNode, piped: bool) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    command = f"echo {secret}; echo 'vault refused token {secret}' >&2; exit 3"
    args = [*node_flags(redis_plain), "--password-command", command]
    done = cli(*args, stdin=b"PING\n") if piped else cli(*args, "PING")
    assert (done.returncode, done.stdout) == (1, b"")
    line = one_line_error(done)
    assert "password command failed (exit 3): vault refused token ***" in line
    assert_no_secret([secret], done.stdout, done.stderr)


def test_hanging_password_command_times_out(redis_plain: RedisNode) -> None:
    args = ["--password-command", "sleep 30", "--credential-timeout", "0.5", "PING"]
    done = cli(*node_flags(redis_plain), *args)
    assert (done.returncode, done.stdout) == (1, b"")
    assert "password command timed out after 0.5 s" in one_line_error(done)


def test_entra_logs_in_as_the_token_oid(redis_plain: RedisNode, tmp_path: Path) -> None:
    """--entra asks the Azure CLI (a fake az first on PATH) and logs in as the token's oid."""
    oid = str(uuid.uuid4())
    now = int(time.time())
    token = (
        ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
            for part in ({"alg": "none", "typ": "JWT"}, {"oid": oid, "iat": now, "exp": now + 3600})
        )
        + ".c2lnbmF0dXJl"
    )
    acl_user(redis_plain, oid, "reset", "on", f">{token}", "~*", "&*", "+@all")
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        calls = tmp_path / "az-calls"
        fake_az = bin_dir / "az"
        fake_az.write_text(
            f'#!/bin/sh\necho "$@" >> {calls}\n'
            f"echo '{json.dumps({'accessToken': token, 'tokenType': 'Bearer'})}'\n"
        )
        fake_az.chmod(0o755)
        env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        done = cli(*node_flags(redis_plain), "--entra", "CLIENT", "INFO", env=env)
        assert (done.returncode, done.stderr) == (0, b"")
        assert f" user={oid} ".encode() in done.stdout
        argv = "account get-access-token --resource https://redis.azure.com -o json\n"
        assert calls.read_text() == argv
        assert_no_secret([token], done.stdout, done.stderr)
    finally:
        redis_plain.call("ACL", "DELUSER", oid)


# ------------------------------------------------------------------------- piped rotation


def test_piped_session_rotates_without_a_failed_command(
    redis_plain: RedisNode, rotating_plain: Rotating, running: Callable[..., Running]
) -> None:
    """50+ commands (INCR, and BLPOP that block 0.1 s so rotations land mid-command too); the
    password rotates after 10; the old one goes once the CLI has the new one."""
    user = rotating_plain
    key = f"cli:rot:{user.user}"
    run = running(*node_flags(redis_plain), *user.flags())
    assert run.ask(f"INCR {key}") == b"1"
    [session] = clients_of(redis_plain, user.user)
    auths = auth_calls(redis_plain)
    count, removed_at = 1, None
    for i in range(1, 400):
        if i == 10:
            user.add_new()
        if i > 10 and removed_at is None and run.rotations():
            user.remove_old()
            removed_at = i
        if removed_at is not None and i >= max(50, removed_at + 20):
            break
        if i % 2:
            assert run.ask(f"BLPOP {key}:empty 0.1") == b""
        else:
            count += 1
            assert run.ask(f"INCR {key}") == str(count).encode()
    assert removed_at is not None, run.err()
    # One connection all along, logged in again in place: the rotation was applied to it.
    assert [c["id"] for c in clients_of(redis_plain, user.user)] == [session["id"]]
    assert auth_calls(redis_plain) > auths
    assert run.finish() == 0
    assert b"Error" not in run.err()
    assert b"WARNING" not in run.err()
    assert_no_secret(user.secrets, bytes(run.stdout), run.err())


def test_transaction_is_not_joined_by_a_reauth(
    redis_plain: RedisNode, rotating_plain: Rotating, running: Callable[..., Running]
) -> None:
    """A rotation while MULTI is open waits for EXEC: EXEC answers only the user's commands."""
    user = rotating_plain
    key = f"cli:rot:tx:{user.user}"
    run = running(*node_flags(redis_plain), *user.flags())
    assert run.ask("MULTI") == b"OK"
    assert run.ask(f"SET {key} 1") == b"QUEUED"
    before = auth_calls(redis_plain)
    user.add_new()
    wait_for("the CLI to pick up the new password", lambda: run.rotations() > 0)
    user.remove_old()
    assert run.ask(f"INCR {key}") == b"QUEUED"
    run.send("EXEC")
    run.send("ECHO end")
    assert run.until(b"end") == [b"OK", b"2"]
    assert auth_calls(redis_plain) == before + 1  # logged in again right after EXEC
    assert run.ask(f"GET {key}") == b"2"
    assert run.finish() == 0
    assert b"Error" not in run.err()
    assert b"WARNING" not in run.err()
    assert_no_secret(user.secrets, bytes(run.stdout), run.err())


def test_failing_refresh_keeps_the_session_and_says_so(
    redis_plain: RedisNode,
    rotating_plain: Rotating,
    running: Callable[..., Running],
    tmp_path: Path,
) -> None:
    """The password command starts failing mid-session (printing the secret on stderr): one
    redacted line, commands go on with the current login; once it works again, it rotates."""
    user = rotating_plain
    key = f"cli:rot:fail:{user.user}"
    run = running(*node_flags(redis_plain), *user.flags())
    assert run.ask(f"INCR {key}") == b"1"
    script = tmp_path / "print-password.sh"
    good = script.read_text()
    broken = tmp_path / "broken.sh"
    broken.write_text('#!/bin/sh\necho "vault: token $(cat "$1") revoked" >&2\nexit 2\n')
    os.replace(broken, script)
    wait_for("the refresh to fail", lambda: b"credential refresh failed" in run.err())
    for count in range(2, 7):
        assert run.ask(f"INCR {key}") == str(count).encode()
    user.add_new()
    fixed = tmp_path / "fixed.sh"
    fixed.write_text(good)
    os.replace(fixed, script)
    wait_for("the CLI to pick up the new password", lambda: run.rotations() > 0)
    user.remove_old()
    for count in range(7, 12):
        assert run.ask(f"INCR {key}") == str(count).encode()
    assert run.finish() == 0
    err = run.err().decode()
    failure = next(line for line in err.splitlines() if "credential refresh failed" in line)
    assert "password command failed (exit 2): vault: token *** revoked" in failure
    assert "keeping the current credential" in failure
    assert "Error" not in err
    assert_no_secret(user.secrets, bytes(run.stdout), run.err())


# -------------------------------------------------------------------------------- streams


@pytest.mark.parametrize("kind", ["subscribe-resp2", "subscribe-resp3", "monitor"])
def test_stream_keeps_working_across_a_rotation(
    redis_plain: RedisNode,
    rotating_plain: Rotating,
    running: Callable[..., Running],
    kind: str,
) -> None:
    """RESP3 subscribers and MONITOR log in again in place (the AUTH's OK is not printed); a
    RESP2 subscriber cannot, so when the server closes it (as a cloud server closes an expired
    login) it logs in again with the new password and subscribes again."""
    user = rotating_plain
    channel = f"cli:rot:chan:{user.user}"
    command = ["MONITOR"] if kind == "monitor" else ["SUBSCRIBE", channel]
    resp3 = ["-3"] if kind == "subscribe-resp3" else []
    run = running(*node_flags(redis_plain), *user.flags(), *resp3, *command)
    confirmation = [b"OK"] if kind == "monitor" else [b"subscribe", channel.encode(), b"1"]
    assert [run.line().rstrip(b"\n") for _ in confirmation] == confirmation
    [stream] = clients_of(redis_plain, user.user)
    user.add_new()
    wait_for("the CLI to pick up the new password", lambda: run.rotations() > 0)
    user.remove_old()
    if kind == "subscribe-resp2":
        redis_plain.call("CLIENT", "KILL", "ID", stream["id"])  # a server ending the old login
        assert [run.line().rstrip(b"\n") for _ in confirmation] == confirmation
        assert [c["id"] for c in clients_of(redis_plain, user.user)] != [stream["id"]]
    else:
        wait_for(
            "the stream's AUTH",
            lambda: (
                [(c["id"], c["cmd"]) for c in clients_of(redis_plain, user.user)]
                == [(stream["id"], "auth")]
            ),
        )
    with redis_py(redis_plain) as r:
        if kind == "monitor":
            r.execute_command("ECHO", "after-rotation")
            seen = []
            while b"after-rotation" not in (line := run.line()):
                seen.append(line)
            assert b"(redacted)" in b"".join(seen)  # the re-AUTH itself, as Redis shows it
            assert all(line.rstrip(b"\n") != b"OK" for line in seen), seen
        else:
            assert r.publish(channel, "after-rotation") == 1
            assert [run.line().rstrip(b"\n") for _ in range(3)] == [
                b"message",
                channel.encode(),
                b"after-rotation",
            ]
    run.proc.send_signal(signal.SIGINT)
    assert run.stop() == 130
    err = run.err()
    assert b"WARNING" not in err
    assert (b"closed the stream after a credential change" in err) == (kind == "subscribe-resp2")
    assert_no_secret(user.secrets, bytes(run.stdout), err)


# ----------------------------------------------------------------------------------- REPL


def test_repl_history_never_stores_secrets(
    redis_plain: RedisNode,
    rotating_plain: Rotating,
    terminal: Callable[..., Terminal],  # noqa: F811
    tmp_path: Path,
) -> None:
    user = rotating_plain
    term = terminal(*node_flags(redis_plain), *user.flags(refresh=60)[1:])
    prompt = re.escape(f"{redis_plain.host}:{redis_plain.port}> ".encode())
    term.expect(prompt)
    for line, reply in (
        (f"AUTH {user.user} {user.old}", b"OK"),
        (f'  "auth" {user.user} {user.old}', b"OK"),
        (f"2 auth {user.user} {user.old}", b"OK\r?\nOK"),
        (f"HELLO 3 AUTH {user.user} {user.old}", b'"proto" => \\(integer\\) 3'),
        (f"ECHO {user.old}", b'"' + user.old.encode() + b'"'),  # a secret the session uses
        ("PING", b"PONG"),
    ):
        term.send(line.encode() + b"\r")
        term.expect(reply)
        term.expect(prompt)
    term.send(b"exit\r")
    assert term.wait() == 0
    history = (tmp_path / ".redis-client_history").read_text()
    assert history.splitlines() == ["PING", "exit"]
    assert_no_secret(user.secrets, history.encode())


# -------------------------------------------------------------------------------- cluster


@pytest.mark.cluster
def test_cluster_session_rotates_across_nodes_and_replica_reads(
    redis_cluster: LocalCluster, running: Callable[..., Running], tmp_path: Path
) -> None:
    """After the old password is gone, MOVED hops open new connections and the replica-read
    client opens again: all with the new password, none failing."""
    user = Rotating(redis_cluster.nodes, tmp_path)
    try:
        keys: dict[int, str] = {}
        for slot in range(0, 16384, 997):  # a key on every master
            key = f"{{{tag_for_slot(slot)}}}:cli:rot"
            keys.setdefault(owner_port(redis_cluster, key), key)
        assert len(keys) == len(redis_cluster.masters())
        seed = redis_cluster.seed
        keys = {seed.port: keys.pop(seed.port), **keys}  # the session starts on the seed
        for master in redis_cluster.masters():
            master.call("SET", keys[master.port], f"v{master.port}")
            master.call("WAIT", "1", "5000")
        flags = [*node_flags(seed, redis_cluster.certs)[:-2], "-c", "--read-from", "replica"]
        assert "-a" not in flags
        run = running(*flags, *user.flags())
        home = keys[seed.port]
        assert run.ask(f"GET {home}").startswith(b"-> Read from replica")
        assert run.line() == f"v{seed.port}\n".encode()
        readers = replica_clients(redis_cluster, user.user)
        assert readers
        user.add_new()
        wait_for("the CLI to pick up the new password", lambda: run.rotations() > 0)
        user.remove_old()
        for port, key in keys.items():
            run.send(f"SET {key}:w {port}")
            run.send(f"GET {key}:w")  # after a write: the master
            run.send("PING")
            run.send(f"GET {key}")  # a replica, through a new replica-read client
        run.send("ECHO end")
        out = run.until(b"end")
        # The replica reads came from a new client (the one from before the rotation is gone).
        fresh = replica_clients(redis_cluster, user.user)
        assert fresh
        assert not fresh & readers
        assert run.finish() == 0
        err = run.err()
        assert b"Error" not in err, err
        assert b"WARNING" not in err, err
        assert sum(line.startswith(b"-> Redirected to slot") for line in out) == 2
        assert sum(line.startswith(b"-> Read from replica") for line in out) == 3
        for port in keys:
            assert f"v{port}".encode() in out
            assert str(port).encode() in out
        assert_no_secret(user.secrets, bytes(run.stdout), err)
    finally:
        user.delete()
