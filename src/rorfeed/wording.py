"""Counted words for people: "3 lits installés", "1 unit". One place for the plural rules.

French puts 0 and 1 in the singular ("0 lit fermé"); English only 1 ("0 units").
"""

from __future__ import annotations


def agreed(n: int, singular: str, plural: str | None = None) -> str:
    """The French word agreeing with `n` (0 and 1: singular); `plural` defaults to `singular`+s."""
    return singular if n <= 1 else (plural or singular + "s")


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """`n` and its French word: "0 lit fermé", "2 lits fermés"."""
    return f"{n} {agreed(n, singular, plural)}"


def counted_en(n: int, singular: str, plural: str | None = None) -> str:
    """`n` and its English word, for ops' command-line lines: "1 unit", "0 units"."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def one_line(text: str) -> str:
    """`text` on one line (a mail line, a `check` line): every run of whitespace one space."""
    return " ".join(text.split())
