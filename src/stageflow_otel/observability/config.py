"""Project environment variables (``STAGEFLOW_OTEL_*``), each with its default.

Standard ``OTEL_*`` variables are read by the OpenTelemetry SDK itself.

.. envvar:: STAGEFLOW_OTEL_METRICS_ADDR

    Address ``serve_metrics`` and the CLI bind ``/metrics`` to. Default ``127.0.0.1``.

.. envvar:: STAGEFLOW_OTEL_METRICS_PORT

    Port of ``/metrics`` for the CLI. Default ``9464``.

.. envvar:: STAGEFLOW_OTEL_INTERCEPTOR_SPANS

    ``true``/``false``: one span per interceptor. Default ``true``.

.. envvar:: STAGEFLOW_OTEL_MAX_STAGE_NAMES

    Distinct stage names per pipeline kept as metric labels before the rest collapse into
    ``_OTHER``. Default ``1000``.

.. envvar:: STAGEFLOW_OTEL_CANONICAL_LOGS

    ``true``/``false``: write the ``stage.wide`` / ``pipeline.wide`` structlog lines.
    Default ``true``.

.. envvar:: STAGEFLOW_OTEL_SERVE_METRICS

    ``true``/``false``: whether the auto-instrumentor serves ``/metrics``. Default ``false``.

.. envvar:: STAGEFLOW_OTEL_EVENTS

    Which lifecycle events the event sink exports as log records: ``all``, ``errors``
    (failures, cancellations, denials and retries), ``none``, or a comma-separated list of
    event types, where ``stage.*`` stands for every type starting with ``stage.``.
    Default ``all``.

.. envvar:: STAGEFLOW_OTEL_EXIT_TIMEOUT

    Seconds the event queue may take to drain when the interpreter exits. Default ``5``.

Every value is checked when read: one that does not parse or is out of range raises
``ValueError`` naming the variable, the value and what is accepted.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from stageflow_otel.core._checks import env_flag

__all__ = ("EventSelection", "Settings", "env_flag")

METRICS_ADDR = "STAGEFLOW_OTEL_METRICS_ADDR"
METRICS_PORT = "STAGEFLOW_OTEL_METRICS_PORT"
INTERCEPTOR_SPANS = "STAGEFLOW_OTEL_INTERCEPTOR_SPANS"
MAX_STAGE_NAMES = "STAGEFLOW_OTEL_MAX_STAGE_NAMES"
CANONICAL_LOGS = "STAGEFLOW_OTEL_CANONICAL_LOGS"
SERVE_METRICS = "STAGEFLOW_OTEL_SERVE_METRICS"
EVENTS = "STAGEFLOW_OTEL_EVENTS"
EXIT_TIMEOUT = "STAGEFLOW_OTEL_EXIT_TIMEOUT"


def _env_int(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    accepted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; use {accepted}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={raw!r} is out of range; use {accepted}")
    return value


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={raw!r} is not a positive number of seconds")
    return value


# Event types are dotted lower-case words (``stage.completed``); ``stage.*`` is a prefix. A
# lone word is refused: it is a misspelt keyword far more often than an event type.
_EVENT_TYPE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*\.([a-z0-9_]+|\*)")
ERROR_EVENTS = frozenset(
    {
        "stage.failed",
        "stage.cancelled",
        "stage.retrying",
        "pipeline.failed",
        "pipeline.cancelled",
        "pipeline.child_failed",
        "tool.failed",
        "tool.denied",
    }
)
"""What ``events="errors"`` exports: failures, cancellations, denials and retries."""


@dataclass(frozen=True, slots=True)
class EventSelection:
    """Which lifecycle events to export: every one, none, or the listed types and prefixes.

    Build one with :meth:`parse`. ``type in selection`` says whether an event is exported.
    """

    everything: bool = True
    types: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @property
    def nothing(self) -> bool:
        """Whether no event at all is selected."""
        return not self.everything and not self.types and not self.prefixes

    def __contains__(self, type: object) -> bool:
        if self.everything:
            return True
        if not isinstance(type, str):
            return False
        return type in self.types or type.startswith(self.prefixes)

    @classmethod
    def parse(cls, value: str | Iterable[str], *, name: str = "events") -> EventSelection:
        """``all``, ``errors``, ``none``, or event types (``stage.failed``, ``tool.*``).

        A string may list several types separated by commas. ``name`` is what an error
        message calls the value (an argument or an environment variable).

        Raises:
            ValueError: For an empty list item or a malformed event type.
            TypeError: For a value that is neither a string nor strings.
        """
        if isinstance(value, str):
            keyword = value.strip().lower()
            if keyword == "all":
                return cls()
            if keyword == "errors":
                return cls(everything=False, types=ERROR_EVENTS)
            if keyword in ("none", ""):
                return cls(everything=False)
            items = [item.strip() for item in value.split(",")]
        else:
            try:
                items = list(value)
            except TypeError:
                raise TypeError(
                    f"{name} must be 'all', 'errors', 'none' or event types, "
                    f"got {type(value).__name__}"
                ) from None
        types: set[str] = set()
        prefixes: list[str] = []
        for item in items:
            if not isinstance(item, str) or not _EVENT_TYPE.fullmatch(item.strip()):
                raise ValueError(
                    f"{name}={value!r}: {item!r} is not an event type; use 'all', 'errors', "
                    "'none', or comma-separated types such as 'stage.failed,tool.*'"
                )
            item = item.strip()
            if item.endswith(".*"):
                prefixes.append(item[:-1])
            else:
                types.add(item)
        return cls(everything=False, types=frozenset(types), prefixes=tuple(prefixes))


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``STAGEFLOW_OTEL_*`` settings in force."""

    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9464
    interceptor_spans: bool = True
    max_stage_names: int = 1000
    canonical_logs: bool = True
    serve_metrics: bool = False
    events: EventSelection = EventSelection()
    exit_timeout: float = 5.0
    metrics_port_explicit: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment.

        Raises:
            ValueError: A variable does not parse or is out of range; the message names it.
        """
        raw_events = os.environ.get(EVENTS, "")  # an error message quotes it as it was set
        return cls(
            metrics_addr=os.environ.get(METRICS_ADDR, "").strip() or "127.0.0.1",
            metrics_port=_env_int(METRICS_PORT, 9464, 0, 65535),
            interceptor_spans=env_flag(INTERCEPTOR_SPANS, True),
            max_stage_names=_env_int(MAX_STAGE_NAMES, 1000, 1),
            canonical_logs=env_flag(CANONICAL_LOGS, True),
            serve_metrics=env_flag(SERVE_METRICS, False),
            events=EventSelection.parse(raw_events, name=EVENTS)
            if raw_events.strip()
            else EventSelection(),
            exit_timeout=_env_seconds(EXIT_TIMEOUT, 5.0),
            metrics_port_explicit=bool(os.environ.get(METRICS_PORT, "").strip()),
        )
