"""The page's areas, one blueprint each: units, kill-switch, journal (history and status),
session (login and logout)."""
