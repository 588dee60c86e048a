"""The worker plugin and the executor's argument checks, without a cluster."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed")

from stageflow_otel.cli import _dask
from stageflow_otel.cli._errors import UsageError
from stageflow_otel.distributed.dask import DaskExecutor, StageflowWorkerPlugin
from tests.support.servers import http_get


@pytest.fixture(autouse=True)
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("STAGEFLOW_OTEL_WORKER_METRICS_PORT", raising=False)
    monkeypatch.delenv("STAGEFLOW_OTEL_WORKER_METRICS_ADDR", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)


def test_setup_serves_the_worker_metrics_and_teardown_stops_them() -> None:
    plugin = StageflowWorkerPlugin(service_name="workers")
    worker = SimpleNamespace(address="tcp://127.0.0.1:1234")
    plugin.setup(worker)
    try:
        assert plugin.metrics_url is not None
        assert "# HELP stageflow_remote_stages_total" in http_get(plugin.metrics_url).decode()
        resource = plugin._provider.resource.attributes
        assert resource["service.name"] == "workers"
        assert resource["service.instance.id"] == "tcp://127.0.0.1:1234"
        # What travels to the workers is the configuration only.
        copy = pickle.loads(pickle.dumps(plugin))
        assert copy.telemetry is None
        assert copy.service_name == "workers"
    finally:
        plugin.teardown(worker)
    with pytest.raises(OSError):
        http_get(plugin.metrics_url, timeout=1)


def test_the_port_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEFLOW_OTEL_WORKER_METRICS_PORT", "not-a-port")
    plugin = StageflowWorkerPlugin()
    with pytest.raises(ValueError, match=r"\$STAGEFLOW_OTEL_WORKER_METRICS_PORT must be"):
        plugin.setup(SimpleNamespace(address="tcp://127.0.0.1:1"))


def test_the_default_service_name() -> None:
    plugin = StageflowWorkerPlugin(metrics=False)
    worker = SimpleNamespace(address="tcp://127.0.0.1:1")
    plugin.setup(worker)
    try:
        assert plugin.metrics_url is None
        assert plugin._provider.resource.attributes["service.name"] == "stageflow-worker"
    finally:
        plugin.teardown(worker)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="protocol must be 'grpc' or 'http/protobuf'"):
        StageflowWorkerPlugin(protocol="udp")
    with pytest.raises(ValueError, match="metrics_port must be an integer from 0 to 65535"):
        StageflowWorkerPlugin(metrics_port=70000)
    with pytest.raises(TypeError, match=r"DaskExecutor needs a distributed\.Client"):
        DaskExecutor(object())  # type: ignore[arg-type]


def test_the_cli_names_a_scheduler_it_cannot_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dask, "CONNECT_TIMEOUT_S", 1)
    with (
        pytest.raises(UsageError, match=r"--dask tcp://127\.0\.0\.1:9: cannot connect to a Dask"),
        _dask.dask_executor("tcp://127.0.0.1:9"),
    ):
        pass
