"""Benchmark: redis-benchmark through the smart tunnel vs stunnel vs a direct cluster client.

Usage::

    python bench/bench_smart.py [--clients 50] [-n1 50000] [-n16 300000] [--runs 1]
                                [--json FILE]

Starts its own TLS cluster on free loopback ports (client.embedded: 3 masters, no replicas),
then, for ``-P 1`` and ``-P 16``, runs ``redis-benchmark -c 50 -t set,get`` against:

* ``smart``: ``redis-client tunn -c`` (smart mode, default pool) on a plaintext port;
* ``stunnel``: Debian's stunnel4 in client mode in front of ONE node: the master that owns
  the benchmark's key (``key:__rand_int__``, fixed without ``-r``), so every command is
  served and the comparison is like for like (one TLS hop, same key);
* ``cluster``: ``redis-benchmark --cluster --tls`` straight to the nodes (no proxy at all).

The three targets run one after the other for each pipeline depth (interleaved, so drift on a
shared machine hits all of them); with ``--runs N`` the median of N is reported. The ratios
are smart / stunnel (the issue's goals: >= 0.8 at -P 1, >= 0.6 at -P 16) and smart / cluster.
The tunnel's own CPU time per run is read from /proc. Every process started here is stopped
by PID at the end.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certs import CertPaths, generate  # noqa: E402
from client.embedded import LocalCluster, RedisNode, start_cluster  # noqa: E402
from client.slots import key_slot  # noqa: E402

__all__: list[str] = []

ENTRY = "import sys; from client.main import main; sys.exit(main())"
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


def start_smart(cluster: LocalCluster, certs: CertPaths, port: int) -> subprocess.Popen[str]:
    seed = cluster.seed
    cmd = [sys.executable, "-c", ENTRY, "tunn", "-c", "-h", seed.host, "-p", str(seed.port)]
    cmd += ["-t", "--cacert", str(certs.ca), "--local-port", str(port)]
    env = {**os.environ, "REDIS_CLIENT_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
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
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    ns = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        raise SystemExit("redis-benchmark is not installed (apt-get install redis-tools)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-smart-"))
    procs: list[subprocess.Popen[str]] = []
    cluster: LocalCluster | None = None
    try:
        certs = generate(workdir / "certs")
        print("starting a TLS cluster (3 masters) ...", flush=True)
        cluster = start_cluster(
            masters=3,
            replicas_per_master=0,
            password=PASSWORD,
            certs=certs,
            workdir=workdir / "cluster",
        )
        node = owner_of(cluster, key_slot(KEY))
        smart_port, stunnel_port = free_port(), free_port()
        smart = start_smart(cluster, certs, smart_port)
        procs.append(smart)
        procs.append(start_stunnel(workdir, certs, node, stunnel_port))
        seed = cluster.seed
        # redis-benchmark has no environment variable for the password; this one is
        # throwaway (the servers live in a temp dir for the length of the run).
        auth = ["-a", PASSWORD]
        tls = ["--tls", "--cacert", str(certs.ca)]
        targets: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "stunnel": (["-p", str(stunnel_port), *auth], None),
            "smart": (["-p", str(smart_port)], None),
            "cluster": (["--cluster", "-h", seed.host, "-p", str(seed.port), *tls, *auth], None),
        }
        rows: dict[tuple[int, str], Row] = {}
        for pipeline, requests in ((1, ns.n1), (16, ns.n16)):
            for _ in range(ns.runs):
                for target, (where, env) in targets.items():
                    common = ["-c", str(ns.clients), "-n", str(requests), "-t", "set,get"]
                    before = cpu_seconds(smart.pid) if target == "smart" else 0.0
                    samples = run_benchmark([*where, *common, "-P", str(pipeline)], env)
                    cpu = cpu_seconds(smart.pid) - before if target == "smart" else None
                    for test, sample in samples.items():
                        sample.cpu = cpu
                        row = rows.setdefault((pipeline, test), Row(pipeline, test))
                        row.samples.setdefault(target, []).append(sample)
                    print(f"  -P {pipeline:<2} {target:<8} done", flush=True)
        report(list(rows.values()), ns)
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


def report(rows: list[Row], ns: argparse.Namespace) -> None:
    print()
    print(
        f"redis-benchmark -c {ns.clients} -t set,get, median of {ns.runs} run(s); rps, (p50/p99 ms)"
    )
    print()
    print(
        "| -P | test | stunnel (1 node) | smart tunnel | cluster --tls direct "
        "| smart/stunnel | smart/cluster | tunnel CPU s |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: (r.pipeline, r.test)):
        st, sm, cl = row.median("stunnel"), row.median("smart"), row.median("cluster")
        vs_stunnel = sm.rps / st.rps if st.rps else 0.0
        vs_cluster = sm.rps / cl.rps if cl.rps else 0.0
        cpu = f"{sm.cpu:.1f}" if sm.cpu is not None else "-"
        print(
            f"| {row.pipeline} | {row.test} "
            f"| {st.rps:,.0f} ({st.p50:.2f}/{st.p99:.2f}) "
            f"| {sm.rps:,.0f} ({sm.p50:.2f}/{sm.p99:.2f}) "
            f"| {cl.rps:,.0f} ({cl.p50:.2f}/{cl.p99:.2f}) "
            f"| {vs_stunnel:.2f}x | {vs_cluster:.2f}x | {cpu} |"
        )
    print()
    print("goals (issue 4): smart/stunnel >= 0.8x at -P 1 and >= 0.6x at -P 16")


if __name__ == "__main__":
    sys.exit(main())
