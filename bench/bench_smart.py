"""Benchmark: redis-benchmark through the smart tunnel vs stunnel vs a direct cluster client.

Usage::

    python bench/bench_smart.py [--clients 50] [-n1 50000] [-n16 300000] [--runs 1]
                                [--stats] [--baseline DIR] [--replicas] [--json FILE]

Starts its own TLS cluster on free loopback ports (client.embedded: 3 masters; with
``--replicas`` one replica each), then, for ``-P 1`` and ``-P 16``, runs ``redis-benchmark
-c 50 -t set,get`` against:

* ``smart``: the smart tunnel of this checkout (``serve_smart`` run by a small launcher, so
  the benchmark does not depend on the ``tunn`` flags) on a plaintext port;
* ``smart+stats`` (``--stats``): the same with statistics on (``TunnelConfig.stats``, what
  ``--stats``/``--dashboard`` set): the cost of counting (issue 7);
* ``before`` (``--baseline DIR``): the smart tunnel of another checkout (say ``git archive``
  of the previous commit), for before/after numbers from one run;
* ``replica`` (``--replicas``): the smart tunnel with ``read_from="replica"``: GETs on the
  replicas (issue 9);
* ``stunnel``: Debian's stunnel4 in client mode in front of ONE node: the master that owns
  the benchmark's key (``key:__rand_int__``, fixed without ``-r``), so every command is
  served and the comparison is like for like (one TLS hop, same key);
* ``cluster``: ``redis-benchmark --cluster --tls`` straight to the nodes (no proxy at all).

The targets run one after the other for each pipeline depth (interleaved, so drift on a
shared machine hits all of them); with ``--runs N`` the median of N is reported. The ratios
are smart / stunnel (the issue's goals: >= 0.8 at -P 1, >= 0.6 at -P 16), smart / cluster,
and the other smart variants / smart. Each tunnel's own CPU time per run is read from /proc.
Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certs import CertPaths, generate  # noqa: E402
from client.embedded import LocalCluster, RedisNode, start_cluster  # noqa: E402
from client.slots import key_slot  # noqa: E402

__all__: list[str] = []

# Runs serve_smart from the checkout in the working directory: argv = seed host, seed port,
# CA file, local port, read_from, "stats" or "-"; the password comes from the environment.
LAUNCHER = """
import io, os, sys
import trio
from client.options import ServerOptions, TlsOptions
from tunnel.server import TunnelConfig
from tunnel.smart import serve_smart

host, port, cacert, local_port, read_from, stats = sys.argv[1:7]
extra = {}
if stats == "stats":
    from tunnel.stats import TunnelStats
    extra["stats"] = TunnelStats("smart")
if read_from != "master":
    extra["read_from"] = read_from
config = TunnelConfig(
    upstream=ServerOptions(host=host, port=int(port), tls=TlsOptions(cacert=cacert),
                           password=os.environ["BENCH_PASSWORD"], cluster=True),
    listen="127.0.0.1", local_port=int(local_port), **extra,
)
try:
    trio.run(serve_smart, config)
except KeyboardInterrupt:
    pass
"""
PASSWORD = "bench-secret"
KEY = b"key:__rand_int__"
START_TIMEOUT = 60.0
RUN_TIMEOUT = 600.0


@dataclass
class Sample:
    rps: float
    p50: float
    p99: float
    cpu: float | None = None  # the tunnel's CPU seconds during the run (smart only)


@dataclass
class Row:
    pipeline: int
    test: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def median(self, target: str) -> Sample:
        runs = self.samples.get(target, [])
        if not runs:
            return Sample(0.0, 0.0, 0.0)
        rps = statistics.median(s.rps for s in runs)
        best = min(runs, key=lambda s: abs(s.rps - rps))
        return best


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after start-up")


def owner_of(cluster: LocalCluster, slot: int) -> RedisNode:
    table = cluster.seed.call("CLUSTER", "SLOTS")
    assert isinstance(table, list)
    for entry in table:
        if entry[0] <= slot <= entry[1]:
            return cluster.node_by_port(int(entry[2][1]))
    raise SystemExit(f"slot {slot} has no owner")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start_smart(
    cluster: LocalCluster,
    certs: CertPaths,
    port: int,
    *,
    repo: Path = ROOT,
    stats: bool = False,
    read_from: str = "master",
) -> subprocess.Popen[str]:
    seed = cluster.seed
    cmd = [sys.executable, "-c", LAUNCHER, seed.host, str(seed.port), str(certs.ca), str(port)]
    cmd += [read_from, "stats" if stats else "-"]
    env = {**os.environ, "BENCH_PASSWORD": PASSWORD, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the smart tunnel exited during start-up (code {proc.wait()})")
        if line.startswith("ready"):
            return proc
    proc.kill()
    raise SystemExit("the smart tunnel did not print its ready line in time")


def start_stunnel(
    workdir: Path, certs: CertPaths, node: RedisNode, port: int
) -> subprocess.Popen[str]:
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    if binary is None:
        raise SystemExit("stunnel4 is not installed (apt-get install stunnel4)")
    conf = workdir / "stunnel.conf"
    conf.write_text(
        "foreground = yes\npid =\n[redis]\nclient = yes\n"
        f"accept = 127.0.0.1:{port}\nconnect = {node.host}:{node.port}\n"
        f"CAfile = {certs.ca}\nverifyChain = yes\n"
    )
    proc = subprocess.Popen(
        [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    wait_port(port, time.monotonic() + START_TIMEOUT)
    return proc


def run_benchmark(args: list[str], env: dict[str, str] | None = None) -> dict[str, Sample]:
    cmd = ["redis-benchmark", *args, "--csv"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[:300]}")
    out: dict[str, Sample] = {}
    for line in done.stdout.splitlines():
        cols = [c.strip('"') for c in line.split(",")]
        if len(cols) < 7 or cols[0] == "test":
            continue
        # test, rps, avg, min, p50, p95, p99, max
        out[cols[0]] = Sample(float(cols[1]), float(cols[4]), float(cols[6]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("-n1", type=int, default=50_000, help="requests per test at -P 1")
    parser.add_argument("-n16", type=int, default=300_000, help="requests per test at -P 16")
    parser.add_argument("--runs", type=int, default=1, help="runs per target (median)")
    parser.add_argument(
        "--stats", action="store_true", help="also run the tunnel with statistics on"
    )
    parser.add_argument(
        "--baseline", type=Path, help="also run the smart tunnel of this checkout ('before')"
    )
    parser.add_argument(
        "--replicas",
        action="store_true",
        help="a cluster with replicas, and a tunnel that reads from them",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    ns = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        raise SystemExit("redis-benchmark is not installed (apt-get install redis-tools)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-smart-"))
    procs: list[subprocess.Popen[str]] = []
    cluster: LocalCluster | None = None
    try:
        certs = generate(workdir / "certs")
        replicas = 1 if ns.replicas else 0
        print(f"starting a TLS cluster (3 masters, {replicas * 3} replicas) ...", flush=True)
        cluster = start_cluster(
            masters=3,
            replicas_per_master=replicas,
            password=PASSWORD,
            certs=certs,
            workdir=workdir / "cluster",
        )
        node = owner_of(cluster, key_slot(KEY))
        tunnels: dict[str, tuple[int, subprocess.Popen[str]]] = {}
        variants: list[tuple[str, dict[str, Any]]] = [("smart", {})]
        if ns.stats:
            variants.append(("smart+stats", {"stats": True}))
        if ns.baseline is not None:
            variants.append(("before", {"repo": ns.baseline.resolve()}))
        if ns.replicas:
            variants.append(("replica", {"read_from": "replica"}))
        for name, kw in variants:
            port = free_port()
            proc = start_smart(cluster, certs, port, **kw)
            procs.append(proc)
            tunnels[name] = (port, proc)
        stunnel_port = free_port()
        procs.append(start_stunnel(workdir, certs, node, stunnel_port))
        seed = cluster.seed
        # redis-benchmark has no environment variable for the password; this one is
        # throwaway (the servers live in a temp dir for the length of the run).
        auth = ["-a", PASSWORD]
        tls = ["--tls", "--cacert", str(certs.ca)]
        targets: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "stunnel": (["-p", str(stunnel_port), *auth], None),
            **{name: (["-p", str(port)], None) for name, (port, _) in tunnels.items()},
            "cluster": (["--cluster", "-h", seed.host, "-p", str(seed.port), *tls, *auth], None),
        }
        rows: dict[tuple[int, str], Row] = {}
        for pipeline, requests in ((1, ns.n1), (16, ns.n16)):
            for _ in range(ns.runs):
                for target, (where, env) in targets.items():
                    common = ["-c", str(ns.clients), "-n", str(requests), "-t", "set,get"]
                    tunnel = tunnels[target][1] if target in tunnels else None
                    before = cpu_seconds(tunnel.pid) if tunnel is not None else 0.0
                    samples = run_benchmark([*where, *common, "-P", str(pipeline)], env)
                    cpu = cpu_seconds(tunnel.pid) - before if tunnel is not None else None
                    for test, sample in samples.items():
                        sample.cpu = cpu
                        row = rows.setdefault((pipeline, test), Row(pipeline, test))
                        row.samples.setdefault(target, []).append(sample)
                    print(f"  -P {pipeline:<2} {target:<8} done", flush=True)
        report(list(rows.values()), ns, [name for name, _ in variants])
        if ns.json is not None:
            ns.json.write_text(
                json.dumps([asdict(r) for r in rows.values()], indent=2), encoding="utf-8"
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(rows: list[Row], ns: argparse.Namespace, variants: list[str]) -> None:
    print()
    print(
        f"redis-benchmark -c {ns.clients} -t set,get, median of {ns.runs} run(s); "
        "rps (p50/p99 ms); tunnel CPU seconds per 100k requests in [ ]"
    )
    print()
    others = [v for v in variants if v != "smart"]
    head = ["-P", "test", "stunnel (1 node)", *variants, "cluster --tls direct"]
    head += ["smart/stunnel", "smart/cluster", *(f"{v}/smart" for v in others)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for row in sorted(rows, key=lambda r: (r.pipeline, r.test)):
        requests = ns.n1 if row.pipeline == 1 else ns.n16
        st, sm, cl = row.median("stunnel"), row.median("smart"), row.median("cluster")
        cells = [str(row.pipeline), row.test, _cell(st)]
        for variant in variants:
            sample = row.median(variant)
            cpu = f" [{sample.cpu * 100_000 / requests:.2f}]" if sample.cpu is not None else ""
            cells.append(_cell(sample) + cpu)
        cells.append(_cell(cl))
        cells.append(f"{sm.rps / st.rps:.2f}x" if st.rps else "-")
        cells.append(f"{sm.rps / cl.rps:.2f}x" if cl.rps else "-")
        for variant in others:
            other = row.median(variant)
            cells.append(f"{other.rps / sm.rps:.2f}x" if sm.rps else "-")
        print("| " + " | ".join(cells) + " |")
    print()
    print("goals (issue 4): smart/stunnel >= 0.8x at -P 1 and >= 0.6x at -P 16")


def _cell(sample: Sample) -> str:
    return f"{sample.rps:,.0f} ({sample.p50:.2f}/{sample.p99:.2f})"


if __name__ == "__main__":
    sys.exit(main())
