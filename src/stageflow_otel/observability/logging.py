"""structlog wiring: run ids and trace ids on every line written inside a run.

The library never configures structlog globally. Applications either call
:func:`configure_logging` or put :func:`add_stageflow_context` in their own processor chain.
The canonical ``stage.wide`` and ``pipeline.wide`` lines are written through the
``stageflow_otel`` logger in a ``finally``, so they appear for failed and cancelled work too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from ._context import current_run, current_stage, hex_ids

__all__ = ("add_stageflow_context", "configure_logging", "emit_canonical_line", "get_logger")


_logger = structlog.get_logger("stageflow_otel")


def get_logger(name: str = "stageflow_otel") -> Any:
    """A structlog logger (as configured by the application)."""
    return structlog.get_logger(name)


def add_stageflow_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id``, ``span_id``, ``pipeline_run_id``, ``pipeline`` and ``stage``.

    A structlog processor: inside a run it adds the run's ids; wherever a span is current it
    adds that span's ``trace_id``/``span_id``; elsewhere it adds nothing. It never raises.
    """
    try:
        stage = current_stage.get()
        run = stage.run if stage is not None else current_run.get()
        if run is not None:
            event_dict.setdefault("pipeline", run.pipeline)
            event_dict.setdefault("pipeline_run_id", run.run_id)
            if stage is not None:
                event_dict.setdefault("stage", stage.name)
        if "trace_id" not in event_dict:
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                event_dict["trace_id"], event_dict["span_id"] = hex_ids(span_context)
    except Exception:  # a log processor must never break the caller
        return event_dict
    return event_dict


def emit_canonical_line(event: str, fields: Mapping[str, Any], *, error: bool = False) -> None:
    """Write one canonical line (``stage.wide`` / ``pipeline.wide``); never raises."""
    try:
        if error:
            _logger.warning(event, **fields)
        else:
            _logger.info(event, **fields)
    except Exception:
        logging.getLogger("stageflow_otel.observability").exception("writing %s failed", event)


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):
        return False


def configure_logging(
    *,
    json: bool = True,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    colors: bool | None = None,
) -> None:
    """Configure structlog for an application.

    Adds the stageflow context and ISO timestamps, and renders JSON (production) or a readable
    console format (development).

    Call it once at start-up; libraries should not call it.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=colors if colors is not None else _is_tty(stream or sys.stderr)
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_stageflow_context,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
