"""Smart mode: the cluster nodes and the pipelined connections to them.

An :class:`Upstream` is one node as the tunnel dials it (a master, or a replica read with
``--read-from``); a :class:`Link` is one pipelined connection to it: one writer task that sends
everything queued in one write, one reader task that scans reply frames (client.resp
FrameScanner, no value parsing) and completes the FIFO of pending holders (tunnel.holders).

Links of the tunnel's own making (see :meth:`Link.push_internal`): ``ASKING`` before an asked
command, ``UNWATCH`` after a transaction, ``READONLY`` first on every link to a replica, and
``AUTH`` on every live link when the credential rotates (``--password-command``, ``--entra``).
Their replies are consumed by the link: no client sees them, the statistics do not count them.

Pub/sub links of a RESP2 client speak RESP3 when the credential can rotate: a RESP2 connection
with subscriptions refuses AUTH, a RESP3 one does not; the link turns the RESP3 push frames
back into RESP2 arrays for the client (messages by their header alone).

Statistics (``--stats``, ``--dashboard``, ``TUNNEL INFO``): each :class:`Upstream` owns one
:class:`tunnel.stats.ConnectionCounters` shared by all its links (None: counting is off). A
reader counts once per chunk of replies (frames, bytes, and one latency sample: the oldest
request of the chunk), less the frames no client sees (:meth:`Link.skip`: the redirects the
proxy follows, the replies to the tunnel's own commands), which are noted where they are
recognised; a writer counts the bytes of each write, less the tunnel's own commands. The
proxy publishes the counters once a second.

Replies of a pipelined run (tunnel.holders.Run) that are all in one chunk, none an error, are
handed over as one slice of the chunk: no per-reply work beyond finding where they end.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

import trio

from client.connection import open_authenticated_stream
from client.errors import RedisToolkitError, RespProtocolError
from client.options import ServerOptions
from client.replicas import ReplicaTracker
from client.resp import FrameScanner, encode_command, encode_value
from client.topology import Node
from tunnel.holders import (
    NO_FRAMES,
    PUBSUB,
    RECEIVE_SIZE,
    RETRY_HEADS,
    RETRY_PREFIXES,
    SHARD,
    SHARED,
    Internal,
    Item,
    Run,
    parse_frame,
)
from tunnel.rewrite import format_hostport
from tunnel.route import split_replies
from tunnel.stats import ConnectionCounters

if TYPE_CHECKING:
    from tunnel.session import Session
    from tunnel.smart import Proxy

__all__ = ["MAX_LINK_OUT", "Link", "ReplicaLink", "Upstream", "pubsub_kind"]

log = logging.getLogger("tunnel.smart")

#: Unsent bytes on one upstream link before the clients feeding it wait.
MAX_LINK_OUT = 8 * 1024 * 1024
_MESSAGES = frozenset((b"message", b"pmessage", b"smessage"))
_READONLY = encode_command(b"READONLY")
_NOT_SERVED = (b"-LOADING", b"-MOVED ", b"-ASK ", b"-TRYAGAIN", b"-CLUSTERDOWN")


class Upstream:
    """One cluster node as the tunnel dials it: address, login settings, shared links.

    A master and a replica are distinct objects even at one address (a failover swaps the
    roles: the links of a replica sent READONLY, those of a master never do).

    Attributes:
        node: the topology's node (a stand-in made from the address after a MOVED to a node
            the topology does not know yet).
        replica: links send READONLY; reads only.
        replica_nodes, replica_ups: a master's replicas (topology order) and their upstreams.
        counters: the node's statistics (None: counting is off).
        lost: shared link positions (resp3, index) whose link failed: the next dial there
            counts as a reconnect.
    """

    __slots__ = (
        "address",
        "counters",
        "host",
        "links2",
        "links3",
        "lost",
        "node",
        "opts",
        "port",
        "replica",
        "replica_nodes",
        "replica_ups",
    )

    def __init__(
        self,
        node: Node,
        opts: ServerOptions,
        pool_size: int,
        *,
        replica: bool = False,
        counters: ConnectionCounters | None = None,
    ) -> None:
        self.node = node
        self.host = opts.host
        self.port = opts.port
        self.address = format_hostport(opts.host, opts.port)
        self.opts = opts
        self.replica = replica
        self.counters = counters
        self.links2: list[Link | None] = [None] * pool_size
        self.links3: list[Link | None] = [None] * pool_size
        self.lost: set[tuple[bool, int]] = set()
        self.replica_nodes: tuple[Node, ...] = ()
        self.replica_ups: dict[str, Upstream] = {}

    def forget(self, link: Link) -> None:
        for resp3, links in ((False, self.links2), (True, self.links3)):
            for i, existing in enumerate(links):
                if existing is link:
                    links[i] = None
                    self.lost.add((resp3, i))

    def shared_links(self) -> list[Link]:
        return [link for link in (*self.links2, *self.links3) if link is not None]


class Link:
    """A pipelined connection to one node (see the module notes)."""

    __slots__ = (
        "broken",
        "downgrade",
        "drained",
        "has_output",
        "internal_out",
        "kind",
        "last_progress",
        "out",
        "out_bytes",
        "owner",
        "pending",
        "proxy",
        "resp3",
        "scope",
        "skipped",
        "skipped_bytes",
        "unsent",
        "up",
    )

    def __init__(
        self,
        proxy: Proxy,
        up: Upstream,
        resp3: bool,
        kind: int = SHARED,
        owner: Session | None = None,
        *,
        downgrade: bool = False,
    ) -> None:
        self.proxy = proxy
        self.up = up
        self.resp3 = resp3
        self.kind = kind
        self.owner = owner
        #: A RESP3 pub/sub link serving a RESP2 client: pushes become arrays.
        self.downgrade = downgrade
        self.pending: collections.deque[Item] = collections.deque()
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.unsent = 0
        #: Bytes of the tunnel's own commands in ``out`` (not counted as client traffic).
        self.internal_out = 0
        #: Reply frames (and their bytes) of the chunk being read that clients never see.
        self.skipped = 0
        self.skipped_bytes = 0
        self.broken: str | None = None
        self.has_output = trio.Event()
        self.drained = trio.Event()
        self.drained.set()
        self.scope = trio.CancelScope()
        self.last_progress = 0.0

    def push(self, item: Item, payload: bytes) -> None:
        if self.broken is not None:
            self.proxy.lost(item, False, self.broken, self.up)
            return
        if not self.pending:
            self.last_progress = trio.current_time()
        self.pending.append(item)
        self.out.append(payload)
        self.unsent += 1
        self.out_bytes += len(payload)
        self.has_output.set()
        if self.out_bytes > MAX_LINK_OUT:
            session = item.session
            if session is not None:
                self.congested(session)

    def congested(self, session: Session) -> None:
        """More than MAX_LINK_OUT bytes wait: ``session`` stops reading until they are sent."""
        if self.drained.is_set():
            self.drained = trio.Event()
        session.congested = self

    def push_internal(self, verb: bytes, payload: bytes) -> None:
        """Send a command of the tunnel's own; its reply goes to :meth:`internal_reply`."""
        if self.broken is not None:
            return
        self.internal_out += len(payload)
        self.push(Internal(self, verb, trio.current_time()), payload)

    def internal_reply(self, item: Internal, frame: bytes) -> None:
        """The reply to a command of the tunnel's own: taken out of the statistics; a refused
        READONLY breaks the link, a refused AUTH is logged (the link keeps its login)."""
        self.skip(frame)
        if frame[:1] not in (b"-", b"!"):
            return
        text = frame[1:].decode("utf-8", "replace").strip()
        if item.verb == b"READONLY":
            self._fail(f"{self.up.address} refused READONLY: {text}")
        elif item.verb == b"AUTH":
            log.warning(
                "smart tunnel: %s refused the new credential on a live connection: %s; the "
                "connection keeps its current login",
                self.up.address,
                text,
            )

    def skip(self, frame: bytes) -> None:
        """A reply frame of the chunk being read that no client sees (a redirect, the reply
        to an internal command): not counted."""
        if self.up.counters is not None:
            self.skipped += 1
            self.skipped_bytes += len(frame)

    def reauth(self, payload: bytes) -> None:
        """Log in again in place (the encoded AUTH): pipelined like any command."""
        self.push_internal(b"AUTH", payload)

    def close(self) -> None:
        self._fail("the link was closed", connected=True)

    # -- tasks

    async def serve(self) -> None:
        """Connect, then run the writer and the reader until the link fails or is closed."""
        with self.scope:
            stream: trio.abc.Stream | None = None
            proxy = self.proxy
            try:
                with trio.move_on_after(proxy.connect_timeout):
                    opts = self.up.opts
                    credential = await proxy.login()
                    if credential is not None:
                        opts = credential.apply_to(opts)
                    stream = await open_authenticated_stream(
                        opts, protocol=3 if self.resp3 else None
                    )
            except (RedisToolkitError, OSError) as exc:
                text = str(exc)
                if proxy.credentials is not None:
                    text = proxy.credentials.redact(text)
                self._fail(f"cannot connect to {self.up.address}: {text}", connected=False)
                return
            if stream is None:
                timeout = proxy.connect_timeout
                self._fail(
                    f"cannot connect to {self.up.address}: no answer in {timeout:g} s",
                    connected=False,
                )
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream)
                    if self.kind in (PUBSUB, SHARD):
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
        counters = self.up.counters
        try:
            while True:
                await self.has_output.wait()
                self.has_output = trio.Event()
                while out:
                    data = b"".join(out)
                    out.clear()
                    self.out_bytes = 0
                    self.unsent = 0
                    if counters is not None:
                        counters.bytes_in += len(data) - self.internal_out
                    self.internal_out = 0
                    if not self.drained.is_set():
                        self.drained.set()
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"lost the connection to {self.up.address}: {exc or 'closed'}")

    async def _reader(self, stream: trio.abc.Stream) -> None:
        scanner = FrameScanner()
        proxy = self.proxy
        replies = self.replies
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
                    if not replies(data, scanner):
                        return
                finally:
                    proxy.flush_dirty()
        except RespProtocolError as exc:
            self._fail(f"{self.up.address} sent invalid RESP: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"lost the connection to {self.up.address}: {exc or 'closed'}")

    def replies(self, data: bytes, scanner: FrameScanner) -> bool:
        """One chunk from the node: complete the holders it answers; False when the link
        broke on it. Raises RespProtocolError."""
        pending = self.pending
        counters = self.up.counters
        now = self.last_progress = trio.current_time()
        size = len(data)
        born = pending[0].born if counters is not None and pending else now
        frames = 0
        if not scanner.buffered:
            # the fast path: simple replies split in one go (see split_replies)
            reply = self._reply
            ends, used = split_replies(data)
            count = len(ends)
            start = index = 0
            while index < count:
                item = pending[0] if pending else None
                if type(item) is Run and not item.frames:
                    # a whole run's replies at once, when they are all here and none is an
                    # error (bulk payloads here hold no CR LF, so an error frame shows as
                    # CR LF '-'; a bulk of '-...' only costs the slow path)
                    last = index + item.expect - 1
                    if last < count:
                        end = ends[last]
                        span = data[start:end]
                        if span[0] != 45 and b"\r\n-" not in span:
                            self._run_replied(item, span)
                            start = end
                            index = last + 1
                            continue
                end = ends[index]
                if not reply(data[start:end], data[start]):
                    return False
                start = end
                index += 1
            frames = count
            if used:
                data = data[used:]
        if data:
            scanner.feed(data)
            while (frame := scanner.next_frame()) is not None:
                if frame.kind != 62:  # ('>' pushes: nobody asked for them on a shared link)
                    frames += 1
                    if not self._reply(frame.data, frame.kind):
                        return False
        if counters is not None:
            counters.bytes_out += size - self.skipped_bytes
            frames -= self.skipped
            self.skipped = self.skipped_bytes = 0
            if frames > 0:
                counters.record(int((now - born) * 1e9), frames)
        return True

    def _run_replied(self, run: Run, span: bytes) -> None:
        """Every reply of ``run`` (the head of the FIFO), none an error: ``span``."""
        self.pending.popleft()
        run.ready(span)

    def _reply(self, raw: bytes, kind: int) -> bool:
        """One reply frame for the head of the FIFO; False when the link broke on it."""
        pending = self.pending
        if not pending:
            self._fail(f"{self.up.address} sent a reply nobody asked for")
            return False
        item = pending[0]
        if item.expect == 1:
            pending.popleft()
            if kind == 45:
                if raw[1:3] in RETRY_HEADS and raw.startswith(RETRY_PREFIXES):
                    self.proxy.retry_reply(item, raw, self)
                    return True
                counters = self.up.counters
                if counters is not None and item.session is not None:
                    counters.errors += 1
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
        counters = self.up.counters
        downgrade = self.downgrade
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self._fail(f"{self.up.address} closed the connection")
                    return
                scanner.feed(data)
                for frame in scanner.pop_frames():
                    raw = frame.data
                    kind = pubsub_kind(raw)
                    if kind in _MESSAGES or not pending:
                        if kind == b"sunsubscribe":
                            session.server_unsubscribed(self, raw)
                        if counters is not None:
                            counters.bytes_out += len(raw)
                        await session.push_oob(_to_resp2(raw, kind) if downgrade else raw)
                        continue
                    item = pending[0]
                    if counters is not None and item.session is not None:
                        counters.ops += 1
                        counters.bytes_out += len(raw)
                    if item.frames is NO_FRAMES:
                        item.frames = []
                    item.frames.append(_to_resp2(raw, kind) if downgrade else raw)
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
        self.internal_out = 0
        self.drained.set()
        self.has_output.set()
        self.scope.cancel()
        self._failed(items, reason)
        for i, item in enumerate(items):
            self.proxy.lost(item, connected and i < first_unsent, reason, self.up)
        if self.owner is not None:
            self.owner.link_failed(self)

    def _failed(self, items: list[Item], reason: str) -> None:
        """Hook: the link broke with ``items`` pending (before they are retried)."""


class ReplicaLink(Link):
    """A shared link to a replica: READONLY first, and every read bracketed for the replica
    tracker (client.replicas: least in flight, stalls, failures)."""

    __slots__ = ("tracker",)

    def __init__(self, proxy: Proxy, up: Upstream, resp3: bool, tracker: ReplicaTracker) -> None:
        super().__init__(proxy, up, resp3)
        self.tracker = tracker
        self.push_internal(b"READONLY", _READONLY)

    def push(self, item: Item, payload: bytes) -> None:
        session = item.session
        if self.broken is None and session is not None and not item.token:
            item.token = self.tracker.start_read(self.up.node, session.now)
        Link.push(self, item, payload)

    def _run_replied(self, run: Run, span: bytes) -> None:
        if run.token:
            self.tracker.end_read(run.token, served=True)
            run.token = 0
        Link._run_replied(self, run, span)

    def _reply(self, raw: bytes, kind: int) -> bool:
        pending = self.pending
        if pending:
            item = pending[0]
            if item.token and (item.expect == 1 or len(item.frames) + 1 >= item.expect):
                token, item.token = item.token, 0
                served = kind != 45 or not raw.startswith(_NOT_SERVED)
                self.tracker.end_read(token, served=served)
        return Link._reply(self, raw, kind)

    def _failed(self, items: list[Item], reason: str) -> None:
        for item in items:
            if item.token:
                self.tracker.end_read(item.token, served=False)
                item.token = 0
        if not reason.startswith("the link was closed"):
            self.proxy.replica_failed(self.up, reason)


def _to_resp2(frame: bytes, kind: bytes) -> bytes:
    """A RESP3 pub/sub frame as a RESP2 client expects it (other frames unchanged)."""
    if frame[:1] != b">":
        return frame
    if kind in _MESSAGES:
        return b"*" + frame[1:]  # messages hold bulk strings only: same bytes in RESP2
    return encode_value(parse_frame(frame), resp3=False)  # e.g. a null channel name


def pubsub_kind(frame: bytes) -> bytes:
    """The first element of an array/push frame, lowercased ("message", "subscribe", ...)."""
    if frame[:1] not in (b"*", b">"):
        return b""
    value = parse_frame(frame)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return value[0].lower()
    return b""
