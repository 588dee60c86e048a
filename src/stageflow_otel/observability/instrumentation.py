"""Auto-instrumentation: ``opentelemetry-instrument python app.py`` traces every pipeline.

The package registers :class:`StageflowInstrumentor` under the ``opentelemetry_instrumentor``
entry point as ``stageflow``. Instrumenting installs a :class:`Telemetry` into the engine's
extension registry (``stageflow_otel.core.extensions.default_extensions``): every graph built
without explicit ``hooks`` then uses it. Explicit ``hooks=`` always win. Nothing is patched.

Honours ``OTEL_SDK_DISABLED=true`` and ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (``stageflow``
or ``*``), also for the :func:`instrument` one-liner, and ``OTEL_LOGS_EXPORTER=none`` (no
lifecycle events are exported as log records then).

Instrumenting never breaks the application's start-up: it is all or nothing. When anything
fails (an invalid ``STAGEFLOW_OTEL_*`` variable, an explicit ``/metrics`` port that cannot be
bound, a registry that already holds stageflow metrics), nothing stays installed, registered or
started, and one :class:`InstrumentationWarning` names the cause; other instrumentations load
as usual. When the default port 9464 is busy, ``/metrics`` is served on a free port and one
:class:`InstrumentationWarning` gives its URL.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Collection
from typing import Any

import opentelemetry.instrumentation.instrumentor
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from stageflow_otel.core.extensions import default_extensions

from .helpers import HelperTelemetry
from .telemetry import Telemetry

__all__ = (
    "EXTENSION_KEY",
    "InstrumentationWarning",
    "StageflowInstrumentor",
    "instrument",
    "uninstrument",
)

logger = logging.getLogger("stageflow_otel.instrumentation")

EXTENSION_KEY = "stageflow_otel.instrumentation"
ENTRY_POINT_NAME = "stageflow"


def _disabled_by_environment() -> str | None:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OTEL_SDK_DISABLED=true"
    disabled = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    names = {name.strip() for name in disabled.split(",") if name.strip()}
    if ENTRY_POINT_NAME in names or "*" in names:
        return f"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS={disabled}"
    return None


class InstrumentationWarning(RuntimeWarning):
    """Instrumentation is not installed as asked; the message says why. The application runs on.

    Either nothing was installed (the cause is named), or ``/metrics`` is served on another
    port than the busy default one (its URL is given).
    """


# Frames of these files are not the caller a warning is about.
_OWN_FILES = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.abspath(opentelemetry.instrumentation.instrumentor.__file__),
)


def _warn(message: str) -> None:
    """One :class:`InstrumentationWarning`, shown at the first caller outside this package.

    Where warnings are turned into errors (``-W error``), it is logged instead: instrumenting
    must not break the application's start-up, nor stop the instrumentations loaded after it.
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OWN_FILES):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    try:
        warnings.warn(message, InstrumentationWarning, stacklevel=level + 1)
    except Exception:  # the warning filter raised it
        logger.warning("%s", message)


def _configured_logger_provider() -> Any:
    """The global logger provider, when an SDK one exports somewhere.

    ``OTEL_LOGS_EXPORTER=none`` means no log export was asked for: then ``None``, and no
    event sink is built.
    """
    if os.environ.get("OTEL_LOGS_EXPORTER", "").strip().lower() == "none":
        return None
    try:
        from opentelemetry._logs import get_logger_provider
        from opentelemetry.sdk._logs import LoggerProvider
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return None
    provider = get_logger_provider()
    return provider if isinstance(provider, LoggerProvider) else None


class StageflowInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """The OpenTelemetry instrumentor of stageflow-otel (a singleton, like every instrumentor).

    ``instrument(**kwargs)`` accepts ``tracer_provider``, ``meter_provider``, ``logger_provider``,
    ``registry`` and every other :class:`Telemetry` argument, plus ``serve_metrics=True`` to
    serve ``/metrics`` (also ``STAGEFLOW_OTEL_SERVE_METRICS``). Metrics go through a meter
    provider only when one is passed: the global one that ``opentelemetry-instrument`` sets
    up is not used implicitly, so metrics are not recorded twice by default.
    """

    _telemetry: Telemetry | None = None
    _helpers: HelperTelemetry | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing to check: the instrumented library is this package."""
        return ()

    def instrument(self, **kwargs: Any) -> None:
        """Instrument, unless the environment disables it (then nothing is marked done).

        Never raises for a failure of its own: see the module documentation.
        """
        reason = _disabled_by_environment()
        if reason is not None:
            logger.info("stageflow instrumentation disabled by %s", reason)
            return
        super().instrument(**kwargs)
        if self._telemetry is None:
            # Installing failed: leave the instrumentor uninstrumented, so that a later
            # instrument() tries again and uninstrument() has nothing to undo.
            self._is_instrumented_by_opentelemetry = False

    @property
    def telemetry(self) -> Telemetry | None:
        """The installed telemetry, while instrumented."""
        return self._telemetry

    def _instrument(self, **kwargs: Any) -> None:
        serve = kwargs.pop("serve_metrics", None)
        kwargs.pop("skip_dep_check", None)
        telemetry: Telemetry | None = None
        fell_back = ""  # the warning about a busy default port, once installed
        try:
            if kwargs.get("logger_provider") is None:
                kwargs["logger_provider"] = _configured_logger_provider()
            telemetry = Telemetry(**kwargs)
            if serve if serve is not None else telemetry.settings.serve_metrics:
                server = telemetry.serve_metrics(fallback=True)
                if server.fallback_from is not None:
                    fell_back = (
                        f"port {server.fallback_from} is busy: stageflow metrics are served on "
                        f"{server.url} instead (set STAGEFLOW_OTEL_METRICS_PORT to choose a port)"
                    )
                else:
                    logger.info("stageflow metrics served on %s", server.url)
            # What the helpers report (GenAI spans of model calls, guardrail verdicts, ...).
            helpers = HelperTelemetry(telemetry, metrics=telemetry.metrics is not None)
            self._helpers = helpers
            default_extensions.install(
                EXTENSION_KEY,
                hooks=(*telemetry.hooks, helpers),
                event_sinks=() if telemetry.event_sink is None else (telemetry.event_sink,),
            )
        except Exception as exc:
            if telemetry is not None:
                _discard(telemetry, self._helpers)
            self._helpers = None
            _warn(f"stageflow instrumentation not installed: {exc}")
            return
        self._telemetry = telemetry
        if fell_back:
            _warn(fell_back)

    def _uninstrument(self, **kwargs: Any) -> None:
        default_extensions.uninstall(EXTENSION_KEY)
        telemetry, self._telemetry = self._telemetry, None
        helpers, self._helpers = self._helpers, None
        if telemetry is not None:
            try:
                telemetry.shutdown(timeout=float(kwargs.get("timeout", 5.0)))
            finally:
                _unregister(telemetry, helpers)


def _discard(telemetry: Telemetry, helpers: HelperTelemetry | None) -> None:
    """Undo a half-made installation: servers, event export, registered metrics."""
    try:
        telemetry.shutdown(timeout=0.1)
    finally:
        _unregister(telemetry, helpers)


def _unregister(telemetry: Telemetry, helpers: HelperTelemetry | None) -> None:
    """Remove the metrics from the registry, so that it can be instrumented again."""
    if telemetry.metrics is not None:
        telemetry.metrics.unregister()
    if helpers is not None and helpers.metrics is not None:
        helpers.metrics.unregister()


def instrument(**kwargs: Any) -> Telemetry | None:
    """Instrument every pipeline of the process; returns the installed :class:`Telemetry`.

    Returns ``None`` when the environment disables it. Calling it again changes nothing
    (uninstrument first to change the settings).
    """
    instrumentor = StageflowInstrumentor()
    instrumentor.instrument(**kwargs)
    return instrumentor.telemetry


def uninstrument() -> None:
    """Undo :func:`instrument`."""
    StageflowInstrumentor().uninstrument()
