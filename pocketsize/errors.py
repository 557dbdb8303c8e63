"""Errors that carry the CLI exit code (docs/interfaces.md).

Library code raises these; the CLI prints ``str(err)`` as one line and exits
with ``err.exit_code``. Anything else is a bug: exit 1.
"""

from __future__ import annotations


class PocketsizeError(Exception):
    """Base class. The message must say how to fix the problem."""

    exit_code = 1


class BadInput(PocketsizeError, ValueError):
    """The user's input is wrong (path, name, ratio, data layout...)."""

    exit_code = 2


class ParityError(PocketsizeError):
    """An exported artifact does not compute what the eager model computes."""

    exit_code = 3


class TargetNotMet(PocketsizeError):
    """The requested size/quality target could not be reached."""

    exit_code = 4
