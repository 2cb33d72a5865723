"""MOBIKE (RFC 4555): address updates, address lists, NAT checks, path probing.

Only the original initiator moves an IKE SA (RFC 4555 §3.5). It sends the update from the new
path; the responder takes the new addresses from the IP header of the authenticated request:

    Initiator                         Responder
    HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP),
             [N(NO_NATS_ALLOWED)], [N(COOKIE2)]}  -->
                                 <--  HDR, SK {N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP),
                                               [N(COOKIE2)]}

The responder moves its CHILD_SAs when it processes the request, and the initiator when the
response arrives. Both report `IkeSaAddressesChanged`, with UDP encapsulation when the NAT
detection payloads of that exchange show a NAT. Either side announces its other addresses in IKE_AUTH and
again whenever they change (RFC 4555 §3.4, §3.6):

    HDR, SK {N(ADDITIONAL_IP4_ADDRESS)+, N(ADDITIONAL_IP6_ADDRESS)+ | N(NO_ADDITIONAL_ADDRESSES),
             [N(NO_NATS_ALLOWED)], [N(COOKIE2)]}  -->
                                 <--  HDR, SK {[N(COOKIE2)]}

The responder of any INFORMATIONAL request echoes COOKIE2 (RFC 4555 §3.7) and answers
NAT_DETECTION_* with its own (§3.8). NO_NATS_ALLOWED carries the addresses and ports the
sender used; a responder that sees others in the IP header answers UNEXPECTED_NAT_DETECTED and
changes nothing (§3.9).

Paths. The driver names paths as (local address, remote address) pairs; the ports are the NAT-T
port, or the peer's current port while its address stays. Policy (which pairs, in which order)
stays with the driver; this module provides the mechanism:
- `change_path` moves at once: later requests, and the one outstanding, go to the new path, and
  an update follows. A newer move while an update is outstanding supersedes it: the update then
  goes again for the newest path once the response arrives (RFC 4555 §3.6 demands a new
  request after retransmissions from other addresses).
- `probe_paths` sends the outstanding request, or a liveness check, on every candidate path and
  retransmits it there; the first path that carries a response becomes the IKE SA's path, and
  an update follows. Nothing moves before a path has answered.
- A request unanswered for `IkeConfig.path_suspect_after` seconds reports `PathSuspect`. When the
  driver gave candidates (`set_candidates`), the MOBIKE initiator probes them at once instead of
  waiting for the retransmissions to run out.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from typing import TYPE_CHECKING, Iterable

from .constants import ExchangeType, NotifyType
from .errors import InvalidSyntax, UnacceptableAddresses, UnexpectedNatDetected
from .events import Address, IkeSaAddressesChanged, PathSuspect, PathUpdateFailed, PeerAddressesChanged
from .exchange import Initiator, register_responder
from .ike_sa_init import natd_hash, natd_payloads, packed_address, raise_peer_errors
from .informational import InformationalResponder, LivenessInitiator
from .payloads import Notify

if TYPE_CHECKING:
    from .errors import ProtocolError
    from .message import Message
    from .sa import IkeSa

logger = logging.getLogger(__name__)

Path = tuple[Address, Address]  # (local, remote)

COOKIE2_SIZE = 16  # RFC 4555 §4.2.5 allows 8 to 64 octets
COOKIE2_MIN, COOKIE2_MAX = 8, 64
_PORTS = struct.Struct("!HH")

# Notifies that make an INFORMATIONAL request a MOBIKE request (RFC 4555 §4) and what each one
# does here. `MobikeResponder` handles every request carrying one of them.
MOBIKE_NOTIFIES: dict[int, str] = {
    NotifyType.UPDATE_SA_ADDRESSES: "move the IKE SA and its CHILD_SAs to the request's addresses",
    NotifyType.ADDITIONAL_IP4_ADDRESS: "replace the peer's address list",
    NotifyType.ADDITIONAL_IP6_ADDRESS: "replace the peer's address list",
    NotifyType.NO_ADDITIONAL_ADDRESSES: "empty the peer's address list",
    NotifyType.COOKIE2: "copy into the response",
    NotifyType.NAT_DETECTION_SOURCE_IP: "answer with this side's NAT_DETECTION_* for the path",
    NotifyType.NAT_DETECTION_DESTINATION_IP: "answer with this side's NAT_DETECTION_* for the path",
    NotifyType.NO_NATS_ALLOWED: "reject the request with UNEXPECTED_NAT_DETECTED if a NAT changed the addresses",
}
_ADDRESS_NOTIFIES = {NotifyType.ADDITIONAL_IP4_ADDRESS: 4, NotifyType.ADDITIONAL_IP6_ADDRESS: 16}


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


def format_path(path: Path) -> str:
    local, remote = path
    return f"{local[0]} ↔ {remote[0]}"


# --- per-IKE SA state --------------------------------------------------------------------------


class Mobility:
    """MOBIKE, switch and redirect state of one IKE SA; `state(sa)` creates it."""

    __slots__ = (
        "local_addresses",
        "peer_addresses",
        "candidates",
        "confirmed",
        "update_stale",
        "update_reason",
        "probe_paths",
        "request_sent_at",
        "suspect_reported",
        "suspect_after",
        "switch",
        "peer_switch_target",
        "last_switch_at",
        "peer_supports_redirect",
        "redirected_from",
        "redirect_count",
    )

    def __init__(self) -> None:
        self.local_addresses: tuple[str, ...] | None = None  # None: the endpoint's list applies
        self.peer_addresses: tuple[str, ...] = ()  # the peer's additional addresses
        self.candidates: tuple[tuple[str, str], ...] = ()  # ranked (local, remote) hosts from the driver
        self.confirmed: Path | None = None  # the path the CHILD_SAs use, confirmed by both sides
        self.update_stale = False  # the path changed while an update was outstanding
        self.update_reason = ""
        self.probe_paths: list[Path] = []  # paths besides the current one that requests go to
        self.request_sent_at: float | None = None  # when the outstanding request left on this path
        self.suspect_reported = False
        self.suspect_after: float | None = None  # for the outstanding request, instead of the config's
        self.switch = None  # switch.PendingSwitch of this side as original responder
        self.peer_switch_target: str | None = None  # the address the peer asked to switch to
        self.last_switch_at: float | None = None
        self.peer_supports_redirect = False  # the peer sent REDIRECT_SUPPORTED (RFC 5685)
        self.redirected_from: str | None = None  # the gateway that redirected this new IKE SA here
        self.redirect_count = 0

    def inherit(self) -> "Mobility":
        """Return the state an IKE SA that replaces this one by a rekey starts with."""
        copy = Mobility()
        for name in ("local_addresses", "peer_addresses", "candidates", "confirmed", "peer_switch_target",
                     "last_switch_at", "peer_supports_redirect", "redirect_count"):
            setattr(copy, name, getattr(self, name))
        copy.switch, self.switch = self.switch, None  # a pending switch goes on with the new IKE SA
        return copy

    # --- hooks called by the IKE SA (sa.py) ---

    def request_sent(self, sa: "IkeSa", now: float) -> None:
        """Start the silence clock of a request sent on the current path and copy it to the probe paths."""
        self.request_sent_at = now
        self.suspect_reported = False
        active = sa.active
        if isinstance(active, UpdateInitiator) and active.path not in (None, (sa.local, sa.remote)):
            self.update_stale = True  # sent on another path than its NAT detection payloads name
        self._send_on_probe_paths(sa)
        self._send_copies(sa)

    def retransmitted(self, sa: "IkeSa") -> None:
        self._send_on_probe_paths(sa)
        self._send_copies(sa)

    def response_received(self, sa: "IkeSa", local: Address, remote: Address, now: float) -> None:
        """Adopt the path of an authentic response as the IKE SA's path while probing."""
        self.request_sent_at = None
        self.suspect_after = None
        if not self.probe_paths:
            return
        self.probe_paths = []
        path = (local, remote)
        if path == (sa.local, sa.remote):
            _log(sa, logging.INFO, "path %s answered, staying on it", format_path(path))
            return
        _log(sa, logging.INFO, "path %s answered first, moving to it", format_path(path))
        sa.local, sa.remote = path
        request_update(sa, now, "probe")

    def next_deadline(self, sa: "IkeSa") -> float | None:
        times = []
        suspect_after = self._suspect_after(sa)
        if self.request_sent_at is not None and not self.suspect_reported and suspect_after is not None:
            times.append(self.request_sent_at + suspect_after)
        if self.switch is not None and self.switch.deadline is not None:
            times.append(self.switch.deadline)
        return min(times) if times else None

    def handle_timer(self, sa: "IkeSa", now: float) -> None:
        suspect_after = self._suspect_after(sa)
        if (self.request_sent_at is not None and not self.suspect_reported and suspect_after is not None
                and now >= self.request_sent_at + suspect_after and sa.request is not None):
            self._path_suspect(sa, now)
        if self.switch is not None and self.switch.deadline is not None and now >= self.switch.deadline:
            from .switch import switch_deadline_reached

            switch_deadline_reached(sa, now)

    # --- internals ---

    def _suspect_after(self, sa: "IkeSa") -> float | None:
        if sa.config.path_suspect_after is None:
            return None
        return self.suspect_after if self.suspect_after is not None else sa.config.path_suspect_after

    def _send_on_probe_paths(self, sa: "IkeSa") -> None:
        if sa.request is None or not self.probe_paths:
            return
        if isinstance(sa.active, UpdateInitiator):
            # The peer may process any of the copies, so a new update must follow (RFC 4555 §3.6).
            self.update_stale = True
        for local, remote in self.probe_paths:
            sa._transmit(sa.request, local, remote)

    def _send_copies(self, sa: "IkeSa") -> None:
        """Send the outstanding request also from the local addresses its exchange names."""
        for local in getattr(sa.active, "also_from", ()):
            sa._transmit(sa.request, local, sa.remote)

    def _path_suspect(self, sa: "IkeSa", now: float) -> None:
        self.suspect_reported = True
        silent_for = now - self.request_sent_at
        _log(sa, logging.INFO, "no response on path %s for %.1f s", format_path((sa.local, sa.remote)), silent_for)
        sa.endpoint.count("paths_suspect")
        sa.endpoint.emit(PathSuspect(sa.unique_id, sa.name, sa.local, sa.remote, silent_for))
        if can_move(sa) and self.candidates and not self.probe_paths:
            start_probing(sa, candidate_paths(sa, self.candidates), now, restart=False)


def state(sa: "IkeSa") -> Mobility:
    """Return the mobility state of `sa`, creating it on first use."""
    if sa.mobility is None:
        sa.mobility = Mobility()
    return sa.mobility


def can_move(sa: "IkeSa") -> bool:
    """Tell whether this side may send UPDATE_SA_ADDRESSES on `sa` (RFC 4555 §3.5: initiator only)."""
    from .sa import IkeSaState

    return sa.mobike and sa.mobike_initiator and sa.state == IkeSaState.ESTABLISHED


# --- addresses ------------------------------------------------------------------------------


def usable_address(host: str) -> bool:
    """Tell whether `host` may be an IKE SA's outer address: unicast and routable beyond the link."""
    address = ipaddress.ip_address(host)
    if address.is_loopback or address.is_multicast or address.is_unspecified or address.is_link_local:
        return False
    return not (address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255"))


def same_family(a: str, b: str) -> bool:
    return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version


def path_for(sa: "IkeSa", local_host: str, remote_host: str) -> Path:
    """Return the path between two hosts with the ports this IKE SA uses there.

    With MOBIKE both sides use the NAT-T port (RFC 4555 §3.1). The peer's port is kept while its
    address stays, because a NAT in front of the peer may have changed it.
    """
    natt_port = sa.endpoint.settings.natt_port
    remote_port = sa.remote[1] if remote_host == sa.remote[0] else natt_port
    return (str(ipaddress.ip_address(local_host)), natt_port), (str(ipaddress.ip_address(remote_host)), remote_port)


def candidate_paths(sa: "IkeSa", candidates: Iterable[tuple[str, str]]) -> list[Path]:
    """Turn ranked (local, remote) host pairs into paths, dropping pairs of mixed families.

    While a switch the peer asked for is under way, only paths to the address it named count:
    a failure of this side's path then leads to the best path to that address, not back to
    the old one.
    """
    pairs = [(local, remote) for local, remote in candidates if same_family(local, remote)]
    target = state(sa).peer_switch_target
    if target is not None:
        to_target = [(local, remote) for local, remote in pairs if remote == target]
        if not to_target:
            locals_ = dict.fromkeys(local for local, _ in pairs if same_family(local, target))
            to_target = [(local, target) for local in locals_]
        pairs = to_target
    paths = []
    for local, remote in pairs:
        path = path_for(sa, local, remote)
        if path not in paths:
            paths.append(path)
    return paths


def local_address_list(sa: "IkeSa") -> tuple[str, ...] | None:
    """Return this side's additional addresses for `sa`, or None when the driver gave none.

    The list leaves out the address the IKE SA uses (RFC 4555 §3.4), addresses that cannot
    carry it and addresses outside the connection's `local_addrs`.
    """
    addresses = state(sa).local_addresses
    if addresses is None:
        addresses = sa.endpoint.local_addresses
    if addresses is None:
        return None
    networks = sa.config.local_networks
    result = []
    for host in addresses:
        if host == sa.local[0] or not usable_address(host) or host in result:
            continue
        if networks and not any(ipaddress.ip_address(host) in network for network in networks):
            continue
        result.append(host)
    return tuple(result)


def address_notifies(sa: "IkeSa") -> list[Notify]:
    """N(ADDITIONAL_IP4_ADDRESS)/N(ADDITIONAL_IP6_ADDRESS) per address, or N(NO_ADDITIONAL_ADDRESSES)."""
    addresses = local_address_list(sa)
    if addresses is None:
        return []
    if not addresses:
        return [Notify(NotifyType.NO_ADDITIONAL_ADDRESSES)]
    notifies = []
    for host in addresses:
        packed = packed_address(host)
        kind = NotifyType.ADDITIONAL_IP4_ADDRESS if len(packed) == 4 else NotifyType.ADDITIONAL_IP6_ADDRESS
        notifies.append(Notify(kind, packed))
    return notifies


def read_address_list(message: "Message") -> tuple[str, ...] | None:
    """Return the addresses a message lists, () for NO_ADDITIONAL_ADDRESSES, None when it has none."""
    addresses = []
    none = False
    for notify in message.notifies():
        size = _ADDRESS_NOTIFIES.get(notify.notify_type)
        if size is not None:
            if len(notify.data) != size:
                raise InvalidSyntax(f"{NotifyType(notify.notify_type).name} with {len(notify.data)} octets of data")
            addresses.append(str(ipaddress.ip_address(notify.data)))
        elif notify.notify_type == NotifyType.NO_ADDITIONAL_ADDRESSES:
            none = True
    if none and addresses:
        raise InvalidSyntax("NO_ADDITIONAL_ADDRESSES together with ADDITIONAL_IP*_ADDRESS")
    if none:
        return ()
    return tuple(dict.fromkeys(addresses)) if addresses else None


def store_peer_addresses(sa: "IkeSa", addresses: tuple[str, ...]) -> None:
    state(sa).peer_addresses = addresses
    _log(sa, logging.INFO, "peer's additional addresses: %s", ", ".join(addresses) or "none")
    sa.endpoint.emit(PeerAddressesChanged(sa.unique_id, sa.name, sa.remote, addresses))


# --- NAT checks -----------------------------------------------------------------------------


def no_nats_data(local: Address, remote: Address) -> bytes:
    """NO_NATS_ALLOWED data: source and destination address, then both ports (RFC 4555 §3.9)."""
    return packed_address(local[0]) + packed_address(remote[0]) + _PORTS.pack(local[1], remote[1])


def policy_notifies(sa: "IkeSa") -> list[Notify]:
    """N(NO_NATS_ALLOWED) for the current path when the connection forbids NATs."""
    if not sa.config.no_nats_allowed:
        return []
    return [Notify(NotifyType.NO_NATS_ALLOWED, no_nats_data(sa.local, sa.remote))]


def check_no_nats(message: "Message", local: Address, remote: Address) -> None:
    """Raise UnexpectedNatDetected when NO_NATS_ALLOWED names other addresses than the IP header."""
    notify = message.notify(NotifyType.NO_NATS_ALLOWED)
    if notify is None:
        return
    # The sender wrote its own address first: the source of the request as it left the sender.
    if notify.data != no_nats_data(remote, local):
        # RFC 4555 §3.9: the contents serve for nothing but this comparison.
        raise UnexpectedNatDetected(f"NO_NATS_ALLOWED, but a NAT changed the addresses of the request from "
                                    f"{remote[0]}:{remote[1]}")


def nat_flags(sa: "IkeSa", message: "Message", local: Address, remote: Address) -> tuple[bool, bool] | None:
    """Return (this side behind a NAT, peer behind a NAT) from NAT_DETECTION_*, or None without them.

    `local` and `remote` are the addresses of the IP header as received here (RFC 7296 §2.23).
    """
    sources = [n.data for n in message.notifies() if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    destinations = [n.data for n in message.notifies() if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not sources and not destinations:
        return None
    return (natd_hash(sa.spi_i, sa.spi_r, local) not in destinations,
            natd_hash(sa.spi_i, sa.spi_r, remote) not in sources)


def new_cookie2(sa: "IkeSa") -> bytes | None:
    """Draw a COOKIE2 for a return routability check (RFC 4555 §3.7), if the connection wants one."""
    return sa.endpoint.random(COOKIE2_SIZE) if sa.config.return_routability else None


def cookie2_matches(sa: "IkeSa", message: "Message", sent: bytes | None, now: float) -> bool:
    """Check the COOKIE2 copy of a response; on a mismatch close the IKE SA (RFC 4555 §3.7)."""
    if sent is None:
        return True
    notify = message.notify(NotifyType.COOKIE2)
    if notify is not None and notify.data == sent:
        return True
    sa.endpoint.count("cookie2_mismatch")
    sa.fail(now, "response carries another COOKIE2 than the request", NotifyType.COOKIE2)
    return False


# --- moving the CHILD_SAs -----------------------------------------------------------------------


def newest(sa: "IkeSa") -> "IkeSa":
    """Return the IKE SA that replaced `sa` by rekeys and still lives, or `sa` itself."""
    from .sa import IkeSaState

    while sa.successor is not None and sa.successor.state != IkeSaState.CLOSED:
        sa = sa.successor
    return sa


def confirm_path(sa: "IkeSa", path: Path, nat: tuple[bool, bool] | None, reason: str, now: float) -> None:
    """Record that both sides now use `path` and tell the driver to move the CHILD_SAs there.

    An IKE SA that replaced `sa` by a rekey follows, because the CHILD_SAs live there now. The
    original initiator instead sends an update of its own on it when it already uses another path.
    """
    successor = newest(sa)
    if successor is not sa:
        _record_path(sa, path, nat, reason, emit=False)
        if (successor.local, successor.remote) != path and successor.mobike_initiator:
            request_update(successor, now, reason)
            return
        if (successor.local, successor.remote) != path:
            successor.move_path(*path, now)
        sa = successor
    _record_path(sa, path, nat, reason, emit=True)


def _record_path(sa: "IkeSa", path: Path, nat: tuple[bool, bool] | None, reason: str, *, emit: bool) -> None:
    m = state(sa)
    old = m.confirmed or path
    old_encap = sa.nat_local or sa.nat_remote
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat
    encap = sa.nat_local or sa.nat_remote
    m.confirmed = path
    if not emit:
        return
    if old == path and old_encap == encap:
        _log(sa, logging.DEBUG, "path %s confirmed, nothing to move", format_path(path))
        return
    _log(sa, logging.INFO, "CHILD_SAs move from %s to %s%s, reason: %s", format_path(old), format_path(path),
         " with UDP encapsulation" if encap else "", reason or "unspecified")
    spis = tuple((child.spi_in, child.spi_out) for child in sa.children.values())
    sa.endpoint.count("ike_sa_moves")
    sa.endpoint.emit(IkeSaAddressesChanged(sa.unique_id, sa.name, path[0], path[1], encap, old[0], old[1], spis,
                                           reason))


def established(sa: "IkeSa", peer_addresses: tuple[str, ...] | None) -> None:
    """Start MOBIKE on an IKE SA that has just been established with it."""
    m = state(sa)
    m.confirmed = (sa.local, sa.remote)
    if peer_addresses is not None:
        store_peer_addresses(sa, peer_addresses)


# --- commands -------------------------------------------------------------------------------


def request_update(sa: "IkeSa", now: float, reason: str) -> None:
    """Make sure an UPDATE_SA_ADDRESSES for the current path follows (one at a time)."""
    m = state(sa)
    m.update_reason = reason
    if isinstance(sa.active, UpdateInitiator):
        m.update_stale = True  # the response starts another one
        return
    for queued in sa.queue or ():
        if isinstance(queued, UpdateInitiator):
            queued.reason = reason  # it is built when sent, so it takes the current path
            return
    sa.start(UpdateInitiator(sa, reason), now, front=True)


def change_path(sa: "IkeSa", local_host: str, remote_host: str, now: float, reason: str) -> None:
    """Move the IKE SA to a new path now, as original initiator (RFC 4555 §3.5)."""
    if not can_move(sa):
        raise ValueError(f"IKE SA {sa.unique_id} cannot move: MOBIKE {'on' if sa.mobike else 'off'}, "
                         f"{'original initiator' if sa.mobike_initiator else 'original responder'}, {sa.state.value}")
    if not same_family(local_host, remote_host):
        raise ValueError(f"local {local_host} and remote {remote_host} are of different address families")
    path = path_for(sa, local_host, remote_host)
    m = state(sa)
    m.probe_paths = []
    if path != (sa.local, sa.remote):
        _log(sa, logging.INFO, "moving from %s to %s, reason: %s", format_path((sa.local, sa.remote)), format_path(path),
             reason or "unspecified")
        sa.move_path(*path, now)
    request_update(sa, now, reason)


def probe_paths(sa: "IkeSa", candidates: Iterable[tuple[str, str]], now: float) -> None:
    """Probe the candidate paths and move to the first that carries a response (initiator only)."""
    if not can_move(sa):
        raise ValueError(f"IKE SA {sa.unique_id} cannot move: it is not the established MOBIKE initiator")
    paths = candidate_paths(sa, candidates)
    if not paths:
        raise ValueError("no usable candidate path: each pair needs two addresses of one family")
    start_probing(sa, paths, now, restart=True)


def start_probing(sa: "IkeSa", paths: list[Path], now: float, *, restart: bool) -> None:
    """Send the outstanding request, or a liveness check, on the current path and on `paths`.

    `restart` begins the retransmission schedule anew, for probes the driver asked for.
    """
    m = state(sa)
    current = (sa.local, sa.remote)
    m.probe_paths = [path for path in paths if path != current]
    _log(sa, logging.INFO, "probing %d paths besides %s: %s", len(m.probe_paths), format_path(current),
         ", ".join(format_path(p) for p in m.probe_paths) or "none")
    sa.endpoint.count("path_probes")
    if sa.request is None:
        sa.start(LivenessInitiator(sa), now, front=True)  # request_sent copies it to the probe paths
        return
    if restart:
        sa.move_path(sa.local, sa.remote, now)
    else:
        m._send_on_probe_paths(sa)


def set_candidates(sa: "IkeSa", candidates: Iterable[tuple[str, str]]) -> None:
    """Keep the driver's ranked (local, remote) pairs for probing after a silent failure."""
    state(sa).candidates = tuple((str(local), str(remote)) for local, remote in candidates)


def update_local_addresses(sa: "IkeSa", addresses: Iterable[str] | None, now: float) -> None:
    """Set this side's addresses for `sa` and announce a changed list to the peer (RFC 4555 §3.6).

    None makes the endpoint's list apply again.
    """
    m = state(sa)
    before = local_address_list(sa) if sa.mobike else None
    m.local_addresses = None if addresses is None else tuple(str(ipaddress.ip_address(a)) for a in addresses)
    announce_if_changed(sa, before, now)


def announce_if_changed(sa: "IkeSa", before: tuple[str, ...] | None, now: float) -> None:
    from .sa import IkeSaState

    if not sa.mobike or sa.state != IkeSaState.ESTABLISHED:
        return
    after = local_address_list(sa)
    if after is None or after == before:
        return
    for queued in sa.queue or ():
        if isinstance(queued, AddressListInitiator):
            return  # it reads the list when it is sent
    _log(sa, logging.INFO, "announcing additional addresses: %s", ", ".join(after) or "none")
    sa.start(AddressListInitiator(sa), now)


# --- exchanges ------------------------------------------------------------------------------


class UpdateInitiator(Initiator):
    """UPDATE_SA_ADDRESSES for the IKE SA's current path (RFC 4555 §3.5)."""

    exchange_type = ExchangeType.INFORMATIONAL
    kind = "mobike-update"
    movable = True
    __slots__ = ("reason", "path", "cookie2")

    def __init__(self, sa: "IkeSa", reason: str):
        super().__init__(sa)
        self.reason = reason
        self.path: Path | None = None
        self.cookie2: bytes | None = None

    def describe(self) -> str:
        return "UPDATE_SA_ADDRESSES" + (f" for {format_path(self.path)}" if self.path else "")

    def build_request(self, now: float) -> list | None:
        sa = self.sa
        if not can_move(sa):
            return None
        state(sa).update_stale = False
        self.path = (sa.local, sa.remote)
        self.cookie2 = new_cookie2(sa)
        payloads: list = [Notify(NotifyType.UPDATE_SA_ADDRESSES)]
        payloads += natd_payloads(sa.spi_i, sa.spi_r, sa.local, sa.remote)
        payloads += policy_notifies(sa)
        if self.cookie2 is not None:
            payloads.append(Notify(NotifyType.COOKIE2, self.cookie2))
        return payloads

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        m = state(sa)
        raise_peer_errors(message)
        if not cookie2_matches(sa, message, self.cookie2, now):
            return True
        if sa.received_on == self.path:
            local, remote = self.path
            confirm_path(sa, self.path, nat_flags(sa, message, local, remote), self.reason, now)
        target = newest(sa)
        if target is not sa:
            # confirm_path handed the result to the IKE SA that replaced this one.
            if m.update_stale or sa.received_on != self.path:
                request_update(target, now, m.update_reason or self.reason)
            return True
        if (sa.local, sa.remote) != self.path or m.update_stale:
            # The path changed while the request was out, or the response came on another
            # path: a new request must confirm the current one (RFC 4555 §3.6).
            _log(sa, logging.DEBUG, "path changed during the update, updating again")
            sa.start(UpdateInitiator(sa, m.update_reason or self.reason), now, front=True)
        elif m.peer_switch_target == self.path[1][0]:
            m.peer_switch_target = None
        return True

    def failed(self, error: "ProtocolError", now: float) -> None:
        from .sa import IkeSaState

        sa = self.sa
        m = state(sa)
        if sa.state == IkeSaState.CLOSED or self.path is None:
            return
        kept = m.confirmed or self.path
        _log(sa, logging.WARNING, "update to %s rejected: %s; staying on %s", format_path(self.path), error,
             format_path(kept))
        if m.peer_switch_target == self.path[1][0]:
            m.peer_switch_target = None
        if (sa.local, sa.remote) == self.path:
            # NOTE: RFC 4555 §3.9 suggests retrying after UNEXPECTED_NAT_DETECTED; the driver
            # decides that, with the PathUpdateFailed event.
            sa.move_path(*kept, now)
        sa.endpoint.emit(PathUpdateFailed(sa.unique_id, sa.name, self.path[0], self.path[1], kept[0], kept[1],
                                          str(error), error.notify_type))


class AddressListInitiator(Initiator):
    """An INFORMATIONAL request with this side's current address list (RFC 4555 §3.6)."""

    exchange_type = ExchangeType.INFORMATIONAL
    kind = "mobike-addresses"
    movable = True
    __slots__ = ("cookie2",)

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.cookie2: bytes | None = None

    def describe(self) -> str:
        return "address list update"

    def build_request(self, now: float) -> list | None:
        from .sa import IkeSaState

        sa = self.sa
        if not sa.mobike or sa.state != IkeSaState.ESTABLISHED:
            return None
        payloads = address_notifies(sa)
        if not payloads:
            return None
        payloads += policy_notifies(sa)
        self.cookie2 = new_cookie2(sa)
        if self.cookie2 is not None:
            payloads.append(Notify(NotifyType.COOKIE2, self.cookie2))
        return payloads

    def process_response(self, message: "Message", now: float) -> bool:
        raise_peer_errors(message)
        cookie2_matches(self.sa, message, self.cookie2, now)
        return True

    def failed(self, error: "ProtocolError", now: float) -> None:
        _log(self.sa, logging.WARNING, "peer rejected the address list update: %s", error)


class MobikeResponder(InformationalResponder):
    """INFORMATIONAL requests with MOBIKE notifies: updates, address lists, COOKIE2, NAT checks."""

    kind = "mobike"
    __slots__ = ("update", "addresses", "path", "nat")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.update = False
        self.addresses: tuple[str, ...] | None = None
        self.path: Path | None = None
        self.nat: tuple[bool, bool] | None = None

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        payloads = super().process_request(message, now)
        if self.delete_ike or not sa.mobike:
            return payloads  # MOBIKE notifies mean nothing unless MOBIKE was negotiated (RFC 4555 §3.1)
        self.path = local, remote = sa.received_on
        check_no_nats(message, local, remote)
        cookie2 = message.notify(NotifyType.COOKIE2)
        if cookie2 is not None and not COOKIE2_MIN <= len(cookie2.data) <= COOKIE2_MAX:
            raise InvalidSyntax(f"COOKIE2 of {len(cookie2.data)} octets")  # RFC 4555 §4.2.5
        self.addresses = read_address_list(message)
        self.nat = nat_flags(sa, message, local, remote)
        self.update = message.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None
        if self.update and sa.mobike_initiator:
            _log(sa, logging.WARNING, "ignored UPDATE_SA_ADDRESSES from the original responder (RFC 4555 §3.5)")
            self.update = False
        if self.update:
            _check_acceptable(sa, local, remote)

        if self.nat is not None:
            payloads += natd_payloads(sa.spi_i, sa.spi_r, local, remote)  # RFC 4555 §3.8
        if cookie2 is not None:
            payloads.append(Notify(NotifyType.COOKIE2, cookie2.data))  # RFC 4555 §3.7
        return payloads

    def response_sent(self, now: float) -> None:
        from .sa import IkeSaState

        super().response_sent(now)
        sa = self.sa
        if sa.state == IkeSaState.CLOSED:
            return
        if self.addresses is not None:
            store_peer_addresses(sa, self.addresses)
        if self.update:
            self._apply_update(now)

    def _apply_update(self, now: float) -> None:
        from .switch import update_arrived

        sa = self.sa
        if self.path != (sa.local, sa.remote):
            sa.move_path(*self.path, now)  # RFC 4555 §3.5: an outstanding request follows at once
        confirm_path(sa, self.path, self.nat, "peer update", now)
        update_arrived(newest(sa), now)


def _check_acceptable(sa: "IkeSa", local: Address, remote: Address) -> None:
    """Raise UnacceptableAddresses unless the connection's policy allows the new path."""
    if not usable_address(remote[0]):
        raise UnacceptableAddresses(f"peer address {remote[0]} cannot carry an IKE SA")
    if not sa.config.matches_addresses(local[0], remote[0]):
        raise UnacceptableAddresses(f"path {local[0]} → {remote[0]} is outside the connection's "
                                    "local_addrs / remote_addrs")


def carries_mobike(message: "Message") -> bool:
    return any(notify.notify_type in MOBIKE_NOTIFIES for notify in message.notifies())


register_responder(ExchangeType.INFORMATIONAL, carries_mobike, MobikeResponder, first=True)
