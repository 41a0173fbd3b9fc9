"""The suite's plugins, and the markers of the tests that need a real server (tests/markers.py)."""

from __future__ import annotations

import pytest

from tests.markers import SERVER_FIXTURES

pytest_plugins = ["tests.pg", "tests.sshd", "tests.smtp", "tests.faults.plugin"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the server of every server fixture it requests, however indirectly
    (`fixturenames` is the closure of the fixtures it requests)."""
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            marker = SERVER_FIXTURES.get(name)
            if marker is not None and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
