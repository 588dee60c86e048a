"""Arbitrary values in every ``STAGEFLOW_OTEL_*`` variable: a named ``ValueError`` or a setting.

Reading the environment never raises anything else, never accepts an out-of-range value,
and ``instrument()`` turns every such mistake into one warning, never an exception.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_otel.observability import instrument, uninstrument
from stageflow_otel.observability.config import (
    CANONICAL_LOGS,
    EVENTS,
    EXIT_TIMEOUT,
    INTERCEPTOR_SPANS,
    MAX_STAGE_NAMES,
    METRICS_ADDR,
    METRICS_PORT,
    SERVE_METRICS,
    Settings,
)
from stageflow_otel.observability.instrumentation import InstrumentationWarning

VARIABLES = (
    METRICS_ADDR,
    METRICS_PORT,
    INTERCEPTOR_SPANS,
    MAX_STAGE_NAMES,
    CANONICAL_LOGS,
    SERVE_METRICS,
    EVENTS,
    EXIT_TIMEOUT,
)

# Values a person could plausibly type, and arbitrary text (no NUL: the OS refuses it).
values = st.one_of(
    st.sampled_from(["", " ", "0", "-1", "1", "70000", "65535", "true", "off", "nan", "1e9"]),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20),
)


@pytest.fixture
def environment() -> Iterator[dict[str, str]]:
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name in VARIABLES}
    try:
        yield os.environ  # type: ignore[misc]
    finally:
        for name in VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(saved)


# Each example removes what it set, so the fixture's saved environment holds across examples.
_REUSED = [HealthCheck.function_scoped_fixture]


@settings(max_examples=150, deadline=None, suppress_health_check=_REUSED)
@given(variable=st.sampled_from(VARIABLES), value=values)
def test_a_variable_reads_as_a_setting_in_range_or_a_named_value_error(
    environment: dict[str, str], variable: str, value: str
) -> None:
    environment[variable] = value
    error: ValueError | None = None
    try:
        read = Settings.from_env()
    except ValueError as exc:
        error = exc
    finally:
        del environment[variable]
    if error is not None:
        assert str(error).startswith(variable)
        assert repr(value) in str(error)
        return
    assert 0 <= read.metrics_port <= 65535
    assert read.max_stage_names >= 1
    assert 0 < read.exit_timeout < float("inf")
    assert read.metrics_addr


@settings(max_examples=40, deadline=None, suppress_health_check=_REUSED)
@given(variable=st.sampled_from(VARIABLES[1:]), value=values)
def test_instrument_never_raises_for_a_bad_variable(
    environment: dict[str, str], variable: str, value: str
) -> None:
    environment[variable] = value
    environment[SERVE_METRICS] = environment.get(SERVE_METRICS, "false")
    if variable == SERVE_METRICS:
        environment[METRICS_PORT] = "0"  # serve on any free port if the value says yes
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            telemetry = instrument()
    finally:
        uninstrument()
        for name in (variable, SERVE_METRICS, METRICS_PORT):
            environment.pop(name, None)
    ours = [w for w in caught if issubclass(w.category, InstrumentationWarning)]
    if telemetry is None:
        assert len(ours) == 1
    else:
        assert ours == []
