"""Terminal output: a live stage board while runs go, run summaries, and the trace as a tree.

The board is fed by an event sink (:class:`BoardSink`) that only observes the run's lifecycle
events; it renders through ``rich.live.Live`` on a terminal and prints nothing on its own
otherwise, so piped output stays plain: one summary line per run, then the tree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ._tracefile import SpanRecord, depth_first

__all__ = ("BoardSink", "RunSummary", "StageBoard", "render_trace_tree", "summary_line")

OUTCOME_STYLE: Mapping[str, str] = {
    "ok": "green",
    "error": "bold red",
    "fail": "bold red",
    "skip": "yellow",
    "cancel": "bright_black",
    "running": "cyan",
    "retrying": "magenta",
    "pending": "bright_black",
}
_ICONS: Mapping[str, str] = {
    "ok": "✔",
    "fail": "✘",
    "skip": "↷",
    "cancel": "■",
    "pending": "·",
    "retrying": "↻",
}
_COMPLETION = {
    "stage.completed": "ok",
    "stage.failed": "fail",
    "stage.skipped": "skip",
    "stage.cancelled": "cancel",
}


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms"


@dataclass
class _Row:
    label: str
    depth: int
    status: str = "pending"
    attempt: int = 1
    started: float | None = None
    duration_ms: float | None = None
    note: str = ""


@dataclass
class RunSummary:
    """What one run did, as the board saw it and the results say.

    Attributes:
        index: 1-based run number.
        runs: How many runs the session makes (``None`` for the open-ended runs of
            ``--hold --interval``).
        status: ``ok``, ``fail`` or ``cancel``.
        duration_ms: Wall time of the run.
        stage_counts: Stage outcomes of the top-level run (``ok``, ``skip``, ...).
        retries: Retries over all stages (subpipelines included).
        tool_calls: Tool calls made.
        subpipelines: Subpipeline runs spawned.
        trace_id: The run's trace id, when traced.
        error: Why the run failed, if it did.
    """

    index: int
    runs: int | None
    status: str
    duration_ms: float
    stage_counts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    tool_calls: int = 0
    subpipelines: int = 0
    trace_id: str | None = None
    error: str | None = None


class StageBoard:
    """The state of the current run's stages, updated from lifecycle events (thread-safe)."""

    def __init__(self, pipeline: str, stage_names: Sequence[str], *, runs: int) -> None:
        self.pipeline = pipeline
        self.stage_names = tuple(stage_names)
        self.runs = runs
        self._lock = threading.Lock()
        self._rows: dict[tuple[str | None, str], _Row] = {}
        self._order: list[tuple[str | None, str]] = []
        self._children: dict[str, tuple[str | None, str, int]] = {}
        self._top_run: str | None = None
        self._started = time.perf_counter()
        self.index = 0
        self.retries = 0
        self.tool_calls = 0
        self.subpipelines = 0

    def start_run(self, index: int) -> None:
        """Reset the board for run ``index`` (1-based)."""
        with self._lock:
            self.index = index
            self._rows = {(None, name): _Row(name, 0) for name in self.stage_names}
            self._order = [(None, name) for name in self.stage_names]
            self._children.clear()
            self._top_run = None
            self._started = time.perf_counter()
            self.retries = self.tool_calls = self.subpipelines = 0

    # -- events ---------------------------------------------------------------------------

    def observe(self, type: str, data: Mapping[str, Any]) -> None:
        """Update the board from one lifecycle event."""
        with self._lock:
            run_id = data.get("pipeline_run_id")
            if type == "pipeline.started":
                if not data.get("depth") and self._top_run is None:
                    self._top_run = str(run_id)
                return
            if type == "pipeline.spawned_child":
                parent = self._key(run_id, str(data.get("parent_stage")))
                depth = self._rows[parent].depth + 1 if parent in self._rows else 1
                self._children[str(data.get("child_run_id"))] = (*parent, depth)
                self.subpipelines += 1
                return
            if type == "tool.invoked":
                self.tool_calls += 1
                row = self._rows.get(self._key(run_id, str(data.get("stage"))))
                if row is not None:
                    row.note = f"tool {data.get('tool')}"
                return
            stage = data.get("stage")
            if not isinstance(stage, str) or not type.startswith("stage."):
                return
            row = self._row_for(run_id, stage, data.get("pipeline"))
            if type == "stage.started":
                row.status = "running"
                row.started = time.perf_counter()
            elif type == "stage.retrying":
                self.retries += 1
                row.status = "retrying"
                row.attempt = int(data.get("attempt", row.attempt + 1))
                error_type = str(data.get("error_type") or "error").rsplit(".", 1)[-1]
                row.note = f"retrying: attempt {row.attempt} after {error_type}"
            elif type in _COMPLETION:
                row.status = _COMPLETION[type]
                row.duration_ms = float(data.get("duration_ms") or 0.0)
                row.attempt = int(data.get("attempt", row.attempt))
                if row.status == "skip":
                    row.note = str(data.get("reason") or "")
                elif row.status == "fail":
                    row.note = str(data.get("error") or "")
                elif row.attempt > 1:
                    row.note = f"succeeded on attempt {row.attempt}"

    def _key(self, run_id: Any, stage: str) -> tuple[str | None, str]:
        if run_id is None or str(run_id) == self._top_run:
            return (None, stage)
        return (str(run_id), stage)

    def _row_for(self, run_id: Any, stage: str, pipeline: Any) -> _Row:
        key = self._key(run_id, stage)
        row = self._rows.get(key)
        if row is not None:
            return row
        parent_run, parent_stage, depth = self._children.get(str(run_id), (None, "", 1))
        row = _Row(f"{pipeline} / {stage}", depth)
        self._rows[key] = row
        # After the spawning stage and the rows already placed under it.
        anchor = (parent_run, parent_stage)
        position = self._order.index(anchor) + 1 if anchor in self._order else len(self._order)
        while position < len(self._order) and self._rows[self._order[position]].depth >= depth:
            position += 1
        self._order.insert(position, key)
        return row

    # -- rendering ------------------------------------------------------------------------

    def render(self) -> RenderableType:
        """The board as a rich renderable (called by ``Live`` on its refresh thread)."""
        with self._lock:
            now = time.perf_counter()
            table = Table.grid(padding=(0, 2))
            table.add_column(width=2)
            table.add_column(min_width=24)
            table.add_column(justify="right", min_width=9)
            table.add_column(width=9)
            table.add_column(overflow="ellipsis", no_wrap=True)
            for key in self._order:
                row = self._rows[key]
                style = OUTCOME_STYLE.get(row.status, "")
                icon: RenderableType
                if row.status == "running":
                    icon = Spinner("dots", style="cyan")
                else:
                    icon = Text(_ICONS.get(row.status, "?"), style=style)
                if row.duration_ms is not None:
                    elapsed = _ms(row.duration_ms)
                elif row.started is not None:
                    elapsed = _ms((now - row.started) * 1000)
                else:
                    elapsed = ""
                table.add_row(
                    icon,
                    Text("  " * row.depth + row.label),
                    Text(elapsed, style="dim"),
                    Text(row.status, style=style),
                    Text(row.note, style="dim"),
                )
            header = Text.assemble(
                (f"run {self.index}/{self.runs}", "bold"),
                "  ",
                (self.pipeline, "bold cyan"),
                "  ",
                (_ms((now - self._started) * 1000), "dim"),
            )
            return Group(header, table)


class BoardSink:
    """An event sink that feeds a :class:`StageBoard`; it never raises and never blocks."""

    def __init__(self, board: StageBoard) -> None:
        self.board = board

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Update the board."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Update the board."""
        self.board.observe(type, data)


def summary_line(summary: RunSummary) -> Text:
    """One line about a finished run."""
    style = OUTCOME_STYLE.get(summary.status, "")
    icon = _ICONS.get("ok" if summary.status == "ok" else summary.status, "✘")
    counts = summary.stage_counts
    total = sum(counts.values())
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    extras = []
    if summary.retries:
        extras.append(f"{summary.retries} retr{'y' if summary.retries == 1 else 'ies'}")
    if summary.tool_calls:
        extras.append(f"{summary.tool_calls} tool call{'s' if summary.tool_calls != 1 else ''}")
    if summary.subpipelines:
        extras.append(
            f"{summary.subpipelines} subpipeline{'s' if summary.subpipelines != 1 else ''}"
        )
    text = Text.assemble(
        (f"{icon} ", style),
        (f"run {summary.index}" + (f"/{summary.runs}" if summary.runs else ""), "bold"),
        "  ",
        (f"{summary.status:<6}", style),
        (f"{_ms(summary.duration_ms):>9}", "dim"),
        f"   {total} stages ({detail})" if total else "",
    )
    if extras:
        text.append(" · " + " · ".join(extras))
    if summary.trace_id:
        text.append(f"   trace {summary.trace_id}", style="dim")
    if summary.error:
        text.append(f"\n    {summary.error}", style="red")
    return text


# -- the trace tree --------------------------------------------------------------------------

_KEY_ATTRIBUTES = (
    ("stageflow.stage.kind", "{}"),
    ("stageflow.interceptor.action", "action={}"),
    ("gen_ai.tool.call.id", "call={}"),
    ("stageflow.subpipeline.depth", "depth={}"),
)


def _details(record: SpanRecord) -> list[str]:
    attributes = record.attributes
    details: list[str] = []
    if record.kind != "INTERNAL":
        details.append(record.kind)
    for key, template in _KEY_ATTRIBUTES:
        if key in attributes:
            details.append(template.format(attributes[key]))
    attempt = attributes.get("stageflow.stage.attempt")
    if isinstance(attempt, int) and attempt > 1:
        details.append(f"attempt {attempt}")
    stage_count = attributes.get("stageflow.run.stage_count")
    if stage_count is not None and record.name.startswith("pipeline.run"):
        details.append(f"{stage_count} stages")
    if "stageflow.stage.skip_reason" in attributes:
        details.append(f"skipped: {attributes['stageflow.stage.skip_reason']}")
    if "stageflow.stage.cancel_reason" in attributes:
        details.append(f"cancelled: {attributes['stageflow.stage.cancel_reason']}")
    if "error.type" in attributes:
        details.append(f"error.type={attributes['error.type']}")
    if record.status_message and not record.name.startswith("pipeline.run"):
        # A run's message repeats its failed stage's, which the stage's own line shows.
        details.append(record.status_message)
    return details


def _span_label(record: SpanRecord) -> Text:
    operation, _, subject = record.name.partition(" ")
    outcome = record.outcome
    text = Text.assemble(
        (operation, "dim" if subject else "bold"),
        (" " + subject, "bold") if subject else "",
        "  ",
        (_ms(record.duration_ms), "cyan"),
        "  ",
        (outcome, OUTCOME_STYLE.get(outcome, "")),
    )
    details = _details(record)
    if details:
        text.append("  " + " · ".join(details), style="dim")
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _event_label(
    record: SpanRecord, name: str, time_ns: int, attributes: Mapping[str, Any]
) -> Text:
    offset = (time_ns - record.start_ns) / 1e6
    shown = " ".join(
        f"{k.rsplit('.', 1)[-1] if k.startswith('stageflow.') else k}={v}"
        for k, v in attributes.items()
        if k != "exception.stacktrace"
    )
    text = Text.assemble(
        ("◆ ", "magenta"), (name, "magenta"), (f"  +{_ms(offset)}  {shown}", "dim")
    )
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def render_trace_tree(records: Iterable[SpanRecord]) -> Tree | Text:
    """The spans of one trace as a rich tree (span, duration, outcome, key attributes)."""
    walk = depth_first(records)
    if not walk:
        return Text("no spans were recorded (is tracing disabled?)", style="dim")
    roots: list[Tree] = []
    branches: list[Tree] = []
    for record, depth in walk:
        del branches[depth:]
        if depth == 0:
            node = Tree(_span_label(record), guide_style="bright_black")
            roots.append(node)
        else:
            node = branches[-1].add(_span_label(record))
        for event in record.events:
            node.add(_event_label(record, event.name, event.time_ns, event.attributes))
        branches.append(node)
    if len(roots) == 1:
        return roots[0]
    top = Tree(Text("trace", style="bold"), guide_style="bright_black")
    for root in roots:
        top.children.append(root)
    return top
