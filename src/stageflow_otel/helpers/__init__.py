"""Helpers for the pipelines people build: guardrails, mocks, streaming, memory, analytics.

Engine-level code: it imports no telemetry library. What the helpers do is reported through
the engine's own channels (events, run hooks), and
:class:`stageflow_otel.observability.helpers.HelperTelemetry` records it as spans, span
events and metrics.
"""

from __future__ import annotations

from .analytics import AnalyticsExporter as AnalyticsExporter
from .analytics import AnalyticsRow as AnalyticsRow
from .analytics import AnalyticsSink as AnalyticsSink
from .analytics import ConsoleExporter as ConsoleExporter
from .analytics import JsonLinesExporter as JsonLinesExporter
from .guardrails import CardNumberDetector as CardNumberDetector
from .guardrails import CheckResult as CheckResult
from .guardrails import ContentFilter as ContentFilter
from .guardrails import Detector as Detector
from .guardrails import EmailDetector as EmailDetector
from .guardrails import Finding as Finding
from .guardrails import GuardCheck as GuardCheck
from .guardrails import GuardrailViolation as GuardrailViolation
from .guardrails import GuardStage as GuardStage
from .guardrails import IbanDetector as IbanDetector
from .guardrails import InputLengthPolicy as InputLengthPolicy
from .guardrails import IPAddressDetector as IPAddressDetector
from .guardrails import PhoneNumberDetector as PhoneNumberDetector
from .guardrails import PIICheck as PIICheck
from .guardrails import PIIDetector as PIIDetector
from .guardrails import PIIMatch as PIIMatch
from .guardrails import RateLimitPolicy as RateLimitPolicy
from .guardrails import RegexDetector as RegexDetector
from .guardrails import Verdict as Verdict
from .guardrails import luhn_valid as luhn_valid
from .guardrails import mod97_valid as mod97_valid
from .memory import InMemoryMemoryStore as InMemoryMemoryStore
from .memory import MemoryFetchStage as MemoryFetchStage
from .memory import MemoryStore as MemoryStore
from .memory import MemoryWindow as MemoryWindow
from .memory import MemoryWriteStage as MemoryWriteStage
from .memory import RedisMemoryStore as RedisMemoryStore
from .memory import Turn as Turn
from .mocks import MockAuthProvider as MockAuthProvider
from .mocks import MockChatModel as MockChatModel
from .mocks import MockProviderError as MockProviderError
from .mocks import MockReply as MockReply
from .mocks import MockSpeechToText as MockSpeechToText
from .mocks import MockTextToSpeech as MockTextToSpeech
from .providers import AuthToken as AuthToken
from .providers import ChatResponse as ChatResponse
from .providers import ProviderCall as ProviderCall
from .providers import ProviderCallObserver as ProviderCallObserver
from .providers import SpeechAudio as SpeechAudio
from .providers import ToolCallRequest as ToolCallRequest
from .providers import Transcript as Transcript
from .providers import observe_provider_call as observe_provider_call
from .streaming import BackpressureMonitor as BackpressureMonitor
from .streaming import ChunkQueue as ChunkQueue
from .streaming import StreamObserver as StreamObserver
from .streaming import StreamStatistics as StreamStatistics
from .streaming import rechunk as rechunk
from .tracking import MemoryTrackingInterceptor as MemoryTrackingInterceptor

__all__ = (
    "AnalyticsExporter",
    "AnalyticsRow",
    "AnalyticsSink",
    "AuthToken",
    "BackpressureMonitor",
    "CardNumberDetector",
    "ChatResponse",
    "CheckResult",
    "ChunkQueue",
    "ConsoleExporter",
    "ContentFilter",
    "Detector",
    "EmailDetector",
    "Finding",
    "GuardCheck",
    "GuardStage",
    "GuardrailViolation",
    "IPAddressDetector",
    "IbanDetector",
    "InMemoryMemoryStore",
    "InputLengthPolicy",
    "JsonLinesExporter",
    "MemoryFetchStage",
    "MemoryStore",
    "MemoryTrackingInterceptor",
    "MemoryWindow",
    "MemoryWriteStage",
    "MockAuthProvider",
    "MockChatModel",
    "MockProviderError",
    "MockReply",
    "MockSpeechToText",
    "MockTextToSpeech",
    "PIICheck",
    "PIIDetector",
    "PIIMatch",
    "PhoneNumberDetector",
    "ProviderCall",
    "ProviderCallObserver",
    "RateLimitPolicy",
    "RedisMemoryStore",
    "RegexDetector",
    "SpeechAudio",
    "StreamObserver",
    "StreamStatistics",
    "ToolCallRequest",
    "Transcript",
    "Turn",
    "Verdict",
    "luhn_valid",
    "mod97_valid",
    "observe_provider_call",
    "rechunk",
)
