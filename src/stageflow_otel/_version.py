"""The installed version of stageflow-otel."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def package_version() -> str:
    """The distribution's version, or ``0.0.0`` when running from a bare source tree."""
    try:
        return version("stageflow-otel")
    except PackageNotFoundError:  # pragma: no cover
        return "0.0.0"
