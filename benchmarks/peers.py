"""Per-stage cost of stageflow-otel, fully instrumented, against stageflow-core uninstrumented.

Both engines run the same graph: a fan-out of ``--stages`` (default 1,000) independent no-op
stages, each ``async def noop(ctx): return StageOutput.ok()``. Each graph is built once; a timed
run is one ``run()`` of it, preceded by ``gc.collect()``.

Scenarios (each in its own long-lived worker process, warmed up before timing):

- stageflow-otel fully instrumented: ``Telemetry`` with spans through a ``BatchSpanProcessor``
  into an exporter that discards, Prometheus metrics, canonical log lines (structlog left
  unconfigured, as users get it) and lifecycle events exported as OpenTelemetry log records to
  an exporter that discards. The run is timed until ``telemetry.force_flush()`` returns, so
  exporting the run's events counts against it.
- stageflow-otel uninstrumented: ``pipeline.build(hooks=[])``.
- stageflow-core 1.2.0 uninstrumented: ``pipeline.build()`` and ``graph.run(ctx)`` with a fresh
  ``PipelineContext`` (created inside the timed run, as ``Pipeline.run`` does). Its defaults
  wrap every stage in seven interceptors (timeout, idempotency, circuit breaker, tracing stub,
  metrics and logging lines, child-run metrics); this is the baseline. Two more rows remove them:
  one pass-through interceptor (the least its public API allows, since ``interceptors=[]``
  means the defaults) and none at all (the graph's private ``_interceptors`` set to ``[]``).

stageflow-core runs in its own virtual environment, created on first use at
``.bench-venvs/stageflow-core`` (``python -m venv`` + ``pip install stageflow-core==1.2.0``) and
reused afterwards; it is never installed into the project's environment. The parent sends one
"run" to each worker in turn (starting side rotating every round) for ``--runs`` rounds, so
machine noise hits all scenarios alike, and reports medians in µs per stage. Target: fully
instrumented <= 0.75 x stageflow-core uninstrumented. It is a measurement: it exits 0
whatever the ratio. Alongside, it checks that both engines overlap independent stages (50
stages that each sleep 50 ms) and counts what a fully instrumented run exports.

Run: ``make bench-peers`` or ``.venv/bin/python benchmarks/peers.py [--stages N] [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
PEER = "stageflow-core"
PEER_VERSION = "1.2.0"
PEER_VENV = REPO / ".bench-venvs" / PEER
TARGET = 0.75
PROBE_STAGES = 50
PROBE_SLEEP = 0.05

# --------------------------------------------------------------------------------------------
# Worker side: runs under either interpreter, so only the standard library is imported at the
# top; each side imports its engine inside its setup function.
# --------------------------------------------------------------------------------------------

RunOnce = Callable[[], Awaitable[Mapping[str, Any]]]


@dataclass
class Prepared:
    run: RunOnce
    info: dict[str, object]
    probe: RunOnce | None = None  # PROBE_STAGES independent stages that each sleep PROBE_SLEEP
    exported: Callable[[], dict[str, int]] | None = None  # totals so far, after a flush


async def _ours(stages: int, instrumented: bool) -> Prepared:
    from collections.abc import Sequence

    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from prometheus_client import CollectorRegistry

    from stageflow_otel import Pipeline, StageContext, StageOutput, __version__
    from stageflow_otel.observability import Telemetry

    class NullSpanExporter(SpanExporter):
        exported = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    class NullLogExporter(LogRecordExporter):
        exported = 0

        def export(self, batch: Sequence[object]) -> LogRecordExportResult:
            self.exported += len(batch)
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    async def noop(ctx: StageContext) -> StageOutput:
        return StageOutput.ok()

    async def sleeper(ctx: StageContext) -> StageOutput:
        await asyncio.sleep(PROBE_SLEEP)
        return StageOutput.ok()

    def fan_out(n: int, runner: Callable[[StageContext], Awaitable[StageOutput]]) -> Pipeline:
        pipeline = Pipeline("fanout")
        for i in range(n):
            pipeline = pipeline.with_stage(f"s{i}", runner)
        return pipeline

    info: dict[str, object] = {"version": __version__, "python": platform.python_version()}
    pipeline = fan_out(stages, noop)
    if not instrumented:
        graph = pipeline.build(hooks=[])
        probe = fan_out(PROBE_STAGES, sleeper).build(hooks=[])

        async def run_bare() -> Mapping[str, Any]:
            return await graph.run()

        async def run_probe() -> Mapping[str, Any]:
            return await probe.run()

        return Prepared(run_bare, info, run_probe)

    spans = NullSpanExporter()
    events = NullLogExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(spans, max_queue_size=200_000))
    telemetry = Telemetry(
        tracer_provider=provider,
        registry=CollectorRegistry(),
        canonical_logs=True,
        event_exporter=events,
        sink_options={"max_queue_size": 8192},
    )
    full = pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink)

    async def run_full() -> Mapping[str, Any]:
        results = await full.run()
        telemetry.force_flush()
        return results

    def exported() -> dict[str, int]:
        provider.force_flush()
        telemetry.force_flush()
        return {"spans": spans.exported, "log records": events.exported}

    return Prepared(run_full, info, exported=exported)


async def _core(stages: int, interceptors: str) -> Prepared:
    # stageflow-core is not installed in the project's environment: reach it untyped.
    sf: Any = importlib.import_module("stageflow")
    from importlib.metadata import version

    stage_output: Any = sf.StageOutput
    pipeline_context: Any = sf.PipelineContext

    async def noop(ctx: Any) -> Any:
        return stage_output.ok()

    async def sleeper(ctx: Any) -> Any:
        await asyncio.sleep(PROBE_SLEEP)
        return stage_output.ok()

    def fan_out(n: int, runner: Callable[[Any], Awaitable[Any]]) -> Any:
        pipeline = sf.Pipeline("fanout")
        for i in range(n):
            # A plain function has no ``kind`` attribute, which stageflow-core then requires.
            pipeline = pipeline.with_stage(f"s{i}", runner, sf.StageKind.TRANSFORM)
        return pipeline

    info: dict[str, object] = {"version": version(PEER), "python": platform.python_version()}
    pipeline = fan_out(stages, noop)
    run_probe: RunOnce | None = None
    if interceptors == "default":
        graph = pipeline.build()
        info["interceptors"] = [i.name for i in graph._interceptors]
        probe = fan_out(PROBE_STAGES, sleeper).build()

        async def run_probe() -> Mapping[str, Any]:
            results: Mapping[str, Any] = await probe.run(pipeline_context.create(topology="p"))
            return results

    elif interceptors == "one":

        async def before(self: Any, stage_name: str, ctx: Any) -> None:
            return None

        async def after(self: Any, stage_name: str, result: Any, ctx: Any) -> None:
            return None

        pass_through = type(
            "PassThrough",
            (sf.BaseInterceptor,),
            {"name": "pass_through", "priority": 100, "before": before, "after": after},
        )
        graph = pipeline.build(interceptors=[pass_through()])
    else:
        graph = pipeline.build()
        graph._interceptors = []

    async def run_once() -> Mapping[str, Any]:
        results: Mapping[str, Any] = await graph.run(pipeline_context.create(topology="fanout"))
        return results

    return Prepared(run_once, info, run_probe)


SIDES: dict[str, Callable[[int], Awaitable[Prepared]]] = {
    "ours-full": lambda n: _ours(n, instrumented=True),
    "ours-bare": lambda n: _ours(n, instrumented=False),
    "core-default": lambda n: _core(n, "default"),
    "core-one": lambda n: _core(n, "one"),
    "core-none": lambda n: _core(n, "none"),
}


def worker(side: str, stages: int, warmup: int) -> None:
    """Build once, warm up, print an info line; then one timed run per "run" line on stdin.

    A "probe" line times one run of the probe pipeline instead (a concurrency check).
    """
    protocol = sys.stdout
    sys.stdout = sys.stderr  # anything else printed must not corrupt the protocol
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    prepared = loop.run_until_complete(SIDES[side](stages))

    async def timed(run: RunOnce) -> float:
        start = time.perf_counter()
        await run()
        return time.perf_counter() - start

    for _ in range(warmup):
        results = loop.run_until_complete(prepared.run())
        ok = sum(1 for output in results.values() if output.status == "ok")
        if len(results) != stages or ok != stages:
            raise SystemExit(f"{side}: {ok} of {len(results)} results OK, expected {stages}")
    if prepared.exported is not None:
        totals = prepared.exported()
        prepared.info["exported per run"] = {k: v / warmup for k, v in totals.items()}
    protocol.write(json.dumps(prepared.info) + "\n")
    protocol.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            run = prepared.run
        elif command == "probe" and prepared.probe is not None:
            run = prepared.probe
        else:
            break
        gc.collect()
        elapsed = loop.run_until_complete(timed(run))
        protocol.write(f"{elapsed!r}\n")
        protocol.flush()
    loop.close()


# --------------------------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version({PEER!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def peer_python() -> Path:
    """The peer environment's interpreter, creating or repairing the environment if needed."""
    python = _venv_python(PEER_VENV)
    if _installed_version(python) == PEER_VERSION:
        return python
    runs = python.exists() and (
        subprocess.run([str(python), "-c", "pass"], capture_output=True, check=False).returncode
        == 0
    )
    if not runs:
        print(f"creating {PEER_VENV} (first run only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    print(f"installing {PEER}=={PEER_VERSION} into {PEER_VENV}", file=sys.stderr)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{PEER}=={PEER_VERSION}",
        ],
        check=True,
    )
    found = _installed_version(python)
    if found != PEER_VERSION:
        raise SystemExit(f"{PEER_VENV}: expected {PEER} {PEER_VERSION}, found {found}")
    return python


@dataclass(frozen=True)
class Scenario:
    side: str
    label: str
    python: Path


class Worker:
    def __init__(self, scenario: Scenario, stages: int, warmup: int) -> None:
        self.scenario = scenario
        self.proc = subprocess.Popen(
            [
                str(scenario.python),
                "-I",  # no PYTHON* variables, no user site, no script directory on sys.path
                str(SCRIPT),
                "--worker",
                scenario.side,
                "--stages",
                str(stages),
                "--warmup",
                str(warmup),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def _read(self) -> str:
        line = self._pipes()[1].readline()
        if not line:
            code = self.proc.wait()
            raise SystemExit(f"{self.scenario.label}: worker exited with code {code}")
        return line

    def ready(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self._read())
        return info

    def run(self, command: str = "run") -> float:
        stdin = self._pipes()[0]
        stdin.write(command + "\n")
        stdin.flush()
        return float(self._read())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._pipes()[0].close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stages", type=int, default=1000, help="fan-out width (default 1000)")
    parser.add_argument("--runs", type=int, default=25, help="timed rounds (default 25)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per worker first")
    parser.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stages < 1 or args.runs < 1 or args.warmup < 1:
        parser.error("--stages, --runs and --warmup must be at least 1")
    if args.worker:
        worker(args.worker, args.stages, args.warmup)
        return 0

    if importlib.util.find_spec("stageflow_otel") is None:
        parser.error("run with the project's environment: .venv/bin/python benchmarks/peers.py")
    ours = Path(sys.executable)
    theirs = peer_python()
    baseline = "core-default"
    scenarios = [
        Scenario("ours-full", "stageflow-otel, fully instrumented", ours),
        Scenario("ours-bare", "stageflow-otel, uninstrumented (hooks=[])", ours),
        Scenario(baseline, "stageflow-core, uninstrumented (default interceptors)", theirs),
        Scenario("core-one", "stageflow-core, 1 pass-through interceptor", theirs),
        Scenario("core-none", "stageflow-core, no interceptors (private attr)", theirs),
    ]

    workers = [Worker(s, args.stages, args.warmup) for s in scenarios]
    try:
        infos = {w.scenario.side: w.ready() for w in workers}
        by_side = {w.scenario.side: w for w in workers}
        # Fastest of three, each worker alone on the machine: n sleeps of PROBE_SLEEP take about
        # PROBE_SLEEP if the stages really overlap, n x PROBE_SLEEP if they run one by one.
        probe_ms = {
            side: min(by_side[side].run("probe") for _ in range(3)) * 1000
            for side in ("ours-bare", baseline)
        }
        samples: dict[str, list[float]] = {s.side: [] for s in scenarios}
        for round_ in range(args.runs):
            k = round_ % len(workers)
            for w in workers[k:] + workers[:k]:
                samples[w.scenario.side].append(w.run() / args.stages * 1e6)
    finally:
        for w in workers:
            w.close()

    medians = {side: statistics.median(values) for side, values in samples.items()}
    base = medians[baseline]
    width = max(len(s.label) for s in scenarios)
    print(
        f"{args.stages}-stage fan-out of no-op stages; median of {args.runs} alternated runs "
        "per scenario"
    )
    print()
    print(f"{'scenario':<{width}}  {'µs/stage':>8}  {'p25-p75':>13}  {'vs core':>7}")
    for s in scenarios:
        values = samples[s.side]
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        spread = f"{q[0]:.1f}-{q[2]:.1f}"
        print(
            f"{s.label:<{width}}  {medians[s.side]:8.2f}  {spread:>13}  {medians[s.side] / base:7.2f}"
        )
    print()
    core = infos[baseline]
    print(f"stageflow-core default interceptors: {', '.join(core['interceptors'])}")
    print(
        f"concurrency check ({PROBE_STAGES} stages sleeping {PROBE_SLEEP * 1000:.0f} ms each): "
        f"stageflow-otel {probe_ms['ours-bare']:.0f} ms, stageflow-core {probe_ms[baseline]:.0f} ms"
    )
    per_run = infos["ours-full"]["exported per run"]
    print(
        "fully instrumented run exports "
        + ", ".join(f"{v:.0f} {k}" for k, v in per_run.items())
        + " (discarded by null exporters)"
    )
    print(
        f"python {infos['ours-full']['python']} (stageflow-core venv: {core['python']}), "
        f"stageflow-otel {infos['ours-full']['version']}, stageflow-core {core['version']}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print(f"uninstrumented / stageflow-core uninstrumented = {medians['ours-bare'] / base:.2f}")
    print(
        "fully instrumented / stageflow-core without interceptors = "
        f"{medians['ours-full'] / medians['core-none']:.2f}"
    )
    print(
        f"fully instrumented / stageflow-core uninstrumented = {medians['ours-full'] / base:.2f} "
        f"(target <= {TARGET:.2f})"
    )
    paired = statistics.median(
        full / core for full, core in zip(samples["ours-full"], samples[baseline], strict=True)
    )
    print(f"  (median of the {args.runs} per-round ratios: {paired:.2f}; less sensitive to load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
