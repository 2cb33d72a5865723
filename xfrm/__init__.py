"""Program the Linux kernel's IPsec tables (XFRM) over netlink.

The daemon uses ``XfrmClient`` (the kernel) or ``FakeXfrm`` (memory, for
tests); both implement ``XfrmApi``::

    from xfrm import XfrmClient, SecurityAssociation, Aead, Policy, Template, Selector, Direction

    with XfrmClient() as x:
        x.add_sa(SecurityAssociation("192.0.2.1", "198.51.100.1", 0x1000, reqid=7,
                                     aead=Aead.aes_gcm(key)))
        x.add_policy(Policy(Selector("10.1.0.0/16", "10.2.0.0/16"), Direction.OUT,
                            templates=(Template("192.0.2.1", "198.51.100.1", reqid=7),)))

This package imports nothing from ``agent``.
"""

from xfrm.api import Batch, EventSource, KernelFeatures, XfrmApi
from xfrm.client import XfrmClient
from xfrm.errors import (
    BulkError,
    InvalidArgument,
    NotSupported,
    PolicyExists,
    PolicyNotFound,
    SaExists,
    SaNotFound,
    XfrmError,
)
from xfrm.events import (
    Acquire,
    Event,
    Expire,
    Mapping,
    Migrate,
    Overrun,
    PoliciesFlushed,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpire,
    PolicyUpdated,
    ReplayUpdate,
    SaAdded,
    SaDeleted,
    SasFlushed,
    SaUpdated,
    Unknown,
    XfrmEvents,
)
from xfrm.fake import FakeXfrm
from xfrm.model import (
    Action,
    Aead,
    Auth,
    Cipher,
    Direction,
    Encap,
    Lifetime,
    LifetimeCurrent,
    Mark,
    Migration,
    Mode,
    Policy,
    PolicyId,
    Proto,
    ReplayState,
    SaId,
    SecurityAssociation,
    Selector,
    Template,
)
from xfrm.move import KEEP, MoveError, MoveMethod, MoveResult, SaMove
from xfrm.ops import ReplayInfo

__all__ = [
    "Acquire", "Action", "Aead", "Auth", "Batch", "BulkError", "Cipher", "Direction", "Encap",
    "Event", "EventSource", "Expire", "FakeXfrm", "InvalidArgument", "KEEP", "KernelFeatures",
    "Lifetime", "LifetimeCurrent", "Mapping", "Mark", "Migrate", "Migration", "Mode", "MoveError",
    "MoveMethod", "MoveResult", "NotSupported", "Overrun", "PoliciesFlushed", "Policy",
    "PolicyAdded", "PolicyDeleted", "PolicyExists", "PolicyExpire", "PolicyId", "PolicyNotFound",
    "PolicyUpdated", "Proto", "ReplayInfo", "ReplayState", "ReplayUpdate", "SaAdded", "SaDeleted",
    "SaExists", "SaId", "SaMove", "SaNotFound", "SaUpdated", "SasFlushed", "SecurityAssociation",
    "Selector", "Template", "Unknown", "XfrmApi", "XfrmClient", "XfrmError", "XfrmEvents",
]
