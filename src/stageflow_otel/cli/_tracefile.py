"""Trace files: finished spans as JSON lines, one span per line.

Each line is an object with ``name``, ``kind``, ``trace_id``, ``span_id``, ``parent_id``
(``null`` for a root), ``start_ns``, ``end_ns`` (Unix epoch nanoseconds), ``status``
(``unset`` | ``ok`` | ``error``), ``status_message``, ``attributes``, ``events`` (each with
``name``, ``time_ns``, ``attributes``) and ``links`` (each with ``trace_id``, ``span_id``,
``attributes``). Ids are lowercase hex, as in W3C ``traceparent``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import UsageError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = (
    "SpanEventRecord",
    "SpanRecord",
    "depth_first",
    "group_by_trace",
    "read_trace_file",
    "record_of",
    "write_trace_file",
)


@dataclass(frozen=True, slots=True)
class SpanEventRecord:
    """An event recorded on a span (``exception``, ``stageflow.stage.retry``, ...)."""

    name: str
    time_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, as written to and read from a trace file."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    kind: str = "INTERNAL"
    status: str = "unset"
    status_message: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[SpanEventRecord, ...] = ()
    links: tuple[Mapping[str, Any], ...] = ()

    @property
    def duration_ms(self) -> float:
        """Wall time of the span in milliseconds."""
        return max(self.end_ns - self.start_ns, 0) / 1e6

    @property
    def outcome(self) -> str:
        """``ok``, ``error``, ``skip`` or ``cancel``: what the timeline and the tree colour by.

        OpenTelemetry leaves the status Unset on success, skip and cancel; the ``stageflow.*``
        status attributes tell those apart.
        """
        if self.status == "error":
            return "error"
        stage_status = self.attributes.get("stageflow.stage.status")
        run_status = self.attributes.get("stageflow.run.status")
        if stage_status == "skip":
            return "skip"
        if "cancel" in (stage_status, run_status):
            return "cancel"
        if "fail" in (stage_status, run_status):
            return "error"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one trace file line."""
        return {
            "name": self.name,
            "kind": self.kind,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "status_message": self.status_message,
            "attributes": dict(self.attributes),
            "events": [
                {"name": e.name, "time_ns": e.time_ns, "attributes": dict(e.attributes)}
                for e in self.events
            ],
            "links": [dict(link) for link in self.links],
        }


def _plain(value: Any) -> Any:
    """An attribute value as JSON has it (sequence attributes become lists)."""
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return str(value)


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in (attributes or {}).items()}


def record_of(span: ReadableSpan) -> SpanRecord:
    """The :class:`SpanRecord` of a finished OpenTelemetry SDK span."""
    context = span.context
    parent = span.parent
    status = span.status
    return SpanRecord(
        name=span.name,
        kind=span.kind.name,
        trace_id=format(context.trace_id, "032x") if context else "",
        span_id=format(context.span_id, "016x") if context else "",
        parent_id=format(parent.span_id, "016x") if parent is not None else None,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        status=status.status_code.name.lower(),
        status_message=status.description or None,
        attributes=_attributes(span.attributes),
        events=tuple(
            SpanEventRecord(e.name, e.timestamp, _attributes(e.attributes)) for e in span.events
        ),
        links=tuple(
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ),
    )


def write_trace_file(path: Path, records: Iterable[SpanRecord]) -> int:
    """Write ``records`` as JSON lines, in start order; returns how many were written."""
    ordered = sorted(records, key=lambda r: (r.start_ns, r.end_ns))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in ordered:
            out.write(json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")))
            out.write("\n")
    return len(ordered)


_REQUIRED = ("name", "trace_id", "span_id", "start_ns", "end_ns")


def _parse_line(line: str, where: str) -> SpanRecord:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg}); expected one span per line") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a JSON object per line, got {type(raw).__name__}")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise UsageError(f"{where}: not a span record, missing {', '.join(missing)}")
    try:
        events = tuple(
            SpanEventRecord(str(e["name"]), int(e["time_ns"]), dict(e.get("attributes") or {}))
            for e in raw.get("events") or ()
        )
        return SpanRecord(
            name=str(raw["name"]),
            kind=str(raw.get("kind") or "INTERNAL"),
            trace_id=str(raw["trace_id"]),
            span_id=str(raw["span_id"]),
            parent_id=str(raw["parent_id"]) if raw.get("parent_id") else None,
            start_ns=int(raw["start_ns"]),
            end_ns=int(raw["end_ns"]),
            status=str(raw.get("status") or "unset").lower(),
            status_message=raw.get("status_message") or None,
            attributes=dict(raw.get("attributes") or {}),
            events=events,
            links=tuple(dict(link) for link in raw.get("links") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: malformed span record ({exc!r})") from None


def read_trace_file(path: Path) -> list[SpanRecord]:
    """Read a trace file written by :func:`write_trace_file`.

    Raises:
        UsageError: The file is missing, unreadable, empty, or a line is not a span record
            (the message names the line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"trace file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read trace file {str(path)!r}: {exc}") from None
    records = [
        _parse_line(line, f"{path}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not records:
        raise UsageError(f"trace file {str(path)!r} holds no spans")
    return records


def group_by_trace(records: Iterable[SpanRecord]) -> list[list[SpanRecord]]:
    """The records split by trace, traces in order of their first span's start."""
    traces: dict[str, list[SpanRecord]] = {}
    for record in records:
        traces.setdefault(record.trace_id, []).append(record)
    groups = [sorted(group, key=lambda r: (r.start_ns, -r.end_ns)) for group in traces.values()]
    return sorted(groups, key=lambda group: group[0].start_ns)


def depth_first(records: Iterable[SpanRecord]) -> list[tuple[SpanRecord, int]]:
    """``(record, depth)`` pairs, parents before children, siblings in start order.

    A span whose parent is not among ``records`` is a root (depth 0). The walk is iterative,
    so deeply nested subpipelines never reach the recursion limit.
    """
    spans = list(records)
    known = {r.span_id for r in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for record in spans:
        parent = record.parent_id if record.parent_id in known else None
        children.setdefault(parent, []).append(record)

    def order(record: SpanRecord) -> tuple[int, int, str]:
        return (record.start_ns, -record.end_ns, record.name)

    walk: list[tuple[SpanRecord, int]] = []
    stack = [(r, 0) for r in sorted(children.get(None, ()), key=order, reverse=True)]
    while stack:
        record, depth = stack.pop()
        walk.append((record, depth))
        kids = sorted(children.get(record.span_id, ()), key=order, reverse=True)
        stack.extend((kid, depth + 1) for kid in kids)
    return walk
