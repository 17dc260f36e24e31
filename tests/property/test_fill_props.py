"""Property tests for fill: arithmetic, plans, generated keys and logins (no server)."""

from __future__ import annotations

import math
import re
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from client.credentials import Credential
from client.errors import ConfigError
from client.resp import NEED_DATA, RespParser
from client.slots import SLOTS, key_slot, slot_tags
from fill.auth import auth_command, login_update, parse_login_update
from fill.payload import ALPHABET, BatchBuilder, parse_barrier, reference_key
from fill.plan import (
    FillPlan,
    FillSettings,
    Target,
    build_plan,
    commands_for,
    split_by_weight,
    split_evenly,
)

TAGS = slot_tags()


@given(st.integers(0, 10**9), st.integers(1, 512))
def test_split_evenly(total: int, parts: int) -> None:
    shares = split_evenly(total, parts)
    assert sum(shares) == total
    assert len(shares) == parts
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)


@given(st.integers(0, 10**7), st.lists(st.integers(0, 16384), min_size=1, max_size=20))
def test_split_by_weight(total: int, weights: list[int]) -> None:
    if sum(weights) == 0:
        return
    shares = split_by_weight(total, weights)
    assert sum(shares) == total
    for share, weight in zip(shares, weights, strict=True):
        exact = total * weight / sum(weights)
        assert math.floor(exact) <= share <= math.ceil(exact)


@given(st.integers(1, 10**6), st.integers(1, 65536), st.integers(1, 524288))
def test_commands_cover_the_payload(megabytes: int, key: int, value: int) -> None:
    count = commands_for(megabytes, key, value)
    assert count * (key + value) >= megabytes * 2**20
    assert (count - 1) * (key + value) < megabytes * 2**20


@st.composite
def slot_partitions(draw: st.DrawFn) -> tuple[Target, ...]:
    """2..6 masters with contiguous or split slot ranges covering all slots (some may own none)."""
    cuts = sorted(draw(st.sets(st.integers(1, SLOTS - 1), min_size=1, max_size=8)))
    ranges = list(zip([0, *cuts], [c - 1 for c in cuts] + [SLOTS - 1], strict=True))
    masters = draw(st.integers(2, 6))
    owners = [draw(st.integers(0, masters - 1)) for _ in ranges]
    targets = []
    for m in range(masters):
        owned = tuple(r for r, o in zip(ranges, owners, strict=True) if o == m)
        targets.append(Target(f"127.0.0.1:{7000 + m}", owned))
    return tuple(targets)


plan_settings = st.builds(
    FillSettings,
    megabytes=st.integers(1, 5000),
    key_size=st.integers(1, 65536),
    value_size=st.integers(1, 524288),
    pipeline=st.integers(1, 20000),
    connections=st.integers(1, 8),
    processes=st.integers(1, 4),
    seed=st.integers(0, 2**64 - 1),
)


def check_plan(plan: FillPlan) -> None:
    s = plan.settings
    assert sum(j.megabytes for j in plan.jobs) == s.megabytes
    next_chunk = 0
    next_key: dict[int, int] = {}
    for index, job in enumerate(plan.jobs):
        assert job.index == index
        assert job.megabytes > 0
        assert job.commands == commands_for(job.megabytes, s.key_size, s.value_size)
        assert job.first_chunk == next_chunk
        assert job.first_key == next_key.get(job.target, 0)
        assert 0 <= job.process < s.processes
        assert 0 <= job.connection < s.connections
        next_chunk += job.chunks
        next_key[job.target] = job.first_key + job.commands
        last = plan.chunk_size(job, job.chunks - 1)
        assert 1 <= last <= plan.chunk_commands
    assert plan.total_chunks == next_chunk
    assert sum(plan.expected_keys(t) for t in range(len(plan.targets))) == plan.total_commands
    assert 1 <= plan.chunk_commands <= s.pipeline
    assert s.key_size >= plan.layout.min_key_size
    assert 64**plan.layout.hi_width >= plan.total_chunks
    assert 64**plan.layout.lo_width >= plan.chunk_commands


@settings(max_examples=200)
@given(plan_settings)
def test_standalone_plans(s: FillSettings) -> None:
    try:
        plan = build_plan(s, [Target("h:1")], cluster=False)
    except ConfigError as exc:
        found = re.search(r"need at least (\d+) bytes", str(exc))
        assert found is not None
        assert s.key_size < int(found.group(1))
        return
    check_plan(plan)
    # Without -P, the jobs are exactly the earlier tool's: MB split over -n connections.
    if s.processes == 1:
        wanted = [m for m in split_evenly(s.megabytes, s.connections) if m]
        assert [j.megabytes for j in plan.jobs] == wanted


@settings(max_examples=200)
@given(plan_settings, slot_partitions())
def test_cluster_plans(s: FillSettings, targets: tuple[Target, ...]) -> None:
    try:
        plan = build_plan(s, targets, cluster=True)
    except ConfigError as exc:
        text = str(exc)
        found = re.search(r"need at least (\d+) bytes", text)
        assert found is not None
        assert s.key_size < int(found.group(1))
        assert "hash tag" in text
        return
    check_plan(plan)
    assert all(t.slot_count > 0 for t in plan.targets)
    owned = [t.slot_count for t in plan.targets]
    shares = [sum(j.megabytes for j in plan.jobs if j.target == i) for i in range(len(owned))]
    assert shares == split_by_weight(s.megabytes, owned)


# Small real plans, every key built: unique, exact lengths, on the right node, evenly spread.
small_settings = st.builds(
    FillSettings,
    megabytes=st.integers(1, 3),
    key_size=st.integers(12, 80),
    value_size=st.integers(1500, 6000),
    pipeline=st.integers(1, 700),
    connections=st.integers(1, 3),
    processes=st.integers(1, 3),
    seed=st.integers(0, 2**64 - 1),
)


def build_everything(plan: FillPlan) -> list[tuple[bytes, int, int]]:
    """(key, value length, target) of every key, all processes together."""
    tags = TAGS if plan.cluster else None
    keys = []
    for process in plan.processes_used:
        builder = BatchBuilder(plan, tags)
        buf = bytearray(builder.buffer_size)
        key_at = builder.key_offset
        for job in plan.jobs_of(process):
            for chunk in range(job.chunks):
                size = builder.build(buf, job, chunk)
                count = plan.chunk_size(job, chunk)
                assert size == count * builder.length
                for i in range(count):
                    start = i * builder.length
                    key = bytes(buf[start + key_at : start + key_at + plan.settings.key_size])
                    keys.append((key, plan.settings.value_size, job.target))
                    if i in (0, count - 1):
                        assert key.startswith(reference_key(plan, tags, job, chunk, i))
                data = bytes(buf[:size])
                assert data.count(b"*3\r\n$3\r\nSET\r\n") >= count
    return keys


@settings(max_examples=25, deadline=None)
@given(small_settings)
def test_standalone_keys_are_unique(s: FillSettings) -> None:
    plan = build_plan(s, [Target("h:1")], cluster=False)
    keys = build_everything(plan)
    assert len(keys) == plan.total_commands
    assert len({k for k, _, _ in keys}) == len(keys)
    assert all(len(k) == s.key_size and set(k) <= set(ALPHABET) for k, _, _ in keys)


@settings(max_examples=25, deadline=None)
@given(small_settings, slot_partitions())
def test_cluster_keys_land_on_their_node(s: FillSettings, targets: tuple[Target, ...]) -> None:
    plan = build_plan(s, targets, cluster=True)
    keys = build_everything(plan)
    assert len({k for k, _, _ in keys}) == len(keys) == plan.total_commands
    per_target: dict[int, Counter[int]] = {}
    for key, _, target in keys:
        assert len(key) == s.key_size
        slot = key_slot(key)
        assert any(a <= slot <= b for a, b in plan.targets[target].slots)
        per_target.setdefault(target, Counter())[slot] += 1
    for target, counts in per_target.items():
        spread = [counts.get(slot, 0) for slot in plan.targets[target].slot_list()]
        assert max(spread) - min(spread) <= 1


@given(st.integers(0, 12))
def test_barrier_needs_both_replies(cut: int) -> None:
    data = b"+OK\r\n+PONG\r\n"
    assert parse_barrier(data[:cut]) is (cut == len(data))


@given(slot_partitions(), st.integers(0, 10**9))
def test_nth_slot_matches_slot_list(targets: tuple[Target, ...], number: int) -> None:
    for target in targets:
        if target.slot_count:
            slots = target.slot_list()
            assert target.nth_slot(number) == slots[number % len(slots)]


SECRET_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@given(SECRET_TEXT, SECRET_TEXT, st.sets(st.integers(0, 15)))
def test_login_update_round_trips(username: str, password: str, targets: set[int]) -> None:
    line = login_update(Credential(username, password), targets)
    assert line.count(b"\n") == 1  # one line on the worker's stdin, whatever the secret
    cred, got = parse_login_update(line, 16)
    assert (cred.username, cred.password) == (username, password)
    assert got == sorted(targets)


@given(SECRET_TEXT, SECRET_TEXT)
def test_auth_command_is_one_command_with_the_secret_verbatim(user: str, password: str) -> None:
    parser = RespParser()
    parser.feed(auth_command(Credential(user, password)))
    value = parser.next_value()
    assert parser.next_value() is NEED_DATA
    assert isinstance(value, list)
    assert value[0] == b"AUTH"
    assert value[-1] == password.encode()
    assert len(value) == (2 if user == "default" else 3)
