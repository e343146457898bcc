#!/usr/bin/env python3
"""(1) Sender drain rate against Postfix's smtp-source, into smtp-sink and into a real Postfix.

For each case (receiver x message size x connections) the same message file goes twice into
the same receiver, back to back:

- baseline: ``smtp-source -d -N -s C -m N -F message`` (Postfix's own load generator, one
  connection reused per session, no PIPELINING - it has none; -N: each message to its own
  recipient address, as the queue holds them - see ``common.smtp_source``);
- sender: N copies queued with ``Queue.enqueue`` (one message per recipient, own Message-ID),
  then ``bulkrelay serve`` drains them with ``[submit] connections = C`` and the policy opened
  wide (``batch_size`` 1000 per 1 ms). The drain time is read from the queue itself: first
  release (``releases.at``) to the last 'submitted' row's ``updated_at``, so process start-up
  is not counted but every batch pick, SMTP transaction and durable state change is.

Receivers: smtp-sink (discards, announces PIPELINING; ``sink_nopipe``: started with -p, so the
sender cannot pipeline either - the like-for-like protocol comparison) and a throwaway Postfix on loopback
(smtpd + cleanup write every message into its queue with fsync, ``discard:`` empties it).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import common as c

from bulkrelay.delivery import encode_data
from bulkrelay.normalise import normalise
from bulkrelay.queue import Queue

# (receiver, message kind, connections, messages)
CASES = [
    ("sink", "small", 1, 2000),
    ("sink", "small", 4, 2000),
    ("sink_nopipe", "small", 1, 2000),
    ("sink", "pdf", 1, 300),
    ("sink", "pdf", 4, 300),
    ("postfix", "small", 1, 500),
    ("postfix", "small", 4, 500),
    ("postfix", "pdf", 1, 200),
    ("postfix", "pdf", 4, 200),
]
BATCH = 1000


def prepare_queue(path: Path, raw: bytes, count: int) -> None:
    """A queue file holding ``count`` one-recipient messages, each with its own Message-ID.

    Stored as every way in stores a message (``normalise``: CRLF line ends), so the sender reads
    what it reads on a relay; the message file keeps LF for smtp-source, which sends CRLF."""
    queue = Queue(path)
    stored = normalise(raw).raw
    for i in range(count):
        body = stored.replace(b"<bench-0001@example.test>", f"<bench-{i:07d}@example.test>".encode())
        queue.enqueue(body, c.FROM, [f"customer{i}@customer.test"], source="bench")
    queue.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    queue.close()


def sender_drain(work: Path, template: Path, port: int, connections: int, count: int, *,
                 beside: Callable[[Path], AbstractContextManager] = nullcontext) -> float:  # fmt: skip
    """Seconds from the first release to the last submission, measured in the queue.

    ``beside(config)``: what else runs on the relay meanwhile (bench/webhooks.py: the webhook loop).
    """
    run = c.workdir(f"{work.name}/run")
    shutil.copy(template, run / "queue.sqlite")
    config = c.sender_config(run, submit_port=port, connections=connections, batch_size=BATCH)
    with beside(config), c.Service(config):
        conn = c.db(run / "queue.sqlite")
        c.wait_until(
            lambda: c.state_counts(conn).get("submitted", 0) >= count,
            timeout=300,
            what=f"{count} submissions (see {run / 'service.log'})",
            poll=0.05,
        )
        first = conn.execute("SELECT min(at) FROM releases").fetchone()[0]
        last = conn.execute("SELECT max(updated_at) FROM recipients WHERE state = 'submitted'").fetchone()[0]
        bad = sum(n for s, n in c.state_counts(conn).items() if s not in ("submitted",))
        conn.close()
    if bad:
        raise c.BenchError(f"{bad} recipients were not submitted; see {run / 'service.log'}")
    return last - first


def one_case(report: c.Report, work: Path, *, receiver: str, kind: str, conns: int, count: int,
             rounds: int) -> float:  # fmt: skip
    message = work / f"{kind}.eml"
    template = work / f"{kind}-{count}.sqlite"
    if not template.exists():
        prepare_queue(template, message.read_bytes(), count)
    base_rates, sender_rates = [], []

    def measure(port: int, settle) -> None:
        # settle(): the receiver has finished the previous run's work (Postfix queue empty), so
        # neither side pays for the other's leftovers.
        for _ in range(rounds):
            settle()
            base_rates.append(count / c.smtp_source(port, message, count=count, sessions=conns))
            settle()
            sender_rates.append(count / sender_drain(work, template, port, conns, count))
        settle()

    port = c.free_port()
    if receiver.startswith("sink"):
        with c.smtp_sink(port, pipelining=receiver == "sink"):
            measure(port, lambda: None)
    else:
        with c.postfix(work / "postfix", port) as etc:
            measure(
                port,
                lambda: c.wait_until(lambda: c.postfix_queue_size(etc) == 0, 120, "an empty Postfix queue"),
            )
    key = f"{receiver}.{kind}.c{conns}"
    base, sender = c.median(base_rates), c.median(sender_rates)
    report.figure(f"{key}.smtp_source_msgs_per_s", round(base, 1), "msg/s", f"N={count}, median of {rounds}")
    report.figure(f"{key}.sender_msgs_per_s", round(sender, 1), "msg/s", f"N={count}, median of {rounds}")
    report.figure(f"{key}.ratio", round(sender / base, 3), "x smtp-source")
    return sender / base


def encode_cost(report: c.Report, work: Path) -> None:
    """Per-message CPU of ``delivery.encode_data`` (CRLF + dot-stuffing), run for every recipient."""
    for kind in ("small", "pdf"):
        raw = (work / f"{kind}.eml").read_bytes()
        times = []
        for _ in range(15):
            started = time.perf_counter()
            encode_data(raw)
            times.append(time.perf_counter() - started)
        report.figure(
            f"encode_data.{kind}", round(c.median(times) * 1000, 3), "ms/message", f"{len(raw)} bytes"
        )


def run() -> int:
    args = c.round_args(__doc__, 3, "alternating rounds per case (median)")
    work = c.workdir("drain")
    c.write_message(work, "small")
    c.write_message(work, "pdf")
    report = c.Report("drain", "sender drain rate vs smtp-source (smtp-sink and a real Postfix)")
    started = time.monotonic()
    encode_cost(report, work)
    ratios = {}
    for receiver, kind, conns, count in CASES:
        n = max(count // 10, 20) if args.quick else count
        ratios[(receiver, kind, conns)] = one_case(
            report, work, receiver=receiver, kind=kind, conns=conns, count=n, rounds=args.rounds
        )
    for kind in ("small", "pdf"):
        report.verdict(
            f"sink.{kind}.c1.ratio", ratios[("sink", kind, 1)], ">=", 1.0,
            "into smtp-sink, one connection: sender >= smtp-source",
        )  # fmt: skip
        for conns in (1, 4):
            report.verdict(
                f"postfix.{kind}.c{conns}.ratio", ratios[("postfix", kind, conns)], ">=", 0.9,
                "into a real Postfix the sender is never the bottleneck",
            )  # fmt: skip
    report.figure("elapsed", round(time.monotonic() - started, 1), "s")
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
