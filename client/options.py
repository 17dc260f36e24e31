"""Flags shared by every mode, and the settings they produce (pure; no I/O).

``-h`` means host, as in redis-cli and the earlier tool, so ``--help`` is the only help flag.
Secrets can come from the environment (``REDIS_CLIENT_PASSWORD``) so they stay out of ``ps``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace

from client.errors import ConfigError

__all__ = [
    "PASSWORD_ENV",
    "TLS_INSECURE_ENV",
    "ServerOptions",
    "TlsOptions",
    "add_server_arguments",
    "server_options",
]

PASSWORD_ENV = "REDIS_CLIENT_PASSWORD"
TLS_INSECURE_ENV = "REDIS_CLIENT_TLS_INSECURE"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How to speak TLS to the servers.

    Attributes:
        cacert: a PEM CA bundle; None means the system store.
        cert, key: a client certificate and key, for mutual TLS.
        sni: the name to send and verify when it differs from the address dialled (Azure
            nodes announce IPs while the certificate names the cache host).
        insecure: skip certificate and name verification.
    """

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    sni: str | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where the server is and how to log in. Built from the shared flags."""

    host: str = "127.0.0.1"
    port: int = 6379
    tls: TlsOptions | None = None
    username: str = "default"
    password: str | None = field(default=None, repr=False)
    cluster: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def at(self, host: str, port: int) -> ServerOptions:
        """The same login and TLS settings for another node (cluster nodes share them)."""
        return replace(self, host=host, port=port)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"invalid port {text!r}: expected a number from 1 to 65535"
        raise argparse.ArgumentTypeError(msg) from None
    if not 1 <= value <= 65535:
        msg = f"invalid port {value}: expected a number from 1 to 65535"
        raise argparse.ArgumentTypeError(msg)
    return value


def add_server_arguments(parser: argparse.ArgumentParser, *, host_required: bool = False) -> None:
    """Add the flags every mode shares. The parser must be built with ``add_help=False``."""
    parser.add_argument("--help", action="help", help="show this help message and exit")
    group = parser.add_argument_group("server")
    group.add_argument(
        "-h", "--host", required=host_required, help="server host (the seed node with -c)"
    )
    group.add_argument(
        "-p", "--port", type=_port, help="server port (default 6379, or 6380 with --tls)"
    )
    group.add_argument("-t", "--tls", action="store_true", help="connect with TLS")
    group.add_argument("-u", "--username", default="default", help="ACL user (default: default)")
    group.add_argument(
        "-a",
        "--password",
        help=f"password or token (prefer the {PASSWORD_ENV} environment variable)",
    )
    group.add_argument("-c", "--cluster", action="store_true", help="the server is a cluster")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--cacert", metavar="FILE", help="CA bundle (default: the system store)")
    tls.add_argument("--cert", metavar="FILE", help="client certificate, for mutual TLS")
    tls.add_argument("--key", metavar="FILE", help="client private key, for mutual TLS")
    tls.add_argument(
        "--sni", metavar="NAME", help="name to send and verify, when it differs from the address"
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help=f"do not verify the server certificate (also {TLS_INSECURE_ENV}=1)",
    )


def server_options(ns: argparse.Namespace, *, default_host: str = "127.0.0.1") -> ServerOptions:
    """Turn parsed shared flags into :class:`ServerOptions`.

    Raises:
        ConfigError: contradictory TLS flags (``--cert`` without ``--key``, TLS files without -t).
    """
    insecure = bool(ns.insecure) or bool(os.environ.get(TLS_INSECURE_ENV))
    tls: TlsOptions | None = None
    if (ns.cert is None) != (ns.key is None):
        msg = "--cert and --key go together (mutual TLS needs both)"
        raise ConfigError(msg)
    if ns.tls:
        for path in (ns.cacert, ns.cert, ns.key):
            if path is not None and not os.path.isfile(path):
                msg = f"cannot read {path}: no such file"
                raise ConfigError(msg)
        tls = TlsOptions(
            cacert=ns.cacert, cert=ns.cert, key=ns.key, sni=ns.sni, insecure=insecure
        )
    elif ns.cacert or ns.cert or ns.sni:
        msg = "TLS options were given without -t/--tls"
        raise ConfigError(msg, hint="add -t to connect with TLS")
    password = ns.password if ns.password is not None else os.environ.get(PASSWORD_ENV)
    port = ns.port if ns.port is not None else (6380 if ns.tls else 6379)
    return ServerOptions(
        host=ns.host or default_host,
        port=port,
        tls=tls,
        username=ns.username,
        password=password or None,
        cluster=bool(ns.cluster),
    )
