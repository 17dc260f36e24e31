"""Credentials that change while the program runs: password commands and Entra ID tokens.

Managed caches (Azure Cache for Redis, Azure Managed Redis) often take a Microsoft Entra ID token
as the password. Tokens expire, so a tunnel left running all day must fetch a new one before the
old one runs out and log every live connection in again (``AUTH`` is pipelined like any other
command, so in-flight commands are not disturbed).

Where a credential comes from (``add_credential_arguments`` adds the flags):

* ``-a`` / ``REDIS_CLIENT_PASSWORD``: a static password, never refreshed.
* ``--password-command CMD``: CMD runs through ``/bin/sh`` (so pipes work) with stdin closed,
  under ``--credential-timeout``; its stdout, trimmed, is the password. When that is a JWT, its
  ``exp`` claim sets the refresh time; otherwise ``--credential-refresh SECONDS`` does (without
  it the command runs once).
* ``--entra``: shorthand for ``az account get-access-token --resource https://redis.azure.com``.
  The username is the token's ``oid`` claim unless ``-u`` names another user.

Refresh schedule: a token is refreshed at ``exp - max(180 s, 10% of its lifetime)`` (Azure asks
for at least three minutes), or ``--credential-refresh`` seconds after it was fetched, whichever
comes first. A failed refresh is logged as one line (secrets redacted) and retried with a capped
exponential backoff; the current credential stays in use until it expires, and after that too
(the server decides when it stops accepting it).

Secrets never appear in logs or errors: every message built here goes through :func:`redact`,
which removes the known secrets and anything that looks like a token.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, NoReturn

import trio

from client.errors import ConfigError, ConnectError, RedisToolkitError
from client.options import PASSWORD_ENV, ServerOptions

__all__ = [
    "DEFAULT_CREDENTIAL_TIMEOUT",
    "ENTRA_RESOURCE",
    "MIN_REFRESH_MARGIN",
    "Credential",
    "CredentialProvider",
    "CredentialStatistics",
    "Source",
    "add_credential_arguments",
    "command_source",
    "credential_from_secret",
    "entra_command",
    "entra_source",
    "jwt_claims",
    "provider_from_args",
    "redact",
    "refresh_deadline",
    "run_secret_command",
]

logger = logging.getLogger(__name__)

#: The Entra ID resource (audience) of Azure Cache for Redis and Azure Managed Redis tokens.
ENTRA_RESOURCE = "https://redis.azure.com"
#: Refresh at least this long before a token expires (Azure asks for three minutes).
MIN_REFRESH_MARGIN = 180.0
#: ... or this fraction of the token's lifetime, when that is longer.
REFRESH_FRACTION = 0.10
DEFAULT_CREDENTIAL_TIMEOUT = 30.0
#: A password command printing more than this is broken (a JWT is a few KB).
MAX_SECRET_BYTES = 64 * 1024
#: How much of a failing command's stderr is kept for the error line.
_STDERR_TAIL_BYTES = 4096
_STDERR_TAIL_CHARS = 300
_RETRY_INITIAL = 5.0
_RETRY_MAX = 60.0
#: Secrets remembered for redaction (the current one and a few before it).
_REMEMBERED = 4
_MASK = "***"

#: A credential source: returns the secret (already trimmed); raises ConnectError.
Source = Callable[[], Awaitable[str]]

# -------------------------------------------------------------------------------- redaction

# A JWT (header.payload.signature, each base64url; headers always start with '{"' = 'eyJ').
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# A run of 40+ base64/base64url characters (access keys are 44): redacted when it mixes upper
# case, lower case and digits, so long host names and paths stay readable.
_B64_RUN_RE = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{40,}={0,2}(?![A-Za-z0-9+/_=-])")


def _looks_random(run: str) -> bool:
    return (
        any(c.isdigit() for c in run)
        and any(c.isupper() for c in run)
        and any(c.islower() for c in run)
    )


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every known secret, JWT and long random base64 run replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    text = _JWT_RE.sub(_MASK, text)
    return _B64_RUN_RE.sub(lambda m: _MASK if _looks_random(m.group(0)) else m.group(0), text)


# -------------------------------------------------------------------------- tokens (pure)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload claims of a JWT (no signature check), or None when ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def refresh_deadline(issued_at: float, expires_at: float) -> float:
    """When to fetch a new token: ``exp - max(180 s, 10% of the lifetime)``.

    The result may lie before ``issued_at`` for a token that lives less than three minutes;
    the refresh loop then retries with backoff until the source hands out a longer-lived one.
    """
    lifetime = max(0.0, expires_at - issued_at)
    return expires_at - max(MIN_REFRESH_MARGIN, REFRESH_FRACTION * lifetime)


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """A username and password (or token), with when it expires and when to refresh it.

    Times are wall-clock seconds (``time.time()``), as a JWT ``exp`` claim is. The password is
    never shown by ``repr``. An empty password means "do not log in".
    """

    username: str
    password: str = field(repr=False)
    expires_at: float | None = None
    refresh_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"Credential(username={self.username!r}, password='{_MASK}', "
            f"expires_at={self.expires_at!r}, refresh_at={self.refresh_at!r})"
        )

    def apply_to(self, opts: ServerOptions) -> ServerOptions:
        """``opts`` logging in with this credential."""
        return replace(opts, username=self.username, password=self.password or None)


def credential_from_secret(
    secret: str,
    *,
    username: str | None,
    fetched_at: float,
    refresh_every: float | None = None,
) -> Credential:
    """Build the credential for a freshly fetched secret (pure).

    Args:
        username: the login name, or None to take the token's ``oid`` claim (Entra ID);
            ``default`` when there is none.
        fetched_at: when the secret was fetched (wall clock).
        refresh_every: refresh this long after ``fetched_at`` at the latest.
    """
    claims = jwt_claims(secret)
    expires_at = issued_at = None
    if claims is not None:
        expires_at = _number(claims.get("exp"))
        issued_at = _number(claims.get("iat"))
        if issued_at is None:
            issued_at = _number(claims.get("nbf"))
    refresh_at: float | None = None
    if expires_at is not None:
        start = issued_at if issued_at is not None and issued_at <= expires_at else fetched_at
        refresh_at = refresh_deadline(start, expires_at)
    if refresh_every is not None:
        periodic = fetched_at + refresh_every
        refresh_at = periodic if refresh_at is None else min(refresh_at, periodic)
    if username is None:
        oid = claims.get("oid") if claims is not None else None
        if isinstance(oid, str) and oid:
            username = oid
        else:
            logger.warning(
                "the token has no oid claim: logging in as 'default' (pass -u OBJECT_ID)"
            )
            username = "default"
    return Credential(
        username=username, password=secret, expires_at=expires_at, refresh_at=refresh_at
    )


# ---------------------------------------------------------------------- running commands


def _kill_group(process: trio.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    except AttributeError:  # pragma: no cover - no process groups (Windows)
        process.kill()


def _stderr_tail(errfile: IO[bytes]) -> str:
    errfile.seek(0, os.SEEK_END)
    size = errfile.tell()
    errfile.seek(max(0, size - _STDERR_TAIL_BYTES))
    text = errfile.read().decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = " / ".join(lines[-3:])
    if len(tail) > _STDERR_TAIL_CHARS:
        tail = "…" + tail[-_STDERR_TAIL_CHARS:]
    return tail


async def run_secret_command(command: str | Sequence[str], *, what: str) -> str:
    """Run a command that prints a secret; return its stdout, trimmed.

    ``command`` is a shell command line (run by ``/bin/sh``) or an argument vector. It runs in
    its own process group with stdin closed; cancellation (the caller's timeout) kills the whole
    group. stdout is capped at 64 KiB; only the tail of stderr is kept, for the error line.

    Raises:
        ConnectError: the command cannot start, exits non-zero, prints nothing, too much or
            non-UTF-8. The message names ``what`` and carries the redacted stderr tail.
    """
    shell = isinstance(command, str)
    with tempfile.TemporaryFile() as errfile:
        try:
            process = await trio.lowlevel.open_process(
                command if shell else list(command),
                shell=shell,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errfile,
                start_new_session=True,
            )
        except OSError as exc:
            program = command if isinstance(command, str) else command[0]
            msg = f"{what} failed: cannot run {program}: {exc.strerror or exc}"
            raise ConnectError(msg, hint="is it installed and on PATH?") from None
        output = bytearray()
        try:
            stdout = process.stdout
            assert stdout is not None
            while True:
                data = await stdout.receive_some(65536)
                if not data:
                    break
                output += data
                if len(output) > MAX_SECRET_BYTES:
                    msg = f"{what} printed more than {MAX_SECRET_BYTES // 1024} KiB"
                    raise ConnectError(msg, hint="it should print only the password or token")
            code = await process.wait()
        except BaseException:
            _kill_group(process)
            with trio.move_on_after(5, shield=True):
                await process.wait()
            raise
        finally:
            if process.stdout is not None:
                await trio.aclose_forcefully(process.stdout)
        try:
            text = output.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = None
        if code != 0:
            reason = f"exit {code}" if code > 0 else f"killed by signal {-code}"
            tail = redact(_stderr_tail(errfile), [text])
            msg = f"{what} failed ({reason})" + (f": {tail}" if tail else "")
            raise ConnectError(msg, hint=_hint_for(tail))
        if text is None:
            raise ConnectError(f"{what} printed bytes that are not UTF-8 text")
        if not text:
            tail = redact(_stderr_tail(errfile), [])
            msg = f"{what} printed nothing" + (f" (stderr: {tail})" if tail else "")
            raise ConnectError(msg, hint="it must print the password or token on stdout")
        return text


def _hint_for(stderr_tail: str) -> str | None:
    lowered = stderr_tail.lower()
    if "az login" in lowered or "aadsts" in lowered:
        return "run az login (the Azure CLI login is missing or expired)"
    if "not found" in lowered or "no such file" in lowered:
        return "check the command and the files it reads"
    return None


def command_source(command: str) -> Source:
    """A source that runs ``command`` through the shell (``--password-command``)."""

    async def fetch() -> str:
        return await run_secret_command(command, what="password command")

    return fetch


def entra_command(tenant: str | None = None) -> list[str]:
    """The Azure CLI call that prints an Entra ID token for Redis, as JSON."""
    argv = ["az", "account", "get-access-token", "--resource", ENTRA_RESOURCE, "-o", "json"]
    if tenant:
        argv += ["--tenant", tenant]
    return argv


def entra_source(tenant: str | None = None) -> Source:
    """A source that asks the Azure CLI for an Entra ID token (``--entra``)."""
    argv = entra_command(tenant)
    what = "az account get-access-token"

    async def fetch() -> str:
        text = await run_secret_command(argv, what=what)
        try:
            data = json.loads(text)
        except ValueError:
            data = text  # an older az, or a wrapper printing the bare token
        token = data.get("accessToken") if isinstance(data, dict) else data
        if not isinstance(token, str) or not token.strip():
            raise ConnectError(f"{what} printed no accessToken", hint="check `az version`")
        return token.strip()

    return fetch


# --------------------------------------------------------------------------- the provider


@dataclass(frozen=True, slots=True)
class CredentialStatistics:
    """Counters of a :class:`CredentialProvider` (``statistics()``)."""

    fetches: int
    refreshes: int
    failures: int
    last_error: str | None
    expires_at: float | None
    refresh_at: float | None


class CredentialProvider:
    """Hands out the current credential and keeps it fresh.

    Build one with :func:`provider_from_args`, :meth:`static` or the constructor (tests pass
    their own ``source`` and ``now``). ``current()`` is what new connections call;
    ``serve_refresh(on_new)`` runs in a nursery for the life of the program and calls
    ``on_new`` with each new credential, so live connections can send ``AUTH`` again.
    """

    def __init__(
        self,
        *,
        username: str | None,
        source: Source | None = None,
        password: str | None = None,
        description: str = "password command",
        refresh_every: float | None = None,
        fetch_timeout: float = DEFAULT_CREDENTIAL_TIMEOUT,
        retry_initial: float = _RETRY_INITIAL,
        retry_max: float = _RETRY_MAX,
        now: Callable[[], float] = time.time,
    ) -> None:
        if source is not None and password is not None:
            raise ValueError("a provider has a source or a static password, not both")
        self.description = description
        self._username = username
        self._source = source
        self._refresh_every = refresh_every
        self._timeout = fetch_timeout
        self._retry_initial = retry_initial
        self._retry_max = max(retry_max, retry_initial)
        self._now = now
        self._lock = trio.Lock()
        self._secrets: list[str] = []
        self._current: Credential | None = None
        self._fetches = self._refreshes = self._failures = 0
        self._last_error: str | None = None
        if source is None:
            self._install(Credential(username=username or "default", password=password or ""))

    @classmethod
    def static(cls, username: str, password: str | None) -> CredentialProvider:
        """A provider that always hands out the same credential (``-a`` or no password)."""
        return cls(username=username, password=password or "")

    @property
    def dynamic(self) -> bool:
        """True when the credential comes from a command and may change."""
        return self._source is not None

    def redact(self, text: str) -> str:
        """``text`` without any secret this provider has handed out (see :func:`redact`)."""
        return redact(text, self._secrets)

    def statistics(self) -> CredentialStatistics:
        cred = self._current
        return CredentialStatistics(
            fetches=self._fetches,
            refreshes=self._refreshes,
            failures=self._failures,
            last_error=self._last_error,
            expires_at=cred.expires_at if cred else None,
            refresh_at=cred.refresh_at if cred else None,
        )

    def _install(self, cred: Credential) -> None:
        self._current = cred
        if cred.password and cred.password not in self._secrets:
            self._secrets.append(cred.password)
            del self._secrets[:-_REMEMBERED]

    def _expired(self, cred: Credential) -> bool:
        return cred.expires_at is not None and cred.expires_at <= self._now()

    async def current(self) -> Credential:
        """The credential to log in with now; fetched on first use or once it has expired.

        Raises:
            ConnectError: the source failed and there is no unexpired credential.
        """
        cred = self._current
        if cred is not None and not self._expired(cred):
            return cred
        async with self._lock:
            cred = self._current
            if cred is not None and not self._expired(cred):
                return cred
            fresh = await self.fetch()
            self._install(fresh)
            return fresh

    async def fetch(self) -> Credential:
        """Run the source now, under the timeout; does not replace the current credential.

        Raises:
            ConnectError: failure or timeout, as one redacted line.
        """
        if self._source is None:
            assert self._current is not None
            return self._current
        self._fetches += 1
        fetched_at = self._now()
        try:
            with trio.fail_after(self._timeout):
                secret = await self._source()
        except trio.TooSlowError:
            msg = f"{self.description} timed out after {self._timeout:g} s"
            raise ConnectError(msg, hint="raise --credential-timeout or fix the command") from None
        except ConnectError as exc:
            hint = self.redact(exc.hint) if exc.hint else None
            raise ConnectError(self.redact(exc.message), hint=hint) from None
        return credential_from_secret(
            secret,
            username=self._username,
            fetched_at=fetched_at,
            refresh_every=self._refresh_every,
        )

    def _backoff(self, attempt: int, cred: Credential) -> float:
        delay: float = min(self._retry_max, self._retry_initial * 2.0 ** max(0, attempt - 1))
        if cred.expires_at is not None:
            left = cred.expires_at - self._now()
            if left > 0:
                delay = min(delay, max(self._retry_initial, left / 2))
        return delay

    def _describe_expiry(self, cred: Credential) -> str:
        if cred.expires_at is None:
            return "it does not expire"
        left = cred.expires_at - self._now()
        if left <= 0:
            return f"it EXPIRED {_duration(-left)} ago"
        return f"it expires in {_duration(left)}"

    async def serve_refresh(
        self,
        on_new: Callable[[Credential], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[Credential] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Keep the credential fresh forever; call ``on_new`` with each new one.

        Starts (``task_status.started(credential)``) once a first credential is at hand, so
        ``await nursery.start(provider.serve_refresh, on_new)`` fails fast on a broken source.
        A failed refresh is logged (redacted), the current credential stays, and the fetch is
        retried with backoff. An error raised by ``on_new`` (a RedisToolkitError) is logged and
        does not stop the loop.
        """
        cred = await self.current()
        task_status.started(cred)
        next_at = cred.refresh_at if self._source is not None else None
        attempt = 0
        while True:
            if next_at is None:
                await trio.sleep_forever()
            await trio.sleep(max(0.0, next_at - self._now()))
            held = self._current
            assert held is not None
            try:
                fresh = await self.fetch()
            except ConnectError as exc:
                attempt += 1
                self._failures += 1
                self._last_error = str(exc)
                delay = self._backoff(attempt, held)
                logger.error(
                    "credential refresh failed: %s; keeping the current credential (%s); "
                    "retrying in %s",
                    self._last_error,
                    self._describe_expiry(held),
                    _duration(delay),
                )
                next_at = self._now() + delay
                continue
            now = self._now()
            if fresh.password == held.password and fresh.username == held.username:
                # The source still hands out the same secret (az keeps a token until it is
                # close to expiry): keep it and ask again later.
                if fresh.refresh_at is not None and fresh.refresh_at > now:
                    self._install(fresh)
                    attempt = 0
                    next_at = fresh.refresh_at
                elif fresh.expires_at is None and self._refresh_every:
                    # A fixed-period secret whose command took longer than the period: keep
                    # the period rather than backing off.
                    attempt = 0
                    next_at = now + self._refresh_every
                else:
                    attempt += 1
                    next_at = now + self._backoff(attempt, fresh)
                    logger.debug("credential unchanged; asking again in %s", next_at - now)
                continue
            attempt = 0
            self._refreshes += 1
            self._last_error = None
            self._install(fresh)
            if fresh.refresh_at is None or fresh.refresh_at > now:
                next_at = fresh.refresh_at
            else:
                next_at = now + self._backoff(1, fresh)
            logger.info(
                "credential refreshed for user %s (%s)",
                self.redact(fresh.username),
                self._describe_expiry(fresh),
            )
            try:
                await on_new(fresh)
            except RedisToolkitError as exc:
                logger.error("applying the new credential failed: %s", self.redact(str(exc)))


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -------------------------------------------------------------------------------- flags


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: must be > 0")
    return value


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--password-command``, ``--entra``, ``--entra-tenant``, ``--credential-refresh``
    and ``--credential-timeout`` (call after ``add_server_arguments``)."""
    group = parser.add_argument_group("credentials")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--password-command",
        metavar="CMD",
        help="run CMD (with /bin/sh) and use its output as the password or token; a JWT is "
        "fetched again before it expires, anything else every --credential-refresh seconds",
    )
    source.add_argument(
        "--entra",
        action="store_true",
        help="log in with a Microsoft Entra ID token from the Azure CLI (az account "
        f"get-access-token --resource {ENTRA_RESOURCE}), refreshed before it expires; "
        "the user is the token's oid unless -u is given",
    )
    group.add_argument(
        "--entra-tenant", metavar="TENANT", help="tenant to ask the Azure CLI a token for"
    )
    group.add_argument(
        "--credential-refresh",
        type=_seconds,
        metavar="SECONDS",
        help="run the password command again this often (default: only before a JWT expires)",
    )
    group.add_argument(
        "--credential-timeout",
        type=_seconds,
        default=DEFAULT_CREDENTIAL_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a password command after this long "
        f"(default {DEFAULT_CREDENTIAL_TIMEOUT:g})",
    )


def provider_from_args(ns: argparse.Namespace, opts: ServerOptions) -> CredentialProvider:
    """The credential provider the flags ask for (static when there is no command).

    Raises:
        ConfigError: a password and a password command (or ``--entra``) at the same time.
    """
    command: str | None = getattr(ns, "password_command", None)
    entra = bool(getattr(ns, "entra", False))
    tenant: str | None = getattr(ns, "entra_tenant", None)
    refresh: float | None = getattr(ns, "credential_refresh", None)
    timeout = float(getattr(ns, "credential_timeout", None) or DEFAULT_CREDENTIAL_TIMEOUT)
    if tenant and not entra:
        raise ConfigError("--entra-tenant goes with --entra")
    if not (command or entra):
        if refresh is not None:
            raise ConfigError("--credential-refresh needs --password-command or --entra")
        return CredentialProvider.static(opts.username, opts.password)
    flag = "--entra" if entra else "--password-command"
    if getattr(ns, "password", None) is not None:
        raise ConfigError(f"-a/--password and {flag} both give the password: pick one")
    if opts.password is not None:
        raise ConfigError(
            f"{PASSWORD_ENV} is set and {flag} was given: pick one",
            hint=f"unset {PASSWORD_ENV}",
        )
    retry_initial = min(_RETRY_INITIAL, refresh / 2) if refresh else _RETRY_INITIAL
    if entra:
        # -u defaults to "default": anything else is a user the caller chose.
        username = None if opts.username == "default" else opts.username
        return CredentialProvider(
            username=username,
            source=entra_source(tenant),
            description="az account get-access-token",
            refresh_every=refresh,
            fetch_timeout=timeout,
            retry_initial=retry_initial,
        )
    assert command is not None
    return CredentialProvider(
        username=opts.username,
        source=command_source(command),
        description="password command",
        refresh_every=refresh,
        fetch_timeout=timeout,
        retry_initial=retry_initial,
    )
