"""Cost of the tunnel's statistics: what counting adds per relayed command, and per second.

Run ``python bench/bench_stats.py`` (optionally ``--commands 2000000``). Prints ns per
command for the per-command bookkeeping a relay does (:meth:`ConnectionCounters.record` plus
byte counts, the clock read for the latency, the once-a-second publish amortised), next to a
bare loop, and the cost of each view (snapshot, Prometheus text, INFO text) for 6 and 200
nodes, which runs about once a second. Compare with the relay's own cost per command (several
µs through TLS in Python; see PERFORMANCE.md) to judge the overhead.

It also prints what the standalone relay pays to know which bytes are replies (the scanning
that counting needs there), per command, in pipelines of 16: counting reply frames
(tunnel.tracking.CountingTracker, what --dashboard adds; it also catches the server's error for
TUNNEL) versus scanning request frames (what looking for TUNNEL in the requests would add).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from client.resp import encode_command
from tunnel.requests import RequestScanner
from tunnel.stats import PUBLISH_INTERVAL, ConnectionCounters, TunnelStats
from tunnel.tracking import CountingTracker, ReplyScanner

__all__ = ["main"]

NODE = "10.0.0.1:6379"


def best_of(runs: int, fn: Callable[[], int]) -> float:
    """Best (lowest) seconds per unit over ``runs`` runs of ``fn`` (which returns its units)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        units = fn()
        best = min(best, (time.perf_counter() - start) / units)
    return best


def per_command_rows(n: int) -> list[tuple[str, Callable[[], int]]]:
    latencies = [40_000 + (i * 7919) % 400_000 for i in range(1024)]  # 40..440 µs
    stats = TunnelStats("smart")

    def bare_loop() -> int:
        for i in range(n):
            latencies[i & 1023]
        return n

    def ops_increment() -> int:
        c = ConnectionCounters()
        for i in range(n):
            latencies[i & 1023]
            c.ops += 1
        return n

    def record() -> int:
        c = ConnectionCounters()
        for i in range(n):
            c.record(latencies[i & 1023])
        return n

    def record_bytes() -> int:
        c = ConnectionCounters()
        for i in range(n):
            c.record(latencies[i & 1023])
            c.bytes_in += 36
            c.bytes_out += 5
        return n

    def record_clock_publish() -> int:
        # What a relay does per command if it reads the clock per command and offers a
        # publication per command (the worst case; per 64 KiB chunk is the usual).
        c = ConnectionCounters()
        clock = time.perf_counter_ns
        for _ in range(n):
            start = clock()
            c.bytes_in += 36
            c.record(clock() - start)
            c.bytes_out += 5
            stats.maybe_publish(NODE, c, start / 1e9)
        stats.publish(NODE, c)
        return n

    def record_batch_16() -> int:
        # -P 16: one clock read and one record per pipelined batch of 16 commands.
        c = ConnectionCounters()
        for i in range(n // 16):
            c.record(latencies[i & 1023], 16)
            c.bytes_in += 36 * 16
            c.bytes_out += 5 * 16
        return n - n % 16

    return [
        ("bare loop (baseline)", bare_loop),
        ("c.ops += 1", ops_increment),
        ("record(latency)", record),
        ("record + bytes in/out", record_bytes),
        ("2 clock reads + record + bytes + maybe_publish", record_clock_publish),
        ("record(latency, 16) per -P 16 batch, per command", record_batch_16),
    ]


def filled_stats(nodes: int) -> TunnelStats:
    stats = TunnelStats("pinned")
    stats.set_topology(
        [
            {
                "address": f"10.0.{i // 250}.{i % 250}:6379",
                "role": "master" if i % 2 == 0 else "replica",
                "slots": [(i * 100, i * 100 + 99)] if i % 2 == 0 else [],
                "listener": f"127.0.0.1:{7000 + i}",
            }
            for i in range(nodes)
        ]
    )
    for i in range(nodes):
        c = ConnectionCounters()
        for j in range(500):
            c.record(20_000 + j * 997)
        c.bytes_in += 10_000
        c.moved += 3
        stats.publish(f"10.0.{i // 250}.{i % 250}:6379", c)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=1_000_000, help="commands per run")
    ap.add_argument("--runs", type=int, default=3, help="runs per row; the best one counts")
    args = ap.parse_args()
    print(
        f"python {sys.version.split()[0]}, {args.commands:,} commands per run, best of {args.runs}"
    )
    print(f"{'per command':52} {'ns/cmd':>8} {'extra vs bare':>14}")
    bare = None
    for name, fn in per_command_rows(args.commands):
        seconds = best_of(args.runs, fn)
        bare = seconds if bare is None else bare
        print(f"{name:52} {seconds * 1e9:8.1f} {(seconds - bare) * 1e9:14.1f}")

    c = ConnectionCounters()
    stats = TunnelStats("smart")

    def publish() -> int:
        for i in range(10_000):
            c.record(50_000 + i)
            stats.publish(NODE, c)
        return 10_000

    seconds = best_of(args.runs, publish)
    print(f"{'publish (1 command in the counters), per call':52} {seconds * 1e9:8.1f}")
    print(
        f"  -> at one publish per connection per {PUBLISH_INTERVAL:g} s, 1000 busy "
        f"connections spend {seconds * 1000 * 1e3:.2f} ms/s publishing"
    )

    print(f"\n{'view (runs about once a second)':40} {'6 nodes':>12} {'200 nodes':>12}")
    for label, view in (
        ("snapshot()", lambda s: s.snapshot()),
        ("snapshot_json() (WebSocket push)", lambda s: s.snapshot_json()),
        ("prometheus() (/metrics)", lambda s: s.prometheus()),
        ("info_text() (TUNNEL INFO)", lambda s: s.info_text()),
    ):
        cells = []
        for nodes in (6, 200):
            filled = filled_stats(nodes)

            def run(
                filled: TunnelStats = filled, view: Callable[[TunnelStats], object] = view
            ) -> int:
                for _ in range(20):
                    view(filled)
                return 20

            cells.append(f"{best_of(args.runs, run) * 1e3:9.3f} ms")
        print(f"{label:40} {cells[0]:>12} {cells[1]:>12}")
    scanning(args)


def scanning_rows(n: int) -> list[tuple[str, Callable[[], int]]]:
    """Scanning costs per command, 16 commands (or replies) per chunk."""
    chunks = max(1, n // 16)
    sets = b"".join(encode_command(b"SET", b"key:%012d" % i, b"xxx") for i in range(16))
    oks = b"+OK\r\n" * 16
    values = b"$3\r\nxxx\r\n" * 16

    def requests() -> int:
        scanner = RequestScanner()
        for _ in range(chunks):
            scanner.feed(sets)
        return chunks * 16

    def replies(data: bytes) -> Callable[[], int]:
        def run() -> int:
            scanner = ReplyScanner(CountingTracker())
            for _ in range(chunks):
                scanner.feed(data)
            return chunks * 16

        return run

    return [
        ("count reply frames: +OK (SET replies)", replies(oks)),
        ("count reply frames: $3 (GET replies)", replies(values)),
        ("scan request frames: SET key value (for comparison)", requests),
    ]


def scanning(args: argparse.Namespace) -> None:
    print(f"\n{'scanning, 16 per chunk':52} {'ns/cmd':>8}")
    for name, fn in scanning_rows(args.commands // 4):
        print(f"{name:52} {best_of(args.runs, fn) * 1e9:8.1f}")


if __name__ == "__main__":
    main()
