"""Reading from replicas: the ``read_from`` policy, replica choice and replica health (pure).

The cluster client (:mod:`client.cluster`) and, later, the smart tunnel route read-only
commands (the command table's ``readonly`` flag) to replicas when asked to. Everything that
decides *which* replica, and *whether* a replica may be used at all, lives here, without I/O:
the caller passes the time (``now``, any monotonic clock) and reports what happened.

Policies (:data:`ReadFrom`)
---------------------------
``master``          every command goes to the slot's master (the default; reads see every
                    acknowledged write).
``replica``         read-only commands go to a healthy replica of the slot's master; when the
                    shard has none, the read fails with :class:`NoReplicaError`. Writes go to
                    the master.
``prefer-replica``  like ``replica``, but a read falls back to the master when the shard has
                    no healthy replica.

Replica reads are eventually consistent: a replica applies its master's writes
asynchronously, so a read may miss a write acknowledged a moment ago (also the caller's own).
Read-your-writes is the caller's business (send such reads with ``read_from="master"``).

Choosing a replica: least in-flight, then round robin
-----------------------------------------------------
Among the healthy replicas of a shard, :meth:`ReplicaTracker.pick` takes the one with the
fewest reads in flight (the caller brackets each read with :meth:`~ReplicaTracker.start_read`
and :meth:`~ReplicaTracker.end_read`); ties, which is every read of a caller that waits for
each reply, rotate round robin per shard. A slow replica thus gets fewer reads.

Health: a state machine per replica
-----------------------------------
States (:class:`State`) and inputs (:class:`Signal`) are the table :data:`TRANSITIONS`; a
pair not in the table leaves the state unchanged.

===========  =================  ===========================================================
state        in rotation        meaning
===========  =================  ===========================================================
NEW          no                 just seen in the topology, never probed
PROBING      no                 a probe (``INFO replication`` + ``INFO persistence``) runs
UP           yes                the last probe passed and nothing failed since
CHECKING     yes                UP, with a periodic probe running
DOWN         no                 failed; probed again at ``retry_at`` (backoff)
===========  =================  ===========================================================

* Rule 1: a replica enters the rotation only through a passed probe. A probe passes when the
  node answers, says ``role:slave``, ``master_link_status:up``, ``master_sync_in_progress:0``
  and ``loading:0`` (:func:`read_probe`).
* Rule 2: a probe that started before the replica's latest failure cannot bring it back (its
  result is ``STALE``: the replica stays out and is probed again after the backoff).
* Rule 3: a replica leaves the rotation (``FAILED``) when a read on it fails to connect or
  loses its connection, when it answers ``-LOADING``, when the topology flags it ``fail``,
  ``pfail`` or ``loading`` (on the change of flag only, so a passed probe wins over a flag
  that the cluster has not cleared yet), or when its oldest read in flight is older than
  ``stall_after`` seconds (a hung node: checked on every :meth:`~ReplicaTracker.pick`).
* Rule 4: backoff. Each time a replica leaves the rotation or fails a probe, the next probe
  waits ``first_backoff`` seconds, doubling up to ``max_backoff``; a passed probe resets it.
  A topology that shows a DOWN replica ``online`` again makes it due at once.
* Probes are run by the caller: :meth:`~ReplicaTracker.take_due` hands out the probes due
  (NEW, DOWN past ``retry_at``, UP asked for a check by :meth:`~ReplicaTracker.request_checks`)
  and :meth:`~ReplicaTracker.probe_done` takes the verdict. :attr:`~ReplicaTracker.version`
  changes whenever a probe may have become due earlier, so a prober task knows when to wake.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from client.errors import ConfigError, UnroutableError
from client.topology import Node, Topology
from client.values import Attributed, ErrorReply, RespValue, Verbatim

__all__ = [
    "READ_FROM_CHOICES",
    "TRANSITIONS",
    "NoReplicaError",
    "Probe",
    "ProbeVerdict",
    "ReadFrom",
    "ReplicaStatus",
    "ReplicaTracker",
    "Signal",
    "State",
    "parse_read_from",
    "read_probe",
]

ReadFrom = Literal["master", "replica", "prefer-replica"]

#: The accepted ``read_from`` values, in the order help texts list them.
READ_FROM_CHOICES: tuple[ReadFrom, ...] = ("master", "replica", "prefer-replica")


def parse_read_from(text: str) -> ReadFrom:
    """``'master'``, ``'replica'`` or ``'prefer-replica'`` (case-insensitive, ``_`` for ``-``).

    Raises:
        ConfigError: any other text.
    """
    value = text.strip().lower().replace("_", "-")
    for choice in READ_FROM_CHOICES:
        if value == choice:
            return choice
    raise ConfigError(
        f"--read-from {text!r} is not one of master, replica, prefer-replica",
        hint="master: all commands on masters; replica: reads on replicas only; "
        "prefer-replica: reads on replicas, the master when none is healthy",
    )


class NoReplicaError(UnroutableError):
    """``read_from="replica"`` and the shard has no healthy replica to read from.

    Attributes:
        master: the master whose replicas were asked for.
    """

    def __init__(
        self, message: str, *, master: Node | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.master = master


# -- the state machine ----------------------------------------------------------------------


class State(enum.Enum):
    NEW = "new"
    PROBING = "probing"
    UP = "up"
    CHECKING = "checking"
    DOWN = "down"

    @property
    def in_rotation(self) -> bool:
        return self is State.UP or self is State.CHECKING


class Signal(enum.Enum):
    PROBE_START = "probe-start"
    PROBE_OK = "probe-ok"
    PROBE_FAILED = "probe-failed"
    PROBE_STALE = "probe-stale"  # passed, but started before the latest failure (Rule 2)
    FAILED = "failed"


#: (state, input) -> next state; pairs not listed leave the state as it is.
TRANSITIONS: dict[tuple[State, Signal], State] = {
    (State.NEW, Signal.PROBE_START): State.PROBING,
    (State.DOWN, Signal.PROBE_START): State.PROBING,
    (State.UP, Signal.PROBE_START): State.CHECKING,
    (State.PROBING, Signal.PROBE_OK): State.UP,
    (State.CHECKING, Signal.PROBE_OK): State.UP,
    (State.PROBING, Signal.PROBE_FAILED): State.DOWN,
    (State.CHECKING, Signal.PROBE_FAILED): State.DOWN,
    (State.PROBING, Signal.PROBE_STALE): State.DOWN,
    (State.CHECKING, Signal.PROBE_STALE): State.DOWN,
    (State.NEW, Signal.FAILED): State.DOWN,
    (State.UP, Signal.FAILED): State.DOWN,
    (State.CHECKING, Signal.FAILED): State.PROBING,  # the running probe's result is now stale
}


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What a probe found. ``promoted``: the node says it is a master (the map is stale)."""

    ok: bool
    reason: str = ""
    promoted: bool = False


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe handed out by :meth:`ReplicaTracker.take_due`; give it back to ``probe_done``."""

    node: Node
    epoch: int


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica as the tracker sees it (for statistics, dashboards and error messages).

    Attributes:
        state: ``new``, ``probing``, ``up``, ``checking`` or ``down``.
        reason: why it is out of the rotation (or was, last): ``""`` when it never failed.
        reads: reads it answered.
        in_flight: reads sent and not answered yet.
        failures: consecutive failures (probes and reads) since the last passed probe.
        retry_at: when a DOWN replica is probed next.
    """

    node: Node
    state: str
    reason: str
    reads: int
    in_flight: int
    failures: int
    retry_at: float | None

    @property
    def in_rotation(self) -> bool:
        return self.state in ("up", "checking")

    def describe(self) -> str:
        """``up`` or ``down (why)``: one short phrase."""
        if self.in_rotation:
            return "up"
        if self.state == "new":
            return "not probed yet"
        if self.state == "probing" and not self.reason:
            return "being probed"
        return f"{self.state} ({self.reason})" if self.reason else self.state


@dataclass(slots=True)
class _Entry:
    node: Node
    state: State = State.NEW
    reason: str = ""
    failures: int = 0
    retry_at: float | None = None
    check: bool = False
    epoch: int = 0
    reads: int = 0
    health: str | None = None  # the topology's health flag at the last sync
    alive_since: float = float("-inf")  # reads older than this do not count as stalled
    flights: dict[int, float] = field(default_factory=dict)  # token -> start, oldest first


class ReplicaTracker:
    """Health and choice of the replicas of one cluster (see the module docs).

    Args:
        stall_after: a replica whose oldest read in flight is older than this (seconds)
            leaves the rotation.
        first_backoff, max_backoff: re-probe delays of a failed replica (seconds).
    """

    def __init__(
        self, *, stall_after: float = 5.0, first_backoff: float = 0.5, max_backoff: float = 15.0
    ) -> None:
        if stall_after <= 0 or first_backoff <= 0 or max_backoff < first_backoff:
            raise ValueError("stall_after and the backoffs must be positive (max >= first)")
        self.stall_after = stall_after
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        #: Changes whenever a probe may have become due earlier than announced.
        self.version = 0
        self._entries: dict[str, _Entry] = {}
        self._tokens: dict[int, str] = {}  # read token -> node id
        self._next_token = 0
        self._turns: dict[str, int] = {}  # round-robin cursor per master id

    # -- topology ------------------------------------------------------------------------------

    def sync(self, topology: Topology, now: float) -> None:
        """Follow the topology: new replicas are NEW, gone ones are forgotten, flags apply."""
        seen: set[str] = set()
        for node in topology.replicas():
            seen.add(node.id)
            entry = self._entries.get(node.id)
            if entry is None:
                entry = self._entries[node.id] = _Entry(node)
                self.version += 1
            entry.node = node
            if node.health == entry.health:
                continue
            entry.health = node.health
            if node.health == "fail":
                self._apply(entry, Signal.FAILED, now, "flagged failed by the cluster")
            elif node.health == "pfail":
                self._apply(entry, Signal.FAILED, now, "suspected failing by the cluster")
            elif node.health == "loading":
                self._apply(entry, Signal.FAILED, now, "loading its dataset")
            elif entry.state is State.DOWN:
                entry.retry_at = now  # the cluster sees it again: probe now
                self.version += 1
        for node_id in [i for i in self._entries if i not in seen]:
            del self._entries[node_id]

    def request_checks(self) -> None:
        """Ask for a probe of every replica in the rotation (the periodic check)."""
        for entry in self._entries.values():
            if entry.state is State.UP and not entry.check:
                entry.check = True
                self.version += 1

    # -- choosing --------------------------------------------------------------------------------

    def pick(
        self, replicas: Sequence[Node], now: float, *, avoid: Collection[str] = ()
    ) -> Node | None:
        """A healthy replica among ``replicas`` (least in flight, then round robin), or None.

        Replicas whose oldest read in flight is older than ``stall_after`` leave the rotation
        here (Rule 3). ``avoid``: node IDs not to pick (say, those that just failed a read).
        """
        candidates: list[tuple[Node, _Entry]] = []
        for node in replicas:
            if node.id in avoid:
                continue
            entry = self._entries.get(node.id)
            if entry is None or not entry.state.in_rotation:
                continue
            if entry.flights:
                oldest = max(next(iter(entry.flights.values())), entry.alive_since)
                if now - oldest > self.stall_after:
                    reason = f"no reply for {self.stall_after:g} s"
                    self._apply(entry, Signal.FAILED, now, reason)
                    continue
            candidates.append((node, entry))
        if not candidates:
            return None
        least = min(len(e.flights) for _, e in candidates)
        ties = [n for n, e in candidates if len(e.flights) == least]
        shard = candidates[0][0].master_id or ""
        turn = self._turns.get(shard, 0)
        self._turns[shard] = turn + 1
        return ties[turn % len(ties)]

    def usable(self, node_id: str) -> bool:
        """True when the replica is in the rotation (no stall check)."""
        entry = self._entries.get(node_id)
        return entry is not None and entry.state.in_rotation

    # -- reads -----------------------------------------------------------------------------------

    def start_read(self, node: Node, now: float) -> int:
        """Count a read sent to ``node``; returns the token for :meth:`end_read`."""
        self._next_token += 1
        token = self._next_token
        entry = self._entries.get(node.id)
        if entry is not None:
            entry.flights[token] = now
            self._tokens[token] = node.id
        return token

    def end_read(self, token: int, *, served: bool) -> None:
        """The read of ``token`` is over; ``served``: the replica answered it (count it)."""
        node_id = self._tokens.pop(token, None)
        entry = self._entries.get(node_id) if node_id is not None else None
        if entry is None:
            return
        entry.flights.pop(token, None)
        if served:
            entry.reads += 1

    def failed(self, node_id: str, reason: str, now: float) -> None:
        """A read on the replica failed (connect error, lost connection, LOADING): Rule 3."""
        entry = self._entries.get(node_id)
        if entry is not None:
            self._apply(entry, Signal.FAILED, now, reason)

    # -- probes ----------------------------------------------------------------------------------

    def take_due(self, now: float, *, only: Collection[str] | None = None) -> list[Probe]:
        """The probes to run now (they start: NEW/DOWN become PROBING, UP becomes CHECKING)."""
        probes: list[Probe] = []
        for entry in self._entries.values():
            if only is not None and entry.node.id not in only:
                continue
            state = entry.state
            due = (
                state is State.NEW
                or (state is State.DOWN and (entry.retry_at is None or entry.retry_at <= now))
                or (state is State.UP and entry.check)
            )
            if due:
                entry.check = False
                self._apply(entry, Signal.PROBE_START, now)
                probes.append(Probe(entry.node, entry.epoch))
        return probes

    def probe_done(self, probe: Probe, verdict: ProbeVerdict, now: float) -> None:
        """Apply a probe's verdict (Rules 1 and 2)."""
        entry = self._entries.get(probe.node.id)
        if entry is None:
            return
        if not verdict.ok:
            self._apply(entry, Signal.PROBE_FAILED, now, verdict.reason)
        elif probe.epoch != entry.epoch:
            self._apply(entry, Signal.PROBE_STALE, now)
        else:
            self._apply(entry, Signal.PROBE_OK, now)

    def probing(self, node_ids: Iterable[str]) -> bool:
        """True while a probe runs for one of ``node_ids`` that is out of the rotation."""
        for node_id in node_ids:
            entry = self._entries.get(node_id)
            if entry is not None and entry.state is State.PROBING:
                return True
        return False

    def next_due(self) -> float | None:
        """When the next probe is due (None: nothing is waiting for one)."""
        times: list[float] = []
        for entry in self._entries.values():
            if entry.state is State.NEW or (entry.state is State.UP and entry.check):
                return float("-inf")
            if entry.state is State.DOWN:
                times.append(entry.retry_at if entry.retry_at is not None else float("-inf"))
        return min(times) if times else None

    # -- views -----------------------------------------------------------------------------------

    def status(self, node_id: str) -> ReplicaStatus | None:
        entry = self._entries.get(node_id)
        return _status(entry) if entry is not None else None

    def statuses(self) -> list[ReplicaStatus]:
        """Every known replica, in topology order of the last sync."""
        return [_status(e) for e in self._entries.values()]

    def explain(
        self,
        replicas: Sequence[Node],
        *,
        avoid: Collection[str] = (),
        name: Callable[[Node], str] | None = None,
    ) -> str:
        """Why none of ``replicas`` can serve a read: one phrase per replica.

        ``name`` shows a node (default: its announced address).
        """
        if not replicas:
            return "it has no replicas"
        parts: list[str] = []
        for node in replicas:
            shown = name(node) if name is not None else node.address
            entry = self._entries.get(node.id)
            if node.id in avoid and entry is not None and entry.state.in_rotation:
                parts.append(f"{shown} just failed a read")
            elif entry is None:
                parts.append(f"{shown} not probed yet")
            else:
                parts.append(f"{shown} {_status(entry).describe()}")
        return "; ".join(parts)

    # -- internals -------------------------------------------------------------------------------

    def _apply(self, entry: _Entry, signal: Signal, now: float, reason: str = "") -> None:
        old = entry.state
        new = TRANSITIONS.get((old, signal), old)
        if signal is Signal.FAILED:
            entry.epoch += 1
            if old in (State.NEW, State.UP, State.CHECKING):
                self._fail(entry, now, reason)
        elif signal is Signal.PROBE_FAILED and old in (State.PROBING, State.CHECKING):
            self._fail(entry, now, reason)
        elif signal is Signal.PROBE_STALE and new is State.DOWN:
            self._schedule(entry, now)
        elif signal is Signal.PROBE_OK and new is State.UP:
            entry.failures = 0
            entry.reason = ""
            entry.retry_at = None
            entry.alive_since = now
        entry.state = new

    def _fail(self, entry: _Entry, now: float, reason: str) -> None:
        entry.failures += 1
        entry.reason = reason or "failed"
        entry.check = False
        self._schedule(entry, now)

    def _schedule(self, entry: _Entry, now: float) -> None:
        delay = self.first_backoff * 2 ** min(max(entry.failures - 1, 0), 30)
        entry.retry_at = now + min(delay, self.max_backoff)
        self.version += 1


def _status(entry: _Entry) -> ReplicaStatus:
    return ReplicaStatus(
        node=entry.node,
        state=entry.state.value,
        reason=entry.reason,
        reads=entry.reads,
        in_flight=len(entry.flights),
        failures=entry.failures,
        retry_at=entry.retry_at if entry.state is State.DOWN else None,
    )


# -- probe replies ------------------------------------------------------------------------------


def _info_fields(value: RespValue) -> dict[str, str] | str:
    """INFO text as a dict, or the reason it cannot be read."""
    while isinstance(value, Attributed):
        value = value.value
    if isinstance(value, ErrorReply):
        if value.kind == "LOADING":
            return "loading its dataset (LOADING)"
        return f"INFO failed: {value.text}"
    if isinstance(value, Verbatim):
        value = value.text
    if not isinstance(value, bytes):
        return f"unexpected INFO reply {type(value).__name__}"
    fields: dict[str, str] = {}
    for line in value.decode("utf-8", "replace").splitlines():
        key, sep, rest = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = rest.strip()
    return fields


def read_probe(replication: RespValue, persistence: RespValue) -> ProbeVerdict:
    """Judge a replica from its ``INFO replication`` and ``INFO persistence`` replies."""
    repl = _info_fields(replication)
    if isinstance(repl, str):
        return ProbeVerdict(False, repl)
    role = repl.get("role", "")
    if role == "master":
        return ProbeVerdict(False, "it is a master now", promoted=True)
    if role != "slave":
        return ProbeVerdict(False, f"role {role or 'unknown'} in INFO replication")
    link = repl.get("master_link_status", "")
    if link != "up":
        return ProbeVerdict(False, f"master_link_status:{link or 'missing'}")
    if repl.get("master_sync_in_progress", "0") != "0":
        return ProbeVerdict(False, "syncing with its master")
    pers = _info_fields(persistence)
    if isinstance(pers, str):
        return ProbeVerdict(False, pers)
    if pers.get("loading", "0") != "0" or pers.get("async_loading", "0") != "0":
        return ProbeVerdict(False, "loading its dataset")
    return ProbeVerdict(True)
