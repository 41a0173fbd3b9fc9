"""Drift: what the configuration accepts is exactly what the registries implement."""

from __future__ import annotations

import typing

from rorfeed import config
from rorfeed.pivot import WRITERS
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
