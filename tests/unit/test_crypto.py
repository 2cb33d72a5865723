"""Tests for agent.ike.crypto against published vectors (files in tests/unit/vectors, each citing
its source) and an independent prf+ written here on the standard library's hmac module."""

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import dh, ec
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ike import crypto
from agent.ike.constants import DhId, EncrId, IntegId, PrfId

VECTORS = Path(__file__).parent / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text())


def unhex(text):
    return bytes.fromhex(text.replace(" ", ""))


def fixed_random(data):
    """A random(n) stand-in that hands out `data` and fails if asked for another length."""

    def random(n):
        assert n == len(data), f"random({n}) called, the test prepared {len(data)} bytes"
        return data

    return random


def counting_random(seed=0):
    """A deterministic random(n): SHA-256 in counter mode over `seed`."""
    state = {"counter": 0}

    def random(n):
        out = b""
        while len(out) < n:
            state["counter"] += 1
            out += hashlib.sha256(f"{seed}:{state['counter']}".encode()).digest()
        return out[:n]

    return random


HASHLIB_NAMES = {
    PrfId.PRF_HMAC_SHA1: "sha1",
    PrfId.PRF_HMAC_SHA2_256: "sha256",
    PrfId.PRF_HMAC_SHA2_384: "sha384",
    PrfId.PRF_HMAC_SHA2_512: "sha512",
}


def reference_prf_plus(prf_id, key, seed, length):
    """prf+ of RFC 7296 §2.13 written out directly on hmac.digest, for cross-checks."""
    name = HASHLIB_NAMES[prf_id]
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.digest(key, block + seed + bytes([counter]), name)
        output += block
        counter += 1
    return output[:length]


# ---------------------------------------------------------------------------------------------
# PRF and integrity: RFC 4868 / RFC 4231 / RFC 2202


@pytest.mark.parametrize("vector", load("rfc4868_hmac.json")["prf"], ids=lambda v: f"{v['name']} {v['prf_id']}")
def test_prf_rfc4868_vector(vector):
    prf = crypto.prf_by_id(PrfId[vector["prf_id"]])
    assert prf(unhex(vector["key"]), unhex(vector["data"])) == unhex(vector["output"])


@pytest.mark.parametrize("vector", load("rfc4868_hmac.json")["auth"], ids=lambda v: v["name"])
def test_integrity_rfc4868_vector(vector):
    integ = crypto.integrity_by_id(IntegId[vector["integ_id"]])
    key, data, icv = unhex(vector["key"]), unhex(vector["data"]), unhex(vector["icv"])
    assert integ.key_size == len(key)
    assert integ.icv_size == len(icv)
    assert integ.compute(key, data) == icv
    integ.verify(key, data, icv)


@pytest.mark.parametrize("vector", [v for v in load("rfc4868_hmac.json")["auth"] if "prf" in v], ids=lambda v: v["name"])
def test_prf_rfc4868_auth_full_output(vector):
    # RFC 4868 §2.7.2 also lists the untruncated output, which is the PRF of the same hash.
    prf_id = {
        "AUTH_HMAC_SHA2_256_128": PrfId.PRF_HMAC_SHA2_256,
        "AUTH_HMAC_SHA2_384_192": PrfId.PRF_HMAC_SHA2_384,
        "AUTH_HMAC_SHA2_512_256": PrfId.PRF_HMAC_SHA2_512,
        "AUTH_HMAC_SHA1_96": PrfId.PRF_HMAC_SHA1,
    }[vector["integ_id"]]
    assert crypto.prf_by_id(prf_id)(unhex(vector["key"]), unhex(vector["data"])) == unhex(vector["prf"])


def test_integrity_verify_rejects_changed_icv():
    integ = crypto.integrity_by_id(IntegId.AUTH_HMAC_SHA2_256_128)
    key = bytes(32)
    icv = bytearray(integ.compute(key, b"message"))
    icv[-1] ^= 1
    with pytest.raises(crypto.IntegrityError):
        integ.verify(key, b"message", bytes(icv))


def test_integrity_verify_rejects_short_icv():
    integ = crypto.integrity_by_id(IntegId.AUTH_HMAC_SHA2_384_192)
    key = bytes(48)
    with pytest.raises(crypto.IntegrityError):
        integ.verify(key, b"message", integ.compute(key, b"message")[:-1])


def test_by_id_rejects_unknown_ids():
    with pytest.raises(crypto.CryptoError, match="PRF_HMAC_SHA2_256"):
        crypto.prf_by_id(4)  # PRF_AES128_XCBC, not supported
    with pytest.raises(crypto.CryptoError, match="supported"):
        crypto.integrity_by_id(IntegId.NONE)
    with pytest.raises(crypto.CryptoError, match="ENCR_AES_GCM_16"):
        crypto.encryption_by_id(EncrId.ENCR_AES_GCM_8, 128)
    with pytest.raises(crypto.CryptoError, match="CURVE25519"):
        crypto.dh_group_by_id(DhId.NONE)


# ---------------------------------------------------------------------------------------------
# prf+


@settings(max_examples=60)
@given(
    prf_id=st.sampled_from(list(HASHLIB_NAMES)),
    key=st.binary(max_size=80),
    seed=st.binary(max_size=80),
    length=st.integers(min_value=0, max_value=700),
)
def test_prf_plus_matches_reference(prf_id, key, seed, length):
    prf = crypto.prf_by_id(prf_id)
    output = crypto.prf_plus(prf, key, seed, length)
    assert len(output) == length
    assert output == reference_prf_plus(prf_id, key, seed, length)


@settings(max_examples=40)
@given(prf_id=st.sampled_from(list(HASHLIB_NAMES)), short=st.integers(0, 300), extra=st.integers(0, 300))
def test_prf_plus_shorter_is_prefix(prf_id, short, extra):
    prf = crypto.prf_by_id(prf_id)
    longer = crypto.prf_plus(prf, b"key", b"seed", short + extra)
    assert crypto.prf_plus(prf, b"key", b"seed", short) == longer[:short]


def test_prf_plus_limit_255_blocks():
    prf = crypto.prf_by_id(PrfId.PRF_HMAC_SHA2_256)
    assert len(crypto.prf_plus(prf, b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(crypto.CryptoError, match="maximum"):
        crypto.prf_plus(prf, b"k", b"s", 255 * 32 + 1)


# ---------------------------------------------------------------------------------------------
# IKEv2 key derivation: NIST CAVP IKEv2 KDF samples


def kdf_vectors():
    return load("ikev2_kdf.json")["vectors"]


@pytest.mark.parametrize("vector", kdf_vectors(), ids=lambda v: v["prf"])
def test_derive_ike_keys_cavp_vector(vector):
    prf = crypto.prf_by_id(PrfId[vector["prf"]])
    ni, nr = unhex(vector["ni"]), unhex(vector["nr"])
    dkm = unhex(vector["dkm"])

    # SKEYSEED = prf(Ni | Nr, g^ir)
    assert prf(ni + nr, unhex(vector["gir"])) == unhex(vector["skeyseed"])

    # The seven keys are consecutive slices of prf+; choose algorithms whose key sizes cover
    # the 132 bytes of the vector's DKM and compare the prefix.
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_CBC, 256)
    integ = crypto.integrity_by_id(IntegId.AUTH_HMAC_SHA2_512_256)
    keys = crypto.derive_ike_keys(
        prf, encr, integ, ni, nr, unhex(vector["gir"]), unhex(vector["spi_i"]), unhex(vector["spi_r"])
    )
    joined = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr
    assert len(joined) >= len(dkm)
    assert joined[: len(dkm)] == dkm
    assert keys.sk_d == dkm[: prf.output_size]


@pytest.mark.parametrize("vector", kdf_vectors(), ids=lambda v: v["prf"])
def test_derive_ike_rekey_keys_cavp_vector(vector):
    prf = crypto.prf_by_id(PrfId[vector["prf"]])
    ni, nr = unhex(vector["ni"]), unhex(vector["nr"])
    sk_d = unhex(vector["dkm"])[: prf.output_size]
    gir_new = unhex(vector["gir_new"])
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_GCM_16, 256)
    spi_i, spi_r = b"\x11" * 8, b"\x22" * 8

    keys = crypto.derive_ike_rekey_keys(prf, sk_d, prf, encr, None, ni, nr, gir_new, spi_i, spi_r)

    # RFC 7296 §2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), then §2.14 as usual.
    skeyseed = unhex(vector["skeyseed_rekey"])
    assert prf(sk_d, gir_new + ni + nr) == skeyseed
    expected = reference_prf_plus(prf.id, skeyseed, ni + nr + spi_i + spi_r, 3 * prf.output_size + 2 * 36)
    assert keys.sk_d == expected[: prf.output_size]
    assert keys.sk_ei == expected[prf.output_size : prf.output_size + 36]
    assert keys.sk_pr == expected[-prf.output_size :]


def test_derive_child_keys_cavp_sha1_vector():
    vector = kdf_vectors()[0]
    prf = crypto.prf_by_id(PrfId.PRF_HMAC_SHA1)
    ni, nr = unhex(vector["ni"]), unhex(vector["nr"])
    sk_d = unhex(vector["dkm"])[:20]

    # 2 * (16 + 50) = 132 bytes, the length of the vector's child DKM.
    no_pfs = crypto.derive_child_keys(prf, sk_d, ni, nr, None, 16, 50)
    assert no_pfs.encr_i + no_pfs.integ_i + no_pfs.encr_r + no_pfs.integ_r == unhex(vector["dkm_child"])

    pfs = crypto.derive_child_keys(prf, sk_d, ni, nr, unhex(vector["gir_new"]), 16, 50)
    assert pfs.encr_i + pfs.integ_i + pfs.encr_r + pfs.integ_r == unhex(vector["dkm_child_dh"])


ALGORITHM_SETS = [
    (PrfId.PRF_HMAC_SHA2_256, EncrId.ENCR_AES_GCM_16, 128, None),
    (PrfId.PRF_HMAC_SHA2_384, EncrId.ENCR_AES_GCM_16, 256, None),
    (PrfId.PRF_HMAC_SHA2_256, EncrId.ENCR_CHACHA20_POLY1305, None, None),
    (PrfId.PRF_HMAC_SHA2_256, EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128),
    (PrfId.PRF_HMAC_SHA2_512, EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_512_256),
    (PrfId.PRF_HMAC_SHA1, EncrId.ENCR_AES_CBC, 192, IntegId.AUTH_HMAC_SHA1_96),
]


@pytest.mark.parametrize("prf_id, encr_id, key_bits, integ_id", ALGORITHM_SETS)
def test_derive_ike_keys_matches_reference(prf_id, encr_id, key_bits, integ_id):
    prf = crypto.prf_by_id(prf_id)
    encr = crypto.encryption_by_id(encr_id, key_bits)
    integ = crypto.integrity_by_id(integ_id) if integ_id else None
    ni, nr, gir = b"\x01" * 32, b"\x02" * 32, b"\x03" * 256
    spi_i, spi_r = bytes.fromhex("0011223344556677"), bytes.fromhex("8899aabbccddeeff")

    keys = crypto.derive_ike_keys(prf, encr, integ, ni, nr, gir, spi_i, spi_r)

    skeyseed = hmac.digest(ni + nr, gir, HASHLIB_NAMES[prf_id])
    a = integ.key_size if integ else 0
    e = encr.key_size
    p = prf.output_size
    stream = reference_prf_plus(prf_id, skeyseed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    expected = []
    for size in (p, a, a, e, e, p, p):
        expected.append(stream[:size])
        stream = stream[size:]
    assert [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr] == expected


def test_derive_child_keys_order_and_sizes():
    prf = crypto.prf_by_id(PrfId.PRF_HMAC_SHA2_256)
    sk_d = b"\x42" * 32
    keys = crypto.derive_child_keys(prf, sk_d, b"ni" * 8, b"nr" * 8, None, 16, 32)
    stream = reference_prf_plus(PrfId.PRF_HMAC_SHA2_256, sk_d, b"ni" * 8 + b"nr" * 8, 96)
    assert keys.encr_i == stream[:16]
    assert keys.integ_i == stream[16:48]
    assert keys.encr_r == stream[48:64]
    assert keys.integ_r == stream[64:96]


def test_derive_ike_keys_rejects_short_spi():
    prf = crypto.prf_by_id(PrfId.PRF_HMAC_SHA2_256)
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_GCM_16, 128)
    with pytest.raises(ValueError, match="8 bytes"):
        crypto.derive_ike_keys(prf, encr, None, b"n" * 16, b"n" * 16, b"s", b"\x00" * 4, b"\x00" * 8)


def test_key_repr_hides_keys():
    keys = crypto.IkeKeys(*(bytes([i]) * 16 for i in range(7)))
    child = crypto.ChildKeys(b"\xaa" * 4, b"\xbb" * 4, b"\xcc" * 4, b"\xdd" * 4)
    assert "\\x" not in repr(keys)
    assert "sk_d" not in repr(keys)
    assert "\\xaa" not in repr(child)


# ---------------------------------------------------------------------------------------------
# Encryption: AEAD and AES-CBC


def aead_key(vector):
    return unhex(vector["key"]) + unhex(vector["salt"])


@pytest.mark.parametrize("vector", load("aead.json")["vectors"], ids=lambda v: v["name"])
def test_aead_vector_encrypt(vector):
    encr = crypto.encryption_by_id(EncrId[vector["encr_id"]], vector["key_bits"])
    ciphertext = encr.encrypt(aead_key(vector), unhex(vector["iv"]), unhex(vector["plaintext"]), unhex(vector["aad"]))
    assert ciphertext == unhex(vector["ciphertext"]) + unhex(vector["tag"])


@pytest.mark.parametrize("vector", load("aead.json")["vectors"], ids=lambda v: v["name"])
def test_aead_vector_decrypt(vector):
    encr = crypto.encryption_by_id(EncrId[vector["encr_id"]], vector["key_bits"])
    sealed = unhex(vector["ciphertext"]) + unhex(vector["tag"])
    plaintext = encr.decrypt(aead_key(vector), unhex(vector["iv"]), sealed, unhex(vector["aad"]))
    assert plaintext == unhex(vector["plaintext"])


@pytest.mark.parametrize("vector", load("aead.json")["vectors"], ids=lambda v: v["name"])
def test_aead_vector_tampered_rejected(vector):
    encr = crypto.encryption_by_id(EncrId[vector["encr_id"]], vector["key_bits"])
    sealed = bytearray(unhex(vector["ciphertext"]) + unhex(vector["tag"]))
    sealed[0] ^= 0x80
    with pytest.raises(crypto.IntegrityError):
        encr.decrypt(aead_key(vector), unhex(vector["iv"]), bytes(sealed), unhex(vector["aad"]))
    with pytest.raises(crypto.IntegrityError):
        encr.decrypt(aead_key(vector), unhex(vector["iv"]), unhex(vector["ciphertext"]) + unhex(vector["tag"]), b"other")


def test_rfc7634_appendix_b_framing():
    # The AAD of RFC 7634 Appendix B is the IKE header (28 bytes) and the SK payload header
    # (4 bytes). The length fields in them must agree with the 8-byte IV and 16-byte ICV.
    vector = next(v for v in load("aead.json")["vectors"] if v["name"] == "RFC 7634 Appendix B")
    encr = crypto.encryption_by_id(EncrId.ENCR_CHACHA20_POLY1305, None)
    aad = unhex(vector["aad"])
    sk_length = int.from_bytes(aad[30:32], "big")
    message_length = int.from_bytes(aad[24:28], "big")
    assert encr.key_size == 36
    assert sk_length == 4 + encr.iv_size + len(unhex(vector["ciphertext"])) + encr.icv_size
    assert message_length == 28 + sk_length


@pytest.mark.parametrize("vector", load("aes_cbc.json")["vectors"], ids=lambda v: v["name"])
def test_aes_cbc_vector(vector):
    key = unhex(vector["key"])
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_CBC, 8 * len(key))
    ciphertext = encr.encrypt(key, unhex(vector["iv"]), unhex(vector["plaintext"]), b"")
    assert ciphertext == unhex(vector["ciphertext"])
    assert encr.decrypt(key, unhex(vector["iv"]), ciphertext, b"") == unhex(vector["plaintext"])


def test_aes_cbc_rejects_unpadded_input():
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_CBC, 128)
    with pytest.raises(ValueError, match="padded"):
        encr.encrypt(bytes(16), bytes(16), b"x" * 15, b"")
    with pytest.raises(crypto.CryptoError, match="multiple of 16"):
        encr.decrypt(bytes(16), bytes(16), b"x" * 17, b"")


@pytest.mark.parametrize(
    "encr_id, key_bits, key_size, iv_size, block_size, icv_size",
    [
        (EncrId.ENCR_AES_GCM_16, 128, 20, 8, 1, 16),
        (EncrId.ENCR_AES_GCM_16, 256, 36, 8, 1, 16),
        (EncrId.ENCR_CHACHA20_POLY1305, None, 36, 8, 1, 16),
        (EncrId.ENCR_AES_CBC, 128, 16, 16, 16, 0),
        (EncrId.ENCR_AES_CBC, 256, 32, 16, 16, 0),
    ],
)
def test_encryption_sizes(encr_id, key_bits, key_size, iv_size, block_size, icv_size):
    encr = crypto.encryption_by_id(encr_id, key_bits)
    assert (encr.key_size, encr.iv_size, encr.block_size, encr.icv_size) == (key_size, iv_size, block_size, icv_size)


def test_encryption_key_length_checks():
    with pytest.raises(crypto.CryptoError, match="key length"):
        crypto.encryption_by_id(EncrId.ENCR_AES_CBC, None)
    with pytest.raises(crypto.CryptoError, match="key length"):
        crypto.encryption_by_id(EncrId.ENCR_AES_GCM_16, 512)
    with pytest.raises(crypto.CryptoError, match="256-bit"):
        crypto.encryption_by_id(EncrId.ENCR_CHACHA20_POLY1305, 128)
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_GCM_16, 128)
    with pytest.raises(ValueError, match="20-byte key"):
        encr.encrypt(bytes(16), bytes(8), b"", b"")


CIPHERS = [
    (EncrId.ENCR_AES_GCM_16, 128),
    (EncrId.ENCR_AES_GCM_16, 256),
    (EncrId.ENCR_CHACHA20_POLY1305, None),
    (EncrId.ENCR_AES_CBC, 128),
    (EncrId.ENCR_AES_CBC, 256),
]


@settings(max_examples=80)
@given(cipher=st.sampled_from(CIPHERS), data=st.data())
def test_encryption_round_trip(cipher, data):
    encr = crypto.encryption_by_id(*cipher)
    key = data.draw(st.binary(min_size=encr.key_size, max_size=encr.key_size))
    iv = data.draw(st.binary(min_size=encr.iv_size, max_size=encr.iv_size))
    blocks = data.draw(st.integers(0, 20))
    plaintext = data.draw(st.binary(min_size=blocks * encr.block_size, max_size=blocks * encr.block_size))
    if not encr.is_aead and not plaintext:
        plaintext = bytes(16)
    aad = data.draw(st.binary(max_size=64))

    sealed = encr.encrypt(key, iv, plaintext, aad)
    assert len(sealed) == len(plaintext) + encr.icv_size
    assert encr.decrypt(key, iv, sealed, aad) == plaintext


# ---------------------------------------------------------------------------------------------
# Diffie-Hellman


@pytest.mark.parametrize("vector", load("rfc5903_ecp.json")["vectors"], ids=lambda v: v["group"])
def test_ecp_rfc5903_vector(vector):
    group = crypto.dh_group_by_id(DhId[vector["group"]])
    size = group.coordinate_size + 8

    # generate() maps random bytes b to int(b) mod (n-1) + 1, so i-1 yields the RFC's key i.
    i = int.from_bytes(unhex(vector["i"]), "big")
    r = int.from_bytes(unhex(vector["r"]), "big")
    initiator = group.generate(fixed_random((i - 1).to_bytes(size, "big")))
    responder = group.generate(fixed_random((r - 1).to_bytes(size, "big")))

    # RFC 5903 §7: the KE data is gix | giy, the shared secret girx.
    assert initiator.public_bytes() == unhex(vector["gix"]) + unhex(vector["giy"])
    assert responder.public_bytes() == unhex(vector["grx"]) + unhex(vector["gry"])
    assert initiator.shared_secret(responder.public_bytes()) == unhex(vector["girx"])
    assert responder.shared_secret(initiator.public_bytes()) == unhex(vector["girx"])


@pytest.mark.parametrize("group_id", [DhId.ECP_256, DhId.ECP_384, DhId.ECP_521])
def test_ecp_rejects_invalid_points(group_id):
    group = crypto.dh_group_by_id(group_id)
    private = group.generate(counting_random(1))
    peer = bytearray(group.generate(counting_random(2)).public_bytes())

    off_curve = bytearray(peer)
    off_curve[-1] ^= 1
    with pytest.raises(crypto.InvalidPublicValue):
        private.shared_secret(bytes(off_curve))
    with pytest.raises(crypto.InvalidPublicValue):
        private.shared_secret(b"\xff" * group.public_size)  # coordinates >= p
    with pytest.raises(crypto.InvalidPublicValue, match="bytes"):
        private.shared_secret(b"\x04" + bytes(peer))  # SEC 1 form, one byte too long
    with pytest.raises(crypto.InvalidPublicValue):
        private.shared_secret(bytes(group.public_size))


def test_ecp_order_constants():
    # OpenSSL accepts scalars up to n-1 and rejects n, which pins the orders used by generate().
    for group_id in (DhId.ECP_256, DhId.ECP_384, DhId.ECP_521):
        group = crypto.dh_group_by_id(group_id)
        ec.derive_private_key(group.order - 1, group.curve)
        with pytest.raises(ValueError):
            ec.derive_private_key(group.order, group.curve)


@pytest.mark.parametrize("vector", load("rfc7748_x25519_x448.json")["functions"], ids=lambda v: v["group"])
def test_montgomery_rfc7748_function_vector(vector):
    group = crypto.dh_group_by_id(DhId[vector["group"]])
    private = group.generate(fixed_random(unhex(vector["scalar"])))
    assert private.shared_secret(unhex(vector["u"])) == unhex(vector["output"])


@pytest.mark.parametrize("vector", load("rfc7748_x25519_x448.json")["diffie_hellman"], ids=lambda v: v["group"])
def test_montgomery_rfc7748_dh_vector(vector):
    group = crypto.dh_group_by_id(DhId[vector["group"]])
    alice = group.generate(fixed_random(unhex(vector["alice_private"])))
    bob = group.generate(fixed_random(unhex(vector["bob_private"])))
    assert alice.public_bytes() == unhex(vector["alice_public"])
    assert bob.public_bytes() == unhex(vector["bob_public"])
    assert alice.shared_secret(bob.public_bytes()) == unhex(vector["shared"])
    assert bob.shared_secret(alice.public_bytes()) == unhex(vector["shared"])


@pytest.mark.parametrize("group_id", [DhId.CURVE25519, DhId.CURVE448])
def test_montgomery_rejects_low_order_points(group_id):
    # u = 0 and u = 1 are points of small order: the shared secret would be all zeros
    # (RFC 8031 §2.3 requires rejecting it).
    group = crypto.dh_group_by_id(group_id)
    private = group.generate(counting_random(3))
    for u in (0, 1):
        with pytest.raises(crypto.InvalidPublicValue):
            private.shared_secret(u.to_bytes(group.public_size, "little"))
    with pytest.raises(crypto.InvalidPublicValue, match="bytes"):
        private.shared_secret(bytes(group.public_size - 1))


@pytest.mark.parametrize("group_id", list(DhId)[1:])
def test_dh_agreement_deterministic(group_id):
    group = crypto.dh_group_by_id(group_id)
    a = group.generate(counting_random(10))
    b = group.generate(counting_random(20))
    assert len(a.public_bytes()) == group.public_size
    assert a.shared_secret(b.public_bytes()) == b.shared_secret(a.public_bytes())
    # The same random bytes give the same key.
    assert group.generate(counting_random(10)).public_bytes() == a.public_bytes()


@pytest.mark.parametrize("group_id", [DhId.MODP_2048, DhId.MODP_3072])
def test_modp_public_value_is_g_to_the_x(group_id):
    group = crypto.dh_group_by_id(group_id)
    exponent_bytes = counting_random(5)(group.exponent_bits // 8)
    private = group.generate(fixed_random(exponent_bytes))
    x = int.from_bytes(exponent_bytes, "big")
    assert private.public_bytes() == pow(2, x, group.prime).to_bytes(group.public_size, "big")


@pytest.mark.parametrize("group_id", [DhId.MODP_2048, DhId.MODP_3072])
def test_modp_rejects_invalid_values(group_id):
    group = crypto.dh_group_by_id(group_id)
    private = group.generate(counting_random(7))
    p = group.prime
    for value in (0, 1, p - 1, p, 2**(8 * group.public_size) - 1):
        with pytest.raises(crypto.InvalidPublicValue, match="1 < y < p-1"):
            private.shared_secret(value.to_bytes(group.public_size, "big"))
    with pytest.raises(crypto.InvalidPublicValue, match="bytes"):
        private.shared_secret(b"\x02")


def backend_accepts_modp_peer(prime, peer_value):
    """Return whether `cryptography` itself computes a shared secret with this peer value."""
    parameters = dh.DHParameterNumbers(prime, 2)
    exponent = 2**200 + 1
    key = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(pow(2, exponent, prime), parameters)).private_key()
    try:
        key.exchange(dh.DHPublicNumbers(peer_value, parameters).public_key())
    except ValueError:
        return False
    return True


def test_modp_subgroup_check_option():
    # -2 = p-2 has order 2q (2 is a square mod p, -1 is not), so it passes the range check and
    # fails only the y^q = 1 test.
    plain = crypto.dh_group_by_id(DhId.MODP_2048)
    checked = crypto.dh_group_by_id(DhId.MODP_2048, check_subgroup=True)
    value = (plain.prime - 2).to_bytes(256, "big")
    if backend_accepts_modp_peer(plain.prime, plain.prime - 2):
        assert len(plain.generate(counting_random(8)).shared_secret(value)) == 256
    else:
        # OpenSSL 3.0.7, bundled with cryptography 38.0.4, rejects p-2 itself, so even the plain
        # group fails, with the backend's error in place of the subgroup message.
        with pytest.raises(crypto.InvalidPublicValue, match="public value rejected"):
            plain.generate(counting_random(8)).shared_secret(value)
    with pytest.raises(crypto.InvalidPublicValue, match="subgroup of order q"):
        checked.generate(counting_random(8)).shared_secret(value)
    peer = checked.generate(counting_random(9)).public_bytes()
    assert len(checked.generate(counting_random(8)).shared_secret(peer)) == 256


# RFC 3526 sanity: the primes follow their published formula, are safe primes, and 2
# generates the subgroup of order q.


def floor_pi_times_power_of_two(bits):
    """floor(pi * 2^bits) by Machin's formula pi = 16 atan(1/5) - 4 atan(1/239) in fixed point."""
    guard = 64
    scale = 1 << (bits + guard)

    def arctan_inverse(x):
        total, term, n, sign = 0, scale // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n += 2
            sign = -sign
        return total

    return (16 * arctan_inverse(5) - 4 * arctan_inverse(239)) >> guard


def is_probable_prime(n, bases=(2, 3, 5, 7, 11, 13, 17, 19, 23, 29)):
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize(
    "prime, bits, pi_bits, offset",
    [
        (crypto.MODP_2048_PRIME, 2048, 1918, 124476),  # RFC 3526 §3
        (crypto.MODP_3072_PRIME, 3072, 2942, 1690314),  # RFC 3526 §4
    ],
)
def test_rfc3526_prime_formula(prime, bits, pi_bits, offset):
    formula = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (floor_pi_times_power_of_two(pi_bits) + offset)
    assert prime == formula
    assert prime.bit_length() == bits


@pytest.mark.parametrize("prime", [crypto.MODP_2048_PRIME, crypto.MODP_3072_PRIME])
def test_rfc3526_safe_prime(prime):
    q = (prime - 1) // 2
    assert is_probable_prime(prime, bases=(2, 3, 5))
    assert is_probable_prime(q, bases=(2, 3, 5))
    assert pow(2, q, prime) == 1
