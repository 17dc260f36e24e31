"""Test-side helpers for the tunnel end-to-end tests: ``redis-client tunn`` as a real process.

Import from tests as ``from tunnel_process import Tunnel, free_port`` (``tests/`` is on
``sys.path`` through ``tests/conftest.py``). The tunnel runs through the console entry point
(``client.main.main``) in a child process, so its printed table, signals, exit codes, memory
and ``ps`` lines are those a user sees.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from client.embedded import LocalCluster, RedisNode
from client.resp import FrameScanner, encode_command

__all__ = [
    "ROOT",
    "TIMEOUT",
    "Raw",
    "Tunnel",
    "free_port",
    "pinned_args",
    "redis_benchmark",
    "run_tunnel",
    "secrets_absent",
    "standalone_args",
    "tunnel_env",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0
_MAIN = "import sys; from client.main import main; sys.exit(main())"


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def tunnel_env(*, password: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours plus ``env``; the upstream password only if given."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("REDIS_CLIENT_PASSWORD", None)
    if password is not None:
        full["REDIS_CLIENT_PASSWORD"] = password
    return full


def run_tunnel(args: list[str], *, text: bool = False) -> subprocess.CompletedProcess[Any]:
    """``redis-client tunn ARGS`` run to completion (for usage and start-up errors)."""
    return subprocess.run(
        [sys.executable, "-c", _MAIN, "tunn", *args],
        capture_output=True,
        text=text,
        env=tunnel_env(),
        cwd=ROOT,
        timeout=TIMEOUT,
        check=False,
    )


def redis_benchmark(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``redis-benchmark ARGS`` run to completion; a non-zero exit fails the test."""
    return subprocess.run(["redis-benchmark", *args], capture_output=True, timeout=120, check=True)


def standalone_args(node: RedisNode, cafile: Path | str) -> list[str]:
    """Upstream flags for a TLS standalone server."""
    return ["-h", node.host, "-p", str(node.port), "-t", "--cacert", str(cafile)]


def pinned_args(cluster: LocalCluster, *extra: str) -> list[str]:
    """Upstream flags for a pinned tunnel in front of a TLS cluster, then ``extra``."""
    seed = cluster.seed
    return [
        "-c",
        "-h",
        seed.host,
        "-p",
        str(seed.port),
        "-t",
        "--cacert",
        str(cluster.certs.ca),
        "--tunnel-mode",
        "pinned",
        *extra,
    ]


class Tunnel:
    """``redis-client tunn ARGS`` as a child process; stdout and stderr lines are collected.

    The constructor returns once the tunnel printed ``ready`` (and, with ``--dashboard``, the
    dashboard's address). ``table`` holds the listener lines printed before ``ready``;
    ``local``/``roles`` map upstream ports to listener ports and roles, kept up to date by
    every line :meth:`wait_for` reads; ``seen`` is every stdout line read so far.
    """

    def __init__(
        self,
        args: list[str],
        *,
        password: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MAIN, "tunn", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=tunnel_env(password=password, env=env),
            cwd=ROOT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.out: list[str] = []
        self.err: list[str] = []
        self.local: dict[int, int] = {}  # upstream port -> local port
        self.roles: dict[int, str] = {}
        self.table: list[str] = []
        self.dashboard = 0
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            self.table = self.wait_for(lambda line: line.startswith("ready"), before=True)
            if "--dashboard" in args:
                line = self.wait_for(lambda line: line.startswith("dashboard:"))[-1]
                found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
                assert found, line
                self.dashboard = int(found.group(1))
        except BaseException:
            self.stop()
            raise

    def _pump(self, stream: IO[bytes], into: list[str]) -> None:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            into.append(line)
            if into is self.out:
                self.lines.put(line)
        if into is self.out:
            self.lines.put(None)  # EOF marker

    def _learn(self, line: str) -> None:
        local, _, rest = line.partition(" -> ")
        upstream, _, role = rest.partition(" (")
        try:
            upstream_port = int(upstream.rpartition(":")[2])
            local_port = int(local.rpartition(":")[2])
        except ValueError:
            return
        self.local[upstream_port] = local_port
        self.roles[upstream_port] = role.split(")")[0]

    def wait_for(
        self, match: Callable[[str], bool], *, before: bool = False, timeout: float = TIMEOUT
    ) -> list[str]:
        """Lines up to the first matching one (which is included unless ``before``)."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                self.proc.wait(5)
                self.stop()
                raise AssertionError(f"tunnel exited {self.proc.returncode}: {self.stderr_text}")
            self.seen.append(line)
            if " -> " in line and not line.startswith("retired"):
                self._learn(line)
            if match(line):
                return got if before else [*got, line]
            got.append(line)
        raise AssertionError(f"no matching line in {timeout} s; saw {got}")

    @property
    def port(self) -> int:
        """The first listener's port (the only one of a standalone tunnel)."""
        return int(self.table[0].split(" -> ")[0].rpartition(":")[2])

    def port_for(self, node: RedisNode) -> int:
        """The listener for ``node`` as learnt so far (pinned mode)."""
        return self.local[node.port]

    def listener_for(self, upstream_port: int) -> int:
        """The listener for the upstream port, from the table printed at start."""
        for line in self.table:
            local, _, rest = line.partition(" -> ")
            if rest and int(rest.split(" ")[0].rpartition(":")[2]) == upstream_port:
                return int(local.rpartition(":")[2])
        raise AssertionError(f"no listener for port {upstream_port} in {self.table}")

    @property
    def stderr(self) -> bytes:
        """Everything the tunnel wrote to stderr so far."""
        return "".join(f"{line}\n" for line in self.err).encode()

    @property
    def stderr_text(self) -> str:
        return "\n".join(self.err).strip()

    def output(self) -> str:
        """Everything the tunnel printed so far, stdout then stderr."""
        return "\n".join([*self.out, *self.err])

    def family(self) -> list[int]:
        """The tunnel process and its worker processes."""
        pids = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def rss_mb(self) -> float:
        """Resident memory of the tunnel and its workers together."""
        total = 0.0
        for pid in self.family():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        return total

    def command_lines(self) -> str:
        """What ``ps`` shows for the tunnel and its worker processes."""
        text = []
        for pid in self.family():
            try:
                text.append((Path(f"/proc/{pid}/cmdline").read_bytes()).decode(errors="replace"))
            except OSError:
                continue
        return "\n".join(text)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` (once), wait for the exit, collect the output; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"the tunnel did not stop on {sig.name}") from None
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def secrets_absent(tunnel: Tunnel, *secrets: str) -> None:
    """Fail if a secret appears in the tunnel's output or its ``ps`` lines."""
    shown = tunnel.output() + "\n" + tunnel.command_lines()
    for secret in secrets:
        assert secret not in shown, f"a secret appears in the tunnel's output or ps: {secret!r}"


class Raw:
    """One blocking connection that returns replies as exact bytes (whole RESP frames)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.scanner = FrameScanner()

    @classmethod
    def tunnel(cls, port: int) -> Raw:
        """A plaintext connection to a tunnel listener."""
        return cls(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))

    @classmethod
    def direct(cls, node: RedisNode, cluster: LocalCluster) -> Raw:
        """A TLS connection straight to a cluster node, logged in."""
        ctx = ssl.create_default_context(cafile=str(cluster.certs.ca))
        sock = ctx.wrap_socket(
            socket.create_connection((node.host, node.port), timeout=TIMEOUT),
            server_hostname=node.host,
        )
        conn = cls(sock)
        assert conn.call("AUTH", cluster.password) == b"+OK\r\n"
        return conn

    def send(self, *args: str | bytes | int) -> None:
        self.sock.sendall(encode_command(*args))

    def read(self) -> bytes:
        while True:
            frame = self.scanner.next_frame()
            if frame is not None:
                return frame.data
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("connection closed")
            self.scanner.feed(data)

    def call(self, *args: str | bytes | int) -> bytes:
        self.send(*args)
        return self.read()

    def close(self) -> None:
        self.sock.close()
