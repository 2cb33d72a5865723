"""xfrm against the kernel's XFRM tables in a fresh namespace per test.

SAs and policies installed by xfrm must look right to `ip xfrm`, and those
installed by the `ip xfrm` commands of the unit-test captures must read
back as the SAs and policies the unit tests build. The same sequence of
requests must fail with the same exceptions on the kernel and on FakeXfrm.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netns import Namespace
from tests.unit.test_xfrm_codec import CAPTURED, load_capture
from xfrm import (
    Action,
    Aead,
    BulkError,
    Direction,
    Encap,
    FakeXfrm,
    InvalidArgument,
    Migration,
    MoveMethod,
    NotSupported,
    Policy,
    PolicyExists,
    PolicyNotFound,
    ReplayState,
    SaExists,
    SaId,
    SaMove,
    SaNotFound,
    SecurityAssociation,
    Selector,
    Template,
    XfrmApi,
    XfrmClient,
    XfrmError,
    ops,
)
from xfrm.model import Cipher, LifetimeCurrent, Mode

pytestmark = pytest.mark.lab

KEY = bytes(range(20))
SA_CASES = sorted(name for name, request in CAPTURED.items() if isinstance(request, ops.AddSa))
POLICY_CASES = sorted(name for name, request in CAPTURED.items()
                      if isinstance(request, ops.AddPolicy) and not request.update)


@pytest.fixture
def client(netns: Namespace) -> Iterator[XfrmClient]:
    with netns.entered():
        client = XfrmClient(timeout=120.0)
    yield client
    client.close()


def ip_block(netns: Namespace, kind: str, first_line: str, stats: bool = False) -> str:
    """Return the `ip xfrm <kind>` entry whose first line starts with ``first_line``.

    The entry's lines are joined and its whitespace folded to single spaces.
    ``stats`` adds -s, which shows lifetimes (and prints numbers differently).
    """
    output = netns.run(["ip", *(["-s"] if stats else []), "xfrm", kind]).stdout
    blocks, current = [], []
    for line in output.splitlines():
        if line and not line[0].isspace() and current:
            blocks.append(current)
            current = []
        current.append(line)
    if current:
        blocks.append(current)
    for block in blocks:
        if block[0].strip().startswith(first_line):
            return " ".join(" ".join(block).split())
    raise AssertionError(f"no `ip xfrm {kind}` entry starting with {first_line!r} in:\n{output}")


def expected_sa_text(sa: SecurityAssociation) -> list[str]:
    """Return the pieces of `ip xfrm state` output that ``sa`` must produce.

    The lifetime pieces are in the output of `ip -s xfrm state` only.
    """
    mode = {Mode.TUNNEL: "tunnel", Mode.TRANSPORT: "transport", Mode.BEET: "beet"}[sa.mode]
    pieces = [f"proto esp spi {sa.spi:#010x} reqid {sa.reqid} mode {mode}"]
    if sa.aead is not None:
        pieces.append(f"aead {sa.aead.name} 0x{sa.aead.key.hex()} {sa.aead.icv_bits}")
    if sa.cipher is not None:
        pieces.append(f"enc {sa.cipher.name} 0x{sa.cipher.key.hex()}")
    if sa.auth is not None:
        pieces.append(f"auth-trunc {sa.auth.name} 0x{sa.auth.key.hex()} {sa.auth.trunc_bits}")
    if sa.encap is not None:
        oa = sa.encap.oa or "0.0.0.0"
        pieces.append(f"encap type espinudp sport {sa.encap.sport} dport {sa.encap.dport} addr {oa}")
    if sa.esn:
        pieces.append("flag esn")
    if sa.uses_esn_struct:
        pieces.append(f"replay_window {sa.replay_window}")
    else:
        pieces.append(f"replay-window {sa.replay_window}")
    if sa.mark is not None:
        pieces.append(f"mark {sa.mark.value:#x}/{sa.mark.mask:#x}")
    if sa.if_id:
        pieces.append(f"if_id {sa.if_id:#x}")
    if sa.selector is not None:
        pieces.append(f"sel src {sa.selector.src} dst {sa.selector.dst}")
    if sa.lifetime.hard_bytes is not None:
        pieces.append(f"limit: soft {sa.lifetime.soft_bytes}(bytes), hard {sa.lifetime.hard_bytes}(bytes)")
    if sa.lifetime.hard_add_seconds is not None:
        pieces.append(f"expire add: soft {sa.lifetime.soft_add_seconds}(sec), "
                      f"hard {sa.lifetime.hard_add_seconds}(sec)")
    return pieces


@pytest.mark.parametrize("name", SA_CASES)
def test_sa_shows_in_ip_output(netns: Namespace, client: XfrmClient, name: str) -> None:
    sa = CAPTURED[name].sa

    client.add_sa(sa)

    block = ip_block(netns, "state", f"src {sa.src} dst {sa.dst}")
    block += " " + ip_block(netns, "state", f"src {sa.src} dst {sa.dst}", stats=True)
    for piece in expected_sa_text(sa):
        assert piece in block, f"{piece!r} missing from: {block}"


@pytest.mark.parametrize("name", SA_CASES)
def test_sa_added_by_ip_reads_back(netns: Namespace, client: XfrmClient, name: str) -> None:
    command, _ = load_capture(name)
    expected = CAPTURED[name].sa

    netns.run(shlex.split(command))
    sa = client.get_sa(expected.id)

    assert sa.replace(replay=None, current=None) == expected
    assert sa.current.add_time > 0
    assert sa.replay.oseq == 0


@pytest.mark.parametrize("name", POLICY_CASES)
def test_policy_shows_in_ip_output(netns: Namespace, client: XfrmClient, name: str) -> None:
    policy = CAPTURED[name].policy

    client.add_policy(policy)

    sel = policy.selector
    first = f"src {sel.src} dst {sel.dst}"
    if sel.proto:
        first += f" proto udp dport {sel.dport}"
    block = ip_block(netns, "policy", first)
    assert f"dir {policy.dir.name.lower()} " in block, block
    assert f" priority {policy.priority} " in block, block
    assert (" action block " in block) == (policy.action == Action.BLOCK), block
    for template in policy.templates:
        assert f"tmpl src {template.src} dst {template.dst} proto esp reqid {template.reqid} " \
               f"mode tunnel" in block, block
    if policy.mark is not None:
        assert f"mark {policy.mark.value:#x}/{policy.mark.mask:#x}" in block, block
    if policy.if_id:
        assert f"if_id {policy.if_id:#x}" in block, block


@pytest.mark.parametrize("name", POLICY_CASES)
def test_policy_added_by_ip_reads_back(netns: Namespace, client: XfrmClient, name: str) -> None:
    command, _ = load_capture(name)
    expected = CAPTURED[name].policy

    netns.run(shlex.split(command))
    policy = client.get_policy(expected.id)

    assert policy.replace(index=0) == expected
    assert policy.index & 7 == expected.dir


def test_dump_returns_keys_and_counters(client: XfrmClient) -> None:
    sas = [CAPTURED[name].sa for name in SA_CASES]
    with client.bulk() as batch:
        for sa in sas:
            batch.add_sa(sa)

    dumped = {sa.id: sa for sa in client.dump_sas()}

    assert len(dumped) == len(sas)
    for sa in sas:
        assert dumped[sa.id].replace(replay=None, current=None) == sa
        assert dumped[sa.id].replay is not None


@pytest.mark.parametrize("window, words", [(32, 1), (128, 4)])
def test_replay_state_round_trip(client: XfrmClient, window: int, words: int) -> None:
    sa = SecurityAssociation("192.0.2.1", "198.51.100.1", 0x77, aead=Aead.aes_gcm(KEY),
                             replay_window=window)
    client.add_sa(sa)
    replay = ReplayState(oseq=1000, seq=990, bitmap=(0xF0F0F0F0,) + (0,) * (words - 1))
    current = LifetimeCurrent(bytes=123456, packets=1000, add_time=1700000000,
                              use_time=1700000100)

    client.set_replay_state(sa.id, replay, current, esn_window=window if words > 1 else None)

    info = client.get_replay_state(sa.id)
    assert info.replay == replay
    assert info.current == current
    assert client.get_sa(sa.id).replay == replay


def test_replace_keeps_counters_given_at_add(client: XfrmClient) -> None:
    replay = ReplayState(oseq=5000, seq=4000, oseq_hi=2, seq_hi=2, bitmap=(1, 2, 3, 4))
    current = LifetimeCurrent(bytes=1, packets=2, add_time=1700000000, use_time=1700000001)
    sa = SecurityAssociation("192.0.2.1", "198.51.100.1", 0x78, aead=Aead.aes_gcm(KEY),
                             esn=True, replay_window=128, replay=replay, current=current)

    client.add_sa(sa)

    installed = client.get_sa(sa.id)
    assert installed.replay == replay
    assert installed.current == current


def test_alloc_spi_then_update(client: XfrmClient) -> None:
    spi = client.alloc_spi("198.51.100.1", "192.0.2.1", reqid=3, low=0x1000, high=0x1FFF)
    sa = SecurityAssociation("198.51.100.1", "192.0.2.1", spi, reqid=3, aead=Aead.aes_gcm(KEY))

    with pytest.raises(SaExists):
        client.add_sa(sa)
    client.update_sa(sa)

    assert 0x1000 <= spi <= 0x1FFF
    assert client.get_sa(sa.id).aead == sa.aead


def test_bulk_reports_each_failure(client: XfrmClient) -> None:
    sas = [SecurityAssociation("192.0.2.1", "198.51.100.1", 0x100 + n, aead=Aead.aes_gcm(KEY))
           for n in range(300)]
    client.add_sa(sas[10])
    client.add_sa(sas[250])

    with pytest.raises(BulkError) as raised:
        with client.bulk() as batch:
            for sa in sas:
                batch.add_sa(sa)

    failed = [request.sa.spi for request, error in raised.value.failures]
    assert failed == [0x10A, 0x1FA]
    assert all(isinstance(error, SaExists) for _, error in raised.value.failures)
    assert len(client.dump_sas()) == 300


def test_migrate_probe_matches_kernel_config(client: XfrmClient) -> None:
    config = Path(f"/boot/config-{os.uname().release}")
    if not config.exists():
        pytest.fail(f"{config} is missing, so the expected answer is unknown")

    expected = "CONFIG_XFRM_MIGRATE=y" in config.read_text()

    assert client.features().migrate is expected


# --- the same requests on the kernel and on the fake ---------------------------------

def parity_steps(api: XfrmApi) -> list[str]:
    """Run requests that succeed and fail in known ways; return each outcome's class name."""
    sa = SecurityAssociation("192.0.2.1", "198.51.100.1", 0x300, reqid=2, aead=Aead.aes_gcm(KEY))
    policy = Policy(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT,
                    templates=(Template("192.0.2.1", "198.51.100.1", reqid=2),))
    other = Policy(Selector("10.9.0.0/24", "10.2.0.0/24"), Direction.OUT)
    steps = [
        lambda: api.add_sa(sa),
        lambda: api.add_sa(sa),
        lambda: api.get_sa(SaId("198.51.100.1", 0x301)),
        lambda: api.delete_sa(SaId("198.51.100.1", 0x301)),
        lambda: api.update_sa(sa.replace(spi=0x302)),
        lambda: api.add_sa(sa.replace(spi=0x303, aead=None, cipher=Cipher("cbc(nope)", bytes(16)))),
        lambda: api.add_sa(sa.replace(spi=0x304, aead=None)),
        lambda: api.add_sa(sa.replace(spi=0x305, encap=Encap(4500, 4500))),
        lambda: api.update_sa(sa.replace(encap=Encap(4500, 4500))),
        lambda: api.set_replay_state(sa.id, ReplayState(seq=1, bitmap=(1, 2)), esn_window=64),
        lambda: api.add_sa(sa.replace(spi=0x306, replay_window=64)),
        lambda: api.set_replay_state(SaId("198.51.100.1", 0x306),
                                     ReplayState(seq=1, bitmap=(1, 2, 3)), esn_window=96),
        lambda: api.add_policy(policy),
        lambda: api.add_policy(policy),
        lambda: api.update_policy(policy.replace(priority=7)),
        lambda: api.get_policy(other.id),
        lambda: api.delete_policy(other.id),
        lambda: api.add_policy(other.replace(index=8)),
        lambda: api.migrate(other.id, [Migration("192.0.2.1", "198.51.100.1",
                                                  "203.0.113.1", "198.51.100.1")]),
        lambda: api.migrate(policy.id, [Migration("192.0.2.1", "198.51.100.1",
                                                   "203.0.113.1", "198.51.100.1", reqid=2)]),
        lambda: api.get_sa(SaId("198.51.100.1", 0x300)),
        lambda: api.delete_sa(SaId("198.51.100.1", 0x305)),
        lambda: api.delete_policy(policy.id),
        lambda: api.flush_sas(),
        lambda: api.flush_policies(),
    ]
    outcomes = []
    for step in steps:
        try:
            step()
            outcomes.append("ok")
        except XfrmError as error:
            outcomes.append(type(error).__name__)
    return outcomes


def test_errors_match_fake(client: XfrmClient) -> None:
    kernel = parity_steps(client)
    fake = parity_steps(FakeXfrm())

    assert kernel == fake
    assert kernel == [
        "ok", SaExists.__name__, SaNotFound.__name__, SaNotFound.__name__, SaNotFound.__name__,
        NotSupported.__name__, InvalidArgument.__name__, "ok", InvalidArgument.__name__,
        "ok", "ok", InvalidArgument.__name__,
        "ok", PolicyExists.__name__, "ok", PolicyNotFound.__name__,
        PolicyNotFound.__name__, InvalidArgument.__name__, PolicyNotFound.__name__, "ok", "ok",
        "ok", "ok", "ok", "ok",
    ]


# --- moves in the kernel -------------------------------------------------------------

def install_pairs(api: XfrmApi, count: int) -> list[tuple[SecurityAssociation, SecurityAssociation,
                                                           dict[Direction, Policy]]]:
    pairs = []
    with api.bulk() as batch:
        for n in range(count):
            local_lan, remote_lan = f"10.1.{n}.0/24", "10.2.0.0/16"
            out_sa = SecurityAssociation("192.0.2.1", "198.51.100.1", 0x1000 + n, reqid=n + 1,
                                         aead=Aead.aes_gcm(KEY))
            in_sa = SecurityAssociation("198.51.100.1", "192.0.2.1", 0x2000 + n, reqid=n + 1,
                                        aead=Aead.aes_gcm(KEY), replay_window=256)
            policies = {
                Direction.OUT: Policy(Selector(local_lan, remote_lan), Direction.OUT,
                                      templates=(Template("192.0.2.1", "198.51.100.1", reqid=n + 1),)),
                Direction.IN: Policy(Selector(remote_lan, local_lan), Direction.IN,
                                     templates=(Template("198.51.100.1", "192.0.2.1", reqid=n + 1),)),
                Direction.FWD: Policy(Selector(remote_lan, local_lan), Direction.FWD,
                                      templates=(Template("198.51.100.1", "192.0.2.1", reqid=n + 1),)),
            }
            batch.add_sa(out_sa)
            batch.add_sa(in_sa)
            for policy in policies.values():
                batch.add_policy(policy)
            pairs.append((out_sa, in_sa, policies))
    return pairs


def pair_moves(pairs, new_local: str, encap=None) -> list[SaMove]:
    moves = []
    for out_sa, in_sa, policies in pairs:
        moves.append(SaMove(out_sa, new_local, out_sa.dst, encap,
                            policies=(policies[Direction.OUT],)))
        moves.append(SaMove(in_sa, in_sa.src, new_local, encap,
                            policies=(policies[Direction.IN], policies[Direction.FWD])))
    return moves


@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_many_pairs(client: XfrmClient, method: MoveMethod) -> None:
    pairs = install_pairs(client, 40)
    for out_sa, in_sa, _ in pairs:
        client.set_replay_state(out_sa.id, ReplayState(oseq=out_sa.spi, bitmap=(0,)))
    encap = Encap(4500, 4500)

    result = client.move(pair_moves(pairs, "203.0.113.1", encap), method)

    assert set(result.methods) == {method}
    sas = client.dump_sas()
    assert len(sas) == 80
    for sa in sas:
        assert "203.0.113.1" in (str(sa.src), str(sa.dst)), sa
        assert sa.encap == encap
        if str(sa.src) == "203.0.113.1":
            assert sa.replay.oseq == sa.spi
    policies = client.dump_policies()
    assert len(policies) == 120
    for policy in policies:
        assert policy.action == Action.ALLOW
        template = policy.templates[0]
        assert "203.0.113.1" in (str(template.src), str(template.dst)), policy


class RecordingClient(XfrmClient):
    """An XfrmClient that runs ``probe`` after each batch, to look at the kernel mid-move."""

    def __init__(self, probe, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probe = probe
        self.seen: list[str] = []

    def execute(self, requests):
        results = super().execute(requests)
        self.seen.append(self.probe())
        return results


@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_blocks_outbound_policy_until_done(netns: Namespace, method: MoveMethod) -> None:
    with netns.entered():
        client = RecordingClient(lambda: netns.run(["ip", "xfrm", "policy"]).stdout, timeout=120.0)
    with client:
        pairs = install_pairs(client, 1)
        client.features()
        client.seen.clear()

        client.move(pair_moves(pairs, "203.0.113.1"), method)

    after_guard, after_move, after_finish = client.seen
    out_policy = "src 10.1.0.0/24 dst 10.2.0.0/16"
    assert "action block" in after_guard
    assert "action block" in after_move
    assert "action block" not in after_finish
    assert out_policy in after_finish
    assert after_finish.count("tmpl src 203.0.113.1") == 1


def test_move_missing_sa_fails_and_unblocks(client: XfrmClient) -> None:
    pairs = install_pairs(client, 1)
    out_sa, _, policies = pairs[0]
    client.delete_sa(out_sa.id)

    with pytest.raises(XfrmError) as raised:
        client.move([SaMove(out_sa, "203.0.113.1", out_sa.dst,
                            policies=(policies[Direction.OUT],))], MoveMethod.MIGRATE)

    assert isinstance(raised.value.failures[0][1], SaNotFound)
    policy = client.get_policy(policies[Direction.OUT].id)
    assert policy.action == Action.ALLOW
    assert str(policy.templates[0].src) == "192.0.2.1"


def test_unknown_algorithm_error_carries_kernel_text(client: XfrmClient) -> None:
    sa = SecurityAssociation("192.0.2.1", "198.51.100.1", 0x400,
                             cipher=Cipher("cbc(nope)", bytes(16)))

    with pytest.raises(NotSupported) as raised:
        client.add_sa(sa)

    assert raised.value.errno == errno.ENOSYS
    assert "esp spi 0x00000400 192.0.2.1->198.51.100.1" in str(raised.value)
