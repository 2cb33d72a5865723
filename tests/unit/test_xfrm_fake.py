"""FakeXfrm: the kernel's rules and errors, batches, events, and SA moves on the fake."""

from __future__ import annotations

import errno
import select

import pytest

from xfrm import (
    KEEP,
    Action,
    Aead,
    BulkError,
    Direction,
    Encap,
    FakeXfrm,
    InvalidArgument,
    Mark,
    Migration,
    MoveError,
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
    XfrmError,
    events,
    ops,
)
from xfrm import constants as c
from xfrm.model import Cipher, LifetimeCurrent

KEY = bytes(range(20))
LOCAL, REMOTE, NEW_LOCAL = "192.0.2.10", "192.0.2.74", "198.51.100.10"


def make_pair(local: str = LOCAL, remote: str = REMOTE, encap: Encap | None = None):
    """Return (out SA, in SA, {dir: policy}) of one tunnel between ``local`` and ``remote``."""
    out_sa = SecurityAssociation(local, remote, 0x1001, reqid=1, aead=Aead.aes_gcm(KEY), encap=encap)
    in_sa = SecurityAssociation(remote, local, 0x2001, reqid=1, aead=Aead.aes_gcm(KEY), encap=encap,
                                replay_window=64)
    outbound, inbound = Selector("10.1.0.0/24", "10.2.0.0/24"), Selector("10.2.0.0/24", "10.1.0.0/24")
    policies = {
        Direction.OUT: Policy(outbound, Direction.OUT, templates=(Template(local, remote, reqid=1),)),
        Direction.IN: Policy(inbound, Direction.IN, templates=(Template(remote, local, reqid=1),)),
        Direction.FWD: Policy(inbound, Direction.FWD, templates=(Template(remote, local, reqid=1),)),
    }
    return out_sa, in_sa, policies


@pytest.fixture
def fake() -> FakeXfrm:
    return FakeXfrm(clock=lambda: 1_700_000_000)


def install(fake: FakeXfrm, encap: Encap | None = None):
    out_sa, in_sa, policies = make_pair(encap=encap)
    with fake.bulk() as batch:
        batch.add_sa(out_sa)
        batch.add_sa(in_sa)
        for policy in policies.values():
            batch.add_policy(policy)
    return out_sa, in_sa, {d: fake.get_policy(p.id) for d, p in policies.items()}


def moves_to(new_local: str, out_sa, in_sa, policies, encap=KEEP) -> list[SaMove]:
    return [
        SaMove(out_sa, new_local, out_sa.dst, encap, policies=(policies[Direction.OUT],)),
        SaMove(in_sa, in_sa.src, new_local, encap,
               policies=(policies[Direction.IN], policies[Direction.FWD])),
    ]


# --- SAs ---------------------------------------------------------------------------

def test_add_sa_twice_raises_sa_exists(fake: FakeXfrm) -> None:
    sa, _, _ = make_pair()
    fake.add_sa(sa)

    with pytest.raises(SaExists, match=r"add SA esp spi 0x00001001 192.0.2.10->192.0.2.74"):
        fake.add_sa(sa)


def test_same_spi_with_other_mark_is_another_sa(fake: FakeXfrm) -> None:
    sa, _, _ = make_pair()
    fake.add_sa(sa.replace(mark=Mark(1)))
    fake.add_sa(sa.replace(mark=Mark(2)))

    assert fake.get_sa(SaId(sa.dst, sa.spi, mark=Mark(2))).mark == Mark(2)
    assert len(fake.dump_sas()) == 2


@pytest.mark.parametrize("call", ["get_sa", "delete_sa"])
def test_missing_sa_raises_sa_not_found(fake: FakeXfrm, call: str) -> None:
    with pytest.raises(SaNotFound) as raised:
        getattr(fake, call)(SaId("192.0.2.74", 0x99))

    assert raised.value.errno == errno.ESRCH


def test_update_of_missing_sa_raises(fake: FakeXfrm) -> None:
    sa, _, _ = make_pair()

    with pytest.raises(SaNotFound):
        fake.update_sa(sa)


def test_sa_without_cipher_is_invalid(fake: FakeXfrm) -> None:
    with pytest.raises(InvalidArgument, match="ESP needs an encryption algorithm"):
        fake.add_sa(SecurityAssociation(LOCAL, REMOTE, 1))


def test_unknown_algorithm_is_not_supported(fake: FakeXfrm) -> None:
    sa = SecurityAssociation(LOCAL, REMOTE, 1, cipher=Cipher("cbc(serpent)", bytes(16)))

    with pytest.raises(NotSupported) as raised:
        fake.add_sa(sa)

    assert raised.value.errno == errno.ENOSYS


def test_get_sa_returns_counters(fake: FakeXfrm) -> None:
    out_sa, _, _ = install(fake)
    fake.count_traffic(out_sa.id, packets=7, size=100)

    sa = fake.get_sa(out_sa.id)

    assert sa.replay.oseq == 7
    assert sa.current == LifetimeCurrent(700, 7, 1_700_000_000, 1_700_000_000)
    assert sa.aead.key == KEY


def test_alloc_spi_then_update_sa(fake: FakeXfrm) -> None:
    spi = fake.alloc_spi(REMOTE, LOCAL, reqid=1, low=0x100, high=0x200)
    sa = SecurityAssociation(REMOTE, LOCAL, spi, reqid=1, aead=Aead.aes_gcm(KEY))

    with pytest.raises(SaExists):
        fake.add_sa(sa)
    fake.update_sa(sa)

    assert 0x100 <= spi <= 0x200
    assert fake.get_sa(sa.id).aead == sa.aead


def test_alloc_spi_gives_distinct_spis(fake: FakeXfrm) -> None:
    spis = {fake.alloc_spi(REMOTE, LOCAL) for _ in range(5)}

    assert len(spis) == 5


def test_update_cannot_add_encapsulation(fake: FakeXfrm) -> None:
    out_sa, _, _ = install(fake)

    with pytest.raises(InvalidArgument, match="encapsulation"):
        fake.update_sa(out_sa.replace(encap=Encap(4500, 4500)))


def test_replay_state_set_and_get(fake: FakeXfrm) -> None:
    _, in_sa, _ = install(fake)  # window 64: the ESN struct, two bitmap words
    replay = ReplayState(oseq=0, seq=500, bitmap=(0xFFFFFFFF, 1))

    fake.set_replay_state(in_sa.id, replay, LifetimeCurrent(1, 2, 3, 4), esn_window=64)

    info = fake.get_replay_state(in_sa.id)
    assert info.replay == replay
    assert info.current == LifetimeCurrent(1, 2, 3, 4)
    assert info.esn_window == 64


def test_replay_state_of_other_struct_is_ignored(fake: FakeXfrm) -> None:
    _, in_sa, _ = install(fake)
    before = fake.get_replay_state(in_sa.id)

    fake.set_replay_state(in_sa.id, ReplayState(seq=1, bitmap=(1,)))

    assert fake.get_replay_state(in_sa.id) == before


def test_replay_state_of_other_window_is_invalid(fake: FakeXfrm) -> None:
    _, in_sa, _ = install(fake)

    with pytest.raises(InvalidArgument):
        fake.set_replay_state(in_sa.id, ReplayState(seq=1, bitmap=(1, 2, 3)), esn_window=96)


def test_flush_sas(fake: FakeXfrm) -> None:
    install(fake)

    fake.flush_sas()

    assert fake.dump_sas() == []


# --- policies ---------------------------------------------------------------------

def test_add_policy_twice_raises_policy_exists(fake: FakeXfrm) -> None:
    _, _, policies = make_pair()
    fake.add_policy(policies[Direction.OUT])

    with pytest.raises(PolicyExists, match=r"policy 10.1.0.0/24->10.2.0.0/24 dir out"):
        fake.add_policy(policies[Direction.OUT].replace(priority=5))


def test_update_policy_keeps_index(fake: FakeXfrm) -> None:
    _, _, policies = make_pair()
    fake.add_policy(policies[Direction.OUT])
    index = fake.get_policy(policies[Direction.OUT].id).index

    fake.update_policy(policies[Direction.OUT].replace(action=Action.BLOCK))

    policy = fake.get_policy(policies[Direction.OUT].id)
    assert policy.index == index
    assert policy.index & 7 == Direction.OUT
    assert policy.action == Action.BLOCK


def test_policy_identity_includes_mark_and_if_id(fake: FakeXfrm) -> None:
    _, _, policies = make_pair()
    policy = policies[Direction.OUT]
    fake.add_policy(policy)
    fake.add_policy(policy.replace(mark=Mark(1)))
    fake.add_policy(policy.replace(if_id=4))

    fake.delete_policy(policy.replace(mark=Mark(1)).id)

    assert len(fake.dump_policies()) == 2
    with pytest.raises(PolicyNotFound):
        fake.get_policy(policy.replace(mark=Mark(1)).id)


def test_policy_index_must_match_direction(fake: FakeXfrm) -> None:
    _, _, policies = make_pair()

    with pytest.raises(InvalidArgument):
        fake.add_policy(policies[Direction.OUT].replace(index=8))


# --- batches and events -----------------------------------------------------------

def test_batch_reports_each_failed_request(fake: FakeXfrm) -> None:
    out_sa, _, _ = make_pair()
    fake.add_sa(out_sa)

    with pytest.raises(BulkError) as raised:
        with fake.bulk() as batch:
            batch.add_sa(out_sa.replace(spi=5))
            batch.add_sa(out_sa)
            batch.delete_sa(SaId(REMOTE, 77))

    error = raised.value
    assert (error.total, len(error.failures)) == (3, 2)
    assert isinstance(error.failures[0][1], SaExists)
    assert isinstance(error.failures[1][1], SaNotFound)
    assert error.results[0] is None
    assert fake.get_sa(SaId(REMOTE, 5)).spi == 5


def test_fail_next_makes_one_request_fail(fake: FakeXfrm) -> None:
    out_sa, _, _ = make_pair()
    fake.fail_next(ops.AddSa, errno.ENOMEM)

    with pytest.raises(XfrmError) as raised:
        fake.add_sa(out_sa)
    fake.add_sa(out_sa)

    assert raised.value.errno == errno.ENOMEM


def test_events_follow_changes(fake: FakeXfrm) -> None:
    source = fake.events()
    out_sa, _, policies = make_pair()

    fake.add_sa(out_sa)
    fake.add_policy(policies[Direction.OUT])
    fake.delete_sa(out_sa.id)
    readable, _, _ = select.select([source], [], [], 0)
    received = source.read()

    assert readable == [source]
    assert [type(e) for e in received] == [events.SaAdded, events.PolicyAdded, events.SaDeleted]
    assert received[0].sa.spi == out_sa.spi
    source.close()


def test_events_only_from_subscribed_groups(fake: FakeXfrm) -> None:
    source = fake.events(groups=(c.XFRMNLGRP_EXPIRE,))
    out_sa, _, _ = install(fake)

    fake.expire(out_sa.id, hard=False)
    fake.expire(out_sa.id, hard=True)

    received = source.read()
    assert [(type(e), e.hard) for e in received] == [(events.Expire, False), (events.Expire, True)]
    assert received[0].sa.aead is None  # expire messages carry no keys
    with pytest.raises(SaNotFound):
        fake.get_sa(out_sa.id)


def test_acquire_event_names_policy(fake: FakeXfrm) -> None:
    _, _, policies = install(fake)
    source = fake.events()

    fake.acquire(policies[Direction.OUT].id, LOCAL, REMOTE)

    (event,) = source.read()
    assert isinstance(event, events.Acquire)
    assert event.policy.id == policies[Direction.OUT].id
    assert (str(event.src), str(event.dst)) == (LOCAL, REMOTE)


# --- MIGRATE on the fake ----------------------------------------------------------

def test_migrate_moves_sa_and_template(fake: FakeXfrm) -> None:
    out_sa, _, policies = install(fake)

    fake.migrate(policies[Direction.OUT].id,
                 [Migration(LOCAL, REMOTE, NEW_LOCAL, REMOTE, reqid=1)], Encap(4500, 4500))

    moved = fake.get_sa(out_sa.id.__class__(REMOTE, out_sa.spi))
    assert str(moved.src) == NEW_LOCAL
    assert moved.encap == Encap(4500, 4500)
    assert str(fake.get_policy(policies[Direction.OUT].id).templates[0].src) == NEW_LOCAL


def test_migrate_without_policy_raises(fake: FakeXfrm) -> None:
    _, _, policies = make_pair()

    with pytest.raises(PolicyNotFound):
        fake.migrate(policies[Direction.OUT].id, [Migration(LOCAL, REMOTE, NEW_LOCAL, REMOTE)])


def test_migrate_unsupported_raises_not_supported() -> None:
    fake = FakeXfrm(migrate_supported=False)
    _, _, policies = install(fake)

    with pytest.raises(NotSupported) as raised:
        fake.migrate(policies[Direction.OUT].id, [Migration(LOCAL, REMOTE, NEW_LOCAL, REMOTE)])

    assert raised.value.errno == errno.ENOPROTOOPT


# --- moves -------------------------------------------------------------------------

@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_keeps_spi_keys_and_counters(fake: FakeXfrm, method: MoveMethod) -> None:
    out_sa, in_sa, policies = install(fake)
    fake.count_traffic(out_sa.id, packets=40)
    fake.count_traffic(in_sa.id, packets=30, inbound=True)
    before_out, before_in = fake.get_sa(out_sa.id), fake.get_sa(in_sa.id)

    result = fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies), method)

    assert result.methods == (method, method)
    after_out = fake.get_sa(result.sas[0].id)
    after_in = fake.get_sa(result.sas[1].id)
    assert (str(after_out.src), str(after_in.dst)) == (NEW_LOCAL, NEW_LOCAL)
    for before, after in ((before_out, after_out), (before_in, after_in)):
        assert after.spi == before.spi
        assert after.aead == before.aead
        assert after.replay == before.replay
        assert after.current == before.current
    assert len(fake.dump_sas()) == 2


@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_updates_policy_templates(fake: FakeXfrm, method: MoveMethod) -> None:
    out_sa, in_sa, policies = install(fake)

    result = fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies), method)

    installed = {p.dir: p for p in fake.dump_policies()}
    assert str(installed[Direction.OUT].templates[0].src) == NEW_LOCAL
    assert str(installed[Direction.IN].templates[0].dst) == NEW_LOCAL
    assert str(installed[Direction.FWD].templates[0].dst) == NEW_LOCAL
    assert all(p.action == Action.ALLOW for p in installed.values())
    assert {p.id: p for p in result.policies} == {p.id: p for p in installed.values()}


@pytest.mark.parametrize("method", [MoveMethod.MIGRATE, MoveMethod.REPLACE])
def test_move_blocks_outbound_policy_first(fake: FakeXfrm, method: MoveMethod) -> None:
    out_sa, in_sa, policies = install(fake)
    fake.requests.clear()

    fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies), method)

    first = fake.requests[0]
    assert isinstance(first, ops.AddPolicy) and first.update
    assert first.policy.dir == Direction.OUT
    assert first.policy.action == Action.BLOCK
    last_out = [r for r in fake.requests
                if isinstance(r, ops.AddPolicy) and r.policy.dir == Direction.OUT][-1]
    assert last_out.policy.action == Action.ALLOW


def test_move_runs_three_batches_for_many_sas(fake: FakeXfrm) -> None:
    moves = []
    for n in range(50):
        out_sa, in_sa, policies = make_pair()
        out_sa, in_sa = out_sa.replace(spi=0x1000 + n), in_sa.replace(spi=0x2000 + n)
        policies = {d: p.replace(selector=Selector(f"10.1.{n}.0/24", "10.2.0.0/24")
                                 if d == Direction.OUT else Selector("10.2.0.0/24", f"10.1.{n}.0/24"))
                    for d, p in policies.items()}
        with fake.bulk() as batch:
            batch.add_sa(out_sa)
            batch.add_sa(in_sa)
            for policy in policies.values():
                batch.add_policy(policy)
        moves += moves_to(NEW_LOCAL, out_sa, in_sa, policies)
    batches = []
    original = fake.execute
    fake.execute = lambda requests: batches.append(len(requests)) or original(requests)

    result = fake.move(moves)

    assert len(batches) == 3
    assert len(result.sas) == 100


def test_auto_removes_encapsulation_by_replace(fake: FakeXfrm) -> None:
    out_sa, in_sa, policies = install(fake, encap=Encap(4500, 4500))

    result = fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies, encap=None))

    assert result.methods == (MoveMethod.REPLACE, MoveMethod.REPLACE)
    assert all(sa.encap is None for sa in fake.dump_sas())


def test_auto_adds_encapsulation_by_migrate(fake: FakeXfrm) -> None:
    out_sa, in_sa, policies = install(fake)

    result = fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies, encap=Encap(4500, 4500)))

    assert result.methods == (MoveMethod.MIGRATE, MoveMethod.MIGRATE)
    assert all(sa.encap == Encap(4500, 4500) for sa in fake.dump_sas())


def test_forced_migrate_cannot_remove_encapsulation(fake: FakeXfrm) -> None:
    out_sa, in_sa, policies = install(fake, encap=Encap(4500, 4500))
    fake.requests.clear()

    with pytest.raises(NotSupported, match="cannot remove UDP encapsulation"):
        fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies, encap=None), MoveMethod.MIGRATE)

    assert fake.requests == []


def test_auto_without_kernel_migrate_replaces() -> None:
    fake = FakeXfrm(migrate_supported=False)
    out_sa, in_sa, policies = install(fake)

    result = fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies))

    assert result.methods == (MoveMethod.REPLACE, MoveMethod.REPLACE)


def test_move_without_policy_uses_replace(fake: FakeXfrm) -> None:
    out_sa, _, _ = install(fake)

    result = fake.move([SaMove(out_sa, NEW_LOCAL, REMOTE)])

    assert result.methods == (MoveMethod.REPLACE,)
    assert str(fake.get_sa(SaId(REMOTE, out_sa.spi)).src) == NEW_LOCAL


def test_move_with_unrelated_policy_is_rejected(fake: FakeXfrm) -> None:
    out_sa, in_sa, policies = install(fake)

    with pytest.raises(ValueError, match="has no template for it"):
        SaMove(out_sa, NEW_LOCAL, REMOTE, policies=(policies[Direction.IN],))


def test_failed_replace_puts_old_sa_back(fake: FakeXfrm) -> None:
    out_sa, in_sa, policies = install(fake)
    fake.count_traffic(out_sa.id, packets=9)
    # Only the source changes, so the SA id stays: REPLACE deletes first.
    moves = [SaMove(out_sa, NEW_LOCAL, REMOTE, policies=(policies[Direction.OUT],))]
    fake.fail_next(ops.AddSa, errno.ENOMEM)

    with pytest.raises(MoveError) as raised:
        fake.move(moves, MoveMethod.REPLACE)

    result = raised.value.result
    assert len(result.failures) == 1
    assert result.sas[0] == out_sa
    restored = fake.get_sa(out_sa.id)
    assert str(restored.src) == LOCAL
    assert restored.replay.oseq == 9
    policy = fake.get_policy(policies[Direction.OUT].id)
    assert policy.action == Action.ALLOW
    assert str(policy.templates[0].src) == LOCAL


def test_failed_migrate_leaves_others_moved(fake: FakeXfrm) -> None:
    out_sa, in_sa, policies = install(fake)
    fake.fail_next(ops.Migrate, errno.ENOMEM)

    with pytest.raises(MoveError) as raised:
        fake.move(moves_to(NEW_LOCAL, out_sa, in_sa, policies), MoveMethod.MIGRATE)

    result = raised.value.result
    assert [move.sa.spi for move, _ in result.failures] == [out_sa.spi]
    assert str(fake.get_sa(out_sa.id).src) == LOCAL
    assert str(fake.get_sa(SaId(NEW_LOCAL, in_sa.spi)).dst) == NEW_LOCAL
    installed = {p.dir: p for p in fake.dump_policies()}
    assert str(installed[Direction.OUT].templates[0].src) == LOCAL
    assert installed[Direction.OUT].action == Action.ALLOW
    assert str(installed[Direction.IN].templates[0].dst) == NEW_LOCAL


def test_request_that_cannot_be_encoded_runs_nothing(fake: FakeXfrm) -> None:
    out_sa, _, _ = make_pair()
    bad = out_sa.replace(spi=7, replay_window=64, replay=ReplayState(bitmap=(1, 2, 3)))

    with pytest.raises(ValueError, match="needs 2"):
        fake.execute([ops.AddSa(out_sa), ops.AddSa(bad)])

    assert fake.dump_sas() == []


def test_get_sa_without_decoding_checks_existence(fake: FakeXfrm) -> None:
    out_sa, _, _ = install(fake)

    found = fake.run(ops.GetSa(out_sa.id, decode=False))

    assert found is None
    with pytest.raises(SaNotFound):
        fake.run(ops.GetSa(SaId(REMOTE, 0x77), decode=False))
