"""Fill progress: counters, live/periodic rendering and the final summary (no trio, no sockets).

Counters are per target (the server, or each cluster master). Workers in this process add to
them; with ``-P`` each child process reports its own cumulative counters, which the parent
keeps per child and adds up. MB means 2**20 bytes, as in ``-d`` (GB = 2**30 bytes); "bytes"
counts key + value payload, as ``-d`` does. The wire bytes (with RESP framing) are kept too.

:class:`ProgressPrinter` draws either a live table (a TTY: one line per node plus a total line,
redrawn in place) or plain lines (not a TTY: one total line every few seconds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "FillProgress",
    "FillSummary",
    "ProgressPrinter",
    "format_bytes",
    "format_duration",
]

MIB = float(1 << 20)


def format_bytes(count: float) -> str:
    """``1.5 GB`` / ``12.3 MB`` / ``512 B`` (binary units, as ``-d``)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class FillProgress:
    """Per-target counters of a fill, with a smoothed rate for the ETA.

    Args:
        addresses: one per target.
        expected_keys, expected_bytes: the plan's per-target totals (payload bytes).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        expected_keys: Sequence[int],
        expected_bytes: Sequence[int],
        *,
        started: float,
    ) -> None:
        self.addresses = list(addresses)
        self.expected_keys = list(expected_keys)
        self.expected_bytes = list(expected_bytes)
        self.started = started
        count = len(self.addresses)
        self._keys = [0] * count
        self._bytes = [0] * count
        self._wire = [0] * count
        self._reauths = 0
        self._children: dict[int, tuple[list[int], list[int], list[int]]] = {}
        self._child_reauths: dict[int, int] = {}
        self._rates = [0.0] * count
        self._last: tuple[float, list[int]] | None = None

    # -- updates

    def add(self, target: int, keys: int, payload: int, wire: int) -> None:
        """Count a chunk written by a worker of this process."""
        self._keys[target] += keys
        self._bytes[target] += payload
        self._wire[target] += wire

    def count_reauth(self) -> None:
        """Count a live fill connection logged in again with a new credential."""
        self._reauths += 1

    def absorb(self, child: int, report: Mapping[str, Any]) -> None:
        """Take a child process's cumulative counters (``counters()`` of its progress)."""
        self._children[child] = (
            [int(x) for x in report["keys"]],
            [int(x) for x in report["bytes"]],
            [int(x) for x in report["wire"]],
        )
        self._child_reauths[child] = int(report.get("reauths", 0))

    def counters(self) -> dict[str, Any]:
        """Cumulative counters, as a child process reports them to its parent."""
        return {
            "keys": self.keys(),
            "bytes": self.payload(),
            "wire": self.wire(),
            "reauths": self.reauths(),
        }

    def reauths(self) -> int:
        """Fill connections logged in again, in this process and its children."""
        return self._reauths + sum(self._child_reauths.values())

    # -- totals

    def _sum(self, own: list[int], part: int) -> list[int]:
        out = list(own)
        for values in self._children.values():
            for i, v in enumerate(values[part]):
                out[i] += v
        return out

    def keys(self) -> list[int]:
        return self._sum(self._keys, 0)

    def payload(self) -> list[int]:
        return self._sum(self._bytes, 1)

    def wire(self) -> list[int]:
        return self._sum(self._wire, 2)

    def sample(self, now: float) -> list[float]:
        """Update and return the smoothed write rate of each target (payload bytes/s)."""
        payload = self.payload()
        if self._last is None:
            elapsed = now - self.started
            self._rates = [b / elapsed if elapsed > 0 else 0.0 for b in payload]
        else:
            then, before = self._last
            if now - then > 0:
                for i, (b, old) in enumerate(zip(payload, before, strict=True)):
                    current = (b - old) / (now - then)
                    rate = self._rates[i]
                    self._rates[i] = current if rate == 0 else 0.5 * rate + 0.5 * current
        self._last = (now, payload)
        return list(self._rates)

    # -- rendering

    def _line(
        self, label: str, keys: int, done: int, want_keys: int, want: int, rate: float
    ) -> str:
        pct = 100.0 * done / want if want else 100.0
        eta = (want - done) / rate if rate > 0 else None
        if done >= want:
            eta = 0.0
        return (
            f"{label}  {pct:5.1f}%  {format_bytes(done):>9} / {format_bytes(want):<9}  "
            f"{keys:>12,} / {want_keys:,} keys  {rate / MIB:8.1f} MB/s  ETA {format_duration(eta)}"
        )

    def table(self, now: float) -> list[str]:
        """The live view: one line per target (when there are several), then the total."""
        rates = self.sample(now)
        rate = sum(rates)
        keys, payload = self.keys(), self.payload()
        total = sum(payload)
        width = max([len(a) for a in self.addresses] + [5])
        lines = []
        if len(self.addresses) > 1:
            for i, address in enumerate(self.addresses):
                lines.append(
                    self._line(
                        address.ljust(width),
                        keys[i],
                        payload[i],
                        self.expected_keys[i],
                        self.expected_bytes[i],
                        rates[i],
                    )
                )
        lines.append(
            self._line(
                "total".ljust(width),
                sum(keys),
                total,
                sum(self.expected_keys),
                sum(self.expected_bytes),
                rate,
            )
            + f"  {format_duration(now - self.started)} elapsed"
        )
        return lines

    def line(self, now: float) -> str:
        """One plain progress line (non-TTY output)."""
        return "fill: " + self.table(now)[-1].removeprefix("total").strip()


class ProgressPrinter:
    """Writes progress to ``stream``: redrawn in place on a TTY, else plain periodic lines."""

    def __init__(self, progress: FillProgress, stream: TextIO, *, live: bool) -> None:
        self.progress = progress
        self.stream = stream
        self.live = live
        self._drawn = 0

    def tick(self, now: float) -> None:
        if self.live:
            lines = self.progress.table(now)
            out = []
            if self._drawn:
                out.append(f"\x1b[{self._drawn}F")
            out.extend(f"\x1b[2K{line}\n" for line in lines)
            self.stream.write("".join(out))
            self._drawn = len(lines)
        else:
            self.stream.write(self.progress.line(now) + "\n")
        self.stream.flush()

    def finish(self, now: float) -> None:
        """Draw the final state once more (live view only)."""
        if self.live and self._drawn:
            self.tick(now)


@dataclass
class FillSummary:
    """The result of a fill, printed as text or as one JSON line."""

    keys: int
    payload_bytes: int
    wire_bytes: int
    seconds: float
    expected_keys: int
    seed: int
    flushed: bool
    dbsize: dict[str, int] = field(default_factory=dict)
    dbsize_before: dict[str, int] = field(default_factory=dict)
    verified: bool | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    late_warnings: list[str] = field(default_factory=list)
    reauths: int = 0
    """Live connections logged in again with a new credential during the fill."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / MIB / self.seconds if self.seconds > 0 else 0.0

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0

    @property
    def dbsize_total(self) -> int:
        return sum(self.dbsize.values())

    def text(self) -> list[str]:
        lines = [
            f"Sent {self.keys:,} keys, {self.payload_bytes:,} bytes "
            f"({format_bytes(self.payload_bytes)} of keys+values, "
            f"{format_bytes(self.wire_bytes)} on the wire) in "
            f"{self.seconds:.2f} s: {self.mb_per_s:.1f} MB/s, {self.keys_per_s:,.0f} keys/s",
        ]
        for address, size in self.dbsize.items():
            before = self.dbsize_before.get(address)
            extra = f" (was {before:,})" if before is not None and not self.flushed else ""
            lines.append(f"  DBSIZE {address}: {size:,}{extra}")
        if len(self.dbsize) > 1:
            lines.append(f"  DBSIZE total: {self.dbsize_total:,}")
        if self.reauths:
            lines.append(
                f"Credential rotated: {self.reauths:,} live connections logged in again in place"
            )
        if self.verified is True:
            lines.append(f"Verified: {self.dbsize_total:,} keys, as expected")
        lines.append(f"(seed {self.seed}: pass --seed {self.seed} to write the same data again)")
        return lines

    def complaints(self) -> list[str]:
        """Warnings found while verifying, then the problems (for stderr)."""
        return [f"warning: {w}" for w in self.late_warnings] + [
            f"error: {p}" for p in self.problems
        ]

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": "fill",
                "ok": self.ok,
                "keys": self.keys,
                "bytes": self.payload_bytes,
                "wire_bytes": self.wire_bytes,
                "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3),
                "keys_per_s": round(self.keys_per_s, 1),
                "expected_keys": self.expected_keys,
                "dbsize": self.dbsize,
                "dbsize_total": self.dbsize_total,
                "flushed": self.flushed,
                "verified": self.verified,
                "seed": self.seed,
                "reauths": self.reauths,
                "warnings": self.warnings + self.late_warnings,
                "errors": self.problems,
            },
            separators=(",", ":"),
        )
