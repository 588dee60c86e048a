"""Guardrails: find and redact personal data, filter content, enforce input policies.

A :class:`GuardStage` runs a list of checks over a text and, by the worst verdict, fails the
stage, passes the text on redacted, or passes it on as it came. Each check reports a
:class:`CheckResult` and the stage sends one ``guardrail.verdict`` event per check (the check,
its verdict, how many findings of which kinds; never the text found), which
``stageflow_otel.observability.helpers.HelperTelemetry`` turns into a span event and counters.

The checks:

* :class:`PIICheck` with a :class:`PIIDetector`: e-mail addresses, phone numbers, card numbers
  (Luhn-checked), IBANs (mod-97-checked), IPv4 and IPv6 addresses, and any
  :class:`Detector` of your own. The same detector is the telemetry redaction hook:
  ``Telemetry(redact=detector.redact_value)``.
* :class:`ContentFilter`: blocked words and regular expressions.
* :class:`InputLengthPolicy` and :class:`RateLimitPolicy` (requests per identity in a sliding
  window).
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from stageflow_otel.core._checks import check_count, check_seconds, describe
from stageflow_otel.core.context import StageContext
from stageflow_otel.core.errors import StageflowError
from stageflow_otel.core.model import StageKind, StageOutput

__all__ = (
    "CardNumberDetector",
    "CheckResult",
    "ContentFilter",
    "Detector",
    "EmailDetector",
    "Finding",
    "GuardCheck",
    "GuardStage",
    "GuardrailViolation",
    "IPAddressDetector",
    "IbanDetector",
    "InputLengthPolicy",
    "PIICheck",
    "PIIDetector",
    "PIIMatch",
    "PhoneNumberDetector",
    "RateLimitPolicy",
    "RegexDetector",
    "Verdict",
    "luhn_valid",
    "mod97_valid",
)

Verdict = Literal["pass", "redact", "fail"]
"""What a check (or the guard as a whole) decided."""

_SEVERITY: dict[str, int] = {"pass": 0, "redact": 1, "fail": 2}

VERDICT_EVENT = "guardrail.verdict"
"""The event a :class:`GuardStage` sends for each check."""


# --------------------------------------------------------------------------- validation


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (card numbers)."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def mod97_valid(iban: str) -> bool:
    """Whether a compact IBAN (no spaces) passes the ISO 13616 mod-97 check."""
    if not 15 <= len(iban) <= 34 or not iban.isalnum() or not iban.isascii():
        return False
    rearranged = iban[4:] + iban[:4]
    try:
        number = int("".join(str(int(char, 36)) for char in rearranged.upper()))
    except ValueError:
        return False
    return number % 97 == 1


# --------------------------------------------------------------------------- detectors


@dataclass(frozen=True, slots=True)
class PIIMatch:
    """One piece of personal data found in a text.

    Attributes:
        kind: What it is (``email``, ``phone``, ``card``, ``iban``, ``ip``, or a detector's own).
        start: Its first character's index.
        end: One past its last character's index.
        text: The text found.
    """

    kind: str
    start: int
    end: int
    text: str = field(repr=False)


@runtime_checkable
class Detector(Protocol):
    """**Protocol:** finds one kind of personal data in a text."""

    @property
    def kind(self) -> str:
        """The kind found (``email``, ...); the placeholder and metric label derive from it."""
        ...

    def find(self, text: str) -> Iterable[PIIMatch]:
        """Every match in ``text``, in any order; overlapping matches are resolved by the caller."""
        ...


def _first_piece(words: list[str], validate: Callable[[str], bool]) -> int | None:
    """How many words the first piece has, when ``words`` split into valid pieces; else None."""

    def splits(start: int) -> int | None:
        for end in range(start + 1, len(words) + 1):
            if validate(" ".join(words[start:end])) and (
                end == len(words) or splits(end) is not None
            ):
                return end - start
        return None

    return splits(0) if len(words) > 1 else None


class RegexDetector:
    """A detector from a regular expression, with an optional validation of each match.

    Args:
        kind: The kind of data found.
        pattern: The expression (a string or a compiled pattern).
        validate: ``validate(matched_text) -> bool``; matches it rejects are not reported.
        trim_words: Retry a rejected match without its trailing words (see :meth:`find`).
        requires: A substring, or an expression, that every text with a match contains: a
            text without it is not scanned at all (``"@"`` for e-mail addresses).

    Raises:
        ValueError: ``kind`` is empty or ``pattern`` is not a valid expression.
    """

    def __init__(
        self,
        kind: str,
        pattern: str | re.Pattern[str],
        *,
        validate: Callable[[str], bool] | None = None,
        trim_words: bool = False,
        requires: str | re.Pattern[str] | None = None,
    ) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(
                f"RegexDetector: kind must be a non-empty string, got {describe(kind)}"
            )
        try:
            self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise ValueError(f"RegexDetector {kind!r}: invalid pattern: {exc}") from None
        self._kind = kind
        self.validate = validate
        self.trim_words = trim_words
        self.requires = requires

    @property
    def kind(self) -> str:
        """The kind of data found."""
        return self._kind

    def find(self, text: str) -> Iterable[PIIMatch]:
        """Every validated match of the pattern.

        With ``trim_words``, a match the validation rejects may be several matches written
        one after the other ("call 555 123 4567 555 123 4567"): if its space-separated words
        split into pieces that each pass the validation, the first piece is reported and the
        search goes on after it. Otherwise nothing of it is reported.
        """
        requires = self.requires
        if requires is not None and (
            requires not in text if isinstance(requires, str) else requires.search(text) is None
        ):
            return
        validate = self.validate
        search = self.pattern.search
        position = 0
        while (match := search(text, position)) is not None:
            start, end = match.span()
            found = match.group(0)
            if validate is not None and not validate(found):
                n = _first_piece(found.split(" "), validate) if self.trim_words else None
                found = " ".join(found.split(" ")[:n]) if n else ""
                if not found:
                    position = max(end, start + 1)
                    continue
                end = start + len(found)
            yield PIIMatch(self._kind, start, end, found)
            position = max(end, start + 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._kind!r})"


_EMAIL = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])"
    r"[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?![\w-])",
    re.ASCII,
)


class EmailDetector(RegexDetector):
    """E-mail addresses (``local@domain.tld``, the RFC 5322 dot-atom form)."""

    def __init__(self) -> None:
        super().__init__("email", _EMAIL, requires="@")


_DIGIT = re.compile(r"\d")

_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,5}(?![\w])"
)


def _phone_valid(text: str) -> bool:
    digits = sum(char.isdigit() for char in text)
    # Without a country code, 10 digits at least: dates and short numbers are no phone numbers.
    return 8 <= digits <= 15 if text.startswith("+") else 10 <= digits <= 15


class PhoneNumberDetector(RegexDetector):
    """Phone numbers: E.164 (``+44 20 7946 0958``) and national forms of 10 digits or more.

    Separators may be spaces, dots or dashes, the area code may be in parentheses. A number of
    fewer than 10 digits counts only with a ``+`` country code, so dates and order numbers are
    not taken for phone numbers.
    """

    def __init__(self) -> None:
        super().__init__("phone", _PHONE, validate=_phone_valid, trim_words=True, requires=_DIGIT)


# Printed as one run of digits, in groups of four, or in the 4-6-5 grouping of 15-digit cards;
# never after a "+" (that is a phone number's country code). The first digit comes before the
# look-behind, so the scan skips to digits quickly.
_CARD = re.compile(
    r"\d(?<![\d+-]\d)"
    r"(?:\d{12,18}|\d{3}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?|\d{3}[ -]\d{6}[ -]\d{4,5})(?!\d)"
)


def _card_valid(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


class CardNumberDetector(RegexDetector):
    """Payment card numbers: 13 to 19 digits passing the Luhn check.

    Written as one run of digits, in groups of four, or grouped 4-6-5 (spaces or dashes).
    """

    def __init__(self) -> None:
        super().__init__("card", _CARD, validate=_card_valid, requires=_DIGIT)


_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![A-Za-z0-9])")


class IbanDetector:
    """IBANs, compact or in groups of four, passing the ISO 13616 mod-97 check."""

    kind = "iban"

    def find(self, text: str) -> Iterable[PIIMatch]:
        """Every valid IBAN; a trailing word in capitals after the number is not taken in."""
        if _DIGIT.search(text) is None:
            return
        for match in _IBAN.finditer(text):
            groups = match.group(0).split(" ")
            # The expression may run on into a following group of capitals: drop groups
            # from the end until the checksum holds.
            while groups:
                candidate = " ".join(groups)
                if mod97_valid(candidate.replace(" ", "")):
                    start = match.start()
                    yield PIIMatch("iban", start, start + len(candidate), candidate)
                    break
                groups.pop()

    def __repr__(self) -> str:
        return "IbanDetector()"


_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _ipv4_valid(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6_valid(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class IPAddressDetector:
    """IPv4 and IPv6 addresses, each validated by :mod:`ipaddress`."""

    kind = "ip"

    def __init__(self) -> None:
        self._v4 = RegexDetector("ip", _IPV4, validate=_ipv4_valid, requires=_DIGIT)
        self._v6 = RegexDetector("ip", _IPV6, validate=_ipv6_valid, requires=":")

    def find(self, text: str) -> Iterable[PIIMatch]:
        """Every valid IPv4 and IPv6 address."""
        yield from self._v4.find(text)
        yield from self._v6.find(text)

    def __repr__(self) -> str:
        return "IPAddressDetector()"


_MAX_PASSES = 8


def default_detectors() -> tuple[Detector, ...]:
    """The built-in detectors, most specific first (the order that breaks ties of overlaps)."""
    return (
        EmailDetector(),
        IbanDetector(),
        CardNumberDetector(),
        IPAddressDetector(),
        PhoneNumberDetector(),
    )


class PIIDetector:
    """Finds and redacts personal data with a list of detectors.

    Where matches overlap, the longest wins, and of two as long the earlier detector's; the
    built-in order puts the validated kinds (IBANs, cards, addresses) before phone numbers.

    Args:
        detectors: The detectors; the built-in ones (e-mail, IBAN, card, IP, phone) by default.
        replacement: The placeholder of a redacted match; ``{kind}`` becomes the upper-case
            kind (``[EMAIL]``). Redacting redacted text changes nothing, as long as a
            placeholder is nothing a detector finds.

    Raises:
        TypeError: A detector lacks ``kind`` or ``find``, or ``replacement`` is no string.
    """

    def __init__(
        self, detectors: Sequence[Detector] | None = None, *, replacement: str = "[{kind}]"
    ) -> None:
        chosen = default_detectors() if detectors is None else tuple(detectors)
        for detector in chosen:
            if not isinstance(detector, Detector):
                raise TypeError(
                    f"PIIDetector: {describe(detector)} is no detector; give objects with a "
                    "'kind' and a 'find(text)' method (RegexDetector makes one from a pattern)"
                )
        if not isinstance(replacement, str):
            raise TypeError(
                f"PIIDetector: replacement must be a string, got {describe(replacement)}"
            )
        self.detectors: tuple[Detector, ...] = chosen
        self.replacement = replacement

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of data the detectors find."""
        return tuple(dict.fromkeys(d.kind for d in self.detectors))

    def find(self, text: str) -> list[PIIMatch]:
        """The matches in ``text``, without overlaps, in text order."""
        candidates = [
            (match.start - match.end, rank, match.start, match)
            for rank, detector in enumerate(self.detectors)
            for match in detector.find(text)
            if match.end > match.start
        ]
        if not candidates:
            return []
        # Longest first, then by detector order: "+1 10.10.10.10" is a phone number, not an
        # address with a prefix; "192.168.100.200" is an address, not a phone number.
        candidates.sort(key=lambda c: c[:3])
        taken: list[PIIMatch] = []
        for *_, match in candidates:
            if not any(match.start < t.end and t.start < match.end for t in taken):
                taken.append(match)
        taken.sort(key=lambda m: m.start)
        return taken

    def placeholder(self, kind: str) -> str:
        """What a match of ``kind`` is replaced with."""
        return self.replacement.replace("{kind}", kind.upper())

    def redact(self, text: str) -> str:
        """``text`` with every match replaced by its placeholder; redacting it again changes nothing."""
        return self.scan(text)[0]

    def scan(self, text: str) -> tuple[str, list[PIIMatch]]:
        """Redact ``text``: the redacted text and every match replaced.

        Where matches overlapped, the one left out may leave a match of its own beside the
        winner's placeholder; the text is scanned again until nothing is found (a few passes
        at most), so the result holds no match and redacting it again changes nothing. Match
        positions are those of the pass that found them.
        """
        found: list[PIIMatch] = []
        for _ in range(_MAX_PASSES):
            matches = self.find(text)
            if not matches:
                break
            found.extend(matches)
            text = self.redact_matches(text, matches)
        return text, found

    def redact_matches(self, text: str, matches: Sequence[PIIMatch]) -> str:
        """``text`` with the given (non-overlapping, ordered) matches replaced."""
        if not matches:
            return text
        parts: list[str] = []
        position = 0
        for match in matches:
            parts.append(text[position : match.start])
            parts.append(self.placeholder(match.kind))
            position = match.end
        parts.append(text[position:])
        return "".join(parts)

    def redact_value(self, key: str, value: Any) -> Any:
        """Redact every string in ``value`` (nested mappings and sequences too).

        The signature of the telemetry redaction hook: ``Telemetry(redact=detector.redact_value)``
        redacts payloads recorded on spans (``record_output_keys``, tool payloads) exactly as
        a guard would. Other values are returned as they are.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {k: self.redact_value(key, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(key, v) for v in value]
        return value

    def __repr__(self) -> str:
        return f"PIIDetector(kinds={list(self.kinds)!r})"


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class Finding:
    """What a check found: a kind (``email``, ``blocked_word``, ``too_long``, ...) and how often.

    Attributes:
        kind: What was found.
        count: How many times.
    """

    kind: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check decided about a text.

    Attributes:
        check: The check's name.
        verdict: ``pass``, ``redact`` (``text`` is the redacted text) or ``fail``.
        text: The text to pass on (redacted for ``redact``).
        findings: What was found (never the text itself).
        reason: Why the check failed, for the error message (no user data).
    """

    check: str
    verdict: Verdict
    text: str = field(repr=False)
    findings: tuple[Finding, ...] = ()
    reason: str | None = None


@runtime_checkable
class GuardCheck(Protocol):
    """**Protocol:** one check of a :class:`GuardStage`."""

    @property
    def name(self) -> str:
        """A short, stable name (the ``check`` metric label)."""
        ...

    def check(self, text: str, ctx: StageContext) -> CheckResult:
        """Decide about ``text``; ``ctx`` is the guard stage's context (identity, ...)."""
        ...


def _counted(kinds: Iterable[str]) -> tuple[Finding, ...]:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return tuple(Finding(kind, count) for kind, count in counts.items())


class PIICheck:
    """Personal data in the text: redact it (the default) or fail.

    Args:
        detector: The detector; a :class:`PIIDetector` with the built-in detectors by default.
        action: ``"redact"`` or ``"fail"``.
        name: The check's name.
    """

    def __init__(
        self,
        detector: PIIDetector | None = None,
        *,
        action: Literal["redact", "fail"] = "redact",
        name: str = "pii",
    ) -> None:
        if action not in ("redact", "fail"):
            raise ValueError(f"PIICheck: action must be 'redact' or 'fail', got {describe(action)}")
        self.detector = detector if detector is not None else PIIDetector()
        self.action: Literal["redact", "fail"] = action
        self.name = name

    def check(self, text: str, ctx: StageContext) -> CheckResult:
        """Find personal data; redact it or fail."""
        redacted, matches = self.detector.scan(text)
        if not matches:
            return CheckResult(self.name, "pass", text)
        findings = _counted(m.kind for m in matches)
        if self.action == "fail":
            kinds = ", ".join(f.kind for f in findings)
            return CheckResult(self.name, "fail", text, findings, f"personal data found ({kinds})")
        return CheckResult(self.name, "redact", redacted, findings)


class ContentFilter:
    """Blocked words (whole words) and regular expressions; any hit fails the text.

    Args:
        blocked_words: Words that must not occur.
        patterns: Regular expressions that must not match.
        case_sensitive: Whether words and patterns match case-sensitively.
        name: The check's name.

    Raises:
        ValueError: A pattern is not a valid regular expression, or nothing is blocked.
    """

    def __init__(
        self,
        blocked_words: Iterable[str] = (),
        *,
        patterns: Iterable[str] = (),
        case_sensitive: bool = False,
        name: str = "content",
    ) -> None:
        flags = 0 if case_sensitive else re.IGNORECASE
        words = [w for w in blocked_words if w]
        self._words = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", flags)
            if words
            else None
        )
        self._patterns: list[re.Pattern[str]] = []
        for pattern in patterns:
            try:
                self._patterns.append(re.compile(pattern, flags))
            except re.error as exc:
                raise ValueError(f"ContentFilter: invalid pattern {pattern!r}: {exc}") from None
        if self._words is None and not self._patterns:
            raise ValueError("ContentFilter: give blocked_words or patterns (it blocks nothing)")
        self.name = name

    def check(self, text: str, ctx: StageContext) -> CheckResult:
        """Fail on a blocked word or a matching pattern."""
        kinds: list[str] = []
        if self._words is not None:
            kinds.extend("blocked_word" for _ in self._words.finditer(text))
        kinds.extend("blocked_pattern" for p in self._patterns for _ in p.finditer(text))
        if not kinds:
            return CheckResult(self.name, "pass", text)
        findings = _counted(kinds)
        summary = ", ".join(f"{f.count} {f.kind}" for f in findings)
        return CheckResult(self.name, "fail", text, findings, f"blocked content ({summary})")


class InputLengthPolicy:
    """Texts longer than ``max_chars`` characters fail.

    Args:
        max_chars: The most characters allowed.
        name: The check's name.
    """

    def __init__(self, max_chars: int, *, name: str = "input_length") -> None:
        self.max_chars = check_count("InputLengthPolicy: max_chars", max_chars)
        self.name = name

    def check(self, text: str, ctx: StageContext) -> CheckResult:
        """Fail a text that is too long."""
        if len(text) <= self.max_chars:
            return CheckResult(self.name, "pass", text)
        return CheckResult(
            self.name,
            "fail",
            text,
            (Finding("too_long"),),
            f"input of {len(text)} characters exceeds the limit of {self.max_chars}",
        )


Identity = Literal["user_id", "session_id", "org_id", "request_id"]


class RateLimitPolicy:
    """At most ``max_requests`` texts per identity in any ``per_seconds`` window.

    Requests are counted per value of a :class:`~stageflow_otel.core.RunIdentity` field (the
    user by default); a run without that id is counted under ``""``. Only identities seen in
    the last window are kept, at most ``max_identities`` (the least recently seen go first).
    Counts live in this object, so one process; share the object between pipelines to share
    the limit.

    Args:
        max_requests: Requests allowed per window.
        per_seconds: The window, in seconds.
        identity: The identity field to count by.
        max_identities: Identities remembered at most.
        clock: Monotonic clock in seconds.
        name: The check's name.
    """

    def __init__(
        self,
        max_requests: int,
        per_seconds: float,
        *,
        identity: Identity = "user_id",
        max_identities: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        name: str = "rate_limit",
    ) -> None:
        self.max_requests = check_count("RateLimitPolicy: max_requests", max_requests)
        self.per_seconds = check_seconds("RateLimitPolicy: per_seconds", per_seconds)
        if identity not in ("user_id", "session_id", "org_id", "request_id"):
            raise ValueError(
                "RateLimitPolicy: identity must be 'user_id', 'session_id', 'org_id' or "
                f"'request_id', got {describe(identity)}"
            )
        self.identity: Identity = identity
        self.max_identities = check_count("RateLimitPolicy: max_identities", max_identities)
        self.clock = clock
        self.name = name
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, text: str, ctx: StageContext) -> CheckResult:
        """Count this request; fail it if its identity is over the limit."""
        who = getattr(ctx.identity, self.identity) or ""
        now = self.clock()
        with self._lock:
            times = self._seen.pop(who, None) or deque()
            self._seen[who] = times  # most recently seen last
            while times and times[0] <= now - self.per_seconds:
                times.popleft()
            allowed = len(times) < self.max_requests
            if allowed:
                times.append(now)
            while len(self._seen) > self.max_identities:
                self._seen.popitem(last=False)
        if allowed:
            return CheckResult(self.name, "pass", text)
        return CheckResult(
            self.name,
            "fail",
            text,
            (Finding("rate_limited"),),
            f"more than {self.max_requests} requests in {self.per_seconds:g} s for this "
            f"{self.identity.removesuffix('_id')}",
        )


# --------------------------------------------------------------------------- the stage


class GuardrailViolation(StageflowError):
    """A guard stage failed its input.

    Attributes:
        guard: The guard stage.
        results: Every check's result.
    """

    code = "GUARDRAIL_VIOLATION"

    def __init__(self, guard: str, results: Sequence[CheckResult]) -> None:
        self.guard = guard
        self.results = tuple(results)
        reasons = "; ".join(
            f"{r.check}: {r.reason or 'failed'}" for r in self.results if r.verdict == "fail"
        )
        super().__init__(f"guard {guard!r} rejected its input: {reasons}")


class GuardStage:
    """A stage that runs checks over a text, then fails, redacts or passes it.

    The text is read from the run input (``ctx.data[key]``) or, with ``from_stage``, from that
    dependency's output. The checks run in order, each on the text the previous one passed
    on. Output data: ``text`` (redacted where a check redacted), ``verdict`` (``pass`` or
    ``redact``) and ``findings`` (kind to count). If any check fails, the stage fails with a
    :class:`GuardrailViolation` naming the failed checks (never the text).

    Args:
        checks: The checks, in order.
        key: The key of the text.
        from_stage: The dependency whose output holds the text; the run input if ``None``.
        run_all: Run every check even after one failed (all verdicts are reported).

    Raises:
        ValueError: No checks, or two with the same name.
        TypeError: A check lacks ``name`` or ``check``.
    """

    kind = StageKind.GUARD

    def __init__(
        self,
        checks: Sequence[GuardCheck],
        *,
        key: str = "text",
        from_stage: str | None = None,
        run_all: bool = False,
    ) -> None:
        checks = tuple(checks)
        if not checks:
            raise ValueError("GuardStage: give at least one check")
        for check in checks:
            if not isinstance(check, GuardCheck):
                raise TypeError(
                    f"GuardStage: {describe(check)} is no check; give objects with a 'name' and "
                    "a 'check(text, ctx)' method (PIICheck, ContentFilter, InputLengthPolicy, ...)"
                )
        names = [c.name for c in checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"GuardStage: check names must be unique, repeated: {duplicates}")
        self.checks = checks
        self.key = key
        self.from_stage = from_stage
        self.run_all = run_all

    def _text(self, ctx: StageContext) -> str:
        if self.from_stage is not None:
            value = ctx.inputs.require_from(self.from_stage, self.key)
        elif self.key in ctx.data:
            value = ctx.data[self.key]
        else:
            raise KeyError(
                f"guard stage {ctx.stage_name!r} reads {self.key!r} from the run input, which "
                "lacks it; pass it to run(...) or set from_stage= to read a dependency's output"
            )
        if not isinstance(value, str):
            raise TypeError(
                f"guard stage {ctx.stage_name!r} checks text, but {self.key!r} is {describe(value)}"
            )
        return value

    async def execute(self, ctx: StageContext) -> StageOutput:
        """Run the checks; report each verdict; fail, redact or pass."""
        text = self._text(ctx)
        results: list[CheckResult] = []
        for check in self.checks:
            result = check.check(text, ctx)
            results.append(result)
            ctx.try_emit_event(
                VERDICT_EVENT,
                {
                    "check": result.check,
                    "verdict": result.verdict,
                    "findings": sum(f.count for f in result.findings),
                    "kinds": [f.kind for f in result.findings],
                },
            )
            if result.verdict == "fail":
                if not self.run_all:
                    break
            else:
                text = result.text
        verdict = max((r.verdict for r in results), key=_SEVERITY.__getitem__)
        if verdict == "fail":
            return StageOutput.fail(GuardrailViolation(ctx.stage_name, results))
        findings: dict[str, int] = {}
        for result in results:
            for finding in result.findings:
                findings[finding.kind] = findings.get(finding.kind, 0) + finding.count
        return StageOutput.ok(text=text, verdict=verdict, findings=findings)
