"""Static checks of prometheus.yml, otel-collector.yaml, docker-compose.yml and the builds."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from compose_spec import PyCompose

from tests.ops.helpers import SCHEMA_DIR, require_file
from tests.support.servers import (
    COLLECTOR_CONFIG,
    JAEGER_CONFIG,
    REPO_ROOT,
    collector_env,
    require_binary,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus.yml"
BUILDER_MANIFEST = REPO_ROOT / "ops" / "otelcol-builder.yaml"
SCRIPTS = REPO_ROOT / "scripts"

# Docker's reference grammar, reduced to what matters here: name[:tag][@digest].
IMAGE_REF = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._/-]*)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@sha256:[0-9a-f]{64})?$"
)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with ``env`` on top of the environment minus any ``OTELCOL_*``."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("OTELCOL_")}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        env={**base, **(env or {})},
        timeout=120,
    )


def _script_value(script: str, variable: str) -> str:
    match = re.search(rf"^{variable}=(\S+)$", (SCRIPTS / script).read_text(), re.MULTILINE)
    assert match, f"{variable} not set in scripts/{script}"
    return match.group(1)


def _loopback_env() -> dict[str, str]:
    return collector_env(
        otlp_grpc_port=14317,
        otlp_http_port=14318,
        telemetry_port=18888,
        jaeger_otlp_grpc_endpoint="127.0.0.1:24317",
        prometheus_port=18889,
    )


# --------------------------------------------------------------------------- Prometheus


def test_promtool_accepts_prometheus_yml() -> None:
    result = _run(require_binary("promtool"), "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_an_unknown_key(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text() + "\nscrape_config_typo: []\n")
    result = _run(require_binary("promtool"), "check", "config", broken)
    assert result.returncode != 0


def test_prometheus_scrapes_the_demo_and_the_collector() -> None:
    config = _yaml(PROMETHEUS_CONFIG)
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["stageflow"] == ["demo:9464", "dask-worker-1:9465", "dask-worker-2:9465"]
    assert targets["otel-collector"] == ["otel-collector:8888"]
    # The collector's prometheus exporter, keeping the job/instance it sets per application.
    assert targets["otel-collector-metrics"] == ["otel-collector:8889"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["otel-collector-metrics"]["honor_labels"] is True


# --------------------------------------------------------------------------- collector


def test_otelcol_validates_the_collector_config_on_loopback() -> None:
    otelcol = require_binary("otelcol")
    result = _run(otelcol, "validate", f"--config=file:{COLLECTOR_CONFIG}", env=_loopback_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_otelcol_validates_the_collector_config_with_compose_defaults() -> None:
    otelcol = require_binary("otelcol")
    result = _run(otelcol, "print-config", f"--config=file:{COLLECTOR_CONFIG}")
    assert result.returncode == 0, result.stdout + result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert printed["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert printed["exporters"]["otlp_grpc/jaeger"]["endpoint"] == "jaeger:4317"
    assert printed["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"


def test_prometheus_exporter_keeps_the_contract_names() -> None:
    """Counters get `_total`, no namespace prefix, no otel_scope_* labels (docs/telemetry.md)."""
    exporter = _yaml(COLLECTOR_CONFIG)["exporters"]["prometheus"]
    assert exporter["endpoint"] == "${env:OTELCOL_PROMETHEUS_ENDPOINT:-0.0.0.0:8889}"
    assert exporter["namespace"] == ""
    assert exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert exporter["without_scope_info"] is True
    assert "resource_to_telemetry_conversion" not in exporter


def test_otelcol_rejects_an_unknown_component(tmp_path: Path) -> None:
    otelcol = require_binary("otelcol")
    config = _yaml(COLLECTOR_CONFIG)
    config["service"]["pipelines"]["traces"]["exporters"].append("zipkin")
    config["exporters"]["zipkin"] = {"endpoint": "http://127.0.0.1:9411"}
    broken = tmp_path / "otel-collector.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = _run(otelcol, "validate", f"--config=file:{broken}", env=_loopback_env())
    assert result.returncode != 0
    assert "zipkin" in result.stderr


def test_the_built_collector_has_exactly_the_components_the_config_uses() -> None:
    otelcol = require_binary("otelcol")
    result = _run(otelcol, "components")
    assert result.returncode == 0, result.stderr
    built = yaml.safe_load(result.stdout)
    config = _yaml(COLLECTOR_CONFIG)
    for kind in ("receivers", "processors", "exporters"):
        available = {component["name"] for component in built[kind]}
        used = {name.split("/")[0] for name in config[kind]}
        assert used == available, kind
    manifest = _yaml(BUILDER_MANIFEST)
    versions = {
        entry["gomod"].split()[1]
        for kind in ("receivers", "processors", "exporters")
        for entry in manifest[kind]
    }
    assert versions == {f"v{manifest['dist']['version']}"}, "all components from one release"


def test_collector_pipelines() -> None:
    config = _yaml(COLLECTOR_CONFIG)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "logs", "metrics"}
    for name, pipeline in pipelines.items():
        assert pipeline["receivers"] == ["otlp"], name
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter first"
        assert pipeline["processors"][-1] == "batch", name
    assert pipelines["traces"]["processors"] == ["memory_limiter", "tail_sampling", "batch"]
    assert pipelines["traces"]["exporters"] == ["otlp_grpc/jaeger"]
    assert pipelines["logs"]["exporters"] == ["debug"]
    assert pipelines["metrics"]["exporters"] == ["prometheus", "debug"]
    assert config["exporters"]["otlp_grpc/jaeger"]["tls"] == {"insecure": True}


def test_tail_sampling_keeps_errors_slow_and_critical_traces_and_a_share_of_the_rest() -> None:
    sampling = _yaml(COLLECTOR_CONFIG)["processors"]["tail_sampling"]
    assert sampling["decision_wait"] == "${env:OTELCOL_DECISION_WAIT:-10s}"
    policies = {policy["type"]: policy for policy in sampling["policies"]}
    assert list(policies) == ["status_code", "latency", "string_attribute", "probabilistic"]
    assert policies["status_code"]["status_code"] == {"status_codes": ["ERROR"]}
    assert policies["latency"]["latency"] == {"threshold_ms": "${env:OTELCOL_SLOW_TRACE_MS:-1000}"}
    assert policies["string_attribute"]["string_attribute"] == {
        "key": "stageflow.pipeline.name",
        "values": "${env:OTELCOL_CRITICAL_PIPELINES:-[]}",
    }
    assert policies["probabilistic"]["probabilistic"] == {
        "sampling_percentage": "${env:OTELCOL_SAMPLING_PERCENTAGE:-10}"
    }


@pytest.mark.parametrize("critical", ["[payment, refund]", "[]", '["order fulfilment"]'])
def test_otelcol_accepts_critical_pipelines_as_a_yaml_list(critical: str) -> None:
    otelcol = require_binary("otelcol")
    env = {**_loopback_env(), "OTELCOL_CRITICAL_PIPELINES": critical}
    result = _run(otelcol, "validate", f"--config=file:{COLLECTOR_CONFIG}", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_jaeger_validates_its_local_config() -> None:
    jaeger = require_binary("jaeger")
    result = _run(jaeger, "validate", f"--config=file:{JAEGER_CONFIG}")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(COMPOSE_FILE)
    return data


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    path = require_file(SCHEMA_DIR / "compose-spec.schema.json", "run scripts/build-schemas.sh")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    # The schema declares draft 2019-09 (under a non-canonical $schema URL).
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_spec_schema(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    assert _schema_errors(compose_schema, compose) == []


def test_compose_spec_schema_rejects_a_typo(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["jaeger"]["healthcheck"]["intervall"] = "5s"
    assert _schema_errors(compose_schema, broken) != []


def test_compose_file_parses_with_a_current_compose_spec_parser() -> None:
    """compose-spec (the Rust compose_spec crate) knows today's keys and rejects typos."""
    parsed = PyCompose.from_yaml(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert sorted(parsed.service_names()) == [
        "dask-scheduler",
        "dask-worker-1",
        "dask-worker-2",
        "demo",
        "grafana",
        "jaeger",
        "otel-collector",
        "prometheus",
    ]
    parsed.to_spec()  # full model validation; raises on a bad value
    broken = COMPOSE_FILE.read_text(encoding="utf-8").replace("interval:", "intervall:", 1)
    with pytest.raises(ValueError, match="intervall"):
        PyCompose.from_yaml(broken)


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "demo",
        "dask-scheduler",
        "dask-worker-1",
        "dask-worker-2",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    }


def _image_refs(compose: dict[str, Any]) -> dict[str, str]:
    for name, service in compose["services"].items():
        assert ("image" in service) != ("build" in service), f"{name}: image or build, not both"
    refs = {
        f"service {name}": svc["image"]
        for name, svc in compose["services"].items()
        if "image" in svc
    }
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.upper().startswith("FROM "):
            refs[f"Dockerfile {line}"] = line.split()[1]
    return refs


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for where, ref in _image_refs(compose).items():
        match = IMAGE_REF.match(ref)
        assert match, f"{where}: malformed image reference {ref!r}"
        tag = match.group("tag")
        assert tag, f"{where}: {ref!r} has no tag"
        assert tag != "latest", f"{where}: {ref!r} uses latest"
        assert re.search(r"\d", tag), f"{where}: {ref!r} is not a versioned tag"


def test_images_match_the_built_components(compose: dict[str, Any]) -> None:
    services = compose["services"]
    manifest = _yaml(BUILDER_MANIFEST)
    assert _script_value("build-components.sh", "OCB_VERSION") == f"v{manifest['dist']['version']}"
    assert services["otel-collector"]["image"] == (
        f"otel/opentelemetry-collector-contrib:{manifest['dist']['version']}"
    )
    jaeger_version = _script_value("build-components.sh", "JAEGER_VERSION").removeprefix("v")
    assert services["jaeger"]["image"] == f"jaegertracing/jaeger:{jaeger_version}"
    grafana_version = _script_value("build-schemas.sh", "GRAFANA_SCHEMA_VERSION")
    assert services["grafana"]["image"] == f"grafana/grafana:{grafana_version}"
    assert services["prometheus"]["image"].startswith("prom/prometheus:v3.")


def test_published_ports_are_on_loopback(compose: dict[str, Any]) -> None:
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host, host_port, container_port = str(port).split(":")
            assert host == "127.0.0.1", f"{name}: {port}"
            published[int(host_port)] = (name, int(container_port))
    assert published == {
        9464: ("demo", 9464),
        4317: ("otel-collector", 4317),
        4318: ("otel-collector", 4318),
        16686: ("jaeger", 16686),
        9090: ("prometheus", 9090),
        3000: ("grafana", 3000),
    }


def test_healthchecks_and_dependency_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    with_healthcheck = {name for name, svc in services.items() if "healthcheck" in svc}
    # The collector image has no shell or HTTP client to run a healthcheck.
    assert with_healthcheck == set(services) - {"otel-collector"}
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            expected = "service_healthy" if dependency in with_healthcheck else "service_started"
            if dependency == "demo":
                expected = "service_started"  # Prometheus tolerates a target that is not up yet
            assert spec == {"condition": expected}, f"{name} -> {dependency}"


def test_prometheus_service_enables_exemplar_storage(compose: dict[str, Any]) -> None:
    command = compose["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


def test_demo_service_runs_the_cli_against_the_collector(compose: dict[str, Any]) -> None:
    demo = compose["services"]["demo"]
    assert demo["build"]["dockerfile"] == "Dockerfile"
    assert demo["command"] == [
        "demo",
        "--otlp-endpoint",
        "http://otel-collector:4317",
        "--dask",
        "tcp://dask-scheduler:8786",
        "--hold",
        "--interval",
        "5",
    ]
    assert demo["environment"]["STAGEFLOW_OTEL_METRICS_ADDR"] == "0.0.0.0"


def test_dask_services_run_the_demos_remote_stage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    scheduler = services["dask-scheduler"]
    assert scheduler["entrypoint"] == ["dask"]
    assert scheduler["command"][:3] == ["scheduler", "--port", "8786"]
    for name in ("dask-worker-1", "dask-worker-2"):
        worker = services[name]
        assert worker["build"] == services["demo"]["build"], name
        assert worker["command"][:2] == ["worker", "tcp://dask-scheduler:8786"], name
        env = worker["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
        assert env["STAGEFLOW_OTEL_WORKER_METRICS_PORT"] == "9465", name
        assert env["STAGEFLOW_OTEL_WORKER_METRICS_ADDR"] == "0.0.0.0", name
    # The image the services share has the dask extra.
    assert "pip install '.[dask]'" in (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name}: {source}"


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_strict(script: Path) -> None:
    assert _run("bash", "-n", script).returncode == 0
    assert "set -euo pipefail" in script.read_text()
