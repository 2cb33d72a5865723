"""Roaming between rmobiked and strongSwan's charon: MOBIKE moves in both roles, and the switch
extension's fallback towards a peer that does not support it.

Each test brings the tunnel up between rmobiked on one lab gateway and charon on the other, then
takes down the initiator's active uplink (or requests a move with the switch command). It checks
that the IKE SA and its CHILD_SA moved on both ends with the same SPIs and that LAN traffic still
crosses the uplinks only as ESP. The last test runs the strongSwan reference of the roaming
benchmark, charon on both gateways. The tests of this module share one lab network, so each test
brings its uplink back up when it ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.lab.interop import (
    GCM,
    InteropPair,
    Tunnel,
    TunnelView,
    charon_ike_sas,
    kernel_spis,
    spi_mismatches,
    wait_until,
    wait_for_tunnel,
)
from tests.lab.interop import interop_lab, rmobike_gw1, rmobike_gw2  # noqa: F401 - pytest fixtures
from tests.lab.capture import CleartextCapture
from tests.lab.swan_pair import CharonPair
from tests.lab.topology import Topology, Uplink
from tests.lab.traffic import ProbeReport, lan_probe

pytestmark = pytest.mark.lab

# The notify type of SWITCH_TO_IP_ADDRESS in rmobike's default configuration (private use).
SWITCH_NOTIFY_TYPE = 40980
# charon names a notify type that it does not know by its number in its "parsed INFORMATIONAL
# request 2 [ ... ]" lines, with or without a second pair of parentheses around it.
_PRIVATE_NOTIFY = re.compile(r"N\(\(?(\d+)\)?\)")


@pytest.fixture
def restore_links(interop_lab: Topology) -> Iterator[list[Uplink]]:
    """A list for the uplinks that a test takes down; they come back up after the test."""
    downed: list[Uplink] = []
    yield downed
    for uplink in downed:
        interop_lab.link_up(uplink)


def uplink_with_address(lab: Topology, gateway: str, address: str) -> Uplink:
    """Return the uplink of `gateway` whose own address is `address`."""
    for uplink in lab.gateway(gateway).uplinks:
        if str(uplink.address.ip) == address:
            return uplink
    raise AssertionError(f"{gateway} has no uplink with address {address}")


def other_uplink(lab: Topology, gateway: str, uplink: Uplink) -> Uplink:
    """Return the one uplink of `gateway` (of the standard lab's two) that is not `uplink`."""
    others = [candidate for candidate in lab.gateway(gateway).uplinks if candidate is not uplink]
    assert len(others) == 1, f"{gateway} has {len(others) + 1} uplinks, expected 2"
    return others[0]


def charon_path(pair: InteropPair) -> tuple[str, str]:
    """Return (local, remote) address of charon's IKE SA "site"."""
    sas = charon_ike_sas(pair.peer)
    assert sas, f"charon has no IKE SA site\n{pair.logs()}"
    return sas[-1]["local-host"], sas[-1]["remote-host"]


def wait_for_path(pair: InteropPair, rmobike_address: str | None,
                  charon_address: str | None) -> TunnelView:
    """Wait until both ends agree on the IKE SA's path and it has the addresses given.

    None stands for any address of that end: the initiator that moves may pick any of the
    peer's addresses (RFC 4555 §3.5), and charon probes every pair.
    """
    def on_path(view: TunnelView) -> bool:
        ours, theirs = view.ours["local_address"], view.theirs.get("local-host")
        return (view.theirs.get("remote-host") == ours
                and view.ours["remote_address"] == theirs
                and rmobike_address in (None, ours)
                and charon_address in (None, theirs))

    return wait_for_tunnel(pair, condition=on_path)


def assert_moved_with_same_spis(pair: InteropPair, before: TunnelView, after: TunnelView) -> None:
    """Check that the move kept every SPI and that both kernels have the SAs at the new path."""
    assert after.ours["spi_i"] == before.ours["spi_i"]
    assert after.ours["spi_r"] == before.ours["spi_r"]
    assert after.our_child["spi_in"] == before.our_child["spi_in"]
    assert after.our_child["spi_out"] == before.our_child["spi_out"]
    assert spi_mismatches(after) == []
    expected = {after.our_child["spi_in"], after.our_child["spi_out"]}
    assert kernel_spis(pair.rmobike_namespace) == expected
    assert kernel_spis(pair.charon_namespace) == expected
    rmobike_states = pair.rmobike_namespace.run(["ip", "xfrm", "state"]).stdout
    assert after.ours["local_address"] in rmobike_states
    assert after.ours["remote_address"] in rmobike_states


def probe_lans_around(lab: Topology, down: list[Uplink]) -> tuple[ProbeReport, ProbeReport, list]:
    """Send the LAN probe both ways under a cleartext capture on every uplink that is up.

    tcpdump cannot capture on an interface that is down, so the uplinks in `down` are left out.
    """
    forward = lan_probe(lab, "gw1", "gw2", duration=1.0, rate=200)
    backward = lan_probe(lab, "gw2", "gw1", duration=1.0, rate=200)
    capture = CleartextCapture.on_uplinks(lab)
    capture.points = [point for point in capture.points
                      if not any(point == (uplink.namespace, uplink.interface) for uplink in down)]
    capture.start()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            reports = pool.submit(forward.run), pool.submit(backward.run)
            forward_report, backward_report = reports[0].result(), reports[1].result()
    finally:
        leaks = capture.stop()
    return forward_report, backward_report, leaks


def assert_traffic_encrypted(lab: Topology, down: list[Uplink]) -> None:
    forward, backward, leaks = probe_lans_around(lab, down)
    assert forward.sent > 0
    assert forward.received == forward.sent, forward.summary()
    assert backward.received == backward.sent, backward.summary()
    assert leaks == []


def private_notifies(charon_log: str) -> list[int]:
    """Return the notify types of the private-use range (40960-65535) that charon parsed."""
    types = [int(number) for line in charon_log.splitlines() if "parsed" in line
             for number in _PRIVATE_NOTIFY.findall(line)]
    return [notify_type for notify_type in types if notify_type >= 40960]


def sent_switch_requests(rmobiked_log: str) -> list[str]:
    """Return rmobiked's debug lines for messages it sent with N(SWITCH_TO_IP_ADDRESS)."""
    return [line for line in rmobiked_log.splitlines()
            if "sending " in line and "N(SWITCH_TO_IP_ADDRESS)" in line]


def test_charon_initiator_roams(interop_lab: Topology, rmobike_gw2: InteropPair,
                                restore_links: list[Uplink]) -> None:
    tunnel = Tunnel(suite=GCM, auth="psk")
    rmobike_gw2.start_rmobiked(tunnel)
    charon = rmobike_gw2.start_charon(tunnel)
    charon.initiate("lan", ike="site")
    before = wait_for_tunnel(rmobike_gw2)
    assert before.ours["mobike"] is True
    active = uplink_with_address(interop_lab, "gw1", charon_path(rmobike_gw2)[0])
    spare = str(other_uplink(interop_lab, "gw1", active).address.ip)

    # charon's active uplink fails; it moves with RFC 4555 §3.5:
    # charon --> INFORMATIONAL {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(COOKIE2)} --> rmobiked
    restore_links.append(active)
    interop_lab.link_down(active)

    after = wait_for_path(rmobike_gw2, None, spare)
    assert_moved_with_same_spis(rmobike_gw2, before, after)
    assert_traffic_encrypted(interop_lab, restore_links)


def test_rmobiked_initiator_roams(interop_lab: Topology, rmobike_gw1: InteropPair,
                                  restore_links: list[Uplink]) -> None:
    tunnel = Tunnel(suite=GCM, auth="psk", switch=True)
    charon = rmobike_gw1.start_charon(tunnel)
    rmobike_gw1.start_rmobiked(tunnel, start_action="start")
    before = wait_for_tunnel(rmobike_gw1)

    # charon accepts MOBIKE_SUPPORTED with the switch flag 0x01 and enables MOBIKE on the SA,
    # and rmobiked records that it offered the extension.
    assert "peer supports MOBIKE" in charon.log_text()
    assert before.ours["mobike"] is True
    assert before.ours["switch"] is True

    active = uplink_with_address(interop_lab, "gw1", before.ours["local_address"])
    spare = str(other_uplink(interop_lab, "gw1", active).address.ip)

    # rmobiked's active uplink fails; it moves on the netlink event:
    # rmobiked --> INFORMATIONAL {N(UPDATE_SA_ADDRESSES), N(NAT_DETECTION_*), N(COOKIE2)} --> charon
    restore_links.append(active)
    interop_lab.link_down(active)

    after = wait_for_path(rmobike_gw1, spare, None)
    assert_moved_with_same_spis(rmobike_gw1, before, after)
    assert_traffic_encrypted(interop_lab, restore_links)
    assert private_notifies(charon.log_text()) == []
    assert sent_switch_requests(rmobike_gw1.daemon.log_text()) == []


def test_switch_to_charon_falls_back(interop_lab: Topology, rmobike_gw2: InteropPair) -> None:
    tunnel = Tunnel(suite=GCM, auth="psk", switch=True)
    daemon = rmobike_gw2.start_rmobiked(tunnel)
    charon = rmobike_gw2.start_charon(tunnel)
    charon.initiate("lan", ike="site")
    before = wait_for_tunnel(rmobike_gw2)

    # charon's MOBIKE_SUPPORTED has no flags, so rmobiked must not send SWITCH_TO_IP_ADDRESS.
    assert before.ours["initiator"] is False
    assert before.ours["switch"] is False
    active = uplink_with_address(interop_lab, "gw2", before.ours["local_address"])
    spare = str(other_uplink(interop_lab, "gw2", active).address.ip)

    # rmobiked --> INFORMATIONAL {N(ADDITIONAL_IP4_ADDRESS)...} --> charon (RFC 4555 §3.6), then,
    # as charon has not moved 2 s later: rmobiked --> INFORMATIONAL {N(REDIRECT)} --> charon
    # (RFC 5685, which charon announced with REDIRECT_SUPPORTED in IKE_SA_INIT).
    rmobike_gw2.control("switch", name="site", to=spare)

    wait_until("rmobiked to log its fallback from SWITCH_TO_IP_ADDRESS",
               lambda: "peer does not accept SWITCH_TO_IP_ADDRESS" in daemon.log_text(),
               details=rmobike_gw2.logs)

    # charon keeps its working path after the address list, so the redirect moves it: it sets up
    # a new IKE SA with rmobiked's new address and deletes the old one.
    wait_for_path(rmobike_gw2, spare, None)
    assert f"redirecting the peer to {spare}" in daemon.log_text()
    assert sent_switch_requests(daemon.log_text()) == []
    charon_log = charon.log_text()
    assert private_notifies(charon_log) == []
    assert str(SWITCH_NOTIFY_TYPE) not in charon_log
    assert_traffic_encrypted(interop_lab, [])


def test_charon_pair_roams(interop_lab: Topology, restore_links: list[Uplink]) -> None:
    # The strongSwan reference of the roaming benchmark: charon on both gateways.
    pair = CharonPair()
    pair.start(interop_lab, initiator="gw1", responder="gw2")
    try:
        spis = pair.child_spis()
        assert len(spis["gw1"]) == 2
        assert spis["gw1"] == spis["gw2"]
        assert pair.switch("gw2", str(interop_lab.uplink("gw2", 1).address.ip)) is False
        active = uplink_with_address(interop_lab, "gw1", pair.active_path()[0])
        spare = str(other_uplink(interop_lab, "gw1", active).address.ip)

        restore_links.append(active)
        interop_lab.link_down(active)

        # charon probes every pair of addresses and may also change the remote one.
        wait_until("charon on gw1 to move its IKE SA to " + spare,
                   lambda: pair.active_path()[0] == spare)
        assert pair.child_spis() == spis
        assert_traffic_encrypted(interop_lab, restore_links)
        lines = pair.log_lines()
        assert {gateway for _, gateway, _ in lines} == {"gw1", "gw2"}
        assert any("UPDATE_SA_ADDRESSES" in line or "UPD_SA_ADDR" in line
                   for _, gateway, line in lines if gateway == "gw1")
    finally:
        pair.stop()
    assert kernel_spis(interop_lab.gateway("gw1").namespace) == set()
