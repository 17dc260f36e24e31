"""The ``tunn`` mode: flags, dispatch between standalone / pinned / smart, signals, --demo.

```
redis-client tunn -h HOST [-p PORT] -t [auth/TLS flags] [--listen ADDR] [--local-port N]
redis-client tunn -c -h SEED ... --tunnel-mode pinned [--listen ADDR] [--port-base N]
redis-client tunn --demo
```

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

from client.errors import ConfigError, RedisToolkitError
from client.main import Mode
from client.options import TlsOptions, add_server_arguments, server_options
from tunnel.server import TunnelConfig, serve_pinned, serve_standalone

__all__ = ["LOCAL_PASSWORD_ENV", "MODE", "choose_server", "configure", "run"]

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


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the shared server flags and the tunnel's own."""
    add_server_arguments(parser)
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
        "--demo",
        action="store_true",
        help="start a local TLS cluster (3 masters, 3 replicas) and tunnel to it",
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
    upstream = server_options(ns) if ns.host else server_options(ns, default_host="127.0.0.1")
    secret = ns.local_password
    if secret is None:
        secret = os.environ.get(LOCAL_PASSWORD_ENV) or None
    return TunnelConfig(
        upstream=upstream,
        listen=ns.listen,
        local_port=ns.local_port if ns.local_port is not None else 6379,
        local_password=secret,
        port_base=ns.port_base,
        refresh_interval=ns.refresh,
        workers=1 if cluster else (ns.workers or min(2, os.cpu_count() or 1)),
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


async def _serve_until_signal(serve: Serve, config: TunnelConfig) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signal, nursery.cancel_scope)
        await serve(config)


async def _demo(serve: Serve, config: TunnelConfig) -> None:
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
        await _serve_until_signal(serve, replace(config, upstream=upstream))
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
    main: Callable[[Serve, TunnelConfig], Awaitable[Any]] = (
        _demo if ns.demo else _serve_until_signal
    )
    try:
        trio.run(main, serve, config)
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
