"""Manager: two gateways in one process, joined by a fake network, on fake kernels and a fake clock.

Gateway A (192.0.2.10, LAN 10.1.0.0/24) initiates to gateway B (198.51.100.20, LAN 10.2.0.0/24).
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.control import CommandError
from agent.ike.sa import IkeSaState
from agent.kernel import Kernel
from agent.manager import NAT_KEEPALIVE, RETRY_INTERVAL, Manager
from agent.netwatch.events import AddressAdded
from agent.netwatch.records import Address
from agent.paths import FixedPaths
from xfrm import FakeXfrm
from xfrm.model import Direction, PolicyId, SaId, Selector

A = "192.0.2.10"
B = "198.51.100.20"
A_INNER = "10.0.0.2"  # A's address behind a NAT, in the NAT tests
A2 = "192.0.2.11"  # second addresses, in the switch tests
B2 = "198.51.100.21"


def config_text(local: str | list[str], remote: str | list[str], local_id: str, remote_id: str, local_ts: str, remote_ts: str, *,
                start_action: str = "none", extra: str = "", agent: str = "") -> str:
    return f"""
[agent]
{agent}
[connections.site]
local_addrs = {json.dumps([local] if isinstance(local, str) else local)}
remote_addrs = {json.dumps([remote] if isinstance(remote, str) else remote)}
{extra}
[connections.site.local]
auth = "psk"
id = "{local_id}"
[connections.site.remote]
auth = "psk"
id = "{remote_id}"
[connections.site.children.lan]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
start_action = "{start_action}"
rekey_time = "1h"
[secrets.site]
id = "{remote_id}"
secret = "0x00112233445566778899aabbccddeeff"
"""


def write_config(path: Path, text: str) -> Config:
    path.write_text(text)
    path.chmod(0o600)
    return load_config(path)


@dataclass
class Datagram:
    data: bytes
    source: tuple[str, int]
    destination: tuple[str, int]


@dataclass
class FakeNetwork:
    """Carries datagrams between managers by address; `nat` rewrites sources (inner -> outer)."""

    now: float = 0.0
    hosts: dict[str, Manager] = field(default_factory=dict)
    in_flight: list[Datagram] = field(default_factory=list)
    sent: list[Datagram] = field(default_factory=list)
    nat: dict[str, str] = field(default_factory=dict)  # inner address -> public address

    def transport(self, observe=None):
        network = self

        class Transport:
            def send(self, data: bytes, local, remote) -> bool:
                if observe is not None:
                    observe(data, local, remote)
                datagram = Datagram(data, local, remote)
                network.sent.append(datagram)
                network.in_flight.append(datagram)
                return True

        return Transport()

    def deliver(self, rounds: int = 50) -> None:
        """Deliver datagrams until none is left (bounded)."""
        for _ in range(rounds):
            if not self.in_flight:
                return
            batch, self.in_flight = self.in_flight, []
            for datagram in batch:
                self._deliver_one(datagram)
        raise AssertionError("datagrams still in flight after %d rounds" % rounds)

    def _deliver_one(self, datagram: Datagram) -> None:
        source = datagram.source
        if source[0] in self.nat:
            source = (self.nat[source[0]], source[1] + 10000)
        destination = datagram.destination
        inner = {public: inner for inner, public in self.nat.items()}
        if destination[0] in inner:
            destination = (inner[destination[0]], destination[1] - 10000)
        host = self.hosts.get(destination[0])
        if host is not None and datagram.data != NAT_KEEPALIVE:
            host.receive_datagram(datagram.data, destination, source)

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer that comes due on the way."""
        end = self.now + seconds
        for _ in range(10000):
            due = [d for d in (m.next_deadline() for m in self.hosts.values()) if d is not None and d <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for manager in self.hosts.values():
                deadline = manager.next_deadline()
                if deadline is not None and deadline <= self.now:
                    manager.handle_timer()
            self.deliver()
        self.now = end


@dataclass
class Pair:
    network: FakeNetwork
    a: Manager
    b: Manager
    fake_a: FakeXfrm
    fake_b: FakeXfrm

    def bring_up(self) -> None:
        self.b.start()
        self.a.start()
        self.network.advance(0)
        self.network.deliver()


def seeded(seed: int):
    generator = random.Random(seed)
    return lambda n: generator.randbytes(n)


def make_pair(tmp_path: Path, *, a_action: str = "start", a_extra: str = "", b_extra: str = "", a_agent: str = "",
              nat: bool = False, observe_b=None, second_addresses: bool = False) -> Pair:
    network = FakeNetwork()
    a_local = A_INNER if nat else A
    a_addresses = [a_local, A2] if second_addresses else [a_local]
    b_addresses = [B, B2] if second_addresses else [B]
    a_config = write_config(tmp_path / "a.toml", config_text(a_addresses, b_addresses, "gw-a", "gw-b", "10.1.0.0/24",
                                                             "10.2.0.0/24", start_action=a_action, extra=a_extra,
                                                             agent=a_agent))
    b_config = write_config(tmp_path / "b.toml", config_text(b_addresses, "192.0.2.0/24", "gw-b", "gw-a", "10.2.0.0/24",
                                                             "10.1.0.0/24", extra=b_extra))
    fake_a, fake_b = FakeXfrm(clock=lambda: 1e9), FakeXfrm(clock=lambda: 1e9)
    kernel_a = Kernel(fake_a, state_dir=tmp_path / "state-a")
    kernel_b = Kernel(fake_b, state_dir=tmp_path / "state-b")
    a = Manager(a_config, kernel=kernel_a, transport=network.transport(), paths=FixedPaths(),
                clock=lambda: network.now, random=seeded(1))
    b = Manager(b_config, kernel=kernel_b, transport=network.transport(observe_b), paths=FixedPaths(),
                clock=lambda: network.now, random=seeded(2))
    network.hosts = {a_local: a, B: b}
    if second_addresses:
        network.hosts.update({A2: a, B2: b})
    if nat:
        network.nat = {A_INNER: A}
    return Pair(network, a, b, fake_a, fake_b)


def only(items):
    assert len(items) == 1, items
    return items[0]


def test_tunnel_comes_up(tmp_path):
    pair = make_pair(tmp_path)

    pair.bring_up()

    sa_a, sa_b = only(pair.a.list_sas()), only(pair.b.list_sas())
    assert sa_a.state == sa_b.state == "ESTABLISHED"
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    child_a, child_b = only(sa_a.children), only(sa_b.children)
    assert child_a.spi_in == child_b.spi_out
    assert child_a.spi_out == child_b.spi_in
    assert child_a.local_ts == ("10.1.0.0/24",)
    assert len(pair.fake_a.dump_sas()) == len(pair.fake_b.dump_sas()) == 2
    assert len(pair.fake_a.dump_policies()) == len(pair.fake_b.dump_policies()) == 3


def test_responder_installs_before_answering(tmp_path):
    sas_at_send = []
    pair = make_pair(tmp_path, observe_b=lambda data, local, remote: sas_at_send.append(len(pair.fake_b.dump_sas())))

    pair.bring_up()

    # B sends the IKE_SA_INIT response (one larval SA at most), then the IKE_AUTH response.
    assert sas_at_send[-1] == 2


def test_list_sas_counters(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()
    child = only(only(pair.a.list_sas()).children)
    pair.fake_a.count_traffic(SaId(B, child.spi_out), packets=4, size=120)

    counted = only(only(pair.a.list_sas()).children)

    assert (counted.packets_out, counted.bytes_out) == (4, 480)
    assert counted.packets_in == 0


def test_shutdown_removes_everything(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()

    pair.a.shutdown()
    pair.network.deliver()
    pair.a.close()

    assert pair.a.idle
    assert pair.b.idle  # the peer got the Delete
    assert pair.fake_a.dump_sas() == pair.fake_b.dump_sas() == []
    assert pair.fake_a.dump_policies() == pair.fake_b.dump_policies() == []


def test_shutdown_without_answer_still_cleans(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()

    pair.a.shutdown()
    pair.network.in_flight.clear()  # the peer never responds
    pair.a.close()

    assert pair.fake_a.dump_sas() == []
    assert pair.fake_a.dump_policies() == []


def test_terminate_deletes_both_sides(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()

    message = pair.a.terminate("site")
    pair.network.deliver()

    assert "deleting 1 IKE SA" in message
    assert pair.a.list_sas() == pair.b.list_sas() == []
    assert pair.fake_b.dump_sas() == []


def test_terminate_errors(tmp_path):
    pair = make_pair(tmp_path, a_action="none")
    pair.bring_up()

    with pytest.raises(CommandError, match="unknown connection 'nowhere'"):
        pair.a.terminate("nowhere")
    with pytest.raises(CommandError, match="has no IKE SA"):
        pair.a.terminate("site")


def test_initiate_command(tmp_path):
    pair = make_pair(tmp_path, a_action="none")
    pair.bring_up()
    assert pair.a.list_sas() == []

    message = pair.a.initiate("site")
    pair.network.deliver()

    assert "initiating 'site'" in message
    assert only(pair.a.list_sas()).state == "ESTABLISHED"
    assert "already has IKE SA" in pair.a.initiate("site")


def test_initiate_without_path(tmp_path):
    pair = make_pair(tmp_path, a_action="none")
    pair.a.paths = FixedPaths({"site": None})

    with pytest.raises(CommandError, match="no usable local address"):
        pair.a.initiate("site")


def test_start_waits_for_path(tmp_path):
    pair = make_pair(tmp_path)
    pair.a.paths = FixedPaths({"site": None})
    pair.bring_up()
    assert pair.a.list_sas() == []
    assert pair.a.next_deadline() == pytest.approx(RETRY_INTERVAL)

    pair.a.paths = FixedPaths()
    pair.network.now = 1.0
    added = AddressAdded(Address(2, ipaddress.ip_address(A), 24, 0, 0))
    pair.a.on_net_events([added])
    pair.network.advance(0)

    assert only(pair.a.list_sas()).state == "ESTABLISHED"


def kernel_addresses(fake: FakeXfrm) -> set[tuple[str, str, int]]:
    return {(str(sa.src), str(sa.dst), sa.spi) for sa in fake.dump_sas()}


def switch_pair(tmp_path: Path) -> Pair:
    pair = make_pair(tmp_path, a_extra="switch = true", b_extra="switch = true", second_addresses=True)
    pair.bring_up()
    return pair


def test_switch_as_initiator(tmp_path):
    pair = switch_pair(tmp_path)
    child = only(only(pair.a.list_sas()).children)

    message = pair.a.switch("site", ipaddress.ip_address(A2))
    pair.network.deliver()

    assert message == f"switching 'site' to {A2}"
    assert only(pair.a.list_sas()).local_address == A2
    assert only(pair.b.list_sas()).remote_address == A2
    assert kernel_addresses(pair.fake_a) == {(B, A2, child.spi_in), (A2, B, child.spi_out)}
    assert kernel_addresses(pair.fake_b) == {(A2, B, child.spi_out), (B, A2, child.spi_in)}
    out = pair.fake_a.get_policy(PolicyId(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT))
    assert str(out.templates[0].src) == A2


def test_switch_as_responder(tmp_path):
    pair = switch_pair(tmp_path)
    assert only(pair.b.list_sas()).switch is True
    child = only(only(pair.b.list_sas()).children)

    pair.b.switch("site", ipaddress.ip_address(B2))
    pair.network.deliver()

    assert only(pair.b.list_sas()).local_address == B2
    assert only(pair.a.list_sas()).remote_address == B2
    assert kernel_addresses(pair.fake_b) == {(A, B2, child.spi_in), (B2, A, child.spi_out)}
    assert kernel_addresses(pair.fake_a) == {(B2, A, child.spi_out), (A, B2, child.spi_in)}


def test_switch_to_foreign_address(tmp_path):
    pair = switch_pair(tmp_path)
    pair.a.paths = FixedPaths(local={A, A2})

    with pytest.raises(CommandError, match="203.0.113.10 is not a usable local address"):
        pair.a.switch("site", ipaddress.ip_address("203.0.113.10"))

    assert only(pair.a.list_sas()).local_address == A


def test_switch_without_sa(tmp_path):
    pair = make_pair(tmp_path, a_action="none")
    pair.bring_up()

    with pytest.raises(CommandError, match="no established IKE SA"):
        pair.a.switch("site", ipaddress.ip_address(A2))


def test_soft_expire_rekeys(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()
    old = only(only(pair.a.list_sas()).children)
    events = pair.a.kernel.open_events()

    pair.fake_a.expire(SaId(A, old.spi_in), hard=False)
    pair.a.on_xfrm_events(events.read())
    pair.network.deliver()

    new_a = only(only(pair.a.list_sas()).children)
    new_b = only(only(pair.b.list_sas()).children)
    assert new_a.spi_in != old.spi_in
    assert new_a.spi_in == new_b.spi_out
    assert {sa.spi for sa in pair.fake_a.dump_sas()} == {new_a.spi_in, new_a.spi_out}
    assert {sa.spi for sa in pair.fake_b.dump_sas()} == {new_b.spi_in, new_b.spi_out}
    assert len(pair.fake_a.dump_policies()) == 3


def test_hard_expire_deletes_child(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()
    child = only(only(pair.a.list_sas()).children)
    events = pair.a.kernel.open_events()

    pair.fake_a.expire(SaId(A, child.spi_in), hard=True)
    pair.a.on_xfrm_events(events.read())
    pair.network.deliver()

    assert only(pair.a.list_sas()).children == ()
    assert only(pair.b.list_sas()).children == ()
    assert pair.fake_a.dump_sas() == pair.fake_b.dump_sas() == []
    assert pair.fake_a.dump_policies() == []


def test_kernel_lifetime_from_config(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()

    for sa in pair.fake_a.dump_sas():
        assert 3240 <= sa.lifetime.soft_add_seconds <= 3600  # rekey_time 1h minus up to rand_time
        assert sa.lifetime.hard_add_seconds == 3960  # life_time: rekey_time + 10 %


def test_trap_initiates_on_acquire(tmp_path):
    pair = make_pair(tmp_path, a_action="trap")
    pair.bring_up()
    assert pair.a.list_sas() == []
    assert pair.fake_a.dump_sas() == []
    trap_out = PolicyId(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT)
    trap_reqid = pair.fake_a.get_policy(trap_out).templates[0].reqid
    events = pair.a.kernel.open_events()

    pair.fake_a.acquire(trap_out, A, B)
    pair.a.on_xfrm_events(events.read())
    pair.network.advance(0)

    assert only(pair.a.list_sas()).state == "ESTABLISHED"
    assert {sa.reqid for sa in pair.fake_a.dump_sas()} == {trap_reqid}
    pair.a.terminate("site")
    pair.network.deliver()
    assert pair.fake_a.get_policy(trap_out).templates[0].reqid == trap_reqid
    assert len(pair.fake_a.dump_policies()) == 3
    assert pair.fake_a.dump_sas() == []


def test_nat_keepalives(tmp_path):
    pair = make_pair(tmp_path, nat=True, a_agent='keep_alive = "20s"')
    pair.bring_up()
    sa = only(pair.a.list_sas())
    assert sa.nat_local is True
    assert only(pair.b.list_sas()).nat_remote is True
    inbound = pair.fake_a.get_sa(SaId(A_INNER, only(sa.children).spi_in))
    assert inbound.encap is not None

    start = len(pair.network.sent)
    pair.network.advance(45)

    keepalives = [d for d in pair.network.sent[start:] if d.data == NAT_KEEPALIVE]
    assert len(keepalives) == 2
    assert {(d.source, d.destination) for d in keepalives} == {((A_INNER, 4500), (B, 4500))}


def test_no_keepalives_without_nat(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()

    start = len(pair.network.sent)
    pair.network.advance(45)

    assert not [d for d in pair.network.sent[start:] if d.data == NAT_KEEPALIVE]


def test_dpd_checks_silent_peer(tmp_path):
    pair = make_pair(tmp_path, a_extra='dpd_delay = "10s"')
    pair.bring_up()
    start = len(pair.network.sent)

    pair.network.advance(25)

    from_a = [d for d in pair.network.sent[start:] if d.source[0] == A]
    assert from_a, "no liveness check sent"
    assert only(pair.a.list_sas()).state == "ESTABLISHED"


def test_dpd_quiet_while_esp_arrives(tmp_path):
    pair = make_pair(tmp_path, a_extra='dpd_delay = "10s"')
    pair.bring_up()
    child = only(only(pair.a.list_sas()).children)
    start = len(pair.network.sent)

    for _ in range(5):
        pair.fake_a.count_traffic(SaId(A, child.spi_in), inbound=True)
        pair.network.advance(5)

    assert [d for d in pair.network.sent[start:] if d.source[0] == A] == []


def test_dead_peer_fails_ike_sa(tmp_path):
    pair = make_pair(tmp_path, a_extra='dpd_delay = "10s"')
    pair.bring_up()
    del pair.network.hosts[B]  # B vanishes without a word

    pair.network.advance(600)

    assert pair.a.list_sas() == []
    assert pair.fake_a.dump_sas() == []


def test_reload_keeps_unchanged(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()
    before = only(pair.a.list_sas())
    text = (tmp_path / "a.toml").read_text()
    same = write_config(tmp_path / "a2.toml", text)

    diff = pair.a.reload(same)
    pair.network.deliver()

    assert diff.unchanged == ("site",)
    assert only(pair.a.list_sas()).spi_i == before.spi_i


def test_reload_restarts_changed(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()
    before = only(pair.a.list_sas())
    text = (tmp_path / "a.toml").read_text().replace("[connections.site.local]", 'dpd_delay = "30s"\n[connections.site.local]')
    changed = write_config(tmp_path / "a2.toml", text)

    diff = pair.a.reload(changed)
    pair.network.advance(0)

    assert diff.changed == ("site",)
    after = only(pair.a.list_sas())
    assert after.spi_i != before.spi_i
    assert after.state == "ESTABLISHED"


def test_reload_removes_connection(tmp_path):
    pair = make_pair(tmp_path)
    pair.bring_up()
    empty = write_config(tmp_path / "empty.toml", "")

    diff = pair.a.reload(empty)
    pair.network.deliver()

    assert diff.removed == ("site",)
    assert pair.a.list_sas() == []
    assert pair.fake_a.dump_sas() == []
    assert pair.a.counts().connections == 0


def test_ike_state_while_connecting(tmp_path):
    pair = make_pair(tmp_path)
    pair.b.start()
    pair.a.start()
    pair.a.handle_timer()  # sends IKE_SA_INIT; nothing is delivered

    assert only(pair.a.list_sas()).state == IkeSaState.CONNECTING.name


def test_trap_waits_for_path(tmp_path):
    pair = make_pair(tmp_path, a_action="trap")
    pair.a.paths = FixedPaths({"site": None})
    pair.bring_up()
    assert pair.fake_a.dump_policies() == []

    pair.a.paths = FixedPaths()
    pair.network.advance(RETRY_INTERVAL)

    assert len(pair.fake_a.dump_policies()) == 3
    assert pair.a.list_sas() == []  # trapped, not initiated


def test_failed_start_retried_per_keyingtries(tmp_path):
    pair = make_pair(tmp_path, a_extra="keyingtries = 2")
    del pair.network.hosts[B]  # nobody answers
    pair.b.start()
    pair.a.start()

    pair.network.advance(1000)

    initiations = {d.data[:8] for d in pair.network.sent if d.source[1] == 500}
    assert len(initiations) == 2  # two IKE SAs, each with its own SPIi
    assert pair.a.list_sas() == []
    assert pair.a.pending == {}


def test_shutdown_answers_no_new_peer(tmp_path):
    pair = make_pair(tmp_path, a_action="none")
    pair.b.start()
    pair.b.shutdown()

    pair.a.initiate("site")
    pair.network.deliver()

    assert pair.b.idle
    assert only(pair.a.list_sas()).state == "CONNECTING"
