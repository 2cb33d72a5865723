"""SWITCH_TO_IP_ADDRESS: the original responder requests that the original initiator move the IKE SA.

RFC 4555 lets only the original initiator move an IKE SA. With this extension the original
responder R requests a move to its address N, from its current address O:

    R (original responder)            I (original initiator)
    HDR, SK {N(SWITCH_TO_IP_ADDRESS, N)}  -->               from O to I's current address
                                 <--  HDR, SK {}            to N, from I's current address
                                 <--  HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*),
                                               [N(COOKIE2)]}   to N (mobike.py)
    HDR, SK {N(NAT_DETECTION_*), [N(COOKIE2)]}  -->          from N

I accepts only when it set flag 0x01 in MOBIKE_SUPPORTED, and only for a unicast N of the same
family that its policy allows, at most once per `switch_min_interval`. It rejects a malformed
request with INVALID_SYNTAX and a refused address with UNACCEPTABLE_ADDRESSES, both sent to O;
without the negotiated flag it answers empty to O and ignores the request. The notify type is
`EndpointSettings.switch_notify_type` (40980 by default, private use).

R never sends the request to a peer without the flag. It falls back to an address list update
(RFC 4555 §3.6), and when the peer has not moved after `switch_fallback_delay` to REDIRECT
(RFC 5685, redirect.py) if the peer supports that.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

from .constants import ExchangeType, ProtocolId
from .errors import InvalidSyntax, UnacceptableAddresses
from .events import Address, PrepareInbound, SwitchAccepted, SwitchFailed
from .exchange import Initiator, register_responder
from .ike_sa_init import packed_address, raise_peer_errors
from .mobike import (
    AddressListInitiator,
    MobikeResponder,
    change_path,
    format_path,
    newest,
    request_update,
    same_family,
    state,
    usable_address,
)
from .payloads import Notify

if TYPE_CHECKING:
    from .errors import ProtocolError
    from .message import Message
    from .sa import IkeSa

logger = logging.getLogger(__name__)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


class PendingSwitch:
    """A switch of this side, the original responder, to `local` that is under way.

    `stage` is "switch" (SWITCH_TO_IP_ADDRESS sent), "accepted" (the peer's response arrived at N),
    "addresses" (address list sent to a peer without the flag) or "redirect" (REDIRECT sent).
    """

    __slots__ = ("local", "reason", "stage", "deadline")

    def __init__(self, local: Address, reason: str):
        self.local = local
        self.reason = reason
        self.stage = ""
        self.deadline: float | None = None


# --- original responder: asking for the move ------------------------------------------------------


def switch_to(sa: "IkeSa", host: str, now: float, reason: str) -> None:
    """Move the IKE SA to this side's address `host`, whichever role this side has.

    The original initiator moves itself (mobike.change_path). The original responder sends
    SWITCH_TO_IP_ADDRESS to the peer, or uses the fallbacks described in the module docstring.
    """
    from .sa import IkeSaState

    if sa.state != IkeSaState.ESTABLISHED:
        raise ValueError(f"IKE SA {sa.unique_id} is {sa.state.value}, not established")
    host = str(ipaddress.ip_address(host))
    if sa.mobike and sa.mobike_initiator:
        change_path(sa, host, sa.remote[0], now, reason)
        return
    if not same_family(host, sa.local[0]):
        raise ValueError(f"cannot switch from {sa.local[0]} to {host}: the peer accepts only the same address family")
    if not usable_address(host):
        raise ValueError(f"{host} cannot carry an IKE SA (loopback, multicast, link-local or unspecified)")
    m = state(sa)
    if host == sa.local[0]:
        _log(sa, logging.INFO, "IKE SA already uses %s, no switch needed", host)
        return
    if m.switch is not None and m.switch.local[0] == host:
        _log(sa, logging.INFO, "switch to %s already under way", host)
        return
    if m.switch is not None:
        _log(sa, logging.INFO, "switch to %s superseded", m.switch.local[0])
        fail_switch(sa, "superseded by a switch to " + host)

    # N joins this side's address list, which the fallback to RFC 4555 announces.
    addresses = m.local_addresses if m.local_addresses is not None else sa.endpoint.local_addresses
    if addresses is None or host not in addresses:
        m.local_addresses = tuple(addresses or ()) + (host,)
    pending = m.switch = PendingSwitch((host, sa.endpoint.settings.natt_port), reason)
    _log(sa, logging.INFO, "switch %s → %s, reason: %s", sa.local[0], host, reason or "unspecified")
    spis = tuple((child.spi_in, child.spi_out) for child in sa.children.values())
    sa.endpoint.emit(PrepareInbound(sa.unique_id, sa.name, pending.local, sa.remote, spis))
    _start(sa, pending, now)


def _start(sa: "IkeSa", pending: PendingSwitch, now: float) -> None:
    from .redirect import RedirectInitiator

    m = state(sa)
    config = sa.config
    if sa.mobike and sa.peer_accepts_switch:
        pending.stage = "switch"
        pending.deadline = now + config.switch_timeout
        if sa.request is not None:
            # The switch waits for the outstanding request, whose response goes to O, which may
            # be unreachable now. A copy from N lets a peer that is not behind a NAT respond there.
            _log(sa, logging.INFO, "request %d outstanding, sending a copy from %s", sa.next_message_id,
                 pending.local[0])
            sa._transmit(sa.request, pending.local, sa.remote)
        sa.start(SwitchInitiator(sa, pending), now, front=True)
    elif sa.mobike:
        # The peer did not set the flag: RFC 4555 behaviour, then REDIRECT.
        pending.stage = "addresses"
        pending.deadline = now + config.switch_fallback_delay
        _log(sa, logging.INFO, "peer does not accept SWITCH_TO_IP_ADDRESS, announcing %s in the address list",
             pending.local[0])
        sa.start(AddressListInitiator(sa), now, front=True)
    elif m.peer_supports_redirect:
        pending.stage = "redirect"
        pending.deadline = now + config.switch_timeout
        sa.start(RedirectInitiator(sa, pending.local[0]), now, front=True)
    else:
        fail_switch(sa, "the peer supports neither MOBIKE nor redirects")


def switch_deadline_reached(sa: "IkeSa", now: float) -> None:
    """Go on from an address list update to REDIRECT, or give the switch up."""
    from .redirect import RedirectInitiator

    m = state(sa)
    pending = m.switch
    if pending.stage == "addresses" and m.peer_supports_redirect:
        _log(sa, logging.INFO, "peer did not move to %s within %.1f s, redirecting it there", pending.local[0],
             sa.config.switch_fallback_delay)
        pending.stage = "redirect"
        pending.deadline = now + sa.config.switch_timeout
        sa.start(RedirectInitiator(sa, pending.local[0]), now, front=True)
        return
    fail_switch(sa, f"peer did not move to {pending.local[0]} ({pending.stage} stage timed out)")


def update_arrived(sa: "IkeSa", now: float) -> None:
    """Complete a pending switch once the peer's UPDATE_SA_ADDRESSES moved the IKE SA to its address."""
    m = state(sa)
    pending = m.switch
    if pending is not None and sa.local[0] == pending.local[0]:
        _log(sa, logging.INFO, "switch to %s complete after the peer's update", pending.local[0])
        m.switch = None


def redirect_sent(sa: "IkeSa") -> None:
    """End the switch after the peer acknowledged REDIRECT, because it re-establishes at the new address."""
    m = state(sa)
    if m.switch is not None and m.switch.stage == "redirect":
        _log(sa, logging.INFO, "peer acknowledged the redirect to %s", m.switch.local[0])
        m.switch = None


def fail_switch(sa: "IkeSa", reason: str, notify=None) -> None:
    m = state(sa)
    pending = m.switch
    if pending is None:
        return
    m.switch = None
    _log(sa, logging.WARNING, "switch to %s failed: %s", pending.local[0], reason)
    sa.endpoint.count("switches_failed")
    sa.endpoint.emit(SwitchFailed(sa.unique_id, sa.name, pending.local, reason, notify))


class SwitchInitiator(Initiator):
    """N(SWITCH_TO_IP_ADDRESS, N), sent by the original responder from its current address O."""

    exchange_type = ExchangeType.INFORMATIONAL
    kind = "switch"
    __slots__ = ("pending",)

    def __init__(self, sa: "IkeSa", pending: PendingSwitch):
        super().__init__(sa)
        self.pending = pending

    def describe(self) -> str:
        return f"SWITCH_TO_IP_ADDRESS to {self.pending.local[0]}"

    @property
    def also_from(self) -> tuple[Address, ...]:
        # The request goes from O, which only a NAT mapping towards the peer may need, and from N,
        # which still works when O has been removed from this host.
        return (self.pending.local,)

    def build_request(self, now: float) -> list | None:
        sa = self.sa
        if state(sa).switch is not self.pending:
            return None  # superseded or done before it could be sent
        return [Notify(sa.endpoint.settings.switch_notify_type, packed_address(self.pending.local[0]))]

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        raise_peer_errors(message)
        if state(sa).switch is not self.pending:
            return True
        # An accepting peer sends the response to N; a peer that does not follow the request
        # (extension not negotiated, rate limit) sends it to O.
        arrived = sa.received_on[0][0]
        if arrived != self.pending.local[0]:
            fail_switch(sa, f"peer's response arrived at {arrived}: it did not accept the switch")
            return True
        _log(sa, logging.INFO, "peer accepted the switch to %s, waiting for its update", arrived)
        self.pending.stage = "accepted"
        return True

    def failed(self, error: "ProtocolError", now: float) -> None:
        if state(self.sa).switch is self.pending:
            fail_switch(self.sa, f"peer rejected it: {error}", error.notify_type)


# --- original initiator: following the request --------------------------------------------------


def read_switch_address(notify: Notify) -> str:
    """Return N from the notify, or raise InvalidSyntax for malformed data."""
    if notify.protocol_id != ProtocolId.NONE or notify.spi:
        raise InvalidSyntax("SWITCH_TO_IP_ADDRESS with a protocol ID or SPI")
    if len(notify.data) not in (4, 16):
        raise InvalidSyntax(f"SWITCH_TO_IP_ADDRESS with {len(notify.data)} octets of data")
    return str(ipaddress.ip_address(notify.data))


def check_switch_address(sa: "IkeSa", host: str) -> None:
    """Raise UnacceptableAddresses unless this side may move the IKE SA to the peer's `host`."""
    if not same_family(host, sa.remote[0]):
        raise UnacceptableAddresses(f"{host} is of another address family than {sa.remote[0]}")
    if not usable_address(host):
        raise UnacceptableAddresses(f"{host} is not a routable unicast address")
    m = state(sa)
    own = {sa.local[0], *(m.local_addresses or ()), *(sa.endpoint.local_addresses or ())}
    if host in own:
        raise UnacceptableAddresses(f"{host} is an address of this host")
    if not sa.config.accepts_switch_to(host):
        raise UnacceptableAddresses(f"{host} is not an acceptable peer address for connection {sa.name!r}")
    # NOTE: whether a route to `host` exists is the driver's knowledge; the UPDATE_SA_ADDRESSES
    # that follows fails over to PathSuspect/probing when it does not.


class SwitchResponder(MobikeResponder):
    """Handles SWITCH_TO_IP_ADDRESS as original initiator; other private-use notifies fall through."""

    kind = "switch"
    __slots__ = ("target", "response_path")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.target: str | None = None
        self.response_path: tuple[Address, Address] | None = None

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        notify = message.notify(sa.endpoint.settings.switch_notify_type)
        if notify is None:
            return super().process_request(message, now)
        if not (sa.mobike and sa.mobike_initiator and sa.config.accept_switch):
            _log(sa, logging.INFO, "SWITCH_TO_IP_ADDRESS from a peer that may not send it, ignored")
            return []
        host = read_switch_address(notify)
        check_switch_address(sa, host)
        m = state(sa)
        if m.last_switch_at is not None and now - m.last_switch_at < sa.config.switch_min_interval:
            sa.endpoint.count("switches_rate_limited")
            _log(sa, logging.WARNING, "peer asks to switch to %s %.1f s after the last switch (minimum %.1f s): "
                 "answered, not followed", host, now - m.last_switch_at, sa.config.switch_min_interval)
            return []
        self.target = host
        # Deliberate departure from RFC 7296 §2.11: the response goes to N, not to the request's
        # source O, so that it opens the NAT and firewall state on the path to N.
        self.response_path = (sa.local, (host, sa.remote[1]))
        return []

    def response_sent(self, now: float) -> None:
        super().response_sent(now)
        host = self.target
        if host is None:
            return
        sa = newest(self.sa)  # the IKE SA that replaced this one by a rekey, if any, moves instead
        m = state(sa)
        state(self.sa).last_switch_at = m.last_switch_at = now
        m.peer_switch_target = host
        _log(sa, logging.INFO, "switch %s → %s, reason: peer request", sa.remote[0], host)
        path = (sa.local, (host, sa.remote[1]))
        m.probe_paths = []
        if path != (sa.local, sa.remote):
            sa.move_path(*path, now)
        sa.endpoint.emit(SwitchAccepted(sa.unique_id, sa.name, path[0], path[1]))
        request_update(sa, now, "peer switch")


def carries_private_notify(message: "Message") -> bool:
    # The switch notify type is configurable within the private-use range, but the predicate
    # gets only the message, so every private-use status notify comes here first.
    return any(notify.notify_type >= 40960 for notify in message.notifies())


register_responder(ExchangeType.INFORMATIONAL, carries_private_notify, SwitchResponder, first=True)
