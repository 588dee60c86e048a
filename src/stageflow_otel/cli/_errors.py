"""The two ways a command ends badly, with their exit codes."""

from __future__ import annotations

__all__ = ("EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "CommandFailed", "UsageError")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command was called wrongly (bad argument, unknown module, busy port): exit 2.

    The message is the one line printed to stderr; it says what is wrong and how to fix it.
    """


class CommandFailed(Exception):
    """The pipeline failed, was cancelled, or could not be built: exit 1."""
