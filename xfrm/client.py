"""XfrmClient: the XfrmApi on the kernel's NETLINK_XFRM socket."""

from __future__ import annotations

import errno as errno_codes
import logging
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from xfrm import codec
from xfrm import constants as c
from xfrm import ops
from xfrm.api import KernelFeatures, XfrmApi
from xfrm.errors import XfrmError, error_for
from xfrm.events import DEFAULT_GROUPS, XfrmEvents
from xfrm.model import Direction, Migration, Policy, PolicyId, SecurityAssociation, Selector
from xfrm.netlink import (
    DEFAULT_RCVBUF,
    DEFAULT_SNDBUF,
    DEFAULT_TIMEOUT,
    NetlinkSocket,
    NetlinkTimeout,
    Response,
)

log = logging.getLogger(__name__)

# The MIGRATE probe names a policy that cannot exist: a selector whose
# `user` member no policy sets. The kernel compares whole selectors, so it
# returns ENOENT when MIGRATE works and ENOPROTOOPT when it is compiled out.
# The addresses are from TEST-NET-1 (RFC 5737) and are never used on the wire.
_PROBE = ops.Migrate(
    PolicyId(Selector(IPv4Network("192.0.2.1/32"), IPv4Network("192.0.2.2/32"), user=0x726D6F62),
             Direction.IN),
    (Migration(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"),
               IPv4Address("192.0.2.3"), IPv4Address("192.0.2.4")),),
)


class XfrmClient(XfrmApi):
    """Program the XFRM tables of the network namespace this client was created in.

    Needs CAP_NET_ADMIN. ``timeout`` is how long, in seconds, a request may
    go without a response before the batch fails with an XfrmError (ETIMEDOUT).
    Calls block until the kernel has responded, and one client serves one
    thread at a time.
    """

    def __init__(self, rcvbuf: int = DEFAULT_RCVBUF, sndbuf: int = DEFAULT_SNDBUF,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._socket = NetlinkSocket(rcvbuf=rcvbuf, sndbuf=sndbuf, timeout=timeout)
        self._features: KernelFeatures | None = None

    def close(self) -> None:
        self._socket.close()

    def execute(self, requests: Sequence[ops.Op]) -> list[Any]:
        encoded = [codec.encode_op(request) for request in requests]
        try:
            responses = self._socket.transact(encoded)
        except NetlinkTimeout as error:
            raise XfrmError(f"batch of {len(requests)} XFRM requests", errno_codes.ETIMEDOUT,
                            message=str(error)) from error
        except OSError as error:
            raise XfrmError(f"batch of {len(requests)} XFRM requests", error.errno or 0) from error
        return [self._result(request, response) for request, response in zip(requests, responses)]

    @staticmethod
    def _result(request: ops.Op, response: Response) -> Any:
        if response.errno:
            return error_for(request.target, request.describe(), response.errno, response.detail)
        expected = codec.REPLY_DECODERS.get(type(request))
        if expected is None:
            return None
        reply_type, decode = expected
        for msg_type, body in response.replies:
            if msg_type == reply_type:
                return decode(body) if getattr(request, "decode", True) else None
        return XfrmError(request.describe(), errno_codes.EIO,
                         message=f"{request.describe()}: the kernel sent no data")

    def dump_sas(self) -> list[SecurityAssociation]:
        return [codec.decode_sa(body) for msg_type, body in self._dump(c.XFRM_MSG_GETSA)
                if msg_type == c.XFRM_MSG_NEWSA]

    def dump_policies(self) -> list[Policy]:
        policies = []
        for msg_type, body in self._dump(c.XFRM_MSG_GETPOLICY):
            if msg_type != c.XFRM_MSG_NEWPOLICY:
                continue
            values = codec.USERPOLICY_INFO.unpack(body)
            if values["dir"] > c.XFRM_POLICY_FWD:
                continue  # a per-socket policy (dir + XFRM_POLICY_MAX)
            policies.append(codec.policy_from(values, codec.parse_attrs(body, codec.USERPOLICY_INFO.size)))
        return policies

    def _dump(self, msg_type: int) -> list[tuple[int, bytes]]:
        try:
            return self._socket.dump(msg_type)
        except OSError as error:
            raise XfrmError(f"dump of message type {msg_type:#x}", error.errno or 0,
                            message=str(error)) from error

    def features(self) -> KernelFeatures:
        if self._features is None:
            self._features = KernelFeatures(migrate=self._probe_migrate())
            log.info("kernel XFRM features: %s", self._features)
        return self._features

    def _probe_migrate(self) -> bool:
        result = self.execute([_PROBE])[0]
        if isinstance(result, XfrmError) and result.errno == errno_codes.ENOENT:
            return True
        if isinstance(result, XfrmError) and result.errno == errno_codes.ENOPROTOOPT:
            return False
        log.warning("unexpected response to the XFRM_MSG_MIGRATE probe (%s); "
                    "moving SAs by REPLACE only", result)
        return False

    def events(self, groups: tuple[int, ...] = DEFAULT_GROUPS) -> XfrmEvents:
        return XfrmEvents(groups)
