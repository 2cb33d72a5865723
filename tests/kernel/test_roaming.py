"""rmobiked keeps the tunnel through uplink failures of either gateway: same SAs, no cleartext.

Each test runs one scenario of tests/lab/scenarios.py in a fresh lab: LAN-to-LAN probe
traffic in both directions, a capture on every uplink, one failure. Outages are measured and
shown in the assertion messages, but not asserted: speed belongs to `make bench`.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.lab.scenarios import (
    SCENARIOS,
    Child,
    Outcome,
    RmobikePair,
    Scenario,
    run_scenario,
    scenario,
)
from tests.lab.topology import Topology
from tests.lab.traffic import Probe

pytestmark = pytest.mark.lab

WINDOW = 6.0  # seconds of traffic after the failure; the silent failure needs about 3


def _explain(outcome: Outcome) -> str:
    lines = [outcome.summary()]
    lines += [f"{at_ms:+9.1f} ms  {text}" for at_ms, text in outcome.timeline]
    return "\n".join(lines)


def _assert_kept(outcome: Outcome) -> None:
    explanation = _explain(outcome)
    assert outcome.recovered, explanation
    assert outcome.spis_unchanged, explanation
    assert outcome.cleartext_packets == 0, explanation


@pytest.mark.parametrize("case", SCENARIOS, ids=[case.name for case in SCENARIOS])
def test_scenario_keeps_tunnel(case: Scenario) -> None:
    outcome = run_scenario(case, RmobikePair(), window=WINDOW)

    _assert_kept(outcome)
    assert outcome.path_after != outcome.path_before, _explain(outcome)


def test_ipv6_uplinks_move() -> None:
    case = dataclasses.replace(scenario("responder_link_down"), ipv6=True)

    outcome = run_scenario(case, RmobikePair(ipv6=True), window=WINDOW)

    _assert_kept(outcome)
    explanation = _explain(outcome)
    assert ":" in outcome.path_before[1], explanation
    assert ":" in outcome.path_after[1], explanation
    assert outcome.path_after[1] != outcome.path_before[1], explanation


# Child "a" has four selector pairs (two local prefixes times two remote ones). It carries the
# traffic between the LAN hosts' .10 addresses, and child "b" the traffic between their .200
# addresses.
TWO_CHILDREN = (
    Child("a", ("10.{g}.0.0/25", "10.{g}.0.128/26")),
    Child("b", ("10.{g}.0.192/26",)),
)
SECOND_HOST = 200


def _probes_for_both_children(topology: Topology, case: Scenario,
                              duration: float) -> dict[str, Probe]:
    """Return probes in both directions through each child; give each LAN host a .200 address."""
    gateways = [topology.gateway(case.initiator), topology.gateway(case.responder)]
    for gateway in gateways:
        assert gateway.lan_host is not None and gateway.lan_network is not None
        address = gateway.lan_network.network_address + SECOND_HOST
        gateway.lan_host.run(["ip", "addr", "add", f"{address}/{gateway.lan_network.prefixlen}",
                              "dev", "eth0"])

    probes = {}
    for sender, receiver in (gateways, gateways[::-1]):
        for child, host in (("a", 10), ("b", SECOND_HOST)):
            assert sender.lan_host is not None and receiver.lan_host is not None
            source = sender.lan_network.network_address + host  # type: ignore[union-attr]
            target = receiver.lan_network.network_address + host  # type: ignore[union-attr]
            probe = Probe(sender.lan_host, receiver.lan_host, str(target), duration,
                          source=str(source))
            topology.add_cleanup(probe.close)
            probes[f"{child} {sender.name}->{receiver.name}"] = probe
    return probes


def test_two_children_move() -> None:
    case = scenario("responder_link_down")

    # Eight probe processes at the usual rate slowed the lab VM so much that `ip link set
    # down` took 4 s, so this test sends less per probe and waits longer.
    outcome = run_scenario(case, RmobikePair(children=TWO_CHILDREN), window=2 * WINDOW,
                           rate=50, probes=_probes_for_both_children)

    _assert_kept(outcome)
    explanation = _explain(outcome)
    assert len(outcome.arrivals) == 4, explanation
    assert len(outcome.spis_before["gw1"]) == 4, explanation  # two CHILD_SAs, in and out
    old_address, new_address = outcome.path_before[1], outcome.path_after[1]
    assert new_address != old_address, explanation
    initiator_states = outcome.states_after["gw1"]
    assert old_address not in initiator_states, initiator_states
    assert initiator_states.count(new_address) >= 4, initiator_states
