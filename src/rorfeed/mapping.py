"""An establishment's mapping: each local unit onto exactly one ROR fiche (SPEC §4).

The mapping CSV is `local_code;ror_id;label[;mode][;priority][;id_externe_synchro]` (UTF-8, BOM
tolerated, `;` or `,`; columns found by their header names). It must be one-to-one: a local
code, a ROR id or a synchronisation code appearing twice is an error naming both lines.
ROR ids are opaque strings (they may hold `/`), compared exactly and sorted as text. A value
that a spreadsheet or a terminal would execute is refused with its line (`safe_text`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from rorfeed.errors import MappingError, shown
from rorfeed.model import MappedUnit, Mode, Priority
from rorfeed.safe_text import unsafe_problem

COLUMNS = ("local_code", "ror_id", "label")
OPTIONAL_COLUMNS = ("mode", "priority", "id_externe_synchro")
HEADER_HINT = "local_code;ror_id;label[;mode][;priority][;id_externe_synchro]"
SYNC_CODE_MAX = 64
# What `identifier=1<FINESS>/<code>` can carry without changing meaning (SPEC §4): `/` separates
# the FINESS from the code, `|` and `,` are the FHIR token search's system and "or" separators,
# whitespace does not survive a query string intact.
_SYNC_CODE_REFUSED = frozenset("/|,")


def sync_code_problem(code: str) -> str | None:
    """Why `code` cannot be a unit's `id_externe_synchro` (SPEC §4), or None."""
    if not 1 <= len(code) <= SYNC_CODE_MAX:
        return f"has {len(code)} characters — 1 to {SYNC_CODE_MAX} expected"
    for c in code:
        if not "!" <= c <= "~":
            return f"holds {c!r}, which is not printable ASCII without whitespace — remove it"
        if c in _SYNC_CODE_REFUSED:
            return f'holds "{c}" — "/", "|" and "," cannot be in a synchronisation code'
    return None


@dataclass(frozen=True)
class Mapping:
    units: tuple[MappedUnit, ...]

    def by_local_code(self) -> dict[str, MappedUnit]:
        return {u.local_code: u for u in self.units if u.local_code}

    def by_ror_id(self) -> dict[str, MappedUnit]:
        return {u.ror_id: u for u in self.units}

    def find(self, key: str) -> MappedUnit | None:
        """A unit by its ROR id or, failing that, its local code."""
        key = key.strip()
        return self.by_ror_id().get(key) or self.by_local_code().get(key)


def read_mapping_text(path: Path) -> str:
    """A mapping file's text (UTF-8, BOM tolerated); `MappingError` naming the file, else."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise MappingError([f"{path}: cannot be read ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise MappingError(
            [f"{path}:{line}: not UTF-8 — save the mapping as UTF-8 (with or without BOM)"]
        ) from None


# An uploaded mapping (from a spreadsheet): at most this many bytes.
MAX_UPLOAD_BYTES = 1024 * 1024


def decode_upload(data: bytes, where: str) -> str:
    """The text of a proposed mapping: UTF-8 (BOM tolerated) or, as a spreadsheet on Windows
    saves it, CP1252; anything else (a binary file, an image) is refused naming `where`."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise MappingError([f"{where}: {len(data)} bytes — a mapping is at most 1 MiB"])
    if not data.strip():
        raise MappingError([f"{where}: empty — expected a header {HEADER_HINT}"])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise MappingError(
                [f"{where}:{line}: not text (neither UTF-8 nor CP1252) — save it as CSV"]
            ) from None
    if "\x00" in text:
        raise MappingError([f"{where}: not text (it holds NUL bytes) — save it as CSV"])
    return text


def detect_delimiter(first_line: str) -> str:
    return ";" if first_line.count(";") >= first_line.count(",") else ","


def parse_mapping(path: Path) -> Mapping:
    """Read and check a mapping file; raise `MappingError` listing every problem."""
    return parse_mapping_text(read_mapping_text(path), path)


def parse_mapping_text(text: str, path: Path | str) -> Mapping:
    """Check a mapping's text (a file's, or one proposed on the page or to `rorfeed mapping
    apply`); `path` names it in the messages, which are the cycle's own."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise MappingError([f"{path}: empty — expected a header {HEADER_HINT}"])
    delimiter = detect_delimiter(lines[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in COLUMNS if c not in header]
    problems: list[str] = []
    if missing:
        raise MappingError(
            [f"{path}:1: header lacks {', '.join(missing)} — expected {HEADER_HINT}"]
        )
    unknown = [h for h in header if h not in (*COLUMNS, *OPTIONAL_COLUMNS)]
    if unknown:
        problems.append(f"{path}:1: unknown column(s) {shown(', '.join(unknown))}")
    index = {name: header.index(name) for name in header if name in (*COLUMNS, *OPTIONAL_COLUMNS)}
    at_local, at_ror, at_label = index["local_code"], index["ror_id"], index["label"]
    at_mode, at_priority = index.get("mode"), index.get("priority")
    at_sync = index.get("id_externe_synchro")
    units: list[MappedUnit] = []
    local_seen: dict[str, int] = {}
    ror_seen: dict[str, int] = {}
    sync_seen: dict[str, int] = {}
    priorities = {str(p.value): p for p in Priority}
    # Looked up once: an enum's value is a descriptor call, three per line of a large mapping.
    modes, auto = {mode.value: mode for mode in (Mode.AUTO, Mode.MANUAL)}, Mode.AUTO.value
    end = reader.line_num
    for row in reader:
        # The line a record starts on: a quoted cell may hold line breaks.
        line, end = end + 1, reader.line_num
        if not "".join(row).strip():  # a blank line, or only empty fields
            continue
        if len(row) != len(header):
            problems.append(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
            continue

        local_code, ror_id = row[at_local].strip(), row[at_ror].strip()
        label = row[at_label].strip()
        mode_text = (row[at_mode].strip().lower() if at_mode is not None else "") or auto
        mode = modes.get(mode_text)
        if mode is None:
            problems.append(f'{path}:{line}: mode "{shown(mode_text)}" — expected auto or manual')
            continue
        priority_text = row[at_priority].strip() if at_priority is not None else ""
        priority = priorities.get(priority_text) if priority_text else Priority.OTHER
        if priority is None:
            problems.append(
                f'{path}:{line}: priority "{shown(priority_text)}" — expected 1 (soins'
                " critiques) or 2 (the other units; the default when empty)"
            )
            continue
        sync_text = row[at_sync].strip() if at_sync is not None else ""
        if sync_text and (bad_sync := sync_code_problem(sync_text)):
            problems.append(f'{path}:{line}: id_externe_synchro "{shown(sync_text)}" {bad_sync}')
            continue
        if not ror_id:
            problems.append(f"{path}:{line}: empty ror_id")
            continue
        unsafe = [
            f'{path}:{line}: {column} "{shown(value)}" {bad}'
            for column, value, formula in (
                ("local_code", local_code, False),
                ("ror_id", ror_id, True),
                ("label", label, True),
            )
            if (bad := unsafe_problem(value, formula=formula))
        ]
        if unsafe:
            problems.extend(unsafe)
            continue
        if not local_code and mode is Mode.AUTO:
            problems.append(
                f"{path}:{line}: empty local_code for ROR fiche {shown(ror_id)} — only a fiche"
                " declared manual may have none"
            )
            continue
        if ror_id in ror_seen:
            problems.append(
                f"{path}:{line}: ROR id {shown(ror_id)} already mapped on line"
                f" {ror_seen[ror_id]} — one ROR fiche = one line"
            )
        if local_code and local_code in local_seen:
            problems.append(
                f"{path}:{line}: local code {shown(local_code)} already mapped on line "
                f"{local_seen[local_code]} — the mapping must be one-to-one"
            )
        # The code the ROR will be asked for: two lines naming the same place would feed one
        # Location with two units' counts, whether the code was written or defaulted.
        # (A repeated local code standing for its own sync code is reported once, above.)
        sync_code = sync_text or local_code
        repeated_local = not sync_text and local_code in local_seen
        if sync_code and sync_code in sync_seen and not repeated_local:
            problems.append(
                f"{path}:{line}: synchronisation code {shown(sync_code)}"
                f"{'' if sync_text else ' (the local code, by default)'} already used on line"
                f" {sync_seen[sync_code]} — each unit needs its own id_externe_synchro"
            )
        ror_seen.setdefault(ror_id, line)
        if local_code:
            local_seen.setdefault(local_code, line)
        if sync_code:
            sync_seen.setdefault(sync_code, line)
        units.append(MappedUnit(local_code, ror_id, label, mode, line, priority, sync_text))
    if problems:
        raise MappingError(problems)
    return Mapping(tuple(units))


def parse_referential(path: Path) -> set[str]:
    """The ROR fiche ids of the « Disponibilité en lits » perimeter.

    Accepts a one-column export, or a header with a `ror_id` (or `id_fiche_ror`) column.
    """
    text = read_mapping_text(path)
    lines = text.splitlines()
    if not lines:
        return set()
    delimiter = detect_delimiter(lines[0])
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    for name in ("ror_id", "id_fiche_ror"):
        if name in header:
            col = header.index(name)
            return {r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()}
    return {r[0].strip() for r in rows if r and r[0].strip()}


@dataclass(frozen=True)
class ReferentialReport:
    not_in_referential: list[str]  # mapped ids absent from the perimeter: errors
    not_mapped: list[str]  # perimeter fiches not in the mapping: need manual entry (warnings)


def compare_referential(mapping: Mapping, referential: set[str]) -> ReferentialReport:
    mapped = set(mapping.by_ror_id())
    return ReferentialReport(sorted(mapped - referential), sorted(referential - mapped))
