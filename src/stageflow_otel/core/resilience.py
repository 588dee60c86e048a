"""Retry and timeout interceptors: policies for each attempt of a stage.

Place a :class:`TimeoutInterceptor` inside a :class:`RetryInterceptor` to bound every attempt
(``interceptors=[RetryInterceptor(), TimeoutInterceptor(5.0)]``, the first is outermost); place
it outside to bound all attempts together. With the other built-ins, a sensible order is::

    interceptors=[
        IdempotencyInterceptor(),
        RetryInterceptor(),
        CircuitBreakerInterceptor(),
        TimeoutInterceptor(5.0),
    ]

A repeated request is answered before anything runs; each attempt passes the breaker (an open
breaker's failure is not retried) and has its own timeout.

Changes from stageflow-core: ``max_attempts`` is honoured exactly (stageflow-core ran a stage at
most twice), a stage's ``StageOutput.retry(...)`` is retried, :class:`TransientError` and its
subclasses are retried by default, ``RateLimitError.retry_after`` sets the delay, each retry
emits a ``stage.retrying`` event, and a stage that runs out of attempts fails with its last
exception instead of losing it.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Literal, TypeVar, get_args

import anyio

from ._checks import (
    check_bool,
    check_callable,
    check_count,
    check_seconds,
    describe,
    sequence_of,
)
from .errors import RateLimitError, StageTimeoutError, TransientError, qualified_name
from .model import StageOutput, StageStatus
from .seams import CallNext, StageCall

__all__ = ("Backoff", "Jitter", "RetryInterceptor", "TimeoutInterceptor")

Backoff = Literal["exponential", "linear", "constant"]
"""How the delay grows with the attempt number."""

Jitter = Literal["none", "full", "equal", "decorrelated"]
"""How the delay is randomised (see :class:`RetryInterceptor`)."""

Sleep = Callable[[float], Awaitable[object]]
_T = TypeVar("_T")

_BACKOFFS: tuple[str, ...] = get_args(Backoff)
_JITTERS: tuple[str, ...] = get_args(Jitter)
_FAIL = StageStatus.FAIL
_RETRY = StageStatus.RETRY
# 2.0**1023 is the largest power of two a float holds; every real delay is capped long before.
_MAX_EXPONENT = 1000


def _error_type(output: StageOutput) -> str:
    """The ``error.type`` of a failed or retried output.

    ``output.error_type`` when set (``stageflow.timeout``, ...), else the exception's
    qualified class name, else ``_OTHER``.
    """
    if output.error_type is not None:
        return output.error_type
    if output.exception is not None:
        return qualified_name(output.exception)
    return "_OTHER"


def _checked(owner: str, check: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """Run an argument check, naming ``owner`` in the message of the error it raises."""
    try:
        return check(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {exc}") from None


class RetryInterceptor:
    """Runs a stage again when it fails with a retryable error or returns RETRY.

    A FAIL output is retried when its exception is an instance of one of ``retry_on`` or when
    ``retry_if(output)`` returns True; a RETRY output is retried when ``retry_on_status`` is
    set. Other outputs (OK, SKIP, CANCEL, non-retryable FAIL) are returned at once.

    The delay after attempt ``n`` (1-based) is ``base_delay * 2**(n-1)`` (exponential),
    ``base_delay * n`` (linear) or ``base_delay`` (constant), capped at ``max_delay``, then
    randomised by ``jitter``: ``"none"``; ``"full"``, uniform in ``[0, d]``; ``"equal"``,
    ``d/2`` plus uniform in ``[0, d/2]``; ``"decorrelated"``, uniform in
    ``[base_delay, 3 * previous delay]`` capped at ``max_delay`` (this one ignores
    ``backoff``). Use ``"full"`` when many callers retry against one dependency. A
    :class:`RateLimitError` with ``retry_after`` replaces the delay (still capped, never
    jittered).

    Before each retry it emits ``stage.retrying`` to the run's sink (``attempt``: the attempt
    about to start, ``delay_s``, ``error``, ``error_type``), sleeps, and increases
    ``call.attempt``. Sleeps are cancellable: cancelling the run stops the wait at once.

    When the attempts run out it returns a FAIL output with the last exception, the error
    ``stage 'x' failed after N attempts: <last error>`` and metadata ``attempts=N`` and
    ``error_type``; a final RETRY output becomes such a FAIL too.

    Args:
        max_attempts: Attempts in all, the first included (1 = never retry).
        base_delay: Seconds; the first delay, and the unit of the backoff.
        max_delay: Seconds; no delay is longer.
        backoff: ``"exponential"``, ``"linear"`` or ``"constant"``.
        jitter: ``"none"``, ``"full"``, ``"equal"`` or ``"decorrelated"``.
        retry_on: Exception types worth retrying.
        retry_if: Decides for FAIL outputs whose exception is not in ``retry_on``.
        retry_on_status: Retry RETRY outputs.
        sleep: Awaited with the delay in seconds (injectable for tests).
        random: Source of jitter; a new ``random.Random()`` by default.

    Raises:
        ValueError: For a number out of range or an unknown strategy.
        TypeError: For an argument of the wrong type.
    """

    name = "retry"

    def __init__(
        self,
        max_attempts: int = 3,
        *,
        base_delay: float = 0.1,
        max_delay: float = 30.0,
        backoff: Backoff = "exponential",
        jitter: Jitter = "none",
        retry_on: type[BaseException] | Iterable[type[BaseException]] = (
            TransientError,
            TimeoutError,
            ConnectionError,
        ),
        retry_if: Callable[[StageOutput], bool] | None = None,
        retry_on_status: bool = True,
        sleep: Sleep = anyio.sleep,
        random: _random.Random | None = None,
    ) -> None:
        owner = "RetryInterceptor"
        self.max_attempts: int = _checked(owner, check_count, "max_attempts", max_attempts)
        self.base_delay: float = _checked(
            owner, check_seconds, "base_delay", base_delay, allow_zero=True
        )
        self.max_delay: float = _checked(
            owner, check_seconds, "max_delay", max_delay, allow_zero=True
        )
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"{owner}: max_delay ({max_delay!r}) must be >= base_delay ({base_delay!r}); "
                "raise max_delay or lower base_delay"
            )
        if not (isinstance(backoff, str) and backoff in _BACKOFFS):
            raise ValueError(
                f"{owner}: unknown backoff {describe(backoff)}; use one of {', '.join(_BACKOFFS)}"
            )
        if not (isinstance(jitter, str) and jitter in _JITTERS):
            raise ValueError(
                f"{owner}: unknown jitter {describe(jitter)}; use one of {', '.join(_JITTERS)}"
            )
        if isinstance(retry_on, type):
            types: tuple[object, ...] = (retry_on,)
        else:
            types = _checked(owner, sequence_of, "retry_on", retry_on, item="exception types")
        for entry in types:
            if not (isinstance(entry, type) and issubclass(entry, BaseException)):
                raise TypeError(
                    f"{owner}: retry_on must hold exception types, got {describe(entry)}"
                )
        _checked(owner, check_callable, "retry_if", retry_if, allow_none=True)
        _checked(owner, check_bool, "retry_on_status", retry_on_status)
        _checked(owner, check_callable, "sleep", sleep)
        if random is not None and not callable(getattr(random, "uniform", None)):
            raise TypeError(
                f"{owner}: random must be a random.Random or None, got {describe(random)}"
            )
        self.backoff: Backoff = backoff
        self.jitter: Jitter = jitter
        self.retry_on: tuple[type[BaseException], ...] = types  # type: ignore[assignment]
        self.retry_if = retry_if
        self.retry_on_status = retry_on_status
        self._sleep = sleep
        self._random = random if random is not None else _random.Random()

    def __repr__(self) -> str:
        return (
            f"RetryInterceptor(max_attempts={self.max_attempts}, backoff={self.backoff!r}, "
            f"jitter={self.jitter!r})"
        )

    def should_retry(self, output: StageOutput) -> bool:
        """Whether ``output`` is worth another attempt (attempts left or not)."""
        status = output.status
        if status is _RETRY:
            return self.retry_on_status
        if status is not _FAIL:
            return False
        exc = output.exception
        if exc is not None and isinstance(exc, self.retry_on):
            return True
        return self.retry_if is not None and bool(self.retry_if(output))

    def compute_delay(self, attempt: int, previous: float | None = None) -> float:
        """The delay in seconds after failed attempt ``attempt`` (1-based), jitter applied.

        Args:
            attempt: The attempt that just failed.
            previous: The previous delay, for decorrelated jitter (``base_delay`` if None).
        """
        base = self.base_delay
        cap = self.max_delay
        if self.jitter == "decorrelated":
            prev = base if previous is None else previous
            return min(cap, self._random.uniform(base, max(base, prev * 3)))
        if self.backoff == "exponential":
            delay = base * 2.0 ** min(attempt - 1, _MAX_EXPONENT)
        elif self.backoff == "linear":
            delay = base * attempt
        else:
            delay = base
        delay = min(delay, cap)
        if self.jitter == "full":
            return self._random.uniform(0.0, delay)
        if self.jitter == "equal":
            half = delay / 2
            return half + self._random.uniform(0.0, half)
        return delay

    def _delay_for(self, output: StageOutput, attempt: int, previous: float | None) -> float:
        exc = output.exception
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            # The callee said when; jitter would only make us early or late.
            return min(max(float(exc.retry_after), 0.0), self.max_delay)
        return self.compute_delay(attempt, previous)

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Run the rest of the chain until it succeeds, is not retryable, or attempts run out."""
        attempt = 1
        previous: float | None = None
        while True:
            output = await call_next(call)
            if not self.should_retry(output):
                return output
            if attempt >= self.max_attempts:
                return self._exhausted(call, output, attempt)
            delay = self._delay_for(output, attempt, previous)
            previous = delay
            call.emit(
                "stage.retrying",
                {
                    "attempt": call.attempt + 1,
                    "delay_s": delay,
                    "error": output.error or "",
                    "error_type": _error_type(output),
                },
            )
            await self._sleep(delay)
            call.attempt += 1
            attempt += 1

    def _exhausted(self, call: StageCall, output: StageOutput, attempts: int) -> StageOutput:
        plural = "" if attempts == 1 else "s"
        return replace(
            output,
            status=_FAIL,
            error=(
                f"stage {call.stage!r} failed after {attempts} attempt{plural}: "
                f"{output.error or 'no error message'}"
            ),
            metadata={**output.metadata, "attempts": attempts},
            error_type=_error_type(output),
        )


class TimeoutInterceptor:
    """Fails a stage that runs longer than its timeout.

    Inside a :class:`RetryInterceptor` the timeout applies to each attempt. On timeout the
    work is cancelled (an anyio cancel scope, so it works on asyncio and trio and never
    swallows a cancellation from outside) and the output is a FAIL with a
    :class:`StageTimeoutError`, ``error_type="stageflow.timeout"`` (so ``timed_out``) and
    metadata ``error_code="TIMEOUT"``, as for a stage's own ``timeout=``, plus ``failed_by``
    naming the interceptor that failed the stage. :class:`StageTimeoutError` is a
    ``TimeoutError``, so the default ``RetryInterceptor`` retries it.

    Changes from stageflow-core: the timeout is per stage (``per_stage``) rather than one
    pipeline-wide value read from the run's data.

    Args:
        default: Seconds per stage; ``None`` for no limit.
        per_stage: Seconds for particular stages, overriding ``default``; ``None`` disables the
            timeout for that stage.

    Raises:
        ValueError: For a timeout that is not positive and finite.
        TypeError: For a timeout that is not a number or ``None``.
    """

    name = "timeout"

    def __init__(
        self, default: float | None = 30.0, *, per_stage: Mapping[str, float | None] | None = None
    ) -> None:
        owner = "TimeoutInterceptor"
        self.default: float | None = _checked(
            owner, check_seconds, "default", default, allow_none=True
        )
        if per_stage is not None and not isinstance(per_stage, Mapping):
            raise TypeError(
                f"{owner}: per_stage must be a mapping of stage names to seconds (or None), "
                f"got {describe(per_stage)}"
            )
        checked: dict[str, float | None] = {}
        for stage, value in (per_stage or {}).items():
            if not isinstance(stage, str) or not stage:
                raise TypeError(
                    f"{owner}: per_stage keys must be stage names (non-empty strings), got "
                    f"{describe(stage)}"
                )
            checked[stage] = _checked(
                owner, check_seconds, f"per_stage[{stage!r}]", value, allow_none=True
            )
        self.per_stage: Mapping[str, float | None] = MappingProxyType(checked)

    def __repr__(self) -> str:
        return f"TimeoutInterceptor(default={self.default!r}, per_stage={dict(self.per_stage)!r})"

    def timeout_for(self, stage: str) -> float | None:
        """The timeout in seconds for ``stage``, or ``None`` for none."""
        return self.per_stage.get(stage, self.default)

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Run the rest of the chain under the stage's timeout."""
        timeout = self.per_stage.get(call.stage, self.default)
        if timeout is None:
            return await call_next(call)
        with anyio.move_on_after(timeout) as scope:
            output = await call_next(call)
        if scope.cancelled_caught:
            return StageOutput.fail(
                StageTimeoutError(call.stage, timeout),
                metadata={"error_code": "TIMEOUT"},
                error_type="stageflow.timeout",
                failed_by=self.name,
            )
        return output
