"""The contract's spans are SDK spans started cheaply, keeping every SDK promise."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stageflow_otel import Pipeline, StageContext
from stageflow_otel.observability import Telemetry
from stageflow_otel.observability._spans import ContractSpan, SpanStarter
from stageflow_otel.testing import span_tree

ATTRIBUTES: dict[str, Any] = {
    "stageflow.stage.name": "a",
    "stageflow.stage.attempt": 1,
    "tags": ["x", "y"],
}


def provider_with(
    *processors: SpanProcessor, **options: Any
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(**options)
    for processor in processors:
        provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def comparable(span: ReadableSpan) -> dict[str, Any]:
    """What an exporter sees of a span, minus ids and times."""
    document: dict[str, Any] = json.loads(span.to_json())
    for key in ("context", "parent_id", "start_time", "end_time"):
        document.pop(key)
    for event in document["events"]:
        event.pop("timestamp")
        event["attributes"].pop("exception.stacktrace", None)
    for link in document["links"]:
        link.pop("context")
    return document


def exercise(span: trace.Span) -> None:
    span.set_attribute("late", 3)
    span.add_event("happened", {"n": 1})
    span.add_link(trace.INVALID_SPAN_CONTEXT)  # invalid: ignored by both
    span.record_exception(ValueError("boom"))
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.update_name("renamed")
    span.end()


def test_an_exporter_sees_the_same_span_either_way() -> None:
    provider, exporter = provider_with()
    tracer = provider.get_tracer("t")
    starter = SpanStarter(tracer)
    assert starter.light
    parent = tracer.start_span("parent")
    context = trace.set_span_in_context(parent)
    link = Link(parent.get_span_context(), {"stageflow.link.role": "upstream"})

    exercise(
        tracer.start_span(
            "s", context=context, attributes=dict(ATTRIBUTES), links=[link], kind=SpanKind.SERVER
        )
    )
    light = starter.start(
        "s", dict(ATTRIBUTES), context=context, links=[link], kind=SpanKind.SERVER
    )
    assert isinstance(light, ContractSpan)
    exercise(light)

    sdk_span, light_span = exporter.get_finished_spans()
    assert comparable(light_span) == comparable(sdk_span)
    assert light_span.parent == parent.get_span_context()
    assert light_span.context.trace_id == parent.get_span_context().trace_id
    assert light_span.context.trace_flags == sdk_span.context.trace_flags
    assert light_span.end_time is not None
    assert light_span.start_time is not None


def test_ending_twice_and_setting_after_the_end_change_nothing() -> None:
    provider, exporter = provider_with()
    span = SpanStarter(provider.get_tracer("t")).start("s", {"a": 1})
    assert isinstance(span, ContractSpan)
    span.end()
    span.end()
    span.set_attribute("b", 2)
    span.set_contract_attributes({"c": 3})
    span.add_event("late")

    [finished] = exporter.get_finished_spans()
    assert dict(finished.attributes or {}) == {"a": 1}
    assert finished.events == ()


def test_user_attributes_are_cleaned_and_bounded_like_the_sdks() -> None:
    limits = SpanLimits(max_span_attributes=3, max_span_attribute_length=4)
    provider, exporter = provider_with(span_limits=limits)
    span = SpanStarter(provider.get_tracer("t")).start("s", {"k1": "long value"})
    span.set_attribute("k2", object())  # type: ignore[arg-type]  # not an attribute value: dropped by the SDK's rules
    span.set_attribute("k3", ["abcdef"])
    span.set_attributes({"k4": 4, "k5": 5})
    span.end()

    [finished] = exporter.get_finished_spans()
    assert dict(finished.attributes or {}) == {"k3": ("abcd",), "k4": 4, "k5": 5}
    assert finished.dropped_attributes == 2


def test_contract_attributes_over_the_limits_go_through_the_bounded_mapping() -> None:
    provider, exporter = provider_with(span_limits=SpanLimits(max_span_attributes=2))
    span = SpanStarter(provider.get_tracer("t")).start("s", {"a": 1})
    assert isinstance(span, ContractSpan)
    span.set_contract_attributes({"b": 2, "c": 3})
    span.end()

    [finished] = exporter.get_finished_spans()
    assert dict(finished.attributes or {}) == {"b": 2, "c": 3}
    assert finished.dropped_attributes == 1


class AddsAttributeOnStart(SpanProcessor):
    """A processor that needs ``on_start``: it tags every span."""

    def __init__(self) -> None:
        self.started: list[trace.Span] = []

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        self.started.append(span)
        span.set_attribute("tagged.by", "processor")


def test_a_processor_that_needs_on_start_gets_full_sdk_spans() -> None:
    processor = AddsAttributeOnStart()
    provider, exporter = provider_with(processor)
    telemetry = Telemetry(tracer_provider=provider, canonical_logs=False, metrics=False)

    async def work(ctx: StageContext) -> None:
        return None

    graph = Pipeline("p").with_stage("a", work).build(hooks=telemetry.hooks)
    anyio.run(graph.run)

    assert all(isinstance(span, SdkSpan) for span in processor.started)
    assert len(processor.started) == 2
    spans = exporter.get_finished_spans()
    assert span_tree(spans) == ["pipeline.run p", "  stage.run a"]
    assert all(span.attributes["tagged.by"] == "processor" for span in spans)  # type: ignore[index]
    stage = next(span for span in spans if span.name == "stage.run a")
    assert stage.attributes["stageflow.stage.status"] == "ok"  # type: ignore[index]


class TaggingSampler(Sampler):
    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {"sampler.tag": "on"})

    def get_description(self) -> str:
        return "TaggingSampler"


@pytest.mark.parametrize(
    ("sampler", "recorded"),
    [(ALWAYS_OFF, False), (TraceIdRatioBased(0.0), False), (TaggingSampler(), True)],
)
def test_the_providers_sampler_decides(sampler: Sampler, recorded: bool) -> None:
    provider, exporter = provider_with(sampler=sampler)
    span = SpanStarter(provider.get_tracer("t")).start("s", {"a": 1})
    span.end()

    assert span.is_recording() is False
    assert span.get_span_context().trace_flags.sampled is recorded
    finished = exporter.get_finished_spans()
    assert len(finished) == int(recorded)
    if recorded:
        assert dict(finished[0].attributes or {}) == {"sampler.tag": "on"}


@pytest.mark.parametrize(("flags", "sampled"), [("01", True), ("00", False)])
def test_the_default_sampler_follows_a_remote_parent(flags: str, sampled: bool) -> None:
    provider, exporter = provider_with()
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    carrier = {"traceparent": f"00-{trace_id}-{span_id}-{flags}", "tracestate": "vendor=v1"}
    context = TraceContextTextMapPropagator().extract(carrier)

    span = SpanStarter(provider.get_tracer("t")).start("s", {}, context=context)
    span.end()

    span_context = span.get_span_context()
    assert format(span_context.trace_id, "032x") == trace_id
    assert span_context.trace_flags.sampled is sampled
    assert span_context.trace_state.get("vendor") == "v1"
    assert len(exporter.get_finished_spans()) == int(sampled)


def test_parent_based_sampler_instances_other_than_the_default_are_called() -> None:
    provider, exporter = provider_with(sampler=ParentBased(TraceIdRatioBased(0.0)))
    span = SpanStarter(provider.get_tracer("t")).start("root", {})
    span.end()

    assert not span.get_span_context().trace_flags.sampled
    assert exporter.get_finished_spans() == ()


def test_another_tracer_is_used_as_it_is() -> None:
    starter = SpanStarter(trace.NoOpTracer())

    span = starter.start("s", {"a": 1})

    assert not starter.light
    assert not span.is_recording()


def test_spans_opened_inside_a_stage_are_children_of_its_span() -> None:
    provider, exporter = provider_with()
    telemetry = Telemetry(tracer_provider=provider, canonical_logs=False, metrics=False)
    user_tracer = provider.get_tracer("user.code")

    async def call_out(ctx: StageContext) -> None:
        with user_tracer.start_as_current_span("GET /price") as span:
            span.set_attribute("http.status_code", 200)

    graph = Pipeline("p").with_stage("a", call_out).build(hooks=telemetry.hooks)
    anyio.run(graph.run)

    assert span_tree(exporter.get_finished_spans()) == [
        "pipeline.run p",
        "  stage.run a",
        "    GET /price",
    ]
