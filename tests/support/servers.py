"""Start real observability servers on 127.0.0.1 for tests, and stop them by PID.

Each ``start_*`` function is a context manager that writes its own configuration under
a directory the caller owns (usually ``tmp_path``), binds every listener to 127.0.0.1
on free ports, waits until the server is ready and terminates that one process on exit.
They compose into pytest fixtures::

    @pytest.fixture
    def jaeger(tmp_path: Path) -> Iterator[JaegerServer]:
        with start_jaeger(tmp_path / "jaeger") as server:
            yield server

Binaries: ``jaeger`` and ``otelcol`` come from the build cache that
``scripts/build-components.sh`` fills (``$STAGEFLOW_OTEL_CACHE/bin``, default
``~/.cache/stageflow-otel/bin``); ``prometheus``, ``promtool`` and ``redis-server`` from ``PATH``,
``postgres`` and ``initdb`` from ``/usr/lib/postgresql/<version>/bin``
(``scripts/ensure-system-deps.sh``). :func:`require_binary` skips a test when one is
missing on a developer machine and fails it under CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_CONFIG = REPO_ROOT / "otel-collector.yaml"
JAEGER_CONFIG = REPO_ROOT / "ops" / "jaeger-local.yaml"

# How the missing binaries are provided, for skip/fail messages.
_INSTALL_HINTS = {
    "jaeger": "run scripts/build-components.sh",
    "otelcol": "run scripts/build-components.sh",
    "prometheus": "run scripts/ensure-system-deps.sh (Debian package prometheus)",
    "promtool": "run scripts/ensure-system-deps.sh (Debian package prometheus)",
    "redis-server": "run scripts/ensure-system-deps.sh (Debian package redis-server)",
    "postgres": "run scripts/ensure-system-deps.sh (Debian package postgresql)",
}
_CACHED_COMPONENTS = frozenset({"jaeger", "otelcol"})

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Tail sampling's decision_wait for tests: a trace reaches Jaeger about this long after
# its first span reaches the collector.
TEST_DECISION_WAIT = "1s"


# --------------------------------------------------------------------------- binaries


def cache_dir() -> Path:
    """The build cache outside the repository (``$STAGEFLOW_OTEL_CACHE``)."""
    configured = os.environ.get("STAGEFLOW_OTEL_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "stageflow-otel"


def in_ci() -> bool:
    """Whether the tests run under CI, where a missing component is an error."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_binary(name: str) -> Path | None:
    """Locate ``jaeger``/``otelcol`` in the build cache, anything else on ``PATH``."""
    if name in _CACHED_COMPONENTS:
        candidate = cache_dir() / "bin" / name
        return candidate if os.access(candidate, os.X_OK) else None
    if name in ("postgres", "initdb"):
        # Debian keeps the server's binaries off PATH, one directory per major version.
        versions = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        if versions and os.access(versions[-1], os.X_OK):
            return versions[-1]
    found = shutil.which(name)
    return Path(found) if found else None


def require_binary(name: str) -> Path:
    """Return the binary's path; fail under CI and skip elsewhere when it is missing."""
    path = find_binary(name)
    if path is not None:
        return path
    hint = _INSTALL_HINTS.get(name, "install it")
    message = f"{name} not found ({hint})"
    if in_ci():
        pytest.fail(f"{message}; CI must provide every component", pytrace=False)
    pytest.skip(message)


# --------------------------------------------------------------------------- polling


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' source ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, and not handed out before.

    Chosen below the kernel's ephemeral range: a port the kernel picks for ``bind(0)`` is in
    that range, where any outgoing connection may take it before the server binds it.
    """
    low, high = 15000, _ephemeral_ports()[0] - 1
    for _ in range(200 if high > low else 0):
        port = random.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    *,
    what: str = "condition",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    ``OSError`` (refused connections, HTTP errors from :mod:`urllib`, resets) counts as
    "not yet". Raises :class:`TimeoutError` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            result = predicate()
        except OSError as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"{what} not reached within {timeout:.1f} s{detail}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def http_get(url: str, *, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> bytes:
    """GET ``url`` and return the body; non-2xx answers raise ``urllib.error.HTTPError``.

    The error is closed before it is raised (its ``code`` and ``headers`` stay readable): an
    open one holds its socket until garbage collection, and the ``ResourceWarning`` that
    follows fails the test that happens to be running.
    """
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        exc.close()
        raise


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 2xx."""
    http_get(url, timeout=1.0)
    return True


def get_json(url: str, params: Mapping[str, str] | None = None) -> Any:
    """GET ``url`` (with query ``params``) and decode the JSON answer."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    return json.loads(http_get(url))


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ManagedProcess:
    """A server process started by this module, with its combined stdout/stderr log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def check_running(self) -> bool:
        """True while running; raises with the log tail once the process has exited."""
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.log_text().splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited with code {code}:\n{tail}")
        return True


@contextlib.contextmanager
def run_process(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> Iterator[ManagedProcess]:
    """Run ``argv`` with output to ``log_path``; terminate (then kill) that PID on exit.

    ``user``: run it as that user (only root may ask).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            user=user,
        )
    managed = ManagedProcess(name=name, process=process, log_path=log_path)
    try:
        yield managed
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Terminate one process by PID, kill it if it outlives ``timeout``, and reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _wait_ready(managed: ManagedProcess, ready: Callable[[], bool], what: str) -> None:
    def check() -> bool:
        managed.check_running()
        return ready()

    wait_until(check, START_TIMEOUT, 0.05, what=f"{managed.name}: {what}")


# --------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class PrometheusServer:
    """A Prometheus on 127.0.0.1 with exemplar storage on."""

    url: str
    config_path: Path
    managed: ManagedProcess

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the ``result`` list of ``/api/v1/query``."""
        answer = get_json(f"{self.url}/api/v1/query", {"query": promql})
        if answer.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for_series(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns at least one series (the first scrape takes ~6 s)."""
        return wait_until(lambda: self.query(promql), timeout, 0.25, what=f"series for {promql!r}")

    def query_exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars`` between two Unix timestamps."""
        answer = get_json(
            f"{self.url}/api/v1/query_exemplars",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}"},
        )
        data: list[dict[str, Any]] = answer["data"]
        return data


def prometheus_config(
    targets: Sequence[str],
    *,
    job: str,
    scrape_interval: str,
    extra_jobs: Mapping[str, Sequence[str]] | None = None,
    honor_labels: bool = False,
) -> str:
    """A minimal scrape configuration (JSON is valid YAML).

    ``extra_jobs`` adds more scrape jobs (job name -> targets) with the same interval.
    ``honor_labels`` keeps the ``job``/``instance`` labels a target exposes (the collector's
    prometheus exporter) instead of renaming them ``exported_job``/``exported_instance``.
    """
    jobs = {job: targets, **(extra_jobs or {})}
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": name,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "honor_labels": honor_labels,
                "static_configs": [{"targets": list(job_targets)}],
            }
            for name, job_targets in jobs.items()
        ],
    }
    return json.dumps(config, indent=2) + "\n"


@contextlib.contextmanager
def start_prometheus(
    directory: Path,
    targets: Sequence[str],
    *,
    job: str = "stageflow",
    scrape_interval: str = "1s",
    binary: Path | None = None,
    extra_jobs: Mapping[str, Sequence[str]] | None = None,
    honor_labels: bool = False,
) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``targets`` (``host:port``) every ``scrape_interval``.

    ``extra_jobs`` (job name -> targets) adds scrape jobs beside ``job``; ``honor_labels``
    applies to every job (see :func:`prometheus_config`).
    """
    binary = binary or require_binary("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    config_path.write_text(
        prometheus_config(
            targets,
            job=job,
            scrape_interval=scrape_interval,
            extra_jobs=extra_jobs,
            honor_labels=honor_labels,
        )
    )
    port = free_port()
    argv = [
        str(binary),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
        "--log.level=warn",
    ]
    with run_process("prometheus", argv, log_path=directory / "prometheus.log") as managed:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(managed, lambda: http_ok(f"{url}/-/ready"), "/-/ready")
        yield PrometheusServer(url=url, config_path=config_path, managed=managed)


# --------------------------------------------------------------------------- Jaeger


@dataclass(frozen=True)
class JaegerServer:
    """Jaeger v2 with an in-memory store; every listener on 127.0.0.1."""

    otlp_grpc_endpoint: str  # host:port
    otlp_http_endpoint: str  # host:port
    query_url: str  # UI and HTTP query API
    health_url: str
    managed: ManagedProcess

    def services(self) -> list[str]:
        """``GET /api/services``."""
        data = get_json(f"{self.query_url}/api/services").get("data") or []
        return [str(service) for service in data]

    def traces(self, service: str, **params: str) -> list[dict[str, Any]]:
        """``GET /api/traces?service=...`` (extra query parameters as keywords)."""
        answer = get_json(f"{self.query_url}/api/traces", {"service": service, **params})
        traces: list[dict[str, Any]] = answer.get("data") or []
        return traces

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """``GET /api/traces/{trace_id}``; None while Jaeger does not know the trace."""
        try:
            answer = get_json(f"{self.query_url}/api/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        data: list[dict[str, Any]] = answer.get("data") or []
        return data[0] if data else None

    def wait_for_traces(
        self,
        service: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll ``/api/traces?service=`` until ``predicate(traces)`` holds."""

        def check() -> list[dict[str, Any]] | None:
            traces = self.traces(service)
            return traces if traces and predicate(traces) else None

        result = wait_until(check, timeout, 0.2, what=f"traces of service {service!r}")
        assert result is not None  # wait_until only returns truthy values
        return result


@contextlib.contextmanager
def start_jaeger(
    directory: Path,
    *,
    binary: Path | None = None,
    config: Path = JAEGER_CONFIG,
) -> Iterator[JaegerServer]:
    """Jaeger v2 from the build cache with ``ops/jaeger-local.yaml``."""
    binary = binary or require_binary("jaeger")
    directory.mkdir(parents=True, exist_ok=True)
    ports = {
        "JAEGER_OTLP_GRPC_ENDPOINT": free_port(),
        "JAEGER_OTLP_HTTP_ENDPOINT": free_port(),
        "JAEGER_QUERY_HTTP_ENDPOINT": free_port(),
        "JAEGER_QUERY_GRPC_ENDPOINT": free_port(),
        "JAEGER_HEALTHCHECK_ENDPOINT": free_port(),
    }
    env = {key: f"127.0.0.1:{port}" for key, port in ports.items()}
    argv = [str(binary), f"--config=file:{config}"]
    with run_process("jaeger", argv, log_path=directory / "jaeger.log", env=env) as managed:
        server = JaegerServer(
            otlp_grpc_endpoint=env["JAEGER_OTLP_GRPC_ENDPOINT"],
            otlp_http_endpoint=env["JAEGER_OTLP_HTTP_ENDPOINT"],
            query_url=f"http://{env['JAEGER_QUERY_HTTP_ENDPOINT']}",
            health_url=f"http://{env['JAEGER_HEALTHCHECK_ENDPOINT']}/status",
            managed=managed,
        )
        _wait_ready(
            managed,
            lambda: (
                http_ok(server.health_url)
                and port_open("127.0.0.1", ports["JAEGER_OTLP_GRPC_ENDPOINT"])
                and http_ok(f"{server.query_url}/api/services")
            ),
            "health check, OTLP receiver and query API",
        )
        yield server


# --------------------------------------------------------------------------- collector


@dataclass(frozen=True)
class CollectorServer:
    """The OpenTelemetry Collector running ``otel-collector.yaml`` on 127.0.0.1."""

    otlp_grpc_endpoint: str  # host:port
    otlp_http_endpoint: str  # host:port
    telemetry_url: str  # the collector's own Prometheus /metrics
    prometheus_endpoint: str  # host:port of the prometheus exporter (OTLP metrics as /metrics)
    env: Mapping[str, str]
    managed: ManagedProcess

    def log_text(self) -> str:
        """The collector's output, including what the debug exporter printed."""
        return self.managed.log_text()


def collector_env(
    *,
    otlp_grpc_port: int,
    otlp_http_port: int,
    telemetry_port: int,
    jaeger_otlp_grpc_endpoint: str,
    prometheus_port: int,
    debug_verbosity: str = "detailed",
    sampling_percentage: float = 100,
    decision_wait: str = TEST_DECISION_WAIT,
    slow_trace_ms: int | None = None,
    critical_pipelines: Sequence[str] = (),
) -> dict[str, str]:
    """The ``OTELCOL_*`` variables that put ``otel-collector.yaml`` on loopback.

    Tail sampling keeps every trace by default (``sampling_percentage=100``) and decides
    after a short ``decision_wait``, so that tests find all their traces in Jaeger quickly.
    ``slow_trace_ms`` and ``critical_pipelines`` leave the configuration's defaults when
    not given.
    """
    env = {
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{otlp_grpc_port}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{otlp_http_port}",
        "OTELCOL_JAEGER_ENDPOINT": jaeger_otlp_grpc_endpoint,
        "OTELCOL_DEBUG_VERBOSITY": debug_verbosity,
        "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
        "OTELCOL_TELEMETRY_PORT": str(telemetry_port),
        "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{prometheus_port}",
        "OTELCOL_SAMPLING_PERCENTAGE": f"{sampling_percentage:g}",
        "OTELCOL_DECISION_WAIT": decision_wait,
    }
    if slow_trace_ms is not None:
        env["OTELCOL_SLOW_TRACE_MS"] = str(slow_trace_ms)
    if critical_pipelines:
        # A YAML flow sequence: the env provider parses the value as YAML.
        env["OTELCOL_CRITICAL_PIPELINES"] = json.dumps(list(critical_pipelines))
    return env


@contextlib.contextmanager
def start_collector(
    directory: Path,
    *,
    jaeger_otlp_grpc_endpoint: str,
    debug_verbosity: str = "detailed",
    binary: Path | None = None,
    config: Path = COLLECTOR_CONFIG,
    sampling_percentage: float = 100,
    decision_wait: str = TEST_DECISION_WAIT,
    slow_trace_ms: int | None = None,
    critical_pipelines: Sequence[str] = (),
) -> Iterator[CollectorServer]:
    """The collector from the build cache, exporting traces to ``jaeger_otlp_grpc_endpoint``.

    Logs go to the debug exporter, i.e. into :meth:`CollectorServer.log_text` (``detailed``
    verbosity prints every record with its attributes); metrics to the debug exporter and
    the prometheus exporter on :attr:`CollectorServer.prometheus_endpoint`. Tail sampling keeps
    every trace unless ``sampling_percentage`` says otherwise (see :func:`collector_env`).
    """
    binary = binary or require_binary("otelcol")
    directory.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, telemetry_port = free_port(), free_port(), free_port()
    prometheus_port = free_port()
    env = collector_env(
        otlp_grpc_port=grpc_port,
        otlp_http_port=http_port,
        telemetry_port=telemetry_port,
        jaeger_otlp_grpc_endpoint=jaeger_otlp_grpc_endpoint,
        prometheus_port=prometheus_port,
        debug_verbosity=debug_verbosity,
        sampling_percentage=sampling_percentage,
        decision_wait=decision_wait,
        slow_trace_ms=slow_trace_ms,
        critical_pipelines=critical_pipelines,
    )
    argv = [str(binary), f"--config=file:{config}"]
    with run_process("otelcol", argv, log_path=directory / "otelcol.log", env=env) as managed:
        server = CollectorServer(
            otlp_grpc_endpoint=env["OTELCOL_OTLP_GRPC_ENDPOINT"],
            otlp_http_endpoint=env["OTELCOL_OTLP_HTTP_ENDPOINT"],
            telemetry_url=f"http://127.0.0.1:{telemetry_port}/metrics",
            prometheus_endpoint=env["OTELCOL_PROMETHEUS_ENDPOINT"],
            env=env,
            managed=managed,
        )
        _wait_ready(
            managed,
            lambda: (
                port_open("127.0.0.1", grpc_port)
                and port_open("127.0.0.1", http_port)
                and http_ok(server.telemetry_url)
                and http_ok(f"http://{server.prometheus_endpoint}/metrics")
            ),
            "OTLP receivers, telemetry endpoint and prometheus exporter",
        )
        yield server


# --------------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class RedisServer:
    """A throw-away redis-server on 127.0.0.1: no persistence, no protected mode."""

    host: str
    port: int
    managed: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def ping(self) -> bool:
        """Send an inline ``PING`` and expect ``+PONG``."""
        with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


@contextlib.contextmanager
def start_redis(directory: Path, *, binary: Path | None = None) -> Iterator[RedisServer]:
    """redis-server from ``PATH`` (Debian package redis-server) on a free loopback port."""
    binary = binary or require_binary("redis-server")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        str(binary),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    with run_process("redis-server", argv, log_path=directory / "redis.log") as managed:
        server = RedisServer(host="127.0.0.1", port=port, managed=managed)
        _wait_ready(managed, server.ping, "PING")
        yield server


# --------------------------------------------------------------------------- Dask


@dataclass(frozen=True)
class DaskScheduler:
    """A ``dask scheduler`` on 127.0.0.1, without its dashboard."""

    address: str  # tcp://127.0.0.1:port
    managed: ManagedProcess


@dataclass(frozen=True)
class DaskWorker:
    """A ``dask worker`` process (no nanny: killing its PID loses the worker)."""

    name: str
    managed: ManagedProcess

    def kill(self) -> None:
        """``kill -9`` the worker's PID, as a crash or the OOM killer would."""
        self.managed.process.kill()
        self.managed.process.wait(timeout=STOP_TIMEOUT)


def _dask_cli() -> Path:
    """The ``dask`` command of the environment running the tests (the ``dask`` extra)."""
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    candidate = Path(sys.executable).parent / "dask"
    found = candidate if os.access(candidate, os.X_OK) else find_binary("dask")
    if found is None:
        pytest.fail("the dask command is missing although distributed is installed")
    return found


def _repo_pythonpath() -> str:
    """``PYTHONPATH`` with this repository first: test functions travel by module name."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


@contextlib.contextmanager
def start_dask_scheduler(
    directory: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[DaskScheduler]:
    """``dask scheduler`` on a free port of 127.0.0.1 (``env``: ``DASK_*`` settings)."""
    port = free_port()
    argv: list[str | os.PathLike[str]] = [
        _dask_cli(),
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-dashboard",
        "--no-show",
    ]
    with run_process(
        "dask-scheduler",
        argv,
        log_path=directory / "scheduler.log",
        env={"PYTHONPATH": _repo_pythonpath(), **(env or {})},
        cwd=REPO_ROOT,
    ) as managed:
        _wait_ready(managed, lambda: port_open("127.0.0.1", port), "scheduler port")
        yield DaskScheduler(address=f"tcp://127.0.0.1:{port}", managed=managed)


@contextlib.contextmanager
def start_dask_worker(
    directory: Path,
    scheduler: str,
    *,
    name: str,
    nthreads: int = 1,
    env: Mapping[str, str] | None = None,
) -> Iterator[DaskWorker]:
    """``dask worker`` for ``scheduler``, without a nanny, that can import this repository."""
    argv: list[str | os.PathLike[str]] = [
        _dask_cli(),
        "worker",
        scheduler,
        "--host",
        "127.0.0.1",
        "--name",
        name,
        "--nthreads",
        str(nthreads),
        "--no-nanny",
        "--no-dashboard",
        "--death-timeout",
        "30",
        "--local-directory",
        str(directory / name),
    ]
    with run_process(
        f"dask-worker-{name}",
        argv,
        log_path=directory / f"{name}.log",
        env={"PYTHONPATH": _repo_pythonpath(), **(env or {})},
        cwd=REPO_ROOT,
    ) as managed:
        _wait_ready(managed, lambda: "Registered to:" in managed.log_text(), "registration")
        yield DaskWorker(name=name, managed=managed)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PostgresServer:
    """A throw-away PostgreSQL on 127.0.0.1: trust authentication, no fsync."""

    host: str
    port: int
    user: str
    managed: ManagedProcess

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False


@contextlib.contextmanager
def start_postgres(directory: Path) -> Iterator[PostgresServer]:
    """PostgreSQL (Debian package postgresql) in ``directory`` on a free loopback port.

    As root, the server runs as the ``postgres`` user the package creates (PostgreSQL refuses
    to run as root); otherwise as the current user.
    """
    postgres = require_binary("postgres")
    initdb = postgres.with_name("initdb")
    directory.mkdir(parents=True, exist_ok=True)
    user: str | None = None
    home = directory
    if os.geteuid() == 0:
        import pwd
        import tempfile

        user = "postgres"
        entry = pwd.getpwnam(user)
        # The caller's directory may sit under directories only root can enter.
        home = Path(tempfile.mkdtemp(prefix="stageflow-postgres-"))
        os.chown(home, entry.pw_uid, entry.pw_gid)
    data = home / "data"
    done = subprocess.run(
        [str(initdb), "-D", str(data), "-U", "stageflow", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--no-instructions"],
        capture_output=True, text=True, user=user, cwd=home, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
    port = free_port()
    argv = [str(postgres), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
            "-k", str(home), "-c", "fsync=off", "-c", "full_page_writes=off"]  # fmt: skip
    with run_process(
        "postgres", argv, log_path=directory / "postgres.log", user=user, cwd=home
    ) as managed:
        server = PostgresServer(host="127.0.0.1", port=port, user="stageflow", managed=managed)
        try:
            _wait_ready(managed, server.accepts_connections, "a connection")
            yield server
        finally:
            # Fast shutdown: SIGTERM would wait for every client to disconnect.
            if managed.process.poll() is None:
                managed.process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    managed.process.wait(timeout=STOP_TIMEOUT)
            if home != directory:
                shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def busy_port(port: int | None = None) -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    sock = socket.socket()
    try:
        try:
            sock.bind(("127.0.0.1", port or 0))
            sock.listen()
        except OSError:
            if port is None:
                raise
            # Already taken by another process: busy, which is all the test needs.
        yield port or int(sock.getsockname()[1])
    finally:
        sock.close()
