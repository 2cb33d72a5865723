"""Exceptions for failed XFRM requests, one per cause that a caller acts on.

The kernel replies to a failed request with a negative errno and, from Linux
4.12 on, sometimes a text. ``error_for`` turns that into one of the classes
below. Each message names the SA ("esp spi 0x00001000 192.0.2.1->198.51.100.1")
or the policy ("policy 10.1.0.0/16->10.2.0.0/16 dir out") that failed.
"""

from __future__ import annotations

import errno as errno_codes
import os


class XfrmError(Exception):
    """A request to the kernel's XFRM layer failed.

    ``errno`` is the kernel's error number (0 when the error was found
    before anything was sent), ``request`` describes the request ("add SA
    esp spi 0x... a->b"), and ``detail`` is the kernel's extended-ack text, if any.
    """

    def __init__(self, request: str, errno: int = 0, detail: str = "", message: str = "") -> None:
        self.request = request
        self.errno = errno
        self.detail = detail
        if not message:
            reason = os.strerror(errno) if errno else "failed"
            message = f"{request}: {reason}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class SaExists(XfrmError):
    """An SA with the same destination, SPI, protocol and mark is already installed."""


class SaNotFound(XfrmError):
    """No SA matches the destination, SPI, protocol and mark given."""


class PolicyExists(XfrmError):
    """A policy with the same selector, direction, mark and if_id is already installed."""


class PolicyNotFound(XfrmError):
    """No policy matches the selector, direction, mark and if_id given."""


class InvalidArgument(XfrmError):
    """The kernel rejected a value of the request (EINVAL)."""


class NotSupported(XfrmError):
    """The running kernel lacks what the request needs: a module, an algorithm or an option."""


class BulkError(XfrmError):
    """Some requests of a batch failed.

    ``failures`` pairs each failed request with its error; ``results`` contains
    the result of every request, in order, when the batch ran to its end.
    """

    def __init__(self, failures: list[tuple[object, XfrmError]], total: int,
                 results: list[object] | None = None) -> None:
        self.failures = failures
        self.total = total
        self.results = results
        first = failures[0][1]
        message = f"{len(failures)} of {total} requests failed; first: {first}"
        super().__init__(first.request, first.errno, "", message)


# Errors that mean "this kernel cannot do that", whatever the request.
_NOT_SUPPORTED = {
    errno_codes.ENOSYS,  # unknown algorithm: "Requested AEAD algorithm not found"
    errno_codes.EPROTONOSUPPORT,  # no esp4/esp6 module
    errno_codes.ENOPROTOOPT,  # XFRM_MSG_MIGRATE without CONFIG_XFRM_MIGRATE
    errno_codes.EOPNOTSUPP,
    errno_codes.EAFNOSUPPORT,
}

# (what the request is about, errno) -> exception class
_BY_TARGET = {
    ("sa", errno_codes.EEXIST): SaExists,
    ("sa", errno_codes.ESRCH): SaNotFound,
    ("sa", errno_codes.ENOENT): SaNotFound,
    ("policy", errno_codes.EEXIST): PolicyExists,
    ("policy", errno_codes.ENOENT): PolicyNotFound,
}


def error_for(target: str, request: str, errno: int, detail: str = "") -> XfrmError:
    """Return the exception for the kernel's ``errno`` in reply to ``request``.

    ``target`` is "sa" or "policy": what the request is about. The errno is
    positive (the kernel sends it negated).
    """
    cls = _BY_TARGET.get((target, errno))
    if cls is None:
        if errno == errno_codes.EINVAL:
            cls = InvalidArgument
        elif errno in _NOT_SUPPORTED:
            cls = NotSupported
        else:
            cls = XfrmError
    return cls(request, errno, detail)
