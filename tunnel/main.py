"""The ``tunn`` mode: flags, dispatch between standalone / pinned / smart, signals, --demo.

```
redis-client tunn -h HOST [-p PORT] -t [auth/TLS flags] [--listen ADDR] [--local-port N]
redis-client tunn -c -h SEED ... --tunnel-mode pinned [--listen ADDR] [--port-base N]
redis-client tunn --demo
    [--dashboard [ADDR:]PORT] [--stats] [--password-command CMD | --entra] ...
```

Observability: ``--dashboard [ADDR:]PORT`` creates the statistics (tunnel.stats.TunnelStats),
puts them in ``TunnelConfig.stats`` and serves the page, ``/metrics`` and the WebSocket
(tunnel.dashboard) on 127.0.0.1 unless an address is given; ``--stats`` keeps the statistics
for ``TUNNEL INFO`` without serving anything. Without either, nothing is counted (the
standalone relay then forwards requests and replies unscanned; counting costs a little, see
bench/bench_tunnel.py --dashboard) and ``TUNNEL`` reaches the server, which does not know it.

Rotating credentials (``--password-command``, ``--entra``; client.credentials): main runs the
provider's refresh loop (its first fetch happens before anything listens, so a broken command
fails at start), puts the provider in ``TunnelConfig.credentials`` and a ``Reauth`` hub in
``TunnelConfig.reauth``; each new credential goes to ``reauth.rotate()``, which logs every live
upstream connection in again in place (and reaches worker processes and subscribers). A
failing refresh is one error line (redacted); the current login stays.

Smart cluster mode lives in ``tunnel/smart.py`` (another change). The dispatch point is
:func:`choose_server`: it imports ``tunnel.smart`` and calls its ``serve_smart(config, *,
task_status)``, which has the same shape as :func:`tunnel.server.serve_pinned`; until that
module exists, ``--tunnel-mode smart`` is a ConfigError that suggests pinned.

Standalone runs ``--workers`` processes (default: 2 on 2+ CPUs) sharing the local port
through SO_REUSEPORT: one Python process relays on one core, and two keep up with stunnel's
threads (see bench/bench_tunnel.py). SIGINT/SIGTERM stop the listeners (and the workers),
close every connection and exit 0.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from client.credentials import Credential, add_credential_arguments, provider_from_args
from client.errors import ConfigError, RedisToolkitError
from client.main import Mode
from client.options import TlsOptions, add_server_arguments, server_options
from client.replicas import READ_FROM_CHOICES, parse_read_from
from tunnel.dashboard import serve_dashboard
from tunnel.relay import Reauth
from tunnel.rewrite import format_hostport
from tunnel.server import TunnelConfig, announce_host, serve_pinned, serve_standalone
from tunnel.stats import TunnelStats

__all__ = [
    "LOCAL_PASSWORD_ENV",
    "MODE",
    "build_config",
    "choose_server",
    "configure",
    "dashboard_address",
    "run",
]

LOCAL_PASSWORD_ENV = "REDIS_CLIENT_LOCAL_PASSWORD"

Serve = Callable[..., Awaitable[None]]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value}: expected 1 to 65535")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be >= 0")
    return value


def _workers(text: str) -> int:
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"invalid worker count {value}: expected 1 to 64")
    return value


def dashboard_address(text: str) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1) or ``ADDR:PORT`` (``[v6]:PORT``) for ``--dashboard``.

    Raises:
        argparse.ArgumentTypeError: not one of those forms, or a port outside 0..65535.
    """
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(
            f"invalid dashboard address {text!r}: expected PORT or ADDR:PORT (0 = any free port)"
        )
    return host, int(port_text)


def _pool_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid pool size {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"invalid pool size {value}: expected 1 to 64")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the shared server flags and the tunnel's own."""
    add_server_arguments(parser)
    add_credential_arguments(parser)
    group = parser.add_argument_group("tunnel")
    group.add_argument(
        "--listen", default="127.0.0.1", metavar="ADDR", help="local address (default 127.0.0.1)"
    )
    group.add_argument(
        "--local-port",
        type=_port,
        metavar="N",
        help="standalone/smart listener port (default 6379)",
    )
    group.add_argument(
        "--local-password",
        metavar="PW",
        help=f"clients must AUTH with this first (or set {LOCAL_PASSWORD_ENV})",
    )
    group.add_argument(
        "--tunnel-mode",
        choices=("smart", "pinned"),
        help="with -c: one routing listener (smart, default) or one listener per node (pinned)",
    )
    group.add_argument(
        "--port-base",
        type=_port,
        metavar="N",
        help="pinned: listener ports N, N+1, ... by node (host, port) order",
    )
    group.add_argument(
        "--refresh",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="pinned: topology refresh period (default 30, 0 = never)",
    )
    group.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="standalone: processes sharing the local port (default auto: 2 on 2+ CPUs)",
    )
    group.add_argument(
        "--read-from",
        metavar="|".join(READ_FROM_CHOICES),
        help="smart: where read-only commands go (default master)",
    )
    group.add_argument(
        "--pool-size",
        type=_pool_size,
        metavar="N",
        help="smart: shared upstream connections per node (default 2)",
    )
    group.add_argument(
        "--demo",
        action="store_true",
        help="start a local TLS cluster (3 masters, 3 replicas) and tunnel to it",
    )
    watch = parser.add_argument_group("observability")
    watch.add_argument(
        "--dashboard",
        type=dashboard_address,
        metavar="[ADDR:]PORT",
        help="serve a live dashboard, /metrics (Prometheus) and a WebSocket on PORT "
        "(127.0.0.1 unless ADDR is given; 0 = any free port); also enables TUNNEL INFO",
    )
    watch.add_argument(
        "--stats",
        action="store_true",
        help="count traffic for TUNNEL INFO without serving a dashboard",
    )


def build_config(ns: argparse.Namespace) -> TunnelConfig:
    """Check the flags and turn them into a :class:`TunnelConfig`.

    Raises:
        ConfigError: missing -h, or flags that belong to another mode.
    """
    if not ns.host and not ns.demo:
        raise ConfigError(
            "tunn needs the server to reach: -h HOST", hint="or try it locally with --demo"
        )
    cluster = bool(ns.cluster) or bool(ns.demo)
    if not cluster:
        if ns.tunnel_mode is not None:
            raise ConfigError("--tunnel-mode applies to a cluster", hint="add -c")
        if ns.port_base is not None:
            raise ConfigError("--port-base applies to pinned cluster mode", hint="add -c")
    elif ns.workers is not None:
        raise ConfigError("--workers applies to the standalone tunnel", hint="drop -c")
    elif (ns.tunnel_mode or "smart") == "pinned" and ns.local_port is not None:
        raise ConfigError(
            "--local-port does not apply to pinned mode (one listener per node)",
            hint="use --port-base N to choose the listener ports",
        )
    mode = "standalone" if not cluster else (ns.tunnel_mode or "smart")
    if mode != "smart":
        for flag, value in (("--read-from", ns.read_from), ("--pool-size", ns.pool_size)):
            if value is not None:
                raise ConfigError(
                    f"{flag} applies to smart cluster mode", hint="add -c (smart is the default)"
                )
    upstream = server_options(ns) if ns.host else server_options(ns, default_host="127.0.0.1")
    provider = provider_from_args(ns, upstream)
    secret = ns.local_password
    if secret is None:
        secret = os.environ.get(LOCAL_PASSWORD_ENV) or None
    counting = ns.dashboard is not None or ns.stats
    return TunnelConfig(
        upstream=upstream,
        listen=ns.listen,
        local_port=ns.local_port if ns.local_port is not None else 6379,
        local_password=secret,
        port_base=ns.port_base,
        refresh_interval=ns.refresh,
        workers=1 if cluster else (ns.workers or min(2, os.cpu_count() or 1)),
        stats=TunnelStats(mode) if counting else None,
        credentials=provider if provider.dynamic else None,
        read_from=parse_read_from(ns.read_from) if ns.read_from is not None else "master",
        pool_size=ns.pool_size if ns.pool_size is not None else 2,
    )


def choose_server(ns: argparse.Namespace) -> Serve:
    """The serve_* function for these flags: the one dispatch point between the modes.

    Raises:
        ConfigError: smart mode was asked for but ``tunnel.smart`` is not there yet.
    """
    if not (ns.cluster or ns.demo):
        return serve_standalone
    mode = ns.tunnel_mode or "smart"
    if mode == "pinned":
        return serve_pinned
    try:
        smart = importlib.import_module("tunnel.smart")
    except ModuleNotFoundError as exc:
        if exc.name != "tunnel.smart":
            raise
        if ns.demo and ns.tunnel_mode is None:
            return serve_pinned  # the demo shows what this build has
        raise ConfigError(
            "smart cluster mode is not available yet in this build",
            hint="use --tunnel-mode pinned (one local listener per cluster node)",
        ) from None
    serve: Serve = smart.serve_smart
    return serve


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error inside nested single-error groups, if that is what this is."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


async def _until_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"redis-client tunn: {signal.Signals(signum).name}, stopping", file=sys.stderr)
            scope.cancel()
            return


def _dashboard_line(listeners: list[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    try:
        loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    url = f"http://{format_hostport(announce_host(host), port)}/"
    extra = "" if loopback else f"; listening on {host}: anyone who can reach it sees the stats"
    return f"dashboard: {url} (Prometheus metrics at {url}metrics{extra})"


async def _serve_until_signal(
    serve: Serve, config: TunnelConfig, dashboard: tuple[str, int] | None = None
) -> None:
    """Run the tunnel (and its dashboard and credential refresh) until SIGINT/SIGTERM."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signal, nursery.cancel_scope)
        provider = config.credentials
        if provider is not None:
            hub: list[Reauth] = []

            async def on_new(credential: Credential) -> None:
                if hub:
                    hub[0].rotate(credential)
                    print(
                        f"redis-client tunn: new credential for user "
                        f"{provider.redact(credential.username)}: every live upstream "
                        "connection logs in again",
                        file=sys.stderr,
                        flush=True,
                    )

            first = await nursery.start(provider.serve_refresh, on_new)
            hub.append(Reauth(first))
            config = replace(config, reauth=hub[0])
        listeners: list[trio.SocketListener] = []
        if dashboard is not None:
            assert config.stats is not None
            listeners = await nursery.start(serve_dashboard, config.stats, *dashboard)
        await nursery.start(serve, config)
        if listeners:
            config.say(_dashboard_line(listeners))


async def _demo(
    serve: Serve, config: TunnelConfig, dashboard: tuple[str, int] | None = None
) -> None:
    """Start a local TLS cluster, tunnel to it, stop it on the way out."""
    from certs import generate
    from client.embedded import LocalCluster, start_cluster

    root = Path(tempfile.mkdtemp(prefix="redis-client-demo-"))
    print(f"demo: starting a local TLS cluster (3 masters, 3 replicas) in {root}", flush=True)
    certs = await trio.to_thread.run_sync(generate, root / "certs")
    secret = os.urandom(12).hex()
    cluster: LocalCluster | None = None
    try:
        cluster = await trio.to_thread.run_sync(
            lambda: start_cluster(
                masters=3,
                replicas_per_master=1,
                password=secret,
                certs=certs,
                workdir=root / "cluster",
            )
        )
        seed = cluster.seed
        tls = TlsOptions(
            cacert=str(certs.ca), cert=str(certs.client_cert), key=str(certs.client_key)
        )
        upstream = replace(
            config.upstream, host=seed.host, port=seed.port, tls=tls, password=secret, cluster=True
        )
        print(
            "demo: connect with `redis-cli -p PORT` (add -c in pinned mode), "
            "PORT from the table below",
            flush=True,
        )
        await _serve_until_signal(serve, replace(config, upstream=upstream), dashboard)
    finally:
        with trio.CancelScope(shield=True):
            if cluster is not None:
                await trio.to_thread.run_sync(cluster.stop)
            await trio.to_thread.run_sync(lambda: shutil.rmtree(root, ignore_errors=True))
        print("demo: local cluster stopped", flush=True)


def run(ns: argparse.Namespace) -> int:
    """Run the tunnel until SIGINT/SIGTERM; 0 on a clean stop."""
    config = build_config(ns)
    serve = choose_server(ns)
    main: Callable[[Serve, TunnelConfig, tuple[str, int] | None], Awaitable[Any]] = (
        _demo if ns.demo else _serve_until_signal
    )
    try:
        trio.run(main, serve, config, ns.dashboard)
    except BaseExceptionGroup as group:
        leaf = _leaf(group)
        if isinstance(leaf, (RedisToolkitError, KeyboardInterrupt)):
            raise leaf from None
        raise
    return 0


MODE = Mode(
    name="tunn",
    summary="TLS tunnel: local plaintext listeners for a Redis server or cluster behind TLS",
    configure=configure,
    run=run,
    aliases=("tunnel",),
)
