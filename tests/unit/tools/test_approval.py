from __future__ import annotations

import math

import anyio
import pytest

from stageflow_otel.tools import (
    ApprovalAlreadyDecidedError,
    ApprovalRequest,
    ApprovalRequestNotFoundError,
    ApprovalService,
    ApprovalStatus,
    ToolApprovalTimeoutError,
)

pytestmark = pytest.mark.anyio


def open_request(service: ApprovalService, run_id: str = "run-1") -> str:
    return service.request_approval(tool="delete", action_id="a1", pipeline_run_id=run_id)


async def test_waiter_wakes_on_a_decision_made_while_waiting() -> None:
    service = ApprovalService()
    request_id = open_request(service)
    async with anyio.create_task_group() as tg:

        async def decide() -> None:
            await anyio.sleep(0.01)
            service.record_decision(request_id, True, decided_by="alice", reason="fine")

        tg.start_soon(decide)
        with anyio.fail_after(5):
            decision = await service.await_decision(request_id, timeout=math.inf)
    assert decision.granted
    assert (decision.status, decision.decided_by, decision.reason) == (
        ApprovalStatus.APPROVED,
        "alice",
        "fine",
    )
    request = service.get(request_id)
    assert request is not None
    assert request.status is ApprovalStatus.APPROVED
    assert request.decided_at is not None


async def test_decision_made_before_waiting_is_returned_at_once() -> None:
    service = ApprovalService()
    request_id = open_request(service)
    service.record_decision(request_id, False, decided_by="bob", reason="too risky")
    decision = await service.await_decision(request_id, timeout=0)
    assert not decision.granted
    assert decision.status is ApprovalStatus.DENIED
    assert decision.reason == "too risky"


async def test_timeout_expires_the_request() -> None:
    service = ApprovalService(default_timeout=0.02)
    request_id = open_request(service)
    with pytest.raises(ToolApprovalTimeoutError) as info:
        await service.await_decision(request_id)
    assert (info.value.tool, info.value.request_id, info.value.timeout_s) == (
        "delete",
        request_id,
        0.02,
    )
    request = service.get(request_id)
    assert request is not None
    assert (request.status, request.reason) == (ApprovalStatus.EXPIRED, "approval_timeout")
    assert service.pending() == []
    with pytest.raises(ApprovalAlreadyDecidedError, match="is already expired"):
        service.record_decision(request_id, True)
    # Asking again reports the same expiry.
    with pytest.raises(ToolApprovalTimeoutError):
        await service.await_decision(request_id, timeout=10)


async def test_every_waiter_sees_the_expiry() -> None:
    service = ApprovalService()
    request_id = open_request(service)
    errors: list[BaseException] = []

    async def wait(timeout: float) -> None:
        try:
            await service.await_decision(request_id, timeout=timeout)
        except ToolApprovalTimeoutError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, 0.01)
            tg.start_soon(wait, math.inf)
    assert len(errors) == 2


async def test_cancel_gives_a_cancelled_decision() -> None:
    service = ApprovalService()
    request_id = open_request(service)
    async with anyio.create_task_group() as tg:

        async def cancel() -> None:
            await anyio.sleep(0.01)
            assert service.cancel(request_id, reason="run stopped")

        tg.start_soon(cancel)
        with anyio.fail_after(5):
            decision = await service.await_decision(request_id, timeout=math.inf)
    assert (decision.status, decision.granted, decision.reason) == (
        ApprovalStatus.CANCELLED,
        False,
        "run stopped",
    )
    assert service.cancel(request_id) is False
    assert service.cancel("unknown") is False


async def test_pending_per_run_and_bookkeeping() -> None:
    seen: list[ApprovalRequest] = []
    service = ApprovalService(on_request=seen.append)
    a = open_request(service, "run-1")
    b = open_request(service, "run-2")
    c = service.request_approval(
        tool="pay", action_id="a3", pipeline_run_id="run-1", message="Pay?"
    )
    assert [r.request_id for r in seen] == [a, b, c]
    assert seen[0].message == "Approve delete?"
    assert seen[2].message == "Pay?"
    assert [r.request_id for r in service.pending("run-1")] == [a, c]
    assert [r.request_id for r in service.pending()] == [a, b, c]
    service.record_decision(a, True)
    assert [r.request_id for r in service.pending("run-1")] == [c]
    stats = service.statistics()
    assert (stats.pending, stats.approved) == (2, 1)
    assert service.forget(b) is False  # pending requests are kept
    assert service.forget(a) is True
    assert service.get(a) is None
    with pytest.raises(ApprovalRequestNotFoundError):
        service.record_decision(a, True)
    with pytest.raises(ApprovalRequestNotFoundError):
        await service.await_decision("nope")


async def test_history_bounds_settled_requests() -> None:
    service = ApprovalService(history=2)
    ids = [open_request(service) for _ in range(4)]
    for request_id in ids[:3]:
        service.cancel(request_id)
    assert service.get(ids[0]) is None
    assert service.get(ids[1]) is not None
    assert service.get(ids[3]) is not None


async def test_failing_on_request_callback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def explode(request: ApprovalRequest) -> None:
        raise RuntimeError("notifier down")

    service = ApprovalService(on_request=explode)
    request_id = open_request(service)
    assert service.get(request_id) is not None
    assert "approval on_request callback failed" in caplog.text
