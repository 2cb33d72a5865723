"""Tests for agent.ike.auth: PSK AUTH data, RFC 7427 signatures, certificate paths, identities."""

import hmac
import ipaddress
from datetime import datetime, timedelta, timezone

import cryptography
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID, ObjectIdentifier

from agent.ike import auth
from agent.ike.auth import AuthError
from agent.ike.constants import AuthMethod, HashAlgorithm, IdType, PrfId
from agent.ike.crypto import prf_by_id

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
SHA2 = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512]
ALL_HASHES = auth.SUPPORTED_HASH_ALGORITHMS
CRYPTOGRAPHY_MAJOR = int(cryptography.__version__.split(".")[0])


def unhex(text):
    return bytes.fromhex(text.replace(" ", ""))


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ---------------------------------------------------------------------------------------------
# PSK (RFC 7296 §2.15)


def test_psk_auth_matches_formula():
    prf = prf_by_id(PrfId.PRF_HMAC_SHA2_256)
    octets = b"message" + b"nonce" + b"\x00" * 32
    key_pad = hmac.digest(b"secret", b"Key Pad for IKEv2", "sha256")
    assert auth.psk_auth(prf, b"secret", octets) == hmac.digest(key_pad, octets, "sha256")


def test_verify_psk():
    prf = prf_by_id(PrfId.PRF_HMAC_SHA2_384)
    value = auth.psk_auth(prf, b"secret", b"octets")
    auth.verify_psk(prf, b"secret", b"octets", value)
    with pytest.raises(AuthError, match="does not match"):
        auth.verify_psk(prf, b"other secret", b"octets", value)
    with pytest.raises(AuthError):
        auth.verify_psk(prf, b"secret", b"octets", value[:-1])


def test_signed_octets_layout():
    prf = prf_by_id(PrfId.PRF_HMAC_SHA2_256)
    id_body = bytes([IdType.ID_FQDN, 0, 0, 0]) + b"gw.example"
    octets = auth.signed_octets(b"<IKE_SA_INIT>", b"<Nr>", prf, b"k" * 32, id_body)
    assert octets == b"<IKE_SA_INIT><Nr>" + hmac.digest(b"k" * 32, id_body, "sha256")


# ---------------------------------------------------------------------------------------------
# RFC 7427 Appendix A AlgorithmIdentifier encodings. The hex comes from a published table of
# DER AlgorithmIdentifiers because the RFC text itself was not available. The same bytes also
# appear in certificates that OpenSSL signs, which the second test checks.

ALGORITHM_IDENTIFIERS = {
    "sha1WithRSAEncryption": "300d06092a864886f70d0101050500",
    "sha256WithRSAEncryption": "300d06092a864886f70d01010b0500",
    "sha384WithRSAEncryption": "300d06092a864886f70d01010c0500",
    "sha512WithRSAEncryption": "300d06092a864886f70d01010d0500",
    "ecdsa-with-sha256": "300a06082a8648ce3d040302",
    "ecdsa-with-sha384": "300a06082a8648ce3d040303",
    "ecdsa-with-sha512": "300a06082a8648ce3d040304",
    "RSASSA-PSS with SHA-256": "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120",
    "RSASSA-PSS with SHA-384": "304106092a864886f70d01010a3034a00f300d06096086480165030402020500a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130",
    "RSASSA-PSS with SHA-512": "304106092a864886f70d01010a3034a00f300d06096086480165030402030500a11c301a06092a864886f70d010108300d06096086480165030402030500a203020140",
    "Ed25519": "300506032b6570",
}

BUILT_IDENTIFIERS = {
    "sha1WithRSAEncryption": lambda: auth.rsa_pkcs1_algorithm_identifier(HashAlgorithm.SHA1),
    "sha256WithRSAEncryption": lambda: auth.rsa_pkcs1_algorithm_identifier(HashAlgorithm.SHA2_256),
    "sha384WithRSAEncryption": lambda: auth.rsa_pkcs1_algorithm_identifier(HashAlgorithm.SHA2_384),
    "sha512WithRSAEncryption": lambda: auth.rsa_pkcs1_algorithm_identifier(HashAlgorithm.SHA2_512),
    "ecdsa-with-sha256": lambda: auth.ecdsa_algorithm_identifier(HashAlgorithm.SHA2_256),
    "ecdsa-with-sha384": lambda: auth.ecdsa_algorithm_identifier(HashAlgorithm.SHA2_384),
    "ecdsa-with-sha512": lambda: auth.ecdsa_algorithm_identifier(HashAlgorithm.SHA2_512),
    "RSASSA-PSS with SHA-256": lambda: auth.rsa_pss_algorithm_identifier(HashAlgorithm.SHA2_256),
    "RSASSA-PSS with SHA-384": lambda: auth.rsa_pss_algorithm_identifier(HashAlgorithm.SHA2_384),
    "RSASSA-PSS with SHA-512": lambda: auth.rsa_pss_algorithm_identifier(HashAlgorithm.SHA2_512),
    "Ed25519": lambda: auth.ED25519_ALGORITHM_IDENTIFIER,
}


@pytest.mark.parametrize("name", ALGORITHM_IDENTIFIERS)
def test_algorithm_identifier_encoding(name):
    assert BUILT_IDENTIFIERS[name]().hex() == ALGORITHM_IDENTIFIERS[name]


def self_signed(key, sign_hash, rsa_padding=None):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "algorithm test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if rsa_padding is None:
        return builder.sign(key, sign_hash).public_bytes(Encoding.DER)
    return builder.sign(key, sign_hash, rsa_padding=rsa_padding).public_bytes(Encoding.DER)


@pytest.mark.skipif(
    CRYPTOGRAPHY_MAJOR < 41, reason="signing certificates with RSASSA-PSS (rsa_padding) needs cryptography 41"
)
def test_pss_identifiers_match_openssl_certificates(rsa_key):
    for hash_algorithm, hash_object in zip(SHA2, (hashes.SHA256(), hashes.SHA384(), hashes.SHA512())):
        pss = padding.PSS(mgf=padding.MGF1(hash_object), salt_length=padding.PSS.DIGEST_LENGTH)
        assert auth.rsa_pss_algorithm_identifier(hash_algorithm) in self_signed(rsa_key, hash_object, pss)


def test_algorithm_identifiers_match_openssl_certificates(rsa_key):
    for hash_algorithm, hash_object in zip(SHA2, (hashes.SHA256(), hashes.SHA384(), hashes.SHA512())):
        assert auth.rsa_pkcs1_algorithm_identifier(hash_algorithm) in self_signed(rsa_key, hash_object)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        assert auth.ecdsa_algorithm_identifier(hash_algorithm) in self_signed(ec_key, hash_object)
    assert auth.ED25519_ALGORITHM_IDENTIFIER in self_signed(ed25519.Ed25519PrivateKey.generate(), None)


# ---------------------------------------------------------------------------------------------
# Signing and verifying


def split_digital_signature(auth_data):
    length = auth_data[0]
    return auth_data[1 : 1 + length], auth_data[1 + length :]


def test_sign_rsa_uses_pss(rsa_key):
    method, data = auth.sign(rsa_key, b"octets", [HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256])
    assert method == AuthMethod.DIGITAL_SIGNATURE
    identifier, signature = split_digital_signature(data)
    assert identifier == auth.rsa_pss_algorithm_identifier(HashAlgorithm.SHA2_256)
    assert len(signature) == 256
    auth.verify(rsa_key.public_key(), method, data, b"octets")
    with pytest.raises(AuthError, match="invalid"):
        auth.verify(rsa_key.public_key(), method, data, b"other octets")


@pytest.mark.parametrize("peer_hash", SHA2)
def test_sign_rsa_follows_peer_hash(rsa_key, peer_hash):
    method, data = auth.sign(rsa_key, b"octets", [peer_hash])
    identifier, _ = split_digital_signature(data)
    assert identifier == auth.rsa_pss_algorithm_identifier(peer_hash)
    auth.verify(rsa_key.public_key(), method, data, b"octets")


def test_verify_rsa_pkcs1_digital_signature(rsa_key):
    # strongSwan signs with sha256WithRSAEncryption unless RSASSA-PSS is configured.
    signature = rsa_key.sign(b"octets", padding.PKCS1v15(), hashes.SHA256())
    identifier = auth.rsa_pkcs1_algorithm_identifier(HashAlgorithm.SHA2_256)
    data = bytes([len(identifier)]) + identifier + signature
    auth.verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets")


def test_rsa_legacy_method(rsa_key):
    method, data = auth.sign(rsa_key, b"octets", [])
    assert method == AuthMethod.RSA_DIGITAL_SIGNATURE
    rsa_key.public_key().verify(data, b"octets", padding.PKCS1v15(), hashes.SHA1())
    auth.verify(rsa_key.public_key(), AuthMethod.RSA_DIGITAL_SIGNATURE, data, b"octets")


@pytest.mark.parametrize(
    "curve, expected_hash",
    [
        (ec.SECP256R1(), HashAlgorithm.SHA2_256),
        (ec.SECP384R1(), HashAlgorithm.SHA2_384),
        (ec.SECP521R1(), HashAlgorithm.SHA2_512),
    ],
)
def test_sign_ecdsa_hash_per_curve(curve, expected_hash):
    key = ec.generate_private_key(curve)
    method, data = auth.sign(key, b"octets", ALL_HASHES)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    identifier, signature = split_digital_signature(data)
    assert identifier == auth.ecdsa_algorithm_identifier(expected_hash)
    utils.decode_dss_signature(signature)  # RFC 7427 ECDSA signatures are DER Ecdsa-Sig-Value
    auth.verify(key.public_key(), method, data, b"octets")


def test_sign_ecdsa_falls_back_to_peer_hash():
    key = ec.generate_private_key(ec.SECP384R1())
    method, data = auth.sign(key, b"octets", [HashAlgorithm.SHA2_256])
    identifier, _ = split_digital_signature(data)
    assert identifier == auth.ecdsa_algorithm_identifier(HashAlgorithm.SHA2_256)
    auth.verify(key.public_key(), method, data, b"octets")


@pytest.mark.parametrize(
    "curve, method, size",
    [
        (ec.SECP256R1(), AuthMethod.ECDSA_SHA256_P256, 64),
        (ec.SECP384R1(), AuthMethod.ECDSA_SHA384_P384, 96),
        (ec.SECP521R1(), AuthMethod.ECDSA_SHA512_P521, 132),
    ],
)
def test_ecdsa_legacy_methods(curve, method, size):
    key = ec.generate_private_key(curve)
    signed_method, data = auth.sign(key, b"octets", [])
    assert signed_method == method
    assert len(data) == size
    auth.verify(key.public_key(), method, data, b"octets")


# RFC 6979 Appendix A.2.5-A.2.7: key pairs and the deterministic signatures of "sample" with the
# hash that RFC 4754 ties to each curve. Published r and s let the verify path be checked against
# signatures made elsewhere.
RFC6979 = [
    (
        ec.SECP256R1(),
        AuthMethod.ECDSA_SHA256_P256,
        HashAlgorithm.SHA2_256,
        "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6",
        "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299",
        "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
        "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
    ),
    (
        ec.SECP384R1(),
        AuthMethod.ECDSA_SHA384_P384,
        HashAlgorithm.SHA2_384,
        "EC3A4E415B4E19A4568618029F427FA5DA9A8BC4AE92E02E06AAE5286B300C64DEF8F0EA9055866064A254515480BC13",
        "8015D9B72D7D57244EA8EF9AC0C621896708A59367F9DFB9F54CA84B3F1C9DB1288B231C3AE0D4FE7344FD2533264720",
        "94EDBB92A5ECB8AAD4736E56C691916B3F88140666CE9FA73D64C4EA95AD133C81A648152E44ACF96E36DD1E80FABE46",
        "99EF4AEB15F178CEA1FE40DB2603138F130E740A19624526203B6351D0A3A94FA329C145786E679E7B82C71A38628AC8",
    ),
    (
        ec.SECP521R1(),
        AuthMethod.ECDSA_SHA512_P521,
        HashAlgorithm.SHA2_512,
        "01894550D0785932E00EAA23B694F213F8C3121F86DC97A04E5A7167DB4E5BCD371123D46E45DB6B5D5370A7F20FB633155D38FFA16D2BD761DCAC474B9A2F5023A4",
        "00493101C962CD4D2FDDF782285E64584139C2F91B47F87FF82354D6630F746A28A0DB25741B5B34A828008B22ACC23F924FAAFBD4D33F81EA66956DFEAA2BFDFCF5",
        "00C328FAFCBD79DD77850370C46325D987CB525569FB63C5D3BC53950E6D4C5F174E25A1EE9017B5D450606ADD152B534931D7D4E8455CC91F9B15BF05EC36E377FA",
        "00617CCE7CF5064806C467F678D3B4080D6F1CC50AF26CA209417308281B68AF282623EAA63E5B5C0723D8B8C37FF0777B1A20F8CCB1DCCC43997F1EE0E44DA4A67A",
    ),
]


@pytest.mark.parametrize("curve, method, hash_algorithm, ux, uy, r, s", RFC6979, ids=["P-256", "P-384", "P-521"])
def test_verify_rfc6979_signatures(curve, method, hash_algorithm, ux, uy, r, s):
    public_key = ec.EllipticCurvePublicNumbers(int(ux, 16), int(uy, 16), curve).public_key()

    # RFC 4754 form: r | s.
    auth.verify(public_key, method, unhex(r) + unhex(s), b"sample")

    # RFC 7427 form: AlgorithmIdentifier and a DER signature.
    identifier = auth.ecdsa_algorithm_identifier(hash_algorithm)
    der = utils.encode_dss_signature(int(r, 16), int(s, 16))
    auth.verify(public_key, AuthMethod.DIGITAL_SIGNATURE, bytes([len(identifier)]) + identifier + der, b"sample")

    with pytest.raises(AuthError):
        auth.verify(public_key, method, unhex(r) + unhex(s), b"sample!")


def test_ed25519_rfc8032_vector():
    # RFC 8032 §7.1 TEST 1: the empty message.
    key = ed25519.Ed25519PrivateKey.from_private_bytes(
        unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == unhex(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    method, data = auth.sign(key, b"", ALL_HASHES)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    identifier, signature = split_digital_signature(data)
    assert identifier == auth.ED25519_ALGORITHM_IDENTIFIER
    assert signature == unhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    auth.verify(key.public_key(), method, data, b"")


def test_ed25519_needs_identity_hash():
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AuthError, match="IDENTITY"):
        auth.sign(key, b"octets", SHA2)
    with pytest.raises(AuthError, match="IDENTITY"):
        auth.sign(key, b"octets", [])


def test_sign_no_common_hash():
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthError, match="no signature hash in common"):
        auth.sign(key, b"octets", [HashAlgorithm.SHA1])


def test_verify_rejects_key_type_mismatch(rsa_key):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    method, data = auth.sign(ec_key, b"octets", ALL_HASHES)
    with pytest.raises(AuthError, match="does not fit"):
        auth.verify(rsa_key.public_key(), method, data, b"octets")
    method, data = auth.sign(ec_key, b"octets", [])
    with pytest.raises(AuthError, match="secp384r1"):
        auth.verify(ec_key.public_key(), AuthMethod.ECDSA_SHA384_P384, data, b"octets")


def test_verify_rejects_sha1_by_default(rsa_key):
    signature = rsa_key.sign(b"octets", padding.PKCS1v15(), hashes.SHA1())
    identifier = auth.rsa_pkcs1_algorithm_identifier(HashAlgorithm.SHA1)
    data = bytes([len(identifier)]) + identifier + signature
    with pytest.raises(AuthError, match="SHA1 is not accepted"):
        auth.verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets")
    accepted = {HashAlgorithm.SHA1, *SHA2}
    auth.verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets", accepted_hashes=accepted)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x20" + b"\x30" * 10,  # identifier longer than the data
        b"\x03\x30\x01\x05sig",  # SEQUENCE holding a NULL, no OID
        b"\x07\x30\x05\x06\x03\x2b\x65\x71sig",  # length octet one too long: no signature left
        b"\x05\x30\x03\x06\x01\x2asig",  # an OID that names no signature algorithm
        b"\x0c\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02",  # identifier but no signature
    ],
)
def test_verify_rejects_malformed_digital_signature(data):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(AuthError):
        auth.verify(key, AuthMethod.DIGITAL_SIGNATURE, data, b"octets")


def test_verify_pss_with_other_salt_length(rsa_key):
    # RSASSA-PSS parameters come from the peer's AlgorithmIdentifier: here salt length 20.
    hash_id = bytes.fromhex("300d06096086480165030402010500")
    params = (
        b"\xa0" + bytes([len(hash_id)]) + hash_id
        + b"\xa1\x1c\x30\x1a\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x08" + hash_id
        + b"\xa2\x03\x02\x01\x14"
    )
    identifier = b"\x30\x41\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a\x30\x34" + params
    signature = rsa_key.sign(b"octets", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256())
    data = bytes([len(identifier)]) + identifier + signature
    auth.verify(rsa_key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets")


def test_verify_unsupported_method(rsa_key):
    with pytest.raises(AuthError, match="not supported"):
        auth.verify(rsa_key.public_key(), AuthMethod.DSS_DIGITAL_SIGNATURE, b"x", b"octets")


# ---------------------------------------------------------------------------------------------
# Certificate paths


def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    subject,
    public_key,
    issuer_name,
    issuer_key,
    *,
    ca=None,
    path_length=None,
    key_usage=None,
    not_before=NOW - timedelta(days=30),
    not_after=NOW + timedelta(days=365),
    san=None,
    extra=(),
):
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if key_usage is not None:
        usage = {name: False for name in (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")}
        usage.update({name: True for name in key_usage})
        builder = builder.add_extension(x509.KeyUsage(**usage), critical=True)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """root CA -> intermediate CA -> end entity, all with P-256 keys."""

    def __init__(self, intermediate_options=None, root_options=None, end_entity_options=None):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.end_entity_key = ec.generate_private_key(ec.SECP256R1())
        root_options = {"ca": True, "key_usage": ["key_cert_sign", "crl_sign"], **(root_options or {})}
        self.root = make_cert(name("Root CA"), self.root_key.public_key(), name("Root CA"), self.root_key, **root_options)
        intermediate_options = {"ca": True, "path_length": 0, "key_usage": ["key_cert_sign"], **(intermediate_options or {})}
        self.intermediate = make_cert(
            name("Intermediate CA"), self.intermediate_key.public_key(), name("Root CA"), self.root_key, **intermediate_options
        )
        end_entity_options = {"ca": False, "key_usage": ["digital_signature"], **(end_entity_options or {})}
        self.end_entity = make_cert(
            name("gw.example"), self.end_entity_key.public_key(), name("Intermediate CA"), self.intermediate_key, **end_entity_options
        )

    def validate(self, now=NOW):
        auth.validate_chain(self.end_entity, [self.intermediate], [self.root], now)


def test_chain_valid():
    Pki().validate()


def test_chain_end_entity_issued_by_root():
    pki = Pki()
    direct = make_cert(name("gw.example"), pki.end_entity_key.public_key(), name("Root CA"), pki.root_key)
    auth.validate_chain(direct, [], [pki.root], NOW)


def test_chain_trusted_intermediate_is_enough():
    pki = Pki()
    auth.validate_chain(pki.end_entity, [], [pki.intermediate], NOW)


def test_chain_pinned_end_entity():
    pki = Pki()
    auth.validate_chain(pki.end_entity, [], [pki.end_entity], NOW)


def test_chain_naive_now_counts_as_utc():
    Pki().validate(now=NOW.replace(tzinfo=None))


def test_chain_missing_intermediate():
    pki = Pki()
    with pytest.raises(AuthError, match="not trusted: no issuer 'CN=Intermediate CA' found"):
        auth.validate_chain(pki.end_entity, [], [pki.root], NOW)


def test_chain_untrusted_root():
    pki, other = Pki(), Pki()
    with pytest.raises(AuthError, match="not trusted"):
        auth.validate_chain(pki.end_entity, [pki.intermediate], [other.root], NOW)


def test_chain_bad_signature():
    pki = Pki()
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = make_cert(name("gw.example"), pki.end_entity_key.public_key(), name("Intermediate CA"), forger)
    with pytest.raises(AuthError, match="signature of 'CN=gw.example' by 'CN=Intermediate CA' is invalid"):
        auth.validate_chain(forged, [pki.intermediate], [pki.root], NOW)


def test_chain_expired_end_entity():
    pki = Pki(end_entity_options={"not_after": NOW - timedelta(days=1)})
    with pytest.raises(AuthError, match="'CN=gw.example' expired"):
        pki.validate()


def test_chain_not_yet_valid_intermediate():
    pki = Pki(intermediate_options={"not_before": NOW + timedelta(days=1)})
    with pytest.raises(AuthError, match="'CN=Intermediate CA' is not valid before"):
        pki.validate()


def test_chain_expired_root():
    pki = Pki(root_options={"not_after": NOW - timedelta(seconds=1)})
    with pytest.raises(AuthError, match="'CN=Root CA' expired"):
        pki.validate()


def test_chain_intermediate_not_ca():
    pki = Pki(intermediate_options={"ca": False, "path_length": None, "key_usage": ["digital_signature"]})
    with pytest.raises(AuthError, match="not a CA"):
        pki.validate()


def test_chain_intermediate_without_basic_constraints():
    pki = Pki(intermediate_options={"ca": None})
    with pytest.raises(AuthError, match="no basicConstraints"):
        pki.validate()


def test_chain_root_without_basic_constraints_is_accepted():
    # A trust anchor may be a version 1 style certificate without extensions.
    Pki(root_options={"ca": None, "key_usage": None}).validate()


def test_chain_issuer_without_key_cert_sign():
    pki = Pki(intermediate_options={"key_usage": ["digital_signature", "crl_sign"]})
    with pytest.raises(AuthError, match="keyCertSign"):
        pki.validate()


def test_chain_path_length_exceeded():
    # Root allows no intermediate CA below it, but the path has one.
    pki = Pki(root_options={"path_length": 0})
    with pytest.raises(AuthError, match="allows 0 intermediate CAs below it, the path has 1"):
        pki.validate()


def test_chain_path_length_respected():
    Pki(root_options={"path_length": 1}).validate()


def test_chain_two_intermediates_over_path_length():
    pki = Pki(intermediate_options={"path_length": 0})
    lower_key = ec.generate_private_key(ec.SECP256R1())
    lower = make_cert(
        name("Lower CA"), lower_key.public_key(), name("Intermediate CA"), pki.intermediate_key,
        ca=True, key_usage=["key_cert_sign"],
    )
    leaf = make_cert(name("leaf"), pki.end_entity_key.public_key(), name("Lower CA"), lower_key)
    with pytest.raises(AuthError, match="'CN=Intermediate CA' allows 0"):
        auth.validate_chain(leaf, [lower, pki.intermediate], [pki.root], NOW)


def test_chain_end_entity_key_usage_without_signature():
    pki = Pki(end_entity_options={"key_usage": ["key_encipherment"]})
    with pytest.raises(AuthError, match="digital signatures"):
        pki.validate()


def test_chain_unknown_critical_extension():
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    pki = Pki(end_entity_options={"extra": [(unknown, True)]})
    with pytest.raises(AuthError, match="unsupported critical extension 1.3.6.1.4.1.55555.1"):
        pki.validate()
    Pki(end_entity_options={"extra": [(unknown, False)]}).validate()


def test_chain_prefers_working_candidate():
    # Two intermediates share a name; only the second one signed the end entity.
    pki = Pki()
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    impostor = make_cert(
        name("Intermediate CA"), impostor_key.public_key(), name("Root CA"), pki.root_key,
        ca=True, key_usage=["key_cert_sign"],
    )
    auth.validate_chain(pki.end_entity, [impostor, pki.intermediate], [pki.root], NOW)


def test_chain_loop_terminates():
    # Two CAs that certify each other, neither trusted.
    key_a, key_b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a = make_cert(name("A"), key_a.public_key(), name("B"), key_b, ca=True)
    b = make_cert(name("B"), key_b.public_key(), name("A"), key_a, ca=True)
    leaf = make_cert(name("leaf"), ec.generate_private_key(ec.SECP256R1()).public_key(), name("A"), key_a)
    root = Pki().root
    with pytest.raises(AuthError, match="not trusted"):
        auth.validate_chain(leaf, [a, b], [root], NOW)


# ---------------------------------------------------------------------------------------------
# Identities


@pytest.fixture(scope="module")
def identity_cert():
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Org"),
            x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.org"),
        ]
    )
    alt = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alternate gateway")])
    san = [
        x509.DNSName("gw.example.org"),
        x509.DNSName("vpn.example.org"),
        x509.RFC822Name("admin@Example.org"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::10")),
        x509.DirectoryName(alt),
    ]
    return make_cert(subject, key.public_key(), subject, key, san=san)


@pytest.mark.parametrize(
    "id_type, id_data, expected",
    [
        (IdType.ID_FQDN, b"gw.example.org", True),
        (IdType.ID_FQDN, b"VPN.Example.org", True),
        (IdType.ID_FQDN, b"vpn.example.org.", True),
        (IdType.ID_FQDN, b"other.example.org", False),
        (IdType.ID_FQDN, b"\xff\xfe", False),
        (IdType.ID_RFC822_ADDR, b"admin@example.ORG", True),
        (IdType.ID_RFC822_ADDR, b"Admin@example.org", False),
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 10]), True),
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 11]), False),
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2]), False),
        (IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::10").packed, True),
        (IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::11").packed, False),
        (IdType.ID_KEY_ID, b"gw.example.org", False),
        (IdType.ID_DER_ASN1_GN, b"\x82\x0egw.example.org", False),
    ],
)
def test_identity_san(identity_cert, id_type, id_data, expected):
    assert auth.identity_matches(identity_cert, id_type, id_data) is expected


def dn_der(*attributes, string_tag=0x0C):
    """Encode a Name with one attribute per RDN, values with the given string tag."""
    oids = {"C": bytes.fromhex("550406"), "O": bytes.fromhex("55040a"), "CN": bytes.fromhex("550403")}

    def tlv(tag, value):
        return bytes([tag, len(value)]) + value

    rdns = b""
    for key, value in attributes:
        tag = 0x13 if key == "C" else string_tag
        rdns += tlv(0x31, tlv(0x30, tlv(0x06, oids[key]) + tlv(tag, value.encode())))
    return tlv(0x30, rdns)


def test_identity_dn_exact_der(identity_cert):
    assert auth.identity_matches(identity_cert, IdType.ID_DER_ASN1_DN, identity_cert.subject.public_bytes())


def test_identity_dn_other_string_type_and_case(identity_cert):
    der = dn_der(("C", "CH"), ("O", "example  ORG"), ("CN", "GW.example.org"), string_tag=0x13)
    assert der != identity_cert.subject.public_bytes()
    assert auth.identity_matches(identity_cert, IdType.ID_DER_ASN1_DN, der)


def test_identity_dn_order_matters(identity_cert):
    der = dn_der(("CN", "gw.example.org"), ("O", "Example Org"), ("C", "CH"))
    assert not auth.identity_matches(identity_cert, IdType.ID_DER_ASN1_DN, der)


def test_identity_dn_directory_name_san(identity_cert):
    assert auth.identity_matches(identity_cert, IdType.ID_DER_ASN1_DN, dn_der(("CN", "Alternate Gateway")))


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x05\x31\x03\x30\x01\x00", b"\x04\x00"])
def test_identity_dn_malformed(identity_cert, der):
    assert not auth.identity_matches(identity_cert, IdType.ID_DER_ASN1_DN, der)


def test_identity_without_san():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(name("plain"), key.public_key(), name("plain"), key)
    assert not auth.identity_matches(cert, IdType.ID_FQDN, b"plain")
    assert auth.identity_matches(cert, IdType.ID_DER_ASN1_DN, name("plain").public_bytes())


# ---------------------------------------------------------------------------------------------
# Untrusted input never raises anything but AuthError (verify) or returns a bool (identities)

FUZZ_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
PSS_PREFIX = bytes.fromhex(ALGORITHM_IDENTIFIERS["RSASSA-PSS with SHA-256"])


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=120), st.binary(max_size=80).map(lambda tail: bytes([len(PSS_PREFIX)]) + PSS_PREFIX[:-3] + tail)))
def test_verify_fuzz_only_auth_error(data):
    with pytest.raises(AuthError):
        auth.verify(FUZZ_KEY, AuthMethod.DIGITAL_SIGNATURE, data, b"octets")


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_identity_dn_fuzz_returns_bool(identity_cert, data):
    assert auth.identity_matches(identity_cert, IdType.ID_DER_ASN1_DN, data) in (True, False)
