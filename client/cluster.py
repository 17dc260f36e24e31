"""The Redis Cluster client (Trio): routing, redirects, retries, topology refresh, node pools.

Theory of operation
-------------------
:func:`open_cluster` reads the topology from the seed node (CLUSTER SHARDS, falling back to
CLUSTER SLOTS, then CLUSTER NODES), loads the command table from the server (``COMMAND`` and
``COMMAND DOCS``; the bundled snapshot when that fails) and yields a :class:`ClusterClient`.

Routing. The command table finds every key of a command (and the channel of SPUBLISH and
friends); all of them must hash to one slot, or :class:`~client.errors.CrossSlotError` names
each key's slot. The slot's owner comes from a 16384-entry table. Keyless commands go to the
first master; :meth:`ClusterClient.execute_on` targets one node (fan-out is the caller's).

Replies. Each command is one state machine (:meth:`ClusterClient._run`), with these rules:

========================  ==============================================================
reply / event             action
========================  ==============================================================
``-MOVED slot host:port``  patch the slot map, refresh in the background, retry there
``-ASK slot host:port``    send ``ASKING`` + the command there as one pipelined pair; no
                           refresh (the migration is in progress, the map is still right)
``-TRYAGAIN``,             wait (20 ms, doubling to 1 s) and retry, at most ``max_retries``
``-CLUSTERDOWN``,          times; CLUSTERDOWN also refreshes
``-LOADING``
connect failure            nothing was sent: refresh, wait, retry
connection lost            refresh; retry only a read-only command (flag ``readonly``),
                           else raise :class:`~client.errors.ConnectionLost`: a write may
                           or may not have run, and running it twice could be wrong
slot without owner         send to any master: it answers MOVED or CLUSTERDOWN
*on a replica (reads):*
``-MOVED`` (from replica)  exactly as from a master: patch the map, refresh, and read from
                           a replica of the node named (or from it, see ``read_from``)
``-LOADING`` (replica)     the replica leaves the rotation; retry at once elsewhere
connect failure /          the replica leaves the rotation; retry at once on another
connection lost            replica, or on the master (``prefer-replica``); ``replica`` with
                           none left raises :class:`~client.replicas.NoReplicaError`
========================  ==============================================================

At most ``max_redirects`` MOVED/ASK hops per command; past that the last redirect is the reply.

Replica reads. ``read_from`` (per client, or per call on :meth:`ClusterClient.request`,
:meth:`~ClusterClient.execute`, :meth:`~ClusterClient.request_routed` and
:meth:`~ClusterClient.node_for_args`) is ``master`` (default), ``replica`` or
``prefer-replica`` (:mod:`client.replicas` has the policy, the choice of replica and the
health state machine). Only commands whose command-table entry has the ``readonly`` flag go
to replicas; everything else (writes, admin, unknown commands) goes to the master, and ASK
always goes to the node named. Reads run on separate pools of connections that sent
``READONLY`` after the login (the pools for masters never do, so a master that was demoted
answers MOVED instead of serving stale data to a ``master`` read). Among a shard's healthy
replicas the one with the fewest reads in flight wins, ties round robin. A replica joins the
rotation after an ``INFO replication`` + ``INFO persistence`` probe passes (link up, not
loading, not syncing); at start-up with a replica policy every replica is probed before
:func:`open_cluster` yields, and every topology refresh re-checks them. A failed replica is
re-probed with backoff (0.5 s doubling to 15 s) by a background task; ``replica`` reads wait
for a probe in progress rather than fail while one runs (bounded by ``refresh_timeout``).

A replica that stops answering (SIGSTOP, a hung host):

* new reads leave it once its oldest read in flight is older than ``refresh_timeout`` (a
  read abandoned by its caller stays counted until a PING behind it on the same connection
  answers), or once a probe gets no answer in ``refresh_timeout``; they go to another
  replica, to the master (``prefer-replica``) or fail with
  :class:`~client.replicas.NoReplicaError` (``replica``);
* reads already sent to it wait, like any command, until the caller's deadline
  (``trio.fail_after``), or until a probe of that replica goes unanswered for
  ``refresh_timeout``: the client then drops its READONLY connections to it and those reads
  are retried elsewhere (read-only commands only ever go to replicas, so this is safe).
  Probes of a replica in the rotation run with each topology refresh, and a stalled replica
  is probed 0.5 s after it leaves the rotation; so without a caller deadline a read waits at
  most about ``refresh_interval`` + 2 x ``refresh_timeout`` (with ``refresh_interval`` 0
  and no other reads to notice the stall, until the caller's deadline).

Refresh. Any number of concurrent :meth:`ClusterClient.refresh` calls share one background
refresh task: a refresh started while another runs waits for it. A refresh asks the known
nodes in random order (healthy ones first, then the seed), each within ``refresh_timeout``,
until one answers. Besides MOVED, CLUSTERDOWN and connection trouble, a background task
refreshes every ``refresh_interval`` seconds.

Pools. Each node has ``connections_per_node`` pipelined :class:`~client.connection.Connection`
objects, used round robin, opened on first use and replaced when they die. Each connection
lives in a task of the client's nursery, so closing the client closes them all. Connections
are shared, so commands that hold or change connection state (BLPOP and other blocking
commands, MULTI/EXEC, WATCH, SUBSCRIBE, SELECT, CLIENT REPLY) do not belong here: open a
dedicated connection with ``open_connection(client.options_for(node))``.

TLS names. Cluster nodes usually announce IPs, while the certificate names the host the user
typed. The name verified for a node (:meth:`ClusterClient.options_for`) is ``--sni`` if given;
else the seed host when that is a DNS name and the node's address is an IP literal; else the
node's own address. A node that announces no address (``unknown-endpoint``) is dialled at the
seed host.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import trio

from client.commands import CommandSpec, CommandTable
from client.connection import Arg, Connection, open_connection
from client.errors import (
    ConnectError,
    ConnectionLost,
    CrossSlotError,
    RedisToolkitError,
    ReplyError,
    UnroutableError,
)
from client.options import ServerOptions
from client.replicas import (
    NoReplicaError,
    Probe,
    ProbeVerdict,
    ReadFrom,
    ReplicaTracker,
    parse_read_from,
    read_probe,
)
from client.resp import encode_command
from client.slots import key_slot
from client.tasks import open_service_nursery
from client.topology import (
    Node,
    Topology,
    parse_cluster_nodes,
    parse_cluster_shards,
    parse_cluster_slots,
    parse_redirect,
)
from client.values import ErrorReply, RespValue

__all__ = ["ClusterClient", "ClusterStatistics", "open_cluster"]

_ASKING = encode_command(b"ASKING")
_PING = encode_command(b"PING")
_PROBE = encode_command(b"INFO", b"replication") + encode_command(b"INFO", b"persistence")
#: Error replies from a replica that do not count as a read it served.
_NOT_SERVED = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING"})
_RETRY_KINDS = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING"})
_FIRST_DELAY = 0.02
_MAX_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """Counters since the client opened (see :meth:`ClusterClient.statistics`).

    Attributes:
        commands: commands routed by :meth:`ClusterClient.request` / ``execute``.
        moved, ask: redirects followed.
        retries: retries after TRYAGAIN/CLUSTERDOWN/LOADING, connect failures or lost
            read-only commands.
        refreshes: topology refreshes completed (successful or not).
        topology_queries: CLUSTER SHARDS/SLOTS/NODES commands sent.
        connections_opened: connections opened (including replacements).
        connect_failures: failed attempts to open a connection.
        connections: live connections per node address (master and replica pools).
        replica_reads: reads answered by each replica (by address), replica policies only.
        replica_health: each known replica (by address): ``up``, ``not probed yet`` or
            ``down (why)``; empty until a replica policy is used.
        master_fallbacks: reads that ``prefer-replica`` sent to the master because the
            shard had no healthy replica.
        replica_probes: health probes (INFO replication) completed.
    """

    commands: int = 0
    moved: int = 0
    ask: int = 0
    retries: int = 0
    refreshes: int = 0
    topology_queries: int = 0
    connections_opened: int = 0
    connect_failures: int = 0
    connections: dict[str, int] = field(default_factory=dict)
    replica_reads: dict[str, int] = field(default_factory=dict)
    replica_health: dict[str, str] = field(default_factory=dict)
    master_fallbacks: int = 0
    replica_probes: int = 0


class _Counters:
    __slots__ = (
        "ask",
        "commands",
        "connect_failures",
        "connections_opened",
        "master_fallbacks",
        "moved",
        "refreshes",
        "replica_probes",
        "retries",
        "topology_queries",
    )

    def __init__(self) -> None:
        self.commands = 0
        self.moved = 0
        self.ask = 0
        self.retries = 0
        self.refreshes = 0
        self.topology_queries = 0
        self.connections_opened = 0
        self.connect_failures = 0
        self.master_fallbacks = 0
        self.replica_probes = 0


def _as_bytes(arg: Arg) -> bytes:
    if type(arg) is bytes:
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise TypeError("bool argument; pass b'1'/b'0' or an int explicitly")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    raise TypeError(f"cannot send a {type(arg).__name__} argument")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _show(arg: bytes) -> str:
    text = arg.decode("utf-8", "replace")
    return text if len(text) <= 40 else text[:37] + "..."


class _NodePool:
    """``size`` pipelined connections to one node, opened lazily, replaced when dead.

    ``readonly``: every connection sends READONLY after the login (replica reads).
    """

    def __init__(
        self, client: ClusterClient, opts: ServerOptions, size: int, *, readonly: bool = False
    ) -> None:
        self._client = client
        self.opts = opts
        self.readonly = readonly
        self._conns: list[Connection | None] = [None] * size
        self._closers: list[trio.Event | None] = [None] * size
        self._locks = [trio.Lock() for _ in range(size)]
        self._errors: list[ConnectError | None] = [None] * size
        self._attempts = [0] * size
        self._next = 0

    @property
    def live(self) -> int:
        return sum(1 for c in self._conns if c is not None and c.alive)

    @property
    def busy(self) -> bool:
        return any(c is not None and c.alive and c.in_flight for c in self._conns)

    async def get(self) -> Connection:
        """A live connection (round robin). Raises ConnectError: nothing was sent."""
        index = self._next
        self._next = (index + 1) % len(self._conns)
        conn = self._conns[index]
        if conn is not None and conn.alive:
            return conn
        attempt = self._attempts[index]
        async with self._locks[index]:
            conn = self._conns[index]
            if conn is not None and conn.alive:
                return conn
            error = self._errors[index]
            if self._attempts[index] != attempt and error is not None:
                raise error  # another task just failed to connect: do not pile on
            self._close_slot(index)
            self._attempts[index] += 1
            try:
                conn, closer = await self._client._open_connection(self.opts, self.readonly)
            except ConnectError as exc:
                self._errors[index] = exc
                raise
            self._errors[index] = None
            self._conns[index] = conn
            self._closers[index] = closer
            return conn

    def connections(self) -> list[Connection | None]:
        return list(self._conns)

    def close_slot(self, index: int) -> None:
        self._close_slot(index)

    def _close_slot(self, index: int) -> None:
        closer = self._closers[index]
        if closer is not None:
            closer.set()
        self._closers[index] = None
        self._conns[index] = None

    def close(self) -> None:
        for index in range(len(self._conns)):
            self._close_slot(index)


class _Refresh:
    """One refresh in progress, shared by everyone who asked for it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: RedisToolkitError | None = None


class ClusterClient:
    """A client for one Redis Cluster. Make it with :func:`open_cluster`.

    Attributes:
        topology: the current :class:`~client.topology.Topology` (replaced on refresh).
        commands: the command table (from the server when possible, else the bundled one).
        seed: the options the client was opened with.
        read_from: the client's replica policy (``master``, ``replica``, ``prefer-replica``).
        replicas: the replicas' health and read counters
            (:class:`~client.replicas.ReplicaTracker`; times are ``trio.current_time()``).
    """

    def __init__(
        self,
        opts: ServerOptions,
        nursery: trio.Nursery,
        *,
        connections_per_node: int,
        max_redirects: int,
        max_retries: int,
        refresh_timeout: float,
        protocol: int,
        client_name: str | None,
        commands: CommandTable,
        read_from: str = "master",
    ) -> None:
        if connections_per_node < 1:
            raise ValueError("connections_per_node must be at least 1")
        self.read_from: ReadFrom = parse_read_from(read_from)
        self.replicas = ReplicaTracker(stall_after=refresh_timeout)
        self.seed = opts
        self.topology = Topology((), source="none")
        self.commands = commands
        self._nursery = nursery
        self._size = connections_per_node
        self._max_redirects = max_redirects
        self._max_retries = max_retries
        self._refresh_timeout = refresh_timeout
        self._protocol = protocol
        self._client_name = client_name
        self._tls = opts.tls is not None
        self._pools: dict[tuple[str, int, bool], _NodePool] = {}
        self._options: dict[tuple[str, int], ServerOptions] = {}
        self._refreshing: _Refresh | None = None
        self._use_shards = True
        self._counters = _Counters()
        # Replica reads (see the module docs): started on first use.
        self._replica_reads = False
        self._replicas_synced: Topology | None = None
        self._monitor_wake = trio.Event()
        self._seen_version = -1
        self._probe_done = trio.Event()
        self._orphans: dict[Connection, list[int]] = {}

    # -- routing ---------------------------------------------------------------------------

    def _slot_of(self, args: Sequence[bytes]) -> int | None:
        """The one slot of the command's keys, None when keyless (or unknown to the table)."""
        try:
            positions = self.commands.key_indexes(args, channels=True)
        except UnroutableError:
            return None  # unknown command or bad arity: the server will say what is wrong
        if not positions:
            return None
        slot = key_slot(args[positions[0]])
        for i in positions[1:]:
            if key_slot(args[i]) != slot:
                raise self._cross_slot(args, positions)
        return slot

    def _cross_slot(self, args: Sequence[bytes], positions: Sequence[int]) -> CrossSlotError:
        shown = ", ".join(f"'{_show(args[i])}' -> slot {key_slot(args[i])}" for i in positions)
        name = _show(args[0]).upper()
        message = (
            f"CROSSSLOT Keys in request don't hash to the same slot ({name}: {shown}); "
            "hint: give the keys a common hash tag, e.g. {user1}:a and {user1}:b"
        )
        return CrossSlotError("CROSSSLOT", message)

    def node_for_key(self, key: bytes | str) -> Node:
        """The master that owns ``key``'s slot.

        Raises:
            UnroutableError: no node owns the slot (the cluster is down or resharding).
        """
        raw = _as_bytes(key)
        slot = key_slot(raw)
        node = self.topology.slot_owner(slot)
        if node is None:
            raise UnroutableError(
                f"slot {slot} of key '{_show(raw)}' has no owner in the cluster",
                hint="the cluster may be down or resharding; try again or run refresh",
            )
        return node

    def node_for_args(self, args: Sequence[Arg], *, read_from: str | None = None) -> Node | None:
        """The node a command goes to; None for a keyless command.

        With the master policy (the client's ``read_from`` unless given here), or for a
        command that is not read-only, that is the slot's master. Otherwise a healthy replica
        of it, chosen as :meth:`request` would (this counts as a turn of the round robin), or
        with ``prefer-replica`` the master when the shard has no healthy replica. This never
        waits for a probe: a replica not probed yet is not chosen (the probe starts in the
        background).

        Raises:
            CrossSlotError: the keys hash to different slots.
            UnroutableError: no node owns the keys' slot.
            NoReplicaError: ``replica`` and the shard has no healthy replica.
            ConfigError: ``read_from`` is not a policy name.
        """
        raw = [_as_bytes(a) for a in args]
        slot = self._slot_of(raw)
        if slot is None:
            return None
        node = self.topology.slot_owner(slot)
        if node is None:
            raise UnroutableError(
                f"slot {slot} has no owner in the cluster",
                hint="the cluster may be down or resharding; try again or run refresh",
            )
        mode = self._mode(read_from)
        if mode == "master" or not self._readonly(raw):
            return node
        replica = self._pick_replica(node, set())
        if replica is not None:
            return replica
        if mode == "prefer-replica":
            return node
        raise self._no_replica(node, slot, set())

    def _keyless_node(self) -> Node:
        masters = self.topology.masters()
        for node in masters:
            if not node.failed:
                return node
        if masters:
            return masters[0]
        return self._seed_node()

    def _seed_node(self) -> Node:
        return Node(id=self.seed.address, host=self.seed.host, port=self.seed.port)

    # -- connection settings -----------------------------------------------------------------

    def _dial_host(self, node: Node) -> str:
        return node.host or self.seed.host

    def options_for(self, node: Node) -> ServerOptions:
        """The settings to reach ``node``: the seed's login and TLS, with the right TLS name."""
        host = self._dial_host(node)
        key = (host, node.port)
        cached = self._options.get(key)
        if cached is not None:
            return cached
        tls = self.seed.tls
        if tls is not None and tls.sni is None:
            seed_host = self.seed.host
            if not _is_ip(seed_host) and _is_ip(host):
                tls = replace(tls, sni=seed_host)
        opts = replace(self.seed, host=host, port=node.port, tls=tls)
        self._options[key] = opts
        return opts

    async def set_login(self, username: str, password: str | None) -> int:
        """Switch every connection to a new login, in place (rotating credentials).

        New connections log in with it; every live pooled connection gets ``AUTH`` now. AUTH is
        pipelined like any command, so commands in flight are unaffected and no connection is
        dropped. A connection whose AUTH is refused is closed (its users reconnect with the new
        login).

        Returns:
            how many live connections were re-authenticated.
        """
        self.seed = replace(self.seed, username=username, password=password)
        self._options.clear()
        auth = ["AUTH", password or ""]
        if username not in ("", "default"):
            auth.insert(1, username)
        done = 0
        for pool in list(self._pools.values()):
            pool.opts = replace(pool.opts, username=username, password=password)
            for index, conn in enumerate(pool.connections()):
                if conn is None or not conn.alive or password is None:
                    continue
                try:
                    reply = await conn.request(*auth)
                except RedisToolkitError:
                    continue  # the connection died meanwhile; its users reconnect
                if isinstance(reply, ErrorReply):
                    pool.close_slot(index)
                else:
                    done += 1
        return done

    def _pool(self, node: Node, *, readonly: bool = False) -> _NodePool:
        key = (self._dial_host(node), node.port, readonly)
        pool = self._pools.get(key)
        if pool is None:
            pool = _NodePool(self, self.options_for(node), self._size, readonly=readonly)
            self._pools[key] = pool
        return pool

    async def _open_connection(
        self, opts: ServerOptions, readonly: bool = False
    ) -> tuple[Connection, trio.Event]:
        try:
            result: tuple[Connection, trio.Event] = await self._nursery.start(
                self._connection_task, opts, readonly
            )
        except ConnectError:
            self._counters.connect_failures += 1
            raise
        self._counters.connections_opened += 1
        return result

    async def _connection_task(
        self,
        opts: ServerOptions,
        readonly: bool,
        *,
        task_status: trio.TaskStatus[tuple[Connection, trio.Event]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        try:
            async with open_connection(
                opts, protocol=self._protocol, client_name=self._client_name
            ) as conn:
                if readonly:
                    reply = await conn.request("READONLY")
                    if isinstance(reply, ErrorReply):
                        raise ConnectError(
                            f"{opts.address} refused READONLY: {reply.text}",
                            hint="replica reads need cluster nodes; use --read-from master",
                        )
                closer = trio.Event()
                task_status.started((conn, closer))
                started = True
                await closer.wait()
        except (RedisToolkitError, OSError, trio.BrokenResourceError) as exc:
            if not started:
                if isinstance(exc, ConnectError):
                    raise
                raise ConnectError(f"cannot connect to {opts.address}: {exc}") from exc
            # After start-up a broken connection is noticed by its users (conn.alive).

    # -- commands ----------------------------------------------------------------------------

    async def request(self, *args: Arg, read_from: str | None = None) -> RespValue:
        """Run a command on the node that owns its keys; an error reply comes back as a value.

        ``read_from`` overrides the client's replica policy for this command (it matters
        only for read-only commands).

        Raises:
            CrossSlotError: the keys hash to different slots (nothing was sent).
            ConnectError: no connection after the retries (nothing was sent).
            ConnectionLost: the connection broke with a non-read-only command in flight.
            NoReplicaError: ``replica`` policy, a read-only command, and no healthy replica.
        """
        return (await self.request_routed(*args, read_from=read_from))[0]

    async def request_routed(
        self, *args: Arg, read_from: str | None = None
    ) -> tuple[RespValue, Node]:
        """Like :meth:`request`, and also the node that gave the reply (after redirects).

        The node is a replica when a replica answered (``node.is_master`` is False); a CLI
        can show it.
        """
        raw = [_as_bytes(a) for a in args]
        if not raw:
            raise UnroutableError("empty command")
        slot = self._slot_of(raw)
        mode = self._mode(read_from)
        self._counters.commands += 1
        return await self._run(raw, slot, mode)

    async def execute(self, *args: Arg, read_from: str | None = None) -> RespValue:
        """Like :meth:`request`, but an error reply raises :class:`~client.errors.ReplyError`."""
        reply = await self.request(*args, read_from=read_from)
        if isinstance(reply, ErrorReply):
            raise ReplyError.from_message(reply.text)
        return reply

    async def request_on(self, node: Node, *args: Arg, readonly: bool = False) -> RespValue:
        """Run a command on one node as is: no routing, no redirects, no retries.

        ``readonly``: use a connection that sent READONLY (to read from a replica).
        """
        conn = await self._pool(node, readonly=readonly).get()
        return (await conn.send_encoded(encode_command(*args), 1))[0]

    async def execute_on(self, node: Node, *args: Arg, readonly: bool = False) -> RespValue:
        """Like :meth:`request_on`, but an error reply raises :class:`~client.errors.ReplyError`."""
        reply = await self.request_on(node, *args, readonly=readonly)
        if isinstance(reply, ErrorReply):
            raise ReplyError.from_message(reply.text)
        return reply

    async def pipeline_on(
        self, node: Node, commands: Sequence[Sequence[Arg]], *, readonly: bool = False
    ) -> list[RespValue]:
        """Send many commands to one node in one write; replies in order, errors as values."""
        if not commands:
            return []
        conn = await self._pool(node, readonly=readonly).get()
        data = b"".join(encode_command(*c) for c in commands)
        return await conn.send_encoded(data, len(commands))

    def _mode(self, read_from: str | None) -> ReadFrom:
        return self.read_from if read_from is None else parse_read_from(read_from)

    def _readonly(self, args: Sequence[bytes]) -> bool:
        spec: CommandSpec | None = self.commands.lookup(args)
        return spec is not None and spec.readonly

    async def _backoff(self, tries: int) -> None:
        self._counters.retries += 1
        await trio.sleep(min(_FIRST_DELAY * (2 ** (tries - 1)), _MAX_DELAY))

    async def _run(
        self, args: list[bytes], slot: int | None, mode: ReadFrom
    ) -> tuple[RespValue, Node]:
        encoded = encode_command(*args)
        redirects = 0
        tries = 0
        target: Node | None = None  # where a redirect said to go
        asking = False
        replica_read = mode != "master" and self._readonly(args)
        avoid: set[str] = set()  # replicas that failed this command
        refreshed = False  # replica policy: one refresh after a redirect, if need be
        while True:
            if target is not None:
                node = target
            elif slot is None:
                node = self._keyless_node()
            else:
                node = self.topology.slot_owner(slot) or self._keyless_node()
            on_replica = False
            if replica_read and not asking:
                replica = await self._replica_for(node, mode, avoid)
                if replica is not None:
                    node, on_replica = replica, True
                elif mode == "replica":
                    if refreshed or not redirects:
                        raise self._no_replica(node, slot, avoid)
                    # Redirected to a shard the map may not know the replicas of yet.
                    refreshed = True
                    await self._refresh_quietly()
                    target = None
                    continue
            try:
                conn = await self._pool(node, readonly=on_replica).get()
            except ConnectError as exc:
                tries += 1
                if on_replica:
                    self._replica_failed(node, f"cannot connect: {exc.message}", avoid)
                    if tries > self._max_retries:
                        raise
                    self._counters.retries += 1
                    continue
                if tries > self._max_retries:
                    raise
                await self._refresh_quietly()
                await self._backoff(tries)
                target, asking = None, False
                continue
            try:
                if on_replica:
                    reply = await self._read_on_replica(conn, node, encoded)
                elif asking:
                    reply = (await conn.send_encoded(_ASKING + encoded, 2))[1]
                else:
                    reply = (await conn.send_encoded(encoded, 1))[0]
            except ConnectionLost as exc:
                tries += 1
                if on_replica:
                    self._replica_failed(node, f"connection lost: {exc.message}", avoid)
                    if tries > self._max_retries:
                        raise
                    self._counters.retries += 1
                    continue
                self._refresh_soon()
                if not self._readonly(args):
                    raise ConnectionLost(
                        f"connection to {conn.address} was lost with "
                        f"{_show(args[0]).upper()} in flight: it may or may not have run",
                        hint="check the command's effect before running it again",
                    ) from exc
                if tries > self._max_retries:
                    raise
                await self._refresh_quietly()
                await self._backoff(tries)
                target, asking = None, False
                continue
            if type(reply) is not ErrorReply:
                return reply, node
            kind = reply.kind
            if on_replica and kind == "LOADING" and tries < self._max_retries:
                tries += 1
                self._replica_failed(node, "loading its dataset (LOADING)", avoid)
                self._counters.retries += 1
                continue
            if kind == "MOVED" or kind == "ASK":
                redirect = parse_redirect(reply.message)
                if redirect is None or redirects >= self._max_redirects:
                    return reply, node
                redirects += 1
                _, moved_slot, host, port = redirect
                target = self._redirect_node(host or node.host, port)
                asking = kind == "ASK"
                if asking:
                    self._counters.ask += 1
                else:
                    self._counters.moved += 1
                    self._learn_moved(moved_slot, target)
                continue
            if kind in _RETRY_KINDS and tries < self._max_retries:
                tries += 1
                if kind == "CLUSTERDOWN":
                    self._refresh_soon()
                await self._backoff(tries)
                target, asking = None, False
                continue
            return reply, node

    # -- replica reads --------------------------------------------------------------------------

    def _enable_replica_reads(self) -> None:
        """Start following the replicas' health (on first use of a replica policy)."""
        if not self._replica_reads:
            self._replica_reads = True
            self._sync_replicas()
            self._nursery.start_soon(self._replica_monitor)

    def _sync_replicas(self) -> None:
        if self._replicas_synced is not self.topology:
            self.replicas.sync(self.topology, trio.current_time())
            self._replicas_synced = self.topology
        self._wake_if_changed()

    def _wake_if_changed(self) -> None:
        if self.replicas.version != self._seen_version:
            self._seen_version = self.replicas.version
            self._monitor_wake.set()

    def _pick_replica(self, master: Node, avoid: set[str]) -> Node | None:
        self._enable_replica_reads()
        self._sync_replicas()
        node = self.replicas.pick(
            self.topology.replicas_of(master), trio.current_time(), avoid=avoid
        )
        self._wake_if_changed()
        return node

    async def _replica_for(self, master: Node, mode: ReadFrom, avoid: set[str]) -> Node | None:
        """A healthy replica of ``master``, or None (the caller falls back or raises)."""
        node = self._pick_replica(master, avoid)
        if node is not None:
            return node
        if mode == "replica":
            waiting = [r for r in self.topology.replicas_of(master) if r.id not in avoid]
            if await self._probe_and_wait(waiting):
                return self._pick_replica(master, avoid)
            return None
        self._counters.master_fallbacks += 1
        return None

    def _no_replica(self, master: Node, slot: int | None, avoid: set[str]) -> NoReplicaError:
        why = self.replicas.explain(
            self.topology.replicas_of(master),
            avoid=avoid,
            name=lambda n: self.options_for(n).address,
        )
        where = f"slot {slot}" if slot is not None else "a keyless read"
        return NoReplicaError(
            f"no healthy replica to read {where} from: master "
            f"{self.options_for(master).address}: {why}",
            master=master,
            hint="use --read-from prefer-replica to fall back to the master, "
            "or wait for a replica to recover",
        )

    def _replica_failed(self, node: Node, reason: str, avoid: set[str]) -> None:
        avoid.add(node.id)
        self.replicas.failed(node.id, reason, trio.current_time())
        self._wake_if_changed()

    async def _read_on_replica(self, conn: Connection, node: Node, encoded: bytes) -> RespValue:
        token = self.replicas.start_read(node, trio.current_time())
        served = False
        try:
            reply = (await conn.send_encoded(encoded, 1))[0]
            served = type(reply) is not ErrorReply or reply.kind not in _NOT_SERVED
            return reply
        except trio.Cancelled:
            # The caller gave up; the read is still on the wire. It stays in flight (so a
            # hung replica is noticed) until a PING behind it on this connection answers.
            self._orphan(conn, token)
            token = 0
            raise
        finally:
            if token:
                self.replicas.end_read(token, served=served)

    def _orphan(self, conn: Connection, token: int) -> None:
        waiting = self._orphans.get(conn)
        if waiting is not None:
            waiting.append(token)
            return
        self._orphans[conn] = [token]
        self._nursery.start_soon(self._reap_orphans, conn)

    async def _reap_orphans(self, conn: Connection) -> None:
        try:
            while self._orphans[conn]:
                tokens = self._orphans[conn]
                self._orphans[conn] = []
                try:
                    await conn.send_encoded(_PING, 1)
                except RedisToolkitError:
                    pass  # the connection is gone: so are the replies
                for token in tokens:
                    self.replicas.end_read(token, served=False)
        finally:
            self._orphans.pop(conn, None)

    async def _probe_and_wait(self, nodes: Sequence[Node]) -> bool:
        """Probe those of ``nodes`` that are due; wait for every probe of them in progress.

        Returns True if there was a probe to wait for (each is bounded by refresh_timeout).
        """
        ids = {n.id for n in nodes}
        for probe in self.replicas.take_due(trio.current_time(), only=ids):
            self._nursery.start_soon(self._probe, probe)
        waited = False
        while self.replicas.probing(ids):
            waited = True
            await self._probe_done.wait()
        return waited

    async def _probe(self, probe: Probe) -> None:
        node = probe.node
        verdict = ProbeVerdict(False, f"no answer to INFO in {self._refresh_timeout:g} s")
        applied = False
        try:
            with trio.move_on_after(self._refresh_timeout) as scope:
                try:
                    conn = await self._pool(node, readonly=True).get()
                    replication, persistence = await conn.send_encoded(_PROBE, 2)
                except RedisToolkitError as exc:
                    verdict = ProbeVerdict(False, exc.message)
                else:
                    verdict = read_probe(replication, persistence)
            if scope.cancelled_caught:
                # INFO unanswered: so are the reads queued on those connections. Drop them,
                # so the reads fail over (read-only: safe to retry) and the next probe dials.
                self._pool(node, readonly=True).close()
            self._counters.replica_probes += 1
            self.replicas.probe_done(probe, verdict, trio.current_time())
            applied = True
            if verdict.promoted:
                self._refresh_soon()
        finally:
            if not applied:  # never leave a replica PROBING with nobody probing it
                interrupted = ProbeVerdict(False, "probe interrupted")
                self.replicas.probe_done(probe, interrupted, trio.current_time())
            done, self._probe_done = self._probe_done, trio.Event()
            done.set()
            self._wake_if_changed()

    async def _replica_monitor(self) -> None:
        """Run the probes that are due: new replicas, failed ones (backoff), checks."""
        while True:
            self._monitor_wake = trio.Event()
            self._sync_replicas()
            for probe in self.replicas.take_due(trio.current_time()):
                self._nursery.start_soon(self._probe, probe)
            self._seen_version = self.replicas.version
            wake_at = self.replicas.next_due()
            with trio.move_on_at(math.inf if wake_at is None else wake_at):
                await self._monitor_wake.wait()

    def _redirect_node(self, host: str, port: int) -> Node:
        known = self.topology.node_by_address(host, port)
        if known is not None:
            return known
        return Node(id=f"{host}:{port}", host=host, port=port)

    def _learn_moved(self, slot: int, node: Node) -> None:
        if self.topology.node_by_id(node.id) is not None:
            self.topology = self.topology.with_slot_owner(slot, node)
        self._refresh_soon()

    # -- topology refresh ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the topology again; concurrent calls share one refresh.

        Raises:
            RedisToolkitError: no node could give a topology (the old one is kept).
        """
        job = self._refreshing or self._start_refresh()
        await job.done.wait()
        if job.error is not None:
            raise job.error

    def _start_refresh(self) -> _Refresh:
        job = _Refresh()
        self._refreshing = job
        self._nursery.start_soon(self._refresh_task, job)
        return job

    def _refresh_soon(self) -> None:
        """Start a refresh in the background unless one is running."""
        if self._refreshing is None:
            self._start_refresh()

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except RedisToolkitError:
            pass  # keep the old map; the retry will tell

    async def _refresh_task(self, job: _Refresh) -> None:
        try:
            self.topology = await self._discover(self._candidates())
            self._forget_departed()
            if self._replica_reads:
                self._sync_replicas()
                self.replicas.request_checks()  # the periodic health check
                self._wake_if_changed()
        except RedisToolkitError as exc:
            job.error = exc
        finally:
            self._counters.refreshes += 1
            self._refreshing = None
            job.done.set()

    def _candidates(self) -> list[Node]:
        healthy = [n for n in self.topology.nodes if not n.failed]
        failed = [n for n in self.topology.nodes if n.failed]
        random.shuffle(healthy)
        random.shuffle(failed)
        nodes = healthy + failed
        seed = self._seed_node()
        seed_key = (self._dial_host(seed), seed.port)
        if all((self._dial_host(n), n.port) != seed_key for n in nodes):
            nodes.append(seed)
        return nodes

    async def _discover(self, candidates: Iterable[Node]) -> Topology:
        errors: list[str] = []
        tried = 0
        for node in candidates:
            tried += 1
            with trio.move_on_after(self._refresh_timeout):
                try:
                    return await self._query_topology(node)
                except RedisToolkitError as exc:
                    errors.append(f"{self.options_for(node).address}: {exc}")
                    continue
            errors.append(
                f"{self.options_for(node).address}: no answer in {self._refresh_timeout:g} s"
            )
        detail = "; ".join(errors[:3]) + (
            f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        )
        raise RedisToolkitError(
            f"cannot read the cluster topology from {tried} node(s): {detail}",
            hint="check that the nodes are up and that this is a cluster (-c)",
        )

    async def _query_topology(self, node: Node) -> Topology:
        conn = await self._pool(node).get()
        last: RedisToolkitError | None = None
        steps = (("SHARDS", self._parse_shards), ("SLOTS", parse_cluster_slots))
        for name, parse in steps:
            if name == "SHARDS" and not self._use_shards:
                continue
            self._counters.topology_queries += 1
            reply = (await conn.send_encoded(encode_command(b"CLUSTER", name.encode()), 1))[0]
            if isinstance(reply, ErrorReply) and "unknown" in reply.text.lower():
                if name == "SHARDS":
                    self._use_shards = False  # Redis < 7
                continue
            try:
                topology = parse(reply)
            except RedisToolkitError as exc:
                if isinstance(reply, ErrorReply):
                    raise  # cluster support disabled, NOAUTH...: NODES would say the same
                last = exc
                continue
            if topology.masters():
                return topology
            last = RedisToolkitError(f"CLUSTER {name} lists no masters")
        self._counters.topology_queries += 1
        reply = (await conn.send_encoded(encode_command(b"CLUSTER", b"NODES"), 1))[0]
        try:
            topology = parse_cluster_nodes(reply)
        except RedisToolkitError:
            if last is not None:
                raise last from None
            raise
        if not topology.masters():
            raise last or RedisToolkitError("CLUSTER NODES lists no masters")
        return topology

    def _parse_shards(self, reply: RespValue) -> Topology:
        return parse_cluster_shards(reply, tls=self._tls)

    def _forget_departed(self) -> None:
        """Close idle pools of nodes that left the cluster (not the seed's)."""
        keep = {(self._dial_host(n), n.port) for n in self.topology.nodes}
        keep.add((self.seed.host, self.seed.port))
        for key in [k for k in self._pools if k[:2] not in keep]:
            pool = self._pools[key]
            if not pool.busy:
                pool.close()
                del self._pools[key]

    async def _periodic_refresh(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self._refresh_quietly()

    # -- start-up ------------------------------------------------------------------------------

    async def _bootstrap(self, load_commands: bool) -> None:
        seed = self._seed_node()
        try:
            self.topology = await self._query_topology(seed)
        except ConnectError:
            raise
        except RedisToolkitError as exc:
            raise RedisToolkitError(
                f"{self.seed.address} cannot describe the cluster: {exc.message}",
                hint="is this a cluster node? drop -c/--cluster for a standalone server",
            ) from exc
        self._counters.refreshes += 1
        if load_commands:
            await self._load_commands(seed)

    async def _load_commands(self, node: Node) -> None:
        conn = await self._pool(node).get()
        command, docs, info = await conn.pipeline(
            [["COMMAND"], ["COMMAND", "DOCS"], ["INFO", "server"]]
        )
        version = ""
        if isinstance(info, bytes):
            for line in info.split(b"\r\n"):
                if line.startswith(b"redis_version:"):
                    version = line.partition(b":")[2].decode("ascii", "replace")
        try:
            self.commands = CommandTable.from_replies(command, docs, redis_version=version)
        except (RedisToolkitError, ValueError, TypeError, KeyError):
            pass  # keep the bundled table

    # -- statistics ----------------------------------------------------------------------------

    def statistics(self) -> ClusterStatistics:
        c = self._counters
        connections: dict[str, int] = {}
        for pool in self._pools.values():
            live = pool.live
            if live:
                address = pool.opts.address
                connections[address] = connections.get(address, 0) + live
        replica_reads: dict[str, int] = {}
        replica_health: dict[str, str] = {}
        for status in self.replicas.statuses():
            address = self.options_for(status.node).address
            replica_reads[address] = status.reads
            replica_health[address] = status.describe()
        return ClusterStatistics(
            commands=c.commands,
            moved=c.moved,
            ask=c.ask,
            retries=c.retries,
            refreshes=c.refreshes,
            topology_queries=c.topology_queries,
            connections_opened=c.connections_opened,
            connect_failures=c.connect_failures,
            connections=connections,
            replica_reads=replica_reads,
            replica_health=replica_health,
            master_fallbacks=c.master_fallbacks,
            replica_probes=c.replica_probes,
        )


@asynccontextmanager
async def open_cluster(
    opts: ServerOptions,
    *,
    connections_per_node: int = 1,
    refresh_interval: float = 30.0,
    max_redirects: int = 5,
    max_retries: int = 5,
    refresh_timeout: float = 5.0,
    protocol: int = 2,
    client_name: str | None = None,
    commands: CommandTable | None = None,
    read_from: str = "master",
) -> AsyncIterator[ClusterClient]:
    """Connect to the cluster behind the seed ``opts`` and yield a :class:`ClusterClient`.

    Args:
        connections_per_node: pipelined connections per node, used round robin.
        refresh_interval: seconds between background topology refreshes (0 disables).
        max_redirects: MOVED/ASK hops per command before the redirect is the reply.
        max_retries: retries per command for TRYAGAIN/CLUSTERDOWN/LOADING and connection
            trouble (20 ms, doubling to 1 s).
        refresh_timeout: how long a refresh waits for one node before asking the next
            (refreshes run in the background, so no caller deadline bounds them).
        protocol: 2 or 3 (HELLO 3) for every node connection.
        client_name: CLIENT SETNAME for every connection.
        commands: a command table to use instead of loading one from the server.
        read_from: ``master`` (default), ``replica`` or ``prefer-replica``: where read-only
            commands go (see the module docs). With a replica policy every replica is probed
            (INFO replication, each within ``refresh_timeout``) before the client is yielded;
            ``refresh_timeout`` is also how long a replica may leave a read unanswered
            before new reads avoid it.

    Raises:
        ConnectError: the seed cannot be reached or refuses the login.
        RedisToolkitError: the seed cannot describe the cluster (for example, not a cluster).
        ConfigError: ``read_from`` is not a policy name.
    """
    read_from = parse_read_from(read_from)
    async with open_service_nursery() as nursery:
        client = ClusterClient(
            opts,
            nursery,
            connections_per_node=connections_per_node,
            max_redirects=max_redirects,
            max_retries=max_retries,
            refresh_timeout=refresh_timeout,
            protocol=protocol,
            client_name=client_name,
            commands=commands if commands is not None else CommandTable.bundled(),
            read_from=read_from,
        )
        await client._bootstrap(load_commands=commands is None)
        if read_from != "master":
            client._enable_replica_reads()
            await client._probe_and_wait(client.topology.replicas())
        if refresh_interval > 0:
            nursery.start_soon(client._periodic_refresh, refresh_interval)
        yield client
