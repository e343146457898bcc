#!/usr/bin/env python3
"""(3) Queue scale: 1,000,000 recipients in the sender's queue while ``bulkrelay serve`` runs.

1. ``bulkrelay serve`` starts on an empty queue, paused (so the queue only grows);
2. the recipients are enqueued with ``Queue.enqueue`` - the call the intake's worker thread
   makes - as messages of ``--per-message`` recipients (5 KB body each), from a second
   connection, timing every 100,000. Baseline: the first 100k; the last must stay within 20 %;
3. ``bulkrelay status`` (the CLI an operator runs) at 1M, against the same command on an empty
   queue measured first in this run (the fixed cost of starting Python) - target < 150 ms;
4. the service is resumed and releases from the full queue into smtp-sink for a few seconds
   (batches of 1000 per second), which walks the ready index at its largest;
5. the service's peak RSS (VmHWM) over all of it - target < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import time

import common as c

from bulkrelay import config as configmod
from bulkrelay.ops import status_data
from bulkrelay.queue import Queue

STEP = 100_000


def timed_status(config: str, rounds: int) -> tuple[float, dict]:
    times = []
    data: dict = {}
    for _ in range(rounds):
        started = time.perf_counter()
        proc = c.cli("status", "--config", config, "--json")
        times.append(time.perf_counter() - started)
        data = json.loads(proc.stdout)
    return c.median(times), data


def inprocess_status(config: str, rounds: int) -> float:
    """``status_data`` (what ``bulkrelay status`` computes) without the CLI's start-up."""
    cfg = configmod.load(config)
    queue = Queue(cfg.queue.path, busy_timeout=30)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        status_data(cfg, queue, now=time.time())
        times.append(time.perf_counter() - started)
    queue.close()
    return c.median(times)


def run() -> int:  # noqa: PLR0915 (one linear script: clearer than split helpers)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--per-message", type=int, default=100, help="recipients per queued message")
    parser.add_argument("--release-seconds", type=float, default=8.0)
    args = parser.parse_args()
    if args.recipients < 2 * STEP or args.recipients % STEP or STEP % args.per_message:
        raise c.BenchError(
            "--recipients must be a multiple of 100000 (>= 200000) and --per-message divide it"
        )
    work = c.workdir("queue_scale")
    raw = c.make_message("small")
    report = c.Report("queue_scale", f"{args.recipients:,} recipients in the queue of a running service")
    c.byte_compile()  # the CLI's start-up is timed: as installed on a relay
    sink_port = c.free_port()
    config = c.sender_config(work, submit_port=sink_port, connections=2, batch_size=1000, interval=1.0)
    c.cli("pause", "--config", str(config), "--reason", "queue scale benchmark: filling")
    startup = []
    for _ in range(5):
        started = time.perf_counter()
        c.cli("--version")
        startup.append(time.perf_counter() - started)
    report.figure("cli_startup_version", round(c.median(startup) * 1000, 1), "ms", "`bulkrelay --version`")
    empty_status, _ = timed_status(str(config), 5)
    report.figure("status_cli_empty_queue", round(empty_status * 1000, 1), "ms", "baseline, median of 5")
    empty_inproc = inprocess_status(str(config), 5)
    report.figure("status_data_empty_queue", round(empty_inproc * 1000, 4), "ms", "in-process, median of 5")
    with c.smtp_sink(sink_port), c.Service(config) as service:
        queue = Queue(work / "queue.sqlite", busy_timeout=30)
        steps, cpu_steps = [], []
        cpu_start = time.process_time()
        started = step_start = time.perf_counter()
        done = 0
        message = 0
        while done < args.recipients:
            rcpts = [f"c{done + i}.{message}@customer{(done + i) % 50}.test" for i in range(args.per_message)]
            queue.enqueue(raw, c.FROM, rcpts, source="bench")
            done += args.per_message
            message += 1
            if done % STEP == 0:
                now = time.perf_counter()
                steps.append(now - step_start)
                cpu_steps.append(time.process_time() - cpu_start)
                print(
                    f"   ... {done:>9,} recipients, this 100k in {steps[-1]:.2f}s ({cpu_steps[-1]:.2f}s CPU)",
                    flush=True,
                )
                step_start = now
                cpu_start = time.process_time()
        total = time.perf_counter() - started
        queue.close()
        for i, (seconds, cpu) in enumerate(zip(steps, cpu_steps, strict=True), start=1):
            report.figure(f"enqueue_100k_{i:02d}", round(seconds, 2), "s", f"{cpu:.2f}s CPU of the enqueuer")
        report.figure("enqueue_total", round(total, 1), "s", f"{args.recipients / total:,.0f} recipients/s")
        report.figure("queue_file", round((work / "queue.sqlite").stat().st_size / 2**20, 1), "MiB")
        full_status, data = timed_status(str(config), 5)
        if data["counts"]["queued"] != args.recipients:
            raise c.BenchError(f"status shows {data['counts']['queued']} queued, expected {args.recipients}")
        report.figure("status_cli_at_full_queue", round(full_status * 1000, 1), "ms", "median of 5")
        full_inproc = inprocess_status(str(config), 5)
        probe = Queue(work / "queue.sqlite", busy_timeout=30)
        ready_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            probe.next_ready_at()
            ready_times.append(time.perf_counter() - t0)
        probe.close()
        report.figure(
            "next_ready_at_full_queue",
            round(c.median(ready_times) * 1000, 4),
            "ms",
            "called every release step",
        )
        report.figure(
            "status_data_at_full_queue", round(full_inproc * 1000, 4), "ms", "in-process, median of 5"
        )
        rss_filled = service.rss_peak_kib()
        c.cli("resume", "--config", str(config))
        time.sleep(args.release_seconds)
        conn = c.db(work / "queue.sqlite")
        counts = c.state_counts(conn)
        first, last, released = conn.execute("SELECT min(at), max(at), count(*) FROM releases").fetchone()
        conn.close()
        rss = service.rss_peak_kib()
    report.figure("released_from_full_queue", released or 0, "recipients", f"in {args.release_seconds:g}s")
    if released and last and first and last > first:
        batches = max(round(last - first), 1)
        report.figure("release_batches_per_s", round(batches / (last - first), 3), "/s", "configured 1/s")
    report.figure("submitted", counts.get("submitted", 0), "recipients")
    report.figure("service_peak_rss_filled", round(rss_filled / 1024, 1), "MiB")
    report.figure("service_peak_rss", round(rss / 1024, 1), "MiB")
    report.verdict("last_vs_first_100k", steps[-1] / steps[0], "<=", 1.2, "time per 100k stays flat")
    report.verdict("slowest_vs_first_100k", max(steps) / steps[0], "<=", 1.2, "no 100k step drifts up")
    report.verdict(
        "last_vs_first_100k_cpu", cpu_steps[-1] / cpu_steps[0], "<=", 1.2, "CPU per 100k (less load noise)"
    )
    report.verdict(
        "status_at_full_ms", full_status * 1000, "<=", 150, "`bulkrelay status` at 1M under 150 ms"
    )
    report.figure("status_full_vs_empty", round(full_status / empty_status, 3), "x empty queue")
    report.verdict(
        "status_data_at_full_ms",
        full_inproc * 1000,
        "<=",
        150,
        "the status query itself at 1M (no CLI start-up)",
    )
    report.verdict("service_peak_rss_mib", rss / 1024, "<=", 150, "service peak RSS under 150 MB")
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
