"""Taxes on invoices: the rates administrators configure by the seller's and the buyer's
country, and the EU's reverse charge for business buyers with a VAT number.

The rule applied is decided once per invoice and printed on it:

1. seller and buyer in two different EU countries, and the buyer has a VAT number:
   reverse charge, no VAT on the invoice (the buyer accounts for it);
2. else the rate configured for (seller country, buyer country), or for
   (seller country, any buyer: ``*``);
3. else no tax, and the invoice says that no rate is configured.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from decimal import Decimal
from typing import Any

import pycountry
import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.errors import BillingError
from cmw.billing.models import BillingSettings, TaxRate

#: the member states of the European Union (ISO 3166-1 alpha-2; Greece's VAT prefix is EL)
EU = frozenset(
    {
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
        "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    }
)  # fmt: skip
REVERSE_CHARGE = (
    "Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC)"
)
ANY_BUYER = "*"
#: how the rules that charge no tax at all begin (the e-invoice's "not subject to VAT")
NO_TAX = "No tax:"


@dataclasses.dataclass(frozen=True)
class TaxRule:
    #: percent, e.g. 22 for 22 %
    rate: Decimal
    #: what the invoice prints
    text: str
    reverse_charge: bool = False


def rule_for(
    session: Session,
    marketplace_id: uuid.UUID,
    settings: BillingSettings | None,
    buyer_country: str,
    buyer_vat: str | None,
) -> TaxRule:
    seller_country = settings.seller_country if settings else None
    if not seller_country:
        return TaxRule(Decimal(0), f"{NO_TAX} the marketplace's seller details are not set")
    buyer_country = buyer_country.upper()
    if seller_country in EU and buyer_country in EU and buyer_country != seller_country and buyer_vat:
        return TaxRule(Decimal(0), REVERSE_CHARGE, reverse_charge=True)
    rates = {
        r.buyer_country: r
        for r in session.scalars(
            sa.select(TaxRate).where(
                TaxRate.marketplace_id == marketplace_id,
                TaxRate.seller_country == seller_country,
                TaxRate.buyer_country.in_([buyer_country, ANY_BUYER]),
            )
        )
    }
    rate = rates.get(buyer_country) or rates.get(ANY_BUYER)
    if rate is None:
        return TaxRule(
            Decimal(0), f"{NO_TAX} no rate is configured for sales from {seller_country} to {buyer_country}"
        )
    return TaxRule(rate.rate, f"{rate.name} {format(rate.rate.normalize(), 'f')}%")


# ------------------------------------------------------------------ administration
def _country(value: str, field: str, *, any_allowed: bool = False) -> str:
    code = value.strip().upper()
    if any_allowed and code == ANY_BUYER:
        return code
    if pycountry.countries.get(alpha_2=code) is None:
        raise BillingError(field, f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return code


def settings_of(session: Session, marketplace_id: uuid.UUID) -> BillingSettings:
    found = session.get(BillingSettings, marketplace_id)
    if found is None:
        found = BillingSettings(marketplace_id=marketplace_id, seller_address=[])
        session.add(found)
        session.flush()
    return found


def update_settings(session: Session, marketplace_id: uuid.UUID, changes: dict[str, Any]) -> BillingSettings:
    """Change the seller details and payment terms printed on the marketplace's invoices."""
    settings = settings_of(session, marketplace_id)
    if changes.get("seller_country") is not None:
        changes["seller_country"] = _country(changes["seller_country"], "seller_country")
    if changes.get("seller_vat_number"):
        vat = re.sub(r"[\s.\-]", "", changes["seller_vat_number"]).upper()
        if not re.fullmatch(r"[A-Z0-9]{4,20}", vat):
            raise BillingError("seller_vat_number", "use 4 to 20 letters and digits")
        changes["seller_vat_number"] = vat
    if "reminder_days" in changes:
        changes["reminder_days"] = sorted(set(changes["reminder_days"]))
    for name, value in changes.items():
        setattr(settings, name, value)
    past_due, suspend, cancel = (
        settings.past_due_after_days,
        settings.suspend_after_days,
        settings.cancel_after_days,
    )
    if not past_due <= suspend <= cancel:
        raise BillingError(
            "suspend_after_days",
            "dunning goes past due, then suspends, then cancels:"
            f" {past_due} <= {suspend} <= {cancel} is not so",
        )
    session.flush()
    return settings


def add_rate(
    session: Session,
    marketplace_id: uuid.UUID,
    seller_country: str,
    buyer_country: str,
    rate: Decimal,
    name: str,
) -> TaxRate:
    seller = _country(seller_country, "seller_country")
    buyer = _country(buyer_country, "buyer_country", any_allowed=True)
    if not Decimal(0) <= rate <= Decimal(100):
        raise BillingError("rate", "a percentage from 0 to 100")
    taken = session.scalar(
        sa.select(TaxRate.id).where(
            TaxRate.marketplace_id == marketplace_id,
            TaxRate.seller_country == seller,
            TaxRate.buyer_country == buyer,
        )
    )
    if taken is not None:
        raise BillingError(
            "buyer_country", f"a rate for sales from {seller} to {buyer} exists: change or delete it"
        )
    found = TaxRate(
        marketplace_id=marketplace_id,
        seller_country=seller,
        buyer_country=buyer,
        rate=rate,
        name=name.strip() or "VAT",
    )
    session.add(found)
    session.flush()
    return found
