"""The ``cli`` mode: a redis-cli compatible shell that also understands clusters.

``redis-client cli [-h HOST] [-p PORT] [-t] [-c] [-u USER] [-a PASS] [TLS flags] [-3]
[--raw | --no-raw] [--show-pushes yes|no] [--read-from master|replica|prefer-replica]
[-r N] [-i SECONDS] [COMMAND [ARG ...]]``

Three ways to run, chosen as redis-cli chooses: **one-shot** (a command on the command line
runs ``-r N`` times, ``-i S`` apart; exit 0 even after an error reply, 1 when the server cannot
be reached or the connection breaks), **piped** (stdin is not a terminal: one command a line; bad
lines give ``Invalid argument(s)`` and the run goes on; exit 1 if a command met a connection
error) and the **REPL** (:mod:`client.lineedit`: history, completion, hints; ``help COMMAND``;
confirmation before FLUSHALL, FLUSHDB, SHUTDOWN, and KEYS on more than 100 000 keys). Output is
typed on a terminal (or ``--no-raw``), raw otherwise (or ``--raw``), both byte-identical to
redis-cli (:mod:`client.cliformat`).

RESP3 pushes that arrive between replies (client-side caching ``invalidate`` after ``CLIENT
TRACKING ON``) are printed as redis-cli 7 prints them: before the reply of the next command (the
REPL also prints them before its next prompt), ``-> invalidate: 'k'`` in typed mode, as a reply
otherwise; shown when stdout is a terminal or with ``--show-pushes yes`` (as redis-cli).

With ``-c`` the shell talks to one node at a time, as redis-cli does: MOVED and ASK are
followed and announced with ``-> Redirected to slot [N] located at host:port`` (REPL and piped
use), SSUBSCRIBE included, and the prompt shows the node that answered last. A CROSSSLOT error
gets a hint with each key's slot and owner. Shell commands (``:topology``, ``:slot``,
``:cluster dbsize|keys|scan``) are listed by ``:help``.

The connections (one per node, MOVED/ASK, replica reads with ``-c --read-from
replica|prefer-replica``, read-your-writes) live in :mod:`client.clisession`.

Credentials: ``-a``/``REDIS_CLIENT_PASSWORD``, or a rotating ``--password-command CMD`` /
``--entra`` (:func:`client.credentials.add_credential_arguments`). Every connection logs in with
the current credential and a long session re-AUTHs its live connections in place when it
changes (:mod:`client.clisession` has the details). A password command that fails before the
first login is one redacted line and exit 1 in every mode; a failed refresh later keeps the
current credential. Secrets are redacted from every message, and the REPL history never stores
a line that logs in (AUTH, HELLO ... AUTH...) or holds a secret the session logged in with.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import trio

from client.cliformat import (
    HELPER_HELP,
    SHELL_EPILOG,
    ArgumentError,
    CommandDoc,
    bundled_docs,
    crossslot_hint,
    format_help,
    format_push,
    format_ranges,
    format_reply,
    format_slot,
    format_topology,
    parse_command_docs,
    split_line,
    wants_raw_output,
)
from client.clisession import MAX_REDIRECTS, Affinity, LiveStream, Session, Settings, open_session
from client.credentials import CredentialProvider, add_credential_arguments, provider_from_args
from client.errors import (
    ConfigError,
    ConnectError,
    RedisConnectionError,
    RedisToolkitError,
    RespProtocolError,
)
from client.lineedit import History, TerminalEditor, history_path, run_repl, stdin_lines
from client.main import Mode
from client.options import ServerOptions, add_server_arguments, server_options
from client.replicas import READ_FROM_CHOICES, parse_read_from
from client.resp import NEED_DATA, RespParser, encode_command
from client.slots import key_slot
from client.values import ErrorReply, RespMap, RespValue

__all__ = ["MODE", "Affinity", "configure", "run"]

MAX_LINE = 64 * 1024 * 1024  # longest stdin line accepted (redis-cli has no bound)
KEYS_CONFIRM_THRESHOLD = 100_000
_SLOW = 0.5  # redis-cli prints "(1.23s)" after commands this slow (typed mode, not one-shot)
_STREAMING = frozenset({b"subscribe", b"psubscribe", b"ssubscribe", b"monitor"})
_DANGEROUS = frozenset({b"flushall", b"flushdb", b"shutdown"})
_TRANSACTION = frozenset({b"multi", b"exec", b"discard", b"watch", b"unwatch"})
_HELPERS = (":topology", ":slot", ":cluster", ":help")
_RELOGIN = "relogin"  # a stream closed after a credential change: log in again


# -------------------------------------------------------------------------------------- flags


def configure(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    add_credential_arguments(parser)
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
        "--show-pushes",
        dest="show_pushes",
        type=str.lower,
        choices=("yes", "no"),
        help="print RESP3 pushes (default: when stdout is a terminal, as redis-cli)",
    )
    group.add_argument(
        "--read-from",
        dest="read_from",
        default="master",
        metavar="|".join(READ_FROM_CHOICES),
        help="with -c: where read-only commands go (default master)",
    )
    group.add_argument(
        "-r", dest="repeat", type=int, default=1, metavar="N", help="run the command N times"
    )
    group.add_argument(
        "-i", dest="interval", type=float, default=0.0, metavar="SECONDS", help="wait between -r"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SHELL_EPILOG
    # "-3" looks like a negative number, which would make argparse read "-r -1" as two flags.
    parser._has_negative_number_optionals.clear()


def run(ns: argparse.Namespace) -> int:
    opts = server_options(ns)
    credentials = provider_from_args(ns, opts)
    if ns.interval < 0:
        raise ConfigError(f"invalid -i {ns.interval:g}: the interval cannot be negative")
    read_from = parse_read_from(ns.read_from)
    if read_from != "master" and not opts.cluster:
        raise ConfigError(
            f"--read-from {read_from} needs cluster mode",
            hint="add -c; a standalone server has no replicas to choose from",
        )
    raw = ns.raw if ns.raw is not None else not sys.stdout.isatty()
    show_pushes = sys.stdout.isatty() if ns.show_pushes is None else ns.show_pushes == "yes"
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
        show_pushes=show_pushes,
        read_from=read_from,
    )
    if one_shot:
        return trio.run(_one_shot, cfg, credentials, words)
    if interactive:
        return trio.run(_repl, cfg, credentials)
    return trio.run(_piped, cfg, credentials)


# ------------------------------------------------------------------------------------ output


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


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

    def show_pushes(self) -> None:
        """Print (or, without --show-pushes, drop) the pushes that came since the last reply."""
        for push in self.session.drain_pushes():
            if self.cfg.show_pushes:
                _out(format_push(push, raw=self.cfg.raw))

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
                self.show_pushes()  # those that came before this command's reply
                if name in _STREAMING:
                    await self.stream(args)
                    return
                with self.session.in_command():  # a rotation waits: see client.clisession
                    reply = await self.execute(args)
                    _out(format_reply(reply, raw=self.cfg.raw, verbatim=wants_raw_output(args)))
                    await self.after(args, reply)
                await self.session.settle()
                if self.cfg.interval:
                    await trio.sleep(self.cfg.interval)
        except RedisToolkitError as exc:
            self.report(exc)

    async def execute(self, args: list[bytes]) -> RespValue:
        """Run one command where it belongs: a replica for reads (see the module docs), else
        the node in use. A read's node is announced before its reply."""
        session = self.session
        spec = session.keyed_read(args) if self.cfg.read_from != "master" else None
        if spec is None:
            return await session.send(args, self.note)
        why = session.affinity.master_reason() or ("blocking command" if spec.blocking else None)
        if why is None:
            reply, answered = await session.read_routed(args)
        else:
            reply = await session.send(args, self.note)
            if session.affinity.in_multi:
                return reply  # queued on the master; EXEC answers
            answered = f"master {session.current.address} ({why})"
        self.read_note(f"-> Read from {answered}")
        return reply

    def read_note(self, text: str) -> None:
        """Which node answered a read: stdout in the REPL and piped use, else stderr."""
        if self.cfg.chatty:
            _out(text.encode() + b"\n")
        else:
            _err(text)

    def report(self, exc: RedisToolkitError) -> None:
        """A failed command: raise in one-shot mode (main prints it, exit 1), else print it."""
        error: RedisToolkitError = self.session.redacted(exc)
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
        """Track SELECT/MULTI/writes for the prompt and the reads; explain CROSSSLOT errors."""
        name, ok = args[0].lower(), not isinstance(reply, ErrorReply)
        session = self.session
        if name == b"select" and len(args) == 2 and ok and args[1].isdigit():
            session.db = int(args[1])
        spec = None if name in _TRANSACTION else session.commands.lookup(args)
        has_keys = spec is not None and not spec.readonly and session.has_keys(args)
        session.affinity.record(name, spec, has_keys, ok)
        if isinstance(reply, ErrorReply) and reply.kind == "CROSSSLOT":
            with contextlib.suppress(RedisToolkitError, ValueError):
                await self.crossslot_hint(args)  # a hint is a bonus: never fail over it

    async def crossslot_hint(self, args: list[bytes]) -> None:
        keys = await self.session.request([b"COMMAND", b"GETKEYS", *args])
        if not isinstance(keys, list) or not all(isinstance(k, bytes) for k in keys):
            return
        key_list = [k for k in keys if isinstance(k, bytes)]
        _err(crossslot_hint(key_list, await self.session.topology()))

    async def stream(self, args: list[bytes]) -> None:
        """SUBSCRIBE / SSUBSCRIBE / MONITOR: print every reply until Ctrl-C or disconnection.

        In cluster mode a MOVED or ASK (SSUBSCRIBE to a channel of another shard) is followed
        as redis-cli 7 does: the redirect note, then the command again on the node named. A
        stream the server closes after the credential rotated logs in again (client.clisession).
        """
        asking, announce, hops = False, True, 0
        while hops < MAX_REDIRECTS:
            target = self.session.current
            outcome = await self._stream_from(target, args, asking, announce)
            if outcome is None:
                return
            if outcome == _RELOGIN:
                _err(f"-> {target.address} closed the stream after a credential change: again")
                announce = False
                continue
            assert not isinstance(outcome, str)
            asking, announce, hops = self.session.follow(outcome, self.note), True, hops + 1

    async def _stream_from(
        self, target: ServerOptions, args: list[bytes], asking: bool, announce: bool
    ) -> tuple[str, int, str, int] | str | None:
        """Stream from one node; the redirect when it answers MOVED/ASK, ``_RELOGIN`` when it
        closed the stream after a rotation, else None at the end.

        An error reply ends the stream, as it ends redis-cli's pub/sub mode.
        """
        monitor = args[0].lower() == b"monitor"
        async with self.session.open_stream(target, monitor=monitor) as live:
            try:
                return await self._relay(live, args, asking, announce and not monitor)
            except (trio.BrokenResourceError, RespProtocolError) as exc:
                if live.rotated:
                    return _RELOGIN
                raise ConnectError(f"connection to {target.address} lost: {exc}") from exc

    async def _relay(
        self, live: LiveStream, args: list[bytes], asking: bool, announce: bool
    ) -> tuple[str, int, str, int] | str | None:
        command = encode_command(*args)
        await live.stream.send_all(encode_command(b"ASKING") + command if asking else command)
        if announce and not self.cfg.raw:
            _out(b"Reading messages... (press Ctrl-C to quit)\n")
        parser = RespParser()
        skip = 1 if asking else 0  # ASKING's +OK
        while True:
            value = parser.next_value()
            if value is NEED_DATA:
                data = await live.stream.receive_some(65536)
                if not data:
                    parser.feed_eof()
                    parser.next_value()
                    if live.rotated:
                        return _RELOGIN
                    _err(f"Error: {live.address} closed the connection")
                    return None
                parser.feed(data)
                continue
            if skip:
                skip -= 1
                continue
            if live.take_ack(value, self.session.redact):
                continue
            redirect = self.session.redirect_of(value)
            if redirect is not None:
                return redirect
            _out(format_reply(value, raw=self.cfg.raw))
            if isinstance(value, ErrorReply):
                return None
            await live.arm()

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
                return bundled_docs()  # not cached: the server may come back
            self.docs = docs or bundled_docs()  # Redis < 7 has no COMMAND DOCS
        return self.docs

    async def help(self, topic: list[bytes]) -> None:
        docs = await self.load_docs()
        _out(format_help(topic, docs, color=sys.stdout.isatty()).encode())

    # -- helpers -----------------------------------------------------------------------------

    async def helper(self, args: list[bytes]) -> None:
        name = args[0].lower().decode("utf-8", "replace")
        sub = args[1].lower() if len(args) > 1 else b""
        try:
            if name == ":slot" and len(args) > 1:
                topology = await self.session.topology()
                for key in args[1:]:
                    owner = topology.slot_owner(key_slot(key)) if topology else None
                    _out(format_slot(key, owner).encode() + b"\n")
            elif name == ":topology":
                topology = await self.session.topology()
                where = self.session.current.address
                _out(format_topology(topology, where).encode())
            elif name == ":cluster" and sub == b"dbsize":
                await self.cluster_dbsize()
            elif name == ":cluster" and sub in (b"keys", b"scan"):
                await self.cluster_keys(sub, args[2:])
            else:
                _out(HELPER_HELP.encode())
        except RedisToolkitError as exc:
            self.report(exc)

    async def masters(self) -> list[tuple[str, ServerOptions]]:
        """(label, options) of every master, or of the one server when not a cluster."""
        session = self.session
        topology = await session.topology()
        if topology is None:
            return [(session.current.address, session.current)]
        return [
            (
                f"{m.address} (slots {format_ranges(topology.ranges(m)) or 'none'})",
                session.current.at(m.host or session.current.host, m.port),
            )
            for m in topology.masters()
        ]

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


def _as_list(value: RespValue) -> list[RespValue]:
    if isinstance(value, list) and not isinstance(value, RespMap):
        return list(value)
    return []


def _reply_text(value: RespValue) -> str:
    return format_reply(value, raw=True).decode("utf-8", "replace").strip()


# ------------------------------------------------------------------------------------- modes


class _History(History):
    """The REPL history, which also drops any line holding a secret the session logged in
    with (a token pasted into ECHO, or into an AUTH that would not split)."""

    def __init__(self, path: Path | None, secrets: Callable[[], list[str]]) -> None:
        super().__init__(path)
        self._secrets = secrets

    def add(self, line: str) -> None:
        if not any(secret in line for secret in self._secrets()):
            super().add(line)


async def _one_shot(cfg: Settings, credentials: CredentialProvider, words: list[bytes]) -> int:
    async with open_session(cfg, credentials) as session:
        shell = Shell(cfg, session)
        await shell.run_args(words, cfg.repeat)
    return 0


async def _piped(cfg: Settings, credentials: CredentialProvider) -> int:
    async with open_session(cfg, credentials) as session:
        shell = Shell(cfg, session)
        try:
            await session.connection()  # as redis-cli: connect first, retry for each command
        except RedisConnectionError as exc:
            shell.failed = True
            _err(f"Could not connect: {session.redact(str(exc))}")
        async for line in stdin_lines(MAX_LINE):
            if line is None:
                _out(b"Invalid argument(s)\n")
                _err(f"hint: the line is longer than {MAX_LINE} bytes; it was skipped")
                continue
            if not await shell.run_line(line):
                break
    return 1 if shell.failed else 0


async def _repl(cfg: Settings, credentials: CredentialProvider) -> int:
    for handler in logging.getLogger().handlers:  # log lines (a failed credential refresh)
        if isinstance(handler, logging.StreamHandler):  # may come while the terminal is raw
            handler.terminator = "\r\n"
    async with open_session(cfg, credentials) as session:
        history = _History(history_path(), session.secrets)
        shell = Shell(cfg, session)
        try:
            await session.connection()
            await shell.load_docs()
        except RedisConnectionError as exc:
            _err(f"Could not connect: {session.redact(str(exc))}")
        shell.editor = TerminalEditor(0, history, lambda: shell.docs or bundled_docs(), _HELPERS)

        def interrupted() -> None:
            session.drop_all()
            _err("(interrupted)")

        return await run_repl(
            shell.editor,
            prompt=lambda: session.prompt,
            run_line=shell.run_line,
            before_prompt=shell.show_pushes,  # those that came with the last reply
            interrupted=interrupted,
        )


MODE = Mode(
    name="cli",
    summary="redis-cli compatible shell, cluster and TLS aware",
    configure=configure,
    run=run,
)
