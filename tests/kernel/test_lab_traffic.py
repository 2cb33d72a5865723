"""The lab's measuring tools: the probe measures outages, the capture finds cleartext."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.lab.capture import CleartextCapture
from tests.lab.netns import Namespace
from tests.lab.topology import GatewaySpec, LabSpec, Topology
from tests.lab.traffic import Probe, ProbeReport, lan_probe

pytestmark = pytest.mark.lab

ONE_UPLINK = LabSpec(gateways=(GatewaySpec(uplinks=1), GatewaySpec(uplinks=1)))

# Probes around events run "until stopped": commands take long and vary under
# QEMU TCG, so the test stops the probe a while after the event has ended.
UNTIL_STOPPED = 120.0  # seconds, the bound if a test never gets to stop()
SETTLE = 1.0  # seconds of traffic before an event and after it ends

# A fixed test key for a hand-made tunnel: 16 bytes of AES key and 4 of salt.
TEST_KEY = "0x" + "0123456789abcdef" * 2 + "01234567"


def _recovered(report: ProbeReport) -> bool:
    """Return True if datagrams arrived again after the longest gap."""
    gap_end_ms = report.max_gap_start_ms + report.max_gap_ms
    return any(arrival_ms >= gap_end_ms for arrival_ms in report.receive_times_ms)


def test_probe_gap_spans_link_down(build_lab) -> None:
    topology: Topology = build_lab(ONE_UPLINK)
    topology.route_lans_in_clear()
    uplink = topology.uplink("gw2", 0)  # the router's only way to LAN 2
    probe = lan_probe(topology, "gw1", "gw2", duration=UNTIL_STOPPED)

    probe.start()
    time.sleep(SETTLE)
    topology.link_down(uplink)
    down_at = time.time()  # the link is down from here on, at the latest
    time.sleep(1.0)
    up_requested_at = time.time()  # and stays down until here, at least
    topology.link_up(uplink)
    time.sleep(SETTLE)
    report = probe.stop()

    gap_start, gap_end = report.max_gap_interval()
    assert report.lost > 0, report.summary()
    assert report.received > 0, report.summary()
    assert gap_start <= down_at, report.summary()
    assert gap_end >= up_requested_at, report.summary()
    assert _recovered(report), report.summary()
    assert report.send_errors == 0, report.summary()


def test_probe_without_outage_loses_nothing(build_lab) -> None:
    topology: Topology = build_lab(ONE_UPLINK)
    topology.route_lans_in_clear()

    report = lan_probe(topology, "gw1", "gw2", duration=2.0).run()

    assert report.sent == 1000
    assert report.lost == 0, report.summary()
    assert report.duplicates == 0, report.summary()
    assert len(report.receive_times_ms) == report.received


def _start_monitor(namespace: Namespace) -> subprocess.Popen:
    return namespace.popen(["ip", "monitor", "link", "address", "route"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_monitor(process: subprocess.Popen) -> str:
    process.terminate()
    output, _ = process.communicate(timeout=10)
    return output


def test_blackhole_drops_without_events(lab_topology: Topology) -> None:
    lab_topology.route_lans_in_clear()
    gw1, gw2 = lab_topology.gateway("gw1"), lab_topology.gateway("gw2")
    monitors = [_start_monitor(gw1.namespace), _start_monitor(gw2.namespace)]
    try:
        probe = lan_probe(lab_topology, "gw1", "gw2", duration=UNTIL_STOPPED)
        probe.start()
        time.sleep(SETTLE)
        blackhole = lab_topology.blackhole(gw2.uplinks[0])
        dropping_from = time.time()
        time.sleep(1.0)
        dropping_until = time.time()
        lab_topology.remove_blackhole(blackhole)
        time.sleep(SETTLE)
        report = probe.stop()

        # A real event on up1 afterwards shows that the monitors were listening.
        lab_topology.add_address(gw1.uplinks[1], "198.51.100.20/26")
        lab_topology.add_address(gw2.uplinks[1], "198.51.100.80/26")
        time.sleep(1.0)
    finally:
        outputs = [_stop_monitor(monitor) for monitor in monitors]

    gap_start, gap_end = report.max_gap_interval()
    assert gap_start <= dropping_from, report.summary()
    assert gap_end >= dropping_until, report.summary()
    assert _recovered(report), report.summary()
    assert report.lost > 0, report.summary()
    assert "198.51.100.20" in outputs[0]
    assert "198.51.100.80" in outputs[1]
    assert "up0" not in outputs[0]
    assert "up0" not in outputs[1]


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_capture_reports_cleartext(lab_topology: Topology, ipv6: bool) -> None:
    lab_topology.route_lans_in_clear()
    gw1, gw2 = lab_topology.gateway("gw1"), lab_topology.gateway("gw2")
    capture = CleartextCapture.on_uplinks(lab_topology)

    capture.start()
    report = lan_probe(lab_topology, "gw1", "gw2", duration=0.5, rate=200, ipv6=ipv6).run()
    leaks = capture.stop()

    source = gw1.lan_host_address6 if ipv6 else gw1.lan_host_address
    destination = gw2.lan_host_address6 if ipv6 else gw2.lan_host_address
    assert report.received == report.sent, report.summary()
    assert len(leaks) == report.sent
    assert {(leak.source, leak.destination) for leak in leaks} == {
        (str(source.ip), str(destination.ip))}
    assert {(leak.namespace, leak.interface) for leak in leaks} == {
        (gw1.namespace.name, "up0")}
    assert capture.kernel_drops == 0


def test_capture_ignores_uplink_traffic(lab_topology: Topology) -> None:
    gw1, gw2 = lab_topology.gateway("gw1"), lab_topology.gateway("gw2")
    capture = CleartextCapture.on_uplinks(lab_topology)
    target = gw2.uplinks[0]
    probe = Probe(gw1.namespace, gw2.namespace, str(target.public_address),
                  duration=0.5, rate=200)
    lab_topology.add_cleanup(probe.close)

    capture.start()
    report = probe.run()
    leaks = capture.stop()

    assert report.received == report.sent, report.summary()
    assert leaks == []


def _install_tunnel(topology: Topology) -> None:
    """Install a hand-made ESP tunnel between LAN 1 and LAN 2 over both gateways' up0."""
    gw1, gw2 = topology.gateway("gw1"), topology.gateway("gw2")
    address1 = topology.uplink("gw1", 0).public_address
    address2 = topology.uplink("gw2", 0).public_address
    sides = [(gw1, address1, address2, gw1.lan_network, gw2.lan_network),
             (gw2, address2, address1, gw2.lan_network, gw1.lan_network)]
    for gateway, local, remote, local_lan, remote_lan in sides:
        aead = f"aead rfc4106(gcm(aes)) {TEST_KEY} 128"
        template = "proto esp reqid 1 mode tunnel"
        gateway.namespace.batch([
            f"xfrm state add src {address1} dst {address2} spi 0x1001 {template} {aead}",
            f"xfrm state add src {address2} dst {address1} spi 0x1002 {template} {aead}",
            f"xfrm policy add src {local_lan} dst {remote_lan} dir out "
            f"tmpl src {local} dst {remote} {template}",
            f"xfrm policy add src {remote_lan} dst {local_lan} dir in "
            f"tmpl src {remote} dst {local} {template}",
            f"xfrm policy add src {remote_lan} dst {local_lan} dir fwd "
            f"tmpl src {remote} dst {local} {template}",
        ])


def test_capture_ignores_esp_tunnel(lab_topology: Topology) -> None:
    _install_tunnel(lab_topology)
    capture = CleartextCapture.on_uplinks(lab_topology)

    capture.start()
    forward = lan_probe(lab_topology, "gw1", "gw2", duration=0.5, rate=200).run()
    backward = lan_probe(lab_topology, "gw2", "gw1", duration=0.5, rate=200).run()
    leaks = capture.stop()

    # The router has no LAN routes, so whatever arrived went through the tunnel.
    assert forward.received == forward.sent, forward.summary()
    assert backward.received == backward.sent, backward.summary()
    assert leaks == []


def test_blackhole_between_uplinks_stops_tunnel(lab_topology: Topology) -> None:
    _install_tunnel(lab_topology)
    uplink, peer = lab_topology.uplink("gw1", 0), lab_topology.uplink("gw2", 0)
    probe = lan_probe(lab_topology, "gw1", "gw2", duration=UNTIL_STOPPED)

    probe.start()
    time.sleep(SETTLE)
    blackhole = lab_topology.blackhole(uplink, peer)
    dropping_from = time.time()
    time.sleep(1.0)
    dropping_until = time.time()
    lab_topology.remove_blackhole(blackhole)
    time.sleep(SETTLE)
    report = probe.stop()

    gap_start, gap_end = report.max_gap_interval()
    assert report.lost > 0, report.summary()
    assert gap_start <= dropping_from, report.summary()
    assert gap_end >= dropping_until, report.summary()
    assert _recovered(report), report.summary()
