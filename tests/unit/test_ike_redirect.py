"""IKEv2 redirect (RFC 5685) during an established IKE SA: the gateway and the client halves.

"left" is the client (original initiator), "right" the gateway with 198.51.100.1 and
198.51.100.2. Each step names the message in RFC 5685 notation.
"""

import pytest

from agent.ike import IkeSaEstablished
from agent.ike.constants import ExchangeType, NotifyType
from agent.ike.errors import InvalidSyntax
from agent.ike.events import IkeSaRedirected
from agent.ike.redirect import MAX_REDIRECTS, GatewayIdentityType, RedirectInitiator, decode_gateway, encode_gateway
from agent.ike.message import Message

from .ike_network import RIGHT, RIGHT2, multihomed_peers, notify_types

N = NotifyType


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


@pytest.mark.parametrize("gateway, kind", [("198.51.100.2", GatewayIdentityType.IPV4),
                                           ("2001:db8::2", GatewayIdentityType.IPV6),
                                           ("gw2.example", GatewayIdentityType.FQDN)])
def test_gateway_identity_round_trip(gateway, kind):
    assert decode_gateway(encode_gateway(gateway)) == (kind, gateway)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x04\x01\x02\x03", b"\x01\x03\x01\x02\x03", b"\x02\x04\x01\x02\x03\x04",
                                  b"\x03\x00", b"\x09\x01\x00", b"\x03\x02\xff\xfe"],
                         ids=["empty", "no-length", "short", "ipv4-3", "ipv6-4", "empty-fqdn", "type", "non-ascii"])
def test_gateway_identity_malformed(data):
    with pytest.raises(InvalidSyntax):
        decode_gateway(data)


def test_redirect_supported_in_ike_sa_init():
    peers = multihomed_peers()
    init_request = peers.network.sent[0]
    notifies = [n.notify_type for n in Message.decode(init_request.ike).notifies()]
    assert N.REDIRECT_SUPPORTED in notifies
    assert peers.right_sa.mobility.peer_supports_redirect


def test_redirect_not_offered_when_disabled():
    peers = multihomed_peers({"accept_redirect": False})
    notifies = [n.notify_type for n in Message.decode(peers.network.sent[0].ike).notifies()]
    assert N.REDIRECT_SUPPORTED not in notifies
    assert not peers.right_sa.mobility.peer_supports_redirect


def test_redirect_followed():
    peers = multihomed_peers()
    network = peers.network
    peers.events()

    # Gateway: HDR, SK {N(REDIRECT, 198.51.100.2)}  -->
    peers.right_sa.start(RedirectInitiator(peers.right_sa, RIGHT2), network.now)
    request, = network.take()
    assert notify_types(request, peers.left_sa) == [N.REDIRECT]
    network.deliver([request])

    # Client:  <--  HDR, SK {}   then HDR, SAi1, KEi, Ni, N(REDIRECT_SUPPORTED), N(REDIRECTED_FROM, O) to the new gateway
    response, init = network.take()
    assert response.is_response
    assert notify_types(response, peers.right_sa) == []
    assert init.exchange_type == ExchangeType.IKE_SA_INIT
    assert init.destination == (RIGHT2, 500)
    redirected_from = Message.decode(init.ike).notify(N.REDIRECTED_FROM)
    assert decode_gateway(redirected_from.data) == (GatewayIdentityType.IPV4, RIGHT[0])
    network.deliver([response, init])
    network.run()

    left_events, _ = peers.events()
    event, = of_type(left_events, IkeSaRedirected)
    assert event.ike_sa == peers.left_id
    assert of_type(left_events, IkeSaEstablished)[0].ike_sa == event.new_ike_sa
    assert [sa.unique_id for sa in peers.left.ike_sas] == [event.new_ike_sa]  # the old one was deleted
    assert [sa.local[0] for sa in peers.right.ike_sas] == [RIGHT2]


def test_redirect_ignored_without_support():
    peers = multihomed_peers({"accept_redirect": False})
    peers.right.ike_sa(peers.right_id).mobility.peer_supports_redirect = True  # a gateway that sends it anyway
    peers.events()
    peers.right_sa.start(RedirectInitiator(peers.right_sa, RIGHT2), peers.network.now)
    peers.network.run()
    left_events, _ = peers.events()
    assert not of_type(left_events, IkeSaRedirected)
    assert [sa.unique_id for sa in peers.left.ike_sas] == [peers.left_id]


def test_redirect_never_sent_without_support():
    peers = multihomed_peers({"accept_redirect": False})
    peers.right_sa.start(RedirectInitiator(peers.right_sa, RIGHT2), peers.network.now)
    assert peers.network.take() == []


def test_redirect_to_fqdn_left_to_driver():
    peers = multihomed_peers()
    peers.events()
    peers.right_sa.start(RedirectInitiator(peers.right_sa, "gw2.example"), peers.network.now)
    peers.network.run()
    left_events, _ = peers.events()
    event, = of_type(left_events, IkeSaRedirected)
    assert event.gateway == "gw2.example"
    assert event.new_ike_sa is None
    assert [sa.unique_id for sa in peers.left.ike_sas] == [peers.left_id]


def test_redirect_loop_limited():
    peers = multihomed_peers()
    peers.left_sa.mobility.redirect_count = MAX_REDIRECTS
    peers.events()
    peers.right_sa.start(RedirectInitiator(peers.right_sa, RIGHT2), peers.network.now)
    peers.network.run()
    left_events, _ = peers.events()
    assert not of_type(left_events, IkeSaRedirected)
    assert [sa.unique_id for sa in peers.left.ike_sas] == [peers.left_id]  # the client stays
