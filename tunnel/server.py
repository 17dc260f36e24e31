"""Listeners for the tunnel: standalone (one listener) and pinned (one per cluster node).

Theory of operation
-------------------
# serve_standalone opens one listener (127.0.0.1:6379 by default) relaying every client to
# the one upstream server. serve_pinned reads the cluster topology and opens one listener per
# node, masters and replicas, each relaying to its node and rewriting node addresses in the
# replies that carry them (tunnel.rewrite) so cluster-aware clients stay on the listeners.
#
# The pinned listener table (PinnedTable) is the source of truth for "which local port is
# which node". Ports:
#   - --port-base N: N + index, nodes sorted by (host, port); a node found later gets the next
#     index after the highest one given out;
#   - otherwise the node's own port when no other node uses it and it can be bound, else the
#     next port above it that is free (ElastiCache nodes all use 6379; in tests the nodes
#     themselves occupy their ports on 127.0.0.1).
# A port, once given to a node (host, port), is that node's for the life of the process, even
# if its listener is retired and opened again later.
#
# Topology changes reach the table two ways: a reply naming a node that has no listener
# (ensure(): the relay waits while the listener opens, then forwards the rewritten reply), and
# a periodic refresh through the cluster client, which opens listeners for new nodes and
# retires those of nodes that left the cluster (existing connections keep running). Lines are
# printed for every listener opened, retired or whose node changed role.
#
# Nurseries live in serve_standalone/serve_pinned only; the table starts listener tasks in the
# serve_pinned nursery it was given, and each listener runs in its own cancel scope so it can
# be retired alone. Client connections run in the shared handler nursery.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import trio

from client.cluster import ClusterClient, open_cluster
from client.commands import CommandTable
from client.connection import open_authenticated_stream
from client.credentials import CredentialProvider
from client.errors import ConfigError, RedisToolkitError
from client.options import ServerOptions, TlsOptions
from client.topology import Node, Topology
from tunnel.relay import Pinning, RelaySettings, RelayStats, serve_relay
from tunnel.rewrite import AddressBook, Endpoint, Missing, NodeRef, format_hostport
from tunnel.stats import TunnelStats

__all__ = [
    "ListenerInfo",
    "PinnedTable",
    "TunnelConfig",
    "TunnelInfo",
    "announce_host",
    "serve_pinned",
    "serve_standalone",
    "serve_worker",
    "worker_main",
]

log = logging.getLogger(__name__)

#: How long the start-up probe of a standalone upstream may take.
PROBE_TIMEOUT = 5.0
#: Ports tried above a node's own port before giving up.
PORT_SEARCH = 1000
BACKLOG = 1024


@dataclass(frozen=True)
class TunnelConfig:
    """Settings of one tunnel process.

    Attributes:
        upstream: the server (standalone) or seed node (cluster), with login and TLS.
        listen: the local address to listen on.
        local_port: the standalone (and smart) listener's port.
        local_password: clients must AUTH with this first (None: no local auth).
        port_base: pinned mode: listener ports from N upwards (None: the nodes' own ports).
        refresh_interval: pinned mode: seconds between topology refreshes (0: never).
        out: where the listener table and the ready line go (None: stdout).
        workers: standalone: processes sharing the port (SO_REUSEPORT); 1 = this one only.
        stats: the observability registry (``--dashboard``, ``TUNNEL INFO``); None counts nothing.
        credentials: rotating credentials (``--password-command``, ``--entra``); None means the
            static password in ``upstream``.
        read_from: smart mode: ``master``, ``replica`` or ``prefer-replica`` for read-only commands.
        pool_size: smart mode: shared pipelined upstream connections per node.
    """

    upstream: ServerOptions
    listen: str = "127.0.0.1"
    local_port: int = 6379
    local_password: str | None = field(default=None, repr=False)
    port_base: int | None = None
    refresh_interval: float = 30.0
    out: TextIO | None = None
    workers: int = 1
    stats: TunnelStats | None = None
    credentials: CredentialProvider | None = field(default=None, repr=False)
    read_from: str = "master"
    pool_size: int = 2

    def say(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)


@dataclass(frozen=True)
class ListenerInfo:
    """One open listener: where it listens and what it relays to."""

    local: Endpoint
    upstream: Endpoint
    role: str


@dataclass
class TunnelInfo:
    """What a serve_* function reports through ``task_status.started()``."""

    listeners: list[ListenerInfo]
    stats: RelayStats
    table: PinnedTable | None = None


def announce_host(listen: str) -> str:
    """The host clients should dial for a listener bound to ``listen``."""
    if listen in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen == "::":
        return "::1"
    return listen.strip("[]")


def _line(local: Endpoint, upstream: Endpoint, role: str) -> str:
    return f"{local} -> {upstream} ({role})"


async def _listen(host: str, port: int, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Bind ``host:port``; ConfigError with a hint when that is impossible.

    With ``reuse_port`` the socket is bound with SO_REUSEPORT, so worker processes can bind
    the same port and the kernel spreads new connections over them.
    """
    try:
        if not reuse_port:
            return await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
        family, kind, proto, _, addr = (
            await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        )[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            await sock.bind(addr)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        return [trio.SocketListener(sock)]
    except OSError as exc:
        where = format_hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {where}: the port is in use",
                hint="pick another with --local-port (or --port-base in pinned mode)",
            ) from exc
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


async def _handle(settings: RelaySettings, stream: trio.SocketStream) -> None:
    try:
        await serve_relay(stream, settings)
    except Exception:  # one bad connection must never take the listener down
        log.exception("relay failed")


def _settings(
    config: TunnelConfig, dial: ServerOptions, stats: RelayStats, pinning: Pinning | None = None
) -> RelaySettings:
    return RelaySettings(
        dial=partial(open_authenticated_stream, dial),
        local_password=config.local_password,
        upstream_username=config.upstream.username,
        upstream_password=config.upstream.password,
        pinning=pinning,
        stats=stats,
    )


async def _probe(config: TunnelConfig) -> None:
    """Try the upstream once at start-up; a failure is only a warning (clients will retry)."""
    opts = config.upstream
    problem: str | None = None
    with trio.move_on_after(PROBE_TIMEOUT) as scope:
        try:
            stream = await open_authenticated_stream(opts)
            await trio.aclose_forcefully(stream)
        except RedisToolkitError as exc:
            problem = str(exc)
    if scope.cancelled_caught:
        problem = f"{opts.address} did not answer in {PROBE_TIMEOUT:g} s"
    if problem is not None:
        print(
            f"redis-client tunn: warning: {problem} (serving anyway; clients get this error "
            "until the server is reachable)",
            file=sys.stderr,
            flush=True,
        )


async def serve_standalone(
    config: TunnelConfig,
    *,
    stats: RelayStats | None = None,
    task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay ``listen:local_port`` to the one upstream server. Returns never (cancel it).

    Raises:
        ConfigError: the local port cannot be bound.
    """
    stats = stats or RelayStats()
    workers = max(1, config.workers)
    listeners = await _listen(config.listen, config.local_port, reuse_port=workers > 1)
    port = listeners[0].socket.getsockname()[1]
    local = Endpoint(announce_host(config.listen), port)
    upstream = Endpoint(config.upstream.host, config.upstream.port)
    config.say(_line(local, upstream, "standalone"))
    await _probe(config)
    settings = _settings(config, config.upstream, stats)
    async with trio.open_nursery() as nursery:
        for index in range(1, workers):
            await nursery.start(_run_worker, config, port, index)
        await nursery.start(trio.serve_listeners, partial(_handle, settings), listeners)
        extra = f", {workers} worker processes" if workers > 1 else ""
        config.say(f"ready: 1 listener (standalone{extra}) on {local}; Ctrl-C to stop")
        task_status.started(TunnelInfo([ListenerInfo(local, upstream, "standalone")], stats))


# ---------------------------------------------------------------------------------------------
# Worker processes (standalone --workers N)
#
# A Python process relays on one core. With --workers N the first process binds the port with
# SO_REUSEPORT and starts N-1 copies of itself that bind the same port; the kernel spreads new
# connections over them (each connection stays in one process: relays share no state). A
# worker gets its settings as one JSON line on stdin (secrets never appear in ps), answers
# "bound" on stdout once listening, and exits 0 when its stdin closes (the parent is gone) or
# on SIGTERM/SIGINT. The parent stops its workers when it stops.

_WORKER_CODE = "import sys; from tunnel.server import worker_main; sys.exit(worker_main())"
_WORKER_START = 20.0
#: The directory holding the tunnel package, for workers started from a source tree.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_WORKER_STOP = 5.0


def _config_json(config: TunnelConfig, port: int) -> bytes:
    opts = asdict(config.upstream)
    data = {
        "upstream": opts,
        "listen": config.listen,
        "port": port,
        "local_password": config.local_password,
    }
    return json.dumps(data).encode() + b"\n"


def _config_from_json(line: bytes) -> TunnelConfig:
    data = json.loads(line)
    opts = data["upstream"]
    tls = TlsOptions(**opts["tls"]) if opts.get("tls") else None
    upstream = ServerOptions(**{**opts, "tls": tls})
    return TunnelConfig(
        upstream=upstream,
        listen=data["listen"],
        local_port=data["port"],
        local_password=data["local_password"],
    )


async def _run_worker(
    config: TunnelConfig,
    port: int,
    index: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start worker ``index``, wait until it listens, and stop it when cancelled."""
    root = _PACKAGE_ROOT
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
    }
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _WORKER_CODE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        await proc.stdin.send_all(_config_json(config, port))
        answer = b""
        with trio.move_on_after(_WORKER_START):
            while not answer.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(64)
                if not chunk:
                    break
                answer += chunk
        if answer.strip() != b"bound":
            raise ConfigError(
                f"worker process {index} did not start",
                hint="see its error above, or run with --workers 1",
            )
        task_status.started()
        code = await proc.wait()
        log.warning("worker process %d exited with status %d", index, code)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(proc.stdin)
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(_WORKER_STOP):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await trio.aclose_forcefully(proc.stdout)


async def serve_worker(config: TunnelConfig) -> None:
    """A worker process: relay on the shared port until stdin closes or a signal comes."""
    listeners = await _listen(config.listen, config.local_port, reuse_port=True)
    settings = _settings(config, config.upstream, RelayStats())
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, partial(_handle, settings), listeners)
        print("bound", flush=True)

        async def until_eof() -> None:
            while await stdin.receive_some(4096):
                pass
            nursery.cancel_scope.cancel()

        async def until_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(until_eof)
        nursery.start_soon(until_signal)
    await stdin.aclose()


def worker_main() -> int:
    """Entry point of a worker process (see :func:`serve_standalone`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s worker: %(message)s")
    line = sys.stdin.buffer.readline()
    try:
        config = _config_from_json(line)
        trio.run(serve_worker, config)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"redis-client tunn worker: bad settings: {exc}", file=sys.stderr)
        return 2
    except RedisToolkitError as exc:
        print(f"redis-client tunn worker: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Pinned


@dataclass
class _Entry:
    node: Node
    upstream: Endpoint
    local: Endpoint
    role: str
    scope: trio.CancelScope | None = None


class PinnedTable:
    """The pinned listener table (see the module notes). Made by :func:`serve_pinned`."""

    def __init__(
        self,
        config: TunnelConfig,
        cluster: ClusterClient,
        nursery: trio.Nursery,
        stats: RelayStats,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.book = AddressBook()
        self.stats = stats
        self._nursery = nursery
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._ports: dict[tuple[str, int], int] = {}  # stable for the process
        self._next_index = 0
        self._lock = trio.Lock()
        self._host = announce_host(config.listen)
        self._prefer_tls = config.upstream.tls is not None

    def listeners(self) -> list[ListenerInfo]:
        """The open listeners, in the order they were opened."""
        return [
            ListenerInfo(e.local, e.upstream, e.role)
            for e in self._entries.values()
            if e.scope is not None
        ]

    def _key(self, node: Node) -> tuple[str, int]:
        opts = self.cluster.options_for(node)
        return (opts.host.lower(), opts.port)

    # -- opening and retiring -------------------------------------------------------------------

    async def sync(self, topology: Topology, *, initial: bool = False) -> None:
        """Open listeners for every node of ``topology``; retire those of departed nodes."""
        async with self._lock:
            nodes = sorted(topology.nodes, key=lambda n: (self._key(n), n.id))
            ports = [self._key(n)[1] for n in nodes]
            for node in nodes:
                key = self._key(node)
                entry = self._entries.get(key)
                if entry is not None and entry.scope is not None:
                    if entry.role != node.role:
                        self.config.say(
                            f"{_line(entry.local, entry.upstream, node.role)} (was {entry.role})"
                        )
                        entry.role = node.role
                    entry.node = node
                    self._remember(key, node, entry.local)
                    continue
                unique = ports.count(key[1]) == 1
                try:
                    await self._open(node, unique=unique)
                except ConfigError:
                    if initial:
                        raise
                    log.warning("cannot open a listener for %s", node.address, exc_info=True)
            present = {self._key(n) for n in nodes}
            for key, entry in self._entries.items():
                if key not in present and entry.scope is not None:
                    self._retire(entry)

    async def ensure(self, missing: Missing) -> None:
        """Open listeners for nodes named by a reply (before it is forwarded)."""
        async with self._lock:
            for ref in missing.nodes:
                node = self._node_for(ref)
                key = self._key(node)
                entry = self._entries.get(key)
                if entry is not None and entry.scope is not None:
                    self.book.add(key[0], key[1], entry.local, ref.node_id)
                    continue
                known = [e.upstream.port for e in self._entries.values()]
                try:
                    await self._open(node, unique=known.count(node.port) == 0)
                except ConfigError:
                    log.warning("cannot open a listener for %s", node.address, exc_info=True)

    def _node_for(self, ref: NodeRef) -> Node:
        topo = self.cluster.topology
        found = topo.node_by_address(ref.host, ref.port)
        if found is None and ref.node_id:
            found = topo.node_by_id(ref.node_id)
        if found is not None:
            return found
        return Node(
            id=ref.node_id or f"{ref.host}:{ref.port}", host=ref.host, port=ref.port, role="node"
        )

    async def _open(self, node: Node, *, unique: bool) -> None:
        key = self._key(node)
        listeners, port = await self._bind(key, unique=unique)
        opts = self.cluster.options_for(node)
        local = Endpoint(self._host, port)
        upstream = Endpoint(opts.host, opts.port)
        entry = _Entry(node, upstream, local, node.role)
        pinning = Pinning(self.book, opts.host, self._prefer_tls, self.ensure)
        settings = _settings(self.config, opts, self.stats, pinning)
        entry.scope = await self._nursery.start(_serve_listener, settings, listeners, self._nursery)
        self._entries[key] = entry
        self._remember(key, node, local)
        self.config.say(_line(local, upstream, node.role))

    def _remember(self, key: tuple[str, int], node: Node, local: Endpoint) -> None:
        """Route the node's dial address and every name it announces to ``local``."""
        self.book.add(key[0], key[1], local, node.id)
        for alias in (node.host, node.ip, node.hostname):
            if alias:
                self.book.add(alias, key[1], local)

    def _retire(self, entry: _Entry) -> None:
        assert entry.scope is not None
        entry.scope.cancel()
        entry.scope = None
        self.book.remove(entry.upstream.host, entry.upstream.port)
        self.config.say(f"retired {_line(entry.local, entry.upstream, 'left the cluster')}")

    async def _bind(
        self, key: tuple[str, int], *, unique: bool
    ) -> tuple[list[trio.SocketListener], int]:
        host = self.config.listen
        reserved = self._ports.get(key)
        if reserved is not None:
            return await _listen(host, reserved), reserved
        taken = set(self._ports.values())
        base = self.config.port_base
        if base is not None:
            port = base + self._next_index
            self._next_index += 1
            if port > 65535:
                raise ConfigError(f"--port-base {base} leaves no port for node {key[1]}")
            listeners = await _listen(host, port)
            self._ports[key] = port
            return listeners, port
        start = key[1] if unique else key[1] + 1
        for port in range(start, min(65536, start + PORT_SEARCH)):
            if port in taken:
                continue
            try:
                listeners = await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise ConfigError(
                    f"cannot listen on {format_hostport(host, port)}: {exc.strerror or exc}"
                ) from exc
            self._ports[key] = port
            return listeners, port
        raise ConfigError(
            f"no free port near {key[1]} for node {format_hostport(*key)}",
            hint="give the listeners a range with --port-base",
        )

    async def refresh_forever(self, interval: float) -> None:
        """Refresh the topology every ``interval`` seconds and sync the table."""
        while True:
            await trio.sleep(interval)
            try:
                await self.cluster.refresh()
            except RedisToolkitError as exc:
                log.warning("topology refresh failed: %s", exc)
                continue
            await self.sync(self.cluster.topology)


async def _serve_listener(
    settings: RelaySettings,
    listeners: Sequence[trio.SocketListener],
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on ``listeners`` until the scope given to ``task_status`` is cancelled.

    Connections run in ``handler_nursery``, so they outlive a retired listener.
    """
    handler: Callable[[trio.SocketStream], Awaitable[None]] = partial(_handle, settings)
    with trio.CancelScope() as scope:
        task_status.started(scope)
        try:
            await trio.serve_listeners(handler, list(listeners), handler_nursery=handler_nursery)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)


async def serve_pinned(
    config: TunnelConfig,
    *,
    stats: RelayStats | None = None,
    task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One listener per cluster node, with address rewriting. Returns never (cancel it).

    Raises:
        ConnectError: the seed node cannot be reached or refuses the login.
        ConfigError: a listener port cannot be bound.
    """
    stats = stats or RelayStats()
    async with (
        open_cluster(
            config.upstream, refresh_interval=0, commands=CommandTable.bundled()
        ) as cluster,
        trio.open_nursery() as nursery,
    ):
        table = PinnedTable(config, cluster, nursery, stats)
        await table.sync(cluster.topology, initial=True)
        listeners = table.listeners()
        config.say(
            f"ready: {len(listeners)} listeners (pinned, "
            f"{len(cluster.topology.masters())} masters); Ctrl-C to stop"
        )
        if config.refresh_interval > 0:
            nursery.start_soon(table.refresh_forever, config.refresh_interval)
        task_status.started(TunnelInfo(listeners, stats, table))
        await trio.sleep_forever()
