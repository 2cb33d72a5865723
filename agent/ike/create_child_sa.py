"""CREATE_CHILD_SA (RFC 7296 §1.3): new CHILD_SAs, CHILD_SA rekeys and IKE SA rekeys.

New CHILD_SA (§1.3.1):
    HDR, SK {SA, Ni, [KEi], TSi, TSr}  -->
                                 <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}
CHILD_SA rekey (§1.3.3), KEi/KEr only with PFS:
    HDR, SK {N(REKEY_SA), SA, Ni, [KEi], TSi, TSr}  -->
                                 <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}
IKE SA rekey (§1.3.2), the SA payloads carry the new IKE SPIs:
    HDR, SK {SA, Ni, KEi}  -->
                                 <--  HDR, SK {SA, Nr, KEr}

After a rekey the initiator deletes the old SA. When both sides rekey the same SA at once, both
exchanges complete. The SA created with the lowest of the four nonces is redundant, and the side
that created it deletes it. The creator of the surviving SA deletes the old one (RFC 7296 §2.8.1
for CHILD_SAs, §2.8.2 for the IKE SA). Nonces compare octet by octet, a shorter prefix being
lower, which is Python's bytes order.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .child import (
    ChildSa,
    ChildSaState,
    accept_offer,
    response_payloads,
    check_response,
    check_selected,
    establish,
    select_with_ke,
    spi_bytes,
    spi_from_bytes,
)
from .config import ChildConfig
from .constants import ExchangeType, NotifyType, PayloadType, ProtocolId, TransformType
from .crypto import CryptoError, InvalidPublicValue, derive_ike_rekey_keys, dh_group_by_id
from .errors import ChildSaNotFound, InvalidSyntax, NoProposalChosen, ProtocolError, TemporaryFailure
from .events import ChildSaFailed, ChildSaReady, ChildSaRekeyed, IkeSaRekeyed, Mode
from .exchange import Initiator, Responder, always, register_responder
from .ike_sa_init import NONCE_SIZE, ike_proposals, raise_peer_errors, requested_group
from .payloads import KeyExchange, Nonce, Notify, SecurityAssociation, TrafficSelectors
from .proposal import Proposal, ProposalError, ike_algorithms

if TYPE_CHECKING:
    from .message import Message
    from .sa import IkeSa

MAX_KE_RETRIES = 2

logger = logging.getLogger(__name__)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


# --- Diffie-Hellman for PFS and IKE rekeys ---------------------------------------------------


def _generate(sa: "IkeSa", group: int):
    try:
        return dh_group_by_id(group).generate(sa.endpoint.random)
    except CryptoError as error:
        raise NoProposalChosen(str(error)) from None


def _shared_secret(dh, message: "Message", proposal: Proposal) -> bytes | None:
    """Return g^ir when the selected proposal has a DH group, checking the peer's KE payload."""
    selected = proposal.dh()
    if selected is None or selected.id == 0:
        return None
    ke = message.get(PayloadType.KE)
    if ke is None or dh is None or ke.dh_group != selected.id or dh.group.id != selected.id:
        raise InvalidSyntax("KE payload missing or not of the selected group")
    try:
        return dh.shared_secret(ke.data)
    except InvalidPublicValue as error:
        raise InvalidSyntax(f"invalid KE data: {error}") from None


def _respond_ke(sa: "IkeSa", message: "Message", proposal: Proposal) -> tuple[KeyExchange | None, bytes | None]:
    """Responder: generate our KE for the selected group and compute g^ir (or neither)."""
    selected = proposal.dh()
    if selected is None or selected.id == 0:
        return None, None
    dh = _generate(sa, selected.id)
    return KeyExchange(selected.id, dh.public_bytes()), _shared_secret(dh, message, proposal)


def _with_nonce_and_ke(payloads: list, nonce: bytes, ke: KeyExchange | None) -> list:
    """Insert Ni/Nr and KE after the SA payload, the order of RFC 7296 §1.3."""
    extra = [Nonce(nonce)] + ([ke] if ke is not None else [])
    return payloads[:1] + extra + payloads[1:]


def _retry_group(exchange, message: "Message", groups) -> bool:
    """Handle INVALID_KE_PAYLOAD: switch to the requested group if allowed; return True to retry."""
    group = requested_group(message)
    if group is None:
        return False
    if group not in groups or group == exchange.group or exchange.retries >= MAX_KE_RETRIES:
        raise NoProposalChosen(f"peer asks for key exchange method {group}, which is not configured")
    exchange.retries += 1
    exchange.group = group
    _log(exchange.sa, logging.INFO, "peer asks for key exchange method %d, repeating %s", group, exchange.describe())
    return True


def _lowest_is_ours(our_nonces: tuple[bytes, bytes], peer_nonces: tuple[bytes, bytes]) -> bool:
    """RFC 7296 §2.8.1: tell whether the lowest of the four nonces belongs to our exchange."""
    return min(our_nonces) < min(peer_nonces)


# --- new CHILD_SA ----------------------------------------------------------------------------


class CreateChildInitiator(Initiator):
    exchange_type = ExchangeType.CREATE_CHILD_SA
    kind = "child-create"
    movable = True
    __slots__ = ("config", "spi_in", "nonce", "dh", "group", "retries",  "responded")

    def __init__(self, sa: "IkeSa", config: ChildConfig):
        super().__init__(sa)
        self.config = config
        self.spi_in: int | None = None
        self.nonce = b""
        self.dh = None
        self.group = config.pfs_group
        self.retries = 0
        self.responded = False

    def describe(self) -> str:
        return f"CREATE_CHILD_SA for {self.config.name}"

    def build_request(self, now: float) -> list | None:
        from .child import offer_payloads
        from .sa import IkeSaState

        sa = self.sa
        if sa.state != IkeSaState.ESTABLISHED:
            return None
        if self.spi_in is None:
            self.spi_in = sa.endpoint.allocate_spi(sa.local[0], sa.remote[0])
        self.nonce = sa.endpoint.random(NONCE_SIZE)
        ke = None
        if self.group is not None:
            self.dh = _generate(sa, self.group)
            ke = KeyExchange(self.group, self.dh.public_bytes())
        return _with_nonce_and_ke(offer_payloads(self.config, self.spi_in, self.config.esp_transforms), self.nonce, ke)

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        if _retry_group(self, message, _all_groups(self.config)):
            return False
        raise_peer_errors(message)
        self.responded = True
        agreement = check_response(message, self.config, self.config.esp_transforms)
        shared = _shared_secret(self.dh, message, agreement.proposal)
        child, info = establish(sa, agreement, self.spi_in, spi_from_bytes(agreement.proposal.spi), initiator=True,
                                ni=self.nonce, nr=message.get(PayloadType.NONCE).data, shared_secret=shared)
        sa.add_child(child, now)
        _log(sa, logging.INFO, "CHILD_SA %s established, %08x_i %08x_o, %s", child.name, child.spi_in, child.spi_out,
               child.mode.value)
        sa.endpoint.emit(ChildSaReady(sa.unique_id, info))
        sa.drop_if_peer_deleted(child)
        return True

    def failed(self, error: ProtocolError, now: float) -> None:
        sa = self.sa
        if isinstance(error, TemporaryFailure):
            sa.defer(CreateChildInitiator(sa, self.config), now)
            return
        sa.endpoint.emit(ChildSaFailed(sa.unique_id, self.config.name, str(error), error.notify_type))
        if self.responded and not error.from_peer:
            # The responder created the CHILD_SA that this side rejects: delete it again.
            from .informational import DeleteChildInitiator

            sa.start(DeleteChildInitiator(sa, [], spis=[self.spi_in]), now)


def _all_groups(config: ChildConfig) -> list[int]:
    return [t.id for proposal in config.esp_transforms for t in proposal if t.type == TransformType.DH and t.id != 0]


class CreateChildResponder(Responder):
    kind = "child-create"
    __slots__ = ("result",)

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        agreement, chosen = accept_offer(message, sa.config.children, in_ike_auth=False)
        ke, shared = _respond_ke(sa, message, chosen)
        nonce_r = sa.endpoint.random(NONCE_SIZE)
        spi_in = sa.endpoint.allocate_spi(sa.local[0], sa.remote[0])
        self.result = establish(sa, agreement, spi_in, spi_from_bytes(chosen.spi), initiator=False,
                                ni=message.get(PayloadType.NONCE).data, nr=nonce_r, shared_secret=shared)
        return _with_nonce_and_ke(response_payloads(agreement, spi_in, None), nonce_r, ke)

    def response_sent(self, now: float) -> None:
        sa = self.sa
        child, info = self.result
        sa.add_child(child, now)
        _log(sa, logging.INFO, "CHILD_SA %s established by the peer, %08x_i %08x_o", child.name, child.spi_in, child.spi_out)
        sa.endpoint.emit(ChildSaReady(sa.unique_id, info))


# --- CHILD_SA rekey --------------------------------------------------------------------------


class ChildRekeyInitiator(Initiator):
    exchange_type = ExchangeType.CREATE_CHILD_SA
    kind = "child-rekey"
    movable = True
    __slots__ = ("child", "spi_in", "nonce", "dh", "group", "retries")

    def __init__(self, sa: "IkeSa", child: ChildSa):
        super().__init__(sa)
        self.child = child
        self.spi_in: int | None = None
        self.nonce = b""
        self.dh = None
        self.group = child.config.pfs_group
        self.retries = 0

    def describe(self) -> str:
        return f"rekey of CHILD_SA {self.child.name} {self.child.spi_in:08x}_i"

    def _current(self) -> bool:
        return self.sa.children.get(self.child.spi_in) is self.child

    def build_request(self, now: float) -> list | None:
        from .sa import IkeSaState

        sa = self.sa
        child = self.child
        if sa.state != IkeSaState.ESTABLISHED or not self._current() or child.state not in (
            ChildSaState.INSTALLED,
            ChildSaState.REKEYING,
        ):
            return None
        child.state = ChildSaState.REKEYING
        if self.spi_in is None:
            self.spi_in = sa.endpoint.allocate_spi(sa.local[0], sa.remote[0])
        self.nonce = sa.endpoint.random(NONCE_SIZE)
        spi = spi_bytes(self.spi_in)
        proposals = [Proposal(i + 1, ProtocolId.ESP, spi, tuple(p)) for i, p in enumerate(child.config.esp_transforms)]
        payloads: list = [
            Notify(NotifyType.REKEY_SA, protocol_id=ProtocolId.ESP, spi=spi_bytes(child.spi_in)),
            SecurityAssociation(proposals),
            Nonce(self.nonce),
        ]
        if self.group is not None:
            self.dh = _generate(sa, self.group)
            payloads.append(KeyExchange(self.group, self.dh.public_bytes()))
        payloads += [TrafficSelectors(PayloadType.TSi, child.local_ts), TrafficSelectors(PayloadType.TSr, child.remote_ts)]
        if child.mode == Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        return payloads

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        old = self.child
        if _retry_group(self, message, _all_groups(old.config)):
            return False
        raise_peer_errors(message)
        # RFC 7296 §2.8: the rekey proposes the old CHILD_SA's (already narrowed) selectors.
        agreement = check_response(message, old.config, old.config.esp_transforms, proposed=(old.local_ts, old.remote_ts),
                                 requested_mode=old.mode)
        shared = _shared_secret(self.dh, message, agreement.proposal)
        nonce_r = message.get(PayloadType.NONCE).data
        new, info = establish(sa, agreement, self.spi_in, spi_from_bytes(agreement.proposal.spi), initiator=True,
                              ni=self.nonce, nr=nonce_r, shared_secret=shared, reqid=old.reqid)
        sa.add_child(new, now)

        from .informational import DeleteChildInitiator

        current = self._current()
        if current:
            _log(sa, logging.INFO, "CHILD_SA %s rekeyed, %08x_i replaced by %08x_i", old.name, old.spi_in, new.spi_in)
            sa.endpoint.emit(ChildSaRekeyed(sa.unique_id, old.spi_in, old.spi_out, info))
            old.state = ChildSaState.REKEYED
        else:
            # The peer deleted the old CHILD_SA meanwhile.
            sa.endpoint.emit(ChildSaReady(sa.unique_id, info))

        sa.drop_if_peer_deleted(new)

        if old.peer_rekey is None:
            if current:
                sa.start(DeleteChildInitiator(sa, [old]), now)
            return True
        peer_nonce_i, our_nonce_r, _ = old.peer_rekey
        old.peer_rekey = None
        if _lowest_is_ours((self.nonce, nonce_r), (peer_nonce_i, our_nonce_r)):
            _log(sa, logging.INFO, "CHILD_SA rekey collision: ours has the lowest nonce, deleting %08x_i", new.spi_in)
            sa.start(DeleteChildInitiator(sa, [new]), now)
        elif current:
            _log(sa, logging.INFO, "CHILD_SA rekey collision: ours survives, deleting the old %08x_i", old.spi_in)
            sa.start(DeleteChildInitiator(sa, [old]), now)
        return True

    def failed(self, error: ProtocolError, now: float) -> None:
        sa = self.sa
        old = self.child
        if not self._current():
            return
        if old.peer_rekey is not None:
            # The peer's simultaneous rekey succeeded; its initiator (the peer) deletes the old SA.
            old.peer_rekey = None
            old.state = ChildSaState.REKEYED
            return
        old.state = ChildSaState.INSTALLED
        if isinstance(error, TemporaryFailure):
            sa.defer(ChildRekeyInitiator(sa, old), now)
        elif isinstance(error, ChildSaNotFound):
            # RFC 7296 §2.25.1: the peer has no such CHILD_SA (any more). Deleting it also covers
            # the race in which the peer has not yet seen the response that created it.
            from .informational import DeleteChildInitiator

            _log(sa, logging.WARNING, "peer does not know CHILD_SA %s %08x_i, deleting it", old.name, old.spi_in)
            sa.start(DeleteChildInitiator(sa, [old]), now)
        else:
            # NOTE: no automatic retry; the kernel's hard lifetime ends the CHILD_SA if nothing else does.
            sa.endpoint.emit(ChildSaFailed(sa.unique_id, old.name, f"rekey failed: {error}", error.notify_type))


class ChildRekeyResponder(Responder):
    kind = "child-rekey"
    __slots__ = ("old", "result")

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        notify = message.notify(NotifyType.REKEY_SA)
        if notify.protocol_id != ProtocolId.ESP:
            raise InvalidSyntax(f"REKEY_SA for protocol {notify.protocol_id}")
        old = sa.child_by_outbound(spi_from_bytes(notify.spi))
        if old is None:
            raise ChildSaNotFound(f"no CHILD_SA with SPI {notify.spi.hex()}", protocol_id=ProtocolId.ESP, spi=notify.spi)
        if old.state in (ChildSaState.REKEYED, ChildSaState.DELETING):
            raise TemporaryFailure(f"CHILD_SA {old.name} is {old.state.value}")

        agreement, chosen = accept_offer(message, [old.config], in_ike_auth=False)
        ke, shared = _respond_ke(sa, message, chosen)
        nonce_i = message.get(PayloadType.NONCE).data
        nonce_r = sa.endpoint.random(NONCE_SIZE)
        spi_in = sa.endpoint.allocate_spi(sa.local[0], sa.remote[0])
        new, info = establish(sa, agreement, spi_in, spi_from_bytes(chosen.spi), initiator=False, ni=nonce_i,
                              nr=nonce_r, shared_secret=shared, reqid=old.reqid)
        if old.state == ChildSaState.REKEYING:
            old.peer_rekey = (nonce_i, nonce_r, new)  # a collision, resolved when our own rekey ends
        else:
            old.state = ChildSaState.REKEYED  # the peer, as rekey initiator, deletes the old one
        self.old = old
        self.result = (new, info)
        return _with_nonce_and_ke(response_payloads(agreement, spi_in, None), nonce_r, ke)

    def response_sent(self, now: float) -> None:
        sa = self.sa
        new, info = self.result
        sa.add_child(new, now)
        _log(sa, logging.INFO, "CHILD_SA %s rekeyed by the peer, %08x_i replaced by %08x_i", new.name, self.old.spi_in,
               new.spi_in)
        sa.endpoint.emit(ChildSaRekeyed(sa.unique_id, self.old.spi_in, self.old.spi_out, info))


# --- IKE SA rekey ----------------------------------------------------------------------------


class IkeRekeyInitiator(Initiator):
    exchange_type = ExchangeType.CREATE_CHILD_SA
    kind = "ike-rekey"
    __slots__ = ("spi", "nonce", "dh", "group", "retries")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.spi = b""
        self.nonce = b""
        self.dh = None
        self.group = sa.config.dh_groups[0]
        self.retries = 0

    def describe(self) -> str:
        return "IKE SA rekey"

    def build_request(self, now: float) -> list | None:
        from .sa import IkeSaState

        sa = self.sa
        if sa.state != IkeSaState.ESTABLISHED:
            return None
        if not self.spi:
            self.spi = sa.endpoint.new_ike_spi()
        self.nonce = sa.endpoint.random(NONCE_SIZE)
        self.dh = _generate(sa, self.group)
        return [
            SecurityAssociation(ike_proposals(sa, self.spi)),
            Nonce(self.nonce),
            KeyExchange(self.group, self.dh.public_bytes()),
        ]

    def process_response(self, message: "Message", now: float) -> bool:
        sa = self.sa
        if _retry_group(self, message, sa.config.dh_groups):
            return False
        raise_peer_errors(message)
        proposal = check_selected(message.get(PayloadType.SA), sa.config.ike_transforms, ProtocolId.IKE)
        if len(proposal.spi) != 8 or proposal.spi == bytes(8):
            raise InvalidSyntax("IKE SA rekey response without a new responder SPI")
        nonce_r = message.get(PayloadType.NONCE).data
        keys, algorithms = _rekey_keys(sa, proposal, self.dh, message, self.nonce, nonce_r, self.spi, proposal.spi)
        new_sa = sa.endpoint.create_rekeyed_sa(sa, initiator=True, spi_i=self.spi, spi_r=proposal.spi,
                                               algorithms=algorithms, keys=keys, proposal=proposal, now=now)

        from .informational import DeleteIkeInitiator
        from .sa import IkeSaState

        if sa.state == IkeSaState.REKEYED:
            # The peer's simultaneous rekey already took over (it used its new IKE SA), so this
            # one is redundant.
            _log(sa, logging.INFO, "IKE SA rekey collision: the peer's IKE SA survived, deleting ours")
            new_sa.start(DeleteIkeInitiator(new_sa), now)
            return True
        if sa.peer_rekey is None:
            replace_ike_sa(sa, new_sa, now)
            sa.start(DeleteIkeInitiator(sa), now)
            return True

        peer_nonce_i, our_nonce_r, peer_sa = sa.peer_rekey
        sa.peer_rekey = None
        if _lowest_is_ours((self.nonce, nonce_r), (peer_nonce_i, our_nonce_r)):
            _log(sa, logging.INFO, "IKE SA rekey collision: ours has the lowest nonce, deleting it")
            replace_ike_sa(sa, peer_sa, now)
            new_sa.start(DeleteIkeInitiator(new_sa), now)
        else:
            _log(sa, logging.INFO, "IKE SA rekey collision: ours survives, deleting the old IKE SA")
            replace_ike_sa(sa, new_sa, now)
            sa.redundant = peer_sa  # the peer deletes it, else sa.close() does
            sa.start(DeleteIkeInitiator(sa), now)
        return True

    def failed(self, error: ProtocolError, now: float) -> None:
        from .sa import IkeSaState

        sa = self.sa
        if sa.state == IkeSaState.REKEYED:
            return
        if sa.peer_rekey is not None:
            # The peer's simultaneous rekey succeeded; the peer deletes this IKE SA.
            peer_sa = sa.peer_rekey[2]
            sa.peer_rekey = None
            replace_ike_sa(sa, peer_sa, now)
        elif isinstance(error, TemporaryFailure):
            sa.defer(IkeRekeyInitiator(sa), now)
        else:
            # NOTE: no automatic retry; the IKE SA stays up with its current keys.
            _log(sa, logging.WARNING, "IKE SA rekey failed: %s", error)


def _rekey_keys(sa: "IkeSa", proposal: Proposal, dh, message: "Message", nonce_i: bytes, nonce_r: bytes,
                spi_i: bytes, spi_r: bytes):
    """Derive the new IKE SA's keys from the old SK_d (RFC 7296 §2.18)."""
    try:
        algorithms = ike_algorithms(proposal)
    except ProposalError as error:
        raise NoProposalChosen(str(error)) from None
    shared = _shared_secret(dh, message, proposal)
    if shared is None:
        raise InvalidSyntax("IKE SA rekey without key exchange")
    keys = derive_ike_rekey_keys(sa.prf, sa.sk_d, algorithms.prf, algorithms.encr, algorithms.integ, nonce_i, nonce_r,
                                 shared, spi_i, spi_r)
    return keys, algorithms


def replace_ike_sa(old: "IkeSa", new: "IkeSa", now: float) -> None:
    """Move the CHILD_SAs from `old` to `new` and report the rekey."""
    from .sa import IkeSaState

    new.predecessor = None
    _hand_over_collision(old, new)
    old.move_children_to(new, now)
    old.state = IkeSaState.REKEYED
    old.rekey_at = None
    _log(old, logging.INFO, "IKE SA rekeyed, replaced by %s", new.tag)
    old.endpoint.emit(IkeSaRekeyed(old.unique_id, new.unique_id, new.name, new.spi_i, new.spi_r))


def _hand_over_collision(old: "IkeSa", new: "IkeSa") -> None:
    """Let `new` stand in for `old` in a pending IKE SA rekey collision.

    `old` may be the IKE SA that the peer's rekey created while this side's own rekey of its
    predecessor is under way (see IkeRekeyResponder). Until that collision resolves, the
    CHILD_SAs stay on the predecessor. When `old` is rekeyed meanwhile, the CHILD_SAs must go
    to `new` once the peer's side wins, not to `old`, which is about to be deleted.
    """
    predecessor, old.predecessor = old.predecessor, None
    if predecessor is None or predecessor.peer_rekey is None or predecessor.peer_rekey[2] is not old:
        return
    peer_nonce_i, our_nonce_r, _ = predecessor.peer_rekey
    predecessor.peer_rekey = (peer_nonce_i, our_nonce_r, new)
    new.predecessor = predecessor


class IkeRekeyResponder(Responder):
    kind = "ike-rekey"
    __slots__ = ("pending",)

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        ke = message.get(PayloadType.KE)
        if ke is None:
            raise InvalidSyntax("IKE SA rekey without KE payload")
        offered = [p for p in message.get(PayloadType.SA).proposals if p.protocol == ProtocolId.IKE]
        if any(len(p.spi) != 8 for p in offered):
            raise InvalidSyntax("IKE SA rekey proposal without an 8-octet SPI")
        proposal = select_with_ke(offered, sa.config.ike_transforms, ke.dh_group)
        dh = _generate(sa, proposal.dh().id)
        nonce_i = message.get(PayloadType.NONCE).data
        nonce_r = sa.endpoint.random(NONCE_SIZE)
        spi_r = sa.endpoint.new_ike_spi()
        keys, algorithms = _rekey_keys(sa, proposal, dh, message, nonce_i, nonce_r, proposal.spi, spi_r)
        self.pending = (proposal, algorithms, keys, nonce_i, nonce_r, spi_r)
        return [
            SecurityAssociation([Proposal(proposal.number, ProtocolId.IKE, spi_r, proposal.transforms)]),
            Nonce(nonce_r),
            KeyExchange(dh.group.id, dh.public_bytes()),
        ]

    def response_sent(self, now: float) -> None:
        sa = self.sa
        proposal, algorithms, keys, nonce_i, nonce_r, spi_r = self.pending
        new_sa = sa.endpoint.create_rekeyed_sa(sa, initiator=False, spi_i=proposal.spi, spi_r=spi_r,
                                               algorithms=algorithms, keys=keys, proposal=proposal, now=now)
        if getattr(sa.active, "kind", None) == "ike-rekey":
            sa.peer_rekey = (nonce_i, nonce_r, new_sa)  # a collision, resolved when our own rekey ends
            new_sa.predecessor = sa
            return
        replace_ike_sa(sa, new_sa, now)


def _is_child_rekey(message: "Message") -> bool:
    return message.notify(NotifyType.REKEY_SA) is not None


def _is_ike_rekey(message: "Message") -> bool:
    sa_payload = message.get(PayloadType.SA)
    return sa_payload is not None and any(p.protocol == ProtocolId.IKE for p in sa_payload.proposals)


register_responder(ExchangeType.CREATE_CHILD_SA, _is_child_rekey, ChildRekeyResponder)
register_responder(ExchangeType.CREATE_CHILD_SA, _is_ike_rekey, IkeRekeyResponder)
register_responder(ExchangeType.CREATE_CHILD_SA, always, CreateChildResponder)
