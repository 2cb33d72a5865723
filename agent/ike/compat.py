"""Helpers for the `cryptography` APIs that are newer than 38.0.4, the release in Debian 12.

Each helper calls the newer API when the installed release has it and otherwise does the same
work with calls that 38.0.4 has, except where a NOTE says otherwise. Callers use these helpers in
place of the newer APIs.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import SignatureAlgorithmOID


# public_bytes_raw() was added in cryptography 40, and this older call returns the same bytes.
def raw_public_bytes(key) -> bytes:
    """Return the raw bytes of an X25519, X448, Ed25519 or Ed448 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (X509 |)CERTIFICATE-----.+?-----END \1CERTIFICATE-----", re.DOTALL)


# x509.load_pem_x509_certificates() was added in cryptography 39.
def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse every CERTIFICATE block of a PEM file, in file order.

    Raises ValueError if the data has no certificate or a block is not a valid certificate.
    """
    if hasattr(x509, "load_pem_x509_certificates"):
        return x509.load_pem_x509_certificates(data)
    return _load_pem_blocks(data)


def _load_pem_blocks(data: bytes) -> list[x509.Certificate]:
    blocks = [match.group(0) for match in _PEM_CERTIFICATE.finditer(data)]
    if not blocks:
        raise ValueError("no PEM CERTIFICATE block found")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


# Certificate.not_valid_before_utc was added in cryptography 42.
def not_valid_before(cert: x509.Certificate) -> datetime:
    """Return the start of the certificate's validity period as an aware UTC datetime."""
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc
    return cert.not_valid_before.replace(tzinfo=timezone.utc)


# Certificate.not_valid_after_utc was added in cryptography 42.
def not_valid_after(cert: x509.Certificate) -> datetime:
    """Return the end of the certificate's validity period as an aware UTC datetime."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=timezone.utc)


# The issuer key type that each signature algorithm needs, for the fallback below. RSASSA-PSS is
# missing because 38 cannot read its parameters (Certificate.signature_algorithm_parameters
# arrived in 41). MD5 is left out because MD5 collisions make such signatures forgeable.
_SIGNATURE_KEY_TYPES: dict[x509.ObjectIdentifier, type] = {
    SignatureAlgorithmOID.RSA_WITH_SHA1: rsa.RSAPublicKey,
    SignatureAlgorithmOID._RSA_WITH_SHA1: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA224: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA256: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA384: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA512: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA3_224: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA3_256: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA3_384: rsa.RSAPublicKey,
    SignatureAlgorithmOID.RSA_WITH_SHA3_512: rsa.RSAPublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA224: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA3_224: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA3_256: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA3_384: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.ECDSA_WITH_SHA3_512: ec.EllipticCurvePublicKey,
    SignatureAlgorithmOID.DSA_WITH_SHA1: dsa.DSAPublicKey,
    SignatureAlgorithmOID.DSA_WITH_SHA224: dsa.DSAPublicKey,
    SignatureAlgorithmOID.DSA_WITH_SHA256: dsa.DSAPublicKey,
    SignatureAlgorithmOID.ED25519: ed25519.Ed25519PublicKey,
    SignatureAlgorithmOID.ED448: ed448.Ed448PublicKey,
}


# Certificate.verify_directly_issued_by() was added in cryptography 40.
def verify_directly_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check that `cert` names `issuer` as its issuer and carries a valid signature by its key.

    Raises ValueError if the names or the key type do not match, InvalidSignature if the signature
    is wrong, and UnsupportedAlgorithm for a signature algorithm that the fallback lacks.
    """
    if hasattr(cert, "verify_directly_issued_by"):
        cert.verify_directly_issued_by(issuer)
    else:
        _verify_signature(cert, issuer)


def _verify_signature(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    # NOTE: unlike the method of cryptography 40 and later, this fallback does not check that
    # the signature algorithm inside tbsCertificate equals the outer one.
    if cert.issuer != issuer.subject:
        raise ValueError("issuer certificate subject does not match the certificate's issuer")

    algorithm = cert.signature_algorithm_oid
    if algorithm == SignatureAlgorithmOID.RSASSA_PSS:
        raise UnsupportedAlgorithm("RSASSA-PSS certificate signatures need cryptography 42 or later")
    key_type = _SIGNATURE_KEY_TYPES.get(algorithm)
    if key_type is None:
        raise UnsupportedAlgorithm(f"unsupported certificate signature algorithm {algorithm.dotted_string}")
    key = issuer.public_key()
    if not isinstance(key, key_type):
        raise ValueError("signature algorithm does not match the issuer key type")

    signature, data = cert.signature, cert.tbs_certificate_bytes
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), cert.signature_hash_algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(cert.signature_hash_algorithm))
    elif isinstance(key, dsa.DSAPublicKey):
        key.verify(signature, data, cert.signature_hash_algorithm)
    else:
        key.verify(signature, data)
