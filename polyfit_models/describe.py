"""The lesson's ``describe()``: a fitted polynomial as the formula a person reads,
``y = -0.012 + 0.857x + 0.002x² - 0.093x³``, from its ordinary-basis (ascending power)
coefficients. Pure Python: the scheduler and the read side use it without torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

_SUPERSCRIPTS = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def formula(coefficients: Sequence[float] | None, digits: int = 3) -> str | None:
    """``y = a + bx + cx² ...`` with ``digits`` decimals, or None without coefficients (or with
    one that is not finite)."""
    if not coefficients or not all(c is not None and math.isfinite(c) for c in coefficients):
        return None
    terms = []
    for k, c in enumerate(coefficients):
        power = "" if k == 0 else "x" if k == 1 else "x" + str(k).translate(_SUPERSCRIPTS)
        text = f"{abs(float(c)):.{digits}f}{power}"
        if not terms:
            terms.append(("-" if c < 0 else "") + text)
        else:
            terms.append(("- " if c < 0 else "+ ") + text)
    return "y = " + " ".join(terms)
