"""Smart mode: one local client (a Session): its reader, router calls and writer.

See :mod:`tunnel.smart` for the whole picture. The reader parses the client's commands, routes
each one (:mod:`tunnel.route`) and starts it synchronously, appending its holder
(:mod:`tunnel.holders`) to the reply queue; the writer writes the replies in request order.
The commands the session answers itself live in :mod:`tunnel.local`.
"""

from __future__ import annotations

import collections
import logging
import socket
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from client.errors import RespProtocolError
from client.resp import NEED_DATA, RespParser, encode_command, encode_value
from client.values import RespValue
from tunnel import local, merge, stateful
from tunnel.holders import (
    CLOSING,
    DEDICATED,
    MAX_RUN,
    MULTI,
    MUTED,
    NEED_AUTH,
    PUBSUB,
    RECEIVE_SIZE,
    SHARD,
    SHARED,
    SUBSCRIBED,
    BlockingItem,
    Gather,
    Item,
    Part,
    Run,
    error_frame,
    parse_frame,
)
from tunnel.rewrite import format_hostport
from tunnel.route import (
    PUBSUB_SLOT,
    Blocking,
    FanOut,
    Local,
    Plan,
    PubSub,
    Reject,
    Scan,
    Single,
    Split,
    Txn,
    Wait,
    split_requests,
)
from tunnel.stats import ConnectionCounters
from tunnel.upstream import MAX_LINK_OUT

if TYPE_CHECKING:
    from tunnel.smart import Proxy
    from tunnel.upstream import Link, Upstream

__all__ = ["CLOSE_GRACE", "MAX_OOB", "MAX_QUEUE", "ClientSocket", "Session"]

log = logging.getLogger("tunnel.smart")

#: Replies in flight per client before the tunnel stops reading that client.
MAX_QUEUE = 4096
#: Pub/sub message bytes waiting for a slow client before its pub/sub links stop reading.
MAX_OOB = 4 * 1024 * 1024
#: How long replies still in flight may take to reach a client that is closing.
CLOSE_GRACE = 2.0
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


class ClientSocket:
    """The local client's TCP socket, driven directly (no trio.SocketStream layers).

    ``send`` is tried first and trio waits for readiness only when the socket would block, as
    client.transport does for TLS. ``recv`` is tried first only after a read that filled the
    buffer (more is probably waiting); after a short read the socket is drained, and a client
    that waits for its replies has sent nothing yet, so the reader waits for readiness first
    instead of paying for a recv that fails. Only the session's reader task reads, and only
    its writer task (or a flush while that writer is parked) writes.
    """

    __slots__ = ("closed", "drained", "sock")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.sock = socket.socket(fileno=stream.socket.detach())
        self.sock.setblocking(False)
        self.closed = False
        self.drained = False

    async def receive(self) -> bytes:
        """Up to RECEIVE_SIZE bytes; b"" at EOF or when the connection broke."""
        sock = self.sock
        yielded = self.drained
        if yielded:
            await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                yielded = True
                continue
            except OSError:
                data = b""
            self.drained = len(data) < RECEIVE_SIZE
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


class Session:
    """One local client (see the module notes).

    Attributes worth knowing from outside: ``now`` is the clock (trio.current_time) of the
    input chunk being handled: the birth time of its holders, and the time replica choices
    use; ``counters`` holds what the session answered itself (None: counting is off);
    ``sticky`` is the read-your-writes affinity (reads go to masters, see tunnel.smart).
    """

    def __init__(self, proxy: Proxy, stream: trio.SocketStream, session_id: int) -> None:
        self.proxy = proxy
        self.route = proxy.router.route
        self.client = ClientSocket(stream)
        self.id = session_id
        starts = proxy.starts
        self.home_slot = starts[session_id % len(starts)] if starts else 0
        self.link_index = session_id % proxy.pool_size
        self.queue: collections.deque[Item] = collections.deque()
        self.waiting = False
        self.wake = trio.Event()
        self.room = trio.Event()
        self.flushed = trio.Event()
        self.congested: Link | None = None
        self.closed = False
        self.resp3 = False
        self.state = NEED_AUTH if proxy.local_password is not None else 0
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
        self.last: Item | None = None  # the hot path's last item, while it may grow a run
        self.txn: stateful.TxnState | None = None
        self.watch_link: Link | None = None
        self.dedicated: dict[tuple[int, bool], Link] = {}
        self.pubsub: Link | None = None
        self.shards: dict[int, Link] = {}
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.shard_channels: dict[bytes, Link] = {}
        self.oob: collections.deque[bytes] = collections.deque()
        self.oob_bytes = 0
        self.oob_room = trio.Event()
        self.confirms_queued = 0
        self.written: set[Upstream] = set()
        self.wrote: Upstream | None = None  # the last one added to ``written``
        self.now = self.created
        self.counters = ConnectionCounters() if proxy.tunnel_stats is not None else None
        #: Reads may go to replicas (--read-from replica or prefer-replica).
        self.reads = proxy.reads
        #: The last non-read command may have written: reads go to the masters.
        self.sticky = False
        #: Where this chunk's reads for each master go (the replica picked for the first).
        self.picks: dict[Upstream, Upstream] = {}
        #: Dedicated link keys whose link broke (the next dial is a reconnect).
        self.lost: set[tuple[int, bool]] = set()

    # -- lifetime

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, nursery.cancel_scope)
            await self._reader()
            self.state |= CLOSING
            self.wake.set()
            with trio.move_on_after(CLOSE_GRACE):
                await self.flushed.wait()
            nursery.cancel_scope.cancel()

    def own_links(self) -> list[Link]:
        """The session's dedicated, shard pub/sub and pub/sub links."""
        links = [*self.dedicated.values(), *self.shards.values()]
        if self.pubsub is not None:
            links.append(self.pubsub)
        return links

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flushed.set()
        self.oob_room.set()
        links = self.own_links()
        self.dedicated.clear()
        self.shards.clear()
        self.pubsub = None
        for link in links:
            link.close()
        self.client.close()

    def link_failed(self, link: Link) -> None:
        for key, existing in list(self.dedicated.items()):
            if existing is link:
                del self.dedicated[key]
                self.lost.add(key)
        for shard, existing in list(self.shards.items()):
            if existing is link:
                del self.shards[shard]
        if link is self.watch_link:
            self.watch_link = None
        if link.kind in (PUBSUB, SHARD):
            if link is self.pubsub:
                self.pubsub = None
            if not self.closed and (self.channels or self.patterns or self.shard_channels):
                # Subscriptions are gone with the connection: close the client, as a server
                # restart would, so its library reconnects and subscribes again.
                self.state |= CLOSING
                self.wake.set()
                self.room.set()
                self.client.shutdown()

    def dedicated_link(self, up: Upstream) -> Link:
        key = (id(up), self.resp3)
        link = self.dedicated.get(key)
        if link is None or link.broken is not None:
            again = link is not None or key in self.lost
            self.lost.discard(key)
            link = self.proxy.open_link(up, self.resp3, DEDICATED, self, again=again)
            self.dedicated[key] = link
        return link

    def shard_link(self, up: Upstream) -> Link:
        link = self.shards.get(id(up))
        if link is None or link.broken is not None:
            link = self.proxy.open_link(up, self.resp3, SHARD, self)
            self.shards[id(up)] = link
        return link

    # -- reading

    async def _reader(self) -> None:
        parser = RespParser(requests=True)
        client = self.client
        queue = self.queue
        dispatch = self.dispatch
        proxy = self.proxy
        while not self.state & CLOSING:
            data = await client.receive()
            if not data:
                return
            self.now = trio.current_time()
            proxy.batching = True
            try:
                if not parser.buffered:
                    # the fast path: whole plain frames, forwarded as they came
                    commands, used = split_requests(data)
                    for args, start, end in commands:
                        dispatch(args, data[start:end])
                        if self.state & CLOSING:
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
                        if self.state & CLOSING:
                            return
            except RespProtocolError as exc:
                proxy.stats.protocol_errors += 1
                self.reply(exc.resp_line())
                return
            finally:
                self.last = None
                if self.picks:
                    self.picks.clear()
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
                    if self.state & CLOSING and not queue:
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

    def enqueue(self, item: Item) -> None:
        if self.state & MUTED:
            if self.reply_off:
                item.muted = True
            elif self.skip:
                item.muted = True
                self.skip -= 1
                if not self.skip:
                    self.state &= ~MUTED
        self.queue.append(item)

    def reply(self, frame: bytes) -> None:
        """A reply the tunnel knows now (answered by the tunnel: ends a write's affinity)."""
        self.sticky = False
        counters = self.counters
        if counters is not None:
            counters.bytes_out += len(frame)
            if frame[:1] == b"-":
                counters.errors += 1
            counters.record(int((trio.current_time() - self.now) * 1e9))
        item = Item(self)
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
            self.state |= CLOSING
            self.queue.clear()
            return
        if self.state:
            if not self._gate(args):
                self._dispatch_plan(self.route(args), args)
            return
        plan = self.route(args)
        if type(plan) is not Single:
            self._dispatch_plan(plan, args)
            return
        slot, readonly, write = plan
        if slot < 0:
            slot = self.home_slot
        proxy = self.proxy
        queue = self.queue
        payload = frame or encode_command(*args)
        spread = False
        up = proxy.owners[slot]
        if up is None:
            spread = readonly and self.reads and self._may_spread()
            item = Item(self, payload, slot, readonly, self.resp3, 1, SHARED, spread)
            queue.append(item)
            proxy.retry_later(item, f"slot {slot} has no owner in the cluster")
            return
        if readonly:
            if self.reads and not self.sticky and self.watch_link is None:
                # --read-from replica / prefer-replica: a replica of the slot's master, the
                # same one for every read of this chunk (a pipeline of reads is one run)
                spread = True
                target = self.picks.get(up)
                if target is None:
                    target = proxy.pick_read(up, self.now)
                    if target is None:  # no healthy replica: submit() answers (or waits)
                        item = Item(self, payload, slot, True, self.resp3, 1, SHARED, True)
                        queue.append(item)
                        self.last = None
                        proxy.submit(item)
                        return
                    self.picks[up] = target
                up = target
        else:
            self.sticky = True  # it may write: the next reads go to the master
            if write and up is not self.wrote:
                self.wrote = up
                self.written.add(up)
        link = (up.links3 if self.resp3 else up.links2)[self.link_index]
        if link is None:
            link = proxy.shared_link(up, self.resp3, self.link_index)
        prev = self.last
        if prev is not None:
            pending = link.pending
            if pending and pending[-1] is prev and queue[-1] is prev and prev.expect < MAX_RUN:
                # the previous command went to this link too and is still its last: join it
                if type(prev) is Run:
                    run = prev
                else:
                    run = self.last = Run(self, prev, link)
                    queue[-1] = run
                    pending[-1] = run
                # Run.add and Link.extend, inlined (the link's writer was woken by the run's
                # first command, in this same chunk, and has not run since)
                run.payloads.append(payload)
                run.expect += 1
                if not readonly:
                    run.readonly = False
                link.out.append(payload)
                link.out_bytes += len(payload)
                if link.out_bytes > MAX_LINK_OUT:
                    link.congested(self)
                return
        item = self.last = Item(self, payload, slot, readonly, self.resp3, 1, SHARED, spread)
        queue.append(item)
        link.push(item, payload)

    def _may_spread(self) -> bool:
        """A read now may go to a replica: no affinity to the masters (see tunnel.smart)."""
        return not self.sticky and self.watch_link is None and self.txn is None

    def _gate(self, args: list[bytes]) -> bool:
        """Session states: True when the command was handled here."""
        state = self.state
        name = args[0].lower()
        if state & NEED_AUTH and name not in _NEED_AUTH_OK:
            self.reply_value(merge.NOAUTH)
            return True
        if state & MULTI and name not in _TXN_CONTROL:
            stateful.queue_in_txn(self, args)
            return True
        if state & SUBSCRIBED and name not in _SUBSCRIBED_OK:
            shown = args[0].decode("utf-8", "replace").lower()
            self.reply(
                error_frame(
                    f"ERR Can't execute '{shown}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                    "PING / QUIT / RESET are allowed in this context"
                )
            )
            return True
        if state & SUBSCRIBED and name == b"ping":
            self.reply_value([b"pong", args[1] if len(args) > 1 else b""])
            return True
        return False

    def _dispatch_plan(self, plan: Plan, args: list[bytes]) -> None:
        if isinstance(plan, Reject):
            self.reply(plan.frame)
        elif isinstance(plan, Local):
            local.answer(self, plan.kind, args)
        elif isinstance(plan, Split):
            self._split(plan)
        elif isinstance(plan, FanOut):
            self._fanout(plan, args)
        elif isinstance(plan, Scan):
            self._scan(plan)
        elif isinstance(plan, Blocking):
            if not plan.readonly:
                self.sticky = True
            blocked = BlockingItem(
                self, encode_command(*args), plan.slot, plan.readonly, self.resp3, 1, DEDICATED
            )
            self.enqueue(blocked)
            self.proxy.submit(blocked)
        elif isinstance(plan, Txn):
            stateful.transaction(self, plan, args)
        elif isinstance(plan, PubSub):
            self.sticky = False
            stateful.pubsub(self, plan, args)
        elif isinstance(plan, Wait):
            self.sticky = False
            stateful.wait(self, args)
        else:  # Single, on the slow path (a session state is set)
            slot = plan.slot if plan.slot >= 0 else self.home_slot
            spread = plan.readonly and self.reads and self._may_spread()
            item = Item(
                self, encode_command(*args), slot, plan.readonly, self.resp3, 1, SHARED, spread
            )
            self.enqueue(item)
            if not plan.readonly:
                self.sticky = True
                up = self.proxy.owners[slot]
                if plan.write and up is not None:
                    self.written.add(up)
            self.proxy.submit(item)

    # -- split and fan-out

    def _split(self, plan: Split) -> None:
        gather = Gather(self, len(plan.parts), partial(merge.merge_split, plan), self.resp3)
        self.enqueue(gather)
        proxy = self.proxy
        spread = plan.readonly and self.reads and self._may_spread()
        if not plan.readonly:
            self.sticky = True
        for index, part in enumerate(plan.parts):
            sub = Part(gather, index, encode_command(*part.args), part.slot, plan.readonly)
            sub.spread = spread
            if not plan.readonly:
                up = proxy.owners[part.slot]
                if up is not None:
                    self.written.add(up)
            proxy.submit(sub)

    def _fanout(self, plan: FanOut, args: list[bytes]) -> None:
        proxy = self.proxy
        starts = list(proxy.starts)
        if not starts:
            self.reply(error_frame("CLUSTERDOWN the cluster has no master with slots"))
            return
        combine: Callable[[list[RespValue]], RespValue] = partial(
            merge.merge_fanout, plan.agg, rng=proxy.rng
        )
        gather = Gather(self, len(starts), combine, self.resp3)
        self.enqueue(gather)
        payload = encode_command(*args)
        spread = plan.readonly and self.reads and self._may_spread()
        if not plan.readonly:
            self.sticky = True
        for index, start in enumerate(starts):
            if not plan.readonly:
                up = proxy.owners[start]
                if up is not None:
                    self.written.add(up)
            part = Part(gather, index, payload, start, plan.readonly)
            part.spread = spread
            proxy.submit(part)

    def _scan(self, plan: Scan) -> None:
        proxy = self.proxy
        slot, node_cursor = merge.scan_decode(plan.cursor)
        up = proxy.owners[slot]
        start = proxy.start_for(up) if up is not None else None
        if start is None:
            self.reply(error_frame(f"CLUSTERDOWN Hash slot {slot} not served"))
            return
        starts = list(proxy.starts)
        gather = Gather(
            self, 1, lambda values: merge.scan_reply(values[0], starts, start), self.resp3
        )
        self.enqueue(gather)
        payload = encode_command(b"SCAN", b"%d" % node_cursor, *plan.rest)
        proxy.submit(Part(gather, 0, payload, start, True))

    # -- for the links

    def pubsub_link(self) -> Link:
        link = self.pubsub
        if link is None or link.broken is not None:
            proxy = self.proxy
            up = proxy.owners[PUBSUB_SLOT]
            if up is None:
                up = proxy.upstream_at(proxy.cluster.seed.host, proxy.cluster.seed.port)
            link = self.pubsub = proxy.open_link(up, self.resp3, PUBSUB, self)
        return link

    def server_unsubscribed(self, link: Link, frame: bytes) -> None:
        """A shard dropped a channel on its own (its slot moved away)."""
        value = parse_frame(frame)
        if (
            isinstance(value, list)
            and len(value) > 1
            and isinstance(value[1], bytes)
            and self.shard_channels.get(value[1]) is link
        ):
            del self.shard_channels[value[1]]
        stateful.subscribed(self)
