"""rmobiked against strongSwan's charon on the lab gateways, with rmobiked in either role."""

from __future__ import annotations

import pytest

from tests.lab.capture import CleartextCapture
from tests.lab.gateways import PSK, ChildSpec, identity, start_daemon
from tests.lab.strongswan import Charon
from tests.lab.topology import Topology
from tests.lab.traffic import lan_probe

pytestmark = pytest.mark.lab


def swanctl_conf(topology: Topology, local: str, remote: str) -> str:
    """Return a swanctl.conf for `local` with the same connection rmobiked's lab config has."""
    me, peer = topology.gateway(local), topology.gateway(remote)
    local_addrs = ", ".join(str(uplink.address.ip) for uplink in me.uplinks)
    remote_addrs = ", ".join(str(uplink.public_address) for uplink in peer.uplinks)
    return f"""
connections {{
  site {{
    local_addrs = {local_addrs}
    remote_addrs = {remote_addrs}
    proposals = aes256gcm16-prfsha384-x25519
    mobike = yes
    local {{
      auth = psk
      id = {identity(me)}
    }}
    remote {{
      auth = psk
      id = {identity(peer)}
    }}
    children {{
      lan {{
        local_ts = {me.lan_network}
        remote_ts = {peer.lan_network}
        esp_proposals = aes256gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-site {{
    id = {identity(peer)}
    secret = "{PSK}"
  }}
}}
"""


def start_charon(topology: Topology, local: str, remote: str) -> Charon:
    charon = Charon(topology.gateway(local).namespace, "interop")
    topology.add_cleanup(charon.stop)
    charon.start(swanctl_conf(topology, local, remote))
    return charon


def assert_tunnel_carries_traffic(topology: Topology) -> None:
    capture = CleartextCapture.on_uplinks(topology)
    capture.start()
    forward = lan_probe(topology, "gw1", "gw2", duration=1.0, rate=200).run()
    backward = lan_probe(topology, "gw2", "gw1", duration=1.0, rate=200).run()
    leaks = capture.stop()

    assert forward.received == forward.sent, forward.summary()
    assert backward.received == backward.sent, backward.summary()
    assert leaks == []


def test_rmobiked_initiates_to_charon(lab_topology: Topology) -> None:
    charon = start_charon(lab_topology, "gw2", "gw1")
    gw1 = start_daemon(lab_topology, "gw1", "gw2", children=(ChildSpec(start_action="start"),))

    sas = gw1.wait_for_children()

    assert_tunnel_carries_traffic(lab_topology)
    ours = sas["ike_sas"][0]
    theirs = charon.list_sas()["site"]
    assert theirs["state"] == "ESTABLISHED"
    assert ours["spi_i"] == theirs["initiator-spi"]
    child = next(iter(theirs["child-sas"].values()))
    assert ours["children"][0]["spi_in"] == child["spi-out"]
    assert ours["children"][0]["spi_out"] == child["spi-in"]


def test_charon_initiates_to_rmobiked(lab_topology: Topology) -> None:
    gw2 = start_daemon(lab_topology, "gw2", "gw1")
    charon = start_charon(lab_topology, "gw1", "gw2")

    charon.initiate("lan", ike="site")

    sas = gw2.wait_for_children()
    assert_tunnel_carries_traffic(lab_topology)
    ours = sas["ike_sas"][0]
    assert ours["initiator"] is False
    assert ours["mobike"] is True
    assert ours["spi_r"] == charon.list_sas()["site"]["responder-spi"]
    assert gw2.stop() == 0
