"""Tests for agent.ike.payloads: every payload class round trip, and every length check."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ike.constants import (
    AuthMethod,
    CertEncoding,
    DhId,
    EncrId,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)
from agent.ike.errors import InvalidSyntax
from agent.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Configuration,
    Delete,
    Identification,
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectors,
    VendorId,
)
from agent.ike.proposal import Proposal, Transform


def round_trip(payload):
    return type(payload).decode_body(payload.payload_type, payload.encode_body())


def ike_proposal(number=1, spi=b""):
    return Proposal(
        number,
        ProtocolId.IKE,
        spi,
        (
            Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),
            Transform(TransformType.PRF, 5),
            Transform(TransformType.DH, DhId.CURVE25519),
        ),
    )


# --- SA ---------------------------------------------------------------------------------------


def test_sa_round_trip():
    esp = Proposal(2, ProtocolId.ESP, b"\x01\x02\x03\x04", (Transform(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128),
                                                           Transform(TransformType.INTEG, 12),
                                                           Transform(TransformType.ESN, 0)))
    decoded = round_trip(SecurityAssociation([ike_proposal(), esp]))
    assert decoded.proposals == (ike_proposal(), esp)
    assert decoded.dropped == 0


def test_sa_rekey_spi_round_trip():
    decoded = round_trip(SecurityAssociation([ike_proposal(spi=b"\x11" * 8)]))
    assert decoded.proposals[0].spi == b"\x11" * 8


def test_sa_wire_layout():
    body = SecurityAssociation([ike_proposal()]).encode_body()
    # Proposal header: last, reserved, length, number, protocol IKE, SPI size 0, 3 transforms.
    assert body[:8] == bytes((0, 0)) + struct.pack("!H", len(body)) + bytes((1, 1, 0, 3))
    # First transform: more (3), length 12, ENCR, id 20, key length attribute in TV form.
    assert body[8:20] == bytes((3, 0, 0, 12, 1, 0, 0, 20)) + struct.pack("!HH", 0x800E, 256)


def _transform(ttype, tid, attributes=b"", last=True):
    return bytes((0 if last else 3, 0)) + struct.pack("!H", 8 + len(attributes)) + bytes((ttype, 0)) + struct.pack("!H", tid) + attributes


def _proposal(transforms, count, protocol=1, spi=b"", number=1):
    body = spi + b"".join(transforms)
    return bytes((0, 0)) + struct.pack("!H", 8 + len(body)) + bytes((number, protocol, len(spi), count)) + body


def test_sa_unknown_transform_type_drops_proposal():
    good = _proposal([_transform(1, 20, struct.pack("!HH", 0x800E, 128))], 1)
    bad = _proposal([_transform(1, 20, last=False), _transform(99, 1)], 2, number=2)
    body = bytearray(bad) + good
    body[0] = 2  # more proposals follow
    decoded = SecurityAssociation.decode_body(PayloadType.SA, bytes(body))
    assert [p.number for p in decoded.proposals] == [1]
    assert decoded.dropped == 1


def test_sa_unknown_attribute_drops_transform():
    unknown_tv = struct.pack("!HH", 0x8000 | 17, 5)
    unknown_tlv = struct.pack("!HH", 18, 3) + b"abc"
    transforms = [_transform(1, 20, unknown_tv, last=False), _transform(1, 12, unknown_tlv, last=False),
                  _transform(1, 28)]
    decoded = SecurityAssociation.decode_body(PayloadType.SA, _proposal(transforms, 3))
    assert decoded.proposals[0].transforms == (Transform(TransformType.ENCR, 28),)
    assert decoded.dropped == 2


def test_sa_unknown_protocol_drops_proposal():
    decoded = SecurityAssociation.decode_body(PayloadType.SA, _proposal([_transform(1, 20)], 1, protocol=9))
    assert decoded.proposals == ()
    assert decoded.dropped == 1


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x00\x00",
        _proposal([_transform(1, 20)], 2),  # the count claims two transforms
        _proposal([_transform(1, 20, last=False)], 1),  # the last-transform flag claims more
        _proposal([_transform(1, 20)], 1)[:-1],  # truncated
        _proposal([_transform(1, 20)], 1) + b"\x00",  # trailing octet
        _proposal([_transform(1, 20)], 1, protocol=3, spi=b"\x01\x02"),  # ESP with a 2-octet SPI
        bytes((1,)) + _proposal([_transform(1, 20)], 1)[1:],  # invalid last-proposal value
        _proposal([_transform(1, 20, struct.pack("!HH", 14, 9) + b"x")], 1),  # TLV length too long
    ],
)
def test_sa_malformed(body):
    with pytest.raises(InvalidSyntax):
        SecurityAssociation.decode_body(PayloadType.SA, body)


# --- KE, Nonce, ID, CERT, CERTREQ, AUTH ---------------------------------------------------------


def test_ke_round_trip():
    decoded = round_trip(KeyExchange(DhId.CURVE25519, b"\x05" * 32))
    assert (decoded.dh_group, decoded.data) == (DhId.CURVE25519, b"\x05" * 32)


def test_ke_without_data():
    with pytest.raises(InvalidSyntax):
        KeyExchange.decode_body(PayloadType.KE, b"\x00\x1f\x00\x00")


@pytest.mark.parametrize("size", [16, 32, 256])
def test_nonce_sizes_accepted(size):
    assert round_trip(Nonce(bytes(size))).data == bytes(size)


@pytest.mark.parametrize("size", [0, 15, 257])
def test_nonce_sizes_rejected(size):
    with pytest.raises(InvalidSyntax):
        Nonce.decode_body(PayloadType.NONCE, bytes(size))


@pytest.mark.parametrize(
    "id_type, data",
    [
        (IdType.ID_IPV4_ADDR, bytes((192, 0, 2, 1))),
        (IdType.ID_IPV6_ADDR, bytes(16)),
        (IdType.ID_FQDN, b"gw.example.org"),
        (IdType.ID_RFC822_ADDR, b"admin@example.org"),
        (IdType.ID_DER_ASN1_DN, b"\x30\x00"),
        (IdType.ID_DER_ASN1_GN, b"\x82\x03abc"),
        (IdType.ID_KEY_ID, b"\x01\x02"),
        (200, b"private"),
    ],
)
def test_identification_round_trip(id_type, data):
    decoded = round_trip(Identification(PayloadType.IDr, id_type, data))
    assert (decoded.payload_type, decoded.id_type, decoded.data) == (PayloadType.IDr, id_type, data)


@pytest.mark.parametrize("id_type, size", [(IdType.ID_IPV4_ADDR, 5), (IdType.ID_IPV6_ADDR, 4)])
def test_identification_address_length(id_type, size):
    with pytest.raises(InvalidSyntax):
        Identification.decode_body(PayloadType.IDi, bytes((id_type, 0, 0, 0)) + bytes(size))


def test_identification_body_is_rest_of_id_payload():
    # RFC 7296 §2.15: AUTH covers the ID payload after its generic header.
    assert Identification(PayloadType.IDi, IdType.ID_FQDN, b"a").encode_body() == b"\x02\x00\x00\x00a"


def test_certificate_round_trip():
    decoded = round_trip(Certificate(CertEncoding.X509_SIGNATURE, b"\x30\x82"))
    assert (decoded.encoding, decoded.data) == (CertEncoding.X509_SIGNATURE, b"\x30\x82")


def test_certificate_request_authorities():
    decoded = round_trip(CertificateRequest(CertEncoding.X509_SIGNATURE, b"\x01" * 20 + b"\x02" * 20))
    assert decoded.authorities() == [b"\x01" * 20, b"\x02" * 20]


def test_certificate_request_partial_hash():
    with pytest.raises(InvalidSyntax):
        CertificateRequest.decode_body(PayloadType.CERTREQ, bytes((4,)) + bytes(21))


def test_authentication_round_trip():
    decoded = round_trip(Authentication(AuthMethod.DIGITAL_SIGNATURE, b"sig"))
    assert (decoded.method, decoded.data) == (AuthMethod.DIGITAL_SIGNATURE, b"sig")


# --- N, D, V ----------------------------------------------------------------------------------


def test_notify_round_trip_with_spi():
    decoded = round_trip(Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xaa\xbb\xcc\xdd"))
    assert (decoded.notify_type, decoded.protocol_id, decoded.spi, decoded.data) == (
        NotifyType.REKEY_SA, ProtocolId.ESP, b"\xaa\xbb\xcc\xdd", b"")


def test_notify_unknown_type_stays_integer():
    decoded = round_trip(Notify(50000, b"x"))
    assert decoded.notify_type == 50000
    assert not decoded.is_error


def test_notify_error_range():
    assert Notify(NotifyType.AUTHENTICATION_FAILED).is_error
    assert not Notify(NotifyType.INITIAL_CONTACT).is_error


def test_notify_spi_exceeds_payload():
    with pytest.raises(InvalidSyntax):
        Notify.decode_body(PayloadType.N, bytes((3, 8)) + struct.pack("!H", 16393) + bytes(4))


def test_delete_round_trip():
    decoded = round_trip(Delete(ProtocolId.ESP, [b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"]))
    assert decoded.spis == (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")
    assert round_trip(Delete(ProtocolId.IKE)).spis == ()


@pytest.mark.parametrize(
    "body",
    [
        bytes((3, 4)) + struct.pack("!H", 2) + bytes(4),  # the count claims 2 SPIs, one is present
        bytes((1, 8)) + struct.pack("!H", 1) + bytes(8),  # IKE delete with an SPI
        bytes((3, 8)) + struct.pack("!H", 1) + bytes(8),  # ESP SPI of 8 octets
        bytes((7, 0)) + struct.pack("!H", 0),  # unknown protocol
        bytes((3,)),
    ],
)
def test_delete_malformed(body):
    with pytest.raises(InvalidSyntax):
        Delete.decode_body(PayloadType.D, body)


def test_vendor_id_round_trip():
    assert round_trip(VendorId(b"\x88\x2f")).data == b"\x88\x2f"


# --- TS, CP -----------------------------------------------------------------------------------


def test_traffic_selectors_round_trip():
    selectors = [
        TrafficSelector.from_network("10.0.0.0/8"),
        TrafficSelector.from_network("2001:db8::/32", ip_protocol=6, ports=(443, 443)),
    ]
    decoded = round_trip(TrafficSelectors(PayloadType.TSi, selectors))
    assert decoded.selectors == tuple(selectors)
    assert decoded.payload_type == PayloadType.TSi


def test_traffic_selector_range_and_networks():
    ts = TrafficSelector.from_range("192.0.2.0", "192.0.2.5")
    assert ts.ts_type == TsType.TS_IPV4_ADDR_RANGE
    assert [str(n) for n in ts.networks()] == ["192.0.2.0/30", "192.0.2.4/31"]


def test_traffic_selectors_skip_unknown_type():
    unknown = bytes((9, 0)) + struct.pack("!HHH", 12, 0, 65535) + bytes(4)
    known = TrafficSelector.from_network("10.0.0.0/8").encode()
    body = bytes((2, 0, 0, 0)) + unknown + known
    decoded = TrafficSelectors.decode_body(PayloadType.TSr, body)
    assert decoded.selectors == (TrafficSelector.from_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    "body",
    [
        bytes((0, 0, 0, 0)),  # no selector
        bytes((2, 0, 0, 0)) + TrafficSelector.from_network("10.0.0.0/8").encode(),  # count says 2
        bytes((1, 0, 0, 0)) + bytes((7, 0)) + struct.pack("!HHH", 40, 0, 65535) + bytes(32),  # IPv4 with 40 octets
        bytes((1, 0, 0, 0)) + bytes((7, 0)) + struct.pack("!HHH", 2, 0, 0),  # selector length below 8
        bytes((1, 0, 0, 0)) + TrafficSelector.from_network("10.0.0.0/8").encode() + b"\x00",
    ],
)
def test_traffic_selectors_malformed(body):
    with pytest.raises(InvalidSyntax):
        TrafficSelectors.decode_body(PayloadType.TSi, body)


def test_configuration_round_trip():
    decoded = round_trip(Configuration(1, [(1, b""), (3, b"\xc0\x00\x02\x01")]))
    assert (decoded.cfg_type, decoded.attributes) == (1, ((1, b""), (3, b"\xc0\x00\x02\x01")))


def test_configuration_attribute_overrun():
    with pytest.raises(InvalidSyntax):
        Configuration.decode_body(PayloadType.CP, bytes((1, 0, 0, 0)) + struct.pack("!HH", 1, 9) + b"abc")


def test_format_identity():
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from agent.ike.payloads import format_identity

    dn = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"), x509.NameAttribute(NameOID.COMMON_NAME, "gw")])
    assert format_identity(IdType.ID_DER_ASN1_DN, dn.public_bytes()) == "C=CH, CN=gw"
    assert format_identity(IdType.ID_DER_ASN1_DN, b"\x30\x05garb") == "ID_DER_ASN1_DN:300567617262"
    assert format_identity(IdType.ID_IPV6_ADDR, bytes(15) + b"\x01") == "::1"
    assert format_identity(IdType.ID_KEY_ID, b"\x01") == "ID_KEY_ID:01"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(IdType) + [99]), st.binary(max_size=60))
def test_format_identity_any_data(id_type, data):
    from agent.ike.payloads import format_identity

    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        data = data.ljust(16, b"\x00")[: 4 if id_type == IdType.ID_IPV4_ADDR else 16]
    assert isinstance(format_identity(id_type, data), str)
