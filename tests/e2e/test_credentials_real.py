"""Password rotation against a real redis-server: live re-AUTH with zero failed commands.

The password command reads a file; the test rotates the ACL user's password the way a managed
service does (add the new one, let clients pick it up, then remove the old one) while a
connection runs commands continuously, then breaks the command and checks that the current
credential and connection survive. Every captured output stream is searched for the secrets.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from client.connection import Connection, open_authenticated_stream, open_connection
from client.credentials import Credential, CredentialProvider, command_source
from client.errors import ConnectError
from client.options import ServerOptions
from client.values import ErrorReply, SimpleString

pytestmark = pytest.mark.e2e

BATCH = 10
MAX_BATCHES = 20_000  # bound on the load loop, whatever happens
MIN_BATCHES_PER_PHASE = 30


@pytest.fixture
def acl_user(redis_plain: Any) -> Iterator[tuple[str, str, str]]:
    """A fresh ACL user with password A; yields (user, A, B) and deletes the user after."""
    user = f"rotating-{secrets.token_hex(4)}"
    pw_a = f"A-{secrets.token_hex(16)}"
    pw_b = f"B-{secrets.token_hex(16)}"
    redis_plain.call("ACL", "SETUSER", user, "reset", "on", f">{pw_a}", "~rot:*", "+@all")
    try:
        yield user, pw_a, pw_b
    finally:
        redis_plain.call("ACL", "DELUSER", user)


class Load:
    """Pipelines of INCR on one connection until told to stop; counts every failure."""

    def __init__(self, conn: Connection, key: str) -> None:
        self.conn = conn
        self.key = key
        self.sent = 0
        self.failures: list[object] = []
        self.stop = trio.Event()
        self.finished = False
        self._tick = trio.Event()

    def _progress(self) -> None:
        self._tick.set()
        self._tick = trio.Event()

    async def run(self) -> None:
        try:
            for _ in range(MAX_BATCHES):
                if self.stop.is_set():
                    return
                try:
                    replies = await self.conn.pipeline([["INCR", self.key]] * BATCH)
                except Exception as exc:
                    self.failures.append(exc)
                    return
                self.sent += BATCH
                self.failures += [r for r in replies if isinstance(r, ErrorReply)]
                self._progress()
        finally:
            self.finished = True
            self._progress()

    async def wait_for_more(self, batches: int = MIN_BATCHES_PER_PHASE) -> None:
        target = self.sent + batches * BATCH
        while self.sent < target and not self.failures and not self.finished:
            await self._tick.wait()


async def test_rotation_reauths_a_live_connection(
    redis_plain: Any,
    acl_user: tuple[str, str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    user, pw_a, pw_b = acl_user
    secret_file = tmp_path / "password"
    secret_file.write_text(pw_a + "\n")
    broken = tmp_path / "broken"
    # Fails (with the current secret on stderr, to prove it is redacted) while `broken` exists.
    command = (
        f'if [ -e {broken} ]; then echo "vault refused, last value $(cat {secret_file})" >&2;'
        f" exit 1; fi; cat {secret_file}"
    )
    provider = CredentialProvider(
        username=user,
        source=command_source(command),
        refresh_every=0.2,
        retry_initial=0.1,
        retry_max=0.5,
    )
    base = ServerOptions(host=redis_plain.host, port=redis_plain.port)
    key = f"rot:{user}"
    auth_replies: list[object] = []
    rotated = trio.Event()

    with caplog.at_level(logging.DEBUG):
        first = await provider.current()
        assert (first.username, first.password) == (user, pw_a)
        async with open_connection(first.apply_to(base)) as conn, trio.open_nursery() as nursery:

            async def on_new(cred: Credential) -> None:
                # The re-AUTH the tunnel will do on each live upstream connection.
                auth_replies.append(await conn.request("AUTH", cred.username, cred.password))
                rotated.set()

            await nursery.start(provider.serve_refresh, on_new)
            load = Load(conn, key)
            nursery.start_soon(load.run)
            with trio.fail_after(60):
                await load.wait_for_more()
                # Rotate: the server accepts both, the source moves to B ...
                redis_plain.call("ACL", "SETUSER", user, f">{pw_b}")
                secret_file.write_text(pw_b + "\n")
                await rotated.wait()
                # ... and once the connection is on B, A is removed.
                redis_plain.call("ACL", "SETUSER", user, f"<{pw_a}")
                await load.wait_for_more()

                # A broken source keeps the current credential and the connection.
                broken.touch()
                failures_before = provider.statistics().failures
                for _ in range(2000):  # bounded; fail_after above is the real limit
                    if provider.statistics().failures >= failures_before + 2:
                        break
                    await trio.sleep(0.02)
                assert provider.statistics().failures >= failures_before + 2
                assert (await provider.current()).password == pw_b
                await load.wait_for_more()
                broken.unlink()
            load.stop.set()
            assert await conn.execute("ACL", "WHOAMI") == user.encode()
            nursery.cancel_scope.cancel()

        assert load.failures == []
        assert auth_replies == [SimpleString(b"OK")]
        assert redis_plain.call("GET", key) == str(load.sent).encode()
        assert load.sent >= 3 * MIN_BATCHES_PER_PHASE * BATCH

        # New connections: the old password is refused, the provider's current one works.
        with pytest.raises(ConnectError) as refused:
            await open_authenticated_stream(first.apply_to(base))
        assert "WRONGPASS" in str(refused.value)
        stream = await open_authenticated_stream((await provider.current()).apply_to(base))
        await stream.aclose()

        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors, "the broken password command was not reported"
        assert "password command failed (exit 1): vault refused, last value ***" in errors[0]
        assert "keeping the current credential" in errors[0]

    captured = capfd.readouterr()
    streams = {
        "log": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "refused": str(refused.value),
    }
    for name, text in streams.items():
        assert pw_a not in text, f"password A leaked into {name}"
        assert pw_b not in text, f"password B leaked into {name}"


async def test_failing_command_at_start_is_one_clear_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-secret"
    provider = CredentialProvider(username="u", source=command_source(f"cat {missing}"))
    with pytest.raises(ConnectError) as info:
        await provider.current()
    text = str(info.value)
    assert text.startswith("password command failed (exit 1): cat: ")
    assert "No such file or directory" in text
    assert "\n" not in text
    captured = capfd.readouterr()
    assert captured.out == captured.err == ""  # the command's stderr is not passed through
