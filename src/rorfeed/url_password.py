"""A database URL's password: never written in the configuration, never shown (SPEC §3).

The password goes in `*_password_file` / `*_password_env` and joins the URL only inside the
engine; any URL a message names is first stripped of a password, even one SQLAlchemy cannot
parse (a misspelt driver is exactly when the URL ends up in an error).
"""

from __future__ import annotations

import re
from urllib.parse import quote

# SQLAlchemy's own reading of `scheme://user:password@host…` (sqlalchemy.engine.url._parse_url):
# the password runs from the user part's ':' to the next '@', so it may hold '/' or spaces.
_USERINFO = re.compile(r"(?P<head>[\w+]+://[^:/]*):(?P<password>[^@]*)@")
HIDDEN = "***"


def url_password(url: str) -> str | None:
    """The password written inside `url`, None when it holds none."""
    found = _USERINFO.match(url)
    return found["password"] if found and found["password"] else None


def without_password(url: str) -> str:
    """`url` as a message may show it: its password, if any, replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{HIDDEN}@", url, count=1)


def scrubbed(text: str, *passwords: str | None) -> str:
    """`text` (an error message) with every given password, plain or %-encoded, hidden."""
    for password in passwords:
        if password:
            for form in {password, quote(password, safe="")}:
                text = text.replace(form, HIDDEN)
    return text
