"""The lab network itself: reachability, link and carrier events, addresses, routes, NAT."""

from __future__ import annotations

import json

import pytest

from tests.lab.netns import Namespace
from tests.lab.topology import NAT_GW2, GatewaySpec, LabSpec, Topology
from tests.lab.traffic import Probe, lan_probe

pytestmark = pytest.mark.lab


def _link(namespace: Namespace, interface: str) -> dict:
    return json.loads(namespace.run(["ip", "-j", "link", "show", interface]).stdout)[0]


def _routes(namespace: Namespace, *selector: str) -> list[dict]:
    return json.loads(namespace.run(["ip", "-j", "route", "show", *selector]).stdout)


def _route_device(namespace: Namespace, destination: str) -> str:
    return json.loads(namespace.run(["ip", "-j", "route", "get", destination]).stdout)[0]["dev"]


def test_standard_lab_shape(lab_topology: Topology) -> None:
    assert [gateway.name for gateway in lab_topology.gateways] == ["gw1", "gw2"]
    for gateway in lab_topology.gateways:
        assert [uplink.interface for uplink in gateway.uplinks] == ["up0", "up1"]
        for uplink in gateway.uplinks:
            assert "LOWER_UP" in _link(uplink.namespace, uplink.interface)["flags"]
            assert "LOWER_UP" in _link(uplink.far_namespace, uplink.far_interface)["flags"]


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_lan_hosts_reach_each_other_in_clear(lab_topology: Topology, ipv6: bool) -> None:
    lab_topology.route_lans_in_clear()

    for sender, receiver in (("gw1", "gw2"), ("gw2", "gw1")):
        report = lan_probe(lab_topology, sender, receiver, duration=1.0, rate=200,
                           ipv6=ipv6).run()
        assert report.sent == 200, report.summary()
        assert report.received == report.sent, report.summary()


def test_lan_traffic_needs_tunnel_by_default(lab_topology: Topology) -> None:
    # Without route_lans_in_clear the router has no route to the LANs.
    report = lan_probe(lab_topology, "gw1", "gw2", duration=0.5, rate=200).run()

    assert report.sent == 100
    assert report.received == 0, report.summary()


def test_carrier_loss_keeps_link_up(lab_topology: Topology) -> None:
    uplink = lab_topology.uplink("gw1", 0)

    lab_topology.carrier_down(uplink)
    link = _link(uplink.namespace, uplink.interface)
    assert "UP" in link["flags"]
    assert "NO-CARRIER" in link["flags"]
    assert link["operstate"] in ("DOWN", "LOWERLAYERDOWN")

    lab_topology.carrier_up(uplink)
    link = _link(uplink.namespace, uplink.interface)
    assert "LOWER_UP" in link["flags"]
    assert "NO-CARRIER" not in link["flags"]


def test_carrier_loss_moves_default_route(lab_topology: Topology) -> None:
    uplink = lab_topology.uplink("gw1", 0)
    assert _route_device(uplink.namespace, "203.0.113.99") == "up0"

    lab_topology.carrier_down(uplink)
    assert _route_device(uplink.namespace, "203.0.113.99") == "up1"

    lab_topology.carrier_up(uplink)
    assert _route_device(uplink.namespace, "203.0.113.99") == "up0"


def test_link_down_and_up_restores_routes(lab_topology: Topology) -> None:
    uplink = lab_topology.uplink("gw1", 0)
    before = _routes(uplink.namespace, "dev", "up0")
    before_table = _routes(uplink.namespace, "table", str(uplink.table))

    lab_topology.link_down(uplink)
    assert "UP" not in _link(uplink.namespace, uplink.interface)["flags"]
    assert _routes(uplink.namespace, "dev", "up0") == []

    lab_topology.link_up(uplink)
    assert _routes(uplink.namespace, "dev", "up0") == before
    assert _routes(uplink.namespace, "table", str(uplink.table)) == before_table


def test_address_add_and_remove(lab_topology: Topology) -> None:
    uplink = lab_topology.uplink("gw2", 1)

    def addresses() -> list[str]:
        links = json.loads(uplink.namespace.run(["ip", "-j", "addr", "show", "up1"]).stdout)
        return [entry["local"] for entry in links[0]["addr_info"]]

    lab_topology.add_address(uplink, "198.51.100.80/26")
    lab_topology.add_address(uplink, "2001:db8:2:2::80/64")
    assert "198.51.100.80" in addresses()
    assert "2001:db8:2:2::80" in addresses()

    lab_topology.remove_address(uplink, "198.51.100.80/26")
    lab_topology.remove_address(uplink, "2001:db8:2:2::80/64")
    assert "198.51.100.80" not in addresses()
    assert "2001:db8:2:2::80" not in addresses()


def test_prefer_uplink_changes_default_route(lab_topology: Topology) -> None:
    gateway = lab_topology.gateway("gw1")

    lab_topology.prefer_uplink(gateway.uplinks[1])
    assert _route_device(gateway.namespace, "203.0.113.99") == "up1"
    assert _route_device(gateway.namespace, "2001:db8:ff::1") == "up1"

    lab_topology.prefer_uplink(gateway.uplinks[0])
    assert _route_device(gateway.namespace, "203.0.113.99") == "up0"
    assert _route_device(gateway.namespace, "2001:db8:ff::1") == "up0"


def test_source_address_selects_uplink(lab_topology: Topology) -> None:
    gateway = lab_topology.gateway("gw1")
    second = gateway.uplinks[1]

    result = gateway.namespace.run(["ip", "-j", "route", "get", "203.0.113.99",
                                    "from", str(second.address.ip)])
    assert json.loads(result.stdout)[0]["dev"] == "up1"


def test_nat_box_masquerades_gateway(build_lab) -> None:
    topology: Topology = build_lab(NAT_GW2)
    natted = topology.uplink("gw2", 0)
    target = topology.uplink("gw1", 0)
    assert natted.address.ip != natted.public_address

    probe = Probe(natted.namespace, target.namespace, str(target.public_address),
                  duration=0.5, rate=200, source=str(natted.address.ip))
    topology.add_cleanup(probe.close)
    report = probe.run()

    assert report.received == report.sent, report.summary()
    assert report.sources == [str(natted.public_address)]


def test_single_uplink_spec(build_lab) -> None:
    topology: Topology = build_lab(LabSpec(gateways=(GatewaySpec(uplinks=1),) * 3, ipv6=False))

    assert [gateway.name for gateway in topology.gateways] == ["gw1", "gw2", "gw3"]
    assert all(len(gateway.uplinks) == 1 for gateway in topology.gateways)
    assert all(uplink.address6 is None for gateway in topology.gateways
               for uplink in gateway.uplinks)
