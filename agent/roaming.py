"""Keeping established IKE SAs on working paths: the manager's roaming policy.

The IKE core moves IKE SAs (agent/ike/mobike.py, switch.py); this module decides when and where.
It runs on every batch of network events, at once (no fixed roam delay), and on a timer that
watches the ESP counters for paths that fail without any event.

| situation of an established IKE SA                   | original initiator   | original responder    |
| ---------------------------------------------------- | -------------------- | --------------------- |
| its pair is no longer usable (address gone, link or  | `change_path` to the | `switch_to` the best  |
|   carrier down, no route)                            | best pair            | local address         |
| a pair is preferred over its pair (config order,     | `change_path`        | `switch_to`           |
|   own link, udev priority, not deprecated)           |                      |                       |
| no usable pair at all                                | wait: retransmissions and later events decide   |
| outbound ESP grows, nothing came back for            | liveness check; unanswered for half that time,  |
|   `path_timeout`                                     | the initiator probes every candidate pair       |

The original responder only chooses its own address (the peer's stays), and the core falls
back from SWITCH_TO_IP_ADDRESS to an RFC 4555 address list and to a redirect (RFC 5685) for
peers without the extension. Every IKE SA also gets its ranked pairs as probe candidates, so the
core can probe them after a silent failure (RFC 4555 §3.5 leaves path selection to policy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.ike import mobike
from agent.ike.sa import IkeSa, IkeSaState
from agent.kernel import KernelError
from agent.paths import RankedPath
from xfrm.move import KEEP

if TYPE_CHECKING:
    from agent.manager import Manager, SaRecord

logger = logging.getLogger(__name__)

# The ESP counters of an IKE SA are read this many times per `path_timeout`.
CHECKS_PER_TIMEOUT = 4


@dataclass
class EspWatch:
    """The ESP counters of an IKE SA as the silence check last read them."""

    next_check: float
    packets_in: int = -1
    packets_out: int = -1
    last_in: float = 0.0  # when inbound ESP last grew (or the watch began)


def concerns_paths(event) -> bool:
    """Tell whether a network event can change a path: link-local addresses and routes cannot."""
    address = getattr(event, "address", None)
    if address is not None and address.address.is_link_local:
        return False
    route = getattr(event, "route", None)
    return not (route is not None and route.dst is not None and route.dst.is_link_local)


def replan_all(manager: "Manager", now: float, reason: str) -> None:
    """After network events: check every IKE SA's path, then announce the usable addresses.

    Moves go first: an address list request sent before the update would leave on the dead
    path and hold the peer's message window until it is retransmitted.
    """
    ranked_cache: dict[tuple, list[RankedPath] | None] = {}
    for sa in manager.endpoint.ike_sas:
        if _movable(sa):
            replan(manager, sa, now, reason, ranked_cache)
    addresses = manager.paths.local_addresses()
    if addresses is not None:
        manager.endpoint.update_local_addresses(None, sorted(addresses), now)


def replan(manager: "Manager", sa: IkeSa, now: float, reason: str,
           ranked_cache: dict[tuple, list[RankedPath] | None] | None = None, *, move: bool = True) -> None:
    """Give `sa` its probe candidates; with `move`, move it when its path is unusable or a better one exists."""
    connection = manager.config.connections.get(sa.name)
    if connection is None:
        return
    remotes = tuple(dict.fromkeys([sa.remote[0], *map(str, connection.remote_hosts()),
                                   *mobike.state(sa).peer_addresses]))
    cache = ranked_cache if ranked_cache is not None else {}
    key = (sa.name, remotes)
    if key not in cache:
        cache[key] = manager.paths.candidates(connection, remotes)
    ranked = cache[key]
    if ranked is None:
        return  # the network state is not known yet
    manager.endpoint.set_path_candidates(sa.unique_id, [(path.local, path.remote) for path in ranked])
    if not move:
        return
    decision = _decide(sa, ranked)
    log = manager.log_for(sa.unique_id)
    if decision is None:
        return
    path, cause = decision
    if path is None:
        log.warning("no usable path from any local address to %s; waiting for the network", ", ".join(remotes))
        return
    log.info("path %s -> %s %s (%s), moving to %s -> %s", sa.local[0], sa.remote[0], cause, reason or "network change",
             path.local, path.remote)
    try:
        if sa.mobike_initiator:
            manager.endpoint.change_path(sa.unique_id, path.local, path.remote, now, reason)
        else:
            manager.endpoint.switch_to(sa.unique_id, path.local, now, reason)
    except ValueError as error:
        log.warning("cannot move: %s", error)
        return
    if sa.mobike_initiator and cause == "unusable":
        ike_sa = sa.unique_id
        manager.after_send(lambda: _move_kernel_early(manager, ike_sa, path))


def _move_kernel_early(manager: "Manager", ike_sa: int, path: RankedPath) -> None:
    """Move the CHILD_SAs off an unusable path once the update is sent, before its response.

    The old path carries nothing any more, and the peer already accepts ESP from the new
    address: its inbound SA is found by destination and SPI, and its policy templates compare
    the SA's recorded source, not the packet's. The confirmed move follows with the NAT state
    of the exchange; a rejected update moves the SAs back (agent.mobility).
    """
    try:
        manager.kernel.move_ike_sa(ike_sa, path.local, path.remote, KEEP)
    except KernelError as error:
        manager.log_for(ike_sa).error("%s", error)


def _decide(sa: IkeSa, ranked: list[RankedPath]) -> tuple[RankedPath | None, str] | None:
    """Return (path to move to, cause), (None, cause) when no path is usable, or None to stay."""
    if sa.mobike and sa.mobike_initiator:
        choices = ranked
    else:
        choices = [path for path in ranked if path.remote == sa.remote[0]]
    if not choices:
        return None, "unusable"
    current = next((path for path in choices if (path.local, path.remote) == (sa.local[0], sa.remote[0])), None)
    best = choices[0]
    if current is None:
        return best, "unusable"
    if best.preference < current.preference:
        return best, "no longer preferred"
    return None


def _movable(sa: IkeSa) -> bool:
    """Tell whether this side can move `sa`: MOBIKE in either role, or a peer that takes redirects."""
    if sa.state != IkeSaState.ESTABLISHED:
        return False
    return sa.mobike or mobike.state(sa).peer_supports_redirect


# --- silent failures ------------------------------------------------------------------------


def next_check(record: "SaRecord") -> float | None:
    watch = record.esp_watch
    return watch.next_check if watch is not None else None


def start_watch(manager: "Manager", record: "SaRecord", now: float) -> None:
    """Begin watching the ESP counters of an established IKE SA, if its connection sets path_timeout."""
    connection = manager.config.connections.get(record.connection)
    if connection is None or connection.path_timeout <= 0:
        record.esp_watch = None
        return
    record.esp_watch = EspWatch(next_check=now + connection.path_timeout / CHECKS_PER_TIMEOUT, last_in=now)


def check_silence(manager: "Manager", record: "SaRecord", sa: IkeSa, now: float) -> None:
    """Start a liveness check when outbound ESP grows and nothing came back for path_timeout.

    The check is the request whose silence makes the core report the path suspect and probe
    the other candidates (agent/ike/mobike.py).
    """
    watch = record.esp_watch
    connection = manager.config.connections.get(record.connection)
    if watch is None or connection is None or connection.path_timeout <= 0:
        return
    timeout = connection.path_timeout
    watch.next_check = now + timeout / CHECKS_PER_TIMEOUT
    packets_in = packets_out = 0
    for child in manager.kernel.children_of(sa.unique_id):
        counters = manager.kernel.counters(child.spi_in)
        packets_in += counters.packets_in
        packets_out += counters.packets_out
    sending = watch.packets_out >= 0 and packets_out > watch.packets_out
    if packets_in != watch.packets_in:
        watch.last_in = now
    watch.packets_in, watch.packets_out = packets_in, packets_out
    last_heard = max(watch.last_in, manager.heard_from(sa.remote[0]))
    if not sending or now - last_heard < timeout or sa.state != IkeSaState.ESTABLISHED or sa.request is not None:
        return
    record.log.info("ESP out, nothing from the peer for %.1f s: checking the path %s -> %s", now - last_heard,
                    sa.local[0], sa.remote[0])
    # The path has been quiet for a whole timeout already, so half of one more is enough.
    manager.endpoint.check_liveness(sa.unique_id, now, suspect_after=timeout / 2)
