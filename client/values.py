"""RESP2/RESP3 values as Python objects (pure; no I/O).

The common types are plain Python objects, so the hot paths build nothing extra:

============  =========================  ===========================
RESP type     prefix                     Python
============  =========================  ===========================
bulk string   ``$``                      ``bytes``
integer       ``:``                      ``int``
null          ``_``, ``$-1``, ``*-1``    ``None``
array         ``*``                      ``list``
boolean       ``#``                      ``bool``
============  =========================  ===========================

Everything a plain type would blur gets its own small class, because the CLI prints each
type differently and the tunnel must keep ``+OK`` distinct from ``$2 OK``:
:class:`SimpleString`, :class:`ErrorReply` (``-`` and blob error ``!``), :class:`Double`
(``,``, keeping the server's exact text), :class:`BigNumber` (``(``), :class:`Verbatim`
(``=``), :class:`RespMap` (``%``), :class:`RespSet` (``~``), :class:`Push` (``>``) and
:class:`Attributed` (an attribute map ``|`` together with the reply it annotates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, Union

__all__ = [
    "Attributed",
    "BigNumber",
    "Double",
    "ErrorReply",
    "Push",
    "RespMap",
    "RespSet",
    "RespValue",
    "SimpleString",
    "Verbatim",
]


class SimpleString(bytes):
    """A ``+`` simple string (status reply), such as ``+OK``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"SimpleString({bytes(self)!r})"


class BigNumber(int):
    """A RESP3 ``(`` big number."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"BigNumber({int(self)})"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A server error reply: ``-ERR ...`` or, when ``blob`` is true, a RESP3 ``!`` blob error."""

    message: bytes
    blob: bool = False

    @property
    def text(self) -> str:
        return self.message.decode("utf-8", "replace")

    @property
    def kind(self) -> str:
        """The error code: the first word, such as ``ERR``, ``WRONGTYPE`` or ``MOVED``."""
        return self.message.split(b" ", 1)[0].decode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Double:
    """A RESP3 ``,`` double, kept as the server's exact text (redis-cli prints that text)."""

    raw: bytes

    @property
    def value(self) -> float:
        return float(self.raw)

    @classmethod
    def from_float(cls, value: float) -> Double:
        if value != value:  # NaN
            return cls(b"nan")
        if value in (float("inf"), float("-inf")):
            return cls(b"inf" if value > 0 else b"-inf")
        return cls(repr(value).encode())


@dataclass(frozen=True, slots=True)
class Verbatim:
    """A RESP3 ``=`` verbatim string: a three-letter format (``txt``, ``mkd``) and the text."""

    format: bytes
    text: bytes


class RespMap(list[tuple["RespValue", "RespValue"]]):
    """A RESP3 ``%`` map, as its (key, value) pairs in wire order.

    Keys may be unhashable (arrays), and the CLI prints pairs in order, so a ``dict`` would
    not do. :meth:`as_dict` gives one when the keys allow it.
    """

    __slots__ = ()

    def as_dict(self) -> dict[RespValue, RespValue]:
        return dict(self)

    def __repr__(self) -> str:
        return f"RespMap({list.__repr__(self)})"


class RespSet(list["RespValue"]):
    """A RESP3 ``~`` set, as its members in wire order."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"RespSet({list.__repr__(self)})"


class Push(list["RespValue"]):
    """A RESP3 ``>`` push message (pub/sub message, invalidation, ...)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Push({list.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class Attributed:
    """A reply preceded by a RESP3 ``|`` attribute map."""

    attributes: RespMap
    value: RespValue


RespValue: TypeAlias = Union[  # noqa: UP007 - the alias is recursive, so it must stay a Union
    bytes,
    SimpleString,
    ErrorReply,
    int,
    bool,
    list["RespValue"],
    RespMap,
    RespSet,
    Push,
    Double,
    BigNumber,
    Verbatim,
    Attributed,
    None,
]
