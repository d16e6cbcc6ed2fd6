"""Epsilon as an exact quantity: an integer count of micro-epsilon, never a float.

Charges round up (a charge never understates what OpenDP's privacy map says), caps
are parsed exactly from decimal strings, and arithmetic cannot drift.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import total_ordering

MICROS = 1_000_000
#: The one grammar of an epsilon amount, in config, on the wire and in the ledger: a plain
#: decimal with at most six places, e.g. "0.25", "3", "0.000001". No sign, exponent
#: ("1e-3" is refused) or surrounding whitespace.
#: (`parse` checks the form first, then the number of places, to say which rule failed.)
DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


@total_ordering
@dataclass(frozen=True, slots=True)
class Epsilon:
    """A non-negative privacy loss in whole micro-epsilon."""

    micros: int

    def __post_init__(self) -> None:
        if self.micros < 0:
            raise ValueError(f"epsilon must be non-negative, got {self.micros} micro-epsilon")

    @classmethod
    def parse(cls, text: str | int | Decimal) -> Epsilon:
        """Exact decimal such as "0.25" (grammar DECIMAL); more than six decimals is an error, not
        a rounding."""
        if not DECIMAL.fullmatch(str(text)):
            raise ValueError(f"epsilon {text!r} is not a plain decimal such as 0.25 (digits, an "
                             "optional point and up to 6 decimals; no sign, exponent or spaces)")
        try:
            value = Decimal(str(text))
        except InvalidOperation:
            raise ValueError(f"epsilon {text!r} is not a decimal number") from None
        if not value.is_finite() or value < 0:
            raise ValueError(f"epsilon {text!r} must be a finite number >= 0")
        micros = value * MICROS
        if micros != micros.to_integral_value():
            raise ValueError(f"epsilon {text!r} has more than 6 decimal places")
        return cls(int(micros))

    @classmethod
    def ceil(cls, value: float) -> Epsilon:
        """The smallest micro-epsilon amount >= value (exactly, via the float's true value)."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"epsilon {value!r} must be a finite number >= 0")
        return cls(math.ceil(Fraction(value) * MICROS))

    @property
    def as_float(self) -> float:
        return self.micros / MICROS

    def __str__(self) -> str:
        whole, frac = divmod(self.micros, MICROS)
        return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)

    def __add__(self, other: Epsilon) -> Epsilon:
        return Epsilon(self.micros + other.micros)

    def __sub__(self, other: Epsilon) -> Epsilon:
        return Epsilon(self.micros - other.micros)

    def __lt__(self, other: Epsilon) -> bool:
        return self.micros < other.micros


ZERO = Epsilon(0)
