"""The Daemon's asyncio runtime on the fake XFRM backend: start, control socket, timers, shutdown.

The daemon runs in the test's event loop with its real sockets (on free high ports, without the
per-socket XFRM policies, which need CAP_NET_ADMIN), its real netlink watcher, FakeXfrm, and
fixed paths between loopback addresses.
"""

from __future__ import annotations

import asyncio
import functools
import socket

import pytest

from agent import daemon as daemon_module
from agent import sockets as sockets_module
from agent.config import load_config
from agent.control import CommandFailed, ControlClient
from agent.daemon import Daemon
from agent.paths import FixedPaths
from xfrm import FakeXfrm
from xfrm.model import Direction, PolicyId, Selector

CONFIG = """
[agent]
control_socket = "{workdir}/control.sock"
state_dir = "{workdir}/state"
port = {port}
port_nat_t = {natt_port}

[connections.site]
local_addrs = ["127.0.0.1"]
remote_addrs = ["127.0.0.2"]
remote_port = {port}
[connections.site.local]
auth = "psk"
id = "gw-a"
[connections.site.remote]
auth = "psk"
id = "gw-b"
[connections.site.children.lan]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
start_action = "trap"
[secrets.site]
id = "gw-b"
secret = "0x00112233445566778899aabbccddeeff"
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def fake_kernel(monkeypatch) -> FakeXfrm:
    fake = FakeXfrm()
    monkeypatch.setattr(daemon_module, "XfrmClient", lambda: fake)
    monkeypatch.setattr(daemon_module, "IkeSockets",
                        functools.partial(sockets_module.IkeSockets, bypass=False))
    # Path choice skips loopback addresses, which are all this test has.
    monkeypatch.setattr(daemon_module, "KernelPaths", lambda *args: FixedPaths())
    return fake


@pytest.fixture
def config(tmp_path):
    port, natt_port = free_ports(2)
    path = tmp_path / "rmobike.toml"
    path.write_text(CONFIG.format(workdir=tmp_path, port=port, natt_port=natt_port))
    path.chmod(0o600)
    return load_config(path)


async def call(config, command: str, **args):
    client = ControlClient(config.agent.control_socket, timeout=5.0)
    return await asyncio.to_thread(client.call, command, args)


async def wait_for_socket(config, daemon: Daemon, task: asyncio.Task) -> None:
    for _ in range(500):
        if task.done():
            raise AssertionError(f"daemon stopped early with {task.result()}")
        if config.agent.control_socket.exists() and daemon.manager is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("control socket did not appear")


def test_daemon_serves_and_stops(fake_kernel, config):
    async def scenario():
        daemon = Daemon(config.path, config)
        task = asyncio.create_task(daemon.run())
        await wait_for_socket(config, daemon, task)

        status = await call(config, "status")
        trap_policies = len(fake_kernel.dump_policies())
        initiated = await call(config, "initiate", name="site")
        sas = await call(config, "list-sas")
        with pytest.raises(CommandFailed, match="no established IKE SA"):
            await call(config, "switch", name="site", to="127.0.0.3")

        daemon._stop.set()
        return status, trap_policies, initiated, sas, await asyncio.wait_for(task, 10.0)

    status, trap_policies, initiated, sas, exit_status = asyncio.run(scenario())

    assert status["connections"] == 1
    assert trap_policies == 3
    assert initiated.startswith("initiating 'site'")
    assert sas["ike_sas"][0]["state"] == "CONNECTING"
    assert exit_status == 0
    assert fake_kernel.dump_policies() == []
    assert fake_kernel.dump_sas() == []
    assert not config.agent.control_socket.exists()


def test_acquire_starts_initiation(fake_kernel, config):
    async def scenario():
        daemon = Daemon(config.path, config)
        task = asyncio.create_task(daemon.run())
        await wait_for_socket(config, daemon, task)

        fake_kernel.acquire(PolicyId(Selector("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT), "127.0.0.1", "127.0.0.2")
        for _ in range(200):
            sas = await call(config, "list-sas")
            if sas["ike_sas"]:
                break
            await asyncio.sleep(0.01)
        daemon._stop.set()
        await asyncio.wait_for(task, 10.0)
        return sas

    sas = asyncio.run(scenario())

    assert [sa["name"] for sa in sas["ike_sas"]] == ["site"]


def test_port_in_use_fails_start(fake_kernel, config):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", config.agent.port))

        exit_status = asyncio.run(Daemon(config.path, config).run())

    assert exit_status == 1
    assert not config.agent.control_socket.exists()
