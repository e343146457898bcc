"""The same kill -9 drill through a real Postfix whose log the sender follows.

sender --SMTP--> throwaway Postfix on 127.0.0.1 (its own config, queue and log file)
       --relayhost--> smtp-sink, which writes one file per message.

With the Postfix log available, rows left 'submitting' by a kill are matched to the queue ids
Postfix logged for their Message-ID / VERP envelope sender, so nothing Postfix accepted is
sent again: the bound checked here is zero duplicates and zero lost. Delivery tracking is
real too: Postfix's "status=sent" lines turn every row 'delivered'.
"""

import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from conftest import (
    enqueue_invoices,
    needs_postfix,
    sink_recipients,
    start_postfix,
    start_serve,
    start_smtp_sink,
    stop_postfix,
)
from conftest import pick_free_port as free_port

from bulkrelay.queue import Queue

MESSAGES = 600
KILLS = 3

pytestmark = needs_postfix


def counts(base: Path) -> dict:
    q = Queue(base / "q.sqlite")
    try:
        return q.counts()
    finally:
        q.close()


def test_kill_9_with_postfix_log_resolves_every_ambiguous_row(sender_config):
    base = Path(tempfile.mkdtemp(prefix="bulkrelay-pfcrash-", dir="/tmp"))
    base.chmod(0o755)
    dump = base / "dump"
    dump.mkdir()
    dump.chmod(0o777)
    port, sink_port = free_port(), free_port()
    sink = start_smtp_sink(sink_port, dump)
    etc = None
    try:
        etc = start_postfix(base, port, sink_port)
        config = sender_config(port, directory=base, timeout=20, batch_size=200, interval=0.25)
        expected = enqueue_invoices(base / "q.sqlite", MESSAGES)

        in_flight = []
        for kill in range(KILLS):
            proc = start_serve(config, base / "service.log")
            target = (kill + 1) * MESSAGES // (KILLS + 1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                c = counts(base)
                if c["submitted"] + c["delivered"] >= target:
                    break
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            in_flight.append(counts(base)["submitting"])
            time.sleep(0.5)  # like systemd's RestartSec: Postfix's log lines reach the file

        proc = start_serve(config, base / "service.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            c = counts(base)
            if c["delivered"] == MESSAGES:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        final = counts(base)
        got = Counter(sink_recipients(dump))
        service_log = (base / "service.log").read_text()
    finally:
        if etc is not None:
            stop_postfix(etc)
        sink.terminate()
        sink.wait()
        shutil.rmtree(base, ignore_errors=True)

    assert sum(in_flight) > 0, "no kill hit a batch in flight: the drill proved nothing"
    lost = set(expected) - set(got)
    duplicates = sum(n - 1 for n in got.values())
    assert not lost, f"{len(lost)} lost, e.g. {sorted(lost)[:5]}"
    assert duplicates == 0, f"{duplicates} duplicates; in flight at kills: {in_flight}"
    # every recipient's result came from Postfix's own log
    assert final["delivered"] == MESSAGES, final
    found = sum(int(n) for n in re.findall(r"ambiguous_found=(\d+)", service_log))
    print(f"in_flight_at_kill={in_flight} resolved_from_log={found} duplicates=0 lost=0")
