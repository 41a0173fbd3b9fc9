"""A person changes an establishment's mapping: preview, then confirm (SPEC §10.1).

One implementation for every door (`rorfeed mapping apply|restore`, the Correspondance page):

- `propose` reads the proposed text with the cycle's own parser and compares it with the
  mapping as it is read now: every validation problem with its line, or every change with
  what it means for the ROR (`FeedEffect`). Nothing is written.
- `confirm` takes a mandatory reason and refuses a proposal whose file changed since the
  preview (another person, an editor on the server). Then, in this order: the file is replaced
  atomically (a cycle reads the old file or the new one); the version is kept in the state
  store with its author and reason; the units table is brought in line with one audit entry
  per changed fiche under the person's name; the cell is e-mailed about fiches that leave the
  automated feed. A crash after the file's replacement loses nothing from the trail: the next
  cycle keeps the version and audits the differences itself (as `rorfeed`).

The words are the caller's: the CLI's plain English, the page's French.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from rorfeed.config import Config
from rorfeed.control import Control
from rorfeed.durable import write_atomic
from rorfeed.errors import MappingError, RorfeedError
from rorfeed.mapping import Mapping, parse_mapping_text, read_mapping_text
from rorfeed.model import MappedUnit, Mode
from rorfeed.state import AuditEntry, Store, UnitState
from rorfeed.state.mapping_versions import digest

# How long a confirmation waits for another one being written (a few hundredths of a second).
LOCK_SECONDS = 10.0


class MappingChangeError(RorfeedError):
    """A proposed mapping change was refused; nothing was written."""


class MappingConflict(MappingChangeError):
    """The mapping file changed between the preview and the confirmation."""


class ChangeKind(StrEnum):
    ADDED = "added"  # a fiche enters the mapping
    REMOVED = "removed"  # a fiche leaves it
    REMAPPED = "remapped"  # another local unit now gives the fiche's counts
    RELABELED = "relabeled"  # the label only
    PRIORITY = "priority"  # its priority (the follow-up report counts by it)
    SYNC_CODE = "sync_code"  # the code of its place in the national ROR (fhir destinations)
    REDECLARED = "redeclared"  # its declared mode changes


class FeedEffect(StrEnum):
    """What a change means for the ROR."""

    STARTS = "starts"  # fed automatically from the next cycle
    STOPS = "stops"  # no longer fed: to enter by hand in the ROR from now on
    BY_HAND = "by_hand"  # never fed (declared manual): entered by hand, as before or from now
    STAYS_MANUAL = "stays_manual"  # declared auto but in manual mode: a person switches it back
    NEW_SOURCE = "new_source"  # still fed, with the counts of another local unit
    NONE = "none"  # the feed does not change


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    ror_id: str
    before: MappedUnit | None
    after: MappedUnit | None
    effect: FeedEffect


@dataclass(frozen=True)
class Proposal:
    """A proposed mapping and what it would change; `base` is the file's digest at preview."""

    finess: str
    path: Path
    base: str | None  # None: no readable file now
    text: str
    problems: tuple[str, ...]  # not empty: the proposal cannot be confirmed
    changes: tuple[Change, ...]

    @property
    def identical(self) -> bool:
        return self.base == digest(self.text)


def compare(old: Mapping | None, new: Mapping, states: Sequence[UnitState]) -> tuple[Change, ...]:
    """The changes from `old` to `new`, each with its effect given the units' `states`."""
    before = {u.ror_id: u for u in old.units} if old is not None else {}
    after = {u.ror_id: u for u in new.units}
    mode = {s.ror_id: s.mode for s in states}
    changes: list[Change] = []
    for ror_id in sorted(before.keys() | after.keys()):
        b, a = before.get(ror_id), after.get(ror_id)
        manual = mode.get(ror_id) is Mode.MANUAL  # the state's mode: a switch or the past
        if b is None and a is not None:
            if a.declared_mode is Mode.MANUAL:
                effect = FeedEffect.BY_HAND
            else:
                effect = FeedEffect.STAYS_MANUAL if manual else FeedEffect.STARTS
            changes.append(Change(ChangeKind.ADDED, ror_id, None, a, effect))
        elif a is None and b is not None:
            fed = b.declared_mode is Mode.AUTO and not manual
            effect = FeedEffect.STOPS if fed else FeedEffect.NONE
            changes.append(Change(ChangeKind.REMOVED, ror_id, b, None, effect))
        elif a is not None and b is not None:
            fed = b.declared_mode is Mode.AUTO and not manual
            if a.declared_mode != b.declared_mode:
                if a.declared_mode is Mode.MANUAL:
                    effect = FeedEffect.STOPS if fed else FeedEffect.BY_HAND
                else:
                    effect = FeedEffect.STAYS_MANUAL
                changes.append(Change(ChangeKind.REDECLARED, ror_id, b, a, effect))
            elif a.local_code != b.local_code:
                effect = FeedEffect.NEW_SOURCE if fed else FeedEffect.NONE
                changes.append(Change(ChangeKind.REMAPPED, ror_id, b, a, effect))
            elif a.label != b.label:
                changes.append(Change(ChangeKind.RELABELED, ror_id, b, a, FeedEffect.NONE))
            elif a.sync_code != b.sync_code:
                changes.append(Change(ChangeKind.SYNC_CODE, ror_id, b, a, FeedEffect.NONE))
            elif a.priority != b.priority:
                changes.append(Change(ChangeKind.PRIORITY, ror_id, b, a, FeedEffect.NONE))
    return tuple(changes)


def establishment_path(config: Config, finess: str) -> Path:
    for est in config.file.establishments:
        if est.finess == finess:
            return config.resolve(est.mapping)
    raise MappingChangeError(f"no establishment with FINESS {finess} in {config.path.name}")


def writable_problem(path: Path) -> str | None:
    """Why the service cannot replace `path`, or None (SPEC §10.1: else shown read-only)."""
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"{path.parent}: the folder is not writable by this process"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path}: the file is not writable by this process"
    return None


def propose(config: Config, store: Store, finess: str, text: str) -> Proposal:
    """Compare `text` with `finess`'s mapping as read now; nothing is written."""
    path = establishment_path(config, finess)
    try:
        current_text: str | None = read_mapping_text(path)
    except MappingError:
        current_text = None  # unreadable now: every line of the proposal is an addition
    current: Mapping | None = None
    if current_text is not None:
        try:
            current = parse_mapping_text(current_text, path)
        except MappingError:
            current = None
    base = None if current_text is None else digest(current_text)
    try:
        new = parse_mapping_text(text, path.name)
    except MappingError as exc:
        return Proposal(finess, path, base, text, tuple(exc.problems), ())
    changes = compare(current, new, store.units(finess))
    return Proposal(finess, path, base, text, (), changes)


def confirm(
    store: Store,
    control: Control,
    proposal: Proposal,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> list[AuditEntry]:
    """Write `proposal` (see the module's docstring); returns the audit entries written."""
    reason = reason.strip()
    if not reason:
        raise MappingChangeError("a reason is required: say why the mapping changes")
    if proposal.problems:
        raise MappingChangeError(f"the proposed mapping is invalid: {proposal.problems[0]}")
    if proposal.identical:
        raise MappingChangeError("the proposed mapping is the current one: nothing to change")
    path = proposal.path
    problem = writable_problem(path)
    if problem is not None:
        raise MappingChangeError(f"the mapping cannot be changed here: {problem}")
    # Two leads confirming at once (the page, the CLI): one at a time checks and writes, so
    # the second sees the first's file and gets the conflict.
    with _exclusive(path):
        try:
            now_digest: str | None = digest(read_mapping_text(path))
        except MappingError:
            now_digest = None
        if now_digest != proposal.base:
            raise MappingConflict(
                f"{path}: the mapping changed since the preview — look at the new preview"
            )
        return _write(store, control, proposal, reason=reason, actor=actor, now=now)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on `.<name>.lock` beside the mapping, waited for `LOCK_SECONDS`."""
    lock = path.with_name(f".{path.name}.lock")
    deadline = time.monotonic() + LOCK_SECONDS
    with lock.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MappingChangeError(
                        f"{path}: another change is being written; try again"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(
    store: Store,
    control: Control,
    proposal: Proposal,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> list[AuditEntry]:
    path = proposal.path
    mapping = parse_mapping_text(proposal.text, path)
    before = {u.ror_id: u for u in store.units(proposal.finess)}
    try:
        write_atomic(path, proposal.text.encode("utf-8"))
    except OSError as exc:
        raise MappingChangeError(f"{path}: cannot be written ({exc.strerror})") from exc
    store.keep_mapping_version(proposal.finess, proposal.text, now, actor, reason)
    entries, _ = store.sync_mapping(proposal.finess, mapping.units, now, actor=actor, reason=reason)
    leaving = {c.ror_id for c in proposal.changes if c.effect is FeedEffect.STOPS}
    removed = [before[r] for r in leaving if r in before and r not in mapping.by_ror_id()]
    redeclared = [before[r] for r in leaving if r in before and r in mapping.by_ror_id()]
    control.notify_left_feed(removed, redeclared, reason, actor)
    return entries
