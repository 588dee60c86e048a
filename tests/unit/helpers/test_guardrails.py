"""Guardrails: detectors, checks, policies and the guard stage, without telemetry."""

from __future__ import annotations

import re
from typing import Any

import pytest

from stageflow_otel import CollectingEventSink, Pipeline, RunIdentity, StageExecutionError
from stageflow_otel.helpers import (
    CardNumberDetector,
    ContentFilter,
    EmailDetector,
    GuardrailViolation,
    GuardStage,
    IbanDetector,
    InputLengthPolicy,
    IPAddressDetector,
    PhoneNumberDetector,
    PIICheck,
    PIIDetector,
    RateLimitPolicy,
    RegexDetector,
    luhn_valid,
    mod97_valid,
)

pytestmark = pytest.mark.anyio


def kinds(text: str, detector: PIIDetector | None = None) -> list[tuple[str, str]]:
    return [(m.kind, m.text) for m in (detector or PIIDetector()).find(text)]


def test_each_builtin_kind_is_found_in_text_order() -> None:
    text = (
        "mail ada@example.com, call +44 20 7946 0958 or (555) 123-4567, "
        "card 4111-1111-1111-1111, iban GB82 WEST 1234 5698 7654 32, ip 192.168.0.10 / 2001:db8::1"
    )
    assert kinds(text) == [
        ("email", "ada@example.com"),
        ("phone", "+44 20 7946 0958"),
        ("phone", "(555) 123-4567"),
        ("card", "4111-1111-1111-1111"),
        ("iban", "GB82 WEST 1234 5698 7654 32"),
        ("ip", "192.168.0.10"),
        ("ip", "2001:db8::1"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "order 2024-01-15 at 12:30:45",  # a date and a time
        "card 4111 1111 1111 1112",  # Luhn-invalid
        "iban GB82WEST12345698765433",  # mod-97-invalid
        "version 300.1.2.3 and 1.2.3",  # not an address
        "ticket 555-1234",  # too short without a country code
    ],
)
def test_lookalikes_are_not_personal_data(text: str) -> None:
    assert kinds(text) == []


def test_an_iban_followed_by_capitals_ends_where_its_checksum_holds() -> None:
    assert kinds("to GB82 WEST 1234 5698 7654 32 ASAP", PIIDetector([IbanDetector()])) == [
        ("iban", "GB82 WEST 1234 5698 7654 32")
    ]
    assert kinds("DE89370400440532013000") == [("iban", "DE89370400440532013000")]


def test_validators() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41111x")
    assert mod97_valid("GB82WEST12345698765432")
    assert not mod97_valid("GB82WEST12345698765433")
    assert not mod97_valid("GB82")


def test_overlaps_go_to_the_earlier_detector() -> None:
    # A 10-digit run is a phone number to one detector and a custom id to another.
    account = RegexDetector("account", r"\bACC-\d{10}\b")
    detector = PIIDetector([account, PhoneNumberDetector()])
    assert kinds("ACC-5551234567", detector) == [("account", "ACC-5551234567")]


def test_redaction_uses_the_placeholder_and_is_idempotent() -> None:
    detector = PIIDetector(replacement="<{kind}>")
    once = detector.redact("write to ada@example.com from 10.0.0.1")
    assert once == "write to <EMAIL> from <IP>"
    assert detector.redact(once) == once


def test_redact_value_walks_nested_payloads_as_the_telemetry_hook() -> None:
    detector = PIIDetector()
    value: Any = {"to": ["ada@example.com", 3], "meta": {"ip": "10.0.0.1"}, "n": 1}
    assert detector.redact_value("payload", value) == {
        "to": ["[EMAIL]", 3],
        "meta": {"ip": "[IP]"},
        "n": 1,
    }


def test_a_custom_detector_is_pluggable() -> None:
    class Passport:
        kind = "passport"

        def find(self, text: str) -> Any:
            from stageflow_otel.helpers import PIIMatch

            for match in re.finditer(r"\bP\d{8}\b", text):
                yield PIIMatch("passport", match.start(), match.end(), match.group())

    detector = PIIDetector([Passport(), EmailDetector()])
    assert detector.kinds == ("passport", "email")
    assert detector.redact("P12345678 / a@b.io") == "[PASSPORT] / [EMAIL]"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="is no detector"):
        PIIDetector([object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="invalid pattern"):
        RegexDetector("x", "(")
    with pytest.raises(ValueError, match="blocks nothing"):
        ContentFilter()
    with pytest.raises(ValueError, match="at least one check"):
        GuardStage([])
    with pytest.raises(ValueError, match="unique"):
        GuardStage([PIICheck(), PIICheck()])
    with pytest.raises(ValueError, match="action"):
        PIICheck(action="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        InputLengthPolicy(0)
    with pytest.raises(ValueError, match="identity"):
        RateLimitPolicy(1, 1.0, identity="ip")  # type: ignore[arg-type]


def test_detectors_are_usable_alone() -> None:
    assert [m.text for m in CardNumberDetector().find("4242424242424242")] == ["4242424242424242"]
    assert [m.text for m in IPAddressDetector().find("::1 and 256.1.1.1")] == ["::1"]


async def run_guard(
    guard: GuardStage, text: str, *, identity: RunIdentity | None = None
) -> tuple[Any, CollectingEventSink]:
    sink = CollectingEventSink()
    graph = Pipeline("chat").with_stage("guard", guard).build(event_sink=sink)
    results = await graph.run({"text": text}, identity=identity)
    return results["guard"], sink


async def test_the_guard_redacts_and_reports_each_check() -> None:
    guard = GuardStage([InputLengthPolicy(200), PIICheck()])
    output, sink = await run_guard(guard, "I am ada@example.com")
    assert output.data == {
        "text": "I am [EMAIL]",
        "verdict": "redact",
        "findings": {"email": 1},
    }
    verdicts = [
        {k: e[k] for k in ("stage", "check", "verdict", "findings", "kinds")}
        for e in sink.of_type("guardrail.verdict")
    ]
    assert verdicts == [
        {"stage": "guard", "check": "input_length", "verdict": "pass", "findings": 0, "kinds": []},
        {"stage": "guard", "check": "pii", "verdict": "redact", "findings": 1, "kinds": ["email"]},
    ]


async def test_the_guard_passes_clean_text() -> None:
    output, _ = await run_guard(GuardStage([PIICheck()]), "hello")
    assert output.data == {"text": "hello", "verdict": "pass", "findings": {}}


async def test_the_guard_fails_on_blocked_content_without_leaking_it() -> None:
    guard = GuardStage([ContentFilter(["secret"], patterns=[r"drop\s+table"]), PIICheck()])
    with pytest.raises(StageExecutionError) as caught:
        await run_guard(guard, "the SECRET is drop  table users")
    violation = caught.value.__cause__
    assert isinstance(violation, GuardrailViolation)
    assert violation.guard == "guard"
    assert [r.check for r in violation.results] == ["content"]  # stopped at the failure
    assert "secret" not in str(violation).lower()
    assert "1 blocked_word, 1 blocked_pattern" in str(violation)


async def test_run_all_reports_every_check_after_a_failure() -> None:
    guard = GuardStage([PIICheck(action="fail"), InputLengthPolicy(3)], run_all=True)
    with pytest.raises(StageExecutionError) as caught:
        await run_guard(guard, "a@b.io")
    violation = caught.value.__cause__
    assert isinstance(violation, GuardrailViolation)
    assert [(r.check, r.verdict) for r in violation.results] == [
        ("pii", "fail"),
        ("input_length", "fail"),
    ]


async def test_the_rate_limit_counts_per_identity_in_a_sliding_window() -> None:
    now = [0.0]
    policy = RateLimitPolicy(2, 10.0, clock=lambda: now[0])
    guard = GuardStage([policy])
    ada, bob = RunIdentity(user_id="ada"), RunIdentity(user_id="bob")
    for _ in range(2):
        await run_guard(guard, "hi", identity=ada)
    with pytest.raises(StageExecutionError, match="more than 2 requests in 10 s for this user"):
        await run_guard(guard, "hi", identity=ada)
    await run_guard(guard, "hi", identity=bob)  # another user has a budget of their own
    now[0] = 10.0  # the first two requests leave the window
    await run_guard(guard, "hi", identity=ada)


async def test_the_guard_reads_a_dependency_and_names_a_missing_key() -> None:
    async def source(ctx: Any) -> dict[str, str]:
        return {"reply": "call +1 415 555 2671"}

    graph = (
        Pipeline("p")
        .with_stage("llm", source)
        .with_stage(
            "guard", GuardStage([PIICheck()], key="reply", from_stage="llm"), dependencies=["llm"]
        )
        .build()
    )
    results = await graph.run()
    assert results["guard"].data["text"] == "call [PHONE]"

    with pytest.raises(StageExecutionError, match="lacks it"):
        await run_guard(GuardStage([PIICheck()], key="prompt"), "x")


def test_numbers_written_one_after_the_other_are_found_each() -> None:
    assert kinds("call 555 123 4567 555 987 6543 now") == [
        ("phone", "555 123 4567"),
        ("phone", "555 987 6543"),
    ]
    # A Luhn-invalid card does not split into phone numbers.
    assert kinds("4111 1111 1111 1112") == []
