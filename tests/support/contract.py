"""The telemetry contract, read from the project's own ``docs/telemetry.md``.

Span names, span attributes, metric names and labels, and event types are public API; the
reference page states them and every test that needs them reads them from here, so the
contract lives in one place: the repository itself (nothing outside the checkout is read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TELEMETRY_MD = REPO_ROOT / "docs" / "telemetry.md"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

_BACKTICKED = re.compile(r"`([^`]+)`")
# `label` = `v1`, `v2` or `v3` (or `v1` \| `v2`): the values are not labels.
_LABEL_VALUES = re.compile(r"=\s*`[^`]*`(?:\s*(?:,|or|\\\||\|)\s*`[^`]*`)*")


@cache
def telemetry_markdown() -> str:
    """The text of ``docs/telemetry.md``."""
    if not TELEMETRY_MD.is_file():  # pragma: no cover - the file is part of the repository
        raise FileNotFoundError(f"{TELEMETRY_MD} is missing: the telemetry contract lives there")
    return TELEMETRY_MD.read_text(encoding="utf-8")


def section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` (up to the next ``## ``), or an error naming it."""
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n", markdown, flags=re.MULTILINE)
    if match is None:
        raise LookupError(f"docs/telemetry.md has no '## {heading}' section")
    rest = markdown[match.end() :]
    end = re.search(r"^## ", rest, flags=re.MULTILINE)
    return rest if end is None else rest[: end.start()]


def subsection(text: str, heading: str) -> str:
    """The text under ``### heading`` of a section (up to the next ``### ``), or an error."""
    match = re.search(rf"^### {re.escape(heading)}[^\n]*\n", text, flags=re.MULTILINE)
    if match is None:
        raise LookupError(f"docs/telemetry.md has no '### {heading}' subsection")
    rest = text[match.end() :]
    end = re.search(r"^### ", rest, flags=re.MULTILINE)
    return rest if end is None else rest[: end.start()]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in ``text``, as cells (header and rule skipped)."""
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if not in_table:  # the header row
            in_table = True
            continue
        if all(set(cell) <= {"-", ":", " "} for cell in cells):
            continue
        rows.append(cells)
    return rows


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ContractMetric:
    """One metric of the contract's Prometheus table."""

    name: str
    type: str  # counter | gauge | histogram
    labels: frozenset[str]

    def series_names(self) -> frozenset[str]:
        """The names of the series the metric exposes (histograms as three series)."""
        if self.type == "histogram":
            return frozenset(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return frozenset({self.name})

    def series_labels(self, series: str) -> frozenset[str]:
        """The labels a series of this metric carries once scraped."""
        extra = {"le"} if series.endswith("_bucket") and self.type == "histogram" else set()
        return self.labels | TARGET_LABELS | extra


def parse_contract_metrics(
    markdown: str, heading: str = "Prometheus metrics"
) -> dict[str, ContractMetric]:
    """Parse the ``| metric | type | labels |`` table under "## Prometheus metrics" (or ``heading``)."""
    metrics: dict[str, ContractMetric] = {}
    for cells in table_rows(section(markdown, heading)):
        if len(cells) < 3 or not cells[0].startswith("`stageflow_"):
            continue
        name_cell, type_cell, labels_cell = cells[0], cells[1], "|".join(cells[2:])
        metric_type = type_cell.split()[0].rstrip(",")
        labels_cell = re.sub(r"\([^)]*\)", "", _LABEL_VALUES.sub("", labels_cell))
        labels = frozenset(_BACKTICKED.findall(labels_cell))
        for name in _BACKTICKED.findall(name_cell):
            metrics[name] = ContractMetric(name=name, type=metric_type, labels=labels)
    return metrics


def contract_metrics() -> dict[str, ContractMetric]:
    """The contract's metrics, by name."""
    return parse_contract_metrics(telemetry_markdown())


def contract_series() -> dict[str, ContractMetric]:
    """Every exposed series name of the contract, mapped to its metric.

    The worker metrics of remote stages ("## Remote stages") included: dashboards show them.
    """
    metrics = [*contract_metrics().values(), *remote_contract_metrics().values()]
    return {series: m for m in metrics for series in m.series_names()}


# --------------------------------------------------------------------------- spans


def parse_span_names(markdown: str, heading: str = "Spans") -> dict[str, str]:
    """Span name templates of the "## Spans" table: ``{"stage.run": "stage.run {stage}"}``.

    Keyed by the fixed part of the name (before the first placeholder).
    """
    names: dict[str, str] = {}
    for cells in table_rows(section(markdown, heading)):
        for template in _BACKTICKED.findall(cells[1] if len(cells) > 1 else ""):
            names[template.split(" {", 1)[0]] = template
    return names


def parse_span_attributes(markdown: str, heading: str = "Span attributes") -> frozenset[str]:
    """Attribute keys of the "## Span attributes" table (``<key>`` parts kept as written)."""
    keys: set[str] = set()
    for cells in table_rows(section(markdown, heading)):
        cell = re.sub(r"=\s*`[^`]*`", "", cells[0])
        keys.update(_BACKTICKED.findall(cell))
    return frozenset(keys)


def attribute_documented(key: str, documented: frozenset[str]) -> bool:
    """Whether ``key`` is in the contract, ``prefix.<key>`` entries matching any suffix."""
    if key in documented:
        return True
    return any(
        entry.endswith("<key>") and key.startswith(entry.removesuffix("<key>"))
        for entry in documented
    )


# --------------------------------------------------------------------------- events


def parse_event_types(markdown: str, heading: str = "Events") -> frozenset[str]:
    """Event types named in "## Events": the table's first column and the wide events."""
    events = section(markdown, heading)
    types: set[str] = set()
    for cells in table_rows(events):
        types.update(t for t in _BACKTICKED.findall(cells[0]) if "." in t)
    types.update(re.findall(r"`((?:stage|pipeline)\.wide)`", events))
    # The event list above the table names every type, the tool and approval ones included.
    types.update(
        t
        for t in _BACKTICKED.findall(events.split("|", 1)[0])
        if re.fullmatch(r"[a-z_]+\.[a-z_.]+", t)
    )
    return frozenset(types)


def event_documented(event_type: str, documented: frozenset[str]) -> bool:
    """Whether ``event_type`` is in the contract (``tool.*`` rows cover every tool event)."""
    if event_type in documented:
        return True
    return any(
        entry.endswith(".*") and event_type.startswith(entry.removesuffix("*"))
        for entry in documented
    )


# --------------------------------------------------------------------------- remote stages

REMOTE = "Remote stages"


def remote_section(part: str) -> str:
    """The ``### part`` subsection of "## Remote stages", as the parsers above read it.

    Returned as a ``## part`` section of its own, so the same parsers (tables of the same
    formats) read it.
    """
    text = section(telemetry_markdown(), REMOTE)
    match = re.search(rf"^### {re.escape(part)}[^\n]*\n", text, flags=re.MULTILINE)
    if match is None:
        raise LookupError(f"docs/telemetry.md has no '### {part}' under '## {REMOTE}'")
    rest = text[match.end() :]
    end = re.search(r"^### ", rest, flags=re.MULTILINE)
    return f"## {part}\n" + (rest if end is None else rest[: end.start()])


def remote_contract_metrics() -> dict[str, ContractMetric]:
    """The worker metrics of remote stages, by name."""
    return parse_contract_metrics(remote_section("Worker metrics"), "Worker metrics")


def remote_span_names() -> dict[str, str]:
    """The span name templates of remote stages."""
    return parse_span_names(remote_section("Remote spans"), "Remote spans")


def remote_span_attributes() -> frozenset[str]:
    """The attribute keys of remote spans."""
    return parse_span_attributes(remote_section("Remote span attributes"), "Remote span attributes")


def remote_event_types() -> frozenset[str]:
    """The event types of remote stages."""
    return parse_event_types(remote_section("Remote stage events"), "Remote stage events")
