"""A pipelined Redis connection, and the login handshake every connection starts with.

Theory of operation
-------------------
:func:`open_authenticated_stream` dials a server (:func:`client.transport.open_stream`) and
logs in: ``AUTH`` (or ``HELLO 3 AUTH`` when RESP3 is asked for) and ``CLIENT SETNAME``, sent
in one write, with their replies read before the stream is handed back. The tunnel relays on
such a stream and fill blasts pre-encoded batches on it.

:class:`Connection` puts a request/reply API on top, with any number of commands in flight:

* Callers append their encoded commands to one outgoing buffer and a holder per batch to the
  ``pending`` FIFO, in the same synchronous step, so the order on the wire is the order of the
  FIFO. A single writer task sends everything queued in one ``send_all`` (writes coalesce).
* A single reader task feeds the sans-IO parser and completes holders from the head of the
  FIFO: Redis answers in order, so no IDs are needed.
* A caller that is cancelled leaves its holder in the FIFO; its reply is still read and dropped,
  so cancellation never desynchronises the stream. Writes never happen in a caller's task, so a
  cancelled caller cannot leave half a command on the wire.
* When the stream breaks, every pending holder fails with the same :class:`ConnectionLost`.
* Replies nobody asked for (RESP3 push frames, RESP2 pub/sub messages while nothing is
  pending) go to a bounded channel (:meth:`Connection.next_push`); past its size the oldest are
  counted and dropped, so a flood cannot grow memory.
* The outgoing buffer is bounded: past ``max_outgoing`` bytes callers wait for the writer.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from client.errors import (
    ConnectError,
    ConnectionLost,
    RedisToolkitError,
    ReplyError,
    RespProtocolError,
)
from client.options import ServerOptions
from client.resp import NEED_DATA, RespParser, encode_command
from client.tasks import open_service_nursery
from client.transport import open_stream
from client.values import ErrorReply, Push, RespValue

__all__ = [
    "Arg",
    "Connection",
    "handshake_commands",
    "open_authenticated_stream",
    "open_connection",
]

Arg = bytes | str | int | float | memoryview

_MAX_OUTGOING = 8 * 1024 * 1024
_PUSH_BUFFER = 4096


def handshake_commands(
    opts: ServerOptions, *, protocol: int | None = None, client_name: str | None = None
) -> list[list[Arg]]:
    """The commands that log a new connection in, in order (possibly none)."""
    commands: list[list[Arg]] = []
    if protocol is not None and protocol != 2:
        hello: list[Arg] = ["HELLO", str(protocol)]
        if opts.password is not None:
            hello += ["AUTH", opts.username, opts.password]
        if client_name:
            hello += ["SETNAME", client_name]
        commands.append(hello)
        return commands
    if opts.password is not None:
        if opts.username and opts.username != "default":
            commands.append(["AUTH", opts.username, opts.password])
        else:
            commands.append(["AUTH", opts.password])
    if protocol == 2:
        commands.append(["HELLO", "2"])
    if client_name:
        commands.append(["CLIENT", "SETNAME", client_name])
    return commands


def _login_error(opts: ServerOptions, reply: ErrorReply) -> ConnectError:
    text = reply.text
    if opts.password:
        text = text.replace(opts.password, "***")
    kind = reply.kind
    if kind in ("WRONGPASS", "NOAUTH") or "AUTH" in kind:
        hint = "check -u/--username and -a/--password (or REDIS_CLIENT_PASSWORD)"
        if kind == "NOAUTH":
            hint = "the server needs a password: pass -a or set REDIS_CLIENT_PASSWORD"
        return ConnectError(f"login to {opts.address} failed: {text}", hint=hint)
    if "unknown command" in text and "HELLO" in text.upper():
        return ConnectError(
            f"login to {opts.address} failed: {text}", hint="the server predates RESP3; drop -3"
        )
    return ConnectError(f"login to {opts.address} failed: {text}")


def _closed_early(opts: ServerOptions) -> ConnectError:
    hint = (
        "is this a TLS port? try -t/--tls"
        if opts.tls is None
        else "the server closed the connection during login"
    )
    return ConnectError(f"{opts.address} closed the connection", hint=hint)


async def open_authenticated_stream(
    opts: ServerOptions, *, protocol: int | None = None, client_name: str | None = None
) -> trio.abc.Stream:
    """Dial ``opts`` and log in; return the raw stream, ready for any traffic.

    Raises:
        ConnectError: unreachable, TLS failure, or login refused (the message never contains
            the password).
    """
    stream = await open_stream(opts.host, opts.port, opts.tls)
    commands = handshake_commands(opts, protocol=protocol, client_name=client_name)
    if not commands:
        return stream
    try:
        await stream.send_all(b"".join(encode_command(*c) for c in commands))
        parser = RespParser()
        replies: list[RespValue] = []
        while len(replies) < len(commands):
            value = parser.next_value()
            if value is NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    raise _closed_early(opts)
                parser.feed(data)
                continue
            replies.append(value)
        if parser.buffered:
            msg = f"{opts.address} sent unexpected data after login"
            raise ConnectError(msg)
        for reply in replies:
            if isinstance(reply, ErrorReply):
                raise _login_error(opts, reply)
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise _closed_early(opts) from exc
    except RespProtocolError as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectError(f"login to {opts.address} failed: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


_PUBSUB = frozenset(
    {b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe"}
)


def _confirms(push: Push) -> bool:
    """Whether a RESP3 push is a (un)subscribe confirmation (the "reply" to that command)."""
    return bool(push) and isinstance(push[0], bytes) and push[0].lower() in _PUBSUB


class _Pending:
    """One batch of expected replies; completed by the reader task.

    ``pubsub`` marks a (un)subscribe command: in RESP3 its reply is a push frame, so the first
    confirmation push completes it; further confirmations (one per channel) go to the push
    channel like any other message.
    """

    __slots__ = ("count", "done", "error", "pubsub", "values")

    def __init__(self, count: int, pubsub: bool = False) -> None:
        self.count = count
        self.pubsub = pubsub
        self.values: list[RespValue] = []
        self.error: RedisToolkitError | None = None
        self.done = trio.Event()


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class Connection:
    """A pipelined connection to one server. Make it with :func:`open_connection`."""

    def __init__(
        self, stream: trio.abc.Stream, address: str, protocol: int, *, max_outgoing: int
    ) -> None:
        self.address = address
        self.protocol = protocol
        self._stream = stream
        self._parser = RespParser()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._out = bytearray()
        self._max_outgoing = max_outgoing
        self._have_output = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self._broken: RedisToolkitError | None = None
        push_send, push_receive = trio.open_memory_channel[RespValue](_PUSH_BUFFER)
        self._push_send = push_send
        self._push_receive = push_receive
        self.pushes_dropped = 0

    @property
    def alive(self) -> bool:
        return self._broken is None

    @property
    def in_flight(self) -> int:
        return sum(p.count - len(p.values) for p in self._pending)

    # -- API -------------------------------------------------------------------------------

    async def request(self, *args: Arg) -> RespValue:
        """Send one command; return its reply (an error reply comes back as ``ErrorReply``).

        For SUBSCRIBE and the like the reply is the first confirmation; the messages, and the
        confirmations of further channels, come from :meth:`next_push`. In RESP2, wait for
        those confirmations before sending other commands on the same connection.
        """
        name = args[0] if args else b""
        pubsub = isinstance(name, bytes | str) and _as_bytes(name).lower() in _PUBSUB
        return (await self.send_encoded(encode_command(*args), 1, pubsub=pubsub))[0]

    async def execute(self, *args: Arg) -> RespValue:
        """Send one command; return its reply, raising :class:`ReplyError` for an error."""
        reply = await self.request(*args)
        if isinstance(reply, ErrorReply):
            raise ReplyError.from_message(reply.text)
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[RespValue]:
        """Send many commands in one write; return their replies in order (errors as values)."""
        if not commands:
            return []
        data = b"".join(encode_command(*c) for c in commands)
        return await self.send_encoded(data, len(commands))

    async def send_encoded(
        self, data: bytes, count: int, *, pubsub: bool = False
    ) -> list[RespValue]:
        """Send pre-encoded commands that produce ``count`` replies; return the replies."""
        if self._broken is not None:
            raise self._broken
        while len(self._out) >= self._max_outgoing:
            self._drained = trio.Event() if self._drained.is_set() else self._drained
            await self._drained.wait()
            if self._broken is not None:
                raise self._broken
        pending = _Pending(count, pubsub)
        self._pending.append(pending)
        self._out += data
        self._have_output.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.values

    async def next_push(self) -> RespValue:
        """The next unsolicited message (RESP3 push, or a RESP2 pub/sub message)."""
        try:
            return await self._push_receive.receive()
        except trio.EndOfChannel:
            raise self._broken or ConnectionLost(f"connection to {self.address} closed") from None

    def next_push_nowait(self) -> RespValue:
        """The next unsolicited message if one is waiting.

        Raises:
            trio.WouldBlock: nothing is waiting.
            ConnectionLost: the connection is closed and nothing is left.
        """
        try:
            return self._push_receive.receive_nowait()
        except trio.EndOfChannel:
            raise self._broken or ConnectionLost(f"connection to {self.address} closed") from None

    async def aclose(self) -> None:
        self._fail(ConnectionLost(f"connection to {self.address} was closed"))
        await trio.aclose_forcefully(self._stream)

    # -- tasks -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            while True:
                await self._have_output.wait()
                self._have_output = trio.Event()
                while self._out:
                    data = bytes(self._out)
                    self._out.clear()
                    self._drained.set()
                    await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(ConnectionLost(f"connection to {self.address} lost: {exc or 'closed'}"))

    async def _reader(self) -> None:
        parser = self._parser
        pending = self._pending
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    parser.feed_eof()
                    self._fail(ConnectionLost(f"{self.address} closed the connection"))
                    return
                parser.feed(data)
                while True:
                    value = parser.next_value()
                    if value is NEED_DATA:
                        break
                    if not pending or (
                        isinstance(value, Push) and not (pending[0].pubsub and _confirms(value))
                    ):
                        self._deliver_push(value)
                        continue
                    head = pending[0]
                    head.values.append(value)
                    if len(head.values) == head.count:
                        pending.popleft()
                        head.done.set()
        except RespProtocolError as exc:
            self._fail(ConnectionLost(f"{self.address} sent invalid RESP: {exc}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(ConnectionLost(f"connection to {self.address} lost: {exc or 'closed'}"))

    def _deliver_push(self, value: RespValue) -> None:
        try:
            self._push_send.send_nowait(value)
        except trio.WouldBlock:
            self.pushes_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _fail(self, error: RedisToolkitError) -> None:
        if self._broken is None:
            self._broken = error
        while self._pending:
            holder = self._pending.popleft()
            holder.error = self._broken
            holder.done.set()
        self._drained.set()
        self._push_send.close()


@asynccontextmanager
async def open_connection(
    opts: ServerOptions,
    *,
    protocol: int = 2,
    client_name: str | None = None,
    max_outgoing: int = _MAX_OUTGOING,
) -> AsyncIterator[Connection]:
    """Connect, log in, and yield a pipelined :class:`Connection`; close it on exit.

    Raises:
        ConnectError: see :func:`open_authenticated_stream`.
    """
    stream = await open_authenticated_stream(
        opts, protocol=protocol if protocol != 2 else None, client_name=client_name
    )
    conn = Connection(stream, opts.address, protocol, max_outgoing=max_outgoing)
    try:
        async with open_service_nursery() as nursery:
            nursery.start_soon(conn._reader)
            nursery.start_soon(conn._writer)
            yield conn
    finally:
        conn._fail(ConnectionLost(f"connection to {conn.address} was closed"))
        await trio.aclose_forcefully(stream)
