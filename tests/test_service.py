"""`bulkrelay serve` end to end: a real process, a real SMTP receiver on loopback, real timing.

1,000 messages are queued, the service releases them at 100 per 2 s (the production default
of 100 per 300 s, scaled down; 2 s leaves room for a loaded CI machine) and the receiver
timestamps every arrival.
"""

import itertools
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import KEY, RAW, start_serve
from conftest import SmtpReceiver as Receiver
from conftest import pick_free_port as free_port

from bulkrelay import verp
from bulkrelay.queue import Queue

BATCH = 100
INTERVAL = 2.0


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_thousand_messages_leave_in_exact_batches(tmp_path, receiver, sender_config):
    metrics_port = free_port()
    config_path = sender_config(receiver.port, batch_size=BATCH, interval=INTERVAL, metrics_port=metrics_port)
    queue = Queue(tmp_path / "q.sqlite")
    ids = [
        queue.enqueue(RAW.replace(b"Invoice", f"Invoice {i}".encode()), "billing@example.test",
                      [f"customer{i}@customer.test"], source="test")
        for i in range(1000)
    ]  # fmt: skip
    proc = start_serve(config_path, tmp_path / "service.log")
    try:
        wait_for(lambda: len(receiver.messages) >= 1000, 60, "1000 arrivals")
        time.sleep(0.5)  # nothing more may arrive
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, (tmp_path / "service.log").read_text()[-3000:]

    msgs = receiver.messages
    assert len(msgs) == 1000
    assert sorted(m["rcpt_tos"][0] for m in msgs) == sorted(f"customer{i}@customer.test" for i in range(1000))
    # The releases the service recorded: ten instants, exactly 100 recipients each, each at
    # least one interval after the previous one (the policy's own clock).
    released = queue.connection.execute(
        "SELECT l.at, r.address FROM releases l JOIN recipients r ON r.id = l.recipient ORDER BY l.at"
    ).fetchall()
    instants = sorted({at for at, _ in released})
    assert [sum(1 for at, _ in released if at == t) for t in instants] == [BATCH] * 10
    assert min(b - a for a, b in itertools.pairwise(instants)) >= INTERVAL

    # The same batches seen at the receiver: every batch arrives whole before the next one
    # starts, and the first arrivals of consecutive batches are about one interval apart
    # (the tolerance absorbs scheduling jitter on a loaded machine; it cannot hide a burst).
    arrival = {m["rcpt_tos"][0]: m["at"] for m in msgs}
    batches = [sorted(arrival[a] for at, a in released if at == t) for t in instants]
    spacing = [b[0] - a[0] for a, b in itertools.pairwise(batches)]
    spreads = [b[-1] - b[0] for b in batches]
    print(f"batch spacing {[round(x, 3) for x in spacing]} spreads {[round(x, 3) for x in spreads]}")
    for earlier, later in itertools.pairwise(batches):
        assert later[0] > earlier[-1], "two batches arrived interleaved"
    assert min(spacing) >= INTERVAL * 0.75, spacing

    # every row ended 'submitted' with the receiver's queue id and its own VERP sender
    by_rcpt = {m["rcpt_tos"][0]: m for m in msgs}
    for mid in ids[::97]:
        (row,) = queue.message(mid)["recipients"]
        assert row["state"] == "submitted"
        assert row["postfix_qid"] == by_rcpt[row["address"]]["qid"]
        assert verp.parse_address(by_rcpt[row["address"]]["mail_from"], KEY) == row["id"]
    assert queue.counts()["submitted"] == 1000
    assert 'bulkrelay_recipients{state="submitted"} 1000' in metrics
    assert 'bulkrelay_submit_total{outcome="submitted"} 1000' in metrics
    log = (tmp_path / "service.log").read_text()
    assert log.count("event=batch_released count=100") == 10
    queue.close()


def test_status_pause_resume_cli_against_a_running_service(tmp_path, receiver, sender_config):
    config_path = sender_config(receiver.port, batch_size=BATCH, interval=INTERVAL, metrics_port=free_port())
    bulkrelay = os.path.join(os.path.dirname(sys.executable), "bulkrelay")

    def cli(*args):
        return subprocess.run(
            [bulkrelay, *args, "--config", str(config_path)], capture_output=True, text=True, check=False
        )

    queue = Queue(tmp_path / "q.sqlite")
    assert cli("pause", "--reason", "maintenance").returncode == 0
    for i in range(5):
        queue.enqueue(RAW, "billing@example.test", [f"p{i}@customer.test"], source="test")
    proc = start_serve(config_path, tmp_path / "service.log")
    try:
        time.sleep(2.5)
        assert receiver.messages == []
        status = json.loads(cli("status", "--json").stdout)
        assert status["service"] == {"running": True, "pid": proc.pid}
        assert status["paused"] is True and "maintenance" in status["policy"]
        assert status["counts"]["queued"] == 5
        assert status["next_release"] is None
        assert cli("resume").stdout.strip() == "resumed"
        wait_for(lambda: len(receiver.messages) == 5, 10, "5 arrivals after resume")
        status = json.loads(cli("status", "--json").stdout)
        assert status["counts"]["submitted"] == 5 and status["rates"]["released_last_hour"] == 5
        listing = cli("queue", "list", "--state", "submitted")
        assert listing.returncode == 0 and "p4@customer.test" in listing.stdout
        assert cli("queue", "show", "999").returncode == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    queue.close()


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nbatch_size = "many"\n')
    bulkrelay = os.path.join(os.path.dirname(sys.executable), "bulkrelay")
    result = subprocess.run(
        [bulkrelay, "serve", "--config", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "policy.batch_size" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_intake_and_hot_folder_feed_the_release_loop(tmp_path, receiver, sender_config):
    """The SMTP intake and the hot folder run inside `bulkrelay serve` and their mail reaches Postfix."""
    intake_port = free_port()
    hot = tmp_path / "hot"
    config_path = sender_config(
        receiver.port,
        extra=f"""
[intake]
listen = ["127.0.0.1:{intake_port}"]
allowed_networks = ["127.0.0.0/8"]

[hotfolder]
path = "{hot}"
""",
    )
    proc = start_serve(config_path, tmp_path / "service.log")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                smtp = smtplib.SMTP("127.0.0.1", intake_port, timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "service.log").read_text()[-2000:])
        msg = b"From: billing@example.test\r\nTo: app@customer.test\r\nSubject: via intake\r\n\r\nhi\r\n"
        smtp.sendmail("billing@example.test", ["app@customer.test"], msg)
        smtp.quit()
        (hot / "tmp").mkdir(parents=True, exist_ok=True)
        (hot / "incoming").mkdir(parents=True, exist_ok=True)
        eml = hot / "tmp" / "invoice-7.eml"
        eml.write_bytes(
            b"From: billing@example.test\r\nTo: file@customer.test\r\nSubject: via folder\r\n\r\nhi\r\n"
        )
        eml.rename(hot / "incoming" / "invoice-7.eml")
        wait_for(lambda: len(receiver.messages) == 2, 20, "intake and hot folder mail at the receiver")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert sorted(m["rcpt_tos"][0] for m in receiver.messages) == ["app@customer.test", "file@customer.test"]
    assert (hot / "done" / "invoice-7.eml").exists()
