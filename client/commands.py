"""The command routing table: key positions, flags and routing tips of every command (pure).

The table is built from the server's own ``COMMAND`` (``COMMAND INFO``) and ``COMMAND DOCS``
replies (:meth:`CommandTable.from_replies`, RESP2 or RESP3 shapes), or loaded from the bundled
snapshot ``client/data/commands.json`` (:meth:`CommandTable.bundled`), which
``tools/gen_commands.py`` writes from a local Redis 7.0 server. Nothing here is a hand-kept list
of commands: keyless commands are the ones whose key specs say so.

Key extraction (:meth:`CommandTable.key_indexes`) mirrors ``COMMAND GETKEYS`` of Redis 7.0:

1. a command without key specs (and without ``movablekeys``) has no keys: ``[]``;
2. otherwise the argument count must match the arity;
3. the key specs decide: a ``begin_search`` (``index``, or ``keyword`` searched from
   ``startfrom``; a negative ``startfrom`` searches backwards from the end) followed by
   ``find_keys`` (``range``: ``lastkey``/``keystep``/``limit``, or ``keynum``:
   ``keynumidx``/``firstkey``/``keystep``). Any invalid spec (bad ``numkeys``, a range past
   the end) means no keys at all;
4. when a spec is ``unknown`` or marked ``incomplete`` and takes part (``SORT``, ``SORT_RO``,
   ``MIGRATE ... KEYS``), the server asks a native key finder instead; those few are emulated
   here, keyed by command name (a future command in that state gets the keys its complete
   specs find);
5. no keys found for a command whose keys are mandatory is an error (GETKEYS: "Invalid
   arguments specified for command"); commands flagged ``no_mandatory_keys`` (``EVAL`` with
   ``numkeys`` 0) give ``[]``.

Every case where GETKEYS answers an error raises :class:`~client.errors.UnroutableError`; its
text then matches what the server itself would reply where it can (arity, unknown command).
One documented divergence: for a ``numkeys`` that C's ``atoi`` accepts but the server's integer
parser does not (``"02"``, ``"2x"``), GETKEYS falls back to an ``atoi`` parse and reports keys,
while we report none (the command itself is rejected by the server with "value is not an
integer", so routing it anywhere is right). Likewise a ``numkeys`` past 2**31, which the
server truncates to a C ``int`` for GETKEYS but refuses to run.

Compact JSON layout of the snapshot (see :meth:`CommandTable.to_json`): per command ``name``,
``arity``, ``flags``, ``keys`` (first, last, step), ``acl``, ``tips``, ``specs`` (each
``[flags, begin_search, find_keys, notes?]`` with ``begin_search`` = ``["index", i]`` |
``["keyword", kw, startfrom]`` | ``["unknown"]`` and ``find_keys`` = ``["range", lastkey,
keystep, limit]`` | ``["keynum", keynumidx, firstkey, keystep]`` | ``["unknown"]``), ``subs``
and ``doc``; arguments use short keys (``n`` name, ``t`` type, ``k`` token, ``f`` flags, ``i``
key_spec_index, ``a`` arguments, ``s`` since, ``d`` display_text, ``x`` deprecated_since).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from client.errors import ReplyError, RespProtocolError, UnroutableError
from client.values import Attributed, ErrorReply, RespMap, RespValue, Verbatim

__all__ = [
    "Argument",
    "BeginSearch",
    "CommandSpec",
    "CommandTable",
    "FindKeys",
    "KeySpec",
]


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True, slots=True)
class BeginSearch:
    """Where a key spec starts: ``index`` (at ``index``), ``keyword`` or ``unknown``."""

    type: str
    index: int = 0
    keyword: str = ""
    startfrom: int = 0


@dataclass(frozen=True, slots=True)
class FindKeys:
    """How a key spec finds its keys from the start: ``range``, ``keynum`` or ``unknown``."""

    type: str
    lastkey: int = 0
    keystep: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 0


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key spec of a command, with its flags (``RO``, ``RW``, ``OW``, ``RM``, ``access``,
    ``update``, ``insert``, ``delete``, ``not_key``, ``incomplete``, ``variable_flags``)."""

    begin_search: BeginSearch
    find_keys: FindKeys
    flags: frozenset[str] = frozenset()
    notes: str = ""

    @property
    def not_key(self) -> bool:
        """The positions are not keys but sharded channels (SPUBLISH, SSUBSCRIBE)."""
        return "not_key" in self.flags

    @property
    def incomplete(self) -> bool:
        return "incomplete" in self.flags

    @property
    def complete(self) -> bool:
        """The spec alone finds every key it describes (what GETKEYS relies on)."""
        return (
            self.begin_search.type in ("index", "keyword")
            and self.find_keys.type in ("range", "keynum")
            and "incomplete" not in self.flags
        )


@dataclass(frozen=True, slots=True)
class Argument:
    """One argument of a command, from COMMAND DOCS (for CLI help and completion)."""

    name: str
    type: str
    token: str | None = None
    flags: frozenset[str] = frozenset()
    key_spec_index: int | None = None
    arguments: tuple[Argument, ...] = ()
    since: str | None = None
    display_text: str | None = None
    deprecated_since: str | None = None

    @property
    def optional(self) -> bool:
        return "optional" in self.flags

    @property
    def multiple(self) -> bool:
        return "multiple" in self.flags

    @property
    def multiple_token(self) -> bool:
        return "multiple_token" in self.flags


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command (or subcommand: ``name`` is then ``'container|sub'``), from COMMAND (INFO)
    and COMMAND DOCS. ``subcommands`` is keyed by the lowercase subcommand name alone."""

    name: str
    arity: int
    flags: frozenset[str] = frozenset()
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    acl_categories: frozenset[str] = frozenset()
    tips: frozenset[str] = frozenset()
    key_specs: tuple[KeySpec, ...] = ()
    subcommands: dict[str, CommandSpec] = field(default_factory=dict, hash=False)
    request_policy: str | None = None
    response_policy: str | None = None
    summary: str = ""
    since: str = ""
    group: str = ""
    complexity: str = ""
    doc_flags: frozenset[str] = frozenset()
    deprecated_since: str = ""
    replaced_by: str = ""
    arguments: tuple[Argument, ...] = ()

    def __post_init__(self) -> None:
        for tip in self.tips:
            if self.request_policy is None and tip.startswith("request_policy:"):
                object.__setattr__(self, "request_policy", tip.partition(":")[2])
            elif self.response_policy is None and tip.startswith("response_policy:"):
                object.__setattr__(self, "response_policy", tip.partition(":")[2])

    # -- names

    @property
    def container(self) -> str | None:
        """The container's name for a subcommand (``'cluster'`` for ``'cluster|slots'``)."""
        head, sep, _ = self.name.partition("|")
        return head if sep else None

    @property
    def display_name(self) -> str:
        """As typed: ``'CLUSTER SLOTS'``."""
        return self.name.replace("|", " ").upper()

    # -- flags

    @property
    def readonly(self) -> bool:
        return "readonly" in self.flags

    @property
    def write(self) -> bool:
        return "write" in self.flags

    @property
    def blocking(self) -> bool:
        return "blocking" in self.flags

    @property
    def movablekeys(self) -> bool:
        return "movablekeys" in self.flags

    @property
    def pubsub(self) -> bool:
        return "pubsub" in self.flags

    @property
    def noscript(self) -> bool:
        return "noscript" in self.flags

    @property
    def admin(self) -> bool:
        return "admin" in self.flags

    @property
    def fast(self) -> bool:
        return "fast" in self.flags

    @property
    def denyoom(self) -> bool:
        return "denyoom" in self.flags

    @property
    def loading(self) -> bool:
        return "loading" in self.flags

    @property
    def stale(self) -> bool:
        return "stale" in self.flags

    @property
    def no_multi(self) -> bool:
        return "no_multi" in self.flags

    @property
    def no_mandatory_keys(self) -> bool:
        return "no_mandatory_keys" in self.flags

    @property
    def is_container(self) -> bool:
        return bool(self.subcommands)

    @property
    def nondeterministic_output(self) -> bool:
        return "nondeterministic_output" in self.tips

    @property
    def has_keys(self) -> bool:
        """The command may take keys (GETKEYS does not answer "no key arguments")."""
        return self.movablekeys or any(not s.not_key for s in self.key_specs)

    @property
    def has_channels(self) -> bool:
        """Some positions are sharded channels (a ``not_key`` key spec)."""
        return any(s.not_key for s in self.key_specs)

    def check_arity(self, argc: int) -> bool:
        """True when ``argc`` arguments (the name included) satisfy the arity."""
        arity = self.arity
        return argc == arity if arity >= 0 else argc >= -arity


# --------------------------------------------------------------------------- key finding

_Finder = Callable[[Sequence[bytes]], list[int]]


def _is_word(arg: bytes, word: bytes) -> bool:
    """``strcasecmp(arg, word) == 0`` as C sees it: ASCII case-insensitive, up to a NUL byte."""
    n = len(word)
    if len(arg) < n or arg[:n].lower() != word:
        return False
    return len(arg) == n or arg[n] == 0


def _string2ll(arg: bytes) -> int | None:
    """Redis' strict integer parser (no ``+``, no leading zeros, no spaces, 64-bit range)."""
    if not arg or len(arg) > 20:
        return None
    if arg == b"0":
        return 0
    digits = arg[1:] if arg[0] == 0x2D else arg
    if not digits or not 0x31 <= digits[0] <= 0x39 or not digits.isdigit():
        return None
    value = int(digits)
    if arg[0] == 0x2D:
        value = -value
    if not -(1 << 63) <= value < (1 << 63):
        return None
    return value


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# A key spec compiled for the hot path: (begin kind, index, keyword lowercased, startfrom,
# find kind, lastkey, keystep, limit, keynumidx, firstkey, incomplete). Kinds: 0 index /
# range, 1 keyword / keynum, 2 unknown.
_Compiled = tuple[int, int, bytes, int, int, int, int, int, int, int, bool]
_KINDS = {"index": 0, "range": 0, "keyword": 1, "keynum": 1}


def _compile_spec(spec: KeySpec) -> _Compiled:
    bs, fk = spec.begin_search, spec.find_keys
    return (
        _KINDS.get(bs.type, 2),
        bs.index,
        bs.keyword.lower().encode(),
        bs.startfrom,
        _KINDS.get(fk.type, 2),
        fk.lastkey,
        max(fk.keystep, 1),
        fk.limit,
        fk.keynumidx,
        fk.firstkey,
        "incomplete" in spec.flags,
    )


_UNKNOWN = "the key positions depend on the arguments' meaning"


def _run_specs(specs: Sequence[_Compiled], args: Sequence[bytes], strict: bool) -> list[int] | str:
    """Redis' getKeysUsingKeySpecs: the key positions, or (``strict``) why a spec failed."""
    argc = len(args)
    out: list[int] = []
    for bs, index, word, start, fk, lastkey, step, limit, keynumidx, firstkey, partial in specs:
        why = ""
        first = 0
        last = -1
        if bs == 0:
            first = index
        elif bs == 1:
            indexes = range(start, argc - 1) if start > 0 else range(argc + start, 1, -1)
            for i in indexes:
                if i >= argc or i < 1:
                    break
                if _is_word(args[i], word):
                    first = i + 1
                    break
            if not first:
                continue
        else:
            why = _UNKNOWN
        if why:
            pass
        elif fk == 0:
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + (_cdiv(argc - first, limit) + lastkey)
        elif fk == 1:
            at = first + keynumidx
            if at >= argc or at < 0:
                why = "the number of keys is missing"
            else:
                numkeys = _string2ll(args[at])
                if numkeys is None or numkeys < 0:
                    why = f"numkeys {args[at]!r} is not a valid number of keys"
                else:
                    first += firstkey
                    last = first + numkeys - 1
        else:
            why = _UNKNOWN
        if why:
            pass
        elif last >= argc or first >= argc:
            why = "the key positions run past the last argument"
        elif last < first:
            why = "no key is given"
        else:
            out.extend(range(first, last + 1, step))
            if partial:
                why = "the key specs are incomplete"
        if why and strict:
            return why
    return out


# Native key finders of the commands whose key specs are incomplete or ``unknown`` (the server
# falls back to them for GETKEYS). Each mirrors the Redis 7.0 C function of the same purpose.


def _sort_keys(args: Sequence[bytes]) -> list[int]:
    """sortGetKeys: the sorted key, plus the last ``STORE`` destination."""
    out = [1]
    store = 0
    argc = len(args)
    i = 2
    while i < argc:
        arg = args[i]
        if _is_word(arg, b"limit"):
            i += 2
        elif _is_word(arg, b"get") or _is_word(arg, b"by"):
            i += 1
        elif _is_word(arg, b"store") and i + 1 < argc:
            store = i + 1
        i += 1
    if store:
        out.append(store)
    return out


def _sort_ro_keys(args: Sequence[bytes]) -> list[int]:
    """sortROGetKeys: only the sorted key."""
    return [1]


_MIGRATE_SKIP = ((b"copy", 0), (b"replace", 0), (b"auth", 1), (b"auth2", 2))


def _migrate_keys(args: Sequence[bytes]) -> list[int]:
    """migrateGetKeys: argument 3, or everything after ``KEYS`` when argument 3 is empty."""
    argc = len(args)
    first, num = 3, 1
    if argc > 6:
        i = 6
        while i < argc:
            arg = args[i]
            if _is_word(arg, b"keys"):
                if len(args[3]) > 0:
                    num = 0
                else:
                    first, num = i + 1, argc - i - 1
                break
            for word, skip in _MIGRATE_SKIP:
                if _is_word(arg, word):
                    i += skip
                    break
            i += 1
    return list(range(first, first + num))


def _georadius_keys(args: Sequence[bytes]) -> list[int]:
    """georadiusGetKeys: the key, plus the last ``STORE``/``STOREDIST`` destination."""
    stored = -1
    argc = len(args)
    i = 5
    while i < argc:
        arg = args[i]
        if (_is_word(arg, b"store") or _is_word(arg, b"storedist")) and i + 1 < argc:
            stored = i + 1
            i += 1
        i += 1
    return [1] if stored == -1 else [1, stored]


_NATIVE: dict[str, _Finder] = {
    "sort": _sort_keys,
    "sort_ro": _sort_ro_keys,
    "migrate": _migrate_keys,
    "georadius": _georadius_keys,
    "georadiusbymember": _georadius_keys,
}


def _arity_error(spec: CommandSpec) -> UnroutableError:
    return UnroutableError(f"wrong number of arguments for '{spec.name}' command")


def _no_keys(args: Sequence[bytes]) -> list[int]:
    return []


def _compile(spec: CommandSpec, *, channels: bool) -> _Finder:
    """A fast key finder for one command (``channels``: count sharded channels as keys)."""
    used = tuple(s for s in spec.key_specs if channels or not s.not_key)
    specs = tuple(_compile_spec(s) for s in used)
    if not specs:
        if spec.movablekeys and not channels:
            message = f"the key positions of '{spec.name}' are unknown (no key specs)"

            def unknown(args: Sequence[bytes]) -> list[int]:
                raise UnroutableError(message, hint="refresh the command table from the server")

            return unknown
        return _no_keys

    arity = spec.arity
    # No channel at all is fine (SUNSUBSCRIBE alone leaves every shard channel).
    optional = spec.no_mandatory_keys or all(s.not_key for s in used)
    name = spec.name

    def empty(why: str) -> list[int]:
        if optional:
            return []
        raise UnroutableError(f"invalid arguments for '{name}' command: {why}")

    # ``variable_flags`` (SET, BITFIELD) makes the server ask a native finder for the *flags*;
    # the positions it reports are those of the specs, so those commands stay on the fast path.
    native = _NATIVE.get(name)
    complete = all(s.complete for s in used)
    if native is not None or not complete:
        # The server tries the specs first (an incomplete spec that finds nothing is no
        # failure: MIGRATE without KEYS), then falls back to its native finder.
        def fallback(args: Sequence[bytes]) -> list[int]:
            argc = len(args)
            if argc != arity if arity >= 0 else argc < -arity:
                raise _arity_error(spec)
            found = _run_specs(specs, args, True)
            if not isinstance(found, str):
                return found or empty("no key is given")
            if native is not None:
                return native(args) or empty("no key is given")
            if complete:
                return empty(found)
            partial = _run_specs(specs, args, False)
            assert not isinstance(partial, str)
            return partial or empty(found)

        return fallback

    static = all(s.begin_search.type == "index" and s.find_keys.type == "range" for s in used)
    if static and arity >= 0 and all(s.find_keys.lastkey >= 0 for s in used):
        # Positions depend on nothing but the argument count: precompute for fixed arity.
        found = _run_specs(specs, [b""] * arity, True)
        if isinstance(found, list) and found:
            const = tuple(found)

            def fixed(args: Sequence[bytes]) -> list[int]:
                if len(args) != arity:
                    raise _arity_error(spec)
                return list(const)

            return fixed

    if static and len(specs) == 1:
        only = used[0]
        first = only.begin_search.index
        lastkey = only.find_keys.lastkey
        limit = only.find_keys.limit
        step = max(only.find_keys.keystep, 1)

        def ranged(args: Sequence[bytes]) -> list[int]:
            argc = len(args)
            if argc != arity if arity >= 0 else argc < -arity:
                raise _arity_error(spec)
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + (_cdiv(argc - first, limit) + lastkey)
            if last >= argc or last < first or first >= argc:
                return empty("no key is given")
            return list(range(first, last + 1, step))

        return ranged

    def general(args: Sequence[bytes]) -> list[int]:
        argc = len(args)
        if argc != arity if arity >= 0 else argc < -arity:
            raise _arity_error(spec)
        found = _run_specs(specs, args, True)
        if isinstance(found, str):
            return empty(found)
        return found or empty("no key is given")

    return general


class _Route:
    __slots__ = ("channels", "keys", "spec", "subs")

    def __init__(self, spec: CommandSpec) -> None:
        self.spec = spec
        self.keys = _compile(spec, channels=False)
        self.channels = _compile(spec, channels=True) if spec.has_channels else self.keys
        self.subs: dict[bytes, _Route] | None = (
            {name.encode(): _Route(sub) for name, sub in spec.subcommands.items()}
            if spec.subcommands
            else None
        )


def _show(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")


# --------------------------------------------------------------------------- the table

_bundled: CommandTable | None = None


class CommandTable:
    """Every command the server knows, with fast key lookup for the routing hot path.

    Build it with :meth:`from_replies` (live server) or :meth:`bundled` (snapshot).
    """

    __slots__ = ("_commands", "_routes", "redis_version")

    def __init__(self, commands: Mapping[str, CommandSpec], *, redis_version: str = "") -> None:
        self._commands: dict[str, CommandSpec] = dict(sorted(commands.items()))
        self._routes: dict[bytes, _Route] = {
            name.encode(): _Route(spec) for name, spec in self._commands.items()
        }
        #: The server version the table came from, when known.
        self.redis_version = redis_version

    # -- construction

    @classmethod
    def bundled(cls) -> CommandTable:
        """The snapshot shipped in ``client/data/commands.json`` (loaded once, then cached)."""
        global _bundled
        if _bundled is None:
            text = resources.files("client").joinpath("data/commands.json").read_text("utf-8")
            _bundled = cls.from_json(text)
        return _bundled

    @classmethod
    def from_replies(
        cls,
        command_reply: RespValue,
        docs_reply: RespValue | None = None,
        *,
        redis_version: str = "",
    ) -> CommandTable:
        """Build the table from the replies to ``COMMAND`` and ``COMMAND DOCS``.

        RESP2 (flat name/value arrays) and RESP3 (maps, sets) shapes are both accepted.
        Without usable docs (``None``, an error, Redis < 7), docs come from the bundled
        snapshot; an entry without key specs (Redis < 7) takes key specs and tips from the
        snapshot when it knows the command, else a spec made from first/last/step.
        """
        command_reply = _unwrap(command_reply)
        if isinstance(command_reply, ErrorReply):
            raise ReplyError.from_message(command_reply.text)
        docs: dict[str, dict[str, RespValue]] = {}
        docs_reply = _unwrap(docs_reply)
        have_docs = docs_reply is not None and not isinstance(docs_reply, ErrorReply)
        if have_docs:
            _collect_docs(docs_reply, docs)
        entries = [_unwrap(e) for e in _list(command_reply)]
        entries = [e for e in entries if e is not None]  # None: COMMAND INFO of unknown names
        legacy = any(isinstance(e, list) and len(e) < 9 for e in entries)
        fallback = _bundled_or_none() if legacy or not have_docs else None
        commands: dict[str, CommandSpec] = {}
        for entry in entries:
            spec = _parse_command(entry, docs, have_docs, fallback)
            commands[spec.name] = spec
        return cls(commands, redis_version=redis_version)

    # -- lookup

    def _find(self, args: Sequence[bytes]) -> _Route:
        if not args:
            raise UnroutableError("empty command")
        route = self._routes.get(args[0].lower())
        if route is None:
            shown = " ".join(f"'{_show(a)[:128]}'" for a in args[1:8])
            raise UnroutableError(
                f"unknown command '{_show(args[0])[:128]}', with args beginning with: {shown}"
            )
        subs = route.subs
        if subs is not None and len(args) > 1:
            sub = subs.get(args[1].lower())
            if sub is None:
                raise UnroutableError(
                    f"unknown subcommand '{_show(args[1])[:128]}'. "
                    f"Try {route.spec.name.upper()} HELP."
                )
            return sub
        return route

    def lookup(self, args: Sequence[bytes]) -> CommandSpec | None:
        """The spec of the command in ``args`` (a subcommand for containers), or None.

        ``args`` is the whole command (``[b"CLUSTER", b"SLOTS"]``); case-insensitive. A
        container alone (``[b"CONFIG"]``) gives the container.
        """
        try:
            return self._find(args).spec
        except UnroutableError:
            return None

    def key_indexes(self, args: Sequence[bytes], *, channels: bool = False) -> list[int]:
        """Positions in ``args`` of every key, exactly as ``COMMAND GETKEYS`` reports them.

        A keyless command gives ``[]``. ``channels=True`` also counts sharded pub/sub channels
        (SPUBLISH, SSUBSCRIBE), which route by slot like keys. Raises
        :class:`~client.errors.UnroutableError` where the server would answer an error:
        unknown command, wrong number of arguments, invalid ``numkeys``, no key given.
        """
        route = self._find(args)
        if channels:
            return route.channels(args)
        return route.keys(args)

    def keys(self, args: Sequence[bytes], *, channels: bool = False) -> list[bytes]:
        """The keys of ``args`` (see :meth:`key_indexes`)."""
        return [args[i] for i in self.key_indexes(args, channels=channels)]

    def get(self, name: str) -> CommandSpec | None:
        """A command by name: ``'get'``, or ``'config|get'`` / ``'config get'``."""
        head, _, sub = name.lower().replace(" ", "|").partition("|")
        spec = self._commands.get(head)
        if spec is None or not sub:
            return spec
        return spec.subcommands.get(sub)

    def names(self) -> list[str]:
        """Every command name, lowercase and sorted; subcommands as typed: ``'config get'``."""
        out: list[str] = []
        for name, spec in self._commands.items():
            out.append(name)
            out.extend(f"{name} {sub}" for sub in sorted(spec.subcommands))
        return out

    def all_commands(self) -> Iterator[CommandSpec]:
        """Every command, then its subcommands, in name order."""
        for spec in self._commands.values():
            yield spec
            yield from (spec.subcommands[s] for s in sorted(spec.subcommands))

    @property
    def commands(self) -> Mapping[str, CommandSpec]:
        """The top-level commands by lowercase name."""
        return self._commands

    def __len__(self) -> int:
        return len(self._commands)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommandTable):
            return NotImplemented
        return self._commands == other._commands

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        version = f" from {self.redis_version}" if self.redis_version else ""
        return f"<CommandTable {len(self._commands)} commands{version}>"

    # -- JSON snapshot

    def to_json(self) -> str:
        """The compact JSON snapshot (the format of ``client/data/commands.json``)."""
        body = {
            "redis_version": self.redis_version,
            "commands": [_command_to_json(s) for s in self._commands.values()],
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CommandTable:
        body = json.loads(text)
        commands = (_command_from_json(c) for c in body["commands"])
        return cls({c.name: c for c in commands}, redis_version=body.get("redis_version", ""))


def _bundled_or_none() -> CommandTable | None:
    try:
        return CommandTable.bundled()
    except (OSError, ValueError, KeyError):  # pragma: no cover - a broken install
        return None


# --------------------------------------------------------------------------- reply parsing


def _unwrap(value: RespValue) -> RespValue:
    while isinstance(value, Attributed):
        value = value.value
    return value


def _text(value: RespValue) -> str:
    value = _unwrap(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Verbatim):
        return value.text.decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    raise RespProtocolError(f"expected a string in a COMMAND reply, got {value!r:.80}")


def _int(value: RespValue) -> int:
    value = _unwrap(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, bytes):
        try:
            return int(value)
        except ValueError:
            pass
    raise RespProtocolError(f"expected an integer in a COMMAND reply, got {value!r:.80}")


def _texts(value: RespValue) -> list[str]:
    value = _unwrap(value)
    if value is None:
        return []
    if isinstance(value, list) and not isinstance(value, RespMap):
        return [_text(v) for v in value]
    raise RespProtocolError(f"expected an array of strings in a COMMAND reply, got {value!r:.80}")


def _items(value: RespValue) -> list[tuple[RespValue, RespValue]]:
    """The name/value pairs of a RESP3 map or of a RESP2 flat array."""
    value = _unwrap(value)
    if value is None:
        return []
    if isinstance(value, RespMap):
        return list(value)
    flat = _list(value)
    return list(zip(flat[0::2], flat[1::2], strict=False))


def _fields(value: RespValue) -> dict[str, RespValue]:
    return {_text(k): v for k, v in _items(value)}


def _parse_key_spec(value: RespValue) -> KeySpec:
    fields = _fields(value)
    bs = _fields(fields.get("begin_search"))
    bs_type = _text(bs.get("type"))
    bs_spec = _fields(bs.get("spec"))
    if bs_type == "index":
        begin = BeginSearch("index", index=_int(bs_spec.get("index", 0)))
    elif bs_type == "keyword":
        begin = BeginSearch(
            "keyword",
            keyword=_text(bs_spec.get("keyword")),
            startfrom=_int(bs_spec.get("startfrom", 0)),
        )
    else:
        begin = BeginSearch(bs_type or "unknown")
    fk = _fields(fields.get("find_keys"))
    fk_type = _text(fk.get("type"))
    fk_spec = _fields(fk.get("spec"))
    if fk_type == "range":
        find = FindKeys(
            "range",
            lastkey=_int(fk_spec.get("lastkey", 0)),
            keystep=_int(fk_spec.get("keystep", 1)),
            limit=_int(fk_spec.get("limit", 0)),
        )
    elif fk_type == "keynum":
        find = FindKeys(
            "keynum",
            keynumidx=_int(fk_spec.get("keynumidx", 0)),
            firstkey=_int(fk_spec.get("firstkey", 1)),
            keystep=_int(fk_spec.get("keystep", 1)),
        )
    else:
        find = FindKeys(fk_type or "unknown")
    return KeySpec(
        begin,
        find,
        frozenset(_texts(fields.get("flags"))),
        _text(fields.get("notes")),
    )


def _parse_argument(value: RespValue) -> Argument:
    fields = _fields(value)
    key_spec_index = fields.get("key_spec_index")
    token = fields.get("token")
    since = fields.get("since")
    display = fields.get("display_text")
    deprecated = fields.get("deprecated_since")
    return Argument(
        name=_text(fields.get("name")),
        type=_text(fields.get("type")),
        token=None if token is None else _text(token),
        flags=frozenset(_texts(fields.get("flags"))),
        key_spec_index=None if key_spec_index is None else _int(key_spec_index),
        arguments=tuple(_parse_argument(a) for a in _list(fields.get("arguments"))),
        since=None if since is None else _text(since),
        display_text=None if display is None else _text(display),
        deprecated_since=None if deprecated is None else _text(deprecated),
    )


def _list(value: RespValue) -> list[RespValue]:
    value = _unwrap(value)
    if value is None:
        return []
    if isinstance(value, list) and not isinstance(value, RespMap):
        return list[RespValue](value)
    raise RespProtocolError(f"expected an array in a COMMAND reply, got {value!r:.80}")


def _collect_docs(reply: RespValue, out: dict[str, dict[str, RespValue]]) -> None:
    """Flatten COMMAND DOCS into full name -> doc fields, subcommands included."""
    for name, doc in _items(reply):
        fields = _fields(doc)
        out[_text(name).lower()] = fields
        subs = fields.get("subcommands")
        if subs is not None:
            _collect_docs(subs, out)


def _parse_command(
    entry: RespValue,
    docs: dict[str, dict[str, RespValue]],
    have_docs: bool,
    fallback: CommandTable | None,
) -> CommandSpec:
    parts = _list(entry)
    if len(parts) < 6:
        raise RespProtocolError(f"COMMAND entry has {len(parts)} fields, expected 6 or more")
    name = _text(parts[0]).lower()
    first, last, step = _int(parts[3]), _int(parts[4]), _int(parts[5])
    known = fallback.get(name) if fallback is not None else None
    acl = frozenset(_texts(parts[6])) if len(parts) > 6 else frozenset()
    if len(parts) >= 9:
        tips = frozenset(_texts(parts[7]))
        key_specs = tuple(_parse_key_spec(s) for s in _list(parts[8]))
    elif known is not None:
        tips, key_specs = known.tips, known.key_specs
    else:
        tips, key_specs = frozenset(), _legacy_specs(first, last, step)
    subcommands: dict[str, CommandSpec] = {}
    if len(parts) >= 10:
        for sub_entry in _list(parts[9]):
            sub = _parse_command(sub_entry, docs, have_docs, fallback)
            subcommands[sub.name.partition("|")[2] or sub.name] = sub
    doc = docs.get(name)
    if doc is not None:
        doc_parts: dict[str, Any] = {
            "summary": _text(doc.get("summary")),
            "since": _text(doc.get("since")),
            "group": _text(doc.get("group")),
            "complexity": _text(doc.get("complexity")),
            "doc_flags": frozenset(_texts(doc.get("doc_flags"))),
            "deprecated_since": _text(doc.get("deprecated_since")),
            "replaced_by": _text(doc.get("replaced_by")),
            "arguments": tuple(_parse_argument(a) for a in _list(doc.get("arguments"))),
        }
    elif not have_docs and known is not None:
        doc_parts = {
            "summary": known.summary,
            "since": known.since,
            "group": known.group,
            "complexity": known.complexity,
            "doc_flags": known.doc_flags,
            "deprecated_since": known.deprecated_since,
            "replaced_by": known.replaced_by,
            "arguments": known.arguments,
        }
    else:
        doc_parts = {}
    return CommandSpec(
        name=name,
        arity=_int(parts[1]),
        flags=frozenset(_texts(parts[2])),
        first_key=first,
        last_key=last,
        step=step,
        acl_categories=acl,
        tips=tips,
        key_specs=key_specs,
        subcommands=subcommands,
        **doc_parts,
    )


def _legacy_specs(first: int, last: int, step: int) -> tuple[KeySpec, ...]:
    """The range key spec Redis itself derives from first/last/step (pre-7 servers)."""
    if first <= 0:
        return ()
    lastkey = last - first if last >= 0 else last
    return (KeySpec(BeginSearch("index", index=first), FindKeys("range", lastkey, max(step, 1))),)


# --------------------------------------------------------------------------- JSON form


def _begin_to_json(bs: BeginSearch) -> list[Any]:
    if bs.type == "index":
        return ["index", bs.index]
    if bs.type == "keyword":
        return ["keyword", bs.keyword, bs.startfrom]
    return [bs.type]


def _find_to_json(fk: FindKeys) -> list[Any]:
    if fk.type == "range":
        return ["range", fk.lastkey, fk.keystep, fk.limit]
    if fk.type == "keynum":
        return ["keynum", fk.keynumidx, fk.firstkey, fk.keystep]
    return [fk.type]


def _spec_to_json(spec: KeySpec) -> list[Any]:
    out: list[Any] = [
        sorted(spec.flags),
        _begin_to_json(spec.begin_search),
        _find_to_json(spec.find_keys),
    ]
    if spec.notes:
        out.append(spec.notes)
    return out


def _spec_from_json(data: list[Any]) -> KeySpec:
    bs, fk = data[1], data[2]
    if bs[0] == "index":
        begin = BeginSearch("index", index=int(bs[1]))
    elif bs[0] == "keyword":
        begin = BeginSearch("keyword", keyword=str(bs[1]), startfrom=int(bs[2]))
    else:
        begin = BeginSearch(str(bs[0]))
    if fk[0] == "range":
        find = FindKeys("range", lastkey=int(fk[1]), keystep=int(fk[2]), limit=int(fk[3]))
    elif fk[0] == "keynum":
        find = FindKeys("keynum", keynumidx=int(fk[1]), firstkey=int(fk[2]), keystep=int(fk[3]))
    else:
        find = FindKeys(str(fk[0]))
    notes = str(data[3]) if len(data) > 3 else ""
    return KeySpec(begin, find, frozenset(data[0]), notes)


_ARG_KEYS = (
    ("n", "name"),
    ("t", "type"),
    ("k", "token"),
    ("i", "key_spec_index"),
    ("s", "since"),
    ("d", "display_text"),
    ("x", "deprecated_since"),
)


def _arg_to_json(arg: Argument) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for short, attr in _ARG_KEYS:
        value = getattr(arg, attr)
        if value is not None:
            out[short] = value
    if arg.flags:
        out["f"] = sorted(arg.flags)
    if arg.arguments:
        out["a"] = [_arg_to_json(a) for a in arg.arguments]
    return out


def _arg_from_json(data: dict[str, Any]) -> Argument:
    values: dict[str, Any] = {attr: data[short] for short, attr in _ARG_KEYS if short in data}
    return Argument(
        flags=frozenset(data.get("f", ())),
        arguments=tuple(_arg_from_json(a) for a in data.get("a", ())),
        **values,
    )


_DOC_TEXT = ("summary", "since", "group", "complexity", "deprecated_since", "replaced_by")


def _command_to_json(spec: CommandSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "arity": spec.arity,
        "flags": sorted(spec.flags),
        "keys": [spec.first_key, spec.last_key, spec.step],
    }
    if spec.acl_categories:
        out["acl"] = sorted(spec.acl_categories)
    if spec.tips:
        out["tips"] = sorted(spec.tips)
    if spec.key_specs:
        out["specs"] = [_spec_to_json(s) for s in spec.key_specs]
    if spec.subcommands:
        out["subs"] = [_command_to_json(spec.subcommands[s]) for s in sorted(spec.subcommands)]
    doc: dict[str, Any] = {k: getattr(spec, k) for k in _DOC_TEXT if getattr(spec, k)}
    if spec.doc_flags:
        doc["doc_flags"] = sorted(spec.doc_flags)
    if spec.arguments:
        doc["arguments"] = [_arg_to_json(a) for a in spec.arguments]
    if doc:
        out["doc"] = doc
    return out


def _command_from_json(data: dict[str, Any]) -> CommandSpec:
    doc: dict[str, Any] = data.get("doc", {})
    first, last, step = data["keys"]
    subs = (_command_from_json(s) for s in data.get("subs", ()))
    return CommandSpec(
        name=data["name"],
        arity=int(data["arity"]),
        flags=frozenset(data["flags"]),
        first_key=int(first),
        last_key=int(last),
        step=int(step),
        acl_categories=frozenset(data.get("acl", ())),
        tips=frozenset(data.get("tips", ())),
        key_specs=tuple(_spec_from_json(s) for s in data.get("specs", ())),
        subcommands={s.name.partition("|")[2] or s.name: s for s in subs},
        doc_flags=frozenset(doc.get("doc_flags", ())),
        arguments=tuple(_arg_from_json(a) for a in doc.get("arguments", ())),
        **{k: str(doc[k]) for k in _DOC_TEXT if k in doc},
    )
