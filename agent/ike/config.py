"""Configuration objects of the IKE core: identities, IKE SA and CHILD_SA settings.

These are small frozen dataclasses; the daemon's configuration loader maps its file format onto
them. Proposal strings use strongSwan's syntax (see proposal.py) and are parsed when the object is
created, so a typo fails at load time with the offending keyword named.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .constants import IdType, ProtocolId, TransformType
from .events import Lifetimes, Mode
from .payloads import TrafficSelector, format_identity
from .auth import identity_matches
from .proposal import Transform, parse_proposal


# The smallest IKE message worth fragmenting to: a 576-octet IPv4 datagram minus the IPv4 and UDP
# headers and the non-ESP marker (RFC 7383 §2.5.1 names 576 as the IPv4 size to fall back to).
MIN_FRAGMENT_SIZE = 576 - 20 - 8 - 4


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity: ID type and identification data as carried in IDi/IDr (RFC 7296 §3.5)."""

    id_type: IdType
    data: bytes

    @classmethod
    def from_string(cls, text: str) -> "Identity":
        """Parse an identity the way strongSwan writes it.

        An IP address gives ID_IPV4_ADDR or ID_IPV6_ADDR, and "user@example.org" gives
        ID_RFC822_ADDR. "@example.org" or a bare name gives ID_FQDN, "@#0a1b" gives ID_KEY_ID
        from hex, and a string with "=" gives ID_DER_ASN1_DN ("C=CH, O=Example, CN=gw").
        """
        text = text.strip()
        if not text:
            raise ValueError("empty identity")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            id_type = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
            return cls(id_type, address.packed)
        if text.startswith("@#"):
            return cls(IdType.ID_KEY_ID, bytes.fromhex(text[2:]))
        if text.startswith("@"):
            return cls(IdType.ID_FQDN, text[1:].encode("ascii"))
        if "=" in text:
            # strongSwan separates RDNs with ", " or "/"; RFC 4514 strings use "," in reverse order.
            rdns = [part.strip() for part in text.replace("/", ",").split(",") if part.strip()]
            name = x509.Name.from_rfc4514_string(",".join(reversed(rdns)))
            return cls(IdType.ID_DER_ASN1_DN, name.public_bytes())
        if "@" in text:
            return cls(IdType.ID_RFC822_ADDR, text.encode("ascii"))
        return cls(IdType.ID_FQDN, text.encode("ascii"))

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> "Identity":
        """Return the certificate's subject DN as an ID_DER_ASN1_DN identity."""
        return cls(IdType.ID_DER_ASN1_DN, certificate.subject.public_bytes())

    def __str__(self) -> str:
        return format_identity(self.id_type, self.data)


class AuthKind(enum.Enum):
    """Authentication method of one side: a pre-shared key or a certificate's private key."""

    PSK = "psk"
    PUBKEY = "pubkey"


def _parse_all(texts: Sequence[str], protocol: ProtocolId) -> tuple[tuple[Transform, ...], ...]:
    return tuple(tuple(parse_proposal(text, protocol)) for text in texts)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class ChildConfig:
    """One CHILD_SA: traffic selectors from this side's view, ESP proposals, mode, lifetimes.

    An ESP proposal with a key exchange method ("aes256gcm16-x25519") requests PFS when the
    CHILD_SA is created or rekeyed by CREATE_CHILD_SA; IKE_AUTH never carries KE payloads, so
    the first CHILD_SA is keyed from the IKE SA alone (RFC 7296 §1.2).
    `rekey_time` (seconds) makes the core rekey the CHILD_SA itself; None leaves rekeying to
    kernel expire events fed in through `IkeEndpoint.rekey_child`.
    """

    name: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    esp_proposals: tuple[str, ...] = ("aes256gcm16", "aes128gcm16", "aes256-sha256")
    mode: Mode = Mode.TUNNEL
    rekey_time: float | None = 3600.0
    life_time: float | None = None
    rekey_bytes: int | None = None
    life_bytes: int | None = None
    rekey_packets: int | None = None
    life_packets: int | None = None

    def __post_init__(self) -> None:
        if not self.local_ts or not self.remote_ts:
            raise ValueError(f"CHILD_SA {self.name!r} needs local and remote traffic selectors")
        if not self.esp_proposals:
            raise ValueError(f"CHILD_SA {self.name!r} needs at least one ESP proposal")
        _check_positive("rekey_time", self.rekey_time)
        _check_positive("life_time", self.life_time)
        self.esp_transforms  # parse now so that a typo fails here

    @cached_property
    def esp_transforms(self) -> tuple[tuple[Transform, ...], ...]:
        return _parse_all(self.esp_proposals, ProtocolId.ESP)

    @cached_property
    def esp_transforms_without_dh(self) -> tuple[tuple[Transform, ...], ...]:
        """The ESP proposals for IKE_AUTH, which carries no KE payload (RFC 7296 §1.2)."""
        return tuple(tuple(t for t in proposal if t.type != TransformType.DH) for proposal in self.esp_transforms)

    @cached_property
    def pfs_group(self) -> int | None:
        """The first key exchange method of the first proposal that has one, or None (no PFS)."""
        for proposal in self.esp_transforms:
            for transform in proposal:
                if transform.type == TransformType.DH and transform.id != 0:
                    return transform.id
        return None

    @cached_property
    def lifetimes(self) -> Lifetimes:
        life_time = self.life_time
        if life_time is None and self.rekey_time is not None:
            life_time = self.rekey_time * 1.1  # hard expiry a little after the rekey is due
        return Lifetimes(
            self.rekey_time, life_time, self.rekey_bytes, self.life_bytes, self.rekey_packets, self.life_packets
        )


@dataclass(frozen=True)
class IkeConfig:
    """One IKE connection: identities, authentication, proposals and protocol settings.

    As responder, a config applies to an IKE_SA_INIT when `local_addrs` and `remote_addrs`
    contain the addresses of the request. They list addresses or prefixes, and an empty tuple
    matches any address. The config then applies to the IKE_AUTH when the peer's IDi equals
    `remote_id`, or when the peer's certificate proves `remote_id`. A `remote_id` of None accepts
    any IDi, which is allowed with certificate authentication only.

    `fragment_size` is the largest IKE message (UDP payload, without the non-ESP marker) sent
    unfragmented once both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383).
    Retransmissions wait `retransmit_timeout * retransmit_base ** n` seconds after the n-th
    send; after `retransmit_tries` retransmissions the peer counts as dead.

    Mobility (MOBIKE, SWITCH_TO_IP_ADDRESS, redirect), times in seconds:
    - `switch_min_interval`: as original initiator, follow at most one SWITCH_TO_IP_ADDRESS per
      interval; requests that come sooner are answered but not followed.
    - `switch_allowed`: addresses the peer may switch to, as prefixes or a predicate on the
      address string. None applies `remote_addrs` (any address when that is empty).
    - `switch_timeout`: as original responder, how long a switch may wait for the peer's update.
    - `switch_fallback_delay`: as original responder towards a peer without the switch flag,
      how long to wait after the address list update before sending REDIRECT (RFC 5685).
    - `return_routability`: send COOKIE2 with each address update (RFC 4555 §3.7).
    - `no_nats_allowed`: send NO_NATS_ALLOWED, so that the peer rejects paths through a NAT
      (RFC 4555 §3.9).
    - `path_suspect_after`: a request unanswered this long makes the path suspect (event
      `PathSuspect`, and probing when the driver gave candidates); None disables it.
    - `accept_redirect`: as initiator, send REDIRECT_SUPPORTED and follow REDIRECT (RFC 5685).
    """

    name: str
    local_id: Identity
    remote_id: Identity | None = None
    auth: AuthKind = AuthKind.PSK
    remote_auth: AuthKind | None = None  # how the peer must authenticate; defaults to `auth`
    psk: bytes | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()
    private_key: Any = field(default=None, repr=False)
    cas: tuple[x509.Certificate, ...] = ()
    proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-x25519", "aes128gcm16-prfsha256-ecp256")
    children: tuple[ChildConfig, ...] = ()
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()
    mobike: bool = True
    accept_switch: bool = True  # as original initiator, offer SWITCH_TO_IP_ADDRESS in MOBIKE_SUPPORTED
    # Mobility settings; see the class docstring.
    switch_min_interval: float = 1.0
    switch_allowed: tuple[str, ...] | Callable[[str], bool] | None = None
    switch_timeout: float = 30.0
    switch_fallback_delay: float = 2.0
    return_routability: bool = True
    no_nats_allowed: bool = False
    path_suspect_after: float | None = 1.0
    accept_redirect: bool = True
    fragmentation: bool = True
    fragment_size: int = 1200
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    rekey_time: float | None = 14400.0
    initial_contact: bool = True
    send_certreq: bool = True

    def __post_init__(self) -> None:
        self._check_auth()
        if not self.proposals:
            raise ValueError(f"connection {self.name!r} needs at least one IKE proposal")
        if self.fragment_size < MIN_FRAGMENT_SIZE:
            raise ValueError(f"fragment_size {self.fragment_size} is below the minimum of {MIN_FRAGMENT_SIZE} octets")
        if self.retransmit_tries < 0:
            raise ValueError(f"retransmit_tries must not be negative, got {self.retransmit_tries}")
        _check_positive("retransmit_timeout", self.retransmit_timeout)
        _check_positive("rekey_time", self.rekey_time)
        if self.retransmit_base < 1:
            raise ValueError(f"retransmit_base must be at least 1, got {self.retransmit_base}")
        if self.switch_min_interval < 0:
            raise ValueError(f"switch_min_interval must not be negative, got {self.switch_min_interval}")
        _check_positive("switch_timeout", self.switch_timeout)
        _check_positive("switch_fallback_delay", self.switch_fallback_delay)
        _check_positive("path_suspect_after", self.path_suspect_after)
        self.switch_networks
        self.ike_transforms  # parse now so that a typo fails here
        self.local_networks
        self.remote_networks

    def _check_auth(self) -> None:
        if self.auth == AuthKind.PSK or self.peer_auth == AuthKind.PSK:
            if not self.psk:
                raise ValueError(f"connection {self.name!r} uses PSK authentication but has no psk")
        if self.auth == AuthKind.PUBKEY and (self.certificate is None or self.private_key is None):
            raise ValueError(f"connection {self.name!r} uses pubkey authentication but lacks certificate or private_key")
        if self.peer_auth == AuthKind.PUBKEY and not self.cas:
            raise ValueError(f"connection {self.name!r} authenticates the peer by certificate but has no cas")
        if self.remote_id is None and self.peer_auth == AuthKind.PSK:
            raise ValueError(f"connection {self.name!r} with PSK needs remote_id to choose the key")

    @property
    def peer_auth(self) -> AuthKind:
        return self.remote_auth or self.auth

    @cached_property
    def ike_transforms(self) -> tuple[tuple[Transform, ...], ...]:
        return _parse_all(self.proposals, ProtocolId.IKE)

    @cached_property
    def dh_groups(self) -> tuple[int, ...]:
        """Key exchange methods of all proposals, in order of preference, without repeats."""
        groups: list[int] = []
        for proposal in self.ike_transforms:
            for transform in proposal:
                if transform.type == TransformType.DH and transform.id not in groups:
                    groups.append(transform.id)
        return tuple(groups)

    @cached_property
    def local_networks(self) -> tuple:
        return tuple(ipaddress.ip_network(a, strict=False) for a in self.local_addrs)

    @cached_property
    def remote_networks(self) -> tuple:
        return tuple(ipaddress.ip_network(a, strict=False) for a in self.remote_addrs)

    @cached_property
    def switch_networks(self) -> tuple:
        """`switch_allowed` as networks, or () when it is None or a predicate."""
        if self.switch_allowed is None or callable(self.switch_allowed):
            return ()
        return tuple(ipaddress.ip_network(a, strict=False) for a in self.switch_allowed)

    def accepts_switch_to(self, host: str) -> bool:
        """Tell whether the peer may move this IKE SA to its address `host` (policy only)."""
        if callable(self.switch_allowed):
            return bool(self.switch_allowed(host))
        if self.switch_allowed is not None:
            return _address_in(host, self.switch_networks) if self.switch_networks else False
        return _address_in(host, self.remote_networks)

    @cached_property
    def ca_key_hashes(self) -> bytes:
        """CERTREQ data: SHA-1 hashes of the CAs' SubjectPublicKeyInfo (RFC 7296 §3.7)."""
        return b"".join(
            hashlib.sha1(ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()
            for ca in self.cas
        )

    def matches_addresses(self, local_host: str, remote_host: str) -> bool:
        """Tell whether this config may respond to an IKE_SA_INIT between these addresses."""
        return _address_in(local_host, self.local_networks) and _address_in(remote_host, self.remote_networks)

    def is_local_identity(self, identity: Identity) -> bool:
        """Tell whether an IDr requested by the peer names this side: our ID or one our certificate proves."""
        if identity == self.local_id:
            return True
        return self.auth == AuthKind.PUBKEY and identity_matches(self.certificate, identity.id_type, identity.data)

    def child(self, name: str) -> ChildConfig:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(f"connection {self.name!r} has no CHILD_SA {name!r}")


def _address_in(host: str, networks: tuple) -> bool:
    if not networks:
        return True
    address = ipaddress.ip_address(host)
    return any(address in network for network in networks)


@dataclass(frozen=True)
class EndpointSettings:
    """Settings of the whole endpoint rather than one connection.

    `half_open_limit`: above this many half-open IKE SAs the responder demands a COOKIE
    (RFC 7296 §2.6). `half_open_timeout`: seconds a responder waits for IKE_AUTH.
    `cookie_secret_lifetime`: seconds after which a new cookie secret is drawn; cookies made
    with the previous secret stay valid for one more lifetime.
    """

    ike_port: int = 500
    natt_port: int = 4500
    half_open_limit: int = 1000
    half_open_timeout: float = 30.0
    cookie_secret_lifetime: float = 300.0
    retry_delay: float = 2.0  # base delay before retrying after TEMPORARY_FAILURE, plus up to the same again
    # Notify type of SWITCH_TO_IP_ADDRESS; both peers must use the same private-use value.
    switch_notify_type: int = 40980

    def __post_init__(self) -> None:
        if not 40960 <= self.switch_notify_type <= 65535:
            raise ValueError(f"switch_notify_type {self.switch_notify_type} is outside the private-use "
                             "status range 40960-65535 (RFC 7296 §3.10.1)")
