"""Smart mode: the commands that give a client state on the nodes.

MULTI/EXEC/DISCARD/WATCH/UNWATCH (queued in the tunnel, run as one batch on the transaction's
node), (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE (pub/sub links owned by the session) and WAIT (on
every master the session wrote to). See :mod:`tunnel.smart` for the design; each function
takes the :class:`tunnel.session.Session` that received the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from client.resp import encode_command, encode_value
from client.slots import tag_for_slot
from client.values import Push, RespValue
from tunnel import merge
from tunnel.holders import (
    DEDICATED,
    MULTI,
    PUBSUB,
    SHARD,
    SUBSCRIBED,
    Confirm,
    ConfirmGather,
    ConfirmPart,
    Deferred,
    Exec,
    Item,
    WaitPart,
    error_frame,
)
from tunnel.route import ANY_SLOT, Agg, Blocking, Local, LocalKind, PubSub, Reject, Single, Txn

if TYPE_CHECKING:
    from tunnel.session import Session
    from tunnel.upstream import Link

__all__ = ["pubsub", "queue_in_txn", "subscribed", "transaction", "wait"]

_UNWATCH = encode_command(b"UNWATCH")
_WAIT_MARKER = b"redis.call('set', KEYS[1], '1') redis.call('del', KEYS[1]) return 1"


class TxnState:
    """A transaction being queued: its commands, its slot, whether EXEC will abort."""

    __slots__ = ("aborted", "commands", "slot")

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.slot = ANY_SLOT
        self.aborted = False


# --------------------------------------------------------------------------- transactions


def transaction(session: Session, plan: Txn, args: list[bytes]) -> None:
    """MULTI, EXEC, DISCARD, WATCH and UNWATCH."""
    verb = plan.verb
    txn = session.txn
    if verb == "multi":
        if txn is not None:
            txn.aborted = True
            session.reply(error_frame("ERR MULTI calls can not be nested"))
            return
        session.txn = TxnState()
        session.state |= MULTI
        session.reply_value(merge.OK)
    elif verb == "discard":
        if txn is None:
            session.reply(error_frame("ERR DISCARD without MULTI"))
            return
        _end_txn(session)
        session.reply_value(merge.OK)
    elif verb == "exec":
        if txn is None:
            session.reply(error_frame("ERR EXEC without MULTI"))
            return
        _exec(session, txn)
    elif verb == "watch":
        if txn is not None:
            txn.aborted = True
            session.reply(error_frame("ERR WATCH inside MULTI is not allowed"))
            return
        _watch(session, plan.slot, args)
    else:  # unwatch
        link = session.watch_link
        if link is None:
            session.reply_value(merge.OK)
            return
        session.watch_link = None
        item = Item(session, encode_command(b"UNWATCH"), plan.slot, True, session.resp3)
        session.enqueue(item)
        link.push(item, item.payload)


def _watch(session: Session, slot: int, args: list[bytes]) -> None:
    proxy = session.proxy
    up = proxy.owners[slot]
    if up is None:
        session.reply(error_frame(f"CLUSTERDOWN Hash slot {slot} not served"))
        return
    link = session.watch_link
    if link is not None and link.up is not up:
        session.reply(
            error_frame(
                "CROSSSLOT Keys in request don't hash to the same slot: the keys already "
                f"watched live on {link.up.address}, these on {up.address}; give them a "
                "common hash tag, such as {user1}:a and {user1}:b"
            )
        )
        return
    link = session.watch_link = session.dedicated_link(up)
    item = Item(session, encode_command(*args), slot, True, session.resp3, 1, DEDICATED)
    session.enqueue(item)
    link.push(item, item.payload)


def queue_in_txn(session: Session, args: list[bytes]) -> None:
    """A command between MULTI and EXEC: checked and queued in the tunnel (+QUEUED)."""
    txn = session.txn
    assert txn is not None
    plan = session.proxy.router.route(args)
    if isinstance(plan, Reject):
        txn.aborted = True
        session.reply(plan.frame)
        return
    slot = ANY_SLOT
    if isinstance(plan, Single | Blocking):
        slot = plan.slot
    elif isinstance(plan, Local) and plan.kind in (LocalKind.PING, LocalKind.ECHO):
        slot = ANY_SLOT
    else:
        txn.aborted = True
        shown = args[0].decode("utf-8", "replace").upper()
        session.reply(
            error_frame(
                f"ERR {shown} cannot run inside MULTI through the smart tunnel (a transaction "
                "runs on one cluster node; this command needs the tunnel or every node)"
            )
        )
        return
    if slot >= 0:
        if txn.slot >= 0 and txn.slot != slot:
            txn.aborted = True
            shown = args[0].decode("utf-8", "replace").upper()
            session.reply(
                error_frame(
                    "CROSSSLOT Keys in request don't hash to the same slot: through a "
                    f"cluster a transaction runs on one slot; its keys so far are in slot "
                    f"{txn.slot}, the keys of this {shown} in slot {slot}; give them a "
                    "common hash tag, such as {user1}:a and {user1}:b"
                )
            )
            return
        txn.slot = slot
    txn.commands.append(encode_command(*args))
    session.reply(b"+QUEUED\r\n")


def _end_txn(session: Session) -> None:
    session.txn = None
    session.state &= ~MULTI
    link = session.watch_link
    if link is not None:
        session.watch_link = None
        link.push_internal(b"UNWATCH", _UNWATCH)


def _exec(session: Session, txn: TxnState) -> None:
    watched = session.watch_link is not None
    link = session.watch_link
    session.txn = None
    session.state &= ~MULTI
    session.watch_link = None
    if txn.aborted:
        if link is not None:
            link.push_internal(b"UNWATCH", _UNWATCH)
        session.reply(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
        return
    payload = b"".join([encode_command(b"MULTI"), *txn.commands, encode_command(b"EXEC")])
    slot = txn.slot if txn.slot >= 0 else session.home_slot
    item = Exec(session, payload, slot, len(txn.commands), watched)
    session.enqueue(item)
    session.sticky = True  # the transaction may have written
    up = session.proxy.owners[slot]
    if up is not None:
        session.written.add(up)
    if link is not None:
        link.push(item, payload)
    else:
        session.proxy.submit(item)


# --------------------------------------------------------------------------- pub/sub


def _confirm_locally(session: Session, verb: bytes, channels: Sequence[bytes], count: int) -> None:
    frames = []
    names: list[bytes | None] = list(channels) or [None]
    for channel in names:
        body: list[RespValue] = [verb, channel, count]
        frames.append(encode_value(Push(body) if session.resp3 else body, resp3=session.resp3))
    session.reply(b"".join(frames))


def subscribed(session: Session) -> None:
    """Follow the subscriptions: a RESP2 client with any may only run pub/sub commands."""
    total = len(session.channels) + len(session.patterns) + len(session.shard_channels)
    if total and not session.resp3:
        session.state |= SUBSCRIBED
    else:
        session.state &= ~SUBSCRIBED


def pubsub(session: Session, plan: PubSub, args: list[bytes]) -> None:
    """(P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE."""
    verb = plan.verb
    channels = plan.channels
    payload = encode_command(*args)
    if verb in ("subscribe", "psubscribe"):
        target = session.channels if verb == "subscribe" else session.patterns
        target.update(channels)
        _send_confirm(session, session.pubsub_link(), payload, len(channels))
    elif verb in ("unsubscribe", "punsubscribe"):
        target = session.channels if verb == "unsubscribe" else session.patterns
        count = len(channels) or max(1, len(target))
        if channels:
            target.difference_update(channels)
        else:
            target.clear()
        if session.pubsub is None:
            left = len(session.channels) + len(session.patterns)
            _confirm_locally(session, verb.encode(), channels, left)
        else:
            _send_confirm(session, session.pubsub, payload, count)
    elif verb == "ssubscribe":
        up = session.proxy.owners[plan.slot]
        if up is None:
            session.reply(error_frame(f"CLUSTERDOWN Hash slot {plan.slot} not served"))
            return
        item = Confirm(session, payload, plan.slot, len(channels), SHARD, channels)
        _queue_confirm(session, item)
        session.proxy.send(item, up, payload)
    else:
        _sunsubscribe(session, channels)
    subscribed(session)


def _send_confirm(session: Session, link: Link, payload: bytes, count: int) -> None:
    item = Confirm(session, payload, ANY_SLOT, count, PUBSUB)
    _queue_confirm(session, item)
    link.push(item, payload)


def _queue_confirm(session: Session, item: Item) -> None:
    session.confirms_queued += 1
    session.enqueue(item)


def _sunsubscribe(session: Session, channels: Sequence[bytes]) -> None:
    groups: dict[int, tuple[Link, list[bytes]]] = {}
    if channels:
        unknown = []
        for channel in channels:
            link = session.shard_channels.pop(channel, None)
            if link is None:
                unknown.append(channel)
                continue
            groups.setdefault(id(link), (link, []))[1].append(channel)
        if unknown and not groups:
            _confirm_locally(session, b"sunsubscribe", unknown, len(session.shard_channels))
            return
    else:
        for channel, link in session.shard_channels.items():
            groups.setdefault(id(link), (link, []))[1].append(channel)
        session.shard_channels.clear()
        if not groups:
            _confirm_locally(session, b"sunsubscribe", (), 0)
            return
    gather = ConfirmGather(session, len(groups), None, session.resp3)
    _queue_confirm(session, gather)
    for index, (link, names) in enumerate(groups.values()):
        args = [b"SUNSUBSCRIBE", *names] if channels else [b"SUNSUBSCRIBE"]
        payload = encode_command(*args)
        part = ConfirmPart(
            gather, index, payload, ANY_SLOT, True, expect=len(names), link_kind=SHARD
        )
        link.push(part, payload)


# --------------------------------------------------------------------------- WAIT


def wait(session: Session, args: list[bytes]) -> None:
    """WAIT, on every master the session wrote to since its last WAIT."""
    try:
        replicas = int(args[1])
        timeout = int(args[2])
    except ValueError:
        session.reply(error_frame("ERR value is not an integer or out of range"))
        return
    if timeout < 0:
        session.reply(error_frame("ERR timeout is negative"))
        return
    written = session.written
    session.written = set()
    session.wrote = None
    wait_payload = encode_command(b"WAIT", b"%d" % replicas, b"%d" % timeout)

    def start(gather: Deferred) -> None:
        proxy = session.proxy
        targets = [up for up in written if proxy.start_for(up) is not None]
        if not targets:
            home = proxy.owners[session.home_slot]
            targets = [home] if home is not None else []
        if not targets:
            gather.ready(error_frame("CLUSTERDOWN the cluster has no master"))
            return
        gather.results = [b""] * len(targets)
        gather.remaining = len(targets)
        gather.raw = False
        gather.combine = lambda values: merge.merge_fanout(Agg.MIN, values)
        for index, up in enumerate(targets):
            start_slot = proxy.start_for(up) or 0
            key = b"__redis_client_wait__{" + tag_for_slot(start_slot).encode() + b"}"
            marker = encode_command(b"EVAL", _WAIT_MARKER, b"1", key)
            part = WaitPart(
                gather,
                index,
                marker + wait_payload,
                start_slot,
                True,
                expect=2,
                link_kind=DEDICATED,
                last=True,
            )
            proxy.send(part, up, part.payload)

    deferred = Deferred(session, start, session.resp3)
    session.enqueue(deferred)
    if session.queue[0] is deferred:  # nothing before it: start now
        deferred.begin()
