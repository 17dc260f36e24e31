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
# Nurseries live in the serve_* functions only; the table starts listener tasks in the
# serve_pinned nursery it was given, and each listener runs in its own cancel scope so it can
# be retired alone. Client connections run in the shared handler nursery.
#
# Statistics (config.stats, from --dashboard/--stats): every relay of the process counts into
# one LiveCounters (tunnel.stats), published once a second by a ticker task here; the topology
# table (standalone: the server and the listener; pinned: every node with its role, slots and
# listener) is set on open and on every change. TUNNEL INFO is answered by the relays.
#
# Credentials (config.credentials, a rotating provider): new upstream connections log in with
# config.reauth.current; main runs the provider's refresh loop and calls config.reauth.rotate()
# with each new credential, which re-authenticates every live relay in place (tunnel.relay).
# The pinned table's own cluster client (topology refreshes) keeps the login it opened with.
"""

from __future__ import annotations

import errno
import itertools
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
from typing import Any, TextIO

import trio

from client.cluster import ClusterClient, open_cluster
from client.commands import CommandTable
from client.connection import open_authenticated_stream
from client.credentials import Credential, CredentialProvider
from client.errors import ConfigError, RedisToolkitError
from client.options import ServerOptions, TlsOptions
from client.topology import Node, Topology
from tunnel.relay import Meter, Pinning, Reauth, RelaySettings, RelayStats, serve_relay
from tunnel.rewrite import AddressBook, Endpoint, Missing, NodeRef, format_hostport
from tunnel.stats import PUBLISH_INTERVAL, LiveCounters, TopologyNode, TunnelStats

__all__ = [
    "TOPOLOGY_CLIENT_NAME",
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
#: CLIENT SETNAME of the pinned table's own connections (topology), told apart from relays.
TOPOLOGY_CLIENT_NAME = "redis-client-tunnel-topology"
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
        reauth: with ``credentials``: the current login and the live re-AUTH hub; main calls
            ``reauth.rotate(credential)`` for every new credential (``subscribe`` to hear of
            them). None with ``credentials`` set: the serve function makes one from
            ``credentials.current()`` and nothing rotates it.
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
    reauth: Reauth | None = field(default=None, repr=False)

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


async def _dial(opts: ServerOptions, reauth: Reauth | None) -> trio.abc.Stream:
    if reauth is not None:
        opts = reauth.current.apply_to(opts)
    return await open_authenticated_stream(opts)


def _settings(
    config: TunnelConfig,
    dial: ServerOptions,
    stats: RelayStats,
    pinning: Pinning | None = None,
    *,
    meter: Meter | None = None,
    reauth: Reauth | None = None,
) -> RelaySettings:
    return RelaySettings(
        dial=partial(_dial, dial, reauth),
        local_password=config.local_password,
        upstream_username=config.upstream.username,
        upstream_password=config.upstream.password,
        pinning=pinning,
        stats=stats,
        meter=meter,
        node=str(Endpoint(dial.host, dial.port)),
        reauth=reauth,
    )


async def _reauth(config: TunnelConfig) -> Reauth | None:
    """The live re-AUTH hub for ``config`` (see TunnelConfig.reauth)."""
    if config.reauth is not None:
        return config.reauth
    if config.credentials is not None:
        return Reauth(await config.credentials.current())
    return None


def _meter(stats: TunnelStats | None) -> Meter | None:
    """Counting for this process's relays (None without statistics)."""
    if stats is None:
        return None
    live = LiveCounters(stats)

    async def info() -> bytes:
        live.publish_all()
        await trio.lowlevel.checkpoint()
        return stats.info_text()

    return Meter(live, info)


async def _publish_forever(live: LiveCounters) -> None:
    """Publish every live connection's counters once a second (idle ones too)."""
    while True:
        await trio.sleep(PUBLISH_INTERVAL)
        live.publish_all()


async def _probe(config: TunnelConfig, reauth: Reauth | None) -> None:
    """Try the upstream once at start-up; a failure is only a warning (clients will retry)."""
    opts = reauth.current.apply_to(config.upstream) if reauth is not None else config.upstream
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
    reauth = await _reauth(config)
    listeners = await _listen(config.listen, config.local_port, reuse_port=workers > 1)
    port = listeners[0].socket.getsockname()[1]
    local = Endpoint(announce_host(config.listen), port)
    upstream = Endpoint(config.upstream.host, config.upstream.port)
    config.say(_line(local, upstream, "standalone"))
    await _probe(config, reauth)
    meter = _meter(config.stats)
    if config.stats is not None:
        config.stats.set_topology(
            [TopologyNode(address=str(upstream), role="standalone", listener=str(local))]
        )
    settings = _settings(config, config.upstream, stats, meter=meter, reauth=reauth)
    async with trio.open_nursery() as nursery:
        if meter is not None:
            nursery.start_soon(_publish_forever, meter.live)
        for index in range(1, workers):
            worker = _Worker(index, config, port, reauth)
            await nursery.start(worker.serve)
        await nursery.start(trio.serve_listeners, partial(_handle, settings), listeners)
        extra = f", {workers} worker processes" if workers > 1 else ""
        config.say(f"ready: 1 listener (standalone{extra}) on {local}; Ctrl-C to stop")
        task_status.started(TunnelInfo([ListenerInfo(local, upstream, "standalone")], stats))


# ---------------------------------------------------------------------------------------------
# Worker processes (standalone --workers N)
#
# A Python process relays on one core. With --workers N the first process binds the port with
# SO_REUSEPORT and starts N-1 copies of itself that bind the same port; the kernel spreads new
# connections over them (each connection stays in one process: relays share no state). The
# parent stops its workers when it stops; a worker exits 0 when its stdin closes (the parent is
# gone) or on SIGTERM/SIGINT.
#
# The two pipes are a JSON-lines channel (secrets travel here, never in argv or the
# environment, so they never appear in ps):
#   parent -> worker (stdin):  the settings (first line); {"credential": {username, password}}
#                              for each rotation; {"info": id, "text": ...} answering an ask
#   worker -> parent (stdout): "bound" once listening; {"stats": delta} once a second when
#                              statistics are on and something changed; {"ask": id, "stats":
#                              delta} for TUNNEL INFO (the parent merges, then answers with the
#                              text of the whole tunnel, so every process shows the same).
# Workers do not run the credential provider: the parent runs it once and passes each new
# credential on, so the command runs once per refresh whatever the worker count.

_WORKER_CODE = "import sys; from tunnel.server import worker_main; sys.exit(worker_main())"
_WORKER_START = 20.0
#: The directory holding the tunnel package, for workers started from a source tree.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_WORKER_STOP = 5.0
#: Longest line either side of the channel may send.
_MAX_LINE = 1024 * 1024
#: How long a worker waits for the parent's TUNNEL INFO text before answering with its own.
_ASK_TIMEOUT = 2.0


def _line_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _config_json(config: TunnelConfig, port: int, reauth: Reauth | None) -> bytes:
    upstream = reauth.current.apply_to(config.upstream) if reauth is not None else config.upstream
    data = {
        "upstream": asdict(upstream),
        "listen": config.listen,
        "port": port,
        "local_password": config.local_password,
        "stats": config.stats is not None,
        "reauth": reauth is not None,
    }
    return _line_json(data)


def _config_from_json(line: bytes) -> tuple[TunnelConfig, bool]:
    """The worker's settings, and whether it re-authenticates live (a rotating login)."""
    data = json.loads(line)
    opts = data["upstream"]
    tls = TlsOptions(**opts["tls"]) if opts.get("tls") else None
    upstream = ServerOptions(**{**opts, "tls": tls})
    config = TunnelConfig(
        upstream=upstream,
        listen=data["listen"],
        local_port=data["port"],
        local_password=data["local_password"],
        stats=TunnelStats("standalone") if data.get("stats") else None,
    )
    return config, bool(data.get("reauth"))


class _Lines:
    """Reads JSON lines from a stream (bounded)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> bytes | None:
        """The next line without its newline; None at EOF (or past the line limit)."""
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                return line
            if len(self._buffer) > _MAX_LINE:
                return None
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data


class _Worker:
    """The parent's side of one worker process (see the notes above)."""

    def __init__(self, index: int, config: TunnelConfig, port: int, reauth: Reauth | None):
        self.index = index
        self.config = config
        self.port = port
        self.reauth = reauth
        self.clients = 0  # its connected clients, as merged into config.stats
        self._proc: trio.Process | None = None
        self._lock = trio.Lock()
        self._credential: Credential | None = None
        self._credential_due = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the worker, wait until it listens, serve its channel; stop it when cancelled."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        if self.reauth is not None:
            self.reauth.subscribe(self._rotated)  # from now on: none is missed
        try:
            await proc.stdin.send_all(_config_json(self.config, self.port, self.reauth))
            lines = _Lines(proc.stdout)
            answer = None
            with trio.move_on_after(_WORKER_START):
                answer = await lines.next()
            if answer is None or answer.strip() != b"bound":
                raise ConfigError(
                    f"worker process {self.index} did not start",
                    hint="see its error above, or run with --workers 1",
                )
            async with trio.open_nursery() as nursery:
                if self.reauth is not None:
                    nursery.start_soon(self._send_credentials)
                task_status.started()
                await self._read(lines)
                code = await proc.wait()
                log.warning("worker process %d exited with status %d", self.index, code)
                self._forget_clients()
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

    async def _send(self, data: dict[str, Any]) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        async with self._lock:
            try:
                await proc.stdin.send_all(_line_json(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the worker is gone; serve() notices

    def _rotated(self, credential: Credential) -> None:
        self._credential = credential
        self._credential_due.set()

    async def _send_credentials(self) -> None:
        while True:
            await self._credential_due.wait()
            self._credential_due = trio.Event()
            credential = self._credential
            if credential is not None:
                login = {"username": credential.username, "password": credential.password}
                await self._send({"credential": login})

    async def _read(self, lines: _Lines) -> None:
        """Merge the worker's statistics and answer its TUNNEL INFO asks, until EOF."""
        stats = self.config.stats
        while (line := await lines.next()) is not None:
            try:
                data = json.loads(line)
                delta = data.get("stats")
                if stats is not None and delta:
                    stats.merge_delta(delta)
                    self.clients += int(delta.get("clients_connected", 0))
                if "ask" in data:
                    text = stats.info_text().decode() if stats is not None else ""
                    await self._send({"info": data["ask"], "text": text})
            except (ValueError, AttributeError, TypeError) as exc:
                log.warning("worker process %d sent a bad line: %s", self.index, exc)

    def _forget_clients(self) -> None:
        stats = self.config.stats
        if stats is not None and self.clients:
            stats.clients_connected = max(stats.clients_connected - self.clients, 0)
            self.clients = 0


class _Parent:
    """The worker's side of the channel to its parent (see the notes above)."""

    def __init__(self, stats: TunnelStats | None, reauth: Reauth | None) -> None:
        self.stats = stats
        self.reauth = reauth
        self.live = LiveCounters(stats) if stats is not None else None
        self._out = trio.lowlevel.FdStream(os.dup(1))
        self._lock = trio.Lock()
        self._ids = itertools.count(1)
        self._answers: dict[int, str | None] = {}
        self._waiting: dict[int, trio.Event] = {}

    def meter(self) -> Meter | None:
        return Meter(self.live, self.ask_info) if self.live is not None else None

    async def _send(self, data: dict[str, Any]) -> None:
        async with self._lock:
            await self._out.send_all(_line_json(data))

    def _delta(self) -> dict[str, Any] | None:
        assert self.live is not None
        assert self.stats is not None
        self.live.publish_all()
        return self.stats.export_delta()

    async def report_forever(self) -> None:
        """Send the statistics delta once a second (when something changed)."""
        while True:
            await trio.sleep(PUBLISH_INTERVAL)
            delta = self._delta()
            if delta is not None:
                await self._send({"stats": delta})

    async def ask_info(self) -> bytes:
        """The TUNNEL INFO text of the whole tunnel, from the parent (or ours, if it is slow)."""
        assert self.stats is not None
        ask = next(self._ids)
        self._waiting[ask] = done = trio.Event()
        try:
            await self._send({"ask": ask, "stats": self._delta()})
            with trio.move_on_after(_ASK_TIMEOUT):
                await done.wait()
            text = self._answers.pop(ask, None)
        finally:
            self._waiting.pop(ask, None)
        return text.encode() if text is not None else self.stats.info_text()

    def received(self, line: bytes) -> None:
        """One line from the parent: a new credential, or the answer to an ask."""
        try:
            data = json.loads(line)
            login = data.get("credential")
            if login is not None and self.reauth is not None:
                self.reauth.rotate(Credential(str(login["username"]), str(login["password"])))
            if "info" in data:
                ask = int(data["info"])
                event = self._waiting.get(ask)
                if event is not None:
                    self._answers[ask] = str(data["text"])
                    event.set()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("bad line from the parent process: %s", exc)

    async def aclose(self) -> None:
        await self._out.aclose()


async def serve_worker(config: TunnelConfig, *, reauth: bool = False) -> None:
    """A worker process: relay on the shared port until stdin closes or a signal comes."""
    listeners = await _listen(config.listen, config.local_port, reuse_port=True)
    login = Reauth(Credential(config.upstream.username, config.upstream.password or ""))
    parent = _Parent(config.stats, login if reauth else None)
    settings = _settings(
        config,
        config.upstream,
        RelayStats(),
        meter=parent.meter(),
        reauth=parent.reauth,
    )
    stdin = trio.lowlevel.FdStream(os.dup(0))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, partial(_handle, settings), listeners)
            print("bound", flush=True)

            async def until_eof() -> None:
                lines = _Lines(stdin)
                while (line := await lines.next()) is not None:
                    parent.received(line)
                nursery.cancel_scope.cancel()

            async def until_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(until_eof)
            nursery.start_soon(until_signal)
            if parent.live is not None:
                nursery.start_soon(parent.report_forever)
    finally:
        await stdin.aclose()
        await parent.aclose()


def worker_main() -> int:
    """Entry point of a worker process (see :func:`serve_standalone`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s worker: %(message)s")
    line = sys.stdin.buffer.readline()
    try:
        config, reauth = _config_from_json(line)
        trio.run(partial(serve_worker, config, reauth=reauth))
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
        *,
        meter: Meter | None = None,
        reauth: Reauth | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.book = AddressBook()
        self.stats = stats
        self.meter = meter
        self.reauth = reauth
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
            self._publish_topology()

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
            self._publish_topology()

    def _publish_topology(self) -> None:
        """Show the open listeners, their nodes' roles and slots, in the statistics."""
        stats = self.config.stats
        if stats is None:
            return
        stats.set_topology(
            [
                TopologyNode(
                    address=str(entry.upstream),
                    role=entry.role,
                    slots=entry.node.slots,
                    listener=str(entry.local),
                    health=entry.node.health,
                )
                for entry in self._entries.values()
                if entry.scope is not None
            ]
        )

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
        settings = _settings(
            self.config, opts, self.stats, pinning, meter=self.meter, reauth=self.reauth
        )
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
    reauth = await _reauth(config)
    seed = reauth.current.apply_to(config.upstream) if reauth is not None else config.upstream
    meter = _meter(config.stats)
    async with (
        open_cluster(
            seed,
            refresh_interval=0,
            commands=CommandTable.bundled(),
            client_name=TOPOLOGY_CLIENT_NAME,
        ) as cluster,
        trio.open_nursery() as nursery,
    ):
        if meter is not None:
            nursery.start_soon(_publish_forever, meter.live)
        if reauth is not None:
            # The topology client's own connections follow the rotation too, in place.
            reauth.subscribe(
                lambda cred: nursery.start_soon(
                    cluster.set_login, cred.username, cred.password or None
                )
            )
        table = PinnedTable(config, cluster, nursery, stats, meter=meter, reauth=reauth)
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
