"""The example pipeline of ``stageflow-otel demo``: processing an order.

A public module so that the demo works from an installed wheel and you can run, draw and
change it: ``stageflow-otel run stageflow_otel.demo:build_order_pipeline``; ``examples/``
re-exports it. It uses the engine and the tools only, never a telemetry library. Its stages
(``stageflow-otel graph`` draws them)::

    stage                kind       depends on
    load_order           transform  -
    enrich_customer      enrich     load_order
    check_inventory      enrich     load_order
    quote_shipping       enrich     load_order
    score_fraud          enrich     load_order
    fraud_guard          guard      score_fraud, enrich_customer
    route_fulfilment     route      load_order
    customs_declaration  work       route_fulfilment (conditional)
    price_order          transform  load_order, enrich_customer, quote_shipping
    reserve_stock        work       load_order, check_inventory, fraud_guard
    charge_payment       work       price_order, fraud_guard
    send_confirmation    work       reserve_stock, charge_payment, customs_declaration

- ``enrich_customer``, ``check_inventory``, ``quote_shipping`` and ``score_fraud`` run in
  parallel once ``load_order`` is done.
- ``quote_shipping`` fails with a :class:`~stageflow_otel.core.TransientError` on its first
  attempt of every run and succeeds on the second, under a ``RetryInterceptor`` with a
  ``TimeoutInterceptor`` inside it (one timeout per attempt).
- ``reserve_stock`` calls the ``reserve_inventory`` tool through a ``ToolExecutor``, which
  validates the arguments against the tool's JSON Schema.
- ``charge_payment`` runs the ``payment`` subpipeline (``authorize_payment`` then
  ``capture_payment``).
- ``price_order`` is a plain ``def``; with ``build_order_pipeline(remote=executor)``
  (``stageflow-otel demo --dask ADDRESS``) it runs on a Dask worker, in the same trace.
- ``send_confirmation`` drafts the e-mail with a mock chat model
  (:class:`~stageflow_otel.helpers.MockChatModel`: a ``chat mock-writer`` GenAI span when the
  helpers are recorded, as the command line does) and keeps a preview with the customer's
  address redacted by :class:`~stageflow_otel.helpers.PIIDetector`.
- ``customs_declaration`` is conditional: it is skipped for domestic orders, because
  ``route_fulfilment`` says so with a ``skip_reason``.

Most stages sleep a few milliseconds, standing in for the I/O a real one would do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from stageflow_otel.core import (
    Interceptor,
    Pipeline,
    RetryInterceptor,
    StageContext,
    StageKind,
    StageOutput,
    TimeoutInterceptor,
    TransientError,
)
from stageflow_otel.distributed import RemoteExecutor, remote_stage
from stageflow_otel.helpers import MockChatModel, PIIDetector
from stageflow_otel.tools import ToolExecutor, ToolInput, ToolOutput, ToolRegistry, UndoMetadata

__all__ = (
    "PAYMENT_PIPELINE_NAME",
    "PIPELINE_NAME",
    "build_order_pipeline",
    "build_payment_pipeline",
    "example_stage_names",
    "order_input",
)

PIPELINE_NAME = "order_fulfilment"
PAYMENT_PIPELINE_NAME = "payment"

_CATALOGUE: Mapping[str, tuple[str, float]] = {
    "SKU-KETTLE": ("Electric kettle", 39.90),
    "SKU-MUG": ("Stoneware mug", 8.50),
    "SKU-BEANS": ("Coffee beans 1 kg", 24.00),
    "SKU-GRINDER": ("Burr grinder", 129.00),
}
_TIER_DISCOUNT: Mapping[str, float] = {"standard": 0.0, "silver": 0.05, "gold": 0.10}


def order_input(index: int = 0) -> dict[str, Any]:
    """The run input of the demo's ``index``-th run (0-based), deterministic.

    Every third order, starting with the second, ships abroad, so ``customs_declaration`` runs
    for it; the others are domestic and skip it.
    """
    skus = list(_CATALOGUE)
    items = [
        {"sku": skus[index % len(skus)], "qty": 1 + index % 2},
        {"sku": skus[(index + 2) % len(skus)], "qty": 2},
    ]
    return {
        "order_id": f"ord-{1001 + index}",
        "customer_id": f"cust-{42 + index % 5}",
        "country": "DE" if index % 3 == 1 else "GB",
        "items": items,
    }


def _unit(key: str) -> float:
    """A stable number in [0, 1) derived from ``key`` (deterministic stand-in for a service)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


# -- stages of the order pipeline -------------------------------------------------------------


async def load_order(ctx: StageContext) -> dict[str, Any]:
    """Load the order named in the run input and price its lines."""
    await anyio.sleep(0.008)
    lines = []
    for item in ctx.data.get("items", ()):
        title, price = _CATALOGUE[item["sku"]]
        lines.append({**item, "title": title, "unit_price": price})
    subtotal = round(sum(line["unit_price"] * line["qty"] for line in lines), 2)
    return {
        "order_id": ctx.data.get("order_id", "ord-1001"),
        "customer_id": ctx.data.get("customer_id", "cust-42"),
        "country": ctx.data.get("country", "GB"),
        "lines": lines,
        "subtotal": subtotal,
        "currency": "GBP",
    }


async def enrich_customer(ctx: StageContext) -> dict[str, Any]:
    """Look the customer up: loyalty tier and order history."""
    await anyio.sleep(0.014)
    customer = ctx.inputs.require_from("load_order", "customer_id")
    tiers = ("standard", "silver", "gold")
    return {
        "tier": tiers[int(_unit(customer) * len(tiers))],
        "lifetime_orders": 1 + int(_unit(customer + "#orders") * 40),
    }


async def check_inventory(ctx: StageContext) -> dict[str, Any]:
    """Check stock for every line and pick the warehouse that has it all."""
    await anyio.sleep(0.018)
    lines = ctx.inputs.require_from("load_order", "lines")
    return {"in_stock": True, "warehouse": "LHR-2", "skus": [line["sku"] for line in lines]}


async def quote_shipping(ctx: StageContext) -> dict[str, Any]:
    """Ask the carrier for a quote; the carrier times out on the first attempt of every run."""
    await anyio.sleep(0.011)
    if ctx.attempt == 1:
        raise TransientError("carrier API timed out (simulated): retry")
    country = ctx.inputs.require_from("load_order", "country")
    international = country != "GB"
    return {
        "carrier": "DHL" if international else "Royal Mail",
        "shipping": 14.5 if international else 3.95,
        "eta_days": 4 if international else 1,
    }


async def score_fraud(ctx: StageContext) -> dict[str, Any]:
    """Score the order for fraud (a model call in real life)."""
    await anyio.sleep(0.022)
    order_id = ctx.inputs.require_from("load_order", "order_id")
    return {"fraud_score": round(0.02 + _unit(order_id) * 0.2, 3)}


async def fraud_guard(ctx: StageContext) -> StageOutput:
    """Stop orders with a high fraud score; trusted customers get a higher threshold."""
    await anyio.sleep(0.003)
    score = float(ctx.inputs.require_from("score_fraud", "fraud_score"))
    tier = ctx.inputs.require_from("enrich_customer", "tier")
    threshold = 0.8 if tier == "gold" else 0.6
    if score > threshold:
        return StageOutput.fail(f"fraud score {score} is above {threshold} for a {tier} customer")
    return StageOutput.ok(approved=True, threshold=threshold)


async def route_fulfilment(ctx: StageContext) -> dict[str, Any]:
    """Decide how the order ships; domestic orders need no customs declaration."""
    await anyio.sleep(0.004)
    country = ctx.inputs.require_from("load_order", "country")
    if country == "GB":
        return {"route": "domestic", "skip_reason": "domestic order: no customs declaration"}
    return {"route": "international", "destination": country}


async def customs_declaration(ctx: StageContext) -> dict[str, Any]:
    """File the customs declaration of an international order."""
    await anyio.sleep(0.016)
    destination = ctx.inputs.require_from("route_fulfilment", "destination")
    return {"customs_reference": f"CN23-{destination}-{ctx.pipeline_run_id[:8]}"}


def price_order(ctx: StageContext) -> dict[str, Any]:
    """Apply the loyalty discount and add shipping (plain ``def``: runs in a worker thread)."""
    subtotal = float(ctx.inputs.require_from("load_order", "subtotal"))
    discount = _TIER_DISCOUNT[ctx.inputs.require_from("enrich_customer", "tier")]
    shipping = float(ctx.inputs.require_from("quote_shipping", "shipping"))
    total = round(subtotal * (1 - discount) + shipping, 2)
    return {"discount": discount, "total": total}


class ReserveStock:
    """Reserves the order's stock through the ``reserve_inventory`` tool.

    Args:
        executor: Runs the tool; by default one over :func:`build_tool_registry` (so that a
            pipeline file can name the class alone).
    """

    kind = StageKind.WORK

    def __init__(self, executor: ToolExecutor | None = None) -> None:
        self.name = "reserve_stock"
        self.executor = executor if executor is not None else ToolExecutor(build_tool_registry())

    async def execute(self, ctx: StageContext) -> dict[str, Any]:
        """Call the tool with the order's lines; a schema violation fails the stage."""
        lines = ctx.inputs.require_from("load_order", "lines")
        output = await self.executor.execute(
            ToolInput(
                tool_name="reserve_inventory",
                payload={
                    "order_id": ctx.data.get("order_id", "ord-1001"),
                    "warehouse": ctx.inputs.require_from("check_inventory", "warehouse"),
                    "items": [{"sku": line["sku"], "qty": line["qty"]} for line in lines],
                },
            ),
            ctx,
        )
        return dict(output.data)


async def charge_payment(ctx: StageContext) -> StageOutput:
    """Charge the customer by running the ``payment`` subpipeline."""
    result = await ctx.spawn_subpipeline(
        build_payment_pipeline(),
        data={
            "order_id": ctx.data.get("order_id", "ord-1001"),
            "amount": ctx.inputs.require_from("price_order", "total"),
        },
    )
    if not result.success:
        return StageOutput.fail(f"payment failed: {result.error}")
    return StageOutput.ok(
        authorization_id=result.data("authorize_payment")["authorization_id"],
        capture_id=result.data("capture_payment")["capture_id"],
        amount=result.data("capture_payment")["amount"],
    )


def _confirmation_reply(messages: Sequence[Mapping[str, Any]]) -> str:
    """What the demo's writer model answers: the order, and the address it went to."""
    facts = str(messages[-1].get("content", ""))
    return f"Thank you for your order. {facts} We will e-mail you when it ships."


# A deterministic chat model standing in for the one that drafts the e-mail: its calls are
# GenAI client spans (``chat mock-writer``) where the application records the helpers.
_WRITER = MockChatModel("mock-writer", replies=_confirmation_reply, latency=0.004)
_PII = PIIDetector()


async def send_confirmation(ctx: StageContext) -> dict[str, Any]:
    """Draft the confirmation with a chat model and e-mail it; the output keeps no address."""
    reservation = ctx.inputs.require_from("reserve_stock", "reservation_id")
    capture = ctx.inputs.require_from("charge_payment", "capture_id")
    customer = ctx.data.get("customer_id", "cust-42")
    draft = await _WRITER.chat(
        [
            {"role": "system", "content": "Write a short, friendly order confirmation."},
            {
                "role": "user",
                "content": f"Reservation {reservation}, payment {capture}, sent to "
                f"{customer}@example.com.",
            },
        ],
        ctx=ctx,
        max_tokens=60,
    )
    await anyio.sleep(0.002)  # the e-mail provider
    return {
        "message_id": f"msg-{reservation[-6:]}-{capture[-6:]}",
        "channel": "email",
        "preview": _PII.redact(draft.text),
    }


# -- the payment subpipeline ------------------------------------------------------------------


async def authorize_payment(ctx: StageContext) -> dict[str, Any]:
    """Authorise the amount with the payment provider."""
    await anyio.sleep(0.012)
    amount = float(ctx.data["amount"])
    return {"authorization_id": f"auth-{ctx.pipeline_run_id[:12]}", "amount": amount}


async def capture_payment(ctx: StageContext) -> dict[str, Any]:
    """Capture the authorised amount."""
    await anyio.sleep(0.009)
    authorization = ctx.inputs.require_from("authorize_payment", "authorization_id")
    amount = ctx.inputs.require_from("authorize_payment", "amount")
    return {"capture_id": authorization.replace("auth-", "cap-"), "amount": amount}


def build_payment_pipeline() -> Pipeline:
    """The ``payment`` subpipeline: ``authorize_payment`` then ``capture_payment``."""
    return (
        Pipeline(PAYMENT_PIPELINE_NAME)
        .with_stage("authorize_payment", authorize_payment, StageKind.WORK)
        .with_stage("capture_payment", capture_payment, StageKind.WORK, ["authorize_payment"])
    )


# -- the tool ---------------------------------------------------------------------------------

RESERVE_INVENTORY_SCHEMA: Mapping[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["order_id", "warehouse", "items"],
    "additionalProperties": False,
    "properties": {
        "order_id": {"type": "string", "pattern": "^ord-[0-9]+$"},
        "warehouse": {"type": "string", "minLength": 1},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "additionalProperties": False,
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                },
            },
        },
    },
}


async def reserve_inventory(input: ToolInput) -> ToolOutput:
    """Hold stock for an order in a warehouse."""
    await anyio.sleep(0.007)
    order_id = str(input.payload["order_id"])
    reservation = f"res-{order_id}-{input.action_id[:6]}"
    units = sum(int(item["qty"]) for item in input.payload["items"])
    return ToolOutput.ok(
        reservation_id=reservation,
        units=units,
        undo_metadata={"reservation_id": reservation},
    )


async def release_inventory(metadata: UndoMetadata) -> None:
    """Release a reservation (the undo of ``reserve_inventory``)."""
    await anyio.sleep(0.002)


def build_tool_registry() -> ToolRegistry:
    """A registry holding the ``reserve_inventory`` tool."""
    registry = ToolRegistry()
    registry.tool(
        name="reserve_inventory",
        action_type="inventory.reserve",
        input_schema=RESERVE_INVENTORY_SCHEMA,
        undoable=True,
        undo_handler=release_inventory,
    )(reserve_inventory)
    return registry


# -- the pipeline -----------------------------------------------------------------------------


def build_order_pipeline(*, remote: RemoteExecutor[Any] | None = None) -> Pipeline:
    """The order pipeline of the demo (see the module documentation for its shape).

    Args:
        remote: When given, ``price_order`` runs on this executor's workers (a remote stage,
            see :func:`stageflow_otel.distributed.remote_stage`), e.g. a ``DaskExecutor``.
    """
    executor = ToolExecutor(build_tool_registry())
    flaky: list[Interceptor] = [
        RetryInterceptor(max_attempts=3, base_delay=0.02),
        TimeoutInterceptor(0.5),
    ]
    return (
        Pipeline(PIPELINE_NAME)
        .with_stage("load_order", load_order, StageKind.TRANSFORM)
        .with_stage("enrich_customer", enrich_customer, StageKind.ENRICH, ["load_order"])
        .with_stage("check_inventory", check_inventory, StageKind.ENRICH, ["load_order"])
        .with_stage(
            "quote_shipping",
            quote_shipping,
            StageKind.ENRICH,
            ["load_order"],
            interceptors=flaky,
        )
        .with_stage("score_fraud", score_fraud, StageKind.ENRICH, ["load_order"])
        .with_stage("fraud_guard", fraud_guard, StageKind.GUARD, ["score_fraud", "enrich_customer"])
        .with_stage("route_fulfilment", route_fulfilment, StageKind.ROUTE, ["load_order"])
        .with_stage(
            "customs_declaration",
            customs_declaration,
            StageKind.WORK,
            ["route_fulfilment"],
            conditional=True,
        )
        .with_stage(
            "price_order",
            price_order if remote is None else remote_stage(price_order, remote),
            StageKind.TRANSFORM,
            ["load_order", "enrich_customer", "quote_shipping"],
        )
        .with_stage(
            "reserve_stock",
            ReserveStock(executor),
            StageKind.WORK,
            ["load_order", "check_inventory", "fraud_guard"],
        )
        .with_stage(
            "charge_payment", charge_payment, StageKind.WORK, ["price_order", "fraud_guard"]
        )
        .with_stage(
            "send_confirmation",
            send_confirmation,
            StageKind.WORK,
            ["reserve_stock", "charge_payment", "customs_declaration"],
        )
    )


def example_stage_names() -> tuple[str, ...]:
    """Every stage of the example, the payment subpipeline's included."""
    return (
        *(spec.name for spec in build_order_pipeline().specs),
        *(spec.name for spec in build_payment_pipeline().specs),
    )
