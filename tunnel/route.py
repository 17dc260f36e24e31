"""Smart-mode routing: one client command in, one route plan out (pure; no I/O).

The smart tunnel makes a whole cluster look like one standalone Redis. For every command a
client sends, :meth:`Router.route` decides *where* it runs and *how* its reply is built; the
session (:mod:`tunnel.smart`) then does the I/O and :mod:`tunnel.merge` builds merged replies.

Plans
-----
====================  ==========================================================================
:class:`Single`       one node: the owner of ``slot`` (``ANY_SLOT``: the session's home master).
:class:`Split`        multi-key commands across slots (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH):
                      one sub-command per slot, run concurrently, merged in order or summed.
:class:`FanOut`       keyless commands whose tips say ``all_shards``/``all_nodes``: one copy per
                      master, replies aggregated (:class:`Agg`).
:class:`Scan`         SCAN, with a cursor that encodes the node (see :mod:`tunnel.merge`).
:class:`Local`        answered by the tunnel itself (PING, HELLO, AUTH, CLUSTER SLOTS, ...).
:class:`Blocking`     blocking commands: a dedicated upstream connection on the slot's node.
:class:`Txn`          MULTI/EXEC/DISCARD/WATCH/UNWATCH: session state, see :mod:`tunnel.smart`.
:class:`PubSub`       (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE: dedicated pub/sub connections.
:class:`Wait`         WAIT: every master the session wrote to, on dedicated connections.
:class:`Reject`       an error reply the tunnel gives itself (CROSSSLOT, unknown, unsupported).
====================  ==========================================================================

Where a standalone Redis would not raise CROSSSLOT, we do not either: the splittable commands
are split *by slot* (not by node: a node refuses a multi-key command across its own slots).
Atomic multi-key commands (MSETNX, RENAME, SMOVE, LMOVE, SUNIONSTORE, ...) cannot be split, so
keys in different slots get a CROSSSLOT error that names each key's slot and suggests a hash tag.

Every decision uses the command table (key specs, flags and the ``request_policy`` /
``response_policy`` tips); the few commands named here are those whose meaning the tunnel must
emulate (session state, fake one-node topology) or refuse (they would reconfigure the cluster).
Decisions per command name are cached, so the hot path is one dict lookup, the key positions,
and one CRC16 per key.
"""

from __future__ import annotations

import enum
from binascii import crc_hqx
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from client.commands import CommandSpec, CommandTable
from client.errors import UnroutableError
from client.slots import SLOTS, key_slot

__all__ = [
    "ANY_SLOT",
    "PUBSUB_SLOT",
    "Agg",
    "Blocking",
    "FanOut",
    "Local",
    "LocalKind",
    "Plan",
    "PubSub",
    "Reject",
    "Router",
    "Scan",
    "Single",
    "Split",
    "SplitKind",
    "SplitPart",
    "Txn",
    "Wait",
    "crossslot_message",
    "split_replies",
    "split_requests",
]

ANY_SLOT = -1
"""``Single.slot`` for a keyless command that may run on any master."""

PUBSUB_SLOT = 0
"""The tunnel keeps every SUBSCRIBE/PSUBSCRIBE on the owner of this slot and sends PUBLISH
there too, so PUBLISH counts the tunnel's subscribers as a standalone server would (a cluster
node counts only the subscribers connected to itself; the message still reaches every node)."""

_MAX_CACHE = 2048
_MAX_SHOWN_KEYS = 4
_MAX_KEY_TEXT = 40


class Agg(enum.Enum):
    """How the replies of a fan-out are combined."""

    SUM = "sum"  # DBSIZE, SLOWLOG LEN, PUBSUB NUMPAT: integers added
    CONCAT = "concat"  # KEYS: the arrays joined (masters hold disjoint keys)
    UNION = "union"  # PUBSUB CHANNELS/SHARDCHANNELS: distinct members, first-seen order
    PAIRS_SUM = "pairs_sum"  # PUBSUB NUMSUB/SHARDNUMSUB: [name, count, ...] summed per name
    ALL_OK = "all_ok"  # FLUSHALL, SCRIPT LOAD, ...: the first reply if none failed
    ONE_OK = "one_ok"  # SCRIPT KILL, FUNCTION KILL: a success if any node succeeded
    AND = "and"  # SCRIPT EXISTS: element-wise logical AND
    OR = "or"  # element-wise logical OR
    MIN = "min"
    MAX = "max"
    RANDOM = "random"  # RANDOMKEY: a random non-nil reply
    INFO = "info"  # INFO: sums what sums, see tunnel.merge.merge_info


class SplitKind(enum.Enum):
    """How the replies of a split multi-key command are combined."""

    ORDERED = "ordered"  # MGET: values put back in the order of the keys
    SUM = "sum"  # DEL, UNLINK, EXISTS, TOUCH: counts added
    OK = "ok"  # MSET: +OK when every part succeeded


class LocalKind(enum.Enum):
    """Commands the tunnel answers itself (per client, or as a one-node cluster)."""

    PING = "ping"
    ECHO = "echo"
    SELECT = "select"
    QUIT = "quit"
    RESET = "reset"
    AUTH = "auth"
    HELLO = "hello"
    OK = "ok"  # READONLY, READWRITE, ASKING, CLIENT NO-EVICT/NO-TOUCH: accepted, no effect
    CLIENT_ID = "client_id"
    CLIENT_SETNAME = "client_setname"
    CLIENT_GETNAME = "client_getname"
    CLIENT_INFO = "client_info"
    CLIENT_LIST = "client_list"
    CLIENT_SETINFO = "client_setinfo"
    CLIENT_REPLY = "client_reply"
    CLUSTER_SLOTS = "cluster_slots"
    CLUSTER_SHARDS = "cluster_shards"
    CLUSTER_NODES = "cluster_nodes"
    CLUSTER_INFO = "cluster_info"
    CLUSTER_MYID = "cluster_myid"
    CLUSTER_KEYSLOT = "cluster_keyslot"
    CLUSTER_REPLICAS = "cluster_replicas"
    TUNNEL = "tunnel"  # TUNNEL INFO / TUNNEL HELP: the tunnel's statistics (tunnel.stats)


class Single(NamedTuple):
    """Run on one node. ``slot`` is the key slot, or :data:`ANY_SLOT` for a keyless command.

    A named tuple, not a dataclass: one is built per command on the hot path.
    """

    slot: int
    readonly: bool
    write: bool


@dataclass(frozen=True, slots=True)
class SplitPart:
    """One sub-command of a split: its slot, its arguments, and where its results go."""

    slot: int
    args: tuple[bytes, ...]
    #: For ORDERED merges: the index in the merged reply of each result of this part.
    positions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """A multi-key command split into one sub-command per slot."""

    kind: SplitKind
    parts: tuple[SplitPart, ...]
    #: Number of results of the merged reply (ORDERED): the number of keys.
    size: int
    readonly: bool


@dataclass(frozen=True, slots=True)
class FanOut:
    """Run on every master; combine the replies with ``agg``."""

    agg: Agg
    readonly: bool


@dataclass(frozen=True, slots=True)
class Scan:
    """SCAN: ``cursor`` is the tunnel's cursor (node slot + node cursor), ``rest`` the options."""

    cursor: int
    rest: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Local:
    """Answered by the tunnel (see :class:`LocalKind`)."""

    kind: LocalKind


@dataclass(frozen=True, slots=True)
class Blocking:
    """A blocking command: run it on a dedicated connection to the owner of ``slot``."""

    slot: int
    readonly: bool


@dataclass(frozen=True, slots=True)
class Txn:
    """MULTI, EXEC, DISCARD, WATCH (with the watched keys' slot) or UNWATCH."""

    verb: str  # "multi" | "exec" | "discard" | "watch" | "unwatch"
    slot: int  # WATCH: the keys' slot; else ANY_SLOT


@dataclass(frozen=True, slots=True)
class PubSub:
    """A subscription command. ``verb`` is its lowercase name; ``channels`` its arguments.

    For SSUBSCRIBE/SUNSUBSCRIBE with channels, ``slot`` is their common slot, else ANY_SLOT.
    """

    verb: str
    channels: tuple[bytes, ...]
    slot: int


@dataclass(frozen=True, slots=True)
class Wait:
    """WAIT numreplicas timeout."""


@dataclass(frozen=True, slots=True)
class Reject:
    """An error the tunnel answers itself. ``message`` is the error text (``ERR ...``)."""

    message: bytes

    @property
    def frame(self) -> bytes:
        return b"-" + self.message + b"\r\n"


Plan = Single | Split | FanOut | Scan | Local | Blocking | Txn | PubSub | Wait | Reject

_SLOT_MASK = SLOTS - 1
#: One Single per slot for each (readonly, write) pair, made on first use: the hot path hands
#: out a shared tuple instead of building one per command.
_SINGLES: dict[tuple[bool, bool], list[Single]] = {}


def _singles(readonly: bool, write: bool) -> list[Single]:
    table = _SINGLES.get((readonly, write))
    if table is None:
        table = _SINGLES[(readonly, write)] = [
            Single(slot, readonly, write) for slot in range(SLOTS)
        ]
    return table


Handler = Callable[[Sequence[bytes]], Plan]

# --------------------------------------------------------------------------- tables

_LOCAL: dict[str, LocalKind] = {
    "ping": LocalKind.PING,
    "echo": LocalKind.ECHO,
    "select": LocalKind.SELECT,
    "quit": LocalKind.QUIT,
    "reset": LocalKind.RESET,
    "auth": LocalKind.AUTH,
    "hello": LocalKind.HELLO,
    "readonly": LocalKind.OK,
    "readwrite": LocalKind.OK,
    "asking": LocalKind.OK,
    "client|id": LocalKind.CLIENT_ID,
    "client|setname": LocalKind.CLIENT_SETNAME,
    "client|getname": LocalKind.CLIENT_GETNAME,
    "client|info": LocalKind.CLIENT_INFO,
    "client|list": LocalKind.CLIENT_LIST,
    "client|reply": LocalKind.CLIENT_REPLY,
    "client|no-evict": LocalKind.OK,
    "cluster|slots": LocalKind.CLUSTER_SLOTS,
    "cluster|shards": LocalKind.CLUSTER_SHARDS,
    "cluster|nodes": LocalKind.CLUSTER_NODES,
    "cluster|info": LocalKind.CLUSTER_INFO,
    "cluster|myid": LocalKind.CLUSTER_MYID,
    "cluster|keyslot": LocalKind.CLUSTER_KEYSLOT,
    "cluster|replicas": LocalKind.CLUSTER_REPLICAS,
    "cluster|slaves": LocalKind.CLUSTER_REPLICAS,
}

# Subcommands newer than the bundled 7.0 table that clients send on connect (redis-py 5+).
_LOCAL_EXTRA: dict[tuple[bytes, bytes], LocalKind] = {
    (b"client", b"setinfo"): LocalKind.CLIENT_SETINFO,
    (b"client", b"no-touch"): LocalKind.OK,
    (b"cluster", b"myshardid"): LocalKind.CLUSTER_MYID,
}

_UNSUPPORTED: dict[str, str] = {
    "monitor": "MONITOR would need every node's feed",
    "sync": "replication is not relayed",
    "psync": "replication is not relayed",
    "replicaof": "it would reconfigure the upstream cluster",
    "slaveof": "it would reconfigure the upstream cluster",
    "shutdown": "it would stop an upstream node",
    "failover": "it would reconfigure the upstream cluster",
    "client|tracking": "client-side caching needs the invalidations of every node",
    "client|caching": "client-side caching needs the invalidations of every node",
    "client|getredir": "client-side caching is not supported",
    "client|trackinginfo": "client-side caching is not supported",
    "client|kill": "upstream connections are shared by every local client",
    "client|pause": "upstream connections are shared by every local client",
    "client|unpause": "upstream connections are shared by every local client",
    "client|unblock": "client ids are local to the tunnel",
}

# CLUSTER subcommands that are not answered locally or routed by slot change the cluster.
_CLUSTER_BY_SLOT = frozenset({"cluster|countkeysinslot", "cluster|getkeysinslot"})
_CLUSTER_ANY = frozenset({"cluster|help"})

_TXN = frozenset({"multi", "exec", "discard", "watch", "unwatch"})
_PUBSUB = frozenset(
    {"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "ssubscribe", "sunsubscribe"}
)

_SPLIT: dict[str, SplitKind] = {
    "mget": SplitKind.ORDERED,
    "mset": SplitKind.OK,
    "del": SplitKind.SUM,
    "unlink": SplitKind.SUM,
    "exists": SplitKind.SUM,
    "touch": SplitKind.SUM,
}

_FANOUT_BY_NAME: dict[str, Agg] = {
    "keys": Agg.CONCAT,
    "randomkey": Agg.RANDOM,
    "info": Agg.INFO,
    "pubsub|channels": Agg.UNION,
    "pubsub|shardchannels": Agg.UNION,
    "pubsub|numsub": Agg.PAIRS_SUM,
    "pubsub|shardnumsub": Agg.PAIRS_SUM,
    "pubsub|numpat": Agg.SUM,
}

_AGG_BY_TIP: dict[str, Agg] = {
    "agg_sum": Agg.SUM,
    "all_succeeded": Agg.ALL_OK,
    "one_succeeded": Agg.ONE_OK,
    "agg_logical_and": Agg.AND,
    "agg_logical_or": Agg.OR,
    "agg_min": Agg.MIN,
    "agg_max": Agg.MAX,
}

# --------------------------------------------------------------------------- messages


def _show(arg: bytes, limit: int = _MAX_KEY_TEXT) -> str:
    text = arg[:limit].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() and c not in "\r\n" else "?" for c in text)
    return text + ("..." if len(arg) > limit else "")


def crossslot_message(command: bytes, keys: Sequence[bytes]) -> bytes:
    """A CROSSSLOT error text that names each key's slot and suggests a hash tag.

    It starts like Redis's own (``CROSSSLOT Keys in request don't hash to the same slot``), so
    clients that match on it keep working.
    """
    shown = [f"'{_show(k)}' is in slot {key_slot(k)}" for k in keys[:_MAX_SHOWN_KEYS]]
    if len(keys) > _MAX_SHOWN_KEYS:
        shown.append(f"and {len(keys) - _MAX_SHOWN_KEYS} more")
    name = _show(command, 32).upper()
    text = (
        f"CROSSSLOT Keys in request don't hash to the same slot ({', '.join(shown)}): "
        f"through a cluster, {name} needs all its keys in one slot; give them a common "
        "hash tag, such as {user1}:a and {user1}:b"
    )
    return text.encode()


def _error(text: str) -> Reject:
    return Reject(text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace"))


def _unroutable(exc: UnroutableError) -> Reject:
    text = str(exc)
    return _error(text if text.startswith(("ERR ", "CROSSSLOT ")) else "ERR " + text)


# --------------------------------------------------------------------------- request framing


#: Header lines (``*3``, ``$12``) seen so far -> (the number, the bytes a bulk of that size
#: takes with its header and both CR LF). Bounded; a canonical header is checked once.
_HEADS: dict[bytes, tuple[int, int]] = {}
_MAX_HEADS = 1 << 16


def _header(line: bytes) -> tuple[int, int] | None:
    """``(n, n + len(line) + 4)`` for a canonical ``?<digits>`` line (no sign, no leading
    zero), else None; remembered in ``_HEADS`` (the first byte is checked by the caller)."""
    digits = line[1:]
    if not digits.isdigit() or (digits[0] == 48 and len(digits) > 1):
        return None
    n = int(digits)
    hit = (n, n + len(line) + 4)
    if len(_HEADS) < _MAX_HEADS:
        _HEADS[line] = hit
    return hit


def split_requests(data: bytes) -> tuple[list[tuple[list[bytes], int, int]], int]:
    """The plain commands at the start of ``data``, with their byte spans (the smart hot path).

    Returns ``([(args, start, end), ...], used)``: each command's arguments and where its frame
    lies in ``data``, and how many bytes they cover. It stops, without error, at the first
    thing it does not handle: a partial frame, an inline command, a bulk that holds CR LF, a
    number with a sign or a leading zero, an empty array. The caller then feeds
    ``data[used:]`` to :class:`client.resp.RespParser`, which handles (or rejects) the rest.
    So this accepts a strict subset of what the parser accepts, and means the same by it;
    its gain is that one ``bytes.split`` does the line search for a whole chunk, that header
    lines are checked once (``_HEADS``), and that a frame's own bytes can be forwarded instead
    of encoding its arguments again.
    """
    lines = data.split(b"\r\n")
    complete = len(lines) - 1  # the last piece is not ended by CR LF
    out: list[tuple[list[bytes], int, int]] = []
    append = out.append
    heads = _HEADS
    i = 0
    used = 0
    while i < complete:
        head = lines[i]
        hit = heads.get(head) or _header(head)
        if hit is None or head[0] != 42 or not hit[0]:  # '*', and not an empty array
            break
        j = i + 1 + 2 * hit[0]
        if j > complete:
            break
        end = used + len(head) + 2
        args = lines[i + 2 : j : 2]
        k = i + 1
        for value in args:
            bulk = lines[k]
            hit = heads.get(bulk) or _header(bulk)
            if hit is None or bulk[0] != 36 or len(value) != hit[0]:  # '$', and its size
                return out, used
            end += hit[1]
            k += 2
        append((args, used, end))
        used = end
        i = j
    return out, used


_LINE_REPLIES = frozenset(b"+-:_,#(")


def split_replies(data: bytes) -> tuple[list[int], int]:
    """Where the simple reply frames at the start of ``data`` end (the smart hot path).

    Returns ``(ends, used)``: the end offset of each frame (a frame starts where the previous
    one ended) and the bytes they cover. Handles one-line replies (``+ - : _ , # (``) and bulk
    strings whose payload holds no CR LF, which is what nearly every reply to a pipeline of
    GET/SET-like commands is; it stops at anything else (an aggregate, a partial frame, ...),
    where :class:`client.resp.FrameScanner` takes over with ``data[used:]``.
    """
    lines = data.split(b"\r\n")
    complete = len(lines) - 1
    ends: list[int] = []
    append = ends.append
    line_kinds = _LINE_REPLIES
    i = 0
    end = 0
    while i < complete:
        line = lines[i]
        if not line:
            break
        kind = line[0]
        if kind in line_kinds:
            end += len(line) + 2
            i += 1
        elif kind == 36:  # $
            size = line[1:]
            if size == b"-1":
                end += 5
                i += 1
            elif (
                i + 1 < complete
                and size.isdigit()
                and (size[0] != 48 or len(size) == 1)
                and len(lines[i + 1]) == int(size)
            ):
                end += len(line) + len(lines[i + 1]) + 4
                i += 2
            else:
                break
        else:
            break
        append(end)
    return ends, end


# --------------------------------------------------------------------------- the router


def _block_requested(args: Sequence[bytes]) -> bool:
    """XREAD/XREADGROUP: a BLOCK option before STREAMS (key names after it do not count)."""
    for arg in args[1:]:
        low = arg.lower()
        if low == b"streams":
            return False
        if low == b"block":
            return True
    return False


def _int_arg(arg: bytes) -> int | None:
    try:
        return int(arg)
    except ValueError:
        return None


class Router:
    """Routes client commands with a :class:`~client.commands.CommandTable`.

    The per-name handlers are built on first use and cached (bounded: a client sending random
    capitalisations cannot grow the cache without limit).
    """

    __slots__ = ("_cache", "_subcache", "_table")

    def __init__(self, table: CommandTable) -> None:
        self._table = table
        self._cache: dict[bytes, Handler] = {}
        self._subcache: dict[tuple[bytes, bytes], Handler] = {}

    @property
    def table(self) -> CommandTable:
        return self._table

    def route(self, args: Sequence[bytes]) -> Plan:
        """The plan for one command (``args[0]`` is its name). Never raises."""
        if not args:
            return _error("ERR empty command")
        handler = self._cache.get(args[0])
        if handler is None:
            handler = self._handler(args)
            if handler is None:
                return self._resolve(args)
            if len(self._cache) < _MAX_CACHE:
                self._cache[args[0]] = handler
        return handler(args)

    # -- building handlers

    def _handler(self, args: Sequence[bytes]) -> Handler | None:
        """A cached handler for this command name, or None when it depends on more than the
        name (containers: the subcommand decides)."""
        spec = self._table.lookup(args[:1])
        if spec is None or spec.is_container:
            return None
        return self._compile(spec)

    def _resolve(self, args: Sequence[bytes]) -> Plan:
        """Containers (CLIENT, CLUSTER, CONFIG, ...) and unknown commands."""
        pair = (args[0], args[1]) if len(args) > 1 else (args[0], b"")
        handler = self._subcache.get(pair)
        if handler is not None:
            return handler(args)
        if len(args) > 1:
            extra = _LOCAL_EXTRA.get((args[0].lower(), args[1].lower()))
            if extra is not None:
                return Local(extra)
        spec = self._table.lookup(args)
        if spec is None:
            if len(args[0]) == 6 and args[0].lower() == b"tunnel":
                return Local(LocalKind.TUNNEL)  # not a Redis command: the tunnel's own
            try:
                self._table.key_indexes(args)
            except UnroutableError as exc:
                return _unroutable(exc)
            return _error(f"ERR unknown command '{_show(args[0], 128)}'")  # pragma: no cover
        handler = self._compile(spec)
        if len(self._subcache) < _MAX_CACHE:
            self._subcache[pair] = handler
        return handler(args)

    def _compile(self, spec: CommandSpec) -> Handler:
        name = spec.name
        local = _LOCAL.get(name)
        if local is not None:
            plan: Plan = Local(local)
            return self._checked(spec, lambda args: plan)
        why = _UNSUPPORTED.get(name)
        if why is not None:
            shown = spec.display_name
            rejected = _error(f"ERR {shown} is not supported through the smart tunnel: {why}")
            return lambda args: rejected
        if spec.container == "cluster":
            return self._cluster(spec)
        if name in _TXN:
            return self._txn(spec)
        if name in _PUBSUB:
            return self._pubsub(spec)
        if name == "publish":
            publish = Single(PUBSUB_SLOT, False, False)
            return self._checked(spec, lambda args: publish)
        if name == "wait":
            wait = Wait()
            return self._checked(spec, lambda args: wait)
        if name == "scan":
            return self._scan(spec)
        agg = _FANOUT_BY_NAME.get(name)
        if agg is None and not spec.has_keys and spec.request_policy in ("all_shards", "all_nodes"):
            agg = _AGG_BY_TIP.get(spec.response_policy or "")
        if agg is not None:
            fan = FanOut(agg, spec.readonly)
            return self._checked(spec, lambda args: fan)
        split = _SPLIT.get(name)
        if split is not None:
            return self._splittable(spec, split)
        if spec.blocking:
            return self._blocking(spec)
        return self._one_key(spec) or self._keyed(spec)

    def _one_key(self, spec: CommandSpec) -> Handler | None:
        """The hot path: exactly one key, at a fixed position (GET, SET, HSET, INCR, ...)."""
        specs = spec.key_specs
        if len(specs) != 1 or spec.movablekeys or spec.has_channels:
            return None
        only = specs[0]
        bs, fk = only.begin_search, only.find_keys
        if not (
            only.complete
            and bs.type == "index"
            and fk.type == "range"
            and fk.lastkey == 0
            and bs.index >= 1
        ):
            return None
        index = bs.index
        arity = spec.arity
        least = max(-arity if arity < 0 else arity, index + 1)
        exact = arity if arity >= 0 else -1
        singles = _singles(spec.readonly, spec.write)
        slow = self._keyed(spec)

        def handler(args: Sequence[bytes]) -> Plan:
            n = len(args)
            if n == exact or (exact < 0 and n >= least):
                key = args[index]
                if b"{" in key:
                    return singles[key_slot(key)]
                return singles[crc_hqx(key, 0) & _SLOT_MASK]  # key_slot without a hash tag
            return slow(args)  # the arity error, worded by the command table

        return handler

    def _checked(self, spec: CommandSpec, then: Handler) -> Handler:
        """Check the arity (what the server would) before a keyless plan."""
        shown = spec.name.replace("|", " ")
        arity_error = _error(f"ERR wrong number of arguments for '{shown}' command")

        def handler(args: Sequence[bytes]) -> Plan:
            if not spec.check_arity(len(args)):
                return arity_error
            return then(args)

        return handler

    def _slot_of(self, args: Sequence[bytes], spec: CommandSpec, channels: bool = False) -> Plan:
        """Single for the common slot of the keys, or the CROSSSLOT/unroutable Reject."""
        try:
            indexes = self._table.key_indexes(args, channels=channels)
        except UnroutableError as exc:
            return _unroutable(exc)
        if not indexes:
            return Single(ANY_SLOT, spec.readonly, spec.write)
        slot = key_slot(args[indexes[0]])
        for i in indexes[1:]:
            if key_slot(args[i]) != slot:
                return Reject(crossslot_message(args[0], [args[j] for j in indexes]))
        return Single(slot, spec.readonly, spec.write)

    def _keyed(self, spec: CommandSpec) -> Handler:
        table = self._table
        readonly = spec.readonly
        write = spec.write
        slot_of = self._slot_of
        channels = spec.has_channels  # SPUBLISH routes by its shard channel
        shown = spec.name.replace("|", " ")
        arity_error = _error(f"ERR wrong number of arguments for '{shown}' command")

        def handler(args: Sequence[bytes]) -> Plan:
            try:
                indexes = table.key_indexes(args, channels=channels)
            except UnroutableError as exc:
                return _unroutable(exc)
            if len(indexes) == 1:
                return Single(key_slot(args[indexes[0]]), readonly, write)
            if not indexes and not spec.check_arity(len(args)):
                return arity_error
            return slot_of(args, spec, channels)

        return handler

    def _splittable(self, spec: CommandSpec, kind: SplitKind) -> Handler:
        table = self._table
        readonly = spec.readonly
        write = spec.write
        pairs = kind is SplitKind.OK  # MSET: key value pairs

        def handler(args: Sequence[bytes]) -> Plan:
            try:
                indexes = table.key_indexes(args)
            except UnroutableError as exc:
                return _unroutable(exc)
            slots = [key_slot(args[i]) for i in indexes]
            first = slots[0]
            if all(s == first for s in slots):
                return Single(first, readonly, write)
            groups: dict[int, tuple[list[bytes], list[int]]] = {}
            head = args[0]
            for n, (i, slot) in enumerate(zip(indexes, slots, strict=True)):
                group = groups.get(slot)
                if group is None:
                    group = groups[slot] = ([head], [])
                group[0].append(args[i])
                if pairs:
                    group[0].append(args[i + 1])
                group[1].append(n)
            parts = tuple(
                SplitPart(slot, tuple(sub), tuple(pos)) for slot, (sub, pos) in groups.items()
            )
            return Split(kind, parts, len(indexes), readonly)

        return handler

    def _blocking(self, spec: CommandSpec) -> Handler:
        keyed = self._keyed(spec)
        readonly = spec.readonly
        stream_read = spec.name in ("xread", "xreadgroup")

        def handler(args: Sequence[bytes]) -> Plan:
            plan = keyed(args)
            if not isinstance(plan, Single):
                return plan
            if stream_read and not _block_requested(args):
                return plan
            return Blocking(plan.slot, readonly)

        return handler

    def _scan(self, spec: CommandSpec) -> Handler:
        def handler(args: Sequence[bytes]) -> Plan:
            if not spec.check_arity(len(args)):
                return _error("ERR wrong number of arguments for 'scan' command")
            cursor = _int_arg(args[1])
            if cursor is None or cursor < 0 or cursor >= 1 << 64 or not args[1].isdigit():
                return _error("ERR invalid cursor")
            return Scan(cursor, tuple(args[2:]))

        return handler

    def _txn(self, spec: CommandSpec) -> Handler:
        verb = spec.name
        if verb != "watch":
            plan = Txn(verb, ANY_SLOT)
            return self._checked(spec, lambda args: plan)

        def handler(args: Sequence[bytes]) -> Plan:
            found = self._slot_of(args, spec)
            if isinstance(found, Single):
                return Txn("watch", found.slot)
            return found

        return handler

    def _pubsub(self, spec: CommandSpec) -> Handler:
        verb = spec.name
        sharded = verb in ("ssubscribe", "sunsubscribe")

        def handler(args: Sequence[bytes]) -> Plan:
            if not spec.check_arity(len(args)):
                return _error(f"ERR wrong number of arguments for '{verb}' command")
            slot = ANY_SLOT
            if sharded and len(args) > 1:
                slot = key_slot(args[1])
                for channel in args[2:]:
                    if key_slot(channel) != slot:
                        return Reject(crossslot_message(args[0], list(args[1:])))
            return PubSub(verb, tuple(args[1:]), slot)

        return handler

    def _cluster(self, spec: CommandSpec) -> Handler:
        name = spec.name
        if name in _CLUSTER_BY_SLOT:

            def by_slot(args: Sequence[bytes]) -> Plan:
                if not spec.check_arity(len(args)):
                    shown = name.replace("|", " ")
                    return _error(f"ERR wrong number of arguments for '{shown}' command")
                slot = _int_arg(args[2])
                if slot is None or not 0 <= slot < 16384:
                    return _error("ERR Invalid slot")
                return Single(slot, True, False)

            return by_slot
        if name in _CLUSTER_ANY:
            return self._checked(spec, lambda args: Single(ANY_SLOT, True, False))
        shown = spec.display_name
        rejected = _error(
            f"ERR {shown} is not supported through the smart tunnel: the tunnel shows the "
            "cluster as one node; run it against a cluster node directly"
        )
        return lambda args: rejected
