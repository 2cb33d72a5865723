"""rmobiked against strongSwan's charon with certificates and RFC 7427 signatures, in both roles.

Each test makes a CA (ECDSA P-256) and one certificate per gateway with the key types under
test, and brings the tunnel up. It checks the SPIs, the traffic and the signature scheme that
charon logged, then deletes the IKE SA from one end. rmobiked signs with ECDSA P-256, RSA-PSS and
Ed25519 and verifies RSA PKCS#1 v1.5, RSA-PSS and Ed25519 signatures from charon.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.interop import (
    GCM,
    InteropPair,
    Tunnel,
    kernel_matches,
    make_pki,
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


def test_rmobiked_initiator_certs(interop_lab: Topology, rmobike_gw1: InteropPair, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, {"gw1": "ecdsa-p256", "gw2": "rsa"})
    tunnel = Tunnel(suite=GCM, auth="pubkey", pki=pki)
    charon = rmobike_gw1.start_charon(tunnel)
    rmobike_gw1.start_rmobiked(tunnel, start_action="start")

    # rmobiked --> IKE_AUTH {IDi, CERT, CERTREQ, AUTH(DIGITAL_SIGNATURE, ecdsa-with-SHA256)} --> charon
    #          <-- IKE_AUTH {IDr, CERT, AUTH(DIGITAL_SIGNATURE, sha256WithRSAEncryption)} <--
    view = wait_for_tunnel(rmobike_gw1)
    assert spi_mismatches(view) == []
    assert kernel_matches(rmobike_gw1, view) == []
    assert_traffic_encrypted(interop_lab)

    log = charon.log_text()
    assert "authentication of 'gw1.example.net' with ECDSA_WITH_SHA256_DER successful" in log
    assert "authentication of 'gw2.example.net' (myself) with RSA_EMSA_PKCS1_SHA2_256 successful" in log

    # The initiator deletes: rmobiked --> INFORMATIONAL {D(IKE)} --> charon
    rmobike_gw1.control("terminate", name="site")
    wait_for_teardown(rmobike_gw1)


def test_charon_initiator_certs(interop_lab: Topology, rmobike_gw2: InteropPair, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, {"gw1": "ed25519", "gw2": "rsa"})
    tunnel = Tunnel(suite=GCM, auth="pubkey", pki=pki)
    rmobike_gw2.start_rmobiked(tunnel)
    charon = rmobike_gw2.start_charon(tunnel)

    # charon --> IKE_AUTH {IDi, CERT, CERTREQ, AUTH(DIGITAL_SIGNATURE, Ed25519)} --> rmobiked
    #        <-- IKE_AUTH {IDr, CERT, AUTH(DIGITAL_SIGNATURE, RSASSA-PSS SHA-256)} <--
    charon.initiate("lan", ike="site")
    view = wait_for_tunnel(rmobike_gw2)
    assert spi_mismatches(view) == []
    assert kernel_matches(rmobike_gw2, view) == []
    assert_traffic_encrypted(interop_lab)

    log = charon.log_text()
    assert "authentication of 'gw1.example.net' (myself) with ED25519 successful" in log
    assert "authentication of 'gw2.example.net' with RSA_EMSA_PSS_SHA2_256_SALT_32 successful" in log

    # The initiator deletes: charon --> INFORMATIONAL {D(IKE)} --> rmobiked
    charon.terminate("site")
    wait_for_teardown(rmobike_gw2)


def test_ed25519_and_rsa_pss(interop_lab: Topology, rmobike_gw1: InteropPair, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, {"gw1": "ed25519", "gw2": "rsa"})
    # rsa_pss makes charon sign with RSASSA-PSS instead of PKCS#1 v1.5.
    tunnel = Tunnel(suite=GCM, auth="pubkey", pki=pki, charon_options="  rsa_pss = yes")
    charon = rmobike_gw1.start_charon(tunnel)
    rmobike_gw1.start_rmobiked(tunnel, start_action="start")

    # rmobiked --> IKE_AUTH {IDi, CERT, AUTH(DIGITAL_SIGNATURE, Ed25519)} --> charon
    #          <-- IKE_AUTH {IDr, CERT, AUTH(DIGITAL_SIGNATURE, RSASSA-PSS)} <--
    view = wait_for_tunnel(rmobike_gw1)
    assert spi_mismatches(view) == []
    assert kernel_matches(rmobike_gw1, view) == []

    log = charon.log_text()
    assert "authentication of 'gw1.example.net' with ED25519 successful" in log
    assert "(myself) with RSA_EMSA_PSS_SHA2_256_SALT_32 successful" in log
