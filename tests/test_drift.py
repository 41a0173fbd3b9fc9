"""Drift: what the configuration and the README say is exactly what the registries implement."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest

from rorfeed import config
from rorfeed.pivot import WRITERS
from rorfeed.rules import RULES, Severity
from rorfeed.sections import DestinationCommon, SourceCommon
from rorfeed.sources import SOURCES
from rorfeed.transports import DESTINATIONS
from tests.markers import SERVER_FIXTURES

TESTS = Path(__file__).parent


def _kinds(union: object) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["kind"].annotation)[0] for m in members}


def test_source_kinds_accepted_by_config_are_the_registry() -> None:
    assert _kinds(config.SourceSection) == set(SOURCES)


def test_destination_kinds_accepted_by_config_are_the_registry() -> None:
    assert _kinds(config.DestinationSection) == set(DESTINATIONS)


def test_each_registry_key_is_the_kind_its_section_declares() -> None:
    for registry, base in ((SOURCES, SourceCommon), (DESTINATIONS, DestinationCommon)):
        for name, kind in registry.items():
            assert issubclass(kind.section, base)
            assert typing.get_args(kind.section.model_fields["kind"].annotation) == (name,)
            assert callable(kind.open)


def test_formats_accepted_by_config_are_the_writers() -> None:
    formats = DestinationCommon.model_fields["formats"].annotation
    assert set(typing.get_args(typing.get_args(formats)[0])) == set(WRITERS)


def _readme() -> str:
    return (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_the_readme_rule_table_is_the_rules_registry() -> None:
    table = re.findall(r"^ *\| `(\w+)` \| (.+?) \|$", _readme(), flags=re.MULTILINE)
    rule_rows = [(name, text) for name, text in table if name in {r.name for r in RULES}]
    hard = [r for r in RULES if r.severity is Severity.HARD]
    assert rule_rows == [(r.name, r.fires_when) for r in hard]


def test_the_readme_names_each_warning_rule_with_its_meaning() -> None:
    flowing = " ".join(_readme().split())
    warnings = [r for r in RULES if r.severity is Severity.WARNING]
    assert warnings
    for r in warnings:
        assert f"Warning only (sent, counted, logged): `{r.name}`, {r.fires_when}" in flowing


# -- the test suite itself ----------------------------------------------------------------------


def _test_sources() -> dict[str, ast.Module]:
    """Every Python file under tests/, parsed, by its module name (`tests.faults.site`)."""
    modules = {}
    for path in sorted(TESTS.rglob("*.py")):
        parts = path.relative_to(TESTS.parent).with_suffix("").parts
        modules[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return modules


def _imported(module: str, tree: ast.Module) -> set[str]:
    """The modules `module` imports (relative imports resolved), its `pytest_plugins` included,
    and for `from package import name`, `package.name` too (it may be a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join([*package, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            found.update([value] if isinstance(value, str) else value)
    return found


def _is_test_or_conftest(module: str) -> bool:
    name = module.rsplit(".", 1)[-1]
    return name.startswith("test_") or name == "conftest"


def test_no_test_module_or_conftest_is_imported_by_another_file() -> None:
    modules = _test_sources()
    assert "tests.test_drift" in modules and "tests.faults.conftest" in modules
    imports = [
        (module, imported)
        for module, tree in modules.items()
        for imported in sorted(_imported(module, tree))
        if imported in modules and _is_test_or_conftest(imported)
    ]
    # What tests share lives in helper modules (tests/sites.py, tests/oracle.py, ...).
    assert imports == []


def test_the_import_check_sees_every_form_of_import() -> None:
    tree = ast.parse(
        "import tests.test_a\nfrom tests.test_b import X\nfrom tests import test_c\n"
        "from . import conftest\nfrom .test_d import Y\npytest_plugins = ['tests.test_e']\n"
    )
    found = _imported("tests.faults.x", tree)
    assert {
        "tests.test_a",
        "tests.test_b",
        "tests.test_c",
        "tests.faults.conftest",
        "tests.faults.test_d",
        "tests.test_e",
    } <= found
    assert all(_is_test_or_conftest(m) for m in ("tests.test_a", "tests.faults.conftest"))
    assert not _is_test_or_conftest("tests.sites")


def _fixtures(tree: ast.Module) -> set[str]:
    def is_fixture(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return ast.unparse(target) == "pytest.fixture"

    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(map(is_fixture, node.decorator_list))
    }


def test_the_server_fixtures_that_mark_tests_are_fixtures_of_the_suite() -> None:
    # tests/conftest.py marks a test by the names of the fixtures it requests: a fixture renamed
    # without this table would silently let its tests into the fast lane.
    defined = set().union(*map(_fixtures, _test_sources().values()))
    assert set(SERVER_FIXTURES) <= defined
    assert set(SERVER_FIXTURES.values()) == {"sshd", "postgres", "browser"}


def test_every_collected_test_using_a_server_fixture_carries_its_marker(
    request: pytest.FixtureRequest,
) -> None:
    # Over this session's tests (the whole suite when it runs whole): none can reach the fast
    # lane, `-m "not sshd and not postgres and not browser"`, with a server fixture.
    items = request.session.items
    assert request.node in items
    unmarked = [
        (item.nodeid, name)
        for item in items
        for name in getattr(item, "fixturenames", ())
        if name in SERVER_FIXTURES and item.get_closest_marker(SERVER_FIXTURES[name]) is None
    ]
    assert unmarked == []


def test_a_server_fixture_requested_at_run_time_comes_with_its_marker() -> None:
    # `request.getfixturevalue("pg_server")` is not seen at collection: the fixture doing it
    # must mark its parameter (pytest.param(..., marks=pytest.mark.postgres)) itself.
    unmarked = []
    for module, tree in _test_sources().items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            decorators = " ".join(map(ast.unparse, function.decorator_list))
            for call in ast.walk(function):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "getfixturevalue"
                    and call.args
                    and isinstance(call.args[0], ast.Constant)
                    and call.args[0].value in SERVER_FIXTURES
                ):
                    marker = SERVER_FIXTURES[call.args[0].value]
                    if f"pytest.mark.{marker}" not in decorators:
                        unmarked.append(f"{module}.{function.name}")
    assert unmarked == []
