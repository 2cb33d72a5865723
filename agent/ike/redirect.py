"""IKEv2 redirect during an established IKE SA (RFC 5685), both halves.

The original initiator announces support in IKE_SA_INIT with N(REDIRECT_SUPPORTED). The gateway
may then redirect the IKE SA in an INFORMATIONAL exchange (RFC 5685):

    Gateway (original responder)      Client (original initiator)
    HDR, SK {N(REDIRECT, new GW)}  -->
                                 <--  HDR, SK {}

The client sets up a new IKE SA with the new gateway, naming the old one in N(REDIRECTED_FROM)
of its IKE_SA_INIT request, and deletes the old IKE SA once the new one is established. The
CHILD_SAs are negotiated afresh: unlike a MOBIKE move, a redirect re-keys everything.

Gateway identities (REDIRECT and REDIRECTED_FROM data): type (1 IPv4, 2 IPv6, 3 FQDN), length,
identity; the REDIRECT of an INFORMATIONAL exchange carries no nonce.

NOTE: a REDIRECT in an IKE_SA_INIT or IKE_AUTH response (RFC 5685) is not followed.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from typing import TYPE_CHECKING

from .constants import ExchangeType, NotifyType
from .errors import InvalidSyntax
from .exchange import Initiator, register_responder
from .ike_sa_init import raise_peer_errors
from .informational import InformationalResponder
from .mobike import state
from .payloads import Notify

if TYPE_CHECKING:
    from .errors import ProtocolError
    from .message import Message
    from .sa import IkeSa

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5  # redirects followed in a row, against loops between gateways (RFC 5685 asks for a limit)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


class GatewayIdentityType(enum.IntEnum):
    IPV4 = 1
    IPV6 = 2
    FQDN = 3


def encode_gateway(gateway: str) -> bytes:
    """Encode a gateway identity: an IP address, or else a domain name."""
    try:
        address = ipaddress.ip_address(gateway)
    except ValueError:
        identity = gateway.encode("ascii")
        kind = GatewayIdentityType.FQDN
    else:
        identity = address.packed
        kind = GatewayIdentityType.IPV4 if address.version == 4 else GatewayIdentityType.IPV6
    if not 0 < len(identity) < 256:
        raise ValueError(f"gateway identity {gateway!r} must have 1 to 255 octets")
    return bytes((kind, len(identity))) + identity


def decode_gateway(data: bytes) -> tuple[GatewayIdentityType, str]:
    """Decode a gateway identity without nonce; raise InvalidSyntax when it is malformed."""
    if len(data) < 2 or len(data) != 2 + data[1]:
        raise InvalidSyntax(f"gateway identity of {len(data)} octets with length field {data[1] if len(data) > 1 else '-'}")
    kind, identity = data[0], data[2:]
    if kind == GatewayIdentityType.IPV4 and len(identity) == 4 or kind == GatewayIdentityType.IPV6 and len(identity) == 16:
        return GatewayIdentityType(kind), str(ipaddress.ip_address(identity))
    if kind == GatewayIdentityType.FQDN and identity:
        try:
            return GatewayIdentityType.FQDN, identity.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidSyntax("gateway FQDN is not ASCII") from None
    raise InvalidSyntax(f"gateway identity of type {kind} with {len(identity)} octets")


# --- IKE_SA_INIT ----------------------------------------------------------------------------


def init_request_notifies(sa: "IkeSa") -> list[Notify]:
    """N(REDIRECT_SUPPORTED) and, on a redirected IKE SA, N(REDIRECTED_FROM) for IKE_SA_INIT."""
    if not sa.config.accept_redirect:
        return []
    notifies = [Notify(NotifyType.REDIRECT_SUPPORTED)]
    redirected_from = sa.mobility.redirected_from if sa.mobility is not None else None
    if redirected_from is not None:
        notifies.append(Notify(NotifyType.REDIRECTED_FROM, encode_gateway(redirected_from)))
    return notifies


def read_init_request(sa: "IkeSa", message: "Message") -> None:
    """Note whether the peer, as client, accepts REDIRECT on this IKE SA."""
    if message.notify(NotifyType.REDIRECT_SUPPORTED) is not None:
        state(sa).peer_supports_redirect = True
    origin = message.notify(NotifyType.REDIRECTED_FROM)
    if origin is not None:
        try:
            _, gateway = decode_gateway(origin.data)
        except InvalidSyntax:
            gateway = "an unreadable gateway identity"
        _log(sa, logging.INFO, "peer was redirected here from %s", gateway)


# --- gateway --------------------------------------------------------------------------------


class RedirectInitiator(Initiator):
    """N(REDIRECT, new gateway) in an INFORMATIONAL request, sent by the gateway."""

    exchange_type = ExchangeType.INFORMATIONAL
    kind = "redirect"
    __slots__ = ("gateway",)

    def __init__(self, sa: "IkeSa", gateway: str):
        super().__init__(sa)
        self.gateway = gateway

    def describe(self) -> str:
        return f"REDIRECT to {self.gateway}"

    def build_request(self, now: float) -> list | None:
        sa = self.sa
        if not state(sa).peer_supports_redirect:
            return None  # RFC 5685: only to clients that sent REDIRECT_SUPPORTED
        _log(sa, logging.INFO, "redirecting the peer to %s", self.gateway)
        return [Notify(NotifyType.REDIRECT, encode_gateway(self.gateway))]

    def process_response(self, message: "Message", now: float) -> bool:
        from .switch import redirect_sent

        raise_peer_errors(message)
        redirect_sent(self.sa)
        return True

    def failed(self, error: "ProtocolError", now: float) -> None:
        from .switch import fail_switch

        _log(self.sa, logging.WARNING, "peer rejected the redirect to %s: %s", self.gateway, error)
        fail_switch(self.sa, f"peer rejected the redirect: {error}", error.notify_type)


# --- client ---------------------------------------------------------------------------------


class RedirectResponder(InformationalResponder):
    """Follows N(REDIRECT) as original initiator that sent REDIRECT_SUPPORTED."""

    kind = "redirect"
    __slots__ = ("gateway",)

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.gateway: str | None = None

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        payloads = super().process_request(message, now)
        if self.delete_ike:
            return payloads
        if not (sa.mobike_initiator and sa.config.accept_redirect):
            _log(sa, logging.WARNING, "ignored REDIRECT: this side did not offer REDIRECT_SUPPORTED")
            return payloads
        _, self.gateway = decode_gateway(message.notify(NotifyType.REDIRECT).data)
        return payloads

    def response_sent(self, now: float) -> None:
        from .sa import IkeSaState

        super().response_sent(now)
        sa = self.sa
        if self.gateway is None or sa.state == IkeSaState.CLOSED:
            return
        sa.endpoint.follow_redirect(sa, self.gateway, now)


def carries_redirect(message: "Message") -> bool:
    return message.notify(NotifyType.REDIRECT) is not None


register_responder(ExchangeType.INFORMATIONAL, carries_redirect, RedirectResponder, first=True)
