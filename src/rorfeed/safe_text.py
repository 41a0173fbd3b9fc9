"""Text that a spreadsheet or a terminal would execute, refused where people write it (SPEC §4).

The mapping's fields and an establishment's name reach the pivot files (a CSV opened in a
spreadsheet), the command line's tables (a terminal) and the page. A control character (an
escape sequence) or a leading `=`, `+`, `-` or `@` (a formula: `=HYPERLINK(…)`) is refused where
it is written, with its line, rather than escaped in each place that shows it.
"""

from __future__ import annotations

import re

FORMULA_STARTS = ("=", "+", "-", "@")


# Unicode's control characters (category Cc) are exactly C0, DEL and C1: one regular
# expression finds them at C speed (a mapping of 10,000 lines has 30,000 fields to check).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_character(text: str) -> str | None:
    """The first control character of `text` (C0, DEL or C1), None when it has none."""
    found = _CONTROL.search(text)
    return None if found is None else found.group()


def unsafe_problem(text: str, *, formula: bool = True) -> str | None:
    """Why `text` cannot be written where a spreadsheet or a terminal shows it, or None.

    `formula=False` for a value that may begin with `-` or `=` (a local code never reaches a
    spreadsheet cell on its own).
    """
    c = control_character(text)
    if c is not None:
        return f"holds a control character ({repr(c)[1:-1]}) — remove it"
    if formula and text.startswith(FORMULA_STARTS):
        return (
            f'begins with "{text[0]}": a spreadsheet would run it as a formula — remove the'
            f" leading {text[0]}"
        )
    return None
