"""Map the daemon's configuration (agent.config) onto the IKE core's objects (agent.ike.config).

The file's names follow swanctl.conf; the core's follow RFC 7296. Differences handled here:

| agent.config                      | agent.ike.config                                              |
| --------------------------------- | ------------------------------------------------------------- |
| `[secrets]` by identity           | `IkeConfig.psk` of the connection                             |
| certificate and key file paths    | loaded `x509.Certificate` and private key objects             |
| empty `local_ts` / `remote_ts` ("dynamic") | the IKE SA's addresses, known once the addresses are chosen |
| child `rekey_time` / `life_time`  | not given to the core: the kernel's soft limit triggers rekeys (`agent.kernel`) |
| `rekey_time = 0` (off)            | `rekey_time = None`                                           |
| `fragmentation = "no"`            | `fragmentation = False`; every other value is True           |
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import Config, ConnectionConfig
from agent.config import ChildConfig as ChildSettings
from agent.ike.compat import load_pem_certificates
from agent.ike.config import AuthKind, ChildConfig, EndpointSettings, IkeConfig, Identity
from agent.ike.events import Mode
from agent.ike.payloads import TrafficSelector

logger = logging.getLogger(__name__)

# Selectors that match every address of a family, for a responder's "dynamic" side when the
# connection names no address to narrow it to.
_ANY = {4: "0.0.0.0/0", 6: "::/0"}


def endpoint_settings(config: Config) -> EndpointSettings:
    return EndpointSettings(ike_port=config.agent.port, natt_port=config.agent.port_nat_t)


def build_ike_configs(config: Config) -> dict[str, IkeConfig]:
    """Return the core's IkeConfig of every connection, by connection name.

    Raises ValueError when a connection cannot be mapped (the loader checks most causes first).
    """
    return {name: build_ike_config(connection, config) for name, connection in config.connections.items()}


def build_ike_config(connection: ConnectionConfig, config: Config) -> IkeConfig:
    """Return the IkeConfig of one connection, as a responder uses it."""
    local, remote = connection.local, connection.remote
    secret = config.psk_for(local.id, remote.id)
    certificates = _load_certificates(local.certs)
    return IkeConfig(
        name=connection.name,
        local_id=Identity.from_string(local.id),
        remote_id=Identity.from_string(remote.id),
        auth=AuthKind(local.auth),
        remote_auth=AuthKind(remote.auth),
        psk=secret.secret if secret is not None else None,
        certificate=certificates[0] if certificates else None,
        intermediates=tuple(certificates[1:]),
        private_key=_load_private_key(local.key) if local.key is not None else None,
        cas=tuple(_load_certificates(remote.cacerts)),
        proposals=tuple(connection.proposals),
        children=tuple(_responder_child(child, connection) for child in connection.children.values()),
        local_addrs=tuple(str(address) for address in connection.local_addrs),
        remote_addrs=tuple(str(address) for address in connection.remote_addrs),
        mobike=connection.mobike,
        accept_switch=connection.switch,
        switch_min_interval=connection.switch_min_interval,
        # One knob for both silences: outbound ESP unanswered (agent.roaming) and an IKE request
        # unanswered on the current path, after which the original initiator probes other paths.
        path_suspect_after=connection.path_timeout or None,
        no_nats_allowed=connection.no_nats_allowed,
        retransmit_timeout=config.agent.retransmit_timeout,
        retransmit_base=config.agent.retransmit_base,
        retransmit_tries=config.agent.retransmit_tries,
        fragmentation=connection.fragmentation != "no",
        rekey_time=connection.rekey_time or None,
        # NOTE: reauth_time, over_time, encap = true and fragmentation = "accept" have no
        # counterpart in the IKE core yet and are not applied.
    )


def for_addresses(ike_config: IkeConfig, connection: ConnectionConfig, local: str, remote: str) -> IkeConfig:
    """Return `ike_config` with "dynamic" selectors set to the IKE SA's addresses, for initiating."""
    children = tuple(_child(child, local, remote) for child in connection.children.values())
    return dataclasses.replace(ike_config, children=children)


def child_config(settings: ChildSettings, local_ts: tuple[str, ...], remote_ts: tuple[str, ...]) -> ChildConfig:
    return ChildConfig(
        name=settings.name,
        local_ts=tuple(TrafficSelector.from_network(network) for network in local_ts),
        remote_ts=tuple(TrafficSelector.from_network(network) for network in remote_ts),
        esp_proposals=tuple(settings.esp_proposals),
        mode=Mode(settings.mode),
        # The kernel's soft lifetime triggers the rekey; see agent.kernel.
        rekey_time=None,
        life_time=None,
    )


def _child(settings: ChildSettings, local: str, remote: str) -> ChildConfig:
    local_ts = tuple(map(str, settings.local_ts)) or (_host(local),)
    remote_ts = tuple(map(str, settings.remote_ts)) or (_host(remote),)
    return child_config(settings, local_ts, remote_ts)


def _responder_child(settings: ChildSettings, connection: ConnectionConfig) -> ChildConfig:
    local_ts = tuple(map(str, settings.local_ts)) or _dynamic(connection.local_addrs, settings.remote_ts)
    remote_ts = tuple(map(str, settings.remote_ts)) or _dynamic(connection.remote_addrs, settings.local_ts)
    return child_config(settings, local_ts, remote_ts)


def _dynamic(addresses, other_side) -> tuple[str, ...]:
    """Return selectors for a responder's "dynamic" side: the connection's addresses, or any."""
    if addresses:
        return tuple(str(ipaddress.ip_network(address)) for address in addresses)
    # NOTE: without local_addrs / remote_addrs a responder's dynamic side accepts whatever
    # address the initiator proposes, not only the IKE SA's own address.
    versions = {network.version for network in other_side} or {4, 6}
    return tuple(_ANY[version] for version in sorted(versions))


def _host(address: str) -> str:
    return str(ipaddress.ip_network(address))


def _load_certificates(paths: tuple[Path, ...]) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for path in paths:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            certificates += load_pem_certificates(data)
        else:
            certificates.append(x509.load_der_x509_certificate(data))
    return certificates


def _load_private_key(path: Path):
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_der_private_key(data, password=None)
