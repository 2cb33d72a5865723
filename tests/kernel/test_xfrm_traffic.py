"""Real ESP between two lab gateways, programmed by xfrm, and moves of the live tunnel.

gw1 and gw2 of the standard lab get a tunnel-mode SA pair and the out/in/fwd
policies for LAN 1 <-> LAN 2; a UDP probe between the LAN hosts shows that
traffic passes, and a capture on every uplink shows that none of it crosses
in clear. The move tests move gw1 from uplink 0 to uplink 1 while the probe
runs, on both gateways, by each method, and with UDP encapsulation added and
removed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest

from tests.lab.capture import CleartextCapture
from tests.lab.netns import Namespace
from tests.lab.topology import Topology, Uplink
from tests.lab.traffic import lan_probe
from xfrm import (
    KEEP,
    Aead,
    Direction,
    Encap,
    MoveMethod,
    Policy,
    SaMove,
    SecurityAssociation,
    Selector,
    Template,
    XfrmClient,
)

pytestmark = pytest.mark.lab

KEY_GW1_TO_GW2 = bytes(range(1, 21))  # AES-128 key and salt, test values
KEY_GW2_TO_GW1 = bytes(range(21, 41))
SPI_GW1_TO_GW2 = 0x12001
SPI_GW2_TO_GW1 = 0x21001
REQID = 1
NATT_PORT = 4500
UDP_ENCAP = 100  # linux/udp.h: the socket option that turns on ESP-in-UDP reception
UDP_ENCAP_ESPINUDP = 2
CLIENT_TIMEOUT = 120.0  # seconds; netlink responses are slow under QEMU TCG
# Long enough for both probes to start, the move to run and traffic to follow
# it, each of which takes seconds under QEMU TCG.
MOVE_PROBE_SECONDS = 20.0


def open_client(namespace: Namespace) -> XfrmClient:
    """Return an XfrmClient bound to ``namespace``."""
    with namespace.entered():
        return XfrmClient(timeout=CLIENT_TIMEOUT)


def open_encap_socket(namespace: Namespace, family: int = socket.AF_INET) -> socket.socket:
    """Return a UDP socket on port 4500 in ``namespace`` that receives ESP-in-UDP.

    Without such a socket the kernel does not decapsulate arriving ESP-in-UDP.
    """
    with namespace.entered():
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", NATT_PORT))
    sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
    return sock


@dataclass
class Side:
    """One gateway's half of the tunnel: its client, SAs and policies."""

    client: XfrmClient
    local: object
    remote: object
    out_sa: SecurityAssociation
    in_sa: SecurityAssociation
    policies: dict[Direction, Policy] = field(default_factory=dict)

    def refresh(self) -> None:
        """Read the SAs and policies back from the kernel."""
        self.out_sa = self.client.get_sa(self.out_sa.id)
        self.in_sa = self.client.get_sa(self.in_sa.id)
        for direction, policy in self.policies.items():
            self.policies[direction] = self.client.get_policy(policy.id)


def half_tunnel(client: XfrmClient, local, remote, local_lan, remote_lan,
                spi_out: int, key_out: bytes, spi_in: int, key_in: bytes,
                encap: Encap | None) -> Side:
    """Install one gateway's SAs and policies; return them as a Side."""
    out_sa = SecurityAssociation(local, remote, spi_out, reqid=REQID,
                                 aead=Aead.aes_gcm(key_out), encap=encap)
    in_sa = SecurityAssociation(remote, local, spi_in, reqid=REQID,
                                aead=Aead.aes_gcm(key_in), encap=encap, replay_window=64)
    outbound = Selector(local_lan, remote_lan)
    inbound = Selector(remote_lan, local_lan)
    policies = {
        Direction.OUT: Policy(outbound, Direction.OUT,
                              templates=(Template(local, remote, reqid=REQID),)),
        Direction.IN: Policy(inbound, Direction.IN,
                             templates=(Template(remote, local, reqid=REQID),)),
        Direction.FWD: Policy(inbound, Direction.FWD,
                              templates=(Template(remote, local, reqid=REQID),)),
    }
    with client.bulk() as batch:
        batch.add_sa(out_sa)
        batch.add_sa(in_sa)
        for policy in policies.values():
            batch.add_policy(policy)
    side = Side(client, ip_address(local), ip_address(remote), out_sa, in_sa, policies)
    side.refresh()
    return side


class Tunnel:
    """The tunnel between gw1 and gw2 of ``topology``, over the given uplinks."""

    def __init__(self, topology: Topology, uplink1: Uplink, uplink2: Uplink,
                 encap: Encap | None = None, ipv6: bool = False) -> None:
        self.topology = topology
        gw1, gw2 = topology.gateway("gw1"), topology.gateway("gw2")
        self.gw1 = open_client(gw1.namespace)
        self.gw2 = open_client(gw2.namespace)
        topology.add_cleanup(self.gw1.close)
        topology.add_cleanup(self.gw2.close)
        if ipv6:
            a1, a2 = uplink1.address6.ip, uplink2.address6.ip
            lan1, lan2 = gw1.lan_network6, gw2.lan_network6
        else:
            a1, a2 = uplink1.public_address, uplink2.public_address
            lan1, lan2 = gw1.lan_network, gw2.lan_network
        self.side1 = half_tunnel(self.gw1, a1, a2, lan1, lan2, SPI_GW1_TO_GW2, KEY_GW1_TO_GW2,
                                 SPI_GW2_TO_GW1, KEY_GW2_TO_GW1, encap)
        self.side2 = half_tunnel(self.gw2, a2, a1, lan2, lan1, SPI_GW2_TO_GW1, KEY_GW2_TO_GW1,
                                 SPI_GW1_TO_GW2, KEY_GW1_TO_GW2, encap)

    def move_gw1(self, new_address, method: MoveMethod, encap=KEEP) -> list:
        """Move gw1's end of the tunnel to ``new_address`` on both gateways; return the results."""
        new_address = ip_address(new_address)
        results = []
        for side, local, remote in ((self.side2, self.side2.local, new_address),
                                    (self.side1, new_address, self.side1.remote)):
            moves = [
                SaMove(side.out_sa, local, remote, encap,
                       policies=(side.policies[Direction.OUT],)),
                SaMove(side.in_sa, remote, local, encap,
                       policies=(side.policies[Direction.IN], side.policies[Direction.FWD])),
            ]
            result = side.client.move(moves, method)
            side.out_sa, side.in_sa = result.sas
            side.local, side.remote = local, remote
            side.refresh()
            results.append(result)
        return results


@pytest.fixture
def encap_sockets(lab_topology: Topology) -> Iterator[None]:
    """ESP-in-UDP receiving sockets on gw1 and gw2, for the tests that use encapsulation."""
    sockets = [open_encap_socket(lab_topology.gateway(name).namespace) for name in ("gw1", "gw2")]
    yield
    for sock in sockets:
        sock.close()


def wait_for_traffic(tunnel: Tunnel, timeout: float = 60.0) -> None:
    """Wait until both gateways send through the tunnel (the probes start slowly under TCG)."""
    deadline = time.monotonic() + timeout
    sides = (tunnel.side1, tunnel.side2)
    start = [side.client.get_sa(side.out_sa.id).current.packets for side in sides]
    while time.monotonic() < deadline:
        now = [side.client.get_sa(side.out_sa.id).current.packets for side in sides]
        if all(later > earlier for earlier, later in zip(start, now)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no traffic through the tunnel within {timeout} s")


def run_probes(topology: Topology, duration: float, tunnel: Tunnel | None = None,
               action=None, ipv6: bool = False):
    """Run LAN probes both ways for ``duration`` s; call ``action`` once both carry traffic.

    Returns (report gw1->gw2, report gw2->gw1, cleartext packets, time ``action`` ended).
    """
    capture = CleartextCapture.on_uplinks(topology)
    capture.start()
    forward = lan_probe(topology, "gw1", "gw2", duration=duration, ipv6=ipv6)
    backward = lan_probe(topology, "gw2", "gw1", duration=duration, ipv6=ipv6)
    forward.start()
    backward.start()
    done_at = None
    if action is not None:
        wait_for_traffic(tunnel)
        time.sleep(0.5)
        action()
        done_at = time.time()
    reports = forward.wait(), backward.wait()
    return reports[0], reports[1], capture.stop(), done_at


def arrivals_after(report, moment: float) -> int:
    """Return how many datagrams of ``report`` arrived after ``moment`` (time.time())."""
    start = report.first_send_ns / 1e9
    return sum(1 for ms in report.receive_times_ms if start + ms / 1e3 > moment)


def test_tunnel_passes_esp_both_ways(lab_topology: Topology) -> None:
    tunnel = Tunnel(lab_topology, lab_topology.uplink("gw1", 0), lab_topology.uplink("gw2", 0))

    forward, backward, cleartext, _ = run_probes(lab_topology, duration=3.0)

    assert forward.lost == 0, forward.summary()
    assert backward.lost == 0, backward.summary()
    assert cleartext == []
    tunnel.side1.refresh()
    tunnel.side2.refresh()
    assert tunnel.side1.out_sa.current.packets >= forward.sent
    assert tunnel.side2.in_sa.current.packets >= forward.sent
    assert tunnel.side1.out_sa.replay.oseq == tunnel.side1.out_sa.current.packets


def test_tunnel_passes_esp_over_ipv6(lab_topology: Topology) -> None:
    tunnel = Tunnel(lab_topology, lab_topology.uplink("gw1", 0), lab_topology.uplink("gw2", 0),
                    ipv6=True)

    forward, backward, cleartext, _ = run_probes(lab_topology, duration=3.0, ipv6=True)

    assert forward.lost == 0, forward.summary()
    assert backward.lost == 0, backward.summary()
    assert cleartext == []
    tunnel.side1.refresh()
    assert tunnel.side1.out_sa.dst.version == 6
    assert tunnel.side1.out_sa.current.packets >= forward.sent


def check_moved(tunnel: Tunnel, before: dict, forward, backward, moved_at: float,
                cleartext: list) -> None:
    """Assert that the tunnel kept its SPIs and counters and carried traffic after the move."""
    tunnel.side1.refresh()
    tunnel.side2.refresh()
    for name, sa in (("gw1 out", tunnel.side1.out_sa), ("gw1 in", tunnel.side1.in_sa),
                     ("gw2 out", tunnel.side2.out_sa), ("gw2 in", tunnel.side2.in_sa)):
        old = before[name]
        assert sa.spi == old.spi, name
        assert sa.aead.key == old.aead.key, name
        assert sa.current.add_time == old.current.add_time, name
        if name.endswith("out"):
            assert sa.replay.oseq > old.replay.oseq, name
        else:
            assert sa.replay.seq > old.replay.seq, name
        assert sa.current.packets > old.current.packets, name
    assert arrivals_after(forward, moved_at) > 0, forward.summary()
    assert arrivals_after(backward, moved_at) > 0, backward.summary()
    assert cleartext == []


def snapshot(tunnel: Tunnel) -> dict:
    tunnel.side1.refresh()
    tunnel.side2.refresh()
    return {"gw1 out": tunnel.side1.out_sa, "gw1 in": tunnel.side1.in_sa,
            "gw2 out": tunnel.side2.out_sa, "gw2 in": tunnel.side2.in_sa}


@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_keeps_traffic(lab_topology: Topology, method: MoveMethod) -> None:
    tunnel = Tunnel(lab_topology, lab_topology.uplink("gw1", 0), lab_topology.uplink("gw2", 0))
    new_address = lab_topology.uplink("gw1", 1).public_address
    before: dict = {}
    results: list = []

    def move() -> None:
        before.update(snapshot(tunnel))
        results.extend(tunnel.move_gw1(new_address, method))

    forward, backward, cleartext, moved_at = run_probes(lab_topology, MOVE_PROBE_SECONDS,
                                                        tunnel, move)

    assert [r.methods for r in results] == [(method, method)] * 2
    assert tunnel.side1.out_sa.src == new_address
    assert tunnel.side2.out_sa.dst == new_address
    assert tunnel.side1.policies[Direction.OUT].templates[0].src == new_address
    assert tunnel.side2.policies[Direction.FWD].templates[0].src == new_address
    check_moved(tunnel, before, forward, backward, moved_at, cleartext)


@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_adds_encapsulation(lab_topology: Topology, encap_sockets: None,
                                 method: MoveMethod) -> None:
    tunnel = Tunnel(lab_topology, lab_topology.uplink("gw1", 0), lab_topology.uplink("gw2", 0))
    new_address = lab_topology.uplink("gw1", 1).public_address
    before: dict = {}

    def move() -> None:
        before.update(snapshot(tunnel))
        tunnel.move_gw1(new_address, method, encap=Encap(NATT_PORT, NATT_PORT))

    forward, backward, cleartext, moved_at = run_probes(lab_topology, MOVE_PROBE_SECONDS,
                                                        tunnel, move)

    assert tunnel.side1.out_sa.encap == Encap(NATT_PORT, NATT_PORT)
    assert tunnel.side2.in_sa.encap == Encap(NATT_PORT, NATT_PORT)
    check_moved(tunnel, before, forward, backward, moved_at, cleartext)


def test_move_removes_encapsulation(lab_topology: Topology, encap_sockets: None) -> None:
    tunnel = Tunnel(lab_topology, lab_topology.uplink("gw1", 0), lab_topology.uplink("gw2", 0),
                    encap=Encap(NATT_PORT, NATT_PORT))
    new_address = lab_topology.uplink("gw1", 1).public_address
    before: dict = {}
    results: list = []

    def move() -> None:
        before.update(snapshot(tunnel))
        results.extend(tunnel.move_gw1(new_address, MoveMethod.AUTO, encap=None))

    forward, backward, cleartext, moved_at = run_probes(lab_topology, MOVE_PROBE_SECONDS,
                                                        tunnel, move)

    # MIGRATE cannot remove an encapsulation, so AUTO replaces the SAs.
    assert [r.methods for r in results] == [(MoveMethod.REPLACE, MoveMethod.REPLACE)] * 2
    assert tunnel.side1.out_sa.encap is None
    assert tunnel.side2.in_sa.encap is None
    check_moved(tunnel, before, forward, backward, moved_at, cleartext)
