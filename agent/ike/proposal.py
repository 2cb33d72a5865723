"""SA proposals: strongSwan-style proposal strings, proposal selection and kernel algorithm names.

A proposal string lists algorithm keywords joined by '-', for example
"aes256gcm16-prfsha384-x25519" (IKE) or "aes128-sha256-esn" (ESP). The keywords follow strongSwan's
proposal syntax so that configurations carry over. Several proposals are joined by ','.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from agent.ike import crypto
from agent.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType

logger = logging.getLogger(__name__)


class ProposalError(ValueError):
    """A proposal string or proposal is invalid or uses something unsupported."""


@dataclass(frozen=True)
class Transform:
    """One transform substructure (RFC 7296 §3.3.2); `key_length` is attribute 14, in bits."""

    type: TransformType
    id: int
    key_length: int | None = None


@dataclass(frozen=True)
class Proposal:
    """One proposal substructure (RFC 7296 §3.3.1)."""

    number: int
    protocol: ProtocolId
    spi: bytes
    transforms: tuple[Transform, ...]

    def first(self, transform_type: TransformType) -> Transform | None:
        """Return the first transform of `transform_type`, or None."""
        for transform in self.transforms:
            if transform.type == transform_type:
                return transform
        return None

    def encr(self) -> Transform | None:
        return self.first(TransformType.ENCR)

    def prf(self) -> Transform | None:
        return self.first(TransformType.PRF)

    def integ(self) -> Transform | None:
        return self.first(TransformType.INTEG)

    def dh(self) -> Transform | None:
        return self.first(TransformType.DH)

    def esn(self) -> Transform | None:
        return self.first(TransformType.ESN)


# ---------------------------------------------------------------------------------------------
# Keyword table. The first keyword of each transform is the one format_proposal() writes.


def _encr(encr_id: EncrId, key_length: int | None = None) -> Transform:
    return Transform(TransformType.ENCR, encr_id, key_length)


KEYWORDS: dict[str, Transform] = {
    # ENCR_AES_CBC, RFC 3602
    "aes128": _encr(EncrId.ENCR_AES_CBC, 128),
    "aes192": _encr(EncrId.ENCR_AES_CBC, 192),
    "aes256": _encr(EncrId.ENCR_AES_CBC, 256),
    "aes": _encr(EncrId.ENCR_AES_CBC, 128),
    # ENCR_AES_GCM_16, RFC 4106 / RFC 5282: "16" is the ICV length in octets, "128" in bits
    "aes128gcm16": _encr(EncrId.ENCR_AES_GCM_16, 128),
    "aes192gcm16": _encr(EncrId.ENCR_AES_GCM_16, 192),
    "aes256gcm16": _encr(EncrId.ENCR_AES_GCM_16, 256),
    "aes128gcm128": _encr(EncrId.ENCR_AES_GCM_16, 128),
    "aes192gcm128": _encr(EncrId.ENCR_AES_GCM_16, 192),
    "aes256gcm128": _encr(EncrId.ENCR_AES_GCM_16, 256),
    # ENCR_CHACHA20_POLY1305, RFC 7634 (no Key Length attribute)
    "chacha20poly1305": _encr(EncrId.ENCR_CHACHA20_POLY1305),
    # Integrity, RFC 4868 and RFC 2404
    "sha256": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
    "sha2_256": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
    "sha384": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_384_192),
    "sha2_384": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_384_192),
    "sha512": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_512_256),
    "sha2_512": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_512_256),
    "sha1": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA1_96),
    "sha": Transform(TransformType.INTEG, IntegId.AUTH_HMAC_SHA1_96),
    # PRF, RFC 4868 and RFC 2104
    "prfsha256": Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
    "prfsha384": Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_384),
    "prfsha512": Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA2_512),
    "prfsha1": Transform(TransformType.PRF, PrfId.PRF_HMAC_SHA1),
    # Key exchange methods, RFC 3526, RFC 5903 and RFC 8031
    "modp2048": Transform(TransformType.DH, DhId.MODP_2048),
    "modp3072": Transform(TransformType.DH, DhId.MODP_3072),
    "ecp256": Transform(TransformType.DH, DhId.ECP_256),
    "ecp384": Transform(TransformType.DH, DhId.ECP_384),
    "ecp521": Transform(TransformType.DH, DhId.ECP_521),
    "curve25519": Transform(TransformType.DH, DhId.CURVE25519),
    "x25519": Transform(TransformType.DH, DhId.CURVE25519),
    "curve448": Transform(TransformType.DH, DhId.CURVE448),
    "x448": Transform(TransformType.DH, DhId.CURVE448),
    # Extended sequence numbers (ESP only), RFC 7296 §3.3.2
    "esn": Transform(TransformType.ESN, EsnId.ESN),
    "noesn": Transform(TransformType.ESN, EsnId.NO_ESN),
}

_CANONICAL_KEYWORD: dict[Transform, str] = {}
for _keyword, _transform in KEYWORDS.items():
    _CANONICAL_KEYWORD.setdefault(_transform, _keyword)

# The transform types each protocol may list (RFC 7296 §3.3.3).
_ALLOWED_TYPES = {
    ProtocolId.IKE: {TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH},
    ProtocolId.ESP: {TransformType.ENCR, TransformType.INTEG, TransformType.DH, TransformType.ESN},
}

# strongSwan derives the PRF from the integrity algorithm when an IKE proposal names none.
_PRF_FOR_INTEG = {
    IntegId.AUTH_HMAC_SHA1_96: PrfId.PRF_HMAC_SHA1,
    IntegId.AUTH_HMAC_SHA2_256_128: PrfId.PRF_HMAC_SHA2_256,
    IntegId.AUTH_HMAC_SHA2_384_192: PrfId.PRF_HMAC_SHA2_384,
    IntegId.AUTH_HMAC_SHA2_512_256: PrfId.PRF_HMAC_SHA2_512,
}

_AEAD_IDS = {EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305}


def is_aead(transform: Transform) -> bool:
    """Return whether an ENCR transform is an AEAD cipher, which takes no INTEG transform."""
    return transform.type == TransformType.ENCR and transform.id in _AEAD_IDS


def valid_keywords(protocol: ProtocolId) -> list[str]:
    """Return the proposal keywords allowed for `protocol`, in table order."""
    allowed = _ALLOWED_TYPES.get(protocol, set())
    return [keyword for keyword, transform in KEYWORDS.items() if transform.type in allowed]


# ---------------------------------------------------------------------------------------------
# Parsing and formatting


def parse_proposal(text: str, protocol: ProtocolId) -> list[Transform]:
    """Parse one proposal string such as "aes256gcm16-prfsha384-x25519" into transforms.

    The result keeps the written order within each transform type; a keyword repeated is kept
    once. An IKE proposal without a PRF gets the PRFs matching its integrity algorithms, as in
    strongSwan; an ESP proposal without "esn"/"noesn" gets NO_ESN. Raises ProposalError naming the
    offending keyword and listing the valid ones.
    """
    if protocol not in _ALLOWED_TYPES:
        raise ProposalError(f"proposals for protocol {protocol!r} are not supported; use IKE or ESP")
    keywords = [keyword.strip().lower() for keyword in text.split("-")]
    if not text.strip() or any(not keyword for keyword in keywords):
        raise ProposalError(f"empty algorithm keyword in proposal {text!r}; keywords are joined by single '-'")

    transforms = _transforms_from_keywords(keywords, text, protocol)
    transforms = _add_implicit_transforms(transforms, protocol)
    _check_complete(transforms, text, protocol)
    return transforms


def _transforms_from_keywords(keywords: list[str], text: str, protocol: ProtocolId) -> list[Transform]:
    allowed = _ALLOWED_TYPES[protocol]
    transforms: list[Transform] = []
    for keyword in keywords:
        transform = KEYWORDS.get(keyword)
        if transform is None or transform.type not in allowed:
            reason = "unknown" if transform is None else f"not allowed in {protocol.name} proposals"
            raise ProposalError(
                f"algorithm {keyword!r} in proposal {text!r} is {reason}; "
                f"valid {protocol.name} keywords: {', '.join(valid_keywords(protocol))}"
            )
        if transform not in transforms:
            transforms.append(transform)
    return transforms


def _add_implicit_transforms(transforms: list[Transform], protocol: ProtocolId) -> list[Transform]:
    types = {transform.type for transform in transforms}
    added: list[Transform] = []
    if protocol == ProtocolId.IKE and TransformType.PRF not in types:
        for transform in transforms:
            prf_id = _PRF_FOR_INTEG.get(transform.id) if transform.type == TransformType.INTEG else None
            if prf_id is not None:
                added.append(Transform(TransformType.PRF, prf_id))
    if protocol == ProtocolId.ESP and TransformType.ESN not in types:
        added.append(Transform(TransformType.ESN, EsnId.NO_ESN))
    return transforms + added


def _check_complete(transforms: list[Transform], text: str, protocol: ProtocolId) -> None:
    encrs = [transform for transform in transforms if transform.type == TransformType.ENCR]
    types = {transform.type for transform in transforms}
    if not encrs:
        raise ProposalError(f"proposal {text!r} names no encryption algorithm (e.g. aes256gcm16 or aes256)")

    aead = [is_aead(transform) for transform in encrs]
    if any(aead) and not all(aead):
        raise ProposalError(
            f"proposal {text!r} mixes AEAD and non-AEAD encryption; write them as separate proposals"
        )
    if all(aead) and TransformType.INTEG in types:
        raise ProposalError(f"proposal {text!r} names an integrity algorithm with an AEAD cipher; remove it")
    if not all(aead) and TransformType.INTEG not in types:
        raise ProposalError(f"proposal {text!r} needs an integrity algorithm (e.g. sha256) for its cipher")

    if protocol == ProtocolId.IKE:
        if TransformType.PRF not in types:
            raise ProposalError(f"IKE proposal {text!r} with an AEAD cipher needs a PRF (e.g. prfsha256)")
        if TransformType.DH not in types:
            raise ProposalError(f"IKE proposal {text!r} needs a key exchange method (e.g. x25519)")


def parse_proposals(text: str, protocol: ProtocolId) -> list[list[Transform]]:
    """Parse a ','-separated list of proposal strings, keeping their order of preference."""
    return [parse_proposal(part, protocol) for part in text.split(",")]


def format_proposal(transforms: Sequence[Transform]) -> str:
    """Write transforms as a proposal string; parse_proposal() reads it back to the same list."""
    keywords = []
    for transform in transforms:
        keyword = _CANONICAL_KEYWORD.get(transform)
        if keyword is None:
            raise ProposalError(f"transform {transform} has no proposal keyword")
        keywords.append(keyword)
    return "-".join(keywords)


# ---------------------------------------------------------------------------------------------
# Selection (responder side, RFC 7296 §2.7 and §3.3.6)


def select_proposal(offered: Sequence[Proposal], configured: Sequence[list[Transform]]) -> Proposal | None:
    """Pick the proposal to accept: our configured proposals in order, each against every offer.

    A configured proposal matches an offered one when, for every transform type either of them
    lists, some transform is in both. A type one side leaves out counts as the single transform ID
    NONE (0), so a peer offering "DH NONE or ecp256" matches a configuration without PFS. The
    result is the offered proposal reduced to one transform per type, chosen by our order; a
    type the offer left out stays out. Returns None when nothing matches (NO_PROPOSAL_CHOSEN).
    """
    for ours in configured:
        for offer in offered:
            chosen = _match(offer, ours)
            if chosen is not None:
                logger.debug("selected proposal %d: %s", offer.number, _describe(chosen))
                return Proposal(offer.number, offer.protocol, offer.spi, tuple(chosen))
    return None


def _match(offer: Proposal, configured: Sequence[Transform]) -> list[Transform] | None:
    types = sorted({transform.type for transform in offer.transforms} | {t.type for t in configured})
    chosen: list[Transform] = []
    for transform_type in types:
        ours = [transform for transform in configured if transform.type == transform_type]
        theirs = [transform for transform in offer.transforms if transform.type == transform_type]
        if not ours:
            ours = [Transform(transform_type, 0)]
        pick = next((transform for transform in ours if _offered(transform, theirs)), None)
        if pick is None:
            return None
        if theirs:
            chosen.append(pick)
    return chosen


def _offered(transform: Transform, theirs: list[Transform]) -> bool:
    if not theirs:
        return transform.id == 0  # a type the peer left out is treated as NONE
    return transform in theirs


def _describe(transforms: Sequence[Transform]) -> str:
    try:
        return format_proposal([t for t in transforms if t in _CANONICAL_KEYWORD])
    except ProposalError:
        return str(transforms)


# ---------------------------------------------------------------------------------------------
# What the negotiated algorithms need


@dataclass(frozen=True)
class IkeAlgorithms:
    """The crypto objects for a selected IKE proposal."""

    encr: crypto.Encryption
    prf: crypto.Prf
    integ: crypto.Integrity | None
    dh: crypto.DhGroup


def ike_algorithms(proposal: Proposal) -> IkeAlgorithms:
    """Return the crypto objects for a selected IKE proposal; raise ProposalError if incomplete."""
    encr, prf, dh = proposal.encr(), proposal.prf(), proposal.dh()
    if encr is None or prf is None or dh is None or dh.id == DhId.NONE:
        raise ProposalError(f"IKE proposal {proposal.number} lacks an ENCR, PRF or DH transform")
    integ = proposal.integ()
    try:
        encryption = crypto.encryption_by_id(EncrId(encr.id), encr.key_length)
        if encryption.is_aead:
            integrity = None
        elif integ is None or integ.id == IntegId.NONE:
            raise ProposalError(f"IKE proposal {proposal.number} has {EncrId(encr.id).name} but no integrity")
        else:
            integrity = crypto.integrity_by_id(IntegId(integ.id))
        return IkeAlgorithms(encryption, crypto.prf_by_id(PrfId(prf.id)), integrity, crypto.dh_group_by_id(DhId(dh.id)))
    except (crypto.CryptoError, ValueError) as error:
        raise ProposalError(f"IKE proposal {proposal.number}: {error}") from None


def child_key_sizes(proposal: Proposal) -> tuple[int, int]:
    """Return (encryption key bytes including any salt, integrity key bytes) for an ESP proposal."""
    encr = proposal.encr()
    if encr is None:
        raise ProposalError(f"{proposal.protocol.name} proposal {proposal.number} has no ENCR transform")
    try:
        encryption = crypto.encryption_by_id(EncrId(encr.id), encr.key_length)
        integ = proposal.integ()
        if encryption.is_aead or integ is None or integ.id == IntegId.NONE:
            return encryption.key_size, 0
        return encryption.key_size, crypto.integrity_by_id(IntegId(integ.id)).key_size
    except (crypto.CryptoError, ValueError) as error:
        raise ProposalError(f"{proposal.protocol.name} proposal {proposal.number}: {error}") from None


@dataclass(frozen=True)
class KernelAlgorithms:
    """Algorithms of an ESP SA for the kernel, named as in the Linux crypto API.

    aead: (name, key bits including the 32-bit salt, ICV bits), for XFRMA_ALG_AEAD.
    enc: (name, key bits), for XFRMA_ALG_CRYPT.
    auth: (name, key bits, truncation bits), for XFRMA_ALG_AUTH_TRUNC.
    esn: whether the SA uses 64-bit extended sequence numbers (XFRM_STATE_ESN).
    """

    aead: tuple[str, int, int] | None
    enc: tuple[str, int] | None
    auth: tuple[str, int, int] | None
    esn: bool


# Linux crypto API names: rfc4106 is the ESP form of GCM (RFC 4106) and rfc7539esp the ESP form
# of ChaCha20-Poly1305 (RFC 7634). Both take the salt as the last 4 bytes of the key.
_KERNEL_AEAD = {
    EncrId.ENCR_AES_GCM_16: ("rfc4106(gcm(aes))", 128),
    EncrId.ENCR_CHACHA20_POLY1305: ("rfc7539esp(chacha20,poly1305)", 128),
}
_KERNEL_AUTH = {
    IntegId.AUTH_HMAC_SHA1_96: ("hmac(sha1)", 160, 96),
    IntegId.AUTH_HMAC_SHA2_256_128: ("hmac(sha256)", 256, 128),
    IntegId.AUTH_HMAC_SHA2_384_192: ("hmac(sha384)", 384, 192),
    IntegId.AUTH_HMAC_SHA2_512_256: ("hmac(sha512)", 512, 256),
}


def kernel_algorithms(proposal: Proposal) -> KernelAlgorithms:
    """Map a selected ESP proposal to kernel algorithm names and key lengths."""
    if proposal.protocol != ProtocolId.ESP:
        raise ProposalError(f"kernel algorithms exist only for ESP proposals, not {proposal.protocol.name}")
    encr = proposal.encr()
    if encr is None:
        raise ProposalError(f"ESP proposal {proposal.number} has no ENCR transform")
    esn = proposal.esn()
    use_esn = esn is not None and esn.id == EsnId.ESN

    if encr.id in _KERNEL_AEAD:
        name, icv_bits = _KERNEL_AEAD[EncrId(encr.id)]
        key_bits = 256 if encr.id == EncrId.ENCR_CHACHA20_POLY1305 else encr.key_length
        if key_bits is None:
            raise ProposalError(f"ESP proposal {proposal.number}: AES-GCM needs a key length")
        return KernelAlgorithms(aead=(name, key_bits + 32, icv_bits), enc=None, auth=None, esn=use_esn)

    if encr.id != EncrId.ENCR_AES_CBC or encr.key_length is None:
        raise ProposalError(f"ESP proposal {proposal.number}: no kernel algorithm for {encr}")
    integ = proposal.integ()
    if integ is None or integ.id not in _KERNEL_AUTH:
        raise ProposalError(f"ESP proposal {proposal.number}: no kernel algorithm for integrity {integ}")
    return KernelAlgorithms(
        aead=None,
        enc=("cbc(aes)", encr.key_length),
        auth=_KERNEL_AUTH[IntegId(integ.id)],
        esn=use_esn,
    )
