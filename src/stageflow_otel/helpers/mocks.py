"""Deterministic mock providers: chat (with tool calls), speech-to-text, text-to-speech, auth.

For tests and demos: the same calls give the same answers, latency is a fixed sleep, and
failures happen on the calls you name (``fail_calls={2}``) or at a seeded rate. Each call goes
through :func:`~stageflow_otel.helpers.providers.observe_provider_call`, so with
``HelperTelemetry`` among the run's hooks it is a GenAI span (``chat mock-chat``) with the
attributes a client instrumentation records: operation, provider, request and response model,
token usage, finish reasons, ``error.type``.

Tokens are counted as whitespace-separated words: deterministic, and close enough for a
stand-in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from stageflow_otel.core._checks import check_seconds, describe
from stageflow_otel.core.context import StageContext
from stageflow_otel.core.errors import TransientError

from .providers import (
    AuthToken,
    ChatResponse,
    ProviderCall,
    SpeechAudio,
    ToolCallRequest,
    Transcript,
    observe_provider_call,
)

__all__ = (
    "MockAuthProvider",
    "MockChatModel",
    "MockProviderError",
    "MockReply",
    "MockSpeechToText",
    "MockTextToSpeech",
)

R = TypeVar("R")

Message = Mapping[str, Any]
"""A chat message: ``{"role": "user", "content": "..."}``."""


class MockProviderError(TransientError):
    """A failure a mock provider was told to have (retryable, as a provider's outage is)."""

    code = "MOCK_PROVIDER_FAILED"


@dataclass(frozen=True, slots=True)
class MockReply:
    """One scripted answer of a :class:`MockChatModel`.

    Attributes:
        text: The answer's text.
        tool_calls: Tool calls to ask for (the answer then finishes with ``tool_calls``).
    """

    text: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()


class _MockProvider:
    """Latency, scripted failures and the call counter shared by the mocks."""

    operation = ""

    def __init__(
        self,
        model: str | None,
        *,
        provider: str,
        latency: float,
        fail_calls: Iterable[int],
        failure_rate: float,
        seed: int,
    ) -> None:
        name = type(self).__name__
        try:
            self.latency = check_seconds("latency", latency, allow_zero=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
        if not isinstance(failure_rate, int | float) or not 0.0 <= failure_rate <= 1.0:
            raise ValueError(
                f"{name}: failure_rate must be from 0 to 1, got {describe(failure_rate)}"
            )
        self.model = model
        self.provider = provider
        self.fail_calls = frozenset(fail_calls)
        self.failure_rate = float(failure_rate)
        self._random = random.Random(seed)
        self.calls = 0
        """Calls made so far (failed ones included)."""

    async def _call(
        self,
        ctx: StageContext | None,
        parameters: Mapping[str, Any],
        produce: Callable[[int], R],
    ) -> R:
        self.calls += 1
        number = self.calls
        # Drawn for every call, so a call's fate depends on its number only.
        unlucky = self._random.random() < self.failure_rate

        async def make() -> R:
            if self.latency:
                await anyio.sleep(self.latency)
            if number in self.fail_calls or unlucky:
                raise MockProviderError(
                    f"{type(self).__name__} call {number} failed as scripted "
                    f"(fail_calls={sorted(self.fail_calls)}, failure_rate={self.failure_rate:g})"
                )
            return produce(number)

        call = ProviderCall(
            self.operation,
            self.provider,
            self.model,
            {k: v for k, v in parameters.items() if v is not None},
            ctx.stage_name if ctx is not None else None,
        )
        return await observe_provider_call(ctx, call, make)


def _words(text: str) -> int:
    return len(text.split())


class MockChatModel(_MockProvider):
    """A chat model that answers from a script.

    Args:
        model: The model name (``gen_ai.request.model``).
        replies: The answers, used in turn (cycling): texts or :class:`MockReply` objects
            (for tool calls); or a function of the messages returning one. By default the
            model echoes the last user message.
        provider: The provider name (``gen_ai.provider.name``).
        latency: Seconds each call takes.
        fail_calls: Numbers of the calls (1-based) that fail with :class:`MockProviderError`.
        failure_rate: Share of calls that fail, drawn from a generator seeded with ``seed``.
        seed: The seed.
    """

    operation = "chat"

    def __init__(
        self,
        model: str = "mock-chat",
        *,
        replies: Sequence[str | MockReply]
        | Callable[[Sequence[Message]], str | MockReply]
        | None = None,
        provider: str = "mock",
        latency: float = 0.0,
        fail_calls: Iterable[int] = (),
        failure_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            provider=provider,
            latency=latency,
            fail_calls=fail_calls,
            failure_rate=failure_rate,
            seed=seed,
        )
        if replies is not None and not callable(replies) and not replies:
            raise ValueError("MockChatModel: replies is empty; give at least one, or None to echo")
        self.replies = replies

    def _reply(self, messages: Sequence[Message], number: int) -> MockReply:
        replies = self.replies
        if replies is None:
            last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            return MockReply(f"echo: {last.get('content', '') if last else ''}")
        reply = replies(messages) if callable(replies) else replies[(number - 1) % len(replies)]
        return MockReply(reply) if isinstance(reply, str) else reply

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        ctx: StageContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ChatResponse:
        """Answer ``messages``; ``max_tokens`` cuts the answer (finish reason ``length``).

        Raises:
            MockProviderError: On a scripted failure.
        """
        if not messages:
            raise ValueError("MockChatModel.chat: give at least one message")
        model = self.model or ""

        def produce(number: int) -> ChatResponse:
            reply = self._reply(messages, number)
            words = reply.text.split()
            finish = "tool_calls" if reply.tool_calls else "stop"
            if max_tokens is not None and len(words) > max_tokens:
                words, finish = words[:max_tokens], "length"
            return ChatResponse(
                text=" ".join(words),
                model=model,
                response_id=f"mock-{number}",
                input_tokens=sum(_words(str(m.get("content", ""))) for m in messages),
                output_tokens=len(words),
                finish_reason=finish,
                tool_calls=reply.tool_calls,
            )

        return await self._call(
            ctx, {"max_tokens": max_tokens, "temperature": temperature}, produce
        )


class MockSpeechToText(_MockProvider):
    """A speech-to-text model: the "audio" is UTF-8 text, or answers come from a script.

    Args:
        model: The model name.
        transcripts: Transcripts used in turn (cycling); by default the audio decoded as
            UTF-8 (so it round-trips :class:`MockTextToSpeech`).
        provider: The provider name.
        latency: Seconds each call takes.
        fail_calls: Numbers of the calls (1-based) that fail.
        failure_rate: Share of calls that fail (seeded).
        seed: The seed.
    """

    operation = "speech_to_text"

    def __init__(
        self,
        model: str = "mock-stt",
        *,
        transcripts: Sequence[str] | None = None,
        provider: str = "mock",
        latency: float = 0.0,
        fail_calls: Iterable[int] = (),
        failure_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            provider=provider,
            latency=latency,
            fail_calls=fail_calls,
            failure_rate=failure_rate,
            seed=seed,
        )
        self.transcripts = tuple(transcripts) if transcripts is not None else None

    async def transcribe(self, audio: bytes, *, ctx: StageContext | None = None) -> Transcript:
        """Transcribe ``audio``.

        Raises:
            MockProviderError: On a scripted failure.
        """
        model = self.model or ""

        def produce(number: int) -> Transcript:
            if self.transcripts:
                text = self.transcripts[(number - 1) % len(self.transcripts)]
            else:
                text = bytes(audio).decode("utf-8", errors="replace")
            return Transcript(text, model, len(audio))

        return await self._call(ctx, {}, produce)


class MockTextToSpeech(_MockProvider):
    """A text-to-speech model whose "audio" is the text in UTF-8.

    Args:
        model: The model name.
        provider: The provider name.
        latency: Seconds each call takes.
        fail_calls: Numbers of the calls (1-based) that fail.
        failure_rate: Share of calls that fail (seeded).
        seed: The seed.
    """

    operation = "text_to_speech"

    def __init__(
        self,
        model: str = "mock-tts",
        *,
        provider: str = "mock",
        latency: float = 0.0,
        fail_calls: Iterable[int] = (),
        failure_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            provider=provider,
            latency=latency,
            fail_calls=fail_calls,
            failure_rate=failure_rate,
            seed=seed,
        )

    async def synthesize(self, text: str, *, ctx: StageContext | None = None) -> SpeechAudio:
        """Speak ``text``.

        Raises:
            MockProviderError: On a scripted failure.
        """
        model = self.model or ""
        return await self._call(
            ctx, {}, lambda _: SpeechAudio(text.encode("utf-8"), model, len(text))
        )


class MockAuthProvider(_MockProvider):
    """Issues and checks deterministic access tokens.

    A subject's token is the same for the same ``secret``; :meth:`verify` maps it back.

    Args:
        secret: What the tokens derive from.
        expires_in: Seconds a token is said to be valid for.
        provider: The provider name.
        latency: Seconds each call takes.
        fail_calls: Numbers of the calls (1-based) that fail.
        failure_rate: Share of calls that fail (seeded).
        seed: The seed.
    """

    operation = "auth_token"

    def __init__(
        self,
        secret: str = "mock-secret",
        *,
        expires_in: float = 3600.0,
        provider: str = "mock",
        latency: float = 0.0,
        fail_calls: Iterable[int] = (),
        failure_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            None,
            provider=provider,
            latency=latency,
            fail_calls=fail_calls,
            failure_rate=failure_rate,
            seed=seed,
        )
        self.secret = secret
        self.expires_in = expires_in
        self._issued: dict[str, str] = {}

    async def token(self, subject: str, *, ctx: StageContext | None = None) -> AuthToken:
        """Issue ``subject``'s token.

        Raises:
            MockProviderError: On a scripted failure.
        """

        def produce(_: int) -> AuthToken:
            digest = hashlib.sha256(f"{self.secret}:{subject}".encode()).hexdigest()[:32]
            self._issued[digest] = subject
            return AuthToken(digest, subject, self.expires_in)

        return await self._call(ctx, {}, produce)

    def verify(self, token: str) -> str | None:
        """The subject a token was issued to, or ``None`` for a token never issued here."""
        return self._issued.get(token)
