"""A Griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings name other objects the Sphinx way (:class:`Telemetry`, :meth:`cancel`,
:func:`~stageflow_otel.testing.span_tree`), which Markdown would print as is. This extension,
loaded by mkdocstrings (see ``mkdocs.yml``), rewrites each role into a cross-reference resolved
in the docstring's own scope: a link where the object is on a reference page, plain code where
it is not (a private helper, another library), never a failed build. The source files are not
changed.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<kind>\w+):`(?P<target>~?[\w.]+)`")
_CALLABLE = {"func", "meth"}


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` into optional autorefs once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _rewrite(pkg, seen=set())


def _rewrite(obj: griffe.Object, *, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None and ":" in obj.docstring.value:
        scope = obj
        obj.docstring.value = _ROLE.sub(lambda match: _autoref(match, scope), obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member, seen=seen)  # type: ignore[arg-type]


def _autoref(match: re.Match[str], scope: griffe.Object) -> str:
    target = match["target"]
    short = target.startswith("~")
    target = target.removeprefix("~")
    title = target.rpartition(".")[2] if short else target
    if match["kind"] in _CALLABLE:
        title += "()"
    identifier = _resolve(target, scope)
    return (
        f'<autoref optional identifier="{html.escape(identifier)}">'
        f"<code>{html.escape(title)}</code></autoref>"
    )


def _resolve(target: str, scope: griffe.Object) -> str:
    head, dot, rest = target.partition(".")
    if head == scope.module.package.name:
        return target
    try:
        return scope.resolve(head) + dot + rest
    except griffe.NameResolutionError:
        return target
