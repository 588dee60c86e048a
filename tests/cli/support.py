"""Running ``stageflow-otel`` as a subprocess, the way users do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables that would make a run depend on the machine it runs on.
_HERMETIC_UNSET = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "STAGEFLOW_OTEL_METRICS_PORT",
    "STAGEFLOW_OTEL_METRICS_ADDR",
    "STAGEFLOW_OTEL_INTERCEPTOR_SPANS",
    "STAGEFLOW_OTEL_CANONICAL_LOGS",
    "STAGEFLOW_OTEL_STORE",
    "STAGEFLOW_OTEL_STORE_CHECKPOINTS",
    "STAGEFLOW_OTEL_JAEGER_URL",
)


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: this one, minus telemetry settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _HERMETIC_UNSET}
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def cli_argv(*args: str) -> list[str]:
    """``python -m stageflow_otel ARGS`` with this interpreter."""
    return [sys.executable, "-m", "stageflow_otel", *args]


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and capture its output."""
    return subprocess.run(
        cli_argv(*args),
        cwd=cwd or REPO_ROOT,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-empty lines the process wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]
