"""Build the kernel's XFRM objects for a CHILD_SA: the two ESP SAs and the policies.

Pure functions from the IKE core's `ChildSaInfo` to `xfrm.model` objects, so that what the
daemon installs can be checked without a kernel. `agent.kernel` installs them.

Per CHILD_SA and per pair of traffic selector prefixes (RFC 7296 §2.9), tunnel mode gets three
policies and transport mode two:

| direction | selector            | template outer addresses |
| --------- | ------------------- | ------------------------ |
| out       | local_ts → remote_ts | local → remote           |
| in        | remote_ts → local_ts | remote → local           |
| fwd       | remote_ts → local_ts | remote → local (tunnel mode only: packets the gateway forwards) |
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agent.ike.events import ChildSaInfo, Mode
from agent.ike.payloads import TrafficSelector
from xfrm import constants as xc
from xfrm.model import (
    Aead,
    Auth,
    Cipher,
    Direction,
    Encap,
    Lifetime,
    Mode as XfrmMode,
    Policy,
    Selector,
    SecurityAssociation,
    Template,
    family_of,
    to_address,
)

logger = logging.getLogger(__name__)

# rmobike's reserved ranges, so that a restarted daemon finds what an earlier run left in the
# kernel and never touches another key manager's objects. Both start at 0x726d ("rm").
REQID_MIN = 0x726D0000
REQID_MAX = 0x726DFFFF
PRIORITY_MIN = 0x726D00
# Policy priorities: lower values win. More specific selectors get lower values, so that a
# narrow CHILD_SA's policy wins over a wide one: 4 steps per prefix bit, then protocol, then
# ports.
PRIORITY_MAX = PRIORITY_MIN + 4 * 256 + 3

FULL_PORT_RANGE = (0, 65535)

MODES = {Mode.TUNNEL: XfrmMode.TUNNEL, Mode.TRANSPORT: XfrmMode.TRANSPORT}


class UnsupportedSelector(ValueError):
    """A negotiated traffic selector that an XFRM selector cannot express."""


def owns_reqid(reqid: int) -> bool:
    return REQID_MIN <= reqid <= REQID_MAX


def owns_policy(policy: Policy) -> bool:
    """Tell whether `policy` is in rmobike's priority range with only rmobike's reqids."""
    if not PRIORITY_MIN <= policy.priority <= PRIORITY_MAX:
        return False
    return all(owns_reqid(template.reqid) for template in policy.templates)


# --- SAs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaOptions:
    """Settings of both SAs of a CHILD_SA that come from the daemon's configuration."""

    reqid: int
    lifetime: Lifetime = Lifetime()
    replay_window: int = 32


def child_sas(info: ChildSaInfo, options: SaOptions) -> tuple[SecurityAssociation, SecurityAssociation]:
    """Return the (inbound, outbound) ESP SAs of a CHILD_SA, with keys."""
    inbound = _sa(info, options, inbound=True)
    outbound = _sa(info, options, inbound=False)
    return inbound, outbound


def _sa(info: ChildSaInfo, options: SaOptions, *, inbound: bool) -> SecurityAssociation:
    local, remote = info.local_addr, info.remote_addr
    src, dst = (remote, local) if inbound else (local, remote)
    spi = info.spi_in if inbound else info.spi_out
    encap = None
    if info.udp_encap:
        # RFC 3948: ESP in UDP between the IKE SA's ports.
        sport, dport = (info.remote_port, info.local_port) if inbound else (info.local_port, info.remote_port)
        # NOTE: transport mode behind a NAT also needs the original address (encap oa) for
        # checksum fix-ups; it is not set.
        encap = Encap(sport, dport)
    return SecurityAssociation(
        src=src,
        dst=dst,
        spi=spi,
        mode=MODES[info.mode],
        reqid=options.reqid,
        encap=encap,
        replay_window=options.replay_window,
        esn=info.esn,
        lifetime=options.lifetime,
        flags=_state_flags(info),
        **_algorithms(info, inbound),
    )


def _state_flags(info: ChildSaInfo) -> int:
    # IPv4 in IPv6 (or the reverse) needs a selector of no family, which the kernel keeps only
    # with XFRM_STATE_AF_UNSPEC; otherwise it narrows the selector to the outer family.
    outer = ipaddress.ip_address(info.local_addr).version
    if any(_ts_version(ts) != outer for ts in (*info.local_ts, *info.remote_ts)):
        return xc.XFRM_STATE_AF_UNSPEC
    return 0


def _ts_version(ts: TrafficSelector) -> int:
    return 4 if len(ts.start_addr) == 4 else 6


def _algorithms(info: ChildSaInfo, inbound: bool) -> dict:
    algorithms = info.algorithms
    encr_key = info.encr_key_in if inbound else info.encr_key_out
    integ_key = info.integ_key_in if inbound else info.integ_key_out
    if algorithms.aead is not None:
        name, _key_bits, icv_bits = algorithms.aead
        return {"aead": Aead(name, encr_key, icv_bits)}
    if algorithms.enc is None:
        raise ValueError(f"CHILD_SA {info.name}: neither AEAD nor encryption algorithm")
    result: dict = {"cipher": Cipher(algorithms.enc[0], encr_key)}
    if algorithms.auth is not None:
        name, _key_bits, trunc_bits = algorithms.auth
        result["auth"] = Auth(name, integ_key, trunc_bits)
    return result


def without_keys(sa: SecurityAssociation) -> SecurityAssociation:
    """Return `sa` without its algorithms, for a record that contains no key."""
    return sa.replace(aead=None, cipher=None, auth=None)


def lifetime_for(rekey_time: float, life_time: float, jitter: float) -> Lifetime:
    """Return the SA lifetime: the soft limit (rekey) at `rekey_time - jitter`, hard at `life_time`.

    Times are seconds since installation; 0 turns a limit off. The kernel reports the soft
    limit as an Expire event, and the daemon then rekeys.
    """
    soft = int(max(1.0, rekey_time - jitter)) if rekey_time > 0 else None
    hard = int(life_time) if life_time > 0 else None
    if soft is not None and hard is not None and soft >= hard:
        soft = max(1, hard - 1)
    return Lifetime(soft_add_seconds=soft, hard_add_seconds=hard)


# --- policies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """The outer addresses and mode that the policy templates of a CHILD_SA name."""

    local: str
    remote: str
    mode: Mode
    reqid: int


def child_policies(endpoints: Endpoints, local_ts: Sequence[TrafficSelector],
                   remote_ts: Sequence[TrafficSelector]) -> list[Policy]:
    """Return the out, in and (tunnel mode) fwd policies for every selector pair.

    Raises UnsupportedSelector when no pair can be expressed. A single pair that cannot be
    (a port range other than one port or all ports) is logged and left out.
    """
    policies: list[Policy] = []
    errors: list[str] = []
    for local, remote in _selector_pairs(local_ts, remote_ts, errors):
        policies += _pair_policies(endpoints, local, remote)
    for error in errors:
        logger.error("reqid %#x: traffic selector left out of the kernel policies: %s", endpoints.reqid, error)
    if not policies:
        raise UnsupportedSelector("; ".join(errors) or "no traffic selector pair of one address family")
    return policies


def _selector_pairs(local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector],
                    errors: list[str]) -> Iterator[tuple[Selector, Selector]]:
    """Yield (out selector, in selector) for each pair of prefixes of the same family."""
    for local in local_ts:
        for remote in remote_ts:
            if _ts_version(local) != _ts_version(remote):
                continue
            try:
                yield from _prefix_pairs(local, remote)
            except UnsupportedSelector as error:
                errors.append(str(error))


def _prefix_pairs(local: TrafficSelector, remote: TrafficSelector) -> Iterator[tuple[Selector, Selector]]:
    proto = _protocol(local, remote)
    local_port = _port(local)
    remote_port = _port(remote)
    for local_net in local.networks():
        for remote_net in remote.networks():
            out = _selector(local_net, remote_net, proto, local_port, remote_port)
            inbound = _selector(remote_net, local_net, proto, remote_port, local_port)
            yield out, inbound


def _protocol(local: TrafficSelector, remote: TrafficSelector) -> int:
    if local.ip_protocol and remote.ip_protocol and local.ip_protocol != remote.ip_protocol:
        raise UnsupportedSelector(f"protocols {local.ip_protocol} and {remote.ip_protocol} differ")
    return local.ip_protocol or remote.ip_protocol


def _port(ts: TrafficSelector) -> tuple[int, int] | None:
    """Return (port, mask) for an XFRM selector, or None for any port."""
    if (ts.start_port, ts.end_port) == FULL_PORT_RANGE:
        return None
    if ts.start_port == ts.end_port:
        return ts.start_port, 0xFFFF
    raise UnsupportedSelector(f"port range {ts.start_port}-{ts.end_port} of {ts} is neither one port nor all")


def _selector(src, dst, proto: int, sport: tuple[int, int] | None, dport: tuple[int, int] | None) -> Selector:
    return Selector(
        src, dst, proto,
        sport=sport[0] if sport else 0, sport_mask=sport[1] if sport else 0,
        dport=dport[0] if dport else 0, dport_mask=dport[1] if dport else 0,
    )


def priority_of(selector: Selector) -> int:
    """Return the policy priority for `selector`: lower (winning) for more specific ones."""
    # IPv4 prefix lengths count as if they were IPv6 ones, so that both share one scale.
    scale = 4 if selector.src.version == 4 else 1
    bits = min(256, (selector.src.prefixlen + selector.dst.prefixlen) * scale)
    return PRIORITY_MIN + 4 * (256 - bits) + (0 if selector.proto else 2) + (
        0 if selector.sport_mask or selector.dport_mask else 1)


def _pair_policies(endpoints: Endpoints, out_selector: Selector, in_selector: Selector) -> list[Policy]:
    mode = MODES[endpoints.mode]
    outbound = _template(endpoints.local, endpoints.remote, mode, endpoints.reqid)
    inbound = _template(endpoints.remote, endpoints.local, mode, endpoints.reqid)
    policies = [
        Policy(out_selector, Direction.OUT, priority=priority_of(out_selector), templates=(outbound,)),
        Policy(in_selector, Direction.IN, priority=priority_of(in_selector), templates=(inbound,)),
    ]
    if endpoints.mode == Mode.TUNNEL:
        policies.append(Policy(in_selector, Direction.FWD, priority=priority_of(in_selector), templates=(inbound,)))
    return policies


def _template(src: str, dst: str, mode: XfrmMode, reqid: int) -> Template:
    if mode == XfrmMode.TUNNEL:
        return Template(src=src, dst=dst, mode=mode, reqid=reqid)
    # Transport mode protects the packet's own addresses; the template names only the family.
    return Template(mode=mode, reqid=reqid, family=family_of(to_address(dst)))


def policy_key(policy: Policy) -> tuple:
    """Return what identifies a policy in the kernel (selector, direction, mark, if_id)."""
    return (policy.selector, policy.dir, policy.mark, policy.if_id)
