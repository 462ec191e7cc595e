"""The alert state machine, as one pure decision: given what is open and what a rule found, what happens.

Modelled on ThingsBoard alarms (unique per originator and type while active, active/cleared x
acked/unacked) with Kapacitor-style hysteresis: rules report FIRING above their raise line, OK
below a lower clear line and HOLD in between, and an alert clears only after ``clear_after``
consecutive OK evaluations. A person clearing an alert latches it: it does not reopen until the
condition has ended once.
"""

from __future__ import annotations

from enum import StrEnum

from api.alerts.rules.base import Level


class Action(StrEnum):
    OPEN = "open"
    UPDATE = "update"  # still firing: refresh last_seen, value, severity
    COUNT_OK = "count_ok"  # one more OK evaluation, not yet enough to clear
    CLEAR = "clear"
    RESET_OK = "reset_ok"  # HOLD after some OKs: the streak starts over
    UNLATCH = "unlatch"  # the condition ended after a manual clear: it may alert again
    NOTHING = "nothing"


def decide(
    is_open: bool, ok_count: int, latched: bool, level: Level, clear_after: int, suppressed: bool = False
) -> Action:
    """``suppressed`` is a maintenance window: nothing opens, but open alerts still update and clear."""
    if level is Level.FIRING:
        if is_open:
            return Action.UPDATE
        if latched or suppressed:
            return Action.NOTHING
        return Action.OPEN
    if level is Level.OK:
        if is_open:
            return Action.CLEAR if ok_count + 1 >= clear_after else Action.COUNT_OK
        return Action.UNLATCH if latched else Action.NOTHING
    if is_open and ok_count:
        return Action.RESET_OK
    return Action.NOTHING
