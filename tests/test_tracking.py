"""Delivery tracking from Postfix's log: parsing, file follow with rotation, journal cursor,
hard bounces to the suppression list, and crash recovery by the log."""

import asyncio
import json
import os
import signal
import stat
import sys
import time

from conftest import KEY, RAW, start_serve, submitted, submitting
from conftest import SmtpReceiver as Receiver

from bulkrelay import suppression, tracking, verp
from bulkrelay.queue import Queue
from bulkrelay.service import resolve_ambiguous

ABC = ["a@customer.test", "b@customer.test", "c@customer.test"]
HOST = "2026-11-27T10:00:00.123456+00:00 relay postfix"
LINES = {
    "client": f"{HOST}/smtpd[811]: 4Fk2ab0XyZz1: client=localhost[127.0.0.1]",
    "mid": f"{HOST}/cleanup[812]: 4Fk2ab0XyZz1: message-id=<inv-1@example.test>",
    "from": f"{HOST}/qmgr[500]: 4Fk2ab0XyZz1: from=<bounces+r1-abc@bounce.example.test>, size=1234, nrcpt=1 "
    "(queue active)",
    "sent": f"{HOST}/smtp[813]: 4Fk2ab0XyZz1: to=<a@customer.test>, "
    "relay=mx.customer.test[198.51.100.40]:25, "
    "delay=0.31, delays=0.02/0.01/0.1/0.18, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9C1D2E)",
    "deferred": f"{HOST}/smtp[814]: 3A7F21C0B2D: to=<b@customer.test>, relay=none, delay=30, "
    "delays=0.01/0/30/0, dsn=4.4.1, status=deferred (connect to mx.customer.test[198.51.100.40]:25: "
    "Connection timed out)",
    "bounced": f"{HOST}/smtp[815]: 3A7F21C0B2E: to=<c@customer.test>, "
    "relay=mx.customer.test[198.51.100.40]:25,"
    " delay=0.5, delays=0.1/0/0.2/0.2, dsn=5.1.1, status=bounced (host mx.customer.test[198.51.100.40] said: "
    "550 5.1.1 <c@customer.test>: Recipient address rejected: User unknown (in reply to RCPT TO command))",
    "expired": f"{HOST}/qmgr[500]: 3A7F21C0B2F: from=<bounces+r9-abc@bounce.example.test>, status=expired, "
    "returned to sender",
    "other": "2026-11-27T10:00:00+00:00 relay sshd[99]: Accepted publickey for admin",
}


def test_parse_realistic_postfix_lines():
    p = tracking.parse_syslog_line
    assert p(LINES["client"]) is None
    mid = p(LINES["mid"])
    assert (mid.qid, mid.kind, mid.value) == ("4Fk2ab0XyZz1", "message-id", "<inv-1@example.test>")
    frm = p(LINES["from"])
    assert (frm.kind, frm.value) == ("from", "bounces+r1-abc@bounce.example.test")
    sent = p(LINES["sent"])
    assert (sent.state, sent.address, sent.dsn) == ("delivered", "a@customer.test", "2.0.0")
    assert sent.reply == "250 2.0.0 Ok: queued as 9C1D2E"
    deferred = p(LINES["deferred"])
    assert (deferred.state, deferred.dsn) == ("deferred", "4.4.1") and "timed out" in deferred.reply
    bounced = p(LINES["bounced"])
    assert (bounced.state, bounced.dsn) == ("bounced", "5.1.1")
    assert bounced.reply.endswith("(in reply to RCPT TO command)")
    assert p(LINES["expired"]).state == "bounced"
    assert p(LINES["other"]) is None
    # multi-instance Postfix names its syslog identifier postfix-out/smtp
    assert p(LINES["sent"].replace("postfix/smtp", "postfix-out/smtp")).state == "delivered"
    # the classic syslog timestamp works the same
    assert p("Nov 27 10:00:00 relay " + LINES["sent"].split(" relay ", 1)[1]).state == "delivered"


def test_parse_journal_json():
    entry = {
        "__CURSOR": "s=abc;i=1f",
        "SYSLOG_IDENTIFIER": "postfix/smtp",
        "MESSAGE": LINES["sent"].split(": ", 1)[1],
    }
    event, cursor = tracking.parse_journal_line(json.dumps(entry))
    assert cursor == "s=abc;i=1f" and event.state == "delivered" and event.qid == "4Fk2ab0XyZz1"
    entry["MESSAGE"] = list(entry["MESSAGE"].encode())  # journald's form for non-UTF-8 text
    assert tracking.parse_journal_line(json.dumps(entry))[0].state == "delivered"
    entry["SYSLOG_IDENTIFIER"] = "sshd"
    assert tracking.parse_journal_line(json.dumps(entry)) == (None, "s=abc;i=1f")


def test_file_source_applies_results_follows_rotation_and_remembers_position(tmp_path):
    log = tmp_path / "mail.log"
    queue = Queue(tmp_path / "q.sqlite")
    rows = submitted(queue, ABC, ["4Fk2ab0XyZz1", "3A7F21C0B2D", "3A7F21C0B2E"])
    tracker = tracking.Tracker(queue)
    log.write_text("\n".join([LINES["mid"], LINES["sent"], LINES["deferred"]]) + "\n" + LINES["bounced"][:40])
    source = tracking.FileSource(str(log), queue)
    for event in source.events():
        tracker.handle(event)
    source.commit()
    assert [queue.recipient(r)["state"] for r in rows] == ["delivered", "deferred", "submitted"]
    # the half-written last line is completed, then the file is rotated and a new one started
    with open(log, "a") as fh:
        fh.write(LINES["bounced"][40:] + "\n")
    os.rename(log, str(log) + ".1")
    log.write_text(
        LINES["deferred"].replace("status=deferred", "status=sent").replace("4.4.1", "2.0.0") + "\n"
    )
    # a restart in between: the position comes back from the database
    source = tracking.FileSource(str(log), queue)
    for event in source.events():
        tracker.handle(event)
    source.commit()
    states = [queue.recipient(r) for r in rows]
    assert [s["state"] for s in states] == ["delivered", "delivered", "bounced"]
    assert states[2]["dsn"] == "5.1.1" and "User unknown" in states[2]["last_reply"]
    # the hard bounce is on the suppression list; the deferral never was
    assert suppression.lookup(queue.connection, "c@customer.test", now=time.time())["source"] == "postfix-log"
    assert suppression.lookup(queue.connection, "b@customer.test", now=time.time()) is None
    assert tracker.stats["bounced"] == 1 and tracker.stats["delivered"] == 2
    assert source.events() == []  # nothing read twice
    # a crash before commit() re-reads (idempotently) instead of losing results
    with open(log, "a") as fh:
        fh.write(LINES["sent"] + "\n")
    assert len(tracking.FileSource(str(log), queue).events()) == 1
    assert len(tracking.FileSource(str(log), queue).events()) == 1
    queue.close()


def test_journal_source_uses_and_stores_the_cursor(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    rows = submitted(queue, ABC, ["4Fk2ab0XyZz1", "3A7F21C0B2D", "3A7F21C0B2E"])
    entries = [
        {"__CURSOR": f"c{i}", "SYSLOG_IDENTIFIER": line.split(" relay ", 1)[1].split("[")[0],
         "MESSAGE": line.split("]: ", 1)[1]}
        for i, line in enumerate([LINES["sent"], LINES["deferred"], LINES["bounced"]])
    ]  # fmt: skip
    data = tmp_path / "journal.json"
    data.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    argv_log = tmp_path / "argv.log"
    fake = tmp_path / "journalctl"
    fake.write_text(f"""#!{sys.executable}
import json, sys
open({str(argv_log)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
after = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--after-cursor=")), None)
lines = open({str(data)!r}).read().splitlines()
cursors = [json.loads(l)["__CURSOR"] for l in lines]
start = cursors.index(after) + 1 if after else 0
print("\\n".join(lines[start:]))
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    tracker = tracking.Tracker(queue)
    source = tracking.JournalSource(queue, journalctl=str(fake))
    assert asyncio.run(tracking.catch_up(source, tracker)) == 3
    assert [queue.recipient(r)["state"] for r in rows] == ["delivered", "deferred", "bounced"]
    assert queue.get_state(tracking.JournalSource.STATE_KEY) == "c2"
    # a new process continues after the stored cursor: nothing is read twice
    source = tracking.JournalSource(queue, journalctl=str(fake))
    assert asyncio.run(tracking.catch_up(source, tracker)) == 0
    calls = argv_log.read_text().splitlines()
    assert "SYSLOG_FACILITY=2" in calls[0] and "--since=@" in calls[0]
    assert "--after-cursor=c2" in calls[1]
    queue.close()


def test_restart_resolves_submitting_rows_from_the_postfix_log_before_resending(tmp_path, sender_config):
    """A crash left two rows 'submitting'; the log shows Postfix took one: only the other is sent."""
    receiver = Receiver().start()
    config = sender_config(receiver.port)
    queue = Queue(tmp_path / "q.sqlite")
    queue.enqueue(RAW, "billing@example.test", ["taken@customer.test"], source="t")
    queue.enqueue(RAW, "billing@example.test", ["lost@customer.test"], source="t")

    def envelope(row):
        return verp.make_address("bounces", "bounce.example.test", row["id"], KEY)

    taken, lost = queue.take(2, now=time.time(), envelope=envelope)  # ...and then the process died
    (tmp_path / "mail.log").write_text(
        f"{HOST}/cleanup[812]: 4Qqid00001: message-id={queue.message(taken['message'])['message_id']}\n"
        f"{HOST}/qmgr[500]: 4Qqid00001: from=<{taken['envelope_from']}>, size=300, nrcpt=1 (queue active)\n"
    )
    proc = start_serve(config, tmp_path / "service.log")
    try:
        deadline = time.monotonic() + 15
        while not receiver.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        receiver.stop()
    assert [m["rcpt_tos"] for m in receiver.messages] == [["lost@customer.test"]]
    assert queue.recipient(taken["id"])["state"] == "submitted"
    assert queue.recipient(taken["id"])["postfix_qid"] == "4Qqid00001"
    assert queue.recipient(lost["id"])["state"] == "submitted"
    text = (tmp_path / "service.log").read_text()
    assert "ambiguous_found=1 ambiguous_resent=1" in text
    queue.close()


def test_resolve_by_message_id_for_single_recipient_messages(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    queue.enqueue(RAW, "billing@example.test", ["a@customer.test"], source="t")
    (row,) = queue.take(1, now=time.time())
    queue.note_postfix("4Qmid0001", message_id=queue.message(row["message"])["message_id"])
    assert resolve_ambiguous(queue) == (1, 0)
    assert queue.recipient(row["id"])["postfix_qid"] == "4Qmid0001"
    queue.close()


def follow_until_bounced(source, tracker, recipient_id, poll):
    """Run tracking.follow over ``source`` until the recipient is bounced (5 s at most), then stop it."""

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(tracking.follow(source, tracker, stop, poll=poll))
        for _ in range(100):
            if tracker.queue.recipient(recipient_id)["state"] == "bounced":
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())


def test_journal_follow_applies_new_entries_then_stops(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    rows = submitted(queue, ABC, ["4Fk2ab0XyZz1", "3A7F21C0B2D", "3A7F21C0B2E"])
    entries = [
        {"__CURSOR": f"f{i}", "SYSLOG_IDENTIFIER": "postfix/smtp", "MESSAGE": line.split("]: ", 1)[1]}
        for i, line in enumerate([LINES["sent"], LINES["bounced"]])
    ]
    fake = tmp_path / "journalctl"
    # like `journalctl --follow`: print what exists, then keep the pipe open
    fake.write_text(f"""#!{sys.executable}
import sys, time
assert "--follow" in sys.argv
for line in {[json.dumps(e) for e in entries]!r}:
    print(line, flush=True)
time.sleep(30)
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    tracker = tracking.Tracker(queue)
    source = tracking.JournalSource(queue, journalctl=str(fake))

    started = time.monotonic()
    follow_until_bounced(source, tracker, rows[2], poll=0.2)
    assert time.monotonic() - started < 5  # the follower stops promptly and reaps journalctl
    assert [queue.recipient(r)["state"] for r in rows] == ["delivered", "submitted", "bounced"]
    assert queue.get_state(tracking.JournalSource.STATE_KEY) == "f1"
    queue.close()


def test_result_logged_before_the_row_knew_its_queue_id_is_applied_on_resolve(tmp_path):
    """After a crash the log may hold the final result before the row is matched to its qid."""
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    row = submitting(queue, "c@customer.test")
    for line in (
        f"{HOST}/qmgr[500]: 3A7F21C0B2E: from=<bounces+r1-x@bounce.example.test>, size=300, nrcpt=1",
        LINES["bounced"],
    ):
        tracker.handle(tracking.parse_syslog_line(line))
    assert queue.recipient(row)["state"] == "submitting"  # nothing matched yet
    assert resolve_ambiguous(queue, suppress=tracker.suppress) == (1, 0)
    done = queue.recipient(row)
    assert (done["state"], done["postfix_qid"], done["dsn"]) == ("bounced", "3A7F21C0B2E", "5.1.1")
    assert suppression.lookup(queue.connection, "c@customer.test", now=time.time()) is not None
    queue.close()


def test_missing_journalctl_is_logged_not_fatal(tmp_path, caplog):
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    source = tracking.JournalSource(queue, journalctl=str(tmp_path / "no-journalctl"))

    async def go():
        assert await tracking.catch_up(source, tracker) == 0
        stop = asyncio.Event()
        task = asyncio.create_task(tracking.follow(source, tracker, stop, poll=0.1))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert caplog.text.count("event=tracking_unavailable") == 2
    queue.close()


def test_follow_survives_a_locked_queue_and_loses_no_result(tmp_path, monkeypatch):
    log = tmp_path / "mail.log"
    queue = Queue(tmp_path / "q.sqlite")
    rows = submitted(queue, ABC, ["4Fk2ab0XyZz1", "3A7F21C0B2D", "3A7F21C0B2E"])
    tracker = tracking.Tracker(queue)
    log.write_text(LINES["sent"] + "\n" + LINES["bounced"] + "\n")
    monkeypatch.setattr(tracking, "RETRY", 0.1)
    real = queue.record_result
    failures = [1]

    def flaky(*args, **kwargs):
        if failures:
            failures.pop()
            raise tracking.QueueUnavailable("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(queue, "record_result", flaky)

    follow_until_bounced(tracking.FileSource(str(log), queue), tracker, rows[2], poll=0.05)
    assert [queue.recipient(r)["state"] for r in rows] == ["delivered", "submitted", "bounced"]
    queue.close()


def test_a_block_of_the_relay_does_not_suppress_the_customer(tmp_path):
    """554 5.7.1 'blocked using a blacklist' is about the relay: the address stays sendable."""
    queue = Queue(tmp_path / "q.sqlite")
    rows = submitted(queue, ABC, ["4Fk2ab0XyZz1", "3A7F21C0B2D", "3A7F21C0B2E"])
    tracker = tracking.Tracker(queue)
    blocked = (
        LINES["bounced"]
        .replace("5.1.1", "5.7.1")
        .replace(
            "User unknown", "Service unavailable; Client host [198.51.100.101] blocked using zen.spamhaus.org"
        )
    )
    tracker.handle(tracking.parse_syslog_line(blocked))
    assert queue.recipient(rows[2])["state"] == "bounced"
    assert suppression.lookup(queue.connection, "c@customer.test", now=time.time()) is None


def test_log_results_become_events_and_postfix_giving_up_is_expired(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    submitted(queue, ABC, ["4Fk2ab0XyZz1", "3A7F21C0B2D", "3A7F21C0B2F"])
    before = queue.last_event_cursor()
    tracker = tracking.Tracker(queue)
    for name in ("sent", "deferred", "expired", "sent", "deferred"):  # the last two: read again
        tracker.handle(tracking.parse_syslog_line(LINES[name]))
    got = [
        (e["type"], e["recipient"], e["queue_id"], e["dsn"], e["source"]) for e in queue.events_since(before)
    ]
    assert got == [
        ("delivered", "a@customer.test", "4Fk2ab0XyZz1", "2.0.0", "log"),
        ("deferred", "b@customer.test", "3A7F21C0B2D", "4.4.1", "log"),
        ("expired", "c@customer.test", "3A7F21C0B2F", "5.4.7", "log"),
    ]
    queue.close()
