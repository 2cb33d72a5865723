"""Tests for agent.control: the control server and client over a socket in a temporary directory."""

import asyncio
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from agent.control import (
    MAX_REQUEST_BYTES,
    ChildSaStatus,
    CommandError,
    CommandFailed,
    ControlClient,
    ControlClientError,
    ControlServer,
    ControlSocketError,
    IkeSaStatus,
    list_sas_result,
)


async def status_handler(args):
    return {"version": "test", "ike_sas": 1}


def handlers(**extra):
    table = {"status": status_handler}
    table.update(extra)
    return table


async def exchange(path: Path, data: bytes, responses: int = 1) -> list[dict]:
    """Send raw bytes and read up to `responses` response lines (fewer if the server closes)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    lines = []
    for _ in range(responses):
        line = await asyncio.wait_for(reader.readline(), 5.0)
        if not line:
            break
        lines.append(json.loads(line))
    writer.close()
    return lines


async def request(path: Path, command: str, args=None) -> dict:
    data = json.dumps({"command": command, "args": args or {}}).encode() + b"\n"
    (response,) = await exchange(path, data)
    return response


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20.0))


# --- Socket creation -----------------------------------------------------------------


def test_server_socket_mode_and_directory(tmp_path):
    path = tmp_path / "run" / "rmobike" / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers()):
            return path.stat().st_mode, path.parent.stat().st_mode

    socket_mode, directory_mode = run(scenario())

    assert stat.S_ISSOCK(socket_mode)
    assert stat.S_IMODE(socket_mode) == 0o600
    assert stat.S_IMODE(directory_mode) == 0o700


def test_server_close_removes_socket(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        server = ControlServer(path, handlers())
        await server.start()
        existed = path.exists()
        await server.close()
        return existed

    assert run(scenario()) is True
    assert not path.exists()


def test_server_replaces_stale_socket(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    async def scenario():
        async with ControlServer(path, handlers()):
            return await request(path, "status")

    assert run(scenario()) == {"ok": True, "result": {"version": "test", "ike_sas": 1}}


def test_server_refuses_socket_in_use(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers()):
            with pytest.raises(ControlSocketError) as raised:
                await ControlServer(path, handlers()).start()
            return str(raised.value)

    message = run(scenario())

    assert f"another process is listening on {path}" in message
    assert "is rmobiked already running?" in message


def test_server_refuses_regular_file(tmp_path):
    path = tmp_path / "control.sock"
    path.write_text("not a socket")

    with pytest.raises(ControlSocketError) as raised:
        run(ControlServer(path, handlers()).start())

    assert f"{path} exists and is not a socket" in str(raised.value)
    assert path.read_text() == "not a socket"


def test_server_path_too_long(tmp_path):
    path = tmp_path / ("x" * 120) / "control.sock"

    with pytest.raises(ControlSocketError) as raised:
        run(ControlServer(path, handlers()).start())

    assert "is too long" in str(raised.value)


def test_server_rejects_unknown_handler(tmp_path):
    with pytest.raises(ValueError) as raised:
        ControlServer(tmp_path / "control.sock", {"stauts": status_handler})

    assert "stauts" in str(raised.value)


# --- Requests ------------------------------------------------------------------------


def test_request_sync_and_async_handlers(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        table = handlers(reload=lambda args: {"added": ["site"]})
        async with ControlServer(path, table):
            return await request(path, "status"), await request(path, "reload")

    status, reload = run(scenario())

    assert status == {"ok": True, "result": {"version": "test", "ike_sas": 1}}
    assert reload == {"ok": True, "result": {"added": ["site"]}}


def test_request_arguments_parsed(tmp_path):
    path = tmp_path / "control.sock"
    seen = []

    async def switch(args):
        seen.append(args)
        return f"moving {args['name']} to {args['to']}"

    async def scenario():
        async with ControlServer(path, handlers(switch=switch)):
            return await request(path, "switch", {"name": "site", "to": "203.0.113.10"})

    response = run(scenario())

    assert response == {"ok": True, "result": "moving site to 203.0.113.10"}
    assert seen == [{"name": "site", "to": ipaddress.ip_address("203.0.113.10")}]


def test_request_several_on_one_connection(tmp_path):
    path = tmp_path / "control.sock"
    line = json.dumps({"command": "status"}).encode() + b"\n"

    async def scenario():
        async with ControlServer(path, handlers()):
            return await exchange(path, line * 3, responses=3)

    responses = run(scenario())

    assert len(responses) == 3
    assert all(response["ok"] for response in responses)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{not json\n", "invalid JSON in request"),
        (b"[1, 2]\n", 'invalid request: expected a JSON object with "command" and "args"'),
        (b'{"command": 5}\n', 'invalid request: "command" must be a string'),
        (b'{"command": "status", "args": []}\n', 'invalid request: "args" must be a JSON object'),
        (b'{"command": "status", "verbose": true}\n', "invalid request: unknown field 'verbose'"),
        (
            b'{"command": "shutdown"}\n',
            "unknown command 'shutdown'; known commands: initiate, status",
        ),
        (b'{"command": "initiate"}\n', "command initiate: missing argument 'name'"),
        (
            b'{"command": "initiate", "args": {"name": ""}}\n',
            "command initiate: invalid argument 'name'",
        ),
        (
            b'{"command": "status", "args": {"all": 1}}\n',
            "command status: unknown argument 'all'; accepted arguments: none",
        ),
        (b"\xff\xfe\n", "invalid JSON in request"),
    ],
)
def test_request_invalid(tmp_path, data, error):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers(initiate=status_handler)):
            return await exchange(path, data)

    (response,) = run(scenario())

    assert response["ok"] is False
    assert response["error"].startswith(error)


def test_request_invalid_address_argument(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers(switch=status_handler)):
            return await request(path, "switch", {"name": "site", "to": "gw-b.example.net"})

    response = run(scenario())

    assert response == {
        "ok": False,
        "error": "command switch: invalid argument 'to':"
        " 'gw-b.example.net' is not an IPv4 or IPv6 address",
    }


def test_request_too_long_closes_connection(tmp_path):
    path = tmp_path / "control.sock"
    big = b'{"command": "status", "args": {"pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}}\n'

    async def scenario():
        async with ControlServer(path, handlers()):
            return await exchange(path, big + b'{"command": "status"}\n', responses=2)

    responses = run(scenario())

    assert responses == [
        {"ok": False, "error": f"request too long: the maximum is {MAX_REQUEST_BYTES} bytes"}
    ]


def test_handler_command_error(tmp_path):
    path = tmp_path / "control.sock"

    async def initiate(args):
        raise CommandError(f"unknown connection {args['name']!r}")

    async def scenario():
        async with ControlServer(path, handlers(initiate=initiate)):
            return await request(path, "initiate", {"name": "nowhere"})

    assert run(scenario()) == {"ok": False, "error": "unknown connection 'nowhere'"}


def test_handler_exception_is_internal_error(tmp_path, caplog):
    path = tmp_path / "control.sock"

    async def terminate(args):
        raise KeyError("site")

    async def scenario():
        async with ControlServer(path, handlers(terminate=terminate)):
            return await request(path, "terminate", {"name": "site"})

    with caplog.at_level(logging.ERROR, logger="agent.control"):
        response = run(scenario())

    assert response["ok"] is False
    assert response["error"].startswith("internal error in command terminate: KeyError")
    assert any(record.exc_info for record in caplog.records)


def test_handler_result_not_serialisable(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers(reload=lambda args: object())):
            return await request(path, "reload")

    response = run(scenario())

    assert response["ok"] is False
    assert "object is not JSON serialisable" in response["error"]


def test_handler_result_conversions(tmp_path):
    path = tmp_path / "control.sock"
    result = {
        "address": ipaddress.ip_address("2001:db8::1"),
        "network": ipaddress.ip_network("10.1.0.0/24"),
        "path": Path("/etc/rmobike/rmobike.toml"),
        "spi": b"\x01\x02",
        "names": ("a", "b"),
    }

    async def scenario():
        async with ControlServer(path, handlers(reload=lambda args: result)):
            return await request(path, "reload")

    response = run(scenario())

    assert response["result"] == {
        "address": "2001:db8::1",
        "network": "10.1.0.0/24",
        "path": "/etc/rmobike/rmobike.toml",
        "spi": "0102",
        "names": ["a", "b"],
    }


def test_server_rejects_other_uid(tmp_path):
    path = tmp_path / "control.sock"
    other_uid = os.geteuid() + 1

    async def scenario():
        async with ControlServer(path, handlers(), allowed_uids=frozenset({other_uid})):
            return await exchange(path, b'{"command": "status"}\n')

    (response,) = run(scenario())

    assert response == {
        "ok": False,
        "error": f"permission denied: uid {os.geteuid()} may not use this socket",
    }


def test_server_limits_clients(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers(), max_clients=1):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b'{"command": "status"}\n')
            await reader.readline()  # the first client is now registered and stays connected
            second = await exchange(path, b'{"command": "status"}\n')
            writer.close()
            return second

    (response,) = run(scenario())

    assert response == {"ok": False, "error": "too many control connections; try again later"}


def test_server_closes_idle_connection(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers(), idle_timeout=0.05):
            reader, writer = await asyncio.open_unix_connection(str(path))
            data = await asyncio.wait_for(reader.read(), 5.0)
            writer.close()
            return data

    assert run(scenario()) == b""


# --- Client --------------------------------------------------------------------------


def test_client_round_trip(tmp_path):
    path = tmp_path / "control.sock"

    async def scenario():
        async with ControlServer(path, handlers(initiate=status_handler)):
            client = ControlClient(path, timeout=5.0)
            result = await asyncio.to_thread(client.call, "status")
            with pytest.raises(CommandFailed) as raised:
                await asyncio.to_thread(client.call, "initiate", {})
            return result, str(raised.value)

    result, failure = run(scenario())

    assert result == {"version": "test", "ike_sas": 1}
    assert failure == "command initiate: missing argument 'name'"


def test_client_socket_missing(tmp_path):
    client = ControlClient(tmp_path / "control.sock", timeout=5.0)

    with pytest.raises(ControlClientError) as raised:
        client.call("status")

    assert (
        str(raised.value)
        == f"control socket {tmp_path / 'control.sock'} not found: is rmobiked running?"
    )


def test_client_connection_refused(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    with pytest.raises(ControlClientError) as raised:
        ControlClient(path, timeout=5.0).call("status")

    assert str(raised.value) == f"connection to control socket {path} refused: is rmobiked running?"


class SilentServer:
    """A listening socket that accepts one connection and replies with fixed bytes, or never."""

    def __init__(self, path: Path, reply: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(5.0)
        self.reply = reply
        self.thread = threading.Thread(target=self._serve_one)
        self.thread.start()

    def _serve_one(self) -> None:
        try:
            connection, _ = self.sock.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(5.0)
            try:
                connection.recv(65536)
                if self.reply is not None:
                    connection.sendall(self.reply)
                else:
                    connection.recv(1)  # wait until the client gives up and closes
            except OSError:
                pass

    def close(self) -> None:
        self.thread.join(10.0)
        self.sock.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, "no response from rmobiked on {path} within 0.2 s"),
        (b"", "rmobiked closed the connection without a response"),
        (b"garbage\n", "invalid response from rmobiked: "),
        (b'{"result": 1}\n', 'invalid response from rmobiked: no boolean "ok" field'),
    ],
)
def test_client_bad_responses(tmp_path, reply, error):
    path = tmp_path / "control.sock"
    server = SilentServer(path, reply)

    try:
        with pytest.raises(ControlClientError) as raised:
            ControlClient(path, timeout=0.2).call("status")
    finally:
        server.close()

    assert str(raised.value).startswith(error.format(path=path))


# --- list-sas result -----------------------------------------------------------------


def test_list_sas_result_fields():
    child = ChildSaStatus(
        name="lan",
        state="INSTALLED",
        spi_in=0xC1234567,
        spi_out=b"\xc7\x65\x43\x21",
        local_ts=("10.1.0.0/24",),
        remote_ts=(ipaddress.ip_network("10.2.0.0/24"),),
        bytes_in=1234,
        packets_in=12,
    )
    sa = IkeSaStatus(
        name="site",
        state="ESTABLISHED",
        initiator=True,
        local_address=ipaddress.ip_address("198.51.100.10"),
        local_port=4500,
        remote_address="198.51.100.20",
        remote_port=4500,
        spi_i=b"\x1a\x2b\x3c\x4d\x5e\x6f\x70\x81",
        spi_r=0x0807060504030201,
        mobike=True,
        switch=True,
        nat_remote=True,
        children=(child,),
    )

    result = list_sas_result([sa])

    assert result["schema"] == 1
    (entry,) = result["ike_sas"]
    assert entry["local_address"] == "198.51.100.10"
    assert entry["spi_i"] == "1a2b3c4d5e6f7081"
    assert entry["spi_r"] == "0807060504030201"
    assert entry["nat"] == {"local": False, "remote": True}
    (child_entry,) = entry["children"]
    assert child_entry["spi_in"] == "c1234567"
    assert child_entry["spi_out"] == "c7654321"
    assert child_entry["remote_ts"] == ["10.2.0.0/24"]
    assert child_entry["bytes_in"] == 1234
    assert child_entry["packets_out"] == 0
    assert json.loads(json.dumps(result)) == result
