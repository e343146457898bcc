"""Applying parsed bounces to a real SQLite queue: hard, soft N-in-M-days, complaint, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkrelay import suppression, verp
from bulkrelay.bounces import policy
from bulkrelay.bounces.parse import analyse
from bulkrelay.queue import Queue

KEY = b"policy-test-key-0123456789abcdef"
DAY = 86400.0
T0 = 1_800_000_000.0
CORPUS = Path(__file__).parent / "data" / "bounces"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(tmp_path, clock):
    q = Queue(tmp_path / "queue.sqlite", clock=clock)
    policy.ensure_schema(q.connection)
    yield q
    q.close()


def _recipient(queue, address: str) -> int:
    message = queue.enqueue(
        b"From: billing@example.test\r\nSubject: x\r\n\r\nhi\r\n",
        "billing@example.test",
        [address],
        source="test",
    )
    return queue.message(message)["recipients"][0]["id"]


def _dsn(
    rid: int, address: str, status: str, diagnostic: str, action: str = "failed", mid: str = ""
) -> bytes:
    envelope = verp.make_address("bounces", "bounce.example.test", rid, KEY)
    return (
        f"From: MAILER-DAEMON@relay.example.test\nTo: {envelope}\nSubject: Undelivered Mail\n"
        f"Message-ID: <{mid or f'dsn-{rid}-{status}'}@relay.example.test>\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        "--B\nContent-Type: text/plain\n\nfailed\n\n--B\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; relay.example.test\n\n"
        f"Final-Recipient: rfc822; {address}\nAction: {action}\nStatus: {status}\n"
        f"Diagnostic-Code: smtp; {diagnostic}\n\n--B--\n"
    ).encode()


def _apply(queue, raw: bytes, clock, soft_limit=3, days=7) -> str:
    analysis = analyse(raw, key=KEY)
    key = policy.message_key(raw, analysis.message_id)
    return policy.apply(queue, analysis, key=key, policy=policy.Policy(soft_limit, days), now=clock())


def test_hard_bounce_suppresses_and_marks_bounced(queue, clock):
    rid = _recipient(queue, "Nobody@Customer.test")
    outcome = _apply(queue, _dsn(rid, "nobody@customer.test", "5.1.1", "550 5.1.1 User unknown"), clock)
    assert outcome == "suppressed"
    row = queue.recipient(rid)
    assert row["state"] == "bounced" and row["dsn"] == "5.1.1"
    entry = suppression.lookup(queue.connection, "Nobody@customer.test", now=clock())
    assert entry["source"] == "dsn:rfc3464" and "5.1.1" in entry["reason"]


def test_same_bounce_twice_counts_once(queue, clock):
    rid = _recipient(queue, "full@customer.test")
    raw = _dsn(rid, "full@customer.test", "4.2.2", "452 4.2.2 Mailbox full")
    assert _apply(queue, raw, clock, soft_limit=2) == "soft-counted"
    assert _apply(queue, raw, clock, soft_limit=2) == "duplicate"
    assert suppression.lookup(queue.connection, "full@customer.test", now=clock()) is None


def test_soft_limit_within_window(queue, clock):
    address = "full@customer.test"
    outcomes = []
    for day, n in ((0, 1), (3, 2), (9, 3), (9.5, 4)):
        clock.now = T0 + day * DAY
        rid = _recipient(queue, address)
        outcomes.append(_apply(queue, _dsn(rid, address, "4.2.2", "Mailbox full", mid=f"m{n}"), clock))
    # day 9 sees days 3 and 9 (day 0 left the window); day 9.5 sees 3, 9 and 9.5: the third
    assert outcomes == ["soft-counted", "soft-counted", "soft-counted", "suppressed"]
    entry = suppression.lookup(queue.connection, address, now=clock.now)
    assert entry["reason"] == "soft bounces: 3 in 7 days, last 4.2.2"


def test_policy_block_is_soft_not_suppressed(queue, clock):
    rid = _recipient(queue, "valid@customer.test")
    raw = _dsn(rid, "valid@customer.test", "5.7.1", "554 5.7.1 Client host blocked using zen.dnsbl.test")
    assert _apply(queue, raw, clock) == "soft-counted"
    assert suppression.lookup(queue.connection, "valid@customer.test", now=clock()) is None


def test_complaint_suppresses(queue, clock):
    rid = _recipient(queue, "annoyed@isp.test")
    text = (CORPUS / "arf_complaint.eml").read_text()
    corpus_address = verp.make_address(
        "bounces", "bounce.example.test", 115, b"bulkrelay-test-corpus-key-0123456789"
    )
    raw = text.replace(corpus_address, verp.make_address("bounces", "bounce.example.test", rid, KEY)).encode()
    assert _apply(queue, raw, clock) == "complaint"
    assert "complaint" in queue.recipient(rid)["last_reply"]
    assert suppression.lookup(queue.connection, "annoyed@isp.test", now=clock())["source"] == "arf"


def test_forged_or_unknown_tokens_do_nothing(queue, clock):
    rid = _recipient(queue, "x@customer.test")
    forged = _dsn(rid, "x@customer.test", "5.1.1", "User unknown").replace(b"+r", b"+r9")
    assert _apply(queue, forged, clock) == "unmatched"
    assert (
        _apply(queue, _dsn(rid + 1000, "y@customer.test", "5.1.1", "User unknown"), clock)
        == "unknown-recipient"
    )
    assert queue.recipient(rid)["state"] == "queued"
    assert suppression.list_entries(queue.connection) == []


def test_human_mail_is_ignored(queue, clock):
    raw = (CORPUS / "human_reply.eml").read_bytes()
    assert _apply(queue, raw, clock) == "ignored"
