"""INFORMATIONAL (RFC 7296 §1.4): deletes, liveness checks and error notifications.

Delete of CHILD_SAs (§1.4.1): the request lists the SPIs the sender receives with, and the response
lists the responder's SPIs of the same CHILD_SAs. When both sides delete the same CHILD_SA at
once, neither response lists it.
    HDR, SK {D(ESP, SPIs)}  -->
                                 <--  HDR, SK {D(ESP, SPIs)}
Delete of the IKE SA, which takes all its CHILD_SAs with it. The response is empty:
    HDR, SK {D(IKE)}  -->
                                 <--  HDR, SK {}
Liveness check (§2.4), an empty request:
    HDR, SK {}  -->
                                 <--  HDR, SK {}
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .child import ChildSa, ChildSaState, spi_bytes, spi_from_bytes
from .constants import ExchangeType, NotifyType, PayloadType, ProtocolId
from .errors import AuthenticationFailed, ProtocolError, notify_name
from .events import IkeSaDeleted
from .exchange import Initiator, Responder, always, register_responder
from .payloads import Delete

if TYPE_CHECKING:
    from .message import Message
    from .sa import IkeSa

logger = logging.getLogger(__name__)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


class DeleteChildInitiator(Initiator):
    """Delete CHILD_SAs; `spis` adds inbound SPIs of CHILD_SAs this side never installed."""

    exchange_type = ExchangeType.INFORMATIONAL
    kind = "child-delete"
    movable = True
    __slots__ = ("children", "spis")

    def __init__(self, sa: "IkeSa", children: list[ChildSa], *, spis: list[int] = ()):
        super().__init__(sa)
        self.children = list(children)
        self.spis = list(spis)

    def describe(self) -> str:
        return "delete of CHILD_SAs " + ", ".join(f"{c.spi_in:08x}_i" for c in self.children)

    def build_request(self, now: float) -> list | None:
        sa = self.sa
        self.children = [c for c in self.children if sa.children.get(c.spi_in) is c]
        if not self.children and not self.spis:
            return None
        for child in self.children:
            child.state = ChildSaState.DELETING
            child.rekey_at = None
        spis = [spi_bytes(c.spi_in) for c in self.children] + [spi_bytes(s) for s in self.spis]
        return [Delete(ProtocolId.ESP, spis)]

    def process_response(self, message: "Message", now: float) -> bool:
        self._remove(now)
        return True

    def failed(self, error: ProtocolError, now: float) -> None:
        # The peer refused or could not parse the Delete; the SAs go regardless (RFC 7296 §1.4.1
        # lets no endpoint keep half of a CHILD_SA).
        self._remove(now)

    def _remove(self, now: float) -> None:
        for child in self.children:
            self.sa.remove_child(child)
        for spi in self.spis:
            self.sa.endpoint.release_spi(spi)


class DeleteIkeInitiator(Initiator):
    exchange_type = ExchangeType.INFORMATIONAL
    kind = "ike-delete"
    __slots__ = ()

    def describe(self) -> str:
        return "delete of the IKE SA"

    def build_request(self, now: float) -> list | None:
        from .sa import IkeSaState

        sa = self.sa
        if sa.state != IkeSaState.REKEYED:
            sa.state = IkeSaState.DELETING
        sa.rekey_at = None
        _log(sa, logging.INFO, "deleting the IKE SA")
        return [Delete(ProtocolId.IKE)]

    def process_response(self, message: "Message", now: float) -> bool:
        self.sa.close(now, IkeSaDeleted(self.sa.unique_id, self.sa.name, by_peer=False))
        return True

    def failed(self, error: ProtocolError, now: float) -> None:
        self.sa.close(now, IkeSaDeleted(self.sa.unique_id, self.sa.name, by_peer=False))


class RequestedDeleteIkeInitiator(DeleteIkeInitiator):
    """Delete of the IKE SA and its CHILD_SAs that the driver or a redirect requested.

    When a rekey replaces the IKE SA before this request is sent, the request moves to the new
    IKE SA along with the CHILD_SAs, unlike the Delete of the old IKE SA after a rekey. Sent on
    the old IKE SA, it would remove nothing that the rekey initiator does not delete anyway.
    Worse, if the peer rekeyed and our response was lost, the peer would drop its rekey request
    on receiving the Delete (RFC 7296 §2.25.2), and the new IKE SA would remain on this side
    only.
    """

    movable = True
    __slots__ = ()


class LivenessInitiator(Initiator):
    """An empty INFORMATIONAL request: the peer is alive if it responds (RFC 7296 §2.4)."""

    exchange_type = ExchangeType.INFORMATIONAL
    kind = "liveness"
    movable = True
    __slots__ = ()

    def describe(self) -> str:
        return "liveness check"

    def build_request(self, now: float) -> list | None:
        return []

    def process_response(self, message: "Message", now: float) -> bool:
        _log(self.sa, logging.DEBUG, "peer responded to the liveness check")
        return True


class InformationalResponder(Responder):
    """Handles Delete payloads, error notifies and empty requests from the peer."""

    kind = "informational"
    __slots__ = ("delete_ike", "remove", "failure")

    def __init__(self, sa: "IkeSa"):
        super().__init__(sa)
        self.delete_ike = False
        self.remove: list[ChildSa] = []
        self.failure: ProtocolError | None = None

    def process_request(self, message: "Message", now: float) -> list:
        sa = self.sa
        for notify in message.notifies():
            if notify.is_error:
                self._peer_error(notify)

        deletes = message.get_all(PayloadType.D)
        if any(d.protocol_id == ProtocolId.IKE for d in deletes):
            self.delete_ike = True
            return []  # RFC 7296 §1.4.1: the response to an IKE SA delete is empty

        ours = []
        for delete in deletes:
            if delete.protocol_id != ProtocolId.ESP:
                continue  # NOTE: AH CHILD_SAs are never created, so nothing to delete
            for spi in delete.spis:
                child = sa.child_by_outbound(spi_from_bytes(spi))
                if child is None:
                    sa.note_peer_delete(spi_from_bytes(spi))
                    continue
                self.remove.append(child)
                if child.state != ChildSaState.DELETING:
                    ours.append(spi_bytes(child.spi_in))
                # Otherwise both sides delete it at once, so the response must not list it (RFC 7296 §1.4.1).
        return [Delete(ProtocolId.ESP, ours)] if ours else []

    def _peer_error(self, notify) -> None:
        name = notify_name(notify.notify_type)
        if notify.notify_type == NotifyType.AUTHENTICATION_FAILED:
            # The initiator rejected our IKE_AUTH response (RFC 7296 §2.21.2).
            self.failure = AuthenticationFailed("peer rejected our authentication", from_peer=True)
            return
        _log(self.sa, logging.WARNING, "peer reports %s", name)

    def response_sent(self, now: float) -> None:
        sa = self.sa
        if self.failure is not None:
            sa.fail(now, str(self.failure), self.failure.notify_type)
            return
        if self.delete_ike:
            _log(sa, logging.INFO, "peer deleted the IKE SA")
            if sa.peer_rekey is not None:
                # Both sides rekeyed this IKE SA and the peer deletes it: the peer's new IKE SA
                # survived (RFC 7296 §2.8.2), so the CHILD_SAs move there instead of going away.
                from .create_child_sa import replace_ike_sa

                replace_ike_sa(sa, sa.peer_rekey[2], now)
                sa.peer_rekey = None
            sa.close(now, IkeSaDeleted(sa.unique_id, sa.name, by_peer=True))
            return
        for child in self.remove:
            sa.remove_child(child)


register_responder(ExchangeType.INFORMATIONAL, always, InformationalResponder)
