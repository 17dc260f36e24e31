"""Benchmark the tunnel against stunnel and direct TLS, and measure idle-client memory.

Run from the repository root::

    python bench/bench_tunnel.py [--quick] [--repeat 3] [--requests 100000] [--json FILE]
                                 [--dashboard] [--skip-pinned] [--skip-memory] [--skip-stunnel]

What it does, all on 127.0.0.1 with throwaway servers and free ports:

1. Standalone: a TLS-only redis-server (with a password). ``redis-benchmark -c 50 -t set,get``
   at ``-P 1`` and ``-P 16`` through our standalone tunnel and through stunnel4 in client mode
   (Debian's, ``verifyChain``), alternating the order each round; the median of the rounds is
   reported with p50/p99 latency and the ratio tunnel/stunnel (goal: >= 0.9 at -P 1,
   >= 1.0 at -P 16).
2. Pinned: a 3-master TLS cluster. The same load on the one key redis-benchmark uses without
   ``-r`` (so every command goes to one node), through that node's pinned listener and directly
   with ``--tls``.
3. Memory: 1,000 clients connect to the standalone tunnel, each sends PING (so each has its
   own upstream TLS connection) and then idles; the tunnel's RSS is read from /proc (goal:
   at most 150 MB).

4. With ``--dashboard``: the same loads, in the same rounds, through a second standalone tunnel
   (and pinned tunnel) started with ``--dashboard 0`` (statistics counted and served), to show
   what counting costs: throughput and proxy CPU per request with and without it.

Everything started is stopped by PID at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certs import CertPaths, generate  # noqa: E402
from client.embedded import (  # noqa: E402
    LocalCluster,
    RedisNode,
    start_cluster,
    start_standalone,
)

__all__ = ["main"]

PASSWORD = "bench-secret"
CLIENTS = 50
IDLE_CLIENTS = 1000
READY_TIMEOUT = 30.0
RUN_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (the tunnel's worker processes)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (all threads), from /proc."""
    total = 0.0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children."""
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


@dataclass
class Proc:
    """A child process we started (stopped by PID)."""

    name: str
    popen: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_tunnel(args: list[str], env_extra: dict[str, str]) -> tuple[Proc, list[str]]:
    """Start ``redis-client tunn ARGS`` and wait for its ready line; return the table lines."""
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", "import sys; from client.main import main; sys.exit(main())"]
    popen = subprocess.Popen(
        [*cmd, "tunn", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    proc = Proc("tunnel", popen)
    assert popen.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    table: list[str] = []
    while time.monotonic() < deadline:
        raw = popen.stdout.readline()
        if not raw:
            err = popen.stderr.read().decode() if popen.stderr else ""
            raise RuntimeError(f"tunnel exited early: {err.strip()}")
        line = raw.decode().strip()
        if line.startswith("ready"):
            return proc, table
        if " -> " in line:
            table.append(line)
    proc.stop()
    raise RuntimeError("tunnel did not become ready")


def start_stunnel(workdir: Path, server: RedisNode, certs: CertPaths) -> tuple[Proc, int]:
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe is None:
        raise RuntimeError("stunnel4 not found (apt-get install stunnel4)")
    port = free_port()
    conf = workdir / "stunnel.conf"
    conf.write_text(
        "foreground = yes\n"
        "pid =\n"
        "[redis]\n"
        "client = yes\n"
        f"accept = 127.0.0.1:{port}\n"
        f"connect = 127.0.0.1:{server.port}\n"
        f"CAfile = {certs.ca}\n"
        "verifyChain = yes\n"
    )
    popen = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = Proc("stunnel", popen)
    wait_port(port)
    return proc, port


def wait_port(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def redis_benchmark(
    port: int, pipeline: int, requests: int, *, extra: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Run redis-benchmark; return {test: {rps, p50, p99}}."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS)]
    cmd += ["-n", str(requests), "-P", str(pipeline), "-t", "set,get", "--csv"]
    cmd += extra or []
    done = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {done.stderr.decode().strip()}")
    out: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(done.stdout.decode())):
        out[row["test"]] = {
            "rps": float(row["rps"]),
            "p50": float(row["p50_latency_ms"]),
            "p99": float(row["p99_latency_ms"]),
        }
    return out


def compare(
    targets: dict[str, tuple[int, list[str], int | None]],
    pipelines: list[int],
    requests: dict[int, int],
    repeat: int,
) -> dict[str, Any]:
    """Alternate the targets for ``repeat`` rounds per pipeline; medians per target/test."""
    samples: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    names = list(targets)
    for pipeline in pipelines:
        for rnd in range(repeat):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                port, extra, pid = targets[name]
                cpu = cpu_seconds(pid) if pid else 0.0
                result = redis_benchmark(port, pipeline, requests[pipeline], extra=extra)
                # CPU per request of the proxy process: robust on a busy machine, where rps
                # depends on what else runs.
                used = (cpu_seconds(pid) - cpu) if pid else float("nan")
                per_request = used / (requests[pipeline] * len(result)) * 1e6
                for test, row in result.items():
                    row["cpu_us"] = per_request
                    samples.setdefault((name, pipeline, test), []).append(row)
                    print(
                        f"  P={pipeline:<2} round {rnd + 1} {name:<8} {test}: "
                        f"{row['rps']:>10,.0f} rps  p50 {row['p50']:.3f} ms  "
                        f"p99 {row['p99']:.3f} ms  cpu {per_request:.1f} us/req",
                        flush=True,
                    )
    table: dict[str, Any] = {}
    for (name, pipeline, test), rows in samples.items():
        table[f"{name}/P{pipeline}/{test}"] = {
            key: statistics.median(r[key] for r in rows) for key in ("rps", "p50", "p99", "cpu_us")
        }
    return table


def idle_memory(port: int, pid: int, count: int) -> dict[str, float]:
    """RSS of the tunnel before and with ``count`` idle clients (each did one PING)."""
    before = rss_mb(pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            socks.append(sock)
        for sock in socks:
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    raise RuntimeError("tunnel closed an idle client")
                data += chunk
            if data != b"+PONG\r\n":
                raise RuntimeError(f"unexpected reply {data!r}")
        time.sleep(1.0)
        during = rss_mb(pid)
    finally:
        for sock in socks:
            sock.close()
    return {"clients": count, "rss_before_mb": before, "rss_idle_mb": during}


def slot_owner(cluster: LocalCluster, key: str) -> RedisNode:
    slot = cluster.seed.call("CLUSTER", "KEYSLOT", key)
    assert isinstance(slot, int)
    slots = cluster.seed.call("CLUSTER", "SLOTS")
    assert isinstance(slots, list)
    for entry in slots:
        start, end, master = entry[0], entry[1], entry[2]
        if start <= slot <= end:
            return cluster.node_by_port(int(master[1]))
    raise RuntimeError(f"no owner for slot {slot}")


def report(results: dict[str, Any]) -> str:
    lines = ["## Tunnel benchmark", ""]
    sa = results["standalone"]
    if not any(key.startswith("stunnel/") for key in sa):
        sa = {}  # --skip-stunnel: nothing to compare with
    else:
        lines.append(
            "| load | test | tunnel rps | stunnel rps | ratio | tunnel p50/p99 ms "
            "| stunnel p50/p99 ms | CPU us/req tunnel / stunnel |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
    for pipeline in results["pipelines"]:
        for test, name in (
            ("SET", "tunnel"),
            ("GET", "tunnel"),
            ("SET", "tunnel-1"),
            ("GET", "tunnel-1"),
        ):
            t = sa.get(f"{name}/P{pipeline}/{test}")
            s = sa.get(f"stunnel/P{pipeline}/{test}")
            if not t or not s:
                continue
            label = "" if name == "tunnel" else " (1 process)"
            lines.append(
                f"| -c {CLIENTS} -P {pipeline}{label} | {test} | {t['rps']:,.0f} | "
                f"{s['rps']:,.0f} | "
                f"{t['rps'] / s['rps']:.2f}x | {t['p50']:.3f}/{t['p99']:.3f} | "
                f"{s['p50']:.3f}/{s['p99']:.3f} | {t['cpu_us']:.1f} / {s['cpu_us']:.1f} |"
            )
    pinned = results.get("pinned")
    if pinned and any(key.startswith("direct/") for key in pinned):
        lines += [
            "",
            "| load | test | pinned rps | direct TLS rps | ratio | pinned p50/p99 ms "
            "| direct p50/p99 ms | CPU us/req pinned |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for pipeline in results["pipelines"]:
            for test in ("SET", "GET"):
                t = pinned.get(f"pinned/P{pipeline}/{test}")
                d = pinned.get(f"direct/P{pipeline}/{test}")
                if not t or not d:
                    continue
                lines.append(
                    f"| -c {CLIENTS} -P {pipeline} | {test} | {t['rps']:,.0f} | "
                    f"{d['rps']:,.0f} | {t['rps'] / d['rps']:.2f}x | "
                    f"{t['p50']:.3f}/{t['p99']:.3f} | {d['p50']:.3f}/{d['p99']:.3f} | "
                    f"{t['cpu_us']:.1f} |"
                )
    overhead = [
        (kind, name, results[kind])
        for kind, name in (("standalone", "tunnel"), ("pinned", "pinned"))
        if kind in results and any(key.startswith(f"{name}+dash/") for key in results[kind])
    ]
    if overhead:
        lines += [
            "",
            "| relay | load | test | rps without / with --dashboard | ratio "
            "| p50 ms without / with | CPU us/req without / with |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, name, table in overhead:
            for pipeline in results["pipelines"]:
                for test in ("SET", "GET"):
                    plain = table.get(f"{name}/P{pipeline}/{test}")
                    dash = table.get(f"{name}+dash/P{pipeline}/{test}")
                    if not plain or not dash:
                        continue
                    lines.append(
                        f"| {kind} | -c {CLIENTS} -P {pipeline} | {test} | "
                        f"{plain['rps']:,.0f} / {dash['rps']:,.0f} | "
                        f"{dash['rps'] / plain['rps']:.2f}x | "
                        f"{plain['p50']:.3f} / {dash['p50']:.3f} | "
                        f"{plain['cpu_us']:.1f} / {dash['cpu_us']:.1f} |"
                    )
    mem = results.get("memory")
    if mem:
        lines += [
            "",
            f"Idle clients: {mem['clients']:,} through the standalone tunnel: "
            f"RSS {mem['rss_before_mb']:.1f} MB before, {mem['rss_idle_mb']:.1f} MB with "
            "them connected (each did one PING, so each holds an upstream TLS session).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--requests", type=int, default=0, help="requests per run (-n)")
    parser.add_argument("--skip-pinned", action="store_true")
    parser.add_argument(
        "--pipelines", default="1,16", help="comma-separated -P values (default 1,16)"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--skip-stunnel", action="store_true", help="no stunnel, no single-process tunnel"
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also relay through tunnels started with --dashboard (the counting overhead)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    pipelines = [int(p) for p in args.pipelines.split(",")]
    requests = {p: (20_000 if args.quick else 50_000) * (5 if p > 1 else 1) for p in pipelines}
    if args.requests:
        requests = dict.fromkeys(pipelines, args.requests)
    work = Path(tempfile.mkdtemp(prefix="bench-tunnel-"))
    started: list[Proc] = []
    servers: list[RedisNode | LocalCluster] = []
    results: dict[str, Any] = {"pipelines": pipelines, "requests": requests, "repeat": repeat}
    try:
        certs = generate(work / "certs")
        server = start_standalone(tls=True, password=PASSWORD, certs=certs, workdir=work / "server")
        servers.append(server)
        upstream = ["-h", "127.0.0.1", "-p", str(server.port), "-t", "--cacert", str(certs.ca)]
        secret = {"REDIS_CLIENT_PASSWORD": PASSWORD}
        tport, tport1 = free_port(), free_port()
        # the default (--workers auto: 2 processes on 2+ CPUs) and a single process
        tunnel, _ = start_tunnel([*upstream, "--local-port", str(tport)], secret)
        started.append(tunnel)
        targets: dict[str, tuple[int, list[str], int | None]] = {
            "tunnel": (tport, [], tunnel.popen.pid)
        }
        if not args.skip_stunnel:
            single, _ = start_tunnel(
                [*upstream, "--local-port", str(tport1), "--workers", "1"], secret
            )
            started.append(single)
            stunnel, sport = start_stunnel(work, server, certs)
            started.append(stunnel)
            targets["tunnel-1"] = (tport1, [], single.popen.pid)
            targets["stunnel"] = (sport, ["-a", PASSWORD], stunnel.popen.pid)
        if args.dashboard:
            dport = free_port()
            dashed, _ = start_tunnel(
                [*upstream, "--local-port", str(dport), "--dashboard", "0"], secret
            )
            started.append(dashed)
            targets["tunnel+dash"] = (dport, [], dashed.popen.pid)
        print("standalone: " + ", ".join(f"{n} :{v[0]}" for n, v in targets.items()))
        results["standalone"] = compare(targets, pipelines, requests, repeat)
        if not args.skip_memory:
            results["memory"] = idle_memory(tport, tunnel.popen.pid, IDLE_CLIENTS)
            print(f"memory: {results['memory']}")
        for proc in started:
            proc.stop()
        if not args.skip_pinned:
            cluster = start_cluster(
                masters=3,
                replicas_per_master=0,
                password=PASSWORD,
                certs=certs,
                workdir=work / "cluster",
            )
            servers.append(cluster)
            pinned_args = [
                "-c",
                "-h",
                "127.0.0.1",
                "-p",
                str(cluster.seed.port),
                "-t",
                "--cacert",
                str(certs.ca),
                "--tunnel-mode",
                "pinned",
                "--refresh",
                "0",
            ]
            pinned, table = start_tunnel(pinned_args, {"REDIS_CLIENT_PASSWORD": PASSWORD})
            started.append(pinned)
            node = slot_owner(cluster, "key:__rand_int__")
            local = next(
                int(line.split(" -> ")[0].rpartition(":")[2])
                for line in table
                if line.split(" -> ")[1].split(" ")[0] == node.address
            )
            print(f"pinned: listener :{local} -> node {node.address}")
            tls = ["--tls", "--cacert", str(certs.ca), "-a", PASSWORD]
            pinned_targets: dict[str, tuple[int, list[str], int | None]] = {
                "pinned": (local, [], pinned.popen.pid)
            }
            if not args.skip_stunnel:
                pinned_targets["direct"] = (node.port, tls, None)
            if args.dashboard:
                dashed, dtable = start_tunnel(
                    [*pinned_args, "--dashboard", "0"],
                    {"REDIS_CLIENT_PASSWORD": PASSWORD},
                )
                started.append(dashed)
                dlocal = next(
                    int(line.split(" -> ")[0].rpartition(":")[2])
                    for line in dtable
                    if line.split(" -> ")[1].split(" ")[0] == node.address
                )
                pinned_targets["pinned+dash"] = (dlocal, [], dashed.popen.pid)
            results["pinned"] = compare(pinned_targets, pipelines, requests, repeat)
        text = report(results)
        print()
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        for proc in reversed(started):
            proc.stop()
        for srv in servers:
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
