"""Hypothesis over the MOBIKE, switch and redirect notify handlers.

Random INFORMATIONAL requests, properly protected, carry any mix of the notifies these handlers
read, with any data, protocol ID and SPI. Whatever arrives, only protocol errors may come up:
they become error responses inside the IKE SA, so nothing may escape from `receive_datagram`,
and every request gets a response.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ike.constants import ExchangeType, HeaderFlag, NotifyType
from agent.ike.message import Message
from agent.ike.payloads import Notify

from .ike_network import multihomed_peers

N = NotifyType
TYPES = [N.UPDATE_SA_ADDRESSES, N.ADDITIONAL_IP4_ADDRESS, N.ADDITIONAL_IP6_ADDRESS, N.NO_ADDITIONAL_ADDRESSES,
         N.COOKIE2, N.NO_NATS_ALLOWED, N.NAT_DETECTION_SOURCE_IP, N.NAT_DETECTION_DESTINATION_IP, N.REDIRECT,
         N.REDIRECTED_FROM, N.MOBIKE_SUPPORTED, N.UNACCEPTABLE_ADDRESSES, N.UNEXPECTED_NAT_DETECTED, 40980, 40981]

notifies = st.builds(
    Notify,
    st.sampled_from(TYPES),
    st.one_of(st.binary(max_size=40), st.sampled_from([bytes(4), bytes(16), bytes([198, 51, 100, 2]),
                                                       bytes([2, 4, 198, 51, 100, 2]), bytes([1, 4, 192, 0, 2, 9])])),
    st.sampled_from([0, 0, 0, 1, 3]),
    st.sampled_from([b"", b"", bytes(4), bytes(8)]),
)

PEERS = multihomed_peers({"switch_min_interval": 0.0})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(notifies, max_size=6), st.booleans(), st.sampled_from(["192.0.2.1", "192.0.2.2", "203.0.113.7"]))
def test_notify_handlers_only_raise_protocol_errors(payloads, to_right, source_host):
    sender_endpoint, receiver_endpoint = (PEERS.left, PEERS.right) if to_right else (PEERS.right, PEERS.left)
    senders = [sa for sa in sender_endpoint.ike_sas]
    receivers = {sa.our_spi: sa for sa in receiver_endpoint.ike_sas}
    sender = next(sa for sa in senders if (sa.spi_r if sa.initiator else sa.spi_i) in receivers)
    receiver = receivers[sender.spi_r if sender.initiator else sender.spi_i]

    flags = HeaderFlag.INITIATOR if sender.initiator else 0
    message = Message(sender.spi_i, sender.spi_r, ExchangeType.INFORMATIONAL, flags, receiver.peer_message_id, payloads)
    data = bytes(4) + message.encode(sender.cipher)
    now = PEERS.network.now
    receiver_endpoint.receive_datagram(data, receiver.local, (source_host, 4500), now)

    sent = [data[4:] if local[1] == 4500 else data for data, local, _ in receiver_endpoint.datagrams_to_send()]
    responses = [data for data in sent if Message.decode(data).is_response]
    assert len(responses) == 1
    assert receiver.peer_message_id == message.message_id + 1

    # Keep the sender's view in step and let timers run, so that the next example starts clean.
    receiver_endpoint.handle_timer(now + 0.001)
    sender_endpoint.datagrams_to_send()
    receiver_endpoint.datagrams_to_send()
    sender_endpoint.events()
    receiver_endpoint.events()
