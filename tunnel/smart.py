"""Smart mode: a whole TLS cluster behind one plaintext listener, as one standalone Redis.

Theory of operation
-------------------
# The pieces, by module:
#   tunnel.route     pure: one client command in, one plan out (node, split, fan-out, local...)
#   tunnel.merge     pure: merged replies, and the replies the tunnel builds itself
#   tunnel.holders   the reply holders (Item and friends) and the constants they share
#   tunnel.session   one local client: its reader (parse, route, dispatch) and writer
#   tunnel.local     the commands a session answers itself (HELLO, AUTH, CLIENT, TUNNEL ...)
#   tunnel.upstream  the nodes (Upstream) and the pipelined connections to them (Link)
#   tunnel.smart     this module: the Proxy (slot table, redirects, retries, replica choice,
#                    statistics, credential rotation) and serve_smart()
#
# A client session (Session) has a reader, which parses the client's commands and routes each
# one (tunnel.route) *synchronously*, and a writer, which sends replies back. Every command gets
# a holder (Item) appended to the session's reply queue in request order; the writer takes
# holders from the head as soon as they are complete and coalesces every ready reply into one
# write. So replies keep the client's order even when consecutive commands run on different
# nodes, and a slow node delays only the replies behind it.
#
# Upstream links (Link) are pipelined connections to one node: one writer task that sends
# everything queued in one write, one reader task that scans reply frames (client.resp
# FrameScanner, no value parsing) and completes the FIFO of pending holders. Many sessions
# share a small pool of links per node ("pool_size"); a session always uses the same link of a
# node (its id modulo the pool size), so its commands to one node keep their order on the wire
# (a SET then a GET of the same key cannot overtake each other).
#
# RESP2 and RESP3. Shared links come in two flavours per node, opened lazily: plain RESP2 ones,
# and RESP3 ones (HELLO 3) used by clients that said HELLO 3. A reply from the node is then
# already in the client's protocol and is forwarded byte for byte: no parsing, no downgrade
# tables (RESP3 ZRANGE WITHSCORES or XREAD are not a mechanical conversion of RESP2). Only the
# replies the tunnel builds or merges are encoded, with client.resp.encode_value(resp3=...).
#
# The hot path (profiled with redis-benchmark -P 1 and -P 16) costs one parse and one route
# per command, and nothing per reply beyond finding where it ends:
#   - whole plain request frames are split for a chunk at once (route.split_requests) and
#     forwarded as the client sent them; anything else goes through client.resp.RespParser;
#   - consecutive commands of a chunk for the same link become one holder (Run), so a
#     pipeline costs one queue entry and one reply write;
#   - simple replies are split for a chunk at once too (route.split_replies);
#   - replies completed while a reader task handles a chunk are written at the end of that
#     chunk, by that task, when the session's writer is idle (Session.flush): at -P 1 a
#     reply costs no task switch. The writer task only takes over when the client is slow.
#   - client sockets are driven directly (ClientSocket), without trio.SocketStream's layers.
#
# Redirects and retries happen between the link and the holder; the client never sees them:
#   -MOVED        patch the slot table (and refresh in the background), resend to the new owner
#                 (from a replica too: the map is patched exactly as for a master)
#   -ASK          resend as ASKING + command to the node named, without touching the table
#   -TRYAGAIN, -CLUSTERDOWN, -LOADING, a slot without owner, a failed connect:
#                 resend after a backoff (20 ms doubling to 0.5 s), for at most RETRY_WINDOW
#   connection lost with the command possibly sent: resend only read-only commands; any other
#                 gets "-ERR ... may or may not have run": never run a write twice.
# A resend keeps the holder's place in the reply queue, and a MOVED/ASK resend is synchronous
# (done by the link reader that saw it), so a pipeline that meets a moved slot keeps its order.
#
# Stateful clients use connections of their own, owned by the session:
#   - blocking commands (BLPOP ..., XREAD BLOCK) and WATCH: a dedicated link per node;
#   - MULTI ... EXEC: the commands are queued *in the tunnel* (+QUEUED, with the arity/unknown/
#     CROSSSLOT checks a server makes at queue time); EXEC sends MULTI, the commands and EXEC as
#     one contiguous batch to the node of the transaction's slot, on the session's WATCH link
#     if it has one, else on a shared link (a contiguous batch is exactly what a dedicated
#     connection would carry, and it lets a transaction be re-run whole on the new owner when
#     its slot moves: nothing ran, since a redirected queued command aborts it);
#   - SUBSCRIBE/PSUBSCRIBE: a pub/sub link to the owner of slot 0 (route.PUBSUB_SLOT), where
#     PUBLISH goes too, so its count includes the tunnel's subscribers; SSUBSCRIBE: a pub/sub
#     link to the shard that owns the channel.
#     Their confirmations are replies in the queue (one frame per channel, counted from the
#     session's own subscription sets); messages are written between replies;
#   - WAIT: on a dedicated link to each master the session wrote to, after every earlier reply
#     arrived, preceded by a tiny replicated script so the link's replication offset covers
#     those writes; the reply is the minimum over those masters.
#
# Bounds: a session stops reading its client past MAX_QUEUE replies in flight, or while a link
# it fed holds more than MAX_LINK_OUT unsent bytes; pub/sub messages wait in at most MAX_OOB
# bytes before the pub/sub link stops reading. A link with requests pending (none of them
# blocking) and no reply for STALL_TIMEOUT seconds is dropped, and connecting is bounded by
# CONNECT_TIMEOUT (its commands fail or retry as above), so no command waits forever on a node
# that hangs.

Reading from replicas (``--read-from``, TunnelConfig.read_from)
---------------------------------------------------------------
# Read-only commands (the command table's ``readonly`` flag, never a list kept here) go to a
# replica of the slot's master, on shared links to the replica that sent READONLY first. The
# choice and the health of replicas are client.replicas' (the cluster client's ReplicaTracker):
# among a shard's healthy replicas the one with the fewest reads in flight, ties round robin
# (chosen once per master for each chunk of a client's input, so a pipeline of reads is one
# run and one read in flight). A replica leaves the rotation when its
# link cannot connect or breaks, when it answers -LOADING, when the topology flags it, or when
# a read waits too long on it (the cluster client's refresh_timeout, 5 s: new reads avoid it;
# the reads already sent wait for STALL_TIMEOUT, then go elsewhere); it comes back after a
# passed probe (INFO replication: link up, not loading, not syncing), run by the cluster
# client in the background (after a failure at once, with backoff; after a stall at the next
# topology refresh).
#   master          every command goes to the slot's master.
#   prefer-replica  reads go to a healthy replica; to the master when the shard has none.
#   replica         reads go to a healthy replica; when the shard has none the read gets
#                   "-ERR no healthy replica ..." at once (it never waits for one).
# Writes, blocking commands, WATCH, MULTI/EXEC, pub/sub and SCAN (its cursor is one node's)
# always go to the master. Fan-outs that only read (KEYS, DBSIZE, RANDOMKEY) and split reads
# (MGET across slots) go to a replica of each master.
#
# Session affinity. A client reads from the master, whatever the mode, while
#   - it is inside MULTI ... EXEC (the transaction runs on the master), or WATCHes keys;
#   - it "has just written": from a command that may write (any command sent to a node that
#     is not read-only: writes, scripts, functions) until its next non-read command that is
#     not one (PING, ECHO, CLIENT ..., SELECT, a subscription, an error the tunnel answers...).
#     Reads in between go to the master, so a client never reads its own write stale.
#
# Consistency a client gets:
#   master          every read sees every write acknowledged before it (any client's).
#   prefer-replica, replica
#                   read-your-writes for the client's own writes, as above; other clients'
#                   writes may be missing for as long as the replica lags (usually under a
#                   millisecond, seconds when a replica resyncs); reads spread over several
#                   replicas are not monotonic (a later read may see older data); during a
#                   slot migration a replica read may miss a key that already moved; after a
#                   write and then a non-read command (say PING), a read may be stale again.

Statistics (TunnelConfig.stats: ``--dashboard``, ``TUNNEL INFO``)
-----------------------------------------------------------------
# Counting is off (no cost) when config.stats is None. Otherwise:
#   per node (Upstream.counters, shared by the node's links; replicas are nodes of their own,
#   so the per-node counters of a replica are its reads):
#     ops        reply frames of client commands the node sent (a MULTI/EXEC batch of k
#                commands is k + 2; a command split or fanned out over n nodes counts once on
#                each); redirects, and the replies to the tunnel's own commands (ASKING,
#                AUTH, READONLY, UNWATCH) are not ops
#     bytes_in   request bytes written to the node for clients (a resend counts again)
#     bytes_out  reply bytes read from the node for clients
#     errors     error replies of single commands (and of commands in a pipelined run)
#     moved, ask redirects the node answered; retries: commands sent again because of the
#                node's answer or its connection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
#                LOADING, a lost connection)
#     latency    from the request reaching the tunnel (its input chunk) to its reply being
#                complete (one sample per chunk of replies: its oldest request)
#     upstream_reconnects  shared or dedicated links dialled again after one broke
#   per client (LOCAL_NODE, "tunnel"): the replies the tunnel gave itself (local commands,
#   CROSSSLOT, unknown commands, errors it made for commands it could not deliver).
# A link reader counts once per chunk of replies; every counter set is published at most once
# a second (the watchdog tick), when its client closes, and before a TUNNEL INFO reply, so
# TUNNEL INFO is exact.

Rotating credentials (TunnelConfig.credentials, TunnelConfig.reauth)
--------------------------------------------------------------------
# New links log in with the current credential. When TunnelConfig.reauth is set, main runs
# the provider's refresh loop and serve_smart follows that hub's rotations; otherwise
# serve_smart runs the loop itself. On each new credential every live link (shared, to
# replicas, and every session's dedicated, WATCH, blocking and pub/sub link) gets an AUTH
# pipelined like any command, whose reply the link consumes: no client sees it, no command
# fails, no connection is dropped; the cluster client's own connections (topology, probes)
# follow too (ClusterClient.set_login). A link with a blocking command in flight gets its
# AUTH after that command's reply. Pub/sub links speak RESP3 then (see tunnel.upstream).
"""

from __future__ import annotations

import errno
import logging
import random
from dataclasses import dataclass

import trio

from client.cluster import ClusterClient, open_cluster
from client.credentials import Credential, CredentialProvider
from client.errors import ConfigError, RedisToolkitError
from client.replicas import ReadFrom, parse_read_from
from client.resp import encode_command
from client.slots import SLOTS
from client.topology import Node, Topology, parse_redirect
from tunnel import merge
from tunnel.holders import (
    ASKING,
    DEDICATED,
    PUBSUB,
    SHARD,
    SHARED,
    Confirm,
    Item,
    Run,
    command_name,
    error_frame,
)
from tunnel.relay import RelayStats
from tunnel.rewrite import Endpoint, format_hostport
from tunnel.route import Router
from tunnel.server import ListenerInfo, TunnelConfig, TunnelInfo, announce_host
from tunnel.session import Session
from tunnel.stats import (
    LOCAL_NODE,
    PUBLISH_INTERVAL,
    ConnectionCounters,
    TopologyNode,
    TunnelStats,
)
from tunnel.upstream import Link, ReplicaLink, Upstream

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_POOL_SIZE",
    "RETRY_WINDOW",
    "STALL_TIMEOUT",
    "Proxy",
    "SmartStats",
    "serve_smart",
]

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 2
#: MOVED/ASK hops for one command.
MAX_REDIRECTS = 16
#: How long TRYAGAIN/CLUSTERDOWN/LOADING and connection trouble are retried (seconds).
RETRY_WINDOW = 20.0
_FIRST_DELAY = 0.02
_MAX_DELAY = 0.5
#: A link with requests pending (none of them blocking) and no reply for this long is dropped.
STALL_TIMEOUT = 60.0
#: How long connecting (TCP, TLS and login) to a node may take.
CONNECT_TIMEOUT = 10.0
_TICK = 1.0


@dataclass
class SmartStats:
    """Counters of one smart tunnel (for tests and the benchmark).

    Attributes:
        moved, ask: redirects followed for clients (never shown to them).
        retries: resends after TRYAGAIN/CLUSTERDOWN/LOADING or connection trouble.
        refused: commands answered with an error because a link broke while they may have run.
        links: upstream connections opened (shared and dedicated).
        reauths: AUTH commands sent on live links for a new credential.
    """

    moved: int = 0
    ask: int = 0
    retries: int = 0
    refused: int = 0
    links: int = 0
    reauths: int = 0


class Proxy:
    """State shared by every session: the slot table, the upstream nodes, retries, replica
    choice, statistics and credential rotation."""

    def __init__(
        self,
        cluster: ClusterClient,
        nursery: trio.Nursery,
        *,
        pool_size: int,
        local_password: str | None,
        me: merge.SelfNode,
        stats: RelayStats,
        counters: SmartStats,
        retry_window: float,
        stall_timeout: float = STALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_from: ReadFrom = "master",
        tunnel_stats: TunnelStats | None = None,
        credentials: CredentialProvider | None = None,
    ) -> None:
        self.cluster = cluster
        self.counters = counters
        self.retry_window = retry_window
        self.stall_timeout = stall_timeout
        self.connect_timeout = connect_timeout
        self.nursery = nursery
        self.pool_size = pool_size
        self.local_password = local_password
        self.me = me
        self.stats = stats
        self.tunnel_stats = tunnel_stats
        self.credentials = credentials
        #: The latest credential from a rotation (None: ask ``credentials``).
        self.credential: Credential | None = None
        #: Pub/sub links speak RESP3 whatever the client (AUTH works on them then).
        self.pubsub_resp3 = credentials is not None and credentials.dynamic
        self.read_from = read_from
        self.reads = read_from != "master"
        self.prefer = read_from == "prefer-replica"
        self.tracker = cluster.replicas
        self.router = Router(cluster.commands)
        self.upstreams: dict[tuple[str, int, bool], Upstream] = {}
        self.owners: list[Upstream | None] = [None] * SLOTS
        self.starts: list[int] = []
        self.start_of: dict[int, int] = {}
        self.topology: Topology = cluster.topology
        self.sessions: dict[int, Session] = {}
        self.next_id = 0
        self.refresh_wanted = trio.Event()
        self.rng = random.Random()
        self.next_publish = 0.0
        # While a reader task handles one chunk of input, completed replies are only noted
        # here, and written once at the end of the chunk (see Session.flush).
        self.batching = False
        self.dirty: list[Session] = []
        self.adopt(cluster.topology)

    # -- topology

    @property
    def healthy(self) -> bool:
        return None not in self.owners

    def upstream_for(self, node: Node, *, replica: bool = False) -> Upstream:
        opts = self.cluster.options_for(node)
        key = (opts.host, opts.port, replica)
        up = self.upstreams.get(key)
        if up is None:
            counters = ConnectionCounters() if self.tunnel_stats is not None else None
            up = Upstream(node, opts, self.pool_size, replica=replica, counters=counters)
            self.upstreams[key] = up
        else:
            up.node = node
        return up

    def upstream_at(self, host: str, port: int) -> Upstream:
        node = self.topology.node_by_address(host, port)
        if node is None or not node.is_master:
            node = Node(id=f"{host}:{port}", host=host, port=port)
        return self.upstream_for(node)

    def adopt(self, topology: Topology) -> None:
        """Rebuild the slot table (and the replicas of each master) from a topology."""
        self.topology = topology
        by_id: dict[str, Upstream] = {}
        owners: list[Upstream | None] = [None] * SLOTS
        for slot in range(SLOTS):
            node = topology.slot_owner(slot)
            if node is not None:
                up = by_id.get(node.id)
                if up is None:
                    up = by_id[node.id] = self.upstream_for(node)
                owners[slot] = up
        if self.reads:
            for node in topology.masters():
                up = by_id.get(node.id) or self.upstream_for(node)
                up.replica_nodes = topology.replicas_of(node)
                up.replica_ups = {
                    r.id: self.upstream_for(r, replica=True) for r in up.replica_nodes
                }
        self._set_owners(owners)
        if self.tunnel_stats is not None:
            self.tunnel_stats.set_topology(self._stats_topology(topology))

    def _stats_topology(self, topology: Topology) -> list[TopologyNode]:
        nodes: list[TopologyNode] = []
        for node in topology.nodes:
            opts = self.cluster.options_for(node)
            nodes.append(
                TopologyNode(
                    address=format_hostport(opts.host, opts.port),
                    role=node.role,
                    slots=node.slots,
                    listener=None,
                    health=node.health,
                )
            )
        return nodes

    def _set_owners(self, owners: list[Upstream | None]) -> None:
        first: dict[int, int] = {}
        for slot, up in enumerate(owners):
            if up is not None and id(up) not in first:
                first[id(up)] = slot
        self.owners = owners
        self.starts = sorted(first.values())
        self.start_of = first

    def start_for(self, up: Upstream) -> int | None:
        return self.start_of.get(id(up))

    def learn_moved(self, frame: bytes) -> Upstream | None:
        redirect = parse_redirect(frame)
        if redirect is None:
            return None
        _, slot, host, port = redirect
        up = self.upstream_at(host or self.cluster.seed.host, port)
        if self.owners[slot] is not up:
            owners = list(self.owners)
            owners[slot] = up
            self._set_owners(owners)
        self.refresh_soon()
        return up

    def refresh_soon(self) -> None:
        self.refresh_wanted.set()

    def flush_dirty(self) -> None:
        """End of a batch: write the replies that became ready during it."""
        self.batching = False
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for session in dirty:
                session.flush()

    async def refresher(self) -> None:
        """Background: refresh the topology when asked, and pick up the cluster client's own
        periodic refreshes."""
        while True:
            with trio.move_on_after(_TICK):
                await self.refresh_wanted.wait()
            if self.refresh_wanted.is_set():
                self.refresh_wanted = trio.Event()
                try:
                    await self.cluster.refresh()
                except RedisToolkitError as exc:
                    log.warning("smart tunnel: topology refresh failed: %s", exc)
                    await trio.sleep(0.2)
            if self.cluster.topology is not self.topology:
                self.adopt(self.cluster.topology)

    async def watchdog(self) -> None:
        """Background: drop links that stopped answering (a refresh may hang meanwhile), and
        publish the statistics once a second."""
        while True:
            await trio.sleep(min(_TICK, self.stall_timeout / 4))
            self._check_stalls()
            now = trio.current_time()
            if self.tunnel_stats is not None and now >= self.next_publish:
                self.next_publish = now + PUBLISH_INTERVAL
                self.publish_all()

    def all_links(self) -> list[Link]:
        """Every live link: shared (masters and replicas) and every session's own."""
        links: list[Link] = []
        for up in self.upstreams.values():
            links += up.shared_links()
        for session in self.sessions.values():
            links += session.own_links()
        return links

    def _check_stalls(self) -> None:
        now = trio.current_time()
        for link in self.all_links():
            if (
                link.pending
                and not link.pending[0].blocking
                and now - link.last_progress > self.stall_timeout
            ):
                link._fail(f"{link.up.address} sent no reply for {self.stall_timeout:g} s")

    # -- statistics

    def publish_all(self) -> None:
        """Add every counter set into the registry (the tick, TUNNEL INFO, the end)."""
        stats = self.tunnel_stats
        if stats is None:
            return
        for up in self.upstreams.values():
            counters = up.counters
            if counters is not None and not counters.is_empty():
                stats.publish(up.address, counters)
        for session in self.sessions.values():
            counters = session.counters
            if counters is not None and not counters.is_empty():
                stats.publish(LOCAL_NODE, counters)

    # -- sending

    def open_link(
        self,
        up: Upstream,
        resp3: bool,
        kind: int,
        owner: Session | None,
        *,
        again: bool = False,
    ) -> Link:
        link: Link
        if up.replica and kind == SHARED:
            link = ReplicaLink(self, up, resp3, self.tracker)
        elif kind in (PUBSUB, SHARD) and self.pubsub_resp3 and not resp3:
            link = Link(self, up, True, kind, owner, downgrade=True)
        else:
            link = Link(self, up, resp3, kind, owner)
        self.counters.links += 1
        if again and self.tunnel_stats is not None:
            self.tunnel_stats.upstream_reconnect(up.address)
        self.nursery.start_soon(link.serve)
        return link

    def shared_link(self, up: Upstream, resp3: bool, index: int) -> Link:
        links = up.links3 if resp3 else up.links2
        link = links[index]
        if link is None:
            key = (resp3, index)
            again = key in up.lost
            up.lost.discard(key)
            link = links[index] = self.open_link(up, resp3, SHARED, None, again=again)
        return link

    def submit(self, item: Item) -> None:
        """Send (or resend) ``item`` to the owner of its slot (or a replica of it)."""
        session = item.session
        if session is None or session.closed:
            return
        slot = item.slot if item.slot >= 0 else session.home_slot
        up = self.owners[slot]
        if up is None:
            self.retry_later(item, f"slot {slot} has no owner in the cluster")
            return
        if item.spread:
            target = self.read_upstream(item, up, slot)
            if target is None:
                return
            up = target
        self.send(item, up, item.wire())

    def link_for(self, item: Item, up: Upstream) -> Link:
        """The link ``item`` goes on to reach ``up`` (by the item's link kind)."""
        session = item.session
        assert session is not None
        kind = item.link_kind
        if kind == SHARED:
            return self.shared_link(up, item.resp3, session.link_index)
        if kind == DEDICATED:
            return session.dedicated_link(up)
        if kind == PUBSUB:
            return session.pubsub_link()
        link = session.shard_link(up)
        if isinstance(item, Confirm):
            for channel in item.channels:
                session.shard_channels[channel] = link
        return link

    def send(self, item: Item, up: Upstream, payload: bytes) -> None:
        if item.expect > 1:
            item.frames = []
        link = self.link_for(item, up)
        if isinstance(item, Run):
            item.link = link
        link.push(item, payload)

    # -- replicas

    def pick_read(self, master: Upstream, now: float) -> Upstream | None:
        """Where a read for ``master``'s slots goes: a healthy replica, else the master
        (prefer-replica), else None (replica)."""
        replicas = master.replica_nodes
        if replicas:
            node = self.tracker.pick(replicas, now)
            if node is not None:
                up = master.replica_ups.get(node.id)
                if up is not None:
                    return up
        return master if self.prefer else None

    def read_upstream(self, item: Item, master: Upstream, slot: int) -> Upstream | None:
        """:meth:`pick_read` for a holder; None when the holder was answered (no replica) or
        will be sent later (the map is being refreshed)."""
        session = item.session
        assert session is not None
        target = self.pick_read(master, session.now)
        if target is not None:
            return target
        if self.topology.node_by_id(master.node.id) is None:
            # a MOVED named a master the topology does not know yet: wait for the refresh
            self.retry_later(item, f"slot {slot} moved to a master not described yet")
            return None
        self.fail_item(item, self.no_replica_frame(master, slot))
        return None

    def no_replica_frame(self, master: Upstream, slot: int) -> bytes:
        why = self.tracker.explain(
            master.replica_nodes,
            name=lambda node: format_hostport(*self._dial(node)),
        )
        return error_frame(
            f"ERR no healthy replica to read slot {slot} from (--read-from replica): master "
            f"{master.address}: {why}; use --read-from prefer-replica to fall back to the "
            "master"
        )

    def _dial(self, node: Node) -> tuple[str, int]:
        opts = self.cluster.options_for(node)
        return opts.host, opts.port

    def replica_failed(self, up: Upstream, reason: str) -> None:
        """A replica's link broke or the replica answered LOADING: out of the rotation until a
        probe passes (the refresh wakes the cluster client's prober)."""
        self.tracker.failed(up.node.id, reason, trio.current_time())
        self.refresh_soon()

    # -- redirects and retries

    def retry_reply(self, item: Item, frame: bytes, link: Link) -> None:
        """A single-frame reply that is MOVED, ASK, TRYAGAIN, CLUSTERDOWN or LOADING."""
        link.skip(frame)
        if item.session is None:
            return
        if frame.startswith((b"-MOVED ", b"-ASK ")):
            self.redirected(item, frame, link)
            return
        if frame.startswith(b"-CLUSTERDOWN"):
            self.refresh_soon()
        elif link.up.replica and frame.startswith(b"-LOADING"):
            self.replica_failed(link.up, "loading its dataset (LOADING)")
        reason = frame[1:].decode("utf-8", "replace").strip()
        self.retry_later(item, reason, final=frame, up=link.up)

    def redirected(self, item: Item, frame: bytes, link: Link | None) -> None:
        redirect = parse_redirect(frame)
        item.hops += 1
        if redirect is None or item.hops > MAX_REDIRECTS:
            text = frame[1:].decode("utf-8", "replace").strip()
            self.fail_item(
                item, error_frame(f"ERR the cluster kept redirecting the command (last: {text})")
            )
            return
        kind, slot, host, port = redirect
        counters = link.up.counters if link is not None else None
        if counters is not None:
            counters.retries += 1
        if kind == "MOVED":
            self.counters.moved += 1
            if counters is not None:
                counters.moved += 1
            up = self.learn_moved(frame)
            if up is not None:
                if item.spread:
                    target = self.read_upstream(item, up, slot)
                    if target is None:
                        return
                    up = target
                self.send(item, up, item.wire())
            return
        self.counters.ask += 1
        if counters is not None:
            counters.ask += 1
        origin = link.up.host if link is not None else self.cluster.seed.host
        up = self.upstream_at(host or origin, port)
        if item.session is None:
            return
        if item.expect > 1:
            item.frames = []
        target_link = self.link_for(item, up)
        target_link.push_internal(b"ASKING", ASKING)
        target_link.push(item, item.wire())

    def retry_later(
        self,
        item: Item,
        reason: str,
        *,
        final: bytes | None = None,
        up: Upstream | None = None,
    ) -> bool:
        """Resend ``item`` after a backoff; False (and its error sent) once the window is over.

        ``up``: the node whose answer or connection caused it (for the statistics).
        """
        session = item.session
        if session is None or session.closed:
            return False
        now = trio.current_time()
        if not item.t0:
            item.t0 = now
        if now - item.t0 > self.retry_window:
            self.fail_item(
                item,
                final
                if final is not None
                else error_frame(
                    f"CLUSTERDOWN {reason} (retried for {self.retry_window:g} s; the cluster "
                    "may be failing over or down)"
                ),
            )
            return False
        self.counters.retries += 1
        counters = up.counters if up is not None else session.counters
        if counters is not None:
            counters.retries += 1
        item.tries += 1
        delay = min(_FIRST_DELAY * (2 ** min(item.tries - 1, 10)), _MAX_DELAY)
        self.nursery.start_soon(self._resend, item, delay)
        return True

    async def _resend(self, item: Item, delay: float) -> None:
        await trio.sleep(delay)
        self.submit(item)

    def fail_item(self, item: Item, frame: bytes) -> None:
        """Answer ``item`` with an error of the tunnel's own (counted for the tunnel)."""
        session = item.session
        if session is not None and session.counters is not None:
            missing = item.expect - len(item.frames) if isinstance(item, Run) else 1
            session.counters.ops += missing
            session.counters.errors += missing
        item.fail(frame)

    def lost(self, item: Item, maybe_sent: bool, reason: str, up: Upstream | None = None) -> None:
        """A link failed with ``item`` pending (or about to be sent)."""
        session = item.session
        if session is None or session.closed:
            return
        self.refresh_soon()
        if maybe_sent and not item.readonly:
            self.counters.refused += 1
            name = command_name(item.wire())
            self.fail_item(
                item,
                error_frame(
                    f"ERR {reason} with {name or 'a command'} in flight: it may or may not have "
                    "run, so the tunnel did not send it again (it is not read-only)"
                ),
            )
            return
        if item.link_kind in (PUBSUB, SHARD):
            self.fail_item(item, error_frame(f"ERR {reason}"))
            return
        self.retry_later(item, reason, up=up)

    # -- credentials

    async def reauth_all(self, credential: Credential) -> None:
        """:meth:`rotate`, as ``CredentialProvider.serve_refresh`` calls it."""
        self.rotate(credential)

    async def login(self) -> Credential | None:
        """The credential a new link logs in with (None: the static one in its options)."""
        if self.credential is not None:
            return self.credential
        if self.credentials is not None:
            return await self.credentials.current()
        return None

    def rotate(self, credential: Credential) -> None:
        """A new credential: new links use it, every live link logs in again in place, and so
        do the cluster client's connections (topology refreshes, replica probes)."""
        self.credential = credential
        password = credential.password or None
        self.nursery.start_soon(self.cluster.set_login, credential.username, password)
        if not credential.password:
            return
        if credential.username and credential.username != "default":
            payload = encode_command(b"AUTH", credential.username, credential.password)
        else:
            payload = encode_command(b"AUTH", credential.password)
        for link in self.all_links():
            link.reauth(payload)
            self.counters.reauths += 1

    # -- clients

    async def handle(self, stream: trio.SocketStream) -> None:
        """One client connection (the serve_listeners handler)."""
        self.next_id += 1
        session = Session(self, stream, self.next_id)
        self.sessions[session.id] = session
        self.stats.accepted += 1
        self.stats.active += 1
        if self.tunnel_stats is not None:
            self.tunnel_stats.client_opened()
        try:
            await session.serve()
        except Exception:  # one bad session must never take the listener down
            log.exception("smart tunnel: session %d failed", session.id)
        finally:
            self.stats.active -= 1
            self.sessions.pop(session.id, None)
            session.close()
            if self.tunnel_stats is not None:
                self.tunnel_stats.client_closed()
                if session.counters is not None:
                    self.tunnel_stats.publish(LOCAL_NODE, session.counters)
            await trio.aclose_forcefully(stream)


# --------------------------------------------------------------------------- serving


async def _bind(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=1024)
    except OSError as exc:
        where = format_hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {where}: the port is in use",
                hint="pick another with --local-port",
            ) from exc
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


async def serve_smart(
    config: TunnelConfig,
    *,
    pool_size: int | None = None,
    retry_window: float = RETRY_WINDOW,
    stall_timeout: float = STALL_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    stats: RelayStats | None = None,
    counters: SmartStats | None = None,
    task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One plaintext listener on which the whole cluster behaves as one standalone Redis.

    Prints ``LISTEN:PORT -> SEED:PORT (cluster)`` and a ``ready`` line, then serves until
    cancelled.

    Args:
        config: the seed node (with login and TLS), the listen address and port, the local
            password, and: ``pool_size`` (shared upstream connections per node and protocol),
            ``read_from`` (``master``, ``replica``, ``prefer-replica``), ``stats`` (the
            registry to count into, or None), ``credentials`` (a provider whose refresh loop
            this function runs, re-authenticating every live connection on rotation).
        pool_size: overrides ``config.pool_size``.
        retry_window: how long a command is retried through TRYAGAIN, CLUSTERDOWN, LOADING, a
            failover or an unreachable node before the client gets the error (seconds).
        stall_timeout: a node connection with commands pending (none blocking) that sends
            nothing for this long is dropped: its commands are retried or answered with an
            error, so none waits forever on a node that hangs.
        connect_timeout: the limit for connecting to a node (TCP, TLS, login).
        stats, counters: counters to fill (connections; redirects and retries).

    Raises:
        ConfigError: the port cannot be bound, a bad pool size or read_from.
        ConnectError: the seed node cannot be reached or refuses the login, or the credential
            provider fails at start.
    """
    pool_size = config.pool_size if pool_size is None else pool_size
    if pool_size < 1:
        raise ConfigError(f"invalid pool size {pool_size}: expected 1 or more")
    read_from = parse_read_from(config.read_from)
    stats = stats or RelayStats()
    credentials = config.credentials
    seed = config.upstream
    if config.reauth is not None:
        seed = config.reauth.current.apply_to(seed)
    elif credentials is not None:
        seed = (await credentials.current()).apply_to(seed)
    listeners = await _bind(config.listen, config.local_port)
    port = listeners[0].socket.getsockname()[1]
    local = Endpoint(announce_host(config.listen), port)
    upstream = Endpoint(config.upstream.host, config.upstream.port)
    async with (
        open_cluster(seed, read_from=read_from) as cluster,
        trio.open_nursery() as nursery,
    ):
        me = merge.SelfNode(
            local.host,
            local.port,
            merge.fake_node_id(local.host, local.port),
            cluster.commands.redis_version or "7.0.0",
        )
        proxy = Proxy(
            cluster,
            nursery,
            pool_size=pool_size,
            local_password=config.local_password,
            me=me,
            stats=stats,
            counters=counters or SmartStats(),
            retry_window=retry_window,
            stall_timeout=stall_timeout,
            connect_timeout=connect_timeout,
            read_from=read_from,
            tunnel_stats=config.stats,
            credentials=credentials,
        )
        try:
            nursery.start_soon(proxy.refresher)
            nursery.start_soon(proxy.watchdog)
            hub = config.reauth
            if hub is not None:
                # main already runs the refresh loop (its re-AUTH hub): follow its rotations
                proxy.credential = hub.current
                hub.subscribe(proxy.rotate)
            elif credentials is not None:
                await nursery.start(credentials.serve_refresh, proxy.reauth_all)
            config.say(f"{local} -> {upstream} (cluster)")
            masters = len(proxy.starts)
            reads = "" if read_from == "master" else f", reads from {read_from}"
            config.say(
                f"ready: 1 listener (smart, {masters} masters{reads}) on {local}; Ctrl-C to stop"
            )
            await nursery.start(trio.serve_listeners, proxy.handle, listeners)
            task_status.started(TunnelInfo([ListenerInfo(local, upstream, "cluster")], stats))
            await trio.sleep_forever()
        finally:
            proxy.publish_all()
