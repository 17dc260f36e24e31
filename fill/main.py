"""``redis-client fill``: load N GB of keys into a server or a cluster, then verify.

Flags are the earlier tool's (see :mod:`fill.plan` for the arithmetic)::

    redis-client fill -h HOST [-p PORT] [-t] [-c] [-u USER] [-a PASS] [TLS flags]
                      [--password-command CMD | --entra] [--credential-refresh S]
                      -d GB [-f] [-n CONNS] [-s] [--key-size B] [--value-size B]
                      [--pipeline N] [-P PROCS] [--seed S] [--json]

``-f`` without ``-d`` only flushes. ``--password-command`` / ``--entra`` take the password or
token from a command, fetched again before it expires; live connections log in again in place
(see :mod:`fill.auth`). ``--process-index`` is internal: it marks a ``-P`` worker, which reads
its plan (logins included) as JSON lines on stdin (see :mod:`fill.runner`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from functools import partial

import trio

from client.credentials import add_credential_arguments, provider_from_args
from client.errors import ConfigError
from client.main import Mode
from client.options import add_server_arguments, server_options
from fill.plan import (
    DEFAULT_CONNECTIONS,
    DEFAULT_KEY_SIZE,
    DEFAULT_PIPELINE,
    DEFAULT_VALUE_SIZE,
    KEY_SIZE_MAX,
    VALUE_SIZE_MAX,
    settings_from_flags,
)

# fill.runner (and the I/O stack under it) is imported by run(): every mode module is loaded
# to build the mode list, so importing it here would slow down the start of the other modes.
__all__ = ["MODE", "configure", "run"]


def _integer(text: str) -> int:
    try:
        return int(text, 0) if text.strip().lower().startswith("0x") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the shared server flags and the fill flags to ``parser``."""
    add_server_arguments(parser, host_required=True)
    add_credential_arguments(parser)
    group = parser.add_argument_group("fill")
    group.add_argument(
        "-d",
        "--data",
        metavar="GB",
        help="GB of key+value payload to write (fractions allowed: -d 0.25 = 256 MB)",
    )
    group.add_argument(
        "-f", "--flush", action="store_true", help="FLUSHALL every master first (alone: only flush)"
    )
    group.add_argument(
        "-n",
        "--connections",
        type=_integer,
        default=DEFAULT_CONNECTIONS,
        metavar="CONNS",
        help=f"connections per node (default {DEFAULT_CONNECTIONS})",
    )
    group.add_argument("-s", "--serial", action="store_true", help="one connection (-n 1)")
    group.add_argument(
        "--key-size",
        type=_integer,
        default=DEFAULT_KEY_SIZE,
        metavar="BYTES",
        help=f"key length, 1..{KEY_SIZE_MAX} (default {DEFAULT_KEY_SIZE})",
    )
    group.add_argument(
        "--value-size",
        type=_integer,
        default=DEFAULT_VALUE_SIZE,
        metavar="BYTES",
        help=f"value length, 1..{VALUE_SIZE_MAX} (default {DEFAULT_VALUE_SIZE})",
    )
    group.add_argument(
        "--pipeline",
        type=_integer,
        default=DEFAULT_PIPELINE,
        metavar="N",
        help=f"SET commands per write, >= 1 (default {DEFAULT_PIPELINE}; at most 16 MB a write)",
    )
    group.add_argument(
        "-P",
        "--processes",
        type=_integer,
        metavar="PROCS",
        help="spread the work over PROCS processes (more client cores)",
    )
    group.add_argument(
        "--seed", type=_integer, metavar="S", help="seed for keys and values (default: random)"
    )
    group.add_argument(
        "--json", action="store_true", help="print the summary as one JSON line on stdout"
    )
    group.add_argument("--process-index", type=_integer, help=argparse.SUPPRESS)


def run(ns: argparse.Namespace) -> int:
    """Validate the flags and run the fill (or, with --process-index, one worker process)."""
    from fill.runner import FillRequest, fill_main

    if ns.process_index is not None:
        if ns.process_index < 0:
            raise ConfigError(f"invalid --process-index {ns.process_index}")
        return trio.run(_child, ns.process_index)
    settings = settings_from_flags(
        data=ns.data,
        flush=ns.flush,
        key_size=ns.key_size,
        value_size=ns.value_size,
        pipeline=ns.pipeline,
        connections=ns.connections,
        serial=ns.serial,
        processes=ns.processes,
        seed=ns.seed if ns.seed is not None else secrets.randbits(63),
    )
    server = server_options(ns)
    provider = provider_from_args(ns, server)
    request = FillRequest(
        settings=settings, server=server, json_output=ns.json, credentials=provider
    )
    return trio.run(partial(fill_main, request, out=sys.stdout, err=sys.stderr))


async def _child(index: int) -> int:
    """A ``-P`` worker: its plan and login updates arrive on stdin, read without blocking."""
    from fill.runner import child_main

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        return await child_main(index, stdin, out=sys.stdout)


MODE = Mode(
    name="fill",
    summary="load N GB of keys into a server or cluster at full speed, then verify",
    configure=configure,
    run=run,
)
