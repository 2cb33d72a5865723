"""IKEv2 cryptographic transforms and key derivation, on the `cryptography` package.

The module covers PRFs and prf+ (RFC 7296 §2.13, RFC 4868) and integrity checksums (RFC 4868,
RFC 2404). It has the SK payload ciphers AES-CBC (RFC 3602), AES-GCM (RFC 5282) and
ChaCha20-Poly1305 (RFC 7634), and the Diffie-Hellman groups of RFC 3526, RFC 5903 and RFC 8031.
The key derivations follow RFC 7296 §2.14, §2.17 and §2.18.

The module is sans-I/O: randomness comes in as a `random(n) -> bytes` callable, so key generation
is deterministic under test. Objects returned by the `*_by_id` functions are immutable and shared,
so callers may keep them for the lifetime of an SA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.ike.compat import raw_public_bytes
from agent.ike.constants import DhId, EncrId, IntegId, PrfId

logger = logging.getLogger(__name__)

Random = Callable[[int], bytes]


class CryptoError(Exception):
    """Base class of the errors raised by this module."""


class IntegrityError(CryptoError):
    """An ICV or MAC did not match: the message is forged or damaged."""


class InvalidPublicValue(CryptoError):
    """Peer KE data is not a valid public value of the negotiated group."""


# ---------------------------------------------------------------------------------------------
# PRF and prf+


class Prf:
    """An HMAC-based PRF (RFC 7296 §3.3.2, RFC 4868).

    `key_size` is the preferred key length in bytes, which RFC 7296 §2.14 uses for SK_d, SK_pi
    and SK_pr. For HMAC it equals the output length.
    """

    __slots__ = ("id", "key_size", "output_size", "_hash")

    def __init__(self, prf_id: PrfId, hash_algorithm: hashes.HashAlgorithm) -> None:
        self.id = prf_id
        self._hash = hash_algorithm
        self.output_size = hash_algorithm.digest_size
        self.key_size = self.output_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        mac = crypto_hmac.HMAC(key, self._hash)
        mac.update(data)
        return mac.finalize()

    def keyed(self, key: bytes) -> crypto_hmac.HMAC:
        """Return an HMAC context holding `key`; copy() it for each message that uses the key."""
        return crypto_hmac.HMAC(key, self._hash)

    def __repr__(self) -> str:
        return f"Prf({self.id.name})"


_PRF_HASHES = {
    PrfId.PRF_HMAC_SHA1: hashes.SHA1,
    PrfId.PRF_HMAC_SHA2_256: hashes.SHA256,
    PrfId.PRF_HMAC_SHA2_384: hashes.SHA384,
    PrfId.PRF_HMAC_SHA2_512: hashes.SHA512,
}


@lru_cache(maxsize=None)
def prf_by_id(prf_id: PrfId) -> Prf:
    """Return the shared Prf object for a PRF transform ID; raise CryptoError if unsupported."""
    hash_class = _PRF_HASHES.get(prf_id)
    if hash_class is None:
        raise CryptoError(f"unsupported PRF transform ID {int(prf_id)}; supported: {_names(_PRF_HASHES)}")
    return Prf(PrfId(prf_id), hash_class())


PRF_PLUS_MAX_BLOCKS = 255  # the counter is one octet (RFC 7296 §2.13)


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """Compute the first `length` bytes of prf+(K, S) = T1 | T2 | ... (RFC 7296 §2.13).

    T1 = prf(K, S | 0x01) and Tn = prf(K, Tn-1 | S | n). Raises CryptoError when more than 255
    blocks would be needed, because the counter is a single octet.
    """
    if length < 0:
        raise ValueError(f"prf+ length must not be negative, got {length}")
    blocks = -(-length // prf.output_size)
    if blocks > PRF_PLUS_MAX_BLOCKS:
        raise CryptoError(
            f"prf+ cannot produce {length} bytes with {prf.id.name}: "
            f"the maximum is {PRF_PLUS_MAX_BLOCKS * prf.output_size}"
        )

    # Copying a keyed HMAC context costs a third of setting up the key again for every block.
    keyed = prf.keyed(key)
    output = bytearray()
    block = b""
    for counter in range(1, blocks + 1):
        mac = keyed.copy()
        mac.update(block + seed + bytes((counter,)))
        block = mac.finalize()
        output += block
    return bytes(output[:length])


# ---------------------------------------------------------------------------------------------
# Integrity (non-AEAD only)


class Integrity:
    """A truncated HMAC integrity transform (RFC 4868, RFC 2404)."""

    __slots__ = ("id", "key_size", "icv_size", "_hash")

    def __init__(self, integ_id: IntegId, hash_algorithm: hashes.HashAlgorithm, icv_size: int) -> None:
        self.id = integ_id
        self._hash = hash_algorithm
        self.key_size = hash_algorithm.digest_size
        self.icv_size = icv_size

    def compute(self, key: bytes, data: bytes) -> bytes:
        """Return the ICV of `data`, already truncated to `icv_size`."""
        mac = crypto_hmac.HMAC(key, self._hash)
        mac.update(data)
        return mac.finalize()[: self.icv_size]

    def verify(self, key: bytes, data: bytes, icv: bytes) -> None:
        """Raise IntegrityError unless `icv` is the ICV of `data`; the comparison is constant time."""
        if not constant_time.bytes_eq(self.compute(key, data), icv):
            raise IntegrityError(f"{self.id.name} checksum mismatch")

    def __repr__(self) -> str:
        return f"Integrity({self.id.name})"


# (hash, truncated ICV length in bytes). The key length is the hash output length (RFC 4868).
_INTEGRITY_TABLE = {
    IntegId.AUTH_HMAC_SHA1_96: (hashes.SHA1, 12),
    IntegId.AUTH_HMAC_SHA2_256_128: (hashes.SHA256, 16),
    IntegId.AUTH_HMAC_SHA2_384_192: (hashes.SHA384, 24),
    IntegId.AUTH_HMAC_SHA2_512_256: (hashes.SHA512, 32),
}


@lru_cache(maxsize=None)
def integrity_by_id(integ_id: IntegId) -> Integrity:
    """Return the shared Integrity object for an INTEG transform ID; raise CryptoError if unsupported."""
    entry = _INTEGRITY_TABLE.get(integ_id)
    if entry is None:
        raise CryptoError(
            f"unsupported integrity transform ID {int(integ_id)}; supported: {_names(_INTEGRITY_TABLE)}"
        )
    hash_class, icv_size = entry
    return Integrity(IntegId(integ_id), hash_class(), icv_size)


# ---------------------------------------------------------------------------------------------
# Encryption for the SK payload


class Encryption:
    """A cipher for the Encrypted payload (RFC 7296 §3.14).

    `key_size` is the number of bytes taken from prf+ for SK_ei/SK_er. For the AEAD ciphers it
    includes the 4-byte salt at the end, which forms the nonce together with the 8-byte explicit
    IV (RFC 5282, RFC 7634). `block_size` is the alignment the caller pads the plaintext to: 16
    for CBC, and 1 for the AEAD ciphers, which need no padding.
    """

    __slots__ = ("id", "key_bits", "is_aead", "key_size", "iv_size", "block_size", "icv_size")

    id: EncrId
    key_bits: int
    is_aead: bool
    key_size: int
    iv_size: int
    block_size: int
    icv_size: int

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt the SK payload content.

        AEAD ciphers return ciphertext | ICV and authenticate `aad`, which is the IKE header up
        to the end of the generic SK payload header (RFC 5282 §5.1). CBC ignores `aad` and needs
        the plaintext already padded to `block_size`.
        """
        raise NotImplementedError

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Decrypt the SK payload content; AEAD ciphers raise IntegrityError on an ICV mismatch."""
        raise NotImplementedError

    def _check_key_iv(self, key: bytes, iv: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"{self!r} needs a {self.key_size}-byte key, got {len(key)} bytes")
        if len(iv) != self.iv_size:
            raise ValueError(f"{self!r} needs a {self.iv_size}-byte IV, got {len(iv)} bytes")

    def __repr__(self) -> str:
        return f"Encryption({self.id.name}, {self.key_bits} bits)"


class AesCbc(Encryption):
    """ENCR_AES_CBC (RFC 3602). The caller pads the plaintext and adds an Integrity checksum."""

    __slots__ = ()

    def __init__(self, key_bits: int) -> None:
        self.id = EncrId.ENCR_AES_CBC
        self.key_bits = key_bits
        self.is_aead = False
        self.key_size = key_bits // 8
        self.iv_size = 16
        self.block_size = 16
        self.icv_size = 0

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        self._check_key_iv(key, iv)
        if len(plaintext) % 16:
            raise ValueError(f"AES-CBC plaintext must be padded to 16 bytes, got {len(plaintext)} bytes")
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return encryptor.update(plaintext) + encryptor.finalize()

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        self._check_key_iv(key, iv)
        if not ciphertext or len(ciphertext) % 16:
            # The ICV already matched, so the peer built this message wrongly.
            raise CryptoError(f"AES-CBC ciphertext length {len(ciphertext)} is not a positive multiple of 16")
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


class _Aead(Encryption):
    """An AEAD cipher with a 4-byte salt from the keying material and an 8-byte explicit IV."""

    __slots__ = ("_aead_class",)

    SALT_SIZE = 4

    def __init__(self, encr_id: EncrId, key_bits: int, aead_class: type) -> None:
        self.id = encr_id
        self.key_bits = key_bits
        self.is_aead = True
        self.key_size = key_bits // 8 + self.SALT_SIZE
        self.iv_size = 8
        self.block_size = 1
        self.icv_size = 16
        self._aead_class = aead_class

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        self._check_key_iv(key, iv)
        cipher_key, salt = key[: -self.SALT_SIZE], key[-self.SALT_SIZE :]
        return self._aead_class(cipher_key).encrypt(salt + iv, plaintext, aad)

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        self._check_key_iv(key, iv)
        if len(ciphertext) < self.icv_size:
            raise IntegrityError(f"{self.id.name} ciphertext of {len(ciphertext)} bytes is shorter than the ICV")
        cipher_key, salt = key[: -self.SALT_SIZE], key[-self.SALT_SIZE :]
        try:
            return self._aead_class(cipher_key).decrypt(salt + iv, ciphertext, aad)
        except InvalidTag:
            raise IntegrityError(f"{self.id.name} ICV mismatch") from None


_AES_KEY_BITS = (128, 192, 256)


@lru_cache(maxsize=None)
def encryption_by_id(encr_id: EncrId, key_bits: int | None) -> Encryption:
    """Return the shared Encryption object for an ENCR transform ID and Key Length attribute.

    AES needs the Key Length attribute (RFC 7296 §3.3.5). ChaCha20-Poly1305 has a fixed key, so
    it accepts no Key Length other than 256 (RFC 7634). Raises CryptoError for anything unsupported.
    """
    if encr_id in (EncrId.ENCR_AES_CBC, EncrId.ENCR_AES_GCM_16):
        if key_bits not in _AES_KEY_BITS:
            raise CryptoError(
                f"{EncrId(encr_id).name} needs a key length of 128, 192 or 256 bits, got {key_bits}"
            )
        if encr_id == EncrId.ENCR_AES_CBC:
            return AesCbc(key_bits)
        return _Aead(EncrId.ENCR_AES_GCM_16, key_bits, AESGCM)

    if encr_id == EncrId.ENCR_CHACHA20_POLY1305:
        if key_bits not in (None, 256):
            raise CryptoError(f"ENCR_CHACHA20_POLY1305 has a fixed 256-bit key, got a key length of {key_bits}")
        return _Aead(EncrId.ENCR_CHACHA20_POLY1305, 256, ChaCha20Poly1305)

    raise CryptoError(
        f"unsupported encryption transform ID {int(encr_id)}; supported: "
        "ENCR_AES_CBC, ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305"
    )


# ---------------------------------------------------------------------------------------------
# Diffie-Hellman groups


class DhGroup:
    """A key exchange method (RFC 7296 §3.3.2 transform type 4). `public_size` is the KE data length."""

    id: DhId
    public_size: int

    def generate(self, random: Random) -> DhPrivate:
        """Create a private key from `random`; the same random bytes give the same key."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"DhGroup({self.id.name})"


class DhPrivate:
    """Our half of one Diffie-Hellman exchange."""

    group: DhGroup

    def public_bytes(self) -> bytes:
        """Return the KE payload data (RFC 7296 §3.4, RFC 5903 §7, RFC 8031)."""
        raise NotImplementedError

    def shared_secret(self, peer_public: bytes) -> bytes:
        """Return g^ir for the peer's KE data; raise InvalidPublicValue if that data is invalid."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"DhPrivate({self.group.id.name})"


class _ModpGroup(DhGroup):
    """A MODP group with a safe prime p and generator 2 (RFC 3526)."""

    def __init__(self, dh_id: DhId, prime: int, exponent_bits: int, check_subgroup: bool) -> None:
        self.id = dh_id
        self.prime = prime
        self.public_size = (prime.bit_length() + 7) // 8
        self.exponent_bits = exponent_bits
        self.check_subgroup = check_subgroup

        self.subgroup_order = (prime - 1) // 2
        self.parameter_numbers = dh.DHParameterNumbers(prime, 2)
        self.generator_key = dh.DHPublicNumbers(2, self.parameter_numbers).public_key()

    def generate(self, random: Random) -> DhPrivate:
        # The exponent is random(n) read as a big-endian integer, at least 2 and below
        # 2^exponent_bits, which is far below q.
        exponent_bytes = random(self.exponent_bits // 8)
        exponent = max(int.from_bytes(exponent_bytes, "big"), 2)
        return _ModpPrivate(self, exponent)


class _ModpPrivate(DhPrivate):
    __slots__ = ("group", "_key", "_public")

    def __init__(self, group: _ModpGroup, exponent: int) -> None:
        self.group = group

        # `cryptography` cannot derive y from a chosen x, and pow(2, x, p) in Python is roughly six
        # times slower than OpenSSL. So a key with a placeholder y computes g^x through exchange(),
        # which uses only x. The real key is then built from the result.
        placeholder = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(2, group.parameter_numbers))
        public = placeholder.private_key().exchange(group.generator_key)
        public_value = int.from_bytes(public, "big")
        numbers = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(public_value, group.parameter_numbers))
        self._key = numbers.private_key()
        self._public = public.rjust(group.public_size, b"\x00")

    def public_bytes(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        group: _ModpGroup = self.group
        if len(peer_public) != group.public_size:
            raise InvalidPublicValue(
                f"{group.id.name} KE data must be {group.public_size} bytes, got {len(peer_public)}"
            )
        value = int.from_bytes(peer_public, "big")
        if not 1 < value < group.prime - 1:
            # RFC 6989: 0, 1 and p-1 (and anything >= p) would confine the shared secret.
            raise InvalidPublicValue(f"{group.id.name} public value is outside 1 < y < p-1")
        if group.check_subgroup and pow(value, group.subgroup_order, group.prime) != 1:
            # RFC 6989: y^q = 1 mod p proves that y lies in the subgroup of prime order q.
            raise InvalidPublicValue(f"{group.id.name} public value is not in the subgroup of order q")

        try:
            peer_key = dh.DHPublicNumbers(value, group.parameter_numbers).public_key()
            secret = self._key.exchange(peer_key)
        except ValueError as error:
            raise InvalidPublicValue(f"{group.id.name} public value rejected: {error}") from None
        # RFC 7296 §2.14: g^ir is padded with zeros to the length of the modulus.
        return secret.rjust(group.public_size, b"\x00")


class _EcpGroup(DhGroup):
    """A NIST prime curve group; KE data is x | y, each padded to the field size (RFC 5903 §7)."""

    def __init__(self, dh_id: DhId, curve: ec.EllipticCurve, order: int) -> None:
        self.id = dh_id
        self.curve = curve
        self.order = order
        self.coordinate_size = (curve.key_size + 7) // 8
        self.public_size = 2 * self.coordinate_size

    def generate(self, random: Random) -> DhPrivate:
        # Eight extra random bytes keep the bias of the reduction into [1, n-1] below 2^-64.
        raw = random(self.coordinate_size + 8)
        scalar = int.from_bytes(raw, "big") % (self.order - 1) + 1
        return _EcpPrivate(self, ec.derive_private_key(scalar, self.curve))


class _EcpPrivate(DhPrivate):
    __slots__ = ("group", "_key", "_public")

    def __init__(self, group: _EcpGroup, key: ec.EllipticCurvePrivateKey) -> None:
        self.group = group
        self._key = key
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self._public = point[1:]  # drop the 0x04 "uncompressed" octet: RFC 5903 §7 sends x | y only

    def public_bytes(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        group: _EcpGroup = self.group
        if len(peer_public) != group.public_size:
            raise InvalidPublicValue(
                f"{group.id.name} KE data must be {group.public_size} bytes, got {len(peer_public)}"
            )
        try:
            # OpenSSL rejects coordinates >= p and points that are not on the curve.
            peer_key = ec.EllipticCurvePublicKey.from_encoded_point(group.curve, b"\x04" + peer_public)
            secret = self._key.exchange(ec.ECDH(), peer_key)
        except ValueError as error:
            raise InvalidPublicValue(f"{group.id.name} public value rejected: {error}") from None
        # RFC 5903 §7: the shared secret is the x coordinate alone.
        return secret


class _MontgomeryGroup(DhGroup):
    """Curve25519 or Curve448 (RFC 8031): KE data is the raw u-coordinate (RFC 7748 §5)."""

    def __init__(self, dh_id: DhId, private_class: type, public_class: type, size: int) -> None:
        self.id = dh_id
        self.public_size = size
        self.private_class = private_class
        self.public_class = public_class

    def generate(self, random: Random) -> DhPrivate:
        # OpenSSL clamps the scalar as RFC 7748 §5 requires.
        return _MontgomeryPrivate(self, self.private_class.from_private_bytes(random(self.public_size)))


class _MontgomeryPrivate(DhPrivate):
    __slots__ = ("group", "_key", "_public")

    def __init__(self, group: _MontgomeryGroup, key) -> None:
        self.group = group
        self._key = key
        self._public = raw_public_bytes(key.public_key())

    def public_bytes(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        group: _MontgomeryGroup = self.group
        if len(peer_public) != group.public_size:
            raise InvalidPublicValue(
                f"{group.id.name} KE data must be {group.public_size} bytes, got {len(peer_public)}"
            )
        try:
            secret = self._key.exchange(group.public_class.from_public_bytes(peer_public))
        except ValueError as error:
            # OpenSSL refuses an all-zero result, which a low-order peer point produces.
            raise InvalidPublicValue(f"{group.id.name} public value rejected: {error}") from None
        # RFC 8031 requires the all-zero check, so it stays here in case a backend skips it.
        if not any(secret):
            raise InvalidPublicValue(f"{group.id.name} shared secret is all zeros")
        return secret


# RFC 3526 §3: p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 )
MODP_2048_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)

# RFC 3526 §4: p = 2^3072 - 2^3008 - 1 + 2^64 * ( [2^2942 pi] + 1690314 )
MODP_3072_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)

# Private exponent lengths: the upper estimates of RFC 3526 §8 (320 bits for 2048, 420 for 3072),
# rounded up to whole bytes.
_MODP_EXPONENT_BITS = {DhId.MODP_2048: 320, DhId.MODP_3072: 424}

# Orders n of P-256, P-384 and P-521, needed to map random bytes into [1, n-1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P384_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
)
_P521_ORDER = int(
    "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D0"
    "3BB5C9B8899C47AEBB6FB71E91386409",
    16,
)


@lru_cache(maxsize=None)
def dh_group_by_id(dh_id: DhId, *, check_subgroup: bool = False) -> DhGroup:
    """Return the shared DhGroup object for a key exchange method ID; raise CryptoError if unsupported.

    `check_subgroup` adds the y^q = 1 mod p test for the MODP groups. It is optional because for
    safe primes the 1 < y < p-1 range check suffices (RFC 6989), and it costs a full-size modular
    exponentiation in Python.
    """
    if dh_id == DhId.MODP_2048:
        return _ModpGroup(DhId.MODP_2048, MODP_2048_PRIME, _MODP_EXPONENT_BITS[dh_id], check_subgroup)
    if dh_id == DhId.MODP_3072:
        return _ModpGroup(DhId.MODP_3072, MODP_3072_PRIME, _MODP_EXPONENT_BITS[dh_id], check_subgroup)
    if dh_id == DhId.ECP_256:
        return _EcpGroup(DhId.ECP_256, ec.SECP256R1(), _P256_ORDER)
    if dh_id == DhId.ECP_384:
        return _EcpGroup(DhId.ECP_384, ec.SECP384R1(), _P384_ORDER)
    if dh_id == DhId.ECP_521:
        return _EcpGroup(DhId.ECP_521, ec.SECP521R1(), _P521_ORDER)
    if dh_id == DhId.CURVE25519:
        return _MontgomeryGroup(DhId.CURVE25519, x25519.X25519PrivateKey, x25519.X25519PublicKey, 32)
    if dh_id == DhId.CURVE448:
        return _MontgomeryGroup(DhId.CURVE448, x448.X448PrivateKey, x448.X448PublicKey, 56)
    raise CryptoError(
        f"unsupported key exchange method {int(dh_id)}; supported: "
        "MODP_2048, MODP_3072, ECP_256, ECP_384, ECP_521, CURVE25519, CURVE448"
    )


# ---------------------------------------------------------------------------------------------
# Key derivation


def _secret_field():
    # Keys stay out of repr() so that logging an object never prints one.
    return field(repr=False)


@dataclass(frozen=True)
class IkeKeys:
    """The seven IKE SA keys of RFC 7296 §2.14 (repr shows no key material)."""

    sk_d: bytes = _secret_field()
    sk_ai: bytes = _secret_field()
    sk_ar: bytes = _secret_field()
    sk_ei: bytes = _secret_field()
    sk_er: bytes = _secret_field()
    sk_pi: bytes = _secret_field()
    sk_pr: bytes = _secret_field()


@dataclass(frozen=True)
class ChildKeys:
    """CHILD_SA keys (RFC 7296 §2.17); "i" keys protect traffic from initiator to responder."""

    encr_i: bytes = _secret_field()
    integ_i: bytes = _secret_field()
    encr_r: bytes = _secret_field()
    integ_r: bytes = _secret_field()


def _check_spis(spi_i: bytes, spi_r: bytes) -> None:
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError(f"IKE SPIs must be 8 bytes each, got {len(spi_i)} and {len(spi_r)}")


def _split_ike_keys(
    prf: Prf, encr: Encryption, integ: Integrity | None, skeyseed: bytes, seed: bytes
) -> IkeKeys:
    # RFC 7296 §2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, seed)
    integ_size = integ.key_size if integ is not None else 0
    sizes = (prf.key_size, integ_size, integ_size, encr.key_size, encr.key_size, prf.key_size, prf.key_size)
    keymat = prf_plus(prf, skeyseed, seed, sum(sizes))

    parts = []
    offset = 0
    for size in sizes:
        parts.append(keymat[offset : offset + size])
        offset += size
    return IkeKeys(*parts)


def derive_ike_keys(
    prf: Prf,
    encr: Encryption,
    integ: Integrity | None,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """Derive the keys of a new IKE SA (RFC 7296 §2.14).

    SKEYSEED = prf(Ni | Nr, g^ir), keys = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr). `integ` is None
    for AEAD ciphers, which makes SK_ai and SK_ar empty.
    """
    _check_spis(spi_i, spi_r)
    # NOTE: the whole of Ni | Nr is the key, which is right for the HMAC PRFs supported here;
    # PRFs with a fixed key size (AES-XCBC, AES-CMAC) would need the §2.14 special case.
    skeyseed = prf(ni + nr, shared_secret)
    return _split_ike_keys(prf, encr, integ, skeyseed, ni + nr + spi_i + spi_r)


def derive_ike_rekey_keys(
    old_prf: Prf,
    old_sk_d: bytes,
    prf: Prf,
    encr: Encryption,
    integ: Integrity | None,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """Derive the keys of an IKE SA created by rekeying (RFC 7296 §2.18).

    SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old SA's PRF; the seven keys then come
    from the new SA's algorithms, nonces and SPIs as in §2.14.
    """
    _check_spis(spi_i, spi_r)
    skeyseed = old_prf(old_sk_d, shared_secret + ni + nr)
    return _split_ike_keys(prf, encr, integ, skeyseed, ni + nr + spi_i + spi_r)


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes | None,
    encr_key_size: int,
    integ_key_size: int,
) -> ChildKeys:
    """Derive CHILD_SA keys (RFC 7296 §2.17).

    KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) when the CREATE_CHILD_SA
    exchange carried KE payloads (PFS). The keys are taken in the order encryption key and
    integrity key for initiator-to-responder traffic, then the same for the other direction.
    `encr_key_size` includes the salt for AEAD ciphers; `integ_key_size` is 0 for AEAD.
    """
    seed = ni + nr if shared_secret is None else shared_secret + ni + nr
    size = encr_key_size + integ_key_size
    keymat = prf_plus(prf, sk_d, seed, 2 * size)
    return ChildKeys(
        encr_i=keymat[:encr_key_size],
        integ_i=keymat[encr_key_size:size],
        encr_r=keymat[size : size + encr_key_size],
        integ_r=keymat[size + encr_key_size :],
    )


def _names(table) -> str:
    return ", ".join(member.name for member in table)
