"""Unit tests for client.topology: captured CLUSTER SHARDS/SLOTS/NODES replies and edge cases.

The captured replies come from a real 3-master/3-replica TLS cluster (redis-server 7.0.15,
``port 0``, ``tls-port N``, ``tls-cluster yes``), in RESP2 and RESP3, in four states:

- PLAIN: a freshly created cluster (preferred endpoint = IP);
- HOSTNAME_ENDPOINT: ``cluster-announce-hostname nodeN.example.test`` with
  ``cluster-preferred-endpoint-type hostname``;
- UNKNOWN_ENDPOINT: ``cluster-preferred-endpoint-type unknown-endpoint``;
- EDGE: slot 0 moved to the second master (two ranges each), slot 100 deleted (unassigned),
  the third master's replica killed (``fail``).

The 40-character node IDs are shortened to names; everything else is as the server sent it.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client.topology as topology_module
from client.errors import RedisToolkitError
from client.topology import (
    SLOT_COUNT,
    Node,
    Topology,
    parse_cluster_nodes,
    parse_cluster_shards,
    parse_cluster_slots,
    parse_redirect,
)
from client.values import Attributed, ErrorReply, RespMap, RespValue, Verbatim

# fmt: off
# -- captured replies -----------------------------------------------------------------------------

M1 = b'baa920b2340fd2b81a623f7afaae62d5701b56f1'
R1 = b'a90252995d06445b02757607e6b351323c3b04bf'
M2 = b'413c67ab8a83299502bb1f138c84649f633e759a'
R2 = b'1f85eca6cac6990aec0001f2be343ec406c02080'
M3 = b'018f006e78014d5938d00ede50e963062bcd8477'
R3 = b'fad977cb44a67cc06b75f9c7f5b00091f8b1ccb0'

PLAIN_SHARDS_RESP2 = [
    [
        b'slots', [5461, 10922],
        b'nodes', [
            [
                b'id', M2,
                b'tls-port', 35608,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'master',
                b'replication-offset', 70,
                b'health', b'online',
            ],
            [
                b'id', R2,
                b'tls-port', 48222,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'replica',
                b'replication-offset', 70,
                b'health', b'online',
            ],
        ],
    ],
    [
        b'slots', [10923, 16383],
        b'nodes', [
            [
                b'id', M3,
                b'tls-port', 37671,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'master',
                b'replication-offset', 70,
                b'health', b'online',
            ],
            [
                b'id', R3,
                b'tls-port', 44967,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'replica',
                b'replication-offset', 70,
                b'health', b'online',
            ],
        ],
    ],
    [
        b'slots', [0, 5460],
        b'nodes', [
            [
                b'id', M1,
                b'tls-port', 48300,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'master',
                b'replication-offset', 70,
                b'health', b'online',
            ],
            [
                b'id', R1,
                b'tls-port', 44477,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'replica',
                b'replication-offset', 70,
                b'health', b'online',
            ],
        ],
    ],
]

PLAIN_SHARDS_RESP3 = [
    RespMap([
        (b'slots', [5461, 10922]),
        (b'nodes', [
            RespMap([
                (b'id', M2),
                (b'tls-port', 35608),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'127.0.0.1'),
                (b'role', b'master'),
                (b'replication-offset', 70),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R2),
                (b'tls-port', 48222),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'127.0.0.1'),
                (b'role', b'replica'),
                (b'replication-offset', 70),
                (b'health', b'online'),
            ]),
        ]),
    ]),
    RespMap([
        (b'slots', [10923, 16383]),
        (b'nodes', [
            RespMap([
                (b'id', M3),
                (b'tls-port', 37671),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'127.0.0.1'),
                (b'role', b'master'),
                (b'replication-offset', 70),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R3),
                (b'tls-port', 44967),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'127.0.0.1'),
                (b'role', b'replica'),
                (b'replication-offset', 70),
                (b'health', b'online'),
            ]),
        ]),
    ]),
    RespMap([
        (b'slots', [0, 5460]),
        (b'nodes', [
            RespMap([
                (b'id', M1),
                (b'tls-port', 48300),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'127.0.0.1'),
                (b'role', b'master'),
                (b'replication-offset', 70),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R1),
                (b'tls-port', 44477),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'127.0.0.1'),
                (b'role', b'replica'),
                (b'replication-offset', 70),
                (b'health', b'online'),
            ]),
        ]),
    ]),
]

PLAIN_SLOTS_RESP2 = [
    [0, 5460, [b'127.0.0.1', 48300, M1, []], [b'127.0.0.1', 44477, R1, []]],
    [5461, 10922, [b'127.0.0.1', 35608, M2, []], [b'127.0.0.1', 48222, R2, []]],
    [10923, 16383, [b'127.0.0.1', 37671, M3, []], [b'127.0.0.1', 44967, R3, []]],
]

PLAIN_SLOTS_RESP3 = [
    [0, 5460, [b'127.0.0.1', 48300, M1, RespMap([])], [b'127.0.0.1', 44477, R1, RespMap([])]],
    [
        5461,
        10922,
        [b'127.0.0.1', 35608, M2, RespMap([])],
        [b'127.0.0.1', 48222, R2, RespMap([])],
    ],
    [
        10923,
        16383,
        [b'127.0.0.1', 37671, M3, RespMap([])],
        [b'127.0.0.1', 44967, R3, RespMap([])],
    ],
]

PLAIN_NODES_RESP2 = (
    b'413c67ab8a83299502bb1f138c84649f633e759a 127.0.0.1:35608@45608 master - 0 '
    b'1795664554017 2 connected 5461-10922\n'
    b'018f006e78014d5938d00ede50e963062bcd8477 127.0.0.1:37671@47671 master - 0 '
    b'1795664553815 3 connected 10923-16383\n'
    b'fad977cb44a67cc06b75f9c7f5b00091f8b1ccb0 127.0.0.1:44967@54967 slave '
    b'018f006e78014d5938d00ede50e963062bcd8477 0 1795664553814 3 connected\n'
    b'a90252995d06445b02757607e6b351323c3b04bf 127.0.0.1:44477@54477 slave '
    b'baa920b2340fd2b81a623f7afaae62d5701b56f1 0 1795664554219 1 connected\n'
    b'baa920b2340fd2b81a623f7afaae62d5701b56f1 127.0.0.1:48300@58300 myself,master - 0 '
    b'1795664553000 1 connected 0-5460\n'
    b'1f85eca6cac6990aec0001f2be343ec406c02080 127.0.0.1:48222@58222 slave '
    b'413c67ab8a83299502bb1f138c84649f633e759a 0 1795664554219 2 connected\n'
)

PLAIN_NODES_RESP3 = Verbatim(
    b'txt',
    (
        b'413c67ab8a83299502bb1f138c84649f633e759a 127.0.0.1:35608@45608 master - 0 '
        b'1795664554017 2 connected 5461-10922\n'
        b'018f006e78014d5938d00ede50e963062bcd8477 127.0.0.1:37671@47671 master - 0 '
        b'1795664553815 3 connected 10923-16383\n'
        b'fad977cb44a67cc06b75f9c7f5b00091f8b1ccb0 127.0.0.1:44967@54967 slave '
        b'018f006e78014d5938d00ede50e963062bcd8477 0 1795664553814 3 connected\n'
        b'a90252995d06445b02757607e6b351323c3b04bf 127.0.0.1:44477@54477 slave '
        b'baa920b2340fd2b81a623f7afaae62d5701b56f1 0 1795664554219 1 connected\n'
        b'baa920b2340fd2b81a623f7afaae62d5701b56f1 127.0.0.1:48300@58300 myself,master - 0 '
        b'1795664553000 1 connected 0-5460\n'
        b'1f85eca6cac6990aec0001f2be343ec406c02080 127.0.0.1:48222@58222 slave '
        b'413c67ab8a83299502bb1f138c84649f633e759a 0 1795664554219 2 connected\n'
    ),
)

HOSTNAME_ENDPOINT_SHARDS_RESP3 = [
    RespMap([
        (b'slots', [5461, 10922]),
        (b'nodes', [
            RespMap([
                (b'id', M2),
                (b'tls-port', 35608),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'node1.example.test'),
                (b'hostname', b'node1.example.test'),
                (b'role', b'master'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R2),
                (b'tls-port', 48222),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'node5.example.test'),
                (b'hostname', b'node5.example.test'),
                (b'role', b'replica'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
        ]),
    ]),
    RespMap([
        (b'slots', [10923, 16383]),
        (b'nodes', [
            RespMap([
                (b'id', M3),
                (b'tls-port', 37671),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'node2.example.test'),
                (b'hostname', b'node2.example.test'),
                (b'role', b'master'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R3),
                (b'tls-port', 44967),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'node3.example.test'),
                (b'hostname', b'node3.example.test'),
                (b'role', b'replica'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
        ]),
    ]),
    RespMap([
        (b'slots', [0, 5460]),
        (b'nodes', [
            RespMap([
                (b'id', M1),
                (b'tls-port', 48300),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'node0.example.test'),
                (b'hostname', b'node0.example.test'),
                (b'role', b'master'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R1),
                (b'tls-port', 44477),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b'node4.example.test'),
                (b'hostname', b'node4.example.test'),
                (b'role', b'replica'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
        ]),
    ]),
]

HOSTNAME_ENDPOINT_SLOTS_RESP2 = [
    [
        0,
        5460,
        [b'node0.example.test', 48300, M1, [b'ip', b'127.0.0.1']],
        [b'node4.example.test', 44477, R1, [b'ip', b'127.0.0.1']],
    ],
    [
        5461,
        10922,
        [b'node1.example.test', 35608, M2, [b'ip', b'127.0.0.1']],
        [b'node5.example.test', 48222, R2, [b'ip', b'127.0.0.1']],
    ],
    [
        10923,
        16383,
        [b'node2.example.test', 37671, M3, [b'ip', b'127.0.0.1']],
        [b'node3.example.test', 44967, R3, [b'ip', b'127.0.0.1']],
    ],
]

HOSTNAME_ENDPOINT_NODES_RESP2 = (
    b'413c67ab8a83299502bb1f138c84649f633e759a '
    b'127.0.0.1:35608@45608,node1.example.test master - 0 1795664556831 2 connected '
    b'5461-10922\n'
    b'018f006e78014d5938d00ede50e963062bcd8477 '
    b'127.0.0.1:37671@47671,node2.example.test master - 0 1795664556831 3 connected '
    b'10923-16383\n'
    b'fad977cb44a67cc06b75f9c7f5b00091f8b1ccb0 '
    b'127.0.0.1:44967@54967,node3.example.test slave '
    b'018f006e78014d5938d00ede50e963062bcd8477 0 1795664556530 3 connected\n'
    b'a90252995d06445b02757607e6b351323c3b04bf '
    b'127.0.0.1:44477@54477,node4.example.test slave '
    b'baa920b2340fd2b81a623f7afaae62d5701b56f1 0 1795664556731 1 connected\n'
    b'baa920b2340fd2b81a623f7afaae62d5701b56f1 '
    b'127.0.0.1:48300@58300,node0.example.test myself,master - 0 1795664556000 1 '
    b'connected 0-5460\n'
    b'1f85eca6cac6990aec0001f2be343ec406c02080 '
    b'127.0.0.1:48222@58222,node5.example.test slave '
    b'413c67ab8a83299502bb1f138c84649f633e759a 0 1795664556530 2 connected\n'
)

UNKNOWN_ENDPOINT_SHARDS_RESP3 = [
    RespMap([
        (b'slots', [5461, 10922]),
        (b'nodes', [
            RespMap([
                (b'id', M2),
                (b'tls-port', 35608),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b''),
                (b'hostname', b'node1.example.test'),
                (b'role', b'master'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R2),
                (b'tls-port', 48222),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b''),
                (b'hostname', b'node5.example.test'),
                (b'role', b'replica'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
        ]),
    ]),
    RespMap([
        (b'slots', [10923, 16383]),
        (b'nodes', [
            RespMap([
                (b'id', M3),
                (b'tls-port', 37671),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b''),
                (b'hostname', b'node2.example.test'),
                (b'role', b'master'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R3),
                (b'tls-port', 44967),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b''),
                (b'hostname', b'node3.example.test'),
                (b'role', b'replica'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
        ]),
    ]),
    RespMap([
        (b'slots', [0, 5460]),
        (b'nodes', [
            RespMap([
                (b'id', M1),
                (b'tls-port', 48300),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b''),
                (b'hostname', b'node0.example.test'),
                (b'role', b'master'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
            RespMap([
                (b'id', R1),
                (b'tls-port', 44477),
                (b'ip', b'127.0.0.1'),
                (b'endpoint', b''),
                (b'hostname', b'node4.example.test'),
                (b'role', b'replica'),
                (b'replication-offset', 98),
                (b'health', b'online'),
            ]),
        ]),
    ]),
]

UNKNOWN_ENDPOINT_SLOTS_RESP2 = [
    [
        0,
        5460,
        [None, 48300, M1, [b'ip', b'127.0.0.1', b'hostname', b'node0.example.test']],
        [None, 44477, R1, [b'ip', b'127.0.0.1', b'hostname', b'node4.example.test']],
    ],
    [
        5461,
        10922,
        [None, 35608, M2, [b'ip', b'127.0.0.1', b'hostname', b'node1.example.test']],
        [None, 48222, R2, [b'ip', b'127.0.0.1', b'hostname', b'node5.example.test']],
    ],
    [
        10923,
        16383,
        [None, 37671, M3, [b'ip', b'127.0.0.1', b'hostname', b'node2.example.test']],
        [None, 44967, R3, [b'ip', b'127.0.0.1', b'hostname', b'node3.example.test']],
    ],
]

EDGE_SHARDS_RESP2 = [
    [
        b'slots', [1, 99, 101, 5460],
        b'nodes', [
            [
                b'id', M1,
                b'tls-port', 48300,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'master',
                b'replication-offset', 168,
                b'health', b'online',
            ],
            [
                b'id', R1,
                b'tls-port', 44477,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'replica',
                b'replication-offset', 168,
                b'health', b'online',
            ],
        ],
    ],
    [
        b'slots', [0, 0, 5461, 10922],
        b'nodes', [
            [
                b'id', M2,
                b'tls-port', 35608,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'master',
                b'replication-offset', 168,
                b'health', b'online',
            ],
            [
                b'id', R2,
                b'tls-port', 48222,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'replica',
                b'replication-offset', 168,
                b'health', b'online',
            ],
        ],
    ],
    [
        b'slots', [10923, 16383],
        b'nodes', [
            [
                b'id', M3,
                b'tls-port', 37671,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'master',
                b'replication-offset', 140,
                b'health', b'online',
            ],
            [
                b'id', R3,
                b'tls-port', 44967,
                b'ip', b'127.0.0.1',
                b'endpoint', b'127.0.0.1',
                b'role', b'replica',
                b'replication-offset', 140,
                b'health', b'fail',
            ],
        ],
    ],
]

EDGE_SLOTS_RESP3 = [
    [0, 0, [b'127.0.0.1', 35608, M2, RespMap([])], [b'127.0.0.1', 48222, R2, RespMap([])]],
    [1, 99, [b'127.0.0.1', 48300, M1, RespMap([])], [b'127.0.0.1', 44477, R1, RespMap([])]],
    [
        101,
        5460,
        [b'127.0.0.1', 48300, M1, RespMap([])],
        [b'127.0.0.1', 44477, R1, RespMap([])],
    ],
    [
        5461,
        10922,
        [b'127.0.0.1', 35608, M2, RespMap([])],
        [b'127.0.0.1', 48222, R2, RespMap([])],
    ],
    [10923, 16383, [b'127.0.0.1', 37671, M3, RespMap([])]],
]

EDGE_NODES_RESP3 = Verbatim(
    b'txt',
    (
        b'fad977cb44a67cc06b75f9c7f5b00091f8b1ccb0 127.0.0.1:44967@54967 slave,fail '
        b'018f006e78014d5938d00ede50e963062bcd8477 1795664559643 1795664559141 3 '
        b'disconnected\n'
        b'baa920b2340fd2b81a623f7afaae62d5701b56f1 127.0.0.1:48300@58300 master - 0 '
        b'1795664561051 1 connected 1-99 101-5460\n'
        b'413c67ab8a83299502bb1f138c84649f633e759a 127.0.0.1:35608@45608 myself,master - 0 '
        b'1795664561000 2 connected 0 5461-10922\n'
        b'a90252995d06445b02757607e6b351323c3b04bf 127.0.0.1:44477@54477 slave '
        b'baa920b2340fd2b81a623f7afaae62d5701b56f1 0 1795664561152 1 connected\n'
        b'018f006e78014d5938d00ede50e963062bcd8477 127.0.0.1:37671@47671 master - 0 '
        b'1795664560890 3 connected 10923-16383\n'
        b'1f85eca6cac6990aec0001f2be343ec406c02080 127.0.0.1:48222@58222 slave '
        b'413c67ab8a83299502bb1f138c84649f633e759a 0 1795664561152 2 connected\n'
    ),
)

MOVED_IP = b'MOVED 12182 127.0.0.1:37671'

MOVED_HOSTNAME = b'MOVED 12182 node2.example.test:37671'

MOVED_UNKNOWN = b'MOVED 12182 :37671'
# fmt: on


# -- expectations ------------------------------------------------------------------------------

ID = {
    k: v.decode() for k, v in {"M1": M1, "R1": R1, "M2": M2, "R2": R2, "M3": M3, "R3": R3}.items()
}
PORT = {"M1": 48300, "R1": 44477, "M2": 35608, "R2": 48222, "M3": 37671, "R3": 44967}
HOSTNAME = {
    "M1": "node0.example.test",
    "M2": "node1.example.test",
    "M3": "node2.example.test",
    "R3": "node3.example.test",
    "R1": "node4.example.test",
    "R2": "node5.example.test",
}
MASTER_OF = {"R1": "M1", "R2": "M2", "R3": "M3"}
PLAIN_SLOTS = {"M1": ((0, 5460),), "M2": ((5461, 10922),), "M3": ((10923, 16383),)}
EDGE_SLOTS = {"M1": ((1, 99), (101, 5460)), "M2": ((0, 0), (5461, 10922)), "M3": ((10923, 16383),)}
ORDER = ("M1", "R1", "M2", "R2", "M3", "R3")
EDGE_ORDER = ("M2", "R2", "M1", "R1", "M3", "R3")  # masters by their first slot

Shape = tuple[str, str, int, str, "str | None", tuple[tuple[int, int], ...]]


def shape(node: Node) -> Shape:
    return (node.id, node.host, node.port, node.role, node.master_id, node.slots)


def expected(names: tuple[str, ...], slots: dict[str, tuple[tuple[int, int], ...]], host: object):
    out = []
    for name in names:
        dial = host(name) if callable(host) else host
        master = MASTER_OF.get(name)
        out.append(
            (
                ID[name],
                dial,
                PORT[name],
                "replica" if master else "master",
                ID[master] if master else None,
                slots.get(name, ()),
            )
        )
    return out


def hostname_of(name: str) -> str:
    return HOSTNAME[name]


PARSERS = {
    "shards": parse_cluster_shards,
    "slots": parse_cluster_slots,
    "nodes": parse_cluster_nodes,
}

CASES = [
    # (reply, parser, expected order, slots, dial host)
    (PLAIN_SHARDS_RESP2, "shards", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (PLAIN_SHARDS_RESP3, "shards", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (PLAIN_SLOTS_RESP2, "slots", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (PLAIN_SLOTS_RESP3, "slots", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (PLAIN_NODES_RESP2, "nodes", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (PLAIN_NODES_RESP3, "nodes", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (HOSTNAME_ENDPOINT_SHARDS_RESP3, "shards", ORDER, PLAIN_SLOTS, hostname_of),
    (HOSTNAME_ENDPOINT_SLOTS_RESP2, "slots", ORDER, PLAIN_SLOTS, hostname_of),
    # CLUSTER NODES always shows the IP; the hostname rides along after the comma.
    (HOSTNAME_ENDPOINT_NODES_RESP2, "nodes", ORDER, PLAIN_SLOTS, "127.0.0.1"),
    (UNKNOWN_ENDPOINT_SHARDS_RESP3, "shards", ORDER, PLAIN_SLOTS, ""),
    (UNKNOWN_ENDPOINT_SLOTS_RESP2, "slots", ORDER, PLAIN_SLOTS, ""),
    (EDGE_SHARDS_RESP2, "shards", EDGE_ORDER, EDGE_SLOTS, "127.0.0.1"),
    # CLUSTER SLOTS leaves the failed replica out.
    (EDGE_SLOTS_RESP3, "slots", EDGE_ORDER[:-1], EDGE_SLOTS, "127.0.0.1"),
    (EDGE_NODES_RESP3, "nodes", EDGE_ORDER, EDGE_SLOTS, "127.0.0.1"),
]
CASE_IDS = [
    "plain-shards-2",
    "plain-shards-3",
    "plain-slots-2",
    "plain-slots-3",
    "plain-nodes-2",
    "plain-nodes-3",
    "hostname-shards-3",
    "hostname-slots-2",
    "hostname-nodes-2",
    "unknown-shards-3",
    "unknown-slots-2",
    "edge-shards-2",
    "edge-slots-3",
    "edge-nodes-3",
]


@pytest.mark.parametrize(("reply", "parser", "order", "slots", "host"), CASES, ids=CASE_IDS)
def test_captured_replies(
    reply: RespValue, parser: str, order: tuple[str, ...], slots: dict, host: object
) -> None:
    topo = PARSERS[parser](reply)
    assert topo.source == parser
    assert [shape(n) for n in topo.nodes] == expected(order, slots, host)
    assert [n.id for n in topo.masters()] == [ID[n] for n in order if n.startswith("M")]
    for node in topo.nodes:
        assert node.ip == "127.0.0.1"


def test_plain_cluster_routing() -> None:
    topo = parse_cluster_shards(PLAIN_SHARDS_RESP3)
    assert topo.covered()
    assert topo.unassigned() == ()
    m1, m2, m3 = topo.masters()
    for slot, owner in ((0, m1), (5460, m1), (5461, m2), (10922, m2), (10923, m3), (16383, m3)):
        assert topo.slot_owner(slot) is owner
    assert topo.replicas_of(m1) == (topo.node_by_id(ID["R1"]),)
    assert topo.replicas_of(ID["M3"]) == (topo.node_by_id(ID["R3"]),)
    assert topo.replicas_of("no-such-id") == ()
    assert [n.id for n in topo.replicas()] == [ID["R1"], ID["R2"], ID["R3"]]
    assert topo.node_by_address("127.0.0.1", PORT["M2"]) is m2
    assert topo.node_by_address("127.0.0.1", 1) is None
    assert topo.node_by_id("nope") is None
    assert topo.ranges(m3) == ((10923, 16383),)
    assert m1.address == f"127.0.0.1:{PORT['M1']}"
    assert m1.is_master
    assert not m1.failed
    # The captured TLS cluster reports only tls-port (port 0 is left out): that is the port.
    assert m1.tls_port == m1.port == PORT["M1"]


def test_edge_cluster_multiple_ranges_unassigned_and_failed() -> None:
    for topo in (parse_cluster_shards(EDGE_SHARDS_RESP2), parse_cluster_nodes(EDGE_NODES_RESP3)):
        m2 = topo.node_by_id(ID["M2"])
        m1 = topo.node_by_id(ID["M1"])
        assert m1 is not None
        assert m2 is not None
        assert topo.ranges(m2) == ((0, 0), (5461, 10922))
        assert topo.ranges(ID["M1"]) == ((1, 99), (101, 5460))
        assert topo.slot_owner(0) is m2
        assert topo.slot_owner(1) is m1
        assert topo.slot_owner(100) is None
        assert topo.slot_owner(101) is m1
        assert not topo.covered()
        assert topo.unassigned() == ((100, 100),)
        r3 = topo.node_by_id(ID["R3"])
        assert r3 is not None
        assert r3.failed
        assert r3.health == "fail"
        assert topo.replicas_of(ID["M3"]) == (r3,)
    slots_topo = parse_cluster_slots(EDGE_SLOTS_RESP3)
    assert slots_topo.node_by_id(ID["R3"]) is None
    assert slots_topo.unassigned() == ((100, 100),)


def test_hostnames_and_ips_are_kept_apart() -> None:
    shards = parse_cluster_shards(HOSTNAME_ENDPOINT_SHARDS_RESP3)
    slots = parse_cluster_slots(HOSTNAME_ENDPOINT_SLOTS_RESP2)
    nodes = parse_cluster_nodes(HOSTNAME_ENDPOINT_NODES_RESP2)
    for topo in (shards, slots, nodes):
        for name, node_id in ID.items():
            node = topo.node_by_id(node_id)
            assert node is not None
            assert node.hostname == HOSTNAME[name]
            assert node.ip == "127.0.0.1"
            # Found by endpoint, IP or hostname alike.
            assert topo.node_by_address(HOSTNAME[name], PORT[name]) is node
            assert topo.node_by_address("127.0.0.1", PORT[name]) is node
    assert shards.node_by_id(ID["M1"]).host == "node0.example.test"  # type: ignore[union-attr]
    assert nodes.node_by_id(ID["M1"]).host == "127.0.0.1"  # type: ignore[union-attr]


def test_unknown_endpoint_leaves_the_host_empty_for_the_caller() -> None:
    for topo in (
        parse_cluster_shards(UNKNOWN_ENDPOINT_SHARDS_RESP3),
        parse_cluster_slots(UNKNOWN_ENDPOINT_SLOTS_RESP2),
    ):
        for node in topo.nodes:
            assert node.host == ""
            assert node.ip == "127.0.0.1"
            assert node.hostname is not None
        m3 = topo.node_by_id(ID["M3"])
        # MOVED from such a cluster has an empty host, and finds the node by port.
        _kind, slot, host, port = parse_redirect(MOVED_UNKNOWN)  # type: ignore[misc]
        assert topo.node_by_address(host, port) is m3
        assert topo.slot_owner(slot) is m3


def test_sources_agree() -> None:
    def core(topo: Topology) -> list[tuple[str, int, str, str | None, tuple[tuple[int, int], ...]]]:
        return [(n.id, n.port, n.role, n.master_id, n.slots) for n in topo.nodes]

    for group in (
        (PLAIN_SHARDS_RESP2, PLAIN_SHARDS_RESP3, PLAIN_SLOTS_RESP2, PLAIN_NODES_RESP3),
        (HOSTNAME_ENDPOINT_SHARDS_RESP3, HOSTNAME_ENDPOINT_SLOTS_RESP2),
    ):
        first, *rest = group
        reference = core(parse_cluster_shards(first))
        for reply in rest:
            parser = (
                parse_cluster_nodes
                if isinstance(reply, Verbatim)
                else (
                    parse_cluster_slots
                    if isinstance(reply[0], list) and isinstance(reply[0][0], int)
                    else parse_cluster_shards
                )
            )
            assert core(parser(reply)) == reference


def test_order_does_not_depend_on_reply_order() -> None:
    forward = parse_cluster_shards(PLAIN_SHARDS_RESP2)
    backward = parse_cluster_shards(list(reversed(PLAIN_SHARDS_RESP2)))
    assert forward == backward
    assert hash(forward) == hash(backward)
    lines = PLAIN_NODES_RESP2.splitlines(keepends=True)
    assert parse_cluster_nodes(b"".join(reversed(lines))) == parse_cluster_nodes(PLAIN_NODES_RESP2)
    assert forward != parse_cluster_shards(EDGE_SHARDS_RESP2)
    assert "3 masters, 3 replicas" in repr(forward)


# -- synthetic edge cases ----------------------------------------------------------------------


def shard_node(**fields: RespValue) -> RespMap:
    base: dict[str, RespValue] = {
        "id": b"a" * 40,
        "ip": b"10.0.0.1",
        "endpoint": b"10.0.0.1",
        "role": b"master",
        "replication-offset": 1,
        "health": b"online",
    }
    base.update({k.replace("_", "-"): v for k, v in fields.items()})
    return RespMap([(k.encode(), v) for k, v in base.items()])


def test_shards_port_choice() -> None:
    both = [RespMap([(b"slots", [0, 16383]), (b"nodes", [shard_node(port=7000, tls_port=7001)])])]
    assert parse_cluster_shards(both).nodes[0].port == 7001
    assert parse_cluster_shards(both, tls=True).nodes[0].tls_port == 7001
    assert parse_cluster_shards(both, tls=False).nodes[0].port == 7000
    only_tls = [RespMap([(b"slots", [0, 16383]), (b"nodes", [shard_node(port=0, tls_port=7001)])])]
    assert parse_cluster_shards(only_tls, tls=False).nodes[0].port == 7001
    plain = [RespMap([(b"slots", [0, 16383]), (b"nodes", [shard_node(port=7000)])])]
    node = parse_cluster_shards(plain).nodes[0]
    assert (node.port, node.tls_port) == (7000, None)


def test_shards_question_mark_endpoint_falls_back_to_ip() -> None:
    reply = [RespMap([(b"slots", [0, 16383]), (b"nodes", [shard_node(endpoint=b"?", port=1)])])]
    assert parse_cluster_shards(reply).nodes[0].host == "10.0.0.1"


def test_shards_failover_prefers_the_healthy_master_and_shardless_replica() -> None:
    old = shard_node(id=b"o" * 40, port=1, health=b"fail")
    new = shard_node(id=b"n" * 40, port=2)
    replica = shard_node(id=b"r" * 40, port=3, role=b"replica")
    topo = parse_cluster_shards(
        [RespMap([(b"slots", [0, 16383]), (b"nodes", [old, new, replica])])]
    )
    assert topo.slot_owner(0).id == "n" * 40  # type: ignore[union-attr]
    assert topo.node_by_id("o" * 40).slots == ()  # type: ignore[union-attr]
    assert topo.node_by_id("r" * 40).master_id == "n" * 40  # type: ignore[union-attr]
    orphan = parse_cluster_shards([RespMap([(b"slots", []), (b"nodes", [replica])])])
    assert orphan.nodes[0].master_id is None
    assert not orphan.covered()
    assert orphan.unassigned() == ((0, 16383),)


def test_shards_accepts_slot_pairs_and_attributes() -> None:
    reply = Attributed(
        RespMap([]),
        [RespMap([(b"slots", [[0, 10], [11, 16383]]), (b"nodes", [shard_node(port=1)])])],
    )
    topo = parse_cluster_shards(reply)
    assert topo.nodes[0].slots == ((0, 16383),)
    assert topo.covered()


NODES_EDGE_TEXT = (
    # 7.2+ style: hostname then aux fields; empty hostname; IPv6; noaddr; handshake; fail?
    b"aaaa 10.0.0.1:7000@17000,host-a,tls-port=7100,shard-id=xyz myself,master - 0 0 1 "
    b"connected 0-100 200 [300->-bbbb] [301-<-cccc]\n"
    b"bbbb 10.0.0.2:7000@17000,,shard-id=xyz slave,fail? aaaa 0 0 1 connected\n"
    b"cccc ::1:7002@17002 master - 0 0 2 connected 101-199 201-16383\n"
    b"dddd :0@0 master,noaddr - 0 0 3 disconnected\n"
    b"eeee 10.0.0.9:7009@17009 handshake - 0 0 0 disconnected\n"
    b"ffff 10.0.0.3:7000@17000,hostname=host-f slave cccc 0 0 2 connected\n"
    b"\n"
)


def test_nodes_edge_cases() -> None:
    topo = parse_cluster_nodes(NODES_EDGE_TEXT)
    assert [n.id for n in topo.nodes] == ["aaaa", "bbbb", "cccc", "ffff", "dddd"]
    a = topo.node_by_id("aaaa")
    assert a is not None
    assert (a.host, a.port, a.hostname, a.tls_port) == ("10.0.0.1", 7000, "host-a", 7100)
    assert a.slots == ((0, 100), (200, 200))  # migration markers are not ownership
    b = topo.node_by_id("bbbb")
    assert b is not None
    assert (b.role, b.master_id, b.hostname, b.health) == ("replica", "aaaa", None, "pfail")
    c = topo.node_by_id("cccc")
    assert c is not None
    assert (c.host, c.port, c.address) == ("::1", 7002, "[::1]:7002")
    assert topo.node_by_address("[::1]", 7002) is c
    d = topo.node_by_id("dddd")
    assert d is not None
    assert (d.host, d.port, d.ip, d.slots) == ("", 0, None, ())
    f = topo.node_by_id("ffff")
    assert f is not None
    assert f.hostname == "host-f"
    assert topo.covered()
    assert topo.slot_owner(300) is c


def test_nodes_accepts_bulk_verbatim_and_simple_string_wrappers() -> None:
    line = b"aaaa 10.0.0.1:7000@17000 master - 0 0 1 connected 0-16383\n"
    for reply in (line, Verbatim(b"txt", line), Attributed(RespMap([]), line)):
        assert parse_cluster_nodes(reply).covered()


@pytest.mark.parametrize(
    ("parser", "reply", "words"),
    [
        (parse_cluster_shards, ErrorReply(b"ERR unknown subcommand 'SHARDS'"), "SHARDS failed"),
        (
            parse_cluster_slots,
            ErrorReply(b"ERR This instance has cluster support disabled"),
            "SLOTS",
        ),
        (parse_cluster_nodes, ErrorReply(b"ERR nope"), "NODES failed"),
        (parse_cluster_shards, 5, "expected an array"),
        (parse_cluster_shards, [[b"slots", [0]]], "odd number"),
        (parse_cluster_shards, [[b"slots", [0, 16384], b"nodes", []]], "bad slot range"),
        (parse_cluster_shards, [[b"slots"]], "expected a map"),
        (parse_cluster_shards, [[b"slots", [], b"nodes", [[b"ip", b"x"]]]], "'id'"),
        (parse_cluster_slots, [[0, 1]], "at least 3"),
        (parse_cluster_slots, [[0, 1, [b"h"]]], "at least 2"),
        (parse_cluster_slots, [[5, 1, [b"h", 1, b"id"]]], "bad slot range"),
        (parse_cluster_slots, [[0, 1, [b"h", b"x", b"id"]]], "expected an integer"),
        (parse_cluster_nodes, b"aaaa 10.0.0.1:7000 master\n", "line 1"),
        (parse_cluster_nodes, b"aaaa nohost master - 0 0 1 connected\n", "bad address"),
        (parse_cluster_nodes, b"aaaa h:1@2 master - 0 0 1 connected 9-99999\n", "bad slot"),
        (parse_cluster_nodes, [b"x"], "expected a string"),
    ],
)
def test_unreadable_replies_raise_one_line_errors(
    parser: object, reply: RespValue, words: str
) -> None:
    with pytest.raises(RedisToolkitError) as info:
        parser(reply)  # type: ignore[operator]
    text = str(info.value)
    assert words in text
    assert "\n" not in text


# -- MOVED / ASK ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        (MOVED_IP, ("MOVED", 12182, "127.0.0.1", 37671)),
        (MOVED_HOSTNAME, ("MOVED", 12182, "node2.example.test", 37671)),
        (MOVED_UNKNOWN, ("MOVED", 12182, "", 37671)),
        (b"-MOVED 3999 :6380\r\n", ("MOVED", 3999, "", 6380)),
        (b"ASK 0 10.0.0.1:7000", ("ASK", 0, "10.0.0.1", 7000)),
        (b"-ASK 16383 ::1:7000", ("ASK", 16383, "::1", 7000)),
        (b"MOVED 1 [::1]:7000", ("MOVED", 1, "::1", 7000)),
        (b"MOVED 16384 h:1", None),
        (b"MOVED x h:1", None),
        (b"MOVED 1 h", None),
        (b"MOVED 1 h:", None),
        (b"MOVED 1 h:99999", None),
        (b"MOVED 1 h:1 extra", None),
        (b"ASKING 1 h:1", None),
        (b"ERR MOVED 1 h:1", None),
        (b"", None),
    ],
)
def test_parse_redirect(message: bytes, parsed: tuple[str, int, str, int] | None) -> None:
    assert parse_redirect(message) == parsed


# -- updates -------------------------------------------------------------------------------------


def test_with_slot_owner_moves_one_slot_and_keeps_the_original() -> None:
    topo = parse_cluster_shards(PLAIN_SHARDS_RESP2)
    m1, m2, _ = topo.masters()
    moved = topo.with_slot_owner(0, m2)
    assert moved.ranges(ID["M1"]) == ((1, 5460),)
    assert moved.ranges(ID["M2"]) == ((0, 0), (5461, 10922))
    assert moved.slot_owner(0).id == m2.id  # type: ignore[union-attr]
    assert moved.masters()[0].id == m2.id  # order follows the first slot
    assert topo.slot_owner(0) is m1  # unchanged
    assert moved.with_slot_owner(0, m2) is moved  # no-op
    back = moved.with_slot_owner(0, m1)
    assert back == topo
    mid = topo.with_slot_owner(100, m2)
    assert mid.ranges(ID["M1"]) == ((0, 99), (101, 5460))


def test_with_slot_owner_promotes_a_replica_and_accepts_new_nodes() -> None:
    topo = parse_cluster_shards(PLAIN_SHARDS_RESP2)
    r1 = topo.node_by_id(ID["R1"])
    assert r1 is not None
    promoted = topo.with_slot_owner(5, r1)
    node = promoted.node_by_id(ID["R1"])
    assert node is not None
    assert node.role == "master"
    assert node.master_id is None
    assert promoted.slot_owner(5) is node
    stranger = Node(id="z" * 40, host="10.9.9.9", port=7000)
    grown = topo.with_slot_owner(7, stranger)
    assert grown.slot_owner(7) == Node(id="z" * 40, host="10.9.9.9", port=7000, slots=((7, 7),))
    assert len(grown.nodes) == 7
    with pytest.raises(ValueError, match="out of range"):
        topo.with_slot_owner(SLOT_COUNT, stranger)


ranges_strategy = st.lists(st.integers(0, SLOT_COUNT - 1), min_size=0, max_size=12, unique=True)


@given(
    cuts=ranges_strategy,
    owners=st.lists(st.integers(0, 3), min_size=13, max_size=13),
    moves=st.lists(st.tuples(st.integers(0, SLOT_COUNT - 1), st.integers(0, 3)), max_size=5),
)
def test_slot_table_matches_ranges(
    cuts: list[int], owners: list[int], moves: list[tuple[int, int]]
) -> None:
    """Random partitions (owner 0 = unassigned): slot_owner, ranges and unassigned agree."""
    bounds = sorted({0, *cuts, SLOT_COUNT})
    spans = list(itertools.pairwise(bounds))
    per: dict[int, list[tuple[int, int]]] = {1: [], 2: [], 3: []}
    truth: list[int] = []
    for (start, stop), who in zip(spans, owners, strict=False):
        truth.extend([who] * (stop - start))
        if who:
            per[who].append((start, stop - 1))
    nodes = [
        Node(id=f"n{k}", host="10.0.0.1", port=7000 + k, slots=topology_module._normalise(v))
        for k, v in per.items()
    ]
    topo = Topology(nodes)
    for slot_, who in moves:
        if who:
            target = topo.node_by_id(f"n{who}")
            assert target is not None
            topo = topo.with_slot_owner(slot_, target)
            truth[slot_] = who
    for slot_ in range(0, SLOT_COUNT, 97):
        owner = topo.slot_owner(slot_)
        assert (owner.id if owner else None) == (f"n{truth[slot_]}" if truth[slot_] else None)
    covered = sum(end - start + 1 for n in topo.masters() for start, end in n.slots)
    free = sum(end - start + 1 for start, end in topo.unassigned())
    assert covered + free == SLOT_COUNT
    assert topo.covered() == (free == 0) == (0 not in truth)


def test_topology_module_is_pure() -> None:
    tree = ast.parse(Path(topology_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "anyio", "socket", "ssl", "asyncio"}


def test_slots_question_mark_and_missing_id() -> None:
    reply: RespValue = [
        [0, 16383, [b"?", 7000, b"a" * 40, [b"ip", b"10.0.0.5"]], [b"10.0.0.6", 7001]],
    ]
    topo = parse_cluster_slots(reply)
    master, replica = topo.nodes
    assert (master.host, master.ip, master.hostname) == ("10.0.0.5", "10.0.0.5", None)
    assert (replica.id, replica.host, replica.master_id) == ("10.0.0.6:7001", "10.0.0.6", "a" * 40)
