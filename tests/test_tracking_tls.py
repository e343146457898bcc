"""TLS in the tracking: each delivery records how it was protected, from the summary line
Postfix's smtp client logs per connection (smtp_tls_loglevel >= 1), and `bulkrelay status` and
the metrics count deliveries by that level. A delivery a TLS policy blocks is deferred with
Postfix's reason.

The TLS lines follow Postfix's format (src/tls/tls_misc.c, tls_log_summary: "%s TLS connection
%s %s %s%s%s: %s with cipher %s (%d/%d bits)", then key-exchange/server-signature details since
3.4); the Gmail line is the one published with the "Untrusted TLS connection" question
(smtp_tls_CApath unset). "TLS is required, but was not offered by host %s" (dsn 4.7.4) is the
reply Postfix's smtp_proto.c fakes when a policy of encrypt or higher meets a server without
STARTTLS.
"""

import json
import sqlite3
import time

from conftest import submitted, submitting

from bulkrelay import metrics, ops, tracking
from bulkrelay.queue import TLS_LEVELS, Queue
from bulkrelay.service import resolve_ambiguous

HOST = "2026-11-30T10:00:00.000001+00:00 relay postfix"
MX = "mx.customer.test[198.51.100.40]:25"
VERIFIED = (
    f"{HOST}/smtp[813]: Verified TLS connection established to {MX}: TLSv1.3 with cipher "
    "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) "
    "server-digest SHA256"
)
GMAIL_UNTRUSTED = (
    f"{HOST}/smtp[815]: Untrusted TLS connection established to "
    "gmail-smtp-in.l.google.com[74.125.24.26]:25: TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256 "
    "(128/128 bits)"
)


def sent(qid, to, pid=813, relay=MX):
    return (
        f"{HOST}/smtp[{pid}]: {qid}: to=<{to}>, relay={relay}, delay=0.31, delays=0.02/0.01/0.1/0.18, "
        f"dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9C1D2E)"
    )


def feed(tracker, *lines):
    for line in lines:
        tracker.handle(tracking.parse_syslog_line(line))


def test_tls_lines_are_parsed_with_level_peer_and_process():
    p = tracking.parse_syslog_line
    event = p(VERIFIED)
    assert (event.kind, event.value, event.relay, event.process) == (
        "tls",
        "verified",
        MX,
        "postfix/smtp[813]",
    )
    assert (p(GMAIL_UNTRUSTED).value, p(GMAIL_UNTRUSTED).relay) == (
        "untrusted",
        "gmail-smtp-in.l.google.com[74.125.24.26]:25",
    )
    for word in ("Anonymous", "Trusted"):
        assert p(VERIFIED.replace("Verified", word)).value == word.lower()
    reused = p(VERIFIED.replace("established", "reused").replace(MX, "mx6.customer.test[2001:db8::25]:25"))
    assert (reused.value, reused.relay) == ("verified", "mx6.customer.test[2001:db8::25]:25")
    # the smtpd side (mail coming in) and other programs are not deliveries
    assert p(f"{HOST}/smtpd[90]: Anonymous TLS connection established from app[192.0.2.7]: TLSv1.3 x") is None
    assert p(VERIFIED.replace("/smtp[", "/qmgr[")) is None
    result = p(sent("4Fk2ab0XyZz1", "a@customer.test"))
    assert (result.process, result.relay) == ("postfix/smtp[813]", MX)


def test_each_delivery_records_its_tls_level_in_row_event_and_counts(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    assert queue.tls_counts() == dict.fromkeys(TLS_LEVELS, 0)
    a, b, c, d = submitted(
        queue,
        ["a@customer.test", "b@customer.test", "c@gmail.test", "d@customer.test"],
        ["4Fk2ab0XyZz1", "4Fk2ab0XyZz1", "5Gk2ab0XyZz2", "6Hk2ab0XyZz3"],
    )
    before = queue.last_event_cursor()
    feed(
        tracker,
        VERIFIED,
        GMAIL_UNTRUSTED,
        # two recipients of one message over one connection: both verified
        sent("4Fk2ab0XyZz1", "a@customer.test"),
        sent("4Fk2ab0XyZz1", "b@customer.test"),
        sent("5Gk2ab0XyZz2", "c@gmail.test", pid=815, relay="gmail-smtp-in.l.google.com[74.125.24.26]:25"),
        # another process, no TLS line: clear text
        sent("6Hk2ab0XyZz3", "d@customer.test", pid=816),
    )
    assert [queue.recipient(r)["tls"] for r in (a, b, c, d)] == ["verified", "verified", "untrusted", "none"]
    events = queue.events_since(before)
    assert [(e["type"], e["recipient"], e["tls"]) for e in events] == [
        ("delivered", "a@customer.test", "verified"),
        ("delivered", "b@customer.test", "verified"),
        ("delivered", "c@gmail.test", "untrusted"),
        ("delivered", "d@customer.test", "none"),
    ]
    assert queue.tls_counts() == {"none": 1, "anonymous": 0, "untrusted": 1, "trusted": 0, "verified": 2}
    # the same lines read again after a restart (the TLS line before the stored position is not):
    # nothing is counted twice and the recorded level stays
    feed(tracking.Tracker(queue), sent("4Fk2ab0XyZz1", "a@customer.test"))
    assert queue.recipient(a)["tls"] == "verified"
    assert queue.tls_counts()["verified"] == 2 and queue.tls_counts()["none"] == 1
    assert len(queue.events_since(before)) == 4
    queue.close()


def test_a_tls_line_serves_only_its_own_connection(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    first, later, other_mx = submitted(
        queue, ["a@customer.test", "b@customer.test", "c@customer.test"], ["AAAAA1", "BBBBB2", "CCCCC3"]
    )
    feed(
        tracker,
        VERIFIED,
        sent("AAAAA1", "a@customer.test"),
        # the same process, the next message, no new TLS line: a new plain connection
        sent("BBBBB2", "b@customer.test"),
        # a TLS line to one MX, the delivery went to another (the first refused after TLS)
        VERIFIED.replace("[813]", "[820]"),
        sent("CCCCC3", "c@customer.test", pid=820, relay="mx2.customer.test[198.51.100.41]:25"),
    )
    assert [queue.recipient(r)["tls"] for r in (first, later, other_mx)] == ["verified", "none", "none"]
    queue.close()


def test_a_delivery_logged_before_the_row_knew_its_queue_id_keeps_its_tls_level(tmp_path):
    """After a crash the log may hold the delivery before the row is matched to its queue id."""
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    row = submitting(queue, "a@customer.test")
    feed(
        tracker,
        f"{HOST}/qmgr[500]: 4Fk2ab0XyZz1: from=<bounces+r1-x@bounce.example.test>, size=300, nrcpt=1",
        VERIFIED,
        sent("4Fk2ab0XyZz1", "a@customer.test"),
    )
    assert queue.recipient(row)["state"] == "submitting"
    assert resolve_ambiguous(queue, suppress=tracker.suppress) == (1, 0)
    done = queue.recipient(row)
    assert (done["state"], done["tls"]) == ("delivered", "verified")
    assert queue.events_since(0)[-1]["tls"] == "verified"
    assert queue.tls_counts()["verified"] == 1
    queue.close()


def test_deferred_or_bounced_results_carry_no_tls_level(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    (row,) = submitted(queue, ["a@customer.test"], ["AAAAA1"])
    feed(
        tracker,
        VERIFIED,
        sent("AAAAA1", "a@customer.test").replace("2.0.0, status=sent", "4.2.0, status=deferred"),
    )
    assert (queue.recipient(row)["state"], queue.recipient(row)["tls"]) == ("deferred", None)
    assert queue.tls_counts() == dict.fromkeys(TLS_LEVELS, 0)
    queue.close()


def test_a_delivery_blocked_by_a_tls_policy_is_deferred_with_postfix_reason(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    tracker = tracking.Tracker(queue)
    (row,) = submitted(queue, ["a@partner.test"], ["7JK2ab0XyZ44"])
    before = queue.last_event_cursor()
    feed(
        tracker,
        f"{HOST}/smtp[830]: 7JK2ab0XyZ44: to=<a@partner.test>, relay=mx.partner.test[192.0.2.10]:25, "
        "delay=0.52, delays=0.01/0.01/0.5/0, dsn=4.7.4, status=deferred (TLS is required, but was not "
        "offered by host mx.partner.test[192.0.2.10])",
    )
    got = queue.recipient(row)
    assert (got["state"], got["dsn"], got["tls"]) == ("deferred", "4.7.4", None)
    assert got["last_reply"] == "TLS is required, but was not offered by host mx.partner.test[192.0.2.10]"
    (event,) = queue.events_since(before)
    assert (event["type"], event["dsn"], event["tls"]) == ("deferred", "4.7.4", None)
    assert event["reply"].startswith("TLS is required")
    queue.close()


def test_journal_entries_give_the_pid(tmp_path):
    entry = {"__CURSOR": "c1", "SYSLOG_IDENTIFIER": "postfix/smtp", "SYSLOG_PID": "813"}
    tls, _ = tracking.parse_journal_line(json.dumps(entry | {"MESSAGE": VERIFIED.split("]: ", 1)[1]}))
    result, _ = tracking.parse_journal_line(
        json.dumps(entry | {"MESSAGE": sent("AAAAA1", "a@customer.test").split("]: ", 1)[1]})
    )
    assert tls.process == result.process == "postfix/smtp[813]" and tls.value == "verified"
    queue = Queue(tmp_path / "q.sqlite")
    (row,) = submitted(queue, ["a@customer.test"], ["AAAAA1"])
    tracker = tracking.Tracker(queue)
    tracker.handle(tls)
    tracker.handle(result)
    assert queue.recipient(row)["tls"] == "verified"
    queue.close()


def test_a_queue_from_before_tls_counts_its_deliveries_as_unknown(tmp_path):
    path = tmp_path / "q.sqlite"
    queue = Queue(path)
    submitted(queue, ["a@customer.test", "b@customer.test"], ["AAAAA1", "BBBBB2"])
    queue.record_result("AAAAA1", "a@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    queue.close()
    old = sqlite3.connect(path)  # the schema as it was: no tls column, no counts
    old.executescript(
        "DROP TRIGGER recipients_tls_count; ALTER TABLE recipients DROP COLUMN tls; DELETE FROM tls_counts;"
    )
    old.close()
    queue = Queue(path)
    assert queue.tls_counts() == dict.fromkeys(TLS_LEVELS, 0) | {"unknown": 1}
    queue.record_result(
        "BBBBB2", "b@customer.test", state="delivered", dsn="2.0.0", reply="250", tls="trusted"
    )
    assert queue.tls_counts()["trusted"] == 1 and queue.tls_counts()["unknown"] == 1
    queue.close()


def test_status_and_metrics_count_deliveries_by_tls(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    submitted(queue, ["a@customer.test", "b@customer.test"], ["AAAAA1", "BBBBB2"])
    text = metrics.render(queue, webhooks_file=str(tmp_path / "none.toml"))
    assert 'bulkrelay_deliveries_total{tls="verified"} 0' in text
    feed(
        tracking.Tracker(queue),
        VERIFIED,
        sent("AAAAA1", "a@customer.test"),
        sent("BBBBB2", "b@customer.test"),
    )
    text = metrics.render(queue, webhooks_file=str(tmp_path / "none.toml"))
    assert "# TYPE bulkrelay_deliveries_total counter" in text
    assert 'bulkrelay_deliveries_total{tls="verified"} 1' in text
    assert 'bulkrelay_deliveries_total{tls="none"} 1' in text
    assert 'bulkrelay_deliveries_total{tls="unknown"}' not in text
    queue.close()
    config = tmp_path / "sender.toml"
    config.write_text(f'[queue]\npath = "{tmp_path / "q.sqlite"}"\n')
    data = ops.status_data(
        ops.configmod.load(str(config)),
        Queue(tmp_path / "q.sqlite"),
        now=time.time(),
        webhooks_file=str(tmp_path / "none.toml"),
    )
    assert data["deliveries_by_tls"] == {
        "none": 1,
        "anonymous": 0,
        "untrusted": 0,
        "trusted": 0,
        "verified": 1,
    }
    assert "deliveries by TLS: none=1  anonymous=0  untrusted=0  trusted=0  verified=1" in ops.format_status(
        data
    )
