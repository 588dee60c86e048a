"""Helpers for the tool tests: run a function as the only stage of a real pipeline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from stageflow_otel import CollectingEventSink, Pipeline, PipelineResults, RunHook, StageContext

TOOL_EVENTS = frozenset(
    {
        "tool.invoked",
        "tool.started",
        "tool.completed",
        "tool.failed",
        "tool.denied",
        "tool.undone",
        "tool.undo_failed",
        "approval.requested",
        "approval.decided",
    }
)

StageBody = Callable[[StageContext], Awaitable[Mapping[str, Any] | None]]


async def run_stage(
    body: StageBody,
    *,
    hooks: Sequence[RunHook] | None = None,
    sink: CollectingEventSink | None = None,
    pipeline: str = "tools",
    stage: str = "act",
) -> tuple[PipelineResults, CollectingEventSink]:
    """Run ``body`` as stage ``act`` of a one-stage pipeline, collecting the run's events."""
    sink = CollectingEventSink() if sink is None else sink
    results = await Pipeline(pipeline).with_stage(stage, body).run(event_sink=sink, hooks=hooks)
    return results, sink


def tool_events(sink: CollectingEventSink) -> list[tuple[str, Mapping[str, Any]]]:
    """The tool and approval events of a run, in order."""
    return [(e.type, e.data) for e in sink.events if e.type in TOOL_EVENTS]


def tool_event_types(sink: CollectingEventSink) -> list[str]:
    """The types of the tool and approval events of a run, in order."""
    return [t for t, _ in tool_events(sink)]
