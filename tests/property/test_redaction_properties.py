"""Redaction, property-based: generated personal data is found and redacted, look-alikes not."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from stageflow_otel.helpers import CardNumberDetector, PIIDetector, luhn_valid

DETECTOR = PIIDetector()
# Surrounding text that holds no personal data of its own: words, not numbers.
FILLER = st.text(alphabet=string.ascii_letters + " ,;!?", max_size=30).map(
    lambda s: f" {s.strip()} " if s.strip() else " "
)


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass the Luhn check."""
    for digit in "0123456789":
        if luhn_valid(payload + digit):
            return digit
    raise AssertionError("unreachable: one digit always completes the checksum")


@st.composite
def cards(draw: st.DrawFn, *, valid: bool) -> str:
    """A card number of 13 to 19 digits, Luhn-valid or not, grouped as printed cards are."""
    length = draw(st.integers(13, 19))
    payload = draw(st.text(alphabet=string.digits, min_size=length - 1, max_size=length - 1))
    check = luhn_check_digit(payload)
    if not valid:
        check = draw(st.sampled_from([d for d in string.digits if d != check]))
    digits = payload + check
    separator = draw(st.sampled_from(["", " ", "-"]))
    return separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))


@st.composite
def phones(draw: st.DrawFn) -> str:
    """Phone numbers in the E.164 and the North American national forms."""
    if draw(st.booleans()):
        # E.164: a country code and at most 15 digits in all; 8 at least here.
        country = str(draw(st.integers(1, 999)))
        size = draw(st.integers(8 - len(country), 15 - len(country)))
        digits = draw(st.text(string.digits, min_size=size, max_size=size))
        separator = draw(st.sampled_from([" ", "-", "."]))
        groups = [digits[i : i + 3] for i in range(0, size, 3)]
        if len(groups[-1]) == 1:  # groups of two to four digits, as numbers are written
            groups[-2:] = [groups[-2] + groups[-1]]
        return f"+{country} " + separator.join(groups)
    area, exchange, line = (draw(st.text(string.digits, min_size=n, max_size=n)) for n in (3, 3, 4))
    form = draw(st.sampled_from(["({a}) {e}-{l}", "{a}-{e}-{l}", "{a}.{e}.{l}", "{a}{e}{l}"]))
    return form.format(a=area, e=exchange, l=line)


@given(st.emails(), FILLER, FILLER)
def test_a_generated_email_is_found_and_redacted(email: str, before: str, after: str) -> None:
    text = before + email + after
    assert [(m.kind, m.text) for m in DETECTOR.find(text)] == [("email", email)]
    assert DETECTOR.redact(text) == before + "[EMAIL]" + after


@given(phones(), FILLER, FILLER)
def test_a_generated_phone_number_is_found_and_redacted(
    phone: str, before: str, after: str
) -> None:
    text = before + phone + after
    assert [(m.kind, m.text) for m in DETECTOR.find(text)] == [("phone", phone)]
    assert DETECTOR.redact(text) == before + "[PHONE]" + after


@given(cards(valid=True), FILLER, FILLER)
def test_a_luhn_valid_card_is_found_and_redacted(card: str, before: str, after: str) -> None:
    text = before + card + after
    assert [(m.kind, m.text) for m in DETECTOR.find(text)] == [("card", card)]
    assert DETECTOR.redact(text) == before + "[CARD]" + after


@given(cards(valid=False), FILLER, FILLER)
def test_a_luhn_invalid_number_is_no_card(card: str, before: str, after: str) -> None:
    text = before + card + after
    assert list(CardNumberDetector().find(text)) == []
    assert "card" not in {m.kind for m in DETECTOR.find(text)}
    assert "[CARD]" not in DETECTOR.redact(text)


@given(
    st.lists(
        st.one_of(
            st.emails(), phones(), cards(valid=True), cards(valid=False), st.text(max_size=20)
        ),
        max_size=6,
    ),
)
def test_redaction_is_idempotent(parts: list[str]) -> None:
    once = DETECTOR.redact(" ".join(parts))
    assert DETECTOR.redact(once) == once
    assert DETECTOR.find(once) == []
