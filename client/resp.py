"""Sans-IO RESP2/RESP3 engine: incremental parser, encoder and raw frame scanner (pure; no I/O).

This module is the hot path of every mode (tunnel relay, smart proxy, CLI, cluster client), so it
is written for CPython speed: ``bytes.find`` for line ends, ``int()`` on slices, no per-byte
Python loops (except in the rare quoted inline-command splitter), and no work repeated when a
frame arrives in many small pieces.
"""

# Theory of operation
# ===================
#
# Buffering.  Both :class:`RespParser` and :class:`FrameScanner` keep an immutable ``bytes``
# working buffer plus a read position, and a list of chunks fed since the last parse attempt.
# Slicing a ``bytes`` buffer yields the value directly (one copy), which is cheaper than the
# ``bytearray`` slice + ``bytes()`` double copy.  The pending chunks are merged into the working
# buffer (dropping the consumed prefix) only when a parse attempt can make progress.
#
# Gating ("need").  When an attempt stops because an element is incomplete, we record how many
# bytes must be buffered before another attempt could succeed (``_need``):
#
# * an incomplete bulk payload needs its whole length plus CRLF, so a 500 MB bulk fed in 1 KB
#   chunks costs O(1) per feed (a list append) and one merge at the end;
# * an incomplete line (header, simple string, inline command) cannot finish before a ``\n``
#   arrives, so ``feed`` only re-arms an attempt when a chunk contains ``\n`` or when enough
#   bytes arrived to prove the line is over ``max_line_len``.  The line search resumes where
#   the previous one stopped (``_scan``), so a long line is never rescanned from its start.
#
# Partial aggregates.  The parser keeps an explicit stack of open aggregates (``_Agg``: the
# elements still missing, the items built so far, and how to finish them).  Completed elements
# are appended to the innermost aggregate as soon as they are parsed, and their bytes are
# released; a resumed attempt starts at the first unparsed element, never at the frame start.
# The scanner keeps only the remaining element counts, and moves the bytes of the frame already
# scanned to a list of parts when it merges, so each byte is copied O(1) times.
#
# Attributes.  ``|N`` is followed by N key/value pairs and then by the value it annotates; both
# parser and scanner treat it as one aggregate of 2N+1 elements (so ``*1 |1 k v x`` is an array
# of one element, ``Attributed``).
#
# Limits (the tunnel faces untrusted clients).  A bulk longer than ``max_bulk_len``, nesting
# deeper than ``max_depth``, a line longer than ``max_line_len``, an aggregate count above
# ``MAX_AGGREGATE_LEN`` or any malformed header raises :class:`RespProtocolError`.  Aggregates
# are never preallocated from their header, so memory grows only with bytes actually received.
# After an error the object is poisoned: every later call raises the same error again.
#
# Draining.  ``next_value`` / ``next_frame`` return one item per call; ``pop_values`` /
# ``pop_frames`` / ``pop_complete`` run the same loop once per fed chunk and collect every
# complete item, which saves the per-call setup on pipelined traffic.  If a protocol error
# follows complete items, the batch calls return those items and raise on the next call, so a
# relay can still forward every good frame before it closes the connection.
#
# Requests mode (server side).  Like Redis's ``processMultibulkBuffer`` /
# ``processInlineBuffer``: a command starting with ``*`` must be an array of ``$`` bulks;
# anything else is an inline command line (ended by ``\n``, optional ``\r``) split like
# ``sdssplitargs``.  Empty commands (``*0``, ``*-1``, blank inline lines) are skipped, as Redis
# skips them without a reply; the scanner skips them too, so frames and replies stay 1:1.

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, cast

from client.errors import RespProtocolError
from client.values import (
    Attributed,
    BigNumber,
    Double,
    ErrorReply,
    Push,
    RespMap,
    RespSet,
    RespValue,
    SimpleString,
    Verbatim,
)

__all__ = [  # the value types are re-exported, so ``client.resp`` is the one codec import
    "DEFAULT_MAX_BULK",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_LINE",
    "MAX_AGGREGATE_LEN",
    "NEED_DATA",
    "Attributed",
    "BigNumber",
    "CommandArg",
    "Double",
    "ErrorReply",
    "Frame",
    "FrameScanner",
    "NeedData",
    "Push",
    "RespMap",
    "RespParser",
    "RespSet",
    "RespValue",
    "SimpleString",
    "Verbatim",
    "encode_command",
    "encode_commands",
    "encode_value",
    "peek_command",
    "split_inline",
]


class NeedData(enum.Enum):
    """Sentinel type: the parser needs more bytes before it can return a value."""

    NEED_DATA = 0


NEED_DATA = NeedData.NEED_DATA

#: Largest bulk accepted by default: Redis's own ``proto-max-bulk-len``.
DEFAULT_MAX_BULK = 512 * 1024 * 1024
#: Deepest aggregate nesting accepted by default (Redis replies nest a few levels at most).
DEFAULT_MAX_DEPTH = 64
#: Longest header / simple-string / inline line: Redis's ``PROTO_INLINE_MAX_SIZE``.
DEFAULT_MAX_LINE = 64 * 1024
#: Largest aggregate element count accepted (Redis rejects multibulk counts above INT_MAX).
MAX_AGGREGATE_LEN = 2**31 - 1

#: Buffers whose consumed prefix exceeds this are compacted even while waiting for data.
_COMPACT_AT = 64 * 1024

_SPACES = frozenset(b" \t\n\r\x0b\x0c")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}

# Type bytes.
_BULK = 36  # $
_ARRAY = 42  # *
_SIMPLE = 43  # +
_ERROR = 45  # -
_INT = 58  # :
_NULL = 95  # _
_DOUBLE = 44  # ,
_BOOL = 35  # #
_BIGNUM = 40  # (
_VERBATIM = 61  # =
_MAP = 37  # %
_SET = 126  # ~
_PUSH = 62  # >
_ATTR = 124  # |
_BLOBERR = 33  # !

_OK = SimpleString(b"OK")

_AGGREGATES = frozenset((_ARRAY, _MAP, _SET, _PUSH, _ATTR))
_BLOBS = frozenset((_BULK, _VERBATIM, _BLOBERR))
_LINES = frozenset((_SIMPLE, _ERROR, _INT, _NULL, _DOUBLE, _BOOL, _BIGNUM))


def _byte_repr(b: int) -> str:
    return repr(chr(b)) if 32 <= b < 127 else f"0x{b:02x}"


def _bad_length(s: bytes, what: str, allow_null: bool) -> int:
    """Slow path of a length header that is not plain digits: ``-1`` (null) or an error."""
    if allow_null and s == b"-1":
        return -1
    shown = s[:40].decode("ascii", "replace")
    if s[:1] == b"-" and s[1:].isdigit():
        msg = f"negative {what} length {shown}"
    elif s.isdigit():
        msg = f"{what} length {shown} is too large"
    else:
        msg = f"invalid {what} length {shown!r}"
    raise RespProtocolError(msg)


def _parse_int(s: bytes, what: str) -> int:
    """A strict decimal integer (``-?[0-9]+``), as Redis's ``string2ll`` reads it."""
    digits = s[1:] if s[:1] == b"-" else s
    if digits.isdigit() and len(digits) < 4000:
        return int(s)
    raise RespProtocolError(f"invalid {what} {s[:40].decode('ascii', 'replace')!r}")


def _check_double(s: bytes) -> bytes:
    try:
        if s and not s[:1].isspace() and not s[-1:].isspace() and b"_" not in s:
            float(s)
            return s
    except ValueError:
        pass
    raise RespProtocolError(f"invalid double {s[:40].decode('ascii', 'replace')!r}")


class _Agg:
    """One open aggregate on the parser's stack."""

    __slots__ = ("items", "kind", "remaining")

    def __init__(self, remaining: int, items: list[RespValue], kind: int) -> None:
        self.remaining = remaining
        self.items = items
        #: 0 when ``items`` already is the finished value (array, set, push); else the type byte.
        self.kind = kind


def _finish(agg: _Agg) -> RespValue:
    items = agg.items
    if agg.kind == _MAP:
        return RespMap(zip(items[::2], items[1::2], strict=True))
    # Attribute: N pairs, then the annotated value.
    value = items.pop()
    return Attributed(RespMap(zip(items[::2], items[1::2], strict=True)), value)


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline command line like Redis's ``sdssplitargs``.

    Handles double quotes (with ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\a``, ``\\xHH`` escapes)
    and single quotes (with ``\\'``); a closing quote must be followed by a space or the end.

    Returns:
        The arguments (possibly empty), or ``None`` for unbalanced quotes.
    """
    nul = line.find(b"\0")
    if nul >= 0:  # C string: a NUL byte ends the line
        line = line[:nul]
    if b'"' not in line and b"'" not in line and b"\x0b" not in line and b"\x0c" not in line:
        return line.split()
    n = len(line)
    p = 0
    out: list[bytes] = []
    while True:
        while p < n and line[p] in _SPACES:
            p += 1
        if p >= n:
            return out
        cur = bytearray()
        inq = insq = done = False
        while not done:
            if inq:
                if p >= n:
                    return None
                c = line[p]
                if (
                    c == 92
                    and p + 3 < n
                    and line[p + 1] == 120
                    and line[p + 2] in _HEX
                    and (line[p + 3] in _HEX)
                ):
                    cur.append(int(line[p + 2 : p + 4], 16))
                    p += 3
                elif c == 92 and p + 1 < n:
                    p += 1
                    cur.append(_ESCAPES.get(line[p], line[p]))
                elif c == 34:
                    if p + 1 < n and line[p + 1] not in _SPACES:
                        return None
                    done = True
                else:
                    cur.append(c)
            elif insq:
                if p >= n:
                    return None
                c = line[p]
                if c == 92 and p + 1 < n and line[p + 1] == 39:
                    p += 1
                    cur.append(39)
                elif c == 39:
                    if p + 1 < n and line[p + 1] not in _SPACES:
                        return None
                    done = True
                else:
                    cur.append(c)
            else:
                if p >= n:
                    break
                c = line[p]
                if c in (32, 10, 13, 9):
                    done = True
                elif c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            if p < n:
                p += 1
        out.append(bytes(cur))


class _Buffer:
    """The shared buffering/gating machinery (see the theory of operation)."""

    #: May a suspended attempt drop a fully consumed buffer on the spot?  Not in the scanner,
    #: whose frame bounds point into the buffer until they are sliced.
    _drop_consumed = True

    __slots__ = (
        "_buf",
        "_chunks",
        "_error",
        "_lf_wait",
        "_max_bulk",
        "_max_depth",
        "_max_line",
        "_need",
        "_pending",
        "_pos",
        "_requests",
        "_scan",
    )

    def __init__(
        self, max_bulk_len: int, max_depth: int, max_line_len: int, requests: bool
    ) -> None:
        if max_bulk_len < 0 or max_depth < 1 or max_line_len < 16:
            raise ValueError("RESP limits: max_bulk_len >= 0, max_depth >= 1, max_line_len >= 16")
        self._max_bulk = max_bulk_len
        self._max_depth = max_depth
        self._max_line = max_line_len
        self._requests = requests
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._pending = 0
        #: Attempt parsing only once ``len(_buf) + _pending >= _need`` (``_buf`` coordinates).
        self._need = 0
        #: Waiting for a line end: a fed chunk containing ``\n`` re-arms the next attempt.
        self._lf_wait = False
        #: Where to resume the search for the end of the line that starts at ``_pos``.
        self._scan = 0
        self._error: RespProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; they are only looked at by the next parse call."""
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if self._lf_wait and b"\n" in data:
            self._need = 0
        pos = self._pos
        if pos >= len(self._buf) and not self._chunks:
            # Everything buffered was consumed: the chunk becomes the buffer, no copy.
            self._buf = data
            self._need -= pos
            self._scan = 0
            self._pos = 0
        else:
            self._chunks.append(data)
            self._pending += len(data)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a value or frame."""
        return len(self._buf) - self._pos + self._pending

    def _ready(self) -> bool:
        """Merge pending chunks if an attempt can make progress; False while gated."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if not self._chunks:
            return len(buf) >= self._need
        if len(buf) + self._pending < self._need:
            return False
        self._merge()
        return True

    def _merge(self) -> None:
        pos = self._pos
        buf = self._buf
        chunks = self._chunks
        if pos < len(buf):
            self._buf = b"".join([memoryview(buf)[pos:] if pos else buf, *chunks])
        else:
            self._buf = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        self._chunks = []
        self._pending = 0
        self._need -= pos
        self._scan -= pos
        self._pos = 0

    def _fail(self, message: str) -> RespProtocolError:
        self._error = RespProtocolError(message)
        return self._error

    def _line_wait(self, buf: bytes, pos: int, eol: int, what: str) -> None:
        """The line at ``pos`` has no end yet (``eol < 0``) or is too long: arm or raise."""
        n = len(buf)
        if pos >= n and self._drop_consumed:
            # Nothing of the next element has arrived: drop the buffer, no gating needed.
            self._buf = b""
            self._pos = self._scan = self._need = 0
            self._lf_wait = False
            return
        max_line = self._max_line
        if eol >= 0 or n - pos >= max_line + 2:
            raise self._fail(f"{what} longer than {max_line} bytes")
        self._pos = pos
        self._scan = n - 1 if n > pos else pos
        self._need = pos + max_line + 2
        self._lf_wait = True

    def _bulk_wait(self, pos: int, end: int) -> None:
        """A bulk payload is incomplete: resume at its header once ``end`` bytes are in."""
        self._pos = pos
        self._need = end
        self._lf_wait = False

    def _compact(self) -> None:
        """Release the consumed prefix when it is large (called while waiting for data)."""
        pos = self._pos
        if pos >= _COMPACT_AT or (pos and pos >= len(self._buf)):
            self._buf = self._buf[pos:]
            self._need -= pos
            self._scan -= pos
            self._pos = 0


class RespParser(_Buffer):
    """Incremental RESP2/RESP3 parser: feed bytes, take values.

    Args:
        max_bulk_len: longest accepted bulk string (``$``, ``=``, ``!``) payload.
        max_depth: deepest accepted aggregate nesting (attributes count as a level).
        max_line_len: longest accepted line (type byte + header, simple string, inline command).
        requests: parse client commands (server side) instead of replies: each value is then a
            ``list[bytes]``; inline commands are accepted; anything but an array of bulks raises.

    Example::

        parser = RespParser()
        parser.feed(data)
        for value in parser:   # every complete value
            ...
    """

    __slots__ = ("_args", "_eof", "_remaining", "_stack")

    def __init__(
        self,
        *,
        max_bulk_len: int = DEFAULT_MAX_BULK,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_line_len: int = DEFAULT_MAX_LINE,
        requests: bool = False,
    ) -> None:
        super().__init__(max_bulk_len, max_depth, max_line_len, requests)
        self._stack: list[_Agg] = []
        self._args: list[bytes] | None = None
        self._remaining = 0
        self._eof = False

    def feed_eof(self) -> None:
        """Record that the peer closed; a partial value then raises on the next call."""
        self._eof = True

    def next_value(self) -> RespValue | NeedData:
        """Return the next complete value, or :data:`NEED_DATA`.

        Raises:
            RespProtocolError: the bytes are not valid RESP, exceed a limit, or the connection
                closed (:meth:`feed_eof`) in the middle of a value.
        """
        if self._ready():
            self._need = 0
            self._lf_wait = False
            try:
                value = (
                    cast(RespValue, self._parse_request(None))
                    if self._requests
                    else self._parse_reply(None)
                )
            except RespProtocolError as exc:
                self._error = exc
                raise
            if value is not NEED_DATA:
                return value
        self._starved()
        return NEED_DATA

    def pop_values(self) -> list[RespValue]:
        """Return every complete value buffered so far (the fast way to drain).

        When a protocol error follows some complete values, those values are returned first
        and the error is raised by the next call.
        """
        out: list[RespValue] = []
        if self._ready():
            self._need = 0
            self._lf_wait = False
            try:
                if self._requests:
                    self._parse_request(cast("list[list[bytes]]", out))
                else:
                    self._parse_reply(out)
            except RespProtocolError as exc:
                self._error = exc
                if not out:
                    raise
                return out
        if out:
            self._compact()
        else:
            self._starved()
        return out

    def next_command(self) -> list[bytes] | NeedData:
        """Requests mode: :meth:`next_value`, typed as a command's argument list."""
        if not self._requests:
            raise TypeError("next_command() needs RespParser(requests=True)")
        return cast("list[bytes] | NeedData", self.next_value())

    def values(self) -> Iterator[RespValue]:
        """Yield every complete value buffered so far (``for value in parser`` does this)."""
        while batch := self.pop_values():
            yield from batch

    __iter__ = values

    def _starved(self) -> None:
        """No complete value: release memory, and fail if the peer closed mid-value."""
        self._compact()
        if self._eof and (self.buffered or self._stack or self._args is not None):
            what = "command" if self._requests else "reply"
            raise self._fail(f"connection closed mid-{what}")

    def _parse_reply(self, out: list[RespValue] | None) -> RespValue | NeedData:
        """Parse one value (``out`` is None) or every complete value into ``out``."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        stack = self._stack
        max_line = self._max_line
        max_bulk = self._max_bulk
        scan = self._scan
        find = buf.find
        v: RespValue
        while True:
            if scan > pos:
                eol = find(b"\r\n", scan)
                scan = 0
            else:
                eol = find(b"\r\n", pos)
            if eol < 0 or eol - pos > max_line:
                self._line_wait(buf, pos, eol, "reply line")
                return NEED_DATA
            t = buf[pos]
            if t in _BLOBS:
                s = buf[pos + 1 : eol]
                ln = int(s) if eol - pos < 20 and s.isdigit() else _bad_length(s, "bulk", True)
                if ln > max_bulk:
                    raise self._fail(f"bulk length {ln} exceeds the limit of {max_bulk}")
                if ln < 0:
                    v = None
                    pos = eol + 2
                else:
                    start = eol + 2
                    end = start + ln
                    if end + 2 > n:
                        self._bulk_wait(pos, end + 2)
                        return NEED_DATA
                    if buf[end] != 13 or buf[end + 1] != 10:
                        raise self._fail("bulk string not terminated by CRLF")
                    pos = end + 2
                    if t == _BULK:
                        v = buf[start:end]
                    elif t == _BLOBERR:
                        v = ErrorReply(buf[start:end], True)
                    else:
                        if ln < 4 or buf[start + 3] != 58:
                            raise self._fail("verbatim string without a 'fmt:' prefix")
                        v = Verbatim(buf[start : start + 3], buf[start + 4 : end])
            elif t == _SIMPLE:
                # "+OK" is the most common reply of all: share one immutable instance.
                v = (
                    _OK
                    if eol - pos == 3 and buf[pos + 1] == 79 and buf[pos + 2] == 75
                    else SimpleString(buf[pos + 1 : eol])
                )
                pos = eol + 2
            elif t in _AGGREGATES:
                s = buf[pos + 1 : eol]
                count = (
                    int(s)
                    if eol - pos < 20 and s.isdigit()
                    else _bad_length(s, "aggregate", t != _ATTR)
                )
                if count > MAX_AGGREGATE_LEN:
                    raise self._fail(f"aggregate length {count} exceeds {MAX_AGGREGATE_LEN}")
                pos = eol + 2
                if count > 0 or t == _ATTR:
                    if len(stack) >= self._max_depth:
                        raise self._fail(f"reply nested deeper than {self._max_depth} levels")
                    if t == _ARRAY:
                        stack.append(_Agg(count, [], 0))
                    elif t == _MAP:
                        stack.append(_Agg(2 * count, [], _MAP))
                    elif t == _SET:
                        stack.append(_Agg(count, RespSet(), 0))
                    elif t == _PUSH:
                        stack.append(_Agg(count, Push(), 0))
                    else:
                        stack.append(_Agg(2 * count + 1, [], _ATTR))
                    continue
                if count < 0:
                    v = None
                elif t == _ARRAY:
                    v = []
                elif t == _MAP:
                    v = RespMap()
                elif t == _SET:
                    v = RespSet()
                else:
                    v = Push()
            elif t == _INT:
                s = buf[pos + 1 : eol]
                v = int(s) if eol - pos < 20 and s.isdigit() else _parse_int(s, "integer")
                pos = eol + 2
            elif t == _ERROR:
                v = ErrorReply(buf[pos + 1 : eol])
                pos = eol + 2
            elif t == _NULL:
                if eol != pos + 1:
                    raise self._fail("null ('_') with a payload")
                v = None
                pos = eol + 2
            elif t == _DOUBLE:
                v = Double(_check_double(buf[pos + 1 : eol]))
                pos = eol + 2
            elif t == _BOOL:
                s = buf[pos + 1 : eol]
                if s == b"t":
                    v = True
                elif s == b"f":
                    v = False
                else:
                    raise self._fail(f"invalid boolean {s[:40]!r}")
                pos = eol + 2
            elif t == _BIGNUM:
                v = BigNumber(_parse_int(buf[pos + 1 : eol], "big number"))
                pos = eol + 2
            else:
                raise self._fail(f"unknown reply type byte {_byte_repr(t)}")
            # One element is complete: append it to its aggregate, closing finished ones.
            while stack:
                top = stack[-1]
                top.items.append(v)
                top.remaining -= 1
                if top.remaining:
                    break
                stack.pop()
                v = top.items if not top.kind else _finish(top)
            else:
                if out is None:
                    self._done(pos, n)
                    return v
                out.append(v)

    def _parse_request(self, out: list[list[bytes]] | None) -> list[bytes] | NeedData:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        max_line = self._max_line
        max_bulk = self._max_bulk
        scan = self._scan
        find = buf.find
        args = self._args
        remaining = self._remaining
        while True:
            if args is None:
                if pos >= n:
                    self._line_wait(buf, pos, -1, "command line")
                    return NEED_DATA
                if buf[pos] != _ARRAY:
                    nl = buf.find(b"\n", scan if scan > pos else pos)
                    scan = 0
                    if nl < 0 or nl - pos > max_line:
                        self._line_wait(buf, pos, nl, "inline command")
                        return NEED_DATA
                    line = buf[pos : nl - 1 if nl > pos and buf[nl - 1] == 13 else nl]
                    pos = nl + 1
                    argv = split_inline(line)
                    if argv is None:
                        raise self._fail("unbalanced quotes in inline command")
                    if not argv:
                        continue
                    if out is None:
                        self._done(pos, n)
                        return argv
                    out.append(argv)
                    continue
                eol = find(b"\r\n", scan if scan > pos else pos)
                scan = 0
                if eol < 0 or eol - pos > max_line:
                    self._line_wait(buf, pos, eol, "multibulk header")
                    return NEED_DATA
                s = buf[pos + 1 : eol]
                count = (
                    int(s) if eol - pos < 20 and s.isdigit() else _parse_int(s, "multibulk length")
                )
                pos = eol + 2
                if count <= 0:
                    continue
                if count > MAX_AGGREGATE_LEN:
                    raise self._fail(f"multibulk length {count} exceeds {MAX_AGGREGATE_LEN}")
                args = []
                remaining = count
            while remaining:
                if pos >= n:
                    self._args = args
                    self._remaining = remaining
                    self._line_wait(buf, pos, -1, "bulk header")
                    return NEED_DATA
                if buf[pos] != _BULK:
                    raise self._fail(f"expected '$', got {_byte_repr(buf[pos])}")
                eol = find(b"\r\n", scan if scan > pos else pos)
                scan = 0
                if eol < 0 or eol - pos > max_line:
                    self._args = args
                    self._remaining = remaining
                    self._line_wait(buf, pos, eol, "bulk header")
                    return NEED_DATA
                s = buf[pos + 1 : eol]
                ln = int(s) if eol - pos < 20 and s.isdigit() else _bad_length(s, "bulk", False)
                if ln > max_bulk:
                    raise self._fail(f"bulk length {ln} exceeds the limit of {max_bulk}")
                start = eol + 2
                end = start + ln
                if end + 2 > n:
                    self._args = args
                    self._remaining = remaining
                    self._bulk_wait(pos, end + 2)
                    return NEED_DATA
                if buf[end] != 13 or buf[end + 1] != 10:
                    raise self._fail("bulk string not terminated by CRLF")
                args.append(buf[start:end])
                pos = end + 2
                remaining -= 1
            self._args = None
            if out is None:
                self._done(pos, n)
                return args
            out.append(args)
            args = None

    def _done(self, pos: int, n: int) -> None:
        if pos >= n:
            self._buf = b""
            self._pos = 0
        else:
            self._pos = pos


class Frame(NamedTuple):
    """One complete RESP frame, exactly as on the wire."""

    #: The frame's bytes (for an attribute-prefixed reply: the attribute and the value).
    data: bytes
    #: The first byte (``ord('*')``, ``ord('+')``, ...); 0 for an inline command.
    kind: int


_new_frame = tuple.__new__  # Frame(data, kind) without the Python-level NamedTuple __new__


class FrameScanner(_Buffer):
    """Finds complete frame boundaries without building Python values (for byte relays).

    It validates framing exactly like :class:`RespParser` (type bytes, lengths, limits,
    CRLF after payloads; in requests mode the array-of-bulks shape and inline quoting) but not
    the contents of scalar lines (an ``:abc`` integer passes the scanner, not the parser).

    Args: as :class:`RespParser`.
    """

    __slots__ = ("_kind", "_parts", "_stack", "_start")
    _drop_consumed = False

    def __init__(
        self,
        *,
        max_bulk_len: int = DEFAULT_MAX_BULK,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_line_len: int = DEFAULT_MAX_LINE,
        requests: bool = False,
    ) -> None:
        super().__init__(max_bulk_len, max_depth, max_line_len, requests)
        #: Remaining element counts of the open aggregates (innermost last).
        self._stack: list[int] = []
        #: Start of the frame in progress in ``_buf``, or -1 between frames.
        self._start = -1
        self._kind = 0
        #: Bytes of the frame in progress that were already moved out of ``_buf``.
        self._parts: list[bytes] = []

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame (skipped empty commands excluded)."""
        start = self._start if self._start >= 0 else self._pos
        return sum(map(len, self._parts)) + len(self._buf) - start + self._pending

    def next_frame(self) -> Frame | None:
        """Return the next complete frame not yet returned, or ``None``.

        Raises:
            RespProtocolError: the bytes are not valid RESP framing or exceed a limit.
        """
        if self._ready():
            self._need = 0
            self._lf_wait = False
            try:
                end = self._scan_request(None) if self._requests else self._scan_reply(None)
            except RespProtocolError as exc:
                self._error = exc
                raise
            if end >= 0:
                start = self._start
                data = self._buf[start:end]
                if self._parts:
                    self._parts.append(data)
                    data = b"".join(self._parts)
                    self._parts = []
                self._start = -1
                if end >= len(self._buf):
                    self._buf = b""
                    self._pos = 0
                return _new_frame(Frame, (data, self._kind))
        self._compact_frame()
        return None

    def pop_frames(self) -> list[Frame]:
        """Return every complete frame buffered so far (the fast way to drain).

        When a protocol error follows some complete frames, those frames are returned first
        and the error is raised by the next call.
        """
        bounds = self._scan_all()
        if not bounds:
            return []
        buf = self._buf
        frames = [
            _new_frame(Frame, (buf[bounds[i] : bounds[i + 1]], bounds[i + 2]))
            for i in range(0, len(bounds), 3)
        ]
        if self._parts:  # the first frame began before the last merge
            self._parts.append(frames[0].data)
            frames[0] = _new_frame(Frame, (b"".join(self._parts), bounds[2]))
            self._parts = []
        self._compact_frame()
        return frames

    def pop_complete(self) -> tuple[bytes, int]:
        """Return all complete frames as one ``bytes`` and their count (relay fast path).

        Errors behave as in :meth:`pop_frames`.
        """
        bounds = self._scan_all()
        if not bounds:
            return b"", 0
        data = self._buf[bounds[0] : bounds[-2]]
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
        self._compact_frame()
        return data, len(bounds) // 3

    def _scan_all(self) -> list[int]:
        """Scan every complete frame: flat ``[start, end, kind, ...]`` in ``_buf`` coordinates."""
        bounds: list[int] = []
        if self._ready():
            self._need = 0
            self._lf_wait = False
            try:
                if self._requests:
                    self._scan_request(bounds)
                else:
                    self._scan_reply(bounds)
            except RespProtocolError as exc:
                self._error = exc
                if not bounds:
                    raise
                self._pos = bounds[-2]  # release the good frames; keep the error for later
                self._start = -1
        if not bounds:
            self._compact_frame()
        return bounds

    def _merge(self) -> None:
        # Move the already-scanned bytes of the frame in progress out of the buffer, so a
        # merge copies only the unscanned tail (each byte is copied O(1) times).
        start = self._start
        if start >= 0:
            if self._pos > start:
                self._parts.append(self._buf[start : self._pos])
            self._start = 0
        super()._merge()

    def _compact_frame(self) -> None:
        pos = self._pos
        if pos and pos >= len(self._buf) and self._start < 0:
            # Everything was returned: drop the buffer (and the line gating, moot now).
            self._buf = b""
            self._pos = self._scan = self._need = 0
            self._lf_wait = False
            return
        if pos >= _COMPACT_AT or (pos and pos >= len(self._buf)):
            start = self._start
            if start >= 0:
                if pos > start:
                    self._parts.append(self._buf[start:pos])
                self._start = 0
            self._compact()

    def _scan_reply(self, out: list[int] | None) -> int:
        """Scan to the end of the next frame (``out`` is None: return its end, or -1 if
        incomplete) or of every complete frame (appending start, end, kind to ``out``)."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        stack = self._stack
        max_line = self._max_line
        scan = self._scan
        max_bulk = self._max_bulk
        start = self._start
        kind = self._kind
        find = buf.find
        while True:
            if scan > pos:
                eol = find(b"\r\n", scan)
                scan = 0
            else:
                eol = find(b"\r\n", pos)
            if eol < 0 or eol - pos > max_line:
                self._start = start
                self._kind = kind
                self._line_wait(buf, pos, eol, "reply line")
                return -1
            t = buf[pos]
            if start < 0:
                start = pos
                kind = t
            if t in _BLOBS:
                s = buf[pos + 1 : eol]
                ln = int(s) if eol - pos < 20 and s.isdigit() else _bad_length(s, "bulk", True)
                if ln > max_bulk:
                    raise self._fail(f"bulk length {ln} exceeds the limit of {max_bulk}")
                if ln < 0:
                    pos = eol + 2
                else:
                    end = eol + 2 + ln
                    if end + 2 > n:
                        self._start = start
                        self._kind = kind
                        self._bulk_wait(pos, end + 2)
                        return -1
                    if buf[end] != 13 or buf[end + 1] != 10:
                        raise self._fail("bulk string not terminated by CRLF")
                    if t == _VERBATIM and (ln < 4 or buf[eol + 5] != 58):
                        raise self._fail("verbatim string without a 'fmt:' prefix")
                    pos = end + 2
            elif t in _LINES:
                if t == _NULL and eol != pos + 1:
                    raise self._fail("null ('_') with a payload")
                pos = eol + 2
            elif t in _AGGREGATES:
                s = buf[pos + 1 : eol]
                count = (
                    int(s)
                    if eol - pos < 20 and s.isdigit()
                    else _bad_length(s, "aggregate", t != _ATTR)
                )
                if count > MAX_AGGREGATE_LEN:
                    raise self._fail(f"aggregate length {count} exceeds {MAX_AGGREGATE_LEN}")
                pos = eol + 2
                if count > 0 or t == _ATTR:
                    if len(stack) >= self._max_depth:
                        raise self._fail(f"reply nested deeper than {self._max_depth} levels")
                    if t == _MAP:
                        count *= 2
                    elif t == _ATTR:
                        count = 2 * count + 1
                    stack.append(count)
                    continue
            else:
                raise self._fail(f"unknown reply type byte {_byte_repr(t)}")
            # One element is complete: count it down in its aggregates.
            while stack:
                r = stack[-1] - 1
                if r:
                    stack[-1] = r
                    break
                stack.pop()
            else:
                if out is None:
                    self._pos = pos
                    self._start = start
                    self._kind = kind
                    return pos
                out += (start, pos, kind)
                start = -1

    def _scan_request(self, out: list[int] | None) -> int:
        """As :meth:`_scan_reply`, for client commands (array of bulks or inline line)."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        stack = self._stack  # [remaining bulks] while inside a multibulk command
        max_line = self._max_line
        max_bulk = self._max_bulk
        scan = self._scan
        find = buf.find
        start = self._start
        while True:
            if not stack:
                if pos >= n:
                    self._start = -1
                    self._line_wait(buf, pos, -1, "command line")
                    return -1
                if buf[pos] != _ARRAY:
                    nl = buf.find(b"\n", scan if scan > pos else pos)
                    scan = 0
                    if nl < 0 or nl - pos > max_line:
                        self._start = -1
                        self._line_wait(buf, pos, nl, "inline command")
                        return -1
                    argv = split_inline(buf[pos : nl - 1 if nl > pos and buf[nl - 1] == 13 else nl])
                    if argv is None:
                        raise self._fail("unbalanced quotes in inline command")
                    start = pos
                    pos = nl + 1
                    if not argv:  # blank line: skipped, like Redis
                        start = -1
                        continue
                    if out is None:
                        self._start = start
                        self._kind = 0
                        self._pos = pos
                        return pos
                    out += (start, pos, 0)
                    start = -1
                    continue
                eol = find(b"\r\n", scan if scan > pos else pos)
                scan = 0
                if eol < 0 or eol - pos > max_line:
                    self._start = -1
                    self._line_wait(buf, pos, eol, "multibulk header")
                    return -1
                s = buf[pos + 1 : eol]
                count = (
                    int(s) if eol - pos < 20 and s.isdigit() else _parse_int(s, "multibulk length")
                )
                if count <= 0:  # empty command: skipped, like Redis
                    pos = eol + 2
                    continue
                if count > MAX_AGGREGATE_LEN:
                    raise self._fail(f"multibulk length {count} exceeds {MAX_AGGREGATE_LEN}")
                start = pos
                pos = eol + 2
                stack.append(count)
            remaining = stack[0]
            while remaining:
                if pos >= n:
                    stack[0] = remaining
                    self._start = start
                    self._kind = _ARRAY
                    self._line_wait(buf, pos, -1, "bulk header")
                    return -1
                if buf[pos] != _BULK:
                    raise self._fail(f"expected '$', got {_byte_repr(buf[pos])}")
                eol = find(b"\r\n", scan if scan > pos else pos)
                scan = 0
                if eol < 0 or eol - pos > max_line:
                    stack[0] = remaining
                    self._start = start
                    self._kind = _ARRAY
                    self._line_wait(buf, pos, eol, "bulk header")
                    return -1
                s = buf[pos + 1 : eol]
                ln = int(s) if eol - pos < 20 and s.isdigit() else _bad_length(s, "bulk", False)
                if ln > max_bulk:
                    raise self._fail(f"bulk length {ln} exceeds the limit of {max_bulk}")
                end = eol + 2 + ln
                if end + 2 > n:
                    stack[0] = remaining
                    self._start = start
                    self._kind = _ARRAY
                    self._bulk_wait(pos, end + 2)
                    return -1
                if buf[end] != 13 or buf[end + 1] != 10:
                    raise self._fail("bulk string not terminated by CRLF")
                pos = end + 2
                remaining -= 1
            stack.clear()
            if out is None:
                self._pos = pos
                self._start = start
                self._kind = _ARRAY
                return pos
            out += (start, pos, _ARRAY)
            start = -1


def peek_command(frame_data: bytes, max_args: int = 2) -> list[bytes]:
    """The first ``max_args`` arguments of a request frame, cheaply (for routing/tracking).

    Args:
        frame_data: one request frame as returned by a requests-mode :class:`FrameScanner`:
            an array of bulks, or an inline command line.
        max_args: how many leading arguments to return at most.

    Raises:
        RespProtocolError: the frame is malformed (or truncated before ``max_args`` args).
    """
    if frame_data[:1] != b"*":
        nl = frame_data.find(b"\n")
        line = frame_data if nl < 0 else frame_data[:nl]
        argv = split_inline(line[:-1] if line[-1:] == b"\r" else line)
        if argv is None:
            raise RespProtocolError("unbalanced quotes in inline command")
        return argv[:max_args]
    out: list[bytes] = []
    try:
        eol = frame_data.find(b"\r\n")
        count = int(frame_data[1:eol]) if eol > 0 else -1
        pos = eol + 2
        for _ in range(min(count, max_args)):
            eol = frame_data.find(b"\r\n", pos)
            if eol < 0 or frame_data[pos] != _BULK:
                raise ValueError
            start = eol + 2
            end = start + int(frame_data[pos + 1 : eol])
            if end + 2 > len(frame_data) or end < start:
                raise ValueError
            out.append(frame_data[start:end])
            pos = end + 2
    except (ValueError, IndexError):
        raise RespProtocolError("malformed command frame") from None
    return out


# --------------------------------------------------------------------------------------------
# Encoding

#: What :func:`encode_command` accepts as an argument.
CommandArg = bytes | str | int | float | memoryview | bytearray

_BIG_ARG = 4096


def encode_command(*args: CommandArg) -> bytes:
    """Encode one command as a RESP array of bulk strings.

    ``str`` is encoded as UTF-8, ``int`` and ``float`` as their decimal text (``repr`` for
    floats: ``1.5``, ``inf``); ``bool`` is refused (like redis-py) because it is almost always
    a mistake.

    Raises:
        TypeError: an argument of another type.
    """
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for a in args:
        if type(a) is bytes:
            pass
        elif type(a) is str:
            a = a.encode()
        else:
            a = _coerce_arg(a)
        if len(a) < _BIG_ARG:
            append(b"$%d\r\n%b\r\n" % (len(a), a))
        else:
            append(b"$%d\r\n" % len(a))
            append(a)
            append(b"\r\n")
    return b"".join(out)


def _coerce_arg(a: object) -> bytes:
    if isinstance(a, bool):
        raise TypeError("encode_command: bool argument; pass b'1'/b'0' or an int explicitly")
    if isinstance(a, int):
        return b"%d" % a
    if isinstance(a, float):
        return repr(a).encode()
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, bytes | bytearray | memoryview):
        return bytes(a)
    raise TypeError(f"encode_command: cannot encode a {type(a).__name__} argument")


def encode_commands(commands: Iterable[Sequence[CommandArg]]) -> bytes:
    """Encode several commands (a pipeline) into one ``bytes``."""
    return b"".join([encode_command(*c) for c in commands])


def encode_value(value: RespValue, *, resp3: bool = True) -> bytes:
    """Encode a value as a reply frame.

    With ``resp3=False`` RESP3-only types are downgraded as Redis does for RESP2 clients: map
    to a flat array, set/push to an array, null to ``$-1``, boolean to ``:1``/``:0``, double,
    big number and verbatim string to a bulk of their text, blob error to an ``-`` line (CR/LF
    folded to spaces), and an attributed value to the value alone.

    Raises:
        ValueError: a simple string or error contains CR or LF, or a verbatim format is not
            three bytes.
        TypeError: an object that is not a RESP value.
    """
    out: list[bytes] = []
    _encode_into(value, out, resp3)
    return b"".join(out)


def _line(prefix: bytes, text: bytes, what: str) -> bytes:
    if b"\r" in text or b"\n" in text:
        raise ValueError(f"{what} contains CR or LF; it cannot be a RESP line")
    return prefix + text + b"\r\n"


def _bulk(out: list[bytes], prefix: bytes, data: bytes) -> None:
    out.append(prefix + b"%d\r\n" % len(data))
    out.append(data)
    out.append(b"\r\n")


def _encode_into(v: object, out: list[bytes], resp3: bool) -> None:
    t = type(v)
    if t is bytes:
        out.append(b"$%d\r\n%b\r\n" % (len(v), v))  # type: ignore[str-format,arg-type]
    elif t is int:
        out.append(b":%d\r\n" % v)  # type: ignore[str-format]
    elif t is list:
        assert isinstance(v, list)
        out.append(b"*%d\r\n" % len(v))
        for x in v:
            _encode_into(x, out, resp3)
    elif v is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif isinstance(v, bool):
        if resp3:
            out.append(b"#t\r\n" if v else b"#f\r\n")
        else:
            out.append(b":1\r\n" if v else b":0\r\n")
    elif isinstance(v, SimpleString):
        out.append(_line(b"+", bytes(v), "simple string"))
    elif isinstance(v, ErrorReply):
        if v.blob and resp3:
            _bulk(out, b"!", v.message)
        elif v.blob:
            out.append(b"-" + v.message.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n")
        else:
            out.append(_line(b"-", v.message, "error reply"))
    elif isinstance(v, BigNumber):
        text = b"%d" % v
        if resp3:
            out.append(b"(" + text + b"\r\n")
        else:
            _bulk(out, b"$", text)
    elif isinstance(v, int):
        out.append(b":%d\r\n" % v)
    elif isinstance(v, bytes | bytearray | memoryview):
        _bulk(out, b"$", bytes(v))
    elif isinstance(v, str):
        _bulk(out, b"$", v.encode())
    elif isinstance(v, Double | float):
        raw = v.raw if isinstance(v, Double) else Double.from_float(v).raw
        if resp3:
            out.append(_line(b",", raw, "double"))
        else:
            _bulk(out, b"$", raw)
    elif isinstance(v, Verbatim):
        if resp3:
            if len(v.format) != 3:
                raise ValueError("verbatim format must be exactly 3 bytes")
            _bulk(out, b"=", v.format + b":" + v.text)
        else:
            _bulk(out, b"$", v.text)
    elif isinstance(v, RespMap):
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(v) if resp3 else 2 * len(v)))
        for key, val in v:
            _encode_into(key, out, resp3)
            _encode_into(val, out, resp3)
    elif isinstance(v, RespSet | Push):
        prefix = (b"~" if isinstance(v, RespSet) else b">") if resp3 else b"*"
        out.append(prefix + b"%d\r\n" % len(v))
        for x in v:
            _encode_into(x, out, resp3)
    elif isinstance(v, list | tuple):
        out.append(b"*%d\r\n" % len(v))
        for x in v:
            _encode_into(x, out, resp3)
    elif isinstance(v, Attributed):
        if resp3:
            out.append(b"|%d\r\n" % len(v.attributes))
            for key, val in v.attributes:
                _encode_into(key, out, resp3)
                _encode_into(val, out, resp3)
        _encode_into(v.value, out, resp3)
    else:
        raise TypeError(f"encode_value: {type(v).__name__} is not a RESP value")
