"""Smart mode: the shared constants and the reply holders (no I/O).

A holder (:class:`Item` and its subclasses) is a place in a client session's reply queue and,
usually, a request in an upstream link's FIFO at the same time: the link completes it with the
node's reply frame(s), the session writes it once every earlier reply was written. See
:mod:`tunnel.smart` for the whole picture; :mod:`tunnel.session` and :mod:`tunnel.upstream` for
the two sides that move them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from client.errors import RespProtocolError
from client.resp import NEED_DATA, RespParser, encode_command, encode_value
from client.values import RespValue
from tunnel import merge
from tunnel.route import ANY_SLOT, Single

if TYPE_CHECKING:
    from tunnel.session import Session
    from tunnel.upstream import Link

__all__ = [
    "ASKING",
    "CLOSING",
    "DEDICATED",
    "MAX_RUN",
    "MULTI",
    "MUTED",
    "NEED_AUTH",
    "NO_FRAMES",
    "PUBSUB",
    "RECEIVE_SIZE",
    "RETRY_HEADS",
    "RETRY_PREFIXES",
    "SHARD",
    "SHARED",
    "SUBSCRIBED",
    "BlockingItem",
    "Confirm",
    "ConfirmGather",
    "ConfirmPart",
    "Deferred",
    "Exec",
    "Gather",
    "Internal",
    "Item",
    "Part",
    "Run",
    "RunPart",
    "WaitPart",
    "command_name",
    "error_frame",
    "parse_frame",
]

RECEIVE_SIZE = 65536

# Link kinds: shared by every session; a session's own (blocking, WATCH, WAIT); a session's
# pub/sub link (SUBSCRIBE/PSUBSCRIBE); a session's shard pub/sub link (SSUBSCRIBE).
SHARED, DEDICATED, PUBSUB, SHARD = 0, 1, 2, 3
RETRY_PREFIXES = (b"-MOVED ", b"-ASK ", b"-TRYAGAIN", b"-CLUSTERDOWN", b"-LOADING")
RETRY_HEADS = frozenset(p[1:3] for p in RETRY_PREFIXES)
ASKING = encode_command(b"ASKING")

# Session state bits: anything set takes the slow path in Session.dispatch().
NEED_AUTH = 1
MULTI = 2
SUBSCRIBED = 4  # RESP2 client with subscriptions: only pub/sub commands are allowed
MUTED = 8  # CLIENT REPLY OFF / SKIP
CLOSING = 16


def error_frame(text: str) -> bytes:
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


def command_name(payload: bytes) -> str:
    """The (first) command's name in an encoded request, for messages."""
    parts = payload[:256].split(b"\r\n", 3)
    name = parts[2] if payload[:1] == b"*" and len(parts) > 2 else parts[0].split(b" ", 1)[0]
    return name[:32].decode("utf-8", "replace").upper()


def parse_frame(frame: bytes) -> RespValue:
    parser = RespParser()
    parser.feed(frame)
    value = parser.next_value()
    if value is NEED_DATA:  # pragma: no cover - frames come whole from the scanner
        return merge.error("ERR truncated reply from a cluster node")
    return value


# --------------------------------------------------------------------------- holders


class Item:
    """A place in a session's reply queue, and/or a request in a link's FIFO.

    ``data`` is the reply frame(s) once known. As a request: ``payload`` is the encoded command,
    ``slot`` decides the node (ANY_SLOT: the session's home master), ``expect`` counts the
    reply frames it takes, ``link_kind`` says shared, dedicated or shard pub/sub link.
    ``readonly``: safe to send again after a lost connection; ``spread``: a read that may go
    to a replica of the slot's master (``--read-from``); ``born``: when its request reached
    the tunnel (the session's clock of that input chunk); ``token``: its replica-read token
    (:meth:`client.replicas.ReplicaTracker.start_read`) while on a replica link.
    """

    __slots__ = (
        "born",
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
        "spread",
        "t0",
        "token",
        "tries",
    )

    deferred = False
    confirm = False
    #: May legitimately wait for long (BLPOP, WAIT): exempt from the stall check.
    blocking = False

    def __init__(
        self,
        session: Session,
        payload: bytes = b"",
        slot: int = ANY_SLOT,
        readonly: bool = True,
        resp3: bool = False,
        expect: int = 1,
        link_kind: int = SHARED,
        spread: bool = False,
    ) -> None:
        self.data: bytes | None = None
        self.muted = False
        self.session: Session | None = session
        self.born = session.now
        self.spread = spread
        self.token = 0
        self.payload = payload
        self.slot = slot
        self.readonly = readonly
        self.resp3 = resp3
        self.expect = expect
        self.frames: list[bytes] = [] if expect > 1 else NO_FRAMES
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
NO_FRAMES: list[bytes] = []
#: Commands in one Run at most.
MAX_RUN = 64


class Run(Item):
    """Consecutive single-node commands of one session on one link, from one chunk of input:
    one holder, one reply write. The pipelines of redis-benchmark -P 16 and of client
    libraries become runs, so the per-command cost is the parse and the route, no more.

    A command whose reply is a redirect or a retry (MOVED, ASK, TRYAGAIN, ...) is resent alone
    (RunPart), its reply put back at its place. Only the commands' bytes are kept (the session
    appends to ``payloads`` itself, on its hot path); a resent command is routed again.
    """

    __slots__ = ("link", "payloads", "remaining", "results")

    def __init__(self, session: Session, first: Item, link: Link) -> None:
        super().__init__(session, b"", first.slot, first.readonly, first.resp3, 1, SHARED)
        self.born = first.born
        self.token = first.token
        self.spread = first.spread
        self.frames = []
        self.link = link
        self.payloads = [first.payload]
        self.results: list[bytes] = []
        self.remaining = 0

    def wire(self) -> bytes:
        return b"".join(self.payloads)

    def finish(self) -> None:
        frames = self.frames
        errors = [i for i, f in enumerate(frames) if f[:1] == b"-"]
        redo = [i for i in errors if frames[i].startswith(RETRY_PREFIXES)] if errors else errors
        if errors:
            counters = self.link.up.counters
            if counters is not None:
                counters.errors += len(errors) - len(redo)
        if not redo:
            self.ready(b"".join(frames))
            return
        session = self.session
        assert session is not None
        self.results = list(frames)
        self.remaining = len(redo)
        for i in redo:
            session.proxy.retry_reply(RunPart(session, self, i), frames[i], self.link)

    def fail(self, frame: bytes) -> None:
        missing = self.expect - len(self.frames)
        self.ready(b"".join(self.frames) + frame * missing)

    def part_done(self, index: int, frame: bytes) -> None:
        self.results[index] = frame
        self.remaining -= 1
        if not self.remaining:
            self.ready(b"".join(self.results))


class RunPart(Item):
    """One command of a run, resent alone."""

    __slots__ = ("index", "run")

    def __init__(self, session: Session, run: Run, index: int) -> None:
        payload = run.payloads[index]
        slot, readonly = run.slot, False
        parser = RespParser(requests=True)
        parser.feed(payload)
        args = parser.next_command()
        if args is not NEED_DATA:
            plan = session.proxy.router.route(args)
            if type(plan) is Single:
                slot = plan.slot if plan.slot >= 0 else session.home_slot
                readonly = plan.readonly
        super().__init__(session, payload, slot, readonly, run.resp3, spread=run.link.up.replica)
        self.born = run.born
        self.run = run
        self.index = index

    def complete(self, frame: bytes) -> None:
        self.run.part_done(self.index, frame)

    def fail(self, frame: bytes) -> None:
        self.run.part_done(self.index, frame)


class BlockingItem(Item):
    """A blocking command (on a dedicated link)."""

    __slots__ = ()
    blocking = True


class Internal(Item):
    """A command of the tunnel's own on a link (ASKING, UNWATCH, AUTH, READONLY): the link
    consumes its reply (:meth:`tunnel.upstream.Link.internal_reply`); no client sees it and
    the statistics do not count it."""

    __slots__ = ("link", "verb")

    def __init__(self, link: Link, verb: bytes, now: float) -> None:
        # Not Item.__init__: there is no session.
        self.data = None
        self.muted = True
        self.session = None
        self.payload = b""
        self.slot = ANY_SLOT
        self.readonly = True
        self.resp3 = link.resp3
        self.expect = 1
        self.frames = NO_FRAMES
        self.link_kind = link.kind
        self.tries = 0
        self.hops = 0
        self.t0 = 0.0
        self.born = now
        self.spread = False
        self.token = 0
        self.link = link
        self.verb = verb

    def complete(self, frame: bytes) -> None:
        self.link.internal_reply(self, frame)

    def finish(self) -> None:
        self.link.internal_reply(self, self.frames[0] if self.frames else b"")

    def fail(self, frame: bytes) -> None:
        pass


class Gather(Item):
    """A holder whose reply is built from several sub-requests (Part)."""

    __slots__ = ("combine", "raw", "remaining", "results")

    def __init__(
        self,
        session: Session,
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
            value = self.combine([parse_frame(f) for f in self.results])
            self.ready(encode_value(value, resp3=self.resp3))
        except (RespProtocolError, ValueError, TypeError) as exc:
            self.ready(error_frame(f"ERR cannot merge the replies of the cluster nodes: {exc}"))


class Part(Item):
    """One sub-request of a gather; with ``last`` only its last reply frame counts (WAIT)."""

    __slots__ = ("gather", "index", "last")

    def __init__(
        self,
        gather: Gather,
        index: int,
        payload: bytes,
        slot: int,
        readonly: bool,
        *,
        expect: int = 1,
        link_kind: int = SHARED,
        last: bool = False,
    ) -> None:
        session = gather.session
        assert session is not None
        super().__init__(session, payload, slot, readonly, gather.resp3, expect, link_kind)
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


class WaitPart(Part):
    """WAIT on one master (it blocks up to its own timeout, or forever with 0)."""

    __slots__ = ()
    blocking = True


class Confirm(Item):
    """A pub/sub command's reply: one confirmation frame per channel (or pattern), or one
    error frame for the whole command."""

    __slots__ = ("channels",)
    confirm = True

    def __init__(
        self,
        session: Session,
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
        if session is not None and first.startswith(RETRY_PREFIXES):
            if first.startswith((b"-MOVED ", b"-ASK ")):
                session.proxy.redirected(self, first, None)
            else:
                session.proxy.retry_later(self, first[1:].decode("utf-8", "replace").strip())
            return
        self.ready(b"".join(self.frames))


class ConfirmGather(Gather):
    """SUNSUBSCRIBE across several shard links: their confirmations, concatenated."""

    __slots__ = ()
    confirm = True


class ConfirmPart(Part):
    __slots__ = ()
    confirm = True


class Exec(Item):
    """EXEC: MULTI + the queued commands + EXEC, sent as one batch; answers EXEC's reply."""

    __slots__ = ("watched",)

    def __init__(
        self, session: Session, payload: bytes, slot: int, count: int, watched: bool
    ) -> None:
        kind = DEDICATED if watched else SHARED
        super().__init__(session, payload, slot, False, session.resp3, count + 2, kind)
        self.watched = watched

    def finish(self) -> None:
        frames = self.frames
        session = self.session
        assert session is not None
        blocked = next((f for f in frames if f.startswith(RETRY_PREFIXES)), None)
        if blocked is not None:
            if self.watched:
                self.ready(
                    error_frame(
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


class Deferred(Gather):
    """A gather that starts only when it reaches the head of the queue (WAIT)."""

    __slots__ = ("started", "starter")
    deferred = True

    def __init__(self, session: Session, starter: Callable[[Deferred], None], resp3: bool) -> None:
        super().__init__(session, 0, None, resp3)
        self.starter = starter
        self.started = False

    def begin(self) -> None:
        if not self.started:
            self.started = True
            self.starter(self)
