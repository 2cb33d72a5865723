"""Kernel: CHILD_SAs, rekeys, traps, leftovers, events and moves on the fake XFRM backend."""

from __future__ import annotations

import errno
import ipaddress
import json

import pytest

from agent.ike.constants import ProtocolId
from agent.ike.events import ChildSaInfo, Lifetimes, Mode
from agent.ike.payloads import TrafficSelector
from agent.ike.proposal import KernelAlgorithms
from agent.kernel import ChildExpired, Kernel, KernelError, MappingChanged, RekeyDue, TrapTriggered
from agent.kernel_objects import PRIORITY_MAX, PRIORITY_MIN, REQID_MAX, REQID_MIN
from xfrm import FakeXfrm, ops
from xfrm import events as xev
from xfrm.model import (Action, Aead, Direction, Encap, Policy, PolicyId, ReplayState, SaId, SecurityAssociation,
                        Selector, Template)

LOCAL = "192.0.2.10"
REMOTE = "198.51.100.20"
KEY_IN = bytes(range(36))
KEY_OUT = bytes(range(100, 136))
GCM = KernelAlgorithms(aead=("rfc4106(gcm(aes))", 288, 128), enc=None, auth=None, esn=False)


def make_info(kernel: Kernel, *, reqid: int = 1, spi_out: int = 0xC0000001, mode: Mode = Mode.TUNNEL,
              udp_encap: bool = False, local_ts: str = "10.1.0.0/24", remote_ts: str = "10.2.0.0/24",
              local: str = LOCAL, remote: str = REMOTE) -> ChildSaInfo:
    spi_in = kernel.allocate_spi(local, remote)
    port = 4500 if udp_encap else 500
    return ChildSaInfo(
        name="lan", reqid=reqid, protocol=ProtocolId.ESP, spi_in=spi_in, spi_out=spi_out, mode=mode,
        local_addr=local, remote_addr=remote, local_port=port, remote_port=port + (1000 if udp_encap else 0),
        udp_encap=udp_encap, local_ts=(TrafficSelector.from_network(local_ts),),
        remote_ts=(TrafficSelector.from_network(remote_ts),), algorithms=GCM, esn=False, lifetimes=Lifetimes(),
        initiator=True, encr_key_in=KEY_IN, integ_key_in=b"", encr_key_out=KEY_OUT, integ_key_out=b"",
    )


@pytest.fixture
def fake() -> FakeXfrm:
    return FakeXfrm()


@pytest.fixture
def kernel(fake: FakeXfrm, tmp_path) -> Kernel:
    return Kernel(fake, state_dir=tmp_path)


def sa_in(fake: FakeXfrm, spi: int, dst: str = LOCAL) -> SecurityAssociation:
    return fake.get_sa(SaId(dst, spi))


def policies_by_dir(fake: FakeXfrm) -> dict[Direction, list[Policy]]:
    result: dict[Direction, list[Policy]] = {}
    for policy in fake.dump_policies():
        result.setdefault(policy.dir, []).append(policy)
    return result


def test_install_tunnel_child(fake, kernel):
    info = make_info(kernel)

    child = kernel.install_child(7, "site", info)

    inbound, outbound = sa_in(fake, info.spi_in), sa_in(fake, info.spi_out, REMOTE)
    assert (str(inbound.src), str(inbound.dst)) == (REMOTE, LOCAL)
    assert (str(outbound.src), str(outbound.dst)) == (LOCAL, REMOTE)
    assert inbound.aead.key == KEY_IN
    assert outbound.aead.key == KEY_OUT
    assert REQID_MIN < child.reqid <= REQID_MAX
    assert inbound.reqid == outbound.reqid == child.reqid
    by_dir = policies_by_dir(fake)
    assert sorted(by_dir) == [Direction.IN, Direction.OUT, Direction.FWD]
    out = by_dir[Direction.OUT][0]
    assert out.selector == Selector("10.1.0.0/24", "10.2.0.0/24")
    assert out.templates[0].src == ipaddress.ip_address(LOCAL)
    assert out.templates[0].reqid == child.reqid
    assert by_dir[Direction.FWD][0].selector == Selector("10.2.0.0/24", "10.1.0.0/24")
    assert all(PRIORITY_MIN <= p.priority <= PRIORITY_MAX for p in fake.dump_policies())


def test_install_keeps_no_keys(kernel, tmp_path):
    child = kernel.install_child(7, "site", make_info(kernel))

    assert child.inbound.aead is None
    assert child.outbound.aead is None
    state = (tmp_path / "kernel-state.json").read_text()
    assert KEY_IN.hex() not in state
    assert len(json.loads(state)["sas"]) == 2


def test_install_transport_child(fake, kernel):
    info = make_info(kernel, mode=Mode.TRANSPORT, local_ts=LOCAL + "/32", remote_ts=REMOTE + "/32")

    kernel.install_child(7, "site", info)

    by_dir = policies_by_dir(fake)
    assert sorted(by_dir) == [Direction.IN, Direction.OUT]
    assert by_dir[Direction.OUT][0].templates[0].src is None
    assert sa_in(fake, info.spi_in).mode == 0  # XFRM_MODE_TRANSPORT


def test_install_udp_encap(fake, kernel):
    info = make_info(kernel, udp_encap=True)

    kernel.install_child(7, "site", info)

    assert sa_in(fake, info.spi_in).encap == Encap(5500, 4500)
    assert sa_in(fake, info.spi_out, REMOTE).encap == Encap(4500, 5500)


def test_install_ipv4_in_ipv6(fake, kernel):
    info = make_info(kernel, local="2001:db8:1::10", remote="2001:db8:2::10")

    kernel.install_child(7, "site", info)

    assert sa_in(fake, info.spi_in, "2001:db8:1::10").flags & 32  # XFRM_STATE_AF_UNSPEC
    out = policies_by_dir(fake)[Direction.OUT][0]
    assert out.selector.family == 2  # AF_INET selector, AF_INET6 template
    assert out.templates[0].dst == ipaddress.ip_address("2001:db8:2::10")


def test_outbound_failure_removes_inbound(fake, kernel):
    info = make_info(kernel)
    taken = SecurityAssociation(LOCAL, REMOTE, info.spi_out, reqid=5, aead=Aead.aes_gcm(bytes(20)))
    fake.add_sa(taken)  # the outbound SA's id is in use

    with pytest.raises(KernelError, match="outbound SA"):
        kernel.install_child(7, "site", info)

    assert [sa.spi for sa in fake.dump_sas()] == [info.spi_out]
    assert fake.dump_policies() == []
    assert kernel.children == []


def test_inbound_failure_removes_larval(fake, kernel):
    info = make_info(kernel)
    fake.fail_next(ops.AddSa, errno.EINVAL)

    with pytest.raises(KernelError, match="inbound SA"):
        kernel.install_child(7, "site", info)

    assert fake.dump_sas() == []
    assert kernel.children == []


def test_rekey_keeps_policies(fake, kernel):
    old = make_info(kernel)
    kernel.install_child(7, "site", old)
    policies = fake.dump_policies()
    new = make_info(kernel, spi_out=0xC0000002)

    kernel.install_child(7, "site", new)
    kernel.remove_child(old.spi_in)

    assert fake.dump_policies() == policies
    assert {sa.spi for sa in fake.dump_sas()} == {new.spi_in, new.spi_out}


def test_remove_last_child_removes_policies(fake, kernel):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)

    kernel.remove_child(info.spi_in)

    assert fake.dump_sas() == []
    assert fake.dump_policies() == []
    assert kernel.children == []


def test_same_selectors_stack(fake, kernel):
    first = make_info(kernel, reqid=1)
    second = make_info(kernel, reqid=2, spi_out=0xC0000002)
    kernel.install_child(7, "site", first)
    kernel.install_child(8, "site", second)
    second_reqid = kernel.child(second.spi_in).reqid

    kernel.remove_child(second.spi_in)

    out = policies_by_dir(fake)[Direction.OUT]
    assert len(out) == 1
    assert out[0].templates[0].reqid == kernel.child(first.spi_in).reqid != second_reqid


def trap(kernel: Kernel) -> None:
    kernel.install_trap("site", "lan", local=LOCAL, remote=REMOTE, mode=Mode.TUNNEL,
                        local_ts=(TrafficSelector.from_network("10.1.0.0/24"),),
                        remote_ts=(TrafficSelector.from_network("10.2.0.0/24"),))


def test_trap_installs_policies_only(fake, kernel):
    trap(kernel)

    assert fake.dump_sas() == []
    assert len(fake.dump_policies()) == 3
    assert kernel.has_trap("site", "lan")


def test_acquire_on_trap(fake, kernel):
    trap(kernel)
    events = kernel.open_events()
    fake.acquire(PolicyId(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT), LOCAL, REMOTE)

    decisions = kernel.handle_events(events.read())

    assert decisions == [TrapTriggered("site", "lan")]


def test_child_takes_trap_reqid(fake, kernel):
    trap(kernel)
    trap_policies = fake.dump_policies()
    trap_reqid = trap_policies[0].templates[0].reqid
    info = make_info(kernel)

    child = kernel.install_child(7, "site", info)

    assert child.reqid == trap_reqid
    assert sa_in(fake, info.spi_out, REMOTE).reqid == trap_reqid
    kernel.remove_child(info.spi_in)
    assert fake.dump_policies() == trap_policies
    assert kernel.has_trap("site", "lan")
    kernel.remove_trap("site", "lan")
    assert fake.dump_policies() == []


def test_second_child_of_trap_gets_own_reqid(fake, kernel):
    trap(kernel)
    first = kernel.install_child(7, "site", make_info(kernel, reqid=1))
    second_info = make_info(kernel, reqid=2, spi_out=0xC0000002)

    second = kernel.install_child(8, "site", second_info)
    kernel.remove_child(second_info.spi_in)

    assert second.reqid != first.reqid
    assert policies_by_dir(fake)[Direction.OUT][0].templates[0].reqid == first.reqid


def test_trap_returns_after_child_with_own_reqid(fake, kernel):
    trap(kernel)
    trap_policies = fake.dump_policies()
    kernel.install_child(7, "site", make_info(kernel, reqid=1))
    other = make_info(kernel, reqid=2, spi_out=0xC0000002)
    kernel.install_child(8, "site", other)

    kernel.remove_child(kernel.children[0].spi_in)
    kernel.remove_child(other.spi_in)

    assert fake.dump_policies() == trap_policies


def foreign_objects(fake: FakeXfrm) -> tuple[SecurityAssociation, Policy]:
    sa = SecurityAssociation(LOCAL, REMOTE, 0x1234, reqid=5, aead=Aead.aes_gcm(bytes(20)))
    policy = Policy(Selector("10.9.0.0/24", "10.8.0.0/24"), Direction.OUT, priority=PRIORITY_MIN,
                    templates=(Template(LOCAL, REMOTE, reqid=5),))
    fake.add_sa(sa)
    fake.add_policy(policy)
    return sa, policy


def test_leftovers_removed_foreign_kept(fake, tmp_path):
    earlier = Kernel(fake, state_dir=tmp_path)
    earlier.install_child(7, "site", make_info(earlier))
    trap(earlier)
    foreign_objects(fake)

    removed = Kernel(fake, state_dir=tmp_path).remove_leftovers()

    assert removed == (2, 3)
    assert [sa.spi for sa in fake.dump_sas()] == [0x1234]
    assert [p.selector for p in fake.dump_policies()] == [Selector("10.9.0.0/24", "10.8.0.0/24")]


def test_foreign_policy_not_replaced(fake, kernel):
    policy = Policy(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT, priority=100,
                    templates=(Template(LOCAL, REMOTE, reqid=5),))
    fake.add_policy(policy)

    with pytest.raises(KernelError, match="not installed by rmobike"):
        kernel.install_child(7, "site", make_info(kernel))

    assert fake.get_policy(policy.id).priority == 100
    assert fake.dump_sas() == []


def test_remove_all_sweeps_larval(fake, kernel):
    kernel.install_child(7, "site", make_info(kernel))
    trap(kernel)
    kernel.allocate_spi(LOCAL, REMOTE)  # a negotiation that never completed
    foreign_objects(fake)

    kernel.remove_all()

    assert [sa.spi for sa in fake.dump_sas()] == [0x1234]
    assert len(fake.dump_policies()) == 1


def test_soft_expire_asks_rekey(fake, kernel):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)
    events = kernel.open_events()
    fake.expire(SaId(LOCAL, info.spi_in), hard=False)

    assert kernel.handle_events(events.read()) == [RekeyDue(7, info.spi_in)]


def test_hard_expire_reports_child(fake, kernel):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)
    events = kernel.open_events()
    fake.expire(SaId(REMOTE, info.spi_out), hard=True)

    assert kernel.handle_events(events.read()) == [ChildExpired(7, info.spi_in)]


def test_expire_of_unknown_sa_ignored(fake, kernel):
    fake.add_sa(SecurityAssociation(LOCAL, REMOTE, 0x1234, reqid=5, aead=Aead.aes_gcm(bytes(20))))
    events = kernel.open_events()
    fake.expire(SaId(REMOTE, 0x1234), hard=False)

    assert kernel.handle_events(events.read()) == []


def test_mapping_reported(kernel):
    info = make_info(kernel, udp_encap=True)
    kernel.install_child(7, "site", info)
    event = xev.Mapping(SaId(LOCAL, info.spi_in), 1, ipaddress.ip_address(REMOTE), 5500,
                        ipaddress.ip_address("203.0.113.7"), 6000)

    assert kernel.handle_events([event]) == [MappingChanged(7, info.spi_in, "203.0.113.7", 6000)]


def test_counters_from_kernel(fake, kernel):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)
    fake.count_traffic(SaId(LOCAL, info.spi_in), packets=3, size=100, inbound=True)
    fake.count_traffic(SaId(REMOTE, info.spi_out), packets=5, size=50)

    counters = kernel.counters(info.spi_in)

    assert (counters.bytes_in, counters.packets_in) == (300, 3)
    assert (counters.bytes_out, counters.packets_out) == (250, 5)


@pytest.mark.parametrize("migrate", [True, False], ids=["migrate", "replace"])
def test_move_ike_sa_keeps_spis(migrate, tmp_path):
    fake = FakeXfrm(migrate_supported=migrate)
    kernel = Kernel(fake, state_dir=tmp_path)
    info = make_info(kernel)
    kernel.install_child(7, "site", info)
    fake.count_traffic(SaId(REMOTE, info.spi_out), packets=5)

    kernel.move_ike_sa(7, "203.0.113.10", "203.0.113.20")

    inbound = fake.get_sa(SaId("203.0.113.10", info.spi_in))
    outbound = fake.get_sa(SaId("203.0.113.20", info.spi_out))
    assert str(inbound.src) == "203.0.113.20"
    assert outbound.replay.oseq == 5
    assert outbound.aead.key == KEY_OUT
    out = policies_by_dir(fake)[Direction.OUT][0]
    assert out.action == Action.ALLOW
    assert str(out.templates[0].src) == "203.0.113.10"
    child = kernel.child(info.spi_in)
    assert (child.local, child.remote) == ("203.0.113.10", "203.0.113.20")

    kernel.remove_child(info.spi_in)
    assert fake.dump_sas() == []
    assert fake.dump_policies() == []


def test_prepare_inbound_adds_copy(fake, kernel, tmp_path):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)

    assert kernel.prepare_inbound(7, "198.51.100.30") == 1

    recorded = json.loads((tmp_path / "kernel-state.json").read_text())["sas"]
    assert "198.51.100.30" in " ".join(entry["id"] for entry in recorded)
    copy = fake.get_sa(SaId("198.51.100.30", info.spi_in))
    original = fake.get_sa(SaId(LOCAL, info.spi_in))
    assert copy.aead.key == original.aead.key
    assert copy.src == original.src
    assert copy.reqid == original.reqid


def test_move_replaces_prepared_copy(fake, kernel):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)
    fake.count_traffic(SaId(LOCAL, info.spi_in), packets=3)
    kernel.prepare_inbound(7, "198.51.100.30")
    fake.set_replay_state(SaId(LOCAL, info.spi_in), ReplayState(seq=7, bitmap=(0x7F,)))

    kernel.move_ike_sa(7, "198.51.100.30", REMOTE)

    moved = fake.get_sa(SaId("198.51.100.30", info.spi_in))
    assert moved.current.packets == 3  # the original's counters carried over to the copy
    assert moved.replay.seq == 7  # the original's window, further ahead than the copy's
    inbound = policies_by_dir(fake)[Direction.IN][0]
    assert str(inbound.templates[0].dst) == "198.51.100.30"
    assert {(str(sa.dst), sa.spi) for sa in fake.dump_sas()} == {("198.51.100.30", info.spi_in),
                                                                  (REMOTE, info.spi_out)}


def test_drop_prepared_and_remove_child(fake, kernel):
    info = make_info(kernel)
    kernel.install_child(7, "site", info)
    kernel.prepare_inbound(7, "198.51.100.30")

    kernel.drop_prepared(7)
    assert len(fake.dump_sas()) == 2

    kernel.prepare_inbound(7, "198.51.100.30")
    kernel.remove_child(info.spi_in)
    assert fake.dump_sas() == []
