"""``redis-client cli`` end to end, against real redis-server processes.

One-shot (plaintext, TLS, errors, exit status), piped stdin (bad input, huge and binary lines,
a server cut mid-reply), the REPL through a pseudo-terminal (prompt, history file, Ctrl-C,
Ctrl-D, completion, hints, help, confirmations) and cluster mode (redirects, CROSSSLOT hint,
cluster-wide helpers).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from servers import RedisFactory, redis_cli, redis_py, redis_py_cluster

from certs import CertPaths
from client.embedded import LocalCluster, RedisNode, find_redis_cli
from client.slots import key_slot

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from client.main import main; sys.exit(main())"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CLIENT_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def node_flags(node: RedisNode, certs: CertPaths | None = None) -> list[str]:
    flags = ["-h", node.host, "-p", str(node.port)]
    if node.tls:
        assert certs is not None
        flags += ["-t", "--cacert", str(certs.ca)]
    if node.password:
        flags += ["-a", node.password]
    return flags


def cli(
    *args: str | bytes,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run our CLI (from the source tree) with stdout and stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY, "cli", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        cwd=ROOT,
        env=env or _env(),
        timeout=timeout,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# ------------------------------------------------------------------------------ one-shot


def test_ping_plaintext(redis_plain: RedisNode) -> None:
    done = cli(*node_flags(redis_plain), "PING")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"PONG\n", b"")


def test_ping_tls_with_cacert_and_password(redis_tls: RedisNode, certs_dir: CertPaths) -> None:
    done = cli(*node_flags(redis_tls, certs_dir), "PING")
    assert (done.returncode, done.stdout) == (0, b"PONG\n")
    typed = cli(*node_flags(redis_tls, certs_dir), "--no-raw", "PING")
    assert typed.stdout == b"PONG\n"


def test_password_from_environment(redis_tls: RedisNode, certs_dir: CertPaths) -> None:
    flags = ["-p", str(redis_tls.port), "-t", "--cacert", str(certs_dir.ca)]
    assert redis_tls.password is not None
    done = cli(*flags, "PING", env=_env(REDIS_CLIENT_PASSWORD=redis_tls.password))
    assert done.stdout == b"PONG\n"


def test_tls_without_ca_is_one_clear_line(redis_tls: RedisNode) -> None:
    done = cli("-p", str(redis_tls.port), "-t", "-a", "x", "PING")
    assert done.returncode == 1
    assert "hint" in one_line_error(done).lower()


def test_plaintext_to_tls_port_is_one_clear_line(redis_tls: RedisNode) -> None:
    done = cli("-p", str(redis_tls.port), "PING")
    assert done.returncode == 1
    assert "tls" in one_line_error(done).lower()


def test_wrong_password_is_one_line_without_the_secret(
    redis_tls: RedisNode, certs_dir: CertPaths
) -> None:
    flags = ["-p", str(redis_tls.port), "-t", "--cacert", str(certs_dir.ca), "-a", "s3cr3t!"]
    done = cli(*flags, "PING")
    assert done.returncode == 1
    err = one_line_error(done)
    assert "s3cr3t!" not in err
    assert "password" in err.lower()


def test_unreachable_server_exits_1_with_hint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the CLI dials it
    done = cli("-p", str(port), "PING")
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in one_line_error(done)


def test_bad_flag_exits_2() -> None:
    assert cli("--no-such-flag").returncode == 2
    assert cli("--raw", "--no-raw", "PING").returncode == 2


def test_error_reply_exits_0_like_redis_cli(redis_plain: RedisNode) -> None:
    # redis-cli exits 0 after an error reply unless given -e; so do we.
    ours = cli(*node_flags(redis_plain), "NOSUCHCOMMAND")
    theirs = subprocess.run(
        ["redis-cli", "-p", str(redis_plain.port), "NOSUCHCOMMAND"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout
    assert ours.stdout.startswith(b"ERR unknown command")


def test_repeat_and_interval(redis_plain: RedisNode) -> None:
    with redis_py(redis_plain) as r:
        r.delete("cli:repeat")
    done = cli(*node_flags(redis_plain), "-r", "3", "-i", "0.01", "INCR", "cli:repeat")
    assert done.stdout == b"1\n2\n3\n"
    done = cli(*node_flags(redis_plain), "-r", "0", "INCR", "cli:repeat")
    assert done.stdout == b""


def test_arguments_after_the_command_are_not_flags(redis_plain: RedisNode) -> None:
    done = cli(*node_flags(redis_plain), "ECHO", "-h")
    assert done.stdout == b"-h\n"
    done = cli(*node_flags(redis_plain), "-3", "--no-raw", "ECHO", "-3")
    assert done.stdout == b'"-3"\n'


def test_help_one_shot(redis_plain: RedisNode) -> None:
    done = cli(*node_flags(redis_plain), "help", "GET")
    assert b"summary:" in done.stdout
    assert b"Get the value of a key" in done.stdout


def test_help_lists_the_credential_flags() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for flag in (
        b"--password-command",
        b"--entra",
        b"--credential-refresh",
        b"--credential-timeout",
    ):
        assert flag in done.stdout


def test_credential_refresh_needs_a_password_command(redis_plain: RedisNode) -> None:
    done = cli(*node_flags(redis_plain), "--credential-refresh", "5", "PING")
    assert done.returncode == 2
    assert "--credential-refresh needs --password-command" in one_line_error(done)


# --------------------------------------------------------------------------------- piped


def test_piped_lines(redis_plain: RedisNode) -> None:
    script = (
        b"DEL cli:piped\n"
        b'SET cli:piped "a b"\n'
        b"GET cli:piped\n"
        b"2 ECHO twice\n"
        b'SET cli:piped "unbalanced\n'
        b"\n"
        b"   \n"
        b"0 PING\n"
        b"QUIT\n"
        b"PING\n"
    )
    done = cli(*node_flags(redis_plain), stdin=script)
    assert done.returncode == 0
    assert done.stdout == (
        b"0\nOK\na b\ntwice\ntwice\nInvalid argument(s)\n"
        b"Invalid redis-cli repeat command option value.\n"
    )


def test_piped_binary_and_non_ascii_values(redis_plain: RedisNode) -> None:
    script = (
        b'SET cli:bin "\\x00\\xff\\r\\n"\n'
        b"SET cli:utf8 \xc3\xa9t\xc3\xa9\n"
        b"SET cli:raw8 \xff\xfe\n"
        b"GET cli:bin\nGET cli:utf8\nGET cli:raw8\n"
    )
    done = cli(*node_flags(redis_plain), "--no-raw", stdin=script)
    assert done.stdout == b'OK\nOK\nOK\n"\\x00\\xff\\r\\n"\n"\\xc3\\xa9t\\xc3\\xa9"\n"\\xff\\xfe"\n'
    with redis_py(redis_plain) as r:
        assert r.get("cli:bin") == b"\x00\xff\r\n"
        assert r.get("cli:raw8") == b"\xff\xfe"


def test_piped_nul_byte_is_refused_and_the_run_goes_on(redis_plain: RedisNode) -> None:
    done = cli(*node_flags(redis_plain), stdin=b"ECHO a\x00b\nPING\n")
    assert done.stdout == b"Invalid argument(s)\nPONG\n"
    assert b"NUL" in done.stderr


def test_piped_huge_line_is_refused_and_the_run_goes_on(redis_plain: RedisNode) -> None:
    from client.shell import MAX_LINE

    huge = b"SET cli:huge " + b"x" * (MAX_LINE + 10) + b"\n"
    done = cli(*node_flags(redis_plain), stdin=huge + b"PING\n", timeout=120)
    assert done.stdout == b"Invalid argument(s)\nPONG\n"
    assert b"longer than" in done.stderr


def test_piped_big_value_round_trips(redis_plain: RedisNode) -> None:
    value = b"v" * 5_000_000
    done = cli(*node_flags(redis_plain), stdin=b"SET cli:big " + value + b"\nSTRLEN cli:big\n")
    assert done.stdout == b"OK\n5000000\n"


class CuttingProxy:
    """A TCP relay to a real server that cuts its first connection after ``limit`` reply bytes.

    Later connections are relayed whole, so a client that reconnects gets going again.
    """

    def __init__(self, port: int, limit: int) -> None:
        self.target = port
        self.limit = limit
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        first = True
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.limit if first else None
            first = False
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def cutting_proxy(redis_plain: RedisNode) -> Iterator[CuttingProxy]:
    with redis_py(redis_plain) as r:
        r.set("cli:cut", b"z" * 100_000)
    proxy = CuttingProxy(redis_plain.port, limit=5_000)
    yield proxy
    proxy.close()


def test_server_cut_mid_reply_piped_goes_on(cutting_proxy: CuttingProxy) -> None:
    done = cli("-p", str(cutting_proxy.port), stdin=b"GET cli:cut\nPING\n")
    assert cutting_proxy.cuts == 1
    assert done.stdout == b"PONG\n"
    err = done.stderr.decode()
    assert err.startswith("Error: ")
    assert "closed" in err
    assert len(err.strip().splitlines()) == 1
    assert done.returncode == 1  # a command was lost: scripts must learn it


def test_server_cut_mid_reply_one_shot(cutting_proxy: CuttingProxy) -> None:
    done = cli("-p", str(cutting_proxy.port), "GET", "cli:cut")
    assert done.returncode == 1
    assert done.stdout == b""
    assert "closed" in one_line_error(done)


def test_pushes_from_another_client_come_before_the_next_reply(redis_plain: RedisNode) -> None:
    """A key we read (CLIENT TRACKING ON, RESP3) is written by someone else: the invalidation
    is printed before the reply of our next command, as redis-cli 7 does."""
    with redis_py(redis_plain) as r:
        r.delete("cli:push")
    args = [*node_flags(redis_plain), "-3", "--no-raw", "--show-pushes", "yes"]
    with subprocess.Popen(
        [sys.executable, "-c", ENTRY, "cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=_env(),
    ) as proc:
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(b"CLIENT TRACKING ON\nGET cli:push\n")
            proc.stdin.flush()
            assert [proc.stdout.readline() for _ in range(2)] == [b"OK\n", b"(nil)\n"]
            with redis_py(redis_plain) as r:
                r.set("cli:push", "theirs")  # the server tells us at once
            out, err = proc.communicate(b"PING\nGET cli:push\n", timeout=60)
        finally:
            watchdog.cancel()
    assert (proc.returncode, err) == (0, b"")
    assert out == b"-> invalidate: 'cli:push'\nPONG\n\"theirs\"\n"


def test_show_pushes_takes_yes_or_no(redis_plain: RedisNode) -> None:
    assert cli(*node_flags(redis_plain), "--show-pushes", "YES", "PING").stdout == b"PONG\n"
    assert cli(*node_flags(redis_plain), "--show-pushes", "maybe", "PING").returncode == 2


def test_subscribe_streams_messages_until_ctrl_c(redis_plain: RedisNode) -> None:
    for flags in ([], ["-3"]):
        args = [*node_flags(redis_plain), *flags, "--no-raw", "SUBSCRIBE", "cli:chan"]
        with subprocess.Popen(
            [sys.executable, "-c", ENTRY, "cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=_env(),
        ) as proc:
            try:
                assert proc.stdout is not None
                lines = [proc.stdout.readline() for _ in range(4)]  # subscribed: now publish
                assert lines == [
                    b"Reading messages... (press Ctrl-C to quit)\n",
                    b'1) "subscribe"\n',
                    b'2) "cli:chan"\n',
                    b"3) (integer) 1\n",
                ]
                with redis_py(redis_plain) as r:
                    assert r.publish("cli:chan", "hé") == 1
                message = [proc.stdout.readline() for _ in range(3)]
                assert message == [b'1) "message"\n', b'2) "cli:chan"\n', b'3) "h\\xc3\\xa9"\n']
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=20) == 130
            finally:
                if proc.poll() is None:
                    proc.kill()


# ---------------------------------------------------------------------------------- REPL


class Terminal:
    """Our CLI on a pseudo-terminal: send keys, wait for output."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
            # Make the pty our controlling terminal, so Ctrl-C there is SIGINT, as for a user.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 20) -> bytes:
        """Wait until ``pattern`` (a regex) shows up after what was consumed; consume to it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.seen)
            if match:
                before = self.seen[: match.end()]
                self.seen = self.seen[match.end() :]
                return before
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; got {self.seen[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"EOF before {pattern!r}; got {self.seen[-2000:]!r}")
                self.seen += chunk

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    pass
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        term = Terminal(args, _env(HOME=str(tmp_path), TERM="xterm"))
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()


def prompt_of(node: RedisNode) -> bytes:
    return re.escape(f"{node.host}:{node.port}> ".encode())


def test_repl_prompt_history_and_exit(
    redis_plain: RedisNode, terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    term = terminal(*node_flags(redis_plain))
    prompt = prompt_of(redis_plain)
    term.expect(prompt)
    term.send(b"PING\r")
    term.expect(b"PONG\r?\n")
    term.expect(prompt)
    term.send(b"AUTH default not-stored\r")  # the default user has no password: OK
    term.expect(b"OK")
    term.expect(prompt)
    term.send(b"hello 3 auth default not-stored-either\r")
    term.expect(b'"proto" => \\(integer\\) 3')
    term.expect(prompt)
    term.send(b"SET cli:repl 1\r")
    term.expect(b"OK")
    term.expect(prompt)
    term.send(b"GARBAGE LINE\x03")  # Ctrl-C clears the line: nothing runs
    term.expect(b"\\^C")
    term.expect(prompt)
    term.send(b"exit\r")
    assert term.wait() == 0
    history = tmp_path / ".redis-client_history"
    assert history.stat().st_mode & 0o777 == 0o600
    lines = history.read_text().splitlines()
    assert lines == ["PING", "SET cli:repl 1", "exit"]


def test_repl_ctrl_d_exits(redis_plain: RedisNode, terminal: Callable[..., Terminal]) -> None:
    term = terminal(*node_flags(redis_plain))
    term.expect(prompt_of(redis_plain))
    term.send(b"\x04")
    assert term.wait() == 0


def test_repl_history_file_mode_is_tightened(
    redis_plain: RedisNode, terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    history = tmp_path / ".redis-client_history"
    history.write_text("ECHO old\n")
    history.chmod(0o644)
    term = terminal(*node_flags(redis_plain))
    term.expect(prompt_of(redis_plain))
    term.send(b"\x1b[A\r")  # up arrow: the stored line comes back
    term.expect(b"old")
    term.send(b"quit\r")
    assert term.wait() == 0
    assert history.stat().st_mode & 0o777 == 0o600
    assert history.read_text().splitlines() == ["ECHO old", "quit"]


def test_repl_history_drops_lines_with_the_password(
    redis_tls: RedisNode,
    certs_dir: CertPaths,
    terminal: Callable[..., Terminal],
    tmp_path: Path,
) -> None:
    """A line holding the -a password is not stored, whatever the command (here ECHO)."""
    assert redis_tls.password
    term = terminal(*node_flags(redis_tls, certs_dir))
    prompt = prompt_of(redis_tls)
    term.expect(prompt)
    term.send(f"ECHO {redis_tls.password}\r".encode())
    term.expect(f'"{redis_tls.password}"'.encode())
    term.expect(prompt)
    term.send(b"ECHO kept\r")
    term.expect(b'"kept"')
    term.expect(prompt)
    term.send(b"quit\r")
    assert term.wait() == 0
    history = (tmp_path / ".redis-client_history").read_text()
    assert history.splitlines() == ["ECHO kept", "quit"]


def test_repl_completion_hints_and_help(
    redis_plain: RedisNode, terminal: Callable[..., Terminal]
) -> None:
    term = terminal(*node_flags(redis_plain))
    prompt = prompt_of(redis_plain)
    term.expect(prompt)
    term.send(b"ECH\t")  # Tab completes the only command starting with ECH
    term.expect(b"ECHO")
    term.send(b" hi\r")
    term.expect(b'"hi"')
    term.expect(prompt)
    term.send(b"GETRANGE ")  # the hint shows the arguments still to type
    term.expect(b"key start end")
    term.send(b"\x15help GETRANGE\r")  # Ctrl-U clears the typed text first
    term.expect(b"summary:")
    term.expect(prompt)
    term.send(b"CLIENT NO-EV\t")  # subcommands complete too
    term.expect(b"CLIENT NO-EVICT")
    term.send(b"\x03quit\r")
    assert term.wait() == 0


def test_repl_ctrl_c_stops_a_blocking_command(
    redis_plain: RedisNode, terminal: Callable[..., Terminal]
) -> None:
    term = terminal(*node_flags(redis_plain))
    prompt = prompt_of(redis_plain)
    term.expect(prompt)
    term.send(b"BLPOP cli:never 0\r")
    time.sleep(0.5)  # let the command reach the server; not a timing assertion
    term.send(b"\x03")
    term.expect(b"interrupted")
    term.expect(prompt)
    term.send(b"PING\r")
    term.expect(b"PONG")
    term.send(b"quit\r")
    assert term.wait() == 0


def test_repl_asks_before_flushall(
    redis_factory: RedisFactory, terminal: Callable[..., Terminal]
) -> None:
    node = redis_factory.standalone()
    with redis_py(node) as r:
        r.set("keep", "me")
    term = terminal(*node_flags(node))
    prompt = prompt_of(node)
    term.expect(prompt)
    term.send(b"FLUSHALL\r")
    term.expect(b"Type 'yes'")
    term.send(b"no\r")
    term.expect(prompt)
    with redis_py(node) as r:
        assert r.get("keep") == b"me"
    term.send(b"flushdb\r")
    term.expect(b"Type 'yes'")
    term.send(b"yes\r")
    term.expect(b"OK")
    term.send(b"quit\r")
    assert term.wait() == 0
    with redis_py(node) as r:
        assert r.dbsize() == 0


def test_repl_shows_pushes_on_a_terminal(
    redis_plain: RedisNode, terminal: Callable[..., Terminal]
) -> None:
    """On a terminal pushes are shown by default: our own write's invalidation before the next
    prompt, another client's before the reply of the next command."""
    with redis_py(redis_plain) as r:
        r.delete("cli:repl:push")
    term = terminal(*node_flags(redis_plain), "-3")
    prompt = prompt_of(redis_plain)
    term.expect(prompt)
    term.send(b"CLIENT TRACKING ON\r")
    term.expect(b"OK")
    term.expect(prompt)
    term.send(b"GET cli:repl:push\r")
    term.expect(b"\\(nil\\)")
    term.expect(prompt)
    term.send(b"SET cli:repl:push mine\r")
    term.expect(b"OK\r\n-> invalidate: 'cli:repl:push'\r\n\r?" + prompt)
    term.send(b"GET cli:repl:push\r")
    term.expect(b'"mine"')
    term.expect(prompt)
    with redis_py(redis_plain) as r:
        r.set("cli:repl:push", "theirs")
    term.send(b"PING\r")
    term.expect(b"-> invalidate: 'cli:repl:push'\r\nPONG")
    term.expect(prompt)
    term.send(b"quit\r")
    assert term.wait() == 0


def test_repl_not_connected_prompt(terminal: Callable[..., Terminal]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    term = terminal("-p", str(port))
    term.expect(b"Could not connect")
    term.expect(b"not connected> ")
    term.send(b"PIN\t")  # completion works offline, from the bundled command docs
    term.expect(b"PING")
    term.send(b"\r")
    term.expect(b"Error: ")
    term.expect(b"not connected> ")
    term.send(b"quit\r")
    assert term.wait() == 0


# -------------------------------------------------------------------------------- cluster


def cluster_flags(cluster: LocalCluster) -> list[str]:
    return [*node_flags(cluster.seed, cluster.certs), "-c"]


def owner_port(cluster: LocalCluster, key: str) -> int:
    with redis_py_cluster(cluster) as rc:
        node = rc.get_node_from_key(key)
        assert node is not None
        return int(node.port)


def _key_elsewhere(cluster: LocalCluster) -> str:
    for i in range(1000):
        key = f"cli:k{i}"
        if owner_port(cluster, key) != cluster.seed.port:
            return key
    raise AssertionError("no key off the seed node")


@pytest.mark.cluster
def test_cluster_one_shot_follows_moved_silently(redis_cluster: LocalCluster) -> None:
    key = _key_elsewhere(redis_cluster)
    assert cli(*cluster_flags(redis_cluster), "SET", key, "v").stdout == b"OK\n"
    done = cli(*cluster_flags(redis_cluster), "GET", key)
    assert (done.returncode, done.stdout) == (0, b"v\n")


@pytest.mark.cluster
def test_cluster_piped_prints_redirects_like_redis_cli(redis_cluster: LocalCluster) -> None:
    key = _key_elsewhere(redis_cluster)
    script = f"SET {key} v\nGET {key}\n".encode()
    ours = cli(*cluster_flags(redis_cluster), stdin=script)
    theirs = redis_cli(redis_cluster, input=script) + "\n"
    port = owner_port(redis_cluster, key)
    slot = key_slot(key.encode())
    assert ours.stdout.decode() == theirs
    assert ours.stdout.decode().startswith(
        f"-> Redirected to slot [{slot}] located at 127.0.0.1:{port}\nOK\nv\n"
    )


@pytest.mark.cluster
def test_cluster_crossslot_hint(redis_cluster: LocalCluster) -> None:
    done = cli(*cluster_flags(redis_cluster), "--no-raw", "MSET", "user:1:a", "1", "user:1:b", "2")
    assert done.stdout.startswith(b"(error) CROSSSLOT")
    err = done.stderr.decode()
    for key in ("user:1:a", "user:1:b"):
        assert f"{key} -> slot {key_slot(key.encode())} on 127.0.0.1:" in err
    assert "{user:1}:a {user:1}:b" in err
    fixed = cli(*cluster_flags(redis_cluster), "MSET", "{user:1}:a", "1", "{user:1}:b", "2")
    assert fixed.stdout == b"OK\n"


@pytest.mark.cluster
def test_cluster_helpers(redis_cluster: LocalCluster) -> None:
    with redis_py_cluster(redis_cluster) as rc:
        for key in rc.scan_iter(match="clihelp:*"):
            rc.delete(key)
        for i in range(30):
            rc.set(f"clihelp:{i}", i)
    size = 0
    for master in redis_cluster.masters():
        with redis_py(master) as r:
            size += r.dbsize()
    flags = cluster_flags(redis_cluster)

    dbsize = cli(*flags, ":cluster", "dbsize").stdout.decode().splitlines()
    assert len(dbsize) == 4  # three masters and the total
    assert dbsize[-1].split() == ["total", str(size)]

    keys = cli(*flags, ":cluster", "keys", "clihelp:*")
    assert sorted(keys.stdout.decode().split()) == sorted(f"clihelp:{i}" for i in range(30))
    counts = keys.stderr.decode().splitlines()  # raw mode: the breakdown goes to stderr
    assert counts[-1] == "total: 30 keys"
    assert sum(int(line.rsplit(" ", 1)[1]) for line in counts[:-1]) == 30

    scan = cli(*flags, ":cluster", "scan", "MATCH", "clihelp:*", "COUNT", "7")
    assert sorted(scan.stdout.decode().split()) == sorted(f"clihelp:{i}" for i in range(30))

    topo = cli(*flags, ":topology").stdout.decode()
    assert topo.count("master ") == 3
    assert topo.count("replica ") == 3
    assert "slots 0-" in topo

    slot = cli(*flags, ":slot", "{user:1}:a").stdout.decode()
    assert f"slot {key_slot(b'user:1')}" in slot
    assert 'hash tag "user:1"' in slot or "hash tag user:1" in slot


@pytest.mark.cluster
def test_cluster_repl_prompt_follows_the_node(
    redis_cluster: LocalCluster, terminal: Callable[..., Terminal]
) -> None:
    key = _key_elsewhere(redis_cluster)
    port = owner_port(redis_cluster, key)
    term = terminal(*cluster_flags(redis_cluster))
    term.expect(prompt_of(redis_cluster.seed))
    term.send(f"SET {key} v\r".encode())
    term.expect(b"-> Redirected to slot")
    term.expect(b"OK")
    term.expect(re.escape(f"127.0.0.1:{port}> ".encode()))
    term.send(b"quit\r")
    assert term.wait() == 0


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_follows_ask_like_redis_cli(redis_factory: RedisFactory) -> None:
    """A slot in migration: the source answers ASK, and both CLIs print the same redirects."""
    cluster = redis_factory.cluster(masters=3, replicas_per_master=0, tls=False, password="pw")
    key = "cli:ask"
    slot = key_slot(key.encode())
    source = cluster.node_by_port(owner_port(cluster, key))
    target = next(n for n in cluster.masters() if n is not source)
    assert source.node_id is not None
    assert target.node_id is not None

    def forget_key() -> None:
        wire = target.connect()
        try:
            wire.call("ASKING")
            wire.call("DEL", key)
        finally:
            wire.close()

    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    try:
        script = f"SET {key} v\nGET {key}\n".encode()
        theirs = redis_cli(cluster, input=script) + "\n"
        forget_key()
        ours = cli(*cluster_flags(cluster), stdin=script).stdout.decode()
        forget_key()
    finally:
        for node in (source, target):
            node.call("CLUSTER", "SETSLOT", slot, "STABLE")
    assert ours == theirs
    assert f"-> Redirected to slot [{slot}] located at 127.0.0.1:{target.port}\nOK\n" in ours
    assert ours.endswith("v\n")


def _channel_stream(command: list[str], channel: str, owner: RedisNode, typed: bool) -> list[bytes]:
    """SSUBSCRIBE ``channel`` (piped), publish once it is subscribed; the lines printed."""
    env = _env()
    env["REDISCLI_AUTH"] = owner.password or ""
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    ) as proc:
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(f"SSUBSCRIBE {channel}\n".encode())
            proc.stdin.close()
            lines: list[bytes] = []
            confirmed = b"3) (integer) 1\n" if typed else b"1\n"
            while not lines or lines[-1] != confirmed:
                line = proc.stdout.readline()
                assert line, f"EOF after {lines!r}"
                lines.append(line)
            with redis_py(owner) as r:
                assert r.execute_command("SPUBLISH", channel, "hé") >= 1
            lines += [proc.stdout.readline() for _ in range(3)]
        finally:
            watchdog.cancel()
            proc.kill()
    return lines


@pytest.mark.cluster
@pytest.mark.parametrize("flags", [[], ["--no-raw"], ["-3", "--no-raw"]])
def test_cluster_ssubscribe_goes_to_the_channel_owner_like_redis_cli(
    redis_cluster: LocalCluster, flags: list[str]
) -> None:
    """SSUBSCRIBE -c on a channel of another shard: both CLIs follow the MOVED to its owner."""
    channel = _key_elsewhere(redis_cluster)
    port = owner_port(redis_cluster, channel)
    owner = redis_cluster.node_by_port(port)
    seed, certs = redis_cluster.seed, redis_cluster.certs
    theirs = [find_redis_cli(), "-h", seed.host, "-p", str(seed.port), "-c"]
    theirs += ["--tls", "--cacert", str(certs.ca), "--cert", str(certs.client_cert)]
    theirs += ["--key", str(certs.client_key), *flags]
    ours = [sys.executable, "-c", ENTRY, "cli", *cluster_flags(redis_cluster), *flags]
    typed = "--no-raw" in flags
    expected = _channel_stream(theirs, channel, owner, typed)
    got = _channel_stream(ours, channel, owner, typed)
    assert got == expected
    slot = key_slot(channel.encode())
    assert f"-> Redirected to slot [{slot}] located at 127.0.0.1:{port}\n".encode() in got
    assert got[-1] == ('3) "h\\xc3\\xa9"\n' if typed else "hé\n").encode()


def test_repl_asks_before_keys_on_a_large_keyspace(
    redis_factory: RedisFactory, terminal: Callable[..., Terminal]
) -> None:
    from client.shell import KEYS_CONFIRM_THRESHOLD

    node = redis_factory.standalone(extra_config={"enable-debug-command": "yes"})
    node.call("DEBUG", "POPULATE", KEYS_CONFIRM_THRESHOLD + 1)
    term = terminal(*node_flags(node))
    prompt = prompt_of(node)
    term.expect(prompt)
    term.send(b"KEYS nomatch*\r")
    term.expect(b"Type 'yes'")
    term.send(b"\x03")  # Ctrl-C answers no
    term.expect(prompt)
    term.send(b"KEYS nomatch*\r")
    term.expect(b"Type 'yes'")
    term.send(b"yes\r")
    term.expect(b"\\(empty array\\)")
    term.send(b"quit\r")
    assert term.wait() == 0
