"""Malformed pipeline files: every problem is named, located and given a fix; never a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stageflow_otel.pipeline_files import (
    PipelineFileError,
    Problem,
    check_pipeline_file,
    load_pipeline,
)

SUPPORT = "tests.unit.pipeline_files.support"
FETCH = f"{SUPPORT}:fetch"

# (id, YAML text, [(line, column, path, words of the message), ...]) for every problem.
YAML_CASES: list[tuple[str, str, list[tuple[int | None, int | None, str, str]]]] = [
    (
        "unknown keys",
        f"""\
        name: p
        stagez: {{}}
        stages:
          a:
            runner: {FETCH}
            timout: 5
        """,
        [
            (2, 1, "stagez", "unknown key 'stagez'"),
            (6, 5, "stages.a.timout", "unknown key 'timout'"),
        ],
    ),
    (
        "bad types",
        f"""\
        name: p
        max_concurrency: "4"
        stages:
          a:
            runner: {FETCH}
            timeout: soon
            conditional: 1
            dependencies: b
        """,
        [
            (2, 18, "max_concurrency", "expected a whole number or null, got '4'"),
            (6, 14, "stages.a.timeout", "expected a number or null"),
            (7, 18, "stages.a.conditional", "expected true or false"),
            (8, 19, "stages.a.dependencies", "expected a list"),
        ],
    ),
    (
        "missing keys",
        """\
        name: p
        stages:
          a:
            kind: work
        """,
        [(3, 3, "stages.a", "'runner' is missing")],
    ),
    (
        "no stages",
        "name: p\nstages: {}\n",
        [(2, 9, "stages", "a pipeline needs at least one stage")],
    ),
    (
        "bad values",
        f"""\
        name: p
        failure_mode: fail_slow
        stages:
          a:
            runner: {FETCH}
            kind: enrichment
            timeout: 0
        """,
        [
            (2, 15, "failure_mode", "'fail_slow' is not one of fail_fast, continue"),
            (6, 11, "stages.a.kind", "'enrichment' is not one of"),
            (7, 14, "stages.a.timeout", "0 is too small"),
        ],
    ),
    (
        "interceptor entries",
        f"""\
        name: p
        stages:
          a:
            runner: {FETCH}
            interceptors:
              - retry: {{max_attempts: 0}}
              - retry: {{}}
                timeout: 1
              - {{}}
              - retri: {{}}
              - args: {{x: 1}}
                timeout: 1
        """,
        [
            (6, 31, "stages.a.interceptors[0].retry.max_attempts", "0 is too small"),
            (7, 9, "stages.a.interceptors[1]", "names exactly one interceptor"),
            (9, 9, "stages.a.interceptors[2]", "names exactly one interceptor"),
            (10, 9, "stages.a.interceptors[3].retri", "unknown key 'retri'"),
            (11, 9, "stages.a.interceptors[4]", "`args` belongs to a `use:` entry"),
        ],
    ),
    (
        "a cycle",
        f"""\
        name: p
        stages:
          a:
            runner: {FETCH}
            dependencies: [b]
          b:
            runner: {FETCH}
            after: [a]
        """,
        [(8, 12, "stages.b.after", "dependency cycle: b -> a -> b")],
    ),
    (
        "a missing dependency and a self-dependency",
        f"""\
        name: p
        stages:
          a:
            runner: {FETCH}
            dependencies: [a]
        """,
        [(5, 19, "stages.a.dependencies", "depends on itself")],
    ),
    (
        "missing runners and bad import paths",
        f"""\
        name: p
        stages:
          a:
            runner: no_such_package.stages:fetch
          b:
            runner: {SUPPORT}:fetc
          c:
            runner: no_such_plugin
          d:
            runner: {SUPPORT}:not_callable
          f:
            runner: {FETCH}
            dependencies: [zz]
        """,
        [
            (4, 13, "stages.a.runner", "no module named 'no_such_package'"),
            (6, 13, "stages.b.runner", "has no attribute 'fetc'"),
            (8, 13, "stages.c.runner", "no stage plugin named 'no_such_plugin'"),
            (10, 5, "stages.d", "runner must be a Stage instance or class"),
            (13, 19, "stages.f.dependencies", "depends on 'zz', which is not in pipeline"),
        ],
    ),
    (
        "not an import path",
        """\
        name: p
        stages:
          e:
            runner: not a path
        """,
        [(4, 13, "stages.e.runner", "expected an import path")],
    ),
    (
        "an import that raises, and args for an instance",
        f"""\
        name: p
        stages:
          a:
            runner: tests.unit.pipeline_files.explodes:stage
          b:
            runner: {SUPPORT}:shout_once
            args: {{times: 2}}
        """,
        [
            (4, 13, "stages.a.runner", "RuntimeError: this module cannot be imported"),
            (7, 11, "stages.b.args", "`args` need a class or a function runner"),
        ],
    ),
    (
        "a missing dependency",
        f"""\
        name: p
        stages:
          f:
            runner: {FETCH}
            dependencies: [fetc]
        """,
        [(5, 19, "stages.f.dependencies", "depends on 'fetc', which is not in pipeline 'p'")],
    ),
    (
        "bad args and factories",
        f"""\
        name: p
        stages:
          a:
            runner: {SUPPORT}:greet
            args: {{volume: 11}}
          b:
            runner: {SUPPORT}:Shout
            args: {{times: 1, loud: true}}
          c:
            runner: {FETCH}
            interceptors:
              - use: {SUPPORT}:broken_factory
              - use: {SUPPORT}:not_callable
              - use: {SUPPORT}:Shout
                args: {{times: 2}}
        """,
        [
            (5, 11, "stages.a.args", "unexpected keyword argument 'volume'"),
            (8, 11, "stages.b.args", "unexpected keyword argument 'loud'"),
            (12, 14, "stages.c.interceptors[0].use", "the factory is broken"),
            (13, 14, "stages.c.interceptors[1].use", "must be a class or a factory"),
            (14, 14, "stages.c.interceptors[2].use", "must be an interceptor"),
        ],
    ),
    (
        "bad retry_on",
        f"""\
        name: p
        stages:
          a:
            runner: {FETCH}
            interceptors:
              - retry: {{retry_on: ["{SUPPORT}:Shout"]}}
        """,
        [(6, 28, "stages.a.interceptors[0].retry.retry_on[0]", "is not an exception class")],
    ),
    (
        "unset variables",
        f"""\
        name: ${{PIPELINE_NAME}}
        stages:
          a:
            runner: {FETCH}
            timeout: ${{A_TIMEOUT}}
            kind: ${{bad-name}}
        """,
        [
            (1, 7, "name", "environment variable PIPELINE_NAME is not set"),
            (5, 14, "stages.a.timeout", "environment variable A_TIMEOUT is not set"),
            (6, 11, "stages.a.kind", "${bad-name} is not a variable reference"),
        ],
    ),
    (
        "duplicate keys",
        f"""\
        name: p
        stages:
          a:
            runner: {FETCH}
          a:
            runner: {FETCH}
        """,
        [(5, 3, "stages.a", "duplicate key 'a' (first at line 3)")],
    ),
    ("not YAML", "name: [p\nstages: {}\n", [(2, 7, "", "not valid YAML")]),
    ("empty", "", [(None, None, "", "the file is empty")]),
    ("a list", "- a\n- b\n", [(1, 1, "", "expected a mapping")]),
]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _shape(problems: list[Problem]) -> list[tuple[int | None, int | None, str]]:
    return [(p.line, p.column, p.path) for p in problems]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES]
)
def test_every_problem_of_a_yaml_file_is_located(
    tmp_path: Path, text: str, expected: list[tuple[int | None, int | None, str, str]]
) -> None:
    path = _write(tmp_path, "p.yaml", text)
    problems = check_pipeline_file(path, environ={})
    assert _shape(problems) == [(line, column, where) for line, column, where, _ in expected]
    for problem, (*_, words) in zip(problems, expected, strict=True):
        assert words in problem.message, str(problem)
        assert problem.file == str(path)
        assert str(problem).startswith(str(path))


def test_the_error_lists_every_problem_with_its_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.yaml", YAML_CASES[0][1])
    with pytest.raises(PipelineFileError) as caught:
        load_pipeline(path, environ={})
    message = str(caught.value)
    assert message.splitlines() == [
        f"pipeline file {path} has 2 problems:",
        (
            f"  {path}:2:1: stagez: unknown key 'stagez'. Fix: did you mean 'stages'? (allowed: "
            "$schema, description, event_sinks, failure_mode, interceptors, max_concurrency, name, "
            "stages)"
        ),
        (
            f"  {path}:6:5: stages.a.timout: unknown key 'timout'. Fix: did you mean 'timeout'? "
            "(allowed: after, args, conditional, dependencies, interceptors, kind, runner, "
            "timeout)"
        ),
    ]
    assert caught.value.code == "PIPELINE_FILE"


def test_nothing_is_imported_while_the_schema_has_problems(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "p.yaml",
        """\
        name: p
        stages:
          a:
            runner: no_such_package.stages:fetch
            timeout: -1
        """,
    )
    # Only the schema's problem: the runner's import is never tried.
    assert _shape(check_pipeline_file(path, environ={})) == [(5, 14, "stages.a.timeout")]


TOML_CASES: list[tuple[str, str, list[tuple[int | None, str, str]]]] = [
    (
        "unknown key and bad type",
        f"""\
        name = "p"

        [stages.a]
        runner = "{FETCH}"
        timout = 5

        [stages.b]
        runner = "{FETCH}"
        timeout = "5"
        """,
        [
            (5, "stages.a.timout", "unknown key 'timout'"),
            (9, "stages.b.timeout", "expected a number or null"),
        ],
    ),
    (
        "missing runner",
        f"""\
        name = "p"
        [stages.a]
        runner = "{SUPPORT}:nope"
        [stages.b]
        kind = "work"
        """,
        [(4, "stages.b", "'runner' is missing")],
    ),
    ("not TOML", 'name = "p\n', [(1, "", "not valid TOML")]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in TOML_CASES], ids=[c[0] for c in TOML_CASES]
)
def test_every_problem_of_a_toml_file_is_located(
    tmp_path: Path, text: str, expected: list[tuple[int | None, str, str]]
) -> None:
    path = _write(tmp_path, "p.toml", text)
    problems = check_pipeline_file(path, environ={})
    assert [(p.line, p.path) for p in problems] == [(line, where) for line, where, _ in expected]
    for problem, (*_, words) in zip(problems, expected, strict=True):
        assert words in problem.message, str(problem)


@pytest.mark.parametrize(
    ("overrides", "origin", "words"),
    [
        (["stages.a.timeout"], "--set stages.a.timeout", "is not KEY=VALUE"),
        (["=5"], "--set =5", "is not KEY=VALUE"),
        (["nope.timeout=5"], "--set nope.timeout=5", "stages has no key 'nope'"),
        (["name.first=x"], "--set name.first=x", "name is not a mapping"),
        (["a.interceptors.5.timeout=1"], "--set a.interceptors.5.timeout=1", "is no index"),
        (["a.timeout=-2"], "--set a.timeout=-2", "-2 is too small"),
        (["a.kind=big"], "--set a.kind=big", "'big' is not one of"),
        (["a.timeout=NaN"], "--set a.timeout=NaN", "expected a number or null, got 'NaN'"),
        (["a.colour=red"], "--set a.colour=red", "unknown key 'colour'"),
    ],
)
def test_a_bad_override_is_a_problem_naming_it(
    tmp_path: Path, overrides: list[str], origin: str, words: str
) -> None:
    path = _write(
        tmp_path,
        "p.yaml",
        f"""\
        name: p
        stages:
          a:
            runner: {FETCH}
            interceptors: [timeout: 1]
        """,
    )
    (problem,) = check_pipeline_file(path, overrides=overrides, environ={})
    assert problem.origin == origin
    assert words in problem.message
    assert str(problem).startswith(f"{path}: {origin}: ")


def test_an_unknown_suffix_and_a_missing_file(tmp_path: Path) -> None:
    (problem,) = check_pipeline_file(tmp_path / "p.json", environ={})
    assert ".json is not a pipeline file format" in str(problem)
    (problem,) = check_pipeline_file(tmp_path / "absent.yaml", environ={})
    assert "no such file" in str(problem)
