"""Two IKE peers in one process: IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL.

Each step names the message in RFC 7296 notation. "left" initiates and "right" responds, unless
a test states otherwise.
"""

import logging
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agent.ike import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaReady,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    Identity,
    Mode,
)
from agent.ike.constants import ExchangeType, NotifyType
from agent.ike.sa import IkeSaState

from .ike_network import (
    LEFT,
    RIGHT,
    Network,
    cert_pair,
    child_pair,
    connect,
    make_endpoint,
    make_pki,
    psk_pair,
)


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


def assert_child_pair(a, b):
    """Check that two ChildSaInfo describe the two ends of one CHILD_SA."""
    assert a.spi_in == b.spi_out
    assert a.spi_out == b.spi_in
    assert a.encr_key_in == b.encr_key_out
    assert a.encr_key_out == b.encr_key_in
    assert a.integ_key_in == b.integ_key_out
    assert a.integ_key_out == b.integ_key_in
    assert a.encr_key_in != a.encr_key_out
    assert a.local_ts == b.remote_ts
    assert a.remote_ts == b.local_ts
    assert a.algorithms == b.algorithms
    assert a.mode == b.mode
    assert a.reqid >= 1
    assert b.reqid >= 1


def established(left_config, right_config, **connect_options):
    """Set up an IKE SA with its first CHILD_SA; return (network, left, right, left id, right id, events)."""
    network, left, right, left_id = connect(left_config, right_config, **connect_options)
    network.run()
    left_events, right_events = left.events(), right.events()
    assert of_type(left_events, IkeSaEstablished), left_events
    assert of_type(right_events, IkeSaEstablished), right_events
    right_id = of_type(right_events, IkeSaEstablished)[0].ike_sa
    return network, left, right, left_id, right_id, (left_events, right_events)


def only_child(endpoint, ike_sa):
    children = list(endpoint.ike_sa(ike_sa).children.values())
    assert len(children) == 1, children
    return children[0]


# --- IKE_SA_INIT and IKE_AUTH -------------------------------------------------------------------


def test_psk_setup():
    network, left, right, left_id = connect(*psk_pair())

    # HDR, SAi1, KEi, Ni, N(NAT_DETECTION_*), N(IKEV2_FRAGMENTATION_SUPPORTED)  -->
    init_request, = network.take()
    assert (init_request.exchange_type, init_request.is_response) == (ExchangeType.IKE_SA_INIT, False)
    network.deliver([init_request])

    #   <--  HDR, SAr1, KEr, Nr, N(NAT_DETECTION_*), N(IKEV2_FRAGMENTATION_SUPPORTED)
    init_response, = network.take()
    assert init_response.is_response
    network.deliver([init_response])

    # HDR, SK {IDi, N(INITIAL_CONTACT), IDr, AUTH, N(MOBIKE_SUPPORTED), SAi2, TSi, TSr}  -->
    auth_request, = network.take()
    assert auth_request.exchange_type == ExchangeType.IKE_AUTH
    assert auth_request.source == (LEFT[0], 4500)  # moved to the NAT-T port for MOBIKE
    network.deliver([auth_request])

    #   <--  HDR, SK {IDr, AUTH, N(MOBIKE_SUPPORTED), SAr2, TSi, TSr}
    auth_response, = network.take()
    assert auth_response.source == (RIGHT[0], 4500)
    network.deliver([auth_response])

    left_events, right_events = left.events(), right.events()
    left_sa, = of_type(left_events, IkeSaEstablished)
    right_sa, = of_type(right_events, IkeSaEstablished)
    assert (left_sa.spi_i, left_sa.spi_r) == (right_sa.spi_i, right_sa.spi_r)
    assert left_sa.initiator
    assert not right_sa.initiator
    assert (left_sa.remote_id, right_sa.remote_id) == ("right.example", "left.example")
    assert left_sa.mobike
    assert right_sa.mobike
    assert right_sa.peer_accepts_switch  # the initiator set flag 0x01 in MOBIKE_SUPPORTED
    assert left_sa.fragmentation
    assert right_sa.fragmentation
    assert not (left_sa.local_behind_nat or left_sa.remote_behind_nat)

    left_child, = of_type(left_events, ChildSaReady)
    right_child, = of_type(right_events, ChildSaReady)
    assert_child_pair(left_child.child, right_child.child)
    assert left_child.child.algorithms.aead[0] == "rfc4106(gcm(aes))"
    assert left_child.child.mode == Mode.TUNNEL
    assert not left_child.child.udp_encap
    assert (left_child.child.local_port, left_child.child.remote_port) == (4500, 4500)
    assert left.ike_sa(left_id).setup is None  # scratch state dropped once established


def test_psk_setup_without_mobike_stays_on_port_500():
    left_config, right_config = psk_pair({"mobike": False}, {"mobike": False})
    network, left, right, left_id, _, (left_events, _) = established(left_config, right_config)
    sa, = of_type(left_events, IkeSaEstablished)
    assert not sa.mobike
    assert sa.local == LEFT


def test_switch_flag_off():
    left_config, right_config = psk_pair({"accept_switch": False})
    *_, (_, right_events) = established(left_config, right_config)
    assert not of_type(right_events, IkeSaEstablished)[0].peer_accepts_switch


@pytest.mark.parametrize(
    "key_factory",
    [None, lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), ed25519.Ed25519PrivateKey.generate],
    ids=["ecdsa", "rsa-pss", "ed25519"],
)
def test_certificate_setup(key_factory):
    pki = make_pki(key_factory=key_factory)
    *_, (left_events, right_events) = established(*cert_pair(pki))
    assert of_type(left_events, IkeSaEstablished)[0].remote_id == "right.example"
    assert_child_pair(of_type(left_events, ChildSaReady)[0].child, of_type(right_events, ChildSaReady)[0].child)


def test_certificate_any_identity_from_ca():
    pki = make_pki()
    left_config, right_config = cert_pair(pki)
    right_config = replace(right_config, remote_id=None)
    *_, (_, right_events) = established(left_config, right_config)
    assert of_type(right_events, IkeSaEstablished)[0].remote_id == "left.example"


def test_certificate_from_other_ca_rejected():
    left_config, _ = cert_pair(make_pki())
    _, right_config = cert_pair(make_pki())
    network, left, right, _ = connect(left_config, right_config)
    network.run()
    failed, = of_type(right.events(), IkeSaFailed)
    assert failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert of_type(left.events(), IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_certificate_identity_mismatch_rejected():
    pki = make_pki(hosts=("left.example", "right.example", "other.example"))
    left_config, right_config = cert_pair(pki)
    # The responder proves "other.example" while the initiator asked for right.example.
    right_config = replace(right_config, local_id=left_config.remote_id, certificate=pki.certs["other.example"],
                           private_key=pki.keys["other.example"])
    network, left, right, _ = connect(left_config, right_config)
    network.run()
    assert of_type(left.events(), IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    # RFC 7296 §2.21.2: the initiator reports the failure in an INFORMATIONAL exchange.
    assert of_type(right.events(), IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_cookie_when_busy():
    left_config, right_config = psk_pair()
    network, left, right, _ = connect(left_config, right_config, right_settings={"half_open_limit": 0})

    # HDR, SAi1, KEi, Ni  -->
    network.deliver(network.take())
    #   <--  HDR, N(COOKIE)
    cookie_answer, = network.take()
    assert cookie_answer.is_response
    assert len(cookie_answer.ike) < 100
    assert right.stats["cookies_sent"] == 1
    assert not right.ike_sas  # no state kept for a cookie response
    network.deliver([cookie_answer])

    # HDR, N(COOKIE), SAi1, KEi, Ni  -->
    retry, = network.take()
    assert retry.message_id == 0
    assert retry.ike[16] == 41  # the first payload is the notify carrying the COOKIE
    network.deliver([retry])
    network.run()
    assert of_type(right.events(), IkeSaEstablished)
    assert right.stats["cookies_sent"] == 1


def test_invalid_ke_payload_retry():
    left_config, right_config = psk_pair(
        {"proposals": ("aes256gcm16-prfsha256-x25519-ecp256",)}, {"proposals": ("aes256gcm16-prfsha256-ecp256",)}
    )
    network, left, right, _ = connect(left_config, right_config)

    # HDR, SAi1, KEi(Curve25519), Ni  -->
    network.deliver(network.take())
    #   <--  HDR, N(INVALID_KE_PAYLOAD, 19)
    answer, = network.take()
    network.deliver([answer])
    # HDR, SAi1, KEi(ECP-256), Ni  -->
    network.run()
    assert of_type(left.events(), IkeSaEstablished)
    assert right.stats["init_rejected"] == 1  # the first request got a stateless response


def test_no_proposal_chosen():
    left_config, right_config = psk_pair({"proposals": ("aes128-sha256-modp2048",)}, {"proposals": ("aes256gcm16-prfsha384-x25519",)})
    network, left, right, _ = connect(left_config, right_config)
    network.run()
    failed, = of_type(left.events(), IkeSaFailed)
    assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert not right.ike_sas


def test_wrong_psk():
    left_config, right_config = psk_pair(right_options={"psk": b"another secret"})
    network, left, right, _ = connect(left_config, right_config)
    network.run()
    # HDR, SK {IDi, AUTH, ...}  -->  <--  HDR, SK {N(AUTHENTICATION_FAILED)}
    assert of_type(left.events(), IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert of_type(right.events(), IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert not left.ike_sas
    assert not right.ike_sas


def test_unknown_identity_rejected():
    left_config, right_config = psk_pair()
    right_config = replace(right_config, remote_id=Identity.from_string("@stranger"))
    network, left, right, _ = connect(left_config, right_config)
    network.run()
    assert of_type(left.events(), IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_ts_unacceptable_keeps_ike_sa():
    left_child, _ = child_pair(left_net="10.1.0.0/16", right_net="10.2.0.0/16")
    _, right_child = child_pair(left_net="172.16.0.0/16", right_net="172.17.0.0/16")
    left_config, right_config = psk_pair(children=(left_child, right_child))
    network, left, right, left_id = connect(left_config, right_config)
    network.run()
    left_events = left.events()
    assert of_type(left_events, IkeSaEstablished)
    assert of_type(left_events, ChildSaFailed)[0].notify == NotifyType.TS_UNACCEPTABLE
    assert not left.ike_sa(left_id).children


def test_ts_narrowed_by_responder():
    left_child, _ = child_pair(left_net="10.1.0.0/16", right_net="10.0.0.0/8")
    _, right_child = child_pair(left_net="10.1.0.0/16", right_net="10.2.0.0/16")
    *_, (left_events, _) = established(*psk_pair(children=(left_child, right_child)))
    child = of_type(left_events, ChildSaReady)[0].child
    assert [str(ts) for ts in child.remote_ts] == ["10.2.0.0-10.2.255.255"]


def test_esp_no_proposal_chosen_keeps_ike_sa():
    left_child, _ = child_pair(esp_proposals=("aes128-sha256",))
    _, right_child = child_pair(esp_proposals=("aes256gcm16",))
    network, left, right, _ = connect(*psk_pair(children=(left_child, right_child)))
    network.run()
    left_events = left.events()
    assert of_type(left_events, IkeSaEstablished)
    assert of_type(left_events, ChildSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_transport_mode():
    children = child_pair(mode=Mode.TRANSPORT)
    *_, (left_events, right_events) = established(*psk_pair(children=children))
    assert of_type(left_events, ChildSaReady)[0].child.mode == Mode.TRANSPORT
    assert of_type(right_events, ChildSaReady)[0].child.mode == Mode.TRANSPORT


def test_transport_mode_refused_by_tunnel_responder():
    left_child, _ = child_pair(mode=Mode.TRANSPORT)
    _, right_child = child_pair()
    *_, (left_events, _) = established(*psk_pair(children=(left_child, right_child)))
    assert of_type(left_events, ChildSaReady)[0].child.mode == Mode.TUNNEL


def test_cbc_and_esn_proposals():
    children = child_pair(esp_proposals=("aes256-sha512-esn",))
    options = {"proposals": ("aes256-sha384-prfsha384-ecp384",)}
    *_, (left_events, right_events) = established(*psk_pair(options, dict(options), children=children))
    child = of_type(left_events, ChildSaReady)[0].child
    assert child.algorithms.enc == ("cbc(aes)", 256)
    assert child.algorithms.auth == ("hmac(sha512)", 512, 256)
    assert child.esn
    assert_child_pair(child, of_type(right_events, ChildSaReady)[0].child)


def test_nat_detected():
    left_config, right_config = psk_pair({"mobike": False}, {"mobike": False})
    network = Network()
    inner = ("10.0.0.2", 500)
    network.nat[inner] = ("203.0.113.7", 1024)
    network.nat[("10.0.0.2", 4500)] = ("203.0.113.7", 1025)
    left = network.add("10.0.0.2", make_endpoint())
    right = network.add(RIGHT[0], make_endpoint([right_config], seed=9))
    left.initiate(left_config, inner, RIGHT, 0.0)
    network.run()
    left_sa, = of_type(left.events(), IkeSaEstablished)
    right_events = right.events()
    right_sa, = of_type(right_events, IkeSaEstablished)
    assert left_sa.local_behind_nat
    assert not left_sa.remote_behind_nat
    assert right_sa.remote_behind_nat
    assert not right_sa.local_behind_nat
    assert left_sa.local == ("10.0.0.2", 4500)
    child = of_type(right_events, ChildSaReady)[0].child
    assert child.udp_encap
    assert (child.remote_addr, child.remote_port) == ("203.0.113.7", 1025)


def test_fragmentation_of_ike_auth():
    pki = make_pki(key_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072))
    options = {"fragment_size": 600}
    network, left, right, _ = connect(*cert_pair(pki, options, dict(options)))
    network.step(2)  # IKE_SA_INIT request and response
    auth_fragments = network.take()
    assert len(auth_fragments) > 2
    assert all(len(packet.ike) <= 600 for packet in auth_fragments)
    # Lose one fragment: the responder waits, the initiator retransmits them all.
    network.deliver(auth_fragments[:1] + auth_fragments[2:])
    assert not network.take()
    network.advance(5)
    assert of_type(left.events(), IkeSaEstablished)
    assert of_type(right.events(), IkeSaEstablished)
    assert left.stats["retransmitted_requests"] == 1


def test_no_fragmentation_when_peer_lacks_support():
    pki = make_pki(key_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072))
    network, left, right, _ = connect(*cert_pair(pki, {"fragment_size": 600}, {"fragmentation": False}))
    network.step(2)
    auth_request, = network.take()
    assert len(auth_request.ike) > 600


# --- retransmission, duplicates, loss ---------------------------------------------------------


def test_lost_request_retransmitted():
    network, left, right, _ = connect(*psk_pair())
    network.take()  # HDR, SAi1, KEi, Ni  -->  (lost)
    assert left.next_timer() == pytest.approx(4.0)
    network.advance(4.0)
    assert of_type(left.events(), IkeSaEstablished)
    assert left.stats["retransmitted_requests"] == 1


def test_duplicate_request_answered_from_cache():
    network, left, right, _ = connect(*psk_pair())
    network.step(2)
    auth_request, = network.take()
    # HDR, SK {IDi, AUTH, ...}  -->  twice
    network.deliver([auth_request, auth_request])
    first, second = network.take()
    assert first.data == second.data  # the cached response, byte for byte
    assert right.stats["retransmitted_responses"] == 1
    network.deliver([first, second])
    assert len(of_type(left.events(), IkeSaEstablished)) == 1
    assert left.stats["dropped_message_id"] == 1  # the second copy matches no outstanding request


def test_reordered_responses_and_requests():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    child = only_child(left, left_id)
    left.check_liveness(left_id, network.now)
    right.check_liveness(right_id, network.now)
    packets = network.take()
    network.deliver(list(reversed(packets)))
    network.run()
    assert left.stats["dropped_message_id"] == 0
    assert only_child(left, left_id) is child


def test_retransmission_schedule_and_exhaustion():
    network, left, right, left_id = connect(*psk_pair({"retransmit_tries": 3, "retransmit_timeout": 2.0,
                                                        "retransmit_base": 2.0}))
    times = []
    for _ in range(4):
        network.take()  # everything is lost
        times.append(left.next_timer())
        network.now = left.next_timer()
        left.handle_timer(network.now)
    assert times == [2.0, 6.0, 14.0, 30.0]  # 2, then 2*2, 2*4, 2*8 seconds later
    failed, = of_type(left.events(), IkeSaFailed)
    assert "3 retransmissions" in failed.reason
    assert not left.ike_sas


def test_integrity_failure_dropped_silently():
    network, left, right, _ = connect(*psk_pair())
    network.step(2)
    auth_request, = network.take()
    corrupted = bytearray(auth_request.data)
    corrupted[-1] ^= 0x55
    network.deliver([type(auth_request)(bytes(corrupted), auth_request.source, auth_request.destination)])
    assert not network.take()  # no response at all
    assert right.stats["dropped_integrity"] == 1
    network.advance(5)  # the retransmission gets through
    assert of_type(right.events(), IkeSaEstablished)


def test_unknown_spi_dropped():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    left.check_liveness(left_id, network.now)
    request, = network.take()
    data = bytearray(request.data)
    data[4 + 8] ^= 0xFF  # SPIr
    network.deliver([type(request)(bytes(data), request.source, request.destination)])
    assert right.stats["dropped_unknown_spi"] == 1
    assert not network.take()


def test_half_open_expires():
    network, left, right, _ = connect(*psk_pair(), right_settings={"half_open_timeout": 10.0})
    network.deliver(network.take())
    network.take()  # the IKE_SA_INIT response is lost, and the initiator gives up too
    assert len(right.ike_sas) == 1
    network.now = 10.0
    right.handle_timer(10.0)
    assert not right.ike_sas
    assert right.stats["half_open_expired"] == 1


def test_initial_contact_replaces_old_sa():
    left_config, right_config = psk_pair()
    network, left, right, _, right_id, _ = established(left_config, right_config)
    # The initiator restarts, loses its state and connects again with INITIAL_CONTACT.
    restarted = network.add(LEFT[0], make_endpoint(seed=77))
    restarted.initiate(left_config, LEFT, RIGHT, network.now)
    network.run()
    events = right.events()
    assert IkeSaDeleted(right_id, "gw", by_peer=True) in events
    assert of_type(events, ChildSaDeleted)
    assert len(right.ike_sas) == 1


# --- CREATE_CHILD_SA -----------------------------------------------------------------------------


def test_create_second_child():
    second_left, second_right = child_pair("second", left_net="10.3.0.0/16", right_net="10.4.0.0/16")
    left_config, right_config = psk_pair()
    left_config = replace(left_config, children=left_config.children + (second_left,))
    right_config = replace(right_config, children=right_config.children + (second_right,))
    network, left, right, left_id, right_id, (left_events, right_events) = established(left_config, right_config)
    # HDR, SK {SA, Ni, TSi, TSr}  -->  <--  HDR, SK {SA, Nr, TSi, TSr}  (queued after IKE_AUTH)
    left_ready = {e.child.name: e.child for e in of_type(left_events, ChildSaReady)}
    right_ready = {e.child.name: e.child for e in of_type(right_events, ChildSaReady)}
    assert set(left_ready) == {"net", "second"}
    assert_child_pair(left_ready["second"], right_ready["second"])
    assert left_ready["second"].reqid != left_ready["net"].reqid


def test_create_child_command_with_pfs(caplog):
    extra_left, extra_right = child_pair("pfs", left_net="10.5.0.0/16", right_net="10.6.0.0/16",
                                         esp_proposals=("aes256gcm16-x25519",))
    left_config, right_config = psk_pair()
    right_config = replace(right_config, children=right_config.children + (extra_right,))
    network, left, right, left_id, right_id, _ = established(left_config, right_config)
    caplog.set_level(logging.DEBUG, logger="agent.ike.sa")
    left.create_child(left_id, extra_left, network.now)
    network.run()
    requests = [r.message for r in caplog.records if "sending CREATE_CHILD_SA request" in r.message]
    assert requests
    assert "KE(group 31)" in requests[0]
    left_child = of_type(left.events(), ChildSaReady)[0].child
    right_child = of_type(right.events(), ChildSaReady)[0].child
    assert_child_pair(left_child, right_child)


def test_create_child_unknown_selectors():
    extra_left, _ = child_pair("other", left_net="10.7.0.0/16", right_net="10.8.0.0/16")
    network, left, right, left_id, _, _ = established(*psk_pair())
    left.create_child(left_id, extra_left, network.now)
    network.run()
    assert of_type(left.events(), ChildSaFailed)[0].notify == NotifyType.TS_UNACCEPTABLE


def test_create_child_invalid_ke_retry():
    extra_left, extra_right = child_pair("pfs", left_net="10.5.0.0/16", right_net="10.6.0.0/16",
                                         esp_proposals=("aes256gcm16-x25519-ecp256",))
    extra_right = replace(extra_right, esp_proposals=("aes256gcm16-ecp256",))
    left_config, right_config = psk_pair()
    right_config = replace(right_config, children=right_config.children + (extra_right,))
    network, left, right, left_id, _, _ = established(left_config, right_config)
    left.create_child(left_id, extra_left, network.now)
    # HDR, SK {SA, Ni, KEi(25519), TSi, TSr}  -->  <--  HDR, SK {N(INVALID_KE_PAYLOAD, 19)}
    # HDR, SK {SA, Ni, KEi(ECP-256), TSi, TSr}  -->  <--  HDR, SK {SA, Nr, KEr, TSi, TSr}
    network.run()
    assert of_type(left.events(), ChildSaReady)
    assert of_type(right.events(), ChildSaReady)


@pytest.mark.parametrize("pfs", [False, True], ids=["no-pfs", "pfs"])
@pytest.mark.parametrize("rekeying_side", ["initiator", "responder"])
def test_child_rekey(pfs, rekeying_side):
    esp = ("aes256gcm16-x25519",) if pfs else ("aes256gcm16",)
    network, left, right, left_id, right_id, (left_events, _) = established(*psk_pair(children=child_pair(esp_proposals=esp)))
    old = of_type(left_events, ChildSaReady)[0].child
    rekeyer, rekeyer_id, other, other_id = (left, left_id, right, right_id) if rekeying_side == "initiator" else (
        right, right_id, left, left_id)
    old_spi = only_child(rekeyer, rekeyer_id).spi_in

    # HDR, SK {N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr}  -->  <--  HDR, SK {SA, Nr, [KEr,] TSi, TSr}
    # HDR, SK {D(ESP, old SPI)}  -->  <--  HDR, SK {D(ESP, old SPI)}
    rekeyer.rekey_child(rekeyer_id, old_spi, network.now)
    network.run()
    rekeyer_events, other_events = rekeyer.events(), other.events()
    new_a, = of_type(rekeyer_events, ChildSaRekeyed)
    new_b, = of_type(other_events, ChildSaRekeyed)
    assert_child_pair(new_a.new, new_b.new)
    assert new_a.new.reqid == only_child(rekeyer, rekeyer_id).reqid
    assert new_a.old_spi_in == old_spi
    assert of_type(rekeyer_events, ChildSaDeleted)[0].spi_in == old_spi
    assert of_type(other_events, ChildSaDeleted)[0].spi_out == old_spi
    assert only_child(rekeyer, rekeyer_id).spi_in == new_a.new.spi_in
    assert only_child(other, other_id).spi_in == new_b.new.spi_in
    assert new_a.new.encr_key_out not in (old.encr_key_out, old.encr_key_in)


def test_child_rekey_collision():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    left_spi = only_child(left, left_id).spi_in
    right_spi = only_child(right, right_id).spi_in
    # Both sides send HDR, SK {N(REKEY_SA), SA, Ni, TSi, TSr} before seeing the other's request.
    left.rekey_child(left_id, left_spi, network.now)
    right.rekey_child(right_id, right_spi, network.now)
    network.run()
    left_events, right_events = left.events(), right.events()
    # RFC 7296 §2.8.1: two new CHILD_SAs come up. Its creator deletes the one with the lowest
    # nonce, and the creator of the survivor deletes the old one. One CHILD_SA remains per side.
    assert len(of_type(left_events, ChildSaRekeyed)) == 2
    left_child, right_child = only_child(left, left_id), only_child(right, right_id)
    assert left_child.spi_in == right_child.spi_out
    assert left_child.spi_out == right_child.spi_in
    assert left_spi not in left.ike_sa(left_id).children
    assert len(of_type(left_events, ChildSaDeleted)) == 2
    assert len(of_type(right_events, ChildSaDeleted)) == 2


def test_child_rekey_collision_reordered():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    left.rekey_child(left_id, only_child(left, left_id).spi_in, network.now)
    right.rekey_child(right_id, only_child(right, right_id).spi_in, network.now)
    requests = network.take()
    network.deliver([p for p in requests if p.destination[0] == RIGHT[0]])
    # Left's request reaches right first; right's answer overtakes right's own request.
    answer, = network.take()
    network.deliver([answer])
    network.deliver([p for p in requests if p.destination[0] == LEFT[0]])
    network.run()
    left_child, right_child = only_child(left, left_id), only_child(right, right_id)
    assert left_child.spi_in == right_child.spi_out
    assert left_child.spi_out == right_child.spi_in


def test_child_rekey_temporary_failure_during_ike_rekey():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    right.rekey_ike(right_id, network.now)
    left.rekey_child(left_id, only_child(left, left_id).spi_in, network.now)
    network.flush()
    # Right answers left's CHILD_SA rekey with TEMPORARY_FAILURE while its IKE rekey runs;
    # left retries on the new IKE SA after a delay.
    assert right.stats["error_responses"] == 1
    network.advance(10)
    rekeyed = of_type(left.events(), IkeSaRekeyed)
    assert rekeyed
    new_left = rekeyed[0].new
    left_child = only_child(left, new_left)
    right_new = of_type(right.events(), IkeSaRekeyed)[0].new
    assert left_child.spi_in == only_child(right, right_new).spi_out


@pytest.mark.parametrize("rekeying_side", ["initiator", "responder"])
def test_ike_rekey(rekeying_side):
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    child = only_child(left, left_id)
    old_spis = (left.ike_sa(left_id).spi_i, left.ike_sa(left_id).spi_r)
    rekeyer, rekeyer_id = (left, left_id) if rekeying_side == "initiator" else (right, right_id)

    # HDR, SK {SA, Ni, KEi}  -->  <--  HDR, SK {SA, Nr, KEr}
    # HDR, SK {D(IKE)}  -->  <--  HDR, SK {}   (on the old IKE SA)
    rekeyer.rekey_ike(rekeyer_id, network.now)
    network.run()
    left_events, right_events = left.events(), right.events()
    left_rekeyed, = of_type(left_events, IkeSaRekeyed)
    right_rekeyed, = of_type(right_events, IkeSaRekeyed)
    assert (left_rekeyed.spi_i, left_rekeyed.spi_r) == (right_rekeyed.spi_i, right_rekeyed.spi_r)
    assert (left_rekeyed.spi_i, left_rekeyed.spi_r) != old_spis
    assert of_type(left_events, IkeSaDeleted) and of_type(right_events, IkeSaDeleted)
    assert not of_type(left_events, ChildSaDeleted)  # the CHILD_SA moved, it was not deleted
    assert only_child(left, left_rekeyed.new) is child
    new_sa = left.ike_sa(left_rekeyed.new)
    assert new_sa.initiator == (rekeying_side == "initiator")  # RFC 7296 §2.18
    assert len(left.ike_sas) == 1
    assert len(right.ike_sas) == 1

    # The new IKE SA works: rekey the CHILD_SA over it.
    left.rekey_child(left_rekeyed.new, child.spi_in, network.now)
    network.run()
    assert of_type(left.events(), ChildSaRekeyed)


def test_ike_rekey_collision():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    # Both send HDR, SK {SA, Ni, KEi} at once (RFC 7296 §2.8.2).
    left.rekey_ike(left_id, network.now)
    right.rekey_ike(right_id, network.now)
    network.run()
    assert len(left.ike_sas) == 1
    assert len(right.ike_sas) == 1
    left_sa, right_sa = left.ike_sas[0], right.ike_sas[0]
    assert (left_sa.spi_i, left_sa.spi_r) == (right_sa.spi_i, right_sa.spi_r)
    assert left_sa.state == right_sa.state == IkeSaState.ESTABLISHED
    left_child = only_child(left, left_sa.unique_id)
    assert left_child.spi_in == only_child(right, right_sa.unique_id).spi_out
    # The survivor carries traffic: a liveness check gets through.
    left.check_liveness(left_sa.unique_id, network.now)
    network.run()
    assert not of_type(left.events(), IkeSaFailed)


def assert_one_ike_sa_each(left, right):
    """Check that both sides kept the same single IKE SA, with the same CHILD_SA."""
    assert len(left.ike_sas) == 1, left.ike_sas
    assert len(right.ike_sas) == 1, right.ike_sas
    left_sa, right_sa = left.ike_sas[0], right.ike_sas[0]
    assert (left_sa.spi_i, left_sa.spi_r) == (right_sa.spi_i, right_sa.spi_r)
    assert left_sa.state == right_sa.state == IkeSaState.ESTABLISHED
    left_child, right_child = only_child(left, left_sa.unique_id), only_child(right, right_sa.unique_id)
    assert (left_child.spi_in, left_child.spi_out) == (right_child.spi_out, right_child.spi_in)


def test_ike_rekey_collision_response_lost():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    # Both send HDR, SK {SA, Ni, KEi} on the old IKE SA, and both respond with HDR, SK {SA, Nr, KEr}.
    left.rekey_ike(left_id, network.now)
    right.rekey_ike(right_id, network.now)
    network.step()
    # The four nonces decide whose new IKE SA survives (RFC 7296 §2.8.2).
    left_old, right_old = left.ike_sa(left_id), right.ike_sa(right_id)
    left_nonces = (left_old.active.nonce, right_old.peer_rekey[1])
    right_nonces = (right_old.active.nonce, left_old.peer_rekey[1])
    winner, loser = (left, right) if min(right_nonces) < min(left_nonces) else (right, left)
    # The winner's response to the loser's request is lost. The winner processes the loser's
    # response, keeps its own new IKE SA and sends HDR, SK {D(IKE)} on the old one. The loser
    # receives that Delete before its response, so it drops its own rekey request (RFC 7296
    # §2.25.2). It never deletes the redundant IKE SA that its request created on the winner.
    winner_host = LEFT[0] if winner is left else RIGHT[0]
    network.deliver([p for p in network.take() if p.destination[0] == winner_host])
    network.run(300)
    # The winner deletes that IKE SA itself once the old one is gone. The loser has no such
    # IKE SA and drops the Delete, so the winner closes it when its retransmissions run out.
    assert_one_ike_sa_each(left, right)
    assert len(of_type(winner.events(), IkeSaDeleted)) == 2
    assert len(of_type(loser.events(), IkeSaDeleted)) == 1


def test_ike_rekey_collision_pending_sa_rekeyed():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    # Both send HDR, SK {SA, Ni, KEi} on the old IKE SA; right's request is lost.
    left.rekey_ike(left_id, network.now)
    right.rekey_ike(right_id, network.now)
    network.deliver([p for p in network.take() if p.destination[0] == RIGHT[0]])
    # Right responds with HDR, SK {SA, Nr, KEr}. Its own rekey is still under way, so the collision is
    # pending and the CHILD_SA stays on the old IKE SA until it resolves.
    pending, = [sa for sa in right.ike_sas if sa.unique_id != right_id]
    assert not pending.children
    # Right rekeys the pending IKE SA: HDR, SK {SA, Ni, KEi} on it.
    right.rekey_ike(pending.unique_id, network.now)
    # Left processes right's response, replaces the old IKE SA and sends HDR, SK {D(IKE)} on
    # it. It responds to the rekey of the pending one with HDR, SK {SA, Nr, KEr}.
    network.step()
    # The Delete is lost; right completes its rekey of the pending IKE SA first.
    network.deliver([p for p in network.take() if p.exchange_type != ExchangeType.INFORMATIONAL])
    # Left's retransmitted Delete (or left's TEMPORARY_FAILURE to right's retransmitted
    # rekey of the old IKE SA) resolves the collision: the CHILD_SA moves to the IKE SA that
    # replaced the pending one.
    network.run(300)
    assert_one_ike_sa_each(left, right)
    assert not of_type(right.events(), ChildSaDeleted)


def test_ike_rekey_timer():
    left_config, right_config = psk_pair({"rekey_time": 100.0})
    network, left, right, left_id, right_id, _ = established(left_config, right_config)
    network.advance(101)
    assert of_type(left.events(), IkeSaRekeyed)


def test_child_rekey_timer():
    children = child_pair(rekey_time=50.0)
    network, left, right, left_id, right_id, _ = established(*psk_pair(children=children))
    network.advance(51)
    assert of_type(left.events(), ChildSaRekeyed) or of_type(right.events(), ChildSaRekeyed)
    assert only_child(left, left_id).spi_in == only_child(right, right_id).spi_out


# --- INFORMATIONAL ------------------------------------------------------------------------------


def test_delete_child():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    spi = only_child(left, left_id).spi_in
    # HDR, SK {D(ESP, SPI)}  -->  <--  HDR, SK {D(ESP, SPI)}
    left.delete_child(left_id, spi, network.now)
    network.run()
    left_deleted, = of_type(left.events(), ChildSaDeleted)
    right_deleted, = of_type(right.events(), ChildSaDeleted)
    assert left_deleted.spi_in == right_deleted.spi_out == spi
    assert not left.ike_sa(left_id).children
    assert not right.ike_sa(right_id).children


def test_delete_child_simultaneous():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    left.delete_child(left_id, only_child(left, left_id).spi_in, network.now)
    right.delete_child(right_id, only_child(right, right_id).spi_in, network.now)
    network.run()
    assert len(of_type(left.events(), ChildSaDeleted)) == 1
    assert len(of_type(right.events(), ChildSaDeleted)) == 1
    assert not left.ike_sa(left_id).children


def test_delete_child_during_ike_rekey():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    spi = only_child(left, left_id).spi_in
    # Left sends HDR, SK {D(ESP, SPI)} while right sends HDR, SK {SA, Ni, KEi} for the IKE SA.
    left.delete_child(left_id, spi, network.now)
    right.rekey_ike(right_id, network.now)
    requests = network.take()
    delete, = [p for p in requests if p.destination[0] == RIGHT[0]]
    # Left's Delete is delayed. Left responds to the rekey with HDR, SK {SA, Nr, KEr}, so right
    # moves the CHILD_SA to the new IKE SA and sends HDR, SK {D(IKE)} on the old one.
    network.deliver([p for p in requests if p is not delete])
    network.step()
    # The CHILD_SA Delete arrives on the old IKE SA (RFC 7296 §1.4: control messages for a
    # CHILD_SA go on the IKE SA that created it or its successor). Right must delete the
    # CHILD_SA, now on the new IKE SA, and respond with HDR, SK {D(ESP, SPI)}.
    network.deliver([delete])
    # Left receives that response before right's Delete of the old IKE SA.
    delete_ike, delete_response = network.take()
    assert delete_response.is_response
    network.deliver([delete_response, delete_ike])
    network.run()
    right_deleted, = of_type(right.events(), ChildSaDeleted)
    assert right_deleted.spi_out == spi
    assert len(right.ike_sas) == 1
    assert not right.ike_sas[0].children
    assert len(left.ike_sas) == 1
    assert not left.ike_sas[0].children


@pytest.mark.parametrize("deleting_side", ["initiator", "responder"])
def test_delete_ike(deleting_side):
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    deleter, deleter_id, other = (left, left_id, right) if deleting_side == "initiator" else (right, right_id, left)
    # HDR, SK {D(IKE)}  -->  <--  HDR, SK {}
    deleter.delete_ike(deleter_id, network.now)
    network.run()
    deleter_events, other_events = deleter.events(), other.events()
    assert of_type(deleter_events, IkeSaDeleted)[0].by_peer is False
    assert of_type(other_events, IkeSaDeleted)[0].by_peer is True
    assert of_type(deleter_events, ChildSaDeleted) and of_type(other_events, ChildSaDeleted)
    assert not left.ike_sas
    assert not right.ike_sas


def test_delete_ike_queued_during_peer_rekey():
    network, left, right, left_id, right_id, _ = established(*psk_pair())
    # Left runs a liveness check, HDR, SK {}, and queues the Delete of the IKE SA behind it.
    left.check_liveness(left_id, network.now)
    left.delete_ike(left_id, network.now)
    # Right rekeys the IKE SA: HDR, SK {SA, Ni, KEi}.
    right.rekey_ike(right_id, network.now)
    network.step()
    # Left responds with HDR, SK {SA, Nr, KEr}, so the CHILD_SA moves to left's new IKE SA.
    # That response is lost. The Delete that left was asked for must follow the CHILD_SA to the
    # new IKE SA. Sent on the old one, it would make right drop its rekey (RFC 7296 §2.25.2)
    # and leave the new IKE SA with the CHILD_SA on left only.
    packets = network.take()
    rekey_response, = [p for p in packets if p.exchange_type == ExchangeType.CREATE_CHILD_SA]
    network.deliver([p for p in packets if p is not rekey_response])
    network.run(300)
    assert not left.ike_sas
    assert not right.ike_sas
    assert of_type(left.events(), ChildSaDeleted)
    assert of_type(right.events(), ChildSaDeleted)


def test_delete_ike_peer_gone():
    network, left, right, left_id, _, _ = established(*psk_pair({"retransmit_tries": 1}))
    left.delete_ike(left_id, network.now)
    network.take()
    network.advance(100)
    assert of_type(left.events(), IkeSaDeleted)
    assert not left.ike_sas


def test_liveness_check():
    network, left, right, left_id, _, _ = established(*psk_pair())
    # HDR, SK {}  -->  <--  HDR, SK {}
    left.check_liveness(left_id, network.now)
    request, = network.take()
    assert request.exchange_type == ExchangeType.INFORMATIONAL
    network.deliver([request])
    network.run()
    assert not left.events()
    assert left.ike_sa(left_id).state == IkeSaState.ESTABLISHED


def test_liveness_check_dead_peer():
    network, left, right, left_id, _, _ = established(*psk_pair({"retransmit_tries": 2}))
    del network.endpoints[RIGHT[0]]
    left.check_liveness(left_id, network.now)
    network.advance(1000)
    left_events = left.events()
    assert of_type(left_events, ChildSaDeleted)
    assert "liveness check" in of_type(left_events, IkeSaFailed)[0].reason


def test_commands_need_established_sa():
    network, left, right, left_id = connect(*psk_pair())
    with pytest.raises(ValueError):
        left.rekey_ike(left_id, 0.0)
    with pytest.raises(KeyError):
        left.check_liveness(999, 0.0)


def test_certificate_dn_identities():
    from cryptography import x509
    from cryptography.x509.name import _ASN1Type
    from cryptography.x509.oid import NameOID

    pki = make_pki()
    left_config, right_config = cert_pair(pki)
    # Each side sends its subject DN as IDi or IDr. The other side configured the peer's DN with
    # PrintableString instead of UTF8String, so the DER octets differ but the DN is the same.
    def printable_dn(host):
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rmobike test", _type=_ASN1Type.PrintableString),
                          x509.NameAttribute(NameOID.COMMON_NAME, host, _type=_ASN1Type.PrintableString)])
        return Identity(9, name.public_bytes())

    left_config = replace(left_config, local_id=Identity.from_certificate(pki.certs["left.example"]),
                          remote_id=printable_dn("right.example"))
    right_config = replace(right_config, local_id=Identity.from_certificate(pki.certs["right.example"]),
                           remote_id=printable_dn("left.example"))
    assert left_config.remote_id.data != pki.certs["right.example"].subject.public_bytes()
    *_, (left_events, right_events) = established(left_config, right_config)
    assert of_type(left_events, IkeSaEstablished)[0].remote_id == "O=rmobike test, CN=right.example"
    assert of_type(right_events, IkeSaEstablished)[0].remote_id == "O=rmobike test, CN=left.example"


def test_certificate_fqdn_config_accepts_dn_idi():
    pki = make_pki()
    left_config, right_config = cert_pair(pki)
    left_config = replace(left_config, local_id=Identity.from_certificate(pki.certs["left.example"]))
    # The responder configured "left.example", which the initiator's certificate carries as SAN.
    *_, (_, right_events) = established(left_config, right_config)
    assert of_type(right_events, IkeSaEstablished)
