"""The release policy: how many recipients may go to Postfix right now, and when the next may.

Pure decisions over a ledger of past releases (``bulkrelay.queue.Queue`` stores it in SQLite,
so a restart remembers the current window and cannot burst) and an injected clock. Limits:

- ``batch_size`` per ``interval`` seconds, as a *sliding* window: no interval-long span of
  time ever holds more than ``batch_size`` releases. A full batch released at T opens the next
  at T + interval.
- ``per_domain``: the same sliding window per recipient domain with its own maximum.
- ``daily_cap`` and the ``warmup`` schedule (daily caps by day since ``warmup_start``): the
  lower applies, per calendar day in ``timezone``.
- ``windows``: "HH:MM-HH:MM" times of day in ``timezone`` (may wrap past midnight).
- pause: by the operator (``bulkrelay pause``, stored in the queue database) or while the
  DNSBL state file lists the relay.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple, Protocol

from bulkrelay.config import PolicyConfig, zone

log = logging.getLogger("bulkrelay.policy")

PAUSE_KEY = "policy.paused"


class Ledger(Protocol):
    def released_since(self, since: float, domain: str | None = None) -> int: ...
    def oldest_release_since(self, since: float, domain: str | None = None) -> float | None: ...
    def get_state(self, key: str) -> str | None: ...


class Decision(NamedTuple):  # not a dataclass: `status` runs without importing dataclasses
    allowed: int
    # Remaining allowance for each domain with a per-domain limit (0 = blocked this window).
    per_domain: Mapping[str, int] = MappingProxyType({})
    # Earliest time anything blocked now may change (None: only an operator action will).
    next_at: float | None = None
    reason: str = "ok"

    @property
    def paused(self) -> bool:
        return self.reason.startswith("paused")


def parse_window(text: str) -> tuple[int, int]:
    start, end = text.split("-")
    h1, m1 = start.split(":")
    h2, m2 = end.split(":")
    return int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)


def dnsbl_listings(path: str) -> list[str]:
    """Listings from the DNSBL monitor's state file; [] when it is absent or unreadable."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("event=dnsbl_state_unreadable path=%s error=%r", path, str(exc))
        return []
    listings = data.get("listings") if isinstance(data, dict) else None
    if not isinstance(listings, list):
        return []
    return [_describe(item) for item in listings]


def _describe(item: object) -> str:
    """One listing as "198.51.100.20 on zen.dnsbl.test" (the DNSBL monitor writes dicts)."""
    if isinstance(item, dict) and ("target" in item or "zone" in item):
        return f"{item.get('target', '?')} on {item.get('zone', item.get('list', '?'))}"
    return item if isinstance(item, str) else json.dumps(item, sort_keys=True)


class Policy:
    def __init__(self, config: PolicyConfig, *, dnsbl_state_file: str = ""):
        self.config = config
        self.tz = zone(config.timezone)
        self.windows = [parse_window(w) for w in config.windows]
        self.dnsbl_state_file = dnsbl_state_file

    # -- calendar helpers -------------------------------------------------------------------
    def _local(self, now: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(now, self.tz)

    def _day_bounds(self, now: float) -> tuple[float, float]:
        local = self._local(now)
        start = dt.datetime.combine(local.date(), dt.time(0), self.tz)
        end = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(0), self.tz)
        return start.timestamp(), end.timestamp()

    def daily_limit(self, now: float) -> int | None:
        """The cap for the calendar day containing ``now`` (None = no cap)."""
        caps = []
        if self.config.daily_cap:
            caps.append(self.config.daily_cap)
        if self.config.warmup and self.config.warmup_start:
            day = (self._local(now).date() - self.config.warmup_start).days
            if day < len(self.config.warmup):
                caps.append(self.config.warmup[max(day, 0)])
        return min(caps) if caps else None

    def in_window(self, now: float) -> bool:
        if not self.windows:
            return True
        local = self._local(now)
        minute = local.hour * 60 + local.minute
        for start, end in self.windows:
            if start <= end:
                if start <= minute < end:
                    return True
            elif minute >= start or minute < end:
                return True
        return False

    def next_window_start(self, now: float) -> float:
        local = self._local(now)
        candidates = []
        for start, _end in self.windows:
            for days in (0, 1):
                day = local.date() + dt.timedelta(days=days)
                at = dt.datetime.combine(day, dt.time(start // 60, start % 60), self.tz)
                if at.timestamp() > now:
                    candidates.append(at.timestamp())
        return min(candidates)

    # -- the decision -----------------------------------------------------------------------
    def decide(self, ledger: Ledger, now: float) -> Decision:
        paused = ledger.get_state(PAUSE_KEY)
        if paused is not None:
            return Decision(0, next_at=None, reason=f"paused by operator: {paused}")
        listings = dnsbl_listings(self.dnsbl_state_file)
        if listings:
            return Decision(
                0, next_at=now + 60, reason=f"paused: relay listed on DNSBL ({', '.join(listings)})"
            )
        if not self.in_window(now):
            return Decision(0, next_at=self.next_window_start(now), reason="outside sending window")

        cfg = self.config
        since = now - cfg.interval
        used = ledger.released_since(since)
        allowed = cfg.batch_size - used
        next_at: float | None = None
        reason = "ok"
        if allowed <= 0:
            oldest = ledger.oldest_release_since(since)
            next_at = (oldest if oldest is not None else now) + cfg.interval
            reason = "batch sent, waiting for the interval"
            allowed = 0

        limit = self.daily_limit(now)
        if limit is not None:
            day_start, day_end = self._day_bounds(now)
            today = ledger.released_since(math.nextafter(day_start, -math.inf))
            if today >= limit:
                return Decision(0, next_at=day_end, reason=f"daily cap of {limit} reached")
            allowed = min(allowed, limit - today)

        per_domain = {}
        for domain, maximum in cfg.per_domain.items():
            left = maximum - ledger.released_since(since, domain)
            per_domain[domain] = max(left, 0)
        return Decision(allowed, per_domain=per_domain, next_at=next_at, reason=reason)

    def domain_next_at(self, ledger: Ledger, domain: str, now: float) -> float:
        """When a blocked domain gets its first free slot back."""
        oldest = ledger.oldest_release_since(now - self.config.interval, domain)
        return (oldest if oldest is not None else now) + self.config.interval


def pause(ledger_queue, reason: str) -> None:
    """Pause releasing (persisted in the queue database, so it survives restarts)."""
    ledger_queue.set_state(PAUSE_KEY, reason or "no reason given")
    log.info("event=paused reason=%r pid=%d", reason, os.getpid())


def resume(ledger_queue) -> bool:
    was = ledger_queue.get_state(PAUSE_KEY) is not None
    ledger_queue.set_state(PAUSE_KEY, None)
    log.info("event=resumed was_paused=%s", was)
    return was
