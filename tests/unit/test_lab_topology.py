"""Tests for the lab's address plan, its description and the commands it derives."""

from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from tests.lab import topology
from tests.lab.topology import (
    GatewaySpec,
    LabSpec,
    Uplink,
    lan_network,
    lan_network6,
    nat_inside_network,
    uplink_block,
    uplink_block6,
)


@pytest.mark.parametrize(("gateway", "uplink", "block"), [
    (1, 0, "192.0.2.0/26"),
    (2, 0, "192.0.2.64/26"),
    (1, 1, "198.51.100.0/26"),
    (2, 1, "198.51.100.64/26"),
    (4, 2, "203.0.113.192/26"),
])
def test_uplink_block(gateway: int, uplink: int, block: str) -> None:
    assert uplink_block(gateway, uplink) == IPv4Network(block)


@pytest.mark.parametrize(("gateway", "uplink"), [(0, 0), (5, 0), (1, -1), (1, 3)])
def test_uplink_block_out_of_range(gateway: int, uplink: int) -> None:
    with pytest.raises(ValueError):
        uplink_block(gateway, uplink)


def test_blocks_do_not_overlap() -> None:
    blocks = [uplink_block(gateway, uplink)
              for gateway in range(1, topology.MAX_GATEWAYS + 1)
              for uplink in range(topology.MAX_UPLINKS)]

    for index, block in enumerate(blocks):
        for other in blocks[index + 1:]:
            assert not block.overlaps(other), (block, other)


def test_other_networks() -> None:
    assert uplink_block6(2, 1) == IPv6Network("2001:db8:2:2::/64")
    assert lan_network(2) == IPv4Network("10.2.0.0/24")
    assert lan_network6(1) == IPv6Network("2001:db8:1::/64")
    assert nat_inside_network(2, 1) == IPv4Network("10.202.1.0/24")


@pytest.mark.parametrize("spec_arguments", [
    {"gateways": ()},
    {"gateways": (GatewaySpec(),) * 5},
    {"gateways": (GatewaySpec(uplinks=0),)},
    {"gateways": (GatewaySpec(uplinks=4),)},
], ids=["no-gateway", "five-gateways", "no-uplink", "four-uplinks"])
def test_spec_rejects_invalid_lab(spec_arguments) -> None:
    with pytest.raises(ValueError):
        LabSpec(**spec_arguments)


def test_standard_spec() -> None:
    assert len(topology.STANDARD.gateways) == 2
    for gateway in topology.STANDARD.gateways:
        assert gateway.uplinks == 2
        assert gateway.lan
        assert not gateway.nat
    assert topology.STANDARD.ipv6
    assert not topology.NAT_GW2.gateways[0].nat
    assert topology.NAT_GW2.gateways[1].nat


def _uplink(index: int = 0, ipv6: bool = True) -> Uplink:
    # Namespaces are not touched by the functions under test.
    return Uplink(
        gateway_name="gw1", index=index, namespace=None, interface=f"up{index}",  # type: ignore[arg-type]
        address=IPv4Interface("192.0.2.10/26"), next_hop=IPv4Address("192.0.2.1"),
        public_address=IPv4Address("192.0.2.10"), far_namespace=None,  # type: ignore[arg-type]
        far_interface="g1u0", table=100 + index, router_bridge="br-g1u0",
        address6=IPv6Interface("2001:db8:1:1::10/64") if ipv6 else None,
        next_hop6=IPv6Address("2001:db8:1:1::1") if ipv6 else None,
    )


def test_route_commands_ipv4_and_ipv6() -> None:
    commands = _uplink(index=1).route_commands()

    assert "route replace default via 192.0.2.1 dev up1 metric 101" in commands
    assert "route replace default via 192.0.2.1 dev up1 table 101" in commands
    assert "route replace default via 2001:db8:1:1::1 dev up1 metric 101" in commands
    assert "route replace default via 2001:db8:1:1::1 dev up1 table 101" in commands
    assert len(commands) == 4


def test_route_commands_ipv4_only() -> None:
    assert len(_uplink(ipv6=False).route_commands()) == 2


def test_blackhole_matches_whole_uplink() -> None:
    matches = topology._blackhole_matches(_uplink(), None)

    assert matches == ['iifname "br-g1u0"', 'oifname "br-g1u0"']


def test_blackhole_matches_address_pair() -> None:
    peer = _uplink()
    peer.public_address = IPv4Address("192.0.2.74")
    peer.address6 = IPv6Interface("2001:db8:2:1::10/64")

    matches = topology._blackhole_matches(_uplink(), peer)

    assert "ip saddr 192.0.2.10 ip daddr 192.0.2.74" in matches
    assert "ip saddr 192.0.2.74 ip daddr 192.0.2.10" in matches
    assert "ip6 saddr 2001:db8:1:1::10 ip6 daddr 2001:db8:2:1::10" in matches
    assert "ip6 saddr 2001:db8:2:1::10 ip6 daddr 2001:db8:1:1::10" in matches
    assert len(matches) == 4


def test_blackhole_pair_without_ipv6_peer() -> None:
    matches = topology._blackhole_matches(_uplink(), _uplink(ipv6=False))

    assert all(match.startswith("ip saddr") for match in matches)
    assert len(matches) == 2
