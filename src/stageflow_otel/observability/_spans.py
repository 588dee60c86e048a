"""Starting the contract's spans cheaply, without giving up anything the SDK promises.

The OpenTelemetry SDK's ``Tracer.start_span`` is general-purpose: every attribute is cleaned
and bounded through a locked ``BoundedAttributes``, links and events get bounded containers
up front, and ``end()`` copies the span into a new ``ReadableSpan`` for the processors. For the
spans of the telemetry contract most of that work has nothing to do: the attributes are
strings, numbers and string lists built here, within every default limit.

:class:`SpanStarter` starts those spans as :class:`ContractSpan`, a subclass of the SDK's own
``Span`` that is its own ``ReadableSpan``. What the SDK promises still holds:

- the provider's sampler decides (the default ``ParentBased(ALWAYS_ON)`` is answered without
  a call, with the decision it would make), its id generator makes the ids, and a dropped span
  is a ``NonRecordingSpan`` as with the SDK;
- every span processor sees ``on_start`` (with the span itself, a full SDK ``Span``), the
  ``_on_ending`` hook and ``on_end``, so any processor and exporter works;
- attributes set by user code (``trace.get_current_span().set_attribute(...)`` inside a
  stage) and any attribute beyond the span limits go through the SDK's ``BoundedAttributes``,
  with its cleaning, truncation and counting of dropped attributes; so do values that may be
  longer than ``max_span_attribute_length`` when one is set;
- the SDK's own span metrics (``otel.sdk.span.*``) are recorded when enabled.

With a tracer that is not the SDK's (the API's no-op tracer, another SDK), or an SDK whose
tracer lacks what this relies on, spans are started through ``tracer.start_span``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

__all__ = ("ContractSpan", "SpanStarter")

logger = logging.getLogger("stageflow_otel.observability")

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_NO_EVENTS: tuple[Any, ...] = ()
_TRACER_FIELDS = (
    "sampler",
    "resource",
    "span_processor",
    "id_generator",
    "instrumentation_info",
    "_span_limits",
    "_instrumentation_scope",
    "_is_enabled",
)


class ContractSpan(sdk_trace.Span):
    """An SDK ``Span`` started by :class:`SpanStarter`; see the module documentation.

    Its attributes live in a plain dict until something needs the SDK's bounded mapping (an
    attribute set by user code, or one over the limits); events and links get their bounded
    containers when the first one is added after the start.
    """

    def __init__(
        self,
        tracer: Any,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
        record_end_metrics: Any,
    ) -> None:
        # The SDK's __init__ is deliberately not called: every field it sets is set here.
        limits = tracer._span_limits
        self._name = name
        self._context = span_context
        self._kind = kind
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = tracer._instrumentation_scope
        self._parent = parent
        self._start_time = time_ns()
        self._end_time: int | None = None
        self._resource = tracer.resource
        self._status = _UNSET
        self._sampler = tracer.sampler
        self._trace_config = None
        self._record_exception = True
        self._set_status_on_exception = True
        self._span_processor = tracer.span_processor
        self._limits = limits
        self._lock = threading.Lock()
        self._events = _NO_EVENTS
        self._links = links
        self._record_end_metrics = record_end_metrics
        max_attributes = limits.max_span_attributes
        if limits.max_span_attribute_length is None and (
            max_attributes is None or len(attributes) <= max_attributes
        ):
            self._attributes = attributes
        else:
            self._attributes = self._bounded(attributes)

    def get_span_context(self) -> SpanContext:
        """The span's context (the SDK's, without its ``typing.cast`` call)."""
        return self._context  # type: ignore[return-value]

    def _bounded(self, attributes: Mapping[str, Any]) -> BoundedAttributes:
        limits = self._limits
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )

    def set_contract_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set attributes built by the telemetry layer (already valid attribute values)."""
        with self._lock:
            if self._end_time is not None:
                logger.warning("Setting attribute on ended span.")
                return
            current: Any = self._attributes
            if type(current) is dict:
                limit = self._limits.max_span_attributes
                if self._limits.max_span_attribute_length is None and (
                    limit is None or len(current) + len(attributes) <= limit
                ):
                    current.update(attributes)
                    return
                current = self._attributes = self._bounded(current)
            current._set_items(attributes)

    def _user_attributes(self) -> None:
        """From now on attributes go through the SDK's bounded, cleaning mapping."""
        if type(self._attributes) is dict:
            self._attributes = self._bounded(self._attributes)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """See ``opentelemetry.trace.Span.set_attributes`` (cleaned and bounded)."""
        with self._lock:
            if self._end_time is None:
                self._user_attributes()
        super().set_attributes(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        """See ``opentelemetry.trace.Span.set_attribute`` (cleaned and bounded)."""
        with self._lock:
            if self._end_time is None:
                self._user_attributes()
        super().set_attribute(key, value)

    def _add_event(self, event: Any) -> None:
        with self._lock:
            if self._end_time is None:
                events: Any = self._events
                if events is _NO_EVENTS:
                    events = self._events = BoundedList(self._limits.max_events)
                events.append(event)
                return
        logger.warning("Tried calling _add_event on an ended span.")

    def _add_link(self, link: Link) -> None:
        with self._lock:
            if self._end_time is None:
                if not isinstance(self._links, BoundedList):
                    self._links = BoundedList.from_seq(self._limits.max_links, self._links)
                self._links.append(link)
                return
        logger.warning("Tried calling _add_link on an ended span.")

    def end(self, end_time: int | None = None) -> None:
        """End the span and hand it, as its own ``ReadableSpan``, to the span processors."""
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            attributes: Any = self._attributes
            if type(attributes) is not dict:
                attributes._immutable = True
        if self._record_end_metrics is not None:
            self._record_end_metrics()
        processor = self._span_processor
        processor._on_ending(self)
        processor.on_end(self)


class SpanStarter:
    """Starts the contract's spans on ``tracer``: as :class:`ContractSpan` on the SDK's tracer.

    Args:
        tracer: The tracer of the telemetry (``trace.get_tracer(...)``).
    """

    __slots__ = ("_default_sampler", "_light", "_metrics_noop", "tracer")

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._light = isinstance(tracer, sdk_trace.Tracer) and all(
            hasattr(tracer, field) for field in _TRACER_FIELDS
        )
        tracer_metrics = getattr(tracer, "_tracer_metrics", None)
        self._metrics_noop = tracer_metrics is None or type(tracer_metrics).__name__.startswith(
            "NoOp"
        )
        self._default_sampler = sampling.DEFAULT_ON

    @property
    def light(self) -> bool:
        """Whether spans are started as :class:`ContractSpan` (else ``tracer.start_span``)."""
        return self._light

    def start(
        self,
        name: str,
        attributes: dict[str, Any],
        *,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        links: Sequence[Link] | None = None,
    ) -> trace.Span:
        """Start a span, a child of the span current in ``context`` (default: the current one).

        ``attributes`` must hold valid attribute values; the span keeps the dict.
        """
        tracer: Any = self.tracer
        if not self._light:
            return tracer.start_span(  # type: ignore[no-any-return]
                name, context=context, kind=kind, attributes=attributes, links=links or ()
            )
        current = trace.get_current_span(context).get_span_context()
        if not tracer._is_enabled():
            return trace.NonRecordingSpan(current)
        parent: SpanContext | None = current
        sampler = tracer.sampler
        id_generator = tracer.id_generator
        trace_state = None
        if current.is_valid:
            trace_id = current.trace_id
            random = current.trace_flags & _RANDOM
        else:
            parent = None
            trace_id = id_generator.generate_trace_id()
            random = _RANDOM if id_generator.is_trace_id_random() else 0
        decision: Any
        if sampler is self._default_sampler:
            # What ParentBased(ALWAYS_ON) decides, without the call and its result objects.
            if parent is None:
                decision = sampling.Decision.RECORD_AND_SAMPLE
            else:
                trace_state = parent.trace_state
                decision = (
                    sampling.Decision.RECORD_AND_SAMPLE
                    if parent.trace_flags.sampled
                    else sampling.Decision.DROP
                )
        else:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, links)
            decision = result.decision
            trace_state = result.trace_state
            if result.attributes is not None:
                attributes = dict(result.attributes)
        sampled = decision.is_sampled()
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        if random:
            flags = TraceFlags(flags | random)
        span_context = SpanContext(
            trace_id,
            id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=trace_state,
        )
        record_end_metrics = (
            None if self._metrics_noop else tracer._tracer_metrics.start_span(parent, decision)
        )
        if not decision.is_recording():
            return trace.NonRecordingSpan(span_context)
        span = ContractSpan(
            tracer,
            name,
            span_context,
            parent,
            kind,
            attributes,
            tuple(links) if links else (),
            record_end_metrics,
        )
        tracer.span_processor.on_start(span, parent_context=context)
        return span
