"""The transport and the pipelined connection, against real servers (plaintext and TLS)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from client import transport
from client.connection import open_authenticated_stream, open_connection
from client.errors import ConnectError, ConnectionLost, ReplyError, TlsError
from client.options import ServerOptions, TlsOptions
from client.values import ErrorReply, SimpleString

pytestmark = pytest.mark.e2e

IMPLS = ["fast", "trio"]


def plain_opts(server: Any) -> ServerOptions:
    return ServerOptions(host=server.host, port=server.port)


def tls_opts(server: Any, certs: Any, **tls: Any) -> ServerOptions:
    return ServerOptions(
        host=server.host,
        port=server.port,
        tls=TlsOptions(cacert=str(certs.ca), **tls),
        password=server.password,
    )


async def test_plaintext_ping(redis_plain: Any) -> None:
    async with open_connection(plain_opts(redis_plain)) as conn:
        assert await conn.execute("PING") == SimpleString(b"PONG")
        assert isinstance(await conn.execute("PING"), SimpleString)


@pytest.mark.parametrize("impl", IMPLS)
async def test_tls_roundtrip_large_values(
    redis_tls: Any, certs_dir: Any, impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CLIENT_TLS_IMPL", impl)
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB, every byte value
    async with open_connection(tls_opts(redis_tls, certs_dir)) as conn:
        assert await conn.execute("SET", f"conn:big:{impl}", big) == b"OK"
        assert await conn.execute("GET", f"conn:big:{impl}") == big
        assert await conn.execute("STRLEN", f"conn:big:{impl}") == len(big)


async def test_resp3_hello(redis_tls: Any, certs_dir: Any) -> None:
    async with open_connection(tls_opts(redis_tls, certs_dir), protocol=3) as conn:
        await conn.execute("DEL", "conn:h")
        await conn.execute("HSET", "conn:h", "f", "v")
        reply = await conn.execute("HGETALL", "conn:h")
        assert list(reply) == [(b"f", b"v")]  # type: ignore[arg-type]
        assert await conn.execute("GET", "conn:missing") is None


async def test_deep_pipeline_keeps_order(redis_plain: Any) -> None:
    async with open_connection(plain_opts(redis_plain)) as conn:
        await conn.execute("DEL", "conn:ctr")
        replies = await conn.pipeline([("INCR", "conn:ctr")] * 10_000)
        assert replies == list(range(1, 10_001))


async def test_concurrent_callers_get_their_own_replies(redis_tls: Any, certs_dir: Any) -> None:
    results: dict[int, list[bytes | None]] = {}

    async with open_connection(tls_opts(redis_tls, certs_dir)) as conn:

        async def worker(i: int) -> None:
            got = []
            for j in range(30):
                await conn.execute("SET", f"conn:w:{i}", f"{i}-{j}")
                got.append(await conn.execute("GET", f"conn:w:{i}"))
            results[i] = got  # type: ignore[assignment]

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(worker, i)
    for i in range(100):
        assert results[i] == [f"{i}-{j}".encode() for j in range(30)]


async def test_error_replies_are_values_or_exceptions(redis_plain: Any) -> None:
    async with open_connection(plain_opts(redis_plain)) as conn:
        await conn.execute("SET", "conn:str", "x")
        reply = await conn.request("LPUSH", "conn:str", "a")
        assert isinstance(reply, ErrorReply)
        assert reply.kind == "WRONGTYPE"
        with pytest.raises(ReplyError) as info:
            await conn.execute("LPUSH", "conn:str", "a")
        assert info.value.kind == "WRONGTYPE"
        replies = await conn.pipeline([("PING",), ("LPUSH", "conn:str", "a"), ("ECHO", "z")])
        assert replies[0] == b"PONG"
        assert isinstance(replies[1], ErrorReply)
        assert replies[2] == b"z"


async def test_cancelled_caller_does_not_desync(redis_plain: Any) -> None:
    async with open_connection(plain_opts(redis_plain)) as conn:
        await conn.execute("DEL", "conn:never")
        with trio.move_on_after(0.05) as scope:
            await conn.execute("BLPOP", "conn:never", "0.3")
        assert scope.cancelled_caught
        # The BLPOP reply (nil) arrives later and is dropped; the next reply is ours.
        assert await conn.execute("ECHO", "after") == b"after"
        assert await conn.execute("SET", "conn:k", "v") == b"OK"
        assert await conn.execute("GET", "conn:k") == b"v"


async def test_connection_loss_fails_every_pending_command(redis_plain: Any) -> None:
    opts = plain_opts(redis_plain)
    async with (
        open_connection(opts, client_name="victim") as victim,
        open_connection(opts) as killer,
    ):
        errors: list[BaseException] = []

        async def blocked() -> None:
            try:
                await victim.execute("BLPOP", "conn:nothing", "10")
            except ConnectionLost as exc:
                errors.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(blocked)
                await trio.sleep(0.1)
                await killer.execute("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
        assert len(errors) == 3
        with pytest.raises(ConnectionLost):
            await victim.execute("PING")


async def test_wrong_password_is_one_clear_line(redis_tls: Any, certs_dir: Any) -> None:
    opts = tls_opts(redis_tls, certs_dir)
    bad = ServerOptions(host=opts.host, port=opts.port, tls=opts.tls, password="not-it-123")
    with pytest.raises(ConnectError) as info:
        await open_authenticated_stream(bad)
    text = str(info.value)
    assert "WRONGPASS" in text
    assert "not-it-123" not in text
    assert "\n" not in text


async def test_missing_password_hints_at_a(redis_tls: Any, certs_dir: Any) -> None:
    opts = tls_opts(redis_tls, certs_dir)
    nopw = ServerOptions(host=opts.host, port=opts.port, tls=opts.tls)
    async with open_connection(nopw) as conn:
        reply = await conn.request("GET", "x")
        assert isinstance(reply, ErrorReply)
        assert reply.kind == "NOAUTH"
    with pytest.raises(ConnectError) as info:
        await open_authenticated_stream(nopw, protocol=3)
    assert "-a" in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
async def test_unknown_ca_hints_at_cacert(
    redis_tls: Any, impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CLIENT_TLS_IMPL", impl)
    opts = ServerOptions(host=redis_tls.host, port=redis_tls.port, tls=TlsOptions())
    with pytest.raises(TlsError) as info:
        await open_authenticated_stream(opts)
    assert "--cacert" in str(info.value)


async def test_name_mismatch_hints_at_sni(redis_tls: Any, certs_dir: Any) -> None:
    opts = tls_opts(redis_tls, certs_dir, sni="cache.example.net")
    with pytest.raises(TlsError) as info:
        await open_authenticated_stream(opts)
    assert "--sni" in str(info.value)


async def test_sni_override_is_verified(redis_tls: Any, certs_dir: Any) -> None:
    # The certificate names "localhost"; dialling the IP while verifying that name works.
    async with open_connection(tls_opts(redis_tls, certs_dir, sni="localhost")) as conn:
        assert await conn.execute("PING") == b"PONG"


async def test_insecure_skips_verification(redis_tls: Any) -> None:
    opts = ServerOptions(
        host=redis_tls.host,
        port=redis_tls.port,
        tls=TlsOptions(insecure=True),
        password=redis_tls.password,
    )
    async with open_connection(opts) as conn:
        assert await conn.execute("PING") == b"PONG"


async def test_tls_to_plaintext_port_hints_drop_tls(
    redis_plain: Any, certs_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 1.0)
    opts = ServerOptions(
        host=redis_plain.host, port=redis_plain.port, tls=TlsOptions(cacert=str(certs_dir.ca))
    )
    with pytest.raises(TlsError) as info, trio.fail_after(10):
        await open_authenticated_stream(opts)
    assert "--tls" in str(info.value)


async def test_plaintext_to_tls_port_hints_tls(redis_tls: Any) -> None:
    opts = ServerOptions(host=redis_tls.host, port=redis_tls.port, password=redis_tls.password)
    with pytest.raises(ConnectError) as info, trio.fail_after(10):
        await open_authenticated_stream(opts)
    assert "-t/--tls" in str(info.value)


async def test_refused_port_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError) as info:
        await open_authenticated_stream(ServerOptions(host="127.0.0.1", port=port))
    assert "connection refused" in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_pushes_are_delivered_without_blocking_replies(redis_plain: Any) -> None:
    opts = plain_opts(redis_plain)
    async with open_connection(opts, protocol=3) as sub, open_connection(opts) as pub:
        await sub.execute("SUBSCRIBE", "conn:chan")  # RESP3: the confirmation is a push
        # The confirmation was the SUBSCRIBE's reply: nothing else is waiting.
        with pytest.raises(trio.WouldBlock):
            sub.next_push_nowait()
        assert await pub.execute("PUBLISH", "conn:chan", "hello") == 1
        with trio.fail_after(5):
            message = await sub.next_push()
        assert list(message) == [b"message", b"conn:chan", b"hello"]  # type: ignore[arg-type]
        # Replies and pushes interleave on one connection without mixing up.
        assert await sub.execute("PING") == b"PONG"
