"""Unit tests for client.replicas: the read_from policy, replica choice and health (pure)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import client.replicas as replicas_module
from client.errors import ConfigError, RedisToolkitError, UnroutableError
from client.replicas import (
    READ_FROM_CHOICES,
    TRANSITIONS,
    NoReplicaError,
    Probe,
    ProbeVerdict,
    ReplicaTracker,
    Signal,
    State,
    parse_read_from,
    read_probe,
)
from client.topology import Node, Topology
from client.values import Attributed, ErrorReply, RespMap, Verbatim

# Captured from redis-server 7.0.15 (a replica of a TLS cluster), trimmed.
REPLICATION_UP = (
    b"# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:41125\r\n"
    b"master_link_status:up\r\nmaster_last_io_seconds_ago:0\r\nmaster_sync_in_progress:0\r\n"
    b"slave_read_repl_offset:116\r\nslave_repl_offset:116\r\nslave_priority:100\r\n"
    b"slave_read_only:1\r\nreplica_announced:1\r\nconnected_slaves:0\r\n"
)
PERSISTENCE_OK = (
    b"# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:1\r\n"
)

M1 = Node(id="m1", host="10.0.0.1", port=7001, slots=((0, 8191),))
M2 = Node(id="m2", host="10.0.0.2", port=7002, slots=((8192, 16383),))
R1A = Node(id="r1a", host="10.0.0.3", port=7003, role="replica", master_id="m1")
R1B = Node(id="r1b", host="10.0.0.4", port=7004, role="replica", master_id="m1")
R2 = Node(id="r2", host="10.0.0.5", port=7005, role="replica", master_id="m2")
TOPO = Topology([M1, M2, R1A, R1B, R2], source="test")
SHARD1 = TOPO.replicas_of(M1)


def tracker(**kw: float) -> ReplicaTracker:
    return ReplicaTracker(**kw)


def bring_up(t: ReplicaTracker, now: float = 0.0, topo: Topology = TOPO) -> None:
    """Sync and pass a probe for every replica."""
    t.sync(topo, now)
    for probe in t.take_due(now):
        t.probe_done(probe, ProbeVerdict(True), now)


def state(t: ReplicaTracker, node: Node) -> str:
    status = t.status(node.id)
    assert status is not None
    return status.state


# --------------------------------------------------------------------------- policy names


def test_parse_read_from() -> None:
    assert READ_FROM_CHOICES == ("master", "replica", "prefer-replica")
    for choice in READ_FROM_CHOICES:
        assert parse_read_from(choice) == choice
    assert parse_read_from(" Prefer_Replica ") == "prefer-replica"
    assert parse_read_from("REPLICA") == "replica"
    with pytest.raises(ConfigError) as info:
        parse_read_from("slave")
    text = str(info.value)
    assert "'slave'" in text
    assert "master, replica, prefer-replica" in text
    assert "\n" not in text


def test_no_replica_error_is_in_the_one_hierarchy() -> None:
    err = NoReplicaError("no healthy replica", master=M1, hint="try prefer-replica")
    assert isinstance(err, UnroutableError)
    assert isinstance(err, RedisToolkitError)
    assert err.master is M1
    assert str(err) == "no healthy replica (hint: try prefer-replica)"
    assert err.resp_line().startswith(b"-ERR no healthy replica")


def test_module_is_pure() -> None:
    tree = ast.parse(Path(replicas_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "anyio", "socket", "ssl", "asyncio", "time"}


# --------------------------------------------------------------------------- probes


def test_read_probe_healthy_replica() -> None:
    assert read_probe(REPLICATION_UP, PERSISTENCE_OK) == ProbeVerdict(True)
    # RESP3 INFO is a verbatim string; attributes are looked through.
    verbatim = Verbatim(b"txt", REPLICATION_UP)
    assert read_probe(Attributed(RespMap([]), verbatim), Verbatim(b"txt", PERSISTENCE_OK)).ok


@pytest.mark.parametrize(
    ("replication", "persistence", "reason"),
    [
        (REPLICATION_UP.replace(b"link_status:up", b"link_status:down"), PERSISTENCE_OK,
         "master_link_status:down"),
        (REPLICATION_UP.replace(b"master_link_status:up\r\n", b""), PERSISTENCE_OK,
         "master_link_status:missing"),
        (REPLICATION_UP.replace(b"sync_in_progress:0", b"sync_in_progress:1"), PERSISTENCE_OK,
         "syncing with its master"),
        (REPLICATION_UP, PERSISTENCE_OK.replace(b"\nloading:0", b"\nloading:1"),
         "loading its dataset"),
        (REPLICATION_UP, PERSISTENCE_OK.replace(b"async_loading:0", b"async_loading:1"),
         "loading its dataset"),
        (ErrorReply(b"LOADING Redis is loading the dataset in memory"), PERSISTENCE_OK,
         "loading its dataset (LOADING)"),
        (ErrorReply(b"NOAUTH Authentication required."), PERSISTENCE_OK,
         "INFO failed: NOAUTH Authentication required."),
        (REPLICATION_UP, ErrorReply(b"ERR boom"), "INFO failed: ERR boom"),
        (42, PERSISTENCE_OK, "unexpected INFO reply int"),
        (b"# Replication\r\nrole:sentinel\r\n", PERSISTENCE_OK,
         "role sentinel in INFO replication"),
    ],
)  # fmt: skip
def test_read_probe_failures(replication: object, persistence: object, reason: str) -> None:
    verdict = read_probe(replication, persistence)  # type: ignore[arg-type]
    assert verdict == ProbeVerdict(False, reason)


def test_read_probe_promoted_replica() -> None:
    verdict = read_probe(b"# Replication\r\nrole:master\r\nconnected_slaves:1\r\n", b"")
    assert not verdict.ok
    assert verdict.promoted
    assert verdict.reason == "it is a master now"


# --------------------------------------------------------------------------- state machine


def test_new_replicas_join_only_after_a_passed_probe() -> None:
    t = tracker()
    t.sync(TOPO, 0.0)
    assert [s.state for s in t.statuses()] == ["new", "new", "new"]
    assert t.pick(SHARD1, 0.0) is None
    assert t.next_due() == float("-inf")
    probes = t.take_due(0.0)
    assert [p.node.id for p in probes] == ["r1a", "r1b", "r2"]
    assert t.take_due(0.0) == []  # not handed out twice
    assert t.probing(["r1a"])
    assert t.pick(SHARD1, 0.0) is None
    t.probe_done(probes[0], ProbeVerdict(True), 0.1)
    t.probe_done(probes[1], ProbeVerdict(False, "master_link_status:down"), 0.1)
    assert t.pick(SHARD1, 0.2) == R1A
    assert t.pick(SHARD1, 0.2) == R1A  # R1B is down
    status = t.status("r1b")
    assert status is not None
    assert status.describe() == "down (master_link_status:down)"
    assert status.retry_at == pytest.approx(0.6)
    assert not t.probing(["r1a", "r1b"])
    assert t.probing(["r2"])


def test_round_robin_and_least_in_flight() -> None:
    t = tracker()
    bring_up(t)
    # Nothing in flight: the shard's replicas take turns.
    picks = [t.pick(SHARD1, 1.0) for _ in range(6)]
    assert picks == [R1A, R1B, R1A, R1B, R1A, R1B]
    # Shards keep separate turns.
    assert t.pick(TOPO.replicas_of(M2), 1.0) == R2
    # A read in flight on R1A: R1B wins until it has as many.
    token = t.start_read(R1A, 1.0)
    assert [t.pick(SHARD1, 1.0) for _ in range(3)] == [R1B, R1B, R1B]
    other = t.start_read(R1B, 1.0)
    assert {t.pick(SHARD1, 1.0) for _ in range(4)} == {R1A, R1B}
    t.end_read(token, served=True)
    t.end_read(other, served=False)
    t.end_read(other, served=True)  # a second end is ignored
    reads = {s.node.id: s.reads for s in t.statuses()}
    assert reads == {"r1a": 1, "r1b": 0, "r2": 0}
    # avoid
    assert t.pick(SHARD1, 1.0, avoid={"r1a"}) == R1B
    assert t.pick(SHARD1, 1.0, avoid={"r1a", "r1b"}) is None
    assert t.pick((), 1.0) is None


def test_a_stalled_replica_leaves_the_rotation() -> None:
    t = tracker(stall_after=5.0)
    bring_up(t)
    token = t.start_read(R1A, 10.0)
    assert t.pick(SHARD1, 15.0, avoid={"r1b"}) == R1A  # 5 s: not yet
    assert t.pick(SHARD1, 15.5, avoid={"r1b"}) is None
    assert state(t, R1A) == "down"
    status = t.status("r1a")
    assert status is not None
    assert status.reason == "no reply for 5 s"
    assert status.in_flight == 1
    assert t.pick(SHARD1, 15.5) == R1B
    # The replica answers a probe again: reads older than that no longer count as a stall.
    (probe,) = t.take_due(16.0)
    t.probe_done(probe, ProbeVerdict(True), 16.0)
    assert t.pick(SHARD1, 20.0, avoid={"r1b"}) == R1A
    assert t.pick(SHARD1, 21.5, avoid={"r1b"}) is None  # still unanswered 5 s after that
    t.end_read(token, served=False)


def test_backoff_doubles_and_resets() -> None:
    t = tracker(first_backoff=0.5, max_backoff=3.0)
    bring_up(t)
    v = t.version
    t.failed("r1a", "cannot connect: refused", 10.0)
    assert t.version > v
    delays: list[float] = []
    now = 10.0
    for _ in range(5):
        status = t.status("r1a")
        assert status is not None
        assert status.retry_at is not None
        delays.append(status.retry_at - now)
        assert t.take_due(status.retry_at - 0.01, only={"r1a"}) == []
        assert t.next_due() == status.retry_at
        now = status.retry_at
        (probe,) = t.take_due(now, only={"r1a"})
        assert t.next_due() is None  # probing: nothing else waits
        t.probe_done(probe, ProbeVerdict(False, "cannot connect: refused"), now)
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    (probe,) = t.take_due(now + 3.0)
    t.probe_done(probe, ProbeVerdict(True), now + 3.0)
    status = t.status("r1a")
    assert status is not None
    assert (status.state, status.failures, status.reason, status.retry_at) == ("up", 0, "", None)
    t.failed("r1a", "connection lost", 100.0)
    status = t.status("r1a")
    assert status is not None
    assert status.retry_at == 100.5


def test_many_failures_of_reads_in_flight_count_once() -> None:
    t = tracker()
    bring_up(t)
    for _ in range(50):
        t.failed("r1a", "connection lost", 1.0)
    status = t.status("r1a")
    assert status is not None
    assert (status.failures, status.retry_at) == (1, 1.5)
    t.failed("nobody", "whatever", 1.0)  # unknown replicas are ignored


def test_a_probe_older_than_the_failure_cannot_bring_it_back() -> None:
    t = tracker()
    t.sync(TOPO, 0.0)
    probes = {p.node.id: p for p in t.take_due(0.0)}
    t.failed("r1a", "connection lost", 0.1)  # while its first probe runs
    assert state(t, R1A) == "probing"
    t.probe_done(probes["r1a"], ProbeVerdict(True), 0.2)
    assert state(t, R1A) == "down"
    assert t.pick(SHARD1, 0.3, avoid={"r1b"}) is None
    # A periodic check that a failure overtakes: out at once, and the check is stale.
    t.probe_done(probes["r1b"], ProbeVerdict(True), 0.2)
    t.request_checks()
    (check,) = t.take_due(0.3, only={"r1b"})
    assert state(t, R1B) == "checking"
    assert t.pick(SHARD1, 0.3, avoid={"r1a"}) == R1B  # still in the rotation while checked
    t.failed("r1b", "LOADING", 0.4)
    assert state(t, R1B) == "probing"
    assert t.pick(SHARD1, 0.4) is None
    t.probe_done(check, ProbeVerdict(True), 0.5)
    assert state(t, R1B) == "down"
    # A fresh probe passes.
    (probe,) = t.take_due(10.0, only={"r1b"})
    t.probe_done(probe, ProbeVerdict(True), 10.0)
    assert state(t, R1B) == "up"


def test_periodic_checks() -> None:
    t = tracker()
    bring_up(t)
    assert t.take_due(5.0) == []
    assert t.next_due() is None
    v = t.version
    t.request_checks()
    assert t.version > v
    assert t.next_due() == float("-inf")
    probes = t.take_due(5.0)
    assert {p.node.id for p in probes} == {"r1a", "r1b", "r2"}
    assert {s.state for s in t.statuses()} == {"checking"}
    for probe in probes:
        ok = probe.node.id != "r2"
        t.probe_done(probe, ProbeVerdict(ok, "" if ok else "master_link_status:down"), 5.1)
    assert [s.describe() for s in t.statuses()] == [
        "up",
        "up",
        "down (master_link_status:down)",
    ]


def test_topology_flags_and_membership() -> None:
    t = tracker()
    bring_up(t)
    failed = Topology([M1, M2, replace(R1A, health="fail"), R1B, R2])
    t.sync(failed, 1.0)
    status = t.status("r1a")
    assert status is not None
    assert status.describe() == "down (flagged failed by the cluster)"
    # A probe passes while the topology still flags it: the probe wins, the same flag does
    # not knock it out again.
    (probe,) = t.take_due(1.5)
    t.probe_done(probe, ProbeVerdict(True), 1.5)
    t.sync(Topology(failed.nodes, source="again"), 2.0)
    assert state(t, R1A) == "up"
    # Flag cleared, set again: out; cleared while DOWN: due at once.
    t.sync(TOPO, 3.0)
    t.sync(failed, 4.0)
    assert state(t, R1A) == "down"
    t.sync(TOPO, 4.1)
    assert t.next_due() == 4.1
    for health, reason in (("pfail", "suspected failing"), ("loading", "loading its dataset")):
        t2 = tracker()
        bring_up(t2)
        flagged = Topology([M1, M2, replace(R2, health=health), R1A, R1B])
        t2.sync(flagged, 1.0)
        status = t2.status("r2")
        assert status is not None
        assert reason in status.reason
    # A replica that is gone is forgotten, even with a read in flight.
    token = t.start_read(R1B, 5.0)
    t.sync(Topology([M1, M2, R1A, R2]), 5.0)
    assert t.status("r1b") is None
    t.end_read(token, served=True)
    # ...and comes back NEW.
    v = t.version
    t.sync(TOPO, 6.0)
    assert state(t, R1B) == "new"
    assert t.version > v
    # A replica promoted to master is no longer a replica.
    promoted = Topology([M2, R2, Node(id="r1a", host=R1A.host, port=R1A.port, slots=M1.slots)])
    t.sync(promoted, 7.0)
    assert [s.node.id for s in t.statuses()] == ["r2"]


def test_explain() -> None:
    t = tracker()
    assert t.explain(()) == "it has no replicas"
    assert t.explain(SHARD1) == "10.0.0.3:7003 not probed yet; 10.0.0.4:7004 not probed yet"
    t.sync(TOPO, 0.0)
    probes = t.take_due(0.0)
    assert t.explain(SHARD1) == "10.0.0.3:7003 being probed; 10.0.0.4:7004 being probed"
    t.probe_done(probes[0], ProbeVerdict(True), 0.0)
    t.probe_done(probes[1], ProbeVerdict(False, "master_link_status:down"), 0.0)
    text = t.explain(SHARD1, avoid={"r1a"}, name=lambda n: f"<{n.port}>")
    assert text == "<7003> just failed a read; <7004> down (master_link_status:down)"


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        ReplicaTracker(stall_after=0)
    with pytest.raises(ValueError):
        ReplicaTracker(first_backoff=2.0, max_backoff=1.0)


def test_transition_table_is_closed() -> None:
    for (old, signal), new in TRANSITIONS.items():
        assert isinstance(old, State)
        assert isinstance(signal, Signal)
        assert isinstance(new, State)
    # Only a passed probe puts a replica into the rotation (Rule 1).
    for (old, signal), new in TRANSITIONS.items():
        if new.in_rotation and not old.in_rotation:
            assert signal is Signal.PROBE_OK
    # A failure never leaves a replica in the rotation (Rule 3).
    for old in State:
        assert not TRANSITIONS.get((old, Signal.FAILED), old).in_rotation


# --------------------------------------------------------------------------- properties

_NODES = [R1A, R1B]
_SHARD = Topology([M1, R1A, R1B])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.sampled_from([(), ("r1a",), ("r1b",)])),
        st.tuples(st.just("start"), st.sampled_from(_NODES)),
        st.tuples(st.just("end"), st.booleans()),
        st.tuples(st.just("fail"), st.sampled_from(_NODES)),
        st.tuples(st.just("take"), st.none()),
        st.tuples(st.just("done"), st.tuples(st.booleans(), st.integers(0, 1))),
        st.tuples(st.just("done"), st.just((True, 0))),
        st.tuples(st.just("check"), st.none()),
        st.tuples(st.just("flag"), st.sampled_from(["online", "fail", "pfail", "loading"])),
        st.tuples(st.just("tick"), st.sampled_from([0.1, 1.0, 6.0])),
    ),
    min_size=20,
    max_size=60,
)


@settings(max_examples=200)
@given(_ops)
def test_health_rules_hold_for_any_history(ops: list[tuple[str, Any]]) -> None:
    """Rules 1-3 of the module docs, against a model of failures, probes and reads."""
    t = ReplicaTracker(stall_after=5.0, first_backoff=0.5, max_backoff=4.0)
    now = 0.0
    t.sync(_SHARD, now)
    last_failure: dict[str, int] = {"r1a": -1, "r1b": -1}
    probes: list[tuple[Probe, int]] = []  # (probe, sequence number at its start)
    cleared_by: dict[str, int] = {}  # node -> start seq of the probe that last let it in
    alive: dict[str, float] = {}  # node -> when a probe last passed and kept/put it in
    reads: list[tuple[int, str, float]] = []  # (token, node, start)
    for seq, (op, arg) in enumerate(ops):
        if op == "pick":
            avoid = set(arg)
            before = {n.id: state(t, n) for n in _NODES}
            chosen = t.pick(SHARD1, now, avoid=avoid)
            for node in _NODES:  # a stall is a failure
                if before[node.id] in ("up", "checking") and state(t, node) != before[node.id]:
                    last_failure[node.id] = seq
            if chosen is not None:
                assert chosen.id not in avoid
                assert chosen in SHARD1
                assert state(t, chosen) in ("up", "checking")
                # Rules 1 + 2: a probe that started after the latest failure passed.
                assert cleared_by.get(chosen.id, -2) > last_failure[chosen.id]
                # Rule 3: no read on it unanswered for longer than stall_after.
                for _, node_id, started_at in reads:
                    if node_id == chosen.id:
                        assert now - max(started_at, alive[node_id]) <= 5.0
                # Least in flight.
                in_flight = {n.id: sum(1 for r in reads if r[1] == n.id) for n in _NODES}
                others = [n.id for n in _NODES if n.id not in avoid and t.usable(n.id)]
                assert in_flight[chosen.id] <= min(in_flight[i] for i in others)
        elif op == "start":
            reads.append((t.start_read(arg, now), arg.id, now))
        elif op == "end" and reads:
            t.end_read(reads.pop(0)[0], served=bool(arg))
        elif op == "fail":
            t.failed(arg.id, "connection lost", now)
            last_failure[arg.id] = seq
            assert not t.usable(arg.id)  # Rule 3
        elif op == "take":
            probes.extend((p, seq) for p in t.take_due(now))
        elif op == "done" and probes:
            ok, index = arg
            probe, started = probes.pop(index % len(probes))
            node_id = probe.node.id
            was = state(t, probe.node)
            t.probe_done(probe, ProbeVerdict(ok, "" if ok else "down"), now)
            if t.usable(node_id) and was not in ("up", "checking"):
                assert ok  # Rule 1
                cleared_by[node_id] = started
            if ok and state(t, probe.node) == "up" and was in ("probing", "checking"):
                alive[node_id] = now
        elif op == "check":
            t.request_checks()
        elif op == "flag":
            before = {n.id: state(t, n) for n in _NODES}
            t.sync(Topology([M1, replace(R1A, health=arg), R1B]), now)
            if before["r1a"] in ("up", "checking") and not t.usable("r1a"):
                last_failure["r1a"] = seq
            assert t.usable("r1a") <= (before["r1a"] in ("up", "checking"))  # never joins
        elif op == "tick":
            now += arg
        for status in t.statuses():
            assert status.state in {s.value for s in State}
            if status.retry_at is not None:
                assert status.retry_at <= now + 4.0
            assert status.in_flight == sum(1 for r in reads if r[1] == status.node.id)
