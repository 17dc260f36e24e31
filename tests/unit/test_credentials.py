"""Credential providers: JWT parsing, refresh schedule, redaction, commands, the refresh loop."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from client.credentials import (
    MIN_REFRESH_MARGIN,
    Credential,
    CredentialProvider,
    add_credential_arguments,
    credential_from_secret,
    jwt_claims,
    provider_from_args,
    redact,
    refresh_deadline,
    run_secret_command,
)
from client.errors import ConfigError, ConnectError, RedisToolkitError
from client.options import ServerOptions, add_server_arguments, server_options

# A plausible Azure access key (44 base64 characters) and Entra object id.
ACCESS_KEY = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MEFCQ0RFRkdISUo="
OID = "8b2f1c7e-3a4d-4e5f-9a0b-1c2d3e4f5a6b"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(**claims: Any) -> str:
    header = b64url(json.dumps({"typ": "JWT", "alg": "RS256"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{b64url(b'signature-bytes-not-checked')}"


# ----------------------------------------------------------------------------- JWT parsing


def test_jwt_claims_reads_the_payload() -> None:
    token = make_jwt(exp=1_700_003_600, iat=1_700_000_000, oid=OID)
    assert jwt_claims(token) == {"exp": 1_700_003_600, "iat": 1_700_000_000, "oid": OID}


@pytest.mark.parametrize("pad", range(4))
def test_jwt_claims_any_payload_length(pad: int) -> None:
    # base64url drops the padding; every payload length must decode.
    token = make_jwt(exp=1, x="y" * pad)
    assert jwt_claims(token) == {"exp": 1, "x": "y" * pad}


@pytest.mark.parametrize(
    "text",
    [
        ACCESS_KEY,
        "plain-password",
        "a.b",
        "a..c",
        "a.!!!!.c",
        f"h.{b64url(b'[1, 2]')}.s",  # JSON but not an object
        f"h.{b64url(b'not json')}.s",
        "",
    ],
)
def test_not_a_jwt(text: str) -> None:
    assert jwt_claims(text) is None


# ------------------------------------------------------------------------- refresh schedule


def test_refresh_one_hour_token_at_ten_percent() -> None:
    # 60 min lifetime: 10% = 6 min > 3 min.
    assert refresh_deadline(1000.0, 1000.0 + 3600) == 1000.0 + 3600 - 360


def test_refresh_short_token_at_three_minutes() -> None:
    # 20 min lifetime: 10% = 2 min < 3 min, so 3 min wins.
    assert refresh_deadline(0.0, 1200.0) == 1200.0 - MIN_REFRESH_MARGIN


@given(
    issued=st.floats(0, 2e9, allow_nan=False),
    lifetime=st.floats(0, 1e6, allow_nan=False),
)
def test_refresh_deadline_laws(issued: float, lifetime: float) -> None:
    expires = issued + lifetime
    deadline = refresh_deadline(issued, expires)
    margin = expires - deadline
    assert margin >= MIN_REFRESH_MARGIN - 1e-6
    assert margin >= 0.1 * (expires - issued) - 1e-6
    assert margin <= max(MIN_REFRESH_MARGIN, 0.1 * (expires - issued)) + 1e-6


def test_credential_from_jwt_uses_exp_and_iat() -> None:
    token = make_jwt(exp=10_000 + 3600, iat=10_000, oid=OID)
    cred = credential_from_secret(token, username=None, fetched_at=10_050.0)
    assert cred.username == OID
    assert cred.password == token
    assert cred.expires_at == 13_600
    assert cred.refresh_at == 13_600 - 360


def test_credential_without_iat_counts_from_fetch_time() -> None:
    token = make_jwt(exp=20_000)
    cred = credential_from_secret(token, username="app", fetched_at=10_000.0)
    assert cred.username == "app"
    assert cred.refresh_at == 20_000 - 1000  # 10% of 10,000 s


def test_credential_refresh_flag_caps_a_jwt_schedule() -> None:
    token = make_jwt(exp=20_000, iat=10_000)
    cred = credential_from_secret(token, username="u", fetched_at=10_000.0, refresh_every=60)
    assert cred.refresh_at == 10_060
    assert cred.expires_at == 20_000


def test_opaque_password_refreshes_only_on_the_flag() -> None:
    cred = credential_from_secret(ACCESS_KEY, username="default", fetched_at=5.0)
    assert (cred.expires_at, cred.refresh_at) == (None, None)
    cred = credential_from_secret(ACCESS_KEY, username="default", fetched_at=5.0, refresh_every=30)
    assert (cred.expires_at, cred.refresh_at) == (None, 35.0)


def test_explicit_username_beats_oid() -> None:
    token = make_jwt(exp=99_999, oid=OID)
    assert credential_from_secret(token, username="me", fetched_at=0).username == "me"


def test_token_without_oid_logs_in_as_default(caplog: pytest.LogCaptureFixture) -> None:
    token = make_jwt(exp=99_999)
    with caplog.at_level(logging.WARNING):
        cred = credential_from_secret(token, username=None, fetched_at=0)
    assert cred.username == "default"
    assert "no oid claim" in caplog.text
    assert token not in caplog.text


def test_credential_repr_hides_the_password() -> None:
    cred = Credential(username="u", password="hunter2-secret", expires_at=1.0, refresh_at=0.5)
    assert "hunter2-secret" not in repr(cred)
    assert "hunter2-secret" not in str(cred)
    assert "***" in repr(cred)


def test_credential_apply_to() -> None:
    opts = ServerOptions(host="h", port=1)
    applied = Credential(username="u", password="p").apply_to(opts)
    assert (applied.host, applied.username, applied.password) == ("h", "u", "p")
    assert Credential(username="default", password="").apply_to(opts).password is None


# ------------------------------------------------------------------------------- redaction


def test_redact_known_secrets_longest_first() -> None:
    text = "AUTH user hunter2 and hunter2-long"
    assert redact(text, ["hunter2", "hunter2-long", "", None]) == "AUTH user *** and ***"


def test_redact_tokens_and_keys_without_knowing_them() -> None:
    jwt = make_jwt(exp=1, oid=OID)
    text = f"bad token {jwt} and key {ACCESS_KEY}."
    out = redact(text, [])
    assert jwt not in out
    assert ACCESS_KEY not in out
    assert out == "bad token *** and key ***."


@pytest.mark.parametrize(
    "text",
    [
        "my-very-long-cache-name-for-production.eastus2.redis.azure.net:10000",
        "cannot read /home/someone/projects/redis-client/certs/ca.crt: no such file",
        "a-forty-character-lowercase-name-without-digits-xx",
        OID,
    ],
)
def test_redact_leaves_hosts_paths_and_ids_alone(text: str) -> None:
    assert redact(text, []) == text


_NO_STAR = st.characters(blacklist_characters="*")


@given(
    secret=st.text(_NO_STAR, min_size=1, max_size=40),
    before=st.text(_NO_STAR),
    after=st.text(_NO_STAR),
)
def test_redact_never_leaves_a_known_secret(secret: str, before: str, after: str) -> None:
    assert secret not in redact(before + secret + after, [secret])


# ------------------------------------------------------------------------- commands


async def test_command_output_is_trimmed() -> None:
    assert await run_secret_command("printf '  tok en \\n\\n'", what="pc") == "tok en"


async def test_failing_command_is_one_redacted_line() -> None:
    secret = "s3cr3t-password-value"
    cmd = f"echo {secret}; echo 'rejected {secret}' >&2; echo 'last words' >&2; exit 3"
    with pytest.raises(ConnectError) as info:
        await run_secret_command(cmd, what="password command")
    text = str(info.value)
    assert text.startswith("password command failed (exit 3): ")
    assert "rejected *** / last words" in text
    assert secret not in text
    assert "\n" not in text


async def test_command_printing_nothing() -> None:
    with pytest.raises(ConnectError, match="printed nothing"):
        await run_secret_command("echo oops >&2", what="password command")


async def test_command_printing_too_much() -> None:
    with pytest.raises(ConnectError, match="more than 64 KiB"):
        await run_secret_command("yes", what="password command")


async def test_command_printing_binary() -> None:
    with pytest.raises(ConnectError, match="not UTF-8"):
        await run_secret_command("printf '\\377\\376'", what="password command")


async def test_missing_program() -> None:
    with pytest.raises(ConnectError, match="cannot run no-such-program-xyz"):
        await run_secret_command(["no-such-program-xyz"], what="az")


async def test_hanging_command_times_out_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    provider = CredentialProvider(
        username="u",
        source=_command(f"echo $$ > {pidfile}; exec sleep 60"),
        fetch_timeout=0.5,
    )
    with pytest.raises(ConnectError) as info:
        await provider.current()
    assert str(info.value).startswith("password command timed out after 0.5 s")
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _command(cmd: str) -> Callable[[], Awaitable[str]]:
    async def fetch() -> str:
        return await run_secret_command(cmd, what="password command")

    return fetch


# ---------------------------------------------------------------------------- the provider


class FakeSource:
    """Returns queued results in order (the last one repeats); exceptions are raised."""

    def __init__(self, *results: str | Exception) -> None:
        self.results = list(results)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        await trio.lowlevel.checkpoint()
        if isinstance(result, Exception):
            raise result
        return result


def fake_provider(source: FakeSource, **kw: Any) -> CredentialProvider:
    kw.setdefault("username", None)
    return CredentialProvider(source=source, now=trio.current_time, **kw)


async def test_static_provider() -> None:
    provider = CredentialProvider.static("u", "pw")
    assert not provider.dynamic
    cred = await provider.current()
    assert (cred.username, cred.password, cred.refresh_at) == ("u", "pw", None)
    assert provider.redact("x pw y") == "x *** y"


async def test_current_fetches_once_and_caches(autojump_clock: trio.testing.MockClock) -> None:
    now = trio.current_time()
    source = FakeSource(make_jwt(exp=now + 3600, oid=OID))
    provider = fake_provider(source)
    first, second = await provider.current(), await provider.current()
    assert first is second
    assert source.calls == 1
    assert first.username == OID


async def test_concurrent_first_use_fetches_once(autojump_clock: trio.testing.MockClock) -> None:
    source = FakeSource("pw")
    provider = fake_provider(source, username="u")
    got: list[Credential] = []

    async def use() -> None:
        got.append(await provider.current())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(use)
    assert source.calls == 1
    assert {c.password for c in got} == {"pw"}


async def test_expired_credential_is_fetched_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = trio.current_time()
    old, new = make_jwt(exp=now + 10), make_jwt(exp=now + 5000)
    provider = fake_provider(FakeSource(old, new), username="u")
    assert (await provider.current()).password == old
    await trio.sleep(11)
    assert (await provider.current()).password == new


async def test_refresh_loop_rotates_before_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    tokens = [make_jwt(exp=start + 3600 * (i + 1), iat=start, oid=OID) for i in range(3)]
    provider = fake_provider(FakeSource(*tokens))
    seen: list[tuple[float, str]] = []

    async def on_new(cred: Credential) -> None:
        seen.append((trio.current_time() - start, cred.password))

    async with trio.open_nursery() as nursery:
        first = await nursery.start(provider.serve_refresh, on_new)
        assert first.password == tokens[0]
        await trio.sleep(3600 * 2)
        nursery.cancel_scope.cancel()
    # Token 0 (1 h): refreshed at 3600 - 360. Token 1 (2 h from start): at 7200 - 720.
    assert seen == [(3240.0, tokens[1]), (6480.0, tokens[2])]
    assert provider.statistics().refreshes == 2


async def test_failed_refresh_keeps_the_credential_and_retries(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    start = trio.current_time()
    old = make_jwt(exp=start + 1000, iat=start)
    new = make_jwt(exp=start + 5000, iat=start)
    failure = ConnectError(f"password command failed (exit 1): leaked {old}")
    source = FakeSource(old, failure, failure, new)
    provider = fake_provider(source, username="u", retry_initial=5, retry_max=60)
    seen: list[float] = []

    async def on_new(cred: Credential) -> None:
        seen.append(trio.current_time() - start)

    with caplog.at_level(logging.DEBUG):
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.serve_refresh, on_new)
            await trio.sleep(820 + 1)  # refresh due at 1000 - 180 = 820
            assert (await provider.current()).password == old  # kept after a failure
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    # 820: fail, +5 s: fail, +10 s: success.
    assert seen == [835.0]
    stats = provider.statistics()
    assert (stats.failures, stats.refreshes) == (2, 1)
    assert (await provider.current()).password == new
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "credential refresh failed: password command failed (exit 1)" in errors[0]
    assert "keeping the current credential (it expires in" in errors[0]
    assert old not in caplog.text
    assert new not in caplog.text


async def test_failure_after_expiry_says_so(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    start = trio.current_time()
    old = make_jwt(exp=start + 200, iat=start)  # refresh due at once (200 - 180 = 20)
    provider = fake_provider(
        FakeSource(old, ConnectError("down")), username="u", retry_initial=5, retry_max=60
    )

    async def on_new(cred: Credential) -> None:
        raise AssertionError("no new credential expected")

    with caplog.at_level(logging.ERROR):
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.serve_refresh, on_new)
            await trio.sleep(600)
            nursery.cancel_scope.cancel()
    assert "it EXPIRED" in caplog.text
    # Backoff is capped: at most 60 s between attempts once expired.
    assert provider.statistics().failures >= (600 - 200) // 60


async def test_unchanged_token_is_asked_again_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # az hands out its cached token until close to expiry: same token, then a new one.
    start = trio.current_time()
    old = make_jwt(exp=start + 3600, iat=start)
    new = make_jwt(exp=start + 7200, iat=start + 3400)
    source = FakeSource(old, old, old, new)
    provider = fake_provider(source, username="u", retry_initial=5, retry_max=60)
    seen: list[float] = []

    async def on_new(cred: Credential) -> None:
        seen.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        await nursery.start(provider.serve_refresh, on_new)
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()
    assert seen == [3240.0 + 5 + 10]
    assert provider.statistics().failures == 0


async def test_periodic_refresh_of_an_opaque_password(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = FakeSource("a", "a", "b")
    provider = fake_provider(source, username="u", refresh_every=10)
    seen: list[str] = []

    async def on_new(cred: Credential) -> None:
        seen.append(cred.password)

    async with trio.open_nursery() as nursery:
        await nursery.start(provider.serve_refresh, on_new)
        await trio.sleep(25)
        nursery.cancel_scope.cancel()
    assert seen == ["b"]
    assert source.calls == 3


async def test_slow_unchanged_command_keeps_its_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A command slower than --credential-refresh that returns the same secret keeps the period
    (no exponential back-off): it runs once per period plus its own run time."""

    class SlowSource(FakeSource):
        async def __call__(self) -> str:
            await trio.sleep(3)
            return await super().__call__()

    source = SlowSource("a")
    provider = fake_provider(source, username="u", refresh_every=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(provider.serve_refresh, _ignore)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    # One fetch every 2 s of waiting + 3 s of running: about 20 in 100 s (back-off would give ~6).
    assert 18 <= source.calls <= 22


async def _ignore(cred: Credential) -> None:
    return None


async def test_command_without_refresh_runs_once(autojump_clock: trio.testing.MockClock) -> None:
    source = FakeSource("a", "b")
    provider = fake_provider(source, username="u")

    async def on_new(cred: Credential) -> None:
        raise AssertionError("unexpected refresh")

    async with trio.open_nursery() as nursery:
        await nursery.start(provider.serve_refresh, on_new)
        await trio.sleep(10_000)
        nursery.cancel_scope.cancel()
    assert source.calls == 1


async def test_on_new_errors_are_logged_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    provider = fake_provider(FakeSource("a", "b", "c"), username="u", refresh_every=10)
    calls: list[str] = []

    async def on_new(cred: Credential) -> None:
        calls.append(cred.password)
        raise RedisToolkitError(f"AUTH with {cred.password}-xyz refused")

    with caplog.at_level(logging.ERROR):
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.serve_refresh, on_new)
            await trio.sleep(25)
            nursery.cancel_scope.cancel()
    assert calls == ["b", "c"]
    assert "applying the new credential failed: AUTH with ***-xyz refused" in caplog.text


async def test_broken_source_fails_start() -> None:
    provider = CredentialProvider(username="u", source=FakeSource(ConnectError("nope")))

    async def on_new(cred: Credential) -> None:
        raise AssertionError

    with pytest.raises(ConnectError, match="nope"):
        await provider.serve_refresh(on_new)


# ------------------------------------------------------------------------------- the flags


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    add_server_arguments(parser)
    add_credential_arguments(parser)
    return parser.parse_args(list(argv))


def provider_for(*argv: str) -> CredentialProvider:
    ns = parse(*argv)
    return provider_from_args(ns, server_options(ns))


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_CLIENT_PASSWORD", raising=False)


async def test_flags_static() -> None:
    provider = provider_for("-a", "pw", "-u", "me")
    assert not provider.dynamic
    assert (await provider.current()).password == "pw"


async def test_flags_password_command() -> None:
    provider = provider_for("--password-command", "echo from-command", "-u", "me")
    assert provider.dynamic
    cred = await provider.current()
    assert (cred.username, cred.password) == ("me", "from-command")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-a", "x", "--password-command", "echo y"], "-a/--password and --password-command"),
        (["-a", "x", "--entra"], "-a/--password and --entra"),
        (["--entra-tenant", "t"], "--entra-tenant goes with --entra"),
        (["--credential-refresh", "5"], "--credential-refresh needs"),
    ],
)
def test_flag_conflicts(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        provider_for(*argv)


def test_password_env_conflicts_with_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLIENT_PASSWORD", "from-env")
    with pytest.raises(ConfigError, match="REDIS_CLIENT_PASSWORD is set and --entra"):
        provider_for("--entra")


def test_entra_and_command_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--entra", "--password-command", "x")
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_seconds(value: str) -> None:
    with pytest.raises(SystemExit):
        parse("--password-command", "x", "--credential-refresh", value)
