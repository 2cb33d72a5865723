"""The XFRM netlink family as pyroute2 message classes, with every name from linux/xfrm.h.

Each C struct of the header is a pyroute2 class whose ``fields`` list the
struct's members in order. A nested struct is flattened into dotted names:
``sel.daddr`` is ``p->sel.daddr`` in C. Explicit ``__pad`` fields are the
compiler's padding, so the byte size of every class equals ``sizeof`` of the
C struct on Linux. The unit tests check this against the bytes that
``ip xfrm`` sends.

The classes serve two purposes:

- they are the single definition of the wire layout: ``Layout`` compiles a
  class's ``fields`` into one ``struct.Struct``, which ``xfrm.codec`` uses to
  encode and decode at the rate that thousands of SAs need (pyroute2's
  generic field-by-field encoder costs about 100 µs per SA);
- ``decode_message`` decodes any XFRM message with pyroute2 itself, for
  debugging and as an independent check of ``xfrm.codec`` in the tests.

Only the stable part of pyroute2 is used (``nlmsg``, ``nla``, ``fields``,
``nla_map``), which behaves the same from pyroute2 0.7.2 (Debian 12) on.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from typing import Any

from pyroute2.netlink import nla, nlmsg

from xfrm import constants as c

Fields = tuple[tuple[str, str], ...]


def _embed(prefix: str, fields: Fields) -> Fields:
    """Return ``fields`` renamed as members of the nested struct ``prefix``."""
    return tuple((f"{prefix}.{name}", code) for name, code in fields)


# --- struct definitions, in the order of linux/xfrm.h -----------------------

XFRM_ADDRESS_T = "16s"  # xfrm_address_t: IPv4 in the first 4 bytes, IPv6 in all 16

xfrm_id_fields: Fields = (
    ("daddr", XFRM_ADDRESS_T),
    ("spi", ">I"),
    ("proto", "B"),
    ("__pad", "3x"),
)

xfrm_selector_fields: Fields = (
    ("daddr", XFRM_ADDRESS_T),
    ("saddr", XFRM_ADDRESS_T),
    ("dport", ">H"),
    ("dport_mask", ">H"),
    ("sport", ">H"),
    ("sport_mask", ">H"),
    ("family", "H"),
    ("prefixlen_d", "B"),
    ("prefixlen_s", "B"),
    ("proto", "B"),
    ("__pad", "3x"),
    ("ifindex", "i"),
    ("user", "I"),
)

xfrm_lifetime_cfg_fields: Fields = (
    ("soft_byte_limit", "Q"),
    ("hard_byte_limit", "Q"),
    ("soft_packet_limit", "Q"),
    ("hard_packet_limit", "Q"),
    ("soft_add_expires_seconds", "Q"),
    ("hard_add_expires_seconds", "Q"),
    ("soft_use_expires_seconds", "Q"),
    ("hard_use_expires_seconds", "Q"),
)

xfrm_lifetime_cur_fields: Fields = (
    ("bytes", "Q"),
    ("packets", "Q"),
    ("add_time", "Q"),
    ("use_time", "Q"),
)

xfrm_replay_state_fields: Fields = (
    ("oseq", "I"),
    ("seq", "I"),
    ("bitmap", "I"),
)

# Followed by bmp_len 32-bit words of bitmap (bmp[]).
xfrm_replay_state_esn_fields: Fields = (
    ("bmp_len", "I"),
    ("oseq", "I"),
    ("seq", "I"),
    ("oseq_hi", "I"),
    ("seq_hi", "I"),
    ("replay_window", "I"),
)

# Each followed by alg_key_len bits of key (alg_key[]).
xfrm_algo_fields: Fields = (
    ("alg_name", "64s"),
    ("alg_key_len", "I"),
)
xfrm_algo_auth_fields: Fields = (
    ("alg_name", "64s"),
    ("alg_key_len", "I"),
    ("alg_trunc_len", "I"),
)
xfrm_algo_aead_fields: Fields = (
    ("alg_name", "64s"),
    ("alg_key_len", "I"),
    ("alg_icv_len", "I"),
)

xfrm_stats_fields: Fields = (
    ("replay_window", "I"),
    ("replay", "I"),
    ("integrity_failed", "I"),
)

xfrm_user_tmpl_fields: Fields = (
    *_embed("id", xfrm_id_fields),
    ("family", "H"),
    ("__pad", "2x"),
    ("saddr", XFRM_ADDRESS_T),
    ("reqid", "I"),
    ("mode", "B"),
    ("share", "B"),
    ("optional", "B"),
    ("__pad", "x"),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
)

xfrm_encap_tmpl_fields: Fields = (
    ("encap_type", "H"),
    ("encap_sport", ">H"),
    ("encap_dport", ">H"),
    ("__pad", "2x"),
    ("encap_oa", XFRM_ADDRESS_T),
)

xfrm_userpolicy_type_fields: Fields = (
    ("type", "B"),
    ("__pad", "x"),
    ("reserved1", "H"),
    ("reserved2", "B"),
    ("__pad", "x"),
)

xfrm_mark_fields: Fields = (
    ("v", "I"),
    ("m", "I"),
)

xfrm_usersa_info_fields: Fields = (
    *_embed("sel", xfrm_selector_fields),
    *_embed("id", xfrm_id_fields),
    ("saddr", XFRM_ADDRESS_T),
    *_embed("lft", xfrm_lifetime_cfg_fields),
    *_embed("curlft", xfrm_lifetime_cur_fields),
    *_embed("stats", xfrm_stats_fields),
    ("seq", "I"),
    ("reqid", "I"),
    ("family", "H"),
    ("mode", "B"),
    ("replay_window", "B"),
    ("flags", "B"),
    ("__pad", "7x"),
)

xfrm_usersa_id_fields: Fields = (
    ("daddr", XFRM_ADDRESS_T),
    ("spi", ">I"),
    ("family", "H"),
    ("proto", "B"),
    ("__pad", "x"),
)

xfrm_aevent_id_fields: Fields = (
    *_embed("sa_id", xfrm_usersa_id_fields),
    ("saddr", XFRM_ADDRESS_T),
    ("flags", "I"),
    ("reqid", "I"),
)

xfrm_userspi_info_fields: Fields = (
    *_embed("info", xfrm_usersa_info_fields),
    ("min", "I"),
    ("max", "I"),
)

xfrm_userpolicy_info_fields: Fields = (
    *_embed("sel", xfrm_selector_fields),
    *_embed("lft", xfrm_lifetime_cfg_fields),
    *_embed("curlft", xfrm_lifetime_cur_fields),
    ("priority", "I"),
    ("index", "I"),
    ("dir", "B"),
    ("action", "B"),
    ("flags", "B"),
    ("share", "B"),
    ("__pad", "4x"),
)

xfrm_userpolicy_id_fields: Fields = (
    *_embed("sel", xfrm_selector_fields),
    ("index", "I"),
    ("dir", "B"),
    ("__pad", "3x"),
)

xfrm_user_acquire_fields: Fields = (
    *_embed("id", xfrm_id_fields),
    ("saddr", XFRM_ADDRESS_T),
    *_embed("sel", xfrm_selector_fields),
    *_embed("policy", xfrm_userpolicy_info_fields),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
    ("seq", "I"),
)

xfrm_user_expire_fields: Fields = (
    *_embed("state", xfrm_usersa_info_fields),
    ("hard", "B"),
    ("__pad", "7x"),
)

xfrm_user_polexpire_fields: Fields = (
    *_embed("pol", xfrm_userpolicy_info_fields),
    ("hard", "B"),
    ("__pad", "7x"),
)

xfrm_usersa_flush_fields: Fields = (("proto", "B"),)

xfrm_user_kmaddress_fields: Fields = (
    ("local", XFRM_ADDRESS_T),
    ("remote", XFRM_ADDRESS_T),
    ("reserved", "I"),
    ("family", "H"),
    ("__pad", "2x"),
)

xfrm_user_migrate_fields: Fields = (
    ("old_daddr", XFRM_ADDRESS_T),
    ("old_saddr", XFRM_ADDRESS_T),
    ("new_daddr", XFRM_ADDRESS_T),
    ("new_saddr", XFRM_ADDRESS_T),
    ("proto", "B"),
    ("mode", "B"),
    ("reserved", "H"),
    ("reqid", "I"),
    ("old_family", "H"),
    ("new_family", "H"),
)

xfrm_user_mapping_fields: Fields = (
    *_embed("id", xfrm_usersa_id_fields),
    ("reqid", "I"),
    ("old_saddr", XFRM_ADDRESS_T),
    ("new_saddr", XFRM_ADDRESS_T),
    ("old_sport", ">H"),
    ("new_sport", ">H"),
)

xfrm_address_filter_fields: Fields = (
    ("saddr", XFRM_ADDRESS_T),
    ("daddr", XFRM_ADDRESS_T),
    ("family", "H"),
    ("splen", "B"),
    ("dplen", "B"),
)

xfrm_user_offload_fields: Fields = (
    ("ifindex", "i"),
    ("flags", "B"),
    ("__pad", "3x"),
)


# --- compiled layouts --------------------------------------------------------

# Big-endian field code -> (native code, conversion to the wire, conversion from it).
_BIG_ENDIAN = {
    ">H": ("H", "htons", "ntohs"),
    ">I": ("I", "htonl", "ntohl"),
}
_CONVERSIONS = {
    "htons": socket.htons,
    "ntohs": socket.ntohs,
    "htonl": socket.htonl,
    "ntohl": socket.ntohl,
}


class Layout:
    """A C struct compiled from a ``fields`` tuple into one ``struct.Struct``.

    The fields are packed back to back with standard sizes and no implicit
    alignment, exactly as pyroute2 packs them one by one: the ``__pad``
    fields carry all padding. Big-endian fields (``>H``, ``>I``) are stored
    through htons/htonl, so one native-order format serves the whole struct.
    Missing values pack as 0 (or empty bytes); byte strings are padded with
    NUL to their field size.

    ``pack`` and ``unpack`` are generated as Python source for each layout,
    as ``collections.namedtuple`` does, because a generic loop over the
    fields took most of the time of encoding a message.
    """

    def __init__(self, fields: Fields) -> None:
        parts = ["="]
        self.names: list[str] = []
        pack_args: list[str] = []
        unpack_items: list[str] = []
        for name, code in fields:
            if code.endswith("x"):
                parts.append(code)
                continue
            to_wire = from_wire = ""
            if code in _BIG_ENDIAN:
                code, to_wire, from_wire = _BIG_ENDIAN[code]
            default = b"" if code.endswith("s") else 0
            pack_args.append(f"{to_wire}(get({name!r}, {default!r}))")
            unpack_items.append(f"{name!r}: {from_wire}(row[{len(self.names)}])")
            parts.append(code)
            self.names.append(name)
        self.struct = struct.Struct("".join(parts))
        self.size = self.struct.size

        source = (
            "def pack(values):\n"
            "    get = values.get\n"
            f"    return struct_pack({', '.join(pack_args)})\n"
            "def unpack(data, offset=0):\n"
            "    row = unpack_from(data, offset)\n"
            f"    return {{{', '.join(unpack_items)}}}\n"
        )
        namespace = dict(_CONVERSIONS, struct_pack=self.struct.pack,
                         unpack_from=self.struct.unpack_from)
        exec(source, namespace)  # noqa: S102 - the source is built from the field tables above
        self._pack = namespace["pack"]
        self._unpack = namespace["unpack"]

    def pack(self, values: Mapping[str, Any]) -> bytes:
        """Pack ``values`` (field name to value) into the struct's bytes."""
        return self._pack(values)

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """Unpack the struct at ``offset`` of ``data`` into a dict keyed by field name."""
        return self._unpack(data, offset)


# --- pyroute2 classes --------------------------------------------------------

def _decode_tail(msg: nla, fixed_size: int) -> bytes:
    """Return the bytes of attribute ``msg`` after its header and fixed part."""
    start = msg.offset + 4 + fixed_size
    return bytes(msg.data[start:msg.offset + msg.length])


class xfrm_algo(nla):
    fields = xfrm_algo_fields

    def encode(self) -> None:
        key = self.get("alg_key", b"")
        self._encode_with_tail(key)

    def _encode_with_tail(self, tail: bytes) -> None:
        # pyroute2 cannot express a flexible array member; the tail is a
        # trailing byte-string field of the length of this value.
        self.fields = (*type(self).fields, ("alg_key", f"{len(tail)}s"))
        self["alg_key"] = tail
        nla.encode(self)

    def decode(self) -> None:
        nla.decode(self)
        self["alg_key"] = _decode_tail(self, Layout(type(self).fields).size)


class xfrm_algo_auth(xfrm_algo):
    fields = xfrm_algo_auth_fields


class xfrm_algo_aead(xfrm_algo):
    fields = xfrm_algo_aead_fields


class xfrm_replay_state_esn(nla):
    fields = xfrm_replay_state_esn_fields

    def encode(self) -> None:
        words = tuple(self.get("bmp", ()))
        self.fields = (*type(self).fields, ("bmp", f"{len(words)}I"))
        self["bmp"] = words
        nla.encode(self)

    def decode(self) -> None:
        nla.decode(self)
        tail = _decode_tail(self, Layout(type(self).fields).size)
        self["bmp"] = struct.unpack(f"={len(tail) // 4}I", tail[: len(tail) // 4 * 4])


class _struct_list(nla.cdata):
    """An attribute holding C structs back to back, without attribute headers."""

    layout: Layout

    def encode(self) -> None:
        self["value"] = b"".join(self.layout.pack(item) for item in self.value)
        nla.cdata.encode(self)

    def decode(self) -> None:
        nla.cdata.decode(self)
        raw = self["value"]
        size = self.layout.size
        self.value = [self.layout.unpack(raw, offset) for offset in range(0, len(raw) - size + 1, size)]


class xfrm_user_tmpl_list(_struct_list):
    layout = Layout(xfrm_user_tmpl_fields)


class xfrm_user_migrate_list(_struct_list):
    layout = Layout(xfrm_user_migrate_fields)


class xfrm_encap_tmpl(nla):
    fields = xfrm_encap_tmpl_fields


class xfrm_mark(nla):
    fields = xfrm_mark_fields


class xfrm_lifetime_cur(nla):
    fields = xfrm_lifetime_cur_fields


class xfrm_replay_state(nla):
    fields = xfrm_replay_state_fields


class xfrm_userpolicy_type(nla):
    fields = xfrm_userpolicy_type_fields


class xfrm_user_kmaddress(nla):
    fields = xfrm_user_kmaddress_fields


class xfrm_address_filter(nla):
    fields = xfrm_address_filter_fields


class xfrm_user_offload(nla):
    fields = xfrm_user_offload_fields


class xfrm_address(nla):
    fields = (("value", XFRM_ADDRESS_T),)


class xfrm_usersa_info_attr(nla):
    """XFRMA_SA: a whole xfrm_usersa_info as an attribute (in DELSA notifications)."""

    fields = xfrm_usersa_info_fields


class xfrm_userpolicy_info_attr(nla):
    """XFRMA_POLICY: a whole xfrm_userpolicy_info as an attribute (in DELPOLICY notifications)."""

    fields = xfrm_userpolicy_info_fields


# Payload class of every XFRMA_* attribute, by the struct named in linux/xfrm.h.
XFRMA_PAYLOADS: dict[str, str] = {
    "XFRMA_UNSPEC": "none",
    "XFRMA_ALG_AUTH": "xfrm_algo",
    "XFRMA_ALG_CRYPT": "xfrm_algo",
    "XFRMA_ALG_COMP": "xfrm_algo",
    "XFRMA_ENCAP": "xfrm_encap_tmpl",
    "XFRMA_TMPL": "xfrm_user_tmpl_list",
    "XFRMA_SA": "xfrm_usersa_info_attr",
    "XFRMA_POLICY": "xfrm_userpolicy_info_attr",
    "XFRMA_SEC_CTX": "cdata",
    "XFRMA_LTIME_VAL": "xfrm_lifetime_cur",
    "XFRMA_REPLAY_VAL": "xfrm_replay_state",
    "XFRMA_REPLAY_THRESH": "uint32",
    "XFRMA_ETIMER_THRESH": "uint32",
    "XFRMA_SRCADDR": "xfrm_address",
    "XFRMA_COADDR": "xfrm_address",
    "XFRMA_LASTUSED": "uint64",
    "XFRMA_POLICY_TYPE": "xfrm_userpolicy_type",
    "XFRMA_MIGRATE": "xfrm_user_migrate_list",
    "XFRMA_ALG_AEAD": "xfrm_algo_aead",
    "XFRMA_KMADDRESS": "xfrm_user_kmaddress",
    "XFRMA_ALG_AUTH_TRUNC": "xfrm_algo_auth",
    "XFRMA_MARK": "xfrm_mark",
    "XFRMA_TFCPAD": "uint32",
    "XFRMA_REPLAY_ESN_VAL": "xfrm_replay_state_esn",
    "XFRMA_SA_EXTRA_FLAGS": "uint32",
    "XFRMA_PROTO": "uint8",
    "XFRMA_ADDRESS_FILTER": "xfrm_address_filter",
    "XFRMA_PAD": "none",
    "XFRMA_OFFLOAD_DEV": "xfrm_user_offload",
    "XFRMA_SET_MARK": "uint32",
    "XFRMA_SET_MARK_MASK": "uint32",
    "XFRMA_IF_ID": "uint32",
    "XFRMA_MTIMER_THRESH": "uint32",
}
assert tuple(XFRMA_PAYLOADS) == c.XFRMA_NAMES


class _xfrm_message(nlmsg):
    """Base of the XFRM message bodies: the nlmsghdr, a struct, then XFRMA_* attributes."""

    __slots__ = ()
    nla_map = tuple((name, XFRMA_PAYLOADS[name]) for name in c.XFRMA_NAMES)

    xfrm_algo = xfrm_algo
    xfrm_algo_auth = xfrm_algo_auth
    xfrm_algo_aead = xfrm_algo_aead
    xfrm_replay_state_esn = xfrm_replay_state_esn
    xfrm_user_tmpl_list = xfrm_user_tmpl_list
    xfrm_user_migrate_list = xfrm_user_migrate_list
    xfrm_encap_tmpl = xfrm_encap_tmpl
    xfrm_mark = xfrm_mark
    xfrm_lifetime_cur = xfrm_lifetime_cur
    xfrm_replay_state = xfrm_replay_state
    xfrm_userpolicy_type = xfrm_userpolicy_type
    xfrm_user_kmaddress = xfrm_user_kmaddress
    xfrm_address_filter = xfrm_address_filter
    xfrm_user_offload = xfrm_user_offload
    xfrm_address = xfrm_address
    xfrm_usersa_info_attr = xfrm_usersa_info_attr
    xfrm_userpolicy_info_attr = xfrm_userpolicy_info_attr


class xfrm_usersa_info(_xfrm_message):
    __slots__ = ()
    fields = xfrm_usersa_info_fields


class xfrm_usersa_id(_xfrm_message):
    __slots__ = ()
    fields = xfrm_usersa_id_fields


class xfrm_aevent_id(_xfrm_message):
    __slots__ = ()
    fields = xfrm_aevent_id_fields


class xfrm_userspi_info(_xfrm_message):
    __slots__ = ()
    fields = xfrm_userspi_info_fields


class xfrm_userpolicy_info(_xfrm_message):
    __slots__ = ()
    fields = xfrm_userpolicy_info_fields


class xfrm_userpolicy_id(_xfrm_message):
    __slots__ = ()
    fields = xfrm_userpolicy_id_fields


class xfrm_user_acquire(_xfrm_message):
    __slots__ = ()
    fields = xfrm_user_acquire_fields


class xfrm_user_expire(_xfrm_message):
    __slots__ = ()
    fields = xfrm_user_expire_fields


class xfrm_user_polexpire(_xfrm_message):
    __slots__ = ()
    fields = xfrm_user_polexpire_fields


class xfrm_usersa_flush(_xfrm_message):
    __slots__ = ()
    fields = xfrm_usersa_flush_fields


class xfrm_user_mapping(_xfrm_message):
    __slots__ = ()
    fields = xfrm_user_mapping_fields


class xfrm_no_body(_xfrm_message):
    """A message with attributes only (XFRM_MSG_FLUSHPOLICY)."""

    __slots__ = ()
    fields = ()


# The body struct of each message type, as the kernel reads and writes it.
# DELSA and DELPOLICY requests carry the id struct; in notifications the
# kernel also sends them with the id struct, plus XFRMA_SA / XFRMA_POLICY.
MESSAGE_BODIES: dict[int, type[_xfrm_message]] = {
    c.XFRM_MSG_NEWSA: xfrm_usersa_info,
    c.XFRM_MSG_UPDSA: xfrm_usersa_info,
    c.XFRM_MSG_DELSA: xfrm_usersa_id,
    c.XFRM_MSG_GETSA: xfrm_usersa_id,
    c.XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
    c.XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
    c.XFRM_MSG_DELPOLICY: xfrm_userpolicy_id,
    c.XFRM_MSG_GETPOLICY: xfrm_userpolicy_id,
    c.XFRM_MSG_MIGRATE: xfrm_userpolicy_id,
    c.XFRM_MSG_ALLOCSPI: xfrm_userspi_info,
    c.XFRM_MSG_ACQUIRE: xfrm_user_acquire,
    c.XFRM_MSG_EXPIRE: xfrm_user_expire,
    c.XFRM_MSG_POLEXPIRE: xfrm_user_polexpire,
    c.XFRM_MSG_FLUSHSA: xfrm_usersa_flush,
    c.XFRM_MSG_FLUSHPOLICY: xfrm_no_body,
    c.XFRM_MSG_NEWAE: xfrm_aevent_id,
    c.XFRM_MSG_GETAE: xfrm_aevent_id,
    c.XFRM_MSG_MAPPING: xfrm_user_mapping,
}


def decode_message(data: bytes) -> _xfrm_message:
    """Decode one XFRM netlink message (nlmsghdr included) with pyroute2.

    Raises ValueError for a message type without a known body struct.
    """
    (msg_type,) = struct.unpack_from("=H", data, 4)
    try:
        cls = MESSAGE_BODIES[msg_type]
    except KeyError:
        raise ValueError(f"no XFRM body struct known for message type {msg_type:#x}") from None
    msg = cls(bytes(data))
    msg.decode()
    return msg
