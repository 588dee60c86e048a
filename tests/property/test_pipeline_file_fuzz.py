"""Malformed pipeline files, generated: each gives located problems, never a traceback.

A valid file is mutated (a value replaced by an arbitrary one, a key added or removed, random
dependencies that may form cycles) and written as YAML; arbitrary text is tried as YAML and
as TOML. Loading either succeeds or raises ``PipelineFileError`` whose every problem has a
line, and nothing else is ever raised. Generated strings never contain ``:``, so no generated
import path is ever imported.
"""

from __future__ import annotations

import copy
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_otel.pipeline_files import (
    PipelineFileError,
    check_pipeline_file,
    read_pipeline_file,
)

FETCH = "tests.unit.pipeline_files.support:fetch"
BASE: dict[str, Any] = {
    "name": "fuzz",
    "failure_mode": "continue",
    "interceptors": [{"retry": {"max_attempts": 2}}],
    "stages": {
        "a": {"runner": FETCH, "kind": "enrich", "timeout": 1.5},
        "b": {
            "runner": FETCH,
            "dependencies": ["a"],
            "interceptors": [{"timeout": {"seconds": 2}}, {"circuit_breaker": {}}],
        },
        "c": {"runner": FETCH, "after": ["b"], "conditional": True},
    },
}

words = st.text(alphabet=string.ascii_letters + string.digits + " _-.${}", max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | words
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


ALL_PATHS = paths(BASE)[1:]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent: Any = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "add", "delete"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "add" and isinstance(parent, dict):
                parent[draw(words)] = draw(values)
            elif isinstance(parent, dict):
                del parent[path[-1]]
        except (KeyError, IndexError, TypeError):  # an earlier mutation changed the shape
            continue
    return document


def assert_located_or_loaded(path: Path) -> None:
    # check_pipeline_file turns PipelineFileError into its problems; anything else escapes.
    for problem in check_pipeline_file(path, environ={}):
        assert problem.line is not None or problem.path == "", str(problem)
        assert str(problem).startswith(str(path))


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(document=mutated())
def test_a_mutated_file_loads_or_names_located_problems(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert_located_or_loaded(path)


@FUZZ
@given(
    dependencies=st.dictionaries(
        st.sampled_from("abcde"), st.lists(st.sampled_from("abcdef"), max_size=3), min_size=1
    )
)
def test_random_dependencies_load_or_name_the_cycle_or_missing_stage(
    tmp_path: Path, dependencies: dict[str, list[str]]
) -> None:
    stages = {
        name: {"runner": FETCH, "dependencies": sorted(set(deps))}
        for name, deps in dependencies.items()
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "dag", "stages": stages}), encoding="utf-8")
    try:
        pipeline = read_pipeline_file(path, environ={}).pipeline
    except PipelineFileError as exc:
        (problem,) = exc.problems
        assert problem.path.endswith(".dependencies"), str(problem)
        assert problem.line is not None
        assert any(w in problem.message for w in ("cycle", "depends on itself", "not in pipeline"))
    else:
        assert len(pipeline.stage_names()) == len(stages)


@FUZZ
@given(text=st.text(max_size=200), suffix=st.sampled_from([".yaml", ".toml"]))
def test_arbitrary_text_never_raises_anything_else(tmp_path: Path, text: str, suffix: str) -> None:
    path = tmp_path / f"p{suffix}"
    path.write_text(text.replace(":", " "), encoding="utf-8")
    problems = check_pipeline_file(path, environ={})
    assert all(str(problem).startswith(str(path)) for problem in problems)
