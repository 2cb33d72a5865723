"""Benchmark: the cryptographic work of one IKE SA setup with both roles in one process.

One setup is the work that IKE_SA_INIT plus IKE_AUTH with a PSK and one CHILD_SA cause in
agent.ike.crypto and agent.ike.auth. That is two X25519 key pairs and exchanges, two IKE key
derivations and four PSK AUTH computations (each side computes its own and checks the peer's).
Add two AES-GCM-256 encryptions and decryptions of IKE_AUTH-sized messages and two CHILD_SA key
derivations. Message parsing and the state machines are not included, so the result is an upper
bound for the whole daemon.

Run: .venv/bin/python tests/bench/bench_crypto.py [setups]
"""

import os
import sys
import time

from agent.ike import auth, crypto
from agent.ike.constants import DhId, EncrId, PrfId

PSK = b"benchmark shared secret"
IKE_AUTH_PLAINTEXT = bytes(240)  # IDi, AUTH, SA, TSi, TSr of a typical PSK IKE_AUTH request
IKE_SA_INIT = bytes(300)


def one_setup(group, prf, encr):
    # IKE_SA_INIT: both sides generate a key pair and compute g^ir.
    ni, nr = os.urandom(32), os.urandom(32)
    spi_i, spi_r = os.urandom(8), os.urandom(8)
    initiator = group.generate(os.urandom)
    responder = group.generate(os.urandom)
    secret_i = initiator.shared_secret(responder.public_bytes())
    secret_r = responder.shared_secret(initiator.public_bytes())
    keys_i = crypto.derive_ike_keys(prf, encr, None, ni, nr, secret_i, spi_i, spi_r)
    keys_r = crypto.derive_ike_keys(prf, encr, None, ni, nr, secret_r, spi_i, spi_r)

    # IKE_AUTH request: the initiator signs with the PSK and encrypts with SK_ei.
    id_body = b"\x02\x00\x00\x00initiator.example"
    octets_i = auth.signed_octets(IKE_SA_INIT, nr, prf, keys_i.sk_pi, id_body)
    auth_i = auth.psk_auth(prf, PSK, octets_i)
    iv = os.urandom(8)
    header = bytes(32)
    request = encr.encrypt(keys_i.sk_ei, iv, IKE_AUTH_PLAINTEXT + auth_i, header)

    # The responder decrypts, checks AUTH and sends its response.
    encr.decrypt(keys_r.sk_ei, iv, request, header)
    auth.verify_psk(prf, PSK, auth.signed_octets(IKE_SA_INIT, nr, prf, keys_r.sk_pi, id_body), auth_i)
    octets_r = auth.signed_octets(IKE_SA_INIT, ni, prf, keys_r.sk_pr, id_body)
    auth_r = auth.psk_auth(prf, PSK, octets_r)
    response = encr.encrypt(keys_r.sk_er, iv, IKE_AUTH_PLAINTEXT + auth_r, header)

    # The initiator decrypts and checks AUTH; both derive the CHILD_SA keys.
    encr.decrypt(keys_i.sk_er, iv, response, header)
    auth.verify_psk(prf, PSK, auth.signed_octets(IKE_SA_INIT, ni, prf, keys_i.sk_pr, id_body), auth_r)
    crypto.derive_child_keys(prf, keys_i.sk_d, ni, nr, None, 36, 0)
    crypto.derive_child_keys(prf, keys_r.sk_d, ni, nr, None, 36, 0)


def main(setups: int) -> None:
    group = crypto.dh_group_by_id(DhId.CURVE25519)
    prf = crypto.prf_by_id(PrfId.PRF_HMAC_SHA2_256)
    encr = crypto.encryption_by_id(EncrId.ENCR_AES_GCM_16, 256)

    for _ in range(min(200, setups)):  # warm-up
        one_setup(group, prf, encr)

    start = time.perf_counter()
    for _ in range(setups):
        one_setup(group, prf, encr)
    elapsed = time.perf_counter() - start

    print(f"crypto of {setups} IKE SA setups (X25519, PSK, AES-GCM-256, PRF-HMAC-SHA2-256, both roles):")
    print(f"  {elapsed:.3f} s, {setups / elapsed:.0f} setups/s, {1e6 * elapsed / setups:.1f} us per setup")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
