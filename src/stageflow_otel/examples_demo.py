"""A small example pipeline for ``stageflow-otel demo``."""

from __future__ import annotations

import sys

import anyio

from .core import Pipeline, StageContext, StageKind, StageOutput


async def load_order(ctx: StageContext) -> dict[str, object]:
    """Load the order named in the run input."""
    await anyio.sleep(0.01)
    return {"order_id": ctx.data.get("order_id", "o-1"), "items": 3, "amount": 42.5}


async def check_fraud(ctx: StageContext) -> dict[str, object]:
    """Score the order for fraud."""
    await anyio.sleep(0.02)
    return {"fraud_score": 0.07}


async def price(ctx: StageContext) -> dict[str, object]:
    """Compute the total with tax."""
    amount = float(ctx.inputs.get_from("load_order", "amount"))
    return {"total": round(amount * 1.2, 2)}


async def approve(ctx: StageContext) -> StageOutput:
    """Approve the order if its fraud score is low."""
    score = float(ctx.inputs.get_from("check_fraud", "fraud_score"))
    if score > 0.5:
        return StageOutput.fail(f"fraud score {score} too high")
    return StageOutput.ok(approved=True, total=ctx.inputs.get_from("price", "total"))


def build_pipeline() -> Pipeline:
    """The example order pipeline."""
    return (
        Pipeline("order")
        .with_stage("load_order", load_order, StageKind.ENRICH)
        .with_stage("check_fraud", check_fraud, StageKind.GUARD, ["load_order"])
        .with_stage("price", price, StageKind.TRANSFORM, ["load_order"])
        .with_stage("approve", approve, StageKind.WORK, ["check_fraud", "price"])
    )


async def run_demo() -> int:
    """Run the example once and print each stage's outcome."""
    results = await build_pipeline().run({"order_id": "o-1001"})
    for name, output in results.items():
        sys.stdout.write(
            f"{name:<12} {output.status.value:<5} {output.duration_ms or 0:8.2f} ms  {dict(output.data)}\n"
        )
    return 0 if results.ok else 1
