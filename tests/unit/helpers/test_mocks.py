"""Mock providers: deterministic answers, scripted failures, the provider-call seam."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stageflow_otel import Pipeline, RetryInterceptor, RunHook, StageContext
from stageflow_otel.helpers import (
    ChatResponse,
    MockAuthProvider,
    MockChatModel,
    MockProviderError,
    MockReply,
    MockSpeechToText,
    MockTextToSpeech,
    ProviderCall,
    ToolCallRequest,
)
from stageflow_otel.tools import ToolRegistry

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "hello there"}]


async def test_the_chat_model_echoes_by_default_and_counts_words_as_tokens() -> None:
    model = MockChatModel()
    response = await model.chat([{"role": "system", "content": "be brief"}, *USER])
    assert response == ChatResponse(
        text="echo: hello there",
        model="mock-chat",
        response_id="mock-1",
        input_tokens=4,
        output_tokens=3,
    )


async def test_scripted_replies_cycle_and_max_tokens_cuts() -> None:
    model = MockChatModel(replies=["one two three", "four"])
    texts = [(await model.chat(USER)).text for _ in range(3)]
    assert texts == ["one two three", "four", "one two three"]
    cut = await model.chat(USER, max_tokens=1)
    assert (cut.text, cut.finish_reason) == ("four", "stop")
    cut = await model.chat(USER, max_tokens=2)
    assert (cut.text, cut.finish_reason, cut.output_tokens) == ("one two", "length", 2)


async def test_tool_calls_are_what_the_tool_registry_resolves() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def lookup(input: Any) -> dict[str, Any]:
        """Look up an order."""
        return {}

    call = ToolCallRequest("call-1", "lookup", '{"order": 7}')
    model = MockChatModel(replies=[MockReply(tool_calls=(call,))])
    response = await model.chat(USER)
    assert response.finish_reason == "tool_calls"
    resolved, unresolved = registry.parse_and_resolve(c.as_openai() for c in response.tool_calls)
    assert unresolved == []
    assert [(r.name, r.arguments) for r in resolved] == [("lookup", {"order": 7})]


async def test_failures_happen_on_the_named_calls() -> None:
    model = MockChatModel(fail_calls={2})
    await model.chat(USER)
    with pytest.raises(MockProviderError, match="call 2 failed as scripted"):
        await model.chat(USER)
    await model.chat(USER)
    assert model.calls == 3


async def test_a_failure_rate_is_the_same_for_the_same_seed() -> None:
    async def outcomes(seed: int) -> list[bool]:
        model = MockSpeechToText(failure_rate=0.5, seed=seed)
        results = []
        for _ in range(20):
            try:
                await model.transcribe(b"x")
                results.append(True)
            except MockProviderError:
                results.append(False)
        return results

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert True in first
    assert False in first


async def test_speech_round_trips_and_tokens_are_stable() -> None:
    audio = await MockTextToSpeech().synthesize("bonjour")
    assert (audio.audio, audio.characters) == (b"bonjour", 7)
    transcript = await MockSpeechToText().transcribe(audio.audio)
    assert (transcript.text, transcript.audio_bytes) == ("bonjour", 7)
    scripted = MockSpeechToText(transcripts=["a", "b"])
    assert [(await scripted.transcribe(b"")).text for _ in range(3)] == ["a", "b", "a"]

    auth = MockAuthProvider(secret="s")
    token = await auth.token("ada")
    assert token.token == (await MockAuthProvider(secret="s").token("ada")).token
    assert auth.verify(token.token) == "ada"
    assert auth.verify("forged") is None


async def test_a_retry_interceptor_retries_a_mock_failure() -> None:
    model = MockChatModel(fail_calls={1})

    async def ask(ctx: StageContext) -> dict[str, str]:
        return {"reply": (await model.chat(USER, ctx=ctx)).text}

    graph = (
        Pipeline("p")
        .with_stage("ask", ask, interceptors=[RetryInterceptor(max_attempts=2, base_delay=0.001)])
        .build()
    )
    results = await graph.run()
    assert results["ask"].data == {"reply": "echo: hello there"}
    assert model.calls == 2


async def test_hooks_with_around_provider_call_wrap_each_call() -> None:
    seen: list[tuple[str, ProviderCall]] = []

    class Observer(RunHook):
        def __init__(self, name: str) -> None:
            self.name = name

        async def around_provider_call(
            self, call: ProviderCall, proceed: Callable[[ProviderCall], Awaitable[Any]]
        ) -> Any:
            seen.append((self.name, call))
            return await proceed(call)

    model = MockChatModel(model="m1")

    async def ask(ctx: StageContext) -> None:
        await model.chat(USER, ctx=ctx, temperature=0.2)

    await Pipeline("p").with_stage("ask", ask).build(hooks=[Observer("a"), Observer("b")]).run()
    call = ProviderCall("chat", "mock", "m1", {"temperature": 0.2}, "ask")
    assert seen == [("a", call), ("b", call)]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="failure_rate must be from 0 to 1"):
        MockChatModel(failure_rate=2)
    with pytest.raises(ValueError, match="MockTextToSpeech: latency"):
        MockTextToSpeech(latency=-1)
    with pytest.raises(ValueError, match="replies is empty"):
        MockChatModel(replies=[])
