"""A pipeline for the durable-run tests, shared with the subprocess that gets killed.

``order -> price -> pay -> ship``, plus ``audit`` beside ``price``. Each stage appends its name
to ``$DURABLE_COUNTS`` (one line per execution, across processes); ``$DURABLE_FAIL`` names a
stage that raises and ``$DURABLE_BLOCK`` one that never returns.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from stageflow_otel import Pipeline, StageContext

STAGES = ("order", "price", "audit", "pay", "ship")


def _count(name: str) -> None:
    path = os.environ.get("DURABLE_COUNTS")
    if path:
        with open(path, "a", encoding="utf-8") as counts:
            counts.write(name + "\n")


async def _step(ctx: StageContext) -> dict[str, Any]:
    name = ctx.stage_name
    _count(name)
    if os.environ.get("DURABLE_BLOCK") == name:
        await anyio.sleep_forever()
    if os.environ.get("DURABLE_FAIL") == name:
        raise ConnectionError(f"{name}: the service is down")
    return {
        "order": {**ctx.data.get("order", {}), "step": name},
        "lines": [{"sku": f"sku-{i}", "qty": i} for i in range(8)],
        name: True,
    }


def build() -> Pipeline:
    """The pipeline (each stage the same async function under its own name)."""
    pipeline = Pipeline("durable")
    pipeline = pipeline.with_stage("order", _step)
    pipeline = pipeline.with_stage("price", _step, dependencies=["order"])
    pipeline = pipeline.with_stage("audit", _step, dependencies=["order"])
    pipeline = pipeline.with_stage("pay", _step, dependencies=["price", "audit"])
    return pipeline.with_stage("ship", _step, dependencies=["pay"])


def counts(path: str) -> dict[str, int]:
    """Executions per stage, from the counts file."""
    found = dict.fromkeys(STAGES, 0)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                found[line.strip()] += 1
    return found


async def run_in_store(url: str) -> None:
    """Run the pipeline once, recorded with checkpoints in the store at ``url``."""
    from stageflow_otel.runs import open_store

    store = open_store(url, checkpoints=True, flush_interval=0.01)
    await build().build(store=store).run({"order": {"id": 7}})
