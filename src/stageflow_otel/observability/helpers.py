"""Telemetry of the helpers (``stageflow_otel.helpers``): span events, attributes, metrics.

The helpers import no telemetry library. They report through the engine's own channels: the
events a stage emits (``guardrail.verdict``, ...), which every run hook sees in the stage's
context. :class:`HelperTelemetry` is the run hook that records them: span events and
attributes on the current stage span, and Prometheus metrics in the registry of the
:class:`~stageflow_otel.observability.Telemetry` it is given. Pass it beside that telemetry's
hooks::

    helpers = HelperTelemetry(telemetry)
    graph = pipeline.build(hooks=(*telemetry.hooks, helpers))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter

from stageflow_otel.core.events import Event
from stageflow_otel.core.seams import RunHook
from stageflow_otel.helpers.guardrails import VERDICT_EVENT

from .metrics import LabelGuard, MetricSpec
from .telemetry import Telemetry

__all__ = (
    "GUARDRAIL_FINDINGS",
    "GUARDRAIL_VERDICTS",
    "HelperMetrics",
    "HelperTelemetry",
)

logger = logging.getLogger("stageflow_otel.observability")

GUARDRAIL_VERDICTS = MetricSpec(
    "stageflow_guardrail_verdicts", "Verdicts of guardrail checks (pass, redact, fail).",
    ("pipeline", "stage", "check", "verdict"),
)  # fmt: skip
GUARDRAIL_FINDINGS = MetricSpec(
    "stageflow_guardrail_findings", "What guardrail checks found, by kind (email, card, blocked_word, ...).",
    ("pipeline", "stage", "kind"),
)  # fmt: skip

GUARDRAIL_EVENT = "stageflow.guardrail.verdict"
"""The span event of a guardrail verdict."""


class HelperMetrics:
    """The Prometheus metrics of the helpers, registered in ``registry``.

    Args:
        registry: Where the metrics live (the telemetry's registry).

    Raises:
        ValueError: ``registry`` already holds them (another ``HelperTelemetry`` registered
            them).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.guardrail_verdicts = _counter(GUARDRAIL_VERDICTS)
        self.guardrail_findings = _counter(GUARDRAIL_FINDINGS)
        self._collectors = tuple(v for v in vars(self).values() if isinstance(v, Counter))
        registered: list[Any] = []
        try:
            for collector in self._collectors:
                registry.register(collector)
                registered.append(collector)
        except ValueError as exc:
            for collector in registered:
                registry.unregister(collector)
            raise ValueError(
                f"the registry already holds the helper metrics ({exc}); make one "
                "HelperTelemetry per registry and share it between pipelines"
            ) from None

    def unregister(self) -> None:
        """Remove these metrics from their registry."""
        for collector in self._collectors:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)


def _counter(spec: MetricSpec) -> Counter:
    return Counter(spec.name, spec.description, spec.labels, registry=None)


class HelperTelemetry(RunHook):
    """Records what the helpers report: span events, stage-span attributes, metrics.

    Args:
        telemetry: The telemetry whose registry (and label bounds) the metrics share; spans
            are recorded wherever the current span is (the stage span of the telemetry's
            hook).
        metrics: Record Prometheus metrics (``False``: span events and attributes only).

    Raises:
        ValueError: The telemetry's registry already holds the helper metrics.
    """

    def __init__(self, telemetry: Telemetry, *, metrics: bool = True) -> None:
        self.telemetry = telemetry
        self.labels: LabelGuard = telemetry.metrics or LabelGuard()
        self.metrics = HelperMetrics(telemetry.registry) if metrics else None
        self._handlers: dict[str, Callable[[Event], None]] = {
            VERDICT_EVENT: self._guardrail_verdict,
        }
        self.observed_events = frozenset(self._handlers)

    def on_event(self, event: Event) -> None:
        """Record a helper's event; other events pass by."""
        handler = self._handlers.get(event.type)
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            logger.exception("recording the helper event %r failed", event.type)

    def _stage_labels(self, fields: Any) -> tuple[str, str]:
        pipeline = self.labels.pipeline_label(str(fields.get("pipeline", "")))
        return pipeline, self.labels.stage_label(pipeline, str(fields.get("stage", "")))

    # -- guardrails ------------------------------------------------------------------------

    def _guardrail_verdict(self, event: Event) -> None:
        fields = event.fields
        check = str(fields.get("check", ""))
        verdict = str(fields.get("verdict", ""))
        kinds = [str(k) for k in fields.get("kinds", ())]
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                GUARDRAIL_EVENT,
                {
                    "stageflow.guardrail.check": check,
                    "stageflow.guardrail.verdict": verdict,
                    "stageflow.guardrail.findings": int(fields.get("findings", 0)),
                    "stageflow.guardrail.kinds": kinds,
                },
            )
        if self.metrics is not None:
            pipeline, stage = self._stage_labels(fields)
            self.metrics.guardrail_verdicts.labels(pipeline, stage, check, verdict).inc()
            for kind in kinds:
                self.metrics.guardrail_findings.labels(pipeline, stage, kind).inc()
