"""Deltas of random nested JSON: round trips, composition, sizes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stageflow_otel.compression import (
    NO_CHANGE,
    Delta,
    DeltaError,
    apply,
    compose,
    encode,
    size_of,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=4), children, max_size=6),
    ),
    max_leaves=30,
)


def edited(value: Any, draw: st.DrawFn) -> Any:
    """``value`` with a few random edits, so deltas between related values get exercised."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        result = dict(value)
        key = draw(st.sampled_from(sorted(result)))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            del result[key]
        elif choice == 1:
            result[key] = edited(result[key], draw)
        else:
            result[draw(st.text(max_size=4))] = draw(json_values)
        return result
    if isinstance(value, list) and value and draw(st.booleans()):
        items = list(value)
        index = draw(st.integers(0, len(items) - 1))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            del items[index]
        elif choice == 1:
            items[index] = edited(items[index], draw)
        else:
            items.insert(index, draw(json_values))
        return items
    return draw(st.one_of(st.just(value), json_values))


@st.composite
def chains(draw: st.DrawFn, length: int = 3) -> list[Any]:
    """Snapshots, each an edit of the one before (or unrelated, sometimes)."""
    values = [draw(json_values)]
    for _ in range(length - 1):
        values.append(edited(values[-1], draw))
    return values


def strictly(value: Any) -> str:
    """A comparison key that tells ``1``, ``1.0`` and ``True`` apart (and ignores key order)."""
    return json.dumps(value, sort_keys=True)


@settings(max_examples=300)
@given(chains(2))
def test_apply_of_encode_gives_the_new_value(values: list[Any]) -> None:
    old, new = values
    before = copy.deepcopy(old)
    delta = encode(old, new)
    assert strictly(apply(delta, old)) == strictly(new)
    assert strictly(old) == strictly(before)  # old is left alone


@settings(max_examples=200)
@given(json_values, json_values)
def test_apply_of_encode_on_unrelated_values(old: Any, new: Any) -> None:
    assert strictly(apply(encode(old, new), old)) == strictly(new)


@settings(max_examples=200)
@given(chains(2))
def test_ops_survive_a_json_round_trip(values: list[Any]) -> None:
    old, new = values
    delta = encode(old, new)
    ops = json.loads(json.dumps(delta.ops))
    assert strictly(apply(ops, old)) == strictly(new)
    assert delta.size == size_of(delta.ops)
    assert delta.full_size == size_of(new)
    assert delta.saved == delta.full_size - delta.size


@settings(max_examples=300)
@given(chains(3))
def test_compose_does_both(values: list[Any]) -> None:
    a, b, c = values
    both = compose(encode(a, b), encode(b, c))
    assert strictly(apply(both, a)) == strictly(c)
    assert both.full_size == size_of(c)


@settings(max_examples=200)
@given(chains(4))
def test_compose_is_associative(values: list[Any]) -> None:
    a, b, c, d = values
    ab, bc, cd = encode(a, b), encode(b, c), encode(c, d)
    left = compose(compose(ab, bc), cd)
    right = compose(ab, compose(bc, cd))
    assert strictly(apply(left, a)) == strictly(apply(right, a)) == strictly(d)


@settings(max_examples=200)
@given(chains(2))
def test_no_change_is_the_identity_of_compose(values: list[Any]) -> None:
    a, b = values
    delta = encode(a, b)
    assert compose(NO_CHANGE, delta).ops == delta.ops
    assert compose(delta, NO_CHANGE).ops == delta.ops


@given(json_values)
def test_a_value_against_itself_changes_nothing(value: Any) -> None:
    delta = encode(value, copy.deepcopy(value))
    assert delta.changes_nothing
    assert apply(delta, value) is value


@settings(max_examples=200)
@given(chains(2))
def test_a_delta_is_never_much_bigger_than_the_new_value(values: list[Any]) -> None:
    old, new = values
    # A patch bigger than a replacement is written as the replacement: ["=", new].
    assert encode(old, new).size <= size_of(new) + len('["=",]')


@given(st.dictionaries(st.text(max_size=4), json_values, min_size=3, max_size=6))
def test_one_changed_key_of_a_big_dict_is_a_small_delta(value: dict[str, Any]) -> None:
    key = min(value)
    payload = {"_blob_": "x" * 500, **value}
    changed = {**payload, key: "changed"}
    assume(value[key] != "changed")
    delta = encode(payload, changed)
    assert delta.size < 100 < delta.full_size
    assert delta.ratio < 0.2


def test_types_are_kept_apart() -> None:
    delta = encode({"a": 1}, {"a": True})
    assert apply(delta, {"a": 1}) == {"a": True}
    assert type(apply(delta, {"a": 1})["a"]) is bool


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {1, 2}}, "old['a'] is a set"),
        ({1: "x"}, "JSON keys are strings"),
        ([float("nan")], "no NaN"),
    ],
)
def test_not_json_compatible_is_named(value: Any, message: str) -> None:
    with pytest.raises(DeltaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode(value, {})


def test_a_delta_applied_to_another_value_says_so() -> None:
    items = list(range(50))
    delta = encode({"a": items}, {"a": [*items, 50]})
    assert delta.ops[0] == "{"  # a patch, not a replacement
    with pytest.raises(DeltaError, match=r"does not fit the value at \$\['a'\]"):
        apply(delta, {"a": "text"})
    with pytest.raises(DeltaError, match="malformed delta"):
        apply(["?"], {})


def test_delta_is_frozen() -> None:
    assert isinstance(NO_CHANGE, Delta)
    with pytest.raises(AttributeError):
        NO_CHANGE.size = 3  # type: ignore[misc]
