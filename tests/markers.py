"""The markers of the tests that need a real server, and the fixtures that start each server.

tests/conftest.py gives every test requesting one of SERVER_FIXTURES (directly or through
another fixture) that server's marker at collection, so that the fast lane
`pytest -m "not sshd and not postgres and not browser"` (README) leaves out exactly the tests
that start a real server; tests/test_drift.py checks that these names are fixtures.
"""

from __future__ import annotations

# fixture name → the marker of the server it starts (tests/sshd.py, tests/pg.py,
# tests/faults/conftest.py, tests/test_web_browser.py).
SERVER_FIXTURES = {
    "sshd": "sshd",
    "faults_sshd": "sshd",
    "pg_server": "postgres",
    "faults_pg": "postgres",
    "browser": "browser",
}
