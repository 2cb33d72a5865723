"""Mapping agent.config connections onto the IKE core's IkeConfig and ChildConfig."""

from __future__ import annotations

import pytest

from agent.config import load_config
from agent.connections import build_ike_config, endpoint_settings, for_addresses
from agent.ike.config import AuthKind, Identity
from agent.ike.constants import IdType
from agent.ike.events import Mode

BASE = """
[agent]
port = 1500
port_nat_t = 14500
retransmit_timeout = "2s"
retransmit_base = 1.5
retransmit_tries = 3
[connections.site]
local_addrs = {local_addrs}
remote_addrs = {remote_addrs}
rekey_time = "{rekey_time}"
switch = true
path_timeout = "{path_timeout}"
switch_min_interval = "5s"
no_nats_allowed = true
fragmentation = "{fragmentation}"
[connections.site.local]
auth = "psk"
id = "gw-a.example.net"
[connections.site.remote]
auth = "psk"
id = "198.51.100.20"
[connections.site.children.lan]
local_ts = {local_ts}
remote_ts = {remote_ts}
mode = "{mode}"
esp_proposals = ["aes128gcm16", "aes256-sha256"]
[secrets.site]
id = "198.51.100.20"
secret = "0x00112233445566778899aabbccddeeff"
"""


def load(tmp_path, **values):
    settings = dict(local_addrs='["192.0.2.10"]', remote_addrs='["198.51.100.20"]', rekey_time="4h",
                    fragmentation="yes", path_timeout="1s", local_ts='["10.1.0.0/24"]', remote_ts='["10.2.0.0/24"]', mode="tunnel")
    settings.update(values)
    path = tmp_path / "rmobike.toml"
    path.write_text(BASE.format(**settings))
    path.chmod(0o600)
    config = load_config(path)
    return config, config.connections["site"]


def test_identities_and_secret(tmp_path):
    config, connection = load(tmp_path)

    ike = build_ike_config(connection, config)

    assert ike.local_id == Identity(IdType.ID_FQDN, b"gw-a.example.net")
    assert ike.remote_id.id_type == IdType.ID_IPV4_ADDR
    assert ike.auth == ike.peer_auth == AuthKind.PSK
    assert ike.psk == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert "0011223344" not in repr(ike)


def test_protocol_settings(tmp_path):
    config, connection = load(tmp_path, fragmentation="no", rekey_time="0s")

    ike = build_ike_config(connection, config)

    assert ike.accept_switch is True
    assert ike.mobike is True
    assert ike.fragmentation is False
    assert ike.rekey_time is None
    assert ike.local_addrs == ("192.0.2.10",)
    assert endpoint_settings(config).ike_port == 1500
    assert endpoint_settings(config).natt_port == 14500


def test_path_timeout_and_switch_interval(tmp_path):
    config, connection = load(tmp_path, path_timeout="500ms")

    ike = build_ike_config(connection, config)

    assert connection.path_timeout == 0.5
    assert ike.path_suspect_after == 0.5
    assert ike.switch_min_interval == 5.0
    assert ike.no_nats_allowed is True


def test_retransmission_settings(tmp_path):
    config, connection = load(tmp_path)

    ike = build_ike_config(connection, config)

    assert (ike.retransmit_timeout, ike.retransmit_base, ike.retransmit_tries) == (2.0, 1.5, 3)


def test_path_timeout_zero_disables(tmp_path):
    config, connection = load(tmp_path, path_timeout="0s")

    assert build_ike_config(connection, config).path_suspect_after is None


def test_child_leaves_rekey_to_kernel(tmp_path):
    config, connection = load(tmp_path, mode="transport")

    child = build_ike_config(connection, config).child("lan")

    assert child.rekey_time is None
    assert child.life_time is None
    assert child.mode == Mode.TRANSPORT
    assert child.esp_proposals == ("aes128gcm16", "aes256-sha256")
    assert [str(n) for ts in child.local_ts for n in ts.networks()] == ["10.1.0.0/24"]


def test_dynamic_selectors_when_initiating(tmp_path):
    config, connection = load(tmp_path, local_ts="[]", remote_ts="[]")
    responder = build_ike_config(connection, config)

    initiator = for_addresses(responder, connection, "192.0.2.10", "198.51.100.20")

    child = initiator.child("lan")
    assert [str(n) for n in child.local_ts[0].networks()] == ["192.0.2.10/32"]
    assert [str(n) for n in child.remote_ts[0].networks()] == ["198.51.100.20/32"]


def test_dynamic_selectors_as_responder(tmp_path):
    config, connection = load(tmp_path, local_ts="[]", remote_ts="[]", remote_addrs='["198.51.100.0/24"]')

    child = build_ike_config(connection, config).child("lan")

    assert [str(n) for n in child.local_ts[0].networks()] == ["192.0.2.10/32"]
    assert [str(n) for n in child.remote_ts[0].networks()] == ["198.51.100.0/24"]


@pytest.mark.parametrize("remote_ts, expected", [('["10.2.0.0/24"]', ["0.0.0.0/0"]),
                                                 ('["2001:db8:2::/64"]', ["::/0"])])
def test_dynamic_without_addresses_matches_family(tmp_path, remote_ts, expected):
    config, connection = load(tmp_path, local_ts="[]", local_addrs="[]", remote_ts=remote_ts)

    child = build_ike_config(connection, config).child("lan")

    assert [str(n) for ts in child.local_ts for n in ts.networks()] == expected
