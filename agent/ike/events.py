"""Events the IKE core reports to its driver (the daemon or a test).

Every event names the IKE SA by `ike_sa`, the unique id that `IkeEndpoint.initiate` returns and
that the commands take. `ChildSaInfo` carries everything the kernel needs to install both
directions of a CHILD_SA. Key fields are left out of repr() so that logging an event never
prints key material.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .constants import NotifyType, ProtocolId
from .payloads import TrafficSelector
from .proposal import KernelAlgorithms

Address = tuple[str, int]  # (IP address, UDP port)


class Mode(enum.Enum):
    """IPsec mode of a CHILD_SA (RFC 7296 §1.3.1, USE_TRANSPORT_MODE)."""

    TUNNEL = "tunnel"
    TRANSPORT = "transport"


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """Limits for the kernel SA: soft limits trigger a rekey, hard limits remove the SA.

    Times are in seconds; None means no limit of that kind.
    """

    rekey_time: float | None = None
    life_time: float | None = None
    rekey_bytes: int | None = None
    life_bytes: int | None = None
    rekey_packets: int | None = None
    life_packets: int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaInfo:
    """One negotiated CHILD_SA: both SPIs, the algorithms and keys, and where it runs.

    `spi_in` is the SPI this side allocated (the peer sends with it); `spi_out` the SPI the
    peer allocated. Addresses are the IKE SA's current outer addresses; with `udp_encap` the
    ESP packets are UDP-encapsulated between `local_port` and `remote_port` (RFC 3948).
    `reqid` is stable across rekeys of the same CHILD_SA, so kernel policies can refer to it.
    """

    name: str
    reqid: int
    protocol: ProtocolId
    spi_in: int
    spi_out: int
    mode: Mode
    local_addr: str
    remote_addr: str
    local_port: int
    remote_port: int
    udp_encap: bool
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    algorithms: KernelAlgorithms
    esn: bool
    lifetimes: Lifetimes
    initiator: bool  # this side initiated the exchange that created the CHILD_SA
    encr_key_in: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    ike_sa: int
    name: str
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    local: Address
    remote: Address
    local_id: str
    remote_id: str
    local_behind_nat: bool
    remote_behind_nat: bool
    mobike: bool  # both sides sent MOBIKE_SUPPORTED
    peer_accepts_switch: bool  # the original initiator set the SWITCH_TO_IP_ADDRESS flag
    fragmentation: bool  # both sides sent IKEV2_FRAGMENTATION_SUPPORTED


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    """The IKE SA `old` was replaced by `new` (RFC 7296 §2.18); CHILD_SAs moved to `new`."""

    old: int
    new: int
    name: str
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    ike_sa: int
    name: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """Setup or operation failed; the IKE SA and its CHILD_SAs are gone (ChildSaDeleted came first)."""

    ike_sa: int
    name: str
    reason: str
    notify: NotifyType | int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaReady:
    ike_sa: int
    child: ChildSaInfo


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed:
    """`new` replaces the CHILD_SA with `old_spi_in`/`old_spi_out`; the old one stays until ChildSaDeleted."""

    ike_sa: int
    old_spi_in: int
    old_spi_out: int
    new: ChildSaInfo


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    ike_sa: int
    name: str
    reqid: int
    spi_in: int
    spi_out: int
    local_addr: str
    remote_addr: str


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """A CHILD_SA could not be created or rekeyed; the IKE SA stays up."""

    ike_sa: int
    name: str
    reason: str
    notify: NotifyType | int | None = None


Event = (
    IkeSaEstablished
    | IkeSaRekeyed
    | IkeSaDeleted
    | IkeSaFailed
    | ChildSaReady
    | ChildSaRekeyed
    | ChildSaDeleted
    | ChildSaFailed
)
