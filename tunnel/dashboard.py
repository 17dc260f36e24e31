"""The tunnel's dashboard: one HTML page, ``/metrics`` and a WebSocket, on one port.

Routes (GET and HEAD; anything else is 405):

=====================  ==================================================================
``/``                  the page (``tunnel/static/index.html``); ``/static/*`` its assets
``/metrics``           :meth:`TunnelStats.prometheus`, text exposition format 0.0.4
``/snapshot.json``     the latest snapshot (what the WebSocket pushed last)
``/ws``                WebSocket (trio-websocket): a JSON snapshot every ``interval`` seconds
=====================  ==================================================================

HTTP is parsed by h11. A WebSocket upgrade on ``/ws`` is checked here (h11 has parsed it), then
the request bytes are replayed into trio-websocket (:func:`trio_websocket.wrap_server_stream`),
which does the handshake and the framing. The page is read-only: the server ignores whatever a
WebSocket client sends, and there is no route that runs anything.

Security:
- **Same origin only.** A WebSocket handshake whose ``Origin`` is not the ``Host`` it was sent to
  (scheme default ports applied) is refused with 403, so a page on another site cannot read
  the stats. ``Origin: null`` is foreign. A handshake without ``Origin`` does not come from a
  browser page (browsers always send it) and is accepted, for command-line tools.
- **DNS rebinding.** When every listener is on a loopback address, requests whose ``Host`` is
  not a loopback name or address (``localhost``, ``127.0.0.1``, ``[::1]``, ...) are refused
  with 403: a foreign site rebinding its name to 127.0.0.1 would otherwise be same-origin.
- Every response carries a strict Content-Security-Policy (``'self'`` only, no inline script,
  no framing) and ``X-Content-Type-Options: nosniff``.

Bounds: 64 connections at once, request heads up to 16 KiB, request bodies up to 64 KiB (then
413), 30 s to send a request head, 10 s to accept a write; WebSocket messages from clients are
limited to 4 KiB and discarded. Every connection sends only the latest snapshot, never a backlog.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from functools import cache
from http import HTTPStatus
from importlib import resources
from typing import NoReturn
from urllib.parse import urlsplit

import h11
import trio
import trio_websocket

from client.errors import ConfigError
from tunnel.stats import TunnelStats

__all__ = ["WEBSOCKET_PATH", "same_origin", "serve_dashboard"]

log = logging.getLogger(__name__)

WEBSOCKET_PATH = "/ws"
MAX_CONNECTIONS = 64
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_WS_MESSAGE = 4096
RECEIVE_SIZE = 16 * 1024
REQUEST_TIMEOUT = 30.0
SEND_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0

_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", _CSP),
]
_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TEXT_TYPE = "text/plain; charset=utf-8"


@cache
def _asset(name: str) -> bytes:
    """The bytes of ``tunnel/static/NAME`` (read once)."""
    try:
        return resources.files("tunnel").joinpath("static", name).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"dashboard: cannot read its asset static/{name}: {exc.strerror}",
            hint="reinstall redis-client (tunnel/static/ is package data)",
        ) from exc


class _Feed:
    """The latest snapshot as JSON text, and a way to wait for a newer one."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.version = 0
        self._changed = trio.Event()

    def publish(self, text: str) -> None:
        self.text = text
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_newer(self, version: int) -> tuple[int, str]:
        if self.version > version:
            await trio.lowlevel.checkpoint()
        while self.version <= version:
            await self._changed.wait()
        return self.version, self.text


class _Replay(trio.abc.Stream):
    """A stream that first returns bytes already read from ``inner`` (the upgrade request)."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Response:
    """One response to send: status, extra headers, body."""

    __slots__ = ("body", "close", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = _TEXT_TYPE,
        *,
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = close


def _text(
    status: int, message: str, *, headers: Sequence[tuple[str, str]] = (), close: bool = False
) -> _Response:
    return _Response(status, (message + "\n").encode(), headers=headers, close=close)


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` (lower case), decoded; None when absent or repeated."""
    values = [value for key, value in headers if key == name]
    if len(values) != 1:
        return None
    return values[0].decode("latin-1").strip()


def _split_host(host: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) -> (lower-case host, port or None); None if invalid."""
    try:
        parts = urlsplit("//" + host)
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.path or parts.query or parts.username is not None:
        return None
    return name.lower(), port


def _is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: str) -> bool:
    """True when ``Origin`` names the same scheme-host-port as ``Host`` (http or https)."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return False
    default = 443 if parts.scheme == "https" else 80
    target = _split_host(host)
    if target is None:
        return False
    return (parts.hostname.lower(), origin_port or default) == (target[0], target[1] or default)


class _Dashboard:
    def __init__(self, stats: TunnelStats, *, loopback_only: bool) -> None:
        self.stats = stats
        self.loopback_only = loopback_only
        self.feed = _Feed(stats.snapshot_json())
        self.active = 0
        for name, _type in _ASSETS.values():
            _asset(name)  # fail at start, not on the first request

    async def tick(self, interval: float) -> None:
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + interval, trio.current_time())
            await trio.sleep_until(deadline)
            self.feed.publish(self.stats.snapshot_json())

    async def handle(self, stream: trio.abc.Stream) -> None:
        if self.active >= MAX_CONNECTIONS:
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        try:
            await self._http(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except Exception as exc:  # a bug here must never take the tunnel down
            log.warning("dashboard: connection failed: %r", exc)
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _http(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            answer: _Response | _Replay | None = None
            head = False
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    request = await _next_request(conn, stream)
                    if request is None:
                        return  # the peer closed between requests
                    head = request.method == b"HEAD"
                    answer = await self._answer(conn, stream, request)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    bad = _text(exc.error_status_hint, "dashboard: bad request", close=True)
                    await _send(conn, stream, bad, head=False)
                    await _linger(stream)
                return
            if answer is None:
                return  # too slow, or the peer went away mid-request
            if isinstance(answer, _Replay):
                await self._websocket(answer)
                return
            await _send(conn, stream, answer, head=head)
            if answer.close:
                await _linger(stream)
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request
    ) -> _Response | _Replay | None:
        """The response to ``request`` (its body drained first), a stream to hand to the
        WebSocket (an accepted upgrade), or None when the peer went away."""
        body = 0
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_BODY:
                    return _text(413, "dashboard: request body too large", close=True)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            else:
                return None
        headers = request.headers
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        host = _header(headers, b"host")
        if self.loopback_only and host is not None:
            split = _split_host(host)
            if split is None or not _is_loopback_name(split[0]):
                return _text(
                    403,
                    f"dashboard: Host {host!r} is not a loopback name; open the "
                    "dashboard by its loopback address (DNS rebinding guard)",
                )
        if request.method not in (b"GET", b"HEAD"):
            return _text(405, "dashboard: only GET and HEAD", headers=[("Allow", "GET, HEAD")])
        if path == WEBSOCKET_PATH:
            upgrade = _header(headers, b"upgrade")
            if upgrade is None or upgrade.lower() != "websocket" or request.method != b"GET":
                return _text(426, "dashboard: WebSocket only", headers=[("Upgrade", "websocket")])
            origin = _header(headers, b"origin")
            if origin is not None and (host is None or not same_origin(origin, host)):
                return _text(403, "dashboard: cross-origin WebSocket refused")
            connection = (_header(headers, b"connection") or "").lower()
            if (
                host is None
                or request.http_version != b"1.1"
                or _header(headers, b"sec-websocket-version") != "13"
                or not _header(headers, b"sec-websocket-key")
                or "upgrade" not in (token.strip() for token in connection.split(","))
            ):
                return _text(
                    400,
                    "dashboard: incomplete WebSocket handshake",
                    headers=[("Sec-WebSocket-Version", "13")],
                    close=True,
                )
            raw = b"".join(
                [
                    b"%s %s HTTP/%s\r\n" % (request.method, request.target, request.http_version),
                    *(b"%s: %s\r\n" % pair for pair in headers.raw_items()),
                    b"\r\n",
                    conn.trailing_data[0],
                ]
            )
            return _Replay(stream, raw)
        if path == "/metrics":
            return _Response(200, self.stats.prometheus().encode(), _PROMETHEUS_TYPE)
        if path == "/snapshot.json":
            return _Response(200, self.feed.text.encode(), "application/json")
        asset = _ASSETS.get(path)
        if asset is None:
            return _text(404, "dashboard: not found")
        name, content_type = asset
        return _Response(200, _asset(name), content_type)

    async def _websocket(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:  # the connection's reader task lives here
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, stream, message_queue_size=1, max_message_size=MAX_WS_MESSAGE
                    )
                    ws = await request.accept()
            except (trio.TooSlowError, trio_websocket.ConnectionClosed):
                nursery.cancel_scope.cancel()
                return
            try:
                nursery.start_soon(_discard_messages, ws, nursery.cancel_scope)
                version = -1
                while True:
                    version, text = await self.feed.wait_newer(version)
                    with trio.fail_after(SEND_TIMEOUT):
                        await ws.send_message(text)
            except (trio_websocket.ConnectionClosed, trio.TooSlowError):
                pass
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()


async def _discard_messages(
    ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope
) -> None:
    """Read (and ignore) what the client sends, so control frames keep flowing."""
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        scope.cancel()


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))


async def _next_request(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Request | None:
    event = await _next_event(conn, stream)
    return event if isinstance(event, h11.Request) else None


async def _send(
    conn: h11.Connection, stream: trio.abc.Stream, response: _Response, *, head: bool
) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *_COMMON_HEADERS,
        *response.headers,
    ]
    if response.close:
        headers.append(("Connection", "close"))
    reason = HTTPStatus(response.status).phrase.encode()
    data = (
        conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason)) or b""
    )
    if response.body and not head:
        data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.fail_after(SEND_TIMEOUT):
        await stream.send_all(data)


async def _linger(stream: trio.abc.Stream) -> None:
    """Close politely after an error reply: stop sending, then drain (bounded) what the peer
    is still sending, so that closing does not reset the connection before it reads the reply."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    drained = 0
    with trio.move_on_after(CLOSE_TIMEOUT):
        while drained < 4 * MAX_BODY and (chunk := await stream.receive_some(RECEIVE_SIZE)):
            drained += len(chunk)


def _listener_is_loopback(listener: trio.SocketListener) -> bool:
    address = listener.socket.getsockname()[0]
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


async def serve_dashboard(
    stats: TunnelStats,
    host: str,
    port: int,
    *,
    interval: float = 1.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the dashboard of ``stats`` on ``host:port`` (port 0: any free port) until cancelled.

    ``task_status.started`` gets the listeners (read the bound port from
    ``listeners[0].socket.getsockname()``). A snapshot is taken and pushed to every WebSocket
    every ``interval`` seconds. Raises :class:`~client.errors.ConfigError` when the address
    cannot be bound or the page's files are missing.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --dashboard address or port",
        ) from exc
    try:
        dashboard = _Dashboard(stats, loopback_only=all(map(_listener_is_loopback, listeners)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dashboard.tick, interval)
            await nursery.start(trio.serve_listeners, dashboard.handle, listeners)
            task_status.started(listeners)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
    raise AssertionError("serve_listeners returned")  # pragma: no cover
