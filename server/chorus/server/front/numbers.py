"""Compact numbers, one spelling for the CLI's tables and the dashboard's charts: three
significant digits and K (thousand), M (million), B (billion) or T (trillion)."""

from __future__ import annotations

import math

__all__ = ["format_compact"]

_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def format_compact(value: float, *, fixed: bool = False) -> str:
    """`value` to three significant digits with K, M, B or T: 1866 -> "1.87K", 2.5e6 -> "2.5M".

    Rounding comes first, so 999,950 is "1.00M", never "1000K". `fixed` keeps the trailing
    zeros ("2.50M"), so a table column of compact numbers lines up.
    """
    if not math.isfinite(value):
        return "n/a"
    rounded = float(f"{value:.3g}")
    for size, suffix in _SUFFIXES:
        if abs(rounded) >= size:
            scaled = rounded / size
            if fixed:
                digits = 2 if abs(scaled) < 10 else 1 if abs(scaled) < 100 else 0
                return f"{scaled:.{digits}f}{suffix}"
            return f"{scaled:.3g}{suffix}"
    return f"{value:.3g}"
