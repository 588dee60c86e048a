"""The log recorder: one canonical line per stage (``stage.wide``) and per run (``pipeline.wide``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .logging import CanonicalLog
from .recorders import Recorder

if TYPE_CHECKING:
    from stageflow_otel.core.seams import StageCall

    from .records import RunOutcome, RunRecord, StageOutcome, StageRecord

__all__ = ("LogRecorder",)


def _trace_fields(stage_or_run_ids: tuple[str, str] | None) -> dict[str, str]:
    """``trace_id``/``span_id`` for a log line; nothing when tracing is off."""
    if stage_or_run_ids is None:
        return {}
    trace_id, span_id = stage_or_run_ids
    return {"trace_id": trace_id, "span_id": span_id}


class LogRecorder(Recorder):
    """Writes the canonical lines, in a ``finally``: failed and cancelled work is logged too.

    Where they go is resolved once per run (:class:`~stageflow_otel.observability.logging.CanonicalLog`),
    and a line's fields are built only when its level would be handled.
    """

    def run_started(self, run: RunRecord) -> None:
        """Resolve where the run's lines go."""
        run.canonical = CanonicalLog()

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        """Write ``stage.wide``."""
        canonical: CanonicalLog | None = stage.run.canonical
        failed = outcome.status == "fail"
        if canonical is None or not canonical.enabled(failed):
            return
        run = stage.run
        output = outcome.output
        fields: dict[str, Any] = {
            "pipeline": run.pipeline,
            "pipeline_run_id": run.run_id,
            "stage": call.stage,
            "kind": call.kind._value_,
            "status": outcome.status,
            "attempt": outcome.attempt,
            "duration_ms": round(outcome.duration_s * 1000, 3),
            "queue_wait_ms": round(call.queue_wait_s * 1000, 3),
            "error": output.error if output is not None else None,
            "error_type": outcome.error_type,
            "data_keys": sorted(str(k) for k in output.data) if output is not None else [],
            **_trace_fields(stage.hex_ids),
        }
        canonical.write("stage.wide", fields, error=failed)

    def run_ended(self, run: RunRecord, outcome: RunOutcome) -> None:
        """Write ``pipeline.wide``."""
        canonical: CanonicalLog | None = run.canonical
        failed = outcome.status == "fail"
        if canonical is None or not canonical.enabled(failed):
            return
        span_context = run.span.get_span_context()
        fields: dict[str, Any] = {
            "pipeline": run.pipeline,
            "pipeline_run_id": run.run_id,
            "status": outcome.status,
            "duration_ms": round(outcome.duration_s * 1000, 3),
            "stage_count": run.stage_count,
            "stages_run": outcome.stages_run,
            "failed_stage": outcome.failed_stage,
            "error": outcome.error,
            "error_type": outcome.error_type,
            "depth": run.depth,
            **_trace_fields(run.hex_ids(span_context) if span_context.is_valid else None),
        }
        canonical.write("pipeline.wide", fields, error=failed)
