"""The pinned cluster tunnel (``tunn -c --tunnel-mode pinned``) against a real TLS cluster.

One listener per node, masters and replicas; replies that name nodes (CLUSTER SLOTS, SHARDS,
NODES, REPLICAS, MOVED/ASK) come back with listener addresses and are otherwise identical;
user data never changes. Real cluster clients (redis-py 2/3, redis-cli -c, redis-benchmark
--cluster) work unchanged, also through a slot migration and a master failover (private
clusters from ``redis_factory``).
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
import redis.cluster
from tunnel_process import TIMEOUT, Raw, Tunnel, pinned_args, redis_benchmark

from client.embedded import LocalCluster, RedisNode
from client.resp import RespParser, encode_command
from client.slots import key_slot

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture(scope="module")
def pinned(redis_cluster: LocalCluster) -> Iterator[Tunnel]:
    t = Tunnel(pinned_args(redis_cluster), password=redis_cluster.password)
    try:
        yield t
    finally:
        assert t.stop() == 0, t.stderr


# -- raw access: through a listener (plaintext) and directly to a node (TLS) ---------------------


def parse(frame: bytes) -> Any:
    parser = RespParser()
    parser.feed(frame)
    return parser.next_value()


def slots_of(node: RedisNode) -> list[Any]:
    reply = node.call("CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    return reply


def master_for_slot(cluster: LocalCluster, slot: int) -> RedisNode:
    for start, end, master, *_ in slots_of(cluster.seed):
        if start <= slot <= end:
            return cluster.node_by_port(int(master[1]))
    raise AssertionError(f"slot {slot} unassigned")


def key_on(node: RedisNode, cluster: LocalCluster, prefix: str) -> str:
    for i in range(100_000):
        key = f"{prefix}:{i}"
        if master_for_slot(cluster, key_slot(key.encode())) is node:
            return key
    raise AssertionError("no key found")


def rc(port: int, protocol: int = 2, **kw: Any) -> redis.cluster.RedisCluster:
    options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
    options.update(kw)
    return redis.cluster.RedisCluster(host="127.0.0.1", port=port, protocol=protocol, **options)


# -- the listener table -------------------------------------------------------------------------


def test_one_listener_per_node_masters_and_replicas(
    pinned: Tunnel, redis_cluster: LocalCluster
) -> None:
    redis_cluster.refresh_roles()
    assert len(pinned.table) == len(redis_cluster.nodes) == 6
    for node in redis_cluster.nodes:
        local = pinned.port_for(node)
        assert f"127.0.0.1:{local} -> {node.address} ({node.role})" in pinned.table
    assert len(set(pinned.local.values())) == 6
    assert all(
        local != node.port for node in redis_cluster.nodes for local in [pinned.local[node.port]]
    )


def test_port_base_numbers_listeners_by_host_and_port(redis_cluster: LocalCluster) -> None:
    base = 0
    for candidate in range(21000, 60000, 97):
        socks = []
        try:
            for port in range(candidate, candidate + 6):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            base = candidate
            break
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    assert base
    t = Tunnel(
        pinned_args(redis_cluster, "--port-base", str(base)), password=redis_cluster.password
    )
    try:
        ordered = sorted(redis_cluster.nodes, key=lambda n: (n.host, n.port))
        assert [t.port_for(n) for n in ordered] == list(range(base, base + 6))
    finally:
        assert t.stop() == 0


# -- real clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_cluster_client(pinned: Tunnel, protocol: int) -> None:
    port = next(iter(pinned.local.values()))
    client = rc(port, protocol)
    try:
        nodes = {(n.host, n.port) for n in client.get_nodes()}  # type: ignore[no-untyped-call]
        assert nodes == {("127.0.0.1", p) for p in pinned.local.values()}
        for i in range(300):
            client.set(f"pin:{protocol}:{i}", i)
        got = [client.get(f"pin:{protocol}:{i}") for i in range(300)]
        assert [int(cast("bytes", g)) for g in got] == list(range(300))
        pipe = client.pipeline()  # type: ignore[no-untyped-call]
        for i in range(300):
            pipe.incr(f"pin:{protocol}:{i}")
        assert pipe.execute() == [i + 1 for i in range(300)]
    finally:
        client.close()


def test_redis_cli_follows_rewritten_redirects(pinned: Tunnel, redis_cluster: LocalCluster) -> None:
    port = pinned.local[redis_cluster.masters()[0].port]

    def cli(*args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-c", "-p", str(port), *args],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        return done.stdout.decode().strip()

    for i in range(20):
        assert cli("SET", f"pin:cli:{i}", f"v{i}") == "OK"
    for i in range(20):
        assert cli("GET", f"pin:cli:{i}") == f"v{i}"
    ports = {int(x) for x in cli("CLUSTER", "SLOTS").split() if x.isdigit() and int(x) > 16383}
    assert ports
    assert ports <= set(pinned.local.values())


def test_redis_benchmark_cluster_mode(pinned: Tunnel) -> None:
    port = next(iter(pinned.local.values()))
    done = redis_benchmark(
        "--cluster", "-p", str(port), "-c", "10", "-n", "3000", "-t", "set,get", "--csv"
    )
    rows = [line.split(",")[0] for line in done.stdout.decode().splitlines()]
    assert [r for r in rows if r in ('"SET"', '"GET"')] == ['"SET"', '"GET"']
    assert b"rror" not in done.stderr


# -- exact rewriting ----------------------------------------------------------------------------


def remap_ports(frame: bytes, pinned: Tunnel) -> bytes:
    for upstream, local in pinned.local.items():
        frame = frame.replace(b":%d\r\n" % upstream, b":%d\r\n" % local)
    return frame


@pytest.mark.parametrize("protocol", ["2", "3"])
def test_cluster_slots_is_byte_identical_but_for_ports(
    pinned: Tunnel, redis_cluster: LocalCluster, protocol: str
) -> None:
    node = redis_cluster.masters()[0]
    direct = Raw.direct(node, redis_cluster)
    through = Raw.tunnel(pinned.port_for(node))
    try:
        direct.call("HELLO", protocol)
        through.call("HELLO", protocol)
        want = direct.call("CLUSTER", "SLOTS")
        got = through.call("CLUSTER", "SLOTS")
        assert got == remap_ports(want, pinned)
        assert got != want
    finally:
        direct.close()
        through.close()


@pytest.mark.parametrize("protocol", ["2", "3"])
def test_cluster_shards_and_nodes_and_replicas(
    pinned: Tunnel, redis_cluster: LocalCluster, protocol: str
) -> None:
    master = redis_cluster.masters()[0]
    through = Raw.tunnel(pinned.port_for(master))
    direct = Raw.direct(master, redis_cluster)
    try:
        direct.call("HELLO", protocol)
        through.call("HELLO", protocol)

        def masked_shards(frame: bytes) -> Any:
            return parse(frame.replace(b"replication-offset", b"x"))

        shards_direct = direct.call("CLUSTER", "SHARDS")
        shards = through.call("CLUSTER", "SHARDS")
        assert shards.count(b"127.0.0.1") == shards_direct.count(b"127.0.0.1")
        for upstream in pinned.local:
            assert b":%d\r\n" % upstream not in shards
        # same shape, same ids and slots: compare with ports mapped and offsets dropped
        a, b = parse(remap_ports(shards_direct, pinned)), parse(shards)
        assert len(a) == len(b)

        def strip(v: Any) -> Any:
            if isinstance(v, list):
                out = []
                skip = False
                for item in v:
                    if skip:
                        skip = False
                        continue
                    if item == b"replication-offset":
                        skip = True
                        continue
                    out.append(strip(item))
                return out
            if hasattr(v, "as_dict"):
                return {k: strip(x) for k, x in v if k != b"replication-offset"}
            return v

        assert sorted(map(repr, map(strip, a))) == sorted(map(repr, map(strip, b)))
        del masked_shards

        def lines(frame: bytes) -> list[list[bytes]]:
            value = parse(frame)
            text = value.text if hasattr(value, "text") else value
            rows = [line.split(b" ") for line in text.split(b"\n") if line]
            for row in rows:
                row[4:6] = [b"-", b"-"]  # ping-sent, pong-received change all the time
            return sorted(rows)

        nodes = through.call("CLUSTER", "NODES")
        assert nodes[:1] == (b"=" if protocol == "3" else b"$")
        expected = lines(direct.call("CLUSTER", "NODES"))
        for row in expected:
            host_port, at, bus = row[1].partition(b"@")
            upstream = int(host_port.rpartition(b":")[2])
            row[1] = b"127.0.0.1:%d%s%s" % (pinned.local[upstream], at, bus)
        assert lines(nodes) == expected

        master_id = direct.call("CLUSTER", "MYID")
        master_id = parse(master_id)
        replicas = parse(through.call("CLUSTER", "REPLICAS", master_id))
        assert len(replicas) == 1
        replica_addr = replicas[0].split(b" ")[1].split(b"@")[0]
        local_ports = {b"127.0.0.1:%d" % p for p in pinned.local.values()}
        assert replica_addr in local_ports
    finally:
        direct.close()
        through.close()


LOOKALIKES = ["10.0.0.5:6379", "redis.example.com", "127.0.0.1"]


def test_user_values_are_never_rewritten(pinned: Tunnel, redis_cluster: LocalCluster) -> None:
    node = redis_cluster.masters()[0]
    direct = Raw.direct(node, redis_cluster)
    try:
        real_nodes = parse(direct.call("CLUSTER", "NODES"))
        real_slots = direct.call("CLUSTER", "SLOTS")
    finally:
        direct.close()
    values = [
        *(v.encode() for v in LOOKALIKES),
        b"%s:%d" % (node.host.encode(), node.port),  # a real node address, in the book
        b"-MOVED 1 %s:%d" % (node.host.encode(), node.port),
        real_nodes,  # a whole CLUSTER NODES text naming the real nodes
        real_slots,  # the raw bytes of a CLUSTER SLOTS reply
    ]
    client = rc(pinned.port_for(node))
    try:
        for i, value in enumerate(values):
            client.set(f"pin:value:{i}", value)
            client.hset(f"pin:hash:{i}", mapping={"f": value, value: "g"})
            client.delete(f"pin:list:{i}")
            client.rpush(f"pin:list:{i}", value, value)
        for i, value in enumerate(values):
            assert client.get(f"pin:value:{i}") == value
            assert client.hgetall(f"pin:hash:{i}") == {b"f": value, value: b"g"}
            assert client.lrange(f"pin:list:{i}", 0, -1) == [value, value]
    finally:
        client.close()
    # and at the byte level, on the node that holds the key
    key = key_on(node, redis_cluster, "pin:bytes")
    through = Raw.tunnel(pinned.port_for(node))
    try:
        for value in values:
            assert through.call("SET", key, value) == b"+OK\r\n"
            assert through.call("GET", key) == b"$%d\r\n%s\r\n" % (len(value), value)
            through.call("HELLO", "3")
            assert through.call("GET", key) == b"$%d\r\n%s\r\n" % (len(value), value)
            through.call("HELLO", "2")
    finally:
        through.close()


def test_moved_and_exec_are_rewritten(pinned: Tunnel, redis_cluster: LocalCluster) -> None:
    a, b = redis_cluster.masters()[:2]
    key = key_on(b, redis_cluster, "pin:moved")
    slot = key_slot(key.encode())
    through = Raw.tunnel(pinned.port_for(a))
    try:
        assert through.call("GET", key) == b"-MOVED %d 127.0.0.1:%d\r\n" % (
            slot,
            pinned.port_for(b),
        )
        through.send("MULTI")
        through.send("CLUSTER", "SLOTS")
        through.send("GET", key_on(a, redis_cluster, "pin:exec"))
        through.send("EXEC")
        assert [through.read() for _ in range(3)] == [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"]
        reply = parse(through.read())
        ports = {node[1] for entry in reply[0] for node in entry[2:]}
        assert ports <= set(pinned.local.values())
    finally:
        through.close()


def test_pubsub_payloads_pass_untouched(pinned: Tunnel, redis_cluster: LocalCluster) -> None:
    node = redis_cluster.masters()[0]
    port = pinned.port_for(node)
    sub = Raw.tunnel(port)
    pub = Raw.tunnel(port)
    payload = b"127.0.0.1:%d" % node.port
    try:
        assert parse(sub.call("SUBSCRIBE", "pin:chan"))[0] == b"subscribe"
        assert pub.call("PUBLISH", "pin:chan", payload) == b":1\r\n"
        assert sub.read() == encode_command(b"message", b"pin:chan", payload)
        assert parse(sub.call("PING"))[0] == b"pong"
        assert parse(sub.call("UNSUBSCRIBE"))[0] == b"unsubscribe"
        assert parse(sub.call("CLUSTER", "SLOTS"))[0][2][1] in pinned.local.values()
    finally:
        sub.close()
        pub.close()


# -- topology changes and faults (private clusters) ---------------------------------------------


class Writer:
    """Writes keys through the tunnel in a thread, retrying each until acknowledged."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port = port
        self.prefix = prefix
        self.acked: dict[str, str] = {}
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client = rc(self.port, socket_timeout=3)
        i = 0
        try:
            while not self.stop.is_set():
                key, value = f"{self.prefix}:{i}", f"v{i}"
                try:
                    if client.set(key, value):
                        self.acked[key] = value
                        i += 1
                except (redis.RedisError, OSError):
                    self.errors += 1
                    time.sleep(0.1)
                    try:
                        client.close()
                    except redis.RedisError:
                        pass
                    try:
                        client = rc(self.port, socket_timeout=3)
                    except (redis.RedisError, OSError):
                        time.sleep(0.2)
        finally:
            client.close()

    def wait_for(self, count: int, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, (len(self.acked), self.errors)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def verify(port: int, acked: dict[str, str]) -> None:
    client = rc(port)
    try:
        keys = list(acked)
        for start in range(0, len(keys), 200):
            batch = keys[start : start + 200]
            got = client.mget_nonatomic(batch)
            assert [g.decode() if g is not None else None for g in got] == [acked[k] for k in batch]
    finally:
        client.close()


def test_failover_loses_no_acknowledged_write(redis_factory: Any) -> None:
    cluster: LocalCluster = redis_factory.cluster(masters=3, replicas_per_master=1)
    t = Tunnel(pinned_args(cluster, "--refresh", "1"), password=cluster.password)
    try:
        victim = cluster.masters()[0]
        port = t.port_for(cluster.masters()[1])
        writer = Writer(port, "fo")
        writer.wait_for(300)
        # make what the victim acknowledged durable on its replica, then crash it
        victim.call("WAIT", 1, 2000)
        victim.kill()
        # the tunnel notices the new master on its own (periodic refresh)
        t.wait_for(lambda line: "(master) (was replica)" in line, timeout=45)
        before = len(writer.acked)
        writer.wait_for(before + 300)
        writer.finish()
        survivors = [n for n in cluster.nodes if n is not victim]
        verify(t.port_for(survivors[0]), writer.acked)
        # every slot's writes still readable, including the failed-over ones
        assert any(master_for_slot_alive(cluster, k) for k in writer.acked)
    finally:
        assert t.stop() == 0


def migrate(source: RedisNode, target: RedisNode, cluster: LocalCluster, keys: list[Any]) -> None:
    """MIGRATE ``keys`` from ``source`` to ``target`` (both in ``cluster``)."""
    source.call(
        "MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", cluster.password, "KEYS", *keys
    )


def master_for_slot_alive(cluster: LocalCluster, key: str) -> bool:
    slot = key_slot(key.encode())
    for node in cluster.nodes:
        if node.alive():
            for start, end, master, *_ in slots_of(node):
                if start <= slot <= end:
                    return cluster.node_by_port(int(master[1])).alive()
    return False


def test_slot_migration_with_ask_loses_no_write(redis_factory: Any) -> None:
    cluster: LocalCluster = redis_factory.cluster(masters=3, replicas_per_master=0)
    t = Tunnel(pinned_args(cluster), password=cluster.password)
    try:
        source, target = cluster.masters()[:2]
        slot = key_slot(key_on(source, cluster, "mig").encode())
        tag = next(f"t{i}" for i in range(100_000) if key_slot(f"t{i}".encode()) == slot)
        keys = [f"{{{tag}}}:{i}" for i in range(40)]
        client = rc(t.port_for(source))
        for key in keys:
            client.set(key, f"old:{key}")
        # the writer hammers the very slot being migrated
        writer = Writer(t.port_for(target), f"{{{tag}}}:w")
        writer.wait_for(50)
        source_id, target_id = source.node_id, target.node_id
        assert source_id
        assert target_id
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = keys[:20]
        migrate(source, target, cluster, moved)
        # a migrated key on the source is an ASK to the target's listener
        through = Raw.tunnel(t.port_for(source))
        try:
            assert through.call("GET", moved[0]) == b"-ASK %d 127.0.0.1:%d\r\n" % (
                slot,
                t.port_for(target),
            )
        finally:
            through.close()
        asked = Raw.tunnel(t.port_for(target))
        try:
            assert asked.call("ASKING") == b"+OK\r\n"
            assert asked.call("GET", moved[0]) == b"$%d\r\nold:%s\r\n" % (
                len(moved[0]) + 4,
                moved[0].encode(),
            )
        finally:
            asked.close()
        # clients keep reading and writing in the slot mid-migration
        for key in keys:
            assert client.get(key) == f"old:{key}".encode()
        writer.wait_for(len(writer.acked) + 100)
        # finish: move the rest, then give the slot to the target everywhere
        while True:
            rest = source.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
            assert isinstance(rest, list)
            if not rest:
                break
            migrate(source, target, cluster, rest)
        for node in cluster.masters():
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        writer.wait_for(len(writer.acked) + 100)
        writer.finish()
        client.close()
        verify(t.port_for(target), writer.acked)
        verify(t.port_for(source), {k: f"old:{k}" for k in keys})
    finally:
        assert t.stop() == 0


def ping(port: int) -> bytes:
    conn = Raw.tunnel(port)
    try:
        return conn.call("PING")
    finally:
        conn.close()


def add_newcomer(redis_factory: Any, cluster: LocalCluster) -> tuple[RedisNode, bytes]:
    """Start a fresh cluster node and MEET it; return it and its ID once all nodes know it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        bus = probe.getsockname()[1]
    newcomer: RedisNode = redis_factory.standalone(
        tls=True,
        password=cluster.password,
        extra_config={
            "cluster-enabled": "yes",
            "tls-cluster": "yes",
            "cluster-port": str(bus),
            "cluster-node-timeout": "2000",
        },
    )
    new_id = newcomer.call("CLUSTER", "MYID")
    assert isinstance(new_id, bytes)
    cluster.seed.call("CLUSTER", "MEET", newcomer.host, newcomer.port, bus)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        views = [node.call("CLUSTER", "NODES") for node in cluster.nodes]
        lines = [
            line
            for view in views
            if isinstance(view, bytes)
            for line in view.split(b"\n")
            if line.startswith(new_id)
        ]
        if len(lines) == len(cluster.nodes) and not any(b"handshake" in x for x in lines):
            return newcomer, new_id
        time.sleep(0.1)
    raise AssertionError("the new node did not join")


def test_new_node_gets_a_listener_before_the_reply(redis_factory: Any) -> None:
    cluster: LocalCluster = redis_factory.cluster(masters=3, replicas_per_master=0)
    t = Tunnel(pinned_args(cluster, "--refresh", "0"), password=cluster.password)
    try:
        newcomer, _ = add_newcomer(redis_factory, cluster)
        assert newcomer.port not in t.local
        through = Raw.tunnel(t.port_for(cluster.masters()[0]))
        try:
            text = parse(through.call("CLUSTER", "NODES"))
        finally:
            through.close()
        # the reply already names a listener for the newcomer, and that listener works
        t.wait_for(lambda line: f"-> {newcomer.address}" in line)
        local = t.port_for(newcomer)
        assert b"127.0.0.1:%d@" % local in text
        assert b":%d@" % newcomer.port not in text
        assert ping(local) == b"+PONG\r\n"
    finally:
        assert t.stop() == 0


def test_refresh_adds_and_retires_listeners(redis_factory: Any) -> None:
    cluster: LocalCluster = redis_factory.cluster(masters=3, replicas_per_master=0)
    t = Tunnel(pinned_args(cluster, "--refresh", "0.5"), password=cluster.password)
    try:
        newcomer, new_id = add_newcomer(redis_factory, cluster)
        t.wait_for(lambda line: line.endswith(f"-> {newcomer.address} (master)"))
        local = t.port_for(newcomer)
        assert ping(local) == b"+PONG\r\n"
        newcomer.stop()
        for node in cluster.nodes:
            node.call("CLUSTER", "FORGET", new_id)
        t.wait_for(lambda line: line.startswith("retired") and newcomer.address in line)
        with pytest.raises(OSError):
            ping(local)
        # still stable: the others keep their ports
        for node in cluster.nodes:
            assert ping(t.port_for(node)) == b"+PONG\r\n"
    finally:
        assert t.stop() == 0


def test_random_keys_through_every_listener(pinned: Tunnel) -> None:
    rng = random.Random(7)
    for port in pinned.local.values():
        client = rc(port)
        try:
            key = f"pin:any:{rng.random()}"
            client.set(key, port)
            assert client.get(key) == str(port).encode()
        finally:
            client.close()
