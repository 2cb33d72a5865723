"""IKE_SA_INIT (RFC 7296 §1.2): proposals, Diffie-Hellman, nonces and the first extensions.

    Initiator                         Responder
    HDR, SAi1, KEi, Ni, N(NAT_DETECTION_*), [N(IKEV2_FRAGMENTATION_SUPPORTED)],
         [N(SIGNATURE_HASH_ALGORITHMS)]  -->
                                 <--  HDR, SAr1, KEr, Nr, N(NAT_DETECTION_*), [CERTREQ], ...

The responder may instead respond with N(COOKIE) (RFC 7296 §2.6, sent by the endpoint) or
N(INVALID_KE_PAYLOAD) with the group it wants (§1.2); the initiator then repeats the request
with message ID 0, the COOKIE first and, if asked, a KE payload of the requested group.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import struct
from typing import TYPE_CHECKING

from .auth import SUPPORTED_HASH_ALGORITHMS
from .child import check_selected, select_with_ke
from .config import AuthKind
from .constants import CertEncoding, ExchangeType, HashAlgorithm, NotifyType, PayloadType, ProtocolId
from .crypto import CryptoError, InvalidPublicValue, derive_ike_keys, dh_group_by_id
from .errors import InvalidSyntax, NoProposalChosen, ProtocolError, peer_error
from .exchange import Initiator, Responder
from .payloads import CertificateRequest, KeyExchange, Nonce, Notify, SecurityAssociation
from .proposal import Proposal, ProposalError, ike_algorithms
from .rules import check_payloads

if TYPE_CHECKING:
    from .events import Address
    from .message import Message
    from .sa import IkeSa

NONCE_SIZE = 32  # at least half the key size of every supported PRF (RFC 7296 §2.10)
MAX_RETRIES = 3  # COOKIE or INVALID_KE_PAYLOAD responses accepted per IKE_SA_INIT
_U16 = struct.Struct("!H")

logger = logging.getLogger(__name__)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


# --- helpers shared with the other exchanges --------------------------------------------------


def raise_peer_errors(message: "Message") -> None:
    """Raise the first error notify of a response as an exception (RFC 7296 §3.10.1)."""
    for notify in message.notifies():
        if notify.is_error:
            raise peer_error(notify.notify_type, notify.data)


@functools.lru_cache(maxsize=4096)
def packed_address(host: str) -> bytes:
    """Return an IP address in network byte order (cached: a host has few addresses)."""
    return ipaddress.ip_address(host).packed


def natd_hash(spi_i: bytes, spi_r: bytes, address: "Address") -> bytes:
    """NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 §2.23)."""
    return hashlib.sha1(spi_i + spi_r + packed_address(address[0]) + _U16.pack(address[1])).digest()


def natd_payloads(spi_i: bytes, spi_r: bytes, local: "Address", remote: "Address") -> list[Notify]:
    return [
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, natd_hash(spi_i, spi_r, local)),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, natd_hash(spi_i, spi_r, remote)),
    ]


def detect_nat(sa: "IkeSa", message: "Message", spi_r: bytes) -> None:
    """Set `nat_local`/`nat_remote` from the peer's NAT_DETECTION_* notifies (RFC 7296 §2.23).

    The peer's DESTINATION hashes name the address it sent to: if none matches our address, a
    NAT changed it, so this side is behind a NAT. Its SOURCE hashes name its own address: if
    none matches where the message came from, the peer is behind a NAT. A peer that sends
    neither notify does not do NAT traversal, and no NAT is assumed.
    """
    sources = [n.data for n in message.notifies() if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    destinations = [n.data for n in message.notifies() if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not sources and not destinations:
        return
    sa.nat_local = natd_hash(sa.spi_i, spi_r, sa.local) not in destinations
    sa.nat_remote = natd_hash(sa.spi_i, spi_r, sa.remote) not in sources


def extension_notifies(sa: "IkeSa") -> list:
    """N(IKEV2_FRAGMENTATION_SUPPORTED) and N(SIGNATURE_HASH_ALGORITHMS) as configured."""
    config = sa.config
    payloads = []
    if config.fragmentation:
        payloads.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    if AuthKind.PUBKEY in (config.auth, config.peer_auth):
        payloads.append(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"".join(_U16.pack(h) for h in SUPPORTED_HASH_ALGORITHMS)))
    return payloads


def read_extensions(sa: "IkeSa", message: "Message") -> None:
    """Record fragmentation support and the peer's signature hashes."""
    sa.fragmentation = sa.config.fragmentation and message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    hashes = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if hashes is not None:
        if len(hashes.data) % 2:
            raise InvalidSyntax("SIGNATURE_HASH_ALGORITHMS data has an odd length")
        values = [_U16.unpack_from(hashes.data, i)[0] for i in range(0, len(hashes.data), 2)]
        # RFC 7427 §4: unknown hash algorithms are ignored.
        sa.setup.peer_hash_algorithms = tuple(HashAlgorithm(v) for v in values if v in HashAlgorithm._value2member_map_)


def derive_keys(sa: "IkeSa", proposal: Proposal, dh, peer_public: bytes, nonce_i: bytes, nonce_r: bytes) -> None:
    """Compute g^ir and the IKE SA keys (RFC 7296 §2.14) and install them on `sa`."""
    try:
        algorithms = ike_algorithms(proposal)
    except ProposalError as error:
        raise NoProposalChosen(str(error)) from None
    try:
        shared = dh.shared_secret(peer_public)
    except InvalidPublicValue as error:
        raise InvalidSyntax(f"invalid KE data: {error}") from None
    keys = derive_ike_keys(algorithms.prf, algorithms.encr, algorithms.integ, nonce_i, nonce_r, shared, sa.spi_i, sa.spi_r)
    sa.install_keys(algorithms, keys)
    sa.ike_proposal = proposal
    sa.setup.sk_pi = keys.sk_pi
    sa.setup.sk_pr = keys.sk_pr
    sa.setup.nonce_i = nonce_i
    sa.setup.nonce_r = nonce_r


def ike_proposals(sa: "IkeSa", spi: bytes = b"") -> list[Proposal]:
    return [Proposal(i + 1, ProtocolId.IKE, spi, tuple(p)) for i, p in enumerate(sa.config.ike_transforms)]


def requested_group(message: "Message") -> int | None:
    """Return the group of an INVALID_KE_PAYLOAD notify in a response, or None."""
    notify = message.notify(NotifyType.INVALID_KE_PAYLOAD)
    if notify is None:
        return None
    if len(notify.data) != 2:
        raise InvalidSyntax(f"INVALID_KE_PAYLOAD data of {len(notify.data)} octets")
    return _U16.unpack(notify.data)[0]


# --- initiator -------------------------------------------------------------------------------


class IkeSaInitInitiator(Initiator):
    exchange_type = ExchangeType.IKE_SA_INIT
    kind = "ike-sa-init"
    __slots__ = ("group", "dh", "nonce", "cookie", "retries")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.group = sa.config.dh_groups[0]
        self.dh = None
        self.nonce = sa.endpoint.random(NONCE_SIZE)
        self.cookie: bytes | None = None
        self.retries = 0

    def build_request(self, now: float) -> list:
        sa = self.sa
        if self.dh is None:
            self.dh = dh_group_by_id(self.group).generate(sa.endpoint.random)
        payloads: list = []
        if self.cookie is not None:
            payloads.append(Notify(NotifyType.COOKIE, self.cookie))  # RFC 7296 §2.6: COOKIE comes first
        payloads += [
            SecurityAssociation(ike_proposals(sa)),
            KeyExchange(self.group, self.dh.public_bytes()),
            Nonce(self.nonce),
        ]
        payloads += natd_payloads(sa.spi_i, bytes(8), sa.local, sa.remote)
        payloads += extension_notifies(sa)

        from .redirect import init_request_notifies

        payloads += init_request_notifies(sa)  # REDIRECT_SUPPORTED, RFC 5685
        return payloads

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        if self._retry_requested(message):
            return False
        raise_peer_errors(message)

        proposal = check_selected(message.get(PayloadType.SA), sa.config.ike_transforms, ProtocolId.IKE)
        if proposal.spi:
            raise InvalidSyntax("IKE_SA_INIT response proposal carries an SPI")
        ke = message.get(PayloadType.KE)
        if proposal.dh() is None or ke.dh_group != proposal.dh().id:
            raise InvalidSyntax(f"KE group {ke.dh_group} differs from the selected proposal")
        if message.spi_r == bytes(8):
            raise InvalidSyntax("IKE_SA_INIT response without responder SPI")

        sa.spi_r = message.spi_r
        try:
            derive_keys(sa, proposal, self.dh, ke.data, self.nonce, message.get(PayloadType.NONCE).data)
        except ProtocolError:
            sa.spi_r = bytes(8)  # keep accepting the genuine response
            raise
        self.dh = None
        sa.setup.init_request = sa.request[0]
        sa.setup.init_response = message.raw
        detect_nat(sa, message, sa.spi_r)
        read_extensions(sa, message)
        self._float_ports()
        _log(sa, logging.DEBUG, "IKE_SA_INIT done, NAT local %s remote %s", sa.nat_local, sa.nat_remote)

        from .ike_auth import IkeAuthInitiator

        sa.start(IkeAuthInitiator(sa), now, front=True)
        return True

    def _retry_requested(self, message: "Message") -> bool:
        sa = self.sa
        cookie = message.notify(NotifyType.COOKIE)
        group = requested_group(message)
        if cookie is None and group is None:
            return False
        if self.retries >= MAX_RETRIES:
            raise InvalidSyntax(f"responder asked {self.retries + 1} times for a COOKIE or another KE group")
        self.retries += 1
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64:
                raise InvalidSyntax(f"COOKIE of {len(cookie.data)} octets")  # RFC 7296 §2.6: 1 to 64 octets
            self.cookie = cookie.data
            _log(sa, logging.INFO, "responder demands a COOKIE, repeating IKE_SA_INIT")
            return True
        if group not in sa.config.dh_groups or group == self.group:
            raise NoProposalChosen(f"responder asks for key exchange method {group}, which is not configured")
        _log(sa, logging.INFO, "responder asks for key exchange method %d instead of %d, repeating IKE_SA_INIT", group, self.group)
        self.group = group
        self.dh = None
        return True

    def _float_ports(self) -> None:
        # RFC 7296 §2.23: with a NAT, continue on the NAT-T port. RFC 4555 §3.1: a MOBIKE
        # initiator may move to it at once, so that a NAT appearing later needs no port change.
        sa = self.sa
        settings = sa.endpoint.settings
        if not (sa.nat_local or sa.nat_remote or sa.config.mobike):
            return
        if sa.local[1] == settings.ike_port:
            sa.local = (sa.local[0], settings.natt_port)
        if sa.remote[1] == settings.ike_port:
            sa.remote = (sa.remote[0], settings.natt_port)

    def failed(self, error: ProtocolError, now: float) -> None:
        self.sa.fail(now, f"IKE_SA_INIT failed: {error}", error.notify_type)


# --- responder -------------------------------------------------------------------------------


class IkeSaInitResponder(Responder):
    """Responder half; run by the endpoint through `respond_to_ike_sa_init`, not through the table."""

    __slots__ = ()

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        config = sa.config
        ke = message.get(PayloadType.KE)
        offered = [p for p in message.get(PayloadType.SA).proposals if p.protocol == ProtocolId.IKE and not p.spi]
        proposal = select_with_ke(offered, config.ike_transforms, ke.dh_group)
        try:
            group = dh_group_by_id(proposal.dh().id)
        except CryptoError as error:
            raise NoProposalChosen(str(error)) from None
        dh = group.generate(sa.endpoint.random)

        sa.spi_r = sa.endpoint.new_ike_spi()
        nonce_r = sa.endpoint.random(NONCE_SIZE)
        derive_keys(sa, proposal, dh, ke.data, message.get(PayloadType.NONCE).data, nonce_r)
        sa.setup.init_request = message.raw
        detect_nat(sa, message, bytes(8))
        read_extensions(sa, message)

        from .redirect import read_init_request

        read_init_request(sa, message)

        payloads: list = [
            SecurityAssociation([Proposal(proposal.number, ProtocolId.IKE, b"", proposal.transforms)]),
            KeyExchange(group.id, dh.public_bytes()),
            Nonce(nonce_r),
        ]
        payloads += natd_payloads(sa.spi_i, sa.spi_r, sa.local, sa.remote)
        payloads += extension_notifies(sa)
        if config.peer_auth == AuthKind.PUBKEY and config.send_certreq and config.cas:
            payloads.append(CertificateRequest(CertEncoding.X509_SIGNATURE, config.ca_key_hashes))
        return payloads

    def response_sent(self, now: float) -> None:
        from .sa import IkeSaState

        sa = self.sa
        sa.setup.init_response = sa.response[0]
        sa.state = IkeSaState.HALF_OPEN
        sa.half_open_until = now + sa.endpoint.settings.half_open_timeout


def respond_to_ike_sa_init(sa: "IkeSa", message: "Message", local: "Address", remote: "Address", now: float) -> bool:
    """Answer an IKE_SA_INIT request on a new responder IKE SA; return True if the SA now exists."""
    sa.peer_message_id = 1
    responder = IkeSaInitResponder(sa)
    try:
        check_payloads(message)
        payloads = responder.process_request(message, now)
    except ProtocolError as error:
        sa.send_error_response(ExchangeType.IKE_SA_INIT, 0, error, local, remote)
        return False
    sa.send_response(ExchangeType.IKE_SA_INIT, 0, payloads, local, remote)
    responder.response_sent(now)
    _log(sa, logging.DEBUG, "IKE_SA_INIT response sent, NAT local %s remote %s", sa.nat_local, sa.nat_remote)
    return True
