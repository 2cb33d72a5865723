"""rmobiked on both lab gateways: tunnels through kernel ESP, traps, and a clean shutdown.

The standard lab: gw1 and gw2 with two uplinks each behind a router that has no LAN
routes, so LAN traffic that arrives went through the tunnel.
"""

from __future__ import annotations

import time

import pytest

from tests.lab.capture import CleartextCapture
from tests.lab.gateways import ChildSpec, Rmobiked, kernel_state, start_daemon, start_pair
from tests.lab.topology import Topology
from tests.lab.traffic import lan_probe

pytestmark = pytest.mark.lab


def _only_sa(daemon: Rmobiked) -> dict:
    sas = daemon.list_sas_cli()["ike_sas"]
    assert len(sas) == 1, sas
    return sas[0]


def test_tunnel_carries_lan_traffic(lab_topology: Topology) -> None:
    gw1, gw2 = start_pair(lab_topology)
    gw1.wait_for_children()
    gw2.wait_for_children()
    capture = CleartextCapture.on_uplinks(lab_topology)

    capture.start()
    forward = lan_probe(lab_topology, "gw1", "gw2", duration=2.0, rate=200).run()
    backward = lan_probe(lab_topology, "gw2", "gw1", duration=2.0, rate=200).run()
    leaks = capture.stop()

    assert forward.received == forward.sent, forward.summary()
    assert backward.received == backward.sent, backward.summary()
    assert leaks == []
    assert capture.kernel_drops == 0


def test_list_sas_reports_matching_spis(lab_topology: Topology) -> None:
    gw1, gw2 = start_pair(lab_topology)
    gw1.wait_for_children()
    gw2.wait_for_children()
    lan_probe(lab_topology, "gw1", "gw2", duration=0.5, rate=200).run()

    initiator, responder = _only_sa(gw1), _only_sa(gw2)
    assert initiator["initiator"] is True
    assert responder["initiator"] is False
    assert initiator["spi_i"] == responder["spi_i"]
    assert initiator["spi_r"] == responder["spi_r"]
    assert initiator["local_address"] == responder["remote_address"]
    assert initiator["remote_address"] == responder["local_address"]
    child1, child2 = initiator["children"][0], responder["children"][0]
    assert child1["spi_in"] == child2["spi_out"]
    assert child1["spi_out"] == child2["spi_in"]
    assert child1["local_ts"] == child2["remote_ts"] == ["10.1.0.0/24"]
    assert child1["packets_out"] >= 100
    assert child2["packets_in"] == child1["packets_out"]


def test_trap_brings_tunnel_up_on_traffic(lab_topology: Topology) -> None:
    gw1, gw2 = start_pair(lab_topology, initiator_action="trap")
    time.sleep(1.0)
    assert gw1.list_sas()["ike_sas"] == []
    _, policies = kernel_state(lab_topology.gateway("gw1").namespace)
    assert "10.1.0.0/24" in policies

    capture = CleartextCapture.on_uplinks(lab_topology)
    capture.start()
    report = lan_probe(lab_topology, "gw1", "gw2", duration=3.0, rate=100).run()
    leaks = capture.stop()

    gw1.wait_for_children()
    assert report.received > 0, report.summary()
    # Packets sent before the CHILD_SA existed are dropped by the trap, never sent in clear.
    assert leaks == []


def test_sigterm_leaves_no_kernel_state(lab_topology: Topology) -> None:
    gw1, gw2 = start_pair(lab_topology)
    gw1.wait_for_children()
    gw2.wait_for_children()

    assert gw1.stop() == 0
    assert gw2.stop() == 0

    for name in ("gw1", "gw2"):
        states, policies = kernel_state(lab_topology.gateway(name).namespace)
        assert states == "", f"{name}: {states}"
        assert policies == "", f"{name}: {policies}"
    assert "deleting the IKE SA" in gw1.log_text() + gw2.log_text()


def test_restart_removes_leftovers(lab_topology: Topology) -> None:
    gw1, gw2 = start_pair(lab_topology)
    gw1.wait_for_children()
    gw1.process.kill()  # no clean-up at all
    gw1.process.wait(10)
    gw1.process = None
    namespace = lab_topology.gateway("gw1").namespace
    left_states, _ = kernel_state(namespace)
    assert "proto esp" in left_states

    gw1 = start_daemon(lab_topology, "gw1", "gw2", children=(ChildSpec(),))

    states, policies = kernel_state(namespace)
    assert states == "", states
    assert "10.1.0.0/24" not in policies
    assert "left by an earlier run" in gw1.log_text()


def _wait_for(daemon: Rmobiked, condition, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    sa: dict = {}
    while time.monotonic() < deadline:
        sas = daemon.list_sas()["ike_sas"]
        if sas and condition(sas[0]):
            return sas[0]
        sa = sas[0] if sas else {}
        time.sleep(0.5)
    raise AssertionError(f"{daemon.name}: condition not met within {timeout:.0f} s; IKE SA: {sa}\n{daemon.log_tail()}")


@pytest.mark.parametrize("mover", ["gw1", "gw2"], ids=["initiator", "responder"])
def test_switch_moves_tunnel(lab_topology: Topology, mover: str) -> None:
    gw2 = start_daemon(lab_topology, "gw2", "gw1", extra="switch = true")
    gw1 = start_daemon(lab_topology, "gw1", "gw2", children=(ChildSpec(start_action="start"),),
                       extra="switch = true")
    before = gw1.wait_for_children()["ike_sas"][0]
    gw2.wait_for_children()
    daemons = {"gw1": gw1, "gw2": gw2}
    moving, other = daemons[mover], daemons["gw2" if mover == "gw1" else "gw1"]
    new_address = str(lab_topology.uplink(mover, 1).address.ip)

    moving.ctl("switch", "site", "--to", new_address)

    _wait_for(moving, lambda sa: sa["local_address"] == new_address)
    _wait_for(other, lambda sa: sa["remote_address"] == new_address)
    capture = CleartextCapture.on_uplinks(lab_topology)
    capture.start()
    report = lan_probe(lab_topology, "gw1", "gw2", duration=1.0, rate=200).run()
    leaks = capture.stop()
    after = gw1.list_sas()["ike_sas"][0]
    assert report.received == report.sent, report.summary()
    assert leaks == []
    assert after["spi_i"] == before["spi_i"]
    assert after["children"][0]["spi_in"] == before["children"][0]["spi_in"]
    assert after["children"][0]["spi_out"] == before["children"][0]["spi_out"]
    states, _ = kernel_state(lab_topology.gateway(mover).namespace)
    assert new_address in states
