"""Fill planning: flags -> settings -> the whole key space, split into jobs and chunks (pure).

The arithmetic is the earlier tool's, kept exactly:

* ``totalMB = GB * 1024`` (MiB). With fractional ``-d`` the product is rounded to the nearest
  whole MiB (half up), so the resolution of ``-d`` is 1 MiB = 1/1024 GB: ``-d 0.25`` is exactly
  256 MiB. Whole and 1/1024-multiple values are exact; ``-d`` is parsed as a decimal, so no
  binary floating point error creeps in.
* The MiB are split over the jobs with integer division, the first ``remainder`` jobs getting
  one MiB more; jobs with 0 MiB are dropped.
* Each job sends ``ceil(MB * 2**20 / (key_size + value_size))`` SET commands, so "GB" counts key
  plus value payload bytes only (1 GB at 512/512 is exactly 1,048,576 keys).

Jobs. A *target* is the standalone server or one cluster master. Each target gets
``processes * connections`` job slots: slot ``q`` runs in process ``q // connections`` on that
process's connection ``q % connections``. Standalone: the MiB are split evenly over the slots
(with ``-P 1`` that is exactly the earlier tool). Cluster: the MiB are first split over the
masters *in proportion to the slots they own* (largest remainder, ties to the earlier master),
then evenly over each master's slots.

Key space. Keys are numbered per target (``first_key`` of a job plus the key's position), and
key number ``g`` of a cluster target lands on that target's ``g mod len(slots)``-th slot, so the
keys of a node are spread over its slots with per-slot counts differing by at most one.
Every job's commands are cut into chunks of ``chunk_commands`` (the last one shorter): one chunk
is one write. Chunks are numbered globally, which makes keys unique across jobs and processes:
a key embeds its chunk number (``hi`` digits) and its position in the chunk (``lo`` digits),
see :mod:`fill.payload`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from client.errors import ConfigError

__all__ = [
    "CHUNK_BYTES_MAX",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_KEY_SIZE",
    "DEFAULT_PIPELINE",
    "DEFAULT_VALUE_SIZE",
    "DIGIT_BASE",
    "KEY_SIZE_MAX",
    "MAX_CONNECTIONS",
    "MAX_PROCESSES",
    "MIB",
    "TAG_PREFIX",
    "VALUE_SIZE_MAX",
    "FillPlan",
    "FillSettings",
    "Job",
    "KeyLayout",
    "Target",
    "build_plan",
    "command_length",
    "commands_for",
    "digits_for",
    "megabytes_for",
    "parse_gigabytes",
    "settings_from_flags",
    "split_by_weight",
    "split_evenly",
]

MIB = 1 << 20
KEY_SIZE_MAX = 65536
VALUE_SIZE_MAX = 524288
DEFAULT_KEY_SIZE = 512
DEFAULT_VALUE_SIZE = 512
DEFAULT_PIPELINE = 8192
DEFAULT_CONNECTIONS = 2
MAX_CONNECTIONS = 256
MAX_PROCESSES = 64
SEED_MAX = (1 << 64) - 1

CHUNK_BYTES_MAX = 16 * MIB
"""A chunk (one write) holds ``--pipeline`` commands, but never more bytes than this (at least
one command). This keeps memory flat with big values: 8192 x 256 KiB would be 2 GiB."""

DIGIT_BASE = 64
"""Keys embed their chunk number and position as base-64 digits (see :mod:`fill.payload`)."""

TAG_PREFIX = 5
"""Bytes of the ``{tag}`` hash tag that starts every cluster key (a 3-character tag)."""


# --------------------------------------------------------------------------- arithmetic


def parse_gigabytes(text: str) -> Decimal:
    """``-d`` as an exact decimal: ``0.25`` stays 0.25. Raises ConfigError when invalid."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ConfigError(
            f"invalid -d/--data {text!r}: expected a number of GB, such as 0.25"
        ) from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"invalid -d/--data {text!r}: expected a number of GB >= 0")
    return value


def megabytes_for(gigabytes: Decimal) -> int:
    """``GB * 1024`` rounded to a whole MiB (half up): the earlier tool's ``totalMB``."""
    return int((gigabytes * 1024).to_integral_value(rounding=ROUND_HALF_UP))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` over ``parts`` with integer division; the first ``total % parts`` get +1."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_by_weight(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` in proportion to ``weights`` (largest remainder; ties go to the earlier one).

    The shares add up to ``total`` exactly. Equal weights give :func:`split_evenly`.
    """
    weight_sum = sum(weights)
    if not weights or weight_sum <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    shares = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def commands_for(megabytes: int, key_size: int, value_size: int) -> int:
    """SET commands for one job: ``ceil(MB * 2**20 / (key_size + value_size))``."""
    return -(-(megabytes * MIB) // (key_size + value_size))


def command_length(key_size: int, value_size: int) -> int:
    """Bytes of one encoded ``SET key value`` (RESP array of three bulk strings)."""
    return len(b"*3\r\n$3\r\nSET\r\n$%d\r\n\r\n$%d\r\n\r\n" % (key_size, value_size)) + (
        key_size + value_size
    )


def digits_for(count: int) -> int:
    """Base-64 digits needed to number ``count`` things (at least one)."""
    width = 1
    while DIGIT_BASE**width < count:
        width += 1
    return width


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class FillSettings:
    """Validated fill flags.

    Attributes:
        megabytes: payload MiB to write in total; 0 means flush only.
        connections: connections per target in each process (``-n``; ``-s`` means 1).
        processes: worker processes (``-P``); 1 means this process does the work.
        seed: seeds keys and values; the same seed and flags give the same data.
    """

    megabytes: int
    key_size: int = DEFAULT_KEY_SIZE
    value_size: int = DEFAULT_VALUE_SIZE
    pipeline: int = DEFAULT_PIPELINE
    connections: int = DEFAULT_CONNECTIONS
    processes: int = 1
    seed: int = 0
    flush: bool = False
    gigabytes: str = "0"

    @property
    def payload_size(self) -> int:
        return self.key_size + self.value_size

    def to_json(self) -> dict[str, Any]:
        return {
            "megabytes": self.megabytes,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "pipeline": self.pipeline,
            "connections": self.connections,
            "processes": self.processes,
            "seed": self.seed,
            "flush": self.flush,
            "gigabytes": self.gigabytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FillSettings:
        return cls(
            megabytes=int(data["megabytes"]),
            key_size=int(data["key_size"]),
            value_size=int(data["value_size"]),
            pipeline=int(data["pipeline"]),
            connections=int(data["connections"]),
            processes=int(data["processes"]),
            seed=int(data["seed"]),
            flush=bool(data["flush"]),
            gigabytes=str(data["gigabytes"]),
        )


def _check_range(flag: str, value: int, low: int, high: int | None, what: str) -> None:
    if value < low or (high is not None and value > high):
        bound = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
        raise ConfigError(f"invalid {flag} {value}: {what} must be {bound}")


def settings_from_flags(
    *,
    data: str | None,
    flush: bool,
    key_size: int = DEFAULT_KEY_SIZE,
    value_size: int = DEFAULT_VALUE_SIZE,
    pipeline: int = DEFAULT_PIPELINE,
    connections: int = DEFAULT_CONNECTIONS,
    serial: bool = False,
    processes: int | None = None,
    seed: int = 0,
) -> FillSettings:
    """Validate the fill flags. Raises ConfigError (exit 2) with a one-line message."""
    _check_range("--key-size", key_size, 1, KEY_SIZE_MAX, "the key size in bytes")
    _check_range("--value-size", value_size, 1, VALUE_SIZE_MAX, "the value size in bytes")
    _check_range("--pipeline", pipeline, 1, None, "the commands per batch")
    _check_range("-n/--connections", connections, 1, MAX_CONNECTIONS, "the connection count")
    if processes is not None:
        _check_range("-P/--processes", processes, 1, MAX_PROCESSES, "the process count")
    _check_range("--seed", seed, 0, SEED_MAX, "the seed")
    gigabytes = parse_gigabytes(data) if data is not None else Decimal(0)
    megabytes = megabytes_for(gigabytes)
    if gigabytes == 0 and not flush:
        raise ConfigError(
            "nothing to do: no data to write (-d GB) and no flush (-f)",
            hint="pass -d GB to fill (fractions allowed, e.g. -d 0.25), -f to flush, or both",
        )
    if gigabytes > 0 and megabytes == 0:
        raise ConfigError(
            f"invalid -d/--data {data}: less than 1 MiB of data",
            hint="the smallest fill is -d 0.001 (1 MiB = 1/1024 GB)",
        )
    return FillSettings(
        megabytes=megabytes,
        key_size=key_size,
        value_size=value_size,
        pipeline=pipeline,
        connections=1 if serial else connections,
        processes=processes or 1,
        seed=seed,
        flush=flush,
        gigabytes=_format_decimal(gigabytes),
    )


def _format_decimal(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class Target:
    """Where keys go: the standalone server, or one cluster master with its slot ranges."""

    address: str
    slots: tuple[tuple[int, int], ...] = ()

    @property
    def slot_count(self) -> int:
        return sum(end - start + 1 for start, end in self.slots)

    def slot_list(self) -> list[int]:
        """The slots, ascending (key number ``g`` goes to ``slot_list()[g % len]``)."""
        return [slot for start, end in sorted(self.slots) for slot in range(start, end + 1)]

    def nth_slot(self, number: int) -> int:
        """``slot_list()[number % slot_count]``, without building the list."""
        number %= self.slot_count
        for start, end in sorted(self.slots):
            size = end - start + 1
            if number < size:
                return start + number
            number -= size
        raise AssertionError("unreachable: number < slot_count")

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "slots": [list(r) for r in self.slots]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        slots = tuple((int(a), int(b)) for a, b in data["slots"])
        return cls(address=str(data["address"]), slots=slots)


@dataclass(frozen=True, slots=True)
class Job:
    """The work of one connection.

    Attributes:
        index: position in :attr:`FillPlan.jobs`.
        target: index into :attr:`FillPlan.targets`.
        process: the worker process that runs it (0 without ``-P``).
        connection: the connection number within that process and target.
        first_key: number of the job's first key within its target.
        first_chunk: global number of the job's first chunk.
    """

    index: int
    target: int
    process: int
    connection: int
    megabytes: int
    commands: int
    first_key: int
    first_chunk: int
    chunks: int


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Where the parts of a key sit: ``[{tag}][hi digits][lo digits][random padding]``.

    ``prefix`` is 5 for cluster keys (``{abc}``), else 0. ``hi`` numbers the chunk (globally),
    ``lo`` the position in the chunk; together they make every key of the run unique.
    """

    prefix: int
    hi_width: int
    lo_width: int

    @property
    def min_key_size(self) -> int:
        return self.prefix + self.hi_width + self.lo_width

    @property
    def hi_offset(self) -> int:
        return self.prefix

    @property
    def lo_offset(self) -> int:
        return self.prefix + self.hi_width


@dataclass(frozen=True)
class FillPlan:
    """The whole fill: every job of every process, computed identically by all processes."""

    settings: FillSettings
    targets: tuple[Target, ...]
    cluster: bool
    jobs: tuple[Job, ...]
    chunk_commands: int
    layout: KeyLayout
    total_chunks: int
    _by_process: dict[int, tuple[Job, ...]] = field(default_factory=dict, repr=False)

    @property
    def total_commands(self) -> int:
        return sum(job.commands for job in self.jobs)

    @property
    def total_bytes(self) -> int:
        """Payload bytes (keys + values) the plan writes."""
        return self.total_commands * self.settings.payload_size

    @property
    def command_length(self) -> int:
        return command_length(self.settings.key_size, self.settings.value_size)

    def expected_keys(self, target: int) -> int:
        return sum(job.commands for job in self.jobs if job.target == target)

    def jobs_of(self, process: int) -> tuple[Job, ...]:
        return self._by_process.get(process, ())

    @property
    def processes_used(self) -> tuple[int, ...]:
        return tuple(sorted(self._by_process))

    def chunk_size(self, job: Job, chunk: int) -> int:
        """Commands in chunk number ``chunk`` (0-based) of ``job``."""
        if not 0 <= chunk < job.chunks:
            raise IndexError(f"chunk {chunk} out of range 0..{job.chunks - 1}")
        return min(self.chunk_commands, job.commands - chunk * self.chunk_commands)


def build_plan(settings: FillSettings, targets: Iterable[Target], *, cluster: bool) -> FillPlan:
    """Plan the fill of ``targets``. Raises ConfigError when the keys cannot be made.

    Cluster targets must list their slots; masters without slots get no keys.
    """
    target_list = tuple(targets)
    if not target_list:
        raise ConfigError("no server to fill: the cluster reports no master with slots")
    if cluster:
        target_list = tuple(t for t in target_list if t.slot_count > 0)
        if not target_list:
            raise ConfigError("no server to fill: no cluster master owns any slot")
        shares = split_by_weight(settings.megabytes, [t.slot_count for t in target_list])
    else:
        if len(target_list) != 1:
            raise ValueError("a standalone fill has exactly one target")
        shares = [settings.megabytes]
    per_process = settings.connections
    slots_per_target = settings.processes * per_process
    length = command_length(settings.key_size, settings.value_size)
    chunk_commands = min(settings.pipeline, max(1, CHUNK_BYTES_MAX // length))

    jobs: list[Job] = []
    next_chunk = 0
    for t_index, share in enumerate(shares):
        next_key = 0
        for q, megabytes in enumerate(split_evenly(share, slots_per_target)):
            if megabytes == 0:
                continue
            commands = commands_for(megabytes, settings.key_size, settings.value_size)
            chunks = math.ceil(commands / chunk_commands)
            jobs.append(
                Job(
                    index=len(jobs),
                    target=t_index,
                    process=q // per_process,
                    connection=q % per_process,
                    megabytes=megabytes,
                    commands=commands,
                    first_key=next_key,
                    first_chunk=next_chunk,
                    chunks=chunks,
                )
            )
            next_key += commands
            next_chunk += chunks

    layout = KeyLayout(
        prefix=TAG_PREFIX if cluster else 0,
        hi_width=digits_for(next_chunk),
        lo_width=digits_for(chunk_commands),
    )
    total = sum(job.commands for job in jobs)
    if settings.key_size < layout.min_key_size:
        what = f"{total:,} unique keys"
        if cluster:
            rest = layout.min_key_size - TAG_PREFIX
            why = f"{TAG_PREFIX} for the {{tag}} hash tag + {rest} to keep them unique"
        else:
            why = "to keep them unique"
        raise ConfigError(
            f"invalid --key-size {settings.key_size}: {what} need at least "
            f"{layout.min_key_size} bytes per key ({why})",
            hint=f"use --key-size {layout.min_key_size} or more",
        )
    by_process: dict[int, list[Job]] = {}
    for job in jobs:
        by_process.setdefault(job.process, []).append(job)
    return FillPlan(
        settings=settings,
        targets=target_list,
        cluster=cluster,
        jobs=tuple(jobs),
        chunk_commands=chunk_commands,
        layout=layout,
        total_chunks=next_chunk,
        _by_process={p: tuple(js) for p, js in by_process.items()},
    )
