"""Type-exact equality of RESP values, shared by the RESP unit and property tests."""

from __future__ import annotations

from client.values import Attributed


def same(a: object, b: object) -> bool:
    """Equality that also compares types (``True != 1``, ``b"OK" != SimpleString(b"OK")``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, tuple):
        assert isinstance(b, tuple)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Attributed):
        assert isinstance(b, Attributed)
        return same(a.attributes, b.attributes) and same(a.value, b.value)
    return a == b
