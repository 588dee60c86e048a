"""``run FILE``, ``graph FILE``, ``validate`` and ``plugins``, in a subprocess."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from stageflow_otel.cli._files import PIPELINE_FILE_SUFFIXES
from stageflow_otel.pipeline_files import SUFFIXES
from tests.cli.support import REPO_ROOT, run_cli, stderr_lines

EXAMPLES = sorted(
    str(path.relative_to(REPO_ROOT))
    for pattern in ("examples/*.yaml", "examples/*.yml", "examples/*.toml")
    for path in REPO_ROOT.glob(pattern)
)
ORDER = {"order_id": "ord-7", "customer_id": "cust-1", "country": "DE",
         "items": [{"sku": "SKU-MUG", "qty": 2}]}  # fmt: skip

BROKEN = """\
name: broken
stages:
  fetch:
    runner: no_such_package.stages:fetch
    timout: 5
  greet:
    runner: stageflow_otel.demo:load_order
    kind: greeting
"""


def test_the_command_line_knows_the_pipeline_file_suffixes() -> None:
    assert PIPELINE_FILE_SUFFIXES == SUFFIXES


def test_validate_passes_every_shipped_example() -> None:
    assert len(EXAMPLES) >= 2
    result = run_cli("validate", *EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == EXAMPLES
    assert all(": ok (pipeline " in line for line in result.stdout.splitlines())


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    (tmp_path / "cyclic.toml").write_text(
        textwrap.dedent(
            """\
            name = "cyclic"
            [stages.a]
            runner = "stageflow_otel.demo:load_order"
            after = ["b"]
            [stages.b]
            runner = "stageflow_otel.demo:load_order"
            after = ["a"]
            """
        ),
        encoding="utf-8",
    )
    example = str(REPO_ROOT / "examples" / "payment_pipeline.toml")
    result = run_cli("validate", "broken.yaml", example, "cyclic.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{example}: ok (pipeline 'payment', 2 stages)",
        (
            "broken.yaml:5:5: stages.fetch.timout: unknown key 'timout'. Fix: did you mean "
            "'timeout'? (allowed: after, args, conditional, dependencies, interceptors, kind, "
            "runner, timeout)"
        ),
        (
            "broken.yaml:8:11: stages.greet.kind: 'greeting' is not one of transform, enrich, "
            "route, guard, work, agent. Fix: use one of transform, enrich, route, guard, work, "
            "agent"
        ),
        (
            "cyclic.toml:7:1: stages.b.after: pipeline 'cyclic' has a dependency cycle: "
            "b -> a -> b. Fix: remove one of these dependencies so that the stages form a DAG"
        ),
    ]
    assert stderr_lines(result) == ["3 problems in 2 of 3 files"]
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_prints_the_effective_configuration(tmp_path: Path) -> None:
    result = run_cli(
        "validate",
        "examples/order_pipeline.yaml",
        "--print-config",
        "--set",
        "quote_shipping.timeout=3",
        env={
            "ORDER_QUOTE_TIMEOUT": "0.75",
            "STAGEFLOW_OTEL_PIPELINE__ORDER_FULFILMENT__MAX_CONCURRENCY": "4",
        },
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)["examples/order_pipeline.yaml"]
    assert config["max_concurrency"] == 4
    quote = config["stages"]["quote_shipping"]
    assert quote["timeout"] == 3
    assert quote["interceptors"][1] == {"timeout": 0.75}


def test_run_a_pipeline_file_records_its_source(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "run",
        "examples/order_pipeline.yaml",
        "--data",
        json.dumps(ORDER),
        "--set",
        "max_concurrency=2",
        "--metrics-port",
        "0",
        "--out",
        str(out),
        "--no-live",
    )
    assert result.returncode == 0, result.stderr
    spans = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    run = next(s for s in spans if s["name"] == "pipeline.run order_fulfilment")
    assert run["attributes"]["stageflow.pipeline.source"] == "examples/order_pipeline.yaml"
    assert run["attributes"]["stageflow.run.status"] == "ok"
    assert {s["name"] for s in spans} >= {"stage.run customs_declaration", "pipeline.run payment"}


def test_run_and_graph_refuse_a_broken_file_listing_its_problems(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    for command in (["run", "broken.yaml", "--metrics-port", "0"], ["graph", "broken.yaml"]):
        result = run_cli(*command, cwd=tmp_path)
        assert result.returncode == 2
        assert stderr_lines(result) == [
            (
                "broken.yaml:5:5: stages.fetch.timout: unknown key 'timout'. Fix: did you mean "
                "'timeout'? (allowed: after, args, conditional, dependencies, interceptors, kind, "
                "runner, timeout)"
            ),
            (
                "broken.yaml:8:11: stages.greet.kind: 'greeting' is not one of transform, enrich, "
                "route, guard, work, agent. Fix: use one of transform, enrich, route, guard, work, "
                "agent"
            ),
            "stageflow-otel: error: pipeline file broken.yaml has 2 problems (listed above)",
        ]


def test_graph_of_the_yaml_file_is_the_graph_of_its_python_twin() -> None:
    from_file = run_cli("graph", "examples/order_pipeline.yaml", "--format", "mermaid")
    in_code = run_cli("graph", "stageflow_otel.demo:build_order_pipeline", "--format", "mermaid")
    assert from_file.returncode == in_code.returncode == 0
    assert from_file.stdout == in_code.stdout
    assert "quote_shipping (enrich)" in from_file.stdout


@pytest.mark.parametrize("command", ["run", "graph"])
def test_set_needs_a_pipeline_file(command: str) -> None:
    result = run_cli(command, "stageflow_otel.demo:build_order_pipeline", "--set", "a.b=1")
    assert result.returncode == 2
    assert "--set overrides values of a pipeline file" in result.stderr


def test_plugins_lists_every_group() -> None:
    result = run_cli("plugins")
    assert result.returncode == 0
    headers = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert headers == [
        "stageflow_otel.stages",
        "stageflow_otel.interceptors",
        "stageflow_otel.sinks",
    ]


def test_schema_prints_the_shipped_schema() -> None:
    from stageflow_otel.pipeline_files import schema

    result = run_cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == schema()
