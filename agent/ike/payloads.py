"""IKEv2 payloads (RFC 7296 §3.2-§3.16, RFC 7383 §2.5): one class per payload type.

Each class decodes its body (the bytes after the 4-octet generic payload header) with
`decode_body` and encodes it with `encode_body`. The generic headers, the payload chain and the
SK/SKF protection live in message.py. Every length, count and offset is checked, and a malformed
body raises `InvalidSyntax`; nothing else escapes from decoding.

The SA payload's proposals and transforms are the `Proposal` and `Transform` values of
proposal.py, so that the proposal selection works directly on what was received.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .constants import (
    CertEncoding,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformAttribute,
    TransformType,
    TsType,
)
from .errors import InvalidSyntax
from .proposal import Proposal, Transform

_U16 = struct.Struct("!H")
_SA_PROPOSAL = struct.Struct("!BBHBBBB")  # last, reserved, length, number, protocol, spi size, count
_SA_TRANSFORM = struct.Struct("!BBHBBH")  # last, reserved, length, type, reserved, id
_ATTRIBUTE = struct.Struct("!HH")
_NOTIFY = struct.Struct("!BBH")
_DELETE = struct.Struct("!BBH")
_TS_HEADER = struct.Struct("!BBHHH")  # type, protocol, selector length, start port, end port
_SKF = struct.Struct("!HH")

_PROPOSAL_LAST = 0
_PROPOSAL_MORE = 2
_TRANSFORM_LAST = 0
_TRANSFORM_MORE = 3
_ATTRIBUTE_TV = 0x8000  # AF bit: the attribute value is the two octets after the type

# SPI sizes a proposal may carry, RFC 7296 §3.3.1: IKE SA proposals carry no SPI in IKE_SA_INIT
# and the 8-octet new SPI when rekeying; ESP and AH carry 4 octets.
_PROPOSAL_SPI_SIZES = {ProtocolId.IKE: (0, 8), ProtocolId.AH: (4,), ProtocolId.ESP: (4,)}

# Lengths of the address fields of traffic selectors, RFC 7296 §3.13.1.
_TS_ADDRESS_SIZE = {TsType.TS_IPV4_ADDR_RANGE: 4, TsType.TS_IPV6_ADDR_RANGE: 16}

_TRANSFORM_TYPES = TransformType._value2member_map_
_PROTOCOLS = ProtocolId._value2member_map_

NONCE_MIN = 16  # octets, RFC 7296 §3.9
NONCE_MAX = 256
SHA1_SIZE = 20  # CERTREQ authorities are SHA-1 hashes of SubjectPublicKeyInfo, RFC 7296 §3.7


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidSyntax(message)


def _enum_or_int(enum_type, value: int):
    """Return the enum member for a known value and the plain integer otherwise."""
    # A dictionary lookup, because calling the enum class costs several times more.
    return enum_type._value2member_map_.get(value, value)


class Payload:
    """Base of all payloads; `payload_type` is the value of the Next Payload field naming it."""

    __slots__ = ()
    payload_type: PayloadType

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Payload":
        raise NotImplementedError

    def summary(self) -> str:
        """Describe the payload for DEBUG logs: never keying material, nonces or AUTH data."""
        return PayloadType(self.payload_type).name


# --- SA (RFC 7296 §3.3) ----------------------------------------------------------------------


class SecurityAssociation(Payload):
    """SA payload: proposals in the sender's order of preference.

    Decoding drops what cannot be selected instead of failing, as RFC 7296 §3.3.6 requires: a
    proposal with an unknown protocol or transform type, and a transform with an unknown
    attribute. `dropped` counts those proposals and transforms for the logs.
    """

    __slots__ = ("proposals", "dropped")
    payload_type = PayloadType.SA

    def __init__(self, proposals: list[Proposal] | tuple[Proposal, ...], dropped: int = 0):
        self.proposals = tuple(proposals)
        self.dropped = dropped

    def encode_body(self) -> bytes:
        parts = []
        for index, proposal in enumerate(self.proposals):
            last = _PROPOSAL_LAST if index == len(self.proposals) - 1 else _PROPOSAL_MORE
            parts.append(_encode_proposal(proposal, last))
        return b"".join(parts)

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "SecurityAssociation":
        proposals = []
        dropped = 0
        offset = 0
        last = _PROPOSAL_MORE
        while last == _PROPOSAL_MORE:
            _require(offset + _SA_PROPOSAL.size <= len(body), "SA payload: truncated proposal")
            last, _, length, number, protocol, spi_size, count = _SA_PROPOSAL.unpack_from(body, offset)
            _require(last in (_PROPOSAL_LAST, _PROPOSAL_MORE), f"SA payload: invalid last-proposal value {last}")
            _require(length >= _SA_PROPOSAL.size + spi_size, f"SA payload: proposal length {length} too short")
            _require(offset + length <= len(body), f"SA payload: proposal length {length} exceeds the payload")
            proposal, transforms_dropped = _decode_proposal(body[offset : offset + length], number, protocol, spi_size, count)
            if proposal is None:
                dropped += 1
            else:
                proposals.append(proposal)
                dropped += transforms_dropped
            offset += length
        _require(offset == len(body), "SA payload: octets after the last proposal")
        _require(proposals or dropped, "SA payload: no proposal")
        return cls(proposals, dropped)

    def summary(self) -> str:
        return f"SA({len(self.proposals)} proposals)"


def _encode_proposal(proposal: Proposal, last: int) -> bytes:
    transforms = []
    for index, transform in enumerate(proposal.transforms):
        more = _TRANSFORM_LAST if index == len(proposal.transforms) - 1 else _TRANSFORM_MORE
        attributes = b""
        if transform.key_length is not None:
            attributes = _ATTRIBUTE.pack(_ATTRIBUTE_TV | TransformAttribute.KEY_LENGTH, transform.key_length)
        length = _SA_TRANSFORM.size + len(attributes)
        transforms.append(_SA_TRANSFORM.pack(more, 0, length, transform.type, 0, transform.id) + attributes)
    body = proposal.spi + b"".join(transforms)
    header = _SA_PROPOSAL.pack(
        last, 0, _SA_PROPOSAL.size + len(body), proposal.number, proposal.protocol, len(proposal.spi), len(transforms)
    )
    return header + body


def _decode_proposal(data: bytes, number: int, protocol: int, spi_size: int, count: int):
    """Decode one proposal substructure; return (Proposal or None when unusable, transforms dropped)."""
    offset = _SA_PROPOSAL.size
    spi = data[offset : offset + spi_size]
    offset += spi_size
    transforms = []
    unusable = False
    dropped = 0
    for index in range(count):
        _require(offset + _SA_TRANSFORM.size <= len(data), "SA payload: truncated transform")
        more, _, length, ttype, _, tid = _SA_TRANSFORM.unpack_from(data, offset)
        expected_more = _TRANSFORM_MORE if index < count - 1 else _TRANSFORM_LAST
        _require(more == expected_more, "SA payload: last-transform value does not match the transform count")
        _require(length >= _SA_TRANSFORM.size, f"SA payload: transform length {length} too short")
        _require(offset + length <= len(data), f"SA payload: transform length {length} exceeds the proposal")
        if length == _SA_TRANSFORM.size:
            key_length, known_attributes = None, True
        else:
            key_length, known_attributes = _decode_attributes(data[offset + _SA_TRANSFORM.size : offset + length])
        offset += length
        transform_type = _TRANSFORM_TYPES.get(ttype)
        if transform_type is None:
            unusable = True  # RFC 7296 §3.3.6: an unknown transform type makes the proposal unacceptable
            continue
        if not known_attributes:
            dropped += 1  # RFC 7296 §3.3.6: a transform with an unknown attribute is rejected
            continue
        transforms.append(Transform(transform_type, tid, key_length))
    _require(offset == len(data), "SA payload: octets after the last transform of a proposal")

    protocol_id = _PROTOCOLS.get(protocol)
    if protocol_id not in _PROPOSAL_SPI_SIZES or unusable:
        return None, dropped
    _require(spi_size in _PROPOSAL_SPI_SIZES[protocol_id], f"SA payload: SPI size {spi_size} invalid for {protocol_id.name}")
    return Proposal(number, protocol_id, spi, tuple(transforms)), dropped


def _decode_attributes(data: bytes) -> tuple[int | None, bool]:
    """Return (key length or None, whether every attribute was understood)."""
    key_length = None
    understood = True
    offset = 0
    while offset < len(data):
        _require(offset + _ATTRIBUTE.size <= len(data), "SA payload: truncated transform attribute")
        kind, value = _ATTRIBUTE.unpack_from(data, offset)
        offset += _ATTRIBUTE.size
        if kind & _ATTRIBUTE_TV:
            if kind & ~_ATTRIBUTE_TV == TransformAttribute.KEY_LENGTH:
                key_length = value
            else:
                understood = False
        else:
            # TLV format: `value` is the length of the value that follows.
            _require(offset + value <= len(data), "SA payload: attribute length exceeds the transform")
            offset += value
            understood = False
    return key_length, understood


# --- KE, Nonce, ID, CERT, CERTREQ, AUTH (RFC 7296 §3.4-§3.9) ---------------------------------


class KeyExchange(Payload):
    """KE payload: the Diffie-Hellman group and the public value."""

    __slots__ = ("dh_group", "data")
    payload_type = PayloadType.KE

    def __init__(self, dh_group: int, data: bytes):
        self.dh_group = dh_group
        self.data = data

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.dh_group, 0) + self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "KeyExchange":
        _require(len(body) > 4, "KE payload: no key exchange data")
        (group,) = _U16.unpack_from(body, 0)
        return cls(group, body[4:])

    def summary(self) -> str:
        return f"KE(group {self.dh_group})"


class Nonce(Payload):
    """Nonce payload (Ni in requests, Nr in responses): 16 to 256 random octets."""

    __slots__ = ("data",)
    payload_type = PayloadType.NONCE

    def __init__(self, data: bytes):
        self.data = data

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Nonce":
        _require(NONCE_MIN <= len(body) <= NONCE_MAX, f"Nonce payload: length {len(body)} outside 16..256")
        return cls(body)

    def summary(self) -> str:
        return f"No({len(self.data)} octets)"


# Data lengths of the fixed-size identification types.
_ID_SIZES = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16}


class Identification(Payload):
    """IDi or IDr payload, as `payload_type` shows; its body is "RestOfIDPayload" for AUTH."""

    __slots__ = ("payload_type", "id_type", "data")

    def __init__(self, payload_type: PayloadType, id_type: int, data: bytes):
        self.payload_type = payload_type
        self.id_type = id_type
        self.data = data

    def encode_body(self) -> bytes:
        return bytes((self.id_type, 0, 0, 0)) + self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Identification":
        _require(len(body) > 4, "ID payload: no identification data")
        id_type = _enum_or_int(IdType, body[0])
        data = body[4:]
        size = _ID_SIZES.get(id_type)
        _require(size is None or len(data) == size, f"ID payload: {len(data)} octets for {id_type!r}")
        return cls(PayloadType(payload_type), id_type, data)

    def summary(self) -> str:
        return f"{PayloadType(self.payload_type).name}({format_identity(self.id_type, self.data)})"


def format_identity(id_type: int, data: bytes) -> str:
    """Render an identity the way operators write it (addresses, names, hex for DNs and key IDs)."""
    if id_type == IdType.ID_IPV4_ADDR or id_type == IdType.ID_IPV6_ADDR:
        return str(ipaddress.ip_address(data))
    if id_type == IdType.ID_FQDN or id_type == IdType.ID_RFC822_ADDR:
        return data.decode("ascii", "backslashreplace")
    if id_type == IdType.ID_DER_ASN1_DN:
        try:
            return _format_dn(data)
        except (IndexError, ValueError, UnicodeDecodeError):
            pass
    name = IdType(id_type).name if id_type in IdType._value2member_map_ else str(id_type)
    return f"{name}:{data.hex()}"


# Short names of the attribute types seen in IKE identities (RFC 4514 §3, RFC 5280 §4.1.2.4).
_DN_ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.5": "serialNumber",
    "1.2.840.113549.1.9.1": "E",
    "0.9.2342.19200300.100.1.25": "DC",
}


def _der_items(data: bytes, start: int, end: int):
    """Yield (tag, value start, value end) of the DER elements between start and end."""
    offset = start
    while offset < end:
        tag, length = data[offset], data[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 3:
                raise ValueError("unsupported DER length")
            length = int.from_bytes(data[offset : offset + count], "big")
            offset += count
        if offset + length > end:
            raise ValueError("DER element exceeds its container")
        yield tag, offset, offset + length
        offset += length


def _der_oid(value: bytes) -> str:
    arcs, number = [], 0
    for octet in value:
        number = (number << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(number)
            number = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _format_dn(data: bytes) -> str:
    """Render a DER Name the way strongSwan prints it, e.g. "O=Example, CN=gw" (logs only)."""
    (tag, start, end), = _der_items(data, 0, len(data))
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    parts = []
    for _, set_start, set_end in _der_items(data, start, end):
        for _, attr_start, attr_end in _der_items(data, set_start, set_end):
            (oid_tag, oid_start, oid_end), (_, value_start, value_end) = _der_items(data, attr_start, attr_end)
            oid = _der_oid(data[oid_start:oid_end])
            parts.append(f"{_DN_ATTRIBUTE_NAMES.get(oid, oid)}={data[value_start:value_end].decode('utf-8')}")
    return ", ".join(parts)


class Certificate(Payload):
    """CERT payload: encoding and certificate data (DER for X509_SIGNATURE)."""

    __slots__ = ("encoding", "data")
    payload_type = PayloadType.CERT

    def __init__(self, encoding: int, data: bytes):
        self.encoding = encoding
        self.data = data

    def encode_body(self) -> bytes:
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Certificate":
        _require(len(body) > 1, "CERT payload: no certificate data")
        return cls(_enum_or_int(CertEncoding, body[0]), body[1:])

    def summary(self) -> str:
        return f"CERT({self.encoding!r}, {len(self.data)} octets)"


class CertificateRequest(Payload):
    """CERTREQ payload: for X509_SIGNATURE, concatenated SHA-1 hashes of trusted CA keys."""

    __slots__ = ("encoding", "data")
    payload_type = PayloadType.CERTREQ

    def __init__(self, encoding: int, data: bytes):
        self.encoding = encoding
        self.data = data

    def encode_body(self) -> bytes:
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "CertificateRequest":
        _require(len(body) >= 1, "CERTREQ payload: no encoding")
        encoding = _enum_or_int(CertEncoding, body[0])
        data = body[1:]
        if encoding == CertEncoding.X509_SIGNATURE:
            _require(len(data) % SHA1_SIZE == 0, f"CERTREQ payload: {len(data)} octets is no list of SHA-1 hashes")
        return cls(encoding, data)

    def authorities(self) -> list[bytes]:
        """Return the SHA-1 hashes of the requested CAs' SubjectPublicKeyInfo."""
        return [self.data[i : i + SHA1_SIZE] for i in range(0, len(self.data), SHA1_SIZE)]

    def summary(self) -> str:
        return f"CERTREQ({len(self.data) // SHA1_SIZE} CAs)"


class Authentication(Payload):
    """AUTH payload: authentication method and data."""

    __slots__ = ("method", "data")
    payload_type = PayloadType.AUTH

    def __init__(self, method: int, data: bytes):
        self.method = method
        self.data = data

    def encode_body(self) -> bytes:
        return bytes((self.method, 0, 0, 0)) + self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Authentication":
        _require(len(body) > 4, "AUTH payload: no authentication data")
        return cls(body[0], body[4:])

    def summary(self) -> str:
        return f"AUTH(method {self.method})"


# --- N, D, V (RFC 7296 §3.10-§3.12) ----------------------------------------------------------


class Notify(Payload):
    """N payload. `notify_type` stays a plain integer when the type is unknown."""

    __slots__ = ("notify_type", "data", "protocol_id", "spi")
    payload_type = PayloadType.N

    def __init__(self, notify_type: int, data: bytes = b"", protocol_id: int = ProtocolId.NONE, spi: bytes = b""):
        self.notify_type = notify_type
        self.data = data
        self.protocol_id = protocol_id
        self.spi = spi

    @property
    def is_error(self) -> bool:
        return self.notify_type < NotifyType.INITIAL_CONTACT

    def encode_body(self) -> bytes:
        return _NOTIFY.pack(self.protocol_id, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Notify":
        _require(len(body) >= _NOTIFY.size, "N payload: truncated")
        protocol, spi_size, notify_type = _NOTIFY.unpack_from(body, 0)
        _require(_NOTIFY.size + spi_size <= len(body), f"N payload: SPI size {spi_size} exceeds the payload")
        spi = body[_NOTIFY.size : _NOTIFY.size + spi_size]
        return cls(_enum_or_int(NotifyType, notify_type), body[_NOTIFY.size + spi_size :], protocol, spi)

    def summary(self) -> str:
        try:
            name = NotifyType(self.notify_type).name
        except ValueError:
            name = str(self.notify_type)
        return f"N({name})"


class Delete(Payload):
    """D payload: the protocol and the SPIs to delete (none for the IKE SA itself)."""

    __slots__ = ("protocol_id", "spis")
    payload_type = PayloadType.D

    def __init__(self, protocol_id: int, spis: list[bytes] | tuple[bytes, ...] = ()):
        self.protocol_id = protocol_id
        self.spis = tuple(spis)

    def encode_body(self) -> bytes:
        spi_size = len(self.spis[0]) if self.spis else 0
        return _DELETE.pack(self.protocol_id, spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Delete":
        _require(len(body) >= _DELETE.size, "D payload: truncated")
        protocol, spi_size, count = _DELETE.unpack_from(body, 0)
        _require(len(body) == _DELETE.size + spi_size * count, "D payload: length does not match SPI size x count")
        if protocol == ProtocolId.IKE:
            _require(spi_size == 0 and count == 0, "D payload: an IKE SA delete carries no SPI")
        elif protocol in (ProtocolId.ESP, ProtocolId.AH):
            _require(spi_size == 4, f"D payload: SPI size {spi_size} invalid for ESP/AH")
        else:
            raise InvalidSyntax(f"D payload: invalid protocol {protocol}")
        spis = [body[_DELETE.size + i * spi_size : _DELETE.size + (i + 1) * spi_size] for i in range(count)]
        return cls(ProtocolId(protocol), spis)

    def summary(self) -> str:
        return f"D({ProtocolId(self.protocol_id).name}, {len(self.spis)} SPIs)"


class VendorId(Payload):
    """V payload: an opaque vendor identifier."""

    __slots__ = ("data",)
    payload_type = PayloadType.V

    def __init__(self, data: bytes):
        self.data = data

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "VendorId":
        _require(len(body) >= 1, "V payload: empty vendor ID")
        return cls(body)

    def summary(self) -> str:
        return f"V({self.data[:16].hex()})"


# --- TSi/TSr (RFC 7296 §3.13) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One traffic selector: an address range, an IP protocol (0 = any) and a port range."""

    ts_type: TsType
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: bytes
    end_addr: bytes

    @classmethod
    def from_network(cls, network: str, ip_protocol: int = 0, ports: tuple[int, int] = (0, 65535)) -> "TrafficSelector":
        """Build a selector from a CIDR prefix or a single address, e.g. "10.1.0.0/16"."""
        net = ipaddress.ip_network(network, strict=False)
        ts_type = TsType.TS_IPV4_ADDR_RANGE if net.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return cls(ts_type, ip_protocol, ports[0], ports[1], net.network_address.packed, net.broadcast_address.packed)

    @classmethod
    def from_range(cls, start: str, end: str, ip_protocol: int = 0, ports: tuple[int, int] = (0, 65535)) -> "TrafficSelector":
        first, last = ipaddress.ip_address(start), ipaddress.ip_address(end)
        if first.version != last.version or int(first) > int(last):
            raise ValueError(f"invalid address range {start}-{end}")
        ts_type = TsType.TS_IPV4_ADDR_RANGE if first.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return cls(ts_type, ip_protocol, ports[0], ports[1], first.packed, last.packed)

    @property
    def start_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.start_addr)

    @property
    def end_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.end_addr)

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Return the prefixes covering the address range (what XFRM selectors need)."""
        return list(ipaddress.summarize_address_range(self.start_address, self.end_address))

    def encode(self) -> bytes:
        length = 8 + 2 * len(self.start_addr)
        return _TS_HEADER.pack(self.ts_type, self.ip_protocol, length, self.start_port, self.end_port) + self.start_addr + self.end_addr

    def __str__(self) -> str:
        ports = "" if (self.start_port, self.end_port) == (0, 65535) else f"[{self.start_port}-{self.end_port}]"
        proto = "" if self.ip_protocol == 0 else f"/proto {self.ip_protocol}"
        return f"{self.start_address}-{self.end_address}{proto}{ports}"


class TrafficSelectors(Payload):
    """TSi or TSr payload. Selectors of unknown types are skipped on decoding."""

    __slots__ = ("payload_type", "selectors")

    def __init__(self, payload_type: PayloadType, selectors: list[TrafficSelector] | tuple[TrafficSelector, ...]):
        self.payload_type = payload_type
        self.selectors = tuple(selectors)

    def encode_body(self) -> bytes:
        return bytes((len(self.selectors), 0, 0, 0)) + b"".join(ts.encode() for ts in self.selectors)

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "TrafficSelectors":
        _require(len(body) >= 4, "TS payload: truncated")
        count = body[0]
        _require(count >= 1, "TS payload: no traffic selector")
        selectors = []
        offset = 4
        for _ in range(count):
            _require(offset + _TS_HEADER.size <= len(body), "TS payload: truncated selector")
            ts_type, protocol, length, start_port, end_port = _TS_HEADER.unpack_from(body, offset)
            _require(length >= _TS_HEADER.size and offset + length <= len(body), f"TS payload: selector length {length} invalid")
            size = _TS_ADDRESS_SIZE.get(ts_type)
            if size is not None:
                _require(length == _TS_HEADER.size + 2 * size, f"TS payload: selector length {length} invalid for type {ts_type}")
                start = body[offset + 8 : offset + 8 + size]
                end = body[offset + 8 + size : offset + length]
                selectors.append(TrafficSelector(TsType(ts_type), protocol, start_port, end_port, start, end))
            offset += length
        _require(offset == len(body), "TS payload: octets after the last selector")
        return cls(PayloadType(payload_type), selectors)

    def summary(self) -> str:
        return f"{PayloadType(self.payload_type).name}({', '.join(map(str, self.selectors))})"


# --- CP (RFC 7296 §3.15) ---------------------------------------------------------------------


class Configuration(Payload):
    """CP payload: configuration type and (attribute type, value) pairs.

    NOTE: decoded and encoded, but no exchange uses it yet (no virtual IP or DNS assignment).
    """

    __slots__ = ("cfg_type", "attributes")
    payload_type = PayloadType.CP

    def __init__(self, cfg_type: int, attributes: list[tuple[int, bytes]] | tuple = ()):
        self.cfg_type = cfg_type
        self.attributes = tuple(attributes)

    def encode_body(self) -> bytes:
        parts = [bytes((self.cfg_type, 0, 0, 0))]
        for kind, value in self.attributes:
            parts.append(_ATTRIBUTE.pack(kind & 0x7FFF, len(value)) + value)
        return b"".join(parts)

    @classmethod
    def decode_body(cls, payload_type: int, body: bytes) -> "Configuration":
        _require(len(body) >= 4, "CP payload: truncated")
        attributes = []
        offset = 4
        while offset < len(body):
            _require(offset + _ATTRIBUTE.size <= len(body), "CP payload: truncated attribute")
            kind, length = _ATTRIBUTE.unpack_from(body, offset)
            offset += _ATTRIBUTE.size
            _require(offset + length <= len(body), "CP payload: attribute length exceeds the payload")
            attributes.append((kind & 0x7FFF, body[offset : offset + length]))
            offset += length
        return cls(body[0], attributes)


# --- SKF (RFC 7383 §2.5) ----------------------------------------------------------------------
# The SK payload has no class: a decrypted message's payloads are the SK payload's content, and
# `Message.protected` is True when they came inside SK (see message.py).


class EncryptedFragment(Payload):
    """SKF payload: one fragment of an SK payload (RFC 7383 §2.5), still encrypted.

    `first_payload` is the Next Payload field, the type of the first inner payload in fragment 1
    and zero in the others. `content` is IV, ciphertext and ICV.
    """

    __slots__ = ("fragment_number", "total_fragments", "first_payload", "content")
    payload_type = PayloadType.SKF

    def __init__(self, fragment_number: int, total_fragments: int, first_payload: int, content: bytes):
        self.fragment_number = fragment_number
        self.total_fragments = total_fragments
        self.first_payload = first_payload
        self.content = content

    @classmethod
    def decode_fields(cls, first_payload: int, body: bytes) -> "EncryptedFragment":
        _require(len(body) > _SKF.size, "SKF payload: truncated")
        number, total = _SKF.unpack_from(body, 0)
        _require(1 <= number <= total, f"SKF payload: fragment {number} of {total} invalid")
        return cls(number, total, first_payload, body[_SKF.size :])

    def summary(self) -> str:
        return f"SKF({self.fragment_number}/{self.total_fragments})"


class UnknownPayload(Payload):
    """A payload of a type this implementation does not process, kept as raw octets."""

    __slots__ = ("payload_type", "critical", "body")

    def __init__(self, payload_type: int, critical: bool, body: bytes):
        self.payload_type = payload_type
        self.critical = critical
        self.body = body

    def encode_body(self) -> bytes:
        return self.body

    def summary(self) -> str:
        return f"unknown({self.payload_type})"


# Payload classes by the type that names them; SK and SKF are handled by message.py, EAP is
# kept raw because this implementation does not do EAP authentication.
PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    PayloadType.SA: SecurityAssociation,
    PayloadType.KE: KeyExchange,
    PayloadType.IDi: Identification,
    PayloadType.IDr: Identification,
    PayloadType.CERT: Certificate,
    PayloadType.CERTREQ: CertificateRequest,
    PayloadType.AUTH: Authentication,
    PayloadType.NONCE: Nonce,
    PayloadType.N: Notify,
    PayloadType.D: Delete,
    PayloadType.V: VendorId,
    PayloadType.TSi: TrafficSelectors,
    PayloadType.TSr: TrafficSelectors,
    PayloadType.CP: Configuration,
}

KNOWN_PAYLOAD_TYPES: frozenset[int] = frozenset(PAYLOAD_CLASSES) | {PayloadType.SK, PayloadType.SKF, PayloadType.EAP}
