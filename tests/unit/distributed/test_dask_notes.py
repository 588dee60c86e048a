"""The executor's notes when a result reaches the client before the news of its run.

The scheduler forwards a worker's ``started`` event and the task's result separately; after a
lost worker the result of the rerun may come first. These drive the executor's own event
handler directly, with a stand-in for the client's subscription.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed")

from stageflow_otel.distributed import dask as dask_executor
from stageflow_otel.distributed._handle import TaskHandle
from stageflow_otel.distributed.dask import DaskExecutor

KEY = "stageflow-s-1"


def executor_running_on(worker: str) -> tuple[DaskExecutor, TaskHandle]:
    executor = object.__new__(DaskExecutor)  # no cluster: only the bookkeeping is exercised
    executor._client = SimpleNamespace(subscribe_topic=lambda *_: None)
    executor._lock = threading.Lock()
    handle = TaskHandle(KEY, "s")
    executor._handles = {KEY: handle}
    executor._runs = {KEY: (1, worker)}
    executor._watched = {worker}
    handle.wait(0)  # the first start was handed over already
    return executor, handle


def test_a_result_from_the_known_run_waits_for_nothing() -> None:
    executor, handle = executor_running_on("tcp://w1")

    assert executor._notes_until_started_on(handle, "tcp://w1") == []


def test_a_result_from_a_rerun_waits_for_the_news_of_the_rerun() -> None:
    executor, handle = executor_running_on("tcp://w1")
    news = threading.Timer(
        0.1, executor._on_task_event, [(0.0, {"task": KEY, "worker": "tcp://w2"})]
    )
    news.start()
    try:
        notes = executor._notes_until_started_on(handle, "tcp://w2")
    finally:
        news.join()

    assert [(n.type, dict(n.data)) for n in notes] == [
        ("worker_lost", {"worker": "tcp://w1"}),
        ("resubmitted", {"execution": 2}),
        ("started", {"worker": "tcp://w2", "execution": 2, "queue_wait_ms": None}),
    ]


def test_news_that_never_comes_is_waited_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dask_executor, "NOTE_GRACE_S", 0.1)
    executor, handle = executor_running_on("tcp://w1")

    assert executor._notes_until_started_on(handle, "tcp://w2") == []
