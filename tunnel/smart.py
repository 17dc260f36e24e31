"""Smart mode: a whole TLS cluster behind one plaintext listener, as one standalone Redis.

Theory of operation
-------------------
# A client session (_Session) has a reader, which parses the client's commands and routes each
# one (tunnel.route) *synchronously*, and a writer, which sends replies back. Every command gets
# a holder (_Item) appended to the session's reply queue in request order; the writer takes
# holders from the head as soon as they are complete and coalesces every ready reply into one
# write. So replies keep the client's order even when consecutive commands run on different
# nodes, and a slow node delays only the replies behind it.
#
# Upstream links (_Link) are pipelined connections to one node: one writer task that sends
# everything queued in one write, one reader task that scans reply frames (client.resp
# FrameScanner, no value parsing) and completes the FIFO of pending holders. Many sessions
# share a small pool of links per node ("pool_size"); a session always uses the same link of a
# node (its id modulo the pool size), so its commands to one node keep their order on the wire
# (a SET then a GET of the same key cannot overtake each other).
#
# RESP2 and RESP3. Shared links come in two flavours per node, opened lazily: plain RESP2 ones,
# and RESP3 ones (HELLO 3) used by clients that said HELLO 3. A reply from the node is then
# already in the client's protocol and is forwarded byte for byte: no parsing, no downgrade
# tables (RESP3 ZRANGE WITHSCORES or XREAD are not a mechanical conversion of RESP2). Only the
# replies the tunnel builds or merges are encoded, with client.resp.encode_value(resp3=...).
#
# The hot path (profiled with redis-benchmark -P 1 and -P 16) costs one parse and one route
# per command, and nothing per reply beyond finding where it ends:
#   - whole plain request frames are split for a chunk at once (route.split_requests) and
#     forwarded as the client sent them; anything else goes through client.resp.RespParser;
#   - consecutive commands of a chunk for the same link become one holder (_Run), so a
#     pipeline costs one queue entry and one reply write;
#   - simple replies are split for a chunk at once too (route.split_replies);
#   - replies completed while a reader task handles a chunk are written at the end of that
#     chunk, by that task, when the session's writer is idle (_Session.flush): at -P 1 a
#     reply costs no task switch. The writer task only takes over when the client is slow.
#   - client sockets are driven directly (_ClientSocket), without trio.SocketStream's layers.
#
# Redirects and retries happen between the link and the holder; the client never sees them:
#   -MOVED        patch the slot table (and refresh in the background), resend to the new owner
#   -ASK          resend as ASKING + command to the node named, without touching the table
#   -TRYAGAIN, -CLUSTERDOWN, -LOADING, a slot without owner, a failed connect:
#                 resend after a backoff (20 ms doubling to 0.5 s), for at most RETRY_WINDOW
#   connection lost with the command possibly sent: resend only read-only commands; any other
#                 gets "-ERR ... may or may not have run": never run a write twice.
# A resend keeps the holder's place in the reply queue, and a MOVED/ASK resend is synchronous
# (done by the link reader that saw it), so a pipeline that meets a moved slot keeps its order.
#
# Stateful clients use connections of their own, owned by the session:
#   - blocking commands (BLPOP ..., XREAD BLOCK) and WATCH: a dedicated link per node;
#   - MULTI ... EXEC: the commands are queued *in the tunnel* (+QUEUED, with the arity/unknown/
#     CROSSSLOT checks a server makes at queue time); EXEC sends MULTI, the commands and EXEC as
#     one contiguous batch to the node of the transaction's slot, on the session's WATCH link
#     if it has one, else on a shared link (a contiguous batch is exactly what a dedicated
#     connection would carry, and it lets a transaction be re-run whole on the new owner when
#     its slot moves: nothing ran, since a redirected queued command aborts it);
#   - SUBSCRIBE/PSUBSCRIBE: a pub/sub link to the owner of slot 0 (route.PUBSUB_SLOT), where
#     PUBLISH goes too, so its count includes the tunnel's subscribers; SSUBSCRIBE: a pub/sub
#     link to the shard that owns the channel.
#     Their confirmations are replies in the queue (one frame per channel, counted from the
#     session's own subscription sets); messages are written between replies;
#   - WAIT: on a dedicated link to each master the session wrote to, after every earlier reply
#     arrived, preceded by a tiny replicated script so the link's replication offset covers
#     those writes; the reply is the minimum over those masters.
#
# Bounds: a session stops reading its client past MAX_QUEUE replies in flight, or while a link
# it fed holds more than MAX_LINK_OUT unsent bytes; pub/sub messages wait in at most MAX_OOB
# bytes before the pub/sub link stops reading. A link with requests pending (none of them
# blocking) and no reply for STALL_TIMEOUT seconds is dropped, and connecting is bounded by
# CONNECT_TIMEOUT (its commands fail or retry as above), so no command waits forever on a node
# that hangs.
"""

from __future__ import annotations

import collections
import errno
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from client.cluster import ClusterClient, open_cluster
from client.connection import open_authenticated_stream
from client.errors import ConfigError, RedisToolkitError, RespProtocolError
from client.options import ServerOptions
from client.resp import NEED_DATA, FrameScanner, RespParser, encode_command, encode_value
from client.slots import SLOTS, tag_for_slot
from client.topology import Node, Topology, parse_redirect
from client.values import ErrorReply, Push, RespValue, SimpleString, Verbatim
from tunnel import merge
from tunnel.relay import RelayStats
from tunnel.rewrite import Endpoint, format_hostport
from tunnel.route import (
    ANY_SLOT,
    PUBSUB_SLOT,
    Agg,
    Blocking,
    FanOut,
    Local,
    LocalKind,
    Plan,
    PubSub,
    Reject,
    Router,
    Scan,
    Single,
    Split,
    Txn,
    Wait,
    split_replies,
    split_requests,
)
from tunnel.server import ListenerInfo, TunnelConfig, TunnelInfo, announce_host

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_POOL_SIZE",
    "RETRY_WINDOW",
    "STALL_TIMEOUT",
    "SmartStats",
    "serve_smart",
]

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 2
RECEIVE_SIZE = 65536
#: Replies in flight per client before the tunnel stops reading that client.
MAX_QUEUE = 4096
#: Unsent bytes on one upstream link before the clients feeding it wait.
MAX_LINK_OUT = 8 * 1024 * 1024
#: Pub/sub message bytes waiting for a slow client before its pub/sub links stop reading.
MAX_OOB = 4 * 1024 * 1024
#: MOVED/ASK hops for one command.
MAX_REDIRECTS = 16
#: How long TRYAGAIN/CLUSTERDOWN/LOADING and connection trouble are retried (seconds).
RETRY_WINDOW = 20.0
_FIRST_DELAY = 0.02
_MAX_DELAY = 0.5
#: A link with requests pending (none of them blocking) and no reply for this long is dropped.
STALL_TIMEOUT = 60.0
#: How long connecting (TCP, TLS and login) to a node may take.
CONNECT_TIMEOUT = 10.0
#: How long replies still in flight may take to reach a client that is closing.
CLOSE_GRACE = 2.0
_TICK = 1.0

# Link kinds: shared by every session; a session's own (blocking, WATCH, WAIT); a session's
# pub/sub link (SUBSCRIBE/PSUBSCRIBE); a session's shard pub/sub link (SSUBSCRIBE).
_SHARED, _DEDICATED, _PUBSUB, _SHARD = 0, 1, 2, 3
_RETRY_PREFIXES = (b"-MOVED ", b"-ASK ", b"-TRYAGAIN", b"-CLUSTERDOWN", b"-LOADING")
_RETRY_HEADS = frozenset(p[1:3] for p in _RETRY_PREFIXES)
_ASKING = encode_command(b"ASKING")
_MESSAGES = frozenset((b"message", b"pmessage", b"smessage"))
_CONFIRMS = frozenset(
    (b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe")
)
_WAIT_MARKER = b"redis.call('set', KEYS[1], '1') redis.call('del', KEYS[1]) return 1"
_SUBSCRIBED_OK = frozenset(
    (
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
        b"ping",
        b"quit",
        b"reset",
    )
)
_TXN_CONTROL = frozenset((b"exec", b"discard", b"multi", b"watch", b"quit", b"reset"))
_NEED_AUTH_OK = frozenset((b"auth", b"hello", b"quit", b"reset"))
_HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    b"HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    b"select the RESP protocol version at the same time\r\n"
)

# Session state bits: anything set takes the slow path in dispatch().
_NEED_AUTH = 1
_MULTI = 2
_SUBSCRIBED = 4  # RESP2 client with subscriptions: only pub/sub commands are allowed
_MUTED = 8  # CLIENT REPLY OFF / SKIP
_CLOSING = 16


@dataclass
class SmartStats:
    """Counters of one smart tunnel (for tests, the benchmark and a future dashboard).

    Attributes:
        moved, ask: redirects followed for clients (never shown to them).
        retries: resends after TRYAGAIN/CLUSTERDOWN/LOADING or connection trouble.
        refused: commands answered with an error because a link broke while they may have run.
        links: upstream connections opened (shared and dedicated).
    """

    moved: int = 0
    ask: int = 0
    retries: int = 0
    refused: int = 0
    links: int = 0


def _error_frame(text: str) -> bytes:
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


def _command_name(payload: bytes) -> str:
    """The (first) command's name in an encoded request, for messages."""
    parts = payload[:256].split(b"\r\n", 3)
    name = parts[2] if payload[:1] == b"*" and len(parts) > 2 else parts[0].split(b" ", 1)[0]
    return name[:32].decode("utf-8", "replace").upper()


def _parse(frame: bytes) -> RespValue:
    parser = RespParser()
    parser.feed(frame)
    value = parser.next_value()
    if value is NEED_DATA:  # pragma: no cover - frames come whole from the scanner
        return merge.error("ERR truncated reply from a cluster node")
    return value


# --------------------------------------------------------------------------- holders


class _Item:
    """A place in a session's reply queue, and/or a request in a link's FIFO.

    ``data`` is the reply frame(s) once known. As a request: ``payload`` is the encoded command,
    ``slot`` decides the node (ANY_SLOT: the session's home master), ``expect`` counts the
    reply frames it takes, ``link_kind`` says shared, dedicated or shard pub/sub link.
    """

    __slots__ = (
        "data",
        "expect",
        "frames",
        "hops",
        "link_kind",
        "muted",
        "payload",
        "readonly",
        "resp3",
        "session",
        "slot",
        "t0",
        "tries",
    )

    deferred = False
    confirm = False
    #: May legitimately wait for long (BLPOP, WAIT): exempt from the stall check.
    blocking = False

    def __init__(
        self,
        session: _Session | None,
        payload: bytes = b"",
        slot: int = ANY_SLOT,
        readonly: bool = True,
        resp3: bool = False,
        expect: int = 1,
        link_kind: int = _SHARED,
    ) -> None:
        self.data: bytes | None = None
        self.muted = False
        self.session = session
        self.payload = payload
        self.slot = slot
        self.readonly = readonly
        self.resp3 = resp3
        self.expect = expect
        self.frames: list[bytes] = [] if expect > 1 else _NO_FRAMES
        self.link_kind = link_kind
        self.tries = 0
        self.hops = 0
        self.t0 = 0.0

    # -- as a reply holder

    def ready(self, data: bytes) -> None:
        self.data = data
        session = self.session
        if session is not None and session.waiting:
            queue = session.queue
            if queue and queue[0] is self:
                proxy = session.proxy
                if proxy.batching:
                    if not session.dirty:
                        session.dirty = True
                        proxy.dirty.append(session)
                else:
                    session.wake.set()

    def begin(self) -> None:
        """Deferred holders start their work here, once every earlier reply is known."""

    # -- as a request

    def complete(self, frame: bytes) -> None:
        """The reply frame (expect == 1)."""
        self.ready(frame)

    def finish(self) -> None:
        """Every expected frame arrived (expect > 1); they are in ``frames``."""
        self.ready(b"".join(self.frames))

    def fail(self, frame: bytes) -> None:
        """The tunnel's own error reply instead of the node's."""
        self.ready(frame)

    def wire(self) -> bytes:
        """The bytes to send (again)."""
        return self.payload


#: The frames of a single-reply item: never appended to (only items expecting more do).
_NO_FRAMES: list[bytes] = []
#: Commands in one _Run at most.
_MAX_RUN = 64


class _Run(_Item):
    """Consecutive single-node commands of one session on one link, from one chunk of input:
    one holder, one reply write. The pipelines of redis-benchmark -P 16 and of client
    libraries become runs, so the per-command cost is the parse and the route, no more.

    A command whose reply is a redirect or a retry (MOVED, ASK, TRYAGAIN, ...) is resent alone
    (_RunPart), its reply put back at its place.
    """

    __slots__ = ("link", "payloads", "readonlys", "remaining", "results", "slots")

    def __init__(self, first: _Item, link: _Link) -> None:
        super().__init__(first.session, b"", first.slot, first.readonly, first.resp3, 1)
        self.frames = []
        self.link = link
        self.payloads = [first.payload]
        self.slots = [first.slot]
        self.readonlys = [first.readonly]
        self.results: list[bytes] = []
        self.remaining = 0

    def add(self, payload: bytes, slot: int, readonly: bool) -> None:
        self.payloads.append(payload)
        self.slots.append(slot)
        self.readonlys.append(readonly)
        self.expect += 1
        if not readonly:
            self.readonly = False

    def wire(self) -> bytes:
        return b"".join(self.payloads)

    def finish(self) -> None:
        frames = self.frames
        redo = [i for i, f in enumerate(frames) if f[:1] == b"-" and f.startswith(_RETRY_PREFIXES)]
        if not redo:
            self.ready(b"".join(frames))
            return
        session = self.session
        assert session is not None
        self.results = list(frames)
        self.remaining = len(redo)
        for i in redo:
            session.proxy.retry_reply(_RunPart(self, i), frames[i], self.link)

    def fail(self, frame: bytes) -> None:
        missing = self.expect - len(self.frames)
        self.ready(b"".join(self.frames) + frame * missing)

    def part_done(self, index: int, frame: bytes) -> None:
        self.results[index] = frame
        self.remaining -= 1
        if not self.remaining:
            self.ready(b"".join(self.results))


class _RunPart(_Item):
    """One command of a run, resent alone."""

    __slots__ = ("index", "run")

    def __init__(self, run: _Run, index: int) -> None:
        super().__init__(
            run.session, run.payloads[index], run.slots[index], run.readonlys[index], run.resp3
        )
        self.run = run
        self.index = index

    def complete(self, frame: bytes) -> None:
        self.run.part_done(self.index, frame)

    def fail(self, frame: bytes) -> None:
        self.run.part_done(self.index, frame)


class _Blocking(_Item):
    """A blocking command (on a dedicated link)."""

    __slots__ = ()
    blocking = True


class _Skip(_Item):
    """The reply to ASKING, dropped."""

    __slots__ = ()

    def complete(self, frame: bytes) -> None:
        pass

    def fail(self, frame: bytes) -> None:
        pass


_SKIP = _Skip(None)


class _Gather(_Item):
    """A holder whose reply is built from several sub-requests (_Part)."""

    __slots__ = ("combine", "raw", "remaining", "results")

    def __init__(
        self,
        session: _Session,
        count: int,
        combine: Callable[[list[RespValue]], RespValue] | None,
        resp3: bool,
    ) -> None:
        super().__init__(session, resp3=resp3)
        self.results: list[bytes] = [b""] * count
        self.remaining = count
        self.combine = combine
        self.raw = combine is None

    def part_done(self, index: int, frame: bytes) -> None:
        self.results[index] = frame
        self.remaining -= 1
        if self.remaining:
            return
        if self.combine is None:
            self.ready(b"".join(self.results))
            return
        try:
            value = self.combine([_parse(f) for f in self.results])
            self.ready(encode_value(value, resp3=self.resp3))
        except (RespProtocolError, ValueError, TypeError) as exc:
            self.ready(_error_frame(f"ERR cannot merge the replies of the cluster nodes: {exc}"))


class _Part(_Item):
    """One sub-request of a gather; with ``last`` only its last reply frame counts (WAIT)."""

    __slots__ = ("gather", "index", "last")

    def __init__(
        self,
        gather: _Gather,
        index: int,
        payload: bytes,
        slot: int,
        readonly: bool,
        *,
        expect: int = 1,
        link_kind: int = _SHARED,
        last: bool = False,
    ) -> None:
        super().__init__(gather.session, payload, slot, readonly, gather.resp3, expect, link_kind)
        self.gather = gather
        self.index = index
        self.last = last

    def complete(self, frame: bytes) -> None:
        self.gather.part_done(self.index, frame)

    def finish(self) -> None:
        frames = self.frames
        self.gather.part_done(self.index, frames[-1] if self.last else b"".join(frames))

    def fail(self, frame: bytes) -> None:
        self.gather.part_done(self.index, frame)


class _WaitPart(_Part):
    """WAIT on one master (it blocks up to its own timeout, or forever with 0)."""

    __slots__ = ()
    blocking = True


class _Confirm(_Item):
    """A pub/sub command's reply: one confirmation frame per channel (or pattern), or one
    error frame for the whole command."""

    __slots__ = ("channels",)
    confirm = True

    def __init__(
        self,
        session: _Session,
        payload: bytes,
        slot: int,
        count: int,
        kind: int,
        channels: Sequence[bytes] = (),
    ) -> None:
        super().__init__(session, payload, slot, True, session.resp3, count, kind)
        self.channels = tuple(channels)

    def finish(self) -> None:
        first = self.frames[0] if self.frames else b""
        session = self.session
        if session is not None and first.startswith(_RETRY_PREFIXES):
            if first.startswith((b"-MOVED ", b"-ASK ")):
                session.proxy.redirected(self, first, None)
            else:
                session.proxy.retry_later(self, first[1:].decode("utf-8", "replace").strip())
            return
        self.ready(b"".join(self.frames))


class _ConfirmGather(_Gather):
    """SUNSUBSCRIBE across several shard links: their confirmations, concatenated."""

    __slots__ = ()
    confirm = True


class _ConfirmPart(_Part):
    __slots__ = ()
    confirm = True


class _Exec(_Item):
    """EXEC: MULTI + the queued commands + EXEC, sent as one batch; answers EXEC's reply."""

    __slots__ = ("watched",)

    def __init__(
        self, session: _Session, payload: bytes, slot: int, count: int, watched: bool
    ) -> None:
        kind = _DEDICATED if watched else _SHARED
        super().__init__(session, payload, slot, False, session.resp3, count + 2, kind)
        self.watched = watched

    def finish(self) -> None:
        frames = self.frames
        session = self.session
        assert session is not None
        blocked = next((f for f in frames if f.startswith(_RETRY_PREFIXES)), None)
        if blocked is not None:
            if self.watched:
                self.ready(
                    _error_frame(
                        "EXECABORT Transaction discarded: its slot is moving between nodes "
                        f"({blocked[1:].decode('utf-8', 'replace').strip()}); WATCH again "
                        "and retry"
                    )
                )
                return
            if blocked.startswith(b"-MOVED "):
                session.proxy.learn_moved(blocked)
            session.proxy.retry_later(self, "the transaction's slot is moving")
            return
        reply = frames[-1]
        if reply.startswith(b"-EXECABORT"):
            first = next((f for f in frames[1:-1] if f.startswith(b"-")), None)
            if first is not None:
                reply = reply.rstrip(b"\r\n") + b": " + first[1:]
        self.ready(reply)


class _Deferred(_Gather):
    """A gather that starts only when it reaches the head of the queue (WAIT)."""

    __slots__ = ("started", "starter")
    deferred = True

    def __init__(
        self, session: _Session, starter: Callable[[_Deferred], None], resp3: bool
    ) -> None:
        super().__init__(session, 0, None, resp3)
        self.starter = starter
        self.started = False

    def begin(self) -> None:
        if not self.started:
            self.started = True
            self.starter(self)


# --------------------------------------------------------------------------- upstream links


class _Upstream:
    """One cluster node: its address, login settings and shared links."""

    __slots__ = ("address", "host", "links2", "links3", "opts", "port")

    def __init__(self, host: str, port: int, opts: ServerOptions, pool_size: int) -> None:
        self.host = host
        self.port = port
        self.address = format_hostport(host, port)
        self.opts = opts
        self.links2: list[_Link | None] = [None] * pool_size
        self.links3: list[_Link | None] = [None] * pool_size

    def forget(self, link: _Link) -> None:
        for links in (self.links2, self.links3):
            for i, existing in enumerate(links):
                if existing is link:
                    links[i] = None


class _Link:
    """A pipelined connection to one node (see the module notes)."""

    __slots__ = (
        "broken",
        "drained",
        "has_output",
        "kind",
        "last_progress",
        "out",
        "out_bytes",
        "owner",
        "pending",
        "proxy",
        "resp3",
        "scope",
        "unsent",
        "up",
    )

    def __init__(
        self,
        proxy: _Proxy,
        up: _Upstream,
        resp3: bool,
        kind: int = _SHARED,
        owner: _Session | None = None,
    ) -> None:
        self.proxy = proxy
        self.up = up
        self.resp3 = resp3
        self.kind = kind
        self.owner = owner
        self.pending: collections.deque[_Item] = collections.deque()
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.unsent = 0
        self.broken: str | None = None
        self.has_output = trio.Event()
        self.drained = trio.Event()
        self.drained.set()
        self.scope = trio.CancelScope()
        self.last_progress = 0.0

    def push(self, item: _Item, payload: bytes) -> None:
        if self.broken is not None:
            self.proxy.lost(item, False, self.broken)
            return
        if not self.pending:
            self.last_progress = trio.current_time()
        self.pending.append(item)
        self.out.append(payload)
        self.unsent += 1
        self.out_bytes += len(payload)
        self.has_output.set()
        if self.out_bytes > MAX_LINK_OUT:
            if self.drained.is_set():
                self.drained = trio.Event()
            session = item.session
            if session is not None:
                session.congested = self

    def extend(self, payload: bytes) -> None:
        """More bytes for the last pending item (a growing _Run)."""
        self.out.append(payload)
        self.out_bytes += len(payload)
        self.has_output.set()
        if self.out_bytes > MAX_LINK_OUT and self.drained.is_set():
            self.drained = trio.Event()

    def close(self) -> None:
        self._fail("the link was closed", connected=True)

    # -- tasks

    async def serve(self) -> None:
        """Connect, then run the writer and the reader until the link fails or is closed."""
        with self.scope:
            stream: trio.abc.Stream | None = None
            try:
                with trio.move_on_after(self.proxy.connect_timeout):
                    stream = await open_authenticated_stream(
                        self.up.opts, protocol=3 if self.resp3 else None
                    )
            except (RedisToolkitError, OSError) as exc:
                self._fail(f"cannot connect to {self.up.address}: {exc}", connected=False)
                return
            if stream is None:
                timeout = self.proxy.connect_timeout
                self._fail(
                    f"cannot connect to {self.up.address}: no answer in {timeout:g} s",
                    connected=False,
                )
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream)
                    if self.kind in (_PUBSUB, _SHARD):
                        await self._pubsub_reader(stream)
                    else:
                        await self._reader(stream)
            except Exception:  # a bug must cost one link, never the listener
                log.exception("smart tunnel: link to %s failed", self.up.address)
            finally:
                self._fail(f"lost the connection to {self.up.address}")
                await trio.aclose_forcefully(stream)

    async def _writer(self, stream: trio.abc.Stream) -> None:
        out = self.out
        try:
            while True:
                await self.has_output.wait()
                self.has_output = trio.Event()
                while out:
                    data = b"".join(out)
                    out.clear()
                    self.out_bytes = 0
                    self.unsent = 0
                    if not self.drained.is_set():
                        self.drained.set()
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"lost the connection to {self.up.address}: {exc or 'closed'}")

    async def _reader(self, stream: trio.abc.Stream) -> None:
        scanner = FrameScanner()
        reply = self._reply
        proxy = self.proxy
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self._fail(f"{self.up.address} closed the connection")
                    return
                if type(data) is not bytes:
                    data = bytes(data)
                proxy.batching = True
                try:
                    if not scanner.buffered:
                        # the fast path: simple replies split in one go (see split_replies)
                        ends, used = split_replies(data)
                        start = 0
                        for end in ends:
                            if not reply(data[start:end], data[start]):
                                return
                            start = end
                        if used:
                            data = data[used:]
                    if data:
                        scanner.feed(data)
                        while (frame := scanner.next_frame()) is not None:
                            if frame.kind != 62 and not reply(frame.data, frame.kind):
                                return  # ('>' pushes: nothing asked for them on a shared link)
                finally:
                    proxy.flush_dirty()
                self.last_progress = trio.current_time()
        except RespProtocolError as exc:
            self._fail(f"{self.up.address} sent invalid RESP: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"lost the connection to {self.up.address}: {exc or 'closed'}")

    def _reply(self, raw: bytes, kind: int) -> bool:
        """One reply frame for the head of the FIFO; False when the link broke on it."""
        pending = self.pending
        if not pending:
            self._fail(f"{self.up.address} sent a reply nobody asked for")
            return False
        item = pending[0]
        if item.expect == 1:
            pending.popleft()
            if kind == 45 and raw[1:3] in _RETRY_HEADS and raw.startswith(_RETRY_PREFIXES):
                self.proxy.retry_reply(item, raw, self)
            else:
                item.complete(raw)
        else:
            item.frames.append(raw)
            if len(item.frames) >= item.expect:
                pending.popleft()
                item.finish()
        return True

    async def _pubsub_reader(self, stream: trio.abc.Stream) -> None:
        """Pub/sub links: messages go to the client between replies, the rest answers FIFO."""
        scanner = FrameScanner()
        pending = self.pending
        session = self.owner
        assert session is not None
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self._fail(f"{self.up.address} closed the connection")
                    return
                scanner.feed(data)
                for frame in scanner.pop_frames():
                    kind = _pubsub_kind(frame.data)
                    if kind in _MESSAGES or not pending:
                        if kind == b"sunsubscribe":
                            session.server_unsubscribed(self, frame.data)
                        await session.push_oob(frame.data)
                        continue
                    item = pending[0]
                    if item.frames is _NO_FRAMES:
                        item.frames = []
                    item.frames.append(frame.data)
                    # an error answers the whole command, whatever it counted on
                    if frame.kind == 45 or len(item.frames) >= item.expect:
                        pending.popleft()
                        item.finish()
        except RespProtocolError as exc:
            self._fail(f"{self.up.address} sent invalid RESP: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"lost the connection to {self.up.address}: {exc or 'closed'}")

    def _fail(self, reason: str, *, connected: bool = True) -> None:
        if self.broken is not None:
            return
        self.broken = reason
        self.up.forget(self)
        items = list(self.pending)
        self.pending.clear()
        first_unsent = len(items) - self.unsent
        self.out.clear()
        self.out_bytes = 0
        self.unsent = 0
        self.drained.set()
        self.has_output.set()
        self.scope.cancel()
        for i, item in enumerate(items):
            self.proxy.lost(item, connected and i < first_unsent, reason)
        if self.owner is not None:
            self.owner.link_failed(self)


def _pubsub_kind(frame: bytes) -> bytes:
    """The first element of an array/push frame, lowercased ("message", "subscribe", ...)."""
    if frame[:1] not in (b"*", b">"):
        return b""
    value = _parse(frame)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return value[0].lower()
    return b""


# --------------------------------------------------------------------------- the proxy


class _Proxy:
    """State shared by every session: the slot table, the upstream nodes, retries."""

    def __init__(
        self,
        cluster: ClusterClient,
        nursery: trio.Nursery,
        *,
        pool_size: int,
        local_password: str | None,
        me: merge.SelfNode,
        stats: RelayStats,
        counters: SmartStats,
        retry_window: float,
        stall_timeout: float = STALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.cluster = cluster
        self.counters = counters
        self.retry_window = retry_window
        self.stall_timeout = stall_timeout
        self.connect_timeout = connect_timeout
        self.nursery = nursery
        self.pool_size = pool_size
        self.local_password = local_password
        self.me = me
        self.stats = stats
        self.router = Router(cluster.commands)
        self.upstreams: dict[tuple[str, int], _Upstream] = {}
        self.owners: list[_Upstream | None] = [None] * SLOTS
        self.starts: list[int] = []
        self.start_of: dict[int, int] = {}
        self.topology: Topology = cluster.topology
        self.sessions: dict[int, _Session] = {}
        self.next_id = 0
        self.refresh_wanted = trio.Event()
        self.rng = random.Random()
        # While a reader task handles one chunk of input, completed replies are only noted
        # here, and written once at the end of the chunk (see _Session.flush).
        self.batching = False
        self.dirty: list[_Session] = []
        self.adopt(cluster.topology)

    # -- topology

    @property
    def healthy(self) -> bool:
        return None not in self.owners

    def upstream_for(self, node: Node) -> _Upstream:
        opts = self.cluster.options_for(node)
        key = (opts.host, opts.port)
        up = self.upstreams.get(key)
        if up is None:
            up = self.upstreams[key] = _Upstream(opts.host, opts.port, opts, self.pool_size)
        return up

    def upstream_at(self, host: str, port: int) -> _Upstream:
        node = self.topology.node_by_address(host, port)
        if node is None:
            node = Node(id=f"{host}:{port}", host=host, port=port)
        return self.upstream_for(node)

    def adopt(self, topology: Topology) -> None:
        """Rebuild the slot table from a topology."""
        self.topology = topology
        by_id: dict[str, _Upstream] = {}
        owners: list[_Upstream | None] = [None] * SLOTS
        for slot in range(SLOTS):
            node = topology.slot_owner(slot)
            if node is not None:
                up = by_id.get(node.id)
                if up is None:
                    up = by_id[node.id] = self.upstream_for(node)
                owners[slot] = up
        self._set_owners(owners)

    def _set_owners(self, owners: list[_Upstream | None]) -> None:
        first: dict[int, int] = {}
        for slot, up in enumerate(owners):
            if up is not None and id(up) not in first:
                first[id(up)] = slot
        self.owners = owners
        self.starts = sorted(first.values())
        self.start_of = first

    def start_for(self, up: _Upstream) -> int | None:
        return self.start_of.get(id(up))

    def learn_moved(self, frame: bytes) -> _Upstream | None:
        redirect = parse_redirect(frame)
        if redirect is None:
            return None
        _, slot, host, port = redirect
        up = self.upstream_at(host or self.cluster.seed.host, port)
        if self.owners[slot] is not up:
            owners = list(self.owners)
            owners[slot] = up
            self._set_owners(owners)
        self.refresh_soon()
        return up

    def refresh_soon(self) -> None:
        self.refresh_wanted.set()

    def flush_dirty(self) -> None:
        """End of a batch: write the replies that became ready during it."""
        self.batching = False
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for session in dirty:
                session.flush()

    async def refresher(self) -> None:
        """Background: refresh the topology when asked, and pick up the cluster client's own
        periodic refreshes."""
        while True:
            with trio.move_on_after(_TICK):
                await self.refresh_wanted.wait()
            if self.refresh_wanted.is_set():
                self.refresh_wanted = trio.Event()
                try:
                    await self.cluster.refresh()
                except RedisToolkitError as exc:
                    log.warning("smart tunnel: topology refresh failed: %s", exc)
                    await trio.sleep(0.2)
            if self.cluster.topology is not self.topology:
                self.adopt(self.cluster.topology)

    async def watchdog(self) -> None:
        """Background: drop links that stopped answering (a refresh may hang meanwhile)."""
        while True:
            await trio.sleep(min(_TICK, self.stall_timeout / 4))
            self._check_stalls()

    def _check_stalls(self) -> None:
        now = trio.current_time()
        links: list[_Link | None] = []
        for up in self.upstreams.values():
            links += up.links2
            links += up.links3
        for session in self.sessions.values():
            links += session.dedicated.values()
            links += session.shards.values()
            links.append(session.pubsub)
        for link in links:
            if (
                link is not None
                and link.pending
                and not link.pending[0].blocking
                and now - link.last_progress > self.stall_timeout
            ):
                link._fail(f"{link.up.address} sent no reply for {self.stall_timeout:g} s")

    # -- sending

    def open_link(self, up: _Upstream, resp3: bool, kind: int, owner: _Session | None) -> _Link:
        link = _Link(self, up, resp3, kind, owner)
        self.counters.links += 1
        self.nursery.start_soon(link.serve)
        return link

    def shared_link(self, up: _Upstream, resp3: bool, index: int) -> _Link:
        links = up.links3 if resp3 else up.links2
        link = links[index]
        if link is None:
            link = links[index] = self.open_link(up, resp3, _SHARED, None)
        return link

    def submit(self, item: _Item) -> None:
        """Send (or resend) ``item`` to the owner of its slot."""
        session = item.session
        if session is None or session.closed:
            return
        slot = item.slot if item.slot >= 0 else session.home_slot
        up = self.owners[slot]
        if up is None:
            self.retry_later(item, f"slot {slot} has no owner in the cluster")
            return
        self.send(item, up, item.wire())

    def link_for(self, item: _Item, up: _Upstream) -> _Link:
        """The link ``item`` goes on to reach ``up`` (by the item's link kind)."""
        session = item.session
        assert session is not None
        kind = item.link_kind
        if kind == _SHARED:
            return self.shared_link(up, item.resp3, session.link_index)
        if kind == _DEDICATED:
            return session.dedicated_link(up)
        if kind == _PUBSUB:
            return session.pubsub_link()
        link = session.shard_link(up)
        if isinstance(item, _Confirm):
            for channel in item.channels:
                session.shard_channels[channel] = link
        return link

    def send(self, item: _Item, up: _Upstream, payload: bytes) -> None:
        if item.expect > 1:
            item.frames = []
        link = self.link_for(item, up)
        if isinstance(item, _Run):
            item.link = link
        link.push(item, payload)

    # -- redirects and retries

    def retry_reply(self, item: _Item, frame: bytes, link: _Link) -> None:
        """A single-frame reply that is MOVED, ASK, TRYAGAIN, CLUSTERDOWN or LOADING."""
        if item.session is None:
            return
        if frame.startswith((b"-MOVED ", b"-ASK ")):
            self.redirected(item, frame, link)
            return
        if frame.startswith(b"-CLUSTERDOWN"):
            self.refresh_soon()
        self.retry_later(item, frame[1:].decode("utf-8", "replace").strip(), final=frame)

    def redirected(self, item: _Item, frame: bytes, link: _Link | None) -> None:
        redirect = parse_redirect(frame)
        item.hops += 1
        if redirect is None or item.hops > MAX_REDIRECTS:
            text = frame[1:].decode("utf-8", "replace").strip()
            item.fail(_error_frame(f"ERR the cluster kept redirecting the command (last: {text})"))
            return
        kind, _, host, port = redirect
        if kind == "MOVED":
            self.counters.moved += 1
            up = self.learn_moved(frame)
            if up is not None:
                self.send(item, up, item.wire())
            return
        self.counters.ask += 1
        origin = link.up.host if link is not None else self.cluster.seed.host
        up = self.upstream_at(host or origin, port)
        if item.session is None:
            return
        if item.expect > 1:
            item.frames = []
        target = self.link_for(item, up)
        target.push(_SKIP, _ASKING)
        target.push(item, item.wire())

    def retry_later(self, item: _Item, reason: str, *, final: bytes | None = None) -> bool:
        """Resend ``item`` after a backoff; False (and its error sent) once the window is over."""
        session = item.session
        if session is None or session.closed:
            return False
        now = trio.current_time()
        if not item.t0:
            item.t0 = now
        if now - item.t0 > self.retry_window:
            item.fail(
                final
                if final is not None
                else _error_frame(
                    f"CLUSTERDOWN {reason} (retried for {self.retry_window:g} s; the cluster "
                    "may be failing over or down)"
                )
            )
            return False
        self.counters.retries += 1
        item.tries += 1
        delay = min(_FIRST_DELAY * (2 ** min(item.tries - 1, 10)), _MAX_DELAY)
        self.nursery.start_soon(self._resend, item, delay)
        return True

    async def _resend(self, item: _Item, delay: float) -> None:
        await trio.sleep(delay)
        self.submit(item)

    def lost(self, item: _Item, maybe_sent: bool, reason: str) -> None:
        """A link failed with ``item`` pending (or about to be sent)."""
        session = item.session
        if session is None or session.closed:
            return
        self.refresh_soon()
        if maybe_sent and not item.readonly:
            self.counters.refused += 1
            name = _command_name(item.wire())
            item.fail(
                _error_frame(
                    f"ERR {reason} with {name or 'a command'} in flight: it may or may not have "
                    "run, so the tunnel did not send it again (it is not read-only)"
                )
            )
            return
        if item.link_kind in (_PUBSUB, _SHARD):
            item.fail(_error_frame(f"ERR {reason}"))
            return
        self.retry_later(item, reason)

    # -- clients

    async def handle(self, stream: trio.SocketStream) -> None:
        """One client connection (the serve_listeners handler)."""
        self.next_id += 1
        session = _Session(self, stream, self.next_id)
        self.sessions[session.id] = session
        self.stats.accepted += 1
        self.stats.active += 1
        try:
            await session.serve()
        except Exception:  # one bad session must never take the listener down
            log.exception("smart tunnel: session %d failed", session.id)
        finally:
            self.stats.active -= 1
            self.sessions.pop(session.id, None)
            session.close()
            await trio.aclose_forcefully(stream)


# --------------------------------------------------------------------------- sessions


class _ClientSocket:
    """The local client's TCP socket, driven directly (no trio.SocketStream layers).

    ``recv``/``send`` are tried first and trio waits for readiness only when the socket would
    block, as client.transport does for TLS. Only the session's reader task reads, and only
    its writer task (or a flush while that writer is parked) writes.
    """

    __slots__ = ("closed", "sock")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.sock = socket.socket(fileno=stream.socket.detach())
        self.sock.setblocking(False)
        self.closed = False

    async def receive(self) -> bytes:
        """Up to RECEIVE_SIZE bytes; b"" at EOF or when the connection broke."""
        sock = self.sock
        yielded = False
        while True:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                yielded = True
                continue
            except OSError:
                data = b""
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def send_some(self, data: bytes) -> int:
        """Send what fits now; raise BrokenResourceError when the connection is gone."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        sent = self.send_some(data)
        while sent < len(data):
            await trio.lowlevel.wait_writable(self.sock)
            sent += self.send_some(view[sent:])  # type: ignore[arg-type]

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def address(self, local: bool) -> str:
        try:
            address = self.sock.getsockname() if local else self.sock.getpeername()
        except OSError:
            return "?"
        if isinstance(address, tuple):
            return format_hostport(str(address[0]), int(address[1]))
        return str(address)


class _TxnState:
    __slots__ = ("aborted", "commands", "slot")

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.slot = ANY_SLOT
        self.aborted = False


class _Session:
    """One local client (see the module notes)."""

    def __init__(self, proxy: _Proxy, stream: trio.SocketStream, session_id: int) -> None:
        self.proxy = proxy
        self.client = _ClientSocket(stream)
        self.id = session_id
        starts = proxy.starts
        self.home_slot = starts[session_id % len(starts)] if starts else 0
        self.link_index = session_id % proxy.pool_size
        self.queue: collections.deque[_Item] = collections.deque()
        self.waiting = False
        self.wake = trio.Event()
        self.room = trio.Event()
        self.flushed = trio.Event()
        self.congested: _Link | None = None
        self.closed = False
        self.resp3 = False
        self.state = _NEED_AUTH if proxy.local_password is not None else 0
        self.reply_off = False
        self.skip = 0  # replies still to drop after CLIENT REPLY SKIP
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.created = trio.current_time()
        self.addr = self.client.address(False)
        self.laddr = self.client.address(True)
        self.dirty = False
        self.unsent = b""
        self.last: _Item | None = None  # the hot path's last item, while it may grow a run
        self.txn: _TxnState | None = None
        self.watch_link: _Link | None = None
        self.dedicated: dict[tuple[int, bool], _Link] = {}
        self.pubsub: _Link | None = None
        self.shards: dict[int, _Link] = {}
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.shard_channels: dict[bytes, _Link] = {}
        self.oob: collections.deque[bytes] = collections.deque()
        self.oob_bytes = 0
        self.oob_room = trio.Event()
        self.confirms_queued = 0
        self.written: set[_Upstream] = set()

    # -- lifetime

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, nursery.cancel_scope)
            await self._reader()
            self.state |= _CLOSING
            self.wake.set()
            with trio.move_on_after(CLOSE_GRACE):
                await self.flushed.wait()
            nursery.cancel_scope.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flushed.set()
        self.oob_room.set()
        links = [*self.dedicated.values(), *self.shards.values()]
        if self.pubsub is not None:
            links.append(self.pubsub)
        self.dedicated.clear()
        self.shards.clear()
        self.pubsub = None
        for link in links:
            link.close()
        self.client.close()

    def link_failed(self, link: _Link) -> None:
        for key, existing in list(self.dedicated.items()):
            if existing is link:
                del self.dedicated[key]
        for shard, existing in list(self.shards.items()):
            if existing is link:
                del self.shards[shard]
        if link is self.watch_link:
            self.watch_link = None
        if link.kind in (_PUBSUB, _SHARD):
            if link is self.pubsub:
                self.pubsub = None
            if not self.closed and (self.channels or self.patterns or self.shard_channels):
                # Subscriptions are gone with the connection: close the client, as a server
                # restart would, so its library reconnects and subscribes again.
                self.state |= _CLOSING
                self.wake.set()
                self.room.set()
                self.client.shutdown()

    def dedicated_link(self, up: _Upstream) -> _Link:
        key = (id(up), self.resp3)
        link = self.dedicated.get(key)
        if link is None or link.broken is not None:
            link = self.proxy.open_link(up, self.resp3, _DEDICATED, self)
            self.dedicated[key] = link
        return link

    def shard_link(self, up: _Upstream) -> _Link:
        link = self.shards.get(id(up))
        if link is None or link.broken is not None:
            link = self.proxy.open_link(up, self.resp3, _SHARD, self)
            self.shards[id(up)] = link
        return link

    # -- reading

    async def _reader(self) -> None:
        parser = RespParser(requests=True)
        client = self.client
        queue = self.queue
        dispatch = self.dispatch
        proxy = self.proxy
        while not self.state & _CLOSING:
            data = await client.receive()
            if not data:
                return
            proxy.batching = True
            try:
                if not parser.buffered:
                    # the fast path: whole plain frames, forwarded as they came
                    commands, used = split_requests(data)
                    for args, start, end in commands:
                        dispatch(args, data[start:end])
                        if self.state & _CLOSING:
                            return
                    if used:
                        data = data[used:]
                if data:
                    parser.feed(data)
                while True:
                    command = parser.next_command()
                    if command is NEED_DATA:
                        break
                    dispatch(command)
                    if self.state & _CLOSING:
                        return
            except RespProtocolError as exc:
                proxy.stats.protocol_errors += 1
                self.reply(exc.resp_line())
                return
            finally:
                self.last = None
                proxy.flush_dirty()
            if len(queue) >= MAX_QUEUE:
                self.room = trio.Event()
                while len(queue) >= MAX_QUEUE // 2 and not self.closed:
                    await self.room.wait()
                    self.room = trio.Event()
            congested = self.congested
            if congested is not None:
                self.congested = None
                await congested.drained.wait()

    # -- writing

    async def _writer(self, scope: trio.CancelScope) -> None:
        queue = self.queue
        client = self.client
        oob = self.oob
        try:
            while True:
                if self.unsent:
                    data, self.unsent = self.unsent, b""
                    await client.send_all(data)
                    continue
                if queue and queue[0].deferred:
                    queue[0].begin()
                if not (queue and queue[0].data is not None) and not (oob and self._oob_ok()):
                    if self.state & _CLOSING and not queue:
                        break
                    self.waiting = True
                    self.wake = trio.Event()
                    await self.wake.wait()
                    self.waiting = False
                    continue
                data = self._take()
                if data:
                    await client.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()
        finally:
            self.flushed.set()

    def _take(self) -> bytes:
        """Pop every ready reply (and the pub/sub messages that may go now) as one write."""
        queue = self.queue
        oob = self.oob
        chunks: list[bytes] = []
        while queue:
            head = queue[0]
            data = head.data
            if data is None:
                if head.deferred:
                    head.begin()
                break
            queue.popleft()
            if head.confirm:
                self.confirms_queued -= 1
            if not head.muted:
                chunks.append(data)
        if oob and self._oob_ok():
            chunks.extend(oob)
            oob.clear()
            self.oob_bytes = 0
            self.oob_room.set()
        if len(queue) < MAX_QUEUE // 2:
            self.room.set()
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def flush(self) -> None:
        """Write what is ready now, from the task that completed it, when the writer is parked
        (saves waking the writer: one task switch per reply at pipeline depth 1)."""
        self.dirty = False
        if not self.waiting or self.closed:
            return
        if self.unsent:
            self.wake.set()
            return
        data = self._take()
        if not data:
            return
        try:
            sent = self.client.send_some(data)
        except trio.BrokenResourceError:
            sent = 0
        if sent < len(data):
            self.unsent = data[sent:]
            self.wake.set()

    def _oob_ok(self) -> bool:
        return not self.queue or (self.resp3 and not self.confirms_queued)

    async def push_oob(self, frame: bytes) -> None:
        while self.oob_bytes > MAX_OOB and not self.closed:
            self.oob_room = trio.Event()
            await self.oob_room.wait()
        if self.closed:
            return
        self.oob.append(frame)
        self.oob_bytes += len(frame)
        if self.waiting:
            self.wake.set()

    def enqueue(self, item: _Item) -> None:
        if self.state & _MUTED:
            if self.reply_off:
                item.muted = True
            elif self.skip:
                item.muted = True
                self.skip -= 1
                if not self.skip:
                    self.state &= ~_MUTED
        self.queue.append(item)

    def reply(self, frame: bytes) -> None:
        """A reply the tunnel knows now."""
        item = _Item(self)
        self.enqueue(item)
        item.ready(frame)

    def reply_value(self, value: RespValue) -> None:
        self.reply(encode_value(value, resp3=self.resp3))

    # -- dispatch

    def dispatch(self, args: list[bytes], frame: bytes | None = None) -> None:
        """Route one command and start it (synchronously: order is the queue's order).

        ``frame`` is the command's own bytes when the reader has them (sent as they are).
        """
        name = args[0]
        if len(name) in (4, 5) and name.lower() in (b"post", b"host:"):
            self.proxy.stats.cross_protocol += 1
            log.warning("smart tunnel: %s sent %r: closing (cross-protocol guard)", self.addr, name)
            self.state |= _CLOSING
            self.queue.clear()
            return
        if self.state:
            if not self._gate(args):
                self._dispatch_plan(self.proxy.router.route(args), args)
            return
        plan = self.proxy.router.route(args)
        if type(plan) is not Single:
            self._dispatch_plan(plan, args)
            return
        proxy = self.proxy
        queue = self.queue
        slot = plan.slot if plan.slot >= 0 else self.home_slot
        payload = frame or encode_command(*args)
        up = proxy.owners[slot]
        if up is None:
            item = _Item(self, payload, slot, plan.readonly, self.resp3)
            queue.append(item)
            proxy.retry_later(item, f"slot {slot} has no owner in the cluster")
            return
        if plan.write:
            self.written.add(up)
        links = up.links3 if self.resp3 else up.links2
        link = links[self.link_index]
        if link is None:
            link = proxy.shared_link(up, self.resp3, self.link_index)
        prev = self.last
        if (
            prev is not None
            and queue[-1] is prev
            and link.pending
            and link.pending[-1] is prev
            and prev.expect < _MAX_RUN
        ):
            # the previous command went to this link too and is still its last: join it
            if type(prev) is not _Run:
                prev = self.last = _Run(prev, link)
                queue[-1] = prev
                link.pending[-1] = prev
            prev.add(payload, slot, plan.readonly)
            link.extend(payload)
            return
        item = self.last = _Item(self, payload, slot, plan.readonly, self.resp3)
        queue.append(item)
        link.push(item, payload)

    def _gate(self, args: list[bytes]) -> bool:
        """Session states: True when the command was handled here."""
        state = self.state
        name = args[0].lower()
        if state & _NEED_AUTH and name not in _NEED_AUTH_OK:
            self.reply_value(merge.NOAUTH)
            return True
        if state & _MULTI and name not in _TXN_CONTROL:
            self._queue_in_txn(args)
            return True
        if state & _SUBSCRIBED and name not in _SUBSCRIBED_OK:
            shown = args[0].decode("utf-8", "replace").lower()
            self.reply(
                _error_frame(
                    f"ERR Can't execute '{shown}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                    "PING / QUIT / RESET are allowed in this context"
                )
            )
            return True
        if state & _SUBSCRIBED and name == b"ping":
            self.reply_value([b"pong", args[1] if len(args) > 1 else b""])
            return True
        return False

    def _dispatch_plan(self, plan: Plan, args: list[bytes]) -> None:
        if isinstance(plan, Reject):
            self.reply(plan.frame)
        elif isinstance(plan, Local):
            self._local(plan.kind, args)
        elif isinstance(plan, Split):
            self._split(plan)
        elif isinstance(plan, FanOut):
            self._fanout(plan, args)
        elif isinstance(plan, Scan):
            self._scan(plan)
        elif isinstance(plan, Blocking):
            blocked = _Blocking(
                self, encode_command(*args), plan.slot, plan.readonly, self.resp3, 1, _DEDICATED
            )
            self.enqueue(blocked)
            self.proxy.submit(blocked)
        elif isinstance(plan, Txn):
            self._txn(plan, args)
        elif isinstance(plan, PubSub):
            self._pubsub(plan, args)
        elif isinstance(plan, Wait):
            self._wait(args)
        else:  # Single, on the slow path (a session state is set)
            slot = plan.slot if plan.slot >= 0 else self.home_slot
            item = _Item(self, encode_command(*args), slot, plan.readonly, self.resp3)
            self.enqueue(item)
            up = self.proxy.owners[slot]
            if plan.write and up is not None:
                self.written.add(up)
            self.proxy.submit(item)

    # -- split and fan-out

    def _split(self, plan: Split) -> None:
        gather = _Gather(self, len(plan.parts), partial(merge.merge_split, plan), self.resp3)
        self.enqueue(gather)
        proxy = self.proxy
        for index, part in enumerate(plan.parts):
            sub = _Part(gather, index, encode_command(*part.args), part.slot, plan.readonly)
            if not plan.readonly:
                up = proxy.owners[part.slot]
                if up is not None:
                    self.written.add(up)
            proxy.submit(sub)

    def _fanout(self, plan: FanOut, args: list[bytes]) -> None:
        proxy = self.proxy
        starts = list(proxy.starts)
        if not starts:
            self.reply(_error_frame("CLUSTERDOWN the cluster has no master with slots"))
            return
        combine: Callable[[list[RespValue]], RespValue] = partial(
            merge.merge_fanout, plan.agg, rng=proxy.rng
        )
        gather = _Gather(self, len(starts), combine, self.resp3)
        self.enqueue(gather)
        payload = encode_command(*args)
        for index, start in enumerate(starts):
            if not plan.readonly:
                up = proxy.owners[start]
                if up is not None:
                    self.written.add(up)
            proxy.submit(_Part(gather, index, payload, start, plan.readonly))

    def _scan(self, plan: Scan) -> None:
        proxy = self.proxy
        slot, node_cursor = merge.scan_decode(plan.cursor)
        up = proxy.owners[slot]
        start = proxy.start_for(up) if up is not None else None
        if start is None:
            self.reply(_error_frame(f"CLUSTERDOWN Hash slot {slot} not served"))
            return
        starts = list(proxy.starts)
        gather = _Gather(
            self, 1, lambda values: merge.scan_reply(values[0], starts, start), self.resp3
        )
        self.enqueue(gather)
        payload = encode_command(b"SCAN", b"%d" % node_cursor, *plan.rest)
        proxy.submit(_Part(gather, 0, payload, start, True))

    # -- local commands

    def _local(self, kind: LocalKind, args: list[bytes]) -> None:
        proxy = self.proxy
        me = proxy.me
        value: RespValue
        if kind is LocalKind.PING:
            value = merge.PONG if len(args) == 1 else args[1]
        elif kind is LocalKind.ECHO:
            value = args[1]
        elif kind is LocalKind.OK:
            value = merge.OK
        elif kind is LocalKind.SELECT:
            value = merge.parse_select(args) or merge.OK
        elif kind is LocalKind.QUIT:
            self.reply_value(merge.OK)
            self.state |= _CLOSING
            return
        elif kind is LocalKind.RESET:
            self._reset()
            value = SimpleString(b"RESET")
        elif kind is LocalKind.AUTH:
            value = self._auth(args)
        elif kind is LocalKind.HELLO:
            self._hello(args)
            return
        elif kind is LocalKind.CLIENT_ID:
            value = self.id
        elif kind is LocalKind.CLIENT_SETNAME:
            name = merge.parse_setname(args[2])
            if isinstance(name, bytes):
                self.name = name
                value = merge.OK
            else:
                value = name
        elif kind is LocalKind.CLIENT_GETNAME:
            value = self.name or None
        elif kind is LocalKind.CLIENT_INFO:
            value = Verbatim(b"txt", self.info_line())
        elif kind is LocalKind.CLIENT_LIST:
            lines = b"".join(s.info_line() for s in proxy.sessions.values())
            value = Verbatim(b"txt", lines)
        elif kind is LocalKind.CLIENT_SETINFO:
            value = self._setinfo(args)
        elif kind is LocalKind.CLIENT_REPLY:
            self._client_reply(args)
            return
        elif kind is LocalKind.CLUSTER_SLOTS:
            value = merge.cluster_slots(me)
        elif kind is LocalKind.CLUSTER_SHARDS:
            value = merge.cluster_shards(me)
        elif kind is LocalKind.CLUSTER_NODES:
            value = merge.cluster_nodes(me)
        elif kind is LocalKind.CLUSTER_INFO:
            value = merge.cluster_info(healthy=proxy.healthy)
        elif kind is LocalKind.CLUSTER_MYID:
            value = me.node_id.encode()
        elif kind is LocalKind.CLUSTER_KEYSLOT:
            value = merge.cluster_keyslot(args)
        else:  # CLUSTER_REPLICAS
            if args[2].decode("utf-8", "replace") == me.node_id:
                value = []
            else:
                value = merge.error(f"ERR Unknown node {args[2].decode('utf-8', 'replace')}")
        self.reply_value(value)

    def info_line(self) -> bytes:
        return merge.client_info_line(
            client_id=self.id,
            addr=self.addr,
            laddr=self.laddr,
            name=self.name,
            protocol=3 if self.resp3 else 2,
            age=int(trio.current_time() - self.created),
            multi=len(self.txn.commands) if self.txn is not None else -1,
            sub=len(self.channels),
            psub=len(self.patterns),
            ssub=len(self.shard_channels),
            lib_name=self.lib_name,
            lib_ver=self.lib_ver,
        )

    def _auth(self, args: list[bytes]) -> RespValue:
        request = merge.parse_auth(args)
        if isinstance(request, ErrorReply):
            return request
        if merge.check_password(request, self.proxy.local_password):
            self.state &= ~_NEED_AUTH
            return merge.OK
        self.proxy.stats.auth_failures += 1
        return merge.WRONGPASS

    def _hello(self, args: list[bytes]) -> None:
        request = merge.parse_hello(args)
        if isinstance(request, ErrorReply):
            self.reply_value(request)
            return
        if request.auth is not None:
            if not merge.check_password(request.auth, self.proxy.local_password):
                self.proxy.stats.auth_failures += 1
                self.reply_value(merge.WRONGPASS)
                return
            self.state &= ~_NEED_AUTH
        elif self.state & _NEED_AUTH:
            self.reply(_HELLO_NOAUTH)
            return
        if request.protocol is not None:
            self.resp3 = request.protocol == 3
        if request.setname is not None:
            self.name = request.setname
        self.reply_value(
            merge.hello_reply(self.proxy.me, protocol=3 if self.resp3 else 2, client_id=self.id)
        )

    def _setinfo(self, args: list[bytes]) -> RespValue:
        if len(args) != 4:
            return merge.error("ERR wrong number of arguments for 'client|setinfo' command")
        attr = args[2].lower()
        if attr not in (b"lib-name", b"lib-ver"):
            return merge.error(f"ERR Unrecognized option '{args[2].decode('utf-8', 'replace')}'")
        if any(c <= 0x20 or c > 0x7E for c in args[3]):
            return merge.error(
                "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters."
            )
        if attr == b"lib-name":
            self.lib_name = args[3]
        else:
            self.lib_ver = args[3]
        return merge.OK

    def _client_reply(self, args: list[bytes]) -> None:
        mode = merge.parse_client_reply(args)
        if isinstance(mode, ErrorReply):
            self.reply_value(mode)
            return
        if mode == "on":
            self.reply_off = False
            self.skip = 0
            self.state &= ~_MUTED
            self.reply_value(merge.OK)
            return
        # OFF and SKIP are not answered; SKIP also drops the next command's reply.
        self.state |= _MUTED
        if mode == "off":
            self.reply_off = True
        elif not self.reply_off:
            self.skip = 2
        self.reply_value(merge.OK)

    def _reset(self) -> None:
        links = [*self.dedicated.values(), *self.shards.values()]
        if self.pubsub is not None:
            links.append(self.pubsub)
        self.dedicated.clear()
        self.shards.clear()
        self.pubsub = None
        self.watch_link = None
        self.channels.clear()
        self.patterns.clear()
        self.shard_channels.clear()
        for link in links:
            link.close()
        self.txn = None
        self.resp3 = False
        self.name = b""
        self.reply_off = False
        self.skip = 0
        self.state &= _CLOSING
        if self.proxy.local_password is not None:
            self.state |= _NEED_AUTH

    # -- transactions

    def _txn(self, plan: Txn, args: list[bytes]) -> None:
        verb = plan.verb
        txn = self.txn
        if verb == "multi":
            if txn is not None:
                txn.aborted = True
                self.reply(_error_frame("ERR MULTI calls can not be nested"))
                return
            self.txn = _TxnState()
            self.state |= _MULTI
            self.reply_value(merge.OK)
        elif verb == "discard":
            if txn is None:
                self.reply(_error_frame("ERR DISCARD without MULTI"))
                return
            self._end_txn()
            self.reply_value(merge.OK)
        elif verb == "exec":
            if txn is None:
                self.reply(_error_frame("ERR EXEC without MULTI"))
                return
            self._exec(txn)
        elif verb == "watch":
            if txn is not None:
                txn.aborted = True
                self.reply(_error_frame("ERR WATCH inside MULTI is not allowed"))
                return
            self._watch(plan.slot, args)
        else:  # unwatch
            link = self.watch_link
            if link is None:
                self.reply_value(merge.OK)
                return
            self.watch_link = None
            item = _Item(self, encode_command(b"UNWATCH"), plan.slot, True, self.resp3)
            self.enqueue(item)
            link.push(item, item.payload)

    def _watch(self, slot: int, args: list[bytes]) -> None:
        proxy = self.proxy
        up = proxy.owners[slot]
        if up is None:
            self.reply(_error_frame(f"CLUSTERDOWN Hash slot {slot} not served"))
            return
        link = self.watch_link
        if link is not None and link.up is not up:
            self.reply(
                _error_frame(
                    "CROSSSLOT Keys in request don't hash to the same slot: the keys already "
                    f"watched live on {link.up.address}, these on {up.address}; give them a "
                    "common hash tag, such as {user1}:a and {user1}:b"
                )
            )
            return
        link = self.watch_link = self.dedicated_link(up)
        item = _Item(self, encode_command(*args), slot, True, self.resp3, 1, _DEDICATED)
        self.enqueue(item)
        link.push(item, item.payload)

    def _queue_in_txn(self, args: list[bytes]) -> None:
        txn = self.txn
        assert txn is not None
        plan = self.proxy.router.route(args)
        if isinstance(plan, Reject):
            txn.aborted = True
            self.reply(plan.frame)
            return
        slot = ANY_SLOT
        if isinstance(plan, Single | Blocking):
            slot = plan.slot
        elif isinstance(plan, Local) and plan.kind in (LocalKind.PING, LocalKind.ECHO):
            slot = ANY_SLOT
        else:
            txn.aborted = True
            shown = args[0].decode("utf-8", "replace").upper()
            self.reply(
                _error_frame(
                    f"ERR {shown} cannot run inside MULTI through the smart tunnel (a transaction "
                    "runs on one cluster node; this command needs the tunnel or every node)"
                )
            )
            return
        if slot >= 0:
            if txn.slot >= 0 and txn.slot != slot:
                txn.aborted = True
                shown = args[0].decode("utf-8", "replace").upper()
                self.reply(
                    _error_frame(
                        "CROSSSLOT Keys in request don't hash to the same slot: through a "
                        f"cluster a transaction runs on one slot; its keys so far are in slot "
                        f"{txn.slot}, the keys of this {shown} in slot {slot}; give them a "
                        "common hash tag, such as {user1}:a and {user1}:b"
                    )
                )
                return
            txn.slot = slot
        txn.commands.append(encode_command(*args))
        self.reply(b"+QUEUED\r\n")

    def _end_txn(self) -> None:
        self.txn = None
        self.state &= ~_MULTI
        link = self.watch_link
        if link is not None:
            self.watch_link = None
            link.push(_SKIP, encode_command(b"UNWATCH"))

    def _exec(self, txn: _TxnState) -> None:
        watched = self.watch_link is not None
        link = self.watch_link
        self.txn = None
        self.state &= ~_MULTI
        self.watch_link = None
        if txn.aborted:
            if link is not None:
                link.push(_SKIP, encode_command(b"UNWATCH"))
            self.reply(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
            return
        payload = b"".join([encode_command(b"MULTI"), *txn.commands, encode_command(b"EXEC")])
        slot = txn.slot if txn.slot >= 0 else self.home_slot
        item = _Exec(self, payload, slot, len(txn.commands), watched)
        self.enqueue(item)
        up = self.proxy.owners[slot]
        if up is not None:
            self.written.add(up)
        if link is not None:
            link.push(item, payload)
        else:
            self.proxy.submit(item)

    # -- pub/sub

    def pubsub_link(self) -> _Link:
        link = self.pubsub
        if link is None or link.broken is not None:
            proxy = self.proxy
            up = proxy.owners[PUBSUB_SLOT]
            if up is None:
                up = proxy.upstream_at(proxy.cluster.seed.host, proxy.cluster.seed.port)
            link = self.pubsub = proxy.open_link(up, self.resp3, _PUBSUB, self)
        return link

    def _confirm_locally(self, verb: bytes, channels: Sequence[bytes], count: int) -> None:
        frames = []
        names: list[bytes | None] = list(channels) or [None]
        for channel in names:
            body: list[RespValue] = [verb, channel, count]
            frames.append(encode_value(Push(body) if self.resp3 else body, resp3=self.resp3))
        self.reply(b"".join(frames))

    def _subscribed(self) -> None:
        total = len(self.channels) + len(self.patterns) + len(self.shard_channels)
        if total and not self.resp3:
            self.state |= _SUBSCRIBED
        else:
            self.state &= ~_SUBSCRIBED

    def _pubsub(self, plan: PubSub, args: list[bytes]) -> None:
        verb = plan.verb
        channels = plan.channels
        payload = encode_command(*args)
        if verb in ("subscribe", "psubscribe"):
            target = self.channels if verb == "subscribe" else self.patterns
            target.update(channels)
            self._send_confirm(self.pubsub_link(), payload, len(channels))
        elif verb in ("unsubscribe", "punsubscribe"):
            target = self.channels if verb == "unsubscribe" else self.patterns
            count = len(channels) or max(1, len(target))
            if channels:
                target.difference_update(channels)
            else:
                target.clear()
            if self.pubsub is None:
                left = len(self.channels) + len(self.patterns)
                self._confirm_locally(verb.encode(), channels, left)
            else:
                self._send_confirm(self.pubsub, payload, count)
        elif verb == "ssubscribe":
            up = self.proxy.owners[plan.slot]
            if up is None:
                self.reply(_error_frame(f"CLUSTERDOWN Hash slot {plan.slot} not served"))
                return
            item = _Confirm(self, payload, plan.slot, len(channels), _SHARD, channels)
            self._queue_confirm(item)
            self.proxy.send(item, up, payload)
        else:
            self._sunsubscribe(channels)
        self._subscribed()

    def _send_confirm(self, link: _Link, payload: bytes, count: int) -> None:
        item = _Confirm(self, payload, ANY_SLOT, count, _PUBSUB)
        self._queue_confirm(item)
        link.push(item, payload)

    def _queue_confirm(self, item: _Item) -> None:
        self.confirms_queued += 1
        self.enqueue(item)

    def _sunsubscribe(self, channels: Sequence[bytes]) -> None:
        groups: dict[int, tuple[_Link, list[bytes]]] = {}
        if channels:
            unknown = []
            for channel in channels:
                link = self.shard_channels.pop(channel, None)
                if link is None:
                    unknown.append(channel)
                    continue
                groups.setdefault(id(link), (link, []))[1].append(channel)
            if unknown and not groups:
                self._confirm_locally(b"sunsubscribe", unknown, len(self.shard_channels))
                return
        else:
            for channel, link in self.shard_channels.items():
                groups.setdefault(id(link), (link, []))[1].append(channel)
            self.shard_channels.clear()
            if not groups:
                self._confirm_locally(b"sunsubscribe", (), 0)
                return
        gather = _ConfirmGather(self, len(groups), None, self.resp3)
        self._queue_confirm(gather)
        for index, (link, names) in enumerate(groups.values()):
            args = [b"SUNSUBSCRIBE", *names] if channels else [b"SUNSUBSCRIBE"]
            payload = encode_command(*args)
            part = _ConfirmPart(
                gather, index, payload, ANY_SLOT, True, expect=len(names), link_kind=_SHARD
            )
            link.push(part, payload)

    def server_unsubscribed(self, link: _Link, frame: bytes) -> None:
        """A shard dropped a channel on its own (its slot moved away)."""
        value = _parse(frame)
        if (
            isinstance(value, list)
            and len(value) > 1
            and isinstance(value[1], bytes)
            and self.shard_channels.get(value[1]) is link
        ):
            del self.shard_channels[value[1]]
        self._subscribed()

    # -- WAIT

    def _wait(self, args: list[bytes]) -> None:
        try:
            replicas = int(args[1])
            timeout = int(args[2])
        except ValueError:
            self.reply(_error_frame("ERR value is not an integer or out of range"))
            return
        if timeout < 0:
            self.reply(_error_frame("ERR timeout is negative"))
            return
        written = self.written
        self.written = set()
        wait_payload = encode_command(b"WAIT", b"%d" % replicas, b"%d" % timeout)

        def start(gather: _Deferred) -> None:
            proxy = self.proxy
            targets = [up for up in written if proxy.start_for(up) is not None]
            if not targets:
                home = proxy.owners[self.home_slot]
                targets = [home] if home is not None else []
            if not targets:
                gather.ready(_error_frame("CLUSTERDOWN the cluster has no master"))
                return
            gather.results = [b""] * len(targets)
            gather.remaining = len(targets)
            gather.raw = False
            gather.combine = lambda values: merge.merge_fanout(Agg.MIN, values)
            for index, up in enumerate(targets):
                start_slot = proxy.start_for(up) or 0
                key = b"__redis_client_wait__{" + tag_for_slot(start_slot).encode() + b"}"
                marker = encode_command(b"EVAL", _WAIT_MARKER, b"1", key)
                part = _WaitPart(
                    gather,
                    index,
                    marker + wait_payload,
                    start_slot,
                    True,
                    expect=2,
                    link_kind=_DEDICATED,
                    last=True,
                )
                proxy.send(part, up, part.payload)

        deferred = _Deferred(self, start, self.resp3)
        self.enqueue(deferred)
        if self.queue[0] is deferred:  # nothing before it: start now
            deferred.begin()


# --------------------------------------------------------------------------- serving


async def _bind(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=1024)
    except OSError as exc:
        where = format_hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {where}: the port is in use",
                hint="pick another with --local-port",
            ) from exc
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


async def serve_smart(
    config: TunnelConfig,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    retry_window: float = RETRY_WINDOW,
    stall_timeout: float = STALL_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    stats: RelayStats | None = None,
    counters: SmartStats | None = None,
    task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One plaintext listener on which the whole cluster behaves as one standalone Redis.

    Prints ``LISTEN:PORT -> SEED:PORT (cluster)`` and a ``ready`` line, then serves until
    cancelled.

    Args:
        config: the seed node (with login and TLS), the listen address and port, and the local
            password.
        pool_size: shared upstream connections per node (and per protocol).
        retry_window: how long a command is retried through TRYAGAIN, CLUSTERDOWN, LOADING, a
            failover or an unreachable node before the client gets the error (seconds).
        stall_timeout: a node connection with commands pending (none blocking) that sends
            nothing for this long is dropped: its commands are retried or answered with an
            error, so none waits forever on a node that hangs.
        connect_timeout: the limit for connecting to a node (TCP, TLS, login).
        stats, counters: counters to fill (connections; redirects and retries).

    Raises:
        ConfigError: the port cannot be bound, or a bad pool size.
        ConnectError: the seed node cannot be reached or refuses the login.
    """
    if pool_size < 1:
        raise ConfigError(f"invalid pool size {pool_size}: expected 1 or more")
    stats = stats or RelayStats()
    listeners = await _bind(config.listen, config.local_port)
    port = listeners[0].socket.getsockname()[1]
    local = Endpoint(announce_host(config.listen), port)
    upstream = Endpoint(config.upstream.host, config.upstream.port)
    async with open_cluster(config.upstream) as cluster, trio.open_nursery() as nursery:
        me = merge.SelfNode(
            local.host,
            local.port,
            merge.fake_node_id(local.host, local.port),
            cluster.commands.redis_version or "7.0.0",
        )
        proxy = _Proxy(
            cluster,
            nursery,
            pool_size=pool_size,
            local_password=config.local_password,
            me=me,
            stats=stats,
            counters=counters or SmartStats(),
            retry_window=retry_window,
            stall_timeout=stall_timeout,
            connect_timeout=connect_timeout,
        )
        nursery.start_soon(proxy.refresher)
        nursery.start_soon(proxy.watchdog)
        config.say(f"{local} -> {upstream} (cluster)")
        masters = len(proxy.starts)
        config.say(f"ready: 1 listener (smart, {masters} masters) on {local}; Ctrl-C to stop")
        await nursery.start(trio.serve_listeners, proxy.handle, listeners)
        task_status.started(TunnelInfo([ListenerInfo(local, upstream, "cluster")], stats))
        await trio.sleep_forever()
