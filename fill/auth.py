"""Who each fill connection is logged in as, and how a new credential reaches live connections.

A fill may run longer than its credential lives (an Entra ID token, a rotated password), so
every live connection must log in again, in place, when ``--password-command`` / ``--entra``
hands out a new credential (:class:`client.credentials.CredentialProvider`).

* **Control connections** (one per target, replies on: FLUSHALL, INFO, DBSIZE) get
  ``AUTH user pass`` first, and its reply decides: accepted, the target's fill connections
  follow; refused, the target keeps its current credential (the refusal is logged, and the
  ``WRONGPASS`` it leaves in ``INFO errorstats`` is taken out of the watcher's baseline).
* **Fill connections** run with ``CLIENT REPLY OFF``, which suppresses the reply to ``AUTH``
  too. Each one compares its login with :meth:`Logins.get` between two chunks and, when it
  changed, writes ``AUTH user pass`` (:func:`auth_command`) before the next chunk. Redis applies
  it in order, so every later SET runs as the new login; a refused AUTH leaves the connection
  logged in as before and counts a ``WRONGPASS`` in ``INFO errorstats``, which the fill's
  watcher turns into an error naming the node. A connection that has already written its
  last chunk is not logged in again: it sends no further commands.
* **``-P`` worker processes** get the logins in the JSON plan on their stdin (never in argv or
  in the environment), and every accepted rotation as one more JSON line on the same pipe
  (:func:`login_update`), which stays open for the life of the worker. The parent alone runs the
  credential provider: the command runs once per rotation, whatever ``-P`` is, and every process
  uses the very credential the parent verified on its control connections.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from client.credentials import Credential
from client.resp import encode_command

__all__ = [
    "Logins",
    "auth_args",
    "auth_command",
    "login_from_json",
    "login_json",
    "login_update",
    "parse_login_update",
]


def auth_args(cred: Credential) -> list[str]:
    """``AUTH`` for ``cred``, in the form the connection handshake uses (pure)."""
    if cred.username and cred.username != "default":
        return ["AUTH", cred.username, cred.password]
    return ["AUTH", cred.password]


def auth_command(cred: Credential) -> bytes:
    """``AUTH`` for ``cred``, RESP-encoded, to write between two chunks of a fill connection."""
    return encode_command(*auth_args(cred))


def login_json(cred: Credential) -> dict[str, str]:
    """The parts of ``cred`` a worker process needs (it never refreshes it itself)."""
    return {"username": cred.username, "password": cred.password}


def login_from_json(data: Mapping[str, Any]) -> Credential:
    """Inverse of :func:`login_json`; raises ValueError on a malformed entry."""
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ValueError("a login needs a username and a password (strings)")
    return Credential(username=username, password=password)


def login_update(cred: Credential, targets: Iterable[int]) -> bytes:
    """One JSON line telling a worker process the new login of some targets."""
    message = {"login": login_json(cred), "targets": sorted(targets)}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def parse_login_update(line: bytes, target_count: int) -> tuple[Credential, list[int]]:
    """Parse a :func:`login_update` line; raises ValueError when it is not one."""
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("login"), dict):
        raise ValueError("not a login update")
    targets = message.get("targets")
    if not isinstance(targets, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < target_count for t in targets
    ):
        raise ValueError("a login update needs a list of target indexes")
    return login_from_json(message["login"]), targets


class Logins:
    """The credential the fill connections of each target log in with.

    A fill connection logs in with :meth:`get` and, between two chunks, compares what it holds
    with :meth:`get` again (by identity: a new credential is a new object), writing ``AUTH``
    when it changed. :meth:`accept` is called when a target's control connection accepted a
    new credential (or, in a worker process, when the parent said so).
    """

    def __init__(self, initial: Sequence[Credential]) -> None:
        self._current = list(initial)

    def __len__(self) -> int:
        return len(self._current)

    def get(self, target: int) -> Credential:
        return self._current[target]

    def accept(self, target: int, cred: Credential) -> None:
        self._current[target] = cred

    def secrets(self) -> list[str]:
        """Every password held, for redaction."""
        return [c.password for c in self._current if c.password]
