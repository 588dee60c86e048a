"""Log lines: run ids and trace ids on every line written inside a run; canonical lines.

The library never configures logging for you, and is silent until you do. The canonical
``stage.wide`` and ``pipeline.wide`` lines go through structlog when the application has
configured structlog (``structlog.configure`` or :func:`configure_logging`), and otherwise
through the stdlib logger ``stageflow_otel``, which has a ``NullHandler`` like every
well-behaved library's: they appear once the application configures logging. Either way the
level is checked before a line's fields are built, so a line nobody handles costs next to
nothing. Applications put :func:`add_stageflow_context` in their own structlog processor chain
to get the run context on their own lines.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from .records import current_run, current_stage, hex_ids

__all__ = (
    "CANONICAL_LOGGER_NAME",
    "CanonicalLog",
    "add_stageflow_context",
    "configure_logging",
    "get_logger",
)

CANONICAL_LOGGER_NAME = "stageflow_otel"
"""The logger (structlog and stdlib) that writes the canonical lines."""

_stdlib_logger = logging.getLogger(CANONICAL_LOGGER_NAME)  # has the package's NullHandler
_internal_logger = logging.getLogger("stageflow_otel.observability")


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


class _Fields:
    """A line's fields, rendered ``key=value`` only if a stdlib handler formats the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v!r}" for k, v in self.fields.items() if v is not None)


class CanonicalLog:
    """Where a run's canonical lines go, resolved once per run.

    Through structlog when the application configured it, else through the stdlib logger
    ``stageflow_otel`` (silent unless the application configured logging). :meth:`enabled`
    is the cheap level check a caller makes before building a line's fields.
    """

    __slots__ = ("_info", "_structlog", "_warning")

    def __init__(self) -> None:
        self._structlog: Any = None
        if structlog.is_configured():
            try:
                bound = structlog.get_logger(CANONICAL_LOGGER_NAME).bind()
                is_enabled_for = getattr(bound, "is_enabled_for", None)
                self._info = is_enabled_for is None or bool(is_enabled_for(logging.INFO))
                self._warning = is_enabled_for is None or bool(is_enabled_for(logging.WARNING))
                self._structlog = bound
                return
            except Exception:
                _internal_logger.exception("structlog is configured but gives no logger")
        self._info = self._warning = False

    def enabled(self, error: bool) -> bool:
        """Whether a line (``error``: at warning level, else info) would be handled."""
        if self._structlog is not None:
            return self._warning if error else self._info
        return _stdlib_logger.isEnabledFor(logging.WARNING if error else logging.INFO)

    def write(self, event: str, fields: Mapping[str, Any], *, error: bool = False) -> None:
        """Write one canonical line (``stage.wide`` / ``pipeline.wide``); never raises."""
        try:
            bound = self._structlog
            if bound is not None:
                if error:
                    bound.warning(event, **fields)
                else:
                    bound.info(event, **fields)
            else:
                _stdlib_logger.log(
                    logging.WARNING if error else logging.INFO,
                    "%s %s",
                    event,
                    _Fields(fields),
                    extra={"stageflow_event": event, "stageflow_fields": dict(fields)},
                )
        except Exception:
            _internal_logger.exception("writing %s failed", event)


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
    stdlib: bool = False,
) -> None:
    """Configure structlog for an application.

    Adds the stageflow context and ISO timestamps, and renders JSON (production) or a readable
    console format (development).

    Call it once at start-up; libraries should not call it.

    Args:
        json: Render JSON lines; ``False`` renders readable console lines.
        level: The least level written.
        stream: Where lines go (standard error by default); ignored with ``stdlib``.
        colors: Colour console lines (by default when ``stream`` is a terminal).
        stdlib: Hand the rendered lines to stdlib ``logging`` (logger names kept, so the
            canonical lines arrive at the ``stageflow_otel`` logger) instead of writing them to
            ``stream``: the application's logging handlers decide where they go.
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
        logger_factory=(
            structlog.stdlib.LoggerFactory()
            if stdlib
            else structlog.PrintLoggerFactory(stream or sys.stderr)
        ),
        cache_logger_on_first_use=False,
    )
