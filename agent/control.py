"""The control socket of rmobiked: a Unix stream socket that speaks line-delimited JSON.

Each request is one line, `{"command": "...", "args": {...}}`, and gets one response
line, `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. A client may send
several requests on one connection, one at a time. docs/control.md describes the
commands and the result of each.

The server side (`ControlServer`) runs in the daemon's asyncio loop and calls the handler
that the daemon registered for each command. The client side (`ControlClient`) is a
blocking client for rmobikectl.
"""

import asyncio
import dataclasses
import enum
import errno
import inspect
import ipaddress
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from agent.logs import LEVELS, format_spi

logger = logging.getLogger(__name__)

DEFAULT_CONTROL_SOCKET = "/run/rmobike/control.sock"

# A request is a command name and a few short arguments, so 64 KiB is generous. Longer
# lines are rejected and the connection is closed.
MAX_REQUEST_BYTES = 64 * 1024
# The client stops reading a response at this size. A list-sas result for a few thousand
# SAs fits.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Seconds the server waits for the next request line before it closes an idle connection.
IDLE_TIMEOUT = 30.0
MAX_CLIENTS = 16
DEFAULT_CLIENT_TIMEOUT = 15.0

# sizeof(struct ucred) from <sys/socket.h>: pid, uid, gid as 32-bit integers.
_UCRED = struct.Struct("iII")

Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class CommandError(Exception):
    """A handler's error that the client sees as the response's "error" text.

    Handlers raise it for expected failures, such as an unknown connection name. Any other
    exception from a handler is logged with its traceback and reported as an internal error.
    """


class ControlSocketError(Exception):
    """The server could not create its socket. The message names the path and the cause."""


class ControlClientError(Exception):
    """The client could not reach rmobiked or could not read its response."""


class CommandFailed(Exception):
    """rmobiked ran the command and returned an error, which is the message."""


# Argument parsers: each takes the JSON value and returns the value the handler gets, or
# raises ValueError with a message that completes "invalid argument NAME: ...".


def _parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _parse_address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise ValueError("expected an IP address as a string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


def _parse_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}")
    return value.lower()


@dataclasses.dataclass(frozen=True)
class Argument:
    """One argument of a control command, as it appears in the request's "args" object."""

    name: str
    parse: Callable[[Any], Any]
    required: bool = True


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """A control command: its name, its arguments and a one-line summary for help text."""

    name: str
    summary: str
    arguments: tuple[Argument, ...] = ()


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("status", "show the daemon's state"),
        CommandSpec(
            "list-sas",
            "list IKE SAs and their CHILD SAs",
            (Argument("name", _parse_name, required=False),),
        ),
        CommandSpec("initiate", "initiate a connection", (Argument("name", _parse_name),)),
        CommandSpec("terminate", "delete a connection's IKE SA", (Argument("name", _parse_name),)),
        CommandSpec(
            "switch",
            "move a connection's IKE SA to another local address",
            (Argument("name", _parse_name), Argument("to", _parse_address)),
        ),
        CommandSpec("reload", "reload the configuration file"),
        CommandSpec("log-level", "set the log level", (Argument("level", _parse_level),)),
    )
}


class ControlServer:
    """The daemon's side of the control socket.

    `handlers` maps command names of `commands` to callables that take the parsed
    arguments as a dict and return (or return an awaitable of) a JSON-serialisable result.
    Addresses, networks, paths, enums, dataclasses and bytes (as hex) in a result are
    converted. Only clients whose user id is in `allowed_uids` (default: root and the
    daemon's own user) are served.

        server = ControlServer("/run/rmobike/control.sock", {"status": status, ...})
        await server.start()
        ...
        await server.close()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handlers: Mapping[str, Handler],
        *,
        commands: Mapping[str, CommandSpec] = COMMANDS,
        allowed_uids: frozenset[int] | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        unknown = sorted(set(handlers) - set(commands))
        if unknown:
            raise ValueError(f"handlers for unknown commands: {', '.join(unknown)}")

        self.path = Path(path)
        self.handlers = dict(handlers)
        self.commands = dict(commands)
        self.allowed_uids = (
            allowed_uids if allowed_uids is not None else frozenset({0, os.geteuid()})
        )
        self.max_request_bytes = max_request_bytes
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> "ControlServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the socket (mode 0600) and start serving.

        Creates the directory (mode 0700) if it is missing, and replaces a stale socket
        (one that no process listens on). Raises ControlSocketError when another process listens on
        the path, when the path is something other than a socket, or when binding fails.
        """
        sock = _bind_socket(self.path)
        self._inode = _inode(self.path)
        self._server = await asyncio.start_unix_server(
            self._serve_client, sock=sock, limit=self.max_request_bytes
        )
        logger.info("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop serving, close client connections and remove the socket file."""
        if self._server is None:
            return

        self._server.close()
        for writer in list(self._clients):
            writer.close()
        await self._server.wait_closed()
        self._server = None

        # Remove the socket only if it is still ours: a second daemon may have replaced it.
        if self._inode is not None and _inode(self.path) == self._inode:
            self.path.unlink()
        logger.info("control socket on %s closed", self.path)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            uid = _peer_uid(writer)
            if uid is not None and uid not in self.allowed_uids:
                logger.warning("control connection from uid %d rejected", uid)
                await _send(writer, _error(f"permission denied: uid {uid} may not use this socket"))
                return
            if len(self._clients) >= self.max_clients:
                logger.warning(
                    "control connection rejected: %d clients connected", len(self._clients)
                )
                await _send(writer, _error("too many control connections; try again later"))
                return

            self._clients.add(writer)
            await self._serve_requests(reader, writer)
        except (ConnectionError, BrokenPipeError):
            logger.debug("control client disconnected before the response was sent")
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
            except TimeoutError:
                logger.debug("closing control connection idle for %g s", self.idle_timeout)
                return
            except (ValueError, asyncio.LimitOverrunError):
                # StreamReader.readline raises ValueError for a line over the limit.
                logger.warning(
                    "control request rejected: longer than %d bytes", self.max_request_bytes
                )
                await _send(
                    writer,
                    _error(f"request too long: the maximum is {self.max_request_bytes} bytes"),
                )
                return
            if not line:
                return

            response = await self.dispatch(line)
            await _send(writer, response)

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        """Run one request line and return the response object."""
        try:
            name, args = self._parse_request(line)
        except CommandError as error:
            logger.info("control request rejected: %s", error)
            return _error(str(error))

        logger.debug("control command %s %s", name, args)

        try:
            result = self.handlers[name](args)
            if inspect.isawaitable(result):
                result = await result
            # Encode once here, so that a result that JSON cannot represent becomes an
            # error response instead of a dropped connection.
            _encode({"ok": True, "result": result})
        except CommandError as error:
            logger.info("control command %s failed: %s", name, error)
            return _error(str(error))
        except Exception as error:
            logger.exception("control command %s failed with an internal error", name)
            return _error(
                f"internal error in command {name}: {type(error).__name__}: {error}"
                " (the rmobiked log has the details)"
            )
        return {"ok": True, "result": result}

    def _parse_request(self, line: bytes) -> tuple[str, dict[str, Any]]:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CommandError(f"invalid JSON in request: {error}") from None
        if not isinstance(request, dict):
            raise CommandError('invalid request: expected a JSON object with "command" and "args"')

        unknown = sorted(set(request) - {"command", "args"})
        if unknown:
            raise CommandError(f"invalid request: unknown field {unknown[0]!r}")

        name = request.get("command")
        if not isinstance(name, str):
            raise CommandError('invalid request: "command" must be a string')
        if name not in self.handlers:
            known = ", ".join(sorted(self.handlers))
            raise CommandError(f"unknown command {name!r}; known commands: {known}")

        raw_args = request.get("args", {})
        if raw_args is None:
            raw_args = {}
        if not isinstance(raw_args, dict):
            raise CommandError('invalid request: "args" must be a JSON object')
        return name, _parse_arguments(self.commands[name], raw_args)


def _parse_arguments(spec: CommandSpec, raw_args: dict[str, Any]) -> dict[str, Any]:
    known = {argument.name for argument in spec.arguments}
    unknown = sorted(set(raw_args) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise CommandError(
            f"command {spec.name}: unknown argument {unknown[0]!r}; accepted arguments: {accepted}"
        )

    args = {}
    for argument in spec.arguments:
        if argument.name not in raw_args:
            if argument.required:
                raise CommandError(f"command {spec.name}: missing argument {argument.name!r}")
            continue
        try:
            args[argument.name] = argument.parse(raw_args[argument.name])
        except ValueError as error:
            raise CommandError(
                f"command {spec.name}: invalid argument {argument.name!r}: {error}"
            ) from None
    return args


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _json_default(value: Any) -> Any:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, default=_json_default, separators=(",", ":")).encode() + b"\n"


async def _send(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
    writer.write(_encode(response))
    await writer.drain()


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _UCRED.unpack(credentials)
    return uid


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _bind_socket(path: Path) -> socket.socket:
    """Bind a Unix stream socket at `path` with mode 0600, ready for listen().

    The mode is set between bind() and listen(). A connect() before listen() fails, so no
    client can connect while the socket still has the mode that the umask gave it.
    """
    # sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
    if len(os.fsencode(path)) > 107:
        raise ControlSocketError(
            f"control socket path {path} is too long: the maximum is 107 bytes"
        )

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ControlSocketError(
            f"cannot create directory {path.parent}: {error.strerror}"
        ) from None
    _remove_stale_socket(path)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
    except OSError as error:
        sock.close()
        raise ControlSocketError(f"cannot bind control socket {path}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return

    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(
            f"{path} exists and is not a socket; remove it or choose another control_socket"
        )

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("removing stale control socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as error:
        raise ControlSocketError(f"cannot check existing socket {path}: {error.strerror}") from None
    finally:
        probe.close()
    raise ControlSocketError(
        f"another process is listening on {path}; is rmobiked already running?"
    )


class ControlClient:
    """Blocking client of the control socket, for rmobikectl and scripts.

    `timeout` is the total time in seconds for connecting, sending the request and
    reading the response.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_CONTROL_SOCKET,
        *,
        timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result.

        Raises CommandFailed when rmobiked returns an error and ControlClientError when it
        cannot be reached or its response is invalid.
        """
        request = json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n"
        deadline = time.monotonic() + self.timeout

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            self._connect(sock, deadline)
            try:
                sock.settimeout(_remaining(deadline))
                sock.sendall(request)
                line = self._read_line(sock, deadline)
            except TimeoutError:
                raise ControlClientError(
                    f"no response from rmobiked on {self.path} within {self.timeout:g} s"
                ) from None
            except OSError as error:
                raise ControlClientError(
                    f"connection to {self.path} failed: {error.strerror or error}"
                ) from None

        return self._parse_response(line)

    def _connect(self, sock: socket.socket, deadline: float) -> None:
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(os.fspath(self.path))
        except FileNotFoundError:
            raise ControlClientError(
                f"control socket {self.path} not found: is rmobiked running?"
            ) from None
        except ConnectionRefusedError:
            raise ControlClientError(
                f"connection to control socket {self.path} refused: is rmobiked running?"
            ) from None
        except PermissionError:
            raise ControlClientError(
                f"permission denied on control socket {self.path}: run rmobikectl as root"
            ) from None
        except TimeoutError:
            raise ControlClientError(
                f"connecting to control socket {self.path} timed out after {self.timeout:g} s"
            ) from None
        except OSError as error:
            if error.errno == errno.ENOTSOCK:
                raise ControlClientError(f"{self.path} is not a socket") from None
            raise ControlClientError(
                f"cannot connect to control socket {self.path}: {error.strerror or error}"
            ) from None

    def _read_line(self, sock: socket.socket, deadline: float) -> bytes:
        buffer = bytearray()
        while b"\n" not in buffer:
            if len(buffer) > MAX_RESPONSE_BYTES:
                raise ControlClientError(
                    f"response from rmobiked is longer than {MAX_RESPONSE_BYTES} bytes"
                )
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk

        line, _newline, _rest = bytes(buffer).partition(b"\n")
        if not line:
            raise ControlClientError("rmobiked closed the connection without a response")
        return line

    def _parse_response(self, line: bytes) -> Any:
        try:
            response = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ControlClientError(f"invalid response from rmobiked: {error}") from None
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise ControlClientError('invalid response from rmobiked: no boolean "ok" field')

        if not response["ok"]:
            raise CommandFailed(str(response.get("error", "unknown error")))
        return response.get("result")


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    return remaining


# Result objects for the list-sas command. The daemon builds them from its IKE SAs and
# the kernel's counters, and returns `list_sas_result(...)`. docs/control.md lists the
# JSON fields.

LIST_SAS_SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class ChildSaStatus:
    """One CHILD SA as list-sas reports it. ESP SPIs are 4 bytes (RFC 4303 §2.1)."""

    name: str
    state: str
    spi_in: bytes | int | str
    spi_out: bytes | int | str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    mode: str = "tunnel"
    protocol: str = "esp"
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "mode": self.mode,
            "protocol": self.protocol,
            "spi_in": format_spi(self.spi_in, 4),
            "spi_out": format_spi(self.spi_out, 4),
            "local_ts": [str(ts) for ts in self.local_ts],
            "remote_ts": [str(ts) for ts in self.remote_ts],
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
        }


@dataclasses.dataclass(frozen=True)
class IkeSaStatus:
    """One IKE SA as list-sas reports it. IKE SPIs are 8 bytes (RFC 7296 §3.1)."""

    name: str
    state: str
    initiator: bool
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    spi_i: bytes | int | str
    spi_r: bytes | int | str
    mobike: bool
    switch: bool
    nat_local: bool = False
    nat_remote: bool = False
    children: tuple[ChildSaStatus, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "initiator": self.initiator,
            "local_address": str(self.local_address),
            "local_port": self.local_port,
            "remote_address": str(self.remote_address),
            "remote_port": self.remote_port,
            "spi_i": format_spi(self.spi_i, 8),
            "spi_r": format_spi(self.spi_r, 8),
            "mobike": self.mobike,
            "switch": self.switch,
            "nat": {"local": self.nat_local, "remote": self.nat_remote},
            "children": [child.to_json() for child in self.children],
        }


def list_sas_result(ike_sas: list[IkeSaStatus] | tuple[IkeSaStatus, ...]) -> dict[str, Any]:
    """Build the list-sas result from the daemon's IKE SAs."""
    return {"schema": LIST_SAS_SCHEMA, "ike_sas": [sa.to_json() for sa in ike_sas]}
