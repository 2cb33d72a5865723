"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, authentication and the first CHILD_SA.

    Initiator                         Responder
    HDR, SK {IDi, [CERT+,] [N(INITIAL_CONTACT),] [CERTREQ,] [IDr,] AUTH,
             [N(MOBIKE_SUPPORTED),] SAi2, TSi, TSr, [N(USE_TRANSPORT_MODE)]}  -->
                                 <--  HDR, SK {IDr, [CERT+,] AUTH, [N(MOBIKE_SUPPORTED),]
                                               SAr2, TSi, TSr, [N(USE_TRANSPORT_MODE)]}

Each side signs (or MACs with the PSK) its own IKE_SA_INIT message, the peer's nonce and
prf(SK_p, its ID payload). When only the CHILD_SA fails, the IKE SA is still established and
the response carries the error notify instead of SA, TSi and TSr (RFC 7296 §1.2).

MOBIKE_SUPPORTED (RFC 4555 §3.1) from the original initiator carries one octet of flags. Flag
0x01 means that it accepts SWITCH_TO_IP_ADDRESS from the responder. Only the negotiation is done here.

NOTE: EAP and multiple authentication rounds (RFC 4739) are not supported; a request without
AUTH gets AUTHENTICATION_FAILED.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from . import auth
from .child import accept_offer, response_payloads, check_response, establish, offer_payloads, spi_from_bytes
from .config import AuthKind, IkeConfig, Identity
from .constants import MOBIKE_FLAG_SWITCH_ACCEPTED, AuthMethod, CertEncoding, ExchangeType, NotifyType, PayloadType
from .errors import AuthenticationFailed, ProtocolError
from .events import ChildSaFailed, ChildSaReady, IkeSaEstablished
from .exchange import Initiator, Responder, always, register_responder
from .ike_sa_init import raise_peer_errors
from .mobike import address_notifies, check_no_nats, policy_notifies, read_address_list
from .mobike import established as start_mobike
from .payloads import Authentication, Certificate, CertificateRequest, Identification, Notify

if TYPE_CHECKING:
    from .message import Message
    from .sa import IkeSa

logger = logging.getLogger(__name__)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


# --- authentication, both roles --------------------------------------------------------------


def _id_payload(payload_type: PayloadType, identity: Identity) -> Identification:
    return Identification(payload_type, identity.id_type, identity.data)


def _certificate_payloads(config: IkeConfig) -> list[Certificate]:
    certificates = [config.certificate, *config.intermediates]
    return [Certificate(CertEncoding.X509_SIGNATURE, c.public_bytes(Encoding.DER)) for c in certificates]


def _auth_payload(sa: "IkeSa", octets: bytes) -> Authentication:
    """Build our AUTH payload over `octets` (RFC 7296 §2.15, RFC 7427)."""
    config = sa.config
    if config.auth == AuthKind.PSK:
        return Authentication(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, auth.psk_auth(sa.prf, config.psk, octets))
    try:
        method, data = auth.sign(config.private_key, octets, sa.setup.peer_hash_algorithms)
    except auth.AuthError as error:
        raise AuthenticationFailed(f"cannot sign AUTH: {error}") from None
    return Authentication(method, data)


def _verify_peer(sa: "IkeSa", config: IkeConfig, message: "Message", identification: Identification, octets: bytes) -> None:
    """Check the peer's identity and AUTH payload; raise AuthenticationFailed with the reason."""
    identity = Identity(identification.id_type, identification.data)
    payload = message.get(PayloadType.AUTH)
    if payload is None:
        raise AuthenticationFailed("no AUTH payload (EAP is not supported)")

    if config.peer_auth == AuthKind.PSK:
        if config.remote_id is not None and identity != config.remote_id:
            raise AuthenticationFailed(f"peer identity {identity} is not the configured {config.remote_id}")
        if payload.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            raise AuthenticationFailed(f"peer used AUTH method {payload.method}, expected a shared key")
        try:
            auth.verify_psk(sa.prf, config.psk, octets, payload.data)
        except auth.AuthError as error:
            raise AuthenticationFailed(str(error)) from None
        return

    end_entity, intermediates = _peer_certificates(message)
    clock = sa.endpoint.wall_clock
    if clock is None:
        raise AuthenticationFailed("certificate check impossible: the endpoint has no wall clock")
    try:
        auth.validate_chain(end_entity, intermediates, config.cas, clock())
        if not auth.identity_matches(end_entity, identification.id_type, identification.data):
            raise auth.AuthError(f"identity {identity} is not in the certificate")
        # The configured identity is checked against the certificate rather than compared with
        # IDi octet by octet: a DN has several valid DER encodings, and IDi may be another name
        # that the same certificate also carries.
        remote_id = config.remote_id
        if remote_id is not None and remote_id != identity and not auth.identity_matches(
            end_entity, remote_id.id_type, remote_id.data
        ):
            raise auth.AuthError(f"certificate does not prove the configured identity {remote_id}")
        auth.verify(end_entity.public_key(), payload.method, payload.data, octets)
    except auth.AuthError as error:
        raise AuthenticationFailed(str(error)) from None


def _peer_certificates(message: "Message") -> tuple[x509.Certificate, list[x509.Certificate]]:
    certificates = []
    for payload in message.get_all(PayloadType.CERT):
        if payload.encoding != CertEncoding.X509_SIGNATURE:
            continue  # RFC 7296 §3.6: other encodings are optional; hash-and-URL is not supported
        try:
            certificates.append(x509.load_der_x509_certificate(payload.data))
        except ValueError:
            raise AuthenticationFailed("peer sent an invalid certificate") from None
    if not certificates:
        raise AuthenticationFailed("peer sent no X.509 certificate")
    return certificates[0], certificates[1:]


def _signed_octets(sa: "IkeSa", initiator_side: bool, identification: Identification) -> bytes:
    """Return the octets that the given side signs (RFC 7296 §2.15)."""
    setup = sa.setup
    if initiator_side:
        return auth.signed_octets(setup.init_request, setup.nonce_r, sa.prf, setup.sk_pi, identification.encode_body())
    return auth.signed_octets(setup.init_response, setup.nonce_i, sa.prf, setup.sk_pr, identification.encode_body())


def _mark_established(sa: "IkeSa", now: float) -> None:
    from .sa import IkeSaState

    sa.state = IkeSaState.ESTABLISHED
    sa.half_open_until = None
    sa.schedule_rekey(now)
    sa.endpoint.established(sa, now)
    if logger.isEnabledFor(logging.INFO):
        _log(sa, logging.INFO, "IKE SA established with %s (%s), NAT local %s remote %s, MOBIKE %s", sa.remote_identity,
               _describe_proposal(sa.ike_proposal), sa.nat_local, sa.nat_remote, sa.mobike)
    sa.endpoint.emit(
        IkeSaEstablished(
            ike_sa=sa.unique_id,
            name=sa.name,
            spi_i=sa.spi_i,
            spi_r=sa.spi_r,
            initiator=sa.initiator,
            local=sa.local,
            remote=sa.remote,
            local_id=str(sa.local_identity),
            remote_id=str(sa.remote_identity),
            local_behind_nat=sa.nat_local,
            remote_behind_nat=sa.nat_remote,
            mobike=sa.mobike,
            peer_accepts_switch=sa.peer_accepts_switch,
            fragmentation=sa.fragmentation,
        )
    )


def _describe_proposal(proposal) -> str:
    from .proposal import format_proposal

    try:
        return format_proposal(proposal.transforms)
    except ValueError:
        return str(proposal.number)


# --- initiator -------------------------------------------------------------------------------


class IkeAuthInitiator(Initiator):
    exchange_type = ExchangeType.IKE_AUTH
    kind = "ike-auth"
    __slots__ = ("child_config", "child_spi")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.child_config = sa.config.children[0] if sa.config.children else None
        self.child_spi: int | None = None

    def build_request(self, now: float) -> list | None:
        sa = self.sa
        config = sa.config
        sa.local_identity = config.local_id
        idi = _id_payload(PayloadType.IDi, config.local_id)
        payloads: list = [idi]
        if config.auth == AuthKind.PUBKEY:
            payloads += _certificate_payloads(config)
        if config.initial_contact and not sa.endpoint.has_other_sa(sa):
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        if config.peer_auth == AuthKind.PUBKEY and config.send_certreq and config.cas:
            payloads.append(CertificateRequest(CertEncoding.X509_SIGNATURE, config.ca_key_hashes))
        if config.remote_id is not None:
            payloads.append(_id_payload(PayloadType.IDr, config.remote_id))
        try:
            payloads.append(_auth_payload(sa, _signed_octets(sa, True, idi)))
        except AuthenticationFailed as error:
            sa.fail(now, f"IKE_AUTH not sent: {error}")
            return None
        if config.mobike:
            flags = bytes((MOBIKE_FLAG_SWITCH_ACCEPTED,)) if config.accept_switch else b""
            payloads.append(Notify(NotifyType.MOBIKE_SUPPORTED, flags))
            payloads += address_notifies(sa) + policy_notifies(sa)  # RFC 4555 §3.4, §3.9
        if self.child_config is not None:
            self.child_spi = sa.endpoint.allocate_spi(sa.local[0], sa.remote[0])
            payloads += offer_payloads(self.child_config, self.child_spi, self.child_config.esp_transforms_without_dh)
        return payloads

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        if message.get(PayloadType.AUTH) is None:
            raise_peer_errors(message)
        idr = message.get(PayloadType.IDr)
        _verify_peer(sa, sa.config, message, idr, _signed_octets(sa, False, idr))
        sa.remote_identity = Identity(idr.id_type, idr.data)
        sa.mobike = sa.config.mobike and message.notify(NotifyType.MOBIKE_SUPPORTED) is not None
        peer_addresses = read_address_list(message) if sa.mobike else None
        _mark_established(sa, now)
        if sa.mobike:
            start_mobike(sa, peer_addresses)
        self._first_child(message, now)
        sa.setup = None

        from .create_child_sa import CreateChildInitiator

        for child_config in sa.config.children[1:]:
            sa.start(CreateChildInitiator(sa, child_config), now)
        return True

    def _first_child(self, message: "Message", now: float) -> None:
        sa = self.sa
        config = self.child_config
        if config is None:
            return
        try:
            if message.get(PayloadType.SA) is None:
                raise_peer_errors(message)
                raise AuthenticationFailed("IKE_AUTH response has neither SA nor an error notify")
            agreement = check_response(message, config, config.esp_transforms_without_dh)
            child, info = establish(sa, agreement, self.child_spi, spi_from_bytes(agreement.proposal.spi),
                                    initiator=True, ni=sa.setup.nonce_i, nr=sa.setup.nonce_r, shared_secret=None)
        except ProtocolError as error:
            _log(sa, logging.WARNING, "CHILD_SA %s not created: %s", config.name, error)
            sa.endpoint.emit(ChildSaFailed(sa.unique_id, config.name, str(error), error.notify_type))
            if not error.from_peer and message.get(PayloadType.SA) is not None:
                from .informational import DeleteChildInitiator

                sa.start(DeleteChildInitiator(sa, [], spis=[self.child_spi]), now)
            return
        sa.add_child(child, now)
        _log(sa, logging.INFO, "CHILD_SA %s established, %08x_i %08x_o, %s", config.name, child.spi_in, child.spi_out,
               child.mode.value)
        sa.endpoint.emit(ChildSaReady(sa.unique_id, info))
        sa.drop_if_peer_deleted(child)

    def failed(self, error: ProtocolError, now: float) -> None:
        sa = self.sa
        if isinstance(error, AuthenticationFailed) and not error.from_peer:
            # RFC 7296 §2.21.2: tell the responder, in a separate INFORMATIONAL exchange.
            sa.send_notification(ExchangeType.INFORMATIONAL, [Notify(NotifyType.AUTHENTICATION_FAILED)])
        sa.fail(now, f"IKE_AUTH failed: {error}", error.notify_type)


# --- responder -------------------------------------------------------------------------------


class IkeAuthResponder(Responder):
    kind = "ike-auth"
    __slots__ = ("child", "child_error", "initial_contact", "peer_addresses")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.child = None
        self.child_error: ProtocolError | None = None
        self.initial_contact = False
        self.peer_addresses: tuple[str, ...] | None = None

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        idi = message.get(PayloadType.IDi)
        idr = message.get(PayloadType.IDr)
        config = sa.endpoint.config_for_identity(sa, Identity(idi.id_type, idi.data),
                                                 Identity(idr.id_type, idr.data) if idr else None)
        sa.config = config
        sa.local_identity = config.local_id
        _verify_peer(sa, config, message, idi, _signed_octets(sa, True, idi))
        sa.remote_identity = Identity(idi.id_type, idi.data)
        self.initial_contact = message.notify(NotifyType.INITIAL_CONTACT) is not None

        mobike = message.notify(NotifyType.MOBIKE_SUPPORTED)
        if config.mobike and mobike is not None:
            sa.mobike = True
            sa.peer_accepts_switch = bool(mobike.data) and bool(mobike.data[0] & MOBIKE_FLAG_SWITCH_ACCEPTED)
            check_no_nats(message, *sa.received_on)  # RFC 4555 §3.9
            self.peer_addresses = read_address_list(message)

        own_id = _id_payload(PayloadType.IDr, config.local_id)
        payloads: list = [own_id]
        if config.auth == AuthKind.PUBKEY:
            payloads += _certificate_payloads(config)
        payloads.append(_auth_payload(sa, _signed_octets(sa, False, own_id)))
        if sa.mobike:
            payloads.append(Notify(NotifyType.MOBIKE_SUPPORTED))
            payloads += address_notifies(sa)
        payloads += self._first_child(message)
        return payloads

    def _first_child(self, message: "Message") -> list:
        sa = self.sa
        if message.get(PayloadType.SA) is None:
            return []
        try:
            agreement, chosen = accept_offer(message, sa.config.children, in_ike_auth=True)
            spi_in = sa.endpoint.allocate_spi(sa.local[0], sa.remote[0])
            self.child = establish(sa, agreement, spi_in, spi_from_bytes(chosen.spi), initiator=False,
                                   ni=sa.setup.nonce_i, nr=sa.setup.nonce_r, shared_secret=None)
        except ProtocolError as error:
            self.child_error = error
            return [Notify(error.notify_type or NotifyType.NO_PROPOSAL_CHOSEN)]
        return response_payloads(agreement, spi_in, None)

    def response_sent(self, now: float) -> None:
        sa = self.sa
        _mark_established(sa, now)
        if sa.mobike:
            start_mobike(sa, self.peer_addresses)
        if self.initial_contact:
            sa.endpoint.initial_contact(sa, now)
        if self.child is not None:
            child, info = self.child
            sa.add_child(child, now)
            _log(sa, logging.INFO, "CHILD_SA %s established, %08x_i %08x_o, %s", child.name, child.spi_in, child.spi_out,
                   child.mode.value)
            sa.endpoint.emit(ChildSaReady(sa.unique_id, info))
        elif self.child_error is not None:
            error = self.child_error
            _log(sa, logging.WARNING, "CHILD_SA not created: %s", error)
            sa.endpoint.emit(ChildSaFailed(sa.unique_id, "", str(error), error.notify_type))
        sa.setup = None

    def request_failed(self, error: ProtocolError, now: float) -> None:
        # RFC 7296 §2.21.2: after AUTHENTICATION_FAILED (or any other error) the IKE SA is gone.
        self.sa.fail(now, f"IKE_AUTH failed: {error}", error.notify_type)


register_responder(ExchangeType.IKE_AUTH, always, IkeAuthResponder)
