"""The engine's seams: compose(), a custom interceptor, run hooks and the read-only run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from stageflow_otel import BaseInterceptor, Pipeline, RunHook, StageContext, StageOutput
from stageflow_otel.core import CallNext, RunCall, RunProgress, StageCall, compose
from stageflow_otel.core.pipeline import PipelineResults

pytestmark = pytest.mark.anyio


async def test_compose_puts_the_first_layer_outermost() -> None:
    trail: list[str] = []

    def layer(name: str) -> Callable[[int, Callable[[int], Awaitable[int]]], Awaitable[int]]:
        async def around(call: int, proceed: Callable[[int], Awaitable[int]]) -> int:
            trail.append(f"{name} in")
            result = await proceed(call + 1)
            trail.append(f"{name} out")
            return result * 10

        return around

    async def centre(call: int) -> int:
        trail.append(f"centre {call}")
        return call

    onion = compose([layer("a"), layer("b")], centre)

    assert await onion(0) == 200
    assert trail == ["a in", "b in", "centre 2", "b out", "a out"]


async def test_compose_without_layers_is_the_centre_itself() -> None:
    async def centre(call: int) -> int:
        return call

    assert compose([], centre) is centre


class Uppercase(BaseInterceptor):
    """A custom interceptor that changes what a stage returns."""

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        output = await call_next(call)
        data = {key: str(value).upper() for key, value in output.data.items()}
        return StageOutput.ok(data)


async def test_a_custom_interceptor_wraps_the_stage() -> None:
    async def greet(ctx: StageContext) -> dict[str, str]:
        return {"greeting": "hello"}

    graph = Pipeline("p").with_stage("greet", greet, interceptors=[Uppercase()]).build()

    results = await graph.run()

    assert results.data("greet") == {"greeting": "HELLO"}
    assert Uppercase().name == "Uppercase"  # the class name, unless it sets one


class Watcher(RunHook):
    def __init__(self) -> None:
        self.progress: list[RunProgress] = []
        self.seen: list[tuple[str, int]] = []

    async def around_run(
        self, run: RunCall, proceed: Callable[[], Awaitable[PipelineResults]]
    ) -> PipelineResults:
        self.progress.append(run.progress)
        results = await proceed()
        self.seen.append(("run", len(run.progress.outputs)))
        return results

    async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
        self.seen.append((call.stage, len(self.progress[-1].outputs)))
        return await proceed(call)


async def test_hooks_see_the_run_progress_live_and_read_only() -> None:
    async def work(ctx: StageContext) -> None:
        return None

    watcher = Watcher()
    graph = (
        Pipeline("p")
        .with_stage("a", work)
        .with_stage("b", work, dependencies=["a"])
        .build(hooks=[watcher])
    )

    await graph.run()

    assert watcher.seen == [("a", 0), ("b", 1), ("run", 2)]
    [progress] = watcher.progress
    assert progress.hooks == (watcher,)
    assert progress.children is None  # no child run was spawned
    outputs: Any = progress.outputs
    with pytest.raises(TypeError):
        outputs["c"] = StageOutput.ok()


def test_a_cleanup_registered_through_the_progress_runs_when_the_run_ends() -> None:
    log: list[str] = []

    class Cleaner(RunHook):
        async def around_run(
            self, run: RunCall, proceed: Callable[[], Awaitable[PipelineResults]]
        ) -> PipelineResults:
            run.progress.cleanup.register(lambda: log.append("cleaned"), name="log")
            return await proceed()

    async def work(ctx: StageContext) -> None:
        log.append("ran")

    anyio.run(Pipeline("p").with_stage("a", work).build(hooks=[Cleaner()]).run)

    assert log == ["ran", "cleaned"]
