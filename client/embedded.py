"""Start and stop real local ``redis-server`` processes: standalone nodes and TLS clusters.

Used by the test harness and by ``redis-client tunn --demo``. This module is synchronous on
purpose (subprocess + blocking sockets, no trio): callers in Trio code run it in a thread.

Every server binds 127.0.0.1 on a free port in its own directory under a temp dir, with
persistence off, and is stopped by PID (SIGTERM, then SIGKILL after a bound). Readiness and
health are checked with a tiny blocking RESP2 helper (:meth:`RedisNode.call`); the cluster itself
is created with ``redis-cli --cluster create``.

Config values are written to ``redis.conf`` verbatim (``key value``), except passwords and
paths, which are quoted. ``extra_config`` entries are written last and so override defaults.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from certs import CertPaths
from client.errors import ConfigError, ConnectError, RedisToolkitError, ReplyError

__all__ = [
    "LocalCluster",
    "RedisNode",
    "ServerStartError",
    "find_redis_cli",
    "find_redis_server",
    "start_cluster",
    "start_standalone",
]

_HOST = "127.0.0.1"
_BUS_OFFSET = 10000
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0
_CLUSTER_TIMEOUT = 60.0
_CALL_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5
_POLL = 0.02
_MAX_REPLY_LINE = 1 << 20
_MAX_BULK = 64 << 20
_INSTALL_HINT = "install it with: sudo apt-get install -y redis-server (Debian/Ubuntu)"

Arg = str | bytes | int


class ServerStartError(RedisToolkitError):
    """A local redis-server (or cluster) did not start or did not become healthy in time.

    ``str(err)`` is one line; :attr:`log_tail` holds the end of the server log (may be empty).
    """

    def __init__(self, message: str, *, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint=hint)
        self.log_tail = log_tail


# --------------------------------------------------------------------------- binaries


def find_redis_server() -> str:
    """Path of ``redis-server``; :class:`ConfigError` with an install hint when missing."""
    return _find_binary("redis-server", "REDIS_SERVER")


def find_redis_cli() -> str:
    """Path of ``redis-cli`` (shipped with redis-server on Debian)."""
    return _find_binary("redis-cli", "REDIS_CLI")


def _find_binary(name: str, env_var: str) -> str:
    override = os.environ.get(env_var)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise ConfigError(
            f"{name} not usable: ${env_var}={override} is not an executable file",
            hint=f"unset {env_var} or point it at {name}",
        )
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found on PATH", hint=_INSTALL_HINT)
    return found


# --------------------------------------------------------------------------- ports

_reserved_lock = threading.Lock()
_reserved: set[int] = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _pick_port(*, with_bus: bool) -> int:
    """A free loopback port (and, for cluster nodes, a free bus port = port + 10000)."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port: int = sock.getsockname()[1]
        with _reserved_lock:
            if port in _reserved:
                continue
            if with_bus:
                bus = port + _BUS_OFFSET
                if bus > 65535 or bus in _reserved or not _port_is_free(bus):
                    continue
                _reserved.add(bus)
            _reserved.add(port)
            return port
    raise ServerStartError("no free loopback port found for redis-server after 500 tries")


def _release_port(port: int, *, with_bus: bool) -> None:
    with _reserved_lock:
        _reserved.discard(port)
        if with_bus:
            _reserved.discard(port + _BUS_OFFSET)


# --------------------------------------------------------------------------- tiny RESP2 client


def _tls_context(certs: CertPaths) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx


def _encode(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Wire:
    """One blocking connection speaking RESP2 (replies as bytes/int/None/list)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def call(self, *args: Arg) -> object:
        self._sock.sendall(_encode(args))
        return self._read()

    def _read(self) -> object:
        line = self._file.readline(_MAX_REPLY_LINE)
        if not line.endswith(b"\r\n"):
            raise ConnectError("redis-server closed the connection mid-reply")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            raise ReplyError.from_message(body.decode("utf-8", "replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            if size > _MAX_BULK:
                raise ConnectError(f"bulk reply of {size} bytes is over the harness limit")
            data = self._file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectError("redis-server closed the connection mid-reply")
            return data[:-2]
        if kind == b"*":
            count = int(body)
            if count < 0:
                return None
            return [self._read() for _ in range(count)]
        raise ConnectError(f"unexpected reply from redis-server: {line[:60]!r}")


# --------------------------------------------------------------------------- nodes


def _quote(value: str | os.PathLike[str]) -> str:
    text = os.fspath(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass(eq=False)
class RedisNode:
    """One running (or stopped) local redis-server process."""

    host: str
    port: int
    pid: int
    tls: bool
    role: str  # 'master', 'replica' or 'standalone'
    node_id: str | None
    workdir: Path
    process: subprocess.Popen[bytes]
    password: str | None = None
    certs: CertPaths | None = None
    cluster: bool = False
    #: A temp dir this node owns: removed by :meth:`stop`.
    cleanup_dir: Path | None = field(default=None, repr=False)

    # -- facts

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def bus_port(self) -> int | None:
        return self.port + _BUS_OFFSET if self.cluster else None

    @property
    def config_path(self) -> Path:
        return self.workdir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log (and of its stdout/stderr, where config errors go)."""
        parts = [_tail(self.log_path, lines), _tail(self.stdout_path, lines)]
        return "\n".join(p for p in parts if p)

    # -- talking to it

    def connect(self, *, timeout: float = _CALL_TIMEOUT) -> _Wire:
        ctx = _tls_context(self.certs) if self.tls and self.certs is not None else None
        wire = _Wire(self.host, self.port, tls=ctx, timeout=timeout)
        try:
            if self.password is not None:
                wire.call("AUTH", self.password)
        except BaseException:
            wire.close()
            raise
        return wire

    def call(self, *args: Arg, timeout: float = _CALL_TIMEOUT) -> object:
        """Run one command on a fresh blocking connection (AUTH included); RESP2 reply.

        Error replies raise :class:`client.errors.ReplyError`. Meant for the harness and for
        tests that need an independent check, not for speed.
        """
        wire = self.connect(timeout=timeout)
        try:
            return wire.call(*args)
        finally:
            wire.close()

    def info(self, section: str = "") -> dict[str, str]:
        raw = self.call("INFO", section) if section else self.call("INFO")
        return _parse_info(raw)

    # -- lifecycle

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; remove an owned temp dir."""
        _terminate([self], timeout)
        _release_port(self.port, with_bus=self.cluster)
        if self.cleanup_dir is not None:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)
            self.cleanup_dir = None

    def kill(self) -> None:
        """SIGKILL now (a crash, for failover tests). Files stay; :meth:`restart` works."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.send_signal(signal.SIGCONT)
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the node hangs without closing its sockets (cluster marks it failed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = _START_TIMEOUT) -> None:
        """Stop if running, then start again on the same port with the same config and files.

        A cluster node keeps its node id (nodes.conf) and rejoins; ``role`` is left as it was,
        use :meth:`LocalCluster.refresh_roles` to update it.
        """
        if self.alive():
            _terminate([self], _STOP_TIMEOUT)
        self.process = _spawn(self.workdir)
        self.pid = self.process.pid
        try:
            _wait_ready(self, time.monotonic() + timeout)
        except _PortTaken:
            raise ServerStartError(
                f"cannot restart redis-server: port {self.port} was taken meanwhile",
                log_tail=self.log_tail(),
            ) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_info(raw: object) -> dict[str, str]:
    if not isinstance(raw, bytes):
        raise ConnectError(f"INFO returned {type(raw).__name__}, expected text")
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value
    return out


def _terminate(nodes: Iterable[RedisNode], timeout: float) -> None:
    """SIGTERM every running node, wait up to ``timeout`` in total, SIGKILL the rest."""
    running = [n for n in nodes if n.process.poll() is None]
    for node in running:
        node.process.send_signal(signal.SIGTERM)
        node.process.send_signal(signal.SIGCONT)  # a paused node must wake to die
    deadline = time.monotonic() + timeout
    for node in running:
        try:
            node.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()


def _spawn(workdir: Path) -> subprocess.Popen[bytes]:
    with (workdir / "stdout.log").open("ab") as out:
        return subprocess.Popen(
            [find_redis_server(), str(workdir / "redis.conf")],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )


def _config_lines(
    *,
    port: int,
    workdir: Path,
    tls: bool,
    password: str | None,
    certs: CertPaths | None,
    cluster: bool,
    node_timeout_ms: int,
    extra: Mapping[str, str] | None,
) -> list[str]:
    conf: dict[str, str] = {
        "bind": _HOST,
        "protected-mode": "no",
        "daemonize": "no",
        "dir": _quote(workdir),
        "logfile": _quote(workdir / "redis.log"),
        "loglevel": "notice",
        "save": '""',
        "appendonly": "no",
        "repl-ping-replica-period": "1",
        "repl-diskless-sync": "yes",
        "repl-diskless-sync-delay": "0",
        "latency-tracking": "no",
    }
    if tls:
        assert certs is not None
        conf.update(
            {
                "port": "0",
                "tls-port": str(port),
                "tls-cert-file": _quote(certs.server_cert),
                "tls-key-file": _quote(certs.server_key),
                "tls-ca-cert-file": _quote(certs.ca),
                "tls-auth-clients": "optional",
                "tls-replication": "yes",
            }
        )
        if cluster:
            conf["tls-cluster"] = "yes"
    else:
        conf["port"] = str(port)
    if password is not None:
        conf["requirepass"] = _quote(password)
        conf["masterauth"] = _quote(password)
    if cluster:
        conf.update(
            {
                "cluster-enabled": "yes",
                "cluster-config-file": _quote(workdir / "nodes.conf"),
                "cluster-node-timeout": str(node_timeout_ms),
                "cluster-port": str(port + _BUS_OFFSET),
                "cluster-replica-validity-factor": "0",
            }
        )
    if extra:
        conf.update(extra)
    return [f"{key} {value}" for key, value in conf.items()]


@dataclass(frozen=True, slots=True)
class _NodeSettings:
    tls: bool
    password: str | None
    certs: CertPaths | None
    cluster: bool
    node_timeout_ms: int
    extra: Mapping[str, str] | None


def _prepare_node(root: Path, s: _NodeSettings) -> RedisNode:
    """Write the config and spawn the process (does not wait for it)."""
    port = _pick_port(with_bus=s.cluster)
    workdir = root / f"node-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    lines = _config_lines(
        port=port,
        workdir=workdir,
        tls=s.tls,
        password=s.password,
        certs=s.certs,
        cluster=s.cluster,
        node_timeout_ms=s.node_timeout_ms,
        extra=s.extra,
    )
    (workdir / "redis.conf").write_text("\n".join(lines) + "\n")
    os.chmod(workdir / "redis.conf", 0o600)  # it holds the password
    process = _spawn(workdir)
    return RedisNode(
        host=_HOST,
        port=port,
        pid=process.pid,
        tls=s.tls,
        role="master" if s.cluster else "standalone",
        node_id=None,
        workdir=workdir,
        process=process,
        password=s.password,
        certs=s.certs,
        cluster=s.cluster,
    )


class _PortTaken(Exception):
    pass


def _wait_ready(node: RedisNode, deadline: float) -> None:
    """Until PING answers PONG; raise (with the log tail) if the process dies or time runs out."""
    last: BaseException | None = None
    while True:
        code = node.process.poll()
        if code is not None:
            tail = node.log_tail()
            if "Address already in use" in tail:
                raise _PortTaken
            raise ServerStartError(
                f"redis-server on {node.address} exited with code {code} during startup",
                hint=f"see {node.log_path}",
                log_tail=tail,
            )
        try:
            if node.call("PING", timeout=1.0) == b"PONG":
                return
        except (OSError, RedisToolkitError) as exc:  # not listening yet, LOADING, ...
            last = exc
        if time.monotonic() > deadline:
            _terminate([node], _STOP_TIMEOUT)
            raise ServerStartError(
                f"redis-server on {node.address} did not answer PING in time (last: {last})",
                hint=f"see {node.log_path}",
                log_tail=node.log_tail(),
            )
        time.sleep(_POLL)


def _start_node(root: Path, settings: _NodeSettings, *, ready_by: float) -> RedisNode:
    for _ in range(_PORT_ATTEMPTS):
        node = _prepare_node(root, settings)
        try:
            _wait_ready(node, ready_by)
        except _PortTaken:
            shutil.rmtree(node.workdir, ignore_errors=True)
            continue
        return node
    raise ServerStartError(f"redis-server could not bind a free port in {_PORT_ATTEMPTS} tries")


def _check_tls_args(tls: bool, certs: CertPaths | None) -> None:
    if tls and certs is None:
        raise ConfigError("a TLS redis-server needs certificates", hint="pass certs=generate(dir)")


def _make_root(workdir: Path | None) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="redis-client-")), True
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def start_standalone(
    *,
    tls: bool,
    password: str | None,
    certs: CertPaths | None,
    workdir: Path | None = None,
    extra_config: Mapping[str, str] | None = None,
) -> RedisNode:
    """Start one standalone redis-server on a free loopback port and wait until it answers.

    TLS servers listen only on TLS (``port 0``) and accept, but do not require, client
    certificates. With ``workdir=None`` a temp dir is made and removed by :meth:`RedisNode.stop`.
    """
    find_redis_server()
    _check_tls_args(tls, certs)
    root, owned = _make_root(workdir)
    try:
        settings = _NodeSettings(
            tls=tls,
            password=password,
            certs=certs,
            cluster=False,
            node_timeout_ms=0,
            extra=extra_config,
        )
        node = _start_node(root, settings, ready_by=time.monotonic() + _START_TIMEOUT)
    except BaseException:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if owned:
        node.cleanup_dir = root
    return node


# --------------------------------------------------------------------------- clusters


@dataclass(eq=False)
class LocalCluster:
    """A running local Redis Cluster (all nodes on 127.0.0.1)."""

    nodes: list[RedisNode]
    password: str
    certs: CertPaths
    tls: bool = True
    workdir: Path | None = None
    replicas_per_master: int = 1
    owns_workdir: bool = field(default=False, repr=False)

    def masters(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role == "master"]

    def replicas(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role == "replica"]

    @property
    def seed(self) -> RedisNode:
        """A running node to start from (the first running master, else any running node)."""
        for node in self.masters() + self.nodes:
            if node.alive():
                return node
        raise ConnectError("no node of the local cluster is running")

    def node_by_port(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def refresh_roles(self) -> None:
        """Re-read roles and node ids from CLUSTER NODES (after a failover or restart)."""
        table = _cluster_nodes(self.seed)
        for node in self.nodes:
            entry = table.get(node.port)
            if entry is not None:
                node.node_id, node.role = entry.node_id, entry.role

    def wait_healthy(self, timeout: float = _CLUSTER_TIMEOUT) -> None:
        """Block until every node agrees the cluster is fully up (see :func:`start_cluster`)."""
        deadline = time.monotonic() + timeout
        problem: str | None = "not checked yet"
        while True:
            problem = _cluster_problem(self.nodes, self.replicas_per_master)
            if problem is None:
                self.refresh_roles()
                return
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {n.address} ({'running' if n.alive() else 'stopped'})\n" + n.log_tail(8)
                    for n in self.nodes
                )
                raise ServerStartError(
                    f"local cluster not healthy after {timeout:.0f}s: {problem}",
                    hint=f"node logs under {self.workdir}",
                    log_tail=tails,
                )
            time.sleep(0.05)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop every node by PID (SIGTERM, SIGKILL after ``timeout``) and remove owned dirs."""
        _terminate(self.nodes, timeout)
        for node in self.nodes:
            _release_port(node.port, with_bus=True)
        if self.owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class _NodeEntry:
    node_id: str
    role: str
    flags: frozenset[str]


def _cluster_nodes(node: RedisNode) -> dict[int, _NodeEntry]:
    raw = node.call("CLUSTER", "NODES")
    if not isinstance(raw, bytes):
        raise ConnectError("CLUSTER NODES did not return text")
    table: dict[int, _NodeEntry] = {}
    for line in raw.decode().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@", 1)[0]
        port_text = addr.rpartition(":")[2]
        if not port_text.isdigit():
            continue
        flags = frozenset(parts[2].split(","))
        role = "replica" if "slave" in flags else "master"
        table[int(port_text)] = _NodeEntry(parts[0], role, flags)
    return table


_BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


def _normal_slots(raw: object) -> frozenset[tuple[int, int, int, frozenset[int]]]:
    if not isinstance(raw, list):
        raise ConnectError("CLUSTER SLOTS did not return an array")
    out = set()
    for entry in raw:
        start, end, master, *replicas = entry
        out.add((int(start), int(end), int(master[1]), frozenset(int(r[1]) for r in replicas)))
    return frozenset(out)


def _cluster_problem(nodes: Sequence[RedisNode], replicas_per_master: int) -> str | None:
    """None when the cluster is fully healthy, else what is still wrong (for error messages)."""
    views: dict[int, frozenset[tuple[int, int, int, frozenset[int]]]] = {}
    for node in nodes:
        if not node.alive():
            return f"{node.address} is not running"
        try:
            info = _parse_info(node.call("CLUSTER", "INFO", timeout=2.0))
            if info.get("cluster_state") != "ok":
                return f"{node.address} cluster_state:{info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != "16384":
                return f"{node.address} cluster_slots_ok:{info.get('cluster_slots_ok')}"
            if info.get("cluster_known_nodes") != str(len(nodes)):
                return f"{node.address} knows {info.get('cluster_known_nodes')} nodes"
            for port, entry in _cluster_nodes(node).items():
                bad = entry.flags & _BAD_FLAGS
                if bad:
                    return f"{node.address} sees {port} as {','.join(sorted(bad))}"
            views[node.port] = _normal_slots(node.call("CLUSTER", "SLOTS", timeout=2.0))
            role = _parse_info(node.call("INFO", "replication", timeout=2.0))
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return f"replica {node.address} master_link_status:{role.get('master_link_status')}"
        except (OSError, RedisToolkitError) as exc:
            return f"{node.address}: {exc}"
    distinct = set(views.values())
    if len(distinct) != 1:
        return "nodes disagree on CLUSTER SLOTS"
    (view,) = distinct
    for start, end, master, replicas in sorted(view):
        if len(replicas) != replicas_per_master:
            return (
                f"CLUSTER SLOTS {start}-{end} on master {master} lists "
                f"{len(replicas)} of {replicas_per_master} replicas"
            )
    return None


def start_cluster(
    *,
    masters: int = 3,
    replicas_per_master: int = 1,
    password: str,
    certs: CertPaths,
    tls: bool = True,
    workdir: Path | None = None,
    node_timeout_ms: int = 2000,
    timeout: float = _CLUSTER_TIMEOUT,
) -> LocalCluster:
    """Start ``masters * (1 + replicas_per_master)`` nodes and create a cluster over them.

    Returns only when every node reports ``cluster_state:ok`` with all 16384 slots, no node
    is flagged failed/handshake, all nodes return the same CLUSTER SLOTS, every master lists
    its replicas there (they appear after their first replication ping) and every replica's
    link is up. Raises :class:`ServerStartError` (with log tails) after ``timeout`` seconds.
    """
    if masters < 3:
        raise ConfigError(f"a Redis cluster needs at least 3 masters, got {masters}")
    if replicas_per_master < 0:
        raise ConfigError(f"replicas_per_master must be >= 0, got {replicas_per_master}")
    find_redis_server()
    redis_cli = find_redis_cli()
    deadline = time.monotonic() + timeout
    root, owned = _make_root(workdir)
    cluster = LocalCluster(
        nodes=[],
        password=password,
        certs=certs,
        tls=tls,
        workdir=root,
        replicas_per_master=replicas_per_master,
        owns_workdir=owned,
    )
    settings = _NodeSettings(
        tls=tls,
        password=password,
        certs=certs,
        cluster=True,
        node_timeout_ms=node_timeout_ms,
        extra=None,
    )
    pending: list[RedisNode] = []
    try:
        # Spawn every process first, then wait: the nodes start in parallel.
        for _ in range(masters * (1 + replicas_per_master)):
            pending.append(_prepare_node(root, settings))
        for node in list(pending):
            try:
                _wait_ready(node, deadline)
                cluster.nodes.append(node)
            except _PortTaken:
                cluster.nodes.append(_start_node(root, settings, ready_by=deadline))
            pending.remove(node)
        _create(redis_cli, cluster, replicas_per_master, deadline)
        cluster.wait_healthy(max(1.0, deadline - time.monotonic()))
    except BaseException:
        cluster.nodes.extend(pending)
        cluster.stop()
        raise
    return cluster


def _create(redis_cli: str, cluster: LocalCluster, replicas: int, deadline: float) -> None:
    args = [redis_cli, "--cluster", "create", *(n.address for n in cluster.nodes)]
    args += ["--cluster-replicas", str(replicas), "--cluster-yes"]
    if cluster.tls:
        args += ["--tls", "--cacert", str(cluster.certs.ca)]
        args += ["--cert", str(cluster.certs.client_cert), "--key", str(cluster.certs.client_key)]
    env = {**os.environ, "REDISCLI_AUTH": cluster.password}
    try:
        done = subprocess.run(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode("utf-8", "replace")
        raise ServerStartError(
            "redis-cli --cluster create did not finish in time",
            hint="TLS cluster nodes need clientAuth in the server certificate",
            log_tail="\n".join(out.splitlines()[-20:]),
        ) from None
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode != 0 or "[OK] All 16384 slots covered" not in output:
        raise ServerStartError(
            f"redis-cli --cluster create failed with exit code {done.returncode}",
            log_tail="\n".join(output.splitlines()[-20:]),
        )
