"""Error responses of the IKE core: which notify rejects which malformed or unwelcome request.

Requests are built by hand with the initiator's keys, so that they pass the integrity check and
reach the parts of the responder that reject them.
"""

import struct

from agent.ike import IkeEndpoint, IkeSaEstablished
from agent.ike.constants import EncrId, ExchangeType, HeaderFlag, NotifyType, PayloadType, ProtocolId, TransformType
from agent.ike.message import GENERIC_HEADER, Message, encode_chain
from agent.ike.payloads import (
    Delete,
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectors,
    UnknownPayload,
)
from agent.ike.proposal import Proposal, Transform
from agent.ike.sa import IkeSaState

from .ike_network import LEFT, RIGHT, Network, Packet, connect, make_endpoint, psk_pair, seeded


def established_pair(**right_settings):
    network, left, right, left_id = connect(*psk_pair(), right_settings=right_settings)
    network.run()
    assert any(isinstance(e, IkeSaEstablished) for e in left.events())
    right.events()
    return network, left, right, left.ike_sa(left_id)


def send_protected(network, sa, exchange_type, chain_first, chain, message_id=None):
    """Send a request sealed with the initiator's keys and return the decrypted response."""
    message_id = sa.next_message_id if message_id is None else message_id
    message = Message(sa.spi_i, sa.spi_r, exchange_type, HeaderFlag.INITIATOR, message_id, [])
    data = sa.cipher.seal(message._header, chain_first, chain)
    network.deliver([Packet(bytes(4) + data, sa.local, sa.remote)])
    answers = network.take()
    if not answers:
        return None
    response_data = answers[0].ike
    response = Message.decode(response_data)
    response.decrypt(response_data, sa.cipher)
    return response


def error_notify(answer):
    notifies = answer.notifies()
    assert len(notifies) == 1, answer.summary()
    return notifies[0]


def test_critical_unknown_payload_rejected():
    network, left, right, sa = established_pair()
    first, chain = encode_chain([UnknownPayload(200, False, b"x")])
    chain = chain[:1] + b"\x80" + chain[2:]  # set the critical bit
    # HDR, SK {UNKNOWN!}  -->  <--  HDR, SK {N(UNSUPPORTED_CRITICAL_PAYLOAD, 200)}
    notify = error_notify(send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain))
    assert notify.notify_type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert notify.data == bytes((200,))


def test_unknown_noncritical_payload_ignored():
    network, left, right, sa = established_pair()
    first, chain = encode_chain([UnknownPayload(200, False, b"x")])
    # HDR, SK {UNKNOWN}  -->  <--  HDR, SK {}   (a liveness check response)
    answer = send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain)
    assert answer.payloads == []


def test_malformed_inner_payload_rejected():
    network, left, right, sa = established_pair()
    first, chain = encode_chain([Delete(3, [b"\x00\x00\x01\x00"])])
    chain = chain[: GENERIC_HEADER.size + 2] + struct.pack("!H", 9) + chain[GENERIC_HEADER.size + 4 :]  # SPI count 9
    notify = error_notify(send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain))
    assert notify.notify_type == NotifyType.INVALID_SYNTAX


def test_misplaced_payload_rejected():
    network, left, right, sa = established_pair()
    first, chain = encode_chain([KeyExchange(31, bytes(32))])
    notify = error_notify(send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain))
    assert notify.notify_type == NotifyType.INVALID_SYNTAX


def test_error_response_cached():
    network, left, right, sa = established_pair()
    first, chain = encode_chain([KeyExchange(31, bytes(32))])
    send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain)
    again = send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain)
    assert error_notify(again).notify_type == NotifyType.INVALID_SYNTAX
    assert right.stats["retransmitted_responses"] == 1


def test_rekey_unknown_child_rejected():
    network, left, right, sa = established_pair()
    payloads = [
        Notify(NotifyType.REKEY_SA, protocol_id=3, spi=b"\xde\xad\xbe\xef"),
        SecurityAssociation([Proposal(1, ProtocolId.ESP, b"\x00\x00\x10\x00",
                                      (Transform(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),))]),
        Nonce(bytes(32)),
        TrafficSelectors(PayloadType.TSi, [TrafficSelector.from_network("10.2.0.0/16")]),
        TrafficSelectors(PayloadType.TSr, [TrafficSelector.from_network("10.1.0.0/16")]),
    ]
    first, chain = encode_chain(payloads)
    notify = error_notify(send_protected(network, sa, ExchangeType.CREATE_CHILD_SA, first, chain))
    assert notify.notify_type == NotifyType.CHILD_SA_NOT_FOUND
    assert notify.spi == b"\xde\xad\xbe\xef"


def test_request_with_old_message_id_dropped():
    network, left, right, sa = established_pair()
    first, chain = encode_chain([])
    answer = send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain, message_id=0)
    assert answer is None  # ID 0 was IKE_SA_INIT, long past; the cache holds only ID 1
    assert right.stats["dropped_message_id"] == 1


def test_request_in_wrong_state_dropped():
    network, left, right, left_id = connect(*psk_pair())
    network.step(2)  # IKE_SA_INIT done; the responder waits for IKE_AUTH
    network.take()
    sa = left.ike_sa(left_id)
    first, chain = encode_chain([])
    answer = send_protected(network, sa, ExchangeType.INFORMATIONAL, first, chain, message_id=1)
    assert answer is None
    assert right.stats["dropped_state"] == 1
    assert right.ike_sas[0].state == IkeSaState.HALF_OPEN


def test_major_version_rejected():
    network, left, right, left_id = connect(*psk_pair())
    request, = network.take()
    data = bytearray(request.data)
    data[17] = 0x30  # IKE version 3.0
    network.deliver([Packet(bytes(data), request.source, request.destination)])
    answer, = network.take()
    message = Message.decode(answer.ike)
    assert message.is_response
    assert message.notifies()[0].notify_type == NotifyType.INVALID_MAJOR_VERSION
    assert not right.ike_sas


def test_init_without_nonce_rejected():
    network, left, right, left_id = connect(*psk_pair())
    request, = network.take()
    message = Message.decode(request.data)
    message.payloads = [p for p in message.payloads if p.payload_type != PayloadType.NONCE]
    network.deliver([Packet(message.encode(), request.source, request.destination)])
    answer, = network.take()
    assert Message.decode(answer.ike).notifies()[0].notify_type == NotifyType.INVALID_SYNTAX


def test_garbage_datagrams_dropped():
    network, left, right, sa = established_pair()
    for data in [b"", b"\x01", bytes(27), bytes(4), bytes(4) + b"\xff" * 40, b"\xff"]:
        right.receive_datagram(data, (RIGHT[0], 4500), (LEFT[0], 4500), network.now)
        right.receive_datagram(data, RIGHT, LEFT, network.now)
    assert not network.take()
    assert right.stats["dropped_not_ike"] >= 3


def test_cookie_rejected_when_wrong():
    network, left, right, left_id = connect(*psk_pair(), right_settings={"half_open_limit": 0})
    network.deliver(network.take())
    cookie_answer, = network.take()
    message = Message.decode(cookie_answer.ike)
    cookie = message.notifies()[0].data
    network.take()
    request = Message.decode(network.sent[0].data)
    request.payloads.insert(0, Notify(NotifyType.COOKIE, cookie[:-1] + bytes((cookie[-1] ^ 1,))))
    network.deliver([Packet(request.encode(), LEFT, RIGHT)])
    again, = network.take()
    assert Message.decode(again.ike).notifies()[0].notify_type == NotifyType.COOKIE
    assert not right.ike_sas


def test_cookie_secret_rotation():
    network, left, right, left_id = connect(*psk_pair(),
                                            right_settings={"half_open_limit": 0, "cookie_secret_lifetime": 10.0})
    network.deliver(network.take())
    cookie_answer, = network.take()
    request = Message.decode(network.sent[0].data)
    request.payloads.insert(0, Message.decode(cookie_answer.ike).notifies()[0])
    # One rotation later the old cookie still works; two rotations later it no longer does.
    for now, accepted in ((15.0, True), (35.0, False)):
        endpoint = make_endpoint([psk_pair()[1]], seed=101, half_open_limit=0, cookie_secret_lifetime=10.0)
        endpoint.receive_datagram(network.sent[0].data, RIGHT, LEFT, 0.0)
        endpoint.datagrams_to_send()
        if now > 20:
            endpoint.receive_datagram(network.sent[0].data, RIGHT, LEFT, 15.0)
        endpoint.receive_datagram(request.encode(), RIGHT, LEFT, now)
        assert bool(endpoint.ike_sas) is accepted


def test_injected_spi_allocator():
    allocated = []

    def allocate(local, remote):
        allocated.append((local, remote))
        return 0x1000 + len(allocated)

    left_config, right_config = psk_pair()
    left = IkeEndpoint(random=seeded(3), allocate_spi=allocate)
    right = make_endpoint([right_config])
    network = Network()
    network.add(LEFT[0], left)
    network.add(RIGHT[0], right)
    left_id = left.initiate(left_config, LEFT, RIGHT, 0.0)
    network.run()
    assert allocated == [(LEFT[0], RIGHT[0])]
    assert list(left.ike_sa(left_id).children) == [0x1001]


def test_forged_init_response_ignored():
    network, left, right, left_id = connect(*psk_pair())
    network.deliver(network.take())
    genuine, = network.take()
    # A forged response with an invalid KE value arrives first; the initiator keeps waiting.
    message = Message.decode(genuine.data)
    for payload in message.payloads:
        if payload.payload_type == PayloadType.KE:
            payload.data = bytes(32)
    network.deliver([Packet(message.encode(), genuine.source, genuine.destination)])
    assert left.stats["dropped_invalid"] == 1
    assert left.ike_sa(left_id).state == IkeSaState.CONNECTING
    network.deliver([genuine])
    network.run()
    assert any(isinstance(e, IkeSaEstablished) for e in left.events())
