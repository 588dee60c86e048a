"""The ``stageflow-otel`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="stageflow-otel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the example pipeline and print its results")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from stageflow_otel.examples_demo import run_demo

        return anyio.run(run_demo)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
