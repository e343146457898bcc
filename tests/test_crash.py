"""kill -9 during a drain into Postfix's smtp-sink, restart, count: zero lost, duplicates bounded.

The bound: a recipient is marked 'submitting' (durably) before its transaction and
'submitted' right after the 250. A kill can only duplicate a recipient whose final "." reached
the receiver before its 'submitted' commit - at most one per connection. The receiver here has
no Postfix log to resolve those from, so each such row is resent: duplicates per kill are at
most ``connections`` (2), and never more than the rows found in 'submitting' after the kill.
"""

import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from conftest import enqueue_invoices, sink_recipients, start_serve, start_smtp_sink
from conftest import pick_free_port as free_port

from bulkrelay.queue import Queue

MESSAGES = 1500
CONNECTIONS = 2
KILLS = 3


def test_kill_9_during_drain_loses_nothing_and_duplicates_at_most_in_flight(tmp_path, sender_config):
    # smtp-sink drops to "nobody": its dump directory must be reachable for that user
    dump = Path(tempfile.mkdtemp(prefix="bulkrelay-crash-", dir="/tmp"))
    dump.chmod(0o777)
    port = free_port()
    sink = start_smtp_sink(port, dump)
    config_path = sender_config(port, connections=CONNECTIONS, retry_base=1, batch_size=150, interval=0.3)
    expected = enqueue_invoices(tmp_path / "q.sqlite", MESSAGES)

    in_flight_at_kill = []
    try:
        for kill in range(KILLS):
            proc = start_serve(config_path, tmp_path / "service.log")
            target = (kill + 1) * MESSAGES // (KILLS + 1)
            deadline = time.monotonic() + 60
            while len(os.listdir(dump)) < target and time.monotonic() < deadline:
                assert sink.poll() is None, "smtp-sink exited"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)  # mid-drain, no chance to clean up
            proc.wait()
            q = Queue(tmp_path / "q.sqlite")
            in_flight_at_kill.append(q.counts()["submitting"])
            q.close()
            assert len(os.listdir(dump)) < MESSAGES, "the drain finished before the kill: test proves nothing"

        proc = start_serve(config_path, tmp_path / "service.log")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            q = Queue(tmp_path / "q.sqlite")
            counts = q.counts()
            q.close()
            if counts["queued"] == 0 and counts["submitting"] == 0:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        sink.terminate()
        sink.wait()
        got = Counter(sink_recipients(dump))
        shutil.rmtree(dump, ignore_errors=True)

    lost = set(expected) - set(got)
    duplicates = sum(n - 1 for n in got.values())
    q = Queue(tmp_path / "q.sqlite")
    assert q.counts()["submitted"] == MESSAGES
    q.close()
    assert not lost, f"{len(lost)} recipients lost, e.g. {sorted(lost)[:5]}"
    assert set(got) == set(expected)
    # The stated bound: per kill at most one recipient per connection, and never more than the
    # rows that were still 'submitting' when the process died.
    assert duplicates <= KILLS * CONNECTIONS, (duplicates, in_flight_at_kill)
    assert duplicates <= sum(in_flight_at_kill), (duplicates, in_flight_at_kill)
    log = (tmp_path / "service.log").read_text()
    assert log.count("event=started") == KILLS + 1
    print(f"kills={KILLS} in_flight_at_kill={in_flight_at_kill} duplicates={duplicates} lost=0")
