#!/usr/bin/env python3
"""(4) Throttle accuracy: a backlog released by ``bulkrelay serve`` over a scaled-down hour.

The production policy "100 mails every 5 minutes" (plus a per-domain limit of 20 per window
for one big receiver) is scaled down by ``--scale`` (default 60: 100 per 5 s, an hour in
60 s). A backlog larger than the hour can take (2,000 recipients, 30 % at the limited domain)
is queued, the service releases it into smtp-sink, and afterwards the release ledger and the
submission times in the queue are checked:

- achieved rate over the hour (releases in [first release, first release + hour)) against
  the configured rate - target >= 98 %;
- the fullest sliding window of ``interval`` seconds, overall and for the limited domain,
  against its limit - target: never over (the policy's ledger), and the same for the moments
  the SMTP transactions completed (what the receiver saw).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import time

import common as c

from bulkrelay.queue import Queue

BATCH = 100
INTERVAL = 300.0
DOMAIN = "bigmail.test"
DOMAIN_LIMIT = 20
BACKLOG = 2000


def fullest_window(times: list[float], width: float) -> int:
    """Most events in any half-open window (t - width, t] (the policy's own definition)."""
    times = sorted(times)
    best = 0
    for t in times:
        # the window ends at t (and at every later event with the same timestamp)
        end = bisect.bisect_right(times, t)
        start = bisect.bisect_right(times, t - width)
        best = max(best, end - start)
    return best


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=60.0, help="time compression (60: an hour in 60 s)")
    args = parser.parse_args()
    interval = INTERVAL / args.scale
    hour = 3600.0 / args.scale
    work = c.workdir("throttle")
    raw = c.make_message("small")
    sink_port = c.free_port()
    config = c.sender_config(
        work,
        submit_port=sink_port,
        connections=2,
        batch_size=BATCH,
        interval=interval,
        per_domain={DOMAIN: DOMAIN_LIMIT},
    )
    queue = Queue(work / "queue.sqlite")
    for i in range(BACKLOG):
        domain = DOMAIN if i % 10 < 3 else f"customer{i % 7}.test"
        queue.enqueue(raw, c.FROM, [f"r{i}@{domain}"], source="bench")
    queue.close()
    report = c.Report(
        "throttle", f"{BATCH} per {interval:g}s ({DOMAIN} {DOMAIN_LIMIT}) over a {hour:g}s hour"
    )
    with c.smtp_sink(sink_port), c.Service(config):
        conn = c.db(work / "queue.sqlite")
        c.wait_until(
            lambda: conn.execute("SELECT count(*) FROM releases").fetchone()[0] > 0, 30, "the first release"
        )
        first = conn.execute("SELECT min(at) FROM releases").fetchone()[0]
        time.sleep(max(first + hour + 1.0 - time.time(), 0))
        releases = conn.execute("SELECT at, domain FROM releases ORDER BY at").fetchall()
        submitted = conn.execute(
            "SELECT updated_at, domain FROM recipients WHERE state = 'submitted' ORDER BY updated_at"
        ).fetchall()
        conn.close()
    in_hour = [(at, d) for at, d in releases if first <= at < first + hour]
    expected = BATCH * hour / interval
    all_times = [at for at, _ in in_hour]
    dom_times = [at for at, d in in_hour if d == DOMAIN]
    sub_all = [t for t, _ in submitted if first <= t < first + hour]
    sub_dom = [t for t, d in submitted if d == DOMAIN and first <= t < first + hour]
    batches = sorted({round(at, 3) for at in all_times})
    report.figure("configured_per_hour", int(expected), "recipients")
    report.figure("released_in_hour", len(in_hour), "recipients")
    report.figure("batches_in_hour", len(batches), "batches")
    if len(batches) > 1:
        gaps = [b - a for a, b in itertools.pairwise(batches)]
        report.figure("batch_gap_mean", round(sum(gaps) / len(gaps), 4), "s", f"configured {interval:g}s")
        report.figure("batch_gap_max", round(max(gaps), 4), "s")
    report.figure(f"released_{DOMAIN}_in_hour", len(dom_times), "recipients", f"limit {DOMAIN_LIMIT}/window")
    report.figure(
        "fullest_window_submitted", fullest_window(sub_all, interval), "recipients", "receiver view"
    )
    report.figure(
        f"fullest_window_submitted_{DOMAIN}", fullest_window(sub_dom, interval), "recipients", "receiver view"
    )
    report.verdict(
        "achieved_vs_configured", len(in_hour) / expected, ">=", 0.98, "release rate over the hour"
    )
    report.verdict(
        "fullest_window_vs_limit", fullest_window(all_times, interval) / BATCH, "<=", 1.0, "no window over"
    )
    report.verdict(
        f"fullest_window_{DOMAIN}_vs_limit",
        fullest_window(dom_times, interval) / DOMAIN_LIMIT,
        "<=",
        1.0,
        "per-domain window never over",
    )
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
