"""The ``cli`` mode: a redis-cli compatible shell that also understands clusters.

``redis-client cli [-h HOST] [-p PORT] [-t] [-c] [-u USER] [-a PASS] [TLS flags] [-3]
[--raw | --no-raw] [-r N] [-i SECONDS] [COMMAND [ARG ...]]``

Three ways to run, chosen as redis-cli chooses:

* **one-shot**: a command on the command line runs (``-r N`` times, ``-i S`` apart), its replies
  are printed and the program exits 0, even after an error reply (as redis-cli without ``-e``);
  1 when the server cannot be reached or the connection breaks;
* **piped**: stdin is not a terminal, so each line is a command; replies are printed, bad lines
  give ``Invalid argument(s)`` and the run goes on (exit 1 if a command met a connection error);
* **REPL**: a prompt ``host:port>`` with history (``~/.redis-client_history``, mode 0600, never
  AUTH / HELLO ... AUTH lines; ``REDIS_CLIENT_HISTFILE`` moves it, empty disables it), Tab
  completion and grey argument hints from COMMAND DOCS, ``help COMMAND``, Ctrl-C to clear the line
  or stop a running command, Ctrl-D / ``exit`` / ``quit`` to leave, and confirmation before
  FLUSHALL, FLUSHDB, SHUTDOWN, and KEYS on more than 100 000 keys.

Output is typed when stdout is a terminal (or ``--no-raw``) and raw otherwise (or ``--raw``);
both are byte-identical to redis-cli (see :mod:`client.cliformat`).

With ``-c`` the shell talks to one node at a time, as redis-cli does: MOVED and ASK are
followed and announced with ``-> Redirected to slot [N] located at host:port`` (REPL and piped
use), and the prompt shows the node that answered last. A CROSSSLOT error is followed by a hint
with each key's slot and owner and a hash-tag suggestion. Shell commands (all modes):

``:topology``            nodes, roles and slot ranges
``:slot KEY ...``        each key's slot, hash tag and owning node
``:cluster dbsize``      DBSIZE of every master, and the total
``:cluster keys PAT``    KEYS PAT on every master, with a per-node count
``:cluster scan [MATCH PAT] [COUNT N] [TYPE T]``   a full SCAN of every master, counted per node
``:help``                this list

In raw mode the per-node counts go to stderr, so stdout holds only keys.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import os
import re
import signal
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar, cast

import trio

from client.cliformat import (
    ArgumentError,
    CommandDoc,
    LineBuffer,
    command_hint,
    completions,
    decode_keys,
    format_command_help,
    format_reply,
    is_secret_line,
    join_args,
    parse_command_docs,
    split_line,
    synopsis,
    wants_raw_output,
)
from client.commands import Argument, CommandTable
from client.connection import Connection, open_authenticated_stream, open_connection
from client.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    RedisConnectionError,
    RedisToolkitError,
    RespProtocolError,
)
from client.main import Mode
from client.options import ServerOptions, add_server_arguments, server_options
from client.resp import NEED_DATA, RespParser, encode_command
from client.slots import hash_tag, key_slot
from client.tasks import open_service_nursery
from client.topology import Node, Topology, parse_cluster_shards, parse_cluster_slots
from client.topology import parse_redirect as parse_redirect_reply
from client.values import ErrorReply, RespMap, RespValue

__all__ = ["MODE", "configure", "run"]

CONNECT_TIMEOUT = 10.0
MAX_LINE = 64 * 1024 * 1024  # longest stdin line accepted (redis-cli has no bound)
MAX_REDIRECTS = 16
KEYS_CONFIRM_THRESHOLD = 100_000
HISTORY_LENGTH = 1000
HISTORY_ENV = "REDIS_CLIENT_HISTFILE"
_SLOW = 0.5  # redis-cli prints "(1.23s)" after commands this slow (typed mode, not one-shot)
_STREAMING = frozenset({b"subscribe", b"psubscribe", b"ssubscribe", b"monitor"})
_DANGEROUS = frozenset({b"flushall", b"flushdb", b"shutdown"})
_HELPERS = (":topology", ":slot", ":cluster", ":help")
_S = TypeVar("_S", str, bytes)


# -------------------------------------------------------------------------------------- flags


def configure(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    group = parser.add_argument_group("cli")
    group.add_argument("-3", dest="resp3", action="store_true", help="speak RESP3 (HELLO 3)")
    raw = group.add_mutually_exclusive_group()
    raw.add_argument(
        "--raw", dest="raw", action="store_const", const=True, help="raw output (default: no tty)"
    )
    raw.add_argument(
        "--no-raw", dest="raw", action="store_const", const=False, help="typed output, always"
    )
    group.add_argument(
        "-r", dest="repeat", type=int, default=1, metavar="N", help="run the command N times"
    )
    group.add_argument(
        "-i", dest="interval", type=float, default=0.0, metavar="SECONDS", help="wait between -r"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    # "-3" looks like a negative number, which would make argparse read "-r -1" as two flags.
    parser._has_negative_number_optionals.clear()


_EPILOG = """\
With a COMMAND: run it and exit (status 0, even after an error reply, as redis-cli).
Without one: read commands from stdin when it is not a terminal, else start a REPL
(history in ~/.redis-client_history, Tab completion, hints, help COMMAND).

shell commands (in every mode):
  :topology                      nodes, roles and slot ranges
  :slot KEY [KEY ...]            each key's slot, hash tag and owning master
  :cluster dbsize                DBSIZE of every master, and the total
  :cluster keys PATTERN          KEYS PATTERN on every master, counted per node
  :cluster scan [MATCH P] [COUNT N] [TYPE T]
                                 a full SCAN of every master, counted per node
"""


@dataclass(frozen=True)
class Settings:
    """How this run talks and prints."""

    opts: ServerOptions
    protocol: int
    raw: bool
    repeat: int
    interval: float
    interactive: bool  # a REPL on a terminal: prompts, confirmations, Ctrl-C handling
    chatty: bool  # REPL or piped (redis-cli's "interactive"): redirect notes, slow-command times


def run(ns: argparse.Namespace) -> int:
    opts = server_options(ns)
    if ns.interval < 0:
        raise ConfigError(f"invalid -i {ns.interval:g}: the interval cannot be negative")
    raw = ns.raw if ns.raw is not None else not sys.stdout.isatty()
    words = [os.fsencode(w) for w in ns.command]
    one_shot = bool(words)
    interactive = not one_shot and sys.stdin.isatty()
    cfg = Settings(
        opts=opts,
        protocol=3 if ns.resp3 else 2,
        raw=raw,
        repeat=ns.repeat,
        interval=ns.interval,
        interactive=interactive,
        chatty=not one_shot,
    )
    if one_shot:
        return trio.run(_one_shot, cfg, words)
    if interactive:
        return trio.run(_repl, cfg)
    return trio.run(_piped, cfg)


# ------------------------------------------------------------------------------------ output


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------- session


class Session:
    """The connections of one shell run: the node in use, and one cached connection per node.

    Make it with :func:`open_session`. Connections open lazily and re-open after a failure.
    """

    def __init__(self, cfg: Settings, nursery: trio.Nursery) -> None:
        self.cfg = cfg
        self.current = cfg.opts
        self.connected = False
        self.db = 0
        self.in_multi = False
        self._nursery = nursery
        self._held: dict[str, tuple[Connection, trio.Event]] = {}
        self._topology: Topology | None = None
        self._answered: set[str] = set()  # nodes that have answered once

    @property
    def prompt(self) -> str:
        if not self.connected:
            return "not connected> "
        db = f"[{self.db}]" if self.db else ""
        return f"{self.current.address}{db}{'(TX)' if self.in_multi else ''}> "

    async def connection(self, target: ServerOptions | None = None) -> Connection:
        """The live connection to ``target`` (default: the node in use), opened if needed."""
        target = target or self.current
        held = self._held.get(target.address)
        if held is not None and held[0].alive:
            return held[0]
        if held is not None:
            held[1].set()
        stop = trio.Event()
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                conn: Connection = await self._nursery.start(self._hold, target, stop)
        except trio.TooSlowError:
            self.connected = False
            msg = f"connecting to {target.address} got no answer in {CONNECT_TIMEOUT:g} s"
            raise ConnectError(msg, hint="check -h/-p and any firewall in between") from None
        except ConnectError:
            if target.address == self.current.address:
                self.connected = False
            raise
        self._held[target.address] = (conn, stop)
        if target.address == self.current.address:
            self.connected = True
        if self.db and target.address == self.current.address:
            await conn.request("SELECT", self.db)
        return conn

    async def _hold(
        self,
        target: ServerOptions,
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_connection(target, protocol=self.cfg.protocol) as conn:
            task_status.started(conn)
            await stop.wait()

    def drop_all(self) -> None:
        """Close every connection (after Ctrl-C, or when one broke); later use reconnects."""
        for _, stop in self._held.values():
            stop.set()
        self._held.clear()
        self.in_multi = False

    async def request(self, args: Sequence[bytes], *, on: ServerOptions | None = None) -> RespValue:
        conn = await self.connection(on)
        return await conn.request(*args)

    async def send(self, args: Sequence[bytes], note: Callable[[str], None]) -> RespValue:
        """Run a command on the node in use, following MOVED/ASK in cluster mode (as redis-cli).

        ``note`` receives each ``-> Redirected ...`` line.
        """
        asking = False
        for _ in range(MAX_REDIRECTS):
            conn = await self.connection()
            if asking:
                reply = (await conn.pipeline([[b"ASKING"], list(args)]))[1]
            else:
                reply = await conn.request(*args)
            self._answered.add(self.current.address)
            if not (self.cfg.opts.cluster and isinstance(reply, ErrorReply)):
                return reply
            redirect = parse_redirect_reply(reply.message)
            if redirect is None:
                return reply
            kind, slot, host, port = redirect
            self.current = self.current.at(host or self.current.host, port)
            self._topology = None if kind == "MOVED" else self._topology
            asking = kind == "ASK"
            note(f"-> Redirected to slot [{slot}] located at {self.current.address}")
        return reply

    def explain(self, exc: RedisConnectionError) -> RedisConnectionError:
        """Add a hint to a connection lost before the node ever answered (a TLS port?)."""
        first = self.current.address not in self._answered
        if isinstance(exc, ConnectionLost) and exc.hint is None and first:
            hint = "the server hung up before answering"
            if self.cfg.opts.tls is None:
                hint += ": is this a TLS port? try -t/--tls"
            return ConnectionLost(exc.message, hint=hint)
        return exc

    async def topology(self) -> Topology | None:
        """The cluster's topology (cached until a MOVED), or None for a standalone server."""
        if not self.cfg.opts.cluster:
            return None
        if self._topology is None:
            reply = await self.request([b"CLUSTER", b"SHARDS"])
            if isinstance(reply, ErrorReply):  # before Redis 7
                topology = parse_cluster_slots(await self.request([b"CLUSTER", b"SLOTS"]))
            else:
                topology = parse_cluster_shards(reply, tls=self.cfg.opts.tls is not None)
            self._topology = topology
        return self._topology

    def node_options(self, node: Node) -> ServerOptions:
        return self.current.at(node.host or self.current.host, node.port)


@asynccontextmanager
async def open_session(cfg: Settings) -> AsyncIterator[Session]:
    """A :class:`Session` whose connections live as long as the ``async with`` block."""
    async with open_service_nursery() as nursery:
        session = Session(cfg, nursery)
        try:
            yield session
        finally:
            session.drop_all()


# ------------------------------------------------------------------------------------- shell


class Shell:
    """Runs commands for every mode: builtins, helpers, repeats, redirects, output."""

    def __init__(self, cfg: Settings, session: Session) -> None:
        self.cfg = cfg
        self.session = session
        self.editor: TerminalEditor | None = None
        self.docs: dict[str, CommandDoc] | None = None
        self.failed = False  # a command met a connection error (piped mode's exit status)

    def note(self, text: str) -> None:
        if self.cfg.chatty:
            _out(text.encode() + b"\n")

    async def run_line(self, line: bytes) -> bool:
        """Run one typed line (REPL or piped). Returns False when the user asked to leave."""
        try:
            args = split_line(line)
        except ArgumentError as exc:
            _out(b"Invalid argument(s)\n")
            if "NUL" in str(exc):
                _err('hint: a NUL byte ends a line for redis-cli; write it as "\\x00"')
            return True
        if not args:
            return True
        repeat = 1
        if len(args) > 1 and re.fullmatch(rb"[ \t\n\v\f\r]*[+-]?[0-9]+", args[0]):
            repeat = int(args[0])
            if repeat <= 0 or repeat > 2**63 - 1:
                _out(b"Invalid redis-cli repeat command option value.\n")
                return True
            args = args[1:]
        name = args[0].lower()
        if name in (b"quit", b"exit"):
            return False
        if name == b"clear" and len(args) == 1:
            _out(b"\x1b[H\x1b[2J")
            return True
        started = time.monotonic()
        await self.run_args(args, repeat)
        elapsed = time.monotonic() - started
        if elapsed >= _SLOW and not self.cfg.raw:
            _out(b"(%.2fs)\n" % elapsed)
        return True

    async def run_args(self, args: list[bytes], repeat: int) -> None:
        """Run a command ``repeat`` times (forever when negative), as redis-cli's cliSendCommand."""
        name = args[0].lower()
        if name in (b"help", b"?"):
            await self.help(args[1:])
            return
        if name.startswith(b":"):
            await self.helper(args)
            return
        if name in (b"sync", b"psync"):
            _err(f"{name.decode().upper()} (replica output) is not supported; use redis-cli")
            return
        if self.cfg.interactive and not await self.confirm(args):
            return
        try:
            while repeat != 0:
                repeat -= 1 if repeat > 0 else 0
                if name in _STREAMING:
                    await self.stream(args)
                    return
                reply = await self.session.send(args, self.note)
                _out(format_reply(reply, raw=self.cfg.raw, verbatim=wants_raw_output(args)))
                await self.after(args, reply)
                if self.cfg.interval:
                    await trio.sleep(self.cfg.interval)
        except RedisToolkitError as exc:
            self.report(exc)

    def report(self, exc: RedisToolkitError) -> None:
        """A failed command: raise in one-shot mode (main prints it, exit 1), else print it."""
        error: RedisToolkitError = exc
        if isinstance(exc, RedisConnectionError):
            self.session.drop_all()
            error = self.session.explain(exc)
        if not self.cfg.chatty:
            if error is exc:
                raise exc
            raise error from exc
        self.failed = True
        _err(f"Error: {error}")

    async def after(self, args: list[bytes], reply: RespValue) -> None:
        """Track SELECT/MULTI for the prompt; explain CROSSSLOT errors."""
        name, ok = args[0].lower(), not isinstance(reply, ErrorReply)
        session = self.session
        if name == b"select" and len(args) == 2 and ok and args[1].isdigit():
            session.db = int(args[1])
        elif name == b"multi" and ok:
            session.in_multi = True
        elif name in (b"exec", b"discard"):
            session.in_multi = False
        if isinstance(reply, ErrorReply) and reply.kind == "CROSSSLOT":
            with contextlib.suppress(RedisToolkitError, ValueError):
                await self.crossslot_hint(args)  # a hint is a bonus: never fail over it

    async def crossslot_hint(self, args: list[bytes]) -> None:
        keys = await self.session.request([b"COMMAND", b"GETKEYS", *args])
        if not isinstance(keys, list) or not all(isinstance(k, bytes) for k in keys):
            return
        key_list = [k for k in keys if isinstance(k, bytes)]
        topology = await self.session.topology()
        lines = ["hint: these keys hash to different slots, so one command cannot take them:"]
        for key in key_list:
            slot = key_slot(key)
            owner = topology.slot_owner(slot) if topology else None
            where = f" on {owner.address}" if owner else ""
            lines.append(f"  {join_args([key])} -> slot {slot}{where}")
        lines.append(f"  a common hash tag keeps them in one slot, e.g. {_tag_example(key_list)}")
        _err("\n".join(lines))

    async def stream(self, args: list[bytes]) -> None:
        """SUBSCRIBE / MONITOR: print every reply that arrives, until Ctrl-C or disconnection."""
        target = self.session.current
        stream = await open_authenticated_stream(
            target, protocol=3 if self.cfg.protocol == 3 else None
        )
        try:
            await stream.send_all(encode_command(*args))
            if args[0].lower() != b"monitor" and not self.cfg.raw:
                _out(b"Reading messages... (press Ctrl-C to quit)\n")
            parser = RespParser()
            while True:
                value = parser.next_value()
                if value is NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        parser.feed_eof()
                        parser.next_value()
                        _err(f"Error: {target.address} closed the connection")
                        return
                    parser.feed(data)
                    continue
                _out(format_reply(value, raw=self.cfg.raw))
        except (trio.BrokenResourceError, RespProtocolError) as exc:
            raise ConnectError(f"connection to {target.address} lost: {exc}") from exc
        finally:
            await trio.aclose_forcefully(stream)

    async def confirm(self, args: list[bytes]) -> bool:
        """Ask before dangerous commands (interactive REPL only)."""
        name = args[0].lower()
        where = self.session.current.address
        question = None
        if name in _DANGEROUS:
            what = {b"flushall": "deletes every key", b"flushdb": "deletes every key of the db"}
            question = f"{name.decode().upper()} {what.get(name, 'stops the server')} at {where}"
        elif name == b"keys":
            try:
                size = await self.session.request([b"DBSIZE"])
            except RedisConnectionError:
                return True
            if isinstance(size, int) and size > KEYS_CONFIRM_THRESHOLD:
                question = (
                    f"KEYS walks all {size} keys of {where} and blocks it meanwhile"
                    " (SCAN, or :cluster scan, does not)"
                )
        if question is None or self.editor is None:
            return True
        answer = await trio.to_thread.run_sync(
            self.editor.read_line,
            f"{question}. Type 'yes' to go on: ",
            False,
            abandon_on_cancel=True,
        )
        return answer is not None and answer.strip().lower() == "yes"

    # -- help ------------------------------------------------------------------------------

    async def load_docs(self) -> dict[str, CommandDoc]:
        """Help data: the server's COMMAND DOCS (as redis-cli 7), else the bundled snapshot."""
        if self.docs is None:
            try:
                docs = parse_command_docs(await self.session.request([b"COMMAND", b"DOCS"]))
            except RedisConnectionError:
                return _bundled_docs()  # not cached: the server may come back
            self.docs = docs or _bundled_docs()  # Redis < 7 has no COMMAND DOCS
        return self.docs

    async def help(self, topic: list[bytes]) -> None:
        docs = await self.load_docs()
        color = sys.stdout.isatty()
        if not topic:
            _out(_GENERIC_HELP.encode())
            return
        words = [t.decode("utf-8", "replace") for t in topic]
        if words[0].startswith("@"):
            group = words[0][1:].lower()
            found = [d for d in docs.values() if d.group == group]
            text = "".join(format_command_help(d, color=color, with_group=False) for d in found)
        else:
            name = " ".join(words).upper()
            found = [d for n, d in sorted(docs.items()) if n == name or n.startswith(name + " ")]
            text = "".join(format_command_help(d, color=color) for d in found)
        if not found:
            text = f"no help for {' '.join(words)!r} (COMMAND DOCS of the server has none)\n"
        _out(text.encode() + b"\n")

    # -- helpers -----------------------------------------------------------------------------

    async def helper(self, args: list[bytes]) -> None:
        name = args[0].lower().decode("utf-8", "replace")
        sub = args[1].lower() if len(args) > 1 else b""
        try:
            if name == ":slot" and len(args) > 1:
                await self.show_slots(args[1:])
            elif name == ":topology":
                await self.show_topology()
            elif name == ":cluster" and sub == b"dbsize":
                await self.cluster_dbsize()
            elif name == ":cluster" and sub in (b"keys", b"scan"):
                await self.cluster_keys(sub, args[2:])
            else:
                _out(_HELPER_HELP.encode())
        except RedisToolkitError as exc:
            self.report(exc)

    async def masters(self) -> list[tuple[str, ServerOptions]]:
        """(label, options) of every master, or of the one server when not a cluster."""
        topology = await self.session.topology()
        if topology is None:
            return [(self.session.current.address, self.session.current)]
        return [
            (f"{m.address} (slots {_ranges(topology, m)})", self.session.node_options(m))
            for m in topology.masters()
        ]

    async def show_slots(self, keys: list[bytes]) -> None:
        topology = await self.session.topology()
        for key in keys:
            owner = topology.slot_owner(key_slot(key)) if topology else None
            tag = hash_tag(key)
            line = f"{join_args([key])}: slot {key_slot(key)}"
            if tag != key:
                line += f" (hash tag {join_args([tag])})"
            if owner is not None:
                line += f", master {owner.address} ({owner.id[:8]})"
            _out(line.encode() + b"\n")

    async def show_topology(self) -> None:
        topology = await self.session.topology()
        if topology is None:
            _out(f"not a cluster: standalone server {self.session.current.address}\n".encode())
            return
        lines = []
        for node in topology.nodes:
            health = "" if node.health == "online" else f" [{node.health}]"
            if node.is_master:
                count = sum(end - start + 1 for start, end in node.slots)
                ranges = _ranges(topology, node)
                lines.append(
                    f"master  {node.id[:8]}  {node.address}{health}  slots {ranges} ({count})"
                )
            else:
                lines.append(f"  replica {node.id[:8]}  {node.address}{health}")
        if not topology.covered():
            lines.append(f"unassigned slots: {_format_ranges(topology.unassigned())}")
        _out(("\n".join(lines) + "\n").encode())

    async def cluster_dbsize(self) -> None:
        total = 0
        rows = []
        for label, opts in await self.masters():
            size = await self.session.request([b"DBSIZE"], on=opts)
            count = size if isinstance(size, int) else 0
            total += count
            rows.append((label, str(count) if isinstance(size, int) else _reply_text(size)))
        rows.append(("total", str(total)))
        width = max(len(label) for label, _ in rows)
        _out("".join(f"{label:<{width}}  {value}\n" for label, value in rows).encode())

    async def cluster_keys(self, kind: bytes, rest: list[bytes]) -> None:
        keys: list[RespValue] = []
        counts = []
        for label, opts in await self.masters():
            if kind == b"keys":
                found = await self.session.request([b"KEYS", *(rest[:1] or [b"*"])], on=opts)
                found_keys = _as_list(found)
            else:
                found_keys = await self._scan_all(opts, rest)
            keys.extend(found_keys)
            counts.append(f"{label}: {len(found_keys)}")
        _out(format_reply(keys, raw=self.cfg.raw))
        summary = "\n".join([*counts, f"total: {len(keys)} keys"])
        if self.cfg.raw:
            _err(summary)
        else:
            _out(summary.encode() + b"\n")

    async def _scan_all(self, opts: ServerOptions, options: list[bytes]) -> list[RespValue]:
        keys: list[RespValue] = []
        cursor = b"0"
        while True:
            reply = await self.session.request([b"SCAN", cursor, *options], on=opts)
            if isinstance(reply, ErrorReply):
                _err(f"{opts.address}: {reply.text}")
                return keys
            if not (isinstance(reply, list) and len(reply) == 2):
                return keys
            items = cast("list[RespValue]", reply)
            next_cursor, batch = items[0], items[1]
            keys.extend(_as_list(batch))
            if not isinstance(next_cursor, bytes) or next_cursor == b"0":
                return keys
            cursor = next_cursor


@functools.cache
def _bundled_docs() -> dict[str, CommandDoc]:
    """Help data from the command snapshot shipped with the package."""

    def text(arg: Argument) -> str:
        nested = [text(a) for a in arg.arguments]
        return synopsis(arg.name, arg.type, arg.token, arg.flags, nested)

    docs: dict[str, CommandDoc] = {}
    for spec in CommandTable.bundled().all_commands():
        for entry in (spec, *spec.subcommands.values()):
            docs[entry.display_name] = CommandDoc(
                name=entry.display_name,
                params=" ".join(text(a) for a in entry.arguments),
                summary=entry.summary,
                since=entry.since,
                group=entry.group,
            )
    return docs


def _as_list(value: RespValue) -> list[RespValue]:
    if isinstance(value, list) and not isinstance(value, RespMap):
        return list(value)
    return []


def _reply_text(value: RespValue) -> str:
    return format_reply(value, raw=True).decode("utf-8", "replace").strip()


def _common_prefix(items: Sequence[_S]) -> _S:
    if not items:
        raise ValueError("no items")
    first, last = min(items), max(items)
    size = 0
    while size < len(first) and first[size : size + 1] == last[size : size + 1]:
        size += 1
    return first[:size]


def _ranges(topology: Topology, node: Node) -> str:
    return _format_ranges(topology.ranges(node)) or "none"


def _format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def _tag_example(keys: list[bytes]) -> str:
    """A hash-tagged version of the keys: their common prefix (to the last ``:``) as the tag."""
    prefix = _common_prefix(keys)
    cut = prefix.rfind(b":")
    if cut > 0:
        tag = prefix[:cut]
        tagged = [b"{" + tag + b"}" + k[len(tag) :] for k in keys]
    else:
        tag = hash_tag(keys[0]) if keys else b"tag"
        tagged = [b"{" + tag + b"}" + k for k in keys]
    return join_args(tagged[:4]) + (" ..." if len(tagged) > 4 else "")


_GENERIC_HELP = """redis-client cli, a redis-cli compatible shell
To get help about Redis commands type:
      "help @<group>" to get a list of commands in <group>
      "help <command>" for help on <command>
      "help <tab>" to get a list of possible help topics
      "quit" to exit
Shell commands (":help" lists them): :topology, :slot KEY, :cluster dbsize|keys|scan
"""

_HELPER_HELP = """shell commands:
  :topology                          nodes, roles and slot ranges
  :slot KEY [KEY ...]                each key's slot, hash tag and owning master
  :cluster dbsize                    DBSIZE of every master, and the total
  :cluster keys PATTERN              KEYS PATTERN on every master, counted per node
  :cluster scan [MATCH P] [COUNT N] [TYPE T]   a full SCAN of every master, counted per node
"""


# ------------------------------------------------------------------------------------- modes


async def _one_shot(cfg: Settings, words: list[bytes]) -> int:
    async with open_session(cfg) as session:
        shell = Shell(cfg, session)
        await shell.run_args(words, cfg.repeat)
    return 0


async def _piped(cfg: Settings) -> int:
    async with open_session(cfg) as session:
        shell = Shell(cfg, session)
        try:
            await session.connection()  # as redis-cli: connect first, retry for each command
        except RedisConnectionError as exc:
            shell.failed = True
            _err(f"Could not connect: {exc}")
        async for line in _stdin_lines():
            if line is None:
                _out(b"Invalid argument(s)\n")
                _err(f"hint: the line is longer than {MAX_LINE} bytes; it was skipped")
                continue
            if not await shell.run_line(line):
                break
    return 1 if shell.failed else 0


async def _stdin_lines() -> AsyncIterator[bytes | None]:
    """Lines of stdin (bytes, without the newline); None for a line over MAX_LINE, skipped."""
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await trio.to_thread.run_sync(os.read, 0, 1 << 16)
        if not chunk:
            if buffer and not skipping:
                yield bytes(buffer) if len(buffer) <= MAX_LINE else None
            return
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if skipping:
                skipping = False
                continue
            yield line if len(line) <= MAX_LINE else None
        if len(buffer) > MAX_LINE:
            if not skipping:
                yield None
            skipping = True
            buffer.clear()


async def _repl(cfg: Settings) -> int:
    saved = termios.tcgetattr(0)
    try:
        return await _repl_loop(cfg)
    finally:  # an abandoned editor thread (SIGTERM, kill -INT) must not leave raw mode behind
        termios.tcsetattr(0, termios.TCSANOW, saved)


async def _repl_loop(cfg: Settings) -> int:
    history = History(_history_path())
    async with open_session(cfg) as session:
        shell = Shell(cfg, session)
        try:
            await session.connection()
            await shell.load_docs()
        except RedisConnectionError as exc:
            _err(f"Could not connect: {exc}")
        editor = TerminalEditor(0, history, shell)
        shell.editor = editor
        while True:
            line = await trio.to_thread.run_sync(
                editor.read_line, session.prompt, True, abandon_on_cancel=True
            )
            if line is None:
                return 0
            if not line.strip():
                continue
            history.add(line)
            with _ctrl_c_cancels() as scope:
                keep_going = await shell.run_line(line.encode("utf-8", "surrogateescape"))
            if scope.cancelled_caught:
                session.drop_all()
                _err("(interrupted)")
            elif not keep_going:
                return 0


@contextlib.contextmanager
def _ctrl_c_cancels() -> Iterator[trio.CancelScope]:
    """A cancel scope that SIGINT (Ctrl-C while a command runs) cancels, instead of exiting."""
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:

        def handler(signum: int, frame: FrameType | None) -> None:
            token.run_sync_soon(scope.cancel)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield scope
        finally:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------- terminal


def _history_path() -> Path | None:
    configured = os.environ.get(HISTORY_ENV)
    if configured is not None:
        return Path(configured) if configured and configured != "/dev/null" else None
    try:
        return Path.home() / ".redis-client_history"
    except RuntimeError:  # no home directory
        return None


class History:
    """Typed lines, oldest first, saved after each line to a 0600 file; secrets are skipped."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines: list[str] = []
        if path is not None:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                text = data.decode("utf-8", "surrogateescape")
                self.lines = [ln for ln in text.split("\n") if ln][-HISTORY_LENGTH:]

    def add(self, line: str) -> None:
        if is_secret_line(line) or (self.lines and self.lines[-1] == line):
            return
        self.lines = [*self.lines, line][-HISTORY_LENGTH:]
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # also tighten a file created before, or by others
                data = "".join(ln + "\n" for ln in self.lines)
                os.write(fd, data.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        except OSError as exc:
            _err(f"cannot save history to {self.path}: {exc.strerror}")
            self.path = None


class TerminalEditor:
    """Reads a line from the terminal in raw mode: editing keys, history, Tab, hints.

    Blocking and synchronous: the REPL calls :meth:`read_line` in a worker thread. The
    terminal is in raw mode only while a line is read, so Ctrl-C during a command is SIGINT.
    """

    def __init__(self, fd: int, history: History, shell: Shell) -> None:
        self.fd = fd
        self.history = history
        self.shell = shell

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.fd).columns or 80
        except OSError:
            return 80

    def read_line(self, prompt: str, with_history: bool = True) -> str | None:
        """The next line, or None on Ctrl-D (on an empty line) or end of input."""
        saved = termios.tcgetattr(self.fd)
        raw = termios.tcgetattr(self.fd)
        raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        raw[1] &= ~termios.OPOST
        raw[2] |= termios.CS8
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, raw)  # TCSANOW keeps typed-ahead keys
        try:
            return self._edit(prompt, with_history)
        finally:
            termios.tcsetattr(self.fd, termios.TCSANOW, saved)

    def _write(self, text: str) -> None:
        os.write(1, text.encode("utf-8", "surrogateescape"))

    def _edit(self, prompt: str, with_history: bool) -> str | None:
        buf = LineBuffer(self.history.lines if with_history else ())
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        docs = self.shell.docs or _bundled_docs()
        pending = ""
        tabbed = False

        def refresh(hint: bool = True) -> None:
            shown = command_hint(buf.text, docs) if hint and with_history and buf.text else None
            self._write(buf.render(prompt, shown, self._columns()))

        refresh()
        while True:
            data = os.read(self.fd, 1024)
            if not data:
                return None
            keys, pending = decode_keys(pending + decoder.decode(data))
            for key in keys:
                if key == "enter":
                    refresh(hint=False)
                    self._write("\r\n")
                    return buf.text
                if key == "interrupt":
                    self._write("^C\r\n")
                    if not with_history:  # a question: Ctrl-C answers no
                        return None
                    buf = LineBuffer(self.history.lines)
                elif key == "eof" and not buf.text:
                    self._write("\r\n")
                    return None
                elif key == "eof":
                    buf.apply("delete")
                elif key == "clear-screen":
                    self._write("\x1b[H\x1b[2J")
                elif key == "tab" and with_history:
                    self._complete(buf, docs, tabbed)
                    tabbed = True
                    refresh()
                    continue
                else:
                    buf.apply(key)
                tabbed = False
                refresh()

    def _complete(self, buf: LineBuffer, docs: dict[str, CommandDoc], listed: bool) -> None:
        options = completions(buf.text, docs, _HELPERS)
        if not options:
            self._write("\x07")
            return
        common = _common_prefix([o.lower() for o in options])
        if len(options) == 1 or len(common) > len(buf.text):
            buf.set(options[0] if len(options) == 1 else options[0][: len(common)])
        elif listed:
            self._write("\r\n" + "  ".join(options) + "\r\n")


MODE = Mode(
    name="cli",
    summary="redis-cli compatible shell, cluster and TLS aware",
    configure=configure,
    run=run,
)
