"""kill -9 during a drain into Postfix's smtp-sink, restart, count: zero lost, duplicates bounded.

The bound: a recipient is marked 'submitting' (durably) before its transaction and
'submitted' right after the 250. A kill can only duplicate a recipient whose final "." reached
the receiver before its 'submitted' commit - at most one per connection. The receiver here has
no Postfix log to resolve those from, so each such row is resent: duplicates per kill are at
most ``connections`` (2), and never more than the rows found in 'submitting' after the kill.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from conftest import pick_free_port as free_port
from conftest import sink_user

from bulkrelay.queue import Queue

MESSAGES = 1500
CONNECTIONS = 2
KILLS = 3


def received(dump_dir):
    """Recipients of every message smtp-sink wrote to disk (one file per transaction)."""
    rcpts = []
    for name in os.listdir(dump_dir):
        with open(os.path.join(dump_dir, name), "rb") as fh:
            head = fh.read(2048)
        match = re.search(rb"^X-Rcpt-Args: <([^>]+)>", head, re.M)
        if match:
            rcpts.append(match.group(1).decode())
    return rcpts


def serve(config_path, log_path):
    bulkrelay = os.path.join(os.path.dirname(sys.executable), "bulkrelay")
    log = open(log_path, "ab")  # noqa: SIM115
    return subprocess.Popen([bulkrelay, "serve", "--config", str(config_path)], stdout=log, stderr=log)


def test_kill_9_during_drain_loses_nothing_and_duplicates_at_most_in_flight(tmp_path, sender_config):
    # smtp-sink drops to "nobody": its dump directory must be reachable for that user
    dump = Path(tempfile.mkdtemp(prefix="bulkrelay-crash-", dir="/tmp"))
    dump.chmod(0o777)
    port = free_port()
    sink = subprocess.Popen(
        ["/usr/sbin/smtp-sink", *sink_user(), "-d", f"{dump}/%H%M%S.", f"127.0.0.1:{port}", "64"]
    )
    config_path = sender_config(port, connections=CONNECTIONS, retry_base=1, batch_size=150, interval=0.3)
    queue = Queue(tmp_path / "q.sqlite")
    expected = [f"c{i}@customer.test" for i in range(MESSAGES)]
    for i, rcpt in enumerate(expected):
        raw = f"From: billing@example.test\r\nSubject: Invoice {i}\r\n\r\nInvoice {i}\r\n".encode()
        queue.enqueue(raw, "billing@example.test", [rcpt], source="test")
    queue.close()

    in_flight_at_kill = []
    try:
        for kill in range(KILLS):
            proc = serve(config_path, tmp_path / "service.log")
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

        proc = serve(config_path, tmp_path / "service.log")
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
        got = Counter(received(dump))
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
