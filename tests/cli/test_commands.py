"""``run``, ``graph``, ``timeline`` and the command line's errors, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from stageflow_otel.demo import PIPELINE_NAME, build_order_pipeline
from tests.cli.support import run_cli, stderr_lines

USER_PIPELINES = """
import anyio
from stageflow_otel import Pipeline, StageOutput


async def fetch(ctx):
    await anyio.sleep(0.001)
    if "user" not in ctx.data:
        raise KeyError("no user in the run input")
    return {"user": ctx.data["user"]}


async def greet(ctx):
    return StageOutput.ok(greeting=f"hello {ctx.inputs.get_from('fetch', 'user')}")


async def explode(ctx):
    raise ValueError("the warehouse is on fire")


hello = Pipeline("hello").with_stage("fetch", fetch).with_stage("greet", greet, dependencies=["fetch"])
hello_graph = hello.build()
failing = Pipeline("failing").with_stage("fetch", fetch).with_stage("explode", explode, dependencies=["fetch"])
cyclic = Pipeline("cyclic").with_stage("a", fetch, dependencies=["b"]).with_stage("b", fetch, dependencies=["a"])
not_a_pipeline = 42


def make_hello():
    return hello


def broken_factory():
    raise RuntimeError("factory broke")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding a user's module of pipelines (the CLI runs from there)."""
    (tmp_path / "userpipes.py").write_text(textwrap.dedent(USER_PIPELINES), encoding="utf-8")
    return tmp_path


def _out(project: Path) -> list[str]:
    return ["--metrics-port", "0", "--out", str(project / "out")]


@pytest.mark.parametrize("target", ["hello", "hello_graph", "make_hello"])
def test_run_runs_a_pipeline_a_graph_or_a_factory(project: Path, target: str) -> None:
    result = run_cli(
        "run", f"userpipes:{target}", "--data", '{"user": "ada"}', *_out(project), cwd=project
    )
    assert result.returncode == 0, result.stderr
    assert "stage.run fetch" in result.stdout
    assert "stage.run greet" in result.stdout
    assert re.search(r"run 1/1\s+ok", result.stdout)
    spans = [
        json.loads(line)
        for line in (project / "out" / "trace.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    greet = next(s for s in spans if s["name"] == "stage.run greet")
    assert greet["attributes"]["stageflow.stage.output.keys"] == ["greeting"]


def test_run_accepts_a_file_path_and_data_from_a_file(project: Path) -> None:
    (project / "input.json").write_text('{"user": "grace"}', encoding="utf-8")
    result = run_cli(
        "run",
        str(project / "userpipes.py") + ":hello",
        "--data",
        f"@{project / 'input.json'}",
        "--runs",
        "2",
        *_out(project),
    )
    assert result.returncode == 0, result.stderr
    assert "run 2/2" in result.stdout


def test_a_failing_pipeline_exits_1_with_one_line(project: Path) -> None:
    result = run_cli(
        "run", "userpipes:failing", "--data", '{"user": "ada"}', *_out(project), cwd=project
    )
    assert result.returncode == 1
    assert stderr_lines(result) == [
        (
            "stageflow-otel: error: pipeline 'failing' failed in run 1: stage 'explode' failed: the "
            "warehouse is on fire"
        )
    ]
    # The tree still shows what happened.
    assert "stage.run explode" in result.stdout
    assert "error.type=ValueError" in result.stdout


def test_a_run_input_the_pipeline_rejects_fails_the_run(project: Path) -> None:
    result = run_cli("run", "userpipes:hello", *_out(project), cwd=project)
    assert result.returncode == 1
    assert "no user in the run input" in stderr_lines(result)[-1]


def test_an_invalid_pipeline_exits_1(project: Path) -> None:
    result = run_cli("run", "userpipes:cyclic", *_out(project), cwd=project)
    assert result.returncode == 1
    assert stderr_lines(result) == [
        (
            "stageflow-otel: error: pipeline 'cyclic' has a dependency cycle: b -> a -> b. Fix: "
            "remove one of these dependencies so that the stages form a DAG"
        )
    ]


def test_verbose_adds_the_traceback(project: Path) -> None:
    result = run_cli("run", "userpipes:broken_factory", "--verbose", *_out(project), cwd=project)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: factory broke" in result.stderr
    assert stderr_lines(result)[-1] == (
        "stageflow-otel: error: calling userpipes:broken_factory() failed: RuntimeError: "
        "factory broke"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("run",), "the following arguments are required: MODULE:PIPELINE"),
        (("run", "userpipes"), "expected MODULE:PIPELINE, got 'userpipes'"),
        (("run", "nosuchmodule:p"), "cannot import 'nosuchmodule': no module named"),
        (("run", "userpipes:nope"), "module 'userpipes' has no attribute 'nope' (pipelines"),
        (("run", "userpipes:not_a_pipeline"), "userpipes:not_a_pipeline is a int"),
        (("run", "userpipes:hello", "--data", "[1]"), "--data must be a JSON object, got list"),
        (("run", "userpipes:hello", "--data", "{oops"), "--data is not valid JSON"),
        (("run", "userpipes:hello", "--data", "@missing.json"), "cannot read --data file"),
        (("run", "nowhere/x.py:p"), "no Python file at 'nowhere/x.py'"),
        (("demo", "--runs", "0"), "argument --runs: must be at least 1, got 0"),
        (("demo", "--runs", "many"), "argument --runs: expected a whole number"),
        (("demo", "--metrics-port", "70000"), "argument --metrics-port: must be between"),
        (("demo", "--interval", "5"), "--interval needs --hold"),
        (("demo", "--otlp-endpoint", "collector:4317"), "is not an http:// or https:// URL"),
        (("demo", "--unknown-flag"), "unrecognized arguments: --unknown-flag"),
        (("graph", "--format", "png"), "argument --format: invalid choice: 'png'"),
        (("timeline", "missing.jsonl"), "trace file 'missing.jsonl' does not exist"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    project: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_cli(*args, cwd=project)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stageflow-otel")
    assert message in lines[0]
    assert result.stdout == ""


def test_an_unsupported_otlp_protocol_from_the_environment_is_a_usage_error(
    project: Path,
) -> None:
    result = run_cli(
        "demo", *_out(project), env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, cwd=project
    )
    assert result.returncode == 2
    assert stderr_lines(result) == [
        (
            "stageflow-otel: error: OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported; use "
            "grpc or http/protobuf"
        )
    ]


def test_a_malformed_trace_file_names_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"name": "a"}\n', encoding="utf-8")
    result = run_cli("timeline", str(trace))
    assert result.returncode == 2
    assert stderr_lines(result) == [
        (
            f"stageflow-otel: error: {trace}:1: not a span record, missing trace_id, span_id, "
            "start_ns, end_ns"
        )
    ]


@pytest.mark.parametrize("args", [("--help",), ("demo", "--help"), ("--version",)])
def test_help_and_version_exit_0(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 0
    assert result.stdout.startswith(("usage: stageflow-otel", "stageflow-otel "))


# -- graph ----------------------------------------------------------------------------------


_DOT_STATEMENT = re.compile(
    r'^\s*(?:(?P<src>"(?:[^"\\]|\\.)*")\s*->\s*(?P<dst>"(?:[^"\\]|\\.)*")'
    r'|(?P<node>"(?:[^"\\]|\\.)*")\s*\[label=(?P<label>"(?:[^"\\]|\\.)*")\]'
    r"|rankdir=\w+)\s*;\s*$"
)


def _unquote(token: str) -> str:
    value = json.loads(token)  # a DOT quoted id escapes like a JSON string here
    assert isinstance(value, str)
    return value


def parse_dot(text: str) -> tuple[str, dict[str, str], set[tuple[str, str]]]:
    """A strict parser for the subset of DOT that ``Pipeline.to_dot`` writes."""
    lines = text.strip().splitlines()
    header = re.fullmatch(r'digraph ("(?:[^"\\]|\\.)*") \{', lines[0])
    assert header is not None, lines[0]
    assert lines[-1] == "}"
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    for line in lines[1:-1]:
        match = _DOT_STATEMENT.match(line)
        assert match is not None, f"not a DOT statement: {line!r}"
        if match.group("node"):
            nodes[_unquote(match.group("node"))] = _unquote(match.group("label"))
        elif match.group("src"):
            edges.add((_unquote(match.group("src")), _unquote(match.group("dst"))))
    assert all(a in nodes and b in nodes for a, b in edges), "edge to an undeclared node"
    return _unquote(header.group(1)), nodes, edges


def test_graph_prints_the_demo_pipeline_as_dot() -> None:
    result = run_cli("graph")
    assert result.returncode == 0, result.stderr
    name, nodes, edges = parse_dot(result.stdout)
    pipeline = build_order_pipeline()
    assert name == PIPELINE_NAME
    assert nodes == {spec.name: f"{spec.name} ({spec.kind})" for spec in pipeline.specs}
    assert edges == {(dep, spec.name) for spec in pipeline.specs for dep in spec.dependencies}


def test_graph_of_a_user_graph_object(project: Path) -> None:
    result = run_cli("graph", "userpipes:hello_graph", cwd=project)
    assert result.returncode == 0, result.stderr
    assert parse_dot(result.stdout) == (
        "hello",
        {"fetch": "fetch (transform)", "greet": "greet (transform)"},
        {("fetch", "greet")},
    )


def test_graph_as_mermaid(project: Path) -> None:
    result = run_cli("graph", "userpipes:hello", "--format", "mermaid", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "flowchart LR",
        '  s0["fetch (transform)"]',
        '  s1["greet (transform)"]',
        "  s0 --> s1",
    ]


def test_graph_output_is_accepted_by_graphviz_when_installed(tmp_path: Path) -> None:
    import shutil
    import subprocess

    dot = shutil.which("dot")
    if dot is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Graphviz 'dot' is missing; scripts/ensure-system-deps.sh installs it")
        pytest.skip("Graphviz 'dot' is not installed; the structural parser above covers DOT")
    result = run_cli("graph")
    checked = subprocess.run(
        [dot, "-Tsvg"], input=result.stdout, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    assert "<svg" in checked.stdout


def test_log_level_warning_adds_the_canonical_lines_of_the_failure(project: Path) -> None:
    result = run_cli(
        "run",
        "userpipes:failing",
        "--data",
        '{"user": "ada"}',
        "--log-level",
        "warning",
        *_out(project),
        cwd=project,
    )
    assert result.returncode == 1
    lines = stderr_lines(result)
    assert len(lines) == 3
    assert "[warning" in lines[0]
    assert " stage.wide " in lines[0]
    assert " pipeline.wide " in lines[1]
    assert "stage=explode" in lines[0]
    assert re.search(r"trace_id=[0-9a-f]{32}", lines[0])
    assert lines[-1].startswith("stageflow-otel: error: pipeline 'failing' failed")


def test_a_closed_stdout_ends_the_command_quietly(tmp_path: Path) -> None:
    import subprocess

    from tests.cli.support import REPO_ROOT, cli_argv, cli_env

    # Like `stageflow-otel demo | head -1`.
    process = subprocess.Popen(
        cli_argv("demo", "--runs", "2", "--metrics-port", "0", "--out", str(tmp_path)),
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("stageflow-otel demo")
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in err
    assert "ExceptionGroup" not in err
