"""The engine, the tools and the helpers stay free of telemetry libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TELEMETRY = ("opentelemetry", "prometheus_client", "structlog")


@pytest.mark.parametrize(
    "module",
    [
        "stageflow_otel.core",
        "stageflow_otel.tools",
        "stageflow_otel.helpers",
        "stageflow_otel",
        "stageflow_otel.pipeline_files",
        "stageflow_otel.plugins",
        "stageflow_otel.distributed",
        "stageflow_otel.runs",
        "stageflow_otel.compression",
    ],
)
def test_module_imports_no_telemetry_library(module: str) -> None:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {TELEMETRY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_check_detects_a_telemetry_import() -> None:
    # The check above must be able to fail: importing the observability layer loads OTel.
    code = (
        "import json, sys, opentelemetry.trace\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {TELEMETRY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "opentelemetry" in json.loads(out.stdout)
