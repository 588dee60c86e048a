"""Argument checks shared by the public entry points.

Each check raises ``TypeError`` (wrong type) or ``ValueError`` (right type, wrong value) with a
message that names the parameter, shows the value given and says what is accepted, e.g.
``timeout must be a positive number of seconds or None, got '5' (str)``. Callers put who is
asking in front (``stage 'a': ...``, ``TimeoutInterceptor: ...``); the pipeline builder turns
these errors into :class:`~stageflow_otel.core.errors.PipelineValidationError`.

``bool`` is never a number here: ``timeout=True`` is a mistake, not one second.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal, overload

from .seams import RunHook

__all__ = (
    "check_bool",
    "check_callable",
    "check_count",
    "check_hooks",
    "check_name",
    "check_run_arguments",
    "check_seconds",
    "check_sink",
    "describe",
    "interceptor_problem",
    "is_async_callable",
    "is_number",
    "sequence_of",
    "sink_problem",
)

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 4


def describe(value: object) -> str:
    """A value as an error message shows it: its (shortened) repr and its type.

    ``'5' (str)``, ``True (bool)``, ``None``.
    """
    if value is None:
        return "None"
    try:
        text = _REPR.repr(value)
    except Exception:  # a broken __repr__ must not hide the real problem
        text = "<unprintable>"
    return f"{text} ({type(value).__qualname__})"


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (``int`` or ``float``, never ``bool``)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_async_callable(obj: object) -> bool:
    """Whether calling ``obj`` returns an awaitable coroutine (``async def``, partials of it)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)  # noqa: B004  (the type's __call__, not callable())
    return call is not None and inspect.iscoroutinefunction(call)


@overload
def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = ...,
    allow_none: Literal[False] = ...,
    allow_inf: bool = ...,
) -> float: ...
@overload
def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = ...,
    allow_none: bool,
    allow_inf: bool = ...,
) -> float | None: ...
def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    allow_none: bool = False,
    allow_inf: bool = False,
) -> float | None:
    """A duration in seconds, as a float.

    Raises:
        TypeError: ``value`` is not a number (or ``None`` where allowed).
        ValueError: ``value`` is negative, zero (unless allowed), NaN or infinite (unless
            allowed).
    """
    if value is None and allow_none:
        return None
    bound = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
    accepted = bound + (" or None" if allow_none else "")
    if not is_number(value):
        raise TypeError(f"{name} must be {accepted}, got {describe(value)}")
    seconds = float(value)  # type: ignore[arg-type]
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {accepted}, got {describe(value)}")
    if math.isinf(seconds) and not allow_inf:
        hint = " (None means no limit)" if allow_none else ""
        raise ValueError(f"{name} must be a finite number of seconds{hint}, got {describe(value)}")
    return seconds


@overload
def check_count(
    name: str, value: object, *, minimum: int = ..., allow_none: Literal[False] = ...
) -> int: ...
@overload
def check_count(
    name: str, value: object, *, minimum: int = ..., allow_none: bool
) -> int | None: ...
def check_count(
    name: str, value: object, *, minimum: int = 1, allow_none: bool = False
) -> int | None:
    """A whole number of at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an ``int`` (``bool`` and ``float`` included).
        ValueError: ``value`` is smaller than ``minimum``.
    """
    if value is None and allow_none:
        return None
    accepted = f"a whole number >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {accepted}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {accepted}, got {describe(value)}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``True`` or ``False``, nothing merely truthy.

    Raises:
        TypeError: ``value`` is not a ``bool``.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return value


@overload
def check_name(name: str, value: object, *, allow_none: Literal[False] = ...) -> str: ...
@overload
def check_name(name: str, value: object, *, allow_none: bool) -> str | None: ...
def check_name(name: str, value: object, *, allow_none: bool = False) -> str | None:
    """A non-empty string.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is empty.
    """
    if value is None and allow_none:
        return None
    accepted = "a non-empty string" + (" or None" if allow_none else "")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {accepted}, got {describe(value)}")
    if not value:
        raise ValueError(f"{name} must be {accepted}, got ''")
    return value


def check_callable(
    name: str, value: object, *, allow_none: bool = False, accepted: str = ""
) -> Any:
    """Something callable.

    Raises:
        TypeError: ``value`` is not callable.
    """
    if value is None and allow_none:
        return None
    if not callable(value):
        what = accepted or "a callable" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    return value


@overload
def sequence_of(
    name: str,
    value: object,
    *,
    item: str,
    allow_none: Literal[False] = ...,
    where: str = ...,
) -> tuple[Any, ...]: ...
@overload
def sequence_of(
    name: str, value: object, *, item: str, allow_none: bool, where: str = ...
) -> tuple[Any, ...] | None: ...
def sequence_of(
    name: str, value: object, *, item: str, allow_none: bool = False, where: str = ""
) -> tuple[Any, ...] | None:
    """The items of a list, tuple or other iterable (never a string, bytes or a mapping).

    Raises:
        TypeError: ``value`` is not such a collection; a single ``item`` gets a hint to wrap it
            in a list.
    """
    if value is None and allow_none:
        return None
    accepted = f"a list of {item}" + (" or None" if allow_none else "")
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"{where}{name} must be {accepted}, got {describe(value)}")
    return tuple(value)


def _attribute(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises counts as a missing attribute
        return None


def interceptor_problem(value: object) -> str | None:
    """What keeps ``value`` from being an interceptor, or ``None`` if it is one."""
    if isinstance(value, type):
        return (
            f"is the class {value.__qualname__}, not an instance; pass one, e.g. "
            f"{value.__qualname__}()"
        )
    name = _attribute(value, "name")
    intercept = _attribute(value, "intercept")
    if not isinstance(name, str) or not name or not callable(intercept):
        return (
            "must be an interceptor (an object with a non-empty `name` string and an "
            f"`async def intercept(call, call_next)` method), got {describe(value)}"
        )
    if not is_async_callable(intercept):
        return (
            f"{type(value).__qualname__}.intercept must be declared `async def`, got "
            f"{describe(value)}"
        )
    return None


def sink_problem(value: object) -> str | None:
    """What keeps ``value`` from being an event sink, or ``None`` if it is one."""
    if isinstance(value, type):
        return (
            f"is the class {value.__qualname__}, not an instance; pass one, e.g. "
            f"{value.__qualname__}()"
        )
    if callable(_attribute(value, "try_emit")) and callable(_attribute(value, "emit")):
        return None
    hint = ""
    if callable(_attribute(value, "export")):
        hint = "; a batch exporter goes behind a queue: BackpressureAwareEventSink(exporter)"
    return (
        "must be an EventSink (an object with keyword-only `emit(*, type, data)` and "
        f"`try_emit(*, type, data)` methods) or None, got {describe(value)}{hint}"
    )


def check_sink(name: str, value: object, *, where: str = "") -> Any:
    """An event sink or ``None``.

    Raises:
        TypeError: ``value`` is neither.
    """
    if value is None:
        return None
    problem = sink_problem(value)
    if problem is not None:
        raise TypeError(f"{where}{name} {problem}")
    return value


def check_hooks(name: str, value: object, *, where: str = "") -> tuple[RunHook, ...] | None:
    """Run hooks: a list of :class:`RunHook` instances, or ``None``.

    Raises:
        TypeError: ``value`` is not such a list, or one of its items is not a hook.
    """
    if value is None:
        return None
    accepted = "a list of RunHook instances, or None for the installed extensions"
    if isinstance(value, RunHook):
        raise TypeError(
            f"{where}{name} must be {accepted}, got {describe(value)}; write {name}=[hook]"
        )
    if not isinstance(value, str | bytes | Mapping) and isinstance(
        _attribute(value, "hooks"), tuple | list
    ):
        raise TypeError(
            f"{where}{name} must be {accepted}, got {describe(value)}; pass its hooks: "
            f"{name}=<{type(value).__qualname__}>.hooks"
        )
    hooks = sequence_of(
        name, value, item="RunHook instances, or None for the installed extensions", where=where
    )
    for index, hook in enumerate(hooks):
        if isinstance(hook, type):
            raise TypeError(
                f"{where}{name}[{index}] is the class {hook.__qualname__}, not an instance; pass one, "
                f"e.g. {hook.__qualname__}()"
            )
        if not isinstance(hook, RunHook):
            raise TypeError(
                f"{where}{name}[{index}] must be a RunHook (an instance of a subclass of "
                f"stageflow_otel.core.RunHook), got {describe(hook)}"
            )
    return hooks


def check_run_arguments(
    pipeline: str,
    *,
    data: object,
    identity: object,
    cancel_token: object,
    event_sink: object,
    hooks: object,
    traceparent: object,
) -> None:
    """Check the arguments of one run (``StageGraph.run``, ``Pipeline.run``).

    Raises:
        TypeError: Naming the pipeline, the parameter and the value given.
    """
    from .cancellation import CancellationToken
    from .context import RunIdentity

    where = f"pipeline {pipeline!r}: "
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(
            f"{where}data must be a mapping of run input (a dict) or None, got {describe(data)}"
        )
    if identity is not None and not isinstance(identity, RunIdentity):
        raise TypeError(f"{where}identity must be a RunIdentity or None, got {describe(identity)}")
    if cancel_token is not None and not isinstance(cancel_token, CancellationToken):
        raise TypeError(
            f"{where}cancel_token must be a stageflow_otel CancellationToken or None, got "
            f"{describe(cancel_token)}"
        )
    if traceparent is not None and not isinstance(traceparent, str):
        raise TypeError(
            f"{where}traceparent must be a W3C traceparent string or None, got "
            f"{describe(traceparent)}"
        )
    check_sink("event_sink", event_sink, where=where)
    check_hooks("hooks", hooks, where=where)


def check_store(param: str, value: object, *, where: str = "") -> None:
    """``value`` is a run store (has ``run_hook(graph)``) or ``None``.

    Raises:
        TypeError: Naming the parameter and the value given.
    """
    if value is None or callable(getattr(value, "run_hook", None)):
        return
    raise TypeError(
        f"{where}{param} must be a run store (stageflow_otel.runs: SQLiteRunStore, "
        f"PostgresRunStore or open_store(url)) or None, got {describe(value)}"
    )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean variable; an unrecognised value raises ``ValueError`` naming it."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")
