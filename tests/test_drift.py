"""Drift: what the configuration and the README say is exactly what the registries implement."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from rorfeed import config
from rorfeed.pivot import WRITERS
from rorfeed.rules import RULES, Severity
from rorfeed.sections import DestinationCommon, SourceCommon
from rorfeed.sources import SOURCES
from rorfeed.transports import DESTINATIONS


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
