"""Cancellation tokens, cleanup registries and the structured task group."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest

from stageflow_otel.core import (
    CancellationToken,
    CleanupRegistry,
    CleanupReport,
    StructuredTaskGroup,
)

# -- CancellationToken ------------------------------------------------------------------------


def test_a_new_token_is_not_cancelled() -> None:
    token = CancellationToken()
    assert not token.is_cancelled
    assert token.reason is None


def test_cancel_is_idempotent_and_keeps_the_first_reason() -> None:
    token = CancellationToken()
    calls: list[str] = []
    token.on_cancel(calls.append)

    assert token.cancel("first") is True
    assert token.cancel("second") is False

    assert token.is_cancelled
    assert token.reason == "first"
    assert calls == ["first"]


def test_cancel_uses_a_default_reason() -> None:
    token = CancellationToken()
    token.cancel()
    assert token.reason == "cancelled"


def test_callbacks_run_once_in_registration_order() -> None:
    token = CancellationToken()
    calls: list[str] = []
    token.on_cancel(lambda reason: calls.append(f"a:{reason}"))
    token.on_cancel(lambda reason: calls.append(f"b:{reason}"))
    token.cancel("stop")
    token.cancel("again")
    assert calls == ["a:stop", "b:stop"]


def test_a_callback_registered_after_cancellation_runs_at_once() -> None:
    token = CancellationToken()
    token.cancel("done")
    calls: list[str] = []
    remove = token.on_cancel(calls.append)
    assert calls == ["done"]
    remove()  # unregistering a callback that already ran is harmless
    assert calls == ["done"]


def test_an_unregistered_callback_is_not_called() -> None:
    token = CancellationToken()
    calls: list[str] = []
    remove = token.on_cancel(lambda reason: calls.append("removed"))
    token.on_cancel(lambda reason: calls.append("kept"))
    remove()
    remove()  # twice is harmless
    token.cancel()
    assert calls == ["kept"]


def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = CancellationToken()
    calls: list[str] = []

    def broken(reason: str) -> None:
        raise RuntimeError("callback bug")

    token.on_cancel(broken)
    token.on_cancel(calls.append)
    with caplog.at_level(logging.ERROR, logger="stageflow_otel.cancellation"):
        assert token.cancel("stop") is True
    assert calls == ["stop"]
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


# -- CleanupRegistry --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cleanup_runs_last_in_first_out_sync_and_async() -> None:
    registry = CleanupRegistry()
    order: list[str] = []

    async def close_db() -> None:
        await anyio.lowlevel.checkpoint()
        order.append("db")

    registry.register(lambda: order.append("file"), name="file")
    registry.register(close_db, name="db")
    registry.register(lambda: order.append("socket"), name="socket")
    assert len(registry) == 3

    report = await registry.run_all()

    assert order == ["socket", "db", "file"]
    assert report == CleanupReport(("socket", "db", "file"), ())
    assert report.ok
    assert len(registry) == 0


@pytest.mark.anyio
async def test_cleanup_runs_each_callback_once() -> None:
    registry = CleanupRegistry()
    calls: list[str] = []
    registry.register(lambda: calls.append("x"))
    await registry.run_all()
    second = await registry.run_all()
    assert calls == ["x"]
    assert second == CleanupReport((), ())


@pytest.mark.anyio
async def test_cleanup_names_default_to_the_qualified_name() -> None:
    registry = CleanupRegistry()

    def release() -> None:
        pass

    registry.register(release)
    report = await registry.run_all()
    assert report.completed == (release.__qualname__,)


@pytest.mark.anyio
async def test_cleanup_keeps_going_after_a_failing_callback() -> None:
    registry = CleanupRegistry()
    order: list[str] = []
    error = OSError("disk gone")

    def broken() -> None:
        order.append("broken")
        raise error

    registry.register(lambda: order.append("first"), name="first")
    registry.register(broken, name="broken")
    registry.register(lambda: order.append("last"), name="last")

    report = await registry.run_all()

    assert order == ["last", "broken", "first"]
    assert report.completed == ("last", "first")
    assert report.failed == (("broken", error),)
    assert not report.ok


@pytest.mark.anyio
async def test_each_cleanup_callback_has_its_own_timeout() -> None:
    registry = CleanupRegistry()
    order: list[str] = []

    async def hang() -> None:
        order.append("hang")
        await anyio.sleep_forever()

    registry.register(lambda: order.append("first"), name="first")
    registry.register(hang, name="hang")

    with anyio.fail_after(5):
        report = await registry.run_all(timeout=0.2)

    assert order == ["hang", "first"]
    assert report.completed == ("first",)
    ((name, exc),) = report.failed
    assert name == "hang"
    assert isinstance(exc, TimeoutError)


@pytest.mark.anyio
async def test_cleanup_runs_inside_a_cancelled_scope() -> None:
    registry = CleanupRegistry()
    order: list[str] = []

    async def close() -> None:
        await anyio.lowlevel.checkpoint()
        order.append("closed")

    registry.register(close, name="close")
    with anyio.CancelScope() as scope:
        scope.cancel()
        report = await registry.run_all()
    assert order == ["closed"]
    assert report.completed == ("close",)


@pytest.mark.anyio
async def test_an_infinite_timeout_is_allowed() -> None:
    registry = CleanupRegistry()
    registry.register(lambda: None, name="x")
    report = await registry.run_all(timeout=float("inf"))
    assert report.completed == ("x",)


# -- StructuredTaskGroup ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_task_group_runs_tasks_and_then_cleanup() -> None:
    order: list[str] = []

    async def work(name: str) -> None:
        await anyio.lowlevel.checkpoint()
        order.append(name)

    async with StructuredTaskGroup(cleanup_timeout=5) as group:
        group.start_soon(work, "a")
        group.start_soon(work, "b")
        group.register_cleanup(lambda: order.append("cleanup"), name="c")

    assert sorted(order[:2]) == ["a", "b"]
    assert order[2] == "cleanup"
    assert group.cleanup_report == CleanupReport(("c",), ())


async def fail_while_a_sibling_runs(order: list[str]) -> None:
    started = anyio.Event()

    async def sibling() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            order.append("sibling stopped")

    async def failing() -> None:
        await started.wait()
        raise ValueError("task failed")

    async with StructuredTaskGroup() as group:
        group.register_cleanup(lambda: order.append("cleanup"), name="c")
        group.start_soon(sibling)
        group.start_soon(failing)


@pytest.mark.anyio
async def test_the_task_group_cancels_siblings_on_error_and_still_cleans_up() -> None:
    order: list[str] = []
    with anyio.fail_after(5), pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="task failed")):
        await fail_while_a_sibling_runs(order)
    assert order == ["sibling stopped", "cleanup"]


@pytest.mark.anyio
async def test_the_task_group_cleans_up_when_cancelled() -> None:
    order: list[str] = []
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with StructuredTaskGroup() as group:
            group.register_cleanup(lambda: order.append("cleanup"), name="c")
            group.start_soon(forever)
            await started.wait()
            group.cancel()
    assert order == ["cleanup"]
    assert group.cleanup_report is not None
    assert group.cleanup_report.ok


@pytest.mark.anyio
async def test_the_task_group_must_be_entered() -> None:
    async def nothing() -> None:
        pass

    group = StructuredTaskGroup()
    with pytest.raises(RuntimeError, match="not entered"):
        group.start_soon(nothing)
    group.cancel()  # harmless before entering
