"""Helpers for testing observed pipelines, in the spirit of ``structlog.testing``.

:func:`in_memory_telemetry` builds a :class:`~stageflow_otel.observability.Telemetry` on private
providers (a ``TracerProvider`` with a ``SimpleSpanProcessor`` into an ``InMemorySpanExporter``,
and a fresh ``CollectorRegistry``), so a test never touches a global. :func:`span_tree` dumps
finished spans as an indented tree of names to compare with a literal list::

    telemetry = in_memory_telemetry()
    await pipeline.run(hooks=telemetry.hooks)
    assert telemetry.tree() == [
        "pipeline.run checkout",
        "  stage.run load",
        "  stage.run price",
    ]

This module imports the OpenTelemetry SDK and ``prometheus_client``; the engine does not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from stageflow_otel.core.seams import RunHook
from stageflow_otel.observability.telemetry import Telemetry

__all__ = (
    "InMemoryTelemetry",
    "OpenSpanTracker",
    "SiblingOrder",
    "in_memory_telemetry",
    "span_tree",
)

INDENT = "  "
"""One level of :func:`span_tree` indentation."""


SiblingOrder = Literal["start", "name"]
"""How :func:`span_tree` orders the children of a span."""


def span_tree(spans: Iterable[ReadableSpan], *, order: SiblingOrder = "start") -> list[str]:
    """An indented tree of span names, one line per span.

    A span whose parent is not among ``spans`` (a root, or a child of a caller's or remote
    span) starts a tree at the left margin. Each level is indented by two spaces.

    Args:
        spans: Finished spans, for example ``InMemorySpanExporter().get_finished_spans()``.
        order: ``"start"`` sorts siblings by start time, then name; ``"name"`` by name, then
            start time. Concurrent stages start in whatever order the scheduler picks (trio
            shuffles it on purpose), so compare their trees by name.

    Returns:
        The lines of the tree, parents before their children.
    """
    spans = list(spans)
    known = {span.context.span_id for span in spans if span.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in known else None, []).append(span)

    def by_start(span: ReadableSpan) -> tuple[int, str]:
        return (span.start_time or 0, span.name)

    def by_name(span: ReadableSpan) -> tuple[str, int]:
        return (span.name, span.start_time or 0)

    key = by_name if order == "name" else by_start

    lines: list[str] = []
    # Iterative depth-first walk: deep subpipeline nesting never hits the recursion limit.
    stack: list[tuple[ReadableSpan, int]] = [
        (span, 0) for span in sorted(children.get(None, ()), key=key, reverse=True)
    ]
    while stack:
        span, depth = stack.pop()
        lines.append(f"{INDENT * depth}{span.name}")
        span_id = span.context.span_id if span.context is not None else None
        kids = sorted(children.get(span_id, ()), key=key, reverse=True) if span_id else ()
        stack.extend((kid, depth + 1) for kid in kids)
    return lines


class OpenSpanTracker(SpanProcessor):
    """A span processor that remembers spans started and not ended yet.

    Add it to a ``TracerProvider`` to check that a run leaves no span open, whatever way it
    ended (cancellation included).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by span id: ``on_end`` gets a new ``ReadableSpan``, not the started object.
        self._open: dict[int, Span] = {}
        self.started = 0
        self.ended = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Remember ``span`` as open."""
        with self._lock:
            self._open[span.context.span_id] = span
            self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        """Forget ``span``."""
        with self._lock:
            if span.context is not None:
                self._open.pop(span.context.span_id, None)
            self.ended += 1

    def open_spans(self) -> list[str]:
        """Names of the spans started and not ended, sorted."""
        with self._lock:
            return sorted(span.name for span in self._open.values())

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered."""
        return True


@dataclass
class InMemoryTelemetry:
    """A :class:`Telemetry` on private, in-memory providers, and ways to read what it recorded.

    Attributes:
        telemetry: The telemetry to pass to pipelines (``hooks``, ``event_sink``).
        tracer_provider: The private tracer provider.
        exporter: Where finished spans are kept.
        registry: The private Prometheus registry.
        tracker: The spans started and not ended yet.
    """

    telemetry: Telemetry
    tracer_provider: TracerProvider
    exporter: InMemorySpanExporter
    registry: CollectorRegistry
    tracker: OpenSpanTracker = field(default_factory=OpenSpanTracker)

    @property
    def hooks(self) -> tuple[RunHook, ...]:
        """The run hooks to pass to ``build``/``run``."""
        return self.telemetry.hooks

    def spans(self) -> tuple[ReadableSpan, ...]:
        """The finished spans, in the order they ended."""
        return tuple(self.exporter.get_finished_spans())

    def spans_named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``."""
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name``.

        Raises:
            LookupError: If there is no such span, or more than one.
        """
        found = self.spans_named(name)
        if len(found) != 1:
            names = sorted({span.name for span in self.exporter.get_finished_spans()})
            raise LookupError(f"expected one span {name!r}, found {len(found)} (spans: {names})")
        return found[0]

    def tree(self, *, order: SiblingOrder = "start") -> list[str]:
        """:func:`span_tree` of the finished spans."""
        return span_tree(self.exporter.get_finished_spans(), order=order)

    def open_spans(self) -> list[str]:
        """Names of spans started and not ended yet."""
        return self.tracker.open_spans()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """A sample of the registry (``registry.get_sample_value``); ``None`` when absent."""
        return self.registry.get_sample_value(name, dict(labels) if labels else None)

    def clear(self) -> None:
        """Forget the finished spans (metrics keep counting)."""
        self.exporter.clear()

    def shutdown(self) -> None:
        """Shut down the telemetry (event export, metrics servers) and the tracer provider."""
        self.telemetry.shutdown(timeout=5.0)
        self.tracer_provider.shutdown()


def in_memory_telemetry(
    *, span_processors: Sequence[SpanProcessor] = (), **options: Any
) -> InMemoryTelemetry:
    """Build a :class:`Telemetry` on private in-memory providers.

    Args:
        span_processors: More processors to add to the tracer provider.
        **options: Keyword arguments of :class:`Telemetry` (``interceptor_spans``,
            ``event_exporter``, ``max_stage_names``, ...); ``tracer_provider`` and
            ``registry`` are made here.

    Returns:
        The telemetry and its providers; call :meth:`InMemoryTelemetry.shutdown` when done.
    """
    tracker = OpenSpanTracker()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(tracker)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for processor in span_processors:
        provider.add_span_processor(processor)
    registry = CollectorRegistry()
    telemetry = Telemetry(tracer_provider=provider, registry=registry, **options)
    return InMemoryTelemetry(telemetry, provider, exporter, registry, tracker)
