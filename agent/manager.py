"""The manager: wires the IKE core to the kernel, the sockets and the network, without I/O of its own.

It owns the `IkeEndpoint` and a `Kernel`, and is driven by the daemon (or a test) through
plain calls, with time from an injected clock:

    manager = Manager(config, kernel=kernel, transport=sockets, paths=paths, clock=loop.time)
    manager.start()                          # remove leftovers, install traps, initiate
    manager.receive_datagram(data, local, remote)
    manager.handle_timer()                   # when manager.next_deadline() is reached
    manager.on_net_events(batch); manager.on_xfrm_events(events)
    manager.initiate("site"); manager.list_sas(); manager.reload(new_config)
    manager.shutdown(); ... manager.idle ...; manager.close()

After every input the manager handles the core's events before it sends the core's datagrams,
so that a CHILD_SA's kernel state is in place before the message that completes it leaves
(the responder's IKE_AUTH or CREATE_CHILD_SA response).

| core event        | kernel action                                                  |
| ----------------- | -------------------------------------------------------------- |
| ChildSaReady      | install both SAs and the policies                              |
| ChildSaRekeyed    | install the new SAs beside the old ones (same reqid, same policies) |
| ChildSaDeleted    | remove the SAs; the policies with the last CHILD_SA of the reqid |
| IkeSaRekeyed      | move the CHILD_SA records to the new IKE SA                    |

| kernel event        | core action                                     |
| ------------------- | ----------------------------------------------- |
| soft EXPIRE         | rekey the CHILD_SA                              |
| hard EXPIRE         | delete the CHILD_SA, informing the peer         |
| ACQUIRE on a trap   | initiate the connection, or create the CHILD_SA |
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from agent.config import Config, ConfigDiff, ConnectionConfig, diff_configs
from agent.connections import build_ike_configs, endpoint_settings, for_addresses
from agent.control import ChildSaStatus, CommandError, IkeSaStatus
from agent.ike import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaReady,
    ChildSaRekeyed,
    IkeEndpoint,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from agent.ike.config import IkeConfig
from agent.ike.sa import IkeSa, IkeSaState
from agent.kernel import ChildExpired, Kernel, KernelError, MappingChanged, RekeyDue, TrapTriggered
from agent import mobility, roaming
from agent.kernel_objects import lifetime_for
from agent.logs import SaLogger
from agent.netwatch.events import AddressAdded, AddressUsable, LinkUp, NetEvent, RouteChanged
from agent.paths import PathSelector
from xfrm.model import Lifetime

logger = logging.getLogger(__name__)

Address = tuple[str, int]

NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3: one octet, 0xFF
# Seconds between attempts to initiate a connection that has no usable path, or whose attempt
# failed with tries left. A network change retries at once.
RETRY_INTERVAL = 5.0
# A network change retries waiting connections at once, but at most this often (seconds).
MIN_RETRY_SPACING = 0.5
# Peers whose last IKE datagram time is kept for liveness checks; the table starts over when full.
MAX_PEERS_HEARD = 4096
# IKE SA states that count as "the connection is up or coming up".
_LIVE_STATES = frozenset({IkeSaState.CONNECTING, IkeSaState.HALF_OPEN, IkeSaState.ESTABLISHED})


class Transport(Protocol):
    """The sender of datagrams: IkeSockets in the daemon, a fake network in tests."""

    def send(self, data: bytes, local: Address, remote: Address) -> bool: ...


@dataclass
class SaRecord:
    """The manager's state of one IKE SA, beside the core's own."""

    ike_sa: int
    connection: str
    log: SaLogger
    established: bool = False
    keepalive_at: float | None = None
    dpd_at: float | None = None
    dpd_packets_in: int = -1  # inbound ESP packets at the last liveness check
    esp_watch: roaming.EspWatch | None = None  # the silence check of agent.roaming


@dataclass
class PendingInitiation:
    """A connection to initiate, or to trap, when its time comes.

    `trap_children` set means: install trap policies for these children instead of initiating.
    """

    connection: str
    at: float
    attempts: int = 0
    reason: str = ""
    trap_children: tuple[str, ...] = ()


@dataclass
class Counts:
    connections: int
    ike_sas: int
    child_sas: int


class Manager:
    """See the module docstring. `random(n)` returns n random octets (os.urandom by default)."""

    def __init__(self, config: Config, *, kernel: Kernel, transport: Transport, paths: PathSelector,
                 clock: Callable[[], float], random: Callable[[int], bytes] = os.urandom,
                 wall_clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.kernel = kernel
        self.transport = transport
        self.paths = paths
        self.now = clock
        self.random = random
        self.ike_configs: dict[str, IkeConfig] = build_ike_configs(config)
        self.endpoint = IkeEndpoint(self.ike_configs.values(), random=random, allocate_spi=kernel.allocate_spi,
                                    wall_clock=wall_clock or _utc_now, settings=endpoint_settings(config))
        self.records: dict[int, SaRecord] = {}
        self.pending: dict[str, PendingInitiation] = {}
        self.stopping = False
        self._last_net_retry = float("-inf")
        self._heard_from: dict[str, float] = {}  # peer address -> time of its last IKE datagram
        self._attempts: dict[str, int] = {}  # connection -> initiations since it was last up
        self._after_send: list[Callable[[], None]] = []  # see after_send()

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Remove what an earlier run left in the kernel, install traps, initiate connections."""
        self.kernel.remove_leftovers()
        self.kernel.probe_features()
        for connection in self.config.connections.values():
            self._start_connection(connection)
        self._pump()

    def _start_connection(self, connection: ConnectionConfig) -> None:
        actions = {child.start_action for child in connection.children.values()}
        trapped = tuple(child.name for child in connection.children.values() if child.start_action == "trap")
        if trapped:
            self._install_traps(connection, trapped)
        if "start" in actions:
            self._schedule(connection.name, self.now(), "start_action = start")

    def shutdown(self) -> None:
        """Delete every IKE SA, informing the peers. The daemon waits for `idle`, then calls close()."""
        self.stopping = True
        self.pending.clear()
        self.endpoint.configs = []  # no config matches a new IKE_SA_INIT now, so none is answered
        now = self.now()
        for sa in self.endpoint.ike_sas:
            self._core_call(self.endpoint.delete_ike, sa.unique_id, now)
        self._pump()

    @property
    def idle(self) -> bool:
        """Whether no IKE SA is left."""
        return not self.endpoint.ike_sas

    def close(self) -> None:
        """Remove every CHILD_SA and trap that is still in the kernel."""
        self.kernel.remove_all()

    # --- inputs --------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, local: Address, remote: Address) -> None:
        now = self.now()
        if len(self._heard_from) >= MAX_PEERS_HEARD:
            self._heard_from.clear()  # bounded: datagrams from many addresses must not grow it forever
        self._heard_from[remote[0]] = now
        self._core_call(self.endpoint.receive_datagram, data, local, remote, now)
        self._pump()

    def next_deadline(self) -> float | None:
        """Return when `handle_timer` must run next, or None."""
        candidates: list[float | None] = [self.endpoint.next_timer()]
        candidates += [pending.at for pending in self.pending.values()]
        for record in self.records.values():
            candidates += [record.keepalive_at, record.dpd_at, roaming.next_check(record)]
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def handle_timer(self) -> None:
        now = self.now()
        core_due = self.endpoint.next_timer()
        if core_due is not None and core_due <= now:
            self._core_call(self.endpoint.handle_timer, now)
        for record in list(self.records.values()):
            self._record_timers(record, now)
        for pending in [p for p in self.pending.values() if p.at <= now]:
            self._initiate_pending(pending, now)
        self._pump()

    def on_net_events(self, events: Sequence[NetEvent]) -> None:
        """React to link, address and route changes: move IKE SAs off broken paths, retry waiting connections."""
        for event in events:
            logger.debug("network: %s", event)
        if any(roaming.concerns_paths(event) for event in events) and not self.stopping:
            roaming.replan_all(self, self.now(), _describe(events))
        if any(isinstance(e, (LinkUp, AddressAdded, AddressUsable, RouteChanged)) for e in events):
            now = self.now()
            if now - self._last_net_retry >= MIN_RETRY_SPACING:
                self._last_net_retry = now
                for pending in self.pending.values():
                    pending.at = min(pending.at, now)
        self._pump()

    def on_xfrm_events(self, events: Iterable) -> None:
        """Act on the kernel's ACQUIRE, EXPIRE and MAPPING events."""
        now = self.now()
        for decision in self.kernel.handle_events(events):
            self._apply_kernel_decision(decision, now)
        self._pump()

    def _apply_kernel_decision(self, decision, now: float) -> None:
        if isinstance(decision, RekeyDue):
            self._core_call(self.endpoint.rekey_child, decision.ike_sa, decision.spi_in, now)
        elif isinstance(decision, ChildExpired):
            self._core_call(self.endpoint.delete_child, decision.ike_sa, decision.spi_in, now)
        elif isinstance(decision, TrapTriggered):
            self._trap_triggered(decision.connection, decision.child, now)
        elif isinstance(decision, MappingChanged):
            # NOTE: following a NAT mapping change (RFC 7296 §2.23) is left to MOBIKE updates.
            self.log_for(decision.ike_sa).info("ESP from the peer now arrives from %s:%d",
                                                decision.new_address, decision.new_port)

    # --- commands ------------------------------------------------------------------------------

    def initiate(self, name: str) -> str:
        """Initiate connection `name` now; raises CommandError."""
        connection = self._connection(name)
        if self.stopping:
            raise CommandError("rmobiked is shutting down")
        if not connection.remote_hosts():
            raise CommandError(f"connection {name!r} has no single address in remote_addrs to initiate to")
        existing = self._live_sas_of(name)
        if existing:
            return f"connection {name!r} already has IKE SA {existing[0].unique_id} ({existing[0].state.value})"
        ike_sa = self._initiate(connection, self.now())
        if ike_sa is None:
            raise CommandError(f"connection {name!r}: no usable local address has a route to "
                               f"{', '.join(map(str, connection.remote_hosts()))}")
        self.pending.pop(name, None)
        self._pump()
        return f"initiating {name!r}, IKE SA {ike_sa}"

    def terminate(self, name: str) -> str:
        """Delete the IKE SAs of connection `name`, informing the peer; raises CommandError."""
        self._connection(name)
        self.pending.pop(name, None)
        sas = self._sas_of(name)
        if not sas:
            raise CommandError(f"connection {name!r} has no IKE SA")
        now = self.now()
        for sa in sas:
            self._core_call(self.endpoint.delete_ike, sa.unique_id, now)
        self._pump()
        return f"deleting {len(sas)} IKE SA{'s' if len(sas) > 1 else ''} of {name!r}"

    def switch(self, name: str, to: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        """Move connection `name`'s IKE SAs to local address `to`; raises CommandError.

        As original initiator the IKE SA moves with a MOBIKE update (RFC 4555 §3.5); as original
        responder it asks the peer with SWITCH_TO_IP_ADDRESS, or falls back as the core decides.
        """
        self._connection(name)
        sas = [sa for sa in self._live_sas_of(name) if sa.state == IkeSaState.ESTABLISHED]
        if not sas:
            raise CommandError(f"connection {name!r} has no established IKE SA")
        local = self.paths.local_addresses()
        if local is not None and str(to) not in local:
            raise CommandError(f"{to} is not a usable local address; usable: {', '.join(sorted(local)) or 'none'}")
        now = self.now()
        for sa in sas:
            try:
                self.endpoint.switch_to(sa.unique_id, str(to), now, reason="operator request")
            except ValueError as error:
                raise CommandError(f"switch of {name!r} to {to}: {error}") from None
        self._pump()
        return f"switching {name!r} to {to}"

    def list_sas(self, name: str | None = None) -> list[IkeSaStatus]:
        """Return the IKE SAs (of connection `name`, if given) with their CHILD_SAs and counters."""
        if name is not None:
            self._connection(name)
        return [self._sa_status(sa) for sa in self.endpoint.ike_sas if name is None or sa.name == name]

    def counts(self) -> Counts:
        sas = self.endpoint.ike_sas
        return Counts(len(self.config.connections), len(sas), sum(len(sa.children) for sa in sas))

    def reload(self, new: Config) -> ConfigDiff:
        """Apply a new configuration; connections whose settings did not change keep their SAs.

        Removed and changed connections lose their IKE SAs and traps; added and changed ones
        start as configured. A changed secret applies from the next authentication on.
        """
        diff = diff_configs(self.config, new)
        now = self.now()
        for name in diff.removed + diff.changed:
            self._stop_connection(self.config.connections[name], now)
        new_ike_configs = build_ike_configs(new)
        for name in diff.unchanged:
            if new_ike_configs[name] == self.ike_configs[name]:
                new_ike_configs[name] = self.ike_configs[name]
        self.config = new
        self.ike_configs = new_ike_configs
        self.endpoint.configs = list(new_ike_configs.values())
        for name in diff.added + diff.changed:
            self._start_connection(new.connections[name])
        logger.info("configuration reloaded: %d added, %d removed, %d changed, %d unchanged",
                    len(diff.added), len(diff.removed), len(diff.changed), len(diff.unchanged))
        self._pump()
        return diff

    def _stop_connection(self, connection: ConnectionConfig, now: float) -> None:
        self.pending.pop(connection.name, None)
        for sa in self._sas_of(connection.name):
            self._core_call(self.endpoint.delete_ike, sa.unique_id, now)
        for child in connection.children:
            self.kernel.remove_trap(connection.name, child)

    # --- initiating ----------------------------------------------------------------------------

    def _schedule(self, name: str, at: float, reason: str, attempts: int = 0,
                  trap_children: tuple[str, ...] = ()) -> None:
        if self.stopping:
            return
        pending = self.pending.get(name)
        if pending is None:
            self.pending[name] = PendingInitiation(name, at, attempts, reason, trap_children)
            return
        pending.at = min(pending.at, at)
        if not trap_children:
            pending.trap_children = ()  # initiating wins over trapping

    def _initiate_pending(self, pending: PendingInitiation, now: float) -> None:
        connection = self.config.connections.get(pending.connection)
        if connection is None or self._live_sas_of(connection.name):
            self.pending.pop(pending.connection, None)
            return
        if pending.trap_children:
            del self.pending[pending.connection]
            self._install_traps(connection, pending.trap_children)
            return
        if self._initiate(connection, now) is not None:
            del self.pending[pending.connection]
            self._attempts[connection.name] = pending.attempts + 1
        else:
            pending.at = now + RETRY_INTERVAL

    def _initiate(self, connection: ConnectionConfig, now: float) -> int | None:
        """Start an IKE SA for `connection` on the best path; None when there is no path."""
        path = self.paths.choose(connection)
        if path is None:
            logger.warning("%s: no usable local address with a route to %s, waiting for the network",
                           connection.name, ", ".join(map(str, connection.remote_hosts())))
            return None
        local, remote = path
        ike_config = for_addresses(self.ike_configs[connection.name], connection, local, remote)
        port = self.config.agent.port
        ike_sa = self._core_call(self.endpoint.initiate, ike_config, (local, port), (remote, connection.remote_port), now)
        if ike_sa is None:
            return None
        record = self._record(ike_sa, connection.name)
        record.log.info("initiating from %s to %s", local, remote)
        return ike_sa

    def _trap_triggered(self, connection_name: str, child_name: str, now: float) -> None:
        connection = self.config.connections.get(connection_name)
        if connection is None or self.stopping:
            return
        sas = self._live_sas_of(connection_name)
        established = [sa for sa in sas if sa.state == IkeSaState.ESTABLISHED]
        if not sas:
            self._schedule(connection_name, now, f"traffic for child {child_name}")
            return
        for sa in established:
            if not any(child.name == child_name for child in sa.children.values()):
                ike_config = self.ike_configs[connection_name]
                child_config = for_addresses(ike_config, connection, sa.local[0], sa.remote[0]).child(child_name)
                self._core_call(self.endpoint.create_child, sa.unique_id, child_config, now)
            return

    def _install_traps(self, connection: ConnectionConfig, children: tuple[str, ...]) -> None:
        """Install trap policies for `children` of `connection`, or retry once a path exists."""
        path = self.paths.choose(connection)
        if path is None:
            logger.warning("%s: no usable path for trap policies yet; retrying when the network changes",
                           connection.name)
            self._schedule(connection.name, self.now() + RETRY_INTERVAL, "trap without a path", trap_children=children)
            return
        local, remote = path
        ike_config = for_addresses(self.ike_configs[connection.name], connection, local, remote)
        for name in children:
            child = ike_config.child(name)
            try:
                self.kernel.install_trap(connection.name, name, local=local, remote=remote, mode=child.mode,
                                         local_ts=child.local_ts, remote_ts=child.remote_ts)
            except KernelError as error:
                logger.error("%s: %s", connection.name, error)

    # --- the core's events -------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle the core's events, then send its datagrams; repeat while events come."""
        for _ in range(1000):
            events = self.endpoint.events()
            for event in events:
                try:
                    self._handle_event(event)
                except Exception:
                    logger.exception("handling %s failed", type(event).__name__)
            for data, local, remote in self.endpoint.datagrams_to_send():
                self.transport.send(data, local, remote)
            actions, self._after_send = self._after_send, []
            for action in actions:
                try:
                    action()
                except Exception:
                    logger.exception("deferred action failed")
            if not events and not actions:
                return
        logger.error("the IKE core kept producing events; stopped after 1000 rounds")

    def _handle_event(self, event) -> None:
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_established(self, event: IkeSaEstablished) -> None:
        now = self.now()
        record = self._record(event.ike_sa, event.name)
        record.established = True
        record.log.update(spi_i=event.spi_i, spi_r=event.spi_r, peer=event.remote)
        record.log.info("IKE SA established, %s:%d -> %s:%d, NAT local %s remote %s, MOBIKE %s",
                        event.local[0], event.local[1], event.remote[0], event.remote[1], event.local_behind_nat,
                        event.remote_behind_nat, event.mobike)
        keep_alive = self.config.agent.keep_alive
        if event.local_behind_nat and keep_alive > 0:
            record.keepalive_at = now + keep_alive
        connection = self.config.connections.get(event.name)
        if connection is not None and connection.dpd_delay > 0:
            record.dpd_at = now + connection.dpd_delay
        self.pending.pop(event.name, None)
        self._attempts.pop(event.name, None)
        roaming.start_watch(self, record, now)
        try:
            sa = self.endpoint.ike_sa(event.ike_sa)
        except KeyError:
            return
        roaming.replan(self, sa, now, "established", move=False)

    def _on_ike_rekeyed(self, event: IkeSaRekeyed) -> None:
        old = self.records.pop(event.old, None)
        self.kernel.reassign(event.old, event.new)
        record = self._record(event.new, event.name)
        record.established = True
        record.log.update(spi_i=event.spi_i, spi_r=event.spi_r)
        if old is not None:
            record.keepalive_at, record.dpd_at, record.esp_watch = old.keepalive_at, old.dpd_at, old.esp_watch
        record.log.info("IKE SA %d rekeyed into IKE SA %d", event.old, event.new)

    def _on_ike_closed(self, event: IkeSaDeleted | IkeSaFailed) -> None:
        record = self.records.pop(event.ike_sa, None)
        log = record.log if record is not None else SaLogger(logger, event.name)
        for child in self.kernel.children_of(event.ike_sa):
            self.kernel.remove_child(child.spi_in)
        if isinstance(event, IkeSaFailed):
            log.warning("IKE SA failed: %s", event.reason)
        else:
            log.info("IKE SA deleted%s", " by the peer" if event.by_peer else "")
        if not self.stopping:
            self._after_close(event, record)

    def _after_close(self, event: IkeSaDeleted | IkeSaFailed, record: SaRecord | None) -> None:
        """Apply keyingtries, dpd_action and close_action to a closed IKE SA."""
        connection = self.config.connections.get(event.name)
        if connection is None or record is None:
            return
        now = self.now()
        children = list(connection.children.values())
        if isinstance(event, IkeSaFailed) and not record.established:
            attempts = self._attempts.get(connection.name, 1)
            # A trapped connection is not retried: the next packet triggers the trap again.
            wants_start = any(child.start_action == "start" for child in children)
            if wants_start and (connection.keyingtries == 0 or attempts < connection.keyingtries):
                self._schedule(connection.name, now + RETRY_INTERVAL, "retry after failure", attempts)
            return
        if isinstance(event, IkeSaFailed):
            action = "dpd_action"  # the peer stopped answering
        elif event.by_peer:
            action = "close_action"
        else:
            return
        chosen = {child.name: getattr(child, action) for child in children}
        if {"restart", "start"} & set(chosen.values()):
            self._schedule(connection.name, now, action)
            return
        trapped = tuple(name for name, value in chosen.items() if value == "trap" and not self.kernel.has_trap(connection.name, name))
        if trapped:
            self._install_traps(connection, trapped)

    def _on_child_ready(self, event: ChildSaReady) -> None:
        self._install_child(event.ike_sa, event.child, rekey_of=None)

    def _on_child_rekeyed(self, event: ChildSaRekeyed) -> None:
        self._install_child(event.ike_sa, event.new, rekey_of=event.old_spi_in)

    def _install_child(self, ike_sa: int, info, rekey_of: int | None) -> None:
        record = self.records.get(ike_sa)
        connection_name = record.connection if record is not None else self._core_name(ike_sa)
        log = self.log_for(ike_sa).child(info.name)
        settings = self._child_settings(connection_name, info.name)
        jitter = self._jitter(settings.rand_time) if settings is not None else 0.0
        lifetime = lifetime_for(settings.rekey_time, settings.life_time, jitter) if settings else Lifetime()
        replay_window = settings.replay_window if settings is not None else 32
        try:
            self.kernel.install_child(ike_sa, connection_name, info, lifetime=lifetime, replay_window=replay_window)
        except KernelError as error:
            log.error("%s; deleting the CHILD_SA", error)
            self._core_call(self.endpoint.delete_child, ike_sa, info.spi_in, self.now())
            return
        if rekey_of is not None:
            log.info("CHILD_SA rekeyed: %08x_i replaces %08x_i", info.spi_in, rekey_of)
        else:
            log.info("CHILD_SA up: %08x_i %08x_o, %s", info.spi_in, info.spi_out, info.mode.value)

    def _on_child_deleted(self, event: ChildSaDeleted) -> None:
        self.kernel.remove_child(event.spi_in)
        self.log_for(event.ike_sa).child(event.name).info("CHILD_SA deleted: %08x_i %08x_o",
                                                            event.spi_in, event.spi_out)

    def _on_child_failed(self, event: ChildSaFailed) -> None:
        self.log_for(event.ike_sa).child(event.name or "?").warning("CHILD_SA failed: %s", event.reason)

    # --- timers of the records -----------------------------------------------------------------

    def _record_timers(self, record: SaRecord, now: float) -> None:
        try:
            sa = self.endpoint.ike_sa(record.ike_sa)
        except KeyError:
            # Closed: the record goes when the close event is handled; its timers stop now.
            record.keepalive_at = record.dpd_at = None
            return

        if record.keepalive_at is not None and now >= record.keepalive_at:
            self._send_keepalive(sa)
            record.keepalive_at = now + self.config.agent.keep_alive
        if record.dpd_at is not None and now >= record.dpd_at:
            self._check_peer(record, sa, now)
        due = roaming.next_check(record)
        if due is not None and now >= due:
            roaming.check_silence(self, record, sa, now)

    def after_send(self, action: Callable[[], None]) -> None:
        """Run `action` once the datagrams of the current round are sent (a kernel move that
        must not delay the response it follows)."""
        self._after_send.append(action)

    def heard_from(self, remote: str) -> float:
        """Return when the last IKE datagram from `remote` arrived (-inf when never)."""
        return self._heard_from.get(remote, float("-inf"))

    def _send_keepalive(self, sa: IkeSa) -> None:
        # RFC 3948 §2.3: from and to the ports of the UDP-encapsulated ESP, i.e. the IKE SA's.
        if sa.local[1] == self.config.agent.port_nat_t:
            self.transport.send(NAT_KEEPALIVE, sa.local, sa.remote)

    def _check_peer(self, record: SaRecord, sa: IkeSa, now: float) -> None:
        """Start a liveness check when neither IKE nor ESP came from the peer for dpd_delay."""
        connection = self.config.connections.get(record.connection)
        delay = connection.dpd_delay if connection is not None else 0
        if delay <= 0:
            record.dpd_at = None
            return
        record.dpd_at = now + delay
        packets_in = sum(self.kernel.counters(child.spi_in).packets_in for child in self.kernel.children_of(sa.unique_id))
        ike_recently = self._heard_from.get(sa.remote[0], float("-inf")) > now - delay
        if packets_in != record.dpd_packets_in or ike_recently:
            record.dpd_packets_in = packets_in
            return
        if sa.state == IkeSaState.ESTABLISHED and sa.active is None:
            record.log.debug("nothing from the peer for %g s, checking liveness", delay)
            self._core_call(self.endpoint.check_liveness, sa.unique_id, now)

    # --- helpers ---------------------------------------------------------------------------------

    def _core_call(self, function, *args):
        """Call into the core; an exception there is a bug, logged without stopping the daemon."""
        try:
            return function(*args)
        except (KeyError, ValueError) as error:
            logger.warning("%s: %s", function.__name__, error)
        except Exception:
            logger.exception("%s failed", function.__name__)
        return None

    def _connection(self, name: str) -> ConnectionConfig:
        connection = self.config.connections.get(name)
        if connection is None:
            raise CommandError(f"unknown connection {name!r}")
        return connection

    def _sas_of(self, name: str) -> list[IkeSa]:
        return [sa for sa in self.endpoint.ike_sas if sa.name == name and sa.state != IkeSaState.CLOSED]

    def _live_sas_of(self, name: str) -> list[IkeSa]:
        """Return the IKE SAs of a connection that are being set up or established (not going away)."""
        return [sa for sa in self._sas_of(name) if sa.state in _LIVE_STATES]

    def track(self, ike_sa: int, name: str) -> SaRecord:
        """Return the record of an IKE SA of connection `name`, creating it if needed."""
        return self._record(ike_sa, name)

    def _record(self, ike_sa: int, name: str) -> SaRecord:
        record = self.records.get(ike_sa)
        if record is None:
            record = SaRecord(ike_sa, name, SaLogger(logger, name))
            self.records[ike_sa] = record
        record.connection = name
        return record

    def _core_name(self, ike_sa: int) -> str:
        try:
            return self.endpoint.ike_sa(ike_sa).name
        except KeyError:
            return "?"

    def log_for(self, ike_sa: int) -> SaLogger:
        """Return the logger tagged with the IKE SA (and its connection)."""
        record = self.records.get(ike_sa)
        return record.log if record is not None else SaLogger(logger, self._core_name(ike_sa))

    def _child_settings(self, connection: str, child: str):
        settings = self.config.connections.get(connection)
        return settings.children.get(child) if settings is not None else None

    def _jitter(self, rand_time: float) -> float:
        """Return a random time in [0, rand_time] so that both peers do not rekey at once."""
        return rand_time * int.from_bytes(self.random(2), "big") / 0xFFFF

    def _sa_status(self, sa: IkeSa) -> IkeSaStatus:
        children = []
        for child in sa.children.values():
            counters = self.kernel.counters(child.spi_in)
            children.append(ChildSaStatus(
                name=child.name, state=child.state.name, spi_in=child.spi_in, spi_out=child.spi_out,
                local_ts=tuple(_ts_text(ts) for ts in child.local_ts),
                remote_ts=tuple(_ts_text(ts) for ts in child.remote_ts),
                mode=child.mode.value, bytes_in=counters.bytes_in, bytes_out=counters.bytes_out,
                packets_in=counters.packets_in, packets_out=counters.packets_out,
            ))
        switch = sa.mobike and (sa.config.accept_switch if sa.initiator else sa.peer_accepts_switch)
        return IkeSaStatus(
            name=sa.name, state=sa.state.name, initiator=sa.initiator,
            local_address=sa.local[0], local_port=sa.local[1], remote_address=sa.remote[0], remote_port=sa.remote[1],
            spi_i=sa.spi_i, spi_r=sa.spi_r, mobike=sa.mobike, switch=switch,
            nat_local=sa.nat_local, nat_remote=sa.nat_remote, children=tuple(children),
        )


def _describe(events: Sequence[NetEvent]) -> str:
    """Name a batch of network events for the logs, e.g. "LinkDown, AddressRemoved"."""
    names = list(dict.fromkeys(type(event).__name__ for event in events))
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _ts_text(ts) -> str:
    """Format a traffic selector as its prefixes ("10.1.0.0/24"), as list-sas shows them."""
    return ", ".join(str(network) for network in ts.networks())


_EVENT_HANDLERS: dict[type, Callable] = {
    IkeSaEstablished: Manager._on_established,
    IkeSaRekeyed: Manager._on_ike_rekeyed,
    IkeSaDeleted: Manager._on_ike_closed,
    IkeSaFailed: Manager._on_ike_closed,
    ChildSaReady: Manager._on_child_ready,
    ChildSaRekeyed: Manager._on_child_rekeyed,
    ChildSaDeleted: Manager._on_child_deleted,
    ChildSaFailed: Manager._on_child_failed,
    **mobility.HANDLERS,
}
