"""Recorders: each kind of telemetry a run produces, called from the one telemetry hook.

:class:`~stageflow_otel.observability.TelemetryHook` wraps each run, stage, interceptor,
subpipeline and tool call once. Around each it starts the span (the span recorder: the span is
what the others hang their records on), works out once how the unit of work ended, and tells
every :class:`Recorder`: the metric recorder (Prometheus), the log recorder (canonical lines)
and any recorder the application adds (``Telemetry(recorders=[...])``).

A recorder overrides the methods it needs; the others cost nothing. It must be cheap (it runs
on the pipeline's event loop, for every stage) and must not raise: one that raises is logged
once and left out from then on, like a trio ``Instrument``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stageflow_otel.core.events import Event
    from stageflow_otel.core.seams import StageCall, SubpipelineCall, ToolCall

    from .records import (
        InterceptorOutcome,
        RunOutcome,
        RunRecord,
        StageOutcome,
        StageRecord,
        SubpipelineOutcome,
        ToolOutcome,
    )

__all__ = ("Recorder",)


class Recorder:
    """Base class of recorders; every method does nothing unless overridden."""

    def run_started(self, run: RunRecord) -> None:
        """A run started; its span is current."""

    def run_ended(self, run: RunRecord, outcome: RunOutcome) -> None:
        """A run ended; its span has ended."""

    def stage_started(self, stage: StageRecord, call: StageCall) -> None:
        """A stage started; its span is current."""

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        """A stage ended (all its attempts); its span has ended."""

    def stage_retried(self, stage: StageRecord, event: Event) -> None:
        """A stage is about to be retried (``event`` is its ``stage.retrying``)."""

    def interceptor_ended(self, call: StageCall, outcome: InterceptorOutcome) -> None:
        """An interceptor's part of a stage ended."""

    def subpipeline_ended(self, call: SubpipelineCall, outcome: SubpipelineOutcome) -> None:
        """A child run spawned by a stage ended."""

    def tool_ended(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """A tool call ended."""

    @classmethod
    def overrides(cls, method: str) -> bool:
        """Whether the subclass overrides ``method`` (the hook calls only those)."""
        return getattr(cls, method) is not getattr(Recorder, method)
