"""Delta encoding of JSON-compatible data: what changed from one snapshot to the next.

A run's checkpoints are snapshots that mostly repeat the one before (a stage adds a few keys
to an order the stage before produced); storing each as a :class:`Delta` against the previous
one keeps them small. JSON-compatible means ``dict`` (string keys), ``list``, ``str``,
``int``, ``float`` (finite), ``bool`` and ``None``, nested to any depth.

- :func:`encode` ``(old, new)`` is the delta that turns ``old`` into ``new``;
- :func:`apply` ``(delta, old)`` is ``new`` again: ``apply(encode(a, b), a) == b``;
- :func:`compose` ``(first, second)`` is one delta doing both:
  ``apply(compose(encode(a, b), encode(b, c)), a) == c``.

A delta's :attr:`Delta.ops` is JSON itself, so it can be stored as text; ``Delta.size`` and
``Delta.full_size`` say how many bytes it takes against the new snapshot written in full.

Example::

    from stageflow_otel.compression import apply, encode

    before = {"order": {"id": 7, "items": [1, 2, 3]}, "status": "new"}
    after = {"order": {"id": 7, "items": [1, 2, 3, 4]}, "status": "paid"}
    delta = encode(before, after)
    assert apply(delta, before) == after
    assert delta.size < delta.full_size

The ops, for the curious (and for reading a store by hand): ``[]`` changes nothing;
``["=", value]`` replaces the value; ``["{", {key: op}, [deleted keys]]`` patches a dict (a key
the dict does not have gets ``["=", value]``); ``["[", [[index, op], ...]]`` patches items of a
list whose length stays; ``["+", start, keep_end, [items]]`` keeps ``start`` items at the
front and ``keep_end`` at the back of a list and puts ``items`` between them; ``["*", op, ...]``
applies each op in turn (what :func:`compose` makes when two ops cannot merge).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ("NO_CHANGE", "Delta", "DeltaError", "JSONValue", "apply", "compose", "encode", "size_of")

JSONValue: TypeAlias = Any
"""A JSON-compatible value: dict (string keys), list, str, int, float, bool or None."""

_NOOP: list[Any] = []
_MEASURE_FROM = 8  # entries: below this, a patch and a replacement are compared outright


class DeltaError(ValueError):
    """A value is not JSON-compatible, or a delta does not fit the value it is applied to."""


def size_of(value: JSONValue) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (what a store writes).

    Raises:
        DeltaError: ``value`` is not JSON-compatible.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DeltaError(f"not JSON-compatible: {exc}") from None
    return len(text.encode())


@dataclass(frozen=True, slots=True)
class Delta:
    """The change from one JSON-compatible value to another.

    Attributes:
        ops: The change, as JSON (see the module documentation).
        size: Bytes of ``ops`` as compact JSON.
        full_size: Bytes of the new value written in full, as compact JSON.
    """

    ops: JSONValue
    size: int
    full_size: int

    @property
    def saved(self) -> int:
        """Bytes saved against writing the new value in full (negative if the delta is larger)."""
        return self.full_size - self.size

    @property
    def ratio(self) -> float:
        """``size / full_size`` (0 for no change; below 1 when the delta is smaller)."""
        return self.size / self.full_size if self.full_size else 0.0

    @property
    def changes_nothing(self) -> bool:
        """Whether applying the delta returns the value unchanged."""
        return not self.ops


NO_CHANGE = Delta([], 2, 0)
"""The delta that changes nothing (``encode(a, a)`` for any ``a``; ``full_size`` unknown: 0)."""


def encode(old: JSONValue, new: JSONValue) -> Delta:
    """The delta turning ``old`` into ``new``.

    Equal parts are compared strictly (``1``, ``1.0`` and ``True`` differ), so applying the
    delta gives back ``new`` with its types.

    Raises:
        DeltaError: ``old`` or ``new`` is not JSON-compatible (the message names where).
    """
    _check(old, "old")
    _check(new, "new")
    ops = _diff(old, new)
    return Delta(ops, size_of(ops), size_of(new))


def apply(delta: Delta | JSONValue, old: JSONValue) -> JSONValue:
    """The value ``delta`` turns ``old`` into; ``old`` is not changed.

    The result shares the parts the delta leaves alone with ``old``.

    Args:
        delta: A :class:`Delta`, or its ``ops`` (as read back from JSON).
        old: The value the delta was encoded against.

    Raises:
        DeltaError: The delta is malformed or does not fit ``old``.
    """
    ops = delta.ops if isinstance(delta, Delta) else delta
    return _apply(ops, old, "$")


def compose(first: Delta, second: Delta) -> Delta:
    """One delta doing ``first`` then ``second``.

    ``apply(compose(first, second), a) == apply(second, apply(first, a))`` for every ``a``
    ``first`` fits. Composing with :data:`NO_CHANGE` gives the other delta back.

    Raises:
        DeltaError: A delta is malformed.
    """
    ops = _compose(first.ops, second.ops)
    return Delta(ops, size_of(ops), second.full_size)


# -- encoding -----------------------------------------------------------------------------------


def _check(value: JSONValue, where: str) -> None:
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return
    if kind is float:
        if not math.isfinite(value):
            raise DeltaError(f"{where} is {value!r}: JSON has no NaN or infinity")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise DeltaError(
                    f"{where} has the key {key!r} ({type(key).__name__}): JSON keys are strings"
                )
            _check(item, f"{where}[{key!r}]")
        return
    if kind is list:
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise DeltaError(
        f"{where} is a {kind.__qualname__} ({value!r:.60}): only dict, list, str, int, float, "
        "bool and None are JSON-compatible; convert it first (e.g. json.loads(json.dumps(x)))"
    )


def _same(a: JSONValue, b: JSONValue) -> bool:
    """Strict equality: ``True``, ``1`` and ``1.0`` differ, at any depth."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return len(a) == len(b) and all(k in b and _same(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _diff(old: JSONValue, new: JSONValue) -> JSONValue:
    if _same(old, new):
        return _NOOP
    kind = type(new)
    if kind is dict and type(old) is dict:
        changed: dict[str, Any] = {}
        for key, value in new.items():
            if key in old:
                op = _diff(old[key], value)
                if op:
                    changed[key] = op
            else:
                changed[key] = ["=", value]
        deleted = [key for key in old if key not in new]
        return _cheaper(["{", changed, deleted], new, len(changed) + len(deleted), len(new))
    if kind is list and type(old) is list:
        if len(old) == len(new):
            items = [
                [i, op]
                for i, (a, b) in enumerate(zip(old, new, strict=True))
                if (op := _diff(a, b))
            ]
            return _cheaper(["[", items], new, len(items), len(new))
        start = 0
        limit = min(len(old), len(new))
        while start < limit and _same(old[start], new[start]):
            start += 1
        end = 0
        while end < limit - start and _same(old[-1 - end], new[-1 - end]):
            end += 1
        middle = new[start : len(new) - end]
        removed = len(old) - start - end
        return _cheaper(["+", start, end, middle], new, len(middle) + removed, len(new))
    return ["=", new]


def _cheaper(patch: list[Any], new: JSONValue, touched: int, count: int) -> list[Any]:
    """The patch, or a plain replacement when that is no bigger.

    Sizes are compared for small values, and for others when the patch touches at least half
    of ``new``'s ``count`` entries: a patch that leaves most entries alone is smaller than the value, and measuring
    at every level of a deep value would cost a serialisation per level.
    """
    if count >= _MEASURE_FROM and touched * 2 < count:
        return patch
    replace = ["=", new]
    return replace if size_of(replace) <= size_of(patch) else patch


# -- applying -----------------------------------------------------------------------------------


def _malformed(ops: JSONValue, where: str) -> DeltaError:
    return DeltaError(f"malformed delta at {where}: {json.dumps(ops, default=repr)[:80]}")


def _misfit(ops: JSONValue, old: JSONValue, where: str) -> DeltaError:
    return DeltaError(
        f"the delta does not fit the value at {where}: {ops[0]!r} patches a "
        f"{'dict' if ops[0] == '{' else 'list'}, the value is {type(old).__name__}; "
        "apply a delta to the value it was encoded against"
    )


def _apply(ops: JSONValue, old: JSONValue, where: str) -> JSONValue:
    if not isinstance(ops, list):
        raise _malformed(ops, where)
    if not ops:
        return old
    code = ops[0]
    if code == "=" and len(ops) == 2:
        return ops[1]
    if code == "{" and len(ops) == 3:
        if not isinstance(old, dict):
            raise _misfit(ops, old, where)
        result = dict(old)
        for key in ops[2]:
            result.pop(key, None)
        for key, op in ops[1].items():
            if key in result:
                result[key] = _apply(op, result[key], f"{where}[{key!r}]")
            elif isinstance(op, list) and len(op) == 2 and op[0] == "=":
                result[key] = op[1]
            else:
                raise DeltaError(
                    f"the delta does not fit the value at {where}: it patches the key {key!r}, "
                    "which the value does not have"
                )
        return result
    if code == "[" and len(ops) == 2:
        if not isinstance(old, list):
            raise _misfit(ops, old, where)
        items = list(old)
        for index, op in ops[1]:
            if not 0 <= index < len(items):
                raise DeltaError(
                    f"the delta does not fit the value at {where}: it patches item {index} of "
                    f"a list of {len(items)}"
                )
            items[index] = _apply(op, items[index], f"{where}[{index}]")
        return items
    if code == "+" and len(ops) == 4:
        if not isinstance(old, list):
            raise _misfit(ops, old, where)
        start, end, middle = ops[1], ops[2], ops[3]
        if start + end > len(old):
            raise DeltaError(
                f"the delta does not fit the value at {where}: it keeps {start} + {end} items "
                f"of a list of {len(old)}"
            )
        return [*old[:start], *middle, *old[len(old) - end :]]
    if code == "*":
        value = old
        for step in ops[1:]:
            value = _apply(step, value, where)
        return value
    raise _malformed(ops, where)


# -- composing ----------------------------------------------------------------------------------


def _compose(first: JSONValue, second: JSONValue) -> JSONValue:
    if not isinstance(first, list) or not isinstance(second, list):
        raise _malformed(first if not isinstance(first, list) else second, "$")
    if not second:
        return first
    if not first:
        return second
    if second[0] == "=":
        return second
    if first[0] == "=":
        return ["=", _apply(second, first[1], "$")]
    if first[0] == "{" and second[0] == "{":
        return _compose_dicts(first, second)
    if first[0] == "[" and second[0] == "[":
        merged = dict(first[1])
        for index, op in second[1]:
            merged[index] = _compose(merged[index], op) if index in merged else op
        return ["[", [[i, op] for i, op in sorted(merged.items()) if op]]
    # Splices and mixed list patches do not merge without the value: one after the other.
    steps = [
        *(first[1:] if first[0] == "*" else [first]),
        *(second[1:] if second[0] == "*" else [second]),
    ]
    return ["*", *steps]


def _compose_dicts(first: list[Any], second: list[Any]) -> list[Any]:
    changed: dict[str, Any] = dict(first[1])
    deleted = dict.fromkeys(first[2])
    for key in second[2]:
        changed.pop(key, None)
        deleted[key] = None
    for key, op in second[1].items():
        if key in changed:
            merged = _compose(changed[key], op)
            if merged:
                changed[key] = merged
            else:
                del changed[key]
        else:
            # Deleted by ``first`` (then ``op`` sets it) or untouched by it.
            changed[key] = op
        deleted.pop(key, None)
    return ["{", changed, list(deleted)]
