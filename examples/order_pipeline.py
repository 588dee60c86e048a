"""The order pipeline of ``stageflow-otel demo``, as an example to read, run and change.

The pipeline itself ships inside the package (``stageflow_otel.demo``) so that the demo works
from an installed wheel; this module re-exports it. Run it with telemetry::

    stageflow-otel run examples.order_pipeline:pipeline --data '{"order_id": "ord-7"}'
    stageflow-otel graph examples.order_pipeline:pipeline --format mermaid

or without any (``python -m examples.order_pipeline``): the engine needs no telemetry.
"""

from __future__ import annotations

import anyio

from stageflow_otel import Pipeline
from stageflow_otel.demo import (
    build_order_pipeline,
    build_payment_pipeline,
    order_input,
)

__all__ = ("build_order_pipeline", "build_payment_pipeline", "order_input", "pipeline")

pipeline: Pipeline = build_order_pipeline()
"""The order pipeline (build a fresh one with :func:`build_order_pipeline`)."""


async def main() -> None:
    """Run the pipeline once, without telemetry, and print each stage's outcome."""
    results = await pipeline.run(order_input(0))
    for stage, output in results.items():
        print(f"{stage:<20} {output.status.value:<5} {dict(output.data)}")


if __name__ == "__main__":
    anyio.run(main)
