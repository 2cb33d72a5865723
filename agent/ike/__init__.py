"""The sans-I/O IKEv2 core: RFC 7296 with MOBIKE negotiation (RFC 4555).

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
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    Lifetimes,
    Mode,
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
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "IkeSaRekeyed",
    "Lifetimes",
    "Mode",
    "ProtocolError",
    "TrafficSelector",
]
