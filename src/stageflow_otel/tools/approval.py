"""Human-in-the-loop approval of tool calls.

:class:`ApprovalService` keeps approval requests in memory. A tool that ``requires_approval``
makes the executor open a request and wait for :meth:`ApprovalService.record_decision` (from a
UI, a chat command, a test ...) or :meth:`ApprovalService.cancel`; when the wait times out the
request becomes ``expired`` and the call fails with :class:`ToolApprovalTimeoutError`.

Waiting uses ``anyio.Event``, so the service works on asyncio and trio. Its methods must be
called from the event loop's thread; from another thread use
``anyio.from_thread.run_sync(service.record_decision, ...)``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import anyio

from stageflow_otel.core._checks import check_callable, check_count, check_seconds
from stageflow_otel.core.model import utc_now

from .errors import (
    ApprovalAlreadyDecidedError,
    ApprovalRequestNotFoundError,
    ToolApprovalTimeoutError,
)

__all__ = (
    "ApprovalDecision",
    "ApprovalRequest",
    "ApprovalService",
    "ApprovalStatistics",
    "ApprovalStatus",
)

logger = logging.getLogger("stageflow_otel.tools")


class ApprovalStatus(StrEnum):
    """Where an approval request stands."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A snapshot of an approval request.

    Attributes:
        request_id: The request's id.
        tool: The tool awaiting approval.
        action_id: The call awaiting approval.
        message: What the approver is shown.
        call_id: The LLM's tool call id, if any.
        pipeline_run_id: The run making the call.
        stage: The stage making the call.
        status: Where the request stands.
        created_at: When it was opened (UTC).
        decided_at: When it stopped being pending.
        decided_by: Who decided, if recorded.
        reason: Why, if recorded (``approval_timeout`` for an expired request).
    """

    request_id: str
    tool: str
    action_id: str
    message: str
    call_id: str | None = None
    pipeline_run_id: str | None = None
    stage: str | None = None
    status: ApprovalStatus = ApprovalStatus.PENDING
    created_at: _dt.datetime = field(default_factory=utc_now)
    decided_at: _dt.datetime | None = None
    decided_by: str | None = None
    reason: str | None = None

    @property
    def is_pending(self) -> bool:
        """Whether no decision has been made yet."""
        return self.status is ApprovalStatus.PENDING


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """How an approval request was decided.

    Attributes:
        request_id: The request.
        status: ``approved``, ``denied`` or ``cancelled``.
        decided_by: Who decided, if recorded.
        reason: Why, if recorded.
        decided_at: When (UTC).
    """

    request_id: str
    status: ApprovalStatus
    decided_by: str | None = None
    reason: str | None = None
    decided_at: _dt.datetime = field(default_factory=utc_now)

    @property
    def granted(self) -> bool:
        """Whether the call may go ahead."""
        return self.status is ApprovalStatus.APPROVED


@dataclass(frozen=True, slots=True)
class ApprovalStatistics:
    """Requests held by an :class:`ApprovalService`, by status."""

    pending: int
    approved: int
    denied: int
    expired: int
    cancelled: int


class _Entry:
    __slots__ = ("event", "expired_after", "request")

    def __init__(self, request: ApprovalRequest) -> None:
        self.request = request
        self.event: anyio.Event | None = None
        self.expired_after: float | None = None

    def settle(self, request: ApprovalRequest) -> None:
        self.request = request
        if self.event is not None:
            self.event.set()


class ApprovalService:
    """In-memory approval requests, decided by someone else while a tool call waits.

    Example::

        approvals = ApprovalService(on_request=notify_reviewers)
        executor = ToolExecutor(registry, approval_service=approvals, approval_timeout=300)
        ...
        approvals.record_decision(request_id, True, decided_by="alice")

    Args:
        default_timeout: Seconds :meth:`await_decision` waits when not told.
        on_request: Called with each new request (to notify approvers); must not block. An
            exception it raises is logged and ignored.
        history: How many settled (decided, expired or cancelled) requests to keep for
            :meth:`get`; the oldest are dropped first. Pending requests are always kept.
    """

    def __init__(
        self,
        *,
        default_timeout: float = 60.0,
        on_request: Callable[[ApprovalRequest], Any] | None = None,
        history: int = 1024,
    ) -> None:
        try:
            self.default_timeout = check_seconds(
                "default_timeout", default_timeout, allow_zero=True, allow_inf=True
            )
            check_callable("on_request", on_request, allow_none=True)
            self._history = check_count("history", history, minimum=0)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"ApprovalService: {exc}") from None
        self._on_request = on_request
        self._entries: dict[str, _Entry] = {}
        self._settled: deque[str] = deque()

    def request_approval(
        self,
        *,
        tool: str,
        action_id: str,
        message: str | None = None,
        call_id: str | None = None,
        pipeline_run_id: str | None = None,
        stage: str | None = None,
    ) -> str:
        """Open a pending request.

        Args:
            tool: The tool awaiting approval.
            action_id: The call awaiting approval.
            message: What the approver is shown (default: ``Approve <tool>?``).
            call_id: The LLM's tool call id, if any.
            pipeline_run_id: The run making the call.
            stage: The stage making the call.

        Returns:
            The request id.
        """
        request_id = str(uuid.uuid4())
        request = ApprovalRequest(
            request_id=request_id,
            tool=tool,
            action_id=action_id,
            message=message or f"Approve {tool}?",
            call_id=call_id,
            pipeline_run_id=pipeline_run_id,
            stage=stage,
        )
        self._entries[request_id] = _Entry(request)
        if self._on_request is not None:
            try:
                self._on_request(request)
            except Exception:
                logger.exception("approval on_request callback failed for request %s", request_id)
        return request_id

    async def await_decision(
        self, request_id: str, timeout: float | None = None
    ) -> ApprovalDecision:
        """Wait until the request is decided or cancelled.

        Returns at once if that already happened.

        Args:
            request_id: The request.
            timeout: Seconds to wait (default: ``default_timeout``; ``math.inf`` waits for ever).

        Returns:
            The decision (``granted`` tells whether the call may go ahead).

        Raises:
            ToolApprovalTimeoutError: If no decision came in time; the request is now
                ``expired`` and later decisions are refused.
            ApprovalRequestNotFoundError: For an unknown request id.
        """
        entry = self._entry(request_id)
        wait = self.default_timeout if timeout is None else timeout
        if entry.request.is_pending:
            if entry.event is None:
                entry.event = anyio.Event()
            with anyio.move_on_after(wait):
                await entry.event.wait()
            if entry.request.is_pending:
                entry.expired_after = wait
                self._settle(entry, ApprovalStatus.EXPIRED, reason="approval_timeout")
        request = entry.request
        if request.status is ApprovalStatus.EXPIRED:
            raise ToolApprovalTimeoutError(
                request.tool,
                request_id=request_id,
                timeout_s=wait if entry.expired_after is None else entry.expired_after,
                action_id=request.action_id,
                call_id=request.call_id,
            )
        return ApprovalDecision(
            request_id,
            request.status,
            request.decided_by,
            request.reason,
            request.decided_at or utc_now(),
        )

    def record_decision(
        self,
        request_id: str,
        granted: bool,
        *,
        decided_by: str | None = None,
        reason: str | None = None,
    ) -> ApprovalDecision:
        """Approve or deny a pending request, waking whoever waits on it.

        Args:
            request_id: The request.
            granted: ``True`` to approve, ``False`` to deny.
            decided_by: Who decided.
            reason: Why.

        Returns:
            The decision.

        Raises:
            ApprovalRequestNotFoundError: For an unknown request id.
            ApprovalAlreadyDecidedError: If the request is no longer pending (decided,
                expired or cancelled).
        """
        entry = self._entry(request_id)
        if not entry.request.is_pending:
            raise ApprovalAlreadyDecidedError(
                request_id, status=entry.request.status.value, tool=entry.request.tool
            )
        decision = ApprovalDecision(
            request_id,
            ApprovalStatus.APPROVED if granted else ApprovalStatus.DENIED,
            decided_by,
            reason,
        )
        self._settle(
            entry,
            decision.status,
            reason=reason,
            decided_by=decided_by,
            decided_at=decision.decided_at,
        )
        return decision

    def cancel(self, request_id: str, *, reason: str | None = None) -> bool:
        """Withdraw a pending request; a waiter gets a ``cancelled`` (not granted) decision.

        Returns:
            Whether the request was pending (unknown or settled requests are left alone).
        """
        entry = self._entries.get(request_id)
        if entry is None or not entry.request.is_pending:
            return False
        self._settle(entry, ApprovalStatus.CANCELLED, reason=reason or "cancelled")
        return True

    def get(self, request_id: str) -> ApprovalRequest | None:
        """A snapshot of the request, or ``None`` if unknown."""
        entry = self._entries.get(request_id)
        return None if entry is None else entry.request

    def pending(self, run_id: str | None = None) -> list[ApprovalRequest]:
        """Pending requests, oldest first; only those of run ``run_id`` when given."""
        return [
            e.request
            for e in self._entries.values()
            if e.request.is_pending and (run_id is None or e.request.pipeline_run_id == run_id)
        ]

    def forget(self, request_id: str) -> bool:
        """Drop a settled request (pending ones are kept); return whether it was dropped."""
        entry = self._entries.get(request_id)
        if entry is None or entry.request.is_pending:
            return False
        del self._entries[request_id]
        if request_id in self._settled:
            self._settled.remove(request_id)
        return True

    def statistics(self) -> ApprovalStatistics:
        """How many requests are held, by status."""
        counts = dict.fromkeys(ApprovalStatus, 0)
        for entry in self._entries.values():
            counts[entry.request.status] += 1
        return ApprovalStatistics(
            pending=counts[ApprovalStatus.PENDING],
            approved=counts[ApprovalStatus.APPROVED],
            denied=counts[ApprovalStatus.DENIED],
            expired=counts[ApprovalStatus.EXPIRED],
            cancelled=counts[ApprovalStatus.CANCELLED],
        )

    def _settle(
        self,
        entry: _Entry,
        status: ApprovalStatus,
        *,
        reason: str | None,
        decided_by: str | None = None,
        decided_at: _dt.datetime | None = None,
    ) -> None:
        """End a pending request with ``status``, waking its waiters; forget the oldest ones."""
        request = replace(
            entry.request,
            status=status,
            decided_at=utc_now() if decided_at is None else decided_at,
            decided_by=decided_by,
            reason=reason,
        )
        entry.settle(request)
        settled = self._settled
        settled.append(request.request_id)
        while len(settled) > self._history:
            old = settled.popleft()
            old_entry = self._entries.get(old)
            if old_entry is not None and not old_entry.request.is_pending:
                del self._entries[old]

    def _entry(self, request_id: str) -> _Entry:
        entry = self._entries.get(request_id)
        if entry is None:
            raise ApprovalRequestNotFoundError(request_id)
        return entry
