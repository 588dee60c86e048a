"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

__all__ = ("positive_int",)


def positive_int(text: str) -> int:
    """A whole number of at least 1 (``--runs``, ``--last``, ``--limit``).

    Raises:
        argparse.ArgumentTypeError: Anything else.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
