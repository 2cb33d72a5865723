"""Exchange objects: each exchange has an initiator half and a responder half.

An `Initiator` builds a request and processes the response; the IKE SA (sa.py) sends, numbers
and retransmits the request. A `Responder` processes one request and returns the payloads of the
response; the IKE SA caches and sends it. Responders are found through `RESPONDERS`, a table of
(exchange type, predicate, class) rows tried in order, so that later exchanges (the MOBIKE
address update, SWITCH_TO_IP_ADDRESS) register themselves with `register_responder(...,
first=True)` without touching the IKE SA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

from .constants import ExchangeType

if TYPE_CHECKING:
    from .errors import ProtocolError
    from .message import Message
    from .payloads import Payload
    from .sa import IkeSa


class Initiator:
    """Initiator half of an exchange."""

    __slots__ = ("sa",)
    exchange_type: ClassVar[ExchangeType]

    def __init__(self, sa: "IkeSa"):
        self.sa = sa

    def build_request(self, now: float) -> list["Payload"] | None:
        """Return the request payloads, or None when the exchange has become pointless."""
        raise NotImplementedError

    def process_response(self, message: "Message", now: float) -> bool:
        """Handle the response; return True when done, False to send a rebuilt request."""
        raise NotImplementedError

    def failed(self, error: "ProtocolError", now: float) -> None:
        """Handle an error notify in the response, or a response this side rejects."""

    def describe(self) -> str:
        return type(self).__name__


class Responder:
    """Responder half of an exchange: one request in, the response payloads out."""

    __slots__ = ("sa",)

    def __init__(self, sa: "IkeSa"):
        self.sa = sa

    def process_request(self, message: "Message", now: float) -> list["Payload"]:
        """Handle the request and return the payloads of the response, or raise ProtocolError."""
        raise NotImplementedError

    def response_sent(self, now: float) -> None:
        """Act after the response went out (for example, close the IKE SA after a Delete)."""

    def request_failed(self, error: "ProtocolError", now: float) -> None:
        """Act after an error response was sent (for example, drop a half-open IKE SA)."""


Predicate = Callable[["Message"], bool]

RESPONDERS: list[tuple[int, Predicate, type[Responder]]] = []


def register_responder(exchange_type: ExchangeType, matches: Predicate, responder: type[Responder], *, first: bool = False) -> None:
    """Add a row to `RESPONDERS`; `first=True` puts it before the existing rows."""
    row = (exchange_type, matches, responder)
    if first:
        RESPONDERS.insert(0, row)
    else:
        RESPONDERS.append(row)


def responder_for(message: "Message") -> type[Responder] | None:
    """Return the responder class for a request, or None when no row matches."""
    for exchange_type, matches, responder in RESPONDERS:
        if exchange_type == message.exchange_type and matches(message):
            return responder
    return None


def always(message: "Message") -> bool:
    return True
