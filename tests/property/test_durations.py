"""Event durations are rounded to the microsecond, as ``round(ms, 3)`` would."""

from __future__ import annotations

import math
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from stageflow_otel.core._executor import _round_ms


@given(st.floats(min_value=0.0, max_value=1e13, allow_nan=False))
def test_a_duration_is_rounded_to_the_nearest_microsecond(ms: float) -> None:
    rounded = _round_ms(ms)

    assert round(rounded, 3) == rounded  # no digit beyond the microsecond
    assert abs(rounded - ms) <= 0.0005 + math.ulp(ms) * 1000  # the nearest one
    # round() itself, except where ms * 1000 lies within a rounding error of a half.
    if abs((ms * 1000) % 1 - 0.5) > 1e-6:
        assert rounded == round(ms, 3)


@given(st.floats(max_value=-5e-324, allow_nan=False, allow_infinity=False))
def test_a_negative_duration_is_rounded_by_round(ms: float) -> None:
    assert _round_ms(ms) == round(ms, 3)


def test_values_that_are_not_plain_floats_are_rounded_by_round_with_their_type() -> None:
    assert type(_round_ms(5)) is int
    assert _round_ms(Decimal("1.23456")) == Decimal("1.235")  # type: ignore[arg-type]
    assert math.isnan(_round_ms(math.nan))
    assert _round_ms(math.inf) == math.inf


def test_examples() -> None:
    assert [_round_ms(v) for v in (0.0, 0.0004, 0.0006, 15.3481234, 2.0)] == [
        0.0,
        0.0,
        0.001,
        15.348,
        2.0,
    ]
