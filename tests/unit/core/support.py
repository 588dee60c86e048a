"""Helpers shared by the engine tests."""

from __future__ import annotations

from typing import Any

import anyio

from stageflow_otel.core import PipelineResults, StageGraph

HANG = 5.0
"""Seconds after which a test counts as hung (never a speed assertion)."""


async def run(graph: StageGraph, **kwargs: Any) -> PipelineResults:
    """Run ``graph``, failing the test if it hangs."""
    with anyio.fail_after(HANG):
        return await graph.run(**kwargs)
