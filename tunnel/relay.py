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
#    carry). In pinned mode the pairing FIFO is bounded too (the request side waits when it
#    holds MAX_BACKLOG distinct entries).
#
# Requests are always scanned (tunnel.tracking.RequestScanner): for Redis's protocol limits,
# the guard and local-password interception. Replies are scanned only in pinned mode, where a
# few of them are rewritten; in standalone mode they are forwarded untouched.
#
# Ending: the client closing ends the session at once (Redis drops pending replies on EOF
# too). The upstream closing (or dying mid-pipeline) closes the client after what was already
# received has been forwarded, so every waiting command sees its connection close: nothing
# hangs.
#
# Malformed requests: before the local-password gate opens, the tunnel answers
# "-ERR Protocol error: ..." itself (nothing is in flight) and closes. In pinned mode the
# valid requests before the bad one are forwarded, their replies are awaited (bounded), then
# the error is sent and the client closed. In standalone mode the bytes are forwarded as they
# are: Redis has the same limits and messages and answers them in order, then closes, and the
# tunnel closes the client with it. A wrong password in a later AUTH gets -WRONGPASS and the
# connection is closed (the reply cannot be put in order in an untracked standalone stream).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from client.errors import RedisToolkitError, RespProtocolError
from client.resp import encode_command
from tunnel.rewrite import AddressBook, Missing
from tunnel.tracking import (
    CROSS_PROTOCOL,
    Captured,
    Command,
    CrossProtocol,
    ReplyScanner,
    ReplyTracker,
    RequestScanner,
    render,
)

__all__ = ["Pinning", "RelaySettings", "RelayStats", "serve_relay"]

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
#: Distinct entries in a pinned client's pairing FIFO before its requests wait for replies.
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
class RelaySettings:
    """How to relay one listener's clients.

    Attributes:
        dial: opens an authenticated upstream stream (raises RedisToolkitError).
        local_password: the password clients must AUTH with first, or None.
        upstream_username, upstream_password: the tunnel's own login, which replaces a
            client's re-AUTH after the gate.
        pinning: address rewriting for a pinned listener, None for standalone.
        stats: counters to update.
    """

    dial: Callable[[], Awaitable[trio.abc.Stream]]
    local_password: str | None = field(default=None, repr=False)
    upstream_username: str = "default"
    upstream_password: str | None = field(default=None, repr=False)
    pinning: Pinning | None = None
    stats: RelayStats = field(default_factory=RelayStats)


class _Close(Exception):
    """End the session, optionally sending the client one last reply."""

    def __init__(self, reply: bytes | None) -> None:
        super().__init__()
        self.reply = reply


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class _Session:
    """The state of one client connection (see the module notes)."""

    def __init__(self, client: trio.abc.Stream, settings: RelaySettings) -> None:
        self.client = client
        self.settings = settings
        self.upstream: trio.abc.Stream | None = None
        self.close_reply: bytes | None = None
        pin = settings.pinning
        self.tracker = ReplyTracker() if pin is not None else None
        self.replies = ReplyScanner(self.tracker) if self.tracker is not None else None
        secret = settings.local_password
        intercept = frozenset((b"AUTH", b"HELLO")) if secret is not None else frozenset()
        self.requests = RequestScanner(track=pin is not None, intercept=intercept)
        self.gated = secret is not None
        self.requests.capture_all = self.gated
        self.passthrough = False  # forward requests unscanned from now on
        self.violation: bytes | None = None  # a protocol error to report once replies are out
        self.progress = trio.Event()

    # -- phase 1 and 2 ------------------------------------------------------------------------

    async def open(self) -> list[bytes] | None:
        """Run the gate and dial; return the first batch to forward (None: the session ends)."""
        try:
            while True:
                data = await self.client.receive_some(RECEIVE_SIZE)
                if not data:
                    return None
                first = await self._process(self.requests.feed(bytes(data)))
                if first:
                    break
        except _Close as close:
            self.close_reply = close.reply
            return None
        except _GONE:
            return None
        try:
            self.upstream = await self.settings.dial()
        except RedisToolkitError as exc:
            self.settings.stats.upstream_failures += 1
            log.warning("upstream unavailable: %s", exc)
            if self.settings.pinning is None:
                self.close_reply = exc.resp_line()
            return None
        return first

    # -- phase 3 ------------------------------------------------------------------------------

    async def pump_requests(self, first: list[bytes]) -> None:
        """Client -> upstream, until the client closes or must be closed."""
        upstream = self.upstream
        assert upstream is not None
        client = self.client
        scanner = self.requests
        tracker = self.tracker
        try:
            out = first
            while True:
                if out:
                    await upstream.send_all(out[0] if len(out) == 1 else b"".join(out))
                if self.violation is not None:
                    await self._drain()
                    raise _Close(self.violation)
                if self._unscanned():
                    await self._forward_raw()
                    return
                if tracker is not None:
                    while tracker.backlog > MAX_BACKLOG:
                        self.progress = trio.Event()
                        await self.progress.wait()
                data = await client.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                items = scanner.feed(bytes(data))
                if len(items) == 1 and type(items[0]) is bytes:
                    out = items  # type: ignore[assignment]
                else:
                    out = await self._process(items)
        except _Close as close:
            self.close_reply = close.reply
        except _GONE:
            pass

    async def pump_replies(self, done: trio.CancelScope) -> None:
        """Upstream -> client, until the upstream closes; then end the session."""
        upstream = self.upstream
        assert upstream is not None
        client = self.client
        scanner = self.replies
        try:
            while True:
                data = await upstream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                if scanner is not None:
                    items = scanner.feed(bytes(data))
                    if len(items) == 1 and type(items[0]) is bytes:
                        data = items[0]
                    else:
                        data = await self._render(items)
                        if not data:
                            continue
                await client.send_all(data)
                self.progress.set()
        except RespProtocolError as exc:
            log.warning("upstream sent invalid RESP: %s", exc)
        except _GONE:
            pass
        finally:
            done.cancel()

    def _unscanned(self) -> bool:
        """Whether requests can go through without scanning from now on.

        Standalone without a local password: after the first batch (checked against the
        cross-protocol guard before dialling) nothing in the requests concerns the tunnel.
        Redis enforces the same protocol limits and guard, and answers with the same errors
        after the replies to what came before, so the bytes go through unscanned. The same
        holds after a standalone client sent malformed input (see _process).
        """
        return self.passthrough or (self.tracker is None and not self.requests.intercept)

    async def _forward_raw(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        held = self.requests.detach()  # a partial frame head the scanner kept back
        if held:
            await upstream.send_all(held)
        receive = self.client.receive_some
        send = upstream.send_all
        while True:
            data = await receive(RECEIVE_SIZE)
            if not data:
                return
            await send(data)

    async def _drain(self) -> None:
        """Wait (bounded) until the replies to everything forwarded have reached the client."""
        tracker = self.tracker
        assert tracker is not None
        with trio.move_on_after(CLOSE_GRACE):
            while tracker.pending:
                self.progress = trio.Event()
                await self.progress.wait()

    async def finish(self) -> None:
        """Send the closing reply, if any (bounded)."""
        if self.close_reply:
            with trio.move_on_after(CLOSE_GRACE):
                try:
                    await self.client.send_all(self.close_reply)
                except _GONE:
                    pass

    async def aclose(self) -> None:
        if self.upstream is not None:
            await trio.aclose_forcefully(self.upstream)
        await trio.aclose_forcefully(self.client)

    # -- requests -----------------------------------------------------------------------------

    async def _process(self, items: list[_Item]) -> list[bytes]:
        """Turn scanner output into the bytes to forward; file notes; answer the gate."""
        out: list[bytes] = []
        tracker = self.tracker
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
        assert secret is not None
        name = cmd.name
        args = [a or b"" for a in cmd.args]
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
        await self.client.send_all(data)

    def _upstream_auth(self) -> bytes:
        s = self.settings
        return encode_command(b"AUTH", s.upstream_username, s.upstream_password or "nopass")

    def _upstream_hello(self, rest: list[bytes]) -> bytes:
        s = self.settings
        args: list[bytes | str] = [b"HELLO", *rest[:1]]
        if s.upstream_password is not None and rest:
            args += [b"AUTH", s.upstream_username, s.upstream_password]
        args += rest[1:]
        return encode_command(*args)

    # -- replies ------------------------------------------------------------------------------

    async def _render(self, items: list[bytes | Captured]) -> bytes:
        pin = self.settings.pinning
        assert pin is not None
        stats = self.settings.stats
        parts: list[bytes] = []
        for item in items:
            if type(item) is bytes:
                parts.append(item)
                continue
            assert isinstance(item, Captured)
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
        await session.aclose()
