"""Tests for agent.ike.message and agent.ike.rules: header, payload chain, SK, SKF, payload rules.

The Hypothesis tests feed arbitrary and mutated datagrams to the decoder and check that nothing
but a ProtocolError escapes.
"""

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ike.constants import EncrId, ExchangeType, HeaderFlag, IdType, IntegId, NotifyType, PayloadType
from agent.ike.crypto import encryption_by_id, integrity_by_id
from agent.ike.errors import (
    IntegrityCheckFailed,
    InvalidMajorVersion,
    InvalidSyntax,
    ProtocolError,
    UnsupportedCriticalPayload,
)
from agent.ike.message import (
    MAX_FRAGMENTS,
    FragmentReassembly,
    Message,
    SkCipher,
    decrypt_fragment,
    decode_chain,
    encode_chain,
)
from agent.ike.payloads import (
    Certificate,
    Delete,
    EncryptedFragment,
    Identification,
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectors,
    UnknownPayload,
)
from agent.ike.rules import check_payloads

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def deterministic_random(seed=7):
    generator = random.Random(seed)
    return generator.randbytes


def cipher_pair(encr_id=EncrId.ENCR_AES_GCM_16, key_bits=256, integ_id=None):
    """Return (initiator's cipher, responder's cipher) sharing keys, as after IKE_SA_INIT."""
    encr = encryption_by_id(encr_id, key_bits)
    integ = integrity_by_id(integ_id) if integ_id is not None else None
    ke, ka = encr.key_size, integ.key_size if integ else 0
    sk_ei, sk_er, sk_ai, sk_ar = b"\x01" * ke, b"\x02" * ke, b"\x03" * ka, b"\x04" * ka
    rnd = deterministic_random()
    initiator = SkCipher(encr, integ, sk_ei, sk_ai, sk_er, sk_ar, rnd)
    responder = SkCipher(encr, integ, sk_er, sk_ar, sk_ei, sk_ai, rnd)
    return initiator, responder


CIPHERS = [
    (EncrId.ENCR_AES_GCM_16, 128, None),
    (EncrId.ENCR_AES_GCM_16, 256, None),
    (EncrId.ENCR_CHACHA20_POLY1305, None, None),
    (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128),
    (EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_512_256),
]


def auth_request(payloads=None):
    payloads = payloads or [
        Identification(PayloadType.IDi, IdType.ID_FQDN, b"left.example"),
        Notify(NotifyType.INITIAL_CONTACT),
        TrafficSelectors(PayloadType.TSi, [TrafficSelector.from_network("10.1.0.0/16")]),
    ]
    return Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1, payloads)


def init_request():
    return Message(SPI_I, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0,
                   [KeyExchange(31, b"\x09" * 32), Nonce(b"\x0a" * 32), Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20))])


def decrypted(data, cipher):
    message = Message.decode(data)
    message.decrypt(data, cipher)
    return message


# --- header and chain -------------------------------------------------------------------------


def test_header_round_trip():
    data = init_request().encode()
    message = Message.decode(data)
    assert (message.spi_i, message.spi_r, message.exchange_type, message.message_id) == (
        SPI_I, bytes(8), ExchangeType.IKE_SA_INIT, 0)
    assert message.from_original_initiator and not message.is_response
    assert [p.payload_type for p in message.payloads] == [PayloadType.KE, PayloadType.NONCE, PayloadType.N]
    assert struct.unpack_from("!I", data, 24)[0] == len(data)


def test_header_too_short():
    with pytest.raises(InvalidSyntax):
        Message.decode(bytes(27))


def test_header_length_mismatch():
    data = init_request().encode()
    with pytest.raises(InvalidSyntax):
        Message.decode(data + b"\x00")


def test_header_major_version():
    data = bytearray(init_request().encode())
    data[17] = 0x30
    with pytest.raises(InvalidMajorVersion):
        Message.decode(bytes(data))


def test_minor_version_ignored():
    data = bytearray(init_request().encode())
    data[17] = 0x21
    assert Message.decode(bytes(data)).message_id == 0


def test_unknown_noncritical_payload_skipped():
    first, chain = encode_chain([UnknownPayload(200, False, b"xyz"), Nonce(bytes(16))])
    payloads, _ = decode_chain(first, chain, 0, len(chain), outer=False)
    assert payloads[0].payload_type == 200
    assert payloads[1].payload_type == PayloadType.NONCE


def test_unknown_critical_payload_rejected():
    first, chain = encode_chain([UnknownPayload(200, False, b"xyz")])
    chain = chain[:1] + b"\x80" + chain[2:]
    with pytest.raises(UnsupportedCriticalPayload) as raised:
        decode_chain(first, chain, 0, len(chain), outer=False)
    assert raised.value.notify_data == bytes((200,))


@pytest.mark.parametrize("cut", [1, 3, 5])
def test_chain_truncated(cut):
    first, chain = encode_chain([Nonce(bytes(16))])
    with pytest.raises(InvalidSyntax):
        decode_chain(first, chain[:-cut], 0, len(chain) - cut, outer=False)


def test_chain_trailing_octets():
    first, chain = encode_chain([Nonce(bytes(16))])
    with pytest.raises(InvalidSyntax):
        decode_chain(first, chain + b"\x00", 0, len(chain) + 1, outer=False)


def test_sk_must_be_last():
    initiator, _ = cipher_pair()
    data = bytearray(auth_request().encode(initiator))
    struct.pack_into("!I", data, 24, len(data) + 4)
    with pytest.raises(InvalidSyntax):
        Message.decode(bytes(data) + bytes(4))


# --- SK -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encr_id, key_bits, integ_id", CIPHERS)
def test_sk_round_trip(encr_id, key_bits, integ_id):
    initiator, responder = cipher_pair(encr_id, key_bits, integ_id)
    data = auth_request().encode(initiator)
    message = decrypted(data, responder)
    assert message.protected
    assert [p.payload_type for p in message.payloads] == [PayloadType.IDi, PayloadType.N, PayloadType.TSi]
    assert message.payloads[0].data == b"left.example"


@pytest.mark.parametrize("encr_id, key_bits, integ_id", CIPHERS)
def test_sk_tampered_fails_integrity(encr_id, key_bits, integ_id):
    initiator, responder = cipher_pair(encr_id, key_bits, integ_id)
    data = bytearray(auth_request().encode(initiator))
    data[40] ^= 0x01
    message = Message.decode(bytes(data))
    with pytest.raises(IntegrityCheckFailed):
        message.decrypt(bytes(data), responder)


def test_sk_header_is_authenticated():
    initiator, responder = cipher_pair()
    data = bytearray(auth_request().encode(initiator))
    data[20] = 2  # message ID changed
    with pytest.raises(IntegrityCheckFailed):
        decrypted(bytes(data), responder)


def test_sk_wrong_direction_fails():
    initiator, _ = cipher_pair()
    data = auth_request().encode(initiator)
    with pytest.raises(IntegrityCheckFailed):
        decrypted(data, initiator)


def test_sk_empty_informational():
    initiator, responder = cipher_pair()
    data = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 3, []).encode(initiator)
    message = decrypted(data, responder)
    assert message.payloads == []


def test_sk_too_short():
    initiator, responder = cipher_pair()
    data = bytearray(auth_request().encode(initiator))[: 28 + 4 + 8 + 10]
    struct.pack_into("!I", data, 24, len(data))
    struct.pack_into("!H", data, 30, len(data) - 28)
    message = Message.decode(bytes(data))
    with pytest.raises(InvalidSyntax):
        message.decrypt(bytes(data), responder)


def test_sk_cbc_padding():
    initiator, responder = cipher_pair(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128)
    for size in range(16, 50):
        data = auth_request([Nonce(bytes(size))]).encode(initiator)
        assert decrypted(data, responder).payloads[0].data == bytes(size)


# --- SKF ----------------------------------------------------------------------------------------


def big_request():
    return auth_request([Certificate(4, bytes(range(256)) * 12), Notify(NotifyType.INITIAL_CONTACT)])


def reassemble(fragments, cipher, order=None):
    buffer = FragmentReassembly(1, False)
    result = None
    for index in order or range(len(fragments)):
        message = Message.decode(fragments[index])
        piece = decrypt_fragment(message, fragments[index], cipher)
        chain = buffer.add(message.encrypted.fragment, piece)
        if chain is not None:
            buffer.finish(message, chain)
            result = message
    return result


@pytest.mark.parametrize("encr_id, key_bits, integ_id", CIPHERS)
def test_fragments_round_trip(encr_id, key_bits, integ_id):
    initiator, responder = cipher_pair(encr_id, key_bits, integ_id)
    fragments = big_request().encode_fragments(initiator, 600)
    assert len(fragments) > 1
    assert all(len(fragment) <= 600 for fragment in fragments)
    message = reassemble(fragments, responder, order=list(reversed(range(len(fragments)))))
    assert message.payloads[0].data == bytes(range(256)) * 12
    assert message.payloads[1].notify_type == NotifyType.INITIAL_CONTACT


def test_fragment_fields():
    initiator, _ = cipher_pair()
    fragments = big_request().encode_fragments(initiator, 600)
    first = Message.decode(fragments[0]).encrypted.fragment
    second = Message.decode(fragments[1]).encrypted.fragment
    assert (first.fragment_number, first.total_fragments, first.first_payload) == (1, len(fragments), PayloadType.CERT)
    assert (second.fragment_number, second.first_payload) == (2, 0)


def test_fragment_duplicates_ignored():
    initiator, responder = cipher_pair()
    fragments = big_request().encode_fragments(initiator, 600)
    order = [0, 0, 1] + list(range(1, len(fragments)))
    assert reassemble(fragments, responder, order=order) is not None


def test_fragment_tampered():
    initiator, responder = cipher_pair()
    fragments = big_request().encode_fragments(initiator, 600)
    data = bytearray(fragments[1])
    data[-1] ^= 0xFF
    message = Message.decode(bytes(data))
    with pytest.raises(IntegrityCheckFailed):
        decrypt_fragment(message, bytes(data), responder)


def test_fragment_more_total_restarts():
    buffer = FragmentReassembly(1, False)
    assert buffer.add(EncryptedFragment(1, 2, PayloadType.N, b""), b"a") is None
    assert buffer.add(EncryptedFragment(1, 3, PayloadType.N, b""), b"x") is None
    assert buffer.add(EncryptedFragment(2, 2, 0, b""), b"b") is None  # older, smaller total: ignored
    assert buffer.add(EncryptedFragment(2, 3, 0, b""), b"y") is None
    assert buffer.add(EncryptedFragment(3, 3, 0, b""), b"z") == b"xyz"


def test_fragment_limit():
    buffer = FragmentReassembly(1, False)
    with pytest.raises(InvalidSyntax):
        buffer.add(EncryptedFragment(1, MAX_FRAGMENTS + 1, PayloadType.N, b""), b"a")


def test_fragment_first_names_no_payload():
    buffer = FragmentReassembly(1, False)
    with pytest.raises(InvalidSyntax):
        buffer.add(EncryptedFragment(1, 1, 0, b""), b"a")


@pytest.mark.parametrize("number, total", [(0, 1), (3, 2)])
def test_fragment_number_invalid(number, total):
    with pytest.raises(InvalidSyntax):
        EncryptedFragment.decode_fields(0, struct.pack("!HH", number, total) + bytes(30))


# --- payload rules -----------------------------------------------------------------------------


def test_rules_init_request_ok():
    message = init_request()
    message.payloads.insert(0, SecurityAssociation([]))
    check_payloads(message)


def test_rules_missing_payload():
    with pytest.raises(InvalidSyntax, match="missing payloads SA"):
        check_payloads(init_request())


def test_rules_repeated_payload():
    message = auth_request([Identification(PayloadType.IDi, 2, b"a"), Identification(PayloadType.IDi, 2, b"b")])
    message.protected = True
    with pytest.raises(InvalidSyntax, match="repeated"):
        check_payloads(message)


def test_rules_payload_not_allowed():
    message = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 2, [Nonce(bytes(16))], protected=True)
    with pytest.raises(InvalidSyntax, match="not allowed"):
        check_payloads(message)


def test_rules_must_be_encrypted():
    message = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 2, [Delete(1)])
    with pytest.raises(InvalidSyntax):
        check_payloads(message)


def test_rules_error_answer_waives_required():
    message = Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.RESPONSE, 1,
                      [Notify(NotifyType.AUTHENTICATION_FAILED)], protected=True)
    check_payloads(message)


def test_rules_unknown_payload_ignored():
    message = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, 0, 2, [UnknownPayload(222, False, b"")], protected=True)
    check_payloads(message)


# --- Hypothesis: only protocol errors escape ---------------------------------------------------


def decode_fully(data, cipher):
    message = Message.decode(data)
    if message.encrypted is not None:
        if message.encrypted.fragment is None:
            message.decrypt(data, cipher)
        else:
            piece = decrypt_fragment(message, data, cipher)
            FragmentReassembly(message.message_id, message.is_response).add(message.encrypted.fragment, piece)
    check_payloads(message)
    return message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data):
    _, responder = cipher_pair()
    try:
        decode_fully(data, responder)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_fuzz_any_chain_inside_valid_sk(chain):
    # The chain is encrypted correctly, so integrity passes and the inner decoder gets all of it.
    initiator, responder = cipher_pair(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128)
    message = auth_request([])
    data = initiator.seal(message._header, chain[0], chain[1:])
    try:
        decode_fully(data, responder)
    except ProtocolError:
        pass


def mutate(data: bytes, positions, values) -> bytes:
    data = bytearray(data)
    for position, value in zip(positions, values):
        data[position % len(data)] = value
    return bytes(data)


VALID_MESSAGES = [
    init_request().encode(),
    Message(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, [Notify(NotifyType.COOKIE, b"c" * 20)]).encode(),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(VALID_MESSAGES) - 1), st.lists(st.integers(0, 10000), min_size=1, max_size=6),
       st.lists(st.integers(0, 255), min_size=6, max_size=6), st.integers(0, 40))
def test_fuzz_mutated_plain_messages(index, positions, values, cut):
    data = mutate(VALID_MESSAGES[index], positions, values)
    data = data[: len(data) - cut]
    _, responder = cipher_pair()
    try:
        decode_fully(data, responder)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=4), st.lists(st.integers(0, 255), min_size=4, max_size=4),
       st.booleans())
def test_fuzz_mutated_encrypted_messages(positions, values, fragment):
    initiator, responder = cipher_pair()
    if fragment:
        data = big_request().encode_fragments(initiator, 600)[0]
    else:
        data = auth_request().encode(initiator)
    try:
        decode_fully(mutate(data, positions, values), responder)
    except ProtocolError:
        pass


def test_peer_error_classes():
    from agent.ike.errors import AuthenticationFailed, UnknownErrorNotify, peer_error

    known = peer_error(NotifyType.AUTHENTICATION_FAILED)
    assert isinstance(known, AuthenticationFailed)
    assert known.from_peer
    unknown = peer_error(9999, b"x")
    assert isinstance(unknown, UnknownErrorNotify)
    assert unknown.notify_type == 9999
    assert unknown.notify_data == b"x"
