"""Input checks of the xfrm dataclasses and the errno-to-exception table."""

from __future__ import annotations

import errno

import pytest

from xfrm import errors
from xfrm.model import (
    Aead,
    Auth,
    Cipher,
    Direction,
    Encap,
    Lifetime,
    Mark,
    Mode,
    Policy,
    PolicyId,
    SaId,
    SecurityAssociation,
    Selector,
    Template,
)


@pytest.mark.parametrize("make, message", [
    (lambda: Aead.aes_gcm(bytes(16)), "20 or 36 bytes"),
    (lambda: Aead.aes_gcm(bytes(20), icv_bits=100), "64, 96 or 128"),
    (lambda: Aead.chacha20_poly1305(bytes(32)), "36 bytes"),
    (lambda: Cipher.aes_cbc(bytes(15)), "16, 24 or 32"),
    (lambda: Auth.hmac_sha2(384, bytes(32)), "48 bytes"),
    (lambda: Auth.hmac_sha2(224, bytes(28)), "256, 384 or 512"),
    (lambda: Aead("x" * 64, b""), "1 to 63 bytes"),
    (lambda: Selector("10.1.0.1/24", "10.2.0.0/24"), "host bits"),
    (lambda: Selector("10.1.0.0/24", "2001:db8::/64"), "mixes IPv4 and IPv6"),
    (lambda: Selector("10.1.0.0/24", "10.2.0.0/24", dport=70000), "destination port 70000"),
    (lambda: SecurityAssociation("192.0.2.1", "2001:db8::1", 1), "mixes IPv4 and IPv6"),
    (lambda: SecurityAssociation("192.0.2.1", "192.0.2.2", 2**32), "SPI 4294967296"),
    (lambda: SecurityAssociation("192.0.2.1", "192.0.2.2", 1, replay_window=5000), "0..4096"),
    (lambda: SecurityAssociation("192.0.2.1", "192.0.2.2", 1, aead=Aead.aes_gcm(bytes(20)),
                                 cipher=Cipher.aes_cbc(bytes(16))), "not both"),
    (lambda: SecurityAssociation("192.0.2.1", "192.0.2.2", 1, flags=128), "esn=True"),
    (lambda: Template("192.0.2.1", None), "both outer addresses"),
    (lambda: Policy(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT,
                    templates=(Template(mode=Mode.TRANSPORT),) * 7), "at most 6 templates"),
    (lambda: Lifetime(hard_bytes=-1), "hard_bytes -1"),
    (lambda: Mark(1 << 32), "mark value"),
    (lambda: Encap(4500, -1), "destination port -1"),
])
def test_invalid_values_are_rejected(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_key_is_not_in_repr() -> None:
    key = bytes.fromhex("00112233445566778899aabbccddeeff01020304")
    sa = SecurityAssociation("192.0.2.1", "192.0.2.2", 1, aead=Aead.aes_gcm(key))

    text = repr(sa)

    assert key.hex() not in text
    assert repr(key) not in text
    assert "rfc4106(gcm(aes))" in text


def test_hmac_sha2_truncation_follows_rfc4868() -> None:
    lengths = {bits: Auth.hmac_sha2(bits, bytes(bits // 8)).trunc_bits for bits in (256, 384, 512)}

    assert lengths == {256: 128, 384: 192, 512: 256}


def test_window_above_32_uses_esn_struct() -> None:
    small = SecurityAssociation("192.0.2.1", "192.0.2.2", 1, replay_window=32)
    large = small.replace(replay_window=33)
    esn = small.replace(esn=True)

    assert (small.uses_esn_struct, large.uses_esn_struct, esn.uses_esn_struct) == (False, True, True)


def test_template_matches_its_sa() -> None:
    sa = SecurityAssociation("192.0.2.1", "192.0.2.2", 1, reqid=4)

    assert Template("192.0.2.1", "192.0.2.2", reqid=4).matches(sa)
    assert Template("192.0.2.1", "192.0.2.2", reqid=0).matches(sa)
    assert not Template("192.0.2.1", "192.0.2.2", reqid=5).matches(sa)
    assert not Template("192.0.2.9", "192.0.2.2", reqid=4).matches(sa)
    assert not Template(mode=Mode.TRANSPORT, family=2).matches(sa)


def test_ids_print_like_ip_xfrm() -> None:
    sa_id = SaId("198.51.100.1", 0x1000, src="192.0.2.1")
    policy_id = PolicyId(Selector("10.1.0.0/16", "10.2.0.0/16", proto=17, dport=53), Direction.FWD,
                         Mark(1, 0xFF), 3)

    assert str(sa_id) == "esp spi 0x00001000 192.0.2.1->198.51.100.1"
    assert str(policy_id) == "policy 10.1.0.0/16->10.2.0.0/16 proto 17 dport 53 dir fwd mark 0x1/0xff if_id 3"


@pytest.mark.parametrize("target, number, expected", [
    ("sa", errno.EEXIST, errors.SaExists),
    ("sa", errno.ESRCH, errors.SaNotFound),
    ("sa", errno.ENOENT, errors.SaNotFound),
    ("policy", errno.EEXIST, errors.PolicyExists),
    ("policy", errno.ENOENT, errors.PolicyNotFound),
    ("sa", errno.EINVAL, errors.InvalidArgument),
    ("policy", errno.EINVAL, errors.InvalidArgument),
    ("sa", errno.ENOSYS, errors.NotSupported),
    ("sa", errno.EPROTONOSUPPORT, errors.NotSupported),
    ("policy", errno.ENOPROTOOPT, errors.NotSupported),
    ("sa", errno.ENOMEM, errors.XfrmError),
    ("policy", errno.EPERM, errors.XfrmError),
])
def test_errno_maps_to_exception(target: str, number: int, expected: type) -> None:
    error = errors.error_for(target, "do something", number)

    assert type(error) is expected
    assert error.errno == number


def test_error_message_names_request_and_kernel_text() -> None:
    error = errors.error_for("sa", "add SA esp spi 0x00000001 192.0.2.1->192.0.2.2", errno.ENOSYS,
                             "Requested AEAD algorithm not found")

    assert str(error) == ("add SA esp spi 0x00000001 192.0.2.1->192.0.2.2: Function not "
                          "implemented (Requested AEAD algorithm not found)")


def test_bulk_error_summarises_failures() -> None:
    first = errors.error_for("policy", "add policy a", errno.EEXIST)
    second = errors.error_for("policy", "add policy b", errno.EINVAL)

    error = errors.BulkError([("a", first), ("b", second)], total=10)

    assert str(error) == "2 of 10 requests failed; first: add policy a: File exists"
    assert error.errno == errno.EEXIST
