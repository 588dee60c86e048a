"""The tools package stays free of telemetry libraries."""

from __future__ import annotations

import json
import subprocess
import sys

TELEMETRY = ("opentelemetry", "prometheus_client", "structlog")


def test_tools_import_no_telemetry_library() -> None:
    code = (
        "import json, sys\n"
        "import stageflow_otel.tools\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {TELEMETRY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
