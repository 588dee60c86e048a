"""Stages and interceptors that the pipeline files of these tests name by import path."""

from __future__ import annotations

from typing import Any

from stageflow_otel.core import BaseInterceptor, CallNext, StageCall, StageContext, StageOutput


async def fetch(ctx: StageContext) -> dict[str, Any]:
    return {"user": ctx.data.get("user", "ada")}


async def greet(ctx: StageContext, greeting: str = "hello") -> dict[str, Any]:
    return {"text": f"{greeting} {ctx.inputs.get_from('fetch', 'user')}"}


class Shout:
    """A stage class with constructor arguments (``args`` in a file)."""

    def __init__(self, *, times: int) -> None:
        self.times = times

    async def execute(self, ctx: StageContext) -> dict[str, Any]:
        return {"text": "!" * self.times}


class Echo:
    """A stage class that can be made without arguments."""

    def __init__(self, prefix: str = "echo") -> None:
        self.prefix = prefix

    async def execute(self, ctx: StageContext) -> dict[str, Any]:
        return {"text": self.prefix}


class Tagging(BaseInterceptor):
    """Adds ``tag`` to the stage's output metadata."""

    name = "tagging"

    def __init__(self, tag: str = "x") -> None:
        self.tag = tag

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        output = await call_next(call)
        return output.with_metadata(tag=self.tag)


def broken_factory() -> None:
    raise RuntimeError("the factory is broken")


not_callable = 42
shout_once = Shout(times=1)
