"""``graph`` validates a pipeline exactly as ``run`` does; the CLI's messages say things once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.cli.support import run_cli, stderr_lines

INVALID_PIPELINES = """
from stageflow_otel import Pipeline


async def work(ctx):
    return {"done": True}


cyclic = (
    Pipeline("cyc")
    .with_stage("a", work, dependencies=["c"])
    .with_stage("b", work, dependencies=["a"])
    .with_stage("c", work, dependencies=["b"])
)
missing = Pipeline("gap").with_stage("a", work).with_stage("b", work, dependencies=["x"])
hello = Pipeline("hello").with_stage("a", work).with_stage("b", work, dependencies=["a"])


def make_missing():
    return missing
"""

BAD_DECLARATION = """
from stageflow_otel import Pipeline


async def work(ctx):
    return None


pipeline = Pipeline("p").with_stage("a", work, timeout="5")
"""

CYCLE = (
    "stageflow-otel: error: pipeline 'cyc' has a dependency cycle: b -> c -> a -> b. Fix: "
    "remove one of these dependencies so that the stages form a DAG"
)
MISSING = (
    "stageflow-otel: error: stage 'b' depends on 'x', which is not in pipeline 'gap' (stages: "
    "a, b). Fix: add a stage named 'x' or remove it from the dependencies of 'b'"
)
BAD = (
    "stageflow-otel: error: module 'baddecl' declares an invalid pipeline: stage 'a': timeout "
    "must be a positive number of seconds or None, got '5' (str)"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "badpipes.py").write_text(textwrap.dedent(INVALID_PIPELINES), encoding="utf-8")
    (tmp_path / "baddecl.py").write_text(textwrap.dedent(BAD_DECLARATION), encoding="utf-8")
    return tmp_path


def _run(project: Path, target: str) -> tuple[int, list[str]]:
    result = run_cli(
        "run", target, "--metrics-port", "0", "--out", str(project / "out"), cwd=project
    )
    return result.returncode, stderr_lines(result)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("badpipes:cyclic", CYCLE),
        ("badpipes:missing", MISSING),
        ("badpipes:make_missing", MISSING),
        ("baddecl:pipeline", BAD),
    ],
)
@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_graph_rejects_an_invalid_pipeline_like_run(
    project: Path, target: str, message: str, fmt: str
) -> None:
    result = run_cli("graph", target, "--format", fmt, cwd=project)
    assert (result.returncode, stderr_lines(result)) == (1, [message])
    assert result.stdout == ""
    assert _run(project, target) == (1, [message])


def test_graph_of_a_valid_pipeline_still_draws_every_edge(project: Path) -> None:
    result = run_cli("graph", "badpipes:hello", "--format", "mermaid", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "flowchart LR",
        '  s0["a (transform)"]',
        '  s1["b (transform)"]',
        "  s0 --> s1",
    ]


def test_the_usage_hint_names_a_target_that_is_not_in_the_package(project: Path) -> None:
    result = run_cli("graph", "badpipes", cwd=project)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        (
            "stageflow-otel: error: expected MODULE:PIPELINE, got 'badpipes' (for example "
            "myapp.pipelines:checkout, or path/to/file.py:pipeline)"
        )
    ]
    assert "examples." not in result.stderr


def test_run_without_hold_prints_the_metrics_url_once_and_says_how_long_it_lives(
    project: Path,
) -> None:
    result = run_cli(
        "run",
        "badpipes:hello",
        "--no-live",
        "--metrics-port",
        "0",
        "--out",
        str(project / "out"),
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    urls = [line for line in result.stdout.splitlines() if "/metrics" in line]
    assert len(urls) == 1, result.stdout
    assert "--hold keeps it up" in urls[0]
