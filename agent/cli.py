"""rmobikectl: the command-line client of rmobiked's control socket.

    rmobikectl status
    rmobikectl list-sas [NAME] [--json]
    rmobikectl initiate NAME
    rmobikectl terminate NAME
    rmobikectl switch NAME --to ADDRESS
    rmobikectl reload
    rmobikectl log-level LEVEL

Exit status: 0 on success, 1 when rmobiked returns an error, 2 for invalid usage, and 3
when rmobiked cannot be reached or returns an invalid response.
"""

import argparse
import importlib.metadata
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from agent.control import (
    COMMANDS,
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_CONTROL_SOCKET,
    CommandFailed,
    ControlClient,
    ControlClientError,
)
from agent.logs import LEVELS, format_peer

EXIT_OK = 0
EXIT_COMMAND_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_EPILOG = """\
exit status: 0 success, 1 rmobiked returned an error, 2 invalid usage,
3 rmobiked not reachable or invalid response"""


def version() -> str:
    """Return the installed rmobike version."""
    try:
        return importlib.metadata.version("rmobike")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (the rmobike package is not installed)"


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser: global options, then one sub-parser per control command."""
    parser = argparse.ArgumentParser(
        prog="rmobikectl",
        description="Query and control a running rmobiked through its control socket.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _add_common_options(parser, defaults=True)

    # The same options on every sub-command, so that they work before or after its name.
    # SUPPRESS keeps a sub-command from overwriting a value given before its name.
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, defaults=False)

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        description = spec.summary[0].upper() + spec.summary[1:] + "."
        sub = commands.add_parser(
            name, parents=[common], help=spec.summary, description=description
        )
        _ARGUMENT_SETUP.get(name, lambda sub: None)(sub)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    suppress = argparse.SUPPRESS
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=DEFAULT_CONTROL_SOCKET if defaults else suppress,
        help=f"control socket of rmobiked (default: {DEFAULT_CONTROL_SOCKET})",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_CLIENT_TIMEOUT if defaults else suppress,
        help="maximum time to wait for rmobiked's response, in seconds"
        f" (default: {DEFAULT_CLIENT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if defaults else suppress,
        help="print the result as JSON, for scripts",
    )


def _setup_list_sas(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", nargs="?", help="show only this connection's IKE SAs")


def _setup_name(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", help="connection name, as in [connections.NAME]")


def _setup_switch(sub: argparse.ArgumentParser) -> None:
    _setup_name(sub)
    sub.add_argument(
        "--to",
        required=True,
        type=_address,
        metavar="ADDRESS",
        help="local address to move the IKE SA to",
    )


def _setup_log_level(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("level", choices=list(LEVELS), help="new level of rmobiked's log")


_ARGUMENT_SETUP = {
    "list-sas": _setup_list_sas,
    "initiate": _setup_name,
    "terminate": _setup_name,
    "switch": _setup_switch,
    "log-level": _setup_log_level,
}


def request_args(options: argparse.Namespace) -> dict[str, Any]:
    """Return the request's "args" object for the parsed command line."""
    args: dict[str, Any] = {}
    for argument in COMMANDS[options.command].arguments:
        value = getattr(options, argument.name, None)
        if value is not None:
            args[argument.name] = value
    return args


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run rmobikectl and return its exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    if options.command is None:
        parser.print_usage(stderr)
        print("rmobikectl: error: a command is required", file=stderr)
        return EXIT_USAGE

    client = ControlClient(options.socket, timeout=options.timeout)
    try:
        result = client.call(options.command, request_args(options))
    except CommandFailed as error:
        print(f"rmobikectl: {options.command} failed: {error}", file=stderr)
        return EXIT_COMMAND_FAILED
    except ControlClientError as error:
        print(f"rmobikectl: {error}", file=stderr)
        return EXIT_UNREACHABLE

    if options.json:
        print(json.dumps(result, indent=2, sort_keys=True), file=stdout)
    elif options.command == "list-sas":
        print(format_sas(result), file=stdout)
    else:
        print(format_result(options.command, result), file=stdout)
    return EXIT_OK


# --- Output for people ---------------------------------------------------------------


def format_result(command: str, result: Any) -> str:
    """Format a command's result: a string as is, a mapping as "key: value" lines."""
    if result is None or result == {}:
        return f"{command}: done"
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        return "\n".join(f"{key}: {_format_value(value)}" for key, value in result.items())
    return _format_value(result)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_format_value(item) for item in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Align columns, separated by two spaces, and strip trailing spaces."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


_IKE_HEADERS = (
    "NAME",
    "STATE",
    "ROLE",
    "LOCAL",
    "REMOTE",
    "SPI_I",
    "SPI_R",
    "MOBIKE",
    "SWITCH",
    "NAT",
)
_CHILD_HEADERS = (
    "IKE_SA", "CHILD", "STATE", "MODE", "SPI_IN", "SPI_OUT", "LOCAL_TS", "REMOTE_TS",
    "BYTES_IN", "BYTES_OUT", "PACKETS_IN", "PACKETS_OUT",
)  # fmt: skip


def format_sas(result: Any) -> str:
    """Format a list-sas result as a table of IKE SAs and a table of CHILD SAs."""
    ike_sas = result.get("ike_sas", []) if isinstance(result, dict) else []
    if not ike_sas:
        return "no IKE SAs"

    ike_rows = [_ike_row(sa) for sa in ike_sas]
    child_rows = [_child_row(sa, child) for sa in ike_sas for child in sa.get("children", [])]
    text = format_table(_IKE_HEADERS, ike_rows)
    if child_rows:
        text += "\n\n" + format_table(_CHILD_HEADERS, child_rows)
    else:
        text += "\n\nno CHILD SAs"
    return text


def _field(entry: dict[str, Any], name: str) -> str:
    value = entry.get(name)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) if value else "dynamic"
    return str(value)


def _endpoint(entry: dict[str, Any], side: str) -> str:
    address = entry.get(f"{side}_address")
    port = entry.get(f"{side}_port")
    if address is None:
        return "-"
    if port is None:
        return str(address)
    return format_peer((address, port)) or "-"


def _nat(entry: dict[str, Any]) -> str:
    nat = entry.get("nat")
    if not isinstance(nat, dict):
        return "-"
    behind = [side for side in ("local", "remote") if nat.get(side)]
    if len(behind) == 2:
        return "both"
    return behind[0] if behind else "none"


def _ike_row(sa: dict[str, Any]) -> list[str]:
    initiator = sa.get("initiator")
    if initiator is None:
        role = "-"
    elif initiator:
        role = "initiator"
    else:
        role = "responder"
    return [
        _field(sa, "name"),
        _field(sa, "state"),
        role,
        _endpoint(sa, "local"),
        _endpoint(sa, "remote"),
        _field(sa, "spi_i"),
        _field(sa, "spi_r"),
        _field(sa, "mobike"),
        _field(sa, "switch"),
        _nat(sa),
    ]


def _child_row(sa: dict[str, Any], child: dict[str, Any]) -> list[str]:
    return [
        _field(sa, "name"),
        _field(child, "name"),
        _field(child, "state"),
        _field(child, "mode"),
        _field(child, "spi_in"),
        _field(child, "spi_out"),
        _field(child, "local_ts"),
        _field(child, "remote_ts"),
        _field(child, "bytes_in"),
        _field(child, "bytes_out"),
        _field(child, "packets_in"),
        _field(child, "packets_out"),
    ]


if __name__ == "__main__":
    sys.exit(main())
