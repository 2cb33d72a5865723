"""CHILD_SA state and the negotiation steps shared by IKE_AUTH and CREATE_CHILD_SA.

The initiator offers ESP proposals, traffic selectors and a mode (`offer_payloads`). The
responder picks a config, a proposal and narrowed selectors (`accept_offer`), and the initiator
checks the response (`check_response`). Both then derive the keys (RFC 7296 §2.17) and build a
`ChildSa` plus the `ChildSaInfo` the kernel needs (`establish`).

A `ChildSa` keeps no keys: they go out once in the event and are forgotten.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .config import ChildConfig
from .constants import NotifyType, PayloadType, ProtocolId, TransformType
from .crypto import derive_child_keys
from .errors import InvalidKePayload, InvalidSyntax, NoProposalChosen, TsUnacceptable
from .events import ChildSaInfo, Mode
from .payloads import KeyExchange, Notify, SecurityAssociation, TrafficSelector, TrafficSelectors
from .proposal import Proposal, ProposalError, Transform, child_key_sizes, kernel_algorithms, select_proposal
from .ts import narrow, within

if TYPE_CHECKING:
    from .message import Message
    from .sa import IkeSa

ESP_SPI = struct.Struct("!I")


class ChildSaState(enum.Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # this side's rekey of it is under way
    REKEYED = "rekeyed"  # replaced; waits for its Delete
    DELETING = "deleting"  # this side's Delete of it is under way


class ChildSa:
    """One CHILD_SA as the IKE SA tracks it (no keys)."""

    __slots__ = (
        "config",
        "reqid",
        "spi_in",
        "spi_out",
        "mode",
        "local_ts",
        "remote_ts",
        "state",
        "rekey_at",
        "peer_rekey",
    )

    def __init__(self, config: ChildConfig, reqid: int, spi_in: int, spi_out: int, mode: Mode,
                 local_ts: tuple, remote_ts: tuple):
        self.config = config
        self.reqid = reqid
        self.spi_in = spi_in
        self.spi_out = spi_out
        self.mode = mode
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.state = ChildSaState.INSTALLED
        self.rekey_at: float | None = None
        # Set while this side's rekey is under way and the peer rekeyed the same CHILD_SA too
        # (RFC 7296 §2.8.1): (peer's Ni, our Nr, the CHILD_SA that exchange created).
        self.peer_rekey: tuple[bytes, bytes, ChildSa] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"<CHILD_SA {self.name} {self.spi_in:08x}_i {self.spi_out:08x}_o {self.state.value}>"


def spi_bytes(spi: int) -> bytes:
    return ESP_SPI.pack(spi)


def spi_from_bytes(data: bytes) -> int:
    if len(data) != 4:
        raise InvalidSyntax(f"ESP SPI of {len(data)} octets")
    return ESP_SPI.unpack(data)[0]


# --- proposal selection with a KE payload ----------------------------------------------------


def _restrict_group(proposal: Proposal, group: int) -> Proposal | None:
    """Return the proposal with only the DH transform `group`, or None if it does not offer it."""
    transforms = tuple(t for t in proposal.transforms if t.type != TransformType.DH or t.id == group)
    if not any(t.type == TransformType.DH for t in transforms):
        return None
    return Proposal(proposal.number, proposal.protocol, proposal.spi, transforms)


def select_with_ke(offered: Sequence[Proposal], configured: Sequence[Sequence[Transform]], ke_group: int | None) -> Proposal:
    """Select a proposal, preferring the group of the received KE payload (RFC 7296 §1.2, §1.3).

    Raise NoProposalChosen when nothing matches, and InvalidKePayload (carrying the group to use)
    when a proposal matches only with a different group than the KE payload's.
    """
    configured = [list(p) for p in configured]
    if ke_group is not None:
        restricted = [p for p in (_restrict_group(p, ke_group) for p in offered) if p is not None]
        chosen = select_proposal(restricted, configured)
        if chosen is not None:
            return chosen
    chosen = select_proposal(offered, configured)
    if chosen is None:
        raise NoProposalChosen("no acceptable proposal")
    dh = chosen.dh()
    if dh is not None and dh.id != 0:
        raise InvalidKePayload(f"proposal needs group {dh.id}, KE has {ke_group}", struct.pack("!H", dh.id))
    return chosen


def check_selected(selected: SecurityAssociation, configured: Sequence[Sequence[Transform]], protocol: ProtocolId) -> Proposal:
    """Check the responder's single selected proposal against what we offered (initiator side).

    RFC 7296 §2.7: the response repeats the number of the accepted proposal and contains exactly
    one of each transform type that proposal offered, each one of those offered.
    """
    if len(selected.proposals) != 1:
        raise InvalidSyntax(f"response carries {len(selected.proposals)} proposals, expected 1")
    returned = selected.proposals[0]
    if returned.protocol != protocol:
        raise InvalidSyntax(f"responder selected protocol {returned.protocol!r}, expected {protocol.name}")
    if not 1 <= returned.number <= len(configured):
        raise NoProposalChosen(f"responder selected proposal {returned.number}, which was not offered")
    offered = configured[returned.number - 1]
    offered_types = {t.type for t in offered}
    returned_types = [t.type for t in returned.transforms]
    if (
        len(returned_types) != len(set(returned_types))
        or set(returned_types) != offered_types
        or any(t not in offered for t in returned.transforms)
    ):
        raise NoProposalChosen(f"responder's selection from proposal {returned.number} does not match the offer")
    return returned


# --- initiator -------------------------------------------------------------------------------


def offer_payloads(config: ChildConfig, spi_in: int, transforms: Sequence[Sequence[Transform]]) -> list:
    """Build SA, TSi, TSr and, for transport mode, N(USE_TRANSPORT_MODE) for a CHILD_SA offer."""
    spi = spi_bytes(spi_in)
    proposals = [Proposal(i + 1, ProtocolId.ESP, spi, tuple(p)) for i, p in enumerate(transforms)]
    payloads = [
        SecurityAssociation(proposals),
        TrafficSelectors(PayloadType.TSi, config.local_ts),
        TrafficSelectors(PayloadType.TSr, config.remote_ts),
    ]
    if config.mode == Mode.TRANSPORT:
        payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
    return payloads


@dataclass(frozen=True, slots=True)
class Agreement:
    """Agreed parameters of one CHILD_SA, from this side's point of view."""

    config: ChildConfig
    proposal: Proposal  # the selected proposal; its SPI is the peer's (our outbound) SPI
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    mode: Mode


def check_response(message: "Message", config: ChildConfig, transforms: Sequence[Sequence[Transform]], *,
                 proposed: tuple | None = None, requested_mode: Mode | None = None) -> Agreement:
    """Check the responder's SA, TSi, TSr and mode against our offer (RFC 7296 §2.9).

    `proposed` is (TSi, TSr) as sent, by default the config's selectors; `requested_mode`
    defaults to the config's mode.
    """
    local_ts, remote_ts = proposed if proposed is not None else (config.local_ts, config.remote_ts)
    requested_mode = requested_mode or config.mode
    sa_payload = message.get(PayloadType.SA)
    tsi = message.get(PayloadType.TSi)
    tsr = message.get(PayloadType.TSr)
    if sa_payload is None or tsi is None or tsr is None:
        raise InvalidSyntax("CHILD_SA response lacks SA, TSi or TSr")
    proposal = check_selected(sa_payload, transforms, ProtocolId.ESP)
    spi_from_bytes(proposal.spi)
    if not within(tsi.selectors, local_ts) or not within(tsr.selectors, remote_ts):
        raise TsUnacceptable("responder returned traffic selectors outside those proposed")
    mode = Mode.TUNNEL
    if message.notify(NotifyType.USE_TRANSPORT_MODE) is not None:
        if requested_mode != Mode.TRANSPORT:
            raise InvalidSyntax("responder chose transport mode, which was not requested")
        mode = Mode.TRANSPORT
    return Agreement(config, proposal, tsi.selectors, tsr.selectors, mode)


# --- responder -------------------------------------------------------------------------------


def accept_offer(message: "Message", candidates: Sequence[ChildConfig], *, in_ike_auth: bool) -> tuple[Agreement, Proposal]:
    """Choose a config, proposal, narrowed selectors and mode for the initiator's offer.

    Return (agreement, the offered proposal as selected). The first config whose selectors
    intersect the offer is used (RFC 7296 §2.9). In IKE_AUTH, DH transforms of the offer are
    ignored because IKE_AUTH carries no KE payload. Raises TsUnacceptable, NoProposalChosen or
    InvalidKePayload.
    """
    sa_payload = message.get(PayloadType.SA)
    tsi = message.get(PayloadType.TSi)
    tsr = message.get(PayloadType.TSr)
    if sa_payload is None or tsi is None or tsr is None:
        raise InvalidSyntax("CHILD_SA request lacks SA, TSi or TSr")

    config, remote_ts, local_ts = _match_selectors(candidates, tsi.selectors, tsr.selectors)
    offered = [p for p in sa_payload.proposals if p.protocol == ProtocolId.ESP]
    ke = message.get(PayloadType.KE)
    if in_ike_auth:
        offered = [_without_dh(p) for p in offered]
        chosen = select_with_ke(offered, config.esp_transforms_without_dh, None)
    else:
        chosen = select_with_ke(offered, config.esp_transforms, ke.dh_group if ke is not None else None)
    try:
        kernel_algorithms(chosen)
    except ProposalError as error:
        raise NoProposalChosen(str(error)) from None

    wants_transport = message.notify(NotifyType.USE_TRANSPORT_MODE) is not None
    mode = Mode.TRANSPORT if wants_transport and config.mode == Mode.TRANSPORT else Mode.TUNNEL
    return Agreement(config, chosen, local_ts, remote_ts, mode), chosen


def _without_dh(proposal: Proposal) -> Proposal:
    transforms = tuple(t for t in proposal.transforms if t.type != TransformType.DH)
    return Proposal(proposal.number, proposal.protocol, proposal.spi, transforms)


def _match_selectors(candidates: Sequence[ChildConfig], tsi: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector]):
    # From the responder's view TSi are the remote selectors and TSr the local ones.
    for config in candidates:
        remote = narrow(tsi, config.remote_ts)
        local = narrow(tsr, config.local_ts)
        if remote and local:
            return config, tuple(remote), tuple(local)
    raise TsUnacceptable("no CHILD_SA config matches the proposed traffic selectors")


def response_payloads(agreement: Agreement, spi_in: int, ke: KeyExchange | None) -> list:
    """Build the responder's SA, [KEr,] TSi, TSr and mode notify (Nr is added by the caller)."""
    proposal = agreement.proposal
    selected = Proposal(proposal.number, ProtocolId.ESP, spi_bytes(spi_in), proposal.transforms)
    payloads: list = [SecurityAssociation([selected])]
    if ke is not None:
        payloads.append(ke)
    payloads.append(TrafficSelectors(PayloadType.TSi, agreement.remote_ts))
    payloads.append(TrafficSelectors(PayloadType.TSr, agreement.local_ts))
    if agreement.mode == Mode.TRANSPORT:
        payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
    return payloads


# --- both ------------------------------------------------------------------------------------


def establish(sa: "IkeSa", agreement: Agreement, spi_in: int, spi_out: int, *, initiator: bool, ni: bytes, nr: bytes,
              shared_secret: bytes | None, reqid: int | None = None) -> tuple[ChildSa, ChildSaInfo]:
    """Derive the keys and create the CHILD_SA; `initiator` means this side initiated the exchange."""
    proposal = agreement.proposal
    try:
        algorithms = kernel_algorithms(proposal)
        encr_size, integ_size = child_key_sizes(proposal)
    except ProposalError as error:
        raise NoProposalChosen(str(error)) from None
    keys = derive_child_keys(sa.prf, sa.sk_d, ni, nr, shared_secret, encr_size, integ_size)
    if initiator:
        encr_out, integ_out, encr_in, integ_in = keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r
    else:
        encr_out, integ_out, encr_in, integ_in = keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i

    if reqid is None:
        reqid = sa.endpoint.next_reqid()
    child = ChildSa(agreement.config, reqid, spi_in, spi_out, agreement.mode, agreement.local_ts,
                    agreement.remote_ts)
    info = ChildSaInfo(
        name=agreement.config.name,
        reqid=reqid,
        protocol=ProtocolId.ESP,
        spi_in=spi_in,
        spi_out=spi_out,
        mode=agreement.mode,
        local_addr=sa.local[0],
        remote_addr=sa.remote[0],
        local_port=sa.local[1],
        remote_port=sa.remote[1],
        udp_encap=sa.nat_local or sa.nat_remote,
        local_ts=agreement.local_ts,
        remote_ts=agreement.remote_ts,
        algorithms=algorithms,
        esn=algorithms.esn,
        lifetimes=agreement.config.lifetimes,
        initiator=initiator,
        encr_key_in=encr_in,
        integ_key_in=integ_in,
        encr_key_out=encr_out,
        integ_key_out=integ_out,
    )
    return child, info
