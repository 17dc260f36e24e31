"""Fill driver (Trio): flush, plan, blast pre-built batches, watch for errors, verify.

Theory of operation
-------------------
:func:`fill_main` is the entry point (``trio.run`` from :mod:`fill.main`); it owns the nurseries.

1. *Targets.* Standalone: the server. Cluster: the masters of the topology, each with its
   connection options (:meth:`client.cluster.ClusterClient.options_for`). One control
   connection per target carries FLUSHALL, DBSIZE and INFO.
2. *Flush* (``-f``): FLUSHALL on every target, all at once (no ``-d``: that is all).
3. *Plan* (:mod:`fill.plan`, before the flush: a plan that cannot be made flushes nothing),
   then, while a thread generates the batch ring, baselines: DBSIZE and ``INFO errorstats``
   per target, and a memory warning when ``maxmemory`` leaves too little room.
4. *Blast.* One task per job: a dedicated authenticated stream, ``CLIENT REPLY OFF``, then
   every chunk built by :class:`fill.payload.BatchBuilder` into a pooled buffer and written
   with one ``send_all``; finally ``CLIENT REPLY ON`` + ``PING`` and wait for ``+OK +PONG``,
   which proves the server has processed every command of the connection. With ``-P N`` the
   jobs run in N child processes of our own executable (``--process-index``): each gets the
   plan's inputs and the logins as one JSON line on stdin (never argv or the environment),
   new logins as further lines on the same pipe, and reports cumulative counters as JSON
   lines on stdout.
5. *Errors are invisible with replies off*, so a watcher polls ``INFO errorstats`` on every
   target while the fill runs: a new OOM, READONLY, MOVED, NOPERM, ... aborts the fill with the
   node's address. A lost connection or a stalled write fails the fill the same way.
6. *Verify*: a last errorstats check, DBSIZE per target. After a flush the total (and each
   master's count) must equal the plan, or the run exits non-zero. Without a flush the
   difference is reported, as other writers and existing keys make it inexact.

Credentials (``--password-command``, ``--entra``): every connection logs in with the
provider's current credential; for the whole run, ``serve_refresh`` fetches new ones and
:class:`_Rotation` logs every live connection in again, in place (see :mod:`fill.auth`).
No secret is ever printed: errors leave :func:`fill_main` through ``redact``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio

from client.connection import Connection, open_authenticated_stream, open_connection
from client.credentials import Credential, CredentialProvider, redact
from client.errors import ConfigError, ConnectError, ConnectionLost, RedisToolkitError
from client.options import PASSWORD_ENV, ServerOptions, TlsOptions
from client.slots import slot_tags
from client.values import ErrorReply, RespValue
from fill.auth import (
    Logins,
    auth_args,
    auth_command,
    login_from_json,
    login_json,
    login_update,
    parse_login_update,
)
from fill.payload import BARRIER, REPLY_OFF, BarrierError, BatchBuilder, parse_barrier
from fill.plan import FillPlan, FillSettings, Job, Target, build_plan
from fill.progress import FillProgress, FillSummary, ProgressPrinter, format_bytes

__all__ = [
    "FATAL_ERRORS",
    "FillRequest",
    "child_main",
    "fill_main",
    "parse_info",
]

logger = logging.getLogger(__name__)

CLIENT_NAME = "redis-client-fill"
STALL_SECONDS = 120.0
"""A write (one chunk) or the final barrier that makes no progress for this long fails."""
CONNECT_SECONDS = 30.0
WATCH_INTERVAL = 0.5
BUFFER_BUDGET = 64 * 1024 * 1024
"""Bytes of chunk buffers per process (one per connection up to this, e.g. 3 masters x 2
connections x 8.6 MB at the defaults); connections share the buffers beyond that."""
CHILD_REPORT_INTERVAL = 0.25
LIVE_INTERVAL = 0.25
PLAIN_INTERVAL = 2.0
KEY_OVERHEAD = 80
"""Rough Redis memory per string key beyond key + value bytes (dict entry, objects, sds)."""

FATAL_ERRORS = frozenset(
    {
        "OOM", "READONLY", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "NOPERM", "NOAUTH",
        "MISCONF", "LOADING", "BUSY", "MASTERDOWN", "NOREPLICAS", "WRONGPASS",
    }
)  # fmt: skip
"""Error kinds that, counted on a target during a fill, mean our SETs were refused."""

_HINTS = {
    "OOM": "the server reached maxmemory: fill less (-d), raise maxmemory, or flush first (-f)",
    "READONLY": "the node became a replica (failover?): run the fill again",
    "MOVED": "the cluster slots moved during the fill (resharding?): run the fill again",
    "ASK": "the cluster slots moved during the fill (resharding?): run the fill again",
    "NOPERM": "the ACL user may not run SET or CLIENT REPLY",
    "WRONGPASS": "a fill connection's AUTH with a new credential was refused (rotation?)",
    "MISCONF": "the server refuses writes after a failed RDB save",
}

_CHILD_BOOT = "import sys; from client.main import main; sys.exit(main())"


@dataclass(frozen=True)
class FillRequest:
    """What ``redis-client fill`` was asked to do.

    ``credentials`` is the provider of ``--password-command`` / ``--entra``; None means the
    static password of ``server`` (``-a`` or the environment).
    """

    settings: FillSettings
    server: ServerOptions
    json_output: bool = False
    credentials: CredentialProvider | None = field(default=None, repr=False)


@dataclass
class _Node:
    """A target at run time: its options, its control connection, its baselines."""

    opts: ServerOptions
    target: Target
    conn: Connection
    errors: dict[str, int] = field(default_factory=dict)
    dbsize: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    """Held around an errorstats poll and its comparison, and around a re-AUTH (whose refusal
    moves the baseline), so the two never interleave."""


# --------------------------------------------------------------------------- small helpers


def parse_info(reply: RespValue) -> dict[str, str]:
    """An INFO reply as ``{field: value}`` (sections and comments dropped)."""
    if isinstance(reply, ErrorReply) or not isinstance(reply, bytes):
        return {}
    out: dict[str, str] = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            name, sep, value = line.partition(":")
            if sep:
                out[name] = value
    return out


def _error_counts(info: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, value in info.items():
        if name.startswith("errorstat_"):
            fields = dict(p.partition("=")[::2] for p in value.split(","))
            try:
                counts[name.removeprefix("errorstat_")] = int(fields.get("count", "0"))
            except ValueError:
                continue
    return counts


async def _error_stats(node: _Node) -> dict[str, int]:
    """INFO errorstats of ``node`` (the caller holds ``node.lock``)."""
    return _error_counts(parse_info(await node.conn.request("INFO", "errorstats")))


async def _take_baseline(node: _Node) -> None:
    async with node.lock:
        node.errors = await _error_stats(node)


async def _check_errors(node: _Node) -> RedisToolkitError | None:
    """The error to fail with when ``node`` counted refused commands since the baseline."""
    async with node.lock:
        return _refused(node, _new_errors(node, await _error_stats(node)))


async def _dbsize(node: _Node) -> int:
    reply = await node.conn.execute("DBSIZE")
    if not isinstance(reply, int):
        raise RedisToolkitError(f"{node.opts.address} answered DBSIZE with {reply!r}")
    return reply


def _new_errors(node: _Node, now: Mapping[str, int]) -> dict[str, int]:
    return {
        kind: count - node.errors.get(kind, 0)
        for kind, count in now.items()
        if count > node.errors.get(kind, 0)
    }


def _refused(node: _Node, new: Mapping[str, int]) -> RedisToolkitError | None:
    fatal = {k: v for k, v in new.items() if k in FATAL_ERRORS}
    if not fatal:
        return None
    kinds = ", ".join(f"{count:,} x {kind}" for kind, count in sorted(fatal.items()))
    first = sorted(fatal)[0]
    lost = "a login was refused" if set(fatal) == {"WRONGPASS"} else "keys were lost"
    return RedisToolkitError(
        f"{node.opts.address} refused commands during the fill ({kinds} errors in INFO "
        f"errorstats); {lost}",
        hint=_HINTS.get(first),
    )


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a nursery's group: the first toolkit error, if any."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, RedisToolkitError):
            return exc
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group


@contextmanager
def _connect_deadline(address: str) -> Iterator[None]:
    """``fail_after(CONNECT_SECONDS)``, reported as a ConnectError naming ``address``."""
    try:
        with trio.fail_after(CONNECT_SECONDS):
            yield
    except trio.TooSlowError:
        raise ConnectError(
            f"{address} did not answer within {CONNECT_SECONDS:.0f} s",
            hint="check the host, the port and -t/--tls",
        ) from None


class _BufferPool:
    """At most ``count`` chunk buffers, allocated on first use and shared by the jobs."""

    def __init__(self, count: int, size: int) -> None:
        self._size = size
        self._free: list[bytearray] = []
        self._made = 0
        self._limit = trio.Semaphore(max(1, count))

    @asynccontextmanager
    async def buffer(self) -> AsyncIterator[bytearray]:
        async with self._limit:
            if self._free:
                buf = self._free.pop()
            else:
                buf = bytearray(self._size)
                self._made += 1
            try:
                yield buf
            finally:
                self._free.append(buf)


# --------------------------------------------------------------------------- one job


async def _run_job(
    job: Job,
    opts: ServerOptions,
    plan: FillPlan,
    builder: BatchBuilder,
    pool: _BufferPool,
    progress: FillProgress,
    logins: Logins,
) -> None:
    """One connection: REPLY OFF, every chunk of the job, then the barrier.

    Logs in with the target's current login and, between two chunks, sends ``AUTH`` again
    whenever that login changed (the reply is suppressed like every other: see fill.auth).
    """
    address = opts.address
    login = logins.get(job.target)
    with _connect_deadline(address):
        stream = await open_authenticated_stream(login.apply_to(opts), client_name=CLIENT_NAME)
    sent = 0
    try:
        await stream.send_all(REPLY_OFF)
        for chunk in range(job.chunks):
            latest = logins.get(job.target)
            if latest is not login:
                with trio.fail_after(STALL_SECONDS):
                    await stream.send_all(auth_command(latest))
                login = latest
                progress.count_reauth()
            async with pool.buffer() as buf:
                size = builder.build(buf, job, chunk)
                with trio.fail_after(STALL_SECONDS):
                    await stream.send_all(memoryview(buf)[:size])
            count = plan.chunk_size(job, chunk)
            sent += count
            progress.add(job.target, count, count * plan.settings.payload_size, size)
        await stream.send_all(BARRIER)
        data = b""
        with trio.fail_after(STALL_SECONDS):
            while not parse_barrier(data):
                more = await stream.receive_some(4096)
                if not more:
                    raise ConnectionLost(
                        f"{address} closed the fill connection before confirming its "
                        f"{job.commands:,} SETs (server log may say why)"
                    )
                data += more
    except trio.TooSlowError:
        raise ConnectionLost(
            f"{address} stopped accepting data: no progress for {STALL_SECONDS:.0f} s "
            f"after {sent:,} of {job.commands:,} keys of one connection"
        ) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise ConnectionLost(
            f"connection to {address} lost after {sent:,} of {job.commands:,} keys: {exc}",
            hint="see the server log (client-query-buffer-limit, maxclients, a restart?)",
        ) from exc
    except BarrierError as exc:
        raise RedisToolkitError(f"{address}: {exc}") from exc
    finally:
        await trio.aclose_forcefully(stream)


def _buffer_count(builder: BatchBuilder, jobs: int) -> int:
    return max(1, min(jobs, BUFFER_BUDGET // max(1, builder.buffer_size)))


async def _make_builder(plan: FillPlan) -> BatchBuilder:
    """The batch builder, made in a thread (generating the ring takes ~0.1 s)."""
    return await trio.to_thread.run_sync(
        lambda: BatchBuilder(plan, slot_tags() if plan.cluster else None)
    )


def _job_tasks(
    plan: FillPlan,
    process: int,
    builder: BatchBuilder,
    node_opts: Sequence[ServerOptions],
    progress: FillProgress,
    logins: Logins,
) -> list[Callable[[], Awaitable[None]]]:
    """One task per job of ``process``, sharing one buffer pool (the caller starts them)."""
    jobs = plan.jobs_of(process)
    pool = _BufferPool(_buffer_count(builder, len(jobs)), builder.buffer_size)
    return [
        partial(_run_job, job, node_opts[job.target], plan, builder, pool, progress, logins)
        for job in jobs
    ]


# --------------------------------------------------------------------------- credentials


class _Rotation:
    """Logs every live connection of the parent process in again when the credential changes.

    ``on_new`` is the provider's ``serve_refresh`` callback. For each target whose login is not
    the newest credential, the control connection sends ``AUTH`` (replies on); when the server
    accepts it, the target's fill connections follow (:class:`fill.auth.Logins`) and so do the
    worker processes (a JSON line on their stdin). A refused credential is logged; the target
    keeps its current login, and the refusal's ``WRONGPASS`` is added to the watcher's baseline.
    """

    def __init__(self, provider: CredentialProvider) -> None:
        self.provider = provider
        self.nodes: list[_Node] = []
        self.logins: Logins | None = None
        self.children: dict[int, _Child] = {}
        self.reauths = 0
        self.lock = trio.Lock()
        self._wanted: Credential | None = None

    def secrets(self) -> list[str]:
        own = self.logins.secrets() if self.logins is not None else []
        return own + ([self._wanted.password] if self._wanted is not None else [])

    def redact(self, text: str) -> str:
        return redact(self.provider.redact(text), self.secrets())

    async def on_new(self, cred: Credential) -> None:
        self._wanted = cred
        await self.sync()

    async def attach(self, nodes: Sequence[_Node], logins: Logins) -> None:
        """Start following rotations on these control connections (their logins in ``logins``)."""
        self.nodes = list(nodes)
        self.logins = logins
        await self.sync()

    def detach(self) -> None:
        """Stop: the control connections are about to close."""
        self.nodes = []
        self.logins = None

    async def sync(self) -> None:
        async with self.lock:
            wanted, logins = self._wanted, self.logins
            if wanted is None or logins is None:
                return
            accepted = []
            for index, node in enumerate(self.nodes):
                if logins.get(index) is not wanted and await self._reauth(node, wanted):
                    logins.accept(index, wanted)
                    accepted.append(index)
            if accepted:
                update = login_update(wanted, accepted)
                for child in list(self.children.values()):
                    await child.tell(update)

    async def _reauth(self, node: _Node, cred: Credential) -> bool:
        address = node.opts.address
        async with node.lock:
            reply: RespValue = None
            try:
                with trio.move_on_after(CONNECT_SECONDS) as scope:
                    reply = await node.conn.request(*auth_args(cred))
            except (RedisToolkitError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                logger.error("re-AUTH on %s failed: %s", address, self.redact(str(exc)))
                return False
            if scope.cancelled_caught:
                logger.error(
                    "re-AUTH on %s: no answer within %.0f s; its connections keep the current "
                    "credential",
                    address,
                    CONNECT_SECONDS,
                )
                return False
            if isinstance(reply, ErrorReply):
                # The refusal is counted in INFO errorstats: not an error of the fill's SETs.
                node.errors[reply.kind] = node.errors.get(reply.kind, 0) + 1
                logger.error(
                    "%s refused the new credential (%s); its connections keep the current one",
                    address,
                    self.redact(reply.text),
                )
                return False
        self.reauths += 1
        return True


# --------------------------------------------------------------------------- child processes


def _options_json(opts: ServerOptions) -> dict[str, Any]:
    data = asdict(opts)
    data.pop("password", None)
    return data


def _options_from_json(data: Mapping[str, Any]) -> ServerOptions:
    tls = data.get("tls")
    return ServerOptions(
        host=str(data["host"]),
        port=int(data["port"]),
        tls=TlsOptions(**tls) if tls else None,
        username=str(data.get("username") or "default"),
        password=None,  # each job logs in with its target's login (fill.auth.Logins)
        cluster=bool(data.get("cluster")),
    )


def _child_spec(plan: FillPlan, node_opts: Sequence[ServerOptions], logins: Logins) -> bytes:
    """The worker's plan, as one JSON line: it holds the logins (secrets): stdin only."""
    spec = {
        "settings": plan.settings.to_json(),
        "targets": [t.to_json() for t in plan.targets],
        "cluster": plan.cluster,
        "nodes": [_options_json(o) for o in node_opts],
        "logins": [login_json(logins.get(i)) for i in range(len(logins))],
    }
    return json.dumps(spec, separators=(",", ":")).encode() + b"\n"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop(PASSWORD_ENV, None)  # the logins travel on stdin
    return env


class _Child:
    """The stdin of a worker process: its plan, then login updates, one JSON line each."""

    def __init__(self, stdin: trio.abc.SendStream) -> None:
        self._stdin = stdin
        self._lock = trio.Lock()

    async def tell(self, line: bytes) -> None:
        """Write one line; a worker that has finished (closed pipe) is not an error."""
        async with self._lock:
            try:
                with trio.move_on_after(CONNECT_SECONDS):
                    await self._stdin.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _run_child(
    process: int,
    plan: FillPlan,
    node_opts: Sequence[ServerOptions],
    server: ServerOptions,
    rotation: _Rotation,
    progress: FillProgress,
) -> None:
    """Run one worker process to completion, absorbing its progress reports."""
    assert rotation.logins is not None
    cmd = [sys.executable, "-c", _CHILD_BOOT, "fill", "-h", server.host]
    cmd += ["--process-index", str(process)]
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env()
    )
    error: str | None = None
    done = False
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        child = _Child(proc.stdin)
        async with rotation.lock:  # no rotation between the plan and the registration
            await child.tell(_child_spec(plan, node_opts, rotation.logins))
            rotation.children[process] = child
        buffer = b""
        while True:
            data = await proc.stdout.receive_some(65536)
            if not data:
                break
            buffer += data
            if len(buffer) > 1 << 20 and b"\n" not in buffer:
                raise RedisToolkitError(f"fill worker process {process} sent garbage")
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if "error" in report:
                    error = str(report["error"])
                if "keys" in report:
                    progress.absorb(process, report)
                if report.get("done"):
                    done = True
        code = await proc.wait()
    finally:
        rotation.children.pop(process, None)
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stdin is not None:
                await trio.aclose_forcefully(proc.stdin)
    if error is not None:
        raise RedisToolkitError(rotation.redact(error))
    if code != 0 or not done:
        raise RedisToolkitError(f"fill worker process {process} exited with status {code}")


# --------------------------------------------------------------------------- entry points


class _Output:
    """Human lines on stdout (stderr with --json, so stdout holds only the JSON line)."""

    def __init__(self, out: TextIO, err: TextIO, *, json_output: bool) -> None:
        self.out = out
        self.err = err
        self.json_output = json_output

    def say(self, line: str) -> None:
        stream = self.err if self.json_output else self.out
        stream.write(line + "\n")
        stream.flush()


async def _discover(server: ServerOptions) -> list[tuple[ServerOptions, Target]]:
    if not server.cluster:
        stream = await open_authenticated_stream(server, client_name=CLIENT_NAME)
        await trio.aclose_forcefully(stream)  # reachable, and the login works
        return [(server, Target(server.address))]
    from client.cluster import open_cluster  # the cluster client (not needed standalone)
    from client.commands import CommandTable

    bundled = CommandTable.bundled()  # fill needs no routing: skip loading COMMAND
    async with open_cluster(
        server, refresh_interval=0, client_name=CLIENT_NAME, commands=bundled
    ) as cluster:
        masters = [m for m in cluster.topology.masters() if m.slots]
        found = [(cluster.options_for(m), Target(m.address, tuple(m.slots))) for m in masters]
    found.sort(key=lambda pair: pair[1].slots[0][0])
    return found


def _say_flushing(nodes: Sequence[_Node], say: _Output) -> None:
    where = "cluster: " if len(nodes) > 1 else ""
    say.say(f"Flushing {where}{', '.join(n.opts.address for n in nodes)}")


async def _prepare_node(node: _Node, *, flush: bool, baseline: bool) -> None:
    """FLUSHALL (``flush``), then the errorstats and DBSIZE baselines (``baseline``).

    The caller runs one per target at the same time: masters flush in parallel.
    """
    if flush:
        reply = await node.conn.request("FLUSHALL")
        if isinstance(reply, ErrorReply):
            raise RedisToolkitError(f"FLUSHALL on {node.opts.address} failed: {reply.text}")
    if baseline:
        await _take_baseline(node)
        node.dbsize = await _dbsize(node)


async def _memory_warnings(nodes: Sequence[_Node], plan: FillPlan) -> list[str]:
    warnings = []
    settings = plan.settings
    for index, node in enumerate(nodes):
        info = parse_info(await node.conn.request("INFO", "memory"))
        try:
            limit = int(info.get("maxmemory", "0"))
            used = int(info.get("used_memory", "0"))
        except ValueError:
            continue
        need = plan.expected_keys(index) * (settings.payload_size + KEY_OVERHEAD)
        if limit and used + need > limit:
            policy = info.get("maxmemory_policy", "?")
            outcome = "OOM errors (the fill will stop)" if policy == "noeviction" else "evictions"
            warnings.append(
                f"{node.opts.address}: this fill needs about {format_bytes(need)} but maxmemory "
                f"leaves {format_bytes(max(0, limit - used))} (policy {policy}): expect {outcome}"
            )
    return warnings


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _describe(plan: FillPlan, nodes: Sequence[_Node]) -> list[str]:
    s = plan.settings
    keys = plan.total_commands
    sizes = f"{keys:,} keys of {s.key_size}+{s.value_size} bytes"
    procs = f", {s.processes} processes" if s.processes > 1 else ""
    if plan.cluster:
        lines = [
            f"Filling {s.gigabytes}GB across cluster: {len(nodes)} masters with "
            f"{_plural(s.connections, 'connection')} each{procs}, {sizes} (pipeline {s.pipeline})"
        ]
        for i, node in enumerate(nodes):
            lines.append(
                f"  {node.opts.address}: {node.target.slot_count} slots, "
                f"{plan.expected_keys(i):,} keys"
            )
        return lines
    conns = _plural(s.connections, "connection")
    return [
        f"Filling {s.gigabytes}GB into {nodes[0].opts.address} with {conns}{procs}, {sizes} "
        f"(pipeline {s.pipeline})"
    ]


async def _watch(nodes: Sequence[_Node]) -> None:
    """Poll INFO errorstats on every target; raise on the first refused command."""
    while True:
        await trio.sleep(WATCH_INTERVAL)
        for node in nodes:
            problem = await _check_errors(node)
            if problem is not None:
                raise problem


async def _show(printer: ProgressPrinter, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        printer.tick(trio.current_time())


def _redacted(exc: RedisToolkitError, rotation: _Rotation) -> RedisToolkitError:
    """``exc`` with every secret taken out of its message and hint (in place)."""
    exc.message = rotation.redact(exc.message)
    exc.hint = rotation.redact(exc.hint) if exc.hint else exc.hint
    exc.args = (exc.message,)
    return exc


async def fill_main(request: FillRequest, *, out: TextIO, err: TextIO) -> int:
    """Run ``redis-client fill``: returns the exit status (raises RedisToolkitError on failure).

    With a credential provider that refreshes (``--password-command``, ``--entra``), its
    ``serve_refresh`` runs for the whole fill and every new credential is applied to the live
    connections (:class:`_Rotation`). Errors leave here with every secret redacted.
    """
    server = request.server
    provider = request.credentials or CredentialProvider.static(server.username, server.password)
    rotation = _Rotation(provider)
    try:
        try:
            async with trio.open_nursery() as nursery:
                if provider.dynamic:
                    await nursery.start(provider.serve_refresh, rotation.on_new)
                status = await _fill(request, rotation, out=out, err=err)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
    except RedisToolkitError as exc:
        raise _redacted(exc, rotation) from None
    return status


async def _fill(request: FillRequest, rotation: _Rotation, *, out: TextIO, err: TextIO) -> int:
    settings = request.settings
    provider = rotation.provider
    say = _Output(out, err, json_output=request.json_output)
    with _connect_deadline(request.server.address):
        login = await provider.current()
        found = await _discover(login.apply_to(request.server))
    async with AsyncExitStack() as stack:
        nodes: list[_Node] = []
        node_logins: list[Credential] = []
        for opts, target in found:
            # No deadline here: a cancel scope must not straddle the exit stack. _discover
            # has already reached (and logged in to) the server within one.
            login = await provider.current()
            conn = await stack.enter_async_context(
                open_connection(login.apply_to(opts), client_name=CLIENT_NAME)
            )
            nodes.append(_Node(opts=opts, target=target, conn=conn))
            node_logins.append(login)
        logins = Logins(node_logins)
        await rotation.attach(nodes, logins)
        stack.callback(rotation.detach)  # runs before the connections close
        if settings.megabytes == 0:
            if settings.flush:
                _say_flushing(nodes, say)
                try:
                    async with trio.open_nursery() as nursery:
                        for node in nodes:
                            nursery.start_soon(
                                partial(_prepare_node, node, flush=True, baseline=False)
                            )
                except BaseExceptionGroup as group:
                    raise _first_error(group) from None
            return await _report_flush(nodes, say)
        # Plan first: a plan that cannot be made (keys too short) must not flush anything.
        plan = build_plan(settings, [n.target for n in nodes], cluster=request.server.cluster)
        # Build the batches (in a thread) while flushing and taking baselines.
        builders: list[BatchBuilder] = []

        async def prepare() -> None:
            if settings.processes == 1:
                builders.append(await _make_builder(plan))

        if settings.flush:
            _say_flushing(nodes, say)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(prepare)
                async with trio.open_nursery() as per_node:
                    for node in nodes:
                        per_node.start_soon(
                            partial(_prepare_node, node, flush=settings.flush, baseline=True)
                        )
                warnings = await _memory_warnings(nodes, plan)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        for line in _describe(plan, nodes):
            say.say(line)
        for warning in warnings:
            say.err.write(f"warning: {warning}\n")
        node_opts = [n.opts for n in nodes]
        started = trio.current_time()
        progress = FillProgress(
            [n.opts.address for n in nodes],
            [plan.expected_keys(i) for i in range(len(nodes))],
            [plan.expected_keys(i) * settings.payload_size for i in range(len(nodes))],
            started=started,
        )
        live = err.isatty()
        printer = ProgressPrinter(progress, err, live=live)
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(_show, printer, LIVE_INTERVAL if live else PLAIN_INTERVAL)
                outer.start_soon(_watch, nodes)
                async with trio.open_nursery() as work:
                    if settings.processes == 1:
                        for task in _job_tasks(plan, 0, builders[0], node_opts, progress, logins):
                            work.start_soon(task)
                    else:
                        for process in plan.processes_used:
                            work.start_soon(
                                _run_child, process, plan, node_opts, request.server, rotation,
                                progress,
                            )  # fmt: skip
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        seconds = trio.current_time() - started
        printer.finish(trio.current_time())
        summary = FillSummary(
            keys=sum(progress.keys()),
            payload_bytes=sum(progress.payload()),
            wire_bytes=sum(progress.wire()),
            seconds=seconds,
            expected_keys=plan.total_commands,
            seed=settings.seed,
            flushed=settings.flush,
            warnings=warnings,
        )
        await _verify(nodes, plan, summary)
        summary.reauths = rotation.reauths + progress.reauths()
    if request.json_output:
        out.write(summary.to_json() + "\n")
    else:
        out.write("\n".join(summary.text()) + "\n")
    out.flush()
    for line in summary.complaints():
        err.write(line + "\n")
    err.flush()
    return 0 if summary.ok else 1


async def _report_flush(nodes: Sequence[_Node], say: _Output) -> int:
    left = {n.opts.address: await _dbsize(n) for n in nodes}
    if any(left.values()):
        busy = ", ".join(f"{a} has {c:,} keys" for a, c in left.items() if c)
        raise RedisToolkitError(f"flush incomplete: {busy} (another client is writing?)")
    say.say("Flush complete")
    if say.json_output:
        say.out.write(json.dumps({"mode": "fill", "ok": True, "flushed": True, "dbsize": left}))
        say.out.write("\n")
    return 0


async def _verify(nodes: Sequence[_Node], plan: FillPlan, summary: FillSummary) -> None:
    """Last error check and DBSIZE per target; fills ``summary``."""
    for node in nodes:
        problem = await _check_errors(node)
        if problem is not None:
            summary.problems.append(str(problem))
        summary.dbsize_before[node.opts.address] = node.dbsize
        summary.dbsize[node.opts.address] = await _dbsize(node)
    expected = plan.total_commands
    if summary.keys != expected:
        summary.problems.append(f"wrote {summary.keys:,} keys, the plan has {expected:,}")
    if summary.flushed:
        for i, node in enumerate(nodes):
            got = summary.dbsize[node.opts.address]
            want = plan.expected_keys(i)
            if got != want and len(nodes) > 1:
                summary.problems.append(
                    f"{node.opts.address} holds {got:,} keys, expected {want:,}"
                )
        total = summary.dbsize_total
        if total != expected:
            summary.problems.append(
                f"verification failed: DBSIZE total is {total:,}, expected {expected:,} "
                "(evictions, expiry or another writer?)"
            )
        summary.verified = not summary.problems
    else:
        added = summary.dbsize_total - sum(summary.dbsize_before.values())
        if added != expected:
            summary.late_warnings.append(
                f"DBSIZE grew by {added:,}, not {expected:,}: without -f the count is inexact "
                "(existing keys, other writers, evictions)"
            )


class _LineReader:
    """Lines from a byte stream (a worker's stdin), at most ``limit`` bytes each."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int = 1 << 20) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > self._limit:
                raise ValueError(f"a line longer than {self._limit} bytes")
            data = await self._stream.receive_some(65536)
            if not data:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line or None
            self._buffer += data


async def _follow_logins(lines: _LineReader, logins: Logins, seen: list[str]) -> None:
    """Apply the parent's login updates (see fill.auth) until it closes our stdin."""
    while (line := await lines.readline()) is not None:
        if not line.strip():
            continue
        try:
            cred, targets = parse_login_update(line, len(logins))
        except ValueError as exc:
            raise RedisToolkitError(f"bad login update from the parent process: {exc}") from None
        seen.append(cred.password)
        for target in targets:
            held = logins.get(target)
            if (held.username, held.password) != (cred.username, cred.password):
                logins.accept(target, cred)


def _silence(out: TextIO) -> None:
    """Point ``out`` at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, out.fileno())
        os.close(null)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


async def child_main(process: int, stdin: trio.abc.ReceiveStream, *, out: TextIO) -> int:
    """A ``-P`` worker: run this process's jobs; report progress as JSON lines on ``out``.

    ``stdin`` carries the plan (one JSON line, logins included), then login updates until the
    parent closes it (see fill.auth).
    """
    seen: list[str] = []
    parent_gone = False

    def emit(data: Mapping[str, Any]) -> None:
        nonlocal parent_gone
        if parent_gone:
            return
        try:
            out.write(json.dumps(data, separators=(",", ":")) + "\n")
            out.flush()
        except BrokenPipeError:
            parent_gone = True  # our stdout is the parent's pipe: nobody is listening
            _silence(out)
            raise RedisToolkitError(f"fill worker process {process}: the parent is gone") from None

    lines = _LineReader(stdin)
    try:
        spec = json.loads(await lines.readline() or b"")
        seen += [str(login.get("password")) for login in spec.get("logins", ())]
        settings = FillSettings.from_json(spec["settings"])
        targets = [Target.from_json(t) for t in spec["targets"]]
        node_opts = [_options_from_json(n) for n in spec["nodes"]]
        logins = Logins([login_from_json(login) for login in spec["logins"]])
        if len(logins) != len(targets) or len(node_opts) != len(targets):
            raise ValueError("one node and one login per target")
        plan = build_plan(settings, targets, cluster=bool(spec["cluster"]))
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        message = f"fill worker process {process}: bad plan on stdin: {exc}"
        emit({"error": redact(message, seen)})
        return 2
    progress = FillProgress(
        [t.address for t in targets], [0] * len(targets), [0] * len(targets), started=0.0
    )

    async def report() -> None:
        while True:
            await trio.sleep(CHILD_REPORT_INTERVAL)
            emit(progress.counters())

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(report)
            outer.start_soon(_follow_logins, lines, logins, seen)
            builder = await _make_builder(plan)
            async with trio.open_nursery() as work:
                for task in _job_tasks(plan, process, builder, node_opts, progress, logins):
                    work.start_soon(task)
            outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _first_error(group)
        if not isinstance(error, RedisToolkitError):
            raise
        try:
            emit({**progress.counters(), "error": redact(str(error), seen)})
        except RedisToolkitError:
            pass  # the parent is gone
        return 1
    try:
        emit({**progress.counters(), "done": True})
    except RedisToolkitError:
        return 1  # the parent is gone
    return 0
