"""Streaming request/reply pairing for the relay (pure; no I/O).

The relay moves bytes. This module tells it, chunk by chunk and without buffering payloads,
where each request and reply frame ends, which command each reply answers, and which few
replies must be held back for rewriting (tunnel/rewrite.py) or dropped.

Theory of operation
-------------------
# Three pieces, each fed raw chunks (up to 64 KiB) and returning what to forward:
#
# * RequestScanner (client -> upstream; in tunnel.requests, re-exported here). Streams RESP
#   arrays and inline commands, keeps only command names and a few small arguments, enforces
#   Redis's limits and the cross-protocol guard, and captures the frames the relay intercepts.
#
# * ReplyTracker: the pairing state machine. Each request pushes a note on a FIFO (run-length
#   encoded: ordinary commands cost one integer increment, so a client that pipelines a million
#   GETs costs nothing here). Each reply pops one, with these exceptions, all driven by the
#   replies themselves so the state can never run ahead of the server:
#     - RESP3 push frames (">") never pop;
#     - subscribe confirmations (push in RESP3, array in RESP2) count down their (P|S)SUBSCRIBE
#       note: one per channel named, or, for a bare UNSUBSCRIBE, until that family's count
#       (tracked from the counts in the confirmations) reaches zero;
#     - in RESP2 subscribed state, "message"/"pmessage"/"smessage" arrays arrive unasked;
#     - inside MULTI, "+QUEUED" replies file their notes; EXEC's array then answers them, one
#       element each, so a CLUSTER SLOTS queued in a transaction is still rewritten;
#     - CLIENT REPLY OFF/SKIP suppress replies (no note is pushed); MONITOR ends pairing for
#       good (only redirects are still rewritten); SYNC/PSYNC switch the relay to raw bytes.
#   HELLO replies tell RESP2 (array) from RESP3 (map); RESET returns to the start state.
#   ``answered`` counts the commands whose replies completed (the statistics' ops).
#   A frame the relay sends on its own (a re-AUTH with a new credential) files an INJECTED
#   note (push_injected); its reply is captured and dropped, so the client never sees it.
#   may_inject() says when that is safe: the request side keeps just enough state for it
#   (a MULTI sent and not yet closed, SUBSCRIBE notes still due).
#
# * CountingTracker: the same interface for a relay that does not scan requests (standalone
#   with statistics): no FIFO, every reply frame is an answer, except pushes and RESP2 pub/sub
#   messages; error lines are still captured (errors, TUNNEL).
#
# * ReplyScanner (upstream -> client). Streams reply frames of any RESP2/RESP3 type, depth and
#   size. At each frame start it asks the tracker what the frame is: RAW (forward as it
#   arrives: nearly every frame), CAPTURE (hold the whole frame: an error line, which may be a
#   MOVED/ASK, the reply to a topology command or to an injected frame; bounded), PUSH (hold a
#   push until its type is known, to drop MOVING/SMIGRATED; bounded, a large push is a message
#   and streams) or DESCEND (an EXEC array holding a topology reply: its elements become frames
#   of their own). It returns raw byte slices and Captured frames in stream order; the relay
#   rewrites the captured ones (render()) and writes everything in one batch.
#
# Limits: captured replies 16 MiB (a larger one is forwarded unchanged and counted); pushes
# held 64 KiB; reply nesting 1024. (Request limits: see tunnel.requests.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from client.errors import RespProtocolError
from tunnel.requests import (
    CROSS_PROTOCOL,
    MAX_HEADER,
    NOTED,
    PEEK_SIZE,
    Command,
    CrossProtocol,
    RequestScanner,
    strict_int,
)
from tunnel.rewrite import (
    AddressBook,
    Missing,
    Topic,
    is_suppressed_push,
    rewrite_redirect,
    rewrite_reply,
)

__all__ = [
    "CROSS_PROTOCOL",
    "NOTED",
    "Captured",
    "Command",
    "CountingTracker",
    "CrossProtocol",
    "Mode",
    "Note",
    "ReplyScanner",
    "ReplyTracker",
    "RequestScanner",
    "render",
]

MAX_CAPTURE = 16 * 1024 * 1024
MAX_PUSH_HOLD = 64 * 1024
MAX_DEPTH = 1024
#: Small arguments kept for classification (CLUSTER <sub>, CLIENT REPLY <mode>).
_PEEK_SIZE = PEEK_SIZE
_int = strict_int

_CRLF = b"\r\n"
_STAR = 42  # "*"
_DOLLAR = 36  # "$"


# ---------------------------------------------------------------------------------------------
# Pairing


class Mode(IntEnum):
    """What the reply scanner does with a frame."""

    RAW = 0  # forward as it arrives
    CAPTURE = 1  # hold the whole frame, hand it over as Captured
    PUSH = 2  # hold a push until its type is known (bounded)
    DESCEND = 3  # an EXEC array: its elements are frames with their own notes
    HEAD = 4  # forward as it arrives, but note the first elements (RESP2 pub/sub)
    DROP = 5  # discard (a suppressed push)


class Kind(IntEnum):
    PLAIN = 0
    TOPOLOGY = 1
    MULTI = 2
    EXEC = 3
    DISCARD = 4
    SUBSCRIBE = 5
    HELLO = 6
    RESET = 7
    MONITOR = 8
    INJECTED = 9  # a frame the relay sent itself (a re-AUTH): its reply is swallowed


@dataclass(slots=True, eq=False)
class Note:
    """What a reply will need: its command's kind and, for some, a detail.

    Attributes:
        kind: the command family.
        topic: for TOPOLOGY, which CLUSTER reply it is.
        confirm: for SUBSCRIBE, the reply type that confirms it (``b"subscribe"``, ...).
        count: for SUBSCRIBE, confirmations still due; 0 means "until none is left".
    """

    kind: Kind
    topic: Topic | None = None
    confirm: bytes = b""
    count: int = 0


PLAIN = Note(Kind.PLAIN)
#: An unbounded plain budget (CountingTracker: every reply is an ordinary one).
_UNLIMITED = 1 << 62

_TOPICS = {
    b"SLOTS": Topic.SLOTS,
    b"SHARDS": Topic.SHARDS,
    b"NODES": Topic.NODES,
    b"REPLICAS": Topic.REPLICAS,
    b"SLAVES": Topic.REPLICAS,
}
_SIMPLE_KINDS = {
    b"MULTI": Kind.MULTI,
    b"EXEC": Kind.EXEC,
    b"DISCARD": Kind.DISCARD,
    b"HELLO": Kind.HELLO,
    b"RESET": Kind.RESET,
    b"MONITOR": Kind.MONITOR,
}
_SUBSCRIBES = {
    b"SUBSCRIBE": b"subscribe",
    b"PSUBSCRIBE": b"psubscribe",
    b"SSUBSCRIBE": b"ssubscribe",
    b"UNSUBSCRIBE": b"unsubscribe",
    b"PUNSUBSCRIBE": b"punsubscribe",
    b"SUNSUBSCRIBE": b"sunsubscribe",
}
_CONFIRMS = frozenset(_SUBSCRIBES.values())
_MESSAGES = frozenset((b"message", b"pmessage", b"smessage"))
#: Commands the tracker must see one by one; every other command is only counted.
_NOTED = NOTED  # (tunnel.requests) every name above, CLUSTER, CLIENT, SYNC and PSYNC


class ReplyTracker:
    """The pairing state machine (see the module notes).

    Attributes:
        proto: the client's protocol, 2 or 3, as the HELLO replies tell.
        raw: SYNC/PSYNC was sent: the relay must stop scanning and forward raw bytes.
        monitor: MONITOR succeeded: replies no longer pair with commands.
        answered: commands whose replies have completed so far (a statistic: one per note
            popped; a SUBSCRIBE counts once, an injected frame never).
        open_multi: a MULTI was sent and its EXEC/DISCARD/RESET not yet (request side).
    """

    def __init__(self) -> None:
        self._fifo: deque[int | Note] = deque()  # an int is a run of PLAIN notes
        self.proto = 2
        self.raw = False
        self.monitor = False
        self.in_multi = False
        self.queued: list[Note] = []
        self.channels = 0
        self.patterns = 0
        self.shards = 0
        self.answered = 0
        self.open_multi = False
        self._subscribes_due = 0  # SUBSCRIBE-family notes in the FIFO
        self._reply_off = False
        self._skip_next = False

    # -- requests -----------------------------------------------------------------------------

    def on_request(self, cmd: Command) -> None:
        """File the note for one command, before its bytes are forwarded."""
        name = cmd.name
        if name not in _NOTED:
            self.push_plain()
            return
        if name == b"MULTI":
            self.open_multi = True
        elif name in (b"EXEC", b"DISCARD", b"RESET"):
            self.open_multi = False
        note = PLAIN
        if name == b"CLIENT" and cmd.arg(0) == b"REPLY":
            mode = cmd.arg(1)
            if mode == b"OFF":
                self._reply_off = True
                return
            if mode == b"SKIP":
                self._skip_next = not self._reply_off
                return
            if mode == b"ON":
                self._reply_off = False
                self._skip_next = False
        elif self._reply_off or self.monitor:
            return
        elif self._skip_next:
            self._skip_next = False
            return
        elif name == b"CLUSTER":
            topic = _TOPICS.get(cmd.arg(0) or b"")
            if topic is not None:
                note = Note(Kind.TOPOLOGY, topic=topic)
        elif name in _SUBSCRIBES:
            note = Note(Kind.SUBSCRIBE, confirm=_SUBSCRIBES[name], count=cmd.argc - 1)
        elif name in (b"SYNC", b"PSYNC"):
            self.raw = True
        elif name in _SIMPLE_KINDS:
            note = Note(_SIMPLE_KINDS[name])
        if note is PLAIN:
            self.push_plain()
        else:
            if note.kind is Kind.SUBSCRIBE:
                self._subscribes_due += 1
            self._fifo.append(note)

    def push_injected(self) -> None:
        """File the note for a frame the relay sends on its own (its reply is swallowed).

        Only when :meth:`may_inject` says so: then the reply is sure to come, and to be the
        next one after the replies already due.
        """
        self._fifo.append(Note(Kind.INJECTED))

    def may_inject(self) -> bool:
        """Whether a frame of the relay's own (``AUTH``) may go upstream now, at a frame
        boundary of the requests, with a reply that is sure to come back in order.

        Not inside a transaction (it would be queued), not while the connection is or may
        become subscribed in RESP2 (Redis refuses AUTH there), not after MONITOR or SYNC, and
        not while CLIENT REPLY OFF/SKIP would swallow its reply.
        """
        if self.open_multi or self.monitor or self.raw or self._reply_off or self._skip_next:
            return False
        return self.proto == 3 or not (self.subscribed or self._subscribes_due)

    def push_plain(self, count: int = 1) -> None:
        """File ``count`` ordinary commands: one run-length entry, however many."""
        if self._reply_off or self.monitor:
            return
        if self._skip_next:
            self._skip_next = False
            count -= 1
            if count <= 0:
                return
        fifo = self._fifo
        if fifo and type(fifo[-1]) is int:
            fifo[-1] += count
        else:
            fifo.append(count)

    def plain_budget(self) -> int:
        """How many coming replies are surely ordinary: forwarded as they are, one plain note
        each. That is the run of plain notes at the FIFO head, unless MONITOR, MULTI or RESP2
        pub/sub makes even those replies special."""
        if self.monitor or self.in_multi or (self.proto == 2 and self.subscribed):
            return 0
        fifo = self._fifo
        if fifo:
            first = fifo[0]
            if type(first) is int:
                return first
        return 0

    def pop_plain(self, count: int) -> None:
        """``count`` ordinary replies went by (at most :meth:`plain_budget`)."""
        self.answered += count
        fifo = self._fifo
        first = fifo[0]
        assert type(first) is int
        if first == count:
            fifo.popleft()
        else:
            fifo[0] = first - count

    @property
    def pending(self) -> int:
        """Replies still due (subscription confirmations count as one)."""
        return sum(x if type(x) is int else 1 for x in self._fifo)

    @property
    def backlog(self) -> int:
        """Entries in the FIFO (runs of plain commands count once): what memory it costs."""
        return len(self._fifo)

    def head(self) -> Note:
        """The note the next reply will pop."""
        if not self._fifo:
            return PLAIN
        first = self._fifo[0]
        return PLAIN if type(first) is int else first  # type: ignore[return-value]

    def _pop(self) -> Note:
        fifo = self._fifo
        if not fifo:
            return PLAIN
        first = fifo[0]
        if type(first) is int:
            self.answered += 1
            if first == 1:
                fifo.popleft()
            else:
                fifo[0] = first - 1
            return PLAIN
        fifo.popleft()
        kind = first.kind  # type: ignore[union-attr]
        if kind is Kind.SUBSCRIBE:
            self._subscribes_due -= 1
        if kind is not Kind.INJECTED:
            self.answered += 1
        return first  # type: ignore[return-value]

    @property
    def subscribed(self) -> bool:
        return self.channels + self.patterns + self.shards > 0

    # -- replies --------------------------------------------------------------------------------

    def start(self, kind: int) -> Mode:
        """What to do with a reply frame whose type byte is ``kind``."""
        if kind == 62:  # ">"
            return Mode.PUSH
        if kind == 45:  # "-"
            return Mode.CAPTURE
        if self.monitor:
            return Mode.RAW
        note = self.head()
        if note is PLAIN:
            if kind == _STAR and self.proto == 2 and self.subscribed:
                return Mode.HEAD
            return Mode.RAW
        if note.kind is Kind.TOPOLOGY or note.kind is Kind.INJECTED:
            return Mode.CAPTURE
        if kind == _STAR:
            if (
                note.kind is Kind.EXEC
                and self.in_multi
                and any(q.kind is Kind.TOPOLOGY for q in self.queued)
            ):
                return Mode.DESCEND
            if self.proto == 2 and (note.kind is Kind.SUBSCRIBE or self.subscribed):
                return Mode.HEAD
        return Mode.RAW

    def done(self, kind: int, head: list[bytes | int | None] | None) -> Note | None:
        """A reply frame ended: update the state; return the note it answered (None: unasked).

        Args:
            kind: the frame's type byte.
            head: its first (up to three) direct elements when the frame was scanned in
                PUSH or HEAD mode: small strings as bytes, integers as int, else None.
        """
        if kind == 62:  # a push: never answers a command, except as a confirmation
            if head and isinstance(head[0], bytes) and head[0].lower() in _CONFIRMS:
                self._confirm(head)
            return None
        if self.monitor:
            return None
        if head and kind == _STAR and self.proto == 2 and isinstance(head[0], bytes):
            word = head[0].lower()
            if word in _MESSAGES and self.subscribed:
                return None
            if word in _CONFIRMS and len(head) == 3 and isinstance(head[2], int):
                self._confirm(head)
                return None
        note = self._pop()
        if note is PLAIN:
            if self.in_multi and kind == 43:  # "+QUEUED"
                self.queued.append(PLAIN)
            return note
        k = note.kind
        if k is Kind.INJECTED:
            return note
        if k is Kind.MULTI:
            if kind == 43 and not self.in_multi:
                self.in_multi = True
                self.queued = []
        elif k is Kind.EXEC or k is Kind.DISCARD:
            if self.in_multi:
                self.in_multi = False
                self.queued = []
        elif k is Kind.HELLO:
            if kind == 37:  # "%"
                self.proto = 3
            elif kind == _STAR:
                self.proto = 2
        elif k is Kind.RESET:
            self.proto = 2
            self.in_multi = False
            self.queued = []
            self.channels = self.patterns = self.shards = 0
            self._reply_off = False
        elif k is Kind.MONITOR:
            if kind == 43:
                self.monitor = True
                self._fifo.clear()
                self._subscribes_due = 0
        elif self.in_multi and kind == 43:
            self.queued.append(note)
        return note

    def begin_exec(self) -> list[Note]:
        """An EXEC array starts (after :meth:`start` said DESCEND): the notes of its elements."""
        self._pop()
        notes = self.queued
        self.in_multi = False
        self.queued = []
        return notes

    def _confirm(self, head: list[bytes | int | None]) -> None:
        word = head[0]
        assert isinstance(word, bytes)
        word = word.lower()
        count = head[2] if len(head) > 2 and isinstance(head[2], int) else None
        if count is not None:
            # The count is channels+patterns for the classic families, shard channels for S*.
            if word in (b"subscribe", b"unsubscribe"):
                self.channels = max(0, count - self.patterns)
            elif word in (b"psubscribe", b"punsubscribe"):
                self.patterns = max(0, count - self.channels)
            else:
                self.shards = max(0, count)
        note = self.head()
        if note.kind is not Kind.SUBSCRIBE or note.confirm != word:
            return  # unasked (e.g. the server unsubscribing a moved shard channel)
        if note.count > 0:
            note.count -= 1
            if note.count == 0:
                self._pop()
            return
        left = {
            b"unsubscribe": self.channels,
            b"punsubscribe": self.patterns,
            b"sunsubscribe": self.shards,
        }.get(word, 0)
        if left == 0:
            self._pop()


class CountingTracker(ReplyTracker):
    """The tracker of a relay that does not scan its requests, only counts its replies.

    The standalone relay with statistics on forwards requests unscanned, so nothing is filed:
    every reply frame counts as an answered command (:attr:`answered`), except RESP3 pushes and,
    in RESP2, arrays that start like a pub/sub message (``message``, ``pmessage``, ``smessage``
    and at least three elements). A SUBSCRIBE of n channels counts n (one per confirmation).
    Error lines are still captured, so the relay can count them and answer ``TUNNEL``.
    """

    def push_plain(self, count: int = 1) -> None:
        return

    def plain_budget(self) -> int:
        return _UNLIMITED

    def pop_plain(self, count: int) -> None:
        self.answered += count

    def may_inject(self) -> bool:
        return False

    @property
    def pending(self) -> int:
        return 0

    def start(self, kind: int) -> Mode:
        if kind == 45:  # "-"
            return Mode.CAPTURE
        if kind == _STAR:
            return Mode.HEAD
        return Mode.RAW

    def done(self, kind: int, head: list[bytes | int | None] | None) -> Note | None:
        if kind == 62:  # ">"
            return None
        if head and len(head) == 3 and isinstance(head[0], bytes) and head[0].lower() in _MESSAGES:
            return None
        self.answered += 1
        return PLAIN


@dataclass(slots=True)
class Captured:
    """A reply frame held back whole: the relay renders it (:func:`render`).

    Attributes:
        frame: the frame's bytes.
        topic: the topology command it answers, if any.
        push: it is a RESP3 push.
        head: for a push, its first elements (the type first).
        injected: it answers a frame the relay sent on its own (dropped by :func:`render`).
    """

    frame: bytes
    topic: Topic | None = None
    push: bool = False
    head: list[bytes | int | None] = field(default_factory=list)
    injected: bool = False


def render(
    item: Captured, book: AddressBook, origin: str, *, prefer_tls: bool = True
) -> bytes | Missing:
    """The bytes to forward for a captured frame (``b""`` drops it), or :class:`Missing`."""
    frame = item.frame
    if item.injected:
        return b""
    if item.push:
        first = item.head[0] if item.head else None
        return b"" if isinstance(first, bytes) and is_suppressed_push(first) else frame
    if item.topic is not None:
        return rewrite_reply(item.topic, frame, book, origin, prefer_tls=prefer_tls)
    if frame.startswith((b"-MOVED ", b"-ASK ")):
        result = rewrite_redirect(frame, book, origin)
        return frame if result is None else result
    return frame


_LINE_KINDS = frozenset(b"+-:,(#_")
_BULK_KINDS = frozenset(b"$!=")
_AGG_KINDS = frozenset(b"*~>%|")


class ReplyScanner:
    """Finds reply frames in the upstream byte stream and pairs them (see the module notes).

    Args:
        tracker: the pairing state, shared with the request side.
    """

    def __init__(self, tracker: ReplyTracker) -> None:
        self.tracker = tracker
        self.oversized = 0  # captured frames given up (forwarded unchanged): a statistic
        self._carry = b""
        self._stack: list[int] = []  # elements still due at each open aggregate
        self._skip = 0  # bulk payload bytes (CRLF included) still to pass
        self._in_line = False  # inside a long simple line, waiting for its LF
        self._busy = False  # inside a frame
        self._mode = Mode.RAW
        self._kind = 0
        self._head: list[bytes | int | None] | None = None
        self._hold = bytearray()
        self._topic: Topic | None = None
        self._sub: deque[Note] | None = None  # notes of the EXEC elements still due
        self._sub_left = 0
        self._exec_depth = 0

    @property
    def buffered(self) -> int:
        """Bytes held back: a partial token, or a frame being captured (bounded)."""
        return len(self._carry) + len(self._hold)

    def feed(self, data: bytes) -> list[bytes | Captured]:
        """Scan ``data``; return raw pieces and captured frames in stream order.

        Raises:
            RespProtocolError: the upstream sent something that is not RESP.
        """
        if self.tracker.raw:
            if self._carry:
                data, self._carry = self._carry + data, b""
            return [data]
        buf = self._carry + data if self._carry else data
        self._carry = b""
        out: list[bytes | Captured] = []
        n = len(buf)
        pos = 0
        raw_from = 0  # start of the bytes not yet handed out, forwarded as they are
        tracker = self.tracker
        find = buf.find
        # The fast path: while the replies due are ordinary ones (budget), whole scalar frames
        # are only counted; they pop plain notes in one go (popped) before anything else.
        budget = 0 if self._busy or self._sub_left else tracker.plain_budget()
        popped = 0
        while pos < n:
            if budget:
                kind = buf[pos]
                if kind == 43 or kind == 58:  # "+" or ":"
                    eol = find(_CRLF, pos)
                    if eol >= 0:
                        pos = eol + 2
                        budget -= 1
                        popped += 1
                        continue
                elif kind == _DOLLAR:
                    eol = find(_CRLF, pos)
                    if eol >= 0:
                        size = _int(buf[pos + 1 : eol])
                        end = eol + 4 + size if size is not None and size >= 0 else eol + 2
                        if size is not None and end <= n:
                            pos = end
                            budget -= 1
                            popped += 1
                            continue
                budget = 0
            if popped:
                tracker.pop_plain(popped)
                popped = 0
            if not self._busy:
                raw_from = self._begin(buf, pos, out, raw_from)
                if self._mode is Mode.DESCEND:
                    new = self._descend(buf, pos, n)
                    if new < 0:
                        break
                    pos = new  # the EXEC header itself is forwarded as it is
                    continue
            mode = self._mode
            start = pos
            pos, complete, short = self._walk(buf, pos, n)
            if mode is not Mode.RAW and mode is not Mode.HEAD:
                self._hold_bytes(buf, start, pos, out)
                raw_from = pos
            if complete:
                self._end(out)
                if not self._sub_left:
                    budget = tracker.plain_budget()
            if short:
                break
        if popped:
            tracker.pop_plain(popped)
        if pos < n:
            self._carry = buf[pos:]
        if raw_from < pos:
            out.append(buf if raw_from == 0 and pos == n else buf[raw_from:pos])
        return out

    # -- frame boundaries -------------------------------------------------------------------

    def _begin(self, buf: bytes, pos: int, out: list[bytes | Captured], raw_from: int) -> int:
        """A frame starts at ``pos``: choose its mode; return the new raw_from."""
        kind = buf[pos]
        self._busy = True
        self._kind = kind
        self._topic = None
        self._head = None
        if self._sub_left:
            note = self._sub.popleft() if self._sub else PLAIN
            if note.kind is Kind.TOPOLOGY:
                mode, self._topic = Mode.CAPTURE, note.topic
            else:
                mode = Mode.RAW
        else:
            mode = self.tracker.start(kind)
            if mode is Mode.CAPTURE and kind != 45:
                self._topic = self.tracker.head().topic
        if mode is Mode.PUSH or mode is Mode.HEAD:
            self._head = []
        self._mode = mode
        if mode is not Mode.RAW and mode is not Mode.HEAD:
            if raw_from < pos:
                out.append(buf[raw_from:pos])
            return pos
        return raw_from

    def _descend(self, buf: bytes, pos: int, n: int) -> int:
        eol = buf.find(_CRLF, pos)
        self._busy = False  # an incomplete header is scanned again with the next chunk
        if eol < 0:
            if n - pos > MAX_HEADER:
                raise RespProtocolError("reply header line too long")
            return -1
        count = _int(buf[pos + 1 : eol])
        if count is None:
            raise RespProtocolError("invalid aggregate length in reply")
        if count < 0:  # a null EXEC (WATCH failed): an ordinary reply
            self.tracker.done(self._kind, None)
            self._mode = Mode.RAW
            return eol + 2
        self._sub = deque(self.tracker.begin_exec())
        self._sub_left = count
        self._mode = Mode.RAW
        return eol + 2

    def _end(self, out: list[bytes | Captured]) -> None:
        """The current frame ended."""
        self._busy = False
        mode = self._mode
        head = self._head
        note: Note | None = None
        if self._sub_left:
            self._sub_left -= 1
            if self._sub_left == 0:
                self._sub = None
        else:
            note = self.tracker.done(self._kind, head)
        if mode is Mode.CAPTURE or mode is Mode.PUSH:
            injected = note is not None and note.kind is Kind.INJECTED
            out.append(
                Captured(bytes(self._hold), self._topic, mode is Mode.PUSH, head or [], injected)
            )
            self._hold = bytearray()
        elif mode is Mode.DROP:
            self._hold = bytearray()
        self._mode = Mode.RAW

    def _hold_bytes(self, buf: bytes, start: int, pos: int, out: list[bytes | Captured]) -> None:
        """Keep ``buf[start:pos]`` of a held frame; give up holding past the limits."""
        mode = self._mode
        if mode is Mode.DROP:
            return
        self._hold += buf[start:pos]
        limit = MAX_PUSH_HOLD if mode is Mode.PUSH else MAX_CAPTURE
        if len(self._hold) > limit:
            first = self._head[0] if self._head else None
            if mode is Mode.PUSH and isinstance(first, bytes) and is_suppressed_push(first):
                self._mode = Mode.DROP
            else:
                # Too large to be a topology reply or a push we drop: let it stream.
                if mode is Mode.CAPTURE:
                    self.oversized += 1
                out.append(bytes(self._hold))
                self._mode = Mode.HEAD if mode is Mode.PUSH else Mode.RAW
            self._hold = bytearray()

    # -- the walker -------------------------------------------------------------------------

    def _record(self, value: bytes | int | None) -> None:
        head = self._head
        if head is not None and len(self._stack) == 1 and len(head) < 3:
            head.append(value)

    def _leaf(self) -> bool:
        """A leaf (or a whole aggregate) ended; True when that ends the frame."""
        stack = self._stack
        while stack:
            stack[-1] -= 1
            if stack[-1] > 0:
                return False
            stack.pop()
        return True

    def _walk(self, buf: bytes, pos: int, n: int) -> tuple[int, bool, bool]:
        """Advance through the current frame.

        Returns:
            (position, the frame is complete, the buffer ended inside a token: carry from
            the position).
        """
        stack = self._stack
        find = buf.find
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if self._skip:
                    return pos, False, False
                if self._leaf():
                    return pos, True, False
                continue
            if self._in_line:
                eol = find(b"\n", pos)
                if eol < 0:
                    return n, False, False
                pos = eol + 1
                self._in_line = False
                if self._leaf():
                    return pos, True, False
                continue
            kind = buf[pos]
            eol = find(_CRLF, pos)
            if kind in _LINE_KINDS:
                if eol < 0:
                    if n - pos > 1024:
                        self._record(None)
                        self._in_line = True  # a long line (MONITOR output): stream it
                        return n, False, False
                    return pos, False, True
                if self._head is not None and len(stack) == 1:
                    text = buf[pos + 1 : eol]
                    if kind == 58:  # ":"
                        self._record(_int(text))
                    elif kind == 43 and len(text) <= _PEEK_SIZE:
                        self._record(text)
                    else:
                        self._record(None)
                pos = eol + 2
                if self._leaf():
                    return pos, True, False
                continue
            if eol < 0:
                if n - pos > 64:
                    raise RespProtocolError("reply header line too long")
                return pos, False, True
            size = _int(buf[pos + 1 : eol])
            if size is None:
                if buf[pos + 1 : eol] == b"?":
                    raise RespProtocolError("streamed RESP3 replies are not supported")
                raise RespProtocolError(f"invalid reply header {buf[pos:eol][:20]!r}")
            if kind in _BULK_KINDS:
                if size < 0:
                    self._record(None)
                    pos = eol + 2
                    if self._leaf():
                        return pos, True, False
                    continue
                recording = self._head is not None and len(stack) == 1 and len(self._head) < 3
                if recording and size <= _PEEK_SIZE:
                    end = eol + 4 + size
                    if end > n:
                        return pos, False, True
                    self._record(buf[eol + 2 : eol + 2 + size])
                    pos = end
                    if self._leaf():
                        return pos, True, False
                    continue
                if recording:
                    self._record(None)
                self._skip = size + 2
                pos = eol + 2
                continue
            if kind in _AGG_KINDS:
                if self._head is not None and len(stack) == 1:
                    self._record(None)
                pos = eol + 2
                count = size * 2 if kind == 37 else size  # "%" maps hold pairs
                if kind == 124:  # "|": an attribute map, then the value it annotates
                    count = size * 2 + 1
                if count <= 0:
                    if self._leaf():
                        return pos, True, False
                    continue
                if len(stack) >= MAX_DEPTH:
                    raise RespProtocolError("reply nested too deeply")
                stack.append(count)
                continue
            raise RespProtocolError(f"unexpected reply type byte {bytes((kind,))!r}")
        return pos, False, False
