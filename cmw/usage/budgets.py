"""Budgets: a customer organisation's monthly spending limit in one currency, held against
its live costs. The worker looks every minute; when the live costs of the current periods
reach 80 % of the budget the customer is told (``budget.warning``), at 100 % again
(``budget.exceeded``), each once per calendar month: a notification and an e-mail."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.db import utcnow
from cmw.events.service import emit
from cmw.money import CurrencyError, check_currency, format_amount, round_to_minor
from cmw.usage import live
from cmw.usage.models import Budget

THRESHOLDS = (80, 100)


class BudgetError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class Standing:
    budget: Budget
    spent: Decimal
    projected: Decimal

    @property
    def percent(self) -> int:
        return int(self.spent * 100 / self.budget.amount) if self.budget.amount > 0 else 0


def set_budget(
    session: Session, marketplace_id: uuid.UUID, organisation_id: uuid.UUID, amount: Decimal, currency: str
) -> Budget:
    try:
        currency = check_currency(currency)
    except CurrencyError as exc:
        raise BudgetError("currency", str(exc)) from None
    if amount <= 0 or round_to_minor(amount, currency) != amount:
        raise BudgetError("amount", f"a positive amount in {currency}, to the minor unit")
    budget = session.get(Budget, organisation_id, with_for_update=True)
    if budget is None:
        budget = Budget(organisation_id=organisation_id, marketplace_id=marketplace_id, alerted_percent=0)
        session.add(budget)
    if budget.amount != amount or budget.currency != currency:
        # a new limit: the alerts of this month start again
        budget.alerted_month, budget.alerted_percent = None, 0
    budget.amount, budget.currency = amount, currency
    session.flush()
    return budget


def standing(
    session: Session,
    budget: Budget,
    now: dt.datetime | None = None,
    totals: dict[str, tuple[Decimal, Decimal]] | None = None,
) -> Standing:
    """The budget against the customer's live costs (``totals`` if the caller has rated
    them already, per currency: so far, projected)."""
    if totals is None:
        totals = live.totals(live.of_customer(session, budget.organisation_id, now))
    spent, projected = totals.get(budget.currency, (Decimal(0), Decimal(0)))
    return Standing(budget, spent, projected)


def check(session: Session, budget: Budget, now: dt.datetime) -> int | None:
    """Tell the customer of a threshold newly reached; the threshold, or None."""
    month = f"{now:%Y-%m}"
    if budget.alerted_month != month:
        budget.alerted_month, budget.alerted_percent = month, 0
    state = standing(session, budget, now)
    reached = max((t for t in THRESHOLDS if state.percent >= t), default=0)
    if reached <= budget.alerted_percent:
        return None
    budget.alerted_percent = reached
    emit(
        session,
        "budget.exceeded" if reached >= 100 else "budget.warning",
        {
            "customer_id": str(budget.organisation_id),
            "percent": reached,
            "spent": format_amount(state.spent),
            "budget": format_amount(budget.amount),
            "projected": format_amount(state.projected),
            "currency": budget.currency,
        },
        marketplace_id=budget.marketplace_id,
    )
    return reached


def run(session_factory: Callable[[], Session], now: dt.datetime | None = None) -> int:
    """Every budget, each in its own transaction; how many alerts were sent."""
    now = now or utcnow()
    sent = 0
    with session_factory() as session:
        ids = list(session.scalars(sa.select(Budget.organisation_id)))
    for organisation_id in ids:
        with session_factory() as session:
            budget = session.get(Budget, organisation_id, with_for_update=True)
            if budget is not None and check(session, budget, now) is not None:
                sent += 1
            session.commit()
    return sent
