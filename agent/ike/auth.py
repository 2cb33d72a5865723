"""IKEv2 authentication: PSK AUTH data, signatures, certificate paths and identities.

PSK: RFC 7296 §2.15. Signatures: RFC 7427 (DIGITAL_SIGNATURE with an ASN.1 AlgorithmIdentifier)
for RSASSA-PSS, ECDSA and Ed25519/Ed448 (RFC 8420), plus the older methods RSA_DIGITAL_SIGNATURE
(RFC 7296 §3.8) and ECDSA_SHA*_P* (RFC 4754). Certificate paths are checked against configured CAs
(RFC 5280 §6, the parts listed at validate_chain), and identities against the subject and the
subjectAltName (RFC 4945).
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import datetime, timezone
from typing import Collection, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from agent.ike.compat import not_valid_after, not_valid_before, verify_directly_issued_by
from agent.ike.constants import AuthMethod, HashAlgorithm, IdType
from agent.ike.crypto import Prf

logger = logging.getLogger(__name__)


class AuthError(Exception):
    """Authentication failed for the reason in the message; callers send AUTHENTICATION_FAILED."""


# ---------------------------------------------------------------------------------------------
# PSK and signed octets (RFC 7296 §2.15)

KEY_PAD = b"Key Pad for IKEv2"


def psk_auth(prf: Prf, secret: bytes, signed_octets: bytes) -> bytes:
    """Return the AUTH data for a shared key: prf(prf(Shared Secret, "Key Pad for IKEv2"), octets)."""
    return prf(prf(secret, KEY_PAD), signed_octets)


def verify_psk(prf: Prf, secret: bytes, signed_octets: bytes, auth_data: bytes) -> None:
    """Raise AuthError unless `auth_data` is the shared-key AUTH value; constant-time comparison."""
    if not constant_time.bytes_eq(psk_auth(prf, secret, signed_octets), auth_data):
        raise AuthError("shared key AUTH value does not match")


def signed_octets(message_bytes: bytes, nonce_peer: bytes, prf: Prf, sk_p: bytes, id_payload_body: bytes) -> bytes:
    """Return RealMessage | Nonce(peer) | prf(SK_px, RestOfIDPayload) (RFC 7296 §2.15).

    `message_bytes` is our own first message: the IKE_SA_INIT request for the initiator, the
    response for the responder. `nonce_peer` is the other side's nonce data and `sk_p` our SK_pi
    or SK_pr. `id_payload_body` is our ID payload after its generic header, that is the ID type,
    three reserved octets and the identification data.
    """
    return message_bytes + nonce_peer + prf(sk_p, id_payload_body)


# ---------------------------------------------------------------------------------------------
# Minimal DER reading and writing, for AlgorithmIdentifiers and Names


class _DerError(ValueError):
    pass


def _der_read(data: bytes, offset: int) -> tuple[int, int, int]:
    """Read one DER header at `offset`; return (tag, value start, value end)."""
    if offset + 2 > len(data):
        raise _DerError("truncated DER header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise _DerError("multi-octet DER tags are not supported")
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 3 or start + count > len(data):
            raise _DerError("invalid DER length")
        length = int.from_bytes(data[start : start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise _DerError("non-minimal DER length")
        start += count
    end = start + length
    if end > len(data):
        raise _DerError("DER value runs past its container")
    return tag, start, end


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    children = []
    offset = start
    while offset < end:
        child = _der_read(data[:end], offset)
        children.append(child)
        offset = child[2]
    return children


def _decode_oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise _DerError("invalid OBJECT IDENTIFIER")
    arcs = []
    number = 0
    for octet in value:
        number = (number << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(number)
            number = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def _der(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        return bytes((tag, length)) + value
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(encoded))) + encoded + value


def _der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


_SEQUENCE, _NULL, _INTEGER = 0x30, 0x05, 0x02


# ---------------------------------------------------------------------------------------------
# RFC 7427 signature algorithms

_HASH_CLASSES = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_HASH_OIDS = {  # RFC 3279, RFC 5754
    HashAlgorithm.SHA1: "1.3.14.3.2.26",
    HashAlgorithm.SHA2_256: "2.16.840.1.101.3.4.2.1",
    HashAlgorithm.SHA2_384: "2.16.840.1.101.3.4.2.2",
    HashAlgorithm.SHA2_512: "2.16.840.1.101.3.4.2.3",
}
_RSA_PKCS1_OIDS = {  # sha*WithRSAEncryption, RFC 8017
    "1.2.840.113549.1.1.5": HashAlgorithm.SHA1,
    "1.2.840.113549.1.1.11": HashAlgorithm.SHA2_256,
    "1.2.840.113549.1.1.12": HashAlgorithm.SHA2_384,
    "1.2.840.113549.1.1.13": HashAlgorithm.SHA2_512,
}
_ECDSA_OIDS = {  # ecdsa-with-SHA*, RFC 3279 and RFC 5758
    "1.2.840.10045.4.1": HashAlgorithm.SHA1,
    "1.2.840.10045.4.3.2": HashAlgorithm.SHA2_256,
    "1.2.840.10045.4.3.3": HashAlgorithm.SHA2_384,
    "1.2.840.10045.4.3.4": HashAlgorithm.SHA2_512,
}
_OID_RSASSA_PSS = "1.2.840.113549.1.1.10"  # RFC 4055 §3.1
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_ED25519 = "1.3.101.112"  # RFC 8410
_OID_ED448 = "1.3.101.113"

# SIGNATURE_HASH_ALGORITHMS to announce (RFC 7427 §4): IDENTITY lets the peer use EdDSA (RFC 8420).
SUPPORTED_HASH_ALGORITHMS = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)
# Hashes accepted in received DIGITAL_SIGNATURE AUTH data unless the caller says otherwise.
DEFAULT_ACCEPTED_HASHES = frozenset(SUPPORTED_HASH_ALGORITHMS)


def _hash_identifier(hash_algorithm: HashAlgorithm) -> bytes:
    return _der(_SEQUENCE, _der_oid(_HASH_OIDS[hash_algorithm]) + _der(_NULL, b""))


def rsa_pss_algorithm_identifier(hash_algorithm: HashAlgorithm) -> bytes:
    """Return the RSASSA-PSS AlgorithmIdentifier with MGF1 of the same hash and salt = hash length.

    For SHA-256 this is the encoding listed in RFC 7427 Appendix A. SHA-384 and SHA-512 differ
    only in the hash OIDs and the salt length.
    """
    hash_id = _hash_identifier(hash_algorithm)
    salt_length = _HASH_CLASSES[hash_algorithm].digest_size
    params = (
        _der(0xA0, hash_id)
        + _der(0xA1, _der(_SEQUENCE, _der_oid(_OID_MGF1) + hash_id))
        + _der(0xA2, _der(_INTEGER, salt_length.to_bytes(1, "big")))
    )
    return _der(_SEQUENCE, _der_oid(_OID_RSASSA_PSS) + _der(_SEQUENCE, params))


def ecdsa_algorithm_identifier(hash_algorithm: HashAlgorithm) -> bytes:
    """Return ecdsa-with-SHA* with absent parameters (RFC 7427 Appendix A, RFC 5758)."""
    oid = next(oid for oid, value in _ECDSA_OIDS.items() if value == hash_algorithm)
    return _der(_SEQUENCE, _der_oid(oid))


def rsa_pkcs1_algorithm_identifier(hash_algorithm: HashAlgorithm) -> bytes:
    """Return sha*WithRSAEncryption with NULL parameters (RFC 7427 Appendix A)."""
    oid = next(oid for oid, value in _RSA_PKCS1_OIDS.items() if value == hash_algorithm)
    return _der(_SEQUENCE, _der_oid(oid) + _der(_NULL, b""))


ED25519_ALGORITHM_IDENTIFIER = _der(_SEQUENCE, _der_oid(_OID_ED25519))
ED448_ALGORITHM_IDENTIFIER = _der(_SEQUENCE, _der_oid(_OID_ED448))

# Preferred ECDSA hash per curve, the same as methods 9-11 of RFC 4754.
_ECDSA_CURVES = {
    "secp256r1": (HashAlgorithm.SHA2_256, AuthMethod.ECDSA_SHA256_P256, 32),
    "secp384r1": (HashAlgorithm.SHA2_384, AuthMethod.ECDSA_SHA384_P384, 48),
    "secp521r1": (HashAlgorithm.SHA2_512, AuthMethod.ECDSA_SHA512_P521, 66),
}
_LEGACY_ECDSA = {method: (curve, hash_algorithm, size) for curve, (hash_algorithm, method, size) in _ECDSA_CURVES.items()}
_SHA2_PREFERENCE = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


def _pick_hash(preferred: HashAlgorithm, peer: Collection[HashAlgorithm]) -> HashAlgorithm:
    if preferred in peer:
        return preferred
    for hash_algorithm in _SHA2_PREFERENCE:
        if hash_algorithm in peer:
            return hash_algorithm
    raise AuthError(
        "no signature hash in common: the peer announced "
        f"{sorted(HashAlgorithm(h).name for h in peer if h in HashAlgorithm._value2member_map_)}"
    )


def _with_identifier(algorithm_identifier: bytes, signature: bytes) -> bytes:
    # RFC 7427 §3: one octet with the AlgorithmIdentifier length, the identifier, the signature.
    return bytes((len(algorithm_identifier),)) + algorithm_identifier + signature


def sign(private_key, octets: bytes, peer_hash_algorithms: Sequence[HashAlgorithm]) -> tuple[AuthMethod, bytes]:
    """Sign the AUTH octets; return (auth method, AUTH payload data).

    When the peer sent SIGNATURE_HASH_ALGORITHMS, the result is RFC 7427 DIGITAL_SIGNATURE:
    RSASSA-PSS for RSA keys (salt length = hash length), ECDSA with a DER signature, or Ed25519 or
    Ed448 if the peer announced IDENTITY. Without that notify, RFC 7427 §4 forbids method 14, so
    EC keys fall back to the RFC 4754 methods and RSA keys to RSA_DIGITAL_SIGNATURE (PKCS#1 v1.5
    with SHA-1, RFC 7296 §3.8). Raises AuthError when no method fits.
    """
    peer = set(peer_hash_algorithms)

    if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        if HashAlgorithm.IDENTITY not in peer:
            raise AuthError("EdDSA needs the peer to announce the IDENTITY hash (RFC 8420)")
        identifier = ED25519_ALGORITHM_IDENTIFIER
        if isinstance(private_key, ed448.Ed448PrivateKey):
            identifier = ED448_ALGORITHM_IDENTIFIER
        return AuthMethod.DIGITAL_SIGNATURE, _with_identifier(identifier, private_key.sign(octets))

    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return _sign_ecdsa(private_key, octets, peer)

    if isinstance(private_key, rsa.RSAPrivateKey):
        if not peer:
            logger.debug("peer sent no SIGNATURE_HASH_ALGORITHMS: signing with RSA_DIGITAL_SIGNATURE (SHA-1)")
            return AuthMethod.RSA_DIGITAL_SIGNATURE, private_key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
        hash_algorithm = _pick_hash(HashAlgorithm.SHA2_256, peer)
        hash_object = _HASH_CLASSES[hash_algorithm]()
        pss = padding.PSS(mgf=padding.MGF1(hash_object), salt_length=hash_object.digest_size)
        signature = private_key.sign(octets, pss, hash_object)
        return AuthMethod.DIGITAL_SIGNATURE, _with_identifier(rsa_pss_algorithm_identifier(hash_algorithm), signature)

    raise AuthError(f"cannot sign with a {type(private_key).__name__}")


def _sign_ecdsa(private_key: ec.EllipticCurvePrivateKey, octets: bytes, peer: set) -> tuple[AuthMethod, bytes]:
    curve = _ECDSA_CURVES.get(private_key.curve.name)
    if curve is None:
        raise AuthError(f"ECDSA on curve {private_key.curve.name} is not supported")
    preferred, legacy_method, size = curve

    if not peer:
        # RFC 4754: the signature is r | s, each as long as the curve's order.
        der_signature = private_key.sign(octets, ec.ECDSA(_HASH_CLASSES[preferred]()))
        r, s = utils.decode_dss_signature(der_signature)
        return legacy_method, r.to_bytes(size, "big") + s.to_bytes(size, "big")

    hash_algorithm = _pick_hash(preferred, peer)
    signature = private_key.sign(octets, ec.ECDSA(_HASH_CLASSES[hash_algorithm]()))
    return AuthMethod.DIGITAL_SIGNATURE, _with_identifier(ecdsa_algorithm_identifier(hash_algorithm), signature)


def verify(
    public_key,
    method: AuthMethod,
    auth_data: bytes,
    octets: bytes,
    *,
    accepted_hashes: Collection[HashAlgorithm] = DEFAULT_ACCEPTED_HASHES,
) -> None:
    """Check a signature AUTH payload against the peer's public key; raise AuthError if it fails.

    Accepts DIGITAL_SIGNATURE (RFC 7427) with RSASSA-PSS, sha*WithRSAEncryption, ECDSA (DER
    signature) and Ed25519/Ed448, each only with a hash in `accepted_hashes`. Also accepts the
    older RSA_DIGITAL_SIGNATURE (PKCS#1 v1.5, SHA-1) and ECDSA_SHA*_P* methods.
    """
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            _verify_digital_signature(public_key, auth_data, octets, accepted_hashes)
        elif method == AuthMethod.RSA_DIGITAL_SIGNATURE:
            _require_key(public_key, rsa.RSAPublicKey, method)
            public_key.verify(auth_data, octets, padding.PKCS1v15(), hashes.SHA1())
        elif method in _LEGACY_ECDSA:
            _verify_legacy_ecdsa(public_key, method, auth_data, octets)
        else:
            raise AuthError(f"authentication method {int(method)} is not supported for signatures")
    except InvalidSignature:
        raise AuthError(f"{AuthMethod(method).name} signature is invalid") from None
    except UnsupportedAlgorithm as error:
        raise AuthError(f"signature algorithm not supported: {error}") from None
    except ValueError as error:
        # For example RSASSA-PSS parameters that do not fit the key size.
        raise AuthError(f"{AuthMethod(method).name} signature check failed: {error}") from None


def _require_key(public_key, key_class: type, algorithm) -> None:
    if not isinstance(public_key, key_class):
        name = algorithm.name if isinstance(algorithm, AuthMethod) else algorithm
        raise AuthError(f"{name} does not fit the peer's {type(public_key).__name__}")


def _verify_legacy_ecdsa(public_key, method: AuthMethod, auth_data: bytes, octets: bytes) -> None:
    curve_name, hash_algorithm, size = _LEGACY_ECDSA[method]
    _require_key(public_key, ec.EllipticCurvePublicKey, method)
    if public_key.curve.name != curve_name:
        raise AuthError(f"{AuthMethod(method).name} needs a {curve_name} key, the peer's is {public_key.curve.name}")
    if len(auth_data) != 2 * size:
        raise AuthError(f"{AuthMethod(method).name} signature must be {2 * size} bytes, got {len(auth_data)}")
    r = int.from_bytes(auth_data[:size], "big")
    s = int.from_bytes(auth_data[size:], "big")
    public_key.verify(utils.encode_dss_signature(r, s), octets, ec.ECDSA(_HASH_CLASSES[hash_algorithm]()))


def _verify_digital_signature(public_key, auth_data: bytes, octets: bytes, accepted: Collection[HashAlgorithm]) -> None:
    if not auth_data:
        raise AuthError("DIGITAL_SIGNATURE AUTH data is empty")
    identifier_length = auth_data[0]
    identifier = auth_data[1 : 1 + identifier_length]
    signature = auth_data[1 + identifier_length :]
    if len(identifier) != identifier_length or not signature:
        raise AuthError("DIGITAL_SIGNATURE AUTH data is truncated")

    try:
        kind, hash_algorithm, pss = _parse_signature_algorithm(identifier)
    except _DerError as error:
        raise AuthError(f"invalid signature AlgorithmIdentifier: {error}") from None
    if hash_algorithm not in accepted:
        raise AuthError(f"signature hash {hash_algorithm.name} is not accepted")

    if kind == "ed25519":
        _require_key(public_key, ed25519.Ed25519PublicKey, "Ed25519")
        public_key.verify(signature, octets)
    elif kind == "ed448":
        _require_key(public_key, ed448.Ed448PublicKey, "Ed448")
        public_key.verify(signature, octets)
    elif kind == "ecdsa":
        _require_key(public_key, ec.EllipticCurvePublicKey, "ECDSA")
        public_key.verify(signature, octets, ec.ECDSA(_HASH_CLASSES[hash_algorithm]()))
    elif kind == "rsa-pkcs1":
        _require_key(public_key, rsa.RSAPublicKey, "RSA")
        public_key.verify(signature, octets, padding.PKCS1v15(), _HASH_CLASSES[hash_algorithm]())
    else:
        _require_key(public_key, rsa.RSAPublicKey, "RSASSA-PSS")
        mgf_hash, salt_length = pss
        pss_padding = padding.PSS(mgf=padding.MGF1(_HASH_CLASSES[mgf_hash]()), salt_length=salt_length)
        public_key.verify(signature, octets, pss_padding, _HASH_CLASSES[hash_algorithm]())


def _parse_signature_algorithm(identifier: bytes) -> tuple[str, HashAlgorithm, tuple | None]:
    """Parse an AlgorithmIdentifier into (kind, hash, PSS (MGF1 hash, salt length) or None)."""
    tag, start, end = _der_read(identifier, 0)
    if tag != _SEQUENCE or end != len(identifier):
        raise _DerError("AlgorithmIdentifier is not one SEQUENCE")
    children = _der_children(identifier, start, end)
    if not children or children[0][0] != 0x06 or len(children) > 2:
        raise _DerError("AlgorithmIdentifier needs an OID and at most one parameter")
    oid = _decode_oid(identifier[children[0][1] : children[0][2]])
    params = children[1] if len(children) == 2 else None
    null_or_absent = params is None or (params[0] == _NULL and params[1] == params[2])

    if oid in (_OID_ED25519, _OID_ED448):
        if params is not None:
            raise _DerError("EdDSA AlgorithmIdentifier must have no parameters")
        return ("ed25519" if oid == _OID_ED25519 else "ed448"), HashAlgorithm.IDENTITY, None
    if oid in _ECDSA_OIDS:
        if not null_or_absent:
            raise _DerError("ECDSA AlgorithmIdentifier must have no parameters")
        return "ecdsa", _ECDSA_OIDS[oid], None
    if oid in _RSA_PKCS1_OIDS:
        if not null_or_absent:
            raise _DerError("sha*WithRSAEncryption parameters must be NULL")
        return "rsa-pkcs1", _RSA_PKCS1_OIDS[oid], None
    if oid == _OID_RSASSA_PSS:
        if params is None or params[0] != _SEQUENCE:
            raise _DerError("RSASSA-PSS needs RSASSA-PSS-params")
        hash_algorithm, mgf_hash, salt_length = _parse_pss_params(identifier, params[1], params[2])
        return "rsa-pss", hash_algorithm, (mgf_hash, salt_length)
    raise _DerError(f"signature algorithm {oid} is not supported")


def _parse_pss_params(data: bytes, start: int, end: int) -> tuple[HashAlgorithm, HashAlgorithm, int]:
    # RFC 4055 §3.1 defaults: SHA-1, MGF1 with SHA-1, salt length 20, trailer field 1.
    hash_algorithm, mgf_hash, salt_length = HashAlgorithm.SHA1, HashAlgorithm.SHA1, 20
    for tag, child_start, child_end in _der_children(data, start, end):
        inner = _der_read(data[:child_end], child_start)
        if tag == 0xA0:
            hash_algorithm = _parse_hash_identifier(data, inner)
        elif tag == 0xA1:
            parts = _der_children(data, inner[1], inner[2])
            if inner[0] != _SEQUENCE or len(parts) != 2 or parts[0][0] != 0x06:
                raise _DerError("invalid PSS maskGenAlgorithm")
            if _decode_oid(data[parts[0][1] : parts[0][2]]) != _OID_MGF1:
                raise _DerError("only MGF1 is supported as the PSS mask generation function")
            mgf_hash = _parse_hash_identifier(data, parts[1])
        elif tag == 0xA2:
            if inner[0] != _INTEGER or not 0 < inner[2] - inner[1] <= 2:
                raise _DerError("invalid PSS salt length")
            salt_length = int.from_bytes(data[inner[1] : inner[2]], "big")
        elif tag == 0xA3:
            if inner[0] != _INTEGER or data[inner[1] : inner[2]] != b"\x01":
                raise _DerError("PSS trailer field must be 1")
        else:
            raise _DerError(f"unexpected tag {tag:#x} in RSASSA-PSS-params")
    return hash_algorithm, mgf_hash, salt_length


def _parse_hash_identifier(data: bytes, element: tuple[int, int, int]) -> HashAlgorithm:
    """Parse a hash AlgorithmIdentifier, SEQUENCE { OID, NULL or nothing }, already read as `element`."""
    tag, start, end = element
    parts = _der_children(data, start, end)
    if tag != _SEQUENCE or not parts or parts[0][0] != 0x06 or len(parts) > 2:
        raise _DerError("invalid hash AlgorithmIdentifier")
    if len(parts) == 2 and (parts[1][0] != _NULL or parts[1][1] != parts[1][2]):
        raise _DerError("hash AlgorithmIdentifier parameters must be NULL or absent")
    oid = _decode_oid(data[parts[0][1] : parts[0][2]])
    for hash_algorithm, hash_oid in _HASH_OIDS.items():
        if hash_oid == oid:
            return hash_algorithm
    raise _DerError(f"hash {oid} is not supported")


# ---------------------------------------------------------------------------------------------
# Certificate paths (RFC 5280 §6, reduced to what IKE peers need)

MAX_PATH_LENGTH = 8  # certificates from the end entity up to and including the trust anchor

# Extensions this module evaluates. Any other critical extension makes a certificate unusable
# (RFC 5280 §4.2). Extended key usage is accepted with any value, because IKE certificates carry
# serverAuth, clientAuth, ipsecIKE or none.
_UNDERSTOOD_CRITICAL = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
}


def validate_chain(
    end_entity: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trusted_cas: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """Check that `end_entity` chains up to one of `trusted_cas`; raise AuthError with the reason.

    Checked on every certificate of the path: the signature by the next one, the validity period
    at `now` (a naive datetime counts as UTC), and unknown critical extensions. Checked on every
    issuer: basicConstraints cA (a trust anchor may lack the extension), keyCertSign if keyUsage
    is present, and pathLenConstraint. The end entity must allow digitalSignature or
    nonRepudiation if it has keyUsage (RFC 4945).

    NOTE: revocation (CRL, OCSP), name constraints and policies are not checked; certificates
    that mark those extensions critical are rejected.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    _check_certificate(end_entity, now)
    usage = _extension(end_entity, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise AuthError(f"certificate {_name(end_entity)} does not allow digital signatures (keyUsage)")

    trusted_der = {ca.public_bytes(Encoding.DER) for ca in trusted_cas}
    if end_entity.public_bytes(Encoding.DER) in trusted_der:
        return

    failures: list[str] = []
    if not _extend_path([end_entity], list(intermediates), list(trusted_cas), trusted_der, now, failures):
        reason = failures[-1] if failures else f"no issuer {end_entity.issuer.rfc4514_string()!r} found"
        raise AuthError(f"certificate {_name(end_entity)} is not trusted: {reason}")
    logger.debug("certificate %s chains to a trusted CA", _name(end_entity))


def _extend_path(
    path: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    trusted: list[x509.Certificate],
    trusted_der: set[bytes],
    now: datetime,
    failures: list[str],
) -> bool:
    """Depth-first search for an issuer of path[-1] that leads to a trust anchor."""
    if len(path) >= MAX_PATH_LENGTH:
        failures.append(f"path longer than {MAX_PATH_LENGTH} certificates")
        return False

    subject = path[-1]
    for candidate in trusted + intermediates:
        if candidate.subject != subject.issuer or any(candidate == seen for seen in path):
            continue
        try:
            verify_directly_issued_by(subject, candidate)
            is_anchor = candidate.public_bytes(Encoding.DER) in trusted_der
            _check_issuer(candidate, path, is_anchor, now)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, AuthError) as error:
            failures.append(_issuer_failure(subject, candidate, error))
            continue
        if is_anchor or _extend_path(path + [candidate], intermediates, trusted, trusted_der, now, failures):
            return True
    return False


def _issuer_failure(subject: x509.Certificate, issuer: x509.Certificate, error: Exception) -> str:
    if isinstance(error, InvalidSignature):
        return f"signature of {_name(subject)} by {_name(issuer)} is invalid"
    return str(error) or type(error).__name__


def _check_issuer(issuer: x509.Certificate, path: list[x509.Certificate], is_anchor: bool, now: datetime) -> None:
    _check_certificate(issuer, now)

    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None and not is_anchor:
        raise AuthError(f"issuer {_name(issuer)} has no basicConstraints, so it is not a CA")
    if constraints is not None and not constraints.ca:
        raise AuthError(f"issuer {_name(issuer)} is not a CA (basicConstraints cA is false)")

    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise AuthError(f"issuer {_name(issuer)} may not sign certificates (keyUsage lacks keyCertSign)")

    if constraints is not None and constraints.path_length is not None:
        # RFC 5280 §4.2.1.9: the limit counts the non-self-issued intermediate CAs below this one.
        below = sum(1 for cert in path[1:] if cert.subject != cert.issuer)
        if below > constraints.path_length:
            raise AuthError(
                f"issuer {_name(issuer)} allows {constraints.path_length} intermediate CAs below it, "
                f"the path has {below}"
            )


def _check_certificate(cert: x509.Certificate, now: datetime) -> None:
    if now < not_valid_before(cert):
        raise AuthError(f"certificate {_name(cert)} is not valid before {not_valid_before(cert).isoformat()}")
    if now > not_valid_after(cert):
        raise AuthError(f"certificate {_name(cert)} expired at {not_valid_after(cert).isoformat()}")
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise AuthError(
                f"certificate {_name(cert)} has an unsupported critical extension {extension.oid.dotted_string}"
            )


def _extension(cert: x509.Certificate, extension_class: type):
    try:
        return cert.extensions.get_extension_for_class(extension_class).value
    except x509.ExtensionNotFound:
        return None


def _name(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string())


# ---------------------------------------------------------------------------------------------
# Identities (RFC 4945 §3.1)


def identity_matches(cert: x509.Certificate, id_type: IdType, id_data: bytes) -> bool:
    """Return whether the peer's ID payload names the certificate's subject or a subjectAltName.

    ID_IPV4_ADDR and ID_IPV6_ADDR match iPAddress, ID_FQDN dNSName (case-insensitive),
    ID_RFC822_ADDR rfc822Name (domain case-insensitive), ID_DER_ASN1_DN the subject or a
    directoryName, compared attribute by attribute with case and spacing ignored.
    ID_DER_ASN1_GN and ID_KEY_ID never match a certificate.
    """
    try:
        alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alt_names = None

    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        expected_size = 4 if id_type == IdType.ID_IPV4_ADDR else 16
        if len(id_data) != expected_size or alt_names is None:
            return False
        address = ipaddress.ip_address(id_data)
        return address in alt_names.get_values_for_type(x509.IPAddress)

    if id_type == IdType.ID_FQDN:
        name = _ascii(id_data)
        if name is None or alt_names is None:
            return False
        expected = name.rstrip(".").lower()
        return any(dns.rstrip(".").lower() == expected for dns in alt_names.get_values_for_type(x509.DNSName))

    if id_type == IdType.ID_RFC822_ADDR:
        address = _ascii(id_data)
        if address is None or alt_names is None:
            return False
        expected = _mailbox_key(address)
        return any(_mailbox_key(value) == expected for value in alt_names.get_values_for_type(x509.RFC822Name))

    if id_type == IdType.ID_DER_ASN1_DN:
        try:
            expected = _parse_name(id_data)
        except (_DerError, ValueError):
            return False
        if _normalized_name(cert.subject) == expected:
            return True
        if alt_names is None:
            return False
        return any(_normalized_name(name) == expected for name in alt_names.get_values_for_type(x509.DirectoryName))

    # NOTE: ID_DER_ASN1_GN and ID_KEY_ID are not matched against certificates.
    return False


def _ascii(data: bytes) -> str | None:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return None


def _mailbox_key(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def _normalize_value(value: str) -> str:
    # RFC 5280 §7.1 specifies RFC 4518 string preparation. This keeps its two steps that matter
    # for the usual string types: case folding and collapsing whitespace.
    return " ".join(value.split()).casefold()


def _normalized_name(name: x509.Name) -> list[frozenset]:
    rdns = []
    for rdn in name.rdns:
        rdns.append(
            frozenset(
                (attribute.oid.dotted_string, _normalize_value(attribute.value) if isinstance(attribute.value, str) else attribute.value)
                for attribute in rdn
            )
        )
    return rdns


# Directory string types (ASN.1 tag number) and the codecs that decode them.
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x12: "ascii",  # NumericString
    0x13: "ascii",  # PrintableString
    0x14: "latin-1",  # TeletexString (T.61), read as Latin-1 like most implementations
    0x16: "ascii",  # IA5String
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}


def _parse_name(der: bytes) -> list[frozenset]:
    """Parse a DER Name (RFC 5280 §4.1.2.4) into the form _normalized_name() produces."""
    tag, start, end = _der_read(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise _DerError("Name is not one SEQUENCE")
    rdns = []
    for set_tag, set_start, set_end in _der_children(der, start, end):
        if set_tag != 0x31:
            raise _DerError("RelativeDistinguishedName is not a SET")
        attributes = []
        for seq_tag, seq_start, seq_end in _der_children(der, set_start, set_end):
            parts = _der_children(der, seq_start, seq_end)
            if seq_tag != _SEQUENCE or len(parts) != 2 or parts[0][0] != 0x06:
                raise _DerError("invalid AttributeTypeAndValue")
            oid = _decode_oid(der[parts[0][1] : parts[0][2]])
            value_tag, value_start, value_end = parts[1]
            raw = der[value_start:value_end]
            codec = _STRING_CODECS.get(value_tag)
            value = _normalize_value(raw.decode(codec)) if codec else raw
            attributes.append((oid, value))
        rdns.append(frozenset(attributes))
    return rdns
