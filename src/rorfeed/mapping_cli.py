"""`rorfeed mapping show|versions|diff|apply|restore`: the mapping from a shell (SPEC §10.1).

The same operations as the Correspondance page (`rorfeed.mapping_changes`): nothing is written
before a preview that lists every problem with its line, or every change with what it means
for the ROR; `apply` and `restore` then ask for confirmation on a terminal (or take `--yes`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from rorfeed.config import Config
from rorfeed.control import Control, check_actor
from rorfeed.errors import MappingError, shown
from rorfeed.exit_codes import ExitCode
from rorfeed.mapping import Mapping, decode_upload, parse_mapping_text, read_mapping_text
from rorfeed.mapping_changes import (
    Change,
    ChangeKind,
    FeedEffect,
    MappingChangeError,
    Proposal,
    compare,
    confirm,
    establishment_path,
    propose,
)
from rorfeed.state import Store
from rorfeed.wording import counted_en

EFFECTS = {
    FeedEffect.STARTS: "fed automatically from the next cycle",
    FeedEffect.STOPS: "NO LONGER FED: enter it by hand in the ROR from now on",
    FeedEffect.BY_HAND: "declared manual: entered by hand in the ROR",
    FeedEffect.STAYS_MANUAL: "stays in manual mode until `rorfeed units auto`",
    FeedEffect.NEW_SOURCE: "fed with the counts of another local unit",
    FeedEffect.NONE: "the feed does not change",
}


def describe(change: Change) -> str:
    """One line for a change: what changes, then what it means for the ROR."""
    b, a = change.before, change.after
    if change.kind is ChangeKind.ADDED and a is not None:
        what = f"added (local code {a.local_code or '-'}, {a.declared_mode})"
    elif change.kind is ChangeKind.REMAPPED and a is not None and b is not None:
        what = f"local code {b.local_code} → {a.local_code}"
    elif change.kind is ChangeKind.RELABELED and a is not None and b is not None:
        what = f"label {b.label!r} → {a.label!r}"
    elif change.kind is ChangeKind.PRIORITY and a is not None and b is not None:
        what = f"priority {b.priority.value} → {a.priority.value}"
    elif change.kind is ChangeKind.SYNC_CODE and a is not None and b is not None:
        what = f"id_externe_synchro {b.sync_code or '-'} → {a.sync_code or '-'}"
    elif change.kind is ChangeKind.REDECLARED and a is not None and b is not None:
        what = f"declared {b.declared_mode} → {a.declared_mode}"
    else:
        what = change.kind.value
    return shown(f"  {change.ror_id}: {what} — {EFFECTS[change.effect]}")


def show(config: Config, store: Store, finess: str | None, version: int | None) -> int:
    """The mapping as read now, each unit's mode beside it; or a kept version's content."""
    if version is not None:
        if finess is None:
            print(
                "rorfeed: mapping show --version needs the establishment's FINESS", file=sys.stderr
            )
            return ExitCode.USAGE
        kept = store.mapping_version(finess, version)
        if kept is None:
            print(f"rorfeed: no version {version} of {finess}'s mapping", file=sys.stderr)
            return ExitCode.FAILED
        sys.stdout.write(kept.content)
        return ExitCode.OK
    doc = []
    for est in config.file.establishments:
        if finess is not None and est.finess != finess:
            continue
        path = config.resolve(est.mapping)
        modes = {u.ror_id: u.mode.value for u in store.units(est.finess)}
        try:
            units = parse_mapping_text(read_mapping_text(path), path).units
            problems: list[str] = []
        except MappingError as exc:
            units, problems = (), exc.problems
        doc.append(
            {
                "finess": est.finess,
                "path": str(path),
                "problems": problems,
                "units": [
                    {
                        "line": u.line,
                        "local_code": u.local_code,
                        "ror_id": u.ror_id,
                        "label": u.label,
                        "declared_mode": u.declared_mode.value,
                        "priority": u.priority.value,
                        "id_externe_synchro": u.id_externe_synchro,
                        "mode": modes.get(u.ror_id),
                    }
                    for u in units
                ],
            }
        )
    print(json.dumps(doc, ensure_ascii=False, indent=2))
    return ExitCode.OK


def versions(store: Store, finess: str) -> int:
    """The kept versions of `finess`'s mapping, newest first."""
    kept = store.mapping_versions(finess)
    for v in kept:
        lines = len(v.content.splitlines())
        at = v.at.isoformat(timespec="minutes")
        print(shown(f"{v.id:>5}  {at}  {v.actor}  {lines} lines  {v.reason}"))
    print(counted_en(len(kept), "version"), file=sys.stderr)
    return ExitCode.OK


def diff(config: Config, store: Store, finess: str, old: str, new: str) -> int:
    """The changes from `old` to `new`: each a version id, `current` or a file."""
    try:
        before = _mapping_of(config, store, finess, old)
        after = _mapping_of(config, store, finess, new)
    except MappingChangeError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except MappingError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return ExitCode.USAGE
    changes = compare(before, after, store.units(finess))
    for change in changes:
        print(describe(change))
    print(counted_en(len(changes), "change"), file=sys.stderr)
    return ExitCode.OK


def apply(
    config: Config,
    store: Store,
    control: Control,
    finess: str,
    source: str,
    *,
    reason: str,
    actor: str,
    yes: bool,
    ask: Callable[[str], str] = input,
) -> int:
    """Preview `source` (a file, or `version:N` for `restore`), then confirm and write it."""
    try:
        check_actor(actor)
        if not reason.strip():
            raise MappingChangeError("a reason is required (--reason): say why it changes")
        text = _text_of(config, store, finess, source)
        proposal = propose(config, store, finess, text)
    except (MappingChangeError, MappingError) as exc:
        problems = exc.problems if isinstance(exc, MappingError) else [str(exc)]
        print("\n".join(f"rorfeed: {p}" for p in problems), file=sys.stderr)
        return ExitCode.USAGE
    if not _preview(proposal):
        return ExitCode.USAGE
    if not yes:
        if not sys.stdin.isatty():
            print("rorfeed: not a terminal: pass --yes to apply without asking", file=sys.stderr)
            return ExitCode.USAGE
        if ask(f"Apply to {proposal.path}? [y/N] ").strip().lower() not in ("y", "yes", "o", "oui"):
            print("rorfeed: nothing changed", file=sys.stderr)
            return ExitCode.FAILED
    try:
        entries = confirm(store, control, proposal, reason=reason, actor=actor, now=control.clock())
    except MappingChangeError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    control.flush_notifications()
    print(
        f"{proposal.path}: replaced; {counted_en(len(entries), 'audit entry', 'audit entries')}",
        file=sys.stderr,
    )
    return ExitCode.OK


def _preview(proposal: Proposal) -> bool:
    """Print the preview on stderr; False when it cannot be applied."""
    if proposal.problems:
        print(f"{proposal.path}: the proposed mapping is invalid:", file=sys.stderr)
        for p in proposal.problems:
            print(f"  {shown(p)}", file=sys.stderr)
        return False
    if proposal.identical:
        print(f"{proposal.path}: the proposed mapping is the current one", file=sys.stderr)
        return False
    print(f"{proposal.path}: {counted_en(len(proposal.changes), 'change')}:", file=sys.stderr)
    for change in proposal.changes:
        print(describe(change), file=sys.stderr)
    return True


def _text_of(config: Config, store: Store, finess: str, source: str) -> str:
    if source.startswith("version:"):
        number = source.removeprefix("version:")
        kept = store.mapping_version(finess, int(number)) if number.isdigit() else None
        if kept is None:
            raise MappingChangeError(f"no version {number} of {finess}'s mapping")
        return kept.content
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MappingChangeError(f"{path}: cannot be read ({exc.strerror})") from None
    return decode_upload(data, str(path))


def _mapping_of(config: Config, store: Store, finess: str, which: str) -> Mapping:
    if which == "current":
        path = establishment_path(config, finess)
        return parse_mapping_text(read_mapping_text(path), path)
    source = f"version:{which}" if which.isdigit() else which
    return parse_mapping_text(_text_of(config, store, finess, source), which)
