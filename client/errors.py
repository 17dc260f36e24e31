"""The one error hierarchy of redis-client.

Every error a user or a Redis client can see derives from :class:`RedisToolkitError`.
Server error *replies* are values (:class:`client.resp.ErrorReply`) while they travel through
the stack; only :meth:`ReplyError.from_reply` turns one into an exception, at the API edge.

Each error that reaches a person carries what failed, where, why and, when we know one, a hint.
``str(err)`` is that one line; ``err.resp_line()`` is the same text as a RESP error line that
the tunnel can send to a client.
"""

from __future__ import annotations

__all__ = [
    "AskError",
    "ClusterDownError",
    "CommandTimeout",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "CrossSlotError",
    "LoadingError",
    "MovedError",
    "RedisConnectionError",
    "RedisToolkitError",
    "ReplyError",
    "RespProtocolError",
    "TlsError",
    "TryAgainError",
    "UnroutableError",
]


class RedisToolkitError(Exception):
    """Root of every error raised by redis-client."""

    #: The RESP error code used when this error is reported to a Redis client.
    code = "ERR"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message

    def resp_line(self) -> bytes:
        """This error as one RESP error frame, with CR/LF folded so it stays one line."""
        text = str(self).replace("\r", " ").replace("\n", " ")
        return b"-" + self.code.encode() + b" " + text.encode("utf-8", "replace") + b"\r\n"


class ConfigError(RedisToolkitError):
    """Bad flags or settings: the user must change how the tool is called."""


class RespProtocolError(RedisToolkitError):
    """The byte stream is not valid RESP (or exceeds a limit); the connection is unusable."""

    def resp_line(self) -> bytes:
        text = self.message.replace("\r", " ").replace("\n", " ")
        return b"-ERR Protocol error: " + text.encode("utf-8", "replace") + b"\r\n"


class RedisConnectionError(RedisToolkitError):
    """A connection could not be made, or was lost."""


class ConnectError(RedisConnectionError):
    """Connecting (TCP, TLS handshake or authentication) to a server failed."""


class TlsError(ConnectError):
    """The TLS handshake failed (certificate, name or protocol mismatch)."""


class ConnectionLost(RedisConnectionError):
    """An established connection closed or broke while commands were in flight."""


class CommandTimeout(RedisToolkitError, TimeoutError):
    """A command did not complete in time."""


class UnroutableError(RedisToolkitError):
    """The cluster client cannot decide which node a command belongs to."""


class ReplyError(RedisToolkitError):
    """An error reply from the server, raised at an API edge.

    Attributes:
        kind: the first word of the error, such as ``ERR``, ``WRONGTYPE`` or ``MOVED``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = kind

    def __str__(self) -> str:
        return self.message

    def resp_line(self) -> bytes:
        return b"-" + self.message.encode("utf-8", "replace") + b"\r\n"

    @staticmethod
    def from_message(message: str) -> ReplyError:
        """Build the most specific subclass for an error reply's text."""
        kind = message.split(" ", 1)[0]
        if kind in ("MOVED", "ASK"):
            parts = message.split(" ")
            if len(parts) == 3 and parts[1].isdigit() and ":" in parts[2]:
                host, _, port = parts[2].rpartition(":")
                if port.isdigit():
                    cls = MovedError if kind == "MOVED" else AskError
                    return cls(kind, message, slot=int(parts[1]), host=host, port=int(port))
        simple = _SIMPLE_KINDS.get(kind)
        if simple is not None:
            return simple(kind, message)
        return ReplyError(kind, message)


class RedirectError(ReplyError):
    """Base for MOVED and ASK: the slot lives on another node."""

    def __init__(self, kind: str, message: str, *, slot: int, host: str, port: int) -> None:
        super().__init__(kind, message)
        self.slot = slot
        self.host = host
        self.port = port


class MovedError(RedirectError):
    """``-MOVED slot host:port``: the slot map changed."""


class AskError(RedirectError):
    """``-ASK slot host:port``: the slot is migrating; ask the target once."""


class TryAgainError(ReplyError):
    """``-TRYAGAIN``: a multi-key command met a slot in migration."""


class ClusterDownError(ReplyError):
    """``-CLUSTERDOWN``: the cluster cannot serve the slot right now."""


class LoadingError(ReplyError):
    """``-LOADING``: the node is loading its dataset."""


class CrossSlotError(ReplyError):
    """``-CROSSSLOT``: keys of one command hash to different slots."""


_SIMPLE_KINDS: dict[str, type[ReplyError]] = {
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "LOADING": LoadingError,
    "CROSSSLOT": CrossSlotError,
}
