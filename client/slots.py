"""Redis Cluster key slots: CRC16 with the hash-tag rule (pure; no I/O).

A key's slot is ``CRC16-XMODEM(tag) mod 16384``, where the tag is the part of the key between
the first ``{`` and the first ``}`` after it, when that part is not empty; otherwise the whole
key is hashed. :func:`binascii.crc_hqx` with an initial value of 0 is exactly CRC16-XMODEM and
runs at C speed.

:func:`slot_tags` gives, for every slot, a short tag that hashes to it: the first 3-character
tag over ``[a-zA-Z0-9]`` in :func:`itertools.product` order. It reproduces the slot mapping
table of the earlier tool (slot 0 -> ``fHh``, 1 -> ``d9C``, 16383 -> ``apX``), so fill mode can
put keys on a chosen slot with ``{tag}`` prefixes.
"""

from __future__ import annotations

import itertools
import string
from binascii import crc_hqx

__all__ = ["SLOTS", "hash_tag", "key_slot", "slot_tags", "tag_for_slot"]

SLOTS = 16384
"""Number of hash slots in a Redis Cluster."""

_MASK = SLOTS - 1
_TAG_ALPHABET = string.ascii_letters + string.digits

_tags: tuple[str, ...] | None = None


def hash_tag(key: bytes) -> bytes:
    """The bytes of ``key`` that decide its slot: the non-empty ``{tag}``, or the whole key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes) -> int:
    """The cluster slot (0..16383) of ``key``, exactly as ``CLUSTER KEYSLOT`` computes it."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return crc_hqx(key[start + 1 : end], 0) & _MASK
    return crc_hqx(key, 0) & _MASK


def _build_tags() -> tuple[str, ...]:
    found: list[str | None] = [None] * SLOTS
    missing = SLOTS
    for chars in itertools.product(_TAG_ALPHABET, repeat=3):
        tag = "".join(chars)
        slot = crc_hqx(tag.encode("ascii"), 0) & _MASK
        if found[slot] is None:
            found[slot] = tag
            missing -= 1
            if not missing:
                break
    if missing:  # pragma: no cover - the alphabet covers every slot; kept as a guard
        raise AssertionError(f"{missing} slots have no 3-character tag")
    return tuple(tag for tag in found if tag is not None)


def slot_tags() -> list[str]:
    """For every slot (the list index), the first 3-character tag that hashes to it.

    Computed once (a few milliseconds) and cached; each call returns a fresh list.
    """
    global _tags
    if _tags is None:
        _tags = _build_tags()
    return list(_tags)


def tag_for_slot(slot: int) -> str:
    """The 3-character tag of :func:`slot_tags` for one slot."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} is out of range 0..{SLOTS - 1}")
    global _tags
    if _tags is None:
        _tags = _build_tags()
    return _tags[slot]
