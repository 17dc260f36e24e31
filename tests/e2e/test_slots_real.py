"""key_slot against ``CLUSTER KEYSLOT`` of a real redis-server, for thousands of keys.

CLUSTER KEYSLOT needs ``cluster-enabled yes`` but no assigned slots, so one private
cluster-enabled node is enough. Keys are seeded-random: binary, braces in every arrangement,
empty tags, multi-byte text. One pipelined round trip per batch keeps the test fast.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from servers import RedisFactory, redis_py

from certs import CertPaths
from client.embedded import RedisNode
from client.slots import key_slot, slot_tags

pytestmark = pytest.mark.e2e

SEED = 0x51075
RANDOM_KEYS = 6000


@pytest.fixture(scope="module")
def cluster_node(
    tmp_path_factory: pytest.TempPathFactory, certs_dir: CertPaths
) -> Iterator[RedisNode]:
    factory = RedisFactory(tmp_path_factory.mktemp("keyslot"), certs_dir)
    # The node may get a port above 55535, where the default bus port (port + 10000) does
    # not exist: give it an explicit free bus port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        bus_port = sock.getsockname()[1]
    config = {"cluster-enabled": "yes", "cluster-port": str(bus_port)}
    try:
        yield factory.standalone(extra_config=config)
    finally:
        factory.close()


def _keyslots(node: RedisNode, keys: Sequence[bytes]) -> list[int]:
    client: Any = redis_py(node, protocol=2)
    out: list[int] = []
    try:
        conn = client.connection_pool.get_connection()
        try:
            for start in range(0, len(keys), 1000):
                chunk = keys[start : start + 1000]
                conn.send_packed_command(
                    conn.pack_commands([(b"CLUSTER", b"KEYSLOT", key) for key in chunk])
                )
                out.extend(int(conn.read_response()) for _ in chunk)
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()
    return out


_PIECES = [b"{", b"}", b"{}", b"}{", b"user", b"a", b"", b"\x00", b"\xff", "é".encode()]


def _random_keys(rng: random.Random) -> Iterator[bytes]:
    for i in range(RANDOM_KEYS):
        shape = i % 4
        if shape == 0:  # arbitrary binary, brace-heavy
            yield bytes(rng.choice(b"{}ab\x00\xff:") for _ in range(rng.randint(0, 12)))
        elif shape == 1:  # concatenated pieces: nested, empty and unbalanced tags
            yield b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8)))
        elif shape == 2:  # a realistic tagged key
            tag = rng.randbytes(rng.randint(0, 6))
            yield b"user:" + b"{" + tag + b"}" + b":" + str(rng.randint(0, 10**6)).encode()
        else:  # plain random bytes of any length
            yield rng.randbytes(rng.randint(0, 40))


FIXED = [
    b"",
    b"123456789",
    b"foo",
    b"{user}:profile",
    b"key{tag}",
    b"{}",
    b"{}x",
    b"{user",
    b"user}",
    b"}{user}",
    b"{first}{second}",
    b"a{}{b}",
    b"{{}}",
    b"{{a}}",
    b"{\x00}",
    b"x" * 10_000,
]


def test_fixed_keys_match_cluster_keyslot(cluster_node: RedisNode) -> None:
    assert [key_slot(k) for k in FIXED] == _keyslots(cluster_node, FIXED)


def test_random_keys_match_cluster_keyslot(cluster_node: RedisNode) -> None:
    keys = list(_random_keys(random.Random(SEED)))
    expected = _keyslots(cluster_node, keys)
    wrong = [(k, key_slot(k), s) for k, s in zip(keys, expected, strict=True) if key_slot(k) != s]
    assert not wrong, f"{len(wrong)} keys differ, first: {wrong[:5]}"
    assert len(set(expected)) > 1000  # the keys really spread over the slots


def test_slot_tags_hash_to_their_slot_on_the_server(cluster_node: RedisNode) -> None:
    tags = slot_tags()
    rng = random.Random(SEED)
    slots = [*sorted(rng.sample(range(len(tags)), 2000)), 0, 16383]
    keys = [b"{" + tags[s].encode() + b"}:" + str(s).encode() for s in slots]
    assert _keyslots(cluster_node, keys) == slots
