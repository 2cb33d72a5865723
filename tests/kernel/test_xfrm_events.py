"""XFRM notifications from a real kernel, read with xfrm.XfrmEvents in a fresh namespace."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address

import pytest

from tests.lab.netns import Namespace
from xfrm import (
    Acquire,
    Aead,
    Direction,
    Expire,
    Lifetime,
    Migrate,
    Migration,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    SaAdded,
    SaDeleted,
    SaId,
    SaNotFound,
    SecurityAssociation,
    Selector,
    Template,
    XfrmClient,
    XfrmEvents,
)

pytestmark = pytest.mark.lab

LOCAL, PEER = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))
EVENT_TIMEOUT = 60.0  # seconds; the kernel's SA timers tick once a second, slower under TCG


@pytest.fixture
def client(netns: Namespace) -> Iterator[XfrmClient]:
    with netns.entered():
        client = XfrmClient(timeout=60.0)
    yield client
    client.close()


@pytest.fixture
def listener(netns: Namespace) -> Iterator[XfrmEvents]:
    with netns.entered():
        events = XfrmEvents()
    yield events
    events.close()


def wait_for(listener: XfrmEvents, done: Callable[[list], bool]) -> list:
    """Collect events until ``done(events)`` or EVENT_TIMEOUT seconds pass."""
    received: list = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not done(received) and time.monotonic() < deadline:
        received += listener.read(timeout=0.5)
    return received


def test_sa_and_policy_changes_are_announced(client: XfrmClient, listener: XfrmEvents) -> None:
    sa = SecurityAssociation(LOCAL, PEER, 0x501, reqid=5, aead=Aead.aes_gcm(KEY))
    policy = Policy(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT,
                    templates=(Template(LOCAL, PEER, reqid=5),))

    client.add_sa(sa)
    client.add_policy(policy)
    client.delete_policy(policy.id)
    client.delete_sa(sa.id)
    received = wait_for(listener, lambda events: len(events) >= 4)

    assert [type(event) for event in received] == [SaAdded, PolicyAdded, PolicyDeleted, SaDeleted]
    assert received[0].sa.replace(current=None, replay=None) == sa
    assert received[1].policy.id == policy.id
    assert received[3].sa.id == sa.id


def test_expire_soft_then_hard(client: XfrmClient, listener: XfrmEvents) -> None:
    sa = SecurityAssociation(LOCAL, PEER, 0x502, reqid=5, aead=Aead.aes_gcm(KEY),
                             lifetime=Lifetime(soft_add_seconds=1, hard_add_seconds=3))

    client.add_sa(sa)
    received = wait_for(listener, lambda events: any(isinstance(e, Expire) and e.hard
                                                      for e in events))

    expires = [event for event in received if isinstance(event, Expire)]
    assert [event.hard for event in expires] == [False, True]
    assert all(event.sa.id == sa.id for event in expires)
    assert expires[0].sa.lifetime == sa.lifetime
    with pytest.raises(SaNotFound):
        client.get_sa(sa.id)


def test_acquire_for_policy_without_sa(netns: Namespace, client: XfrmClient,
                                       listener: XfrmEvents) -> None:
    netns.batch(["link add dummy0 type dummy", "link set dummy0 up",
                 f"addr add {LOCAL}/24 dev dummy0", "route add 10.2.0.0/24 dev dummy0"])
    policy = Policy(Selector("0.0.0.0/0", "10.2.0.0/24"), Direction.OUT,
                    templates=(Template(LOCAL, PEER, reqid=6),))
    client.add_policy(policy)

    with netns.entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        try:
            sender.sendto(b"trigger", ("10.2.0.10", 9))
        except OSError:
            pass  # the kernel may refuse the packet while it waits for an SA
        received = wait_for(listener, lambda events: any(isinstance(e, Acquire) for e in events))

    acquires = [event for event in received if isinstance(event, Acquire)]
    assert acquires, received
    acquire = acquires[0]
    assert acquire.policy.id == policy.id
    assert acquire.policy.templates == policy.templates
    assert (acquire.src, acquire.dst) == (ip_address(LOCAL), ip_address(PEER))
    assert acquire.selector.dst.network_address == ip_address("10.2.0.10")


def test_migrate_is_announced(client: XfrmClient, listener: XfrmEvents) -> None:
    sa = SecurityAssociation(LOCAL, PEER, 0x503, reqid=7, aead=Aead.aes_gcm(KEY))
    policy = Policy(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT,
                    templates=(Template(LOCAL, PEER, reqid=7),))
    client.add_sa(sa)
    client.add_policy(policy)
    migration = Migration(LOCAL, PEER, "198.51.100.1", PEER, reqid=7)

    client.migrate(policy.id, [migration])
    received = wait_for(listener, lambda events: any(isinstance(e, Migrate) for e in events))

    (event,) = [event for event in received if isinstance(event, Migrate)]
    assert event.policy.selector == policy.selector
    assert event.policy.dir == Direction.OUT
    assert event.migrations == (migration,)
    assert client.get_sa(SaId(PEER, 0x503)).src == ip_address("198.51.100.1")
