"""Smart mode: the commands a client session answers itself (route.Local plans).

PING, ECHO, SELECT, QUIT, RESET, AUTH and HELLO (checked against ``--local-password``, with
the protocol negotiated per client), CLIENT ID/SETNAME/GETNAME/INFO/LIST/SETINFO/REPLY, the
one-node cluster view (CLUSTER SLOTS/SHARDS/NODES/INFO/MYID/KEYSLOT/REPLICAS) and ``TUNNEL
INFO``/``TUNNEL HELP`` (the statistics, see :mod:`tunnel.stats`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from client.values import ErrorReply, RespValue, SimpleString, Verbatim
from tunnel import merge
from tunnel.holders import CLOSING, MUTED, NEED_AUTH
from tunnel.route import LocalKind
from tunnel.stats import tunnel_reply

if TYPE_CHECKING:
    from tunnel.session import Session

__all__ = ["answer", "info_line", "reset"]

_HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    b"HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    b"select the RESP protocol version at the same time\r\n"
)
_NO_STATS = (
    b"-ERR this tunnel keeps no statistics: start it with --stats or --dashboard to have "
    b"TUNNEL INFO\r\n"
)


def answer(session: Session, kind: LocalKind, args: list[bytes]) -> None:
    """Answer a command the tunnel handles itself (route.Local)."""
    proxy = session.proxy
    me = proxy.me
    value: RespValue
    if kind is LocalKind.PING:
        value = merge.PONG if len(args) == 1 else args[1]
    elif kind is LocalKind.ECHO:
        value = args[1]
    elif kind is LocalKind.OK:
        value = merge.OK
    elif kind is LocalKind.SELECT:
        value = merge.parse_select(args) or merge.OK
    elif kind is LocalKind.QUIT:
        session.reply_value(merge.OK)
        session.state |= CLOSING
        return
    elif kind is LocalKind.RESET:
        reset(session)
        value = SimpleString(b"RESET")
    elif kind is LocalKind.AUTH:
        value = _auth(session, args)
    elif kind is LocalKind.HELLO:
        _hello(session, args)
        return
    elif kind is LocalKind.CLIENT_ID:
        value = session.id
    elif kind is LocalKind.CLIENT_SETNAME:
        name = merge.parse_setname(args[2])
        if isinstance(name, bytes):
            session.name = name
            value = merge.OK
        else:
            value = name
    elif kind is LocalKind.CLIENT_GETNAME:
        value = session.name or None
    elif kind is LocalKind.CLIENT_INFO:
        value = Verbatim(b"txt", info_line(session))
    elif kind is LocalKind.CLIENT_LIST:
        lines = b"".join(info_line(s) for s in proxy.sessions.values())
        value = Verbatim(b"txt", lines)
    elif kind is LocalKind.CLIENT_SETINFO:
        value = _setinfo(session, args)
    elif kind is LocalKind.CLIENT_REPLY:
        _client_reply(session, args)
        return
    elif kind is LocalKind.CLUSTER_SLOTS:
        value = merge.cluster_slots(me)
    elif kind is LocalKind.CLUSTER_SHARDS:
        value = merge.cluster_shards(me)
    elif kind is LocalKind.CLUSTER_NODES:
        value = merge.cluster_nodes(me)
    elif kind is LocalKind.CLUSTER_INFO:
        value = merge.cluster_info(healthy=proxy.healthy)
    elif kind is LocalKind.CLUSTER_MYID:
        value = me.node_id.encode()
    elif kind is LocalKind.CLUSTER_KEYSLOT:
        value = merge.cluster_keyslot(args)
    elif kind is LocalKind.TUNNEL:
        stats = proxy.tunnel_stats
        if stats is None:
            session.reply(_NO_STATS)
            return
        proxy.publish_all()  # so the numbers are exact, not up to a second old
        session.reply(tunnel_reply(stats, args))
        return
    else:  # CLUSTER_REPLICAS
        if args[2].decode("utf-8", "replace") == me.node_id:
            value = []
        else:
            value = merge.error(f"ERR Unknown node {args[2].decode('utf-8', 'replace')}")
    session.reply_value(value)


def info_line(session: Session) -> bytes:
    """The client's CLIENT INFO / CLIENT LIST line."""
    return merge.client_info_line(
        client_id=session.id,
        addr=session.addr,
        laddr=session.laddr,
        name=session.name,
        protocol=3 if session.resp3 else 2,
        age=int(trio.current_time() - session.created),
        multi=len(session.txn.commands) if session.txn is not None else -1,
        sub=len(session.channels),
        psub=len(session.patterns),
        ssub=len(session.shard_channels),
        lib_name=session.lib_name,
        lib_ver=session.lib_ver,
    )


def _auth(session: Session, args: list[bytes]) -> RespValue:
    request = merge.parse_auth(args)
    if isinstance(request, ErrorReply):
        return request
    if merge.check_password(request, session.proxy.local_password):
        session.state &= ~NEED_AUTH
        return merge.OK
    session.proxy.stats.auth_failures += 1
    return merge.WRONGPASS


def _hello(session: Session, args: list[bytes]) -> None:
    request = merge.parse_hello(args)
    if isinstance(request, ErrorReply):
        session.reply_value(request)
        return
    if request.auth is not None:
        if not merge.check_password(request.auth, session.proxy.local_password):
            session.proxy.stats.auth_failures += 1
            session.reply_value(merge.WRONGPASS)
            return
        session.state &= ~NEED_AUTH
    elif session.state & NEED_AUTH:
        session.reply(_HELLO_NOAUTH)
        return
    if request.protocol is not None:
        session.resp3 = request.protocol == 3
    if request.setname is not None:
        session.name = request.setname
    session.reply_value(
        merge.hello_reply(
            session.proxy.me, protocol=3 if session.resp3 else 2, client_id=session.id
        )
    )


def _setinfo(session: Session, args: list[bytes]) -> RespValue:
    if len(args) != 4:
        return merge.error("ERR wrong number of arguments for 'client|setinfo' command")
    attr = args[2].lower()
    if attr not in (b"lib-name", b"lib-ver"):
        return merge.error(f"ERR Unrecognized option '{args[2].decode('utf-8', 'replace')}'")
    if any(c <= 0x20 or c > 0x7E for c in args[3]):
        return merge.error(
            "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters."
        )
    if attr == b"lib-name":
        session.lib_name = args[3]
    else:
        session.lib_ver = args[3]
    return merge.OK


def _client_reply(session: Session, args: list[bytes]) -> None:
    mode = merge.parse_client_reply(args)
    if isinstance(mode, ErrorReply):
        session.reply_value(mode)
        return
    if mode == "on":
        session.reply_off = False
        session.skip = 0
        session.state &= ~MUTED
        session.reply_value(merge.OK)
        return
    # OFF and SKIP are not answered; SKIP also drops the next command's reply.
    session.state |= MUTED
    if mode == "off":
        session.reply_off = True
    elif not session.reply_off:
        session.skip = 2
    session.reply_value(merge.OK)


def reset(session: Session) -> None:
    """RESET: back to a new connection's state (keeps the connection)."""
    links = [*session.dedicated.values(), *session.shards.values()]
    if session.pubsub is not None:
        links.append(session.pubsub)
    session.dedicated.clear()
    session.shards.clear()
    session.pubsub = None
    session.watch_link = None
    session.channels.clear()
    session.patterns.clear()
    session.shard_channels.clear()
    for link in links:
        link.close()
    session.txn = None
    session.resp3 = False
    session.name = b""
    session.reply_off = False
    session.skip = 0
    session.state &= CLOSING
    if session.proxy.local_password is not None:
        session.state |= NEED_AUTH
