"""Load and validate the daemon's configuration file, /etc/rmobike/rmobike.toml.

Key names follow strongSwan's swanctl.conf, so that a connection reads the same in both.
docs/config.md describes every key. Validation collects every error, not only the first;
each error names the file, the dotted key (`connections.site.children.lan.local_ts[0]`),
what is wrong and what is expected. Unknown keys are errors, with a suggestion when the
key looks like a known one.

    config = load_config("/etc/rmobike/rmobike.toml")   # raises ConfigError
    errors = check_config(path)                         # for rmobiked --check
    diff = diff_configs(old, new)                       # for SIGHUP reload
"""

import base64
import binascii
import difflib
import ipaddress
import logging
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from agent.control import DEFAULT_CONTROL_SOCKET
from agent.duration import EXPECTED as DURATION_EXPECTED
from agent.duration import DurationError, parse_duration
from agent.ike.compat import load_pem_certificates
from agent.ike.constants import IdType, NotifyType, ProtocolId
from agent.ike.proposal import ProposalError, Transform, parse_proposal
from agent.logs import LEVELS

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/rmobike/rmobike.toml"
DEFAULT_STATE_DIR = "/var/lib/rmobike"
DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519",)
DEFAULT_ESP_PROPOSALS = ("aes256gcm16",)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Connection, child and secret names appear in logs, journald fields and rmobikectl
# arguments, so they are limited to characters that need no quoting anywhere.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_EXPECTED = "a name of letters, digits, '_', '.' and '-', at most 64 characters"


@dataclass(frozen=True)
class AgentConfig:
    """The [agent] table: settings of the daemon itself."""

    control_socket: Path = Path(DEFAULT_CONTROL_SOCKET)
    log_level: str = "info"
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    port: int = 500
    port_nat_t: int = 4500
    keep_alive: float = 20.0  # NAT-T keepalive interval in seconds, 0 disables them
    switch_notify_type: int = int(NotifyType.SWITCH_TO_IP_ADDRESS)
    # IKE retransmissions: the n-th waits retransmit_timeout * retransmit_base ** n seconds.
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5


@dataclass(frozen=True)
class EndpointAuth:
    """A [connections.NAME.local] or [connections.NAME.remote] table."""

    auth: str  # "psk" or "pubkey"
    id: str
    id_type: IdType
    certs: tuple[Path, ...] = ()  # local pubkey: end-entity certificate first
    key: Path | None = None  # local pubkey: private key file
    cacerts: tuple[Path, ...] = ()  # remote pubkey: trusted CA certificates


@dataclass(frozen=True)
class ChildConfig:
    """A [connections.NAME.children.CHILD] table. Durations are in seconds.

    Empty `local_ts` or `remote_ts` means the IKE SA's current local or remote address
    (swanctl's "dynamic").
    """

    name: str
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    esp_proposals: tuple[str, ...]
    esp_transforms: tuple[tuple[Transform, ...], ...]
    start_action: str  # "start", "trap" or "none"
    mode: str  # "tunnel" or "transport"
    rekey_time: float
    life_time: float
    rand_time: float
    dpd_action: str  # "clear", "trap" or "restart"
    close_action: str  # "none", "trap" or "start"
    replay_window: int


@dataclass(frozen=True)
class ConnectionConfig:
    """A [connections.NAME] table with its local, remote and children tables.

    Durations are in seconds, 0 disables the timer. Empty `local_addrs` accepts any local
    address. Empty `remote_addrs` accepts any peer, which only a responder can use.
    """

    name: str
    local_addrs: tuple[Address | Network, ...]
    remote_addrs: tuple[Address | Network, ...]
    local_port: int
    remote_port: int
    proposals: tuple[str, ...]
    ike_transforms: tuple[tuple[Transform, ...], ...]
    version: int
    mobike: bool
    switch: bool
    switch_min_interval: float
    path_timeout: float
    no_nats_allowed: bool
    dpd_delay: float
    rekey_time: float
    over_time: float
    reauth_time: float
    rand_time: float
    keyingtries: int
    fragmentation: str  # "yes", "accept", "force" or "no"
    encap: bool
    local: EndpointAuth
    remote: EndpointAuth
    children: Mapping[str, ChildConfig]

    def remote_hosts(self) -> tuple[Address, ...]:
        """Return the single addresses of remote_addrs, the ones an initiator can send to."""
        return tuple(a for a in self.remote_addrs if not isinstance(a, _NETWORK_TYPES))

    def accepts_remote(self, address: Address) -> bool:
        """Return whether `address` matches remote_addrs (an empty list matches anything)."""
        return _address_matches(address, self.remote_addrs)

    def accepts_local(self, address: Address) -> bool:
        """Return whether `address` matches local_addrs (an empty list matches anything)."""
        return _address_matches(address, self.local_addrs)


@dataclass(frozen=True)
class Secret:
    """A [secrets.NAME] table: a pre-shared key for the identity `id`."""

    name: str
    id: str
    secret: bytes = field(repr=False)
    source: str  # "secret" or the path of secret_file, for messages


@dataclass(frozen=True)
class Config:
    """A validated configuration file."""

    path: Path
    agent: AgentConfig
    connections: Mapping[str, ConnectionConfig]
    secrets: Mapping[str, Secret]
    warnings: tuple[str, ...] = ()

    def psk_for(self, local_id: str, remote_id: str) -> Secret | None:
        """Return the secret for the remote identity, else for the local identity, else None."""
        for identity in (remote_id, local_id):
            for secret in self.secrets.values():
                if secret.id == identity:
                    return secret
        return None


class ConfigError(Exception):
    """The configuration is invalid. `errors` contains one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ConfigDiff:
    """Connections that a reload adds, removes, changes or keeps, and the changed [agent] keys.

    Connection names are sorted.

    A connection is "changed" when any of its values differ, children included. Secrets are
    not part of a connection: a changed secret is used from the next authentication on,
    and existing SAs stay up.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    agent_changed: tuple[str, ...]  # names of [agent] keys whose value changed

    def to_json(self) -> dict[str, list[str]]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a configuration file. Raises ConfigError with every problem found."""
    loader = _Loader(Path(path))
    config = loader.load()
    if loader.errors:
        raise ConfigError(loader.errors)

    assert config is not None
    for warning in config.warnings:
        logger.warning("%s", warning)
    return config


def check_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> list[str]:
    """Validate a configuration file and return its errors, an empty list when it is valid."""
    try:
        load_config(path)
    except ConfigError as error:
        return error.errors
    return []


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configurations, for a reload that keeps unchanged connections up."""
    old_names = set(old.connections)
    new_names = set(new.connections)
    common = old_names & new_names
    changed = {name for name in common if old.connections[name] != new.connections[name]}

    agent_changed = tuple(
        f.name
        for f in fields(AgentConfig)
        if getattr(old.agent, f.name) != getattr(new.agent, f.name)
    )
    return ConfigDiff(
        added=tuple(sorted(new_names - old_names)),
        removed=tuple(sorted(old_names - new_names)),
        changed=tuple(sorted(changed)),
        unchanged=tuple(sorted(common - changed)),
        agent_changed=agent_changed,
    )


# --- Value parsers -------------------------------------------------------------------
#
# Each parser takes a TOML value and returns the typed value, or raises _Invalid. A list
# parser reports every bad item, each with its index.

_NETWORK_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network)


class _Invalid(Exception):
    """Problems with one value: (suffix of the key such as "[2]", problem, expected)."""

    def __init__(self, problem: str, expected: str | None = None, *, at: str = "") -> None:
        super().__init__(problem)
        self.items = [(at, problem, expected)]

    @classmethod
    def merge(cls, problems: list["_Invalid"]) -> "_Invalid":
        merged = cls("")
        merged.items = [item for problem in problems for item in problem.items]
        return merged


def _type_name(value: Any) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    return names.get(type(value), type(value).__name__)


def _described(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {_type_name(value)}"
    return f"{_type_name(value)} {value!r}"


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"invalid value {_described(value)}", "a non-empty string")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"invalid value {_described(value)}", "true or false")
    return value


def _integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise _Invalid(
                f"invalid value {_described(value)}", f"an integer from {minimum} to {maximum}"
            )
        return value

    return parse


_port = _integer(1, 65535)


def _number(minimum: float, maximum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
            raise _Invalid(f"invalid value {_described(value)}", f"a number from {minimum:g} to {maximum:g}")
        return float(value)

    return parse


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except DurationError as error:
        raise _Invalid(str(error), DURATION_EXPECTED) from None


def _choice(*choices: str) -> Callable[[Any], str]:
    expected = " or ".join(f'"{choice}"' for choice in choices)

    def parse(value: Any) -> str:
        if value not in choices or isinstance(value, bool):
            raise _Invalid(f"invalid value {_described(value)}", expected)
        return value

    return parse


def _fragmentation(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _choice("yes", "accept", "force", "no")(value)


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LEVELS:
        raise _Invalid(f"invalid value {_described(value)}", " or ".join(f'"{n}"' for n in LEVELS))
    return value.lower()


def _absolute_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _Invalid(f"invalid value {_described(value)}", "an absolute path as a string")
    return Path(value)


def _list_of(
    parse_item: Callable[[Any], Any], example: str, *, non_empty: bool = False
) -> Callable[[Any], tuple[Any, ...]]:
    def parse(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"invalid value {_described(value)}", f"an array such as {example}")
        if non_empty and not value:
            raise _Invalid("empty array", f"at least one item, such as {example}")

        items, problems = [], []
        for index, item in enumerate(value):
            try:
                items.append(parse_item(item))
            except _Invalid as problem:
                for position, entry in enumerate(problem.items):
                    problem.items[position] = (f"[{index}]{entry[0]}", entry[1], entry[2])
                problems.append(problem)
        if problems:
            raise _Invalid.merge(problems)
        return tuple(items)

    return parse


def _address_or_prefix(value: Any) -> Address | Network:
    expected = 'an IP address or prefix such as "198.51.100.10" or "198.51.100.0/24"'
    if not isinstance(value, str):
        raise _Invalid(f"invalid value {_described(value)}", expected)

    if "/" not in value:
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise _Invalid(
                f"{value!r} is not an IP address (DNS names are not supported)", expected
            ) from None
    return _prefix(value, expected)


def _traffic_selector(value: Any) -> Network:
    expected = 'an IP prefix such as "10.1.0.0/24", or a single address'
    if not isinstance(value, str):
        raise _Invalid(f"invalid value {_described(value)}", expected)
    # NOTE: protocol and port selectors (swanctl's "10.1.0.0/24[tcp/80]") are not supported.
    return _prefix(value, expected)


def _prefix(text: str, expected: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass

    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(f"{text!r} is not an IP prefix", expected) from None
    raise _Invalid(f"{text!r} has host bits set", f'the network address, "{network}"')


def _proposal(
    protocol: ProtocolId, example: str
) -> Callable[[Any], tuple[str, tuple[Transform, ...]]]:
    def parse(value: Any) -> tuple[str, tuple[Transform, ...]]:
        if not isinstance(value, str) or not value:
            raise _Invalid(
                f"invalid value {_described(value)}", f"a proposal string such as {example}"
            )
        try:
            transforms = parse_proposal(value, protocol)
        except ProposalError as error:
            raise _Invalid(f"invalid proposal {value!r}: {error}") from None
        return value, tuple(transforms)

    return parse


def _identity_type(text: str) -> IdType:
    """Classify an identity string the way swanctl.conf does for its common forms."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR

    if text.startswith("@#"):
        return IdType.ID_KEY_ID
    if "=" in text:
        return IdType.ID_DER_ASN1_DN
    if "@" in text[1:]:
        return IdType.ID_RFC822_ADDR
    return IdType.ID_FQDN


def _identity(value: Any) -> tuple[str, IdType]:
    text = _string(value)
    id_type = _identity_type(text)
    if id_type == IdType.ID_KEY_ID:
        try:
            bytes.fromhex(text[2:])
        except ValueError:
            raise _Invalid(f"invalid key id {text!r}", 'hex digits after "@#"') from None
    return text, id_type


def _decode_secret(text: str) -> bytes:
    """Decode a PSK: "0x" + hex, "0s" + base64 (as in swanctl.conf), otherwise UTF-8 text."""
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise _Invalid('invalid hex after "0x"', "hex digits") from None
    if text.startswith("0s"):
        try:
            return base64.b64decode(text[2:], validate=True)
        except binascii.Error:
            raise _Invalid('invalid base64 after "0s"', "base64 text") from None
    return text.encode()


# --- File checks ---------------------------------------------------------------------


def _check_private_file(path: Path, what: str) -> bytes:
    """Read a file that contains a secret. Raises _Invalid if users outside its owner and
    group may read or write it."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise _Invalid(f"{what} {path} not found") from None
    except OSError as error:
        raise _Invalid(f"cannot read {what} {path}: {error.strerror}") from None

    if not stat.S_ISREG(status.st_mode):
        raise _Invalid(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o006:
        raise _Invalid(
            f"{what} {path} is accessible to all users (mode {mode:04o})",
            f"no permissions for others; run chmod o-rwx {path}",
        )

    try:
        return path.read_bytes()
    except OSError as error:
        raise _Invalid(f"cannot read {what} {path}: {error.strerror}") from None


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Invalid(f"{what} {path} not found") from None
    except OSError as error:
        raise _Invalid(f"cannot read {what} {path}: {error.strerror}") from None


def _certificate_file(value: Any) -> Path:
    path = _absolute_path(value)
    data = _read_file(path, "certificate file")
    try:
        if b"-----BEGIN" in data:
            load_pem_certificates(data)
        else:
            x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise _Invalid(f"{path} is not a PEM or DER X.509 certificate: {error}") from None
    return path


def _private_key_file(value: Any) -> Path:
    path = _absolute_path(value)
    data = _check_private_file(path, "private key file")
    try:
        if b"-----BEGIN" in data:
            serialization.load_pem_private_key(data, password=None)
        else:
            serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise _Invalid(f"{path} is encrypted", "an unencrypted private key") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise _Invalid(f"{path} is not a PEM or DER private key: {error}") from None
    return path


def _secret_file(value: Any) -> bytes:
    path = _absolute_path(value)
    data = _check_private_file(path, "secret file")
    try:
        text = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise _Invalid(
            f"{path} is not UTF-8 text", 'the secret as text, or as "0x" + hex or "0s" + base64'
        ) from None
    if not text:
        raise _Invalid(f"{path} is empty", "the secret")
    return _decode_secret(text)


# --- Schemas -------------------------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class _Key:
    """A key of a table: its parser, its default, and for required keys what to write."""

    parse: Callable[[Any], Any]
    default: Any = _REQUIRED
    expected: str | None = None


_AGENT_KEYS: dict[str, _Key] = {
    "control_socket": _Key(_absolute_path, Path(DEFAULT_CONTROL_SOCKET)),
    "log_level": _Key(_log_level, "info"),
    "state_dir": _Key(_absolute_path, Path(DEFAULT_STATE_DIR)),
    "port": _Key(_port, 500),
    "port_nat_t": _Key(_port, 4500),
    "keep_alive": _Key(_duration, 20.0),
    # Status notify types are 16384-65535 (RFC 7296 §3.10.1).
    "switch_notify_type": _Key(_integer(16384, 65535), int(NotifyType.SWITCH_TO_IP_ADDRESS)),
    "retransmit_timeout": _Key(_duration, 4.0),
    "retransmit_base": _Key(_number(1.0, 10.0), 1.8),
    "retransmit_tries": _Key(_integer(0, 20), 5),
}

_ADDRESSES_EXAMPLE = '["198.51.100.10", "203.0.113.10"]'

_CONNECTION_KEYS: dict[str, _Key] = {
    "local_addrs": _Key(_list_of(_address_or_prefix, _ADDRESSES_EXAMPLE), ()),
    "remote_addrs": _Key(_list_of(_address_or_prefix, _ADDRESSES_EXAMPLE), ()),
    "local_port": _Key(_port, 500),
    "remote_port": _Key(_port, 500),
    "proposals": _Key(
        _list_of(
            _proposal(ProtocolId.IKE, '"aes256gcm16-prfsha384-x25519"'),
            '["aes256gcm16-prfsha384-x25519"]',
            non_empty=True,
        ),
        None,
    ),
    "version": _Key(_integer(2, 2), 2),
    "mobike": _Key(_boolean, True),
    "switch": _Key(_boolean, False),
    "switch_min_interval": _Key(_duration, 1.0),
    "path_timeout": _Key(_duration, 1.0),
    "no_nats_allowed": _Key(_boolean, False),
    "dpd_delay": _Key(_duration, 0.0),
    "rekey_time": _Key(_duration, 4 * 3600.0),
    "over_time": _Key(_duration, None),
    "reauth_time": _Key(_duration, 0.0),
    "rand_time": _Key(_duration, None),
    "keyingtries": _Key(_integer(0, 1000), 1),
    "fragmentation": _Key(_fragmentation, "yes"),
    "encap": _Key(_boolean, False),
}
_CONNECTION_TABLES = ("local", "remote", "children")

_ENDPOINT_KEYS: dict[str, dict[str, _Key]] = {
    "local": {
        "auth": _Key(_choice("psk", "pubkey"), expected='"psk" or "pubkey"'),
        "id": _Key(_identity, expected='an identity such as "gw-a.example.net"'),
        "certs": _Key(_list_of(_certificate_file, '["/etc/rmobike/gw-a.crt"]'), ()),
        "key": _Key(_private_key_file, None),
    },
    "remote": {
        "auth": _Key(_choice("psk", "pubkey"), expected='"psk" or "pubkey"'),
        "id": _Key(_identity, expected='an identity such as "gw-b.example.net"'),
        "cacerts": _Key(_list_of(_certificate_file, '["/etc/rmobike/ca.crt"]'), ()),
    },
}

_PREFIXES_EXAMPLE = '["10.1.0.0/24"]'

_CHILD_KEYS: dict[str, _Key] = {
    "local_ts": _Key(_list_of(_traffic_selector, _PREFIXES_EXAMPLE), ()),
    "remote_ts": _Key(_list_of(_traffic_selector, _PREFIXES_EXAMPLE), ()),
    "esp_proposals": _Key(
        _list_of(_proposal(ProtocolId.ESP, '"aes256gcm16"'), '["aes256gcm16"]', non_empty=True),
        None,
    ),
    "start_action": _Key(_choice("start", "trap", "none"), "none"),
    "mode": _Key(_choice("tunnel", "transport"), "tunnel"),
    "rekey_time": _Key(_duration, 3600.0),
    "life_time": _Key(_duration, None),
    "rand_time": _Key(_duration, None),
    "dpd_action": _Key(_choice("clear", "trap", "restart"), "clear"),
    "close_action": _Key(_choice("none", "trap", "start"), "none"),
    "replay_window": _Key(_integer(0, 4096), 32),
}

_SECRET_KEYS: dict[str, _Key] = {
    "id": _Key(_string, expected='the identity the secret is for, such as "gw-b.example.net"'),
    "secret": _Key(_string, None),
    "secret_file": _Key(_secret_file, None),
}

_TOP_LEVEL_TABLES = ("agent", "connections", "secrets")


# --- Loader --------------------------------------------------------------------------


def _key_path(parent: str, name: str) -> str:
    """Join a dotted key path, quoting a name that is not a bare TOML key."""
    part = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'
    return f"{parent}.{part}" if parent else part


class _Loader:
    """One validation run over one file, collecting every error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[str] = []
        self._broken_secret_ids: set[str] = set()  # ids of [secrets.*] tables with errors
        self.warnings: list[str] = []

    def error(self, key: str, problem: str, expected: str | None = None) -> None:
        location = f"{self.path}: {key}: " if key else f"{self.path}: "
        message = location + problem
        if expected:
            message += f" (expected {expected})"
        self.errors.append(message)

    def load(self) -> Config | None:
        document = self._read_document()
        if document is None:
            return None

        self._reject_unknown("", document, _TOP_LEVEL_TABLES)
        agent = self._agent(self._table(document, "", "agent") or {})
        secrets = self._secrets(self._table(document, "", "secrets") or {})
        connections = self._connections(self._table(document, "", "connections") or {}, secrets)
        if self.errors:
            return None

        self._warn_if_readable(secrets)
        return Config(
            path=self.path,
            agent=agent,
            connections=MappingProxyType(connections),
            secrets=MappingProxyType(secrets),
            warnings=tuple(self.warnings),
        )

    def _read_document(self) -> dict[str, Any] | None:
        try:
            with self.path.open("rb") as file:
                return tomllib.load(file)
        except FileNotFoundError:
            self.error("", "file not found")
        except OSError as error:
            self.error("", f"cannot read the file: {error.strerror}")
        except tomllib.TOMLDecodeError as error:
            self.error("", f"invalid TOML: {error}")
        return None

    def _table(self, parent: dict[str, Any], parent_key: str, name: str) -> dict[str, Any] | None:
        """Return the sub-table `name`, {} when it is absent.

        Returns None, after recording an error, when the value is not a table.
        """
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.error(_key_path(parent_key, name), f"invalid value {_described(value)}", "a table")
            return None
        return value

    def _reject_unknown(self, key: str, table: dict[str, Any], known: Iterable[str]) -> None:
        known = list(known)
        for name in table:
            if name in known:
                continue
            suggestion = difflib.get_close_matches(name, known, n=1)
            hint = f'; did you mean "{suggestion[0]}"?' if suggestion else ""
            self.error(_key_path(key, name), f"unknown key{hint}", "one of " + ", ".join(known))

    def _read_keys(
        self, key: str, table: dict[str, Any], schema: dict[str, _Key]
    ) -> dict[str, Any] | None:
        """Parse the keys of `schema` from `table`. Returns None if any of them is invalid."""
        values: dict[str, Any] = {}
        valid = True
        for name, spec in schema.items():
            if name not in table:
                if spec.default is _REQUIRED:
                    self.error(_key_path(key, name), "missing", spec.expected)
                    valid = False
                else:
                    values[name] = spec.default
                continue

            try:
                values[name] = spec.parse(table[name])
            except _Invalid as problem:
                for at, text, expected in problem.items:
                    self.error(_key_path(key, name) + at, text, expected)
                valid = False
        return values if valid else None

    def _valid_name(self, key: str, name: str) -> bool:
        if _NAME.fullmatch(name):
            return True
        self.error(key, f"invalid name {name!r}", _NAME_EXPECTED)
        return False

    # [agent]

    def _agent(self, table: dict[str, Any]) -> AgentConfig:
        self._reject_unknown("agent", table, _AGENT_KEYS)
        values = self._read_keys("agent", table, _AGENT_KEYS)
        if values is None:
            return AgentConfig()

        if values["port"] == values["port_nat_t"]:
            self.error(
                "agent.port_nat_t",
                f"is the same as agent.port ({values['port']})",
                "a different port",
            )
        if values["retransmit_timeout"] <= 0:
            self.error("agent.retransmit_timeout", "is 0", 'a duration above 0, such as "4s"')
        return AgentConfig(**values)

    # [secrets.NAME]

    def _secrets(self, tables: dict[str, Any]) -> dict[str, Secret]:
        secrets: dict[str, Secret] = {}
        for name in tables:
            key = _key_path("secrets", name)
            table = self._table(tables, "secrets", name)
            if table is None or not self._valid_name(key, name):
                continue
            secret = self._secret(key, name, table)
            if secret is not None:
                secrets[name] = secret
            elif isinstance(table.get("id"), str):
                # Already reported, so a connection that needs this identity's secret adds no error.
                self._broken_secret_ids.add(table["id"])

        seen: dict[str, str] = {}
        for name, secret in secrets.items():
            if secret.id in seen:
                self.error(
                    _key_path(_key_path("secrets", name), "id"),
                    f"{secret.id!r} already has a secret in [secrets.{seen[secret.id]}]",
                    "one secret per identity",
                )
            seen.setdefault(secret.id, name)
        return secrets

    def _secret(self, key: str, name: str, table: dict[str, Any]) -> Secret | None:
        self._reject_unknown(key, table, _SECRET_KEYS)
        values = self._read_keys(key, table, _SECRET_KEYS)
        if values is None:
            return None

        inline, from_file = values["secret"], values["secret_file"]
        if (inline is None) == (from_file is None):
            self.error(
                key,
                "needs exactly one of secret and secret_file",
                'secret = "..." or secret_file = "/path"',
            )
            return None

        if from_file is not None:
            return Secret(name=name, id=values["id"], secret=from_file, source=table["secret_file"])
        try:
            decoded = _decode_secret(inline)
        except _Invalid as problem:
            for at, text, expected in problem.items:
                self.error(_key_path(key, "secret") + at, text, expected)
            return None
        return Secret(name=name, id=values["id"], secret=decoded, source="secret")

    def _warn_if_readable(self, secrets: dict[str, Secret]) -> None:
        if not any(secret.source == "secret" for secret in secrets.values()):
            return
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
        except OSError:
            return
        if mode & 0o004:
            self.warnings.append(
                f"{self.path}: contains secrets and is readable by all users (mode {mode:04o});"
                f" run chmod o-rwx {self.path} or move the secrets to secret_file"
            )

    # [connections.NAME]

    def _connections(
        self, tables: dict[str, Any], secrets: dict[str, Secret]
    ) -> dict[str, ConnectionConfig]:
        connections = {}
        for name in tables:
            key = _key_path("connections", name)
            table = self._table(tables, "connections", name)
            if table is None or not self._valid_name(key, name):
                continue
            connection = self._connection(key, name, table)
            if connection is not None:
                self._check_connection(key, connection, secrets)
                connections[name] = connection
        return connections

    def _connection(self, key: str, name: str, table: dict[str, Any]) -> ConnectionConfig | None:
        self._reject_unknown(key, table, [*_CONNECTION_KEYS, *_CONNECTION_TABLES])
        values = self._read_keys(key, table, _CONNECTION_KEYS)
        local = self._endpoint(key, "local", table)
        remote = self._endpoint(key, "remote", table)
        children = self._children(key, table)
        if values is None or local is None or remote is None or children is None:
            return None

        proposals = values.pop("proposals") or [
            _proposal(ProtocolId.IKE, "")(p) for p in DEFAULT_IKE_PROPOSALS
        ]
        values["proposals"] = tuple(text for text, _ in proposals)
        values["ike_transforms"] = tuple(transforms for _, transforms in proposals)
        # Margins as in swanctl.conf: over_time defaults to 10% of the longer of rekey_time
        # and reauth_time, and rand_time to over_time.
        if values["over_time"] is None:
            values["over_time"] = 0.1 * max(values["rekey_time"], values["reauth_time"])
        if values["rand_time"] is None:
            values["rand_time"] = values["over_time"]

        return ConnectionConfig(
            name=name, local=local, remote=remote, children=MappingProxyType(children), **values
        )

    def _endpoint(self, key: str, side: str, connection: dict[str, Any]) -> EndpointAuth | None:
        side_key = _key_path(key, side)
        if side not in connection:
            self.error(side_key, "missing table", f"[{side_key}] with auth and id")
            return None

        table = self._table(connection, key, side)
        if table is None:
            return None
        schema = _ENDPOINT_KEYS[side]
        self._reject_unknown(side_key, table, schema)
        values = self._read_keys(side_key, table, schema)
        if values is None:
            return None

        identity, id_type = values.pop("id")
        endpoint = EndpointAuth(id=identity, id_type=id_type, **values)
        if not self._check_endpoint(side_key, side, endpoint):
            return None
        return endpoint

    def _check_endpoint(self, key: str, side: str, endpoint: EndpointAuth) -> bool:
        """Check that the credential keys match the auth method."""
        errors_before = len(self.errors)
        credentials = {"certs": endpoint.certs, "key": endpoint.key, "cacerts": endpoint.cacerts}
        if endpoint.auth == "psk":
            for name, value in credentials.items():
                if value:
                    self.error(_key_path(key, name), 'is only valid with auth = "pubkey"')
        elif side == "local":
            if not endpoint.certs:
                self.error(
                    _key_path(key, "certs"),
                    'missing for auth = "pubkey"',
                    '["/etc/rmobike/gw-a.crt"]',
                )
            if endpoint.key is None:
                self.error(
                    _key_path(key, "key"), 'missing for auth = "pubkey"', '"/etc/rmobike/gw-a.key"'
                )
        elif not endpoint.cacerts:
            self.error(
                _key_path(key, "cacerts"), 'missing for auth = "pubkey"', '["/etc/rmobike/ca.crt"]'
            )
        return len(self.errors) == errors_before

    # [connections.NAME.children.CHILD]

    def _children(self, key: str, connection: dict[str, Any]) -> dict[str, ChildConfig] | None:
        children_key = _key_path(key, "children")
        tables = self._table(connection, key, "children")
        if tables is None:
            return None
        children: dict[str, ChildConfig] = {}
        valid = True
        for name in tables:
            child_key = _key_path(children_key, name)
            table = self._table(tables, children_key, name)
            valid_name = table is not None and self._valid_name(child_key, name)
            child = self._child(child_key, name, table) if valid_name else None
            if child is None:
                valid = False
            else:
                children[name] = child
        return children if valid else None

    def _child(self, key: str, name: str, table: dict[str, Any]) -> ChildConfig | None:
        self._reject_unknown(key, table, _CHILD_KEYS)
        values = self._read_keys(key, table, _CHILD_KEYS)
        if values is None:
            return None

        proposals = values.pop("esp_proposals") or [
            _proposal(ProtocolId.ESP, "")(p) for p in DEFAULT_ESP_PROPOSALS
        ]
        values["esp_proposals"] = tuple(text for text, _ in proposals)
        values["esp_transforms"] = tuple(transforms for _, transforms in proposals)
        # As in swanctl.conf: life_time defaults to rekey_time + 10%, and rand_time to the
        # difference between the two.
        if values["life_time"] is None:
            values["life_time"] = 1.1 * values["rekey_time"]
        if values["rand_time"] is None:
            values["rand_time"] = values["life_time"] - values["rekey_time"]

        child = ChildConfig(name=name, **values)
        if not self._check_child(key, child):
            return None
        return child

    def _check_child(self, key: str, child: ChildConfig) -> bool:
        errors_before = len(self.errors)
        if child.rekey_time and child.life_time and child.life_time <= child.rekey_time:
            self.error(
                _key_path(key, "life_time"),
                f"{child.life_time:g} s is not longer than rekey_time ({child.rekey_time:g} s)",
                "a life_time longer than rekey_time",
            )
        if (
            child.local_ts
            and child.remote_ts
            and not _families(child.local_ts) & _families(child.remote_ts)
        ):
            self.error(
                _key_path(key, "remote_ts"),
                "has no address family in common with local_ts",
                "IPv4 prefixes on both sides, or IPv6 prefixes on both sides",
            )
        return len(self.errors) == errors_before

    # Checks across a connection's tables.

    def _check_connection(
        self, key: str, connection: ConnectionConfig, secrets: dict[str, Secret]
    ) -> None:
        if connection.switch and not connection.mobike:
            self.error(
                _key_path(key, "switch"),
                "true needs mobike = true",
                "mobike = true, or switch = false",
            )

        starting = [
            c.name for c in connection.children.values() if c.start_action in ("start", "trap")
        ]
        if starting and not connection.remote_hosts():
            self.error(
                _key_path(key, "remote_addrs"),
                f"has no single address to initiate to, but child {starting[0]} has start_action = "
                f'"{connection.children[starting[0]].start_action}"',
                'at least one IP address, such as ["198.51.100.20"]',
            )

        local_families = _families(connection.local_addrs)
        remote_families = _families(connection.remote_addrs)
        if local_families and remote_families and not local_families & remote_families:
            self.error(
                _key_path(key, "remote_addrs"),
                "has no address family in common with local_addrs",
                "IPv4 addresses on both sides, or IPv6 addresses on both sides",
            )

        self._check_psk(key, connection, secrets)

    def _check_psk(
        self, key: str, connection: ConnectionConfig, secrets: dict[str, Secret]
    ) -> None:
        ids = (connection.remote.id, connection.local.id)
        for side, endpoint in (("local", connection.local), ("remote", connection.remote)):
            if endpoint.auth != "psk":
                continue
            if any(secret.id in ids for secret in secrets.values()) or self._broken_secret_ids & set(ids):
                return
            self.error(
                _key_path(_key_path(key, side), "auth"),
                f'"psk" needs a secret for {ids[0]!r} or {ids[1]!r}, and there is none',
                f'a [secrets.{connection.name}] table with id = "{ids[0]}"'
                " and secret or secret_file",
            )
            return


def _families(items: Iterable[Address | Network]) -> set[int]:
    return {item.version for item in items}


def _address_matches(address: Address, allowed: tuple[Address | Network, ...]) -> bool:
    if not allowed:
        return True
    for item in allowed:
        if isinstance(item, _NETWORK_TYPES):
            if address.version == item.version and address in item:
                return True
        elif address == item:
            return True
    return False
