"""client.slots: CRC16-XMODEM, the hash-tag rule and the slot tag table (pure)."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client.slots
from client.slots import SLOTS, hash_tag, key_slot, slot_tags, tag_for_slot


def reference_crc16(data: bytes) -> int:
    """Bit-by-bit CRC16-XMODEM (poly 0x1021, init 0), as in Redis' crc16.c description."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_crc16_check_value() -> None:
    assert reference_crc16(b"123456789") == 0x31C3
    assert key_slot(b"123456789") == 0x31C3 & 0x3FFF


@pytest.mark.parametrize(
    ("key", "slot"),
    [(b"foo", 12182), (b"bar", 5061), (b"hello", 866), (b"", 0)],
)
def test_known_slots(key: bytes, slot: int) -> None:
    assert key_slot(key) == slot


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        (b"{user}:profile", b"user"),
        (b"key{tag}", b"tag"),
        (b"{}", b"{}"),  # empty tag: the whole key
        (b"{}x", b"{}x"),
        (b"{user", b"{user"),  # no closing brace
        (b"user}", b"user}"),
        (b"}{user}", b"user"),
        (b"{first}{second}", b"first"),  # only the first tag counts
        (b"a{}{b}", b"a{}{b}"),  # first '{' then first '}' after it: empty, so the whole key
        (b"{{a}}", b"{a"),
        (b"{a}}", b"a"),
        (b"x{\x00\xff}y", b"\x00\xff"),
        (b"plain", b"plain"),
    ],
)
def test_hash_tag_rule(key: bytes, tag: bytes) -> None:
    assert hash_tag(key) == tag
    assert key_slot(key) == reference_crc16(tag) % SLOTS


@given(st.binary(max_size=64))
def test_key_slot_matches_reference(key: bytes) -> None:
    assert key_slot(key) == reference_crc16(hash_tag(key)) & 0x3FFF
    assert 0 <= key_slot(key) < SLOTS


@given(st.binary(min_size=1, max_size=16).filter(lambda t: b"}" not in t), st.binary(max_size=16))
def test_tagged_keys_share_the_slot_of_their_tag(tag: bytes, rest: bytes) -> None:
    assert key_slot(b"{" + tag + b"}" + rest) == key_slot(tag)
    assert key_slot(rest.replace(b"{", b"") + b"{" + tag + b"}") == key_slot(tag)


def test_slot_tags_table() -> None:
    tags = slot_tags()
    assert len(tags) == SLOTS
    assert all(len(t) == 3 and t.isalnum() and t.isascii() for t in tags)
    assert all(key_slot(t.encode()) == slot for slot, t in enumerate(tags))
    # The earlier tool's data/cluster_slot_mapping.txt, reproduced.
    assert tags[:3] == ["fHh", "d9C", "aVD"]
    assert tags[16383] == "apX"
    assert tag_for_slot(1) == "d9C"
    tags[0] = "mutated"
    assert slot_tags()[0] == "fHh"  # every call gets its own list


@pytest.mark.parametrize("slot", [-1, SLOTS])
def test_tag_for_slot_range(slot: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        tag_for_slot(slot)


def test_slots_module_is_pure() -> None:
    tree = ast.parse(inspect.getsource(client.slots))
    modules = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m.split(".")[0] for m in modules} & {"trio", "anyio", "socket", "ssl"}
