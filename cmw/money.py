"""Money: a Decimal amount with its ISO 4217 currency, and the one place amounts are
rounded to a currency's minor unit (half up).

Unit prices may carry more decimals than the currency (``PRICE_SCALE``); invoice lines are
rounded with :func:`round_to_minor`. Never float.
"""

from __future__ import annotations

import dataclasses
import functools
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import pycountry
from babel.numbers import get_currency_precision

#: decimals kept for unit prices (per GB, per hour)
PRICE_SCALE = 6
#: ISO 4217 codes that are not money a customer can pay with (test, metals, fund units)
NON_TENDER = frozenset(
    {"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"}
)


class CurrencyError(ValueError):
    """Not an ISO 4217 currency code usable for prices."""


def check_currency(code: str) -> str:
    """The code in upper case if it is an ISO 4217 currency for payments, else CurrencyError."""
    upper = code.strip().upper()
    if len(upper) != 3 or pycountry.currencies.get(alpha_3=upper) is None:
        raise CurrencyError(f"{code!r} is not an ISO 4217 currency code")
    if upper in NON_TENDER:
        raise CurrencyError(f"{upper} is not a currency prices can be set in")
    return upper


@functools.cache
def minor_unit_exponent(currency: str) -> int:
    """Decimals of the currency's minor unit: 2 for EUR, 0 for JPY, 3 for KWD."""
    return int(get_currency_precision(check_currency(currency)))


def round_to_minor(amount: Decimal, currency: str) -> Decimal:
    """Round half up to the currency's minor unit."""
    exponent = Decimal(1).scaleb(-minor_unit_exponent(currency))
    return amount.quantize(exponent, rounding=ROUND_HALF_UP)


def parse_amount(value: object, *, scale: int = PRICE_SCALE) -> Decimal:
    """A Decimal from a string or int (floats refused), with at most ``scale`` decimals."""
    if isinstance(value, float | bool):
        raise ValueError("amounts are strings or integers, never floats")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > scale:
        raise ValueError(f"{value} has more than {scale} decimals")
    return amount


def format_amount(amount: Decimal) -> str:
    """The canonical text of an amount: no exponent, no trailing zeros ("49", "0.05")."""
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "") else text


@dataclasses.dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError("Money.amount must be a Decimal")
        object.__setattr__(self, "currency", check_currency(self.currency))

    def rounded(self) -> Money:
        return Money(round_to_minor(self.amount, self.currency), self.currency)

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise CurrencyError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount + other.amount, self.currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"
