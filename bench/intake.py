#!/usr/bin/env python3
"""(2) Intake rate: smtp-source into the sender's SMTP intake vs into a real Postfix smtpd.

Both receivers commit every message durably before their 250: the intake (``bulkrelay serve``
with ``[intake] listen``; release paused so the queue only grows) writes it to its SQLite queue
(WAL, synchronous=FULL); the throwaway Postfix's smtpd/cleanup write it into the Postfix queue
with fsync. The same smtp-source command (same message, sessions, count) drives both, back to
back; the verdict is the ratio of the rates.
"""

from __future__ import annotations

import time

import common as c

from bulkrelay.normalise import accept
from bulkrelay.queue import Queue

# (message kind, sessions, messages, issue 16's target for the case): "rate" (>= Postfix) or
# "rss" (the service under 150 MB while 200 KB messages arrive over 4 sessions; its rate is
# then a figure, the issue setting none).
CASES = [
    ("small", 1, 500, "rate"),
    ("small", 4, 800, "rate"),
    ("pdf", 1, 150, "rate"),
    ("pdf", 4, 300, "rss"),
]


def intake_rate(kind: str, sessions: int, count: int, rounds: int) -> tuple[float, float, int]:
    work = c.workdir(f"intake/{kind}-{sessions}")
    message = c.write_message(work, kind)
    base_rates, intake_rates = [], []
    pf_port = c.free_port()
    intake_port = c.free_port()
    config = c.sender_config(work, submit_port=c.free_port(), intake=f"127.0.0.1:{intake_port}")
    c.cli("pause", "--config", str(config), "--reason", "intake benchmark: queue only")
    with c.postfix(work / "postfix", pf_port) as etc, c.Service(config) as service:
        c.wait_port("127.0.0.1", intake_port, what="sender intake")
        for _ in range(rounds):
            base_rates.append(count / c.smtp_source(pf_port, message, count=count, sessions=sessions))
            # Postfix discards what it took before the intake's turn, so they never overlap.
            c.wait_until(lambda: c.postfix_queue_size(etc) == 0, 120, "an empty Postfix queue")
            intake_rates.append(count / c.smtp_source(intake_port, message, count=count, sessions=sessions))
        rss = service.rss_peak_kib()
    conn = c.db(work / "queue.sqlite")
    queued = c.state_counts(conn).get("queued", 0)
    conn.close()
    if queued != count * rounds:
        raise c.BenchError(
            f"intake queued {queued} recipients, expected {count * rounds}: mail lost or doubled"
        )
    return c.median(base_rates), c.median(intake_rates), rss


def parts(report: c.Report, kind: str) -> None:
    """What one accepted message costs the intake besides SMTP: normalisation with validation
    (bulkrelay.normalise.accept, as the intake calls it) and the durable enqueue."""
    work = c.workdir(f"intake/parts-{kind}")
    raw = c.make_message(kind)
    queue = Queue(work / "queue.sqlite")
    checks, commits = [], []
    for i in range(30):
        started = time.perf_counter()
        accept(raw, max_size=25 * 2**20, mail_from=c.FROM, recipients=[c.TO])
        checks.append(time.perf_counter() - started)
        started = time.perf_counter()
        queue.enqueue(raw, c.FROM, [f"p{i}@customer.test"], source="bench")
        commits.append(time.perf_counter() - started)
    queue.close()
    report.figure(f"{kind}.validate", round(c.median(checks) * 1000, 3), "ms/message", "normalise.accept")
    report.figure(f"{kind}.enqueue_commit", round(c.median(commits) * 1000, 3), "ms/message", "Queue.enqueue")


def run() -> int:
    args = c.round_args(__doc__, 3, "alternating rounds per case (median)")
    report = c.Report("intake", "smtp-source into the sender's intake vs into Postfix smtpd")
    started = time.monotonic()
    parts(report, "small")
    parts(report, "pdf")
    for kind, sessions, count, target in CASES:
        n = max(count // 10, 20) if args.quick else count
        base, rate, rss = intake_rate(kind, sessions, n, args.rounds)
        key = f"{kind}.s{sessions}"
        note = f"N={n}, median of {args.rounds}"
        report.figure(f"{key}.postfix_smtpd_msgs_per_s", round(base, 1), "msg/s", note)
        report.figure(f"{key}.sender_intake_msgs_per_s", round(rate, 1), "msg/s", note)
        report.figure(f"{key}.service_peak_rss", round(rss / 1024, 1), "MiB")
        report.figure(f"{key}.postfix_ms_per_message", round(1000 / base, 2), "ms")
        report.figure(f"{key}.intake_ms_per_message", round(1000 / rate, 2), "ms")
        if target == "rate":
            report.verdict(
                f"{key}.ratio", rate / base, ">=", 1.0, "intake >= Postfix smtpd, durable commit included"
            )
        else:
            report.figure(f"{key}.ratio", round(rate / base, 3), "x Postfix smtpd", "no target")
            report.verdict(
                f"{key}.service_peak_rss_mib", rss / 1024, "<=", 150, "service RSS under 150 MB meanwhile"
            )
    report.figure("elapsed", round(time.monotonic() - started, 1), "s")
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
