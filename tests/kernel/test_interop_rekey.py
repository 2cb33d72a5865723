"""CHILD_SA and IKE SA rekeys between rmobiked and strongSwan's charon, started by each side.

charon rekeys on request (`swanctl --rekey`). rmobiked rekeys on its own timers, so its test
gives it short rekey times. After each rekey both ends must list the new SPIs, each kernel must
contain the new ESP SAs and nothing of the old ones, and LAN traffic must still flow.
"""

from __future__ import annotations

import logging

import pytest

from tests.lab.interop import (
    GCM,
    GCM_PFS,
    InteropPair,
    Tunnel,
    TunnelView,
    kernel_matches,
    probe_lans,
    settled,
    spi_mismatches,
    wait_for_tunnel,
)
from tests.lab.interop import interop_lab, rmobike_gw1, rmobike_gw2  # noqa: F401 - pytest fixtures
from tests.lab.topology import Topology
from tests.lab.traffic import lan_probe

pytestmark = pytest.mark.lab

log = logging.getLogger(__name__)

# rmobiked's timers in the test where it rekeys. The CHILD_SA soft lifetime ends 18-20 s after
# it is installed and its hard lifetime 60 s after, so that a slow rekey under QEMU TCG does not
# let it expire. The IKE SA rekeys 27-30 s after it is established.
CHILD_REKEY_TIME = "20s"
CHILD_LIFE_TIME = "60s"
CHILD_RAND_TIME = "2s"
IKE_REKEY_TIME = "30s"
# Seconds to wait for a rekey that rmobiked starts on its own: a whole rekey period and a margin.
TIMER_REKEY_TIMEOUT = 90.0


def assert_traffic_encrypted(lab: Topology) -> None:
    forward, backward, leaks = probe_lans(lab)
    assert forward.sent > 0
    assert forward.received == forward.sent, forward.summary()
    assert backward.received == backward.sent, backward.summary()
    assert leaks == []


def ike_spis(view: TunnelView) -> tuple[str, str]:
    return view.ours["spi_i"], view.ours["spi_r"]


def child_spis(view: TunnelView) -> tuple[str, str]:
    return view.our_child["spi_in"], view.our_child["spi_out"]


def test_charon_rekeys_child_and_ike(interop_lab: Topology, rmobike_gw1: InteropPair) -> None:
    tunnel = Tunnel(suite=GCM, auth="psk")
    charon = rmobike_gw1.start_charon(tunnel)
    rmobike_gw1.start_rmobiked(tunnel, start_action="start")
    before = wait_for_tunnel(rmobike_gw1)
    assert spi_mismatches(before) == []

    # charon --> CREATE_CHILD_SA {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr} --> rmobiked
    #        <-- {SA, Nr, TSi, TSr} <--; then charon deletes the old CHILD_SA.
    probe = lan_probe(interop_lab, "gw1", "gw2", duration=8.0, rate=100)
    probe.start()
    charon.rekey(child="lan")
    child_rekeyed = wait_for_tunnel(
        rmobike_gw1, condition=lambda view: child_spis(view)[0] not in child_spis(before)
        and settled(rmobike_gw1, view))
    during = probe.wait()
    log.info("traffic during charon's CHILD_SA rekey: %s", during.summary())

    assert set(child_spis(child_rekeyed)).isdisjoint(child_spis(before))
    assert ike_spis(child_rekeyed) == ike_spis(before)
    assert kernel_matches(rmobike_gw1, child_rekeyed) == []
    assert during.received > 0
    assert_traffic_encrypted(interop_lab)

    # charon --> CREATE_CHILD_SA {SA, Ni, KEi} --> rmobiked, <-- {SA, Nr, KEr} <--;
    # then charon deletes the old IKE SA, and the CHILD_SA moves to the new one unchanged.
    charon.rekey(ike="site")
    ike_rekeyed = wait_for_tunnel(
        rmobike_gw1, condition=lambda view: ike_spis(view)[0] != ike_spis(before)[0]
        and settled(rmobike_gw1, view))

    assert ike_spis(ike_rekeyed)[0] != ike_spis(before)[0]
    assert ike_spis(ike_rekeyed)[1] != ike_spis(before)[1]
    assert spi_mismatches(ike_rekeyed) == []
    assert child_spis(ike_rekeyed) == child_spis(child_rekeyed)
    assert_traffic_encrypted(interop_lab)

    # The new IKE SA works: a CHILD_SA rekey on it succeeds too.
    charon.rekey(child="lan")
    wait_for_tunnel(rmobike_gw1, condition=lambda view: child_spis(view)[0] not in child_spis(child_rekeyed)
                    and ike_spis(view) == ike_spis(ike_rekeyed) and settled(rmobike_gw1, view))


def test_rmobiked_rekeys_child_and_ike(interop_lab: Topology, rmobike_gw2: InteropPair) -> None:
    # With a DH group in the ESP proposal, each CHILD_SA rekey has its own key exchange (PFS).
    tunnel = Tunnel(suite=GCM_PFS, auth="psk", ike_rekey_time=IKE_REKEY_TIME, child_rekey_time=CHILD_REKEY_TIME,
                    child_life_time=CHILD_LIFE_TIME, child_rand_time=CHILD_RAND_TIME)
    rmobike_gw2.start_rmobiked(tunnel)
    charon = rmobike_gw2.start_charon(tunnel)
    charon.initiate("lan", ike="site")
    before = wait_for_tunnel(rmobike_gw2)
    assert spi_mismatches(before) == []

    # On the kernel's soft expiry: rmobiked --> CREATE_CHILD_SA {N(REKEY_SA), SA, Ni, KEi, TSi,
    # TSr} --> charon, <-- {SA, Nr, KEr, TSi, TSr} <--, then rmobiked deletes the old CHILD_SA.
    probe = lan_probe(interop_lab, "gw2", "gw1", duration=30.0, rate=50)
    probe.start()
    child_rekeyed = wait_for_tunnel(
        rmobike_gw2, timeout=TIMER_REKEY_TIMEOUT,
        condition=lambda view: set(child_spis(view)).isdisjoint(child_spis(before)) and settled(rmobike_gw2, view))
    assert kernel_matches(rmobike_gw2, child_rekeyed) == []
    assert spi_mismatches(child_rekeyed) == []

    # At rekey_time: rmobiked --> CREATE_CHILD_SA {SA, Ni, KEi} --> charon, <-- {SA, Nr, KEr} <--,
    # then rmobiked deletes the old IKE SA.
    ike_rekeyed = wait_for_tunnel(
        rmobike_gw2, timeout=TIMER_REKEY_TIMEOUT,
        condition=lambda view: ike_spis(view)[0] != ike_spis(before)[0] and settled(rmobike_gw2, view))
    during = probe.stop()
    log.info("traffic during rmobiked's rekeys: %s", during.summary())

    assert ike_spis(ike_rekeyed)[1] != ike_spis(before)[1]
    assert spi_mismatches(ike_rekeyed) == []
    assert kernel_matches(rmobike_gw2, ike_rekeyed) == []
    assert len(charon.list_ike_sas()) == 1
    assert ike_rekeyed.their_child["dh-group"] == "CURVE_25519"
    assert during.received > 0
    assert_traffic_encrypted(interop_lab)
