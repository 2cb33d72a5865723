"""Tests for agent.ike.compat, including the fallbacks for cryptography 38 on any installed release."""

from datetime import datetime, timedelta, timezone

import cryptography
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.ike import compat

CRYPTOGRAPHY_MAJOR = int(cryptography.__version__.split(".")[0])
NOT_BEFORE = datetime(2026, 1, 1, 12, 30, 5, tzinfo=timezone.utc)
NOT_AFTER = NOT_BEFORE + timedelta(days=90)

# The public helper and the fallback it uses on cryptography 38, so that both run on every release.
LOADERS = [compat.load_pem_certificates, compat._load_pem_blocks]
VERIFIERS = [compat.verify_directly_issued_by, compat._verify_signature]


def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(subject, issuer, issuer_key, subject_key=None, sign_hash=hashes.SHA256(), **sign_options):
    """Return a certificate for `subject` signed by `issuer_key`, for a new Ed25519 key by default."""
    subject_key = subject_key or ed25519.Ed25519PrivateKey.generate()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        sign_hash = None
    return builder.sign(issuer_key, sign_hash, **sign_options)


def self_signed(subject, key):
    return issue(subject, subject, key, subject_key=key)


KEY_GENERATORS = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


# ---------------------------------------------------------------------------------------------
# Raw public keys


def test_raw_public_bytes_x25519_vector():
    # RFC 7748 §6.1: Alice's private and public key.
    private = x25519.X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    assert compat.raw_public_bytes(private.public_key()) == bytes.fromhex(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )


# ---------------------------------------------------------------------------------------------
# PEM files with several certificates


@pytest.mark.parametrize("load", LOADERS)
def test_pem_loads_all_in_order(load):
    first = self_signed("first", ed25519.Ed25519PrivateKey.generate())
    second = self_signed("second", ed25519.Ed25519PrivateKey.generate())
    data = (
        b"Bag Attributes: text before the first block\n"
        + first.public_bytes(Encoding.PEM)
        + b"\ntext between blocks\n"
        + second.public_bytes(Encoding.PEM)
    )

    loaded = load(data)

    assert loaded == [first, second]


@pytest.mark.parametrize("load", LOADERS)
def test_pem_without_certificate(load):
    key = ed25519.Ed25519PrivateKey.generate()
    key_pem = key.private_bytes(
        Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        load(key_pem)
    with pytest.raises(ValueError):
        load(b"")


@pytest.mark.parametrize("load", LOADERS)
def test_pem_broken_block(load):
    good = self_signed("good", ed25519.Ed25519PrivateKey.generate()).public_bytes(Encoding.PEM)
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError):
        load(good + broken)


# ---------------------------------------------------------------------------------------------
# Validity period


def test_validity_period_is_aware_utc():
    cert = self_signed("validity", ed25519.Ed25519PrivateKey.generate())
    assert compat.not_valid_before(cert) == NOT_BEFORE
    assert compat.not_valid_before(cert).utcoffset() == timedelta(0)
    assert compat.not_valid_after(cert) == NOT_AFTER
    assert compat.not_valid_after(cert).utcoffset() == timedelta(0)


# ---------------------------------------------------------------------------------------------
# Issuer signature


@pytest.mark.parametrize("key_type", KEY_GENERATORS)
@pytest.mark.parametrize("verify", VERIFIERS)
def test_issued_by_signature(verify, key_type):
    issuer_key = KEY_GENERATORS[key_type]()
    cert = issue("leaf", "CA", issuer_key)
    issuer = self_signed("CA", issuer_key)
    impostor = self_signed("CA", KEY_GENERATORS[key_type]())

    verify(cert, issuer)
    with pytest.raises(InvalidSignature):
        verify(cert, impostor)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_issued_by_name_mismatch(verify):
    key = ec.generate_private_key(ec.SECP256R1())
    other_name = self_signed("Other CA", key)
    with pytest.raises(ValueError):
        verify(issue("leaf", "CA", key), other_name)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_issued_by_key_type_mismatch(verify):
    ecdsa_key = ec.generate_private_key(ec.SECP256R1())
    ed25519_issuer = self_signed("CA", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        verify(issue("leaf", "CA", ecdsa_key), ed25519_issuer)


@pytest.mark.skipif(
    CRYPTOGRAPHY_MAJOR < 41, reason="signing certificates with RSASSA-PSS (rsa_padding) needs cryptography 41"
)
def test_fallback_rejects_pss():
    rsa_key = KEY_GENERATORS["rsa"]()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    issuer = self_signed("CA", rsa_key)
    cert = issue("leaf", "CA", rsa_key, rsa_padding=pss)

    compat.verify_directly_issued_by(cert, issuer)
    with pytest.raises(UnsupportedAlgorithm, match="RSASSA-PSS"):
        compat._verify_signature(cert, issuer)
