#!/usr/bin/env python3
"""(7) What webhooks cost: drain and intake with `bulkrelay webhooks run` off and on, same run.

The outbox is written either way (in the transaction of each state change). "On" adds the
delivery loop: a second process that reads the outbox and commits its cursor in the same SQLite
database while it POSTs every event to a local receiver (``support.WebhookReceiver``, which
verifies every signature). Off and on alternate, round by round, against the same receivers:

- intake: smtp-source into the sender's SMTP intake (release paused, as bench/intake.py);
  before each "on" round the loop catches up (``webhooks once``) outside the timing, so it
  delivers the round's own events while they arrive;
- drain: ``bulkrelay serve`` draining N queued messages into smtp-sink (bench/drain.py); the
  loop starts from the queue's first event, so it has the accepted events to send too.

After every "on" round the receiver must hold exactly the events of the outbox (nothing lost,
ids unique). Verdict: on/off rate ratio >= 0.8 (the loop costs at most a fifth).
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import common as c
from drain import prepare_queue, sender_drain
from support import WebhookReceiver

SECRET = "bench-secret-0123456789"  # noqa: S105 - the key of a throwaway loopback receiver
TARGET = 0.8


def write_hooks(directory: Path, receiver: WebhookReceiver) -> Path:
    path = directory / "webhooks.toml"
    hook = f'name = "bench"\nurl = "{receiver.url}"\nsecret = "{SECRET}"\n'
    path.write_text(f"[delivery]\nbatch = 100\n\n[[webhook]]\n{hook}")
    return path


def _settings(config: Path, hooks: Path) -> list[str]:
    return ["--config", str(config), "--webhooks", str(hooks)]


@contextlib.contextmanager
def webhook_loop(config: Path, hooks: Path, receiver: WebhookReceiver) -> Iterator[None]:
    """`bulkrelay webhooks run` beside the sender; on the way out, every event must have arrived."""
    with (config.parent / "webhooks.log").open("ab") as log:
        proc = subprocess.Popen(
            [c.BULKRELAY, "webhooks", "run", *_settings(config, hooks)], stdout=log, stderr=log
        )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(15)
    c.cli("webhooks", "once", *_settings(config, hooks))
    conn = sqlite3.connect(f"file:{config.parent / 'queue.sqlite'}?mode=ro", uri=True)
    outbox = {row[0] for row in conn.execute("SELECT event_id FROM events")}
    conn.close()
    got = receiver.ids
    if not outbox or set(got) != outbox or len(got) != len(set(got)):
        raise c.BenchError(
            f"the receiver got {len(got)} events ({len(set(got))} ids) for an outbox of {len(outbox)}"
        )


def intake(report: c.Report, count: int, rounds: int) -> float:
    work = c.workdir("webhooks/intake")
    message = c.write_message(work, "small")
    port = c.free_port()
    config = c.sender_config(work, submit_port=c.free_port(), intake=f"127.0.0.1:{port}")
    c.cli("pause", "--config", str(config), "--reason", "webhooks benchmark: queue only")
    receiver = WebhookReceiver(SECRET)
    hooks = write_hooks(work, receiver)
    off, on = [], []
    try:
        with c.Service(config):
            c.wait_port("127.0.0.1", port, what="sender intake")
            for _ in range(rounds):
                off.append(count / c.smtp_source(port, message, count=count, sessions=1))
                c.cli("webhooks", "once", *_settings(config, hooks))
                with webhook_loop(config, hooks, receiver):
                    on.append(count / c.smtp_source(port, message, count=count, sessions=1))
    finally:
        receiver.close()
    note = f"N={count}, 1 session, median of {rounds}"
    report.figure("intake.off_msgs_per_s", round(c.median(off), 1), "msg/s", note)
    report.figure("intake.on_msgs_per_s", round(c.median(on), 1), "msg/s", note)
    report.figure("intake.events_delivered", len(receiver.ids), "events", "all of them, each id once")
    return c.median(on) / c.median(off)


def drain(report: c.Report, count: int, rounds: int) -> float:
    work = c.workdir("webhooks-drain")
    message = c.write_message(work, "small")
    template = work / "template.sqlite"
    prepare_queue(template, message.read_bytes(), count)
    off, on = [], []
    port = c.free_port()
    with c.smtp_sink(port):
        for _ in range(rounds):
            off.append(count / sender_drain(work, template, port, 1, count))
            receiver = WebhookReceiver(SECRET)
            try:

                def beside(config: Path, receiver=receiver) -> contextlib.AbstractContextManager:
                    return webhook_loop(config, write_hooks(config.parent, receiver), receiver)

                on.append(count / sender_drain(work, template, port, 1, count, beside=beside))
            finally:
                receiver.close()
    note = f"N={count}, into smtp-sink, 1 connection, median of {rounds}"
    report.figure("drain.off_msgs_per_s", round(c.median(off), 1), "msg/s", note)
    report.figure("drain.on_msgs_per_s", round(c.median(on), 1), "msg/s", note)
    return c.median(on) / c.median(off)


def run() -> int:
    args = c.round_args(__doc__, 3, "alternating off/on rounds (median)")
    report = c.Report("webhooks", "drain and intake with the webhook loop off and on")
    started = time.monotonic()
    scale = 10 if args.quick else 1
    ratio = intake(report, 500 // scale, args.rounds)
    report.verdict("intake.on_off_ratio", ratio, ">=", TARGET, "intake with webhooks on vs off")
    ratio = drain(report, 1000 // scale, args.rounds)
    report.verdict("drain.on_off_ratio", ratio, ">=", TARGET, "drain with webhooks on vs off")
    report.figure("elapsed", round(time.monotonic() - started, 1), "s")
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
