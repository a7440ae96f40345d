"""Coupons: a percentage or a fixed amount off a subscription's recurring fees, for one
period, a number of periods or for ever; limited to products, plans (by code) or the
marketplace; with a redemption limit and an expiry. A customer redeems one coupon per
subscription; billing applies it as a discount line on each period's fees in advance."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.errors import BillingError
from cmw.billing.models import Coupon, CouponDuration, CouponKind, CouponRedemption
from cmw.catalog.models import Plan
from cmw.db import utcnow
from cmw.money import CurrencyError, check_currency, round_to_minor
from cmw.orders.models import Subscription, SubscriptionStatus

CODE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,39}$")
ZERO = Decimal(0)


def create(session: Session, marketplace_id: uuid.UUID, data: dict[str, Any]) -> Coupon:
    code = str(data.get("code", "")).strip().upper()
    if not CODE.match(code):
        raise BillingError("code", "2 to 40 letters, digits, '-' or '_'")
    if session.scalar(
        sa.select(Coupon.id).where(Coupon.marketplace_id == marketplace_id, Coupon.code == code)
    ):
        raise BillingError("code", f"{code} exists in this marketplace")
    kind = CouponKind(data["kind"])
    percent, amount, currency = data.get("percent"), data.get("amount"), data.get("currency")
    if kind is CouponKind.PERCENT:
        if percent is None or not ZERO < percent <= 100:
            raise BillingError("percent", "a percent coupon takes off more than 0 and at most 100 percent")
        amount = currency = None
    else:
        if amount is None or amount <= 0:
            raise BillingError("amount", "a fixed coupon takes off a positive amount")
        try:
            currency = check_currency(str(currency or ""))
        except CurrencyError as exc:
            raise BillingError("currency", str(exc)) from None
        if round_to_minor(amount, currency) != amount:
            raise BillingError("amount", f"{currency} amounts have at most the currency's minor unit")
        percent = None
    duration = CouponDuration(data.get("duration", CouponDuration.ONCE))
    periods = data.get("periods")
    if duration is CouponDuration.REPEATING and not (periods and periods > 0):
        raise BillingError("periods", "a repeating coupon says for how many periods")
    if data.get("max_redemptions") is not None and data["max_redemptions"] < 1:
        raise BillingError("max_redemptions", "at least 1, or none for no limit")
    coupon = Coupon(
        marketplace_id=marketplace_id,
        code=code,
        kind=kind,
        percent=percent,
        amount=amount,
        currency=currency,
        duration=duration,
        periods=periods if duration is CouponDuration.REPEATING else None,
        product_ids=[str(p) for p in data.get("product_ids") or []],
        plan_codes=list(data.get("plan_codes") or []),
        max_redemptions=data.get("max_redemptions"),
        expires_at=data.get("expires_at"),
    )
    session.add(coupon)
    session.flush()
    return coupon


def redeem(
    session: Session,
    subscription: Subscription,
    code: str,
    actor_id: uuid.UUID | None,
    now: dt.datetime | None = None,
) -> CouponRedemption:
    """Apply a coupon to a subscription: the next periods' fees are discounted."""
    now = now or utcnow()
    coupon = session.scalar(
        sa.select(Coupon)
        .where(Coupon.marketplace_id == subscription.marketplace_id, Coupon.code == code.strip().upper())
        .with_for_update()
    )
    if coupon is None:
        raise BillingError("code", "no such coupon")
    if coupon.expires_at is not None and coupon.expires_at <= now:
        raise BillingError("code", f"{coupon.code} expired on {coupon.expires_at:%d %b %Y}")
    if subscription.status not in (
        SubscriptionStatus.ACTIVE,
        SubscriptionStatus.TRIALING,
        SubscriptionStatus.PAST_DUE,
    ):
        raise BillingError("subscription", "the subscription has ended")
    if coupon.product_ids and str(subscription.product_id) not in coupon.product_ids:
        raise BillingError("code", f"{coupon.code} is not for this product")
    plan = session.get(Plan, subscription.plan_id)
    assert plan is not None
    if coupon.plan_codes and plan.code not in coupon.plan_codes:
        raise BillingError("code", f"{coupon.code} is for the plans {', '.join(coupon.plan_codes)}")
    if coupon.kind is CouponKind.FIXED and coupon.currency != plan.currency:
        raise BillingError(
            "code", f"{coupon.code} is in {coupon.currency}, the subscription in {plan.currency}"
        )
    if session.scalar(
        sa.select(CouponRedemption.id).where(CouponRedemption.subscription_id == subscription.id)
    ):
        raise BillingError("code", "the subscription has a coupon already")
    if coupon.max_redemptions is not None:
        used = session.scalar(
            sa.select(sa.func.count())
            .select_from(CouponRedemption)
            .where(CouponRedemption.coupon_id == coupon.id)
        )
        if (used or 0) >= coupon.max_redemptions:
            raise BillingError("code", f"{coupon.code} has been used as often as it may")
    redemption = CouponRedemption(
        coupon_id=coupon.id, subscription_id=subscription.id, redeemed_at=now, redeemed_by_id=actor_id
    )
    session.add(redemption)
    session.flush()
    return redemption


def applies(coupon: Coupon, redemption: CouponRedemption, plan: Plan) -> bool:
    """Whether the coupon discounts the next period of a subscription now on ``plan``."""
    if coupon.plan_codes and plan.code not in coupon.plan_codes:
        return False
    if coupon.kind is CouponKind.FIXED and coupon.currency != plan.currency:
        return False
    if coupon.duration is CouponDuration.ONCE:
        return redemption.periods_applied < 1
    if coupon.duration is CouponDuration.REPEATING:
        return redemption.periods_applied < (coupon.periods or 0)
    return True


def discount(coupon: Coupon, fees: Decimal, currency: str) -> Decimal:
    """What the coupon takes off a period's ``fees`` (never more than them)."""
    if coupon.kind is CouponKind.PERCENT:
        assert coupon.percent is not None
        return min(fees, round_to_minor(fees * coupon.percent / 100, currency))
    assert coupon.amount is not None
    return min(fees, coupon.amount)
