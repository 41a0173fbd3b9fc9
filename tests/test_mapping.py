"""Mapping files (SPEC §4): one-to-one, errors naming both lines, ROR ids opaque."""

from __future__ import annotations

from pathlib import Path

import pytest

from rorfeed.errors import MappingError
from rorfeed.mapping import compare_referential, parse_mapping, parse_referential
from rorfeed.model import Mode


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "mapping.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_semicolon_mapping_with_mode_column(tmp_path: Path) -> None:
    mapping = parse_mapping(
        write(
            tmp_path,
            (
                "local_code;ror_id;label;mode\n"
                "REA;52/192675;Réanimation;auto\n"
                ";52/1;Soins palliatifs;manual\n"
                ";52/2;Autre fiche manuelle;manual\n"
                "MED;52/3;Médecine;\n"
            ),
        )
    )
    assert [u.ror_id for u in mapping.units] == ["52/192675", "52/1", "52/2", "52/3"]
    assert mapping.by_ror_id()["52/1"].declared_mode is Mode.MANUAL
    assert mapping.by_ror_id()["52/3"].declared_mode is Mode.AUTO
    assert mapping.find("REA") == mapping.find("52/192675")


def test_bom_and_comma_delimiter_are_tolerated(tmp_path: Path) -> None:
    mapping = parse_mapping(write(tmp_path, "\ufefflocal_code,ror_id,label\n A ,R1,Unité A\n"))
    assert mapping.units[0].local_code == "A"
    assert mapping.units[0].label == "Unité A"


def test_duplicated_local_code_names_both_lines(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, "local_code;ror_id;label\nA;R1;x\nB;R2;y\nA;R3;z\n"))
    assert info.value.problems == [
        f"{tmp_path / 'mapping.csv'}:4: local code A already mapped on line 2 — the mapping "
        "must be one-to-one"
    ]


def test_duplicated_ror_id_names_both_lines(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, "local_code;ror_id;label\nA;R1;x\nB;R1;y\n"))
    assert "line 2" in info.value.problems[0]
    assert ":3:" in info.value.problems[0]


def test_empty_local_code_only_for_a_manual_fiche(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, "local_code;ror_id;label\n;R1;x\n"))
    assert "only a fiche declared manual" in info.value.problems[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("code;id;label\n", "header lacks local_code, ror_id"),
        ("local_code;ror_id;label;mode\nA;R1;x;maybe\n", 'mode "maybe"'),
        ("local_code;ror_id;label\nA;R1\n", "2 fields, expected 3"),
        ("", "empty"),
    ],
)
def test_malformed_mapping_is_explained(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, text))
    assert expected in info.value.problems[0]


def test_mapping_not_utf8_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, "local_code;ror_id;label\nA;R1;Réa\n", "cp1252"))
    assert ":2: not UTF-8" in info.value.problems[0]


def test_referential_comparison(tmp_path: Path) -> None:
    mapping = parse_mapping(write(tmp_path, "local_code;ror_id;label\nA;R1;x\nB;R2;y\n"))
    ref = tmp_path / "ref.csv"
    ref.write_text("id_fiche_ror;libelle\nR1;x\nR3;z\n")
    report = compare_referential(mapping, parse_referential(ref))
    assert report.not_in_referential == ["R2"]
    assert report.not_mapped == ["R3"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('A;=HYPERLINK("http://x");Réa', 'ror_id "=HYPERLINK("http://x")" begins with "="'),
        ("A;@SUM(A1);Réa", 'begins with "@"'),
        ("A;+33;Réa", 'begins with "+"'),
        ("A;-1;Réa", 'begins with "-"'),
        ("A;R1;=1+1", 'label "=1+1" begins with "="'),
        ("A;R1;-Réa", 'label "-Réa" begins with "-"'),
        ("A;R1;\x1b[2J\x1b[31mRéa", r'label "\x1b[2J\x1b[31mRéa" holds a control character (\x1b)'),
        ("A\x07;R1;Réa", r"local_code"),
        ("A;R\x9b1;Réa", r"ror_id"),
        ('A;R1;"Ré\na"', r"holds a control character (\n)"),
    ],
)
def test_a_value_a_spreadsheet_or_a_terminal_would_run_is_refused_with_its_line(
    tmp_path: Path, line: str, expected: str
) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, f"local_code;ror_id;label\nB;R0;ok\n{line}\n"))
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{tmp_path / 'mapping.csv'}:3: ")
    assert expected in problem
    assert problem.isprintable()


def test_a_dash_or_an_at_sign_inside_a_value_or_a_local_code_starting_with_dash_is_fine(
    tmp_path: Path,
) -> None:
    mapping = parse_mapping(
        write(tmp_path, "local_code;ror_id;label\n-12;75/1;Réa - adultes @ N2\n")
    )
    (unit,) = mapping.units
    assert (unit.local_code, unit.ror_id, unit.label) == ("-12", "75/1", "Réa - adultes @ N2")
