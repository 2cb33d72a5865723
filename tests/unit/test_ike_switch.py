"""SWITCH_TO_IP_ADDRESS: the original responder moves the IKE SA, and its fallbacks.

"left" is the original initiator I with 192.0.2.1 and 192.0.2.2, "right" the original responder
R with 198.51.100.1 (O) and 198.51.100.2 (N). Each step names the message in RFC 4555
notation; N(SWITCH_TO_IP_ADDRESS, N) is the private-use notify 40980.
"""

import logging

import pytest

from agent.ike import IkeSaDeleted, IkeSaEstablished
from agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from agent.ike.events import (
    IkeSaAddressesChanged,
    IkeSaRedirected,
    PeerAddressesChanged,
    PrepareInbound,
    SwitchAccepted,
    SwitchFailed,
)
from agent.ike.exchange import Initiator
from agent.ike.payloads import Notify

from .ike_network import LEFT, LEFT2, RIGHT, RIGHT2, multihomed_peers, notify_types

N = NotifyType
SWITCH = 40980
RIGHT3 = "198.51.100.3"


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


def child_spis(sa):
    return {(child.spi_in, child.spi_out) for child in sa.children.values()}


class RawInformational(Initiator):
    """An INFORMATIONAL request with given payloads; keeps the response or the error."""

    exchange_type = ExchangeType.INFORMATIONAL
    __slots__ = ("payloads", "result")

    def __init__(self, sa, payloads):
        super().__init__(sa)
        self.payloads = payloads
        self.result = None

    def build_request(self, now):
        return self.payloads

    def process_response(self, message, now):
        self.result = message
        return True

    def failed(self, error, now):
        self.result = error


def send_raw(peers, payloads):
    """Send a crafted INFORMATIONAL request from right (O) to left; return the exchange."""
    exchange = RawInformational(peers.right_sa, payloads)
    peers.right_sa.start(exchange, peers.network.now)
    return exchange


# --- happy path ---------------------------------------------------------------------------------


def test_switch_moves_both_sides():
    peers = multihomed_peers()
    network = peers.network
    spis = child_spis(peers.left_sa)
    peers.events()

    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "link down")
    prepare, = of_type(peers.right.events(), PrepareInbound)  # before anything leaves
    assert prepare.local == (RIGHT2, 4500)
    assert {(o, i) for i, o in prepare.spis} == spis

    # R: HDR, SK {N(SWITCH_TO_IP_ADDRESS, N)}  -->  from O to I's current address, and a copy
    # from N, which still works when O has been removed (here it is lost)
    request, copy = network.take()
    assert (request.source, request.destination) == ((RIGHT[0], 4500), (LEFT[0], 4500))
    assert (copy.source, copy.data) == ((RIGHT2, 4500), request.data)
    notify, = [n for n in notify_types(request, peers.left_sa)]
    assert notify == SWITCH
    network.deliver([request])

    # I:   <--  HDR, SK {}  to N, not to O
    #      <--  HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(COOKIE2)}  to N
    response, update = network.take()
    assert response.is_response
    assert (response.source, response.destination) == ((LEFT[0], 4500), (RIGHT2, 4500))
    assert not update.is_response
    assert update.destination == (RIGHT2, 4500)
    assert N.UPDATE_SA_ADDRESSES in notify_types(update, peers.right_sa)
    network.deliver([response, update])

    # R: HDR, SK {N(NAT_DETECTION_*), N(COOKIE2)}  -->  from N
    update_response, = network.take()
    assert update_response.source == (RIGHT2, 4500)
    network.deliver([update_response])

    left_events, right_events = peers.events()
    left_move, = of_type(left_events, IkeSaAddressesChanged)
    right_move, = of_type(right_events, IkeSaAddressesChanged)
    assert left_move.remote == (RIGHT2, 4500)
    assert right_move.local == (RIGHT2, 4500)
    assert right_move.old_local == (RIGHT[0], 4500)
    assert set(left_move.spis) == spis
    assert child_spis(peers.left_sa) == spis
    assert not of_type(right_events, SwitchFailed)
    assert peers.right_sa.mobility.switch is None


def test_outstanding_request_copied_from_n():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    # O has gone dark: an address list request from O is outstanding when the switch starts.
    network.block(RIGHT[0], LEFT[0])
    peers.right.update_local_addresses(peers.right_id, [RIGHT[0], RIGHT2, RIGHT3], network.now)
    network.take()

    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "link down")

    # R: the outstanding request again, from N. I responds to N, then R sends the switch from O.
    copy, = network.take()
    assert copy.source == (RIGHT2, 4500)
    network.unblock(RIGHT[0], LEFT[0])
    network.deliver([copy])
    network.run()
    left_events, right_events = peers.events()
    assert of_type(right_events, IkeSaAddressesChanged)[-1].local == (RIGHT2, 4500)
    assert of_type(left_events, IkeSaAddressesChanged)[-1].remote == (RIGHT2, 4500)


def test_switch_when_o_is_gone():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    network.block(RIGHT[0], LEFT[0])  # O was removed from R: nothing leaves or reaches it

    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "address removed")
    network.run()

    left_events, right_events = peers.events()
    accepted, = of_type(left_events, SwitchAccepted)
    assert accepted.remote == (RIGHT2, 4500)
    assert of_type(left_events, IkeSaAddressesChanged)[-1].remote == (RIGHT2, 4500)
    assert of_type(right_events, IkeSaAddressesChanged)[-1].local == (RIGHT2, 4500)


def test_switch_logs_decision(caplog):
    peers = multihomed_peers()
    with caplog.at_level(logging.INFO, logger="agent.ike"):
        peers.right.switch_to(peers.right_id, RIGHT2, peers.network.now, "link down")
        peers.network.run()
    assert f"switch {RIGHT[0]} → {RIGHT2}, reason: link down" in caplog.text
    assert f"switch {RIGHT[0]} → {RIGHT2}, reason: peer request" in caplog.text


def test_switch_on_initiator_moves_itself():
    peers = multihomed_peers()
    peers.events()
    peers.left.switch_to(peers.left_id, LEFT2, peers.network.now, "operator")
    peers.network.run()
    left_events, right_events = peers.events()
    assert of_type(left_events, IkeSaAddressesChanged)[-1].local == (LEFT2, 4500)
    assert of_type(right_events, IkeSaAddressesChanged)[-1].remote == (LEFT2, 4500)


def test_switch_with_initiator_behind_nat():
    from .ike_network import Network

    network = Network(nat_filtering=True)
    outer = "203.0.113.5"
    network.nat[(LEFT[0], 500)] = (outer, 40500)
    network.nat[(LEFT[0], 4500)] = (outer, 44500)
    peers = multihomed_peers(network=network)
    assert peers.right_sa.remote == (outer, 44500)
    assert peers.right_sa.nat_remote
    peers.events()

    # Without a mapping towards N, the NAT drops what N sends; the response from I to N creates it.
    assert (((outer, 44500), RIGHT2)) not in network.nat_mappings
    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "link down")
    network.run()

    assert ((outer, 44500), RIGHT2) in network.nat_mappings
    # Only the copy of the switch request from N is dropped, before the mapping exists.
    dropped, = network.dropped
    assert dropped.source == (RIGHT2, 4500)
    left_events, right_events = peers.events()
    right_move, = of_type(right_events, IkeSaAddressesChanged)
    assert right_move.local == (RIGHT2, 4500)
    assert right_move.remote == (outer, 44500)
    assert right_move.udp_encap
    assert of_type(left_events, IkeSaAddressesChanged)[-1].udp_encap


# --- rejections by the initiator -------------------------------------------------------------


def test_switch_not_negotiated_ignored():
    peers = multihomed_peers({"accept_switch": False})
    assert not peers.right_sa.peer_accepts_switch
    peers.events()

    # R: HDR, SK {N(SWITCH_TO_IP_ADDRESS, N)}  -->  although I never set the flag
    exchange = send_raw(peers, [Notify(SWITCH, bytes([198, 51, 100, 2]))])
    request, = peers.network.take()
    peers.network.deliver([request])

    # I:   <--  HDR, SK {}  to O, and nothing moves
    response, = peers.network.take()
    assert response.destination == (RIGHT[0], 4500)
    peers.network.deliver([response])
    assert exchange.result.notifies() == []
    left_events, _ = peers.events()
    assert not of_type(left_events, IkeSaAddressesChanged)
    assert peers.left_sa.remote == (RIGHT[0], 4500)


@pytest.mark.parametrize("notify", [
    Notify(SWITCH, bytes(3)),
    Notify(SWITCH, bytes(5)),
    Notify(SWITCH, bytes([198, 51, 100, 2]), protocol_id=ProtocolId.ESP),
    Notify(SWITCH, bytes([198, 51, 100, 2]), spi=bytes(4)),
], ids=["short", "long", "protocol", "spi"])
def test_switch_malformed_rejected(notify):
    peers = multihomed_peers()
    exchange = send_raw(peers, [notify])

    # I:   <--  HDR, SK {N(INVALID_SYNTAX)}  to O
    peers.network.step()
    response, = peers.network.take()
    assert response.destination == (RIGHT[0], 4500)
    peers.network.deliver([response])
    assert [n.notify_type for n in exchange.result.notifies()] == [N.INVALID_SYNTAX]
    assert peers.left_sa.remote == (RIGHT[0], 4500)


@pytest.mark.parametrize("address", ["127.0.0.1", "224.0.0.1", "169.254.1.1", "255.255.255.255", "0.0.0.0",
                                     LEFT2, "2001:db8::1", "203.0.113.9"],
                         ids=["loopback", "multicast", "link-local", "broadcast", "unspecified", "own", "family",
                              "policy"])
def test_switch_unacceptable_address(address):
    import ipaddress

    peers = multihomed_peers({"switch_allowed": ("198.51.100.0/24",)})
    exchange = send_raw(peers, [Notify(SWITCH, ipaddress.ip_address(address).packed)])

    # I:   <--  HDR, SK {N(UNACCEPTABLE_ADDRESSES)}  to O
    peers.network.step()
    response, = peers.network.take()
    assert response.destination == (RIGHT[0], 4500)
    peers.network.deliver([response])
    assert [n.notify_type for n in exchange.result.notifies()] == [N.UNACCEPTABLE_ADDRESSES]
    assert peers.left_sa.remote == (RIGHT[0], 4500)


def test_switch_policy_callable():
    peers = multihomed_peers({"switch_allowed": lambda host: host != RIGHT2})
    peers.events()
    peers.right.switch_to(peers.right_id, RIGHT2, peers.network.now, "test")
    peers.network.run()
    _, right_events = peers.events()
    failure, = of_type(right_events, SwitchFailed)
    assert failure.notify == N.UNACCEPTABLE_ADDRESSES


def test_switch_rate_limited(caplog):
    peers = multihomed_peers({"switch_min_interval": 10.0})
    network = peers.network
    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "first")
    network.run()
    peers.events()

    # A second request 1 s later is answered (to O, which is now N) but not followed.
    network.advance(1.0)
    with caplog.at_level(logging.WARNING, logger="agent.ike"):
        peers.right.switch_to(peers.right_id, RIGHT[0], network.now, "second")
        network.run()
    assert "answered, not followed" in caplog.text
    left_events, right_events = peers.events()
    assert not of_type(left_events, IkeSaAddressesChanged)
    failure, = of_type(right_events, SwitchFailed)
    assert failure.local == (RIGHT[0], 4500)
    assert peers.left_sa.remote == (RIGHT2, 4500)
    assert peers.left.stats["switches_rate_limited"] == 1

    # After the interval the peer follows again.
    network.advance(10.0)
    peers.right.switch_to(peers.right_id, RIGHT[0], network.now, "third")
    network.run()
    assert peers.left_sa.remote == (RIGHT[0], 4500)


def test_second_switch_supersedes_first():
    peers = multihomed_peers({"switch_min_interval": 0.0}, right_hosts=(RIGHT[0], RIGHT2, RIGHT3))
    network = peers.network
    peers.events()

    # R: HDR, SK {N(SWITCH_TO_IP_ADDRESS, N1)}  -->   I answers to N1 and sends its update to N1, lost
    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "first")
    request, _copy_from_n = network.take()
    network.deliver([request])
    response, lost_update = network.take()
    network.deliver([response])
    assert lost_update.destination == (RIGHT2, 4500)

    # R asks again, for N2: the outstanding update goes to N2 at once, and a new one confirms N2.
    peers.right.switch_to(peers.right_id, RIGHT3, network.now, "second")
    _, right_events = peers.events()
    superseded, = of_type(right_events, SwitchFailed)
    assert superseded.local == (RIGHT2, 4500)
    assert of_type(right_events, PrepareInbound)[-1].local == (RIGHT3, 4500)
    network.run()

    left_events, right_events = peers.events()
    assert of_type(left_events, IkeSaAddressesChanged)[-1].remote == (RIGHT3, 4500)
    final = of_type(right_events, IkeSaAddressesChanged)[-1]
    assert final.local == (RIGHT3, 4500)
    assert not final.udp_encap
    assert peers.right_sa.mobility.switch is None


def test_initiator_path_failure_during_switch_prefers_new_address():
    peers = multihomed_peers({"switch_min_interval": 0.0})
    network = peers.network
    peers.left.set_path_candidates(peers.left_id, [(LEFT[0], RIGHT[0]), (LEFT2, RIGHT[0])])
    peers.events()

    # I's own uplink 192.0.2.1 dies right after it accepted the switch to N.
    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "link down")
    network.step()
    network.block(LEFT[0], RIGHT2)
    network.block(LEFT[0], RIGHT[0])
    network.advance(3.0)

    left_events, right_events = peers.events()
    move = of_type(left_events, IkeSaAddressesChanged)[-1]
    assert (move.local, move.remote) == ((LEFT2, 4500), (RIGHT2, 4500))  # to N, not back to O
    assert of_type(right_events, IkeSaAddressesChanged)[-1].local == (RIGHT2, 4500)

    # R's retransmitted switch request gets the cached response on the new path, so R keeps the IKE SA.
    network.advance(60.0)
    assert peers.right_sa.active is None
    assert not of_type(peers.right.events(), SwitchFailed)


# --- fallbacks towards a peer without the flag -----------------------------------------------


def test_fallback_address_list_then_initiator_moves():
    peers = multihomed_peers({"accept_switch": False})
    network = peers.network
    peers.events()

    # R: HDR, SK {N(ADDITIONAL_IP4_ADDRESS, N), N(COOKIE2)}  -->  never SWITCH_TO_IP_ADDRESS
    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "link down")
    request, = network.take()
    assert notify_types(request, peers.left_sa) == [N.ADDITIONAL_IP4_ADDRESS, N.COOKIE2]
    network.deliver([request])
    network.run(0.5)
    left_events, _ = peers.events()
    assert of_type(left_events, PeerAddressesChanged)[-1].addresses == (RIGHT2,)

    # I's driver moves to the announced address before the fallback delay ends.
    peers.left.change_path(peers.left_id, LEFT[0], RIGHT2, network.now, "peer address list")
    network.run(5.0)
    left_events, right_events = peers.events()
    assert of_type(right_events, IkeSaAddressesChanged)[-1].local == (RIGHT2, 4500)
    assert not of_type(right_events, SwitchFailed)
    assert not of_type(left_events, IkeSaRedirected)


def test_fallback_redirect_when_peer_stays():
    peers = multihomed_peers({"accept_switch": False})
    network = peers.network
    old_left, old_right = peers.left_id, peers.right_id
    peers.events()

    peers.right.switch_to(peers.right_id, RIGHT2, network.now, "link down")
    network.run(1.9)
    assert not [p for p in network.sent if not p.is_response and p.source == (RIGHT[0], 4500)
                and SWITCH in notify_types(p, peers.left_sa)]

    # After switch_fallback_delay: R: HDR, SK {N(REDIRECT, N)}  -->     I:  <--  HDR, SK {}
    # I sets up a new IKE SA with N, with N(REDIRECTED_FROM, O), and deletes the old one.
    network.run(5.0)
    left_events, right_events = peers.events()
    redirected, = of_type(left_events, IkeSaRedirected)
    assert redirected.gateway == RIGHT2
    assert redirected.new_ike_sa is not None
    new_sa = peers.left.ike_sa(redirected.new_ike_sa)
    assert new_sa.remote[0] == RIGHT2
    assert of_type(left_events, IkeSaEstablished)[-1].ike_sa == redirected.new_ike_sa
    assert [sa.unique_id for sa in peers.left.ike_sas] == [redirected.new_ike_sa]
    assert of_type(right_events, IkeSaDeleted)[0].ike_sa == old_right
    assert old_left not in [sa.unique_id for sa in peers.left.ike_sas]
    assert [sa.local[0] for sa in peers.right.ike_sas] == [RIGHT2]


def test_fallback_fails_without_redirect_support():
    peers = multihomed_peers({"accept_switch": False, "accept_redirect": False})
    peers.events()
    peers.right.switch_to(peers.right_id, RIGHT2, peers.network.now, "link down")
    peers.network.run(5.0)
    _, right_events = peers.events()
    failure, = of_type(right_events, SwitchFailed)
    assert failure.local == (RIGHT2, 4500)
    assert len(peers.left.ike_sas) == 1


def test_switch_without_mobike_redirects():
    peers = multihomed_peers({"mobike": False})
    peers.events()
    peers.right.switch_to(peers.right_id, RIGHT2, peers.network.now, "link down")
    peers.network.run(5.0)
    left_events, _ = peers.events()
    redirected, = of_type(left_events, IkeSaRedirected)
    assert redirected.gateway == RIGHT2
    assert [sa.remote[0] for sa in peers.left.ike_sas] == [RIGHT2]


def test_switch_rejects_other_family():
    peers = multihomed_peers()
    with pytest.raises(ValueError, match="address family"):
        peers.right.switch_to(peers.right_id, "2001:db8::2", peers.network.now, "test")
