"""The manager's handlers of the IKE core's mobility events (MOBIKE, SWITCH_TO_IP_ADDRESS, redirect).

| core event              | action                                                        |
| ----------------------- | ------------------------------------------------------------- |
| IkeSaAddressesChanged   | move every CHILD_SA of the IKE SA in the kernel (`Kernel.move_ike_sa`) |
| PrepareInbound          | copy the inbound SAs to the new local address (`Kernel.prepare_inbound`) |
| SwitchFailed            | remove those copies; the IKE SA stays on its path              |
| SwitchAccepted          | move the CHILD_SAs towards the peer's new address at once      |
| PathUpdateFailed        | move the CHILD_SAs back to the kept path; the IKE SA stays there |
| PeerAddressesChanged    | new probe candidates (`agent.roaming.replan`)                 |
| PathSuspect, IkeSaRedirected | logged (the core probes the candidates itself)           |
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.ike.events import (
    IkeSaAddressesChanged,
    IkeSaRedirected,
    PathSuspect,
    PathUpdateFailed,
    PeerAddressesChanged,
    PrepareInbound,
    SwitchAccepted,
    SwitchFailed,
)
from agent import roaming
from agent.kernel import KernelError
from xfrm.model import Encap
from xfrm.move import KEEP

if TYPE_CHECKING:
    from agent.manager import Manager

logger = logging.getLogger(__name__)


def _path(local: tuple[str, int], remote: tuple[str, int]) -> str:
    return f"{local[0]}:{local[1]} -> {remote[0]}:{remote[1]}"


def on_addresses_changed(manager: "Manager", event: IkeSaAddressesChanged) -> None:
    """Move the IKE SA's CHILD_SAs to its new addresses, keeping SPIs, keys and sequence numbers."""
    log = manager.log_for(event.ike_sa)
    log.update(peer=event.remote)
    log.info("IKE SA moved from %s to %s, reason: %s", _path(event.old_local, event.old_remote),
             _path(event.local, event.remote), event.reason or "unspecified")
    # RFC 3948: ESP in UDP between the IKE SA's ports; move_ike_sa reverses them for inbound SAs.
    encap = Encap(event.local[1], event.remote[1]) if event.udp_encap else None

    def move() -> None:
        try:
            manager.kernel.move_ike_sa(event.ike_sa, event.local[0], event.remote[0], encap)
        except KernelError as error:
            log.error("%s", error)

    if _answering_update(manager, event.ike_sa):
        # The peer moves when our response arrives, so the response goes first. Until our own
        # move, ESP from the peer's new address matches our inbound SA (found by destination
        # and SPI) or the copy that PrepareInbound put at our new address.
        manager.after_send(move)
    else:
        move()


def _answering_update(manager: "Manager", ike_sa: int) -> bool:
    """Tell whether this side is the original responder, which moves while it responds to an update."""
    try:
        return not manager.endpoint.ike_sa(ike_sa).mobike_initiator
    except KeyError:
        return False


def on_prepare_inbound(manager: "Manager", event: PrepareInbound) -> None:
    """Install inbound SAs at the new address before the switch request leaves (the manager
    handles events before it sends), so ESP that the peer sends there early is not dropped."""
    log = manager.log_for(event.ike_sa)
    try:
        count = manager.kernel.prepare_inbound(event.ike_sa, event.local[0])
    except KernelError as error:
        log.error("%s", error)
        count = 0
    log.info("asking the peer to move to %s:%d, %d inbound SAs ready there", event.local[0], event.local[1], count)


def on_switch_accepted(manager: "Manager", event: SwitchAccepted) -> None:
    """Send ESP to the peer's new address as soon as the response that accepts the switch is out.

    The peer prepared inbound SAs there before its request, so ESP need not wait for the update
    exchange. The confirmed move that follows only fixes the encapsulation.
    """
    log = manager.log_for(event.ike_sa)
    log.info("peer moves to %s, sending ESP there now", event.remote[0])

    def move() -> None:
        try:
            manager.kernel.move_ike_sa(event.ike_sa, event.local[0], event.remote[0], KEEP)
        except KernelError as error:
            log.error("%s", error)

    manager.after_send(move)


def on_switch_failed(manager: "Manager", event: SwitchFailed) -> None:
    manager.kernel.drop_prepared(event.ike_sa)
    manager.log_for(event.ike_sa).warning("switch to %s failed: %s", event.local[0], event.reason)


def on_path_update_failed(manager: "Manager", event: PathUpdateFailed) -> None:
    # agent.roaming may have moved the CHILD_SAs before the update's response arrived.
    try:
        manager.kernel.move_ike_sa(event.ike_sa, event.kept_local[0], event.kept_remote[0], KEEP)
    except KernelError as error:
        manager.log_for(event.ike_sa).error("%s", error)
    manager.log_for(event.ike_sa).warning("update to %s failed, staying on %s: %s", _path(event.local, event.remote),
                                          _path(event.kept_local, event.kept_remote), event.reason)


def on_path_suspect(manager: "Manager", event: PathSuspect) -> None:
    # The original initiator's core probes the candidates from agent.roaming by itself.
    manager.log_for(event.ike_sa).info("no response on %s for %.1f s", _path(event.local, event.remote),
                                       event.silent_for)


def on_peer_addresses_changed(manager: "Manager", event: PeerAddressesChanged) -> None:
    manager.log_for(event.ike_sa).info("peer's additional addresses: %s", ", ".join(event.addresses) or "none")
    try:
        sa = manager.endpoint.ike_sa(event.ike_sa)
    except KeyError:
        return
    roaming.replan(manager, sa, manager.now(), "peer's addresses changed", move=False)


def on_redirected(manager: "Manager", event: IkeSaRedirected) -> None:
    log = manager.log_for(event.ike_sa)
    if event.new_ike_sa is None:
        # NOTE: a gateway given as FQDN would need a DNS lookup, which rmobiked does not do.
        log.warning("peer redirected the IKE SA to %s, which is not an IP address; not followed", event.gateway)
        return
    log.info("peer redirected the IKE SA to %s, new IKE SA %d", event.gateway, event.new_ike_sa)
    manager.track(event.new_ike_sa, event.name)


HANDLERS = {
    IkeSaAddressesChanged: on_addresses_changed,
    PrepareInbound: on_prepare_inbound,
    SwitchAccepted: on_switch_accepted,
    SwitchFailed: on_switch_failed,
    PathUpdateFailed: on_path_update_failed,
    PathSuspect: on_path_suspect,
    PeerAddressesChanged: on_peer_addresses_changed,
    IkeSaRedirected: on_redirected,
}
