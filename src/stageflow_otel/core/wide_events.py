"""Wide events: one flat, JSON-serialisable summary per stage and per run."""

from __future__ import annotations

import datetime as _dt
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import qualified_name
from .events import rfc3339_ns
from .model import StageOutput, StageStatus

if TYPE_CHECKING:
    from .context import RunIdentity

__all__ = ("WideEventEmitter", "error_type_of", "iso_timestamp")


def iso_timestamp(when: _dt.datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp with microseconds and a ``Z`` suffix (now by default)."""
    if when is not None:
        return f"{when.astimezone(_dt.UTC).isoformat(timespec='microseconds')[:26]}Z"
    return rfc3339_ns(time.time_ns())


def error_type_of(output: StageOutput) -> str | None:
    """The ``error.type`` of a failed output, or ``None`` when it did not fail.

    Uses ``output.error_type`` when set (``stageflow.timeout``, ``stageflow.short_circuit``,
    an interceptor's error), else the exception's qualified class name, else ``_OTHER``.
    """
    if output.status is not StageStatus.FAIL:
        return None
    if output.error_type is not None:
        return output.error_type
    exc = output.exception
    return qualified_name(exc) if exc is not None else "_OTHER"


def _identity_fields(identity: RunIdentity) -> dict[str, Any]:
    return {
        "pipeline_run_id": identity.pipeline_run_id,
        "request_id": identity.request_id,
        "session_id": identity.session_id,
        "user_id": identity.user_id,
        "org_id": identity.org_id,
    }


class WideEventEmitter:
    """Builds the ``stage.wide`` and ``pipeline.wide`` payloads.

    Payloads are flat (no nested mappings but the per-status counts), carry data keys and never
    values, and serialise to JSON as they are.
    """

    def __init__(
        self, *, stage_event_type: str = "stage.wide", pipeline_event_type: str = "pipeline.wide"
    ) -> None:
        self.stage_event_type = stage_event_type
        self.pipeline_event_type = pipeline_event_type

    def stage_payload(
        self,
        *,
        pipeline: str,
        identity: RunIdentity,
        stage: str,
        kind: str,
        output: StageOutput,
        started_at: _dt.datetime,
        ended_at: _dt.datetime,
        attempt: int = 1,
        queue_wait_ms: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The flat summary of one stage execution."""
        payload: dict[str, Any] = {
            **_identity_fields(identity),
            "pipeline": pipeline,
            "stage": stage,
            "kind": kind,
            "status": output.status.value,
            "attempt": attempt,
            "started_at": iso_timestamp(started_at),
            "ended_at": iso_timestamp(ended_at),
            "duration_ms": round((ended_at - started_at).total_seconds() * 1000, 3),
            "queue_wait_ms": None if queue_wait_ms is None else round(queue_wait_ms, 3),
            "error": output.error,
            "error_type": error_type_of(output),
            "data_keys": sorted(str(k) for k in output.data),
        }
        if output.status is StageStatus.SKIP:
            payload["skip_reason"] = output.data.get("reason")
        if extra:
            payload.update(extra)
        return payload

    def pipeline_payload(
        self,
        *,
        pipeline: str,
        identity: RunIdentity,
        status: str,
        outputs: Mapping[str, StageOutput],
        stage_count: int,
        started_at: _dt.datetime,
        ended_at: _dt.datetime,
        failed_stage: str | None = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The flat summary of one run."""
        counts = Counter(out.status.value for out in outputs.values())
        payload: dict[str, Any] = {
            **_identity_fields(identity),
            "pipeline": pipeline,
            "status": status,
            "started_at": iso_timestamp(started_at),
            "ended_at": iso_timestamp(ended_at),
            "duration_ms": round((ended_at - started_at).total_seconds() * 1000, 3),
            "stage_count": stage_count,
            "stages_run": len(outputs),
            "failed_stage": failed_stage,
            "error": error,
        }
        for status_value in StageStatus:
            payload[f"stages_{status_value.value}"] = counts.get(status_value.value, 0)
        if extra:
            payload.update(extra)
        return payload
