"""Project environment variables (``STAGEFLOW_OTEL_*``), each with its default.

Standard ``OTEL_*`` variables are read by the OpenTelemetry SDK itself.

.. envvar:: STAGEFLOW_OTEL_METRICS_ADDR

    Address ``serve_metrics`` and the CLI bind ``/metrics`` to. Default ``127.0.0.1``.

.. envvar:: STAGEFLOW_OTEL_METRICS_PORT

    Port of ``/metrics`` for the CLI. Default ``9464``.

.. envvar:: STAGEFLOW_OTEL_INTERCEPTOR_SPANS

    ``true``/``false``: one span per interceptor. Default ``true``.

.. envvar:: STAGEFLOW_OTEL_MAX_STAGE_NAMES

    Distinct stage names per pipeline kept as metric labels before the rest collapse into
    ``_OTHER``. Default ``1000``.

.. envvar:: STAGEFLOW_OTEL_CANONICAL_LOGS

    ``true``/``false``: write the ``stage.wide`` / ``pipeline.wide`` structlog lines.
    Default ``true``.

.. envvar:: STAGEFLOW_OTEL_SERVE_METRICS

    ``true``/``false``: whether the auto-instrumentor serves ``/metrics``. Default ``false``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ("Settings", "env_flag")

METRICS_ADDR = "STAGEFLOW_OTEL_METRICS_ADDR"
METRICS_PORT = "STAGEFLOW_OTEL_METRICS_PORT"
INTERCEPTOR_SPANS = "STAGEFLOW_OTEL_INTERCEPTOR_SPANS"
MAX_STAGE_NAMES = "STAGEFLOW_OTEL_MAX_STAGE_NAMES"
CANONICAL_LOGS = "STAGEFLOW_OTEL_CANONICAL_LOGS"
SERVE_METRICS = "STAGEFLOW_OTEL_SERVE_METRICS"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean variable; an unrecognised value raises ``ValueError`` naming it."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``STAGEFLOW_OTEL_*`` settings in force."""

    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9464
    interceptor_spans: bool = True
    max_stage_names: int = 1000
    canonical_logs: bool = True
    serve_metrics: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment."""
        return cls(
            metrics_addr=os.environ.get(METRICS_ADDR, "").strip() or "127.0.0.1",
            metrics_port=_env_int(METRICS_PORT, 9464),
            interceptor_spans=env_flag(INTERCEPTOR_SPANS, True),
            max_stage_names=_env_int(MAX_STAGE_NAMES, 1000),
            canonical_logs=env_flag(CANONICAL_LOGS, True),
            serve_metrics=env_flag(SERVE_METRICS, False),
        )
