"""Decoding of the kernel's XFRM notifications, built here with the kernel's struct layouts."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest

from xfrm import codec, events, ops
from xfrm import constants as c
from xfrm.model import (
    Aead,
    Direction,
    Encap,
    Mark,
    Migration,
    Policy,
    PolicyId,
    Proto,
    SaId,
    SecurityAssociation,
    Selector,
    Template,
)

SA = SecurityAssociation("192.0.2.1", "198.51.100.1", 0x1234, reqid=3, aead=Aead.aes_gcm(bytes(20)),
                         mark=Mark(5), if_id=7, selector=Selector("10.1.0.0/24", "10.2.0.0/24"))
POLICY = Policy(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT, priority=9, index=0x11,
                templates=(Template("192.0.2.1", "198.51.100.1", reqid=3),))


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}.{key}": value for key, value in values.items()}


def test_acquire() -> None:
    values = {
        "id.daddr": codec.pack_address(ip_address("198.51.100.1")),
        "id.proto": c.IPPROTO_ESP,
        "saddr": codec.pack_address(ip_address("192.0.2.1")),
        "seq": 42,
        **codec.selector_values(Selector("10.1.0.5/32", "10.2.0.9/32", proto=17), "sel"),
        **prefixed("policy", codec.policy_info_values(POLICY)),
    }
    body = (codec.USER_ACQUIRE.pack(values)
            + codec.templates_attr(POLICY.templates, socket.AF_INET))

    event = events.decode_event(c.XFRM_MSG_ACQUIRE, body)

    assert event == events.Acquire(POLICY, Selector("10.1.0.5/32", "10.2.0.9/32", proto=17),
                                   ip_address("192.0.2.1"), ip_address("198.51.100.1"),
                                   Proto.ESP, 42)


@pytest.mark.parametrize("hard", [False, True])
def test_expire(hard: bool) -> None:
    values = prefixed("state", codec.sa_info_values(SA))
    values["hard"] = int(hard)
    body = codec.USER_EXPIRE.pack(values) + codec.mark_attr(SA.mark) + codec.if_id_attr(SA.if_id)

    event = events.decode_event(c.XFRM_MSG_EXPIRE, body)

    assert isinstance(event, events.Expire)
    assert event.hard is hard
    assert event.sa.id == SA.id
    assert (event.sa.reqid, event.sa.if_id, event.sa.aead) == (3, 7, None)


def test_policy_expire() -> None:
    values = prefixed("pol", codec.policy_info_values(POLICY))
    values["hard"] = 1
    body = codec.USER_POLEXPIRE.pack(values) + codec.templates_attr(POLICY.templates, socket.AF_INET)

    assert events.decode_event(c.XFRM_MSG_POLEXPIRE, body) == events.PolicyExpire(POLICY, True)


def test_new_and_updated_sa() -> None:
    body = codec.encode_sa(SA)

    added = events.decode_event(c.XFRM_MSG_NEWSA, body)
    updated = events.decode_event(c.XFRM_MSG_UPDSA, body)

    assert added.sa.replace(current=None) == SA
    assert isinstance(updated, events.SaUpdated)


def test_deleted_sa_comes_as_id_and_xfrma_sa() -> None:
    body = (codec.USERSA_ID.pack(codec.sa_id_values(SA.id))
            + codec.attr(c.XFRMA_SA, codec.USERSA_INFO.pack(codec.sa_info_values(SA)))
            + codec.encode_sa(SA)[codec.USERSA_INFO.size:])

    event = events.decode_event(c.XFRM_MSG_DELSA, body)

    assert event.sa.replace(current=None) == SA


def test_deleted_sa_without_xfrma_sa_is_malformed() -> None:
    body = codec.USERSA_ID.pack(codec.sa_id_values(SA.id))

    with pytest.raises(codec.DecodeError, match="without XFRMA_SA"):
        events.decode_event(c.XFRM_MSG_DELSA, body)


def test_deleted_policy() -> None:
    body = (codec.USERPOLICY_ID.pack(codec.policy_id_values(POLICY.id))
            + codec.attr(c.XFRMA_POLICY, codec.USERPOLICY_INFO.pack(codec.policy_info_values(POLICY)))
            + codec.templates_attr(POLICY.templates, socket.AF_INET))

    assert events.decode_event(c.XFRM_MSG_DELPOLICY, body) == events.PolicyDeleted(POLICY)


@pytest.mark.parametrize("proto, expected", [(c.IPPROTO_ESP, Proto.ESP), (0, None),
                                             (c.IPSEC_PROTO_ANY, None)])
def test_flushed_sas(proto: int, expected: Proto | None) -> None:
    body = codec.USERSA_FLUSH.pack({"proto": proto})

    assert events.decode_event(c.XFRM_MSG_FLUSHSA, body) == events.SasFlushed(expected)


def test_flushed_policies() -> None:
    assert events.decode_event(c.XFRM_MSG_FLUSHPOLICY, b"") == events.PoliciesFlushed()


def test_migrate() -> None:
    migration = Migration("192.0.2.1", "198.51.100.1", "203.0.113.7", "198.51.100.1", reqid=3)
    request = codec.encode_migrate(ops.Migrate(POLICY.id, (migration,), Encap(4500, 4500)))

    event = events.decode_event(c.XFRM_MSG_MIGRATE, request)

    assert event == events.Migrate(PolicyId(POLICY.selector, Direction.OUT), (migration,),
                                   Encap(4500, 4500))


def test_mapping() -> None:
    body = codec.USER_MAPPING.pack({
        **prefixed("id", codec.sa_id_values(SaId("192.0.2.1", 0x99))),
        "reqid": 4,
        "old_saddr": codec.pack_address(ip_address("203.0.113.1")),
        "new_saddr": codec.pack_address(ip_address("203.0.113.2")),
        "old_sport": 4500,
        "new_sport": 61000,
    })

    event = events.decode_event(c.XFRM_MSG_MAPPING, body)

    assert event == events.Mapping(SaId("192.0.2.1", 0x99), 4, ip_address("203.0.113.1"), 4500,
                                   ip_address("203.0.113.2"), 61000)


def test_replay_update() -> None:
    body = codec.encode_aevent_id(SaId("192.0.2.1", 0x99, src="198.51.100.1"), c.XFRM_AE_CR)
    body += codec.attr(c.XFRMA_REPLAY_VAL, codec.REPLAY_STATE.pack({"oseq": 1, "seq": 2,
                                                                     "bitmap": 3}))

    event = events.decode_event(c.XFRM_MSG_NEWAE, body)

    assert event.sa == SaId("192.0.2.1", 0x99, src="198.51.100.1")
    assert (event.info.replay.oseq, event.info.replay.seq, event.info.replay.bitmap) == (1, 2, (3,))


def test_truncated_notification_is_malformed() -> None:
    with pytest.raises(codec.DecodeError, match="type 0x18"):
        events.decode_event(c.XFRM_MSG_EXPIRE, bytes(10))
