"""Usage: record it (``POST /api/v1/usage``, vendors and admins), and cost estimates
before ordering (no sign-in needed: prices are public)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import sqlalchemy as sa
from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts.auth import current_marketplace, require_identity, roles_required, visible_rows
from cmw.accounts.models import Role
from cmw.api.errors import ApiError, invalid
from cmw.catalog import service as catalog
from cmw.catalog.models import Plan, Product
from cmw.catalog.schemas import Amount
from cmw.extensions import current_session
from cmw.marketplaces import pricing
from cmw.orders import service as orders
from cmw.orders.models import Subscription
from cmw.usage import budgets, cloud, estimates, ingest, live, simulation
from cmw.usage.models import Budget

blp = Blueprint("usage", __name__, url_prefix="/api/v1", description="Usage and cost")


class EstimateItemSchema(Schema):
    product = fields.String(
        required=True, validate=validate.Length(min=1, max=80), metadata={"description": "slug or id"}
    )
    plan = fields.String(
        required=True, validate=validate.Length(min=1, max=50), metadata={"description": "plan code"}
    )
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    usage = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=100)),
        values=Amount(),
        load_default=dict,
        metadata={"description": 'expected usage per month by metric, e.g. {"bandwidth.gb": "250"}'},
    )


class EstimateRequestSchema(Schema):
    items = fields.List(
        fields.Nested(EstimateItemSchema), required=True, validate=validate.Length(min=1, max=20)
    )
    months = fields.Integer(load_default=1, validate=validate.Range(min=1, max=120))


class EstimateLineSchema(Schema):
    label = fields.String()
    kind = fields.String()
    amount = fields.String(metadata={"description": "over the whole estimate"})
    per_period = fields.String()
    periods = fields.Integer()
    quantity = fields.Integer(allow_none=True)
    metric = fields.String()
    unit = fields.String(allow_none=True)
    usage_per_month = fields.String()
    included = fields.String()


class EstimateItemOutSchema(Schema):
    label = fields.String()
    plan = fields.String()
    plan_name = fields.String()
    billing_period = fields.String()
    quantity = fields.Integer()
    lines = fields.List(fields.Nested(EstimateLineSchema))
    setup_total = fields.String()
    recurring_total = fields.String()
    usage_total = fields.String()
    total = fields.String()
    monthly = fields.String()


class EstimateSchema(Schema):
    currency = fields.String()
    months = fields.Integer()
    items = fields.List(fields.Nested(EstimateItemOutSchema))
    setup_total = fields.String()
    total = fields.String(metadata={"description": "setup, fees and usage over the months"})
    monthly = fields.String(metadata={"description": "a month once set up, yearly fees spread over 12"})


def items_for(refs: list[dict[str, Any]]) -> list[estimates.Item]:
    """The published plans named by ``refs`` (product and plan code), as estimate items."""
    session, marketplace = current_session(), current_marketplace()
    found: list[estimates.Item] = []
    for index, ref in enumerate(refs):
        product: Product | None = catalog.find_published(session, marketplace, ref["product"])
        if product is None:
            raise estimates.EstimateError(
                f"items.{index}.product", f"{ref['product']!r} is not in this catalog"
            )
        live = product.live_version
        assert live is not None
        plan: Plan | None = next((p for p in live.plans if p.code == ref["plan"]), None)
        if plan is None:
            codes = ", ".join(p.code for p in live.plans)
            raise estimates.EstimateError(f"items.{index}.plan", f"{live.name} sells {codes}")
        specs = pricing.price_list(session, marketplace, product).specs(plan)
        found.append(estimates.Item(plan, ref.get("quantity", 1), ref.get("usage") or {}, live.name, specs))
    return found


@blp.route("/cost-estimates")
class CostEstimates(MethodView):
    @blp.arguments(EstimateRequestSchema)
    @blp.response(200, EstimateSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """What plans would cost over ``months``, with the expected usage per month: setup,
        recurring fees and usage, rated as billing rates them. Nothing is stored."""
        try:
            result = estimates.estimate(items_for(data["items"]), data["months"])
        except estimates.EstimateError as exc:
            raise invalid(exc.field, exc.message) from None
        return estimates.as_json(result)


# ------------------------------------------------------------------ ingestion
class UsageRecordSchema(Schema):
    id = fields.String(
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"description": "the idempotency key: a record sent again is acknowledged, not counted"},
    )
    subscription = fields.UUID(metadata={"description": "the subscription the usage is for; or resource"})
    resource = fields.String(
        metadata={"description": "a deployment's id, or its VM's or disk's id in the cloud; or subscription"}
    )
    metric = fields.String(required=True, metadata={"example": "bandwidth.gb"})
    quantity = Amount(required=True, metadata={"description": "not negative; at most 8 decimals"})
    timestamp = fields.AwareDateTime(required=True, metadata={"description": "when the usage happened"})
    attributes = fields.Dict(metadata={"description": "kept with the record, up to 4 KiB of JSON"})


class UsageBatchSchema(Schema):
    records = fields.List(
        fields.Nested(UsageRecordSchema), required=True, validate=validate.Length(max=ingest.MAX_BATCH)
    )


class UsageRejectionSchema(Schema):
    index = fields.Integer(metadata={"description": "the record's place in the batch, from 0"})
    id = fields.String(allow_none=True)
    reason = fields.String()


class UsageResultSchema(Schema):
    accepted = fields.Integer(metadata={"description": "records counted now"})
    duplicates = fields.List(fields.String(), metadata={"description": "ids seen before: not counted again"})
    rejected = fields.List(fields.Nested(UsageRejectionSchema), metadata={"description": "with the reason"})


#: bytes a batch may have (10,000 records with attributes)
MAX_BODY = 32 * 1024 * 1024


@blp.route("/usage")
class UsageBatches(MethodView):
    @blp.doc(
        requestBody={"required": True, "content": {"application/json": {"schema": UsageBatchSchema}}},
        responses={"400": {"description": "not a batch"}, "413": {"description": "more than 10,000 records"}},
    )
    @blp.response(200, UsageResultSchema)
    @roles_required(Role.ADMIN, Role.VENDOR)
    def post(self) -> dict[str, Any]:
        """Record usage: up to 10,000 records. Each is checked on its own; the valid ones
        are counted once (by ``id``) even if the batch is sent again, and the others come
        back with the reason. Vendors send the usage of their products' subscriptions."""
        identity = require_identity()
        if (request.content_length or 0) > MAX_BODY:
            raise ApiError(413, f"a batch is at most {MAX_BODY // (1024 * 1024)} MiB")
        try:
            records = ingest.parse_batch(request.get_data(cache=False))
        except ingest.BatchError as exc:
            raise ApiError(exc.status, exc.message) from None
        scope = ingest.Scope(
            identity.marketplace.id,
            None if identity.is_admin else identity.organisations_with(Role.VENDOR),
        )
        session = current_session()
        result = ingest.ingest(session, scope, records, source="api")
        session.commit()
        return {
            "accepted": len(result.accepted),
            "duplicates": result.duplicates,
            "rejected": [dataclasses.asdict(r) for r in result.rejected],
        }


# ------------------------------------------------------------------ live costs and budgets
class CostLineSchema(Schema):
    label = fields.String()
    kind = fields.String(metadata={"description": "fee, per_unit or usage"})
    metric = fields.String(allow_none=True)
    quantity = Amount()
    unit = fields.String(allow_none=True)
    amount = Amount(metadata={"description": "so far this period"})
    projected = Amount(metadata={"description": "at the period's end, if usage goes on at this rate"})


class LiveCostSchema(Schema):
    subscription_id = fields.UUID()
    product = fields.String()
    plan = fields.String()
    currency = fields.String()
    period_start = fields.AwareDateTime()
    period_end = fields.AwareDateTime()
    at = fields.AwareDateTime()
    lines = fields.List(fields.Nested(CostLineSchema))
    total = Amount()
    projected_total = Amount()


class TotalSchema(Schema):
    currency = fields.String()
    total = Amount()
    projected_total = Amount()


class BudgetSchema(Schema):
    amount = Amount(required=True, metadata={"description": "a month's limit"})
    currency = fields.String(required=True, validate=validate.Length(equal=3))
    organisation_id = fields.UUID(load_default=None, metadata={"description": "if you buy for several"})
    spent = Amount(dump_only=True)
    projected = Amount(dump_only=True)
    percent = fields.Integer(dump_only=True)


class CostsSchema(Schema):
    organisation_id = fields.UUID()
    subscriptions = fields.List(fields.Nested(LiveCostSchema))
    totals = fields.List(fields.Nested(TotalSchema))
    budget = fields.Nested(BudgetSchema, allow_none=True)


class OrganisationArgs(Schema):
    organisation_id = fields.UUID(load_default=None)


def _customer(organisation_id: uuid.UUID | None) -> uuid.UUID:
    """The caller's customer organisation: the one named, or their only one."""
    return require_identity().customer(organisation_id, "query")


def _budget_json(standing: budgets.Standing) -> dict[str, Any]:
    return {
        "amount": standing.budget.amount,
        "currency": standing.budget.currency,
        "organisation_id": standing.budget.organisation_id,
        "spent": standing.spent,
        "projected": standing.projected,
        "percent": standing.percent,
    }


def costs_of(organisation_id: uuid.UUID) -> dict[str, Any]:
    session = current_session()
    found = live.of_customer(session, organisation_id)
    totals = live.totals(found)
    budget = session.get(Budget, organisation_id)
    return {
        "organisation_id": organisation_id,
        "subscriptions": [dataclasses.asdict(c) for c in found],
        "totals": [
            {"currency": currency, "total": total, "projected_total": projected}
            for currency, (total, projected) in sorted(totals.items())
        ],
        "budget": _budget_json(budgets.standing(session, budget, totals=totals))
        if budget is not None
        else None,
    }


@blp.route("/subscriptions/<uuid:subscription_id>/cost")
class SubscriptionCost(MethodView):
    @blp.response(200, LiveCostSchema)
    @roles_required(Role.CUSTOMER, Role.VENDOR, Role.ADMIN)
    def get(self, subscription_id: uuid.UUID) -> dict[str, Any]:
        """What the subscription costs in its current period so far, rated as billing will
        rate it, and the projection to the period's end. A trial, or a subscription that
        ended, costs nothing now (404: no live cost)."""
        identity = require_identity()
        subscription = current_session().scalar(
            sa.select(Subscription).where(
                Subscription.id == subscription_id,
                visible_rows(
                    identity, Subscription.marketplace_id, Subscription.customer_id,
                    lambda vendors: orders.of_vendors(Subscription, vendors),
                ),
            )
        )  # fmt: skip
        if subscription is None:
            raise ApiError(404, "no such subscription")
        found = live.costs(current_session(), [subscription])
        if not found:
            raise ApiError(404, f"a {subscription.status.value} subscription has no live cost")
        return dataclasses.asdict(found[0])


@blp.route("/costs")
class Costs(MethodView):
    @blp.arguments(OrganisationArgs, location="query")
    @blp.response(200, CostsSchema)
    @roles_required(Role.CUSTOMER)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Your organisation's live costs: each subscription's current period so far and
        projected, the totals per currency, and the budget held against them."""
        return costs_of(_customer(args["organisation_id"]))


@blp.route("/budget")
class BudgetResource(MethodView):
    @blp.arguments(BudgetSchema)
    @blp.response(200, BudgetSchema)
    @roles_required(Role.CUSTOMER)
    def put(self, data: dict[str, Any]) -> dict[str, Any]:
        """Set your organisation's monthly budget: you are told when live costs reach 80 %
        and 100 % of it (a notification and an e-mail, once each a month)."""
        organisation_id = _customer(data["organisation_id"])
        session = current_session()
        try:
            budget = budgets.set_budget(
                session, require_identity().marketplace.id, organisation_id, data["amount"], data["currency"]
            )
        except budgets.BudgetError as exc:
            session.rollback()
            raise invalid(exc.field, exc.message) from None
        result = _budget_json(budgets.standing(session, budget))
        session.commit()
        return result

    @blp.arguments(OrganisationArgs, location="query")
    @blp.response(204)
    @roles_required(Role.CUSTOMER)
    def delete(self, args: dict[str, Any]) -> None:
        """Remove your organisation's budget (no more alerts)."""
        session = current_session()
        budget = session.get(Budget, _customer(args["organisation_id"]))
        if budget is not None:
            session.delete(budget)
        session.commit()


class CloudEventRulesSchema(Schema):
    vm_start = fields.List(fields.String(), metadata={"description": "events that start billing a VM"})
    vm_stop = fields.List(fields.String(), metadata={"description": "events that stop billing it"})
    volume_start = fields.List(fields.String())
    volume_stop = fields.List(fields.String())
    vm_metric = fields.String(metadata={"example": "vm.hours"})
    volume_metric = fields.String(metadata={"example": "volume.gb_hours"})


@blp.route("/admin/cloud-event-rules")
class CloudEventRulesResource(MethodView):
    @blp.response(200, CloudEventRulesSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> dict[str, Any]:
        """Which Apache CloudStack events start and stop billing this marketplace's VMs and
        volumes, and the metrics their time is recorded as."""
        return dataclasses.asdict(cloud.rules_of(current_session(), require_identity().marketplace.id))

    @blp.arguments(CloudEventRulesSchema)
    @blp.response(200, CloudEventRulesSchema)
    @roles_required(Role.ADMIN)
    def put(self, data: dict[str, Any]) -> dict[str, Any]:
        """Change them: events from now on are billed by the new rules (a rebuild applies
        them to the past)."""
        session = current_session()
        try:
            rules = cloud.set_rules(session, require_identity().marketplace.id, data)
        except cloud.RulesError as exc:
            session.rollback()
            raise invalid(exc.field, str(exc)) from None
        session.commit()
        return dataclasses.asdict(rules)


# ------------------------------------------------------------------ price simulation
class SimulationArgs(Schema):
    days = fields.Integer(load_default=30, validate=validate.Range(min=1, max=365))


class SimulatedBillSchema(Schema):
    subscription_id = fields.UUID()
    customer = fields.String()
    plan = fields.String()
    quantity = fields.Integer()
    currency = fields.String()
    current = Amount(metadata={"description": "the window at the published prices"})
    simulated = Amount(metadata={"description": "the window at the draft's prices"})
    difference = Amount()


class SimulationSchema(Schema):
    days = fields.Integer()
    start = fields.AwareDateTime()
    end = fields.AwareDateTime()
    draft_version = fields.Integer(
        allow_none=True, metadata={"description": "null: no draft, both are the same"}
    )
    bills = fields.List(fields.Nested(SimulatedBillSchema))
    totals = fields.List(fields.Nested(TotalSchema))
    not_in_draft = fields.List(
        fields.String(), metadata={"description": "plan codes the draft no longer sells"}
    )


def simulation_json(found: simulation.Simulation) -> dict[str, Any]:
    return {
        "days": found.days,
        "start": found.start,
        "end": found.end,
        "draft_version": found.draft_version,
        "bills": [{**dataclasses.asdict(b), "difference": b.difference} for b in found.bills],
        "totals": [
            {"currency": currency, "total": current, "projected_total": simulated}
            for currency, (current, simulated) in found.totals().items()
        ],
        "not_in_draft": found.not_in_draft,
    }


@blp.route("/vendor/products/<uuid:product_id>/price-simulation")
class PriceSimulation(MethodView):
    @blp.arguments(SimulationArgs, location="query")
    @blp.response(200, SimulationSchema)
    @roles_required(Role.VENDOR)
    def get(self, args: dict[str, Any], product_id: uuid.UUID) -> dict[str, Any]:
        """Your draft's prices applied to the last ``days`` of your customers' real usage,
        beside the published prices: each customer's bill and the revenue (in ``totals``,
        ``total`` is at the published prices, ``projected_total`` at the draft's)."""
        identity = require_identity()
        product = current_session().get(Product, product_id)
        if product is None or product.vendor_id not in identity.organisations_with(Role.VENDOR):
            raise ApiError(404, "no such product of yours")
        return simulation_json(simulation.simulate(current_session(), product, args["days"]))
