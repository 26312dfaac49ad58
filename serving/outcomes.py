"""How a request ends when it does not succeed, and the error texts a client gets back.

A client error is a UserError (INVALID_ARGUMENT / NOT_FOUND, REST 400/404). `ServerBusy` means a bounded
queue is full (RESOURCE_EXHAUSTED, REST 503): retry later. `RequestAbandoned` means the client's deadline
passed or it went away, so the work was dropped (DEADLINE_EXCEEDED or CANCELLED). `classify_error` maps
an exception to its status and says whether it is a server fault (the only kind logged with a traceback).
"""
from __future__ import annotations

from typing import Tuple

from revnet.common.errors import UserError


class ServerBusy(Exception):
    """A bounded queue is full; the request was refused before any work (RESOURCE_EXHAUSTED)."""


class ServerStopping(ServerBusy):
    """The server is shutting down; work still queued is refused (UNAVAILABLE: retry elsewhere)."""


class RequestAbandoned(Exception):
    """The client's deadline passed or it cancelled; the request was dropped (`deadline` tells which)."""

    def __init__(self, message: str, deadline: bool):
        super().__init__(message)
        self.deadline = deadline


def one_line(text: str, limit: int = 500) -> str:
    """A client-supplied message made safe for a single log line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


# What a status message or REST error body may hold: gRPC refuses trailing metadata over its limit (8 KiB by
# default) with RESOURCE_EXHAUSTED, which would hide the real error.
MAX_CLIENT_MESSAGE = 1000


def client_message(text) -> str:
    """An error text for a client: one line, at most MAX_CLIENT_MESSAGE characters."""
    return one_line(text, MAX_CLIENT_MESSAGE)


def name_one(name, width: int = 40) -> str:
    """One name a client sent, quoted and cut to `width`, for an error text."""
    name = str(name)
    return repr(name if len(name) <= width else name[:width] + "...")


def name_some(names, shown: int = 3, width: int = 40) -> str:
    """Names a client sent, for an error text: the first few, each cut to `width`, and how many more."""
    names = sorted(str(name) for name in names)
    if not names:
        return "none"
    cut = [name_one(name, width) for name in names[:shown]]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return "[" + ", ".join(cut) + "]" + more


def classify_error(error: Exception) -> Tuple[str, bool]:
    """(status code name, is a server fault) for an exception raised while serving a request."""
    if isinstance(error, UserError):
        return ("NOT_FOUND" if error.not_found else "INVALID_ARGUMENT"), False
    if isinstance(error, ServerBusy):
        return ("UNAVAILABLE" if isinstance(error, ServerStopping) else "RESOURCE_EXHAUSTED"), False
    if isinstance(error, RequestAbandoned):
        return ("DEADLINE_EXCEEDED" if error.deadline else "CANCELLED"), False
    return "INTERNAL", True
