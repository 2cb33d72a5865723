"""rmobiked against strongSwan's charon: configurations for both, certificates, checks.

One gateway of the standard lab runs rmobiked and the other charon. Both get the same connection
"site" with child "lan": the gateways' uplink addresses, their LAN subnets as traffic selectors,
and either a pre-shared key or certificates from a throw-away CA.

Example::

    pki = make_pki(Path("/var/tmp/pki"), {"gw1": "ecdsa-p256", "gw2": "rsa"})
    tunnel = Tunnel(auth="pubkey", pki=pki)
    pair = InteropPair(topology, rmobike="gw1", charon="gw2", label="certs")
    pair.start_charon(tunnel)
    pair.start_rmobiked(tunnel, start_action="start")
    ...
    pair.close()            # stops both, clears the kernel state, saves the logs
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.control import ControlClient
from tests.lab.capture import CleartextCapture
from tests.lab.gateways import PSK, Rmobiked, identity
from tests.lab.netns import Namespace
from tests.lab.strongswan import Charon
from tests.lab.topology import STANDARD, Gateway, Topology, build
from tests.lab.traffic import ProbeReport, lan_probe

log = logging.getLogger(__name__)

T = TypeVar("T")

WAIT_TIMEOUT = 90.0  # seconds for a state change that needs an exchange under QEMU TCG
# Seconds for rmobiked's control socket to respond. Python with cryptography and pyroute2 has
# taken more than 30 s to start under QEMU TCG while the host was busy.
DAEMON_START_TIMEOUT = 120.0
CONTROL_TIMEOUT = 30.0  # seconds for one control command to rmobiked
POLL_INTERVAL = 0.3  # seconds between two looks at list-sas or the kernel


# -- what both sides are configured with --------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """An IKE and an ESP proposal, as strongSwan proposal strings (rmobike reads the same)."""

    ike: str
    esp: str


GCM = Suite(ike="aes256gcm16-prfsha384-x25519", esp="aes256gcm16")
CBC = Suite(ike="aes128-sha256-modp3072", esp="aes128-sha256")
# A DH group in the ESP proposal: CHILD_SA rekeys (not the first CHILD_SA) use a new DH exchange.
GCM_PFS = Suite(ike="aes256gcm16-prfsha384-x25519", esp="aes256gcm16-x25519")


@dataclass(frozen=True)
class GatewayCredentials:
    """One gateway's certificate and private key files (PEM); `key_type` as given to make_pki."""

    certificate: Path
    key: Path
    key_type: str


@dataclass(frozen=True)
class Pki:
    """A CA and the credentials it issued, by gateway name."""

    ca: Path
    gateways: Mapping[str, GatewayCredentials]


@dataclass(frozen=True)
class Tunnel:
    """The connection both peers get, and the rekey times rmobiked uses.

    `auth` is "psk" or "pubkey", and "pubkey" requires `pki`. The rmobiked times are durations in
    its config syntax. charon keeps strongSwan's defaults (IKE SA 4 h, CHILD_SA 1 h).
    """

    suite: Suite = GCM
    auth: str = "psk"
    pki: Pki | None = None
    switch: bool = True  # rmobiked offers SWITCH_TO_IP_ADDRESS: MOBIKE_SUPPORTED with flags 0x01
    ike_rekey_time: str = "4h"
    child_rekey_time: str = "1h"
    child_life_time: str | None = None
    child_rand_time: str | None = None
    charon_options: str = ""  # text inside strongswan.conf's charon { } section

    def __post_init__(self) -> None:
        if self.auth not in ("psk", "pubkey"):
            raise ValueError(f"invalid auth {self.auth!r}, expected 'psk' or 'pubkey'")
        if self.auth == "pubkey" and self.pki is None:
            raise ValueError("auth 'pubkey' needs a pki")


# -- certificates ---------------------------------------------------------------------------


KEY_TYPES = ("ecdsa-p256", "rsa", "ed25519")


def _private_key(key_type: str):
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}, expected one of {', '.join(KEY_TYPES)}")


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)  # rmobiked rejects a key file that other users can read


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path, key_types: Mapping[str, str]) -> Pki:
    """Create a CA (ECDSA P-256) and one certificate per gateway in `directory`.

    `key_types` maps a gateway name ("gw1") to "ecdsa-p256", "rsa" (2048 bits) or "ed25519".
    Each gateway certificate has the gateway's lab identity (gw1.example.net) as its common name
    and as a DNS subjectAltName, which is what both rmobike and charon match an ID_FQDN against.
    Files: ca.pem, <gateway>.pem and <gateway>.key (unencrypted PKCS#8, mode 0600).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rmobike lab"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "rmobike lab CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    _write_certificate(ca_path, ca_certificate)

    gateways = {}
    for gateway, key_type in key_types.items():
        key = _private_key(key_type)
        fqdn = f"{gateway}.example.net"  # the lab identity, see tests.lab.gateways.identity
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rmobike lab"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        credentials = GatewayCredentials(certificate=directory / f"{gateway}.pem",
                                         key=directory / f"{gateway}.key", key_type=key_type)
        _write_certificate(credentials.certificate, certificate)
        _write_key(credentials.key, key)
        gateways[gateway] = credentials
    log.info("made a CA and certificates in %s: %s", directory,
             ", ".join(f"{name} {kind}" for name, kind in key_types.items()))
    return Pki(ca=ca_path, gateways=gateways)


# -- configuration files --------------------------------------------------------------------


def _addresses(me: Gateway, peer: Gateway) -> tuple[list[str], list[str]]:
    local = [str(uplink.address.ip) for uplink in me.uplinks]
    remote = [str(uplink.public_address) for uplink in peer.uplinks]
    return local, remote


def swanctl_conf(topology: Topology, local: str, remote: str, tunnel: Tunnel) -> str:
    """Return charon's swanctl.conf on gateway `local` for the tunnel to gateway `remote`.

    With certificates, the files are named as charon_files() places them in the swanctl
    directory: x509/<local>.pem, x509ca/ca.pem and private/<local>.key.
    """
    me, peer = topology.gateway(local), topology.gateway(remote)
    local_addrs, remote_addrs = _addresses(me, peer)
    if tunnel.auth == "psk":
        local_auth = f"auth = psk\n      id = {identity(me)}"
        remote_auth = f"auth = psk\n      id = {identity(peer)}"
        secrets = f'ike-site {{\n    id = {identity(peer)}\n    secret = "{PSK}"\n  }}'
    else:
        local_auth = f"auth = pubkey\n      id = {identity(me)}\n      certs = {local}.pem"
        remote_auth = f"auth = pubkey\n      id = {identity(peer)}\n      cacerts = ca.pem"
        secrets = ""  # the private key is loaded from the private/ directory
    return f"""\
connections {{
  site {{
    version = 2
    local_addrs = {", ".join(local_addrs)}
    remote_addrs = {", ".join(remote_addrs)}
    proposals = {tunnel.suite.ike}
    mobike = yes
    local {{
      {local_auth}
    }}
    remote {{
      {remote_auth}
    }}
    children {{
      lan {{
        local_ts = {me.lan_network}
        remote_ts = {peer.lan_network}
        esp_proposals = {tunnel.suite.esp}
        mode = tunnel
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  {secrets}
}}
"""


def charon_files(local: str, tunnel: Tunnel) -> dict[str, bytes]:
    """Return the credential files charon on gateway `local` needs, by path in its swanctl dir."""
    if tunnel.auth != "pubkey":
        return {}
    assert tunnel.pki is not None
    credentials = tunnel.pki.gateways[local]
    return {
        "x509ca/ca.pem": tunnel.pki.ca.read_bytes(),
        f"x509/{local}.pem": credentials.certificate.read_bytes(),
        f"private/{local}.key": credentials.key.read_bytes(),
    }


def rmobike_config(topology: Topology, local: str, remote: str, workdir: Path, tunnel: Tunnel, *,
                   start_action: str = "none", log_level: str = "debug") -> str:
    """Return rmobiked's TOML on gateway `local` for the same tunnel as swanctl_conf().

    `workdir` is the daemon's directory (tests.lab.gateways.Rmobiked.workdir), which contains
    the control socket, the state directory and the PSK file site.psk.
    """
    me, peer = topology.gateway(local), topology.gateway(remote)
    local_addrs, remote_addrs = _addresses(me, peer)
    lines = [
        "[agent]",
        f'control_socket = "{workdir / "control.sock"}"',
        f'state_dir = "{workdir / "state"}"',
        f'log_level = "{log_level}"',
        "",
        "[connections.site]",
        f"local_addrs = {json.dumps(local_addrs)}",
        f"remote_addrs = {json.dumps(remote_addrs)}",
        f"proposals = {json.dumps([tunnel.suite.ike])}",
        "mobike = true",
        f"switch = {'true' if tunnel.switch else 'false'}",
        f'rekey_time = "{tunnel.ike_rekey_time}"',
        "",
        "[connections.site.local]",
        f'auth = "{tunnel.auth}"',
        f'id = "{identity(me)}"',
    ]
    if tunnel.auth == "pubkey":
        assert tunnel.pki is not None
        credentials = tunnel.pki.gateways[local]
        lines += [f'certs = ["{credentials.certificate}"]', f'key = "{credentials.key}"']
    lines += [
        "",
        "[connections.site.remote]",
        f'auth = "{tunnel.auth}"',
        f'id = "{identity(peer)}"',
    ]
    if tunnel.auth == "pubkey":
        lines.append(f'cacerts = ["{tunnel.pki.ca}"]')
    lines += [
        "",
        "[connections.site.children.lan]",
        f'local_ts = ["{me.lan_network}"]',
        f'remote_ts = ["{peer.lan_network}"]',
        f"esp_proposals = {json.dumps([tunnel.suite.esp])}",
        f'start_action = "{start_action}"',
        'mode = "tunnel"',
        f'rekey_time = "{tunnel.child_rekey_time}"',
    ]
    if tunnel.child_life_time is not None:
        lines.append(f'life_time = "{tunnel.child_life_time}"')
    if tunnel.child_rand_time is not None:
        lines.append(f'rand_time = "{tunnel.child_rand_time}"')
    if tunnel.auth == "psk":
        lines += [
            "",
            "[secrets.site]",
            f'id = "{identity(peer)}"',
            f'secret_file = "{workdir / "site.psk"}"',
        ]
    return "\n".join(lines) + "\n"


# -- looking at the kernel and waiting ------------------------------------------------------


_SPI = re.compile(r"\bspi 0x([0-9a-f]{8})\b")


def kernel_spis(namespace: Namespace) -> set[str]:
    """Return the SPIs of the XFRM states in `namespace`, as 8 lowercase hex digits."""
    return set(_SPI.findall(namespace.run(["ip", "xfrm", "state"]).stdout))


def kernel_policies(namespace: Namespace) -> list[str]:
    """Return the XFRM policies of `namespace` except socket policies, one string each.

    Socket policies (the IKE daemons' bypass for their own sockets) belong to the sockets and
    go away with them.
    """
    output = namespace.run(["ip", "xfrm", "policy"]).stdout
    policies, current = [], []
    for line in output.splitlines():
        if line and not line[0].isspace() and current:
            policies.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line)
    if current:
        policies.append("\n".join(current))
    return [policy for policy in policies if not _is_socket_policy(policy)]


def _is_socket_policy(policy: str) -> bool:
    # `ip xfrm policy` prints "socket in" or "socket out" where other policies have "dir".
    return any(line.split()[:1] == ["socket"] for line in policy.splitlines())


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = WAIT_TIMEOUT,
               details: Callable[[], str] | None = None) -> T:
    """Call `probe` until it returns something other than None or False, and return that.

    Raises AssertionError naming `what` (and the text of `details()`, if given) after `timeout`
    seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(POLL_INTERVAL)


# -- one rmobiked and one charon --------------------------------------------------------------


@dataclass
class InteropPair:
    """rmobiked on gateway `rmobike` and charon on gateway `charon` of a lab, for one test.

    close() stops both daemons (rmobiked first, so that it can send its deletes), removes what
    they left in the kernel and copies both logs to $RMOBIKE_LAB_OUT/interop/<label>/.
    """

    topology: Topology
    rmobike: str
    charon: str
    label: str
    daemon: Rmobiked | None = None
    peer: Charon | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def rmobike_namespace(self) -> Namespace:
        return self.topology.gateway(self.rmobike).namespace

    @property
    def charon_namespace(self) -> Namespace:
        return self.topology.gateway(self.charon).namespace

    def start_charon(self, tunnel: Tunnel) -> Charon:
        """Start charon with the tunnel's swanctl.conf and credentials."""
        self.peer = Charon(self.charon_namespace, "interop", charon_options=tunnel.charon_options)
        self.peer.start(swanctl_conf(self.topology, self.charon, self.rmobike, tunnel),
                        files=charon_files(self.charon, tunnel))
        return self.peer

    def start_rmobiked(self, tunnel: Tunnel, start_action: str = "none") -> Rmobiked:
        """Start rmobiked with the tunnel's configuration; `start_action` of child "lan"."""
        self.daemon = Rmobiked(self.rmobike_namespace, self.rmobike)
        self.daemon.start(rmobike_config(self.topology, self.rmobike, self.charon, self.daemon.workdir,
                                         tunnel, start_action=start_action),
                          timeout=DAEMON_START_TIMEOUT)
        return self.daemon

    def control(self, command: str, **args: str) -> object:
        """Send a control command to rmobiked from this process and return its result.

        This does what rmobikectl does without starting a Python process for it, which takes
        seconds under QEMU TCG. Raises agent.control.CommandFailed when rmobiked returns an
        error.
        """
        assert self.daemon is not None
        return ControlClient(self.daemon.control_socket, timeout=CONTROL_TIMEOUT).call(command, args)

    def rmobike_ike_sas(self) -> list[dict]:
        """Return rmobiked's IKE SAs of connection "site" (two during an IKE SA rekey)."""
        return [sa for sa in self.control("list-sas")["ike_sas"] if sa["name"] == "site"]

    def logs(self) -> str:
        """Return the end of both logs, for assertion messages."""
        parts = []
        if self.daemon is not None:
            parts.append(f"--- rmobiked on {self.rmobike} ---\n{self.daemon.log_tail(40)}")
        if self.peer is not None:
            tail = "\n".join(self.peer.log_text().splitlines()[-40:])
            parts.append(f"--- charon on {self.charon} ---\n{tail}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop both daemons, clear both gateways' XFRM state and save the logs; idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for stop in (self._stop_rmobiked, self._stop_charon, self._save_logs, self._flush_kernel):
            try:
                stop()
            except Exception as error:  # noqa: BLE001 - finish the cleanup, then report
                log.exception("interop cleanup step %s failed", stop.__name__)
                errors.append(error)
        if errors:
            raise errors[0]

    def _stop_rmobiked(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def _stop_charon(self) -> None:
        if self.peer is not None:
            self.peer.stop()

    def _flush_kernel(self) -> None:
        # The next test on the same lab must start from an empty kernel state, even when a daemon
        # died and left its SAs behind.
        for namespace in (self.rmobike_namespace, self.charon_namespace):
            namespace.run(["ip", "xfrm", "state", "flush"])
            namespace.run(["ip", "xfrm", "policy", "flush"])

    def _save_logs(self) -> None:
        out = os.environ.get("RMOBIKE_LAB_OUT")
        if not out:
            return
        directory = Path(out) / "interop" / self.label
        directory.mkdir(parents=True, exist_ok=True)
        sources = []
        if self.daemon is not None:
            sources.append((self.daemon.log_path, "rmobiked.log"))
        if self.peer is not None:
            sources.append((self.peer.log_path, "charon.log"))
        for source, name in sources:
            with contextlib.suppress(FileNotFoundError):
                shutil.copy(source, directory / name)


def charon_ike_sas(charon: Charon) -> list[dict]:
    """Return charon's IKE SAs of connection "site" (two during an IKE rekey)."""
    return [ike_sa for name, ike_sa in charon.list_ike_sas() if name == "site"]


def installed_child(ike_sa: dict) -> dict | None:
    """Return the one INSTALLED child of an rmobiked list-sas IKE SA, or None."""
    children = [child for child in ike_sa["children"] if child["state"] == "INSTALLED"]
    return children[0] if len(children) == 1 else None


def charon_child(ike_sa: dict) -> dict | None:
    """Return the one INSTALLED CHILD_SA of a charon list-sas IKE SA, or None."""
    children = [child for child in ike_sa.get("child-sas", {}).values() if child.get("state") == "INSTALLED"]
    return children[0] if len(children) == 1 else None



# -- checks on both ends --------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelView:
    """The same tunnel from both ends: rmobiked's and charon's list-sas entries of "site"."""

    ours: dict  # rmobiked: list-sas --json IKE SA
    theirs: dict  # charon: vici list-sas IKE SA
    our_child: dict
    their_child: dict


def tunnel_view(pair: InteropPair) -> TunnelView | None:
    """Return both ends' view if both have "site" ESTABLISHED with one installed "lan", else None."""
    assert pair.daemon is not None and pair.peer is not None
    ours, theirs = pair.rmobike_ike_sas(), charon_ike_sas(pair.peer)
    if len(ours) != 1 or len(theirs) != 1:
        return None
    ours, theirs = ours[0], theirs[0]
    if ours["state"] != "ESTABLISHED" or theirs.get("state") != "ESTABLISHED":
        return None
    our_child, their_child = installed_child(ours), charon_child(theirs)
    if our_child is None or their_child is None:
        return None
    return TunnelView(ours=ours, theirs=theirs, our_child=our_child, their_child=their_child)


def wait_for_tunnel(pair: InteropPair, timeout: float = WAIT_TIMEOUT,
                    condition: Callable[[TunnelView], bool] = lambda view: True) -> TunnelView:
    """Wait until both ends have the tunnel up and `condition` holds for it; return the view."""
    def probe() -> TunnelView | None:
        view = tunnel_view(pair)
        return view if view is not None and condition(view) else None

    return wait_until("the IKE SA and CHILD_SA on both ends", probe, timeout, details=pair.logs)


def spi_mismatches(view: TunnelView) -> list[str]:
    """Return how the SPIs of rmobiked and charon disagree; empty when they match.

    IKE SPIs are the same on both ends, and an inbound ESP SPI on one end is the outbound SPI on
    the other.
    """
    pairs = [
        ("IKE SPI_i", view.ours["spi_i"], view.theirs["initiator-spi"]),
        ("IKE SPI_r", view.ours["spi_r"], view.theirs["responder-spi"]),
        ("rmobiked's inbound ESP SPI", view.our_child["spi_in"], view.their_child["spi-out"]),
        ("rmobiked's outbound ESP SPI", view.our_child["spi_out"], view.their_child["spi-in"]),
    ]
    return [f"{what}: rmobiked {ours}, charon {theirs}" for what, ours, theirs in pairs if ours != theirs]


def kernel_matches(pair: InteropPair, view: TunnelView) -> list[str]:
    """Return how both gateways' XFRM states differ from the view's CHILD_SA; empty when equal.

    Each gateway must have exactly the CHILD_SA's two ESP SAs, so an SA replaced by a rekey
    must be gone.
    """
    expected = {view.our_child["spi_in"], view.our_child["spi_out"]}
    problems = []
    for side, namespace in (("rmobiked", pair.rmobike_namespace), ("charon", pair.charon_namespace)):
        found = kernel_spis(namespace)
        if found != expected:
            problems.append(f"{side}'s kernel has ESP SAs {sorted(found)}, expected {sorted(expected)}")
    return problems


def settled(pair: InteropPair, view: TunnelView) -> bool:
    """Return whether the tunnel is steady: one CHILD_SA per end, SPIs that agree, and only its
    two ESP SAs in each kernel, so that whatever a rekey replaced is gone."""
    return (len(view.ours["children"]) == 1 and len(view.theirs.get("child-sas", {})) == 1
            and not spi_mismatches(view) and not kernel_matches(pair, view))


def probe_lans(topology: Topology, duration: float = 1.0,
               rate: float = 200.0) -> tuple[ProbeReport, ProbeReport, list]:
    """Send the LAN probe both ways under a cleartext capture; return (forward, backward, leaks)."""
    forward = lan_probe(topology, "gw1", "gw2", duration=duration, rate=rate)
    backward = lan_probe(topology, "gw2", "gw1", duration=duration, rate=rate)
    capture = CleartextCapture.on_uplinks(topology)
    capture.start()
    try:
        # Both directions at once: each probe end is a Python process, and starting four of them
        # one after the other takes long under QEMU TCG.
        with ThreadPoolExecutor(max_workers=2) as pool:
            forward_report, backward_report = pool.submit(forward.run), pool.submit(backward.run)
            reports = forward_report.result(), backward_report.result()
    finally:
        leaks = capture.stop()
    return reports[0], reports[1], leaks


def wait_for_teardown(pair: InteropPair, timeout: float = WAIT_TIMEOUT) -> None:
    """Wait until neither end has an IKE SA and neither kernel has an ESP SA or a LAN policy."""
    assert pair.daemon is not None and pair.peer is not None
    wait_until("rmobiked to remove its IKE SA", lambda: not pair.rmobike_ike_sas(),
               timeout, details=pair.logs)
    wait_until("charon to remove its IKE SA", lambda: not charon_ike_sas(pair.peer),
               timeout, details=pair.logs)
    for side, namespace in (("rmobiked", pair.rmobike_namespace), ("charon", pair.charon_namespace)):
        wait_until(f"{side}'s kernel to have no ESP SA", lambda: not kernel_spis(namespace),
                   timeout, details=lambda: f"{kernel_spis(namespace)}\n{pair.logs()}")
        wait_until(f"{side}'s kernel to have no policy", lambda: not kernel_policies(namespace),
                   timeout, details=lambda: f"{kernel_policies(namespace)}\n{pair.logs()}")


# -- fixtures for the test modules ----------------------------------------------------------


@pytest.fixture(scope="module")
def interop_lab() -> Iterator[Topology]:
    """The standard lab, shared by the tests of one module; each test starts its own daemons."""
    with build(STANDARD) as topology:
        yield topology


@pytest.fixture
def rmobike_gw1(interop_lab: Topology, request: pytest.FixtureRequest) -> Iterator[InteropPair]:
    """rmobiked on gw1 and charon on gw2 (not started yet), stopped after the test."""
    pair = InteropPair(interop_lab, rmobike="gw1", charon="gw2", label=request.node.name)
    yield pair
    pair.close()


@pytest.fixture
def rmobike_gw2(interop_lab: Topology, request: pytest.FixtureRequest) -> Iterator[InteropPair]:
    """charon on gw1 and rmobiked on gw2 (not started yet), stopped after the test."""
    pair = InteropPair(interop_lab, rmobike="gw2", charon="gw1", label=request.node.name)
    yield pair
    pair.close()
