"""Benchmark: ``redis-client fill`` vs ``redis-cli --pipe`` on the same servers and data.

Usage::

    python bench/bench_fill.py [--gb 0.25] [--key-size 512] [--value-size 512] [--runs 3]
                               [--skip-standalone] [--skip-tls] [--skip-cluster] [--skip-scaling]

Starts its own servers on free loopback ports (client.embedded): a plaintext and a TLS
standalone server, and a plaintext 3-master cluster without replicas. Every measurement
flushes first (not timed), then times the whole command, process start to exit.

* ``redis-cli --pipe`` reads a file generated beforehand (not timed) holding the very bytes
  our fill sends (same keys, values and sizes: one serial plan, built with fill.payload).
* Cluster: ``redis-cli --pipe`` runs once per master *at the same time*, each fed the keys
  of its node; the time is from the first start to the last exit (the "sum" of the nodes).
* Scaling: ``-n``, ``--pipeline`` and ``-P`` on the plaintext server.

Runs are interleaved (ours, theirs, ours, ...) and the median is reported, because the
machine is shared. MB/s is payload (key + value) MiB per wall-clock second; "fill s" is our
own timer (first connection to last barrier: no Python start-up, discovery, flush or batch
preparation) and "fixed s" the rest of our wall time (interpreter and imports, discovery,
flush, batch preparation, verification, exit). Ratio = our MB/s / redis-cli MB/s, both from
wall-clock time; "inner" = the same ratio with our fill s instead of our wall time.
Bounded: at most --gb GB per run (max 2), servers stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certs import CertPaths, generate  # noqa: E402
from client.embedded import (  # noqa: E402
    LocalCluster,
    RedisNode,
    find_redis_cli,
    start_cluster,
    start_standalone,
)
from client.slots import slot_tags  # noqa: E402
from fill.payload import BatchBuilder  # noqa: E402
from fill.plan import FillPlan, Target, build_plan, settings_from_flags  # noqa: E402

__all__: list[str] = []

ENTRY = "import sys; from client.main import main; sys.exit(main())"
PASSWORD = "bench-secret"
MIB = 1 << 20


@dataclass
class Result:
    case: str
    tool: str
    command: str
    walls: list[float]
    inner: list[float]
    payload: int

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def mbps(self) -> float:
        return self.payload / MIB / self.wall


def env_for(password: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("REDIS_CLIENT_PASSWORD", None)
    env.pop("REDISCLI_AUTH", None)
    if password:
        env["REDIS_CLIENT_PASSWORD"] = password
        env["REDISCLI_AUTH"] = password
    return env


def flush(nodes: Sequence[RedisNode]) -> None:
    for node in nodes:
        node.call("FLUSHALL")


def dbsize(nodes: Sequence[RedisNode]) -> int:
    return sum(int(node.call("DBSIZE")) for node in nodes)  # type: ignore[call-overload]


def write_pipe_files(plan: FillPlan, tags: list[str] | None, directory: Path) -> list[Path]:
    """One file per target with exactly the bytes our fill sends to it."""
    builder = BatchBuilder(plan, tags)
    buf = bytearray(builder.buffer_size)
    paths = []
    for index in range(len(plan.targets)):
        path = directory / f"pipe-{index}.resp"
        with path.open("wb") as out:
            for job in plan.jobs:
                if job.target != index:
                    continue
                for chunk in range(job.chunks):
                    size = builder.build(buf, job, chunk)
                    out.write(memoryview(buf)[:size])
        paths.append(path)
    return paths


def ours(flags: Sequence[str], env: dict[str, str]) -> tuple[float, float, int]:
    cmd = [sys.executable, "-c", ENTRY, "fill", *flags, "-f", "--json"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fill failed ({done.returncode}): {done.stderr.strip()}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, float(summary["seconds"]), int(summary["dbsize_total"])


def redis_cli_pipe(
    nodes: Sequence[RedisNode], files: Sequence[Path], tls: CertPaths | None, env: dict[str, str]
) -> float:
    procs = []
    start = time.perf_counter()
    for node, path in zip(nodes, files, strict=True):
        cmd = [find_redis_cli(), "-h", node.host, "-p", str(node.port), "--pipe"]
        if tls is not None:
            cmd += ["--tls", "--cacert", str(tls.ca)]
        with path.open("rb") as data:
            procs.append(
                subprocess.Popen(
                    cmd, stdin=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
                )
            )
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0 or b"errors: 0" not in out:
            raise SystemExit(f"redis-cli --pipe failed: {out[-300:]!r} {err[-300:]!r}")
    return time.perf_counter() - start


def measure(
    case: str,
    nodes: Sequence[RedisNode],
    flags: list[str],
    files: Sequence[Path] | None,
    tls: CertPaths | None,
    password: str | None,
    expected: int,
    payload: int,
    runs: int,
    results: list[Result],
    pipe_expected: int | None = None,
) -> None:
    env = env_for(password)
    mine = Result(case, "redis-client fill", "", [], [], payload)
    theirs = Result(case, "redis-cli --pipe", "", [], [], payload)
    shown = " ".join(shlex.quote(f) for f in flags)
    mine.command = f"redis-client fill {shown} -f --json"
    if files is not None:
        tls_part = f" --tls --cacert {tls.ca}" if tls else ""
        theirs.command = " & ".join(
            f"redis-cli -h {n.host} -p {n.port}{tls_part} --pipe < {f.name}"
            for n, f in zip(nodes, files, strict=True)
        )
    for _ in range(runs):
        flush(nodes)
        wall, inner, count = ours(flags, env)
        if count != expected:
            raise SystemExit(f"{case}: fill wrote {count} keys, expected {expected}")
        mine.walls.append(wall)
        mine.inner.append(inner)
        if files is not None:
            flush(nodes)
            theirs.walls.append(redis_cli_pipe(nodes, files, tls, env))
            want = expected if pipe_expected is None else pipe_expected
            if dbsize(nodes) != want:
                raise SystemExit(f"{case}: redis-cli --pipe wrote {dbsize(nodes)}, not {want}")
    results.append(mine)
    if files is not None:
        results.append(theirs)


def table(results: list[Result]) -> str:
    lines = [
        f"{'case':<34} {'tool':<18} {'wall s':>7} {'fill s':>7} {'fixed s':>7} {'MB/s':>8} "
        f"{'ratio':>6} {'inner':>6}",
        "-" * 101,
    ]
    baseline: dict[str, float] = {}
    for r in results:
        if r.tool == "redis-cli --pipe":
            baseline[r.case] = r.mbps
    for r in results:
        inner = fixed = " " * 7
        base = baseline.get(r.case)
        ratio = inner_ratio = ""
        if r.inner:
            fill_s = statistics.median(r.inner)
            inner, fixed = f"{fill_s:7.2f}", f"{r.wall - fill_s:7.2f}"
            if base:
                inner_ratio = f"{r.payload / MIB / fill_s / base:6.2f}"
        if base and r.tool != "redis-cli --pipe":
            ratio = f"{r.mbps / base:6.2f}"
        lines.append(
            f"{r.case:<34} {r.tool:<18} {r.wall:7.2f} {inner} {fixed} {r.mbps:8.1f} "
            f"{ratio:>6} {inner_ratio:>6}"
        )
    lines.append("")
    lines.append("commands:")
    for r in results:
        lines.append(f"  [{r.case} / {r.tool}] {r.command}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", default="0.25", help="GB per run (max 2)")
    parser.add_argument("--key-size", type=int, default=512)
    parser.add_argument("--value-size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-standalone", action="store_true", help="no plaintext cases")
    parser.add_argument("--skip-tls", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args(argv)
    if float(args.gb) > 2:
        parser.error("--gb is capped at 2 (the bench must stay bounded)")
    sizes = ["--key-size", str(args.key_size), "--value-size", str(args.value_size)]
    settings = settings_from_flags(
        data=args.gb, flush=False, key_size=args.key_size, value_size=args.value_size,
        connections=1, seed=1,
    )  # fmt: skip
    results: list[Result] = []
    started: list[RedisNode | LocalCluster] = []
    with tempfile.TemporaryDirectory(prefix="bench-fill-") as tmp:
        work = Path(tmp)
        certs = generate(work / "certs")
        try:
            plain = start_standalone(tls=False, password=None, certs=certs, workdir=work / "plain")
            started.append(plain)
            plan = build_plan(settings, [Target(plain.address)], cluster=False)
            files = write_pipe_files(plan, None, work)
            expected, payload = plan.total_commands, plan.total_bytes
            base = ["-h", plain.host, "-p", str(plain.port), "-d", args.gb, *sizes]
            print(f"plaintext: {expected:,} keys, {payload / MIB:.0f} MiB payload", flush=True)
            if not args.skip_standalone:
                measure(
                    "standalone plaintext (-n 1)", [plain], [*base, "-n", "1", "--seed", "1"],
                    files, None, None, expected, payload, args.runs, results,
                )  # fmt: skip
                measure(
                    "standalone plaintext (defaults)", [plain], [*base], files, None, None,
                    plan_keys(settings, []), payload, args.runs, results, expected,
                )  # fmt: skip
            if not args.skip_scaling and not args.skip_standalone:
                for extra in (
                    ["-n", "1"], ["-n", "4"], ["--pipeline", "64"], ["--pipeline", "1024"],
                    ["-P", "2", "-n", "1"], ["-P", "2"],
                ):  # fmt: skip
                    measure(
                        f"scaling {' '.join(extra)}", [plain], [*base, *extra], None, None,
                        None, plan_keys(settings, extra), payload, args.runs, results,
                    )  # fmt: skip
            if not args.skip_tls:
                tls = start_standalone(
                    tls=True, password=PASSWORD, certs=certs, workdir=work / "tls"
                )
                started.append(tls)
                flags = ["-h", tls.host, "-p", str(tls.port), "-t", "--cacert", str(certs.ca)]
                measure(
                    "standalone TLS (-n 1)", [tls], [*flags, "-d", args.gb, *sizes, "-n", "1",
                    "--seed", "1"], files, certs, PASSWORD, expected, payload, args.runs, results,
                )  # fmt: skip
                measure(
                    "standalone TLS (defaults)", [tls], [*flags, "-d", args.gb, *sizes], files,
                    certs, PASSWORD, plan_keys(settings, []), payload, args.runs, results,
                    expected,
                )  # fmt: skip
            if not args.skip_cluster:
                cluster = start_cluster(
                    masters=3, replicas_per_master=0, password=PASSWORD, certs=certs,
                    tls=False, workdir=work / "cluster",
                )  # fmt: skip
                started.append(cluster)
                masters = sorted(cluster.masters(), key=lambda n: _first_slot(n))
                targets = [Target(m.address, _slots(m)) for m in masters]
                cplan = build_plan(settings, targets, cluster=True)
                cfiles = write_pipe_files(cplan, slot_tags(), work)
                seed = cluster.seed
                flags = ["-h", seed.host, "-p", str(seed.port), "-c", "-d", args.gb, *sizes]
                measure(
                    "cluster 3 masters (-n 1)", masters, [*flags, "-n", "1", "--seed", "1"],
                    cfiles, None, PASSWORD, cplan.total_commands, cplan.total_bytes, args.runs,
                    results,
                )  # fmt: skip
                measure(
                    "cluster 3 masters (defaults)", masters, flags, cfiles, None, PASSWORD,
                    cplan_keys(settings, targets, ["-n", "2"]), cplan.total_bytes, args.runs,
                    results, cplan.total_commands,
                )  # fmt: skip
        finally:
            for server in reversed(started):
                server.stop()
    print()
    print(table(results))
    return 0


def plan_keys(settings: object, extra: list[str]) -> int:
    """Expected keys of a standalone run with extra flags (-n / -P change the job split)."""
    from fill.plan import FillSettings

    assert isinstance(settings, FillSettings)
    n = int(extra[extra.index("-n") + 1]) if "-n" in extra else 2
    p = int(extra[extra.index("-P") + 1]) if "-P" in extra else 1
    changed = FillSettings(**{**settings.to_json(), "connections": n, "processes": p})
    return build_plan(changed, [Target("x:1")], cluster=False).total_commands


def cplan_keys(settings: object, targets: list[Target], extra: list[str]) -> int:
    from fill.plan import FillSettings

    assert isinstance(settings, FillSettings)
    n = int(extra[extra.index("-n") + 1])
    changed = FillSettings(**{**settings.to_json(), "connections": n})
    return build_plan(changed, targets, cluster=True).total_commands


def _slots(node: RedisNode) -> tuple[tuple[int, int], ...]:
    table_ = node.call("CLUSTER", "SLOTS")
    assert isinstance(table_, list)
    out = []
    for entry in table_:
        if int(entry[2][1]) == node.port:
            out.append((int(entry[0]), int(entry[1])))
    return tuple(sorted(out))


def _first_slot(node: RedisNode) -> int:
    slots = _slots(node)
    return slots[0][0] if slots else 1 << 20


if __name__ == "__main__":
    sys.exit(main())
