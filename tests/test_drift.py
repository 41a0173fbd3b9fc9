"""Drift: what the configuration accepts is exactly what the registries implement."""

from __future__ import annotations

import importlib
import typing

from rorfeed import config
from rorfeed.pivot import WRITERS
from rorfeed.sources import SOURCE_KINDS
from rorfeed.transports import TRANSPORT_KINDS


def _kinds(union: object) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["kind"].annotation)[0] for m in members}


def test_source_kinds_accepted_by_config_are_the_registry() -> None:
    assert _kinds(config.SourceSection) == set(SOURCE_KINDS)


def test_destination_kinds_accepted_by_config_are_the_registry() -> None:
    assert _kinds(config.DestinationSection) == set(TRANSPORT_KINDS)


def test_formats_accepted_by_config_are_the_writers() -> None:
    assert set(typing.get_args(config.Format)) == set(WRITERS)


def test_every_registered_module_builds_its_kind() -> None:
    for module in SOURCE_KINDS.values():
        assert callable(importlib.import_module(module).from_config)
    for module in TRANSPORT_KINDS.values():
        assert callable(importlib.import_module(module).build)
