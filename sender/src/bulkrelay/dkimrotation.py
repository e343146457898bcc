"""DKIM key rotation: where a rotation stands and which step comes next.

playbooks/dkim-rotate.yml (roles/relay_dkim/tasks/rotate.yml) keeps the state on the relay in
one JSON file, the local fact ``bulkrelay_dkim``, rewritten atomically after each step::

    {"active": "s1", "next": "s2", "previous": "", "published_at": 1764500000, "switched_at": 0}

A rotation is three steps, one selector for every signing domain:

1. ``start``: make the next selector's key and publish its record (state: active + next);
2. ``switch``: once every authoritative nameserver serves it, sign with it (active + previous);
3. ``retire``: after the grace period, remove the previous key and its record (active only).

Between 2 and 3 the step is ``wait``. A relay without the file has never rotated: its only
selector is the configured one (``bulkrelay_dkim_selector``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bulkrelay.names import is_label

START, SWITCH, WAIT, RETIRE = "start", "switch", "wait", "retire"


class RotationError(ValueError):
    """A state file or setting that cannot be right; the message names it and the fix."""


@dataclass(frozen=True)
class RotationState:
    active: str
    next: str = ""
    previous: str = ""
    published_at: int = 0
    switched_at: int = 0

    def selectors(self) -> list[str]:
        """Every selector whose key the relay must keep: the signing one first."""
        return [s for s in (self.active, self.next, self.previous) if s]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load(
    data: Mapping[str, Any] | None, configured: str, where: str = "the DKIM rotation state"
) -> RotationState:
    """The state from the fact (None or {} = never rotated: ``configured`` signs)."""
    if not data:
        return RotationState(active=configured)
    fix = f"fix or remove {where} (then the configured selector {configured!r} signs)"
    try:
        state = RotationState(
            active=str(data["active"]),
            next=str(data.get("next") or ""),
            previous=str(data.get("previous") or ""),
            published_at=int(data.get("published_at") or 0),
            switched_at=int(data.get("switched_at") or 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RotationError(f"{where} is not readable ({type(exc).__name__}: {exc}): {fix}") from None
    bad = [s for s in state.selectors() if not is_label(s)]
    if not state.active or bad:
        raise RotationError(f"{where} names invalid selectors {bad or [state.active]}: {fix}")
    if state.next and state.previous:
        raise RotationError(f"{where} has both a next and a previous selector: {fix}")
    if len(set(state.selectors())) != len(state.selectors()):
        raise RotationError(f"{where} names one selector twice: {fix}")
    return state


def step(state: RotationState, now: int, grace_seconds: int) -> str:
    """The step a run makes next."""
    if state.next:
        return SWITCH
    if state.previous:
        return RETIRE if now >= state.switched_at + grace_seconds else WAIT
    return START


def next_selector(prefix: str, day: dt.date, taken: Iterable[str]) -> str:
    """``<prefix><yyyymmdd>``, with ``-2``, ``-3``... when that is taken (two rotations a day)."""
    base = f"{prefix}{day:%Y%m%d}"
    if not is_label(base):
        raise RotationError(
            f"the DKIM selector prefix {prefix!r} gives {base!r}, not a DNS label: use a-z, 0-9 and '-'"
        )
    taken = set(taken)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def started(state: RotationState, selector: str, now: int) -> RotationState:
    if step(state, now, 0) != START:
        raise RotationError(f"a rotation is under way (state {state.as_dict()}); it cannot start again")
    return RotationState(active=state.active, next=selector, published_at=now)


def switched(state: RotationState, now: int) -> RotationState:
    if not state.next:
        raise RotationError("no next selector to switch to")
    return RotationState(active=state.next, previous=state.active, switched_at=now)


def retired(state: RotationState) -> RotationState:
    return RotationState(active=state.active)


def plan(
    data: Mapping[str, Any] | None,
    *,
    configured: str,
    now: int,
    grace_days: float,
    prefix: str,
    where: str = "the DKIM rotation state",
) -> dict[str, Any]:
    """What the playbook needs for this run: the state as read, the step, the state after each
    step it may take (``after_start``, ``after_switch``, ``after_retire``) and when the grace
    period ends."""
    state = load(data, configured, where)
    grace = int(grace_days * 86400)
    current = step(state, now, grace)
    out: dict[str, Any] = {"state": state.as_dict(), "step": current, "grace_ends": ""}
    if current == START:
        day = dt.datetime.fromtimestamp(now, dt.UTC).date()
        out["after_start"] = started(state, next_selector(prefix, day, state.selectors()), now).as_dict()
    pending = RotationState(**out.get("after_start", out["state"]))
    if pending.next:
        out["after_switch"] = switched(pending, now).as_dict()
    if state.previous:
        ends = dt.datetime.fromtimestamp(state.switched_at + grace, dt.UTC)
        out["grace_ends"] = ends.strftime("%Y-%m-%d %H:%M UTC")
        out["after_retire"] = retired(state).as_dict()
    return out
