"""Loading pipeline files: the model, substitution, overrides, and the shipped examples."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import anyio
import pytest

from stageflow_otel import Pipeline, RetryInterceptor, TimeoutInterceptor
from stageflow_otel.core import StageKind
from stageflow_otel.demo import (
    build_order_pipeline,
    build_payment_pipeline,
    order_input,
)
from stageflow_otel.pipeline_files import (
    SCHEMA_FILE,
    PipelineFileError,
    load_pipeline,
    read_config,
    read_pipeline_file,
    schema,
)
from stageflow_otel.testing import in_memory_telemetry
from tests.support.contract import parse_span_attributes, telemetry_markdown

from .support import Echo, Shout, Tagging

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = REPO_ROOT / "examples"
SUPPORT = "tests.unit.pipeline_files.support"

HELLO_YAML = f"""
name: hello
failure_mode: continue
max_concurrency: 2
interceptors:
  - use: {SUPPORT}:Tagging
    args: {{tag: outer}}
stages:
  fetch:
    runner: {SUPPORT}:fetch
    kind: enrich
    timeout: 5
  greet:
    runner: {SUPPORT}:greet
    args: {{greeting: hi}}
    after: [fetch]
    interceptors:
      - retry: {{max_attempts: 2, base_delay: 0.001, retry_on: ["builtins:ConnectionError"]}}
      - timeout: 1.5
  shout:
    runner: {SUPPORT}:Shout
    args: {{times: 3}}
    dependencies: [greet]
    conditional: true
"""

HELLO_TOML = f"""
name = "hello"
failure_mode = "continue"
max_concurrency = 2
interceptors = [{{ use = "{SUPPORT}:Tagging", args = {{ tag = "outer" }} }}]

[stages.fetch]
runner = "{SUPPORT}:fetch"
kind = "enrich"
timeout = 5

[stages.greet]
runner = "{SUPPORT}:greet"
args = {{ greeting = "hi" }}
after = ["fetch"]
interceptors = [
  {{ retry = {{ max_attempts = 2, base_delay = 0.001, retry_on = ["builtins:ConnectionError"] }} }},
  {{ timeout = 1.5 }},
]

[stages.shout]
runner = "{SUPPORT}:Shout"
args = {{ times = 3 }}
dependencies = ["greet"]
conditional = true
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "text"), [("hello.yaml", HELLO_YAML), ("hello.toml", HELLO_TOML)])
def test_yaml_and_toml_declare_the_same_pipeline(tmp_path: Path, name: str, text: str) -> None:
    loaded = read_pipeline_file(write(tmp_path, name, text), environ={})
    pipeline = loaded.pipeline
    assert isinstance(pipeline, Pipeline)
    assert pipeline.name == "hello"
    assert (loaded.failure_mode, loaded.max_concurrency) == ("continue", 2)
    fetch, greet, shout = pipeline.specs
    assert (fetch.kind, fetch.timeout, fetch.dependencies) == (StageKind.ENRICH, 5.0, ())
    assert greet.dependencies == ("fetch",)
    # Pipeline-level interceptors come first (outermost), then the stage's own.
    assert [type(i) for i in greet.interceptors] == [Tagging, RetryInterceptor, TimeoutInterceptor]
    retry = greet.interceptors[1]
    assert isinstance(retry, RetryInterceptor)
    assert retry.max_attempts == 2
    assert isinstance(shout.runner, Shout)
    assert shout.runner.times == 3
    assert shout.conditional is True
    graph = loaded.build(hooks=[])
    assert (graph.failure_mode, graph.max_concurrency) == ("continue", 2)

    results = anyio.run(graph.run)
    assert results.data("greet") == {"text": "hi ada"}
    assert results["greet"].metadata["tag"] == "outer"
    assert results.data("shout") == {"text": "!!!"}


def test_the_source_is_the_path_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pipes").mkdir()
    path = write(tmp_path / "pipes", "hello.yaml", HELLO_YAML)
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(path, environ={})
    assert pipeline.source == "pipes/hello.yaml"
    # Pipelines built from it, and their graphs, keep it.
    assert pipeline.with_stage("more", lambda ctx: None).source == "pipes/hello.yaml"
    assert pipeline.build(hooks=[]).source == "pipes/hello.yaml"
    assert Pipeline("code").source is None


def test_the_run_span_names_the_pipeline_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "hello.yaml", HELLO_YAML)
    recorded = in_memory_telemetry()
    try:
        graph = read_pipeline_file("hello.yaml", environ={}).build(hooks=recorded.hooks)
        anyio.run(graph.run)
        run_span = recorded.span("pipeline.run hello")
        assert (run_span.attributes or {})["stageflow.pipeline.source"] == "hello.yaml"
        stage_span = recorded.span("stage.run fetch")
        assert "stageflow.pipeline.source" not in (stage_span.attributes or {})
        assert "stageflow.pipeline.source" in parse_span_attributes(telemetry_markdown())
    finally:
        recorded.shutdown()


def test_variables_are_substituted_with_their_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"""
        name: ${{NAME:-fallback}}
        description: "costs $${{PRICE}} in ${{REGION}}"
        stages:
          fetch:
            runner: {SUPPORT}:fetch
            timeout: ${{FETCH_TIMEOUT:-2.5}}
            conditional: ${{COND}}
        """,
    )
    config = read_config(path, environ={"REGION": "eu", "COND": "true"})
    assert config["name"] == "fallback"
    assert config["description"] == "costs ${PRICE} in eu"
    assert config["stages"]["fetch"]["timeout"] == 2.5
    assert config["stages"]["fetch"]["conditional"] is True
    environ = {"NAME": "prod", "COND": "false", "REGION": "us"}
    assert read_config(path, environ=environ)["name"] == "prod"


def test_overrides_from_the_environment_then_from_set(tmp_path: Path) -> None:
    path = write(tmp_path, "hello.yaml", HELLO_YAML)
    environ = {
        "STAGEFLOW_OTEL_PIPELINE__HELLO__FETCH__TIMEOUT": "7",
        "STAGEFLOW_OTEL_PIPELINE__HELLO__MAX_CONCURRENCY": "4",
        "STAGEFLOW_OTEL_PIPELINE__OTHER__FETCH__TIMEOUT": "99",  # another pipeline's
    }
    loaded = read_pipeline_file(
        path,
        environ=environ,
        overrides=[
            "stages.greet.interceptors.1.timeout=3",
            "max_concurrency=8",
            "fetch.kind=guard",
        ],
    )
    fetch, greet, _ = loaded.pipeline.specs
    assert fetch.timeout == 7.0
    assert fetch.kind == StageKind.GUARD
    timeout = greet.interceptors[2]
    assert isinstance(timeout, TimeoutInterceptor)
    assert timeout.default == 3.0
    assert loaded.max_concurrency == 8  # --set wins over the environment
    assert loaded.config["max_concurrency"] == 8


def test_a_bad_override_names_where_it_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "hello.yaml", HELLO_YAML)
    with pytest.raises(PipelineFileError) as caught:
        read_pipeline_file(path, environ={"STAGEFLOW_OTEL_PIPELINE__HELLO__FETCH__TIMEOUT": "-1"})
    (problem,) = caught.value.problems
    assert problem.origin == "STAGEFLOW_OTEL_PIPELINE__HELLO__FETCH__TIMEOUT=-1"
    assert problem.path == "stages.fetch.timeout"
    assert "-1 is too small" in str(problem)


def test_the_schema_ships_in_the_package_and_in_the_docs() -> None:
    published = json.loads((REPO_ROOT / "docs" / SCHEMA_FILE).read_text(encoding="utf-8"))
    assert published == schema(), f"copy src/stageflow_otel/pipeline_files/{SCHEMA_FILE} to docs/"
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


# -- the shipped examples and their Python twins ---------------------------------------------


async def _tree(pipeline: Pipeline, data: dict[str, object]) -> list[str]:
    recorded = in_memory_telemetry()
    try:
        await pipeline.build(hooks=recorded.hooks).run(data)
        return recorded.tree(order="name")
    finally:
        recorded.shutdown()


@pytest.mark.anyio
async def test_the_yaml_order_pipeline_gives_the_span_tree_of_its_python_twin() -> None:
    from_file = load_pipeline(EXAMPLES / "order_pipeline.yaml", environ={})
    for index in (0, 1):  # a domestic order, and one that needs customs
        expected = await _tree(build_order_pipeline(), order_input(index))
        assert await _tree(from_file, order_input(index)) == expected
    assert [(s.name, s.kind, s.dependencies, s.conditional) for s in from_file.specs] == [
        (s.name, s.kind, s.dependencies, s.conditional) for s in build_order_pipeline().specs
    ]
    assert "    interceptor retry" in expected


@pytest.mark.anyio
async def test_the_toml_payment_pipeline_gives_the_span_tree_of_its_python_twin() -> None:
    from_file = load_pipeline(EXAMPLES / "payment_pipeline.toml", environ={})
    data = {"order_id": "ord-7", "amount": 12.5}
    expected = await _tree(build_payment_pipeline(), data)
    assert await _tree(from_file, data) == expected
    assert expected[0] == "pipeline.run payment"


@pytest.mark.parametrize(
    "path", sorted([*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("*.toml")]), ids=lambda p: p.name
)
def test_every_shipped_example_loads(path: Path) -> None:
    assert len(load_pipeline(path, environ={})) > 0


def test_a_class_runner_is_instantiated_per_execution_without_args_and_once_with_them(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"""
        name: classes
        stages:
          per_execution:
            runner: {SUPPORT}:Echo
          once:
            runner: {SUPPORT}:Echo
            args: {{}}
          configured:
            runner: {SUPPORT}:Shout
            args: {{times: 2}}
        """,
    )
    per_execution, once, configured = load_pipeline(path, environ={}).specs
    assert per_execution.runner is Echo
    assert isinstance(once.runner, Echo)
    assert isinstance(configured.runner, Shout)
