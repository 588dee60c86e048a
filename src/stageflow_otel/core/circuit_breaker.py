"""A circuit breaker per stage: stop calling a stage that keeps failing, then probe it.

Changes from stageflow-core: a short-circuited stage fails (stageflow-core recorded it as an
OK output with empty data), a raising stage counts as one failure (stageflow-core counted it
twice), one short-circuit does not close the circuit, and the state lives in the interceptor,
so reusing the instance keeps it across runs and graphs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ._checks import check_callable, check_count, check_seconds
from .errors import StageflowError
from .model import StageOutput, StageStatus
from .seams import CallNext, StageCall

__all__ = (
    "CircuitBreakerInterceptor",
    "CircuitBreakerStatistics",
    "CircuitOpenError",
    "CircuitState",
)

logger = logging.getLogger("stageflow_otel.circuit_breaker")

_FAIL = StageStatus.FAIL
_RETRY = StageStatus.RETRY
_OK = StageStatus.OK


class CircuitState(StrEnum):
    """The state of one stage's circuit."""

    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls fail at once until ``recovery_timeout`` has passed."""
    HALF_OPEN = "half_open"
    """Up to ``half_open_max_calls`` probes go through; the first result decides."""


class CircuitOpenError(StageflowError):
    """A stage was not run because its circuit breaker is open.

    Attributes:
        stage: The stage.
        retry_in: Seconds until the breaker lets a probe through (0 when half-open and all
            probes are in flight).
    """

    code = "CIRCUIT_OPEN"

    def __init__(self, stage: str, *, state: CircuitState, failures: int, retry_in: float) -> None:
        self.stage = stage
        self.retry_in = retry_in
        if state is CircuitState.OPEN:
            message = (
                f"circuit breaker for stage {stage!r} is open after {failures} consecutive "
                f"failures; the stage was not run and will be tried again in {retry_in:.3g}s"
            )
        else:
            message = (
                f"circuit breaker for stage {stage!r} is half-open and its probe calls are in "
                "flight; the stage was not run and will be tried again once a probe succeeds"
            )
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class CircuitBreakerStatistics:
    """One stage's circuit, as :meth:`CircuitBreakerInterceptor.statistics` reports it.

    Attributes:
        stage: The stage name.
        state: The current state (an open circuit past its recovery timeout reports
            ``half_open``, as its next call will be a probe).
        failures: Consecutive failures counted (the ones that opened the circuit, when open).
        opened_at: Clock time the circuit last opened, ``None`` if it never did.
        retry_at: Clock time the circuit lets a probe through, when open.
        half_open_calls: Probes in flight.
        total_failures: Failures counted since the breaker was created.
        total_short_circuits: Calls failed without running since the breaker was created.
        times_opened: How often the circuit opened.
    """

    stage: str
    state: CircuitState
    failures: int
    opened_at: float | None
    retry_at: float | None
    half_open_calls: int
    total_failures: int
    total_short_circuits: int
    times_opened: int


class _Circuit:
    __slots__ = (
        "failures",
        "generation",
        "half_open_calls",
        "opened_at",
        "state",
        "times_opened",
        "total_failures",
        "total_short_circuits",
    )

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at: float | None = None
        self.half_open_calls = 0
        # Bumped on every transition; a call that finishes in a later generation than it
        # started in no longer speaks for the circuit's current state.
        self.generation = 0
        self.total_failures = 0
        self.total_short_circuits = 0
        self.times_opened = 0


def _is_failure(output: StageOutput) -> bool:
    return output.status is _FAIL or output.status is _RETRY


class CircuitBreakerInterceptor:
    """Fails a stage at once while it keeps failing, and lets a probe through now and then.

    Each stage name has its own circuit, kept by this instance across runs (reuse the instance
    to keep the state; every new instance starts closed):

    - **closed**: calls run. ``failure_threshold`` consecutive failures open the circuit; a
      success resets the count.
    - **open**: calls fail at once, without running, with a :class:`CircuitOpenError`,
      ``error_type="stageflow.short_circuit"``, ``short_circuited_by`` the breaker's name, and
      metadata ``error_code="CIRCUIT_OPEN"``, ``circuit_state`` and ``retry_in_s``. After
      ``recovery_timeout`` seconds the circuit turns half-open.
    - **half-open**: up to ``half_open_max_calls`` probes run at once (further calls fail as
      when open). A successful probe closes the circuit; a failed one opens it again.

    A failure is a FAIL or RETRY output by default (a stage that raises arrives as one FAIL
    and counts once), or whatever ``counts_as_failure`` says; an OK output that is not a
    failure is a success; any other output (SKIP, CANCEL, a FAIL that ``counts_as_failure``
    rejects) changes nothing. A cancelled call frees its probe slot and changes nothing either.
    Inside a :class:`~stageflow_otel.core.resilience.RetryInterceptor` every attempt counts;
    outside it, each exhausted retry counts once.

    The state is plain data of one event loop: share an instance between runs of one loop,
    not between threads.

    Args:
        failure_threshold: Consecutive failures that open the circuit.
        recovery_timeout: Seconds the circuit stays open before a probe.
        half_open_max_calls: Probes allowed at once while half-open.
        clock: Returns the current time in seconds (monotonic; injectable for tests).
        counts_as_failure: Decides which outputs are failures.

    Raises:
        ValueError: For a threshold or probe count below 1, or a negative timeout.
        TypeError: For an argument of the wrong type.
    """

    name = "circuit_breaker"

    def __init__(
        self,
        failure_threshold: int = 5,
        *,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        counts_as_failure: Callable[[StageOutput], bool] | None = None,
    ) -> None:
        try:
            self.failure_threshold = check_count("failure_threshold", failure_threshold)
            self.recovery_timeout = check_seconds(
                "recovery_timeout", recovery_timeout, allow_zero=True
            )
            self.half_open_max_calls = check_count("half_open_max_calls", half_open_max_calls)
            check_callable("clock", clock)
            check_callable("counts_as_failure", counts_as_failure, allow_none=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"CircuitBreakerInterceptor: {exc}") from None
        self._clock = clock
        self._counts_as_failure = counts_as_failure or _is_failure
        self._circuits: dict[str, _Circuit] = {}

    def __repr__(self) -> str:
        return (
            f"CircuitBreakerInterceptor(failure_threshold={self.failure_threshold}, "
            f"recovery_timeout={self.recovery_timeout:g})"
        )

    def state(self, stage: str) -> CircuitState:
        """The state of ``stage``'s circuit (closed if it never ran)."""
        circuit = self._circuits.get(stage)
        if circuit is None:
            return CircuitState.CLOSED
        return self._refresh(circuit, self._clock())

    def statistics(self) -> dict[str, CircuitBreakerStatistics]:
        """A snapshot of every circuit, by stage name."""
        now = self._clock()
        return {stage: self._snapshot(stage, c, now) for stage, c in self._circuits.items()}

    def reset(self, stage: str | None = None) -> None:
        """Close ``stage``'s circuit (every circuit if ``None``) and forget its counts."""
        if stage is None:
            self._circuits.clear()
        else:
            self._circuits.pop(stage, None)

    def _snapshot(self, stage: str, circuit: _Circuit, now: float) -> CircuitBreakerStatistics:
        state = self._refresh(circuit, now)
        opened_at = circuit.opened_at
        return CircuitBreakerStatistics(
            stage=stage,
            state=state,
            failures=circuit.failures,
            opened_at=opened_at,
            retry_at=(
                opened_at + self.recovery_timeout
                if state is CircuitState.OPEN and opened_at is not None
                else None
            ),
            half_open_calls=circuit.half_open_calls,
            total_failures=circuit.total_failures,
            total_short_circuits=circuit.total_short_circuits,
            times_opened=circuit.times_opened,
        )

    def _refresh(self, circuit: _Circuit, now: float) -> CircuitState:
        """Turn an open circuit half-open once its recovery timeout has passed."""
        if (
            circuit.state is CircuitState.OPEN
            and circuit.opened_at is not None
            and now - circuit.opened_at >= self.recovery_timeout
        ):
            circuit.state = CircuitState.HALF_OPEN
            circuit.half_open_calls = 0
            circuit.generation += 1
        return circuit.state

    def _open(self, stage: str, circuit: _Circuit, now: float) -> None:
        circuit.state = CircuitState.OPEN
        circuit.opened_at = now
        circuit.half_open_calls = 0
        circuit.generation += 1
        circuit.times_opened += 1
        logger.warning(
            "circuit breaker opened for stage %r after %d consecutive failures; next probe in %gs",
            stage,
            circuit.failures,
            self.recovery_timeout,
        )

    def _short_circuit(self, stage: str, circuit: _Circuit, now: float) -> StageOutput:
        circuit.total_short_circuits += 1
        retry_in = 0.0
        if circuit.state is CircuitState.OPEN and circuit.opened_at is not None:
            retry_in = max(0.0, circuit.opened_at + self.recovery_timeout - now)
        error = CircuitOpenError(
            stage, state=circuit.state, failures=circuit.failures, retry_in=retry_in
        )
        return StageOutput.fail(
            error,
            metadata={
                "error_code": "CIRCUIT_OPEN",
                "circuit_state": circuit.state.value,
                "retry_in_s": retry_in,
            },
            error_type="stageflow.short_circuit",
            short_circuited_by=self.name,
        )

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Run the call through the stage's circuit."""
        stage = call.stage
        circuit = self._circuits.get(stage)
        if circuit is None:
            circuit = self._circuits[stage] = _Circuit()
        now = self._clock()
        state = self._refresh(circuit, now)
        probe = False
        if state is CircuitState.OPEN:
            return self._short_circuit(stage, circuit, now)
        if state is CircuitState.HALF_OPEN:
            if circuit.half_open_calls >= self.half_open_max_calls:
                return self._short_circuit(stage, circuit, now)
            circuit.half_open_calls += 1
            probe = True
        generation = circuit.generation
        # Nothing above awaits, so the check and the slot taken are atomic within the loop.
        try:
            output = await call_next(call)
        finally:
            if probe and circuit.generation == generation:
                circuit.half_open_calls -= 1
        self._record(stage, circuit, generation, output)
        return output

    def _record(self, stage: str, circuit: _Circuit, generation: int, output: StageOutput) -> None:
        failed = bool(self._counts_as_failure(output))
        if failed:
            circuit.total_failures += 1
        elif output.status is not _OK:
            return
        if circuit.generation != generation:
            # The circuit changed state while this call ran (another call opened or closed
            # it); a late result says nothing about the new state.
            return
        if circuit.state is CircuitState.HALF_OPEN:
            if failed:
                circuit.failures += 1
                self._open(stage, circuit, self._clock())
            else:
                circuit.state = CircuitState.CLOSED
                circuit.failures = 0
                circuit.half_open_calls = 0
                circuit.generation += 1
                logger.info("circuit breaker closed for stage %r after a successful probe", stage)
            return
        if failed:
            circuit.failures += 1
            if circuit.failures >= self.failure_threshold:
                self._open(stage, circuit, self._clock())
        else:
            circuit.failures = 0
