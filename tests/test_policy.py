"""Release policy with an injected clock: a simulated day never exceeds any limit in any window."""

import bisect
import datetime as dt
import json
import random

import pytest

from bulkrelay.config import PolicyConfig
from bulkrelay.policy import Policy, parse_window, pause, resume
from bulkrelay.queue import Queue

RAW = b"From: billing@example.test\r\nSubject: x\r\n\r\nbody\r\n"
# 2026-03-02 00:00 UTC, a Monday
DAY0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def max_in_any_window(times, width):
    """The largest number of events in any half-open window [t, t + width)."""
    times = sorted(times)
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + width) - i)
    return best


def release_round(policy, queue, now):
    decision = policy.decide(queue, now)
    rows = (
        queue.take(decision.allowed, now=now, domain_remaining=decision.per_domain)
        if decision.allowed
        else []
    )
    for row in rows:
        queue.mark_submitted(row["id"], "250 2.0.0 Ok: queued as X")
    return decision, rows


def simulate(policy, queue, clock, *, start, end, arrivals, step=5.0):
    """Run release rounds every `step` seconds while mail arrives; return [(time, domain)]."""
    released = []
    arrivals = sorted(arrivals)
    i = 0
    clock.t = start
    while clock.t < end:
        while i < len(arrivals) and arrivals[i][0] <= clock.t:
            _, domain, n = arrivals[i]
            queue.enqueue(RAW, "billing@example.test", [f"u{i}-{k}@{domain}" for k in range(n)], source="sim")
            i += 1
        _decision, rows = release_round(policy, queue, clock.t)
        released += [(clock.t, r["domain"]) for r in rows]
        clock.t += step
    return released


@pytest.fixture
def clock():
    return Clock(DAY0)


def test_simulated_day_of_mixed_traffic_never_exceeds_a_limit(queue, clock):
    cfg = PolicyConfig(
        batch_size=100,
        interval=300,
        daily_cap=6000,
        per_domain={"gmail.test": 30, "tiny.test": 5},
        windows=("06:00-20:00",),
        timezone="UTC",
    )
    policy = Policy(cfg)
    rng = random.Random(42)
    domains = ["gmail.test", "tiny.test", "corp.test", "web.test", "mail.test"]
    # ERP dumps of thousands at once plus a steady trickle of single order confirmations
    arrivals = [(DAY0 + 5 * 3600, "corp.test", 2500), (DAY0 + 9 * 3600, "gmail.test", 1200)]
    arrivals += [(DAY0 + 13 * 3600, d, 400) for d in domains]
    arrivals += [(DAY0 + rng.uniform(0, 86400), rng.choice(domains), rng.randint(1, 3)) for _ in range(3000)]
    released = simulate(policy, queue, clock, start=DAY0, end=DAY0 + 86400, arrivals=arrivals)

    times = [t for t, _ in released]
    assert max_in_any_window(times, 300) <= 100
    for domain, limit in cfg.per_domain.items():
        assert max_in_any_window([t for t, d in released if d == domain], 300) <= limit
    assert len(released) <= 6000
    for t in times:  # never outside 06:00-20:00
        hour = dt.datetime.fromtimestamp(t, dt.UTC).hour
        assert 6 <= hour < 20
    # ...and the limits are the only brake: the day's cap is used up, in full batches of 100
    assert len(released) == 6000
    per_round = {}
    for t, _ in released:
        per_round[t] = per_round.get(t, 0) + 1
    assert max(per_round.values()) == 100
    # tiny.test got its share despite the backlog in front of it
    assert sum(1 for _, d in released if d == "tiny.test") > 0


def test_restart_mid_window_does_not_burst(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    cfg = PolicyConfig(batch_size=100, interval=300)
    q = Queue(path, clock=clock)
    q.enqueue(RAW, "billing@example.test", [f"r{i}@x.test" for i in range(400)], source="t")
    _, rows = release_round(Policy(cfg), q, clock.t)
    assert len(rows) == 100
    q.close()

    clock.t += 120  # the service restarts two minutes later
    q = Queue(path, clock=clock)
    decision, rows = release_round(Policy(cfg), q, clock.t)
    assert rows == []
    assert decision.allowed == 0
    assert decision.next_at == pytest.approx(DAY0 + 300)
    clock.t = DAY0 + 300
    _, rows = release_round(Policy(cfg), q, clock.t)
    assert len(rows) == 100
    q.close()


def test_restart_after_partial_batch_only_tops_up(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    cfg = PolicyConfig(batch_size=100, interval=300)
    q = Queue(path, clock=clock)
    q.enqueue(RAW, "billing@example.test", [f"r{i}@x.test" for i in range(60)], source="t")
    release_round(Policy(cfg), q, clock.t)
    q.enqueue(RAW, "billing@example.test", [f"s{i}@x.test" for i in range(300)], source="t")
    q.close()
    clock.t += 10
    q = Queue(path, clock=clock)
    _, rows = release_round(Policy(cfg), q, clock.t)
    assert len(rows) == 40
    q.close()


def test_per_domain_limit_holds_while_other_domains_flow(queue, clock):
    cfg = PolicyConfig(batch_size=100, interval=60, per_domain={"gmail.test": 10})
    queue.enqueue(RAW, "b@example.test", [f"g{i}@gmail.test" for i in range(500)], source="t")
    queue.enqueue(RAW, "b@example.test", [f"o{i}@other.test" for i in range(50)], source="t")
    policy = Policy(cfg)
    _, rows = release_round(policy, queue, clock.t)
    domains = [r["domain"] for r in rows]
    assert domains.count("gmail.test") == 10
    assert domains.count("other.test") == 50
    clock.t += 30
    decision, rows = release_round(policy, queue, clock.t)
    assert rows == [] and decision.per_domain == {"gmail.test": 0}
    assert policy.domain_next_at(queue, "gmail.test", clock.t) == pytest.approx(DAY0 + 60)
    clock.t = DAY0 + 60
    _, rows = release_round(policy, queue, clock.t)
    assert len(rows) == 10


def test_warmup_schedule_caps_each_day(queue, clock):
    start = dt.date(2026, 3, 2)
    cfg = PolicyConfig(batch_size=1000, interval=60, warmup=(50, 120, 300), warmup_start=start, daily_cap=200)
    policy = Policy(cfg)
    queue.enqueue(RAW, "b@example.test", [f"r{i}@x.test" for i in range(2000)], source="t")
    per_day = []
    for day in range(5):
        released = simulate(
            policy,
            queue,
            clock,
            start=DAY0 + day * 86400,
            end=DAY0 + (day + 1) * 86400,
            arrivals=[],
            step=600,
        )
        per_day.append(len(released))
    # day 0: 50, day 1: 120, day 2: min(300, daily cap 200), then the daily cap alone
    assert per_day == [50, 120, 200, 200, 200]


def test_daily_cap_follows_the_configured_time_zone(queue, clock):
    cfg = PolicyConfig(batch_size=1000, interval=60, daily_cap=10, timezone="Europe/Berlin")
    policy = Policy(cfg)
    queue.enqueue(RAW, "b@example.test", [f"r{i}@x.test" for i in range(100)], source="t")
    clock.t = DAY0 + 22 * 3600 + 1800  # 23:30 in Berlin (UTC+1 in March)
    _, rows = release_round(policy, queue, clock.t)
    assert len(rows) == 10
    decision, _ = release_round(policy, queue, clock.t + 60)
    assert decision.reason.startswith("daily cap")
    assert decision.next_at == pytest.approx(DAY0 + 23 * 3600)  # Berlin midnight
    _, rows = release_round(policy, queue, DAY0 + 23 * 3600 + 1)
    assert len(rows) == 10


def test_windows_including_one_across_midnight():
    policy = Policy(PolicyConfig(windows=("22:00-02:00", "12:00-12:30")))
    at = lambda h, m: DAY0 + h * 3600 + m * 60  # noqa: E731
    assert policy.in_window(at(23, 0)) and policy.in_window(at(1, 59)) and policy.in_window(at(12, 0))
    assert (
        not policy.in_window(at(2, 0)) and not policy.in_window(at(12, 30)) and not policy.in_window(at(8, 0))
    )
    assert policy.next_window_start(at(8, 0)) == at(12, 0)
    assert policy.next_window_start(at(13, 0)) == at(22, 0)
    assert parse_window("07:30-19:45") == (450, 1185)


def test_operator_pause_persists_across_restart(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    q = Queue(path, clock=clock)
    q.enqueue(RAW, "b@example.test", ["a@x.test"], source="t")
    pause(q, "investigating complaints")
    q.close()
    q = Queue(path, clock=clock)
    decision, rows = release_round(Policy(PolicyConfig()), q, clock.t)
    assert rows == [] and decision.paused and "investigating complaints" in decision.reason
    assert resume(q) is True
    _, rows = release_round(Policy(PolicyConfig()), q, clock.t)
    assert len(rows) == 1
    q.close()


def test_dnsbl_listing_pauses_until_the_state_file_is_clean(queue, clock, tmp_path):
    state = tmp_path / "state.json"
    policy = Policy(PolicyConfig(), dnsbl_state_file=str(state))
    queue.enqueue(RAW, "b@example.test", ["a@x.test"], source="t")
    # the shape bulkrelay.dnsbl.cron writes
    listing = {"target": "198.51.100.20", "zone": "zen.dnsbl.test", "codes": ["127.0.0.2"], "reason": "test"}
    state.write_text(json.dumps({"status": "CRITICAL", "listings": [listing], "errors": []}))
    decision, rows = release_round(policy, queue, clock.t)
    assert rows == [] and decision.paused
    assert decision.reason == "paused: relay listed on DNSBL (198.51.100.20 on zen.dnsbl.test)"
    state.write_text(json.dumps({"listings": []}))
    _, rows = release_round(policy, queue, clock.t)
    assert len(rows) == 1


def test_unreadable_dnsbl_state_does_not_pause(queue, clock, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    queue.enqueue(RAW, "b@example.test", ["a@x.test"], source="t")
    _, rows = release_round(Policy(PolicyConfig(), dnsbl_state_file=str(state)), queue, clock.t)
    assert len(rows) == 1
