"""The observability layer: spans, Prometheus metrics, structlog and OTel event export.

Everything attaches to the engine through its own seams (run hooks, event sinks, the extension
registry); the engine imports nothing from here.
"""

from __future__ import annotations

from .helpers import HelperTelemetry as HelperTelemetry
from .hook import Redactor as Redactor
from .hook import TelemetryHook as TelemetryHook
from .instrumentation import StageflowInstrumentor as StageflowInstrumentor
from .instrumentation import instrument as instrument
from .instrumentation import uninstrument as uninstrument
from .logging import add_stageflow_context as add_stageflow_context
from .logging import configure_logging as configure_logging
from .metrics import MetricsServer as MetricsServer
from .metrics import StageflowMetrics as StageflowMetrics
from .metrics import serve_metrics as serve_metrics
from .recorders import Recorder as Recorder
from .sinks import OtelLogEventSink as OtelLogEventSink
from .sinks import SpanEventSink as SpanEventSink
from .store_metrics import StoreMetrics as StoreMetrics
from .telemetry import Telemetry as Telemetry

__all__ = (
    "HelperTelemetry",
    "MetricsServer",
    "OtelLogEventSink",
    "Recorder",
    "Redactor",
    "SpanEventSink",
    "StageflowInstrumentor",
    "StageflowMetrics",
    "StoreMetrics",
    "Telemetry",
    "TelemetryHook",
    "add_stageflow_context",
    "configure_logging",
    "instrument",
    "serve_metrics",
    "uninstrument",
)
