from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import (
    CollectorServer,
    JaegerServer,
    RedisServer,
    start_collector,
    start_jaeger,
    start_redis,
)

pytest_plugins = ("anyio",)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both backends."""
    return str(request.param)


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[JaegerServer]:
    """A real Jaeger v2 on 127.0.0.1 with an in-memory store."""
    with start_jaeger(tmp_path / "jaeger") as server:
        yield server


@pytest.fixture
def collector(tmp_path: Path, jaeger: JaegerServer) -> Iterator[CollectorServer]:
    """A real OpenTelemetry Collector running otel-collector.yaml, exporting to ``jaeger``."""
    with start_collector(
        tmp_path / "otelcol", jaeger_otlp_grpc_endpoint=jaeger.otlp_grpc_endpoint
    ) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1, shared by the tests (each uses a key prefix of its own)."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
