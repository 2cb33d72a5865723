"""rmobiked against strongSwan's charon with a pre-shared key, in both roles.

Each test brings the tunnel up between rmobiked on one lab gateway and charon on the other. It
checks that both ends agree on the SPIs and that LAN traffic crosses the uplinks only as ESP.
Then one end deletes the IKE SA, and both ends and both kernels must drop it. The tests of this
module share one lab network, and each test starts its own daemons.
"""

from __future__ import annotations

import pytest

from tests.lab.interop import (
    CBC,
    GCM,
    InteropPair,
    Tunnel,
    kernel_matches,
    probe_lans,
    spi_mismatches,
    wait_for_teardown,
    wait_for_tunnel,
)
from tests.lab.interop import interop_lab, rmobike_gw1, rmobike_gw2  # noqa: F401 - pytest fixtures
from tests.lab.topology import Topology

pytestmark = pytest.mark.lab


def assert_traffic_encrypted(lab: Topology) -> None:
    forward, backward, leaks = probe_lans(lab)
    assert forward.sent > 0
    assert forward.received == forward.sent, forward.summary()
    assert backward.received == backward.sent, backward.summary()
    assert leaks == []


def test_rmobiked_initiator_psk(interop_lab: Topology, rmobike_gw1: InteropPair) -> None:
    tunnel = Tunnel(suite=GCM, auth="psk", switch=True)
    charon = rmobike_gw1.start_charon(tunnel)
    daemon = rmobike_gw1.start_rmobiked(tunnel, start_action="start")

    # rmobiked --> IKE_SA_INIT, IKE_AUTH {N(MOBIKE_SUPPORTED, flags 0x01), SA, TSi, TSr} --> charon
    view = wait_for_tunnel(rmobike_gw1)
    assert view.ours["initiator"] is True
    assert view.theirs.get("initiator") != "yes"
    assert spi_mismatches(view) == []
    assert kernel_matches(rmobike_gw1, view) == []
    assert_traffic_encrypted(interop_lab)

    # rmobikectl reports the SPIs that charon has, swapped where the direction differs.
    cli_sa = daemon.list_sas()["ike_sas"][0]
    assert cli_sa["spi_i"] == view.theirs["initiator-spi"]
    assert cli_sa["spi_r"] == view.theirs["responder-spi"]
    assert cli_sa["children"][0]["spi_in"] == view.their_child["spi-out"]
    assert cli_sa["children"][0]["spi_out"] == view.their_child["spi-in"]

    # charon accepts MOBIKE_SUPPORTED with rmobike's flag octet and enables MOBIKE on the SA.
    assert "peer supports MOBIKE" in charon.log_text()
    assert view.ours["mobike"] is True
    assert view.ours["switch"] is True

    # The responder deletes: charon --> INFORMATIONAL {D(IKE)} --> rmobiked
    charon.terminate("site")
    wait_for_teardown(rmobike_gw1)
    assert daemon.stop() == 0


def test_charon_initiator_psk(interop_lab: Topology, rmobike_gw2: InteropPair) -> None:
    tunnel = Tunnel(suite=GCM, auth="psk")
    daemon = rmobike_gw2.start_rmobiked(tunnel)
    charon = rmobike_gw2.start_charon(tunnel)

    # charon --> IKE_SA_INIT, IKE_AUTH {N(MOBIKE_SUPPORTED), SA, TSi, TSr} --> rmobiked
    charon.initiate("lan", ike="site")
    view = wait_for_tunnel(rmobike_gw2)
    assert view.ours["initiator"] is False
    assert view.theirs.get("initiator") == "yes"
    assert spi_mismatches(view) == []
    assert kernel_matches(rmobike_gw2, view) == []
    assert_traffic_encrypted(interop_lab)

    # Both sides announced MOBIKE. charon's MOBIKE_SUPPORTED carries no flags, so rmobiked
    # must not offer SWITCH_TO_IP_ADDRESS to it.
    assert "peer supports MOBIKE" in charon.log_text()
    assert view.ours["mobike"] is True
    assert view.ours["switch"] is False

    # The responder deletes: rmobiked --> INFORMATIONAL {D(IKE)} --> charon
    rmobike_gw2.control("terminate", name="site")
    wait_for_teardown(rmobike_gw2)
    assert daemon.stop() == 0


def test_cbc_hmac_proposals(interop_lab: Topology, rmobike_gw1: InteropPair) -> None:
    tunnel = Tunnel(suite=CBC, auth="psk")
    charon = rmobike_gw1.start_charon(tunnel)
    daemon = rmobike_gw1.start_rmobiked(tunnel, start_action="start")

    view = wait_for_tunnel(rmobike_gw1)
    assert spi_mismatches(view) == []
    assert kernel_matches(rmobike_gw1, view) == []
    assert_traffic_encrypted(interop_lab)

    # charon names the algorithms it selected from aes128-sha256-modp3072 and aes128-sha256.
    assert view.theirs["encr-alg"] == "AES_CBC"
    assert view.theirs["encr-keysize"] == "128"
    assert view.theirs["integ-alg"] == "HMAC_SHA2_256_128"
    assert view.theirs["prf-alg"] == "PRF_HMAC_SHA2_256"
    assert view.theirs["dh-group"] == "MODP_3072"
    assert view.their_child["encr-alg"] == "AES_CBC"
    assert view.their_child["integ-alg"] == "HMAC_SHA2_256_128"

    # The initiator deletes: rmobiked --> INFORMATIONAL {D(IKE)} --> charon
    rmobike_gw1.control("terminate", name="site")
    wait_for_teardown(rmobike_gw1)
    assert daemon.stop() == 0
