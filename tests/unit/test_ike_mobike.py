"""MOBIKE (RFC 4555) between two multihomed peers: updates, NAT checks and address lists.

"left" is the original initiator with 192.0.2.1 and 192.0.2.2, "right" the original responder
with 198.51.100.1 and 198.51.100.2. Each step names the message in RFC 4555 notation.
"""

import pytest

from agent.ike import IkeSaFailed
from agent.ike.constants import ExchangeType, NotifyType
from agent.ike.events import IkeSaAddressesChanged, PathUpdateFailed, PeerAddressesChanged

from .ike_network import LEFT, LEFT2, RIGHT, RIGHT2, multihomed_peers, notify_types

N = NotifyType


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


def child_spis(sa):
    return {(child.spi_in, child.spi_out) for child in sa.children.values()}


# --- negotiation and the NAT-T port ----------------------------------------------------------------


def test_mobike_runs_on_natt_port():
    peers = multihomed_peers()
    auth = [p for p in peers.network.sent if p.exchange_type == ExchangeType.IKE_AUTH]

    # HDR, SK {IDi, AUTH, N(MOBIKE_SUPPORTED), N(ADDITIONAL_IP4_ADDRESS), SAi2, TSi, TSr}  -->  from port 4500
    assert auth[0].source == (LEFT[0], 4500)
    assert auth[0].destination == (RIGHT[0], 4500)
    assert N.ADDITIONAL_IP4_ADDRESS in notify_types(auth[0], peers.right_sa)
    #   <--  HDR, SK {IDr, AUTH, N(MOBIKE_SUPPORTED), N(ADDITIONAL_IP4_ADDRESS), SAr2, TSi, TSr}
    assert auth[1].source == (RIGHT[0], 4500)
    assert N.ADDITIONAL_IP4_ADDRESS in notify_types(auth[1], peers.left_sa)

    assert peers.left_sa.local == (LEFT[0], 4500)
    assert peers.right_sa.local == (RIGHT[0], 4500)
    assert peers.left_sa.mobility.peer_addresses == (RIGHT2,)
    assert peers.right_sa.mobility.peer_addresses == (LEFT2,)


def test_address_lists_in_ike_auth_reported():
    network_peers = multihomed_peers()
    left_events, right_events = network_peers.events()
    assert of_type(left_events, PeerAddressesChanged)[0].addresses == (RIGHT2,)
    assert of_type(right_events, PeerAddressesChanged)[0].addresses == (LEFT2,)


# --- UPDATE_SA_ADDRESSES --------------------------------------------------------------------------


def test_update_moves_both_sides():
    peers = multihomed_peers()
    network = peers.network
    spis = child_spis(peers.left_sa)
    peers.events()

    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "link down")

    # HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP),
    #          N(COOKIE2)}  -->  from the new address at once
    update, = network.take()
    assert (update.source, update.destination) == ((LEFT2, 4500), (RIGHT[0], 4500))
    assert notify_types(update, peers.right_sa) == [N.UPDATE_SA_ADDRESSES, N.NAT_DETECTION_SOURCE_IP,
                                                   N.NAT_DETECTION_DESTINATION_IP, N.COOKIE2]
    network.deliver([update])

    #   <--  HDR, SK {N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP), N(COOKIE2)}
    response, = network.take()
    assert response.destination == (LEFT2, 4500)
    assert notify_types(response, peers.left_sa) == [N.NAT_DETECTION_SOURCE_IP, N.NAT_DETECTION_DESTINATION_IP,
                                                    N.COOKIE2]
    _, right_events = peers.events()  # the responder moved on the request
    right_move, = of_type(right_events, IkeSaAddressesChanged)
    network.deliver([response])

    left_move, = of_type(peers.left.events(), IkeSaAddressesChanged)
    assert (left_move.local, left_move.remote) == ((LEFT2, 4500), (RIGHT[0], 4500))
    assert (left_move.old_local, left_move.old_remote) == ((LEFT[0], 4500), (RIGHT[0], 4500))
    assert not left_move.udp_encap
    assert left_move.reason == "link down"
    assert (right_move.local, right_move.remote) == ((RIGHT[0], 4500), (LEFT2, 4500))
    assert not right_move.udp_encap
    assert set(left_move.spis) == spis
    assert {(o, i) for i, o in right_move.spis} == spis
    assert child_spis(peers.left_sa) == spis  # moved, never rekeyed


def test_update_requires_original_initiator():
    peers = multihomed_peers()
    with pytest.raises(ValueError, match="cannot move"):
        peers.right.change_path(peers.right_id, RIGHT2, LEFT[0], peers.network.now)


def test_update_to_ipv6_path():
    peers = multihomed_peers(left_hosts=(LEFT[0], "2001:db8:1::1"), right_hosts=(RIGHT[0], "2001:db8:2::1"))
    peers.events()
    peers.left.change_path(peers.left_id, "2001:db8:1::1", "2001:db8:2::1", peers.network.now, "IPv4 uplink lost")
    peers.network.run()

    left_events, right_events = peers.events()
    left_move, = of_type(left_events, IkeSaAddressesChanged)
    right_move, = of_type(right_events, IkeSaAddressesChanged)
    assert left_move.local == ("2001:db8:1::1", 4500)
    assert left_move.old_local == (LEFT[0], 4500)
    assert right_move.remote == ("2001:db8:1::1", 4500)
    assert right_move.local == ("2001:db8:2::1", 4500)


def test_update_nat_appears_and_disappears():
    peers = multihomed_peers()
    network = peers.network
    network.nat[(LEFT2, 4500)] = ("203.0.113.5", 40000)
    peers.events()

    # HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(COOKIE2)}  -->  through a NAT
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "uplink change")
    network.run()
    left_events, right_events = peers.events()
    left_move, = of_type(left_events, IkeSaAddressesChanged)
    right_move, = of_type(right_events, IkeSaAddressesChanged)
    assert left_move.udp_encap
    assert right_move.udp_encap
    assert right_move.remote == ("203.0.113.5", 40000)
    assert peers.left_sa.nat_local
    assert peers.right_sa.nat_remote

    # HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(COOKIE2)}  -->  without a NAT again
    peers.left.change_path(peers.left_id, LEFT[0], RIGHT[0], network.now, "uplink back")
    network.run()
    left_events, right_events = peers.events()
    left_move, = of_type(left_events, IkeSaAddressesChanged)
    right_move, = of_type(right_events, IkeSaAddressesChanged)
    assert not left_move.udp_encap
    assert not right_move.udp_encap
    assert right_move.remote == (LEFT[0], 4500)


def test_cookie2_mismatch_closes_ike_sa():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "test")
    network.step()  # the update reaches the responder
    peers.left_sa.active.cookie2 = bytes(16)  # as if the response answered another request

    #   <--  HDR, SK {N(NAT_DETECTION_*), N(COOKIE2)}  with a COOKIE2 the initiator never sent
    network.step()
    left_events, _ = peers.events()
    failure, = of_type(left_events, IkeSaFailed)
    assert "COOKIE2" in failure.reason
    assert not of_type(left_events, IkeSaAddressesChanged)
    assert peers.left.ike_sas == []  # RFC 4555 §3.7: the IKE SA is closed


def test_cookie2_not_sent_without_return_routability():
    peers = multihomed_peers({"return_routability": False})
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], peers.network.now, "test")
    update, = peers.network.take()
    assert N.COOKIE2 not in notify_types(update, peers.right_sa)


def test_no_nats_allowed_rejects_nat():
    peers = multihomed_peers({"no_nats_allowed": True})
    network = peers.network
    network.nat[(LEFT2, 4500)] = ("203.0.113.5", 40000)
    peers.events()

    # HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(NO_NATS_ALLOWED), N(COOKIE2)}  -->  through a NAT
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "test")
    update, = network.take()
    assert N.NO_NATS_ALLOWED in notify_types(update, peers.right_sa)
    network.deliver([update])

    #   <--  HDR, SK {N(UNEXPECTED_NAT_DETECTED)}
    response, = network.take()
    assert notify_types(response, peers.left_sa) == [N.UNEXPECTED_NAT_DETECTED]
    network.deliver([response])

    left_events, right_events = peers.events()
    assert not of_type(right_events, IkeSaAddressesChanged)
    assert peers.right_sa.remote == (LEFT[0], 4500)
    failure, = of_type(left_events, PathUpdateFailed)
    assert failure.notify == N.UNEXPECTED_NAT_DETECTED
    assert (failure.local, failure.kept_local) == ((LEFT2, 4500), (LEFT[0], 4500))
    assert peers.left_sa.local == (LEFT[0], 4500)  # back on the path the peer still uses


def test_no_nats_allowed_without_nat_moves():
    peers = multihomed_peers({"no_nats_allowed": True})
    peers.events()
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], peers.network.now, "test")
    peers.network.run()
    left_events, right_events = peers.events()
    assert of_type(left_events, IkeSaAddressesChanged)
    assert of_type(right_events, IkeSaAddressesChanged)


def test_unacceptable_addresses_keep_path():
    peers = multihomed_peers(right_options={"remote_addrs": (LEFT[0],)})
    peers.events()

    # HDR, SK {N(UPDATE_SA_ADDRESSES), ...}  -->  from an address outside remote_addrs
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], peers.network.now, "test")
    peers.network.run()

    #   <--  HDR, SK {N(UNACCEPTABLE_ADDRESSES)}
    left_events, right_events = peers.events()
    failure, = of_type(left_events, PathUpdateFailed)
    assert failure.notify == N.UNACCEPTABLE_ADDRESSES
    assert not of_type(right_events, IkeSaAddressesChanged)
    assert peers.left_sa.local == (LEFT[0], 4500)


# --- address lists --------------------------------------------------------------------------------


def test_address_list_update():
    peers = multihomed_peers()
    network = peers.network
    peers.events()

    # HDR, SK {N(ADDITIONAL_IP4_ADDRESS), N(ADDITIONAL_IP6_ADDRESS), N(COOKIE2)}  -->
    peers.left.update_local_addresses(None, [LEFT[0], LEFT2, "2001:db8:1::1", "fe80::1"], network.now)
    request, = network.take()
    assert request.exchange_type == ExchangeType.INFORMATIONAL
    assert notify_types(request, peers.right_sa) == [N.ADDITIONAL_IP4_ADDRESS, N.ADDITIONAL_IP6_ADDRESS, N.COOKIE2]
    network.deliver([request])
    #   <--  HDR, SK {N(COOKIE2)}
    network.run()
    _, right_events = peers.events()
    assert of_type(right_events, PeerAddressesChanged)[-1].addresses == (LEFT2, "2001:db8:1::1")

    # HDR, SK {N(NO_ADDITIONAL_ADDRESSES), N(COOKIE2)}  -->
    peers.left.update_local_addresses(None, [LEFT[0]], network.now)
    request, = network.take()
    assert notify_types(request, peers.right_sa) == [N.NO_ADDITIONAL_ADDRESSES, N.COOKIE2]
    network.deliver([request])
    network.run()
    _, right_events = peers.events()
    assert of_type(right_events, PeerAddressesChanged)[-1].addresses == ()


def test_address_list_unchanged_sends_nothing():
    peers = multihomed_peers()
    peers.left.update_local_addresses(None, [LEFT2, LEFT[0]], peers.network.now)
    assert peers.network.take() == []


def test_address_list_per_ike_sa():
    peers = multihomed_peers()
    peers.events()
    peers.right.update_local_addresses(peers.right_id, [RIGHT[0], "198.51.100.3"], peers.network.now)
    peers.network.run()
    left_events, _ = peers.events()
    assert of_type(left_events, PeerAddressesChanged)[-1].addresses == ("198.51.100.3",)


# --- requests in flight and superseded updates ---------------------------------------------------


def test_outstanding_request_resent_on_new_path():
    peers = multihomed_peers()
    network = peers.network
    peers.events()

    # HDR, SK {}  -->  a liveness check on the old path, lost there
    peers.left.check_liveness(peers.left_id, network.now)
    lost, = network.take()
    assert lost.source == (LEFT[0], 4500)

    # The path changes while it is outstanding: the same request goes out again on the new path.
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "link down")
    resent, = network.take()
    assert resent.source == (LEFT2, 4500)
    assert resent.data[4:] == lost.data[4:]
    network.deliver([resent])

    #   <--  HDR, SK {}   then the update follows
    response, = network.take()
    network.deliver([response])
    update, = network.take()
    assert update.message_id == lost.message_id + 1
    assert N.UPDATE_SA_ADDRESSES in notify_types(update, peers.right_sa)
    network.deliver([update])
    network.run()
    left_events, right_events = peers.events()
    assert of_type(left_events, IkeSaAddressesChanged)[-1].local == (LEFT2, 4500)
    assert of_type(right_events, IkeSaAddressesChanged)[-1].remote == (LEFT2, 4500)


def test_responder_resends_its_request_after_update():
    peers = multihomed_peers()
    network = peers.network

    # The responder's liveness check goes to the initiator's old address and is lost.
    peers.right.check_liveness(peers.right_id, network.now)
    lost, = network.take()
    assert lost.destination == (LEFT[0], 4500)

    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "link down")
    network.deliver(network.take())  # the update reaches the responder

    # The responder answers the update and sends its outstanding request to the new address at once.
    packets = network.take()
    resent = [p for p in packets if not p.is_response]
    assert [p.destination for p in resent] == [(LEFT2, 4500)]
    assert resent[0].data[4:] == lost.data[4:]


def test_newer_path_supersedes_outstanding_update():
    peers = multihomed_peers()
    network = peers.network
    peers.events()

    # HDR, SK {N(UPDATE_SA_ADDRESSES), ...}  -->  from 192.0.2.2, lost
    peers.left.change_path(peers.left_id, LEFT2, RIGHT[0], network.now, "first")
    first, = network.take()

    # A newer move while it is outstanding: the same request goes out on the newest path.
    peers.left.change_path(peers.left_id, LEFT[0], RIGHT2, network.now, "second")
    copy, = network.take()
    assert (copy.source, copy.destination) == ((LEFT[0], 4500), (RIGHT2, 4500))
    assert copy.message_id == first.message_id
    network.deliver([copy])

    #   <--  response on that path; a new update follows for the newest path (RFC 4555 §3.6)
    network.step()
    second, = network.take()
    assert second.message_id == first.message_id + 1
    assert (second.source, second.destination) == ((LEFT[0], 4500), (RIGHT2, 4500))
    network.deliver([second])
    network.run()

    left_events, right_events = peers.events()
    final_left = of_type(left_events, IkeSaAddressesChanged)[-1]
    final_right = of_type(right_events, IkeSaAddressesChanged)[-1]
    assert (final_left.local, final_left.remote) == ((LEFT[0], 4500), (RIGHT2, 4500))
    assert (final_right.local, final_right.remote) == ((RIGHT2, 4500), (LEFT[0], 4500))
    assert not final_left.udp_encap
    assert not final_right.udp_encap  # the second update's NAT detection payloads fit the path
    assert final_left.reason == "second"


def test_rekeyed_ike_sa_keeps_mobike():
    peers = multihomed_peers()
    network = peers.network
    peers.left.rekey_ike(peers.left_id, network.now)
    network.run()
    new_id = [sa.unique_id for sa in peers.left.ike_sas][0]
    peers.events()

    peers.left.change_path(new_id, LEFT2, RIGHT[0], network.now, "after rekey")
    network.run()
    left_events, right_events = peers.events()
    move, = of_type(left_events, IkeSaAddressesChanged)
    assert move.old_local == (LEFT[0], 4500)
    assert of_type(right_events, IkeSaAddressesChanged)
