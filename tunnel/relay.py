"""The byte relay for one client connection (standalone and pinned modes).

Theory of operation
-------------------
# A client connection goes through three phases:
#
# 1. The gate. Nothing is dialled until the client has sent something worth forwarding, so an
#    idle connection costs no upstream TLS session, and an HTTP request from a browser (the
#    cross-protocol guard: POST / Host:) never reaches the server. With --local-password the
#    client must AUTH (or HELLO ... AUTH) first: the tunnel answers those frames itself, exactly
#    as Redis would (+OK, -WRONGPASS, -NOAUTH), one at a time, before anything is in flight.
# 2. The dial: a new upstream connection per client, TLS and login done by client.connection.
#    When that fails, a standalone client gets "-ERR <why>" and is closed; a pinned client is
#    just closed, because cluster clients (redis-py, ...) treat a closed connection as a node
#    problem and refresh their topology, whereas an -ERR would reach the application.
# 3. The relay: two tasks, one per direction, each reading up to 64 KiB and writing what it
#    read in one send. Neither waits for the other (no lockstep): any pipeline depth, any reply
#    size, pub/sub, MULTI, blocking commands and RESP3 pass through. Backpressure is the pumps
#    themselves: a task blocked writing to a peer that does not read stops reading from the
#    other side, so each direction holds at most one chunk (plus the scanners' small, bounded
#    carry). When replies are paired, the pairing FIFO is bounded too (the request side waits
#    when it holds MAX_BACKLOG distinct entries).
#
# How much a connection scans depends on what the tunnel must know (the cheapest that works):
#   - raw (standalone, the default): requests are scanned only up to the first batch (guard,
#     limits), then forwarded unscanned; replies are never scanned;
#   - counting (standalone with --dashboard/--stats): requests as raw; replies are scanned to
#     count them (tunnel.tracking.CountingTracker), which costs a fraction of a microsecond
#     per reply, with a fast path for simple replies;
#   - paired (pinned, and standalone with a rotating credential): every request and reply
#     frame is scanned and paired (tunnel.tracking.ReplyTracker). Pinned mode rewrites a few
#     replies; a rotating credential needs frame boundaries and the pairing to re-AUTH.
# With --local-password requests are scanned throughout (AUTH and HELLO are intercepted).
#
# Statistics (tunnel.stats; only with a meter): per chunk, bytes in and out, replies
# answered and one latency sample (ConnectionCounters.record with the chunk's reply count).
# Latency runs from the first request chunk received since the previous reply chunk to the
# reply chunk leaving the tunnel: exact for clients that wait for their replies (one batch per
# round trip: redis-benchmark -P N, redis-py, ...), an underestimate for a client that keeps
# sending while replies stream back. Error lines are counted (MOVED/ASK apart) and looked at
# for TUNNEL (below). The server publishes every live connection's counters once a second.
#
# TUNNEL INFO: the relays do not look for it in the requests (that would cost the raw path).
# It goes to the server, which answers "-ERR unknown command 'TUNNEL', with args beginning
# with: 'INFO'" in the right place of the reply stream; a counting or paired relay replaces
# that error with the tunnel's answer (tunnel.stats.tunnel_args, tunnel_reply). Inside MULTI
# the server has already failed the transaction, as for any unknown command. Without
# statistics the server's error reaches the client unchanged.
#
# Live re-AUTH (a paired relay with a Reauth): Reauth.rotate() marks every live connection;
# the request task (woken from its read, if idle) sends "AUTH user pass" upstream at the next
# request frame boundary where the reply is sure to come back in order: not inside MULTI, not
# while subscribed (or subscribing) in RESP2, not after MONITOR, not under CLIENT REPLY
# OFF/SKIP. It files an INJECTED note, so the reply task swallows exactly that reply; a
# refused AUTH is logged (once per rotation) and the connection keeps its previous login. A
# client that logs in itself (AUTH or HELLO ... AUTH, without --local-password) keeps its own
# login: the tunnel stops re-authenticating that connection. New connections dial with the
# current credential.
#
# Ending: the client closing ends the session at once (Redis drops pending replies on EOF
# too). The upstream closing (or dying mid-pipeline) closes the client after what was already
# received has been forwarded, so every waiting command sees its connection close: nothing
# hangs.
#
# Malformed requests: before the local-password gate opens, the tunnel answers
# "-ERR Protocol error: ..." itself (nothing is in flight) and closes. When requests are paired
# the valid requests before the bad one are forwarded, their replies are awaited (bounded), then
# the error is sent and the client closed. Otherwise the bytes are forwarded as they are: Redis
# has the same limits and messages and answers them in order, then closes, and the tunnel
# closes the client with it. A wrong password in a later AUTH gets -WRONGPASS and the
# connection is closed (the reply cannot be put in order in an unpaired stream).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from client.credentials import Credential
from client.errors import RedisToolkitError, RespProtocolError
from client.resp import encode_command
from tunnel.rewrite import AddressBook, Missing
from tunnel.stats import (
    LOCAL_NODE,
    ConnectionCounters,
    LiveCounters,
    is_tunnel_info,
    tunnel_args,
    tunnel_reply,
)
from tunnel.tracking import (
    CROSS_PROTOCOL,
    Captured,
    Command,
    CountingTracker,
    CrossProtocol,
    ReplyScanner,
    ReplyTracker,
    RequestScanner,
    render,
)

__all__ = ["Meter", "Pinning", "Reauth", "RelaySettings", "RelayStats", "serve_relay"]

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
#: Distinct entries in a paired client's FIFO before its requests wait for replies.
MAX_BACKLOG = 65536
#: How long a closing reply (-ERR Protocol error ...) may take to write.
CLOSE_GRACE = 1.0

_OK = b"+OK\r\n"
_NOAUTH = b"-NOAUTH Authentication required.\r\n"
_WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
_HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    b"HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    b"select the RESP protocol version at the same time\r\n"
)
_AUTH_ARITY = b"-ERR wrong number of arguments for 'auth' command\r\n"
_LOGINS = frozenset((b"AUTH", b"HELLO"))

_Item = bytes | int | Command | CrossProtocol | RespProtocolError


@dataclass
class RelayStats:
    """Counters shared by every connection of one tunnel (read them for tests and bench)."""

    active: int = 0
    accepted: int = 0
    upstream_failures: int = 0
    protocol_errors: int = 0
    cross_protocol: int = 0
    auth_failures: int = 0
    rewritten: int = 0
    suppressed: int = 0
    unrewritable: int = 0
    reauths: int = 0
    reauths_refused: int = 0


@dataclass(frozen=True)
class Pinning:
    """What a pinned connection needs to rewrite addresses.

    Attributes:
        book: upstream node -> local listener (shared, updated by the server).
        origin: the host of the node this connection relays to (for empty endpoints).
        prefer_tls: the tunnel dials TLS (CLUSTER SHARDS ``tls-port`` names the node).
        ensure: opens listeners for nodes a reply names that have none yet.
    """

    book: AddressBook
    origin: str
    prefer_tls: bool
    ensure: Callable[[Missing], Awaitable[None]]


@dataclass(frozen=True)
class Meter:
    """Statistics for the relays of one tunnel process (``--dashboard``, ``--stats``).

    Attributes:
        live: the open connections' counters (published once a second by the server).
        info: the ``TUNNEL INFO`` text (a worker process asks its parent for it).
    """

    live: LiveCounters
    info: Callable[[], Awaitable[bytes]]


class Reauth:
    """Live re-AUTH for the relays of one tunnel process (see the module notes).

    ``current`` is the login new upstream connections use. :meth:`rotate` installs a new one,
    asks every live connection to log in again with it, and tells the subscribers (worker
    processes, other relays).
    """

    def __init__(self, credential: Credential) -> None:
        self.current = credential
        self.rotations = 0
        self._sessions: set[_Session] = set()
        self._subscribers: list[Callable[[Credential], None]] = []
        self._warned = -1

    @property
    def connections(self) -> int:
        """Live upstream connections that follow the rotations."""
        return len(self._sessions)

    def subscribe(self, callback: Callable[[Credential], None]) -> None:
        """Call ``callback`` with every credential :meth:`rotate` installs."""
        self._subscribers.append(callback)

    def rotate(self, credential: Credential) -> int:
        """Install ``credential``; return how many live connections will re-AUTH with it."""
        self.current = credential
        self.rotations += 1
        for session in list(self._sessions):
            session.reauth_due(credential)
        for callback in self._subscribers:
            callback(credential)
        return len(self._sessions)

    def _add(self, session: _Session) -> None:
        self._sessions.add(session)

    def _discard(self, session: _Session) -> None:
        self._sessions.discard(session)

    def _refused(self, where: str, reply: bytes) -> None:
        if self._warned == self.rotations:
            return
        self._warned = self.rotations
        text = reply[1:].decode("utf-8", "replace").strip()
        log.error(
            "re-AUTH with the new credential refused by %s: %s (that connection, and any "
            "other refused, keeps its previous login)",
            where,
            text,
        )


@dataclass(frozen=True)
class RelaySettings:
    """How to relay one listener's clients.

    Attributes:
        dial: opens an authenticated upstream stream (raises RedisToolkitError); with
            ``reauth`` it logs in with ``reauth.current``.
        local_password: the password clients must AUTH with first, or None.
        upstream_username, upstream_password: the tunnel's own login, which replaces a
            client's re-AUTH after the gate (``reauth.current`` instead, when set).
        pinning: address rewriting for a pinned listener, None for standalone.
        stats: counters to update.
        meter: statistics (tunnel.stats), or None to count nothing.
        node: the upstream node's ``host:port``: where this listener's statistics go.
        reauth: live re-AUTH with a rotating credential, or None.
    """

    dial: Callable[[], Awaitable[trio.abc.Stream]]
    local_password: str | None = field(default=None, repr=False)
    upstream_username: str = "default"
    upstream_password: str | None = field(default=None, repr=False)
    pinning: Pinning | None = None
    stats: RelayStats = field(default_factory=RelayStats)
    meter: Meter | None = None
    node: str = ""
    reauth: Reauth | None = None


class _Close(Exception):
    """End the session, optionally sending the client one last reply."""

    def __init__(self, reply: bytes | None) -> None:
        super().__init__()
        self.reply = reply


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


def _auth_frame(username: str, password: str) -> bytes:
    """``AUTH`` as client.connection logs in (the one-argument form for ``default``)."""
    if username and username != "default":
        return encode_command(b"AUTH", username, password)
    return encode_command(b"AUTH", password)


class _Session:
    """The state of one client connection (see the module notes)."""

    def __init__(self, client: trio.abc.Stream, settings: RelaySettings) -> None:
        self.client = client
        self.settings = settings
        self.upstream: trio.abc.Stream | None = None
        self.close_reply: bytes | None = None
        self.reauth = settings.reauth
        self.paired = settings.pinning is not None or self.reauth is not None
        meter = settings.meter
        tracker: ReplyTracker | None = None
        if self.paired:
            tracker = ReplyTracker()
        elif meter is not None:
            tracker = CountingTracker()
        self.tracker = tracker
        #: The tracker the request side files notes with (paired relays only).
        self.pairing = tracker if self.paired else None
        self.replies = ReplyScanner(tracker) if tracker is not None else None
        secret = settings.local_password
        intercept = _LOGINS if secret is not None or self.reauth is not None else frozenset()
        self.requests = RequestScanner(track=self.paired, intercept=intercept)
        self.gated = secret is not None
        self.requests.capture_all = self.gated
        self.passthrough = False  # forward requests unscanned from now on
        self.violation: bytes | None = None  # a protocol error to report once replies are out
        self.progress = trio.Event()
        # Statistics (see the module notes).
        self.counters: ConnectionCounters | None = (
            meter.live.open(settings.node) if meter is not None else None
        )
        self.t_wait = 0  # first request chunk since the last reply chunk (perf_counter_ns)
        self.t_ref = time.perf_counter_ns()  # what the latest replies answer
        self.answered = 0  # tracker.answered already counted
        self.local_answers = 0  # replies the tunnel made in place of the server's
        self.local_bytes = 0
        self.last_request: bytes | bytearray = b""
        self.upstream_lost = False
        # Live re-AUTH.
        self.auth_due: Credential | None = None
        self.client_login = False  # the client logged in itself: leave its login alone
        self.wake: trio.CancelScope | None = None

    # -- phase 1 and 2 ------------------------------------------------------------------------

    async def open(self) -> list[bytes] | None:
        """Run the gate and dial; return the first batch to forward (None: the session ends)."""
        try:
            while True:
                data = await self.client.receive_some(RECEIVE_SIZE)
                if not data:
                    return None
                self._received(data)
                first = await self._process(self.requests.feed(bytes(data)))
                if first:
                    break
        except _Close as close:
            self.close_reply = close.reply
            return None
        except _GONE:
            return None
        reauth = self.reauth
        login = reauth.current if reauth is not None else None
        try:
            self.upstream = await self.settings.dial()
        except RedisToolkitError as exc:
            self.settings.stats.upstream_failures += 1
            meter = self.settings.meter
            if meter is not None:
                meter.live.stats.node(self.settings.node).errors += 1
            log.warning("upstream unavailable: %s", exc)
            if self.settings.pinning is None:
                self.close_reply = exc.resp_line()
            return None
        if reauth is not None and not self.client_login:
            reauth._add(self)
            if reauth.current is not login:
                self.auth_due = reauth.current  # rotated while dialling
        return first

    # -- phase 3 ------------------------------------------------------------------------------

    async def pump_requests(self, first: list[bytes]) -> None:
        """Client -> upstream, until the client closes or must be closed."""
        upstream = self.upstream
        assert upstream is not None
        scanner = self.requests
        pairing = self.pairing
        try:
            out = first
            while True:
                if out:
                    await upstream.send_all(out[0] if len(out) == 1 else b"".join(out))
                if self.violation is not None:
                    await self._drain()
                    raise _Close(self.violation)
                if self.auth_due is not None:
                    await self._inject_auth()
                if self._unscanned():
                    await self._forward_raw()
                    return
                if pairing is not None:
                    while pairing.backlog > MAX_BACKLOG:
                        self.progress = trio.Event()
                        await self.progress.wait()
                data = await self._receive()
                if data is None:
                    out = []  # woken: a re-AUTH is due
                    continue
                if not data:
                    return
                if self.auth_due is not None:
                    await self._inject_auth()  # before these bytes: the state may allow it now
                self._received(data)
                items = scanner.feed(data)
                if len(items) == 1 and type(items[0]) is bytes:
                    out = items  # type: ignore[assignment]
                else:
                    out = await self._process(items)
        except _Close as close:
            self.close_reply = close.reply
        except _GONE:
            pass

    async def _receive(self) -> bytes | None:
        """The next chunk from the client (``b""``: it closed); None when woken for a re-AUTH.

        Only the read itself runs in the wake-up scope, so a wake-up never interrupts a write
        (a chunk that arrived just before it is returned as usual).
        """
        if self.reauth is None:
            return bytes(await self.client.receive_some(RECEIVE_SIZE))
        with trio.CancelScope() as scope:
            self.wake = scope
            try:
                return bytes(await self.client.receive_some(RECEIVE_SIZE))
            finally:
                self.wake = None
        return None

    def _received(self, data: bytes | bytearray) -> None:
        counters = self.counters
        if counters is not None:
            counters.bytes_in += len(data)
            if not self.t_wait:
                self.t_wait = time.perf_counter_ns()
            self.last_request = data[-16:]

    async def pump_replies(self, done: trio.CancelScope) -> None:
        """Upstream -> client, until the upstream closes; then end the session."""
        upstream = self.upstream
        assert upstream is not None
        client = self.client
        scanner = self.replies
        counters = self.counters
        try:
            while True:
                try:
                    data = await upstream.receive_some(RECEIVE_SIZE)
                except _GONE:
                    data = b""
                if not data:
                    self.upstream_lost = True
                    break
                if scanner is not None:
                    items = scanner.feed(bytes(data))
                    if len(items) == 1 and type(items[0]) is bytes:
                        data = items[0]
                    else:
                        data = await self._render(items)
                if data:
                    await client.send_all(data)
                self.progress.set()
                if counters is not None:
                    self._count_replies(counters, len(data))
                if self.auth_due is not None and self.wake is not None:
                    pairing = self.pairing
                    if pairing is not None and pairing.may_inject() and self.requests.at_boundary:
                        self.wake.cancel()  # the state now allows the re-AUTH
        except RespProtocolError as exc:
            self.upstream_lost = True
            log.warning("upstream sent invalid RESP: %s", exc)
        except _GONE:
            pass
        finally:
            done.cancel()

    def _count_replies(self, counters: ConnectionCounters, size: int) -> None:
        """Statistics for one reply chunk that went to the client."""
        tracker = self.tracker
        assert tracker is not None
        counters.bytes_out += size
        answered = tracker.answered
        count = answered - self.answered
        if not count:
            return
        self.answered = answered
        if self.local_answers:
            count -= self.local_answers
            counters.bytes_out -= self.local_bytes
            self.local_answers = self.local_bytes = 0
        if self.t_wait:
            self.t_ref = self.t_wait
            self.t_wait = 0
        if count > 0:
            counters.record(time.perf_counter_ns() - self.t_ref, count)

    def _unscanned(self) -> bool:
        """Whether requests can go through without scanning from now on.

        Standalone without a local password or pairing: after the first batch (checked
        against the cross-protocol guard before dialling) nothing in the requests concerns
        the tunnel. Redis enforces the same protocol limits and guard, and answers with the
        same errors after the replies to what came before, so the bytes go through unscanned.
        The same holds after a standalone client sent malformed input (see _process).
        """
        return self.passthrough or (not self.paired and not self.requests.intercept)

    async def _forward_raw(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        held = self.requests.detach()  # a partial frame head the scanner kept back
        if held:
            await upstream.send_all(held)
        receive = self.client.receive_some
        send = upstream.send_all
        counters = self.counters
        if counters is None:
            while True:
                data = await receive(RECEIVE_SIZE)
                if not data:
                    return
                await send(data)
        clock = time.perf_counter_ns
        while True:
            data = await receive(RECEIVE_SIZE)
            if not data:
                return
            counters.bytes_in += len(data)
            if not self.t_wait:
                self.t_wait = clock()
            self.last_request = data[-16:]
            await send(data)

    async def _drain(self) -> None:
        """Wait (bounded) until the replies to everything forwarded have reached the client."""
        tracker = self.pairing
        assert tracker is not None
        with trio.move_on_after(CLOSE_GRACE):
            while tracker.pending:
                self.progress = trio.Event()
                await self.progress.wait()

    async def finish(self) -> None:
        """Send the closing reply, if any (bounded)."""
        if self.close_reply:
            self._local(self.close_reply)
            with trio.move_on_after(CLOSE_GRACE):
                try:
                    await self.client.send_all(self.close_reply)
                except _GONE:
                    pass

    def release(self) -> None:
        """Publish the last statistics; leave the re-AUTH set."""
        if self.reauth is not None:
            self.reauth._discard(self)
        meter = self.settings.meter
        if meter is not None and self.counters is not None:
            if self.upstream_lost and not self._quit():
                meter.live.stats.upstream_reconnect(self.settings.node)
            meter.live.close(self.counters)

    def _quit(self) -> bool:
        """Whether the client's last request was QUIT (the server closing is then normal)."""
        return self.last_request.rstrip().upper().endswith(b"QUIT")

    async def aclose(self) -> None:
        if self.upstream is not None:
            await trio.aclose_forcefully(self.upstream)
        await trio.aclose_forcefully(self.client)

    # -- live re-AUTH ---------------------------------------------------------------------------

    def reauth_due(self, credential: Credential) -> None:
        """Log in again with ``credential`` as soon as the connection allows it."""
        if self.client_login:
            return
        self.auth_due = credential
        if self.wake is not None:
            self.wake.cancel()

    async def _inject_auth(self) -> None:
        """Send the due ``AUTH`` now if the state allows (else it waits for a later chance)."""
        credential = self.auth_due
        pairing = self.pairing
        upstream = self.upstream
        if credential is None or pairing is None or upstream is None or self.client_login:
            self.auth_due = None
            return
        if not (self.requests.at_boundary and pairing.may_inject()):
            return
        self.auth_due = None
        if not credential.password:
            return  # "do not log in": nothing to send
        pairing.push_injected()
        await upstream.send_all(_auth_frame(credential.username, credential.password))
        self.settings.stats.reauths += 1

    # -- requests -----------------------------------------------------------------------------

    async def _process(self, items: list[_Item]) -> list[bytes]:
        """Turn scanner output into the bytes to forward; file notes; answer the gate."""
        out: list[bytes] = []
        tracker = self.pairing
        while True:
            for item in items:
                if type(item) is bytes:
                    if not self.gated and item:
                        out.append(item)
                elif type(item) is int:
                    if tracker is not None:
                        tracker.push_plain(item)
                elif type(item) is Command:
                    if item.frame is None:
                        if tracker is not None:
                            tracker.on_request(item)
                        continue
                    frame = await self._intercepted(item)
                    if frame is not None:
                        if tracker is not None:
                            tracker.on_request(item)
                        out.append(frame)
                elif item is CROSS_PROTOCOL:
                    self.settings.stats.cross_protocol += 1
                    log.warning("closed a client that spoke HTTP (cross-protocol guard)")
                    raise _Close(None)
                elif isinstance(item, RespProtocolError):
                    self.settings.stats.protocol_errors += 1
                    if self.gated:
                        raise _Close(item.resp_line())  # nothing is in flight: answer now
                    if tracker is None:
                        # Redis answers malformed input itself, in order, then closes.
                        out.append(self.requests.rest)
                        self.passthrough = True
                    else:
                        self.violation = item.resp_line()
                    return out
            if not self.requests.paused:
                return out
            items = self.requests.feed(b"")

    async def _intercepted(self, cmd: Command) -> bytes | None:
        """A captured AUTH/HELLO (or any frame before the gate opens): what to forward."""
        secret = self.settings.local_password
        name = cmd.name
        args = [a or b"" for a in cmd.args]
        if secret is None:
            # Re-AUTH without a local password: a client that logs in itself keeps its login.
            if name == b"AUTH" or _split_hello_auth(args)[1] is not None:
                self.client_login = True
                self.auth_due = None
                if self.reauth is not None:
                    self.reauth._discard(self)
            return cmd.frame
        if name == b"AUTH":
            if len(args) not in (1, 2):
                if self.gated:
                    await self._reply(_AUTH_ARITY)
                    return None
                return cmd.frame
            if not _same(args[-1], secret):
                self.settings.stats.auth_failures += 1
                if self.gated:
                    await self._reply(_WRONGPASS)
                    return None
                raise _Close(_WRONGPASS)
            if self.gated:
                self._open_gate()
                await self._reply(_OK)
                return None
            return self._upstream_auth()
        if name == b"HELLO":
            rest, password = _split_hello_auth(args)
            if password is None:
                if self.gated:
                    await self._reply(_HELLO_NOAUTH)
                    return None
                return cmd.frame
            if not _same(password, secret):
                self.settings.stats.auth_failures += 1
                if self.gated:
                    await self._reply(_WRONGPASS)
                    return None
                raise _Close(_WRONGPASS)
            self._open_gate()
            return self._upstream_hello(rest)
        if name == b"QUIT":
            await self._reply(_OK)
            raise _Close(None)
        await self._reply(_NOAUTH)
        return None

    def _open_gate(self) -> None:
        self.gated = False
        self.requests.capture_all = False

    async def _reply(self, data: bytes) -> None:
        # Only ever called before the relay starts: nothing else writes to the client then.
        self._local(data)
        await self.client.send_all(data)

    def _local(self, reply: bytes) -> None:
        """Count a reply the tunnel made itself (statistics of the pseudo-node "tunnel")."""
        meter = self.settings.meter
        if meter is not None:
            entry = meter.live.stats.node(LOCAL_NODE)
            entry.ops += 1
            entry.bytes_out += len(reply)
            if reply.startswith(b"-"):
                entry.errors += 1

    def _login(self) -> tuple[str, str | None]:
        reauth = self.reauth
        if reauth is not None:
            return reauth.current.username, reauth.current.password or None
        return self.settings.upstream_username, self.settings.upstream_password

    def _upstream_auth(self) -> bytes:
        username, password = self._login()
        return encode_command(b"AUTH", username, password or "nopass")

    def _upstream_hello(self, rest: list[bytes]) -> bytes:
        username, password = self._login()
        args: list[bytes | str] = [b"HELLO", *rest[:1]]
        if password is not None and rest:
            args += [b"AUTH", username, password]
        args += rest[1:]
        return encode_command(*args)

    # -- replies ------------------------------------------------------------------------------

    async def _render(self, items: list[bytes | Captured]) -> bytes:
        pin = self.settings.pinning
        stats = self.settings.stats
        parts: list[bytes] = []
        for item in items:
            if type(item) is bytes:
                parts.append(item)
                continue
            assert isinstance(item, Captured)
            frame = item.frame
            if item.injected:
                if not frame.startswith(b"+"):
                    stats.reauths_refused += 1
                    if self.reauth is not None:
                        self.reauth._refused(self.settings.node, frame)
                continue
            if not item.push and frame.startswith(b"-"):
                local = await self._error_line(frame)
                if local is not None:
                    parts.append(local)
                    continue
            if pin is None:
                parts.append(frame)
                continue
            result = render(item, pin.book, pin.origin, prefer_tls=pin.prefer_tls)
            if isinstance(result, Missing):
                await pin.ensure(result)
                result = render(item, pin.book, pin.origin, prefer_tls=pin.prefer_tls)
                if isinstance(result, Missing):
                    stats.unrewritable += 1
                    log.warning("no listener for %s: reply forwarded unchanged", result.nodes)
                    result = item.frame
            if result is not item.frame and result != item.frame:
                if result:
                    stats.rewritten += 1
                else:
                    stats.suppressed += 1
            parts.append(result)
        return b"".join(parts)

    async def _error_line(self, frame: bytes) -> bytes | None:
        """Count an error reply; the tunnel's own answer when it is the server's reply to a
        ``TUNNEL`` command (see the module notes), else None (forward it)."""
        counters = self.counters
        if frame.startswith(b"-MOVED "):
            if counters is not None:
                counters.moved += 1
            return None
        if frame.startswith(b"-ASK "):
            if counters is not None:
                counters.ask += 1
            return None
        meter = self.settings.meter
        if meter is not None:
            args = tunnel_args(frame)
            if args is not None:
                if is_tunnel_info(args):
                    text = await meter.info()
                    reply = b"$%d\r\n%s\r\n" % (len(text), text)
                else:
                    reply = tunnel_reply(meter.live.stats, args)
                self._local(reply)
                self.local_answers += 1
                self.local_bytes += len(reply)
                return reply
        if counters is not None:
            counters.errors += 1
        return None


def _same(given: bytes, secret: str) -> bool:
    return hmac.compare_digest(given, secret.encode())


def _split_hello_auth(args: list[bytes]) -> tuple[list[bytes], bytes | None]:
    """HELLO's arguments without ``AUTH user pass``, and that password (None when absent)."""
    rest: list[bytes] = []
    password: bytes | None = None
    i = 0
    while i < len(args):
        if args[i].upper() == b"AUTH" and i > 0 and i + 2 < len(args):
            password = args[i + 2]
            i += 3
            continue
        rest.append(args[i])
        i += 1
    return rest, password


async def serve_relay(client: trio.abc.Stream, settings: RelaySettings) -> None:
    """Relay one client connection until either side closes (see the module notes).

    Never raises for network trouble; the client stream is always closed on return.
    """
    stats = settings.stats
    stats.accepted += 1
    stats.active += 1
    session = _Session(client, settings)
    try:
        first = await session.open()
        if first is not None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.pump_replies, nursery.cancel_scope)
                await session.pump_requests(first)
                nursery.cancel_scope.cancel()
        await session.finish()
    finally:
        stats.active -= 1
        session.release()
        await session.aclose()
