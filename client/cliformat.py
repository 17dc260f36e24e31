"""What redis-cli does to text: split a typed line into arguments, quote them back, print replies.

Pure (no I/O). Every rule here copies redis-cli 7.0 byte for byte, because people feed our
output to the same scripts and greps they feed redis-cli's; ``tests/e2e/test_cli_diff.py`` and
``tests/property/test_cli_props.py`` check it against the real binary.

Theory of operation
-------------------
*Splitting* is sds.c ``sdssplitargs``. Outside quotes a token ends at space, tab, CR or LF
(not at ``\\v``/``\\f``, although those are skipped *between* tokens). A double quote starts a
C-like string with ``\\n \\r \\t \\b \\a``, ``\\xHH`` and "backslash + any byte = that byte";
a single quote starts a literal string where only ``\\'`` is special. A quote may open in the
middle of a token (``a"b c"`` is one argument ``ab c``), but a closing quote must be followed by
whitespace or the end of the line. The C code works on a NUL-terminated string, so a NUL byte
ends the line; we refuse such lines instead of silently cutting them (the only deviation).

*Typed output* (a TTY, or ``--no-raw``) is ``cliFormatReplyTTY``: bulk strings go through
``sdscatrepr`` (quoted, C escapes, ``\\xHH`` for every byte outside 0x20-0x7e), status and error
replies are printed bare (and, being C strings there, stop at a NUL byte), aggregates are
numbered ``1)`` / ``1#`` (map) / ``1~`` (set), numbers right-aligned to the widest index, nested
aggregates indented by the width of their parent's numbers plus two.

*Raw output* (``--raw``, or stdout not a TTY) is ``cliFormatReplyRaw`` plus one ``\\n`` per reply:
values bare, aggregate members joined by ``\\n``, map pairs as ``key value``, nil as nothing,
errors followed by their own ``\\n``.

RESP3 types redis-cli 7.0 cannot print (it exits with "Unknown reply type" on a big number and
"Protocol error" on an attribute or blob error) get the rendering later redis-cli versions use:
``(big number) N``, attributes dropped around the value they annotate, blob errors as errors.

*Pushes* between replies (:func:`format_push`) are ``cliPushHandler``'s: a client-tracking
invalidation as ``-> invalidate: 'k1', 'k2'`` in typed mode, anything else as a reply.

Also here, pure text the shell shows: ``help`` (from COMMAND DOCS, or the bundled snapshot),
the shell's own help texts, and the cluster views (``:topology``, ``:slot``, CROSSSLOT hints).
The line editor (hints, completion, history) is :mod:`client.lineedit`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TypeVar, cast

from client.commands import Argument, CommandTable
from client.slots import hash_tag, key_slot
from client.topology import Node, Topology
from client.values import (
    Attributed,
    BigNumber,
    Double,
    ErrorReply,
    Push,
    RespMap,
    RespSet,
    RespValue,
    SimpleString,
    Verbatim,
)

__all__ = [
    "GENERIC_HELP",
    "HELPER_HELP",
    "SHELL_EPILOG",
    "ArgumentError",
    "CommandDoc",
    "bundled_docs",
    "common_prefix",
    "crossslot_hint",
    "format_command_help",
    "format_help",
    "format_invalidate",
    "format_push",
    "format_ranges",
    "format_reply",
    "format_slot",
    "format_topology",
    "join_args",
    "parse_command_docs",
    "quote",
    "repr_bytes",
    "split_line",
    "synopsis",
    "wants_raw_output",
]


class ArgumentError(ValueError):
    """A line redis-cli would refuse with ``Invalid argument(s)`` (unbalanced quotes...)."""


# --------------------------------------------------------------------------------------------
# Splitting (sdssplitargs)
# --------------------------------------------------------------------------------------------

# C isspace() in the C locale: what is skipped between tokens and may follow a closing quote.
_ISSPACE = frozenset(b" \t\n\v\f\r")
# What ends an unquoted token (sdssplitargs' switch: not \v and \f).
_TOKEN_END = frozenset(b" \n\r\t")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
# Runs of bytes with no special meaning: bare, inside "double" and inside 'single' quotes.
_RUNS = (
    re.compile(rb"[^ \n\r\t\"']+"),
    re.compile(rb'[^\\"]+'),
    re.compile(rb"[^\\']+"),
)


def split_line(line: bytes) -> list[bytes]:
    """Split a typed line into arguments exactly as redis-cli (``sdssplitargs``) does.

    Args:
        line: the raw line; a trailing newline is fine (it is whitespace).

    Returns:
        The arguments; an empty list for a blank line.

    Raises:
        ArgumentError: unbalanced quotes, a closing quote followed by something other than
            whitespace, or a NUL byte (which redis-cli would silently treat as the line's end).
    """
    if 0 in line:
        msg = "NUL byte in line"
        raise ArgumentError(msg)
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _ISSPACE:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        state = 0  # 0 bare, 1 in "double quotes", 2 in 'single quotes'
        while True:
            # Runs of ordinary bytes are copied in one step (a 100 MB value stays fast).
            run = _RUNS[state].match(line, i)
            if run is not None:
                current += run.group()
                i = run.end()
                continue
            c = line[i] if i < n else 0
            if state == 1:
                if (
                    c == 0x5C
                    and i + 3 < n
                    and line[i + 1] == 0x78
                    and line[i + 2] in _HEX
                    and (line[i + 3] in _HEX)
                ):
                    current.append(int(line[i + 2 : i + 4], 16))  # \xHH
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:  # closing "
                    _check_closing(line, i)
                    i += 1
                    break
                elif i >= n:
                    msg = "unbalanced double quotes"
                    raise ArgumentError(msg)
                else:  # a backslash ending the line: C appends it, then fails on the NUL
                    current.append(c)
            elif state == 2:
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:  # closing '
                    _check_closing(line, i)
                    i += 1
                    break
                elif i >= n:
                    msg = "unbalanced single quotes"
                    raise ArgumentError(msg)
                else:
                    current.append(c)
            elif i >= n or c in _TOKEN_END:
                i += 1
                break
            elif c == 0x22:
                state = 1
            else:  # c == 0x27
                state = 2
            i += 1
        args.append(bytes(current))


def _check_closing(line: bytes, i: int) -> None:
    if i + 1 < len(line) and line[i + 1] not in _ISSPACE:
        msg = "closing quote must be followed by a space"
        raise ArgumentError(msg)


# --------------------------------------------------------------------------------------------
# Quoting (sdscatrepr)
# --------------------------------------------------------------------------------------------


def _repr_table() -> list[bytes]:
    table = []
    for b in range(256):
        if b in (0x5C, 0x22):
            table.append(b"\\" + bytes([b]))
        elif b == 10:
            table.append(b"\\n")
        elif b == 13:
            table.append(b"\\r")
        elif b == 9:
            table.append(b"\\t")
        elif b == 7:
            table.append(b"\\a")
        elif b == 8:
            table.append(b"\\b")
        elif 0x20 <= b <= 0x7E:  # isprint() in the C locale
            table.append(bytes([b]))
        else:
            table.append(b"\\x%02x" % b)
    return table


_REPR = _repr_table()
# Printable ASCII that needs no quoting: no space, no quote characters.
_BARE = re.compile(rb"[\x21\x23-\x26\x28-\x7e]+")


def repr_bytes(data: bytes) -> bytes:
    """``sdscatrepr``: the double-quoted, escaped form redis-cli prints for a bulk string."""
    return b'"' + b"".join([_REPR[b] for b in data]) + b'"'


def quote(arg: bytes) -> str:
    """Write one argument so that :func:`split_line` gives it back unchanged.

    Plain words stay bare (``GET``, ``user:1``); anything else is written the way redis-cli
    prints strings (``"a b"``, ``"\\xff"``), which is pure ASCII.
    """
    if _BARE.fullmatch(arg):
        return arg.decode("ascii")
    return repr_bytes(arg).decode("ascii")


def join_args(args: Sequence[bytes]) -> str:
    """A line that :func:`split_line` splits back into ``args``."""
    return " ".join(quote(a) for a in args)


# --------------------------------------------------------------------------------------------
# Reply formatting (cliFormatReplyTTY / cliFormatReplyRaw)
# --------------------------------------------------------------------------------------------

_Pairs = list[tuple[RespValue, RespValue]]


def _c_string(data: bytes) -> bytes:
    """What C's ``%s`` prints of a hiredis ``str``: up to the first NUL byte."""
    nul = data.find(b"\x00")
    return data if nul < 0 else data[:nul]


def _is_multiline(value: RespValue) -> bool:
    """``cliIsMultilineValueTTY``: would the typed rendering of ``value`` span several lines?"""
    if isinstance(value, Attributed):
        return _is_multiline(value.value)
    if isinstance(value, RespMap):
        if not value:
            return False
        return len(value) > 1 or _is_multiline(value[0][1])
    if isinstance(value, list):
        items = cast("list[RespValue]", value)  # mypy cannot narrow RespMap away
        if not items:
            return False
        return len(items) > 1 or _is_multiline(items[0])
    return False


def _tty(value: RespValue, prefix: bytes, out: list[bytes]) -> None:
    """Append the typed rendering of ``value`` (always ending in ``\\n``) to ``out``."""
    # Order matters: SimpleString is a bytes, bool and BigNumber are ints.
    if isinstance(value, SimpleString):
        out += (_c_string(value), b"\n")
    elif isinstance(value, bytes):
        out += (repr_bytes(value), b"\n")
    elif value is None:
        out.append(b"(nil)\n")
    elif isinstance(value, bool):
        out.append(b"(true)\n" if value else b"(false)\n")
    elif isinstance(value, BigNumber):
        out.append(b"(big number) %d\n" % value)
    elif isinstance(value, int):
        out.append(b"(integer) %d\n" % value)
    elif isinstance(value, ErrorReply):
        out += (b"(error) ", _c_string(value.message), b"\n")
    elif isinstance(value, Double):
        out += (b"(double) ", _c_string(value.raw), b"\n")
    elif isinstance(value, Verbatim):
        out += (value.text, b"\n")
    elif isinstance(value, Attributed):
        _tty(value.value, prefix, out)
    elif isinstance(value, RespMap):
        _tty_map(value, prefix, out)
    else:
        _tty_list(value, prefix, out)


def _index_width(count: int) -> int:
    return len(str(count))


def _tty_list(items: list[RespValue], prefix: bytes, out: list[bytes]) -> None:
    if not items:
        if isinstance(items, RespSet):
            out.append(b"(empty set)\n")
        elif isinstance(items, Push):
            out.append(b"(empty push)\n")
        else:
            out.append(b"(empty array)\n")
        return
    sep = b"~" if isinstance(items, RespSet) else b")"
    width = _index_width(len(items))
    inner = prefix + b" " * (width + 2)
    for i, item in enumerate(items):
        # The parent already wrote the first line's prefix (its own index).
        out += (b"" if i == 0 else prefix, b"%*d" % (width, i + 1), sep, b" ")
        _tty(item, inner, out)


def _tty_map(pairs: _Pairs, prefix: bytes, out: list[bytes]) -> None:
    if not pairs:
        out.append(b"(empty hash)\n")
        return
    width = _index_width(len(pairs))
    inner = prefix + b" " * (width + 2)
    for i, (key, val) in enumerate(pairs):
        out += (b"" if i == 0 else prefix, b"%*d# " % (width, i + 1))
        _tty(key, inner, out)
        # redis-cli drops the key's newline (sdsrange(out, 0, -2)) and goes on with " => ".
        out[-1] = out[-1][:-1]
        out.append(b" => ")
        if _is_multiline(val):
            out += (b"\n", inner)  # start a multi-line value on its own line, aligned
        _tty(val, inner, out)


def _raw(value: RespValue, out: list[bytes]) -> None:
    """Append the raw rendering of ``value`` (no trailing delimiter) to ``out``."""
    if isinstance(value, bytes):  # bulk and status alike
        out.append(value)
    elif value is None:
        pass
    elif isinstance(value, bool):
        out.append(b"(true)" if value else b"(false)")
    elif isinstance(value, int):  # BigNumber included: its digits
        out.append(b"%d" % value)
    elif isinstance(value, ErrorReply):
        out += (value.message, b"\n")
    elif isinstance(value, Double):
        out.append(_c_string(value.raw))
    elif isinstance(value, Verbatim):
        out.append(value.text)
    elif isinstance(value, Attributed):
        _raw(value.value, out)
    elif isinstance(value, RespMap):
        for i, (key, val) in enumerate(value):
            if i:
                out.append(b"\n")
            _raw(key, out)
            out.append(b" ")
            _raw(val, out)
    else:
        for i, item in enumerate(value):
            if i:
                out.append(b"\n")
            _raw(item, out)


def format_reply(value: RespValue, *, raw: bool, verbatim: bool = False) -> bytes:
    """Render one reply exactly as redis-cli prints it.

    Args:
        value: the reply.
        raw: raw mode (``--raw``, or stdout not a TTY) instead of typed mode.
        verbatim: the command's reply is text meant to be shown as is (INFO, CLIENT LIST...,
            see :func:`wants_raw_output`): raw rendering without the trailing newline, in
            both modes, as redis-cli does.

    Returns:
        The bytes to write to stdout; never raises, whatever the value.
    """
    out: list[bytes] = []
    if verbatim:
        _raw(value, out)
    elif raw:
        _raw(value, out)
        out.append(b"\n")
    else:
        _tty(value, b"", out)
    return b"".join(out)


def format_invalidate(push: Push) -> bytes | None:
    """The typed-mode line for a client-tracking invalidation push, or None if not one.

    redis-cli prints ``-> invalidate: 'k1', 'k2'`` (its keys through C ``%s``).
    """
    if (
        len(push) == 2
        and isinstance(push[0], bytes)
        and not isinstance(push[0], SimpleString)
        and push[0].startswith(b"invalidate")
        and isinstance(push[1], list)
        and not isinstance(push[1], (RespMap, RespSet, Push))
        and all(isinstance(k, bytes) for k in push[1])
    ):
        keys = [b"'" + _c_string(k) + b"'" for k in push[1] if isinstance(k, bytes)]
        return b"-> invalidate: " + b", ".join(keys) + b"\n"
    return None


def format_push(value: RespValue, *, raw: bool) -> bytes:
    """A push that came between replies, as redis-cli's ``cliPushHandler`` prints it.

    Typed mode shows a client-tracking invalidation as one ``-> invalidate: 'k'`` line and
    any other push as a reply; raw mode prints every push as a raw reply.
    """
    if not raw and isinstance(value, Push):
        line = format_invalidate(value)
        if line is not None:
            return line
    return format_reply(value, raw=raw)


# Commands whose reply redis-cli prints as raw text even in typed mode (cliSendCommand's list).
_RAW_ALWAYS = frozenset({b"info", b"lolwut"})
_RAW_SUBCOMMANDS: dict[bytes, frozenset[bytes]] = {
    b"debug": frozenset({b"htstats", b"htstats-key"}),
    b"memory": frozenset({b"malloc-stats", b"doctor"}),
    b"client": frozenset({b"list", b"info"}),
    b"proxy": frozenset({b"info"}),
}


def wants_raw_output(args: Sequence[bytes]) -> bool:
    """Whether redis-cli prints this command's reply verbatim (see :func:`format_reply`)."""
    if not args:
        return False
    name = args[0].lower()
    if name in _RAW_ALWAYS:
        return True
    sub = args[1].lower() if len(args) >= 2 else b""
    if name == b"cluster":
        return len(args) == 2 and sub in (b"nodes", b"info")
    if name == b"latency":
        return (len(args) == 3 and sub == b"graph") or (len(args) == 2 and sub == b"doctor")
    entry = _RAW_SUBCOMMANDS.get(name)
    return entry is not None and len(args) >= 2 and sub in entry


# --------------------------------------------------------------------------------------------
# Command help, hints and completion (from COMMAND DOCS)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandDoc:
    """What ``help`` shows for one command or subcommand.

    Attributes:
        name: upper case, with a space before a subcommand (``CLIENT LIST``).
        params: the argument synopsis, built as redis-cli 7.0 builds it (``key value [NX|XX]``).
        summary, since, group: from COMMAND DOCS.
    """

    name: str
    params: str
    summary: str
    since: str
    group: str


def _fields(value: RespValue) -> dict[str, RespValue]:
    """A RESP3 map or a RESP2 flat key/value array as a dict with text keys."""
    if isinstance(value, Attributed):
        value = value.value
    pairs: list[tuple[RespValue, RespValue]]
    if isinstance(value, RespMap):
        pairs = list(value)
    elif isinstance(value, list):
        items = cast("list[RespValue]", value)
        pairs = list(zip(items[::2], items[1::2], strict=False))
    else:
        return {}
    return {_text(k): v for k, v in pairs if isinstance(k, bytes)}


def _text(value: RespValue) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Verbatim):
        return value.text.decode("utf-8", "replace")
    return ""


def _argument(arg: RespValue) -> str:
    """One argument of a COMMAND DOCS reply as synopsis text."""
    fields = _fields(arg)
    flags_value = fields.get("flags")
    flags = (
        {_text(f) for f in cast("list[RespValue]", flags_value)}
        if isinstance(flags_value, list)
        else set()
    )
    nested_value = fields.get("arguments")
    nested = cast("list[RespValue]", nested_value) if isinstance(nested_value, list) else []
    token = fields.get("token")
    return synopsis(
        _text(fields.get("name")),
        _text(fields.get("type")),
        None if token is None else _text(token),
        flags,
        [_argument(a) for a in nested],
    )


def synopsis(
    name: str, kind: str, token: str | None, flags: AbstractSet[str], nested: Sequence[str]
) -> str:
    """``cliAddArgument``: how redis-cli 7.0 writes one argument in help and hints.

    Args:
        name, kind, token, flags: the argument's COMMAND DOCS fields.
        nested: the synopses of its own arguments (``oneof`` and ``block`` types).
    """
    if token == "":  # MIGRATE's empty-key token: redis-cli shows ""
        token = '""'
    if kind == "oneof":
        repeat = "|".join(nested)
    elif kind == "block":
        repeat = " ".join(nested)
    elif kind == "pure-token":
        repeat = ""
    else:
        repeat = name
    lead = token or ""
    if lead and kind != "pure-token":
        lead += " "
    text = lead + repeat
    if "multiple" in flags:
        text += " [" + (lead if "multiple_token" in flags else "") + repeat + " ...]"
    return f"[{text}]" if "optional" in flags else text


def parse_command_docs(reply: RespValue) -> dict[str, CommandDoc]:
    """Every command and subcommand of a ``COMMAND DOCS`` reply (RESP2 or RESP3), by name.

    Keys are upper case, subcommands as ``"CLIENT LIST"``. Malformed entries are skipped.
    """
    docs: dict[str, CommandDoc] = {}

    def add(name: str, body: RespValue) -> None:
        fields = _fields(body)
        if not fields:
            return
        upper = name.upper().replace("|", " ")
        arguments = fields.get("arguments")
        params = (
            " ".join(_argument(a) for a in cast("list[RespValue]", arguments))
            if isinstance(arguments, list)
            else ""
        )
        docs[upper] = CommandDoc(
            name=upper,
            params=params,
            summary=_text(fields.get("summary")),
            since=_text(fields.get("since")),
            group=_text(fields.get("group")),
        )
        for sub_name, sub_body in _fields(fields.get("subcommands")).items():
            add(sub_name, sub_body)

    for name, body in _fields(reply).items():
        add(name, body)
    return docs


_BOLD, _GREY, _YELLOW, _RESET = "\x1b[1m", "\x1b[90m", "\x1b[33m", "\x1b[0m"


def format_command_help(doc: CommandDoc, *, color: bool, with_group: bool = True) -> str:
    """``cliOutputCommandHelp``: the help block of one command (ends with a newline)."""
    b, g, y, r = (_BOLD, _GREY, _YELLOW, _RESET) if color else ("", "", "", "")
    lines = [
        "",
        f"  {b}{doc.name}{r} {g}{doc.params}{r}",
        f"  {y}summary:{r} {doc.summary}",
        f"  {y}since:{r} {doc.since}",
    ]
    if with_group:
        lines.append(f"  {y}group:{r} {doc.group}")
    return "\n".join(lines) + "\n"


def format_help(topic: Sequence[bytes], docs: dict[str, CommandDoc], *, color: bool) -> str:
    """What ``help`` prints: the generic text, a ``@group``, or a command and its subcommands."""
    if not topic:
        return GENERIC_HELP
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
    return text + "\n"


GENERIC_HELP = """redis-client cli, a redis-cli compatible shell
To get help about Redis commands type:
      "help @<group>" to get a list of commands in <group>
      "help <command>" for help on <command>
      "help <tab>" to get a list of possible help topics
      "quit" to exit
Shell commands (":help" lists them): :topology, :slot KEY, :cluster dbsize|keys|scan
"""

HELPER_HELP = """shell commands:
  :topology                          nodes, roles and slot ranges
  :slot KEY [KEY ...]                each key's slot, hash tag and owning master
  :cluster dbsize                    DBSIZE of every master, and the total
  :cluster keys PATTERN              KEYS PATTERN on every master, counted per node
  :cluster scan [MATCH P] [COUNT N] [TYPE T]   a full SCAN of every master, counted per node
"""

#: The end of ``redis-client cli --help``.
SHELL_EPILOG = """\
With a COMMAND: run it and exit (status 0, even after an error reply, as redis-cli).
Without one: read commands from stdin when it is not a terminal, else start a REPL
(history in ~/.redis-client_history, Tab completion, hints, help COMMAND).

--read-from replica|prefer-replica (with -c): read-only commands with keys go to a replica
of their slot's master (prefer-replica: the master when no replica is healthy); writes,
keyless commands, MULTI, and reads right after a write or WATCH stay on the master. Each
read names the node that answered: "-> Read from replica host:port".

shell commands (in every mode):
  :topology                      nodes, roles and slot ranges
  :slot KEY [KEY ...]            each key's slot, hash tag and owning master
  :cluster dbsize                DBSIZE of every master, and the total
  :cluster keys PATTERN          KEYS PATTERN on every master, counted per node
  :cluster scan [MATCH P] [COUNT N] [TYPE T]
                                 a full SCAN of every master, counted per node
"""


@functools.cache
def bundled_docs() -> dict[str, CommandDoc]:
    """Help data from the command snapshot shipped with the package (for Redis < 7, offline)."""

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


# --------------------------------------------------------------------------------------------
# Cluster views (the shell's own commands; nothing like them in redis-cli)
# --------------------------------------------------------------------------------------------

_S = TypeVar("_S", str, bytes)


def common_prefix(items: Sequence[_S]) -> _S:
    """The longest prefix every item shares (``items`` must not be empty)."""
    if not items:
        raise ValueError("no items")
    first, last = min(items), max(items)
    size = 0
    while size < len(first) and first[size : size + 1] == last[size : size + 1]:
        size += 1
    return first[:size]


def format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    """Slot ranges as ``0-5460,5462``."""
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def format_topology(topology: Topology | None, address: str) -> str:
    """``:topology``: one line per master (slots) and per replica, then unassigned slots.

    ``topology`` None: the server at ``address`` is not a cluster.
    """
    if topology is None:
        return f"not a cluster: standalone server {address}\n"
    lines = []
    for node in topology.nodes:
        health = "" if node.health == "online" else f" [{node.health}]"
        if node.is_master:
            count = sum(end - start + 1 for start, end in node.slots)
            ranges = format_ranges(topology.ranges(node)) or "none"
            lines.append(f"master  {node.id[:8]}  {node.address}{health}  slots {ranges} ({count})")
        else:
            lines.append(f"  replica {node.id[:8]}  {node.address}{health}")
    if not topology.covered():
        lines.append(f"unassigned slots: {format_ranges(topology.unassigned())}")
    return "\n".join(lines) + "\n"


def format_slot(key: bytes, owner: Node | None) -> str:
    """``:slot``: a key's slot, hash tag and owning master (one line, no newline)."""
    slot = key_slot(key)
    tag = hash_tag(key)
    line = f"{join_args([key])}: slot {slot}"
    if tag != key:
        line += f" (hash tag {join_args([tag])})"
    if owner is not None:
        line += f", master {owner.address} ({owner.id[:8]})"
    return line


def _tag_example(keys: Sequence[bytes]) -> str:
    """A hash-tagged version of the keys: their common prefix (to the last ``:``) as the tag."""
    prefix = common_prefix(keys)
    cut = prefix.rfind(b":")
    if cut > 0:
        tag = prefix[:cut]
        tagged = [b"{" + tag + b"}" + k[len(tag) :] for k in keys]
    else:
        tag = hash_tag(keys[0]) if keys else b"tag"
        tagged = [b"{" + tag + b"}" + k for k in keys]
    return join_args(tagged[:4]) + (" ..." if len(tagged) > 4 else "")


def crossslot_hint(keys: Sequence[bytes], topology: Topology | None) -> str:
    """The hint after a CROSSSLOT error: each key's slot and owner, and a hash-tag example."""
    lines = ["hint: these keys hash to different slots, so one command cannot take them:"]
    for key in keys:
        slot = key_slot(key)
        owner = topology.slot_owner(slot) if topology else None
        where = f" on {owner.address}" if owner else ""
        lines.append(f"  {join_args([key])} -> slot {slot}{where}")
    lines.append(f"  a common hash tag keeps them in one slot, e.g. {_tag_example(keys)}")
    return "\n".join(lines)
