"""Calls to model providers (chat, speech, auth) as run hooks see them.

A provider client, a mock or your own, makes each call through :func:`observe_provider_call`
with the calling stage's context: every run hook of the run that has an
``around_provider_call(call, proceed)`` method wraps it, the way the tool executor's calls are
wrapped by ``around_tool``. ``HelperTelemetry`` is such a hook: it makes each call a span with
the OpenTelemetry GenAI semantic conventions, as a client instrumentation would. Without a
context (or with no such hook) the call is made as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from stageflow_otel.core.context import StageContext
from stageflow_otel.core.seams import compose

__all__ = (
    "AuthToken",
    "ChatResponse",
    "ProviderCall",
    "ProviderCallObserver",
    "SpeechAudio",
    "ToolCallRequest",
    "Transcript",
    "observe_provider_call",
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One call to a provider, as ``around_provider_call`` sees it.

    Attributes:
        operation: What is asked: ``chat`` (the GenAI ``gen_ai.operation.name``),
            ``speech_to_text``, ``text_to_speech`` or ``auth_token``.
        provider: The provider's name (``gen_ai.provider.name``: ``openai``, ``mock``, ...).
        model: The model asked for, if any.
        parameters: Request parameters worth recording (``max_tokens``, ``temperature``);
            never the prompt.
        stage: The calling stage, if known.
    """

    operation: str
    provider: str
    model: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A tool call a chat model asks for (the OpenAI shape, see :meth:`as_openai`).

    Attributes:
        call_id: The call's id.
        name: The tool's name.
        arguments: The arguments, as a JSON text.
    """

    call_id: str
    name: str
    arguments: str = "{}"

    def as_openai(self) -> dict[str, Any]:
        """The call as OpenAI sends it, which ``ToolRegistry.parse_and_resolve`` reads.

        ``{"id": ..., "type": "function", "function": {"name": ..., "arguments": ...}}``.
        """
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A chat model's answer.

    Attributes:
        text: The answer's text (empty when the model asks for tool calls only).
        model: The model that answered.
        response_id: The response's id.
        input_tokens: Tokens of the prompt.
        output_tokens: Tokens of the answer.
        finish_reason: Why the answer ended (``stop``, ``tool_calls``, ``length``).
        tool_calls: The tool calls asked for.
    """

    text: str
    model: str
    response_id: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"
    tool_calls: tuple[ToolCallRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class Transcript:
    """What a speech-to-text model heard.

    Attributes:
        text: The transcript.
        model: The model.
        audio_bytes: Size of the audio transcribed.
    """

    text: str
    model: str
    audio_bytes: int


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """What a text-to-speech model said.

    Attributes:
        audio: The audio.
        model: The model.
        characters: Characters of text spoken.
    """

    audio: bytes = field(repr=False)
    model: str
    characters: int


@dataclass(frozen=True, slots=True)
class AuthToken:
    """An access token.

    Attributes:
        token: The token (never recorded).
        subject: Whom it was issued to (never recorded).
        expires_in: Seconds it is valid for.
    """

    token: str = field(repr=False)
    subject: str = field(repr=False)
    expires_in: float


class ProviderCallObserver(Protocol):
    """**Protocol:** a run hook that wraps provider calls (``HelperTelemetry`` is one)."""

    async def around_provider_call(
        self, call: ProviderCall, proceed: Callable[[ProviderCall], Awaitable[Any]]
    ) -> Any:
        """Wrap one call; return what ``proceed(call)`` returns, let every exception through."""
        ...


async def observe_provider_call(
    ctx: StageContext | None,
    call: ProviderCall,
    make: Callable[[], Awaitable[R]],
) -> R:
    """Make a provider call inside the ``around_provider_call`` of every hook of the run.

    Args:
        ctx: The calling stage's context; ``None`` makes the call unobserved.
        call: What is called.
        make: Makes the call and returns its result.

    Returns:
        What ``make`` returned.
    """
    if ctx is None:
        return await make()
    layers = [
        around
        for hook in ctx.run_hooks
        if callable(around := getattr(hook, "around_provider_call", None))
    ]
    if not layers:
        return await make()

    async def innermost(_: ProviderCall) -> R:
        return await make()

    result: R = await compose(layers, innermost)(call)
    return result
