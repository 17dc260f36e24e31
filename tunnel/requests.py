"""Streaming request scanning for the relay (pure; no I/O): where each request frame ends.

Split out of :mod:`tunnel.tracking` (which re-exports these names); the pairing of replies
with requests stays there.

Theory of operation
-------------------
# RequestScanner (client -> upstream) is fed raw chunks (up to 64 KiB) and returns what to
# forward. It streams RESP arrays and inline commands. It keeps only the command name and,
# for the few commands whose replies matter (CLUSTER ..., CLIENT REPLY ...), two small
# arguments; bulk payloads are counted and skipped, never buffered, so a 512 MB SET flows
# through in 64 KiB pieces. It enforces Redis's own limits and messages ("Protocol error:
# invalid bulk length", ...) and the cross-protocol guard (a POST or Host: command closes the
# connection). Frames it is asked to intercept (AUTH and HELLO when the tunnel checks a local
# password or must notice a client's own login, or every frame before the client has
# authenticated) are captured whole, up to a small limit, and handed to the relay instead of
# being forwarded.
#
# ``at_boundary`` tells the relay when everything handed out so far ends on a frame boundary:
# the only moments it may put a frame of its own (a re-AUTH) into the upstream stream.
#
# Limits: request header lines and inline commands 64 KiB, bulk strings 512 MB, 1M arguments
# (Redis's own limits); intercepted frames 64 KiB.
"""

from __future__ import annotations

from client.errors import RespProtocolError
from client.resp import split_inline

__all__ = [
    "CROSS_PROTOCOL",
    "MAX_HEADER",
    "NOTED",
    "PEEK_SIZE",
    "Command",
    "CrossProtocol",
    "RequestScanner",
    "strict_int",
]

MAX_HEADER = 64 * 1024
MAX_INLINE = 64 * 1024
MAX_BULK = 512 * 1024 * 1024
MAX_ARGS = 2**31 - 1
MAX_INTERCEPT = 64 * 1024
#: Small arguments kept for classification (CLUSTER <sub>, CLIENT REPLY <mode>).
_PEEK_ARGS = 2
#: The longest argument kept (and the longest command name there is).
PEEK_SIZE = 64
_PEEK_SIZE = PEEK_SIZE

_CRLF = b"\r\n"
_STAR = 42  # "*"
_DOLLAR = 36  # "$"

#: Commands the reply tracker must see one by one (tunnel.tracking files a note for each);
#: every other command is only counted.
NOTED = frozenset(
    (
        b"MULTI",
        b"EXEC",
        b"DISCARD",
        b"HELLO",
        b"RESET",
        b"MONITOR",
        b"SUBSCRIBE",
        b"PSUBSCRIBE",
        b"SSUBSCRIBE",
        b"UNSUBSCRIBE",
        b"PUNSUBSCRIBE",
        b"SUNSUBSCRIBE",
        b"CLUSTER",
        b"CLIENT",
        b"SYNC",
        b"PSYNC",
    )
)
_NOTED = NOTED


def strict_int(text: bytes) -> int | None:
    """``text`` as a RESP integer (digits, optionally after ``-``), or None."""
    # int() accepts " 12", "1_2" and "+3"; RESP does not.
    if not text or not (text.isdigit() or (text[0] == 45 and text[1:].isdigit())):
        return None
    return int(text)


_int = strict_int


class Command:
    """One complete request frame, as far as the relay needs to know it.

    Attributes:
        name: the command name, upper-cased (``b""`` when too long to be a command).
        args: the first arguments after the name, when small (all of them for a captured
            frame); an argument too large to keep is ``None``.
        argc: the number of words, the name included.
        frame: the whole frame when it was captured (not forwarded), else None.
    """

    __slots__ = ("argc", "args", "frame", "name")

    def __init__(
        self, name: bytes, args: list[bytes | None], argc: int, frame: bytes | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.argc = argc
        self.frame = frame

    def arg(self, index: int) -> bytes | None:
        """Argument ``index`` (0 is the first after the name), upper-cased, or None."""
        if index < len(self.args):
            value = self.args[index]
            return None if value is None else value.upper()
        return None

    def __repr__(self) -> str:
        return f"Command({self.name!r}, {self.args!r}, argc={self.argc})"


class CrossProtocol:
    """Marker: the client sent ``POST`` or ``Host:``, a browser speaking HTTP to us."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CROSS_PROTOCOL"


CROSS_PROTOCOL = CrossProtocol()

_GUARDED = frozenset((b"POST", b"HOST:"))

#: What RequestScanner.feed returns: raw bytes to forward, a count of ordinary commands
#: (tracking only), a Command, the cross-protocol marker or a protocol error.
_Item = bytes | int | Command | CrossProtocol | RespProtocolError


class RequestScanner:
    """Finds request frames in the client's byte stream (streaming; see the module notes).

    Args:
        track: report every command (pinned mode pairs replies); otherwise only captured ones.
        intercept: command names (upper case) to capture instead of forwarding.
        peek: command names whose first small arguments are kept for classification.

    Attributes:
        capture_all: capture every frame (before the client has authenticated). While set,
            :meth:`feed` stops after each captured frame; call ``feed(b"")`` to go on.
        paused: :meth:`feed` stopped early and holds unread bytes.
    """

    def __init__(
        self,
        *,
        track: bool = False,
        intercept: frozenset[bytes] = frozenset(),
        peek: frozenset[bytes] = frozenset((b"CLUSTER", b"CLIENT")),
    ) -> None:
        self.track = track
        self.intercept = intercept
        self.peek = peek
        self.capture_all = False
        self.paused = False
        #: After a violation: the bytes from the offending frame on (never forwarded).
        self.rest = b""
        self._carry = b""
        self._args_left = 0  # bulk arguments still to come in the current frame
        self._skip = 0  # payload bytes (CRLF included) still to skip
        self._cur: Command | None = None
        self._plain = 0  # ordinary commands seen but not reported yet
        self._captured = False
        self._dead = False

    @property
    def at_boundary(self) -> bool:
        """True when everything handed out so far ends on a frame boundary (what is held back
        is a partial frame head, never forwarded): a frame of the relay's own may go now."""
        return not (self._args_left or self._skip or self._dead)

    @property
    def buffered(self) -> int:
        """Bytes held back (a partial frame head or an intercepted frame): always small."""
        return len(self._carry)

    def detach(self) -> bytes:
        """Stop scanning; return the bytes held back, which were never handed out."""
        held, self._carry = self._carry, b""
        self._dead = True
        return held

    def _fail(self, out: list[_Item], buf: bytes, raw_from: int, at: int, message: str) -> None:
        """End the stream with a protocol error found at ``buf[at]``.

        The bytes before ``at`` (from ``raw_from``) are still handed out, with the commands
        counted so far; :attr:`rest` keeps the bytes from ``at`` on.
        """
        if raw_from < at:
            out.append(buf[raw_from:at])
        self._flush(out)
        self._dead = True
        self._carry = b""
        self.rest = buf[at:]
        out.append(RespProtocolError(message))

    def _guard(self, out: list[_Item], buf: bytes, raw_from: int, at: int) -> None:
        if raw_from < at:
            out.append(buf[raw_from:at])
        self._flush(out)
        self._dead = True
        self._carry = b""
        out.append(CROSS_PROTOCOL)

    def feed(self, data: bytes) -> list[_Item]:
        """Scan ``data``; return, in stream order, the raw bytes to forward and the events.

        Events: with ``track``, an ``int`` counts ordinary commands (those the tracker only
        counts) and a :class:`Command` stands for any other; a captured :class:`Command`
        (its bytes are NOT in the raw pieces); :data:`CROSS_PROTOCOL` or a
        :class:`RespProtocolError`, after which the stream is over.
        """
        if self._dead:
            return []
        buf = self._carry + data if self._carry else data
        self._carry = b""
        self.paused = False
        out: list[_Item] = []
        n = len(buf)
        pos = 0
        raw_from = 0
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if self._skip == 0:
                    self._args_left -= 1
                    if self._args_left == 0:
                        self._finish(out)
                continue
            if self._args_left:
                result = self._args(buf, pos, n, out, raw_from)
            elif buf[pos] == _STAR:
                result = self._multibulk(buf, pos, n, out, raw_from)
            else:
                result = self._inline(buf, pos, n, out, raw_from)
            if result is None:
                return out  # a violation or the guard: the stream is over
            if result < 0:
                pos = ~result  # an incomplete head or argument header: carry it
                break
            if self._captured:
                self._captured = False
                raw_from = result  # a captured frame: its bytes are not forwarded
                if self.capture_all:
                    self._carry = buf[result:]
                    self.paused = bool(self._carry)
                    self._flush(out)
                    return out
            pos = result
        if pos < n:
            self._carry = buf[pos:]
        if raw_from < pos:
            out.append(buf[raw_from:pos] if (raw_from or pos < n) else buf)
        self._flush(out)
        return out

    def _finish(self, out: list[_Item]) -> None:
        cur = self._cur
        if cur is not None:
            self._cur = None
            self._flush(out)
            out.append(cur)

    def _flush(self, out: list[_Item]) -> None:
        """Report the ordinary commands counted so far (before an event that follows them)."""
        if self._plain:
            out.append(self._plain)
            self._plain = 0

    def _args(self, buf: bytes, pos: int, n: int, out: list[_Item], raw_from: int) -> int | None:
        """Pass the bulk arguments still due in the current frame, starting at ``pos``.

        Returns:
            The position after them (or ``n`` with a payload left to skip), ``~p`` when the
            argument header at ``p`` is incomplete (carry from there), None after a violation.
        """
        find = buf.find
        cur = self._cur
        keep = cur is not None and cur.name in self.peek
        left = self._args_left
        while left:
            if pos >= n:
                self._args_left = left
                return pos
            if buf[pos] != _DOLLAR:
                self._fail(out, buf, raw_from, pos, f"expected '$', got '{chr(buf[pos])}'")
                return None
            eol = find(_CRLF, pos, pos + MAX_HEADER)
            if eol < 0:
                if n - pos >= MAX_HEADER:
                    self._fail(out, buf, raw_from, pos, "too big bulk count string")
                    return None
                self._args_left = left
                return ~pos
            size = _int(buf[pos + 1 : eol])
            if size is None or size < 0 or size > MAX_BULK:
                self._fail(out, buf, raw_from, pos, "invalid bulk length")
                return None
            end = eol + 4 + size
            if keep and cur is not None and len(cur.args) < _PEEK_ARGS:
                if size <= _PEEK_SIZE:
                    if end > n:
                        self._args_left = left
                        return ~pos  # keep small arguments whole: carry from the header
                    cur.args.append(buf[eol + 2 : end - 2])
                else:
                    cur.args.append(None)
            if end > n:
                self._args_left = left  # this one's payload goes on in later chunks
                self._skip = end - n
                return n
            pos = end
            left -= 1
        self._args_left = 0
        self._finish(out)
        return pos

    def _multibulk(
        self,
        buf: bytes,
        pos: int,
        n: int,
        out: list[_Item],
        raw_from: int,
    ) -> int | None:
        """A ``*N`` frame starts at ``pos``: the new position, ``~pos`` or None (see _args)."""
        eol = buf.find(_CRLF, pos, pos + MAX_HEADER)
        if eol < 0:
            if n - pos >= MAX_HEADER:
                self._fail(out, buf, raw_from, pos, "too big mbulk count string")
                return None
            return ~pos
        count = _int(buf[pos + 1 : eol])
        if count is None or count > MAX_ARGS:
            self._fail(out, buf, raw_from, pos, "invalid multibulk length")
            return None
        if self.capture_all and count > 10:
            self._fail(out, buf, raw_from, pos, "unauthenticated multibulk length")
            return None
        if count <= 0:
            return eol + 2  # an empty command: Redis ignores it, and so do we
        p = eol + 2
        if p >= n:
            return ~pos
        if buf[p] != _DOLLAR:
            self._fail(out, buf, raw_from, pos, f"expected '$', got '{chr(buf[p])}'")
            return None
        e2 = buf.find(_CRLF, p, p + MAX_HEADER)
        if e2 < 0:
            if n - p >= MAX_HEADER:
                self._fail(out, buf, raw_from, pos, "too big bulk count string")
                return None
            return ~pos
        size = _int(buf[p + 1 : e2])
        if size is None or size < 0 or size > MAX_BULK:
            self._fail(out, buf, raw_from, pos, "invalid bulk length")
            return None
        if size > _PEEK_SIZE:
            # Longer than any command name: forward it, Redis answers it with an error.
            if self.track:
                self._plain += 1
            self._args_left = count  # the name's payload is skipped like an argument
            self._skip = size + 2
            return e2 + 2
        end = e2 + 4 + size
        if end > n:
            return ~pos
        name = buf[e2 + 2 : end - 2].upper()
        if name in _GUARDED:
            self._guard(out, buf, raw_from, pos)
            return None
        if self.capture_all or name in self.intercept:
            return self._capture(buf, pos, n, count, name, out, raw_from)
        if self.track:
            if name in _NOTED:
                self._cur = Command(name, [], count)
            else:
                self._plain += 1  # an ordinary command: a count is all the tracker needs
        if count == 1:
            self._finish(out)
            return end
        self._args_left = count - 1
        return self._args(buf, end, n, out, raw_from)

    def _capture(
        self,
        buf: bytes,
        pos: int,
        n: int,
        count: int,
        name: bytes,
        out: list[_Item],
        raw_from: int,
    ) -> int | None:
        """Take the whole frame at ``pos`` (it must fit in MAX_INTERCEPT)."""
        args: list[bytes | None] = []
        p = buf.find(_CRLF, pos) + 2
        for _ in range(count):
            eol = buf.find(_CRLF, p)
            if eol < 0:
                break
            if buf[p] != _DOLLAR:
                self._fail(out, buf, raw_from, pos, f"expected '$', got '{chr(buf[p])}'")
                return None
            size = _int(buf[p + 1 : eol])
            if size is None or size < 0 or size > MAX_INTERCEPT:
                bad = "unauthenticated bulk length" if self.capture_all else "invalid bulk length"
                self._fail(out, buf, raw_from, pos, bad)
                return None
            if eol + 4 + size > n:
                break
            args.append(buf[eol + 2 : eol + 2 + size])
            p = eol + 4 + size
        if len(args) < count:
            if n - pos > MAX_INTERCEPT:
                self._fail(out, buf, raw_from, pos, "request too large to intercept")
                return None
            return ~pos
        if raw_from < pos:
            out.append(buf[raw_from:pos])
        self._flush(out)
        out.append(Command(name, args[1:], count, buf[pos:p]))
        self._captured = True
        return p

    def _inline(
        self,
        buf: bytes,
        pos: int,
        n: int,
        out: list[_Item],
        raw_from: int,
    ) -> int | None:
        """An inline command starts at ``pos`` (returns as _multibulk)."""
        eol = buf.find(b"\n", pos, pos + MAX_INLINE)
        if eol < 0:
            if n - pos >= MAX_INLINE:
                self._fail(out, buf, raw_from, pos, "too big inline request")
                return None
            return ~pos
        words = split_inline(buf[pos:eol])
        if words is None:
            self._fail(out, buf, raw_from, pos, "unbalanced quotes in request")
            return None
        if not words:
            return eol + 1  # an empty line: Redis ignores it
        name = words[0].upper()
        if name in _GUARDED:
            self._guard(out, buf, raw_from, pos)
            return None
        if self.capture_all or name in self.intercept:
            if raw_from < pos:
                out.append(buf[raw_from:pos])
            self._flush(out)
            args: list[bytes | None] = list(words[1:])
            out.append(Command(name, args, len(words), buf[pos : eol + 1]))
            self._captured = True
            return eol + 1
        if self.track:
            if name in _NOTED:
                self._flush(out)
                kept: list[bytes | None] = list(words[1 : 1 + _PEEK_ARGS])
                out.append(Command(name, kept, len(words)))
            else:
                self._plain += 1
        return eol + 1
