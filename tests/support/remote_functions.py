"""Stage functions that tests run on Dask workers (imported there by module name)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from stageflow_otel import StageOutput
from stageflow_otel.distributed import RemoteContext


def square(ctx: RemoteContext) -> dict[str, Any]:
    """Squares the ``x`` of dependency ``source``; says where it ran."""
    x = ctx.inputs.get_from("source", "x")
    return {"y": x * x, "worker": ctx.worker, "pid": os.getpid()}


async def add_one(ctx: RemoteContext) -> dict[str, Any]:
    """An ``async def`` stage function: ``y + 1`` of dependency ``square``."""
    return {"z": ctx.inputs.get_from("square", "y") + 1}


def refuse(ctx: RemoteContext) -> StageOutput:
    """Returns a failed output."""
    return StageOutput.fail("refused on the worker")


def explode(ctx: RemoteContext) -> None:
    """Raises on the worker."""
    raise ValueError(f"exploded in {ctx.stage_name}")


def sleep_then_answer(ctx: RemoteContext) -> dict[str, Any]:
    """Writes ``<marker_dir>/<pid>`` when it starts, sleeps ``seconds``, answers its pid.

    The marker tells a test which worker process started it (to kill that one), and how
    many times it started (at-least-once).
    """
    marker_dir = Path(ctx.data["marker_dir"])
    (marker_dir / str(os.getpid())).write_text(ctx.worker or "")
    time.sleep(float(ctx.data["seconds"]))
    return {"pid": os.getpid()}


def spin(ctx: RemoteContext) -> dict[str, Any]:
    """Pure-Python CPU work for about ``ctx.data["cpu_s"]`` seconds."""
    deadline = time.process_time() + float(ctx.data.get("cpu_s", 0.05))
    n = 0
    while time.process_time() < deadline:
        n += 1
    return {"n": n}


def describe(ctx: RemoteContext) -> dict[str, Any]:
    """What the function sees of its stage."""
    return {
        "stage": ctx.stage_name,
        "pipeline": ctx.pipeline_name,
        "run_id": ctx.pipeline_run_id,
        "request_id": ctx.identity.request_id,
        "attempt": ctx.attempt,
        "data": dict(ctx.data),
        "from_source": ctx.inputs.get_from("source", "x"),
        "dependencies": list(ctx.inputs.dependencies),
    }


def flaky_once(ctx: RemoteContext) -> StageOutput:
    """Asks for a retry on attempt 1; answers its attempt after."""
    if ctx.attempt == 1:
        return StageOutput.retry("not yet")
    return StageOutput.ok(attempt=ctx.attempt)


def wait_for_release(ctx: RemoteContext) -> dict[str, Any]:
    """Blocks until ``RELEASE`` is set (at most 10 s): a stage that outlives its timeout."""
    RELEASE.wait(10)
    return {"released": RELEASE.is_set()}


def count_call(ctx: RemoteContext) -> dict[str, Any]:
    """Counts its calls in ``CALLS`` (in-process executors only)."""
    CALLS.append(ctx.stage_name)
    return {"calls": len(CALLS)}


RELEASE = threading.Event()
CALLS: list[str] = []
