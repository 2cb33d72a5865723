"""IKEv2 messages: the header, the payload chain and the SK/SKF payloads.

Wire layout (RFC 7296 §3.1-§3.2): a 28-octet header, then a chain of payloads, each with a
4-octet generic header whose Next Payload field names the type of the following payload. The
Encrypted payload SK (RFC 7296 §3.14) is always the last payload; its Next Payload field names
the first payload inside it. AEAD ciphers follow RFC 5282 §5: the associated data is the message
from the IKE header up to the end of the generic SK header. The Encrypted Fragment payload SKF
(RFC 7383 §2.5) carries one fragment, encrypted on its own. Its associated data also covers the
Fragment Number and Total Fragments fields.

`Message.decode` checks the header and the payload chain and leaves SK or SKF content encrypted;
`Message.decrypt` (or `decrypt_fragment` and `FragmentReassembly`) verifies and opens it. Every
failure raises a `ProtocolError`: `IntegrityCheckFailed` for a bad ICV, `InvalidSyntax` or
`UnsupportedCriticalPayload` for a malformed message.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager
from typing import Callable, Iterable

from .constants import IKE_VERSION, ExchangeType, HeaderFlag, PayloadType
from .crypto import Encryption, Integrity, IntegrityError
from .errors import IntegrityCheckFailed, InvalidMajorVersion, InvalidSyntax, ProtocolError, UnsupportedCriticalPayload
from .payloads import PAYLOAD_CLASSES, EncryptedFragment, Payload, UnknownPayload

HEADER = struct.Struct("!8s8sBBBBII")  # SPIi, SPIr, next payload, version, exchange, flags, message ID, length
HEADER_SIZE = HEADER.size
GENERIC_HEADER = struct.Struct("!BBH")  # next payload, critical bit + reserved, payload length
SKF_FIELDS = struct.Struct("!HH")  # fragment number, total fragments
CRITICAL = 0x80

MAX_FRAGMENTS = 128  # more fragments than any IKE message with a certificate chain needs
MAX_REASSEMBLED_SIZE = 65535  # an IKE message length must fit the UDP length field anyway


class Message:
    """One IKE message. After `decrypt`, `payloads` are the payloads inside SK and `protected`
    is True. Between `decode` and `decrypt`, `encrypted` locates the still encrypted SK or SKF
    payload."""

    __slots__ = ("spi_i", "spi_r", "exchange_type", "flags", "message_id", "payloads", "protected", "encrypted", "raw")

    def __init__(
        self,
        spi_i: bytes,
        spi_r: bytes,
        exchange_type: int,
        flags: int,
        message_id: int,
        payloads: list[Payload],
        protected: bool = False,
    ):
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.exchange_type = exchange_type
        self.flags = flags
        self.message_id = message_id
        self.payloads = payloads
        self.protected = protected
        self.encrypted: _EncryptedContent | None = None
        self.raw = b""  # the datagram it was decoded from (IKE_AUTH signs the IKE_SA_INIT messages)

    # --- header flags ---

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def from_original_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    # --- payload access ---

    def get(self, payload_type: int) -> Payload | None:
        """Return the first payload of a type, or None."""
        for payload in self.payloads:
            if payload.payload_type == payload_type:
                return payload
        return None

    def get_all(self, payload_type: int) -> list:
        return [p for p in self.payloads if p.payload_type == payload_type]

    def notify(self, notify_type: int) -> Notify | None:
        """Return the first notify of a type, or None."""
        for payload in self.payloads:
            if payload.payload_type == PayloadType.N and payload.notify_type == notify_type:
                return payload
        return None

    def notifies(self) -> list[Notify]:
        return [p for p in self.payloads if p.payload_type == PayloadType.N]

    def summary(self) -> str:
        kind = "response" if self.is_response else "request"
        try:
            name = ExchangeType(self.exchange_type).name
        except ValueError:
            name = str(self.exchange_type)
        inner = ", ".join(p.summary() for p in self.payloads)
        if self.protected:
            inner = "SK{" + inner + "}"
        return f"{name} {kind} {self.message_id} [{inner}]"

    # --- encoding ---

    def encode(self, cipher: "SkCipher | None" = None) -> bytes:
        """Encode the message; with a cipher, all payloads go into one SK payload."""
        first, chain = encode_chain(self.payloads)
        if cipher is None:
            return self._header(first, HEADER_SIZE + len(chain)) + chain
        return cipher.seal(self._header, first, chain)

    def encode_fragments(self, cipher: "SkCipher", fragment_size: int) -> list[bytes]:
        """Encode the message as SKF fragments of at most `fragment_size` octets each (RFC 7383 §2.5)."""
        first, chain = encode_chain(self.payloads)
        chunk = cipher.fragment_capacity(fragment_size)
        if chunk < 1:
            raise ValueError(f"fragment size {fragment_size} leaves no room for data")
        pieces = [chain[i : i + chunk] for i in range(0, len(chain), chunk)] or [b""]
        if len(pieces) > MAX_FRAGMENTS:
            raise ValueError(f"message of {len(chain)} octets needs more than {MAX_FRAGMENTS} fragments")
        total = len(pieces)
        return [
            cipher.seal_fragment(self._header, first if number == 1 else 0, number, total, piece)
            for number, piece in enumerate(pieces, start=1)
        ]

    def _header(self, first_payload: int, length: int) -> bytes:
        return HEADER.pack(
            self.spi_i, self.spi_r, first_payload, IKE_VERSION, self.exchange_type, self.flags, self.message_id, length
        )

    # --- decoding ---

    @classmethod
    def decode(cls, data: bytes) -> "Message":
        """Decode the header and the payload chain; SK or SKF content stays encrypted."""
        spi_i, spi_r, first, version, exchange_type, flags, message_id, length = decode_header(data)
        payloads, encrypted = decode_chain(first, data, HEADER_SIZE, len(data), outer=True)
        message = cls(spi_i, spi_r, exchange_type, flags, message_id, payloads)
        message.encrypted = encrypted
        message.raw = data
        return message

    def decrypt(self, data: bytes, cipher: "SkCipher") -> None:
        """Verify and decrypt the SK payload of a message decoded from `data`."""
        content = self.encrypted
        if content is None or content.fragment is not None:
            raise InvalidSyntax("message has no SK payload")
        if self.payloads:
            # RFC 7296 §3.14 allows payloads before SK, but no protected exchange uses them.
            raise InvalidSyntax("payloads outside the SK payload")
        chain = cipher.open(data, content.offset)
        with authenticated_errors():
            self.payloads, _ = decode_chain(content.first_payload, chain, 0, len(chain), outer=False)
        self.protected = True
        self.encrypted = None


class _EncryptedContent:
    """Location of an SK or SKF payload in the datagram, with its Next Payload field."""

    __slots__ = ("offset", "first_payload", "fragment")

    def __init__(self, offset: int, first_payload: int, fragment: EncryptedFragment | None):
        self.offset = offset
        self.first_payload = first_payload
        self.fragment = fragment


def decode_header(data: bytes) -> tuple:
    """Check and unpack the IKE header, or raise InvalidSyntax or InvalidMajorVersion."""
    if len(data) < HEADER_SIZE:
        raise InvalidSyntax(f"message of {len(data)} octets is shorter than the IKE header")
    fields = HEADER.unpack_from(data, 0)
    version, length = fields[3], fields[7]
    if version >> 4 != IKE_VERSION >> 4:
        # RFC 7296 §3.10.1: the response header carries the version this side supports.
        raise InvalidMajorVersion(f"major version {version >> 4}")
    if length != len(data):
        raise InvalidSyntax(f"header length {length} differs from the datagram length {len(data)}")
    return fields


def peek_header(data: bytes) -> tuple | None:
    """Unpack the header fields without checking them, or None if the datagram is too short."""
    if len(data) < HEADER_SIZE:
        return None
    return HEADER.unpack_from(data, 0)


def decode_chain(first: int, data: bytes, offset: int, end: int, *, outer: bool):
    """Decode the payload chain between `offset` and `end`.

    Return (payloads, encrypted content or None). SK and SKF are accepted only in the outer chain
    and must be the last payload there. An unknown payload is skipped unless its critical bit is
    set (RFC 7296 §3.2), which raises UNSUPPORTED_CRITICAL_PAYLOAD with the payload type as data.
    """
    payloads: list[Payload] = []
    next_type = first
    while next_type != PayloadType.NONE:
        if offset + GENERIC_HEADER.size > end:
            raise InvalidSyntax(f"payload {next_type} truncated at offset {offset}")
        following, flags, length = GENERIC_HEADER.unpack_from(data, offset)
        if length < GENERIC_HEADER.size or offset + length > end:
            raise InvalidSyntax(f"payload {next_type} length {length} invalid at offset {offset}")

        if next_type == PayloadType.SK or next_type == PayloadType.SKF:
            if not outer:
                raise InvalidSyntax("SK or SKF payload inside an SK payload")
            if offset + length != end:
                raise InvalidSyntax("SK or SKF payload is not the last payload")
            fragment = None
            if next_type == PayloadType.SKF:
                body = data[offset + GENERIC_HEADER.size : end]
                fragment = EncryptedFragment.decode_fields(following, body)
            return payloads, _EncryptedContent(offset, following, fragment)

        body = data[offset + GENERIC_HEADER.size : offset + length]
        payload_class = PAYLOAD_CLASSES.get(next_type)
        if payload_class is not None:
            payloads.append(payload_class.decode_body(next_type, body))
        elif flags & CRITICAL:
            raise UnsupportedCriticalPayload(f"unsupported critical payload {next_type}", bytes((next_type,)))
        else:
            payloads.append(UnknownPayload(next_type, False, body))
        offset += length
        next_type = following

    if offset != end:
        raise InvalidSyntax(f"{end - offset} octets after the last payload")
    return payloads, None


def encode_chain(payloads: Iterable[Payload]) -> tuple[int, bytes]:
    """Encode payloads into a chain and return (type of the first payload, octets)."""
    payloads = list(payloads)
    parts = []
    for index, payload in enumerate(payloads):
        following = payloads[index + 1].payload_type if index + 1 < len(payloads) else PayloadType.NONE
        body = payload.encode_body()
        parts.append(GENERIC_HEADER.pack(following, 0, GENERIC_HEADER.size + len(body)))
        parts.append(body)
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    return first, b"".join(parts)


class SkCipher:
    """Protection of SK and SKF payloads for one IKE SA, in both directions.

    `encr` and `integ` come from crypto.py (`integ` is None for AEAD). The `_out` keys protect
    what this side sends: SK_ei/SK_ai for the original initiator, SK_er/SK_ar for the responder.
    """

    __slots__ = ("encr", "integ", "key_e_out", "key_a_out", "key_e_in", "key_a_in", "random")

    def __init__(
        self,
        encr: Encryption,
        integ: Integrity | None,
        key_e_out: bytes,
        key_a_out: bytes,
        key_e_in: bytes,
        key_a_in: bytes,
        random: Callable[[int], bytes],
    ):
        self.encr = encr
        self.integ = integ
        self.key_e_out = key_e_out
        self.key_a_out = key_a_out
        self.key_e_in = key_e_in
        self.key_a_in = key_a_in
        self.random = random

    @property
    def icv_size(self) -> int:
        return self.encr.icv_size if self.encr.is_aead else self.integ.icv_size

    def _pad(self, chain: bytes) -> bytes:
        # RFC 7296 §3.14: padding up to the cipher's block size, then the Pad Length octet.
        block = self.encr.block_size
        pad = (-(len(chain) + 1)) % block if block > 1 else 0
        return chain + bytes(pad) + bytes((pad,))

    def _protect(self, prefix: bytes, plaintext: bytes, iv: bytes) -> bytes:
        """Encrypt and integrity-protect; `prefix` is the header up to the end of the SK(F) fields."""
        if self.encr.is_aead:
            return prefix + iv + self.encr.encrypt(self.key_e_out, iv, plaintext, prefix)
        body = prefix + iv + self.encr.encrypt(self.key_e_out, iv, plaintext, b"")
        return body + self.integ.compute(self.key_a_out, body)

    def _sealed_length(self, plaintext: bytes) -> int:
        return self.encr.iv_size + len(plaintext) + self.icv_size

    def seal(self, header: Callable[[int, int], bytes], first: int, chain: bytes) -> bytes:
        """Return the whole message: header, then an SK payload protecting `chain`."""
        plaintext = self._pad(chain)
        sk_length = GENERIC_HEADER.size + self._sealed_length(plaintext)
        prefix = header(PayloadType.SK, HEADER_SIZE + sk_length) + GENERIC_HEADER.pack(first, 0, sk_length)
        return self._protect(prefix, plaintext, self.random(self.encr.iv_size))

    def seal_fragment(self, header: Callable[[int, int], bytes], first: int, number: int, total: int, piece: bytes) -> bytes:
        """Return one fragment message: header, then an SKF payload protecting `piece`."""
        plaintext = self._pad(piece)
        skf_length = GENERIC_HEADER.size + SKF_FIELDS.size + self._sealed_length(plaintext)
        prefix = (
            header(PayloadType.SKF, HEADER_SIZE + skf_length)
            + GENERIC_HEADER.pack(first, 0, skf_length)
            + SKF_FIELDS.pack(number, total)
        )
        return self._protect(prefix, plaintext, self.random(self.encr.iv_size))

    def fragment_capacity(self, fragment_size: int) -> int:
        """Return how many chain octets fit in one fragment message of `fragment_size` octets."""
        room = fragment_size - HEADER_SIZE - GENERIC_HEADER.size - SKF_FIELDS.size - self.encr.iv_size - self.icv_size
        block = self.encr.block_size
        if block > 1:
            room -= room % block
        return room - 1  # the Pad Length octet

    def open(self, data: bytes, offset: int, fields: int = 0) -> bytes:
        """Verify and decrypt the SK (fields=0) or SKF (fields=4) payload at `offset`.

        Return the decrypted payload chain without padding.
        """
        start = offset + GENERIC_HEADER.size + fields
        iv_size = self.encr.iv_size
        icv_size = self.icv_size
        if len(data) - start < iv_size + icv_size + 1:
            raise InvalidSyntax("encrypted payload shorter than IV, ICV and pad length")
        iv = data[start : start + iv_size]

        try:
            if self.encr.is_aead:
                plaintext = self.encr.decrypt(self.key_e_in, iv, data[start + iv_size :], data[:start])
            else:
                self.integ.verify(self.key_a_in, data[:-icv_size], data[-icv_size:])
                ciphertext = data[start + iv_size : -icv_size]
                if len(ciphertext) % self.encr.block_size:
                    raise InvalidSyntax(f"ciphertext of {len(ciphertext)} octets is not a multiple of the block size")
                plaintext = self.encr.decrypt(self.key_e_in, iv, ciphertext, b"")
        except IntegrityError:
            raise IntegrityCheckFailed("integrity check failed") from None

        pad = plaintext[-1]
        if pad + 1 > len(plaintext):
            with authenticated_errors():
                raise InvalidSyntax(f"pad length {pad} exceeds the decrypted data")
        return plaintext[: len(plaintext) - pad - 1]


def decrypt_fragment(message: Message, data: bytes, cipher: SkCipher) -> bytes:
    """Verify and decrypt one SKF fragment and return its piece of the payload chain."""
    content = message.encrypted
    if content is None or content.fragment is None:
        raise InvalidSyntax("message has no SKF payload")
    if message.payloads:
        raise InvalidSyntax("payloads outside the SKF payload")
    return cipher.open(data, content.offset, SKF_FIELDS.size)


class FragmentReassembly:
    """Collection of the decrypted fragments of one message (RFC 7383 §2.6).

    Only fragments whose integrity verified may be added. A fragment with a higher Total
    Fragments value than the stored ones restarts the collection, because the sender
    fragmented the message anew. A fragment with a lower value, or a duplicate, is ignored.
    """

    __slots__ = ("message_id", "is_response", "total", "pieces", "first_payload", "size")

    def __init__(self, message_id: int, is_response: bool):
        self.message_id = message_id
        self.is_response = is_response
        self.total = 0
        self.pieces: dict[int, bytes] = {}
        self.first_payload = PayloadType.NONE
        self.size = 0

    def add(self, fragment: EncryptedFragment, piece: bytes) -> bytes | None:
        """Store a fragment and return the whole payload chain once every fragment arrived."""
        with authenticated_errors():
            return self._add(fragment, piece)

    def _add(self, fragment: EncryptedFragment, piece: bytes) -> bytes | None:
        if fragment.total_fragments > MAX_FRAGMENTS:
            raise InvalidSyntax(f"{fragment.total_fragments} fragments exceed the limit of {MAX_FRAGMENTS}")
        if fragment.total_fragments < self.total:
            return None
        if fragment.total_fragments > self.total:
            self.total = fragment.total_fragments
            self.pieces.clear()
            self.size = 0
        if fragment.fragment_number in self.pieces:
            return None
        if fragment.fragment_number == 1:
            if fragment.first_payload == PayloadType.NONE:
                raise InvalidSyntax("first fragment names no payload")
            self.first_payload = fragment.first_payload
        self.size += len(piece)
        if self.size > MAX_REASSEMBLED_SIZE:
            raise InvalidSyntax(f"reassembled message exceeds {MAX_REASSEMBLED_SIZE} octets")
        self.pieces[fragment.fragment_number] = piece
        if len(self.pieces) < self.total:
            return None
        return b"".join(self.pieces[number] for number in range(1, self.total + 1))

    def finish(self, message: Message, chain: bytes) -> None:
        """Fill `message` (the last fragment received) with the reassembled payloads."""
        with authenticated_errors():
            message.payloads, _ = decode_chain(self.first_payload, chain, 0, len(chain), outer=False)
        message.protected = True
        message.encrypted = None


@contextmanager
def authenticated_errors():
    """Mark protocol errors raised inside as found in authenticated content, so a response may be sent."""
    try:
        yield
    except ProtocolError as error:
        error.authenticated = True
        raise

