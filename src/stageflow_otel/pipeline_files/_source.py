"""Reading a pipeline file into plain data that remembers where each value came from.

YAML is composed into a node tree (PyYAML), so every key and value keeps its line and column;
TOML is parsed with ``tomllib`` and located by a scan of its lines (tables and keys). Then
``${VAR}`` references are substituted, and the overrides (environment, ``--set``) applied,
each value remembering the override it came from.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = (
    "OVERRIDE_ENV_PREFIX",
    "Override",
    "Problem",
    "Source",
    "apply_overrides",
    "env_overrides",
    "format_path",
    "parse_override",
    "read_source",
    "set_overrides",
)

OVERRIDE_ENV_PREFIX = "STAGEFLOW_OTEL_PIPELINE__"
"""Environment variables ``STAGEFLOW_OTEL_PIPELINE__<PIPELINE>__<KEY>__...`` override values."""

DataPath = tuple[str | int, ...]

_YAML_SUFFIXES = (".yaml", ".yml")
_TOML_SUFFIXES = (".toml",)
SUFFIXES = _YAML_SUFFIXES + _TOML_SUFFIXES
_REFERENCE = re.compile(r"\$(\$\{)|\$\{([^{}]*)\}|\$\{")
_WHOLE_REFERENCE = re.compile(r"\$\{[^{}]*\}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(path: Sequence[str | int]) -> str:
    """``('stages', 'fetch', 'interceptors', 0)`` as ``stages.fetch.interceptors[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a pipeline file, and where.

    Attributes:
        file: The file, as given.
        line: 1-based line, when known.
        column: 1-based column, when known.
        path: Where in the data (``stages.fetch.timeout``; empty for the whole file).
        message: What is wrong.
        fix: How to fix it.
        origin: The override the value came from (``--set fetch.timeout=0``,
            ``STAGEFLOW_OTEL_PIPELINE__...``), if it came from one.
    """

    file: str
    line: int | None
    column: int | None
    path: str
    message: str
    fix: str | None = None
    origin: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.origin is not None:
            where += f": {self.origin}"
        elif self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        text = f"{where}: {self.path + ': ' if self.path else ''}{self.message}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


@dataclass
class Source:
    """A pipeline file's data and where each part of it is."""

    file: str
    data: Any = None
    values: dict[DataPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[DataPath, tuple[int, int]] = field(default_factory=dict)
    origins: dict[DataPath, str] = field(default_factory=dict)

    def problem(
        self, path: DataPath, message: str, fix: str | None = None, *, at_key: bool = False
    ) -> Problem:
        """A problem located at ``path`` (its key with ``at_key``), or its nearest parent."""
        for size in range(len(path), -1, -1):
            prefix = path[:size]
            if prefix in self.origins:
                return Problem(
                    self.file, None, None, format_path(path), message, fix, self.origins[prefix]
                )
            table = self.keys if at_key and size == len(path) else self.values
            position = table.get(prefix) or self.keys.get(prefix)
            if position is not None:
                return Problem(self.file, *position, format_path(path), message, fix)
        return Problem(self.file, None, None, format_path(path), message, fix)


# -- reading --------------------------------------------------------------------------------


def read_source(path: Path, file: str) -> tuple[Source, list[Problem]]:
    """Read ``path`` (YAML or TOML, by suffix); ``file`` is how messages name it."""
    source = Source(file)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        return source, [
            Problem(
                file,
                None,
                None,
                "",
                f"{suffix or 'a file without a suffix'} is not a pipeline file format",
                "name the file *.yaml, *.yml or *.toml",
            )
        ]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return source, [Problem(file, None, None, "", "no such file", "check the path")]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return source, [Problem(file, None, None, "", f"cannot read it: {reason}")]
    if suffix in _TOML_SUFFIXES:
        return source, _read_toml(text, source)
    return source, _read_yaml(text, source)


def _read_toml(text: str, source: Source) -> list[Problem]:
    try:
        source.data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        line = column = None
        if match:
            line, column = int(match.group(1)), int(match.group(2))
            message = message[: match.start()].rstrip()
        return [Problem(source.file, line, column, "", f"not valid TOML: {message}")]
    _locate_toml(text, source)
    return []


_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_KEY = re.compile(
    r"^(\s*)((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_TOML_KEY_PART = re.compile(r"[A-Za-z0-9_-]+|\"([^\"]*)\"|'([^']*)'")


def _toml_key(text: str) -> tuple[str, ...]:
    return tuple(
        m.group(1)
        if m.group(1) is not None
        else m.group(2)
        if m.group(2) is not None
        else m.group(0)
        for m in _TOML_KEY_PART.finditer(text)
    )


def _locate_toml(text: str, source: Source) -> None:
    """Lines of the tables and keys of a TOML document (inline values stay with their key)."""
    table: DataPath = ()
    array_counts: dict[DataPath, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TOML_HEADER.match(line)
        if header:
            name = _toml_key(header.group(2))
            if header.group(1) == "[[":
                index = array_counts.get(name, 0)
                array_counts[name] = index + 1
                table = (*name, index)
            else:
                table = name
            column = line.index("[") + 1
            source.values.setdefault(table, (number, column))
            source.keys.setdefault(table, (number, column))
            continue
        key = _TOML_KEY.match(line)
        if key:
            path = (*table, *_toml_key(key.group(2)))
            position = (number, len(key.group(1)) + 1)
            source.keys.setdefault(path, position)
            source.values.setdefault(path, position)


def _read_yaml(text: str, source: Source) -> list[Problem]:
    try:
        import yaml
    except ImportError:
        return [
            Problem(
                source.file,
                None,
                None,
                "",
                "reading YAML pipeline files needs PyYAML, which is not installed",
                "pip install 'stageflow-otel[yaml]' (TOML files need nothing more)",
            )
        ]
    problems: list[Problem] = []
    try:
        loader = yaml.SafeLoader(text)  # checks the characters: may raise already
    except yaml.YAMLError as exc:
        return [
            Problem(source.file, None, None, "", f"not valid YAML: {' '.join(str(exc).split())}")
        ]
    try:
        node = loader.get_single_node()
        if node is None:
            return [Problem(source.file, None, None, "", "the file is empty", _MINIMAL_FIX)]
        source.data = _YamlConverter(loader, source, problems).convert(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        detail = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problems.append(Problem(source.file, line, column, "", f"not valid YAML: {detail}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(source.file, None, None, "", f"not valid YAML: {exc}"))
    except RecursionError:
        problems.append(
            Problem(source.file, None, None, "", "the document is nested too deeply (or refers "
                    "to itself through an alias)", "flatten it")
        )  # fmt: skip
    finally:
        loader.dispose()
    return problems


_MINIMAL_FIX = "declare at least `name:` and `stages:` (see the pipeline file reference)"


class _YamlConverter:
    """Plain data from a YAML node tree, recording each key's and value's position."""

    def __init__(self, loader: Any, source: Source, problems: list[Problem]) -> None:
        self.loader = loader
        self.source = source
        self.problems = problems

    def convert(self, node: Any, path: DataPath) -> Any:
        import yaml

        mark = node.start_mark
        self.source.values[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # `<<: *defaults` merge keys
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                key_mark = key_node.start_mark
                position = (key_mark.line + 1, key_mark.column + 1)
                if not isinstance(key, str):
                    self.problems.append(
                        Problem(self.source.file, *position, format_path(path),
                                f"keys must be strings, got {key!r}", "quote the key")
                    )  # fmt: skip
                    continue
                if key in result:
                    first = self.source.keys[(*path, key)]
                    self.problems.append(
                        Problem(self.source.file, *position, format_path((*path, key)),
                                f"duplicate key {key!r} (first at line {first[0]})",
                                "remove one of them: YAML would silently keep only the last")
                    )  # fmt: skip
                    continue
                self.source.keys[(*path, key)] = position
                result[key] = self.convert(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


# -- ${VAR} substitution --------------------------------------------------------------------


def _scalar(text: str) -> Any:
    """``5`` -> 5, ``true`` -> True, ``null`` -> None, ``0.5`` -> 0.5; anything else as text.

    ``NaN`` and ``Infinity`` stay text: no setting takes them, and the schema's bounds cannot
    reject a NaN.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value if value is None or isinstance(value, bool | int | float) else text


def substitute(source: Source, environ: Mapping[str, str]) -> list[Problem]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value, in place.

    A value that is exactly one reference takes the type of what it is replaced with
    (``timeout: ${T:-5}`` is the number 5); ``$${`` is a literal ``${``.
    """
    problems: list[Problem] = []

    def replace_text(text: str, path: DataPath) -> Any:
        whole = _WHOLE_REFERENCE.fullmatch(text) is not None

        def one(match: re.Match[str]) -> str:
            if match.group(1):
                return "${"
            body = match.group(2)
            if body is None:
                problems.append(source.problem(path, f"unclosed reference in {text!r}", _REF_FIX))
                return match.group(0)
            name, sep, default = body.partition(":-")
            if not _VARIABLE.fullmatch(name):
                problems.append(
                    source.problem(path, f"${{{body}}} is not a variable reference", _REF_FIX)
                )
                return match.group(0)
            value = environ.get(name)
            if value is None:
                if sep:
                    return default
                problems.append(
                    source.problem(
                        path,
                        f"environment variable {name} is not set",
                        f"set {name}, or give a default: ${{{name}:-value}}",
                    )
                )
                return ""
            return value

        replaced = _REFERENCE.sub(one, text)
        return _scalar(replaced) if whole else replaced

    def walk(value: Any, path: DataPath) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return replace_text(value, path)
        return value

    source.data = walk(source.data, ())
    return problems


_REF_FIX = "write ${NAME} or ${NAME:-default} (and $${ for a literal ${)"


# -- overrides ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """One outside override: a key path (as given), the value, and where it came from."""

    keys: tuple[str, ...]
    value: Any
    origin: str
    fold_case: bool = False


def parse_override(text: str) -> Override:
    """``stages.fetch.timeout=5`` as an override (``--set``).

    Raises:
        ValueError: Without ``=`` or without a key.
    """
    key, sep, value = text.partition("=")
    parts = tuple(part.strip() for part in key.split("."))
    if not sep or not all(parts):
        raise ValueError(
            f"--set {text!r} is not KEY=VALUE with a dotted KEY (for example "
            "--set stages.fetch.timeout=5, or --set fetch.timeout=5)"
        )
    return Override(parts, _scalar(value), f"--set {text}")


def set_overrides(items: Iterable[str]) -> list[Override]:
    """``--set`` items as overrides (see :func:`parse_override`)."""
    return [parse_override(item) for item in items]


def _env_name(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", text.upper())


def env_overrides(pipeline: str, environ: Mapping[str, str]) -> list[Override]:
    """The ``STAGEFLOW_OTEL_PIPELINE__<PIPELINE>__<KEY>__...`` variables of one pipeline.

    ``<PIPELINE>`` is the pipeline name upper-cased, with every character other than a
    letter or digit as ``_``; keys match the same way, so ``quote-shipping`` is
    ``QUOTE_SHIPPING``.
    """
    prefix = f"{OVERRIDE_ENV_PREFIX}{_env_name(pipeline)}__"
    found = []
    for name in sorted(environ):
        if name.upper().startswith(prefix):
            keys = tuple(name[len(prefix) :].split("__"))
            found.append(Override(keys, _scalar(environ[name]), f"{name}={environ[name]}", True))
    return found


def _match_key(container: Mapping[str, Any], key: str, fold_case: bool) -> str | None:
    if key in container:
        return key
    if fold_case:
        wanted = _env_name(key)
        for existing in container:
            if _env_name(existing) == wanted:
                return existing
    return None


def _apply(source: Source, override: Override, top_level: Collection[str]) -> str | None:
    """Set one override's value; what is wrong with its key path, if anything."""
    data = source.data
    if not isinstance(data, dict):
        return "the file holds no mapping to override"
    keys = list(override.keys)
    stages = data.get("stages")
    top = _match_key(data, keys[0], override.fold_case) or _match_key(
        dict.fromkeys(top_level), keys[0], override.fold_case
    )
    if top is None and isinstance(stages, dict):
        keys.insert(0, "stages")  # `fetch.timeout` is short for `stages.fetch.timeout`
    container: Any = data
    path: list[str | int] = []
    for key in keys[:-1]:
        if isinstance(container, list):
            if not (key.isdigit() and int(key) < len(container)):
                return f"{format_path(path)} is a list of {len(container)}; {key!r} is no index"
            path.append(int(key))
            container = container[int(key)]
            continue
        if not isinstance(container, dict):
            return f"{format_path(path)} is not a mapping; it has no key {key!r}"
        name = _match_key(container, key, override.fold_case)
        if name is None:
            existing = ", ".join(map(str, container)) or "none"
            return f"{format_path(path) or 'the file'} has no key {key!r} (keys there: {existing})"
        path.append(name)
        container = container[name]
    last = keys[-1]
    if isinstance(container, list):
        if not (last.isdigit() and int(last) < len(container)):
            return f"{format_path(path)} is a list of {len(container)}; {last!r} is no index"
        container[int(last)] = override.value
        path.append(int(last))
    elif isinstance(container, dict):
        name = _match_key(container, last, override.fold_case)
        if name is None:
            name = last.lower() if override.fold_case else last
        container[name] = override.value
        path.append(name)
    else:
        return f"{format_path(path)} is not a mapping; it has no key {last!r}"
    source.origins[tuple(path)] = override.origin
    return None


def apply_overrides(
    source: Source, overrides: Sequence[Override], *, top_level: Collection[str]
) -> list[Problem]:
    """Set each override's value in ``source.data``; a path that leads nowhere is a problem.

    A path's first key may be a stage name (``fetch.timeout`` for ``stages.fetch.timeout``)
    when it is not one of the ``top_level`` keys. Only the last key may be new.
    """
    problems = []
    for override in overrides:
        message = _apply(source, override, top_level)
        if message is not None:
            problems.append(
                Problem(source.file, None, None, ".".join(override.keys), message,
                        "name an existing key path, e.g. stages.<stage>.timeout",
                        override.origin)
            )  # fmt: skip
    return problems
