"""Privacy loss as an exact quantity: an integer count of micro-units, never a float.

Two units, one grammar: `Epsilon` (pure differential privacy, what the discrete Laplace
charges) and `Rho` (zero-concentrated DP, what the discrete Gaussian charges). Both are a
`Loss`: charges round up (a charge never understates what OpenDP's privacy map says), caps
are parsed exactly from decimal strings, and arithmetic cannot drift.

Units never mix: adding or comparing an epsilon with a rho raises TypeError, except that
zero is zero in every unit (no loss is no loss under either definition), so a sum that
starts from `ZERO` takes the unit of its first term.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import total_ordering
from typing import ClassVar, Self, cast

MICROS = 1_000_000
#: The one grammar of an epsilon amount, in config, on the wire and in the ledger: a plain
#: decimal with at most six places, e.g. "0.25", "3", "0.000001". No sign, exponent
#: ("1e-3" is refused) or surrounding whitespace.
#: (`parse` checks the form first, then the number of places, to say which rule failed.)
DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


@total_ordering
@dataclass(frozen=True, slots=True)
class Loss:
    """A non-negative privacy loss in whole micro-units of its subclass's unit."""

    micros: int
    #: The unit's name, in messages and on the wire: "epsilon" or "rho".
    UNIT: ClassVar[str] = "loss"

    def __post_init__(self) -> None:
        if self.micros < 0:
            raise ValueError(f"{self.UNIT} must be non-negative, got {self.micros} micro-{self.UNIT}")

    @classmethod
    def parse(cls, text: str | int | Decimal) -> Self:
        """Exact decimal such as "0.25" (grammar DECIMAL); more than six decimals is an error, not
        a rounding."""
        if not DECIMAL.fullmatch(str(text)):
            raise ValueError(f"{cls.UNIT} {text!r} is not a plain decimal such as 0.25 (digits, an "
                             "optional point and up to 6 decimals; no sign, exponent or spaces)")
        try:
            value = Decimal(str(text))
        except InvalidOperation:
            raise ValueError(f"{cls.UNIT} {text!r} is not a decimal number") from None
        if not value.is_finite() or value < 0:
            raise ValueError(f"{cls.UNIT} {text!r} must be a finite number >= 0")
        micros = value * MICROS
        if micros != micros.to_integral_value():
            raise ValueError(f"{cls.UNIT} {text!r} has more than 6 decimal places")
        return cls(int(micros))

    @classmethod
    def ceil(cls, value: float) -> Self:
        """The smallest micro-unit amount >= value (exactly, via the float's true value)."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{cls.UNIT} {value!r} must be a finite number >= 0")
        return cls(math.ceil(Fraction(value) * MICROS))

    @property
    def as_float(self) -> float:
        return self.micros / MICROS

    @property
    def exact(self) -> Fraction:
        return Fraction(self.micros, MICROS)

    def __str__(self) -> str:
        whole, frac = divmod(self.micros, MICROS)
        return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)

    def _unit_of(self, other: Loss) -> type[Loss]:
        """The unit of a sum or comparison of self and other; zero takes the other's unit."""
        if type(self) is type(other) or other.micros == 0:
            return type(self)
        if self.micros == 0:
            return type(other)
        raise TypeError(f"cannot combine {self} {self.UNIT} with {other} {other.UNIT}: different units")

    # Typed Self: an amount plus one of its unit stays in it. (A zero plus an amount of another
    # unit takes the other's: `ZERO` is typed Loss for that reason.)
    def __add__(self, other: Loss) -> Self:
        return cast(Self, self._unit_of(other)(self.micros + other.micros))

    def __sub__(self, other: Loss) -> Self:
        return cast(Self, self._unit_of(other)(self.micros - other.micros))

    def __lt__(self, other: Loss) -> bool:
        self._unit_of(other)
        return self.micros < other.micros

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Loss):
            return NotImplemented
        return self.micros == other.micros and (type(self) is type(other) or self.micros == 0)

    def __hash__(self) -> int:
        return hash((self.micros, self.UNIT if self.micros else ""))


@dataclass(frozen=True, slots=True, eq=False)
class Epsilon(Loss):
    """Pure differential privacy's epsilon (the discrete Laplace's charge)."""

    UNIT: ClassVar[str] = "epsilon"


@dataclass(frozen=True, slots=True, eq=False)
class Rho(Loss):
    """Zero-concentrated differential privacy's rho (the discrete Gaussian's charge); rho
    composes by addition, and `privacy.mechanisms.approx_dp` turns it into (epsilon, delta)."""

    UNIT: ClassVar[str] = "rho"


#: Zero loss, in every unit (see the module docstring).
ZERO: Loss = Epsilon(0)
