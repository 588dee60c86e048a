"""A self-contained HTML Gantt timeline of traces (no scripts, stylesheets or fonts to fetch).

One chart per trace: one row and one bar per span, indented under its parent, positioned by
its start and end, coloured by outcome (ok, error, skipped, cancelled). Hovering a bar shows
its attributes and events; markers on a bar show its span events (retries, exceptions).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ._tracefile import SpanRecord, depth_first, group_by_trace

__all__ = ("render_timeline", "write_timeline")

_OUTCOME_LABELS = (
    ("ok", "ok"),
    ("error", "error"),
    ("skip", "skipped"),
    ("cancel", "cancelled"),
)
_MAX_TIP_ATTRIBUTES = 40

_CSS = """
:root {
  --ok: #2f9e6f; --error: #d94848; --skip: #d9a23c; --cancel: #8b95a7;
  --ink: #1d2433; --muted: #667085; --line: #e6e9ef; --panel: #ffffff; --page: #f5f7fa;
  --label-width: 340px; --tail: 76px;
}
* { box-sizing: border-box; }
body {
  margin: 0; padding: 24px 32px 48px; background: var(--page); color: var(--ink);
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
header.page { display: flex; align-items: flex-end; justify-content: space-between;
  gap: 24px; margin-bottom: 18px; flex-wrap: wrap; }
header.page h1 { margin: 0; font-size: 20px; font-weight: 650; letter-spacing: -0.01em; }
header.page p { margin: 4px 0 0; color: var(--muted); }
.legend { display: flex; gap: 16px; align-items: center; color: var(--muted); }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.swatch { width: 14px; height: 10px; border-radius: 3px; display: inline-block; }
.swatch.ok { background: var(--ok); } .swatch.error { background: var(--error); }
.swatch.skip { background: var(--skip); } .swatch.cancel { background: var(--cancel); }
.swatch.event { width: 8px; height: 8px; border-radius: 0; transform: rotate(45deg);
  background: #fff; border: 1.5px solid var(--ink); }
section.trace { background: var(--panel); border: 1px solid var(--line); border-radius: 10px;
  margin-bottom: 20px; box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04); }
section.trace > h2 { margin: 0; padding: 12px 16px; font-size: 14px; font-weight: 600;
  border-bottom: 1px solid var(--line); display: flex; gap: 12px; align-items: baseline; }
section.trace > h2 .meta { color: var(--muted); font-weight: 400; font-size: 12px; }
.pill { font-size: 11px; font-weight: 600; padding: 1px 8px; border-radius: 999px; color: #fff; }
.pill.ok { background: var(--ok); } .pill.error { background: var(--error); }
.pill.skip { background: var(--skip); } .pill.cancel { background: var(--cancel); }
.chart { position: relative; padding: 0 16px 10px; }
.axis, .row { display: grid; grid-template-columns: var(--label-width) 1fr; }
.axis { height: 28px; position: sticky; top: 0; background: var(--panel); z-index: 2; }
.axis .ticks, .track { position: relative; margin-right: var(--tail); }
.tick { position: absolute; top: 9px; transform: translateX(-50%); color: var(--muted);
  font-size: 11px; white-space: nowrap; font-variant-numeric: tabular-nums; }
.tick.first { transform: none; }
.grid { position: absolute; top: 28px; bottom: 10px; left: calc(16px + var(--label-width));
  right: calc(16px + var(--tail)); pointer-events: none; }
.grid i { position: absolute; top: 0; bottom: 0; width: 1px; background: var(--line); }
.row { height: 24px; }
.row:hover { background: #f3f6fb; }
.label { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; padding-right: 12px;
  line-height: 24px; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; }
.label .op { color: var(--muted); }
.label .guide { color: #c3c9d4; }
.track { height: 24px; }
.bar { position: absolute; top: 5px; height: 14px; min-width: 4px; border-radius: 3px;
  cursor: default; }
.bar.ok { background: var(--ok); } .bar.error { background: var(--error); }
.bar.skip { background: repeating-linear-gradient(135deg, var(--skip) 0 5px, #e9c27a 5px 10px); }
.bar.cancel { background: var(--cancel); }
.bar.run { opacity: 0.45; top: 4px; height: 16px; }
.bar.interceptor { top: 8px; height: 8px; opacity: 0.85; }
.bar.tool { box-shadow: inset 0 0 0 1.5px rgba(255, 255, 255, 0.6); }
.dur { position: absolute; top: 4px; font-size: 11px; color: var(--muted); white-space: nowrap;
  padding-left: 6px; font-variant-numeric: tabular-nums; pointer-events: none; }
.marker { position: absolute; top: 8px; width: 8px; height: 8px; margin-left: -4px;
  transform: rotate(45deg); background: #fff; border: 1.5px solid var(--ink); z-index: 1;
  pointer-events: none; }
.tip { display: none; position: absolute; top: 18px; left: 0; z-index: 10; min-width: 280px;
  max-width: 520px; background: #101828; color: #f2f4f7; border-radius: 8px; padding: 10px 12px;
  font-size: 12px; line-height: 1.45; box-shadow: 0 8px 24px rgba(16, 24, 40, 0.25); }
.bar.tip-left .tip { left: auto; right: 0; }
.bar:hover { outline: 2px solid rgba(16, 24, 40, 0.35); outline-offset: 1px; z-index: 5; }
.bar:hover .tip { display: block; }
.tip b { display: block; font-size: 13px; margin-bottom: 4px; }
.tip table { border-collapse: collapse; width: 100%; }
.tip td { padding: 1px 0; vertical-align: top; }
.tip td:first-child { color: #98a2b3; padding-right: 10px; white-space: nowrap; }
.tip td:last-child { word-break: break-all; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 11px; }
.tip td.event b { font-family: system-ui, sans-serif; font-size: 12px; margin: 0; }
.tip td.event .attrs { color: #d0d5dd; }
.tip .section { color: #98a2b3; margin-top: 6px; font-size: 11px; text-transform: uppercase;
  letter-spacing: 0.04em; }
footer { color: var(--muted); font-size: 11px; margin-top: 8px; }
"""


def _nice_step(span_ms: float, target: int = 8) -> float:
    """A 1/2/5 x 10^k step giving about ``target`` ticks over ``span_ms``."""
    if span_ms <= 0:
        return 1.0
    raw = span_ms / target
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)  # pragma: no cover - the loop always returns


def _format_ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def _tick_label(value: float, step: float) -> str:
    if step >= 1000:
        return f"{value / 1000:g} s"
    if step >= 1:
        return f"{value:g} ms"
    return f"{value:.{max(0, -math.floor(math.log10(step)))}f} ms"


def _span_class(record: SpanRecord) -> str:
    name = record.name
    if name.startswith(("pipeline.run", "subpipeline.run")):
        return "run"
    if name.startswith("interceptor "):
        return "interceptor"
    if name.startswith("execute_tool"):
        return "tool"
    return "stage"


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _event_cell(name: str, attributes: Mapping[str, Any]) -> str:
    shown = [
        f"{escape(key)}={escape(_value_text(value))}"
        for key, value in attributes.items()
        if key != "exception.stacktrace"
    ]
    if "exception.stacktrace" in attributes:
        shown.append("(stack trace in the trace file)")
    details = f'<div class="attrs">{"<br>".join(shown)}</div>' if shown else ""
    return f"<b>{escape(name)}</b>{details}"


def _tooltip(record: SpanRecord, offset_ms: float) -> str:
    rows = [
        ("duration", _format_ms(record.duration_ms)),
        ("starts at", f"+{_format_ms(offset_ms)}"),
        (
            "status",
            record.outcome + (f": {record.status_message}" if record.status_message else ""),
        ),
        ("kind", record.kind),
        ("span id", record.span_id),
    ]
    attributes = sorted(record.attributes.items())
    attribute_rows = [(k, _value_text(v)) for k, v in attributes[:_MAX_TIP_ATTRIBUTES]]
    if len(attributes) > _MAX_TIP_ATTRIBUTES:
        attribute_rows.append(("...", f"{len(attributes) - _MAX_TIP_ATTRIBUTES} more"))
    parts = [f"<b>{escape(record.name)}</b>", _table(rows)]
    if attribute_rows:
        parts += ['<div class="section">attributes</div>', _table(attribute_rows)]
    if record.events:
        cells = "".join(
            f"<tr><td>+{_format_ms((event.time_ns - record.start_ns) / 1e6)}</td>"
            f'<td class="event">{_event_cell(event.name, event.attributes)}</td></tr>'
            for event in record.events
        )
        parts += ['<div class="section">events</div>', f"<table>{cells}</table>"]
    return "".join(parts)


def _table(rows: Iterable[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _label(record: SpanRecord, guide: str) -> str:
    operation, _, subject = record.name.partition(" ")
    if subject:
        text = f'<span class="op">{escape(operation)}</span> {escape(subject)}'
    else:
        text = escape(record.name)
    return (
        f'<div class="label" title="{escape(record.name)}">'
        f'<span class="guide">{guide}</span>{text}</div>'
    )


def _guides(walk: Sequence[tuple[SpanRecord, int]]) -> list[str]:
    """Tree guides (``├ └ │``) for each row of a depth-first walk."""
    depths = [depth for _, depth in walk]
    # A row is its parent's last child unless the next row at its depth or shallower is at
    # its depth: a "next smaller or equal" scan from the end, O(n).
    last = [True] * len(depths)
    stack: list[int] = []
    for index in reversed(range(len(depths))):
        depth = depths[index]
        while stack and depths[stack[-1]] > depth:
            stack.pop()
        last[index] = not (stack and depths[stack[-1]] == depth)
        stack.append(index)
    guides: list[str] = []
    open_levels: list[bool] = []
    for (_, depth), is_last in zip(walk, last, strict=True):
        del open_levels[depth:]
        if depth == 0:
            guides.append("")
        else:
            trunk = "".join("&#x2502; " if more else "&#xa0; " for more in open_levels[1:])
            guides.append(trunk + ("&#x2514; " if is_last else "&#x251c; "))
        open_levels.append(not is_last)
    return guides


def _render_trace(spans: Sequence[SpanRecord]) -> str:
    walk = depth_first(spans)
    start = min(r.start_ns for r in spans)
    end = max(r.end_ns for r in spans)
    total_ms = max((end - start) / 1e6, 0.001)
    step = _nice_step(total_ms)
    ticks = [i * step for i in range(int(total_ms // step) + 1)]
    root = walk[0][0]
    started = _dt.datetime.fromtimestamp(start / 1e9, tz=_dt.UTC)

    def pct(ns: int) -> float:
        return (ns - start) / 1e6 / total_ms * 100

    tick_html = "".join(
        f'<span class="tick{" first" if i == 0 else ""}" style="left:{v / total_ms * 100:.3f}%">'
        f"{_tick_label(v, step)}</span>"
        for i, v in enumerate(ticks)
    )
    grid_html = "".join(f'<i style="left:{v / total_ms * 100:.3f}%"></i>' for v in ticks)
    rows = []
    for (record, _depth), guide in zip(walk, _guides(walk), strict=True):
        left = pct(record.start_ns)
        width = max(pct(record.end_ns) - left, 0.0)
        kind = _span_class(record)
        side = " tip-left" if left > 55 else ""
        markers = "".join(
            f'<span class="marker" style="left:{pct(event.time_ns):.3f}%" '
            f'title="{escape(event.name)}"></span>'
            for event in record.events
        )
        offset_ms = (record.start_ns - start) / 1e6
        bar = (
            f'<div class="bar {record.outcome} {kind}{side}" data-span-id="{escape(record.span_id)}"'
            f' data-name="{escape(record.name)}" style="left:{left:.3f}%;width:{width:.3f}%">'
            f'<span class="tip">{_tooltip(record, offset_ms)}</span></div>'
        )
        duration = (
            f'<span class="dur" style="left:{min(left + width, 100):.3f}%">'
            f"{_format_ms(record.duration_ms)}</span>"
        )
        rows.append(
            f'<div class="row">{_label(record, guide)}'
            f'<div class="track">{bar}{markers}{duration}</div></div>'
        )
    return (
        f'<section class="trace" data-trace-id="{escape(root.trace_id)}">'
        f"<h2>{escape(root.name)} "
        f'<span class="pill {root.outcome}">{escape(root.outcome)}</span>'
        f'<span class="meta">{_format_ms(total_ms)} &#xb7; {len(spans)} spans &#xb7; '
        f"started {started.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC &#xb7; "
        f"trace {escape(root.trace_id)}</span></h2>"
        f'<div class="chart"><div class="grid">{grid_html}</div>'
        f'<div class="axis"><div></div><div class="ticks">{tick_html}</div></div>'
        f"{''.join(rows)}</div></section>"
    )


def render_timeline(
    records: Iterable[SpanRecord], *, title: str = "stageflow-otel timeline"
) -> str:
    """The HTML page of a timeline of ``records`` (one chart per trace, oldest first)."""
    traces = group_by_trace(records)
    span_count = sum(len(t) for t in traces)
    legend = "".join(
        f'<span><i class="swatch {key}"></i>{label}</span>' for key, label in _OUTCOME_LABELS
    )
    legend += '<span><i class="swatch event"></i>span event</span>'
    plural = "" if len(traces) == 1 else "s"
    body = "".join(_render_trace(trace) for trace in traces)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header class="page"><div><h1>{escape(title)}</h1>'
        f"<p>{len(traces)} trace{plural} &#xb7; {span_count} spans &#xb7; hover a bar for its "
        "attributes and events</p></div>"
        f'<div class="legend">{legend}</div></header>'
        f"{body}<footer>Generated by stageflow-otel.</footer></body></html>\n"
    )


def write_timeline(
    path: Path, records: Iterable[SpanRecord], *, title: str = "stageflow-otel timeline"
) -> Path:
    """Write the timeline of ``records`` to ``path`` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_timeline(records, title=title), encoding="utf-8")
    return path
