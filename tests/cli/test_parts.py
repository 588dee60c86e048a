"""The CLI's parts in-process: example, trace files, timeline, board, tree, loader, telemetry."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from stageflow_otel import Pipeline, StageOutput
from stageflow_otel.cli import main
from stageflow_otel.cli._errors import CommandFailed, UsageError
from stageflow_otel.cli._loader import as_graph, as_pipeline, load_data, load_target
from stageflow_otel.cli._render import (
    BoardSink,
    RunSummary,
    StageBoard,
    render_trace_tree,
    summary_line,
)
from stageflow_otel.cli._session import TelemetryStack, service_resource
from stageflow_otel.cli._timeline import _guides, _nice_step, render_timeline
from stageflow_otel.cli._tracefile import (
    SpanRecord,
    depth_first,
    group_by_trace,
    read_trace_file,
    record_of,
    write_trace_file,
)
from stageflow_otel.core import CollectingEventSink, FanOutEventSink, RunIdentity
from stageflow_otel.demo import (
    build_order_pipeline,
    example_stage_names,
    order_input,
)
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    recorded = in_memory_telemetry(canonical_logs=False)
    yield recorded
    recorded.shutdown()


def _has_block(lines: list[str], block: list[str]) -> bool:
    return any(lines[i : i + len(block)] == block for i in range(len(lines)))


# -- the example pipeline ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_example_runs_on_every_backend(telemetry: InMemoryTelemetry) -> None:
    results = await build_order_pipeline().build(hooks=telemetry.hooks).run(order_input(0))
    assert results.ok
    assert results.attempts("quote_shipping") == 2
    assert results["customs_declaration"].status.value == "skip"
    assert results.data("reserve_stock")["units"] == 3
    assert results.data("charge_payment")["amount"] == results.data("price_order")["total"]
    preview = results.data("send_confirmation")["preview"]
    assert "[EMAIL]" in preview
    assert "@example.com" not in preview
    tree = telemetry.tree()
    assert tree[:2] == ["pipeline.run order_fulfilment", "  stage.run load_order"]
    assert len(tree) == 21
    assert _has_block(
        tree,
        [
            "  stage.run quote_shipping",
            "    interceptor retry",
            "      interceptor timeout",
            "      interceptor timeout",
        ],
    )
    assert _has_block(tree, ["  stage.run reserve_stock", "    execute_tool reserve_inventory"])
    assert _has_block(
        tree,
        [
            "  stage.run charge_payment",
            "    subpipeline.run payment",
            "      pipeline.run payment",
            "        stage.run authorize_payment",
            "        stage.run capture_payment",
        ],
    )
    assert tree[-1] == "  stage.run send_confirmation"
    assert sorted(
        str((s.attributes or {})["stageflow.stage.name"])
        for s in telemetry.spans()
        if s.name.startswith("stage.run")
    ) == sorted(example_stage_names())


@pytest.mark.anyio
async def test_international_orders_file_a_customs_declaration() -> None:
    results = await build_order_pipeline().run(order_input(1), hooks=[])
    assert order_input(1)["country"] == "DE"
    assert results["customs_declaration"].status.value == "ok"
    assert results.data("quote_shipping")["carrier"] == "DHL"


def test_the_example_and_its_re_export_import_no_telemetry_library() -> None:
    code = (
        "import json, sys\n"
        "import stageflow_otel.demo, examples.order_pipeline\n"
        "names = ('opentelemetry', 'prometheus_client', 'structlog', 'rich')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(names))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert json.loads(out.stdout) == []


# -- trace files ------------------------------------------------------------------------------


@pytest.fixture
def recorded(telemetry: InMemoryTelemetry) -> list[SpanRecord]:
    import anyio

    graph = build_order_pipeline().build(hooks=telemetry.hooks)
    for index in range(2):
        anyio.run(functools.partial(graph.run, order_input(index), entry_point=True))
    return [record_of(span) for span in telemetry.spans()]


def test_trace_files_round_trip(recorded: list[SpanRecord], tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    assert write_trace_file(path, recorded) == 42
    back = read_trace_file(path)
    assert sorted(back, key=lambda r: r.span_id) == sorted(recorded, key=lambda r: r.span_id)
    assert [r.start_ns for r in back] == sorted(r.start_ns for r in back)


def test_span_records_know_their_outcome(recorded: list[SpanRecord]) -> None:
    by_name = {r.name: r for r in recorded}
    assert by_name["stage.run customs_declaration"].outcome in ("skip", "ok")  # skip in run 1
    skipped = [r for r in recorded if r.attributes.get("stageflow.stage.status") == "skip"]
    assert [r.outcome for r in skipped] == ["skip"]
    assert {r.outcome for r in recorded if r not in skipped} == {"ok"}
    assert SpanRecord("x", "t", "s", None, 0, 1, status="error").outcome == "error"
    cancelled = SpanRecord("x", "t", "s", None, 0, 1, attributes={"stageflow.run.status": "cancel"})
    assert cancelled.outcome == "cancel"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no spans"),
        ("not json\n", "trace.jsonl:1: not JSON"),
        ("[1]\n", "trace.jsonl:1: expected a JSON object per line, got list"),
        ('{"name": "a"}\n', "trace.jsonl:1: not a span record, missing trace_id"),
        (
            '{"name":"a","trace_id":"t","span_id":"s","start_ns":"x","end_ns":1}\n',
            "trace.jsonl:1: malformed span record",
        ),
    ],
)
def test_reading_a_bad_trace_file_is_a_usage_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as raised:
        read_trace_file(path)
    assert message in str(raised.value)


def test_depth_first_puts_parents_first_and_orphans_at_the_root() -> None:
    records = [
        SpanRecord("child-late", "t", "c2", "root", 30, 40),
        SpanRecord("root", "t", "root", None, 0, 100),
        SpanRecord("child-early", "t", "c1", "root", 10, 20),
        SpanRecord("grandchild", "t", "g", "c1", 11, 12),
        SpanRecord("orphan", "t", "o", "missing", 50, 60),
    ]
    assert [(r.name, depth) for r, depth in depth_first(records)] == [
        ("root", 0),
        ("child-early", 1),
        ("grandchild", 2),
        ("child-late", 1),
        ("orphan", 0),
    ]


def test_group_by_trace_orders_traces_by_start() -> None:
    records = [SpanRecord("b", "t2", "2", None, 50, 60), SpanRecord("a", "t1", "1", None, 10, 20)]
    assert [[r.name for r in group] for group in group_by_trace(records)] == [["a"], ["b"]]


# -- the timeline -----------------------------------------------------------------------------


def test_the_timeline_has_one_bar_per_span_and_no_external_resources(
    recorded: list[SpanRecord],
) -> None:
    html = render_timeline(recorded, title="order <timeline>")
    assert html.count('class="bar ') == len(recorded)
    assert html.count('<section class="trace"') == 2
    assert "order &lt;timeline&gt;" in html
    assert "<script" not in html
    assert "http://" not in html
    assert "https://" not in html
    assert html.count('class="marker"') == 2  # one retry event per run


def test_tree_guides_mark_the_last_child() -> None:
    walk = [
        (SpanRecord("r", "t", "r", None, 0, 9), 0),
        (SpanRecord("a", "t", "a", "r", 0, 1), 1),
        (SpanRecord("a1", "t", "a1", "a", 0, 1), 2),
        (SpanRecord("b", "t", "b", "r", 2, 3), 1),
        (SpanRecord("b1", "t", "b1", "b", 2, 3), 2),
    ]
    assert _guides(walk) == [
        "",
        "&#x251c; ",
        "&#x2502; &#x2514; ",
        "&#x2514; ",
        "&#xa0; &#x2514; ",
    ]


@pytest.mark.parametrize(
    ("span_ms", "step"), [(84.0, 20.0), (43.6, 10.0), (1.0, 0.2), (2500.0, 500.0), (0.0, 1.0)]
)
def test_axis_steps_are_round_numbers(span_ms: float, step: float) -> None:
    assert _nice_step(span_ms) == pytest.approx(step)


# -- the board and the tree -------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_board_follows_the_events_of_a_run(telemetry: InMemoryTelemetry) -> None:
    graph = build_order_pipeline().build()
    board = StageBoard(graph.name, graph.stage_names, runs=1)
    board.start_run(1)
    collected = CollectingEventSink()
    await graph.run(
        order_input(0),
        hooks=telemetry.hooks,
        event_sink=FanOutEventSink([BoardSink(board), collected]),
    )
    rows = {row.label: row for row in board._rows.values()}
    assert {label: row.status for label, row in rows.items()} == {
        **dict.fromkeys(graph.stage_names, "ok"),
        "customs_declaration": "skip",
        "payment / authorize_payment": "ok",
        "payment / capture_payment": "ok",
    }
    order = [board._rows[key].label for key in board._order]
    charge = order.index("charge_payment")
    assert order[charge + 1 : charge + 3] == [
        "payment / authorize_payment",
        "payment / capture_payment",
    ]
    assert rows["quote_shipping"].attempt == 2
    assert rows["quote_shipping"].note == "succeeded on attempt 2"
    assert rows["reserve_stock"].note == "tool reserve_inventory"
    assert (board.retries, board.tool_calls, board.subpipelines) == (1, 1, 1)
    console = Console(width=120, record=True)
    console.print(board.render())
    text = console.export_text()
    assert "run 1/1" in text
    assert "payment / capture_payment" in text


def test_summary_lines_say_what_a_run_did() -> None:
    ok = RunSummary(1, 3, "ok", 84.2, {"ok": 11, "skip": 1}, 1, 1, 1, "ab" * 16)
    assert summary_line(ok).plain == (
        f"✔ run 1/3  ok      84.2 ms   12 stages (11 ok, 1 skip) · 1 retry · 1 tool call · "
        f"1 subpipeline   trace {'ab' * 16}"
    )
    failed = RunSummary(4, None, "fail", 1.0, {"fail": 1}, error="stage 'x' failed: boom")
    assert summary_line(failed).plain == (
        "✘ run 4  fail     1.0 ms   1 stages (1 fail)\n    stage 'x' failed: boom"
    )


def test_the_tree_shows_spans_events_and_skips(recorded: list[SpanRecord]) -> None:
    last = group_by_trace(recorded)[-1]
    console = Console(width=200, record=True)
    console.print(render_trace_tree(last))
    text = console.export_text()
    lines = text.splitlines()
    assert lines[0].startswith("pipeline.run order_fulfilment")
    assert "SERVER" in lines[0]
    assert any("◆ stageflow.stage.retry" in line for line in lines)
    assert sum("stage.run " in line for line in lines) == len(example_stage_names())
    console = Console(width=200, record=True)
    console.print(render_trace_tree([]))
    assert "no spans were recorded" in console.export_text()


# -- the loader -------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_pipes_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from stageflow_otel import Pipeline

            async def a(ctx):
                return None

            class Holder:
                pipeline = Pipeline("nested").with_stage("a", a)

            pipeline = Pipeline("p").with_stage("a", a)
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_load_target_finds_nested_attributes(user_module: str) -> None:
    target = load_target(f"{user_module}:Holder.pipeline")
    assert isinstance(target, Pipeline)
    assert target.name == "nested"
    graph = as_graph(target)
    assert as_graph(graph) is graph
    assert as_pipeline(graph).to_dot() == target.to_dot()


def test_invalid_pipelines_fail_the_command() -> None:
    async def a(ctx: object) -> None:
        return None

    with pytest.raises(CommandFailed) as info:
        as_graph(Pipeline("p").with_stage("a", a, dependencies=["ghost"]))
    # The validation error names the pipeline already; the command does not say it twice.
    assert str(info.value).startswith("stage 'a' depends on 'ghost', which is not in pipeline 'p'")
    with pytest.raises(CommandFailed) as info:
        as_graph(Pipeline("p").with_stage("a", a, dependencies=["a"]))
    assert str(info.value).startswith("pipeline 'p' is invalid: stage 'a' depends on itself")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, {}), ('{"a": 1}', {"a": 1}), ("{}", {})],
)
def test_load_data(text: str | None, expected: dict[str, object]) -> None:
    assert load_data(text) == expected


# -- telemetry of the CLI ---------------------------------------------------------------------


def test_the_service_name_comes_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_resource("dflt").attributes["service.name"] == "dflt"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,team=x")
    resource = service_resource("dflt")
    assert resource.attributes["service.name"] == "from-attrs"
    assert resource.attributes["team"] == "x"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-name")
    assert service_resource("dflt").attributes["service.name"] == "from-name"


def test_an_explicit_busy_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fallback of a busy default port is covered end to end in test_demo.py.
    monkeypatch.delenv("STAGEFLOW_OTEL_METRICS_ADDR", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = TelemetryStack(service_name="t", otlp_endpoint=None)
        try:
            with pytest.raises(UsageError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
                stack.serve_metrics(port, None)
            assert stack.server is None
        finally:
            stack.shutdown()


def test_an_invalid_port_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STAGEFLOW_OTEL_METRICS_PORT", "ninety")
    with pytest.raises(UsageError, match="STAGEFLOW_OTEL_METRICS_PORT='ninety' is not an"):
        TelemetryStack(service_name="t", otlp_endpoint=None)


def test_the_run_identity_reaches_the_spans(telemetry: InMemoryTelemetry) -> None:
    import anyio

    graph = Pipeline("p").with_stage("a", lambda ctx: StageOutput.ok()).build()
    identity = RunIdentity(request_id="demo-1")
    anyio.run(lambda: graph.run(identity=identity, hooks=telemetry.hooks, entry_point=True))
    root = telemetry.span("pipeline.run p")
    assert root.attributes is not None
    assert root.attributes["stageflow.request.id"] == "demo-1"


def test_main_prints_the_graph_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR\n")
    assert out.count(" --> ") == sum(len(s.dependencies) for s in build_order_pipeline().specs)


def test_main_returns_2_for_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--format", "svg"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_example_documents_its_stages_truthfully() -> None:
    from stageflow_otel import demo as _example

    doc = _example.__doc__ or ""
    table = doc.split("depends on\n", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for line in table.splitlines():
        name, kind, deps = line.split(maxsplit=2)
        deps = deps.replace(" (conditional)", "")
        documented[name] = (kind, () if deps == "-" else tuple(deps.split(", ")))
    assert documented == {
        spec.name: (spec.kind.value, spec.dependencies) for spec in build_order_pipeline().specs
    }
    assert [s.name for s in build_order_pipeline().specs if s.conditional] == [
        "customs_declaration"
    ]
