"""An independent reading of the product's rules, for property tests to compare it with.

Shared by tests/test_rules.py (the rule itself) and tests/test_feed_property.py (end to end).
"""

from __future__ import annotations

import math
from decimal import Decimal


def oracle_count(value: object) -> int | None:
    """An independent reading of SPEC §6's integer definition; None = not a valid count."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else None
    if isinstance(value, str):
        text = value.strip()
        if text and all(c in "0123456789" for c in text):
            return int(text)
    return None
