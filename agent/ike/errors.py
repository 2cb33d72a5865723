"""Protocol errors of the IKEv2 core, one exception class per error notify type.

Every problem found in a received message raises a `ProtocolError`. The class decides what the
IKE SA sends back: its `notify_type` goes into the error notify of the response (RFC 7296
§3.10.1), and `IntegrityCheckFailed`, whose `notify_type` is None, means "drop without a response".
The conversion happens in one place, `IkeSa.send_error_response`. An error notify received from the
peer is raised as the same class with `from_peer=True`, so that no response is sent for it.
"""

from __future__ import annotations

from .constants import NotifyType


class ProtocolError(Exception):
    """A received message violates RFC 7296 or this side's policy.

    `notify_data` is the Notification Data of the error notify sent back (for example the
    payload type for UNSUPPORTED_CRITICAL_PAYLOAD or the group for INVALID_KE_PAYLOAD).
    """

    notify_data: bytes

    notify_type: NotifyType | None = NotifyType.INVALID_SYNTAX

    def __init__(self, message: str, notify_data: bytes = b"", *, from_peer: bool = False,
                 protocol_id: int = 0, spi: bytes = b""):
        super().__init__(message)
        self.notify_data = notify_data
        self.from_peer = from_peer
        # Protocol ID and SPI fields of the notify, for errors about one CHILD_SA
        # (RFC 7296 §3.10.1, for example CHILD_SA_NOT_FOUND).
        self.protocol_id = protocol_id
        self.spi = spi
        # Set when the error was found after the message's integrity check passed, so that a
        # response may be sent. Errors in unauthenticated content only drop the message.
        self.authenticated = False


class IntegrityCheckFailed(ProtocolError):
    """The ICV or AEAD tag of an SK or SKF payload did not verify.

    Such a message is dropped and counted, and nothing is sent in response: its content is not
    authenticated, so nothing in it may change state or trigger a packet.
    """

    notify_type = None


class UnsupportedCriticalPayload(ProtocolError):
    notify_type = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD


class InvalidIkeSpi(ProtocolError):
    notify_type = NotifyType.INVALID_IKE_SPI


class InvalidMajorVersion(ProtocolError):
    notify_type = NotifyType.INVALID_MAJOR_VERSION


class InvalidSyntax(ProtocolError):
    notify_type = NotifyType.INVALID_SYNTAX


class InvalidMessageId(ProtocolError):
    notify_type = NotifyType.INVALID_MESSAGE_ID


class InvalidSpi(ProtocolError):
    notify_type = NotifyType.INVALID_SPI


class NoProposalChosen(ProtocolError):
    notify_type = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKePayload(ProtocolError):
    notify_type = NotifyType.INVALID_KE_PAYLOAD


class AuthenticationFailed(ProtocolError):
    notify_type = NotifyType.AUTHENTICATION_FAILED


class SinglePairRequired(ProtocolError):
    notify_type = NotifyType.SINGLE_PAIR_REQUIRED


class NoAdditionalSas(ProtocolError):
    notify_type = NotifyType.NO_ADDITIONAL_SAS


class InternalAddressFailure(ProtocolError):
    notify_type = NotifyType.INTERNAL_ADDRESS_FAILURE


class FailedCpRequired(ProtocolError):
    notify_type = NotifyType.FAILED_CP_REQUIRED


class TsUnacceptable(ProtocolError):
    notify_type = NotifyType.TS_UNACCEPTABLE


class InvalidSelectors(ProtocolError):
    notify_type = NotifyType.INVALID_SELECTORS


class UnacceptableAddresses(ProtocolError):
    notify_type = NotifyType.UNACCEPTABLE_ADDRESSES


class UnexpectedNatDetected(ProtocolError):
    notify_type = NotifyType.UNEXPECTED_NAT_DETECTED


class TemporaryFailure(ProtocolError):
    notify_type = NotifyType.TEMPORARY_FAILURE


class ChildSaNotFound(ProtocolError):
    notify_type = NotifyType.CHILD_SA_NOT_FOUND


class UnknownErrorNotify(ProtocolError):
    """An error notify type this implementation does not know, received in a response.

    RFC 7296 §3.10.1: an unrecognized error type in a response means the request failed.
    """

    notify_type = None


ERROR_CLASSES: dict[int, type[ProtocolError]] = {
    cls.notify_type: cls
    for cls in (
        UnsupportedCriticalPayload,
        InvalidIkeSpi,
        InvalidMajorVersion,
        InvalidSyntax,
        InvalidMessageId,
        InvalidSpi,
        NoProposalChosen,
        InvalidKePayload,
        AuthenticationFailed,
        SinglePairRequired,
        NoAdditionalSas,
        InternalAddressFailure,
        FailedCpRequired,
        TsUnacceptable,
        InvalidSelectors,
        UnacceptableAddresses,
        UnexpectedNatDetected,
        TemporaryFailure,
        ChildSaNotFound,
    )
}


def notify_name(notify_type: int) -> str:
    """Return the RFC name of a notify type, or its number when the type is unknown."""
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return str(notify_type)


def peer_error(notify_type: int, notify_data: bytes = b"") -> ProtocolError:
    """Build the exception for an error notify received from the peer."""
    cls = ERROR_CLASSES.get(notify_type, UnknownErrorNotify)
    error = cls(f"peer sent {notify_name(notify_type)}", notify_data, from_peer=True)
    if cls is UnknownErrorNotify:
        error.notify_type = notify_type  # for IkeSaFailed; no response is ever sent for a peer's error
    return error
