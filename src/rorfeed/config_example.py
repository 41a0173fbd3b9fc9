"""Render `config/rorfeed.example.toml` from the pydantic models of `config.py`.

Every key is declared once, in the model, with its description: this file writes the example
from it, and a test fails when the shipped example differs. Regenerate with
`python -m rorfeed.config_example > config/rorfeed.example.toml`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rorfeed.config import (
    ConfigFile,
    DaemonSection,
    EstablishmentSection,
    MetricsSection,
    NotifySection,
    RulesSection,
    WebSection,
)
from rorfeed.sections import Kind
from rorfeed.sources import SOURCES
from rorfeed.transports import DESTINATIONS

HEADER = """\
# rorfeed configuration — every key, with its default or an example.
# Generated from the code (python -m rorfeed.config_example); the shipped file is checked
# against it by the tests. Unknown keys are errors. Relative paths are relative to this file's
# folder. Secrets never go here: use the *_file or *_env keys.
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {value!r}")


def _value(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    if info.examples:
        return info.examples[0]
    raise ValueError("a required key needs an example")


def _lines(
    model: type[BaseModel],
    *,
    commented: bool = False,
    skip: tuple[str, ...] = (),
    kind_note: str = "",
) -> list[str]:
    out = []
    prefix = "# " if commented else ""
    for name, info in model.model_fields.items():
        if name in skip or isinstance(_annotation_model(info), type):
            continue
        line = f"{prefix}{name} = {_toml(_value(info))}"
        note = kind_note if name == "kind" and kind_note else info.description
        out.append(f"{line:<44} # {note}" if note else line)
    return out


def _kinds(registry: dict[str, Kind[Any]]) -> list[str]:
    """The first kind in full; each other one commented, with only the keys the first lacks."""
    (_, first), *others = registry.items()
    out = _lines(first.section, kind_note=" or ".join(f'"{k}"' for k in registry))
    for name, kind in others:
        shared = tuple(n for n in kind.section.model_fields if n in first.section.model_fields)
        out += [
            f"# ... or {kind.title}:",
            *_lines(
                kind.section,
                commented=True,
                skip=tuple(n for n in shared if n != "kind"),
                kind_note=f'"{name}"',
            ),
        ]
    return out


def _annotation_model(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def render() -> str:
    parts = [HEADER]
    for title, model in (
        ("daemon", DaemonSection),
        ("metrics", MetricsSection),
        ("rules", RulesSection),
    ):
        parts += [f"[{title}]", *_lines(model), ""]
    parts += [
        "[[establishments]]",
        *_lines(EstablishmentSection, skip=("source",)),
        "",
        "[establishments.source]",
        *_kinds(SOURCES),
        "",
        "[[destinations]]",
        *_kinds(DESTINATIONS),
        "",
        "# Optional: `rorfeed web`.",
        "# [web]",
        *_lines(WebSection, commented=True),
        "",
        "# Optional: e-mail to the bed-management cell.",
        "# [notify]",
        *_lines(NotifySection, commented=True),
    ]
    # The sections above must cover the whole file model: a new section shows up here.
    assert set(ConfigFile.model_fields) == {  # noqa: S101
        "daemon",
        "metrics",
        "rules",
        "establishments",
        "destinations",
        "web",
        "notify",
    }
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
