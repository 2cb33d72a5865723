"""MOBIKE path probing (RFC 4555): silent failures, candidate paths and the first path to answer.

"left" is the original initiator with 192.0.2.1 and 192.0.2.2, "right" the original responder
with 198.51.100.1 and 198.51.100.2. Times are on the network's fake clock.
"""

import pytest

from agent.ike import IkeSaFailed
from agent.ike.events import IkeSaAddressesChanged, PathSuspect

from .ike_network import LEFT, LEFT2, RIGHT, RIGHT2, multihomed_peers

CANDIDATES = [(LEFT[0], RIGHT[0]), (LEFT2, RIGHT[0]), (LEFT[0], RIGHT2), (LEFT2, RIGHT2)]


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


def test_silent_failure_moves_before_retransmissions_end():
    peers = multihomed_peers({"path_suspect_after": 1.0})
    network = peers.network
    peers.left.set_path_candidates(peers.left_id, CANDIDATES)
    peers.events()
    start = network.now

    # The current path drops everything without a sign; the driver's liveness check goes unanswered.
    network.block(LEFT[0], RIGHT[0])
    peers.left.check_liveness(peers.left_id, network.now)
    network.advance(0.9)
    assert not of_type(peers.left.events(), PathSuspect)

    # After 1 s: PathSuspect, and the same request goes out on every other candidate path.
    # HDR, SK {}  -->  on 192.0.2.2 ↔ 198.51.100.1, 192.0.2.1 ↔ 198.51.100.2, 192.0.2.2 ↔ 198.51.100.2
    # The first path to answer carries the update:
    # HDR, SK {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(COOKIE2)}  -->
    network.advance(0.2)
    left_events, right_events = peers.events()
    suspect, = of_type(left_events, PathSuspect)
    assert suspect.silent_for == pytest.approx(1.0)
    move, = of_type(left_events, IkeSaAddressesChanged)
    assert (move.local, move.remote) == ((LEFT2, 4500), (RIGHT[0], 4500))
    assert move.reason == "probe"
    assert of_type(right_events, IkeSaAddressesChanged)[-1].remote == (LEFT2, 4500)

    # Moved 1.2 s after the failure; the retransmission schedule gives its first retry at 4 s.
    assert network.now - start < peers.left_sa.config.retransmit_timeout
    assert not of_type(left_events, IkeSaFailed)


def test_silent_failure_without_candidates_only_reports():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    network.block(LEFT[0], RIGHT[0])
    peers.left.check_liveness(peers.left_id, network.now)
    network.advance(1.5)
    left_events, _ = peers.events()
    suspect, = of_type(left_events, PathSuspect)
    assert suspect.local == (LEFT[0], 4500)
    assert not of_type(left_events, IkeSaAddressesChanged)
    assert peers.left_sa.local == (LEFT[0], 4500)


def test_responder_reports_suspect_path():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    network.block(LEFT[0], RIGHT[0])
    peers.right.check_liveness(peers.right_id, network.now)
    network.advance(1.5)
    _, right_events = peers.events()
    assert of_type(right_events, PathSuspect)


def test_liveness_with_shorter_suspect_time():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    network.block(LEFT[0], RIGHT[0])

    peers.left.check_liveness(peers.left_id, network.now, suspect_after=0.4)
    network.advance(0.3)
    assert not of_type(peers.left.events(), PathSuspect)
    network.advance(0.2)

    suspect, = of_type(peers.left.events(), PathSuspect)
    assert suspect.silent_for == pytest.approx(0.4, abs=0.05)


def test_probe_paths_moves_to_first_answer():
    peers = multihomed_peers()
    network = peers.network
    network.block(LEFT[0], RIGHT[0])
    network.block(LEFT2, RIGHT[0])
    peers.events()

    # HDR, SK {}  -->  on the current path and on every candidate at once
    peers.left.probe_paths(peers.left_id, CANDIDATES, network.now)
    probes = network.take()
    assert {(p.source[0], p.destination[0]) for p in probes} == set(CANDIDATES)
    assert len({p.message_id for p in probes}) == 1
    network.deliver(probes)

    #   <--  HDR, SK {}  from the paths that work; the first one wins and the update follows
    network.run()
    left_events, right_events = peers.events()
    move, = of_type(left_events, IkeSaAddressesChanged)
    assert (move.local, move.remote) == ((LEFT[0], 4500), (RIGHT2, 4500))
    assert of_type(right_events, IkeSaAddressesChanged)[-1].local == (RIGHT2, 4500)


def test_probe_paths_stays_when_current_answers():
    peers = multihomed_peers()
    network = peers.network
    peers.events()
    peers.left.probe_paths(peers.left_id, CANDIDATES, network.now)
    network.run()
    left_events, _ = peers.events()
    assert not of_type(left_events, IkeSaAddressesChanged)
    assert peers.left_sa.local == (LEFT[0], 4500)
    assert peers.left_sa.mobility.probe_paths == []


def test_probe_paths_skips_mixed_families():
    peers = multihomed_peers()
    with pytest.raises(ValueError, match="no usable candidate"):
        peers.left.probe_paths(peers.left_id, [(LEFT2, "2001:db8::1")], peers.network.now)


def test_probing_continues_with_retransmissions():
    peers = multihomed_peers()
    network = peers.network
    for local, remote in CANDIDATES:
        network.block(local, remote)
    peers.left.probe_paths(peers.left_id, CANDIDATES, network.now)
    first = network.take()
    network.deliver(first)

    # No path answers; the retransmission goes out on all of them again.
    network.advance(peers.left_sa.config.retransmit_timeout)
    retransmitted = network.sent[-len(first):]
    assert {(p.source[0], p.destination[0]) for p in retransmitted} == set(CANDIDATES)

    # One path heals: the next retransmission finds it.
    network.unblock(LEFT2, RIGHT2)
    network.advance(10.0)
    left_events, _ = peers.events()
    assert of_type(left_events, IkeSaAddressesChanged)[-1].local == (LEFT2, 4500)

