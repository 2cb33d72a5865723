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


# --- mobility: MOBIKE (RFC 4555), SWITCH_TO_IP_ADDRESS and redirect (RFC 5685) ---------------


@dataclass(frozen=True, slots=True)
class IkeSaAddressesChanged:
    """The IKE SA moved: move every CHILD_SA of `ike_sa` to these outer addresses (RFC 4555 §3.5).

    SPIs, keys and ESP sequence numbers stay as they are. Outbound ESP goes from `local` to
    `remote`; with `udp_encap` it is UDP-encapsulated between `local[1]` and `remote[1]` (RFC
    3948), without it plain ESP. The address family may change. `spis` lists the (inbound,
    outbound) SPI pair of every CHILD_SA concerned.
    """

    ike_sa: int
    name: str
    local: Address
    remote: Address
    udp_encap: bool
    old_local: Address
    old_remote: Address
    spis: tuple[tuple[int, int], ...]
    reason: str


@dataclass(frozen=True, slots=True)
class PathSuspect:
    """A request on the current path got no response for `silent_for` seconds.

    The retransmissions go on; the driver may offer other paths (`IkeEndpoint.probe_paths`). When
    the driver gave candidates with `set_path_candidates`, the MOBIKE initiator already probes them.
    """

    ike_sa: int
    name: str
    local: Address
    remote: Address
    silent_for: float


@dataclass(frozen=True, slots=True)
class PeerAddressesChanged:
    """The peer's list of additional addresses (RFC 4555 §3.4, §3.6); empty after NO_ADDITIONAL_ADDRESSES."""

    ike_sa: int
    name: str
    remote: Address
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PrepareInbound:
    """This side, the original responder, is about to ask the peer to move to `local`.

    Emitted before the request leaves. The driver installs inbound state for `local` (the
    CHILD_SAs' inbound SAs with `local` as destination) before it sends the datagrams returned
    after this event, so that ESP arriving at `local` is never dropped. `SwitchFailed` or an
    `IkeSaAddressesChanged` to another address tells it to remove that state again.
    """

    ike_sa: int
    name: str
    local: Address
    remote: Address
    spis: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SwitchAccepted:
    """This side, the original initiator, accepted the peer's SWITCH_TO_IP_ADDRESS to `remote`.

    The peer installed inbound state at `remote` before it asked (`PrepareInbound`), so the driver
    may send ESP there at once. `IkeSaAddressesChanged` follows when the update completes.
    """

    ike_sa: int
    name: str
    local: Address
    remote: Address


@dataclass(frozen=True, slots=True)
class SwitchFailed:
    """A switch of this side (the original responder) to `local` did not happen."""

    ike_sa: int
    name: str
    local: Address
    reason: str
    notify: NotifyType | int | None = None


@dataclass(frozen=True, slots=True)
class PathUpdateFailed:
    """The peer rejected this side's UPDATE_SA_ADDRESSES from `local` to `remote`.

    The IKE SA and its CHILD_SAs stay on `kept_local` and `kept_remote`, the last path the peer
    confirmed. The driver may try another path.
    """

    ike_sa: int
    name: str
    local: Address
    remote: Address
    kept_local: Address
    kept_remote: Address
    reason: str
    notify: NotifyType | int | None = None


@dataclass(frozen=True, slots=True)
class IkeSaRedirected:
    """The peer redirected this IKE SA to `gateway` (RFC 5685 §5).

    With an IP address the core has started `new_ike_sa` towards it and deletes `ike_sa` once
    that one is established. A gateway given as FQDN gets `new_ike_sa` None: the driver resolves
    the name and initiates itself.
    """

    ike_sa: int
    name: str
    gateway: str
    new_ike_sa: int | None


Event = (
    IkeSaEstablished
    | IkeSaRekeyed
    | IkeSaDeleted
    | IkeSaFailed
    | ChildSaReady
    | ChildSaRekeyed
    | ChildSaDeleted
    | ChildSaFailed
    | IkeSaAddressesChanged
    | PathSuspect
    | PeerAddressesChanged
    | PrepareInbound
    | SwitchAccepted
    | SwitchFailed
    | PathUpdateFailed
    | IkeSaRedirected
)
