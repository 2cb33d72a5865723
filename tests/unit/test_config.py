"""Tests for agent.config: loading, defaults, every error class, secrets and reload diffs."""

import datetime
import ipaddress
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import (
    ConfigError,
    check_config,
    diff_configs,
    load_config,
)
from agent.ike.constants import IdType

# The example that defines the configuration keys, verbatim. Scripts outside the project
# write these keys, so this file must always load.
CONTRACT_EXAMPLE = """\
[agent]
control_socket = "/run/rmobike/control.sock"

[connections.site]
local_addrs  = ["198.51.100.10", "203.0.113.10"]   # empty or absent: any local address
remote_addrs = ["198.51.100.20", "203.0.113.20"]   # responder: empty or absent accepts any
proposals    = ["aes256gcm16-prfsha384-x25519"]
mobike       = true
switch       = true          # SWITCH_TO_IP_ADDRESS in both roles
dpd_delay    = "10s"

[connections.site.local]
auth = "psk"                 # or "pubkey": certs = [...], key = "..."
id   = "gw-a.example.net"

[connections.site.remote]
auth = "psk"                 # or "pubkey": cacerts = [...]
id   = "gw-b.example.net"

[connections.site.children.lan]
local_ts      = ["10.1.0.0/24"]
remote_ts     = ["10.2.0.0/24"]
esp_proposals = ["aes256gcm16"]
start_action  = "start"      # start | trap | none

[secrets.site]
id     = "gw-b.example.net"
secret = "…"                 # or secret_file = "/etc/rmobike/site.psk", refused if world-readable
"""

# A small valid connection that the error tests change one key at a time.
MINIMAL = """\
[connections.site]
remote_addrs = ["198.51.100.20"]

[connections.site.local]
auth = "psk"
id = "gw-a.example.net"

[connections.site.remote]
auth = "psk"
id = "gw-b.example.net"

[connections.site.children.lan]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]

[secrets.site]
id = "gw-b.example.net"
secret = "correct horse battery staple"
"""


def write_config(tmp_path: Path, text: str, name: str = "rmobike.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value.errors


def single_error(tmp_path: Path, text: str) -> str:
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1, errors
    return errors[0]


# --- Happy path ----------------------------------------------------------------------


def test_contract_example_loads(tmp_path):
    config = load_config(write_config(tmp_path, CONTRACT_EXAMPLE))

    assert config.agent.control_socket == Path("/run/rmobike/control.sock")
    site = config.connections["site"]
    assert site.local_addrs == (
        ipaddress.ip_address("198.51.100.10"),
        ipaddress.ip_address("203.0.113.10"),
    )
    assert site.remote_addrs == (
        ipaddress.ip_address("198.51.100.20"),
        ipaddress.ip_address("203.0.113.20"),
    )
    assert site.proposals == ("aes256gcm16-prfsha384-x25519",)
    assert len(site.ike_transforms) == 1
    assert site.ike_transforms[0]
    assert site.mobike is True
    assert site.switch is True
    assert site.dpd_delay == 10.0
    assert site.local.auth == "psk"
    assert site.local.id == "gw-a.example.net"
    assert site.local.id_type == IdType.ID_FQDN
    assert site.remote.id == "gw-b.example.net"


def test_contract_example_child_and_secret(tmp_path):
    config = load_config(write_config(tmp_path, CONTRACT_EXAMPLE))

    lan = config.connections["site"].children["lan"]
    assert lan.local_ts == (ipaddress.ip_network("10.1.0.0/24"),)
    assert lan.remote_ts == (ipaddress.ip_network("10.2.0.0/24"),)
    assert lan.esp_proposals == ("aes256gcm16",)
    assert lan.esp_transforms[0]
    assert lan.start_action == "start"

    secret = config.secrets["site"]
    assert secret.id == "gw-b.example.net"
    assert secret.secret == "…".encode()
    assert config.psk_for("gw-a.example.net", "gw-b.example.net") is secret


def test_packaged_example_loads(tmp_path):
    example = Path(__file__).parents[2] / "packaging" / "rmobike.toml.example"
    psk = tmp_path / "site.psk"
    psk.write_text("0x" + "ab" * 32 + "\n")
    psk.chmod(0o600)
    text = example.read_text().replace("/etc/rmobike/site.psk", str(psk))

    config = load_config(write_config(tmp_path, text))

    assert config.connections["site"].children["lan"].start_action == "start"
    assert config.secrets["site"].secret == b"\xab" * 32


def test_defaults_of_minimal_config(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))

    assert config.agent.log_level == "info"
    assert config.agent.port == 500
    assert config.agent.port_nat_t == 4500
    site = config.connections["site"]
    assert site.local_addrs == ()
    assert site.local_port == 500
    assert site.remote_port == 500
    assert site.version == 2
    assert site.mobike is True
    assert site.switch is False
    assert site.dpd_delay == 0.0
    assert site.rekey_time == 4 * 3600
    assert site.over_time == pytest.approx(0.1 * 4 * 3600)
    assert site.rand_time == site.over_time
    assert site.fragmentation == "yes"
    assert site.encap is False
    assert site.proposals
    lan = site.children["lan"]
    assert lan.mode == "tunnel"
    assert lan.start_action == "none"
    assert lan.rekey_time == 3600
    assert lan.life_time == pytest.approx(3960)
    assert lan.rand_time == pytest.approx(360)
    assert lan.esp_proposals


def test_no_connections_is_valid(tmp_path):
    config = load_config(write_config(tmp_path, '[agent]\nlog_level = "debug"\n'))

    assert config.connections == {}
    assert config.agent.log_level == "debug"


def test_check_config_valid_returns_empty(tmp_path):
    assert check_config(write_config(tmp_path, CONTRACT_EXAMPLE)) == []


def test_check_config_returns_errors(tmp_path):
    path = write_config(
        tmp_path, MINIMAL.replace('auth = "psk"\nid = "gw-a', 'auth = "rsa"\nid = "gw-a')
    )

    errors = check_config(path)

    assert len(errors) == 1
    assert "connections.site.local.auth" in errors[0]


def test_config_objects_are_read_only(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))

    with pytest.raises(AttributeError):
        config.connections["site"].mobike = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.connections["other"] = config.connections["site"]  # type: ignore[index]


# --- Errors --------------------------------------------------------------------------


def test_error_missing_file(tmp_path):
    path = tmp_path / "absent.toml"

    errors = check_config(path)

    assert errors == [f"{path}: file not found"]


def test_error_invalid_toml(tmp_path):
    error = single_error(tmp_path, "[agent\n")

    assert error.startswith(f"{tmp_path / 'rmobike.toml'}: invalid TOML")
    assert "line 1" in error


def test_error_unknown_key_suggests(tmp_path):
    error = single_error(
        tmp_path, MINIMAL.replace("[connections.site]\n", '[connections.site]\ndpd_dealy = "10s"\n')
    )

    assert error.startswith(str(tmp_path / "rmobike.toml"))
    assert "connections.site.dpd_dealy: unknown key" in error
    assert 'did you mean "dpd_delay"?' in error


def test_error_unknown_top_level_table(tmp_path):
    error = single_error(tmp_path, MINIMAL + '\n[secret.other]\nid = "x"\n')

    assert "secret: unknown key" in error
    assert 'did you mean "secrets"?' in error


def test_error_unknown_child_key(tmp_path):
    text = MINIMAL.replace(
        'remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["10.2.0.0/24"]\nesp = ["aes256gcm16"]'
    )

    error = single_error(tmp_path, text)

    assert "connections.site.children.lan.esp: unknown key" in error


def test_error_key_on_wrong_side(tmp_path):
    text = MINIMAL.replace(
        'id = "gw-b.example.net"\n\n[connections',
        'id = "gw-b.example.net"\nkey = "/k"\n\n[connections',
    )

    error = single_error(tmp_path, text)

    assert "connections.site.remote.key: unknown key" in error
    assert "auth, id, cacerts" in error


def test_error_wrong_type(tmp_path):
    error = single_error(
        tmp_path, MINIMAL.replace("[connections.site]\n", '[connections.site]\nmobike = "yes"\n')
    )

    assert "connections.site.mobike: invalid value string 'yes'" in error
    assert "(expected true or false)" in error


def test_error_invalid_duration(tmp_path):
    error = single_error(
        tmp_path,
        MINIMAL.replace("[connections.site]\n", '[connections.site]\ndpd_delay = "10 sec"\n'),
    )

    assert "connections.site.dpd_delay: invalid duration '10 sec'" in error
    assert '"10s"' in error


def test_error_invalid_address_names_index(tmp_path):
    text = MINIMAL.replace(
        'remote_addrs = ["198.51.100.20"]',
        'remote_addrs = ["198.51.100.20", "gw-b.example.net", "198.51.100.300"]',
    )

    errors = errors_of(tmp_path, text)

    assert len(errors) == 2
    assert "connections.site.remote_addrs[1]: 'gw-b.example.net' is not an IP address" in errors[0]
    assert "DNS names are not supported" in errors[0]
    assert "connections.site.remote_addrs[2]: '198.51.100.300' is not an IP address" in errors[1]


def test_error_address_list_not_array(tmp_path):
    text = MINIMAL.replace('remote_addrs = ["198.51.100.20"]', 'remote_addrs = "198.51.100.20"')

    error = single_error(tmp_path, text)

    assert "connections.site.remote_addrs: invalid value string '198.51.100.20'" in error
    assert "an array such as" in error


def test_error_traffic_selector_host_bits(tmp_path):
    text = MINIMAL.replace(
        'local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.0/24", "10.3.0.1/24"]'
    )

    error = single_error(tmp_path, text)

    assert "connections.site.children.lan.local_ts[1]: '10.3.0.1/24' has host bits set" in error
    assert '(expected the network address, "10.3.0.0/24")' in error


def test_error_traffic_selector_not_prefix(tmp_path):
    text = MINIMAL.replace('local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.0/24[tcp/80]"]')

    error = single_error(tmp_path, text)

    assert (
        "connections.site.children.lan.local_ts[0]: '10.1.0.0/24[tcp/80]' is not an IP prefix"
        in error
    )


def test_error_invalid_ike_proposal(tmp_path):
    text = MINIMAL.replace(
        "[connections.site]\n",
        '[connections.site]\nproposals = ["aes256gcm16-prfsha384-x25519", "aes999-nothing"]\n',
    )

    error = single_error(tmp_path, text)

    assert "connections.site.proposals[1]: invalid proposal 'aes999-nothing'" in error


def test_error_invalid_esp_proposal(tmp_path):
    text = MINIMAL.replace(
        'remote_ts = ["10.2.0.0/24"]',
        'remote_ts = ["10.2.0.0/24"]\nesp_proposals = ["aes999gcm16"]',
    )

    error = single_error(tmp_path, text)

    assert "connections.site.children.lan.esp_proposals[0]: invalid proposal 'aes999gcm16'" in error


def test_error_empty_proposals(tmp_path):
    text = MINIMAL.replace("[connections.site]\n", "[connections.site]\nproposals = []\n")

    error = single_error(tmp_path, text)

    assert "connections.site.proposals: empty array (expected at least one item" in error


def test_error_missing_required_key(tmp_path):
    error = single_error(tmp_path, MINIMAL.replace('id = "gw-a.example.net"\n', ""))

    assert "connections.site.local.id: missing" in error
    assert "gw-a.example.net" in error


def test_error_missing_endpoint_table(tmp_path):
    text = MINIMAL.replace('[connections.site.remote]\nauth = "psk"\nid = "gw-b.example.net"\n', "")

    error = single_error(tmp_path, text)

    assert "connections.site.remote: missing table" in error


def test_error_invalid_choice(tmp_path):
    text = MINIMAL.replace(
        'remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["10.2.0.0/24"]\nstart_action = "route"'
    )

    error = single_error(tmp_path, text)

    assert "connections.site.children.lan.start_action: invalid value string 'route'" in error
    assert '"start" or "trap" or "none"' in error


def test_error_ike_version_one(tmp_path):
    error = single_error(
        tmp_path, MINIMAL.replace("[connections.site]\n", "[connections.site]\nversion = 1\n")
    )

    assert "connections.site.version: invalid value integer 1" in error
    assert "an integer from 2 to 2" in error


def test_error_port_out_of_range(tmp_path):
    error = single_error(
        tmp_path,
        MINIMAL.replace("[connections.site]\n", "[connections.site]\nremote_port = 70000\n"),
    )

    assert "connections.site.remote_port: invalid value integer 70000" in error
    assert "from 1 to 65535" in error


def test_error_agent_relative_socket(tmp_path):
    error = single_error(tmp_path, '[agent]\ncontrol_socket = "control.sock"\n')

    assert "agent.control_socket: invalid value string 'control.sock'" in error
    assert "an absolute path" in error


def test_error_agent_invalid_log_level(tmp_path):
    error = single_error(tmp_path, '[agent]\nlog_level = "verbose"\n')

    assert "agent.log_level: invalid value string 'verbose'" in error
    assert '"debug"' in error


def test_error_agent_same_ports(tmp_path):
    error = single_error(tmp_path, "[agent]\nport = 4500\n")

    assert "agent.port_nat_t: is the same as agent.port (4500)" in error


@pytest.mark.parametrize(("line", "message"), [
    ('retransmit_timeout = "0s"', "agent.retransmit_timeout: is 0"),
    ("retransmit_base = 0.5", "agent.retransmit_base: invalid value"),
    ("retransmit_tries = 99", "agent.retransmit_tries: invalid value"),
])
def test_error_agent_retransmission(tmp_path, line, message):
    error = single_error(tmp_path, f"[agent]\n{line}\n")

    assert message in error


def test_error_switch_without_mobike(tmp_path):
    text = MINIMAL.replace(
        "[connections.site]\n", "[connections.site]\nmobike = false\nswitch = true\n"
    )

    error = single_error(tmp_path, text)

    assert "connections.site.switch: true needs mobike = true" in error


def test_error_start_without_remote_address(tmp_path):
    text = MINIMAL.replace('remote_addrs = ["198.51.100.20"]', 'remote_addrs = ["198.51.100.0/24"]')
    text = text.replace(
        'remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["10.2.0.0/24"]\nstart_action = "trap"'
    )

    error = single_error(tmp_path, text)

    assert "connections.site.remote_addrs: has no single address to initiate to" in error
    assert 'child lan has start_action = "trap"' in error


def test_responder_without_remote_address(tmp_path):
    config = load_config(
        write_config(tmp_path, MINIMAL.replace('remote_addrs = ["198.51.100.20"]\n', ""))
    )

    site = config.connections["site"]
    assert site.remote_addrs == ()
    assert site.accepts_remote(ipaddress.ip_address("192.0.2.7"))


def test_error_address_families_differ(tmp_path):
    text = MINIMAL.replace(
        "[connections.site]\n", '[connections.site]\nlocal_addrs = ["2001:db8::1"]\n'
    )

    error = single_error(tmp_path, text)

    assert (
        "connections.site.remote_addrs: has no address family in common with local_addrs" in error
    )


def test_error_selector_families_differ(tmp_path):
    text = MINIMAL.replace('remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["2001:db8:2::/64"]')

    error = single_error(tmp_path, text)

    assert "connections.site.children.lan.remote_ts: has no address family in common" in error


def test_error_life_time_not_longer(tmp_path):
    text = MINIMAL.replace(
        'remote_ts = ["10.2.0.0/24"]',
        'remote_ts = ["10.2.0.0/24"]\nrekey_time = "1h"\nlife_time = "30m"',
    )

    error = single_error(tmp_path, text)

    assert (
        "connections.site.children.lan.life_time: 1800 s is not longer than rekey_time (3600 s)"
        in error
    )


def test_error_psk_without_secret(tmp_path):
    text = MINIMAL.replace(
        '[secrets.site]\nid = "gw-b.example.net"\nsecret = "correct horse battery staple"\n', ""
    )

    error = single_error(tmp_path, text)

    assert (
        'connections.site.local.auth: "psk" needs a secret'
        " for 'gw-b.example.net' or 'gw-a.example.net'" in error
    )
    assert "[secrets.site]" in error


def test_error_psk_with_certs(tmp_path):
    text = MINIMAL.replace(
        'id = "gw-a.example.net"\n',
        'id = "gw-a.example.net"\ncerts = []\nkey = "/nonexistent/key.pem"\n',
    )

    errors = errors_of(tmp_path, text)

    assert len(errors) == 1
    assert (
        "connections.site.local.key: private key file /nonexistent/key.pem not found" in errors[0]
    )


def test_error_pubkey_without_credentials(tmp_path):
    text = MINIMAL.replace('auth = "psk"\nid = "gw-a', 'auth = "pubkey"\nid = "gw-a')
    text = text.replace('auth = "psk"\nid = "gw-b', 'auth = "pubkey"\nid = "gw-b')

    errors = errors_of(tmp_path, text)

    assert len(errors) == 3
    assert 'connections.site.local.certs: missing for auth = "pubkey"' in errors[0]
    assert 'connections.site.local.key: missing for auth = "pubkey"' in errors[1]
    assert 'connections.site.remote.cacerts: missing for auth = "pubkey"' in errors[2]


def test_error_invalid_connection_name(tmp_path):
    text = MINIMAL.replace("[connections.site]", '[connections."my site"]').replace(
        "connections.site.", 'connections."my site".'
    )

    errors = errors_of(tmp_path, text)

    assert len(errors) == 1
    assert "connections.\"my site\": invalid name 'my site'" in errors[0]


def test_error_table_expected(tmp_path):
    error = single_error(tmp_path, 'agent = "yes"\n')

    assert "agent: invalid value string 'yes' (expected a table)" in error


def test_errors_are_all_collected(tmp_path):
    text = MINIMAL.replace(
        "[connections.site]\n", '[connections.site]\nmobike = 1\ndpd_delay = "soon"\nbogus = 1\n'
    )
    text = text.replace('local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.1/24"]')
    text += "\n[agent]\nport = 0\n"

    errors = errors_of(tmp_path, text)

    assert len(errors) == 5
    keys = [
        "agent.port",
        "connections.site.bogus",
        "connections.site.mobike",
        "connections.site.dpd_delay",
        "connections.site.children.lan.local_ts[0]",
    ]
    for key in keys:
        assert any(f": {key}" in error for error in errors), key
    for error in errors:
        assert error.startswith(f"{tmp_path / 'rmobike.toml'}: ")


# --- Secrets -------------------------------------------------------------------------


def secret_config(secret_lines: str) -> str:
    return MINIMAL.replace('secret = "correct horse battery staple"\n', secret_lines)


def test_secret_file_private(tmp_path):
    psk = tmp_path / "site.psk"
    psk.write_text("from a file\n")
    psk.chmod(0o640)

    config = load_config(write_config(tmp_path, secret_config(f'secret_file = "{psk}"\n')))

    assert config.secrets["site"].secret == b"from a file"
    assert config.secrets["site"].source == str(psk)


def test_secret_file_world_readable(tmp_path):
    psk = tmp_path / "site.psk"
    psk.write_text("from a file\n")
    psk.chmod(0o644)

    errors = errors_of(tmp_path, secret_config(f'secret_file = "{psk}"\n'))

    assert len(errors) == 1  # the secret itself; the connection that needs it adds nothing
    assert (
        f"secrets.site.secret_file: secret file {psk} is accessible to all users (mode 0644)"
        in errors[0]
    )
    assert f"chmod o-rwx {psk}" in errors[0]


def test_secret_file_missing(tmp_path):
    errors = errors_of(tmp_path, secret_config('secret_file = "/nonexistent/site.psk"\n'))

    assert "secrets.site.secret_file: secret file /nonexistent/site.psk not found" in errors[0]


def test_secret_file_empty(tmp_path):
    psk = tmp_path / "site.psk"
    psk.write_text("\n")
    psk.chmod(0o600)

    errors = errors_of(tmp_path, secret_config(f'secret_file = "{psk}"\n'))

    assert f"secrets.site.secret_file: {psk} is empty" in errors[0]


def test_secret_both_forms(tmp_path):
    text = secret_config('secret = "a"\nsecret_file = "/nonexistent"\n')

    errors = errors_of(tmp_path, text)

    assert any("secrets.site.secret_file: secret file /nonexistent not found" in e for e in errors)


def test_secret_neither_form(tmp_path):
    errors = errors_of(tmp_path, secret_config(""))

    assert "secrets.site: needs exactly one of secret and secret_file" in errors[0]


def test_secret_hex_and_base64(tmp_path):
    text = (
        secret_config('secret = "0x00ff10"\n')
        + '\n[secrets.other]\nid = "gw-a.example.net"\nsecret = "0sAAEC"\n'
    )

    config = load_config(write_config(tmp_path, text))

    assert config.secrets["site"].secret == b"\x00\xff\x10"
    assert config.secrets["other"].secret == b"\x00\x01\x02"


def test_secret_invalid_hex(tmp_path):
    errors = errors_of(tmp_path, secret_config('secret = "0xzz"\n'))

    assert 'secrets.site.secret: invalid hex after "0x"' in errors[0]


def test_secret_duplicate_identity(tmp_path):
    text = MINIMAL + '\n[secrets.again]\nid = "gw-b.example.net"\nsecret = "other"\n'

    error = single_error(tmp_path, text)

    assert "secrets.again.id: 'gw-b.example.net' already has a secret in [secrets.site]" in error


def test_secret_not_in_repr(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))

    assert "correct horse" not in repr(config)
    assert "correct horse" not in repr(config.secrets["site"])


def test_inline_secret_readable_config_warns(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    path.chmod(0o644)

    config = load_config(path)

    assert len(config.warnings) == 1
    assert "contains secrets and is readable by all users (mode 0644)" in config.warnings[0]


def test_inline_secret_private_config_no_warning(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))

    assert config.warnings == ()


# --- Certificates and private keys --------------------------------------------------


def write_credentials(tmp_path: Path, key_mode: int = 0o600) -> tuple[Path, Path]:
    """Write a self-signed EC certificate and its unencrypted key as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-a.example.net")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "gw-a.crt"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path = tmp_path / "gw-a.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(key_mode)
    return cert_path, key_path


def pubkey_config(cert: Path, key: Path, cacert: Path) -> str:
    text = MINIMAL.replace(
        'auth = "psk"\nid = "gw-a.example.net"',
        f'auth = "pubkey"\nid = "gw-a.example.net"\ncerts = ["{cert}"]\nkey = "{key}"',
    )
    return text.replace(
        'auth = "psk"\nid = "gw-b.example.net"',
        f'auth = "pubkey"\nid = "gw-b.example.net"\ncacerts = ["{cacert}"]',
    )


def test_pubkey_credentials_load(tmp_path):
    cert, key = write_credentials(tmp_path)

    config = load_config(write_config(tmp_path, pubkey_config(cert, key, cert)))

    site = config.connections["site"]
    assert site.local.auth == "pubkey"
    assert site.local.certs == (cert,)
    assert site.local.key == key
    assert site.remote.cacerts == (cert,)


def test_pubkey_key_world_readable(tmp_path):
    cert, key = write_credentials(tmp_path, key_mode=0o644)

    error = single_error(tmp_path, pubkey_config(cert, key, cert))

    assert f"connections.site.local.key: private key file {key} is accessible to all users" in error


def test_pubkey_invalid_certificate(tmp_path):
    cert, key = write_credentials(tmp_path)
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate")

    error = single_error(tmp_path, pubkey_config(cert, key, garbage))

    assert (
        f"connections.site.remote.cacerts[0]: {garbage} is not a PEM or DER X.509 certificate"
        in error
    )


def test_pubkey_encrypted_key(tmp_path):
    cert, key = write_credentials(tmp_path)
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )

    error = single_error(tmp_path, pubkey_config(cert, key, cert))

    assert (
        f"connections.site.local.key: {key} is encrypted (expected an unencrypted private key)"
        in error
    )


# --- Identities and address policy ---------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ("198.51.100.10", IdType.ID_IPV4_ADDR),
        ("2001:db8::1", IdType.ID_IPV6_ADDR),
        ("gw-a.example.net", IdType.ID_FQDN),
        ("@gw-a.example.net", IdType.ID_FQDN),
        ("admin@example.net", IdType.ID_RFC822_ADDR),
        ("C=CH, O=Example, CN=gw-a.example.net", IdType.ID_DER_ASN1_DN),
        ("@#0a0b0c", IdType.ID_KEY_ID),
    ],
)
def test_identity_types(tmp_path, identity, expected):
    text = MINIMAL.replace('id = "gw-a.example.net"', f'id = "{identity}"')

    config = load_config(write_config(tmp_path, text))

    assert config.connections["site"].local.id_type == expected


def test_identity_invalid_key_id(tmp_path):
    error = single_error(tmp_path, MINIMAL.replace('id = "gw-a.example.net"', 'id = "@#xyz"'))

    assert "connections.site.local.id: invalid key id '@#xyz'" in error


def test_address_policy(tmp_path):
    text = MINIMAL.replace(
        'remote_addrs = ["198.51.100.20"]',
        'remote_addrs = ["198.51.100.20", "203.0.113.0/24", "2001:db8:b::/48"]\n'
        'local_addrs = ["198.51.100.10"]',
    )

    site = load_config(write_config(tmp_path, text)).connections["site"]

    assert site.remote_hosts() == (ipaddress.ip_address("198.51.100.20"),)
    assert site.accepts_remote(ipaddress.ip_address("203.0.113.99"))
    assert site.accepts_remote(ipaddress.ip_address("2001:db8:b::7"))
    assert not site.accepts_remote(ipaddress.ip_address("192.0.2.1"))
    assert site.accepts_local(ipaddress.ip_address("198.51.100.10"))
    assert not site.accepts_local(ipaddress.ip_address("203.0.113.10"))


# --- Reload diff ---------------------------------------------------------------------


def connection_table(name: str, extra: str = "") -> str:
    return f"""
[connections.{name}]
remote_addrs = ["198.51.100.20"]
{extra}
[connections.{name}.local]
auth = "psk"
id = "gw-a.example.net"

[connections.{name}.remote]
auth = "psk"
id = "gw-b.example.net"
"""


SECRET_TABLE = """
[secrets.site]
id = "gw-b.example.net"
secret = "correct horse battery staple"
"""


def test_diff_added_removed_changed_unchanged(tmp_path):
    old_text = (
        connection_table("site")
        + connection_table("keep")
        + connection_table("gone")
        + SECRET_TABLE
    )
    new_text = (
        connection_table("site", 'dpd_delay = "30s"')
        + connection_table("keep")
        + connection_table("fresh")
        + SECRET_TABLE
    )
    old = load_config(write_config(tmp_path, old_text, "old.toml"))
    new = load_config(write_config(tmp_path, new_text, "new.toml"))

    diff = diff_configs(old, new)

    assert diff.added == ("fresh",)
    assert diff.removed == ("gone",)
    assert diff.changed == ("site",)
    assert diff.unchanged == ("keep",)
    assert diff.agent_changed == ()


def test_diff_child_change_changes_connection(tmp_path):
    old = load_config(write_config(tmp_path, MINIMAL, "old.toml"))
    new_text = MINIMAL.replace(
        'remote_ts = ["10.2.0.0/24"]', 'remote_ts = ["10.2.0.0/24", "10.4.0.0/24"]'
    )
    new = load_config(write_config(tmp_path, new_text, "new.toml"))

    diff = diff_configs(old, new)

    assert diff.changed == ("site",)
    assert diff.unchanged == ()


def test_diff_secret_change_keeps_connection(tmp_path):
    old = load_config(write_config(tmp_path, MINIMAL, "old.toml"))
    new = load_config(
        write_config(tmp_path, MINIMAL.replace("battery staple", "new secret"), "new.toml")
    )

    diff = diff_configs(old, new)

    assert diff.unchanged == ("site",)
    assert diff.changed == ()


def test_diff_agent_keys(tmp_path):
    old = load_config(write_config(tmp_path, MINIMAL, "old.toml"))
    new = load_config(
        write_config(tmp_path, '[agent]\nlog_level = "debug"\n' + MINIMAL, "new.toml")
    )

    diff = diff_configs(old, new)

    assert diff.agent_changed == ("log_level",)
    assert diff.to_json()["agent_changed"] == ["log_level"]
