"""SAs, policies and their parts as immutable dataclasses.

These are what the daemon builds and reads; ``xfrm.codec`` turns them into
the structs of linux/xfrm.h and back. Addresses are ``ipaddress`` objects
(strings are accepted and converted), SPIs and ports are plain integers in
host order. Key bytes never appear in ``repr()``, so an object can be logged.
"""

from __future__ import annotations

import dataclasses
import enum
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Union

from xfrm import constants as c

Address = Union[IPv4Address, IPv6Address]
Network = Union[IPv4Network, IPv6Network]


class Proto(enum.IntEnum):
    """IPsec protocol of an SA (IPPROTO_* numbers)."""

    ESP = c.IPPROTO_ESP
    AH = c.IPPROTO_AH
    COMP = c.IPPROTO_COMP


class Mode(enum.IntEnum):
    """XFRM_MODE_* of an SA or template."""

    TRANSPORT = c.XFRM_MODE_TRANSPORT
    TUNNEL = c.XFRM_MODE_TUNNEL
    BEET = c.XFRM_MODE_BEET


class Direction(enum.IntEnum):
    """XFRM_POLICY_IN / OUT / FWD."""

    IN = c.XFRM_POLICY_IN
    OUT = c.XFRM_POLICY_OUT
    FWD = c.XFRM_POLICY_FWD


class Action(enum.IntEnum):
    """XFRM_POLICY_ALLOW / BLOCK."""

    ALLOW = c.XFRM_POLICY_ALLOW
    BLOCK = c.XFRM_POLICY_BLOCK


def to_address(value: Any) -> Address:
    """Return ``value`` as an IPv4Address or IPv6Address (raises ValueError)."""
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    return ip_address(value)


def to_network(value: Any) -> Network:
    """Return ``value`` as a network; host bits must be zero (raises ValueError)."""
    if isinstance(value, (IPv4Network, IPv6Network)):
        return value
    return ip_network(value)


def family_of(value: Address | Network) -> int:
    """Return AF_INET or AF_INET6 for an address or network."""
    return socket.AF_INET if value.version == 4 else socket.AF_INET6


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} {value} out of range 0..0xffffffff")


def _check_port(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} out of range 0..65535")


@dataclass(frozen=True)
class Selector:
    """Traffic selector (xfrm_selector): which packets a policy or SA covers.

    ``proto`` 0 means any protocol; a port of 0 with mask 0 means any port.
    A mask of None is 0xffff when its port is set and 0 otherwise.
    """

    src: Network
    dst: Network
    proto: int = 0
    sport: int = 0
    dport: int = 0
    sport_mask: int | None = None
    dport_mask: int | None = None
    ifindex: int = 0
    user: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", to_network(self.src))
        object.__setattr__(self, "dst", to_network(self.dst))
        if self.src.version != self.dst.version:
            raise ValueError(f"selector {self.src} -> {self.dst} mixes IPv4 and IPv6")
        if not 0 <= self.proto <= 255:
            raise ValueError(f"selector protocol {self.proto} out of range 0..255")
        _check_port("selector source port", self.sport)
        _check_port("selector destination port", self.dport)
        if self.sport_mask is None:
            object.__setattr__(self, "sport_mask", 0xFFFF if self.sport else 0)
        if self.dport_mask is None:
            object.__setattr__(self, "dport_mask", 0xFFFF if self.dport else 0)
        _check_port("selector source port mask", self.sport_mask)
        _check_port("selector destination port mask", self.dport_mask)

    @property
    def family(self) -> int:
        return family_of(self.src)

    @classmethod
    def any(cls, family: int) -> Selector:
        """Return the selector that matches every packet of ``family``."""
        if family == socket.AF_INET:
            return cls(IPv4Network("0.0.0.0/0"), IPv4Network("0.0.0.0/0"))
        return cls(IPv6Network("::/0"), IPv6Network("::/0"))

    @classmethod
    def between(cls, src: Any, dst: Any) -> Selector:
        """Return the selector of all traffic from host ``src`` to host ``dst``."""
        src, dst = to_address(src), to_address(dst)
        return cls(ip_network(src), ip_network(dst))

    def __str__(self) -> str:
        text = f"{self.src}->{self.dst}"
        if self.proto:
            text += f" proto {self.proto}"
        if self.sport_mask:
            text += f" sport {self.sport}"
        if self.dport_mask:
            text += f" dport {self.dport}"
        return text


@dataclass(frozen=True)
class Lifetime:
    """Soft and hard limits of an SA or policy (xfrm_lifetime_cfg); None is no limit.

    ``*_add_seconds`` count from installation, ``*_use_seconds`` from first use.
    A soft limit makes the kernel send an Expire(hard=False) event so that
    the key manager can rekey; a hard limit deletes the SA.
    """

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_add_seconds: int | None = None
    hard_add_seconds: int | None = None
    soft_use_seconds: int | None = None
    hard_use_seconds: int | None = None

    def __post_init__(self) -> None:
        for name in _LIFETIME_NAMES:
            value = getattr(self, name)
            if value is not None and not 0 <= value < c.XFRM_INF:
                raise ValueError(f"lifetime {name} {value} out of range 0..2**64-2")


_LIFETIME_NAMES = tuple(item.name for item in dataclasses.fields(Lifetime))


@dataclass(frozen=True)
class LifetimeCurrent:
    """Counters of an SA (xfrm_lifetime_cur); times are seconds since the epoch, 0 if unset."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0


@dataclass(frozen=True)
class Aead:
    """AEAD transform (XFRMA_ALG_AEAD); ``key`` includes the salt."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int = 128

    def __post_init__(self) -> None:
        _check_algorithm_name(self.name)

    @classmethod
    def aes_gcm(cls, key: bytes, icv_bits: int = 128) -> Aead:
        """AES-GCM for ESP (RFC 4106): a 16 or 32 byte AES key followed by a 4 byte salt."""
        if len(key) not in (20, 36):
            raise ValueError(f"AES-GCM key with salt must be 20 or 36 bytes, not {len(key)}")
        if icv_bits not in (64, 96, 128):
            raise ValueError(f"AES-GCM ICV must be 64, 96 or 128 bits, not {icv_bits}")
        return cls("rfc4106(gcm(aes))", bytes(key), icv_bits)

    @classmethod
    def chacha20_poly1305(cls, key: bytes) -> Aead:
        """ChaCha20-Poly1305 for ESP (RFC 7634): a 32 byte key followed by a 4 byte salt."""
        if len(key) != 36:
            raise ValueError(f"ChaCha20-Poly1305 key with salt must be 36 bytes, not {len(key)}")
        return cls("rfc7539esp(chacha20,poly1305)", bytes(key), 128)


@dataclass(frozen=True)
class Cipher:
    """Encryption transform without integrity (XFRMA_ALG_CRYPT)."""

    name: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_algorithm_name(self.name)

    @classmethod
    def aes_cbc(cls, key: bytes) -> Cipher:
        """AES-CBC (RFC 3602) with a 16, 24 or 32 byte key."""
        if len(key) not in (16, 24, 32):
            raise ValueError(f"AES-CBC key must be 16, 24 or 32 bytes, not {len(key)}")
        return cls("cbc(aes)", bytes(key))


# RFC 4868 §2.1.1 and §2.3: HMAC-SHA-2 keys are as long as the hash output,
# and the ICV is truncated to half of it.
_HMAC_SHA2 = {256: (32, 128), 384: (48, 192), 512: (64, 256)}


@dataclass(frozen=True)
class Auth:
    """Integrity transform with an explicit ICV length (XFRMA_ALG_AUTH_TRUNC)."""

    name: str
    key: bytes = field(repr=False)
    trunc_bits: int

    def __post_init__(self) -> None:
        _check_algorithm_name(self.name)

    @classmethod
    def hmac_sha2(cls, bits: int, key: bytes) -> Auth:
        """HMAC-SHA-256/384/512 at the RFC 4868 truncation (128, 192 or 256 bits)."""
        if bits not in _HMAC_SHA2:
            raise ValueError(f"HMAC-SHA-2 size must be 256, 384 or 512, not {bits}")
        key_len, trunc_bits = _HMAC_SHA2[bits]
        if len(key) != key_len:
            raise ValueError(f"HMAC-SHA-{bits} key must be {key_len} bytes, not {len(key)}")
        return cls(f"hmac(sha{bits})", bytes(key), trunc_bits)


def _check_algorithm_name(name: str) -> None:
    # alg_name is char[64] and must keep its terminating NUL.
    if not name or len(name.encode()) > 63:
        raise ValueError(f"algorithm name {name!r} must be 1 to 63 bytes")


@dataclass(frozen=True)
class Encap:
    """UDP encapsulation of ESP (xfrm_encap_tmpl), as used behind NAT (RFC 3948).

    ``oa`` is the original address before NAT, needed only for transport mode.
    """

    sport: int
    dport: int
    oa: Address | None = None
    type: int = c.UDP_ENCAP_ESPINUDP

    def __post_init__(self) -> None:
        _check_port("encapsulation source port", self.sport)
        _check_port("encapsulation destination port", self.dport)
        if self.oa is not None:
            object.__setattr__(self, "oa", to_address(self.oa))


@dataclass(frozen=True)
class Mark:
    """Packet mark match (xfrm_mark): packets with ``skb->mark & mask == value``."""

    value: int
    mask: int = 0xFFFFFFFF

    def __post_init__(self) -> None:
        _check_u32("mark value", self.value)
        _check_u32("mark mask", self.mask)


@dataclass(frozen=True)
class ReplayState:
    """Sequence numbers and anti-replay window of an SA.

    ``oseq`` is the last sequence number sent, ``seq`` the highest received;
    ``*_hi`` are their upper 32 bits with ESN. ``bitmap`` is the window as
    32-bit words, lowest first: one word for the legacy xfrm_replay_state,
    ``ceil(window / 32)`` words for xfrm_replay_state_esn.
    """

    oseq: int = 0
    seq: int = 0
    oseq_hi: int = 0
    seq_hi: int = 0
    bitmap: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "bitmap", tuple(self.bitmap))
        for name in ("oseq", "seq", "oseq_hi", "seq_hi"):
            _check_u32(f"replay {name}", getattr(self, name))

    @property
    def output_sequence(self) -> int:
        """The 64-bit number of the last packet sent."""
        return self.oseq_hi << 32 | self.oseq

    @property
    def input_sequence(self) -> int:
        """The 64-bit number of the highest packet received."""
        return self.seq_hi << 32 | self.seq


@dataclass(frozen=True)
class SaId:
    """The identity of an SA in the kernel: destination, SPI, protocol, and mark.

    ``src`` is optional for lookups and is sent as XFRMA_SRCADDR when known.
    """

    dst: Address
    spi: int
    proto: Proto = Proto.ESP
    src: Address | None = None
    mark: Mark | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dst", to_address(self.dst))
        if self.src is not None:
            object.__setattr__(self, "src", to_address(self.src))
        object.__setattr__(self, "proto", Proto(self.proto))
        _check_u32("SPI", self.spi)

    @property
    def family(self) -> int:
        return family_of(self.dst)

    def __str__(self) -> str:
        src = self.src if self.src is not None else "*"
        return f"{self.proto.name.lower()} spi {self.spi:#010x} {src}->{self.dst}"


@dataclass(frozen=True)
class SecurityAssociation:
    """An SA (xfrm_usersa_info and its attributes).

    Give ``aead``, or ``cipher`` with ``auth``. A ``replay_window`` above 32
    or ``esn`` sends XFRMA_REPLAY_ESN_VAL, as ``ip xfrm`` does; windows go
    up to 4096 packets. ``replay`` and ``current`` are the kernel's counters:
    filled in by get_sa/dump_sas, and installed with the SA when set on add
    (which is how a replaced SA keeps its sequence numbers). A ``selector``
    of None matches all traffic.
    """

    src: Address
    dst: Address
    spi: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TUNNEL
    reqid: int = 0
    aead: Aead | None = None
    cipher: Cipher | None = None
    auth: Auth | None = None
    encap: Encap | None = None
    replay_window: int = 32
    esn: bool = False
    lifetime: Lifetime = Lifetime()
    mark: Mark | None = None
    if_id: int = 0
    selector: Selector | None = None
    flags: int = 0
    extra_flags: int = 0
    replay: ReplayState | None = None
    current: LifetimeCurrent | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", to_address(self.src))
        object.__setattr__(self, "dst", to_address(self.dst))
        object.__setattr__(self, "proto", Proto(self.proto))
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.src.version != self.dst.version:
            raise ValueError(f"SA {self.src} -> {self.dst} mixes IPv4 and IPv6")
        _check_u32("SPI", self.spi)
        _check_u32("reqid", self.reqid)
        _check_u32("if_id", self.if_id)
        if not 0 <= self.replay_window <= c.XFRMA_REPLAY_ESN_MAX:
            raise ValueError(f"replay window {self.replay_window} out of range "
                             f"0..{c.XFRMA_REPLAY_ESN_MAX}")
        if self.aead is not None and (self.cipher is not None or self.auth is not None):
            raise ValueError(f"SA {self.id}: give aead, or cipher and auth, not both")
        if self.flags & c.XFRM_STATE_ESN:
            raise ValueError(f"SA {self.id}: set esn=True instead of XFRM_STATE_ESN in flags")

    @property
    def family(self) -> int:
        return family_of(self.dst)

    @property
    def id(self) -> SaId:
        return SaId(self.dst, self.spi, self.proto, self.src, self.mark)

    @property
    def uses_esn_struct(self) -> bool:
        """Whether the replay state travels as xfrm_replay_state_esn (XFRMA_REPLAY_ESN_VAL)."""
        return self.esn or self.replay_window > 32

    def replace(self, **changes: Any) -> SecurityAssociation:
        """Return a copy with ``changes`` applied (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Template:
    """One transform a policy requires (xfrm_user_tmpl).

    For tunnel mode ``src`` and ``dst`` are the outer addresses. For
    transport mode they may be None (any), and then ``family`` gives the
    template's address family.
    """

    src: Address | None = None
    dst: Address | None = None
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TUNNEL
    reqid: int = 0
    spi: int = 0
    share: int = c.XFRM_SHARE_ANY
    optional: bool = False
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF
    family: int | None = None

    def __post_init__(self) -> None:
        if self.src is not None:
            object.__setattr__(self, "src", to_address(self.src))
        if self.dst is not None:
            object.__setattr__(self, "dst", to_address(self.dst))
        object.__setattr__(self, "proto", Proto(self.proto))
        object.__setattr__(self, "mode", Mode(self.mode))
        known = [family_of(a) for a in (self.src, self.dst) if a is not None]
        if len(set(known)) > 1:
            raise ValueError(f"template {self.src} -> {self.dst} mixes IPv4 and IPv6")
        if self.family is None and known:
            object.__setattr__(self, "family", known[0])
        if self.mode == Mode.TUNNEL and (self.src is None or self.dst is None):
            raise ValueError("a tunnel-mode template needs both outer addresses")
        _check_u32("template reqid", self.reqid)

    def matches(self, sa: SecurityAssociation) -> bool:
        """Return whether this template refers to ``sa`` (addresses, protocol, mode, reqid)."""
        return (self.proto == sa.proto and self.mode == sa.mode
                and (self.reqid == 0 or self.reqid == sa.reqid)
                and (self.src is None or self.src == sa.src)
                and (self.dst is None or self.dst == sa.dst))


@dataclass(frozen=True)
class PolicyId:
    """The identity of a policy in the kernel: selector, direction, mark and if_id.

    The kernel also finds a policy by ``index`` alone when it is not 0.
    """

    selector: Selector
    dir: Direction
    mark: Mark | None = None
    if_id: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Direction(self.dir))

    def __str__(self) -> str:
        text = f"policy {self.selector} dir {self.dir.name.lower()}"
        if self.mark is not None:
            text += f" mark {self.mark.value:#x}/{self.mark.mask:#x}"
        if self.if_id:
            text += f" if_id {self.if_id}"
        return text


@dataclass(frozen=True)
class Policy:
    """A security policy (xfrm_userpolicy_info with XFRMA_TMPL).

    ``priority``: lower values win. ``index`` 0 lets the kernel choose one;
    get_policy and dump_policies return the kernel's index.
    """

    selector: Selector
    dir: Direction
    action: Action = Action.ALLOW
    priority: int = 0
    templates: tuple[Template, ...] = ()
    mark: Mark | None = None
    if_id: int = 0
    index: int = 0
    lifetime: Lifetime = Lifetime()
    flags: int = 0
    share: int = c.XFRM_SHARE_ANY

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Direction(self.dir))
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "templates", tuple(self.templates))
        if len(self.templates) > c.XFRM_MAX_DEPTH:
            raise ValueError(f"{self.id}: at most {c.XFRM_MAX_DEPTH} templates, "
                             f"not {len(self.templates)}")
        _check_u32("policy priority", self.priority)
        _check_u32("policy if_id", self.if_id)

    @property
    def id(self) -> PolicyId:
        return PolicyId(self.selector, self.dir, self.mark, self.if_id)

    def replace(self, **changes: Any) -> Policy:
        """Return a copy with ``changes`` applied (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Migration:
    """One entry of XFRM_MSG_MIGRATE (xfrm_user_migrate): old and new outer addresses."""

    old_src: Address
    old_dst: Address
    new_src: Address
    new_dst: Address
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TUNNEL
    reqid: int = 0

    def __post_init__(self) -> None:
        for name in ("old_src", "old_dst", "new_src", "new_dst"):
            object.__setattr__(self, name, to_address(getattr(self, name)))
        object.__setattr__(self, "proto", Proto(self.proto))
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.old_src.version != self.old_dst.version:
            raise ValueError(f"migration {self.old_src} -> {self.old_dst} mixes IPv4 and IPv6")
        if self.new_src.version != self.new_dst.version:
            raise ValueError(f"migration {self.new_src} -> {self.new_dst} mixes IPv4 and IPv6")
