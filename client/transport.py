"""Byte streams to Redis servers: plain TCP, or TLS done in C.

Theory of operation
-------------------
Every connection the toolkit makes goes through :func:`open_stream`, which returns a
``trio.abc.Stream``. Plain TCP is Trio's own ``SocketStream`` (TCP_NODELAY is on).

For TLS we do not use ``trio.SSLStream``: it runs the record layer in Python over
``ssl.MemoryBIO`` and, in a relay, reached about half of stunnel's throughput on this kind of
machine. :class:`TlsSocketStream` instead drives a non-blocking ``ssl.SSLSocket`` (OpenSSL does
the record work on the file descriptor) and waits with ``trio.lowlevel.wait_readable`` /
``wait_writable`` only when OpenSSL says it would block.

Two rules keep that safe under Trio:

* Two tasks must never wait for the same direction on one fd (Trio raises
  ``BusyResourceError``). The reader only ever waits for readability and the writer only for
  writability. The rare cross cases (a read that needs to write during a TLS 1.2
  renegotiation, a write that needs to read a TLS 1.3 post-handshake message) retry after a short
  sleep instead of waiting on the other direction; the other task's progress unblocks them.
* ``trio.lowlevel.notify_closing`` runs before the fd is closed, so a task parked on it wakes up
  with ``ClosedResourceError`` instead of touching a reused fd number.

Each operation is a checkpoint, as Trio requires: when OpenSSL completes at once we still yield
through ``cancel_shielded_checkpoint`` (cheap) so a busy relay cannot starve other tasks.

``REDIS_CLIENT_TLS_IMPL=trio`` switches to ``trio.SSLStream`` (for comparison in ``bench/``).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import ssl

import trio

from client.errors import ConnectError, TlsError
from client.options import TlsOptions

__all__ = ["TlsSocketStream", "open_stream", "ssl_context", "tls_server_name"]

RECEIVE_SIZE = 65536
# A write larger than this is split, so one TLS write never holds a huge buffer in OpenSSL.
_WRITE_CHUNK = 256 * 1024
# How long a read waits before retrying when OpenSSL wants to write (and vice versa).
_CROSS_WAIT = 0.001
#: A plaintext server may never answer a ClientHello (Redis waits for a newline that random
#: handshake bytes need not contain), so the handshake has a bound of its own.
HANDSHAKE_TIMEOUT = 5.0


@functools.lru_cache(maxsize=32)
def ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """Build (once per distinct settings) the client ``SSLContext`` for these TLS options.

    Raises:
        ConfigError-like TlsError: a CA, certificate or key file that cannot be loaded.
    """
    try:
        ctx = ssl.create_default_context(cafile=tls.cacert)
        if tls.cert is not None:
            ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        msg = f"cannot load TLS files: {exc}"
        raise TlsError(msg, hint="check --cacert/--cert/--key") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_server_name(host: str, tls: TlsOptions) -> str:
    """The name sent as SNI and verified against the certificate: ``--sni`` or the host."""
    return tls.sni or host


class TlsSocketStream(trio.abc.Stream):
    """A TLS stream over a non-blocking ``ssl.SSLSocket`` (see the module notes)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._closed = False

    @property
    def socket(self) -> ssl.SSLSocket:
        return self._sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        total = len(view)
        sent = 0
        yielded = False
        sock = self._sock
        while sent < total:
            try:
                sent += sock.send(view[sent : sent + _WRITE_CHUNK])
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
                yielded = True
            except ssl.SSLWantReadError:
                await trio.sleep(_CROSS_WAIT)
                yielded = True
            except (OSError, ValueError) as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from exc
                raise trio.BrokenResourceError(str(exc)) from exc
        if not yielded:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        size = max_bytes or RECEIVE_SIZE
        sock = self._sock
        yielded = False
        while True:
            try:
                data = sock.recv(size)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
                yielded = True
                continue
            except ssl.SSLWantWriteError:
                await trio.sleep(_CROSS_WAIT)
                yielded = True
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""  # close_notify, or a peer that hung up without one: both are EOF
            except (OSError, ValueError) as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from exc
                if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
                    data = b""
                else:
                    raise trio.BrokenResourceError(str(exc)) from exc
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


async def _handshake(raw: socket.socket, ctx: ssl.SSLContext, name: str) -> ssl.SSLSocket:
    sock = ctx.wrap_socket(
        raw, server_hostname=name, do_handshake_on_connect=False, suppress_ragged_eofs=False
    )
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            else:
                return sock
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise


def _tls_failure(where: str, exc: BaseException) -> TlsError:
    text = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    hint = None
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "hostname" in str(exc).lower() or "ip address mismatch" in str(exc).lower():
            hint = "the certificate names another host: pass --sni NAME"
        else:
            hint = "pass --cacert FILE with the CA that signed the server certificate"
    elif (
        "WRONG_VERSION_NUMBER" in str(exc)
        or "record layer" in str(exc)
        or (isinstance(exc, ssl.SSLEOFError | ConnectionResetError | EOFError))
    ):
        hint = "the port may not speak TLS: drop -t/--tls, or use the TLS port"
    return TlsError(f"TLS handshake with {where} failed: {text}", hint=hint)


async def open_stream(
    host: str, port: int, tls: TlsOptions | None, *, impl: str | None = None
) -> trio.abc.Stream:
    """Connect to ``host:port`` over TCP and, when ``tls`` is given, complete a TLS handshake.

    Args:
        host, port: the address to dial.
        tls: TLS settings, or None for plaintext.
        impl: ``"fast"`` (default) or ``"trio"`` (``trio.SSLStream``); the environment variable
            ``REDIS_CLIENT_TLS_IMPL`` sets the default.

    Raises:
        ConnectError: the address cannot be resolved or reached.
        TlsError: the TLS handshake failed (with a hint about --cacert, --sni or --tls).
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise _connect_failure(where, exc, tls) from exc
    if tls is None:
        return stream
    ctx = ssl_context(tls)
    name = tls_server_name(host, tls)
    if (impl or os.environ.get("REDIS_CLIENT_TLS_IMPL", "fast")) == "trio":
        ssl_stream = trio.SSLStream(stream, ctx, server_hostname=name)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await ssl_stream.do_handshake()
        except trio.TooSlowError as exc:
            await trio.aclose_forcefully(stream)
            msg = f"TLS handshake with {where} got no answer in {HANDSHAKE_TIMEOUT:g} s"
            raise TlsError(msg, hint="the port may not speak TLS: drop -t/--tls") from exc
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            await trio.aclose_forcefully(stream)
            raise _tls_failure(where, exc.__cause__ or exc) from exc
        return ssl_stream
    raw = socket.socket(fileno=stream.socket.detach())
    raw.setblocking(False)
    try:
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
            sock = await _handshake(raw, ctx, name)
        if scope.cancelled_caught:
            msg = f"TLS handshake with {where} got no answer in {HANDSHAKE_TIMEOUT:g} s"
            raise TlsError(
                msg, hint="the port may not speak TLS: drop -t/--tls, or use the TLS port"
            )
    except (OSError, ssl.SSLError) as exc:
        trio.lowlevel.notify_closing(raw)
        raw.close()
        raise _tls_failure(where, exc) from exc
    except BaseException:
        trio.lowlevel.notify_closing(raw)
        raw.close()
        raise
    return TlsSocketStream(sock)


def _connect_failure(where: str, exc: OSError, tls: TlsOptions | None) -> ConnectError:
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve {where}: {exc.strerror}", hint="check -h/--host")
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):  # trio's happy eyeballs: one error per attempt
        errors = [e for e in cause.exceptions if isinstance(e, OSError)]
        if errors:
            exc = errors[0]
    reason = exc.strerror or str(exc)
    if isinstance(exc, ConnectionRefusedError) or "refused" in reason.lower():
        hint = "is the server running on this port?"
        if tls is None:
            hint += " TLS-only caches listen on 6380 (use -t)"
        return ConnectError(f"cannot connect to {where}: connection refused", hint=hint)
    return ConnectError(f"cannot connect to {where}: {reason}")
