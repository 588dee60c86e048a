"""Remote stages on Dask distributed: ``DaskExecutor`` and the worker plugin.

``DaskExecutor(client)`` submits each task to the cluster of a synchronous
``distributed.Client``; :class:`StageflowWorkerPlugin`, registered with
``client.register_plugin``, sets up OpenTelemetry and a ``/metrics`` endpoint on every worker,
those that join later included, so each task runs inside a ``stage.remote`` span of the run's
trace. Needs the ``dask`` extra: ``pip install 'stageflow-otel[dask]'``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Self, cast

import cloudpickle
from distributed import Client, KilledWorker, WorkerPlugin, get_worker

from ._handle import TaskHandle
from ._protocol import RESUBMITTED, STARTED, WORKER_LOST, RemoteNote, RemoteProgress
from ._task import RemoteTask, RemoteTaskLostError, run_task, serialize_task

__all__ = ("PLUGIN_NAME", "DaskExecutor", "StageflowWorkerPlugin", "worker_metrics_urls")

logger = logging.getLogger("stageflow_otel.distributed")

PLUGIN_NAME = "stageflow-otel"
"""The name :class:`StageflowWorkerPlugin` registers under on each worker."""

DEFAULT_SERVICE_NAME = "stageflow-worker"
METRICS_PORT_VARIABLE = "STAGEFLOW_OTEL_WORKER_METRICS_PORT"
METRICS_ADDR_VARIABLE = "STAGEFLOW_OTEL_WORKER_METRICS_ADDR"
# Longest wait, once a result is in, for the scheduler's news of the run that made it (its
# ``started``, after a lost worker): the two travel apart and the result may come first.
NOTE_GRACE_S = 2.0


class DaskExecutor:
    """A :class:`~stageflow_otel.distributed.RemoteExecutor` on a Dask distributed cluster.

    Tasks are serialized with cloudpickle at submit (a task that cannot be fails there, naming
    the stage and the value), submitted with ``pure=False`` under a key of their own, and
    followed through the cluster's events: the start on a worker (``stage.remote.started``),
    the loss of that worker (``stage.remote.worker_lost``) and the run on another one
    (``stage.remote.resubmitted``). A task whose workers died more often than the scheduler's
    ``distributed.scheduler.allowed-failures`` fails its stage with
    :class:`~stageflow_otel.distributed.RemoteTaskLostError`.

    Args:
        client: A synchronous ``distributed.Client`` (``Client(address)``); the executor
            waits in threads of its own.
        submit_options: More keyword arguments for ``client.submit`` (``resources``,
            ``workers``, ``priority``, ...).

    Raises:
        TypeError: ``client`` is not a ``distributed.Client``, or is asynchronous.
    """

    def __init__(self, client: Client, *, submit_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(client, Client):
            raise TypeError(
                f"DaskExecutor needs a distributed.Client, got {type(client).__qualname__}"
            )
        if client.asynchronous:
            raise TypeError(
                "DaskExecutor needs a synchronous distributed.Client (Client(address)), not one "
                "made with asynchronous=True: remote stages wait for it in threads"
            )
        reserved = {"key", "pure"} & set(submit_options or {})
        if reserved:
            raise ValueError(
                f"DaskExecutor: submit_options must not set {', '.join(sorted(reserved))}; "
                "each task gets a key of its own and is never pure"
            )
        self.client = client
        self._client: Any = cast("Any", client)  # its pub/sub methods are not annotated
        self.submit_options = dict(submit_options or {})
        self._topic = f"stageflow-otel-remote-{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._handles: dict[str, TaskHandle] = {}
        self._runs: dict[str, tuple[int, str]] = {}  # key -> (executions, current worker)
        self._watched: set[str] = set()
        self._client.subscribe_topic(self._topic, self._on_task_event)

    def submit(self, task: RemoteTask) -> TaskHandle:
        """Serialize ``task`` and submit it to the cluster."""
        payload = serialize_task(task, cloudpickle.dumps)
        key = f"stageflow-{task.stage}-{uuid.uuid4().hex}"
        handle = TaskHandle(key, task.stage)
        with self._lock:
            self._handles[key] = handle
        future = self.client.submit(
            _run_on_worker, payload, self._topic, key, key=key, pure=False, **self.submit_options
        )
        handle.future = future
        done: Any = future.add_done_callback
        done(lambda _future: handle.note_done())
        return handle

    def wait(self, handle: TaskHandle, timeout: float) -> RemoteProgress:
        """Block until the task ends or something happens to it, at most ``timeout`` s."""
        progress = handle.wait(timeout)
        future = handle.future
        if progress.done or future is None or not future.done():
            return progress
        # The outcome is fetched here, in the stage's own waiting thread.
        value: Any = None
        error: BaseException | None = None
        notes = list(progress.notes)
        try:
            ran_on, value = future.result()
        except KilledWorker as exc:
            worker = getattr(exc.last_worker, "address", None)
            error = RemoteTaskLostError(handle.stage, str(exc), worker=worker)
        except Exception as exc:
            error = exc
        else:
            notes.extend(self._notes_until_started_on(handle, ran_on))
        handle.finish(value, error)
        self._forget(handle)
        rest = handle.wait(0)
        return RemoteProgress((*notes, *rest.notes), True, value, error)

    def _notes_until_started_on(self, handle: TaskHandle, worker: str) -> list[RemoteNote]:
        """The notes up to the start of the run on ``worker`` that made the result.

        Waits at most :data:`NOTE_GRACE_S` for them; nothing when they are in already.
        """
        deadline = time.monotonic() + NOTE_GRACE_S
        notes: list[RemoteNote] = []
        while True:
            with self._lock:  # noted under this lock: once the worker is here, so are they
                if self._runs.get(handle.task_id, (0, ""))[1] == worker:
                    return notes
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.debug("no start of stage %r on %s reported in time", handle.stage, worker)
                return notes
            notes.extend(handle.wait(min(remaining, 0.05)).notes)

    def cancel(self, handle: TaskHandle) -> None:
        """Cancel the task on the cluster (a running task runs to its end, unseen)."""
        future = handle.future
        if future is not None:
            future.cancel()
        self._forget(handle)

    def close(self) -> None:
        """Stop following the cluster's events (the client stays open)."""
        with self._lock:
            topics = [self._topic, *self._watched]
            self._watched.clear()
        for topic in topics:
            with contextlib.suppress(ValueError):  # already gone
                self._client.unsubscribe_topic(topic)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _forget(self, handle: TaskHandle) -> None:
        with self._lock:
            self._handles.pop(handle.task_id, None)
            self._runs.pop(handle.task_id, None)
        handle.future = None

    def _on_task_event(self, event: tuple[float, Any]) -> None:
        """A worker started one of our tasks (runs on the client's event loop)."""
        _, msg = event
        if not isinstance(msg, Mapping):
            return
        key, worker = msg.get("task"), msg.get("worker")
        if not isinstance(key, str) or not isinstance(worker, str):
            return
        with self._lock:  # the notes with the run, for _notes_until_started_on
            handle = self._handles.get(key)
            if handle is None:
                return
            executions, previous = self._runs.get(key, (0, ""))
            self._runs[key] = (executions + 1, worker)
            watch = worker not in self._watched
            self._watched.add(worker)
            if executions:
                if previous and not handle.lost_on(previous):
                    handle.note(WORKER_LOST, worker=previous)
                handle.note(RESUBMITTED, execution=executions + 1)
            handle.note(
                STARTED,
                worker=worker,
                execution=executions + 1,
                queue_wait_ms=msg.get("queue_wait_ms"),
            )
        if watch:
            self._client.subscribe_topic(worker, functools.partial(self._on_worker_event, worker))

    def _on_worker_event(self, worker: str, event: tuple[float, Any]) -> None:
        """The scheduler's events about a worker that ran one of our tasks."""
        _, msg = event
        if not isinstance(msg, Mapping) or msg.get("action") != "remove-worker":
            return
        with self._lock:
            lost = [
                self._handles[key]
                for key, (_, current) in self._runs.items()
                if current == worker and key in self._handles
            ]
            self._watched.discard(worker)
        for handle in lost:
            if not handle.done:
                handle.mark_lost_on(worker)
                handle.note(WORKER_LOST, worker=worker)
        with contextlib.suppress(ValueError):
            self._client.unsubscribe_topic(worker)


def _run_on_worker(payload: bytes, topic: str, key: str) -> Any:
    """The task Dask runs: announce the start, then run in the plugin's span (if set up).

    Returns ``(worker address, result)``: the client learns which run made the result.
    """
    worker = get_worker()
    task: RemoteTask = pickle.loads(payload)  # serialized by DaskExecutor.submit
    queued = max(0.0, time.time() - task.submitted_at)
    worker.log_event(
        topic, {"task": key, "worker": worker.address, "queue_wait_ms": round(queued * 1000, 3)}
    )
    plugin = worker.plugins.get(PLUGIN_NAME)
    telemetry = getattr(plugin, "telemetry", None)
    if telemetry is not None:
        return worker.address, telemetry.run(task, worker=worker.address)
    return worker.address, run_task(task, worker=worker.address)


class StageflowWorkerPlugin(WorkerPlugin):
    """Sets up OpenTelemetry and the worker metrics on every Dask worker.

    Register it once with ``client.register_plugin(StageflowWorkerPlugin(...))``: the
    scheduler hands it to every worker, those that join later included. On each worker it
    builds a ``TracerProvider`` exporting over OTLP (the exporter reads the standard
    ``OTEL_EXPORTER_OTLP_*`` variables of the worker's environment unless ``endpoint`` is
    given; ``OTEL_TRACES_EXPORTER=none`` exports nothing), with the resource from
    ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` defaults to
    ``stageflow-worker``) and ``service.instance.id`` = the worker's address; and serves the
    worker metrics on ``/metrics``.

    Args:
        service_name: ``service.name`` of the worker's spans (overrides ``OTEL_SERVICE_NAME``).
        endpoint: The OTLP endpoint (default: from the ``OTEL_EXPORTER_OTLP_*`` variables).
        protocol: ``grpc`` or ``http/protobuf`` (default: ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
            ``grpc``).
        resource_attributes: More resource attributes.
        metrics_port: Port of the worker's ``/metrics``; by default
            ``$STAGEFLOW_OTEL_WORKER_METRICS_PORT`` of the worker's environment, else 0 (any
            free port: with several workers on one host, keep 0 or give each its own variable).
        metrics_addr: Address of the worker's ``/metrics``; by default
            ``$STAGEFLOW_OTEL_WORKER_METRICS_ADDR``, else 127.0.0.1.
        metrics: Serve the worker metrics on ``/metrics`` (they are recorded either way).

    Raises:
        ValueError: ``protocol`` is neither ``grpc`` nor ``http/protobuf``, or ``metrics_port``
            (or, on the worker, ``$STAGEFLOW_OTEL_WORKER_METRICS_PORT``) is not a port.
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        *,
        service_name: str | None = None,
        endpoint: str | None = None,
        protocol: str | None = None,
        resource_attributes: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
        metrics_addr: str | None = None,
        metrics: bool = True,
    ) -> None:
        if protocol not in (None, "grpc", "http/protobuf"):
            raise ValueError(
                f"StageflowWorkerPlugin: protocol must be 'grpc' or 'http/protobuf', "
                f"got {protocol!r}"
            )
        if metrics_port is not None:
            _check_port(metrics_port, "metrics_port")
        self.service_name = service_name
        self.endpoint = endpoint
        self.protocol = protocol
        self.resource_attributes = dict(resource_attributes or {})
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self.metrics = metrics
        self.telemetry: Any = None
        self.metrics_url: str | None = None
        self._provider: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # What travels to the workers is the configuration, never a provider or a server.
        state = dict(self.__dict__)
        state.update(telemetry=None, metrics_url=None, _provider=None)
        return state

    def setup(self, worker: Any) -> None:
        """Build the worker's tracer provider and start its ``/metrics``."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from .telemetry import WorkerTelemetry

        attributes: dict[str, str] = {"service.instance.id": worker.address}
        attributes.update(self.resource_attributes)
        if self.service_name:
            attributes["service.name"] = self.service_name
        elif not os.environ.get("OTEL_SERVICE_NAME"):
            attributes.setdefault("service.name", DEFAULT_SERVICE_NAME)
        provider = TracerProvider(resource=Resource.create(attributes))
        exporter = self._exporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        telemetry = WorkerTelemetry(provider)
        if self.metrics:
            port = self.metrics_port
            if port is None:
                port = _env_port(METRICS_PORT_VARIABLE)
            addr = self.metrics_addr or os.environ.get(METRICS_ADDR_VARIABLE) or "127.0.0.1"
            server = telemetry.serve_metrics(port, addr)
            self.metrics_url = server.url
        self._provider = provider
        self.telemetry = telemetry
        logger.info(
            "stage.remote telemetry on worker %s (metrics: %s)", worker.address, self.metrics_url
        )

    def teardown(self, worker: Any) -> None:
        """Export the spans still queued and stop ``/metrics``."""
        if self.telemetry is not None:
            self.telemetry.shutdown()
        if self._provider is not None:
            self._provider.shutdown()

    def _exporter(self) -> Any:
        if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            return None
        protocol = self.protocol or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        )
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            endpoint = self.endpoint
            if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
                endpoint = endpoint.rstrip("/") + "/v1/traces"
            return HttpExporter(endpoint=endpoint)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=self.endpoint)


def _check_port(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(
            f"StageflowWorkerPlugin: {name} must be an integer from 0 to 65535 (0: any free "
            f"port), got {value!r}"
        )
    return value


def _env_port(variable: str) -> int:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    return _check_port(value if value >= 0 else raw, f"${variable}")


def worker_metrics_urls(client: Client) -> dict[str, str | None]:
    """The ``/metrics`` URL of every worker of ``client``'s cluster, by worker address."""
    urls: dict[str, str | None] = client.run(_metrics_url)
    return urls


def _metrics_url(dask_worker: Any) -> str | None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return getattr(plugin, "metrics_url", None)
