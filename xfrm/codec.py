"""Encode requests into XFRM netlink messages and decode the kernel's messages.

The byte layout comes from the pyroute2 classes in ``xfrm.messages``,
compiled into ``Layout`` objects. Attributes are written in the order
``ip xfrm`` (iproute2 6.1) uses, so the unit tests can compare whole
messages with what ``ip`` sends.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from xfrm import constants as c
from xfrm import messages as m
from xfrm import ops
from xfrm.model import (
    Action,
    Address,
    Aead,
    Auth,
    Cipher,
    Direction,
    Encap,
    Lifetime,
    LifetimeCurrent,
    Mark,
    Migration,
    Mode,
    Policy,
    PolicyId,
    Proto,
    ReplayState,
    SaId,
    SecurityAssociation,
    Selector,
    Template,
)

NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")
NLMSGERR_ERROR = struct.Struct("=i")

USERSA_INFO = m.Layout(m.xfrm_usersa_info_fields)
USERSA_ID = m.Layout(m.xfrm_usersa_id_fields)
AEVENT_ID = m.Layout(m.xfrm_aevent_id_fields)
USERSPI_INFO = m.Layout(m.xfrm_userspi_info_fields)
USERPOLICY_INFO = m.Layout(m.xfrm_userpolicy_info_fields)
USERPOLICY_ID = m.Layout(m.xfrm_userpolicy_id_fields)
USER_TMPL = m.Layout(m.xfrm_user_tmpl_fields)
USER_ACQUIRE = m.Layout(m.xfrm_user_acquire_fields)
USER_EXPIRE = m.Layout(m.xfrm_user_expire_fields)
USER_POLEXPIRE = m.Layout(m.xfrm_user_polexpire_fields)
USERSA_FLUSH = m.Layout(m.xfrm_usersa_flush_fields)
USER_MIGRATE = m.Layout(m.xfrm_user_migrate_fields)
USER_MAPPING = m.Layout(m.xfrm_user_mapping_fields)
USER_KMADDRESS = m.Layout(m.xfrm_user_kmaddress_fields)
ENCAP_TMPL = m.Layout(m.xfrm_encap_tmpl_fields)
MARK = m.Layout(m.xfrm_mark_fields)
LIFETIME_CUR = m.Layout(m.xfrm_lifetime_cur_fields)
REPLAY_STATE = m.Layout(m.xfrm_replay_state_fields)
REPLAY_STATE_ESN = m.Layout(m.xfrm_replay_state_esn_fields)
ALGO = m.Layout(m.xfrm_algo_fields)
ALGO_AUTH = m.Layout(m.xfrm_algo_auth_fields)
ALGO_AEAD = m.Layout(m.xfrm_algo_aead_fields)
U32 = struct.Struct("=I")

_ZERO_ADDRESS = bytes(16)


class DecodeError(ValueError):
    """A message from the kernel is shorter than its struct or has a bad attribute."""


# --- small pieces -------------------------------------------------------------

def align4(length: int) -> int:
    return (length + 3) & ~3


def attr(attr_type: int, payload: bytes) -> bytes:
    """Return one netlink attribute: header, payload, padding to 4 bytes."""
    length = 4 + len(payload)
    return NLATTR.pack(length, attr_type) + payload + bytes(align4(length) - length)


def message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    """Return one netlink message (nlmsghdr with pid 0), padded to 4 bytes."""
    length = NLMSGHDR.size + len(payload)
    return NLMSGHDR.pack(length, msg_type, flags, seq, 0) + payload + bytes(align4(length) - length)


def iter_attrs(data: bytes | memoryview, offset: int, end: int) -> Iterator[tuple[int, memoryview]]:
    """Yield (type, payload) for each attribute between ``offset`` and ``end``."""
    view = memoryview(data)
    while offset + 4 <= end:
        length, attr_type = NLATTR.unpack_from(view, offset)
        if length < 4 or offset + length > end:
            raise DecodeError(f"attribute of type {attr_type} at offset {offset} has "
                              f"invalid length {length}")
        # NLA_F_NESTED and NLA_F_NET_BYTEORDER are flags in the top bits.
        yield attr_type & 0x3FFF, view[offset + 4:offset + length]
        offset += align4(length)


def parse_attrs(data: bytes | memoryview, offset: int, end: int | None = None) -> dict[int, memoryview]:
    """Return the attributes after ``offset`` by type (the last one wins)."""
    if end is None:
        end = len(data)
    return dict(iter_attrs(data, offset, end))


def pack_address(address: Address | None) -> bytes:
    """Return ``address`` as xfrm_address_t (16 bytes, IPv4 in the first 4)."""
    if address is None:
        return _ZERO_ADDRESS
    return address.packed.ljust(16, b"\0")


def unpack_address(raw: bytes | memoryview, family: int) -> Address:
    if family == socket.AF_INET:
        return IPv4Address(bytes(raw[:4]))
    if family == socket.AF_INET6:
        return IPv6Address(bytes(raw[:16]))
    raise DecodeError(f"unknown address family {family}")


def _network(raw: bytes, prefixlen: int, family: int) -> IPv4Network | IPv6Network:
    # From an integer: ipaddress would format and parse an address object again.
    if family == socket.AF_INET:
        return IPv4Network((int.from_bytes(raw[:4], "big"), prefixlen), strict=False)
    if family == socket.AF_INET6:
        return IPv6Network((int.from_bytes(raw[:16], "big"), prefixlen), strict=False)
    raise DecodeError(f"unknown address family {family}")


def _optional_address(raw: bytes, family: int) -> Address | None:
    return None if raw == _ZERO_ADDRESS or family == 0 else unpack_address(raw, family)


def _require(data: bytes | memoryview, size: int, struct_name: str) -> None:
    if len(data) < size:
        raise DecodeError(f"{struct_name} is {len(data)} bytes, expected at least {size}")


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


# --- selectors, lifetimes, marks ---------------------------------------------

_SELECTOR_MEMBERS = ("daddr", "saddr", "dport", "dport_mask", "sport", "sport_mask", "family",
                     "prefixlen_d", "prefixlen_s", "proto", "ifindex", "user")


@functools.lru_cache(maxsize=None)
def _member_names(prefix: str, members: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{member}" for member in members)


def selector_values(sel: Selector | None, prefix: str) -> dict[str, Any]:
    """Return the xfrm_selector members of ``sel`` under ``prefix``; None is all zero."""
    if sel is None:
        return {}
    return dict(zip(_member_names(prefix, _SELECTOR_MEMBERS), (
        pack_address(sel.dst.network_address),
        pack_address(sel.src.network_address),
        sel.dport,
        sel.dport_mask,
        sel.sport,
        sel.sport_mask,
        sel.family,
        sel.dst.prefixlen,
        sel.src.prefixlen,
        sel.proto,
        sel.ifindex,
        sel.user,
    )))


def selector_from(values: dict[str, Any], prefix: str) -> Selector | None:
    """Return the Selector of the xfrm_selector under ``prefix``; None for the all-zero one."""
    family = values[f"{prefix}.family"]
    plen_d = values[f"{prefix}.prefixlen_d"]
    plen_s = values[f"{prefix}.prefixlen_s"]
    keys = ("proto", "sport", "dport", "sport_mask", "dport_mask", "ifindex", "user")
    if (family == 0 or (plen_d == 0 and plen_s == 0 and values[f"{prefix}.daddr"] == _ZERO_ADDRESS
                        and values[f"{prefix}.saddr"] == _ZERO_ADDRESS
                        and not any(values[f"{prefix}.{key}"] for key in keys))):
        return None
    return Selector(
        src=_network(values[f"{prefix}.saddr"], plen_s, family),
        dst=_network(values[f"{prefix}.daddr"], plen_d, family),
        proto=values[f"{prefix}.proto"],
        sport=values[f"{prefix}.sport"],
        dport=values[f"{prefix}.dport"],
        sport_mask=values[f"{prefix}.sport_mask"],
        dport_mask=values[f"{prefix}.dport_mask"],
        ifindex=values[f"{prefix}.ifindex"],
        user=values[f"{prefix}.user"],
    )


# Lifetime field -> (xfrm_lifetime_cfg member, value meaning "no limit").
_LIFETIME_FIELDS = (
    ("soft_bytes", "soft_byte_limit", c.XFRM_INF),
    ("hard_bytes", "hard_byte_limit", c.XFRM_INF),
    ("soft_packets", "soft_packet_limit", c.XFRM_INF),
    ("hard_packets", "hard_packet_limit", c.XFRM_INF),
    ("soft_add_seconds", "soft_add_expires_seconds", 0),
    ("hard_add_seconds", "hard_add_expires_seconds", 0),
    ("soft_use_seconds", "soft_use_expires_seconds", 0),
    ("hard_use_seconds", "hard_use_expires_seconds", 0),
)


@functools.lru_cache(maxsize=1024)
def lifetime_values(lifetime: Lifetime, prefix: str) -> dict[str, int]:
    """Return the xfrm_lifetime_cfg members under ``prefix`` (cached: do not change the dict)."""
    values = {}
    for name, member, unlimited in _LIFETIME_FIELDS:
        value = getattr(lifetime, name)
        values[f"{prefix}.{member}"] = unlimited if value is None else value
    return values


def lifetime_from(values: dict[str, Any], prefix: str) -> Lifetime:
    kwargs = {}
    for name, member, unlimited in _LIFETIME_FIELDS:
        value = values[f"{prefix}.{member}"]
        kwargs[name] = None if value == unlimited else value
    return Lifetime(**kwargs)


def current_from(values: dict[str, Any], prefix: str) -> LifetimeCurrent:
    """Return the xfrm_lifetime_cur under ``prefix`` ("" for a bare xfrm_lifetime_cur)."""
    lead = f"{prefix}." if prefix else ""
    return LifetimeCurrent(*(values[lead + name] for name in ("bytes", "packets", "add_time", "use_time")))


def mark_attr(mark: Mark | None) -> bytes:
    return attr(c.XFRMA_MARK, MARK.pack({"v": mark.value, "m": mark.mask})) if mark else b""


def if_id_attr(if_id: int) -> bytes:
    return attr(c.XFRMA_IF_ID, U32.pack(if_id)) if if_id else b""


def mark_from(attrs: dict[int, memoryview]) -> Mark | None:
    raw = attrs.get(c.XFRMA_MARK)
    if raw is None:
        return None
    values = MARK.unpack(raw)
    return Mark(values["v"], values["m"])


def u32_from(attrs: dict[int, memoryview], attr_type: int) -> int:
    raw = attrs.get(attr_type)
    return U32.unpack_from(raw)[0] if raw is not None and len(raw) >= 4 else 0


def encap_attr(encap: Encap) -> bytes:
    return attr(c.XFRMA_ENCAP, ENCAP_TMPL.pack({
        "encap_type": encap.type,
        "encap_sport": encap.sport,
        "encap_dport": encap.dport,
        "encap_oa": pack_address(encap.oa),
    }))


def encap_from(raw: memoryview | None, family: int) -> Encap | None:
    if raw is None:
        return None
    values = ENCAP_TMPL.unpack(raw)
    oa = values["encap_oa"]
    return Encap(sport=values["encap_sport"], dport=values["encap_dport"],
                 oa=_optional_address(oa, family), type=values["encap_type"])


# --- SAs -----------------------------------------------------------------------

def _algo_attr(attr_type: int, layout: m.Layout, values: dict[str, Any], key: bytes) -> bytes:
    values["alg_key_len"] = len(key) * 8
    return attr(attr_type, layout.pack(values) + key)


def _key_from(raw: memoryview, layout: m.Layout) -> tuple[dict[str, Any], bytes]:
    values = layout.unpack(raw)
    key_bytes = (values["alg_key_len"] + 7) // 8
    return values, bytes(raw[layout.size:layout.size + key_bytes])


def _replay_attrs(sa: SecurityAssociation) -> bytes:
    """Return XFRMA_REPLAY_ESN_VAL or XFRMA_REPLAY_VAL for ``sa``, as ip xfrm does."""
    replay = sa.replay
    if sa.uses_esn_struct:
        bmp_len = (sa.replay_window + 31) // 32
        values = {"bmp_len": bmp_len, "replay_window": sa.replay_window}
        if replay is None:
            # Like ip: no bitmap; the kernel allocates a zeroed one.
            return attr(c.XFRMA_REPLAY_ESN_VAL, REPLAY_STATE_ESN.pack(values))
        bitmap = replay.bitmap or (0,) * bmp_len
        if len(bitmap) != bmp_len:
            raise ValueError(f"SA {sa.id}: replay bitmap has {len(bitmap)} words, "
                             f"window {sa.replay_window} needs {bmp_len}")
        values.update(oseq=replay.oseq, seq=replay.seq, oseq_hi=replay.oseq_hi, seq_hi=replay.seq_hi)
        return attr(c.XFRMA_REPLAY_ESN_VAL,
                    REPLAY_STATE_ESN.pack(values) + struct.pack(f"={bmp_len}I", *bitmap))
    if replay is None or not (replay.oseq or replay.seq or any(replay.bitmap)):
        return b""
    if len(replay.bitmap) > 1 or replay.oseq_hi or replay.seq_hi:
        raise ValueError(f"SA {sa.id}: a replay state with ESN counters or a multi-word "
                         f"bitmap needs esn=True or a window above 32")
    bitmap = replay.bitmap[0] if replay.bitmap else 0
    return attr(c.XFRMA_REPLAY_VAL,
                REPLAY_STATE.pack({"oseq": replay.oseq, "seq": replay.seq, "bitmap": bitmap}))


def current_attr(current: LifetimeCurrent | None) -> bytes:
    if current is None:
        return b""
    return attr(c.XFRMA_LTIME_VAL, LIFETIME_CUR.pack({
        "bytes": current.bytes, "packets": current.packets,
        "add_time": current.add_time, "use_time": current.use_time}))


def sa_info_values(sa: SecurityAssociation) -> dict[str, Any]:
    """Return the xfrm_usersa_info members for ``sa``."""
    values = selector_values(sa.selector, "sel")
    values.update(lifetime_values(sa.lifetime, "lft"))
    values.update({
        "id.daddr": pack_address(sa.dst),
        "id.spi": sa.spi,
        "id.proto": sa.proto,
        "saddr": pack_address(sa.src),
        "reqid": sa.reqid,
        "family": sa.family,
        "mode": sa.mode,
        "replay_window": 0 if sa.uses_esn_struct else sa.replay_window,
        "flags": sa.flags | (c.XFRM_STATE_ESN if sa.esn else 0),
    })
    return values


def encode_sa(sa: SecurityAssociation) -> bytes:
    """Return the body of XFRM_MSG_NEWSA / UPDSA: xfrm_usersa_info and its attributes."""
    parts = [USERSA_INFO.pack(sa_info_values(sa))]
    if sa.aead is not None:
        parts.append(_algo_attr(c.XFRMA_ALG_AEAD, ALGO_AEAD, {
            "alg_name": sa.aead.name.encode(), "alg_icv_len": sa.aead.icv_bits}, sa.aead.key))
    if sa.cipher is not None:
        parts.append(_algo_attr(c.XFRMA_ALG_CRYPT, ALGO, {
            "alg_name": sa.cipher.name.encode()}, sa.cipher.key))
    if sa.auth is not None:
        parts.append(_algo_attr(c.XFRMA_ALG_AUTH_TRUNC, ALGO_AUTH, {
            "alg_name": sa.auth.name.encode(), "alg_trunc_len": sa.auth.trunc_bits}, sa.auth.key))
    if sa.encap is not None:
        parts.append(encap_attr(sa.encap))
    parts.append(_replay_attrs(sa))
    parts.append(current_attr(sa.current))
    if sa.extra_flags:
        parts.append(attr(c.XFRMA_SA_EXTRA_FLAGS, U32.pack(sa.extra_flags)))
    parts.append(mark_attr(sa.mark))
    parts.append(if_id_attr(sa.if_id))
    return b"".join(parts)


def replay_from(attrs: dict[int, memoryview]) -> tuple[ReplayState | None, int | None]:
    """Return the replay state in ``attrs`` and, for the ESN struct, its window."""
    raw = attrs.get(c.XFRMA_REPLAY_ESN_VAL)
    if raw is not None:
        values = REPLAY_STATE_ESN.unpack(raw)
        words = min(values["bmp_len"], (len(raw) - REPLAY_STATE_ESN.size) // 4)
        counters = (values["oseq"], values["seq"], values["oseq_hi"], values["seq_hi"])
        if words == 0 and not any(counters):
            # A request without counters, as ip and encode_sa send it.
            return None, values["replay_window"]
        bitmap = struct.unpack_from(f"={words}I", raw, REPLAY_STATE_ESN.size)
        state = ReplayState(values["oseq"], values["seq"], values["oseq_hi"], values["seq_hi"], bitmap)
        return state, values["replay_window"]
    raw = attrs.get(c.XFRMA_REPLAY_VAL)
    if raw is not None:
        values = REPLAY_STATE.unpack(raw)
        return ReplayState(values["oseq"], values["seq"], bitmap=(values["bitmap"],)), None
    return None, None


def sa_from(values: dict[str, Any], attrs: dict[int, memoryview], prefix: str = "") -> SecurityAssociation:
    """Build a SecurityAssociation from xfrm_usersa_info members (under ``prefix``) and attributes."""
    def v(name: str) -> Any:
        return values[prefix + name]

    family = v("family")
    aead = cipher = auth = None
    if c.XFRMA_ALG_AEAD in attrs:
        info, key = _key_from(attrs[c.XFRMA_ALG_AEAD], ALGO_AEAD)
        aead = Aead(_name(info["alg_name"]), key, info["alg_icv_len"])
    if c.XFRMA_ALG_CRYPT in attrs:
        info, key = _key_from(attrs[c.XFRMA_ALG_CRYPT], ALGO)
        cipher = Cipher(_name(info["alg_name"]), key)
    if c.XFRMA_ALG_AUTH_TRUNC in attrs:
        info, key = _key_from(attrs[c.XFRMA_ALG_AUTH_TRUNC], ALGO_AUTH)
        auth = Auth(_name(info["alg_name"]), key, info["alg_trunc_len"])
    elif c.XFRMA_ALG_AUTH in attrs:
        # NOTE: without XFRMA_ALG_AUTH_TRUNC the ICV length is the kernel's
        # default for the algorithm, which this layer does not know: 0 here.
        info, key = _key_from(attrs[c.XFRMA_ALG_AUTH], ALGO)
        auth = Auth(_name(info["alg_name"]), key, 0)

    replay, esn_window = replay_from(attrs)
    flags = v("flags")
    return SecurityAssociation(
        src=unpack_address(v("saddr"), family),
        dst=unpack_address(v("id.daddr"), family),
        spi=v("id.spi"),
        proto=Proto(v("id.proto")),
        mode=Mode(v("mode")),
        reqid=v("reqid"),
        aead=aead,
        cipher=cipher,
        auth=auth,
        encap=encap_from(attrs.get(c.XFRMA_ENCAP), family),
        replay_window=esn_window if esn_window is not None else v("replay_window"),
        esn=bool(flags & c.XFRM_STATE_ESN),
        lifetime=lifetime_from(values, prefix + "lft"),
        mark=mark_from(attrs),
        if_id=u32_from(attrs, c.XFRMA_IF_ID),
        selector=selector_from(values, prefix + "sel"),
        flags=flags & ~c.XFRM_STATE_ESN,
        extra_flags=u32_from(attrs, c.XFRMA_SA_EXTRA_FLAGS),
        replay=replay,
        current=current_from(values, prefix + "curlft"),
    )


def decode_sa(payload: bytes | memoryview) -> SecurityAssociation:
    """Decode the body of XFRM_MSG_NEWSA / UPDSA (a reply, dump entry or notification)."""
    _require(payload, USERSA_INFO.size, "xfrm_usersa_info")
    return sa_from(USERSA_INFO.unpack(payload), parse_attrs(payload, USERSA_INFO.size))


def sa_id_values(sa_id: SaId) -> dict[str, Any]:
    return {"daddr": pack_address(sa_id.dst), "spi": sa_id.spi,
            "family": sa_id.family, "proto": sa_id.proto}


def encode_sa_id(sa_id: SaId) -> bytes:
    """Return the body of XFRM_MSG_GETSA / DELSA: xfrm_usersa_id, XFRMA_SRCADDR, XFRMA_MARK."""
    parts = [USERSA_ID.pack(sa_id_values(sa_id))]
    if sa_id.src is not None:
        parts.append(attr(c.XFRMA_SRCADDR, pack_address(sa_id.src)))
    parts.append(mark_attr(sa_id.mark))
    return b"".join(parts)


def sa_id_from(values: dict[str, Any], attrs: dict[int, memoryview], prefix: str = "") -> SaId:
    family = values[prefix + "family"]
    src = attrs.get(c.XFRMA_SRCADDR)
    return SaId(dst=unpack_address(values[prefix + "daddr"], family), spi=values[prefix + "spi"],
                proto=Proto(values[prefix + "proto"]),
                src=unpack_address(src, family) if src is not None else None,
                mark=mark_from(attrs))


def encode_alloc_spi(op: ops.AllocSpi) -> bytes:
    """Return the body of XFRM_MSG_ALLOCSPI: xfrm_userspi_info, XFRMA_MARK, XFRMA_IF_ID."""
    values = {
        "info.id.daddr": pack_address(op.dst),
        "info.id.proto": op.proto,
        "info.saddr": pack_address(op.src),
        "info.family": socket.AF_INET if op.dst.version == 4 else socket.AF_INET6,
        "info.mode": op.mode,
        "info.reqid": op.reqid,
        "min": op.low,
        "max": op.high,
    }
    return USERSPI_INFO.pack(values) + mark_attr(op.mark) + if_id_attr(op.if_id)


# --- replay state (GETAE / NEWAE) ------------------------------------------

def encode_aevent_id(sa_id: SaId, flags: int) -> bytes:
    values = {f"sa_id.{k}": v for k, v in sa_id_values(sa_id).items()}
    values["saddr"] = pack_address(sa_id.src)
    values["flags"] = flags
    return AEVENT_ID.pack(values) + mark_attr(sa_id.mark)


def encode_get_replay(op: ops.GetReplayState) -> bytes:
    """Return the body of XFRM_MSG_GETAE."""
    return encode_aevent_id(op.id, c.XFRM_AE_RVAL | c.XFRM_AE_LVAL)


def encode_set_replay(op: ops.SetReplayState) -> bytes:
    """Return the body of XFRM_MSG_NEWAE: xfrm_aevent_id, replay state, lifetime counters."""
    flags = c.XFRM_AE_RVAL | (c.XFRM_AE_LVAL if op.current is not None else 0)
    parts = [encode_aevent_id(op.id, flags)]
    replay = op.replay
    if op.esn_window is not None:
        bmp_len = (op.esn_window + 31) // 32
        bitmap = replay.bitmap or (0,) * bmp_len
        if len(bitmap) != bmp_len:
            raise ValueError(f"SA {op.id}: replay bitmap has {len(bitmap)} words, "
                             f"window {op.esn_window} needs {bmp_len}")
        parts.append(attr(c.XFRMA_REPLAY_ESN_VAL, REPLAY_STATE_ESN.pack({
            "bmp_len": bmp_len, "oseq": replay.oseq, "seq": replay.seq, "oseq_hi": replay.oseq_hi,
            "seq_hi": replay.seq_hi, "replay_window": op.esn_window,
        }) + struct.pack(f"={bmp_len}I", *bitmap)))
    else:
        parts.append(attr(c.XFRMA_REPLAY_VAL, REPLAY_STATE.pack({
            "oseq": replay.oseq, "seq": replay.seq,
            "bitmap": replay.bitmap[0] if replay.bitmap else 0})))
    parts.append(current_attr(op.current))
    return b"".join(parts)


def decode_replay_info(payload: bytes | memoryview) -> ops.ReplayInfo:
    """Decode the body of XFRM_MSG_NEWAE (the reply to GETAE)."""
    _require(payload, AEVENT_ID.size, "xfrm_aevent_id")
    attrs = parse_attrs(payload, AEVENT_ID.size)
    replay, esn_window = replay_from(attrs)
    raw = attrs.get(c.XFRMA_LTIME_VAL)
    current = current_from(LIFETIME_CUR.unpack(raw), "") if raw is not None else LifetimeCurrent()
    return ops.ReplayInfo(replay or ReplayState(), current, esn_window)


# --- policies ----------------------------------------------------------------

def template_values(tmpl: Template, family: int) -> dict[str, Any]:
    return {
        "id.daddr": pack_address(tmpl.dst),
        "id.spi": tmpl.spi,
        "id.proto": tmpl.proto,
        "family": tmpl.family or family,
        "saddr": pack_address(tmpl.src),
        "reqid": tmpl.reqid,
        "mode": tmpl.mode,
        "share": tmpl.share,
        "optional": int(tmpl.optional),
        "aalgos": tmpl.aalgos,
        "ealgos": tmpl.ealgos,
        "calgos": tmpl.calgos,
    }


def template_from(values: dict[str, Any]) -> Template:
    family = values["family"]
    return Template(
        src=_optional_address(values["saddr"], family),
        dst=_optional_address(values["id.daddr"], family),
        proto=Proto(values["id.proto"]),
        mode=Mode(values["mode"]),
        reqid=values["reqid"],
        spi=values["id.spi"],
        share=values["share"],
        optional=bool(values["optional"]),
        aalgos=values["aalgos"],
        ealgos=values["ealgos"],
        calgos=values["calgos"],
        family=family or None,
    )


def templates_attr(templates: tuple[Template, ...], family: int) -> bytes:
    if not templates:
        return b""
    return attr(c.XFRMA_TMPL, b"".join(USER_TMPL.pack(template_values(t, family)) for t in templates))


def templates_from(attrs: dict[int, memoryview]) -> tuple[Template, ...]:
    raw = attrs.get(c.XFRMA_TMPL)
    if raw is None:
        return ()
    size = USER_TMPL.size
    return tuple(template_from(USER_TMPL.unpack(raw, offset))
                 for offset in range(0, len(raw) - size + 1, size))


def policy_info_values(policy: Policy) -> dict[str, Any]:
    values = selector_values(policy.selector, "sel")
    values.update(lifetime_values(policy.lifetime, "lft"))
    values.update({
        "priority": policy.priority,
        "index": policy.index,
        "dir": policy.dir,
        "action": policy.action,
        "flags": policy.flags,
        "share": policy.share,
    })
    return values


def encode_policy(policy: Policy) -> bytes:
    """Return the body of XFRM_MSG_NEWPOLICY / UPDPOLICY: xfrm_userpolicy_info and attributes."""
    return (USERPOLICY_INFO.pack(policy_info_values(policy))
            + templates_attr(policy.templates, policy.selector.family)
            + mark_attr(policy.mark)
            + if_id_attr(policy.if_id))


def policy_from(values: dict[str, Any], attrs: dict[int, memoryview], prefix: str = "") -> Policy:
    """Build a Policy from xfrm_userpolicy_info members (under ``prefix``) and attributes."""
    selector = selector_from(values, prefix + "sel")
    if selector is None:
        # A policy always has a family; an all-zero selector means "any".
        selector = Selector.any(values[prefix + "sel.family"] or socket.AF_INET)
    return Policy(
        selector=selector,
        dir=Direction(values[prefix + "dir"]),
        action=Action(values[prefix + "action"]),
        priority=values[prefix + "priority"],
        templates=templates_from(attrs),
        mark=mark_from(attrs),
        if_id=u32_from(attrs, c.XFRMA_IF_ID),
        index=values[prefix + "index"],
        lifetime=lifetime_from(values, prefix + "lft"),
        flags=values[prefix + "flags"],
        share=values[prefix + "share"],
    )


def decode_policy(payload: bytes | memoryview) -> Policy:
    """Decode the body of XFRM_MSG_NEWPOLICY / UPDPOLICY (a reply, dump entry or notification)."""
    _require(payload, USERPOLICY_INFO.size, "xfrm_userpolicy_info")
    return policy_from(USERPOLICY_INFO.unpack(payload), parse_attrs(payload, USERPOLICY_INFO.size))


def policy_id_values(policy_id: PolicyId) -> dict[str, Any]:
    values = selector_values(policy_id.selector, "sel")
    values["index"] = policy_id.index
    values["dir"] = policy_id.dir
    return values


def encode_policy_id(policy_id: PolicyId) -> bytes:
    """Return the body of XFRM_MSG_GETPOLICY / DELPOLICY: xfrm_userpolicy_id and attributes."""
    return (USERPOLICY_ID.pack(policy_id_values(policy_id))
            + mark_attr(policy_id.mark) + if_id_attr(policy_id.if_id))


def policy_id_from(values: dict[str, Any], attrs: dict[int, memoryview]) -> PolicyId:
    selector = selector_from(values, "sel") or Selector.any(values["sel.family"] or socket.AF_INET)
    return PolicyId(selector, Direction(values["dir"]), mark_from(attrs),
                    u32_from(attrs, c.XFRMA_IF_ID), values["index"])


# --- MIGRATE -----------------------------------------------------------------

def migration_values(item: Migration) -> dict[str, Any]:
    return {
        "old_daddr": pack_address(item.old_dst),
        "old_saddr": pack_address(item.old_src),
        "new_daddr": pack_address(item.new_dst),
        "new_saddr": pack_address(item.new_src),
        "proto": item.proto,
        "mode": item.mode,
        "reqid": item.reqid,
        "old_family": socket.AF_INET if item.old_dst.version == 4 else socket.AF_INET6,
        "new_family": socket.AF_INET if item.new_dst.version == 4 else socket.AF_INET6,
    }


def migration_from(values: dict[str, Any]) -> Migration:
    old, new = values["old_family"], values["new_family"]
    return Migration(
        old_src=unpack_address(values["old_saddr"], old),
        old_dst=unpack_address(values["old_daddr"], old),
        new_src=unpack_address(values["new_saddr"], new),
        new_dst=unpack_address(values["new_daddr"], new),
        proto=Proto(values["proto"]),
        mode=Mode(values["mode"]),
        reqid=values["reqid"],
    )


def encode_migrate(op: ops.Migrate) -> bytes:
    """Return the body of XFRM_MSG_MIGRATE: xfrm_userpolicy_id, XFRMA_MIGRATE, XFRMA_ENCAP, XFRMA_IF_ID."""
    if not 1 <= len(op.migrations) <= c.XFRM_MAX_DEPTH:
        raise ValueError(f"{op.describe()}: 1 to {c.XFRM_MAX_DEPTH} migrations per message, "
                         f"not {len(op.migrations)}")
    entries = b"".join(USER_MIGRATE.pack(migration_values(item)) for item in op.migrations)
    parts = [USERPOLICY_ID.pack(policy_id_values(op.policy)), attr(c.XFRMA_MIGRATE, entries)]
    if op.encap is not None:
        parts.append(encap_attr(op.encap))
    parts.append(if_id_attr(op.policy.if_id))
    return b"".join(parts)


def migrations_from(attrs: dict[int, memoryview]) -> tuple[Migration, ...]:
    raw = attrs.get(c.XFRMA_MIGRATE)
    if raw is None:
        return ()
    size = USER_MIGRATE.size
    return tuple(migration_from(USER_MIGRATE.unpack(raw, offset))
                 for offset in range(0, len(raw) - size + 1, size))


# --- requests ----------------------------------------------------------------

REQUEST_ACK = c.NLM_F_REQUEST | c.NLM_F_ACK


def encode_op(op: ops.Op) -> tuple[int, int, bytes]:
    """Return (message type, flags, body) of the request for ``op``.

    Requests that return data (get, allocate SPI, get replay state) are sent
    without NLM_F_ACK, because the kernel replies with the data or an error.
    """
    if isinstance(op, ops.AddSa):
        return (c.XFRM_MSG_UPDSA if op.update else c.XFRM_MSG_NEWSA), REQUEST_ACK, encode_sa(op.sa)
    if isinstance(op, ops.AddPolicy):
        msg_type = c.XFRM_MSG_UPDPOLICY if op.update else c.XFRM_MSG_NEWPOLICY
        return msg_type, REQUEST_ACK, encode_policy(op.policy)
    if isinstance(op, ops.DeleteSa):
        return c.XFRM_MSG_DELSA, REQUEST_ACK, encode_sa_id(op.id)
    if isinstance(op, ops.DeletePolicy):
        return c.XFRM_MSG_DELPOLICY, REQUEST_ACK, encode_policy_id(op.id)
    if isinstance(op, ops.Migrate):
        return c.XFRM_MSG_MIGRATE, REQUEST_ACK, encode_migrate(op)
    if isinstance(op, ops.GetSa):
        return c.XFRM_MSG_GETSA, c.NLM_F_REQUEST, encode_sa_id(op.id)
    if isinstance(op, ops.GetPolicy):
        return c.XFRM_MSG_GETPOLICY, c.NLM_F_REQUEST, encode_policy_id(op.id)
    if isinstance(op, ops.GetReplayState):
        return c.XFRM_MSG_GETAE, c.NLM_F_REQUEST, encode_get_replay(op)
    if isinstance(op, ops.SetReplayState):
        # The kernel accepts NEWAE only as a replacement of existing values.
        return c.XFRM_MSG_NEWAE, REQUEST_ACK | c.NLM_F_REPLACE, encode_set_replay(op)
    if isinstance(op, ops.AllocSpi):
        return c.XFRM_MSG_ALLOCSPI, c.NLM_F_REQUEST, encode_alloc_spi(op)
    if isinstance(op, ops.FlushSas):
        proto = op.proto if op.proto is not None else c.IPSEC_PROTO_ANY
        return c.XFRM_MSG_FLUSHSA, REQUEST_ACK, USERSA_FLUSH.pack({"proto": proto})
    if isinstance(op, ops.FlushPolicies):
        return c.XFRM_MSG_FLUSHPOLICY, REQUEST_ACK, b""
    raise TypeError(f"not an XFRM request: {op!r}")


# Reply message type and decoder for the requests that return data.
REPLY_DECODERS = {
    ops.GetSa: (c.XFRM_MSG_NEWSA, decode_sa),
    ops.AllocSpi: (c.XFRM_MSG_NEWSA, decode_sa),
    ops.GetPolicy: (c.XFRM_MSG_NEWPOLICY, decode_policy),
    ops.GetReplayState: (c.XFRM_MSG_NEWAE, decode_replay_info),
}
