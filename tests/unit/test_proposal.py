"""Tests for agent.ike.proposal: proposal strings, selection and kernel algorithm names."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ike import crypto
from agent.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from agent.ike.proposal import (
    KEYWORDS,
    Proposal,
    ProposalError,
    Transform,
    child_key_sizes,
    format_proposal,
    ike_algorithms,
    kernel_algorithms,
    parse_proposal,
    parse_proposals,
    select_proposal,
    valid_keywords,
)

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP

ENCR, PRF, INTEG, DH, ESN = (
    TransformType.ENCR,
    TransformType.PRF,
    TransformType.INTEG,
    TransformType.DH,
    TransformType.ESN,
)


def proposal(protocol, *transforms, number=1, spi=b"\x01\x02\x03\x04"):
    return Proposal(number, protocol, spi, tuple(transforms))


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_ike_aead():
    assert parse_proposal("aes256gcm16-prfsha384-x25519", IKE) == [
        Transform(ENCR, EncrId.ENCR_AES_GCM_16, 256),
        Transform(PRF, PrfId.PRF_HMAC_SHA2_384),
        Transform(DH, DhId.CURVE25519),
    ]


def test_parse_ike_cbc_adds_prf_from_integrity():
    assert parse_proposal("aes128-sha256-modp3072", IKE) == [
        Transform(ENCR, EncrId.ENCR_AES_CBC, 128),
        Transform(INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
        Transform(DH, DhId.MODP_3072),
        Transform(PRF, PrfId.PRF_HMAC_SHA2_256),
    ]


def test_parse_ike_explicit_prf_kept():
    transforms = parse_proposal("aes256-sha384-prfsha512-ecp384", IKE)
    assert [t for t in transforms if t.type == PRF] == [Transform(PRF, PrfId.PRF_HMAC_SHA2_512)]


def test_parse_ike_chacha20():
    assert parse_proposal("chacha20poly1305-prfsha256-x25519", IKE) == [
        Transform(ENCR, EncrId.ENCR_CHACHA20_POLY1305),
        Transform(PRF, PrfId.PRF_HMAC_SHA2_256),
        Transform(DH, DhId.CURVE25519),
    ]


def test_parse_ike_several_per_type():
    transforms = parse_proposal("aes128-aes256-sha256-sha1-ecp256-ecp384-ecp521-curve448-modp2048", IKE)
    assert [t.id for t in transforms if t.type == DH] == [
        DhId.ECP_256,
        DhId.ECP_384,
        DhId.ECP_521,
        DhId.CURVE448,
        DhId.MODP_2048,
    ]
    assert [t.id for t in transforms if t.type == PRF] == [PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_HMAC_SHA1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("aes256gcm16", [Transform(ENCR, EncrId.ENCR_AES_GCM_16, 256), Transform(ESN, EsnId.NO_ESN)]),
        ("aes128gcm16-esn", [Transform(ENCR, EncrId.ENCR_AES_GCM_16, 128), Transform(ESN, EsnId.ESN)]),
        (
            "aes256-sha384",
            [
                Transform(ENCR, EncrId.ENCR_AES_CBC, 256),
                Transform(INTEG, IntegId.AUTH_HMAC_SHA2_384_192),
                Transform(ESN, EsnId.NO_ESN),
            ],
        ),
        (
            "aes128-sha256-esn-modp2048",
            [
                Transform(ENCR, EncrId.ENCR_AES_CBC, 128),
                Transform(INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
                Transform(ESN, EsnId.ESN),
                Transform(DH, DhId.MODP_2048),
            ],
        ),
        ("chacha20poly1305-noesn", [Transform(ENCR, EncrId.ENCR_CHACHA20_POLY1305), Transform(ESN, EsnId.NO_ESN)]),
    ],
)
def test_parse_esp(text, expected):
    assert parse_proposal(text, ESP) == expected


def test_parse_aliases_and_case():
    assert parse_proposal("AES128GCM128-PRFSHA256-X25519", IKE) == parse_proposal("aes128gcm16-prfsha256-curve25519", IKE)
    assert parse_proposal("aes-sha1-curve448", IKE) == parse_proposal("aes128-sha-x448", IKE)


def test_parse_duplicate_keyword_kept_once():
    assert parse_proposal("aes256gcm16-aes256gcm16-prfsha256-x25519-curve25519", IKE) == parse_proposal(
        "aes256gcm16-prfsha256-x25519", IKE
    )


def test_parse_unknown_keyword_names_it_and_lists_valid():
    with pytest.raises(ProposalError) as error:
        parse_proposal("aes256gcm16-prfsha384-x25518", IKE)
    message = str(error.value)
    assert "'x25518'" in message
    assert "unknown" in message
    assert "curve25519" in message
    assert "aes128gcm16" in message


def test_parse_keyword_of_other_protocol():
    with pytest.raises(ProposalError, match="'prfsha256' .* not allowed in ESP"):
        parse_proposal("aes256gcm16-prfsha256", ESP)
    with pytest.raises(ProposalError, match="'esn' .* not allowed in IKE"):
        parse_proposal("aes256gcm16-prfsha256-x25519-esn", IKE)


@pytest.mark.parametrize(
    "text, protocol, fragment",
    [
        ("aes256gcm16-x25519", IKE, "needs a PRF"),
        ("aes256-x25519", IKE, "needs an integrity algorithm"),
        ("aes256gcm16-prfsha256", IKE, "key exchange method"),
        ("sha256-prfsha256-x25519", IKE, "no encryption algorithm"),
        ("aes256gcm16-sha256-prfsha256-x25519", IKE, "AEAD"),
        ("aes256gcm16-aes256-sha256-x25519", IKE, "mixes AEAD"),
        ("aes256", ESP, "needs an integrity algorithm"),
        ("aes256gcm16-sha256", ESP, "AEAD"),
        ("", ESP, "empty"),
        ("aes256--sha256", ESP, "empty"),
    ],
)
def test_parse_incomplete_proposals(text, protocol, fragment):
    with pytest.raises(ProposalError, match=fragment):
        parse_proposal(text, protocol)


def test_parse_rejects_ah():
    with pytest.raises(ProposalError, match="IKE or ESP"):
        parse_proposal("sha256", ProtocolId.AH)


def test_parse_proposals_list():
    parsed = parse_proposals("aes256gcm16-prfsha384-x25519,aes128-sha256-modp3072", IKE)
    assert len(parsed) == 2
    assert parsed[1][0] == Transform(ENCR, EncrId.ENCR_AES_CBC, 128)


def test_every_keyword_parses_in_some_proposal():
    for keyword, transform in KEYWORDS.items():
        if transform.type == ENCR:
            suffix = "-prfsha256-x25519" if transform.id != EncrId.ENCR_AES_CBC else "-sha256-x25519"
            assert parse_proposal(keyword + suffix, IKE)[0] == transform
        elif transform.type == ESN:
            assert transform in parse_proposal("aes128gcm16-" + keyword, ESP)
        else:
            assert transform in parse_proposal("aes128-sha256-x25519-" + keyword, IKE)
        assert keyword in valid_keywords(IKE) or keyword in valid_keywords(ESP)


# ---------------------------------------------------------------------------------------------
# Formatting round trip (Hypothesis)


def keywords_of(transform_type, protocol=None):
    return [k for k, t in KEYWORDS.items() if t.type == transform_type]


AEAD_KEYWORDS = [k for k, t in KEYWORDS.items() if t.type == ENCR and t.id != EncrId.ENCR_AES_CBC]
CBC_KEYWORDS = [k for k, t in KEYWORDS.items() if t.type == ENCR and t.id == EncrId.ENCR_AES_CBC]


@st.composite
def proposal_strings(draw):
    protocol = draw(st.sampled_from([IKE, ESP]))
    aead = draw(st.booleans())
    words = draw(st.lists(st.sampled_from(AEAD_KEYWORDS if aead else CBC_KEYWORDS), min_size=1, max_size=3))
    if not aead:
        words += draw(st.lists(st.sampled_from(keywords_of(INTEG)), min_size=1, max_size=3))
    if protocol == IKE:
        words += draw(st.lists(st.sampled_from(keywords_of(PRF)), min_size=1 if aead else 0, max_size=2))
        words += draw(st.lists(st.sampled_from(keywords_of(DH)), min_size=1, max_size=3))
    else:
        words += draw(st.lists(st.sampled_from(keywords_of(DH)), max_size=2))
        words += draw(st.lists(st.sampled_from(keywords_of(ESN)), max_size=2))
    return "-".join(draw(st.permutations(words))), protocol


@settings(max_examples=200)
@given(proposal_strings())
def test_format_parse_round_trip(case):
    text, protocol = case
    transforms = parse_proposal(text, protocol)
    formatted = format_proposal(transforms)
    assert parse_proposal(formatted, protocol) == transforms
    assert format_proposal(parse_proposal(formatted, protocol)) == formatted


def test_format_unknown_transform():
    with pytest.raises(ProposalError, match="no proposal keyword"):
        format_proposal([Transform(ENCR, 3)])


# ---------------------------------------------------------------------------------------------
# Selection


def test_select_first_configured_wins():
    offered = [
        proposal(IKE, *parse_proposal("aes128-sha256-modp3072", IKE), number=1),
        proposal(IKE, *parse_proposal("aes256gcm16-prfsha384-x25519", IKE), number=2),
    ]
    configured = [parse_proposal("aes256gcm16-prfsha384-x25519", IKE), parse_proposal("aes128-sha256-modp3072", IKE)]
    chosen = select_proposal(offered, configured)
    assert chosen.number == 2
    assert chosen.spi == offered[1].spi


def test_select_one_per_type():
    offered = [proposal(IKE, *parse_proposal("aes128gcm16-aes256gcm16-prfsha256-prfsha384-ecp256-x25519", IKE))]
    configured = [parse_proposal("aes256gcm16-aes128gcm16-prfsha384-x25519-ecp256", IKE)]
    chosen = select_proposal(offered, configured)
    assert chosen.transforms == (
        Transform(ENCR, EncrId.ENCR_AES_GCM_16, 256),
        Transform(PRF, PrfId.PRF_HMAC_SHA2_384),
        Transform(DH, DhId.CURVE25519),
    )


def test_select_key_length_must_match():
    offered = [proposal(IKE, *parse_proposal("aes128gcm16-prfsha256-x25519", IKE))]
    assert select_proposal(offered, [parse_proposal("aes256gcm16-prfsha256-x25519", IKE)]) is None


def test_select_none_when_nothing_matches():
    offered = [proposal(IKE, *parse_proposal("aes128-sha1-modp2048", IKE))]
    assert select_proposal(offered, [parse_proposal("aes256gcm16-prfsha384-x25519", IKE)]) is None


def test_select_esp_pfs_required_but_not_offered():
    offered = [proposal(ESP, *parse_proposal("aes256gcm16", ESP))]
    assert select_proposal(offered, [parse_proposal("aes256gcm16-x25519", ESP)]) is None


def test_select_esp_pfs_offered_but_not_configured():
    offered = [proposal(ESP, *parse_proposal("aes256gcm16-x25519", ESP))]
    assert select_proposal(offered, [parse_proposal("aes256gcm16", ESP)]) is None


def test_select_esp_dh_none_offered_matches_no_pfs():
    # RFC 7296 §3.3.6: a DH transform with ID NONE makes PFS optional for the responder.
    offered = [proposal(ESP, *parse_proposal("aes256gcm16-x25519", ESP), Transform(DH, 0))]
    chosen = select_proposal(offered, [parse_proposal("aes256gcm16", ESP)])
    assert chosen.transforms == (
        Transform(ENCR, EncrId.ENCR_AES_GCM_16, 256),
        Transform(DH, 0),
        Transform(ESN, EsnId.NO_ESN),
    )


def test_select_esp_without_esn_transform():
    # A peer that leaves out the ESN type still matches "no ESN", and the selection leaves it out too.
    offered = [proposal(ESP, Transform(ENCR, EncrId.ENCR_AES_GCM_16, 128))]
    chosen = select_proposal(offered, [parse_proposal("aes128gcm16", ESP)])
    assert chosen.transforms == (Transform(ENCR, EncrId.ENCR_AES_GCM_16, 128),)


def test_select_esp_esn_choice():
    offered = [proposal(ESP, *parse_proposal("aes128gcm16-esn-noesn", ESP))]
    chosen = select_proposal(offered, [parse_proposal("aes128gcm16-esn", ESP)])
    assert chosen.esn() == Transform(ESN, EsnId.ESN)


def test_select_accepts_plain_int_ids():
    # Parsed messages may carry plain integers; they compare equal to the enum members.
    offered = [proposal(IKE, Transform(1, 20, 256), Transform(2, 6), Transform(4, 31))]
    chosen = select_proposal(offered, [parse_proposal("aes256gcm16-prfsha384-x25519", IKE)])
    assert chosen is not None
    assert chosen.dh().id == DhId.CURVE25519


def test_proposal_helpers():
    p = proposal(IKE, *parse_proposal("aes128-sha256-modp3072", IKE))
    assert p.encr().key_length == 128
    assert p.integ().id == IntegId.AUTH_HMAC_SHA2_256_128
    assert p.prf().id == PrfId.PRF_HMAC_SHA2_256
    assert p.dh().id == DhId.MODP_3072
    assert p.esn() is None


# ---------------------------------------------------------------------------------------------
# What the negotiated algorithms need


@pytest.mark.parametrize(
    "text, aead, enc, auth, esn",
    [
        ("aes128gcm16", ("rfc4106(gcm(aes))", 160, 128), None, None, False),
        ("aes256gcm16-esn", ("rfc4106(gcm(aes))", 288, 128), None, None, True),
        ("chacha20poly1305", ("rfc7539esp(chacha20,poly1305)", 288, 128), None, None, False),
        ("aes128-sha256", None, ("cbc(aes)", 128), ("hmac(sha256)", 256, 128), False),
        ("aes256-sha384-esn", None, ("cbc(aes)", 256), ("hmac(sha384)", 384, 192), True),
        ("aes256-sha512", None, ("cbc(aes)", 256), ("hmac(sha512)", 512, 256), False),
        ("aes128-sha1", None, ("cbc(aes)", 128), ("hmac(sha1)", 160, 96), False),
    ],
)
def test_kernel_algorithms(text, aead, enc, auth, esn):
    result = kernel_algorithms(proposal(ESP, *parse_proposal(text, ESP)))
    assert result.aead == aead
    assert result.enc == enc
    assert result.auth == auth
    assert result.esn is esn


def test_kernel_algorithms_key_bits_match_child_keys():
    # The kernel key length must equal the keying material derived for the CHILD_SA.
    for text in ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes256-sha512"):
        p = proposal(ESP, *parse_proposal(text, ESP))
        algorithms = kernel_algorithms(p)
        encr_size, integ_size = child_key_sizes(p)
        cipher = algorithms.aead or algorithms.enc
        assert cipher[1] == 8 * encr_size
        assert (algorithms.auth[1] if algorithms.auth else 0) == 8 * integ_size


def test_kernel_algorithms_rejects_ike():
    with pytest.raises(ProposalError, match="only for ESP"):
        kernel_algorithms(proposal(IKE, *parse_proposal("aes256gcm16-prfsha256-x25519", IKE)))


def test_child_key_sizes():
    assert child_key_sizes(proposal(ESP, *parse_proposal("aes256gcm16", ESP))) == (36, 0)
    assert child_key_sizes(proposal(ESP, *parse_proposal("chacha20poly1305", ESP))) == (36, 0)
    assert child_key_sizes(proposal(ESP, *parse_proposal("aes128-sha256", ESP))) == (16, 32)
    assert child_key_sizes(proposal(ESP, *parse_proposal("aes256-sha384", ESP))) == (32, 48)


def test_ike_algorithms():
    algorithms = ike_algorithms(proposal(IKE, *parse_proposal("aes256gcm16-prfsha384-x25519", IKE)))
    assert algorithms.encr is crypto.encryption_by_id(EncrId.ENCR_AES_GCM_16, 256)
    assert algorithms.prf.id == PrfId.PRF_HMAC_SHA2_384
    assert algorithms.integ is None
    assert algorithms.dh.id == DhId.CURVE25519

    cbc = ike_algorithms(proposal(IKE, *parse_proposal("aes128-sha256-modp3072", IKE)))
    assert cbc.integ.id == IntegId.AUTH_HMAC_SHA2_256_128


def test_ike_algorithms_incomplete():
    with pytest.raises(ProposalError, match="lacks"):
        ike_algorithms(proposal(IKE, Transform(ENCR, EncrId.ENCR_AES_GCM_16, 256)))
    with pytest.raises(ProposalError, match="no integrity"):
        ike_algorithms(
            proposal(
                IKE,
                Transform(ENCR, EncrId.ENCR_AES_CBC, 128),
                Transform(PRF, PrfId.PRF_HMAC_SHA2_256),
                Transform(DH, DhId.CURVE25519),
            )
        )
    with pytest.raises(ProposalError, match="key length"):
        ike_algorithms(
            proposal(
                IKE,
                Transform(ENCR, EncrId.ENCR_AES_GCM_16, None),
                Transform(PRF, PrfId.PRF_HMAC_SHA2_256),
                Transform(DH, DhId.CURVE25519),
            )
        )
