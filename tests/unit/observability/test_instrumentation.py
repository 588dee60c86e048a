"""Auto-instrumentation: the instrumentor, its switches, its entry point, opentelemetry-instrument."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from stageflow_otel import Pipeline, StageContext
from stageflow_otel.core.extensions import default_extensions
from stageflow_otel.helpers import MockChatModel
from stageflow_otel.observability import StageflowInstrumentor, Telemetry, instrument, uninstrument
from stageflow_otel.observability.instrumentation import EXTENSION_KEY
from stageflow_otel.testing import span_tree

from .support import ok_stage, run_graph

DISABLING = ("OTEL_SDK_DISABLED", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")
SWITCHES = (*DISABLING, "STAGEFLOW_OTEL_SERVE_METRICS", "STAGEFLOW_OTEL_INTERCEPTOR_SPANS")


@pytest.fixture
def clean_instrumentation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No instrumentation before or after the test, whatever the environment says."""
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    uninstrument_quietly()
    try:
        yield
    finally:
        uninstrument_quietly()
        assert default_extensions.get(EXTENSION_KEY) is None


def uninstrument_quietly() -> None:
    instrumentor = StageflowInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


PIPELINE = Pipeline("plain").with_stage("a", ok_stage).with_stage("b", ok_stage, dependencies=["a"])
PLAIN_TREE = ["pipeline.run plain", "  stage.run a", "  stage.run b"]


@pytest.mark.anyio
@pytest.mark.usefixtures("clean_instrumentation")
async def test_instrument_round_trip(provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    registry = CollectorRegistry()
    graph = PIPELINE.build()  # no hooks: the installed extension decides at run time

    telemetry = instrument(tracer_provider=tracer_provider, registry=registry)
    await run_graph(graph)

    assert isinstance(telemetry, Telemetry)
    assert telemetry.registry is registry
    assert span_tree(exporter.get_finished_spans()) == PLAIN_TREE
    runs = {"pipeline": "plain", "status": "ok"}
    assert registry.get_sample_value("stageflow_pipeline_runs_total", runs) == 1.0

    uninstrument()
    exporter.clear()
    await run_graph(graph)
    await run_graph(PIPELINE.build())

    assert exporter.get_finished_spans() == ()
    # Uninstrumenting removes the metrics from the registry, so it can be instrumented again.
    assert registry.get_sample_value("stageflow_pipeline_runs_total", runs) is None
    assert default_extensions.hooks == ()
    # The process-wide provider was never touched.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)

    again = instrument(tracer_provider=tracer_provider, registry=registry)
    await run_graph(graph)
    assert again is not None
    assert again is not telemetry
    assert registry.get_sample_value("stageflow_pipeline_runs_total", runs) == 1.0
    uninstrument()


@pytest.mark.anyio
@pytest.mark.usefixtures("clean_instrumentation")
async def test_instrument_twice_changes_nothing(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    first = instrument(tracer_provider=tracer_provider, registry=CollectorRegistry())
    second = instrument(tracer_provider=tracer_provider, registry=CollectorRegistry())

    await run_graph(PIPELINE.build())

    assert second is first
    assert len(default_extensions.hooks) == 2  # the telemetry's hook and the helpers', once
    assert span_tree(exporter.get_finished_spans()) == PLAIN_TREE


@pytest.mark.anyio
@pytest.mark.usefixtures("clean_instrumentation")
async def test_explicit_empty_hooks_win_over_the_installed_extension(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    instrument(tracer_provider=tracer_provider, registry=CollectorRegistry())

    await run_graph(PIPELINE.build(hooks=[]))
    await run_graph(PIPELINE.build(), hooks=[])

    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "stageflow"),
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "requests, stageflow"),
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "*"),
    ],
)
@pytest.mark.usefixtures("clean_instrumentation")
def test_environment_can_disable_instrumentation(
    monkeypatch: pytest.MonkeyPatch,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)

    telemetry = instrument(tracer_provider=provider[0], registry=CollectorRegistry())

    assert telemetry is None
    assert default_extensions.get(EXTENSION_KEY) is None
    assert default_extensions.hooks == ()


def test_entry_point_is_registered() -> None:
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}

    assert "stageflow" in found
    assert found["stageflow"].load() is StageflowInstrumentor


# -- opentelemetry-instrument ----------------------------------------------------------------

APP = """\
import anyio

from stageflow_otel import Pipeline


async def extract(ctx):
    return {"rows": 3}


async def transform(ctx):
    return {"rows": ctx.inputs.get_from("extract", "rows") * 2}


async def load(ctx):
    return None


pipeline = (
    Pipeline("etl")
    .with_stage("extract", extract)
    .with_stage("transform", transform, dependencies=["extract"])
    .with_stage("load", load, dependencies=["transform"])
)
anyio.run(pipeline.run)
"""

CONFIGURATOR = "stageflow_test"


def opentelemetry_instrument() -> Path:
    path = Path(sys.executable).with_name("opentelemetry-instrument")
    if not path.exists():
        pytest.fail(f"{path} is missing; install the dev extras", pytrace=False)
    return path


def sdk_configurator(directory: Path) -> Path:
    """A distribution whose only content is an ``opentelemetry_configurator`` entry point.

    ``opentelemetry-instrument`` builds the SDK providers from ``OTEL_*`` only through a
    configurator entry point, which ``opentelemetry-distro`` normally provides; its
    configurator is the SDK's own ``_OTelSDKConfigurator``, registered here directly.
    """
    info = directory / "stageflow_otel_test_configurator-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: stageflow-otel-test-configurator\nVersion: 0.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[opentelemetry_configurator]\n{CONFIGURATOR} = "
        "opentelemetry.sdk._configuration:_OTelSDKConfigurator\n"
    )
    return directory


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed: JSON objects starting a line; logs are skipped."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    position = 0
    while (start := stdout.find("{", position)) != -1:
        position = start + 1
        if start and stdout[start - 1] != "\n":
            continue
        try:
            document, position = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict) and "context" in document:
            spans.append(document)
    return spans


def run_instrumented(tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "STAGEFLOW_OTEL_"))
    }
    env.update(
        PYTHONPATH=str(sdk_configurator(tmp_path / "site")),
        OTEL_PYTHON_CONFIGURATOR=CONFIGURATOR,
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="t",
        **extra_env,
    )
    return subprocess.run(
        [str(opentelemetry_instrument()), sys.executable, str(app)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_opentelemetry_instrument_traces_an_uninstrumented_app(tmp_path: Path) -> None:
    done = run_instrumented(tmp_path)

    assert done.returncode == 0, done.stderr
    spans = console_spans(done.stdout)
    by_name = {span["name"]: span for span in spans}
    assert sorted(by_name) == [
        "pipeline.run etl",
        "stage.run extract",
        "stage.run load",
        "stage.run transform",
    ]
    run = by_name["pipeline.run etl"]
    assert run["parent_id"] is None
    assert run["resource"]["attributes"]["service.name"] == "t"
    for name in ("stage.run extract", "stage.run transform", "stage.run load"):
        assert by_name[name]["parent_id"] == run["context"]["span_id"]
        assert by_name[name]["context"]["trace_id"] == run["context"]["trace_id"]
        assert by_name[name]["attributes"]["stageflow.stage.status"] == "ok"


def test_opentelemetry_instrument_respects_disabled_instrumentations(tmp_path: Path) -> None:
    done = run_instrumented(tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="stageflow")

    assert done.returncode == 0, done.stderr
    assert console_spans(done.stdout) == []
    assert "stage.run" not in done.stdout
    assert "pipeline.wide" not in done.stdout  # nothing observed the run at all


@pytest.mark.anyio
@pytest.mark.usefixtures("clean_instrumentation")
async def test_instrumented_pipelines_record_the_helpers_and_can_be_instrumented_again(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    registry = CollectorRegistry()
    model = MockChatModel("gpt-mock", replies=["ok"])

    async def ask(ctx: StageContext) -> dict[str, str]:
        return {"text": (await model.chat([{"role": "user", "content": "hi"}], ctx=ctx)).text}

    labels = {"operation": "chat", "provider": "mock", "model": "gpt-mock", "status": "ok"}
    counted = []
    for _ in range(2):  # the second time on the same registry: everything was unregistered
        instrument(tracer_provider=tracer_provider, registry=registry)
        await run_graph(Pipeline("chat").with_stage("ask", ask).build())
        counted.append(registry.get_sample_value("stageflow_provider_calls_total", labels))
        uninstrument()

    assert (
        span_tree(exporter.get_finished_spans())
        == [
            "pipeline.run chat",
            "  stage.run ask",
            "    chat gpt-mock",
        ]
        * 2
    )
    labels = {"operation": "chat", "provider": "mock", "model": "gpt-mock", "status": "ok"}
    assert registry.get_sample_value("stageflow_provider_calls_total", labels) is None
