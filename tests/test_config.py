"""Configuration: strict TOML, every problem reported at once, naming file, key and fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rorfeed import config_example
from rorfeed.config import ConfigFile, load, template_problems
from rorfeed.errors import ConfigError
from rorfeed.finess import finess_problem, luhn_valid
from tests.sites import directory_destination, mapping_csv, site_toml, write_site

ROOT = Path(__file__).resolve().parent.parent

# The smallest valid configuration; most tests edit its text to make the one problem they check.
MINIMAL = site_toml(destinations=directory_destination("out"))
MAPPING = mapping_csv([("A", "1", "Unité A")])


def write_config(tmp_path: Path, text: str = MINIMAL) -> Path:
    return write_site(tmp_path, text, MAPPING)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.problems


def test_minimal_config_loads_with_defaults_and_resolves_paths(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    assert config.work_dir == tmp_path / "work"
    assert config.state_url == f"sqlite:///{tmp_path / 'work' / 'state.db'}"
    assert config.file.rules.max_beds_per_unit == 500
    assert config.file.daemon.schedule == "5 * * * *"
    assert config.file.metrics.listen == "127.0.0.1:9464"


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL.replace("[daemon]", "[daemon]\nmax_bed = 3"))
    assert problems_of(path) == [
        "rorfeed.toml: daemon.max_bed: unknown key — remove it or fix its spelling"
    ]


def test_unknown_key_inside_a_source_names_the_establishment(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, MINIMAL.replace('path = "export.csv"', 'path = "e.csv"\nurl = "x"')
    )
    assert problems_of(path) == [
        "rorfeed.toml: establishments[0].source.url: unknown key — remove it or fix its spelling"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace('"750712184"', '"750712185"')
        .replace("[[destinations]]", '[[destinations]]\nfile_name = "rorlits_{finess}.{ext}"')
        .replace('mapping = "mapping.csv"', 'mapping = "absent.csv"')
    )
    found = problems_of(write_config(tmp_path, text))
    assert len(found) == 3
    assert any("establishments[0].finess" in p and "check digit" in p for p in found)
    assert any("destinations[0].file_name" in p and "{timestamp}" in p for p in found)
    assert any("establishments[0].mapping" in p and "absent.csv" in p for p in found)
    assert all(p.startswith("rorfeed.toml: ") for p in found)


def test_finess_with_a_wrong_key_is_refused_unless_format_only(tmp_path: Path) -> None:
    bad = MINIMAL.replace('"750712184"', '"750712185"')
    assert "fix the 9th digit" in problems_of(write_config(tmp_path, bad))[0]
    ok = bad.replace('finess = "750712185"', 'finess = "750712185"\nfiness_check = "format"')
    assert load(write_config(tmp_path, ok)).file.establishments[0].finess == "750712185"


@pytest.mark.parametrize(
    ("finess", "ok"),
    [
        ("750712184", True),
        ("750712185", False),
        ("2A0000001", True),
        ("75071218", False),
        ("7507121840", False),
        ("AB0712184", False),
        ("750712184 ", False),
    ],
)
def test_finess_format_and_luhn_key(finess: str, ok: bool) -> None:
    assert (finess_problem(finess, "luhn") is None) is ok


def test_luhn_of_known_finess() -> None:
    assert luhn_valid("750712184")
    assert not luhn_valid("750712180")


def test_file_name_template_needs_timestamp_ext_and_finess_when_shared() -> None:
    assert template_problems("rorlits_{finess}_{timestamp}.{ext}", single=False) == []
    assert template_problems("rorlits_{timestamp}.{ext}", single=True) == []
    assert any("{finess}" in p for p in template_problems("r_{timestamp}.{ext}", single=False))
    assert any("{timestamp}" in p for p in template_problems("r_{finess}.{ext}", single=True))
    assert any("{nope}" in p for p in template_problems("{nope}{timestamp}.{ext}", single=True))


def test_file_name_without_finess_refused_when_destination_gets_two_establishments(
    tmp_path: Path,
) -> None:
    text = (
        MINIMAL
        + """
[[establishments]]
name = "Second"
finess = "130000011"
finess_check = "format"
mapping = "mapping.csv"
[establishments.source]
kind = "csv"
path = "b.csv"
"""
    )
    text = text.replace(
        'kind = "directory"', 'kind = "directory"\nfile_name = "f_{timestamp}.{ext}"'
    )
    found = problems_of(write_config(tmp_path, text))
    assert found == [
        'rorfeed.toml: destinations[0].file_name: "f_{timestamp}.{ext}": must contain {finess}'
        " (the destination receives several establishments)"
    ]


def test_secret_env_variable_not_set_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RORFEED_TEST_PW", raising=False)
    text = MINIMAL.replace(
        'kind = "csv"\npath = "export.csv"',
        'kind = "sql"\nurl = "sqlite:///x.db"\nquery = "select 1"\n'
        'password_env = "RORFEED_TEST_PW"',
    )
    found = problems_of(write_config(tmp_path, text))
    assert found == [
        "rorfeed.toml: establishments[0].source.password_env: the environment variable "
        "RORFEED_TEST_PW is not set"
    ]
    monkeypatch.setenv("RORFEED_TEST_PW", "s3cret")
    assert load(write_config(tmp_path, text)).secrets == {
        "establishments[0].source.password": "s3cret"
    }


def test_secret_file_loses_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    text = MINIMAL.replace(
        'kind = "csv"\npath = "export.csv"',
        'kind = "sql"\nurl = "sqlite:///x.db"\nquery = "select 1"\npassword_file = "pw"',
    )
    assert (
        load(write_config(tmp_path, text)).secrets["establishments[0].source.password"] == "s3cret"
    )


def test_missing_secret_file_is_a_configuration_error(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'kind = "csv"\npath = "export.csv"',
        'kind = "sql"\nurl = "sqlite:///x.db"\nquery = "select 1"\npassword_file = "nope"',
    )
    assert "password_file" in problems_of(write_config(tmp_path, text))[0]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('work_dir = "work"', 'work_dir = "work"\nschedule = "61 * * * *"', "daemon.schedule"),
        ('work_dir = "work"', 'work_dir = "work"\nschedule = "5 * *"', "daemon.schedule"),
        ('work_dir = "work"', 'work_dir = "work"\nschedule = "5-1 * * * *"', "daemon.schedule"),
        ('work_dir = "work"', 'work_dir = "work"\ntimezone = "Europe/Pariss"', "daemon.timezone"),
        ('kind = "directory"', 'kind = "ftp"', "destinations[0]"),
        ('path = "out"', 'path = "out"\nformats = ["pdf"]', "destinations[0].formats[0]"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    found = problems_of(write_config(tmp_path, MINIMAL.replace(old, new)))
    assert any(p.startswith(f"rorfeed.toml: {key}") for p in found), found


def test_not_toml_at_all_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[daemon\n")
    found = problems_of(path)
    assert found[0].startswith(f"{path}: not valid TOML")


def test_shipped_example_is_generated_from_the_model() -> None:
    shipped = (ROOT / "config" / "rorfeed.example.toml").read_text(encoding="utf-8")
    assert shipped == config_example.render(), (
        "regenerate: python -m rorfeed.config_example > config/rorfeed.example.toml"
    )


def test_shipped_example_is_a_valid_configuration_model() -> None:
    with (ROOT / "config" / "rorfeed.example.toml").open("rb") as fh:
        ConfigFile.model_validate(tomllib.load(fh))


def test_demo_configuration_is_valid() -> None:
    config = load(ROOT / "config" / "demo.toml")
    assert config.file.destinations[0].formats == ["xml", "json", "csv"]


@pytest.mark.parametrize(
    "name", ["../../escaped", "-sesan", "a.b", "a b", "sésan", "x" * 65, "a/b", "a\\\\b"]
)
def test_a_destination_name_that_is_not_a_plain_folder_name_is_refused(
    tmp_path: Path, name: str
) -> None:
    text = MINIMAL.replace('name = "out"', f'name = "{name}"')
    as_read = tomllib.loads(f'n = "{name}"')["n"]
    found = problems_of(write_config(tmp_path, text))
    assert [p for p in found if "destinations[0].name" in p] == [
        f'rorfeed.toml: destinations[0].name: "{as_read}" — 1 to 64 letters, digits, "_" or "-",'
        ' not starting with "-" (it names folders of the work directory)'
    ]
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("name", ["sesan", "ARS_idf-test-2", "x" * 64, "_x"])
def test_plain_destination_names_are_accepted(tmp_path: Path, name: str) -> None:
    load(write_config(tmp_path, MINIMAL.replace('name = "out"', f'name = "{name}"')))


@pytest.mark.parametrize(
    "template",
    [
        "..\\\\{finess}_{timestamp}.{ext}",
        "a\\\\b_{finess}_{timestamp}.{ext}",
        "{finess}_{timestamp}\\u001b.{ext}",
        ".{finess}_{timestamp}.{ext}",
        "x/{finess}_{timestamp}.{ext}",
    ],
)
def test_a_file_name_template_that_is_not_a_plain_file_name_is_refused(
    tmp_path: Path, template: str
) -> None:
    text = MINIMAL.replace('kind = "directory"', f'kind = "directory"\nfile_name = "{template}"')
    found = problems_of(write_config(tmp_path, text))
    assert len(found) == 1 and found[0].startswith("rorfeed.toml: destinations[0].file_name: ")
    assert "must be a plain file name" in found[0] and found[0].isprintable()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ('=HYPERLINK(\\"http://x\\")', 'begins with "="'),
        ("@SUM(A1)", 'begins with "@"'),
        ("+33 Hôpital", 'begins with "+"'),
        ("Hôpital\\u001b[31m", r"holds a control character (\x1b)"),
    ],
)
def test_an_establishment_name_a_spreadsheet_or_terminal_would_run_is_refused(
    tmp_path: Path, name: str, expected: str
) -> None:
    text = MINIMAL.replace('name = "Hôpital Test"', f'name = "{name}"')
    assert text != MINIMAL
    found = problems_of(write_config(tmp_path, text))
    assert len(found) == 1 and found[0].startswith("rorfeed.toml: establishments[0].name: ")
    assert expected in found[0] and found[0].isprintable()
