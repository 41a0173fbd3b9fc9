"""Streaks → mode-change decisions (SPEC §6). Pure: the cycle applies them through control.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Thresholds:
    manual_after_cycles: int = 3
    killswitch_after_cycles: int = 3
    killswitch_rejected_share: float = 0.5


def units_to_switch(streaks: dict[str, int], thresholds: Thresholds) -> list[str]:
    """ROR ids whose consecutive rejected cycles reached the threshold, sorted."""
    return sorted(r for r, n in streaks.items() if n >= thresholds.manual_after_cycles)


def unreachable_trips(streak: int, thresholds: Thresholds) -> bool:
    return streak >= thresholds.killswitch_after_cycles


def rejected_share_trips(rejected: int, automated: int, thresholds: Thresholds) -> bool:
    """More than the configured share of the units automated at the start of the cycle.

    A share of 1 never trips: no more than all units can be rejected.
    """
    return automated > 0 and rejected / automated > thresholds.killswitch_rejected_share
