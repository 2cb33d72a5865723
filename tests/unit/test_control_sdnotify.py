"""Tests for agent.sdnotify: sd_notify messages to a datagram socket in a temporary directory."""

import asyncio
import logging
import os
import socket
import sys
import types

import pytest

from agent.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    """A bound datagram socket in place of systemd's notification socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5.0)
    yield str(path), sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notify_without_socket_does_nothing():
    notifier = Notifier({}, use_systemd_python=False)

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval() is None


def test_notify_ready_with_status(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path}, use_systemd_python=False)

    assert notifier.ready("serving 2 connections") is True

    assert received(sock) == "READY=1\nSTATUS=serving 2 connections"


def test_notify_status_stopping_watchdog(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path}, use_systemd_python=False)

    notifier.status("IKE SAs: 1\nCHILD SAs: 2")
    notifier.stopping()
    notifier.watchdog()

    assert received(sock) == "STATUS=IKE SAs: 1 CHILD SAs: 2"
    assert received(sock) == "STOPPING=1"
    assert received(sock) == "WATCHDOG=1"


def test_notify_reloading_has_monotonic_time(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path}, use_systemd_python=False)

    notifier.reloading()

    lines = received(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=", 1)[1]) > 0


def test_notify_abstract_socket():
    name = f"rmobike-test-notify-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name}, use_systemd_python=False)

        assert notifier.ready() is True
        assert received(sock) == "READY=1"


def test_notify_failure_logged_once(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}, use_systemd_python=False)

    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        first = notifier.ready()
        second = notifier.watchdog()

    assert first is False
    assert second is False
    warnings = [r for r in caplog.records if r.name == "agent.sdnotify"]
    assert len(warnings) == 1
    assert "absent.sock" in warnings[0].getMessage()


def test_notify_uses_systemd_python(monkeypatch):
    sent = []
    daemon = types.ModuleType("systemd.daemon")
    daemon.notify = lambda message: sent.append(message) or True
    package = types.ModuleType("systemd")
    package.daemon = daemon
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.daemon", daemon)

    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify"})

    assert notifier.stopping("shutting down") is True
    assert sent == ["STOPPING=1\nSTATUS=shutting down"]


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "5000000"}, 5.0),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}, 5.0),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ, seconds):
    notifier = Notifier(
        {"NOTIFY_SOCKET": "/run/systemd/notify", **environ}, use_systemd_python=False
    )

    assert notifier.watchdog_interval() == seconds


def test_run_watchdog_pings_until_stopped(notify_socket):
    path, sock = notify_socket
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}, use_systemd_python=False)

    async def scenario() -> list[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(notifier.run_watchdog(stop))
        loop = asyncio.get_running_loop()
        pings = [
            (await asyncio.wait_for(loop.sock_recv(sock, 4096), 5.0)).decode() for _ in range(2)
        ]
        stop.set()
        await asyncio.wait_for(task, 5.0)
        return pings

    assert asyncio.run(scenario()) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_run_watchdog_off_returns():
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify"}, use_systemd_python=False)

    asyncio.run(asyncio.wait_for(notifier.run_watchdog(asyncio.Event()), 5.0))

    assert notifier.watchdog_interval() is None
