"""The sans-I/O IKEv2 core: RFC 7296 with MOBIKE (RFC 4555), SWITCH_TO_IP_ADDRESS and redirect (RFC 5685).

A driver creates an `IkeEndpoint`, feeds it datagrams and timer ticks, sends what it returns and
acts on its events. Nothing here opens a socket, reads a clock or touches the kernel.
"""

from .config import AuthKind, ChildConfig, EndpointSettings, IkeConfig, Identity
from .endpoint import IkeEndpoint
from .errors import ProtocolError
from .events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInfo,
    ChildSaReady,
    ChildSaRekeyed,
    IkeSaAddressesChanged,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRedirected,
    IkeSaRekeyed,
    Lifetimes,
    Mode,
    PathSuspect,
    PathUpdateFailed,
    PeerAddressesChanged,
    PrepareInbound,
    SwitchAccepted,
    SwitchFailed,
)
from .payloads import TrafficSelector

__all__ = [
    "AuthKind",
    "ChildConfig",
    "ChildSaDeleted",
    "ChildSaFailed",
    "ChildSaInfo",
    "ChildSaReady",
    "ChildSaRekeyed",
    "EndpointSettings",
    "Identity",
    "IkeConfig",
    "IkeEndpoint",
    "IkeSaAddressesChanged",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "IkeSaRedirected",
    "IkeSaRekeyed",
    "Lifetimes",
    "Mode",
    "PathSuspect",
    "PathUpdateFailed",
    "PeerAddressesChanged",
    "PrepareInbound",
    "SwitchAccepted",
    "ProtocolError",
    "SwitchFailed",
    "TrafficSelector",
]
