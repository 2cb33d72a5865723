"""The manager's roaming (agent/roaming.py): moves on network events and after silent failures."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from agent import roaming
from agent.netwatch.events import AddressRemoved, Resynced, RouteChanged
from agent.netwatch.records import Address, Route
from agent.paths import FixedPaths
from tests.unit.test_manager import A, A2, B, B2, Pair, kernel_addresses, make_pair, only

NETWORK_CHANGED = [Resynced(initial=False)]


def roaming_pair(tmp_path: Path, extra: str = "switch = true") -> Pair:
    pair = make_pair(tmp_path, a_extra=extra, b_extra=extra, second_addresses=True)
    pair.a.paths = FixedPaths(ranked={"site": [(A, B), (A2, B), (A, B2), (A2, B2)]}, local={A, A2})
    pair.b.paths = FixedPaths(ranked={"site": [(B, A), (B2, A)]}, local={B, B2})
    pair.bring_up()
    return pair


def test_initiator_moves_when_its_address_goes(tmp_path):
    pair = roaming_pair(tmp_path)
    child = only(only(pair.a.list_sas()).children)
    pair.a.paths = FixedPaths(ranked={"site": [(A2, B), (A2, B2)]}, local={A2})

    pair.a.on_net_events(NETWORK_CHANGED)

    # The old address is gone, so the kernel moves before the update's response arrives.
    assert kernel_addresses(pair.fake_a) == {(B, A2, child.spi_in), (A2, B, child.spi_out)}
    pair.network.deliver()
    assert only(pair.a.list_sas()).local_address == A2
    assert only(pair.b.list_sas()).remote_address == A2
    assert kernel_addresses(pair.fake_a) == {(B, A2, child.spi_in), (A2, B, child.spi_out)}
    assert kernel_addresses(pair.fake_b) == {(A2, B, child.spi_out), (B, A2, child.spi_in)}


def test_initiator_moves_back_to_preferred(tmp_path):
    pair = roaming_pair(tmp_path)
    pair.a.paths = FixedPaths(ranked={"site": [(A2, B)]}, local={A2})
    pair.a.on_net_events(NETWORK_CHANGED)
    pair.network.deliver()
    pair.a.paths = FixedPaths(ranked={"site": [(A, B), (A2, B)]}, local={A, A2})

    pair.a.on_net_events(NETWORK_CHANGED)
    # A better path, but the current one works: the kernel waits for the peer's response.
    assert {str(sa.src) for sa in pair.fake_a.dump_sas()} == {A2, B}
    pair.network.deliver()

    assert only(pair.a.list_sas()).local_address == A
    assert only(pair.b.list_sas()).remote_address == A


def test_equal_path_does_not_move(tmp_path):
    pair = roaming_pair(tmp_path)
    pair.a.on_net_events(NETWORK_CHANGED)  # the first list of local addresses is announced
    pair.network.deliver()
    sent = len(pair.network.sent)
    pair.a.paths = FixedPaths(ranked={"site": [(A, B), (A2, B)]}, local={A, A2})

    pair.a.on_net_events(NETWORK_CHANGED)
    pair.network.deliver()

    assert only(pair.a.list_sas()).local_address == A
    assert len(pair.network.sent) == sent


def test_responder_switches_when_its_address_goes(tmp_path):
    pair = roaming_pair(tmp_path)
    child = only(only(pair.b.list_sas()).children)
    pair.b.paths = FixedPaths(ranked={"site": [(B2, A)]}, local={B2})

    pair.b.on_net_events(NETWORK_CHANGED)

    # The inbound copy at B2 exists before the switch request is delivered.
    assert (A, B2, child.spi_in) in kernel_addresses(pair.fake_b)
    pair.network.deliver()
    assert only(pair.b.list_sas()).local_address == B2
    assert only(pair.a.list_sas()).remote_address == B2
    assert kernel_addresses(pair.fake_b) == {(A, B2, child.spi_in), (B2, A, child.spi_out)}
    assert kernel_addresses(pair.fake_a) == {(B2, A, child.spi_out), (A, B2, child.spi_in)}


def test_initiator_sends_to_n_on_accepting(tmp_path):
    pair = roaming_pair(tmp_path)
    child = only(only(pair.a.list_sas()).children)
    pair.b.paths = FixedPaths(ranked={"site": [(B2, A)]}, local={B2})
    pair.b.on_net_events(NETWORK_CHANGED)

    # Deliver only the switch request (and its copy from B2) to A.
    requests, pair.network.in_flight = pair.network.in_flight, []
    for datagram in requests:
        pair.network._deliver_one(datagram)

    # A has sent its response to B2 and its update. Its ESP already goes to B2.
    assert (A, B2, child.spi_out) in kernel_addresses(pair.fake_a)
    pair.network.deliver()
    assert only(pair.a.list_sas()).remote_address == B2


def test_responder_falls_back_to_redirect(tmp_path):
    pair = make_pair(tmp_path, a_extra="switch = false", b_extra="switch = true", second_addresses=True)
    pair.b.paths = FixedPaths(ranked={"site": [(B, A), (B2, A)]}, local={B, B2})
    pair.bring_up()
    old = only(pair.b.list_sas())
    pair.b.paths = FixedPaths(ranked={"site": [(B2, A)]}, local={B2})

    pair.b.on_net_events(NETWORK_CHANGED)
    pair.network.deliver()
    pair.network.advance(10)

    # The peer did not offer the switch: B2 is announced (RFC 4555 §3.6), and when the peer
    # stays, it is redirected there (RFC 5685) and sets up a new IKE SA with B2.
    new = only(pair.b.list_sas())
    assert (new.local_address, new.state) == (B2, "ESTABLISHED")
    assert new.spi_i != old.spi_i
    assert {(str(sa.src), str(sa.dst)) for sa in pair.fake_b.dump_sas()} == {(A, B2), (B2, A)}


def test_no_usable_path_waits(tmp_path):
    pair = roaming_pair(tmp_path)
    pair.a.paths = FixedPaths(ranked={"site": []}, local=set())

    pair.a.on_net_events(NETWORK_CHANGED)
    pair.network.deliver()

    assert only(pair.a.list_sas()).local_address == A


def test_unknown_network_state_changes_nothing(tmp_path):
    pair = roaming_pair(tmp_path)
    pair.a.paths = FixedPaths()

    pair.a.on_net_events(NETWORK_CHANGED)
    pair.network.deliver()

    assert only(pair.a.list_sas()).local_address == A


def test_silent_failure_probes_and_moves(tmp_path):
    pair = roaming_pair(tmp_path)
    child = only(only(pair.a.list_sas()).children)
    out_sa = next(sa for sa in pair.fake_a.dump_sas() if sa.spi == child.spi_out and str(sa.src) == A)
    original = pair.network._deliver_one

    def black_hole(datagram):
        if {datagram.source[0], datagram.destination[0]} != {A, B}:
            original(datagram)

    pair.network._deliver_one = black_hole
    for _ in range(40):  # outbound ESP keeps flowing, nothing comes back
        pair.fake_a.count_traffic(out_sa.id, packets=10)
        pair.network.advance(0.25)

    sa = only(pair.a.list_sas())
    assert (sa.local_address, sa.remote_address) != (A, B)
    assert only(pair.b.list_sas()).remote_address == sa.local_address
    assert {(str(s.src), str(s.dst)) for s in pair.fake_b.dump_sas()} == {
        (sa.local_address, sa.remote_address), (sa.remote_address, sa.local_address)}


def test_no_check_without_outbound_esp(tmp_path):
    pair = roaming_pair(tmp_path)
    sent = len(pair.network.sent)

    pair.network.advance(5)

    assert len(pair.network.sent) == sent


def test_responder_answers_before_moving(tmp_path):
    seen: list[set] = []
    pair = make_pair(tmp_path, a_extra="switch = true", b_extra="switch = true", second_addresses=True,
                     observe_b=lambda data, local, remote: seen.append(kernel_addresses(pair.fake_b)))
    pair.a.paths = FixedPaths(ranked={"site": [(A2, B)]}, local={A2})
    pair.bring_up()
    child = only(only(pair.b.list_sas()).children)
    seen.clear()

    pair.a.on_net_events(NETWORK_CHANGED)
    pair.network.deliver()

    # The response to the update leaves while B's SAs still name A; B moves right after.
    assert seen[0] == {(A, B, child.spi_in), (B, A, child.spi_out)}
    assert kernel_addresses(pair.fake_b) == {(A2, B, child.spi_in), (B, A2, child.spi_out)}


@pytest.mark.parametrize(("event", "concerns"), [
    (AddressRemoved(Address(2, ipaddress.ip_address("fe80::1"), 64, 0, 253)), False),
    (AddressRemoved(Address(2, ipaddress.ip_address("192.0.2.10"), 24, 0, 0)), True),
    (RouteChanged(Route(10, 254, ipaddress.ip_network("fe80::/64"), 0, 256, 2, 1, 0), removed=True), False),
    (RouteChanged(Route(10, 254, ipaddress.ip_network("::/0"), 0, 100, 3, 1, 0), removed=True), True),
])
def test_link_local_changes_ignored(event, concerns):
    assert roaming.concerns_paths(event) is concerns
