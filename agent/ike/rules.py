"""Payload rules of RFC 7296 §1.2-§1.4: the payloads each exchange may carry.

`PAYLOAD_RULES` maps (exchange type, is response) to a `PayloadRule`. `check_payloads` applies it
to a decoded (and decrypted) message and raises `InvalidSyntax` on a violation. Payloads of
unknown types that passed the critical-bit test are ignored here, as RFC 7296 §3.2 requires.

Payloads that must come together (SA with TSi and TSr for a CHILD_SA in IKE_AUTH, KE with the
DH transform of the chosen proposal) are checked by the exchanges, which know the context.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import ExchangeType, NotifyType, PayloadType
from .errors import InvalidSyntax
from .message import Message
from .payloads import KNOWN_PAYLOAD_TYPES

P = PayloadType

# Payload types that may occur more than once in one message (RFC 7296 §3 allows several CERT,
# CERTREQ, N, D and V payloads). Every other type may occur at most once.
REPEATABLE = frozenset({P.CERT, P.CERTREQ, P.N, P.D, P.V})


@dataclass(frozen=True)
class PayloadRule:
    """Allowed and required payloads of one message kind.

    `required` is waived for an error response (a response whose notifies include an error
    type) and, for IKE_SA_INIT, for a response that requests a COOKIE or another KE group.
    """

    allowed: frozenset[int]
    required: frozenset[int]
    encrypted: bool


def _rule(allowed, required=(), encrypted=True) -> PayloadRule:
    return PayloadRule(frozenset(allowed), frozenset(required), encrypted)


PAYLOAD_RULES: dict[tuple[int, bool], PayloadRule] = {
    # HDR, SAi1, KEi, Ni, [N(COOKIE)], [N(NAT_DETECTION_*)], ...  (RFC 7296 §1.2)
    (ExchangeType.IKE_SA_INIT, False): _rule({P.SA, P.KE, P.NONCE, P.N, P.V}, {P.SA, P.KE, P.NONCE}, encrypted=False),
    # HDR, SAr1, KEr, Nr, [CERTREQ], [N(...)]
    (ExchangeType.IKE_SA_INIT, True): _rule(
        {P.SA, P.KE, P.NONCE, P.N, P.V, P.CERTREQ}, {P.SA, P.KE, P.NONCE}, encrypted=False
    ),
    # HDR, SK {IDi, [CERT,] [CERTREQ,] [IDr,] AUTH, SAi2, TSi, TSr}. EAP and CP pass here, and
    # the exchange rejects them because it does not support them.
    (ExchangeType.IKE_AUTH, False): _rule(
        {P.IDi, P.CERT, P.CERTREQ, P.IDr, P.AUTH, P.SA, P.TSi, P.TSr, P.N, P.V, P.CP, P.EAP}, {P.IDi}
    ),
    # HDR, SK {IDr, [CERT,] AUTH, SAr2, TSi, TSr}
    (ExchangeType.IKE_AUTH, True): _rule(
        {P.IDr, P.CERT, P.AUTH, P.SA, P.TSi, P.TSr, P.N, P.V, P.CP, P.EAP}, {P.IDr, P.AUTH}
    ),
    # HDR, SK {[N(REKEY_SA)], SA, Ni, [KEi], [TSi, TSr]}  (RFC 7296 §1.3)
    (ExchangeType.CREATE_CHILD_SA, False): _rule({P.SA, P.NONCE, P.KE, P.TSi, P.TSr, P.N, P.V, P.CP}, {P.SA, P.NONCE}),
    # HDR, SK {SA, Nr, [KEr], [TSi, TSr]}
    (ExchangeType.CREATE_CHILD_SA, True): _rule({P.SA, P.NONCE, P.KE, P.TSi, P.TSr, P.N, P.V, P.CP}, {P.SA, P.NONCE}),
    # HDR, SK {[N,] [D,] [CP,] ...}  (RFC 7296 §1.4)
    (ExchangeType.INFORMATIONAL, False): _rule({P.N, P.D, P.CP, P.V}),
    (ExchangeType.INFORMATIONAL, True): _rule({P.N, P.D, P.CP, P.V}),
}

# IKE_SA_INIT responses that carry no SA, KE or Nr on purpose (RFC 7296 §1.2, §2.6).
_INIT_RETRY_NOTIFIES = frozenset({NotifyType.COOKIE, NotifyType.INVALID_KE_PAYLOAD})


def is_error_response(message: Message) -> bool:
    """Tell whether a response carries an error notify or requests a retry from the initiator."""
    for payload in message.payloads:
        if payload.payload_type == P.N and (payload.is_error or payload.notify_type in _INIT_RETRY_NOTIFIES):
            return True
    return False


def check_payloads(message: Message) -> None:
    """Raise InvalidSyntax unless the message's payloads follow `PAYLOAD_RULES`."""
    rule = PAYLOAD_RULES.get((message.exchange_type, message.is_response))
    if rule is None:
        raise InvalidSyntax(f"unknown exchange type {message.exchange_type}")
    if rule.encrypted != message.protected:
        raise InvalidSyntax("payloads must be inside SK" if rule.encrypted else "IKE_SA_INIT must not be encrypted")

    seen: set[int] = set()
    for payload in message.payloads:
        kind = payload.payload_type
        if kind not in rule.allowed and kind in KNOWN_PAYLOAD_TYPES:
            raise InvalidSyntax(f"payload {P(kind).name} not allowed in {message.summary()}")
        if kind in seen and kind not in REPEATABLE:
            raise InvalidSyntax(f"payload {P(kind).name} repeated")
        seen.add(kind)

    missing = rule.required - seen
    if missing and not (message.is_response and is_error_response(message)):
        names = ", ".join(sorted(P(kind).name for kind in missing))
        raise InvalidSyntax(f"missing payloads {names}")
