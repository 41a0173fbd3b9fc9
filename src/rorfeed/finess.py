"""The FINESS géographique (ET) of an establishment (SPEC §3): its format and its check digit."""

from __future__ import annotations

import re

_FINESS_RE = re.compile(r"^(\d{2}|2A|2B)\d{7}$")


def finess_problem(finess: str, check: str) -> str | None:
    """None when `finess` is acceptable, else what is wrong and how to fix it."""
    if not _FINESS_RE.fullmatch(finess):
        return (
            f'found "{finess}", expected 9 characters: the département (2 digits, 2A or 2B) '
            "then 7 digits"
        )
    if check == "luhn" and finess[:2] not in ("2A", "2B") and not luhn_valid(finess):
        return (
            f'found "{finess}", expected a valid FINESS (check digit) — fix the 9th digit, '
            'or set finess_check = "format" if this real FINESS fails its key'
        )
    return None


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
