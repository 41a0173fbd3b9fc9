"""Mapping files (SPEC §4): one-to-one, errors naming both lines, ROR ids opaque."""

from __future__ import annotations

from pathlib import Path

import pytest

from rorfeed.errors import MappingError
from rorfeed.mapping import (
    compare_referential,
    parse_mapping,
    parse_referential,
    sync_code_problem,
)
from rorfeed.model import Mode, Priority


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


def test_priority_and_sync_code_columns_are_read_with_their_defaults(tmp_path: Path) -> None:
    mapping = parse_mapping(
        write(
            tmp_path,
            (
                "local_code;ror_id;label;mode;priority;id_externe_synchro\n"
                "REA;52/1;Réanimation;auto;1;SSR38888\n"
                "MED;52/2;Médecine;auto;2;\n"
                "CHI;52/3;Chirurgie;auto;; UF-12.b_~ \n"
                ";52/4;Soins palliatifs;manual;;\n"
            ),
        )
    )
    rea, med, chi, pal = mapping.units
    assert (rea.priority, rea.id_externe_synchro, rea.sync_code) == (
        Priority.CRITICAL_CARE,
        "SSR38888",
        "SSR38888",
    )
    # Default: priority 2 and the local code as the synchronisation code.
    assert (med.priority, med.id_externe_synchro, med.sync_code) == (Priority.OTHER, "", "MED")
    assert chi.sync_code == "UF-12.b_~"  # trimmed like the other cells; every printable ASCII
    assert (pal.priority, pal.sync_code) == (Priority.OTHER, "")


def test_a_mapping_without_the_new_columns_keeps_its_meaning(tmp_path: Path) -> None:
    (unit,) = parse_mapping(write(tmp_path, "local_code;ror_id;label\nREA;52/1;Réa\n")).units
    assert (unit.priority, unit.sync_code) == (Priority.OTHER, "REA")


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ("0;", 'priority "0" — expected 1 (soins critiques) or 2'),
        ("3;", 'priority "3"'),
        ("critique;", 'priority "critique"'),
        ("1.0;", 'priority "1.0"'),
        (";SSR 38", "id_externe_synchro \"SSR 38\" holds ' ', which is not printable ASCII"),
        (";SSR\u00a038", r"id_externe_synchro"),
        (";a/b", 'id_externe_synchro "a/b" holds "/"'),
        (";a|b", 'holds "|"'),
        ('; "a,b"', 'holds ","'),
        (";Réa", "holds 'é', which is not printable ASCII"),
        (";A\x07", r"holds '\x07'"),
        (";" + "X" * 65, "has 65 characters — 1 to 64 expected"),
    ],
)
def test_a_refused_priority_or_sync_code_is_named_with_its_line(
    tmp_path: Path, cells: str, expected: str
) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(
            write(
                tmp_path,
                "local_code;ror_id;label;priority;id_externe_synchro\n"
                f"B;R0;ok;1;B0\nA;R1;Réa;{cells}\n",
            )
        )
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{tmp_path / 'mapping.csv'}:3: ")
    assert expected in problem
    assert problem.isprintable()


def test_a_sync_code_of_64_characters_is_accepted(tmp_path: Path) -> None:
    code = "X" * 64
    (unit,) = parse_mapping(
        write(tmp_path, f"local_code;ror_id;label;id_externe_synchro\nA;R1;Réa;{code}\n")
    ).units
    assert unit.sync_code == code


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            "A;R1;x;S1\nB;R2;y;S1\n",
            ":3: synchronisation code S1 already used on line 2 — each unit needs its own",
        ),
        # A written code that is another unit's defaulted local code: the same ROR place.
        (
            "A;R1;x;\nB;R2;y;A\n",
            ":3: synchronisation code A already used on line 2",
        ),
        (
            "A;R1;x;B\nB;R2;y;\n",
            ":3: synchronisation code B (the local code, by default) already used on line 2",
        ),
    ],
)
def test_a_sync_code_used_twice_names_both_lines(tmp_path: Path, lines: str, expected: str) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, f"local_code;ror_id;label;id_externe_synchro\n{lines}"))
    assert len(info.value.problems) == 1
    assert expected in info.value.problems[0]


def test_a_repeated_local_code_is_reported_once(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as info:
        parse_mapping(write(tmp_path, "local_code;ror_id;label\nA;R1;x\nA;R2;y\n"))
    assert len(info.value.problems) == 1
    assert "local code A already mapped on line 2" in info.value.problems[0]


@pytest.mark.parametrize("code", ["SSR38888", "uf_12-b.C~", "!#$%&'()*+-.:;<=>?@[]^_`{}~"])
def test_sync_code_rule_accepts_printable_ascii(code: str) -> None:
    assert sync_code_problem(code) is None


@pytest.mark.parametrize("code", ["", "UF 12", "UF\t12", "a/b", "a|b", "a,b", "é", "X" * 65])
def test_sync_code_rule_refuses_what_a_query_would_change(code: str) -> None:
    assert sync_code_problem(code) is not None
