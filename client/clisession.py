"""The connections of one ``cli`` run: the node in use, read routing, and rotating logins.

Split from :mod:`client.shell`, which parses lines, prints replies and drives a
:class:`Session` made by :func:`open_session`. The session keeps one connection per node (opened
lazily, re-opened after a failure), follows MOVED/ASK in cluster mode as redis-cli does, serves
replica reads through a cluster client, and keeps every login fresh.

Reading from replicas (``-c --read-from replica|prefer-replica``; default ``master``)
------------------------------------------------------------------------------------
A read-only command (the command table's ``readonly`` flag) whose keys share a slot goes to a
replica of the slot's master, chosen, health-checked and redirected by the cluster client
(:func:`client.cluster.open_cluster`, READONLY connections). ``prefer-replica`` falls back to the
master when the shard has no healthy replica; ``replica`` then fails with a one-line error.
Everything else runs on the masters as above: writes, keyless commands (DBSIZE, SCAN... on the
node in use, as redis-cli), blocking reads (XREAD) and reads that must see the session's writes
(:class:`Affinity`: in MULTI, after WATCH, after a write). Before each reply a read names its
node: ``-> Read from replica host:port`` or ``-> Read from master host:port (why)``, on stdout in
the REPL and piped use (like redirect notes), on stderr in one-shot use; the prompt shows it.
Outside the affinity windows a replica may lag its master: reads are eventually consistent.
SCAN-family cursors (HSCAN...) are valid on one node only; a shard with several replicas may
spread them.

Rotating credentials (``--password-command``, ``--entra``; :mod:`client.credentials`)
------------------------------------------------------------------------------------
Every connection the shell opens logs in with the provider's current credential: the one to
the node in use and to each node a MOVED/ASK or a ``:cluster`` helper reaches, the cluster
client of ``--read-from``, and each SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE/MONITOR stream. With a
rotating provider :func:`open_session` runs its refresh loop (the first fetch happens before
anything connects, so a broken password command fails at once) and each new credential is
applied by :meth:`Session.rotate`, so no command fails because of a rotation:

==========================  ================================================================
connection                  what a new credential does to it
==========================  ================================================================
session connections         re-AUTHed in place (``AUTH`` is pipelined like any command, so
                            nothing in flight is disturbed): at once when the shell is idle;
                            when a command runs, or a MULTI is open (an ``AUTH`` there would
                            be queued in the transaction and answer in EXEC), just before the
                            next command on that connection once the transaction is over. A
                            connection on which the user typed a successful ``AUTH`` or
                            ``HELLO ... AUTH`` keeps the user's login.
cluster client              closed (its pools are its own) and opened again, with the new
(``--read-from``)           credential, by the next read; a read whose login was refused by
                            a client opened with an older credential is retried once on a
                            new client (replica reads are read-only: running twice is safe).
RESP3 streams, MONITOR      re-AUTHed in place once the stream's own command has answered;
                            the ``AUTH`` reply (``OK``, the only non-push / non-timestamped
                            value) is not printed.
RESP2 (P|S)SUBSCRIBE        Redis refuses ``AUTH`` in that state, so the stream keeps its
                            login; if the server closes it after a rotation (a cloud server
                            closing an expired login does), the shell logs in again with the
                            new credential and sends the command again (one note on stderr).
==========================  ================================================================

A refused re-AUTH is one warning on stderr and the connection keeps its login; a failed refresh
is logged by the provider, which keeps the current credential. Secrets never reach an error
message (:meth:`Session.redact`) nor the REPL history (:meth:`Session.secrets`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import trio

from client.cluster import ClusterClient, open_cluster
from client.commands import CommandSpec, CommandTable
from client.connection import Arg, Connection, open_authenticated_stream, open_connection
from client.credentials import Credential, CredentialProvider, redact
from client.errors import (
    ConnectError,
    ConnectionLost,
    RedisConnectionError,
    RedisToolkitError,
    UnroutableError,
)
from client.options import ServerOptions
from client.replicas import ReadFrom
from client.resp import encode_command
from client.slots import key_slot
from client.tasks import open_service_nursery
from client.topology import Topology, parse_cluster_shards, parse_cluster_slots
from client.topology import parse_redirect as parse_redirect_reply
from client.values import ErrorReply, Push, RespValue, SimpleString

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_REDIRECTS",
    "Affinity",
    "LiveStream",
    "Session",
    "Settings",
    "auth_command",
    "open_session",
]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
MAX_REDIRECTS = 16
_REMEMBERED_SECRETS = 8


@dataclass(frozen=True)
class Settings:
    """How this run talks and prints."""

    opts: ServerOptions
    protocol: int
    raw: bool
    repeat: int
    interval: float
    interactive: bool  # a REPL on a terminal: prompts, confirmations, Ctrl-C handling
    chatty: bool  # REPL or piped (redis-cli's "interactive"): redirect notes, slow-command times
    show_pushes: bool = False
    read_from: ReadFrom = "master"


def auth_command(credential: Credential) -> list[Arg]:
    """``AUTH`` as :mod:`client.connection` logs in (the one-argument form for ``default``)."""
    if credential.username and credential.username != "default":
        return ["AUTH", credential.username, credential.password]
    return ["AUTH", credential.password]


def _same_login(a: Credential | None, b: Credential | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.username, a.password) == (b.username, b.password)


def _typed_login(args: Sequence[bytes]) -> bool:
    """Whether ``args`` logs the connection in (``AUTH``, ``HELLO ... AUTH``)."""
    name = args[0].lower() if args else b""
    return name == b"auth" or (name == b"hello" and b"auth" in (a.lower() for a in args[1:]))


# ------------------------------------------------------------------------------ read routing


class Affinity:
    """Read-your-writes: when a read must stay on the master (pure; fed by :meth:`record`).

    ==========================================  ============================================
    command (after it ran)                      effect
    ==========================================  ============================================
    MULTI (accepted) / EXEC, DISCARD            ``in_multi`` starts / ends (and ``watching``)
    WATCH (accepted) / UNWATCH                  ``watching`` starts / ends
    read-only (``readonly`` flag)               none
    may write: ``write`` flag, or keys and      ``wrote`` starts (or goes on)
    not read-only (EVAL, FCALL...)
    anything else (PING, INFO, CLIENT...)       ``wrote`` ends
    ==========================================  ============================================

    A dropped connection (Ctrl-C, connection lost) ends ``in_multi`` and ``watching``, which
    lived on it (:meth:`reset`). Consistency: with ``master`` every read sees every write the
    server acknowledged; with a replica policy the reads in these windows see the session's own
    writes (same connection), and other reads may lag by the replication delay.
    """

    def __init__(self) -> None:
        self.in_multi = False
        self.watching = False
        self.wrote = False

    def master_reason(self) -> str | None:
        """Why the next read must go to the master, or None when a replica may serve it."""
        if self.in_multi:
            return "in MULTI"
        if self.watching:
            return "after WATCH"
        if self.wrote:
            return "after a write"
        return None

    def record(self, name: bytes, spec: CommandSpec | None, has_keys: bool, ok: bool) -> None:
        """Account for a command that ran (``name`` lower case; ``ok``: no error reply)."""
        if name == b"multi":
            self.in_multi = self.in_multi or ok
        elif name in (b"exec", b"discard"):
            self.in_multi = self.watching = False
        elif name == b"watch":
            self.watching = self.watching or ok
        elif name == b"unwatch":
            self.watching = False
        elif spec is None or spec.readonly:
            return
        elif spec.write or has_keys:
            self.wrote = True
        else:
            self.wrote = False

    def reset(self) -> None:
        self.in_multi = self.watching = False


# ----------------------------------------------------------------------------------- session


@dataclass(eq=False)
class _Held:
    """A session connection, the task holding it open, and the login it last sent."""

    conn: Connection
    stop: trio.Event
    login: Credential
    own_login: bool = False  # the user typed AUTH / HELLO ... AUTH on it: leave it alone


class LiveStream:
    """A SUBSCRIBE / MONITOR stream and its login (see the module docs); from
    :meth:`Session.open_stream`.

    The reader calls :meth:`take_ack` with each value before printing it, and :meth:`arm` once
    the stream's own command has answered; :meth:`Session.rotate` calls :meth:`rotate`.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        address: str,
        login: Credential,
        *,
        monitor: bool,
        resp3: bool,
    ) -> None:
        self.stream = stream
        self.address = address
        self.login = login
        self.monitor = monitor
        self.in_place = monitor or resp3  # Redis takes AUTH on this stream
        self.armed = False
        self.rotated = False  # a newer credential exists that this stream could not send
        self._acks = 0  # AUTH replies still to come
        self._due: Credential | None = None
        self._sending = trio.Lock()

    async def rotate(self, credential: Credential) -> None:
        if _same_login(credential, self.login):
            return
        if not self.in_place:
            self.rotated = True
            return
        self._due = credential
        if self.armed:
            await self._send_due()

    async def arm(self) -> None:
        """The stream's own command has answered: from now on AUTH replies can be told apart."""
        if not self.armed:
            self.armed = True
            await self._send_due()

    async def _send_due(self) -> None:
        async with self._sending:  # one writer at a time (rotate and arm may race)
            credential, self._due = self._due, None
            if credential is None or not credential.password:
                return
            self._acks += 1
            self.login = credential
            try:
                await self.stream.send_all(encode_command(*auth_command(credential)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.rotated = True  # the reader sees the end; a new stream logs in afresh

    def take_ack(self, value: RespValue, redact_text: Callable[[str], str]) -> bool:
        """True when ``value`` answers one of our AUTHs (then it is not to be printed)."""
        if not self._acks:
            return False
        if isinstance(value, ErrorReply):
            logger.warning(
                "re-AUTH of the stream to %s refused: %s; it keeps its login",
                self.address,
                redact_text(value.text),
            )
        elif self.monitor:  # monitor lines start with a timestamp: only AUTH says OK
            if not (isinstance(value, SimpleString) and value == b"OK"):
                return False
        elif isinstance(value, Push):  # RESP3 pub/sub: messages are pushes, replies are not
            return False
        self._acks -= 1
        return True


class Session:
    """The connections of one shell run: the node in use, and one cached connection per node.

    Make it with :func:`open_session`. Connections open lazily and re-open after a failure.
    With a replica policy, a :class:`~client.cluster.ClusterClient` (opened on the first read)
    serves the reads that may go to replicas. Every login comes from ``credentials``.
    """

    def __init__(
        self,
        cfg: Settings,
        nursery: trio.Nursery,
        credentials: CredentialProvider | None = None,
    ) -> None:
        self.cfg = cfg
        self.current = cfg.opts
        self.connected = False
        self.db = 0
        self.affinity = Affinity()
        self.shown: str | None = None  # the node that answered last, when not ``current``
        self._nursery = nursery
        self._held: dict[str, _Held] = {}
        self._topology: Topology | None = None
        self._answered: set[str] = set()  # nodes that have answered once
        self._cluster: ClusterClient | None = None
        self._cluster_stop = trio.Event()
        self._cluster_login: Credential | None = None
        self._commands: CommandTable | None = None  # the last cluster client's table
        self._credentials = credentials or CredentialProvider.static(
            cfg.opts.username, cfg.opts.password
        )
        self._credential: Credential | None = None  # the newest one seen
        self._secrets: list[str] = [cfg.opts.password] if cfg.opts.password else []
        self._busy = 0  # commands of the shell under way (see in_command)
        self._streams: set[LiveStream] = set()

    @property
    def prompt(self) -> str:
        if not self.connected:
            return "not connected> "
        db = f"[{self.db}]" if self.db else ""
        tx = "(TX)" if self.affinity.in_multi else ""
        return f"{self.shown or self.current.address}{db}{tx}> "

    # -- credentials ---------------------------------------------------------------------------

    def secrets(self) -> list[str]:
        """The passwords and tokens this session has logged in with (the last few)."""
        return list(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` without any secret of this session, nor anything that looks like a token."""
        return redact(text, self._secrets)

    def redacted(self, exc: RedisToolkitError) -> RedisToolkitError:
        """``exc`` with its message and hint redacted (the same object, changed in place)."""
        message = self.redact(exc.message)
        hint = self.redact(exc.hint) if exc.hint else exc.hint
        if (message, hint) != (exc.message, exc.hint):
            exc.message, exc.hint, exc.args = message, hint, (message,)
        return exc

    def _learn(self, credential: Credential) -> Credential:
        if not _same_login(credential, self._credential):
            self._credential = credential
        if credential.password and credential.password not in self._secrets:
            self._secrets = [*self._secrets, credential.password][-_REMEMBERED_SECRETS:]
        return self._credential or credential

    async def login(self, target: ServerOptions) -> tuple[ServerOptions, Credential]:
        """``target`` logging in with the current credential, and that credential.

        Raises:
            ConnectError: the password command failed and no credential is left (redacted).
        """
        credential = self._learn(await self._credentials.current())
        return credential.apply_to(target), credential

    def _stale(self, held: _Held) -> bool:
        return not held.own_login and not _same_login(held.login, self._credential)

    @contextmanager
    def in_command(self) -> Iterator[None]:
        """Mark a command of the shell as under way: a rotation then leaves the session's
        connections to :meth:`connection`, which re-AUTHs them in order before the next
        command (an AUTH sent beside a MULTI in flight would join the transaction)."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    async def _relogin(self, held: _Held) -> bool:
        """Send AUTH with the current credential on ``held``; False when it was refused."""
        credential = self._credential
        if credential is None or not credential.password:
            return True
        held.login = credential  # before the await: nobody sends it twice
        try:
            reply = await held.conn.request(*auth_command(credential))
        except RedisConnectionError:
            return True  # gone: its next use opens a new connection with this credential
        if isinstance(reply, ErrorReply):
            logger.warning(
                "re-AUTH of %s with the new credential refused: %s; it keeps its login",
                held.conn.address,
                self.redact(reply.text),
            )
            return False
        return True

    async def rotate(self, credential: Credential) -> None:
        """Apply a new credential to every live connection (the provider's refresh loop calls
        this; see the module docs)."""
        self._learn(credential)
        if self._cluster is not None and not self._busy:
            self._retire_cluster()
        for live in list(self._streams):
            await live.rotate(credential)
        now = later = 0
        for held in list(self._held.values()):
            if not (held.conn.alive and self._stale(held)):
                continue
            if self._busy or self.affinity.in_multi:
                later += 1
                continue
            now += 1
            with trio.move_on_after(CONNECT_TIMEOUT):
                await self._relogin(held)
        logger.info(
            "new credential for user %s: %d connection(s) logged in again, %d at their next "
            "command, %d stream(s)",
            self.redact(credential.username),
            now,
            later,
            len(self._streams),
        )

    async def settle(self) -> None:
        """Re-AUTH the connections a rotation left for later, once the shell is idle and no
        transaction is open (the shell calls this after each command)."""
        if self._busy or self.affinity.in_multi:
            return
        for held in list(self._held.values()):
            if held.conn.alive and self._stale(held):
                await self._relogin(held)

    # -- connections ---------------------------------------------------------------------------

    async def connection(self, target: ServerOptions | None = None) -> Connection:
        """The live connection to ``target`` (default: the node in use), opened if needed."""
        target = target or self.current
        held = self._held.get(target.address)
        if held is not None and held.conn.alive:
            if self._stale(held) and not self.affinity.in_multi:
                await self._relogin(held)
            return held.conn
        if held is not None:
            held.stop.set()
        stop = trio.Event()
        try:
            opts, credential = await self.login(target)
            with trio.fail_after(CONNECT_TIMEOUT):
                conn: Connection = await self._nursery.start(self._hold, opts, stop)
        except trio.TooSlowError:
            self.connected = False
            msg = f"connecting to {target.address} got no answer in {CONNECT_TIMEOUT:g} s"
            raise ConnectError(msg, hint="check -h/-p and any firewall in between") from None
        except ConnectError:
            if target.address == self.current.address:
                self.connected = False
            raise
        self._held[target.address] = _Held(conn, stop, credential)
        if target.address == self.current.address:
            self.connected = True
        if self.db and target.address == self.current.address:
            await conn.request("SELECT", self.db)
        return conn

    async def _hold(
        self,
        target: ServerOptions,
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_connection(target, protocol=self.cfg.protocol) as conn:
            task_status.started(conn)
            await stop.wait()

    def drop_all(self) -> None:
        """Close every connection (after Ctrl-C, or when one broke); later use reconnects."""
        for held in self._held.values():
            held.stop.set()
        self._held.clear()
        self.affinity.reset()

    def drain_pushes(self) -> list[RespValue]:
        """The pushes waiting on every connection (client-side caching invalidations...)."""
        pushes: list[RespValue] = []
        for held in self._held.values():
            while True:
                try:
                    pushes.append(held.conn.next_push_nowait())
                except (trio.WouldBlock, RedisConnectionError):
                    break
        return pushes

    async def request(self, args: Sequence[bytes], *, on: ServerOptions | None = None) -> RespValue:
        with self.in_command():
            conn = await self.connection(on)
            return await conn.request(*args)

    async def send(self, args: Sequence[bytes], note: Callable[[str], None]) -> RespValue:
        """Run a command on the node in use, following MOVED/ASK in cluster mode (as redis-cli).

        ``note`` receives each ``-> Redirected ...`` line.
        """
        with self.in_command():
            asking = False
            for _ in range(MAX_REDIRECTS):
                conn = await self.connection()
                if asking:
                    reply = (await conn.pipeline([[b"ASKING"], list(args)]))[1]
                else:
                    reply = await conn.request(*args)
                self._answered.add(self.current.address)
                self.shown = None
                redirect = self.redirect_of(reply)
                if redirect is None:
                    if _typed_login(args) and not isinstance(reply, ErrorReply):
                        self._held[self.current.address].own_login = True
                    return reply
                asking = self.follow(redirect, note)
            return reply

    @asynccontextmanager
    async def open_stream(
        self, target: ServerOptions, *, monitor: bool
    ) -> AsyncIterator[LiveStream]:
        """A stream to ``target`` for SUBSCRIBE/MONITOR, logged in, kept fresh by rotations.

        Raises:
            ConnectError: see :func:`client.connection.open_authenticated_stream`.
        """
        opts, credential = await self.login(target)
        resp3 = self.cfg.protocol == 3
        stream = await open_authenticated_stream(opts, protocol=3 if resp3 else None)
        live = LiveStream(stream, target.address, credential, monitor=monitor, resp3=resp3)
        self._streams.add(live)
        try:
            if not _same_login(credential, self._credential):  # rotated while connecting
                await live.rotate(self._credential or credential)
            yield live
        finally:
            self._streams.discard(live)
            await trio.aclose_forcefully(stream)

    def follow(self, redirect: tuple[str, int, str, int], note: Callable[[str], None]) -> bool:
        """Make the node a MOVED/ASK names the node in use and announce it; True for ASK."""
        kind, slot, host, port = redirect
        self.current = self.current.at(host or self.current.host, port)
        self.shown = None
        self._topology = None if kind == "MOVED" else self._topology
        note(f"-> Redirected to slot [{slot}] located at {self.current.address}")
        return kind == "ASK"

    def redirect_of(self, reply: RespValue) -> tuple[str, int, str, int] | None:
        """The MOVED/ASK in ``reply`` when in cluster mode, else None."""
        if not (self.cfg.opts.cluster and isinstance(reply, ErrorReply)):
            return None
        return parse_redirect_reply(reply.message)

    # -- replica reads -------------------------------------------------------------------------

    @property
    def commands(self) -> CommandTable:
        """The cluster client's command table (the server's) once open, else the bundled one."""
        if self._cluster is not None:
            return self._cluster.commands
        return self._commands or CommandTable.bundled()

    def keyed_read(self, args: Sequence[bytes]) -> CommandSpec | None:
        """The spec of ``args`` when it is a read-only command whose keys share one slot.

        Other commands (and cross-slot reads, for the server's CROSSSLOT error and our hint)
        run on the node in use.
        """
        spec = self.commands.lookup(args)
        if spec is None or not spec.readonly:
            return None
        try:
            slots = {key_slot(args[i]) for i in self.commands.key_indexes(args)}
        except UnroutableError:
            return None
        return spec if len(slots) == 1 else None

    def has_keys(self, args: Sequence[bytes]) -> bool:
        try:
            return bool(self.commands.key_indexes(args))
        except UnroutableError:
            return False

    async def cluster_client(self) -> ClusterClient:
        """The cluster client for replica reads, opened (replicas probed) on first use, and
        again after a rotation (it logs in with the credential current when it opens)."""
        if self._cluster is not None and not _same_login(self._cluster_login, self._credential):
            self._retire_cluster()
        if self._cluster is None:
            opts, credential = await self.login(self.cfg.opts)
            stop = trio.Event()
            try:
                with trio.fail_after(3 * CONNECT_TIMEOUT):
                    client = await self._nursery.start(self._hold_cluster, opts, stop)
            except trio.TooSlowError:
                msg = f"the cluster behind {self.cfg.opts.address} did not answer in time"
                raise ConnectError(msg, hint="use --read-from master to skip replicas") from None
            self._cluster, self._cluster_stop, self._cluster_login = client, stop, credential
            self._commands = client.commands
        return self._cluster

    def _retire_cluster(self) -> None:
        """Close the cluster client; the next read opens a new one."""
        self._cluster_stop.set()
        self._cluster = self._cluster_login = None

    async def _hold_cluster(
        self,
        opts: ServerOptions,
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[ClusterClient] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_cluster(
            opts, protocol=self.cfg.protocol, read_from=self.cfg.read_from
        ) as client:
            task_status.started(client)
            await stop.wait()

    async def read_routed(self, args: Sequence[bytes]) -> tuple[RespValue, str]:
        """Run a read by the replica policy: the reply, and who answered (for the note).

        Raises:
            NoReplicaError: ``--read-from replica`` and the shard has no healthy replica.
        """
        with self.in_command():
            client = await self.cluster_client()
            try:
                fallbacks = client.statistics().master_fallbacks
                reply, node = await client.request_routed(*args)
            except ConnectError:
                if _same_login(self._cluster_login, self._credential):
                    raise
                # A login refused to a client opened with an older credential: a new client
                # logs in with the new one (a read may run twice).
                client = await self.cluster_client()
                fallbacks = client.statistics().master_fallbacks
                reply, node = await client.request_routed(*args)
        address = client.options_for(node).address
        self._answered.add(address)
        self.shown = address
        if not node.is_master:
            return reply, f"replica {address}"
        if client.statistics().master_fallbacks > fallbacks:
            return reply, f"master {address} (no healthy replica)"
        return reply, f"master {address}"

    # -- cluster views -------------------------------------------------------------------------

    def explain(self, exc: RedisConnectionError) -> RedisConnectionError:
        """Add a hint to a connection lost before the node ever answered (a TLS port?)."""
        first = self.current.address not in self._answered
        if isinstance(exc, ConnectionLost) and exc.hint is None and first:
            hint = "the server hung up before answering"
            if self.cfg.opts.tls is None:
                hint += ": is this a TLS port? try -t/--tls"
            return ConnectionLost(exc.message, hint=hint)
        return exc

    async def topology(self) -> Topology | None:
        """The cluster's topology (cached until a MOVED), or None for a standalone server."""
        if not self.cfg.opts.cluster:
            return None
        if self._topology is None:
            reply = await self.request([b"CLUSTER", b"SHARDS"])
            if isinstance(reply, ErrorReply):  # before Redis 7
                topology = parse_cluster_slots(await self.request([b"CLUSTER", b"SLOTS"]))
            else:
                topology = parse_cluster_shards(reply, tls=self.cfg.opts.tls is not None)
            self._topology = topology
        return self._topology


@asynccontextmanager
async def open_session(
    cfg: Settings, credentials: CredentialProvider | None = None
) -> AsyncIterator[Session]:
    """A :class:`Session` whose connections live as long as the ``async with`` block.

    With a rotating ``credentials`` provider its refresh loop runs meanwhile; its first fetch
    happens before this yields.

    Raises:
        ConnectError: the first fetch of a rotating credential failed (one redacted line).
    """
    async with open_service_nursery() as nursery:
        session = Session(cfg, nursery, credentials)
        if credentials is not None and credentials.dynamic:
            session._learn(await nursery.start(credentials.serve_refresh, session.rotate))
        try:
            yield session
        finally:
            session.drop_all()
            session._retire_cluster()
