"""Applying parsed bounces to a real SQLite queue: hard, soft N-in-M-days, complaint, duplicates."""

from __future__ import annotations

import base64
import quopri
from pathlib import Path

import pytest
from conftest import queued

from bulkrelay import suppression, verp
from bulkrelay.bounces import policy
from bulkrelay.bounces.parse import analyse

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
def queue(queue):
    """conftest's queue (on this module's clock), with the bounce policy's tables."""
    policy.ensure_schema(queue.connection)
    return queue


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
    rid = queued(queue, "Nobody@Customer.test")
    outcome = _apply(queue, _dsn(rid, "nobody@customer.test", "5.1.1", "550 5.1.1 User unknown"), clock)
    assert outcome == "suppressed"
    row = queue.recipient(rid)
    assert row["state"] == "bounced" and row["dsn"] == "5.1.1"
    entry = suppression.lookup(queue.connection, "Nobody@customer.test", now=clock())
    assert entry["source"] == "dsn:rfc3464" and "5.1.1" in entry["reason"]


def test_same_bounce_twice_counts_once(queue, clock):
    rid = queued(queue, "full@customer.test")
    raw = _dsn(rid, "full@customer.test", "4.2.2", "452 4.2.2 Mailbox full")
    assert _apply(queue, raw, clock, soft_limit=2) == "soft-counted"
    assert _apply(queue, raw, clock, soft_limit=2) == "duplicate"
    assert suppression.lookup(queue.connection, "full@customer.test", now=clock()) is None


def test_soft_limit_within_window(queue, clock):
    address = "full@customer.test"
    outcomes = []
    for day, n in ((0, 1), (3, 2), (9, 3), (9.5, 4)):
        clock.now = T0 + day * DAY
        rid = queued(queue, address)
        outcomes.append(_apply(queue, _dsn(rid, address, "4.2.2", "Mailbox full", mid=f"m{n}"), clock))
    # day 9 sees days 3 and 9 (day 0 left the window); day 9.5 sees 3, 9 and 9.5: the third
    assert outcomes == ["soft-counted", "soft-counted", "soft-counted", "suppressed"]
    entry = suppression.lookup(queue.connection, address, now=clock.now)
    assert entry["reason"] == "soft bounces: 3 in 7 days, last 4.2.2"


def test_policy_block_is_soft_not_suppressed(queue, clock):
    rid = queued(queue, "valid@customer.test")
    raw = _dsn(rid, "valid@customer.test", "5.7.1", "554 5.7.1 Client host blocked using zen.dnsbl.test")
    assert _apply(queue, raw, clock) == "soft-counted"
    assert suppression.lookup(queue.connection, "valid@customer.test", now=clock()) is None


def test_complaint_suppresses(queue, clock):
    rid = queued(queue, "annoyed@isp.test")
    text = (CORPUS / "arf_complaint.eml").read_text()
    corpus_address = verp.make_address(
        "bounces", "bounce.example.test", 115, b"bulkrelay-test-corpus-key-0123456789"
    )
    raw = text.replace(corpus_address, verp.make_address("bounces", "bounce.example.test", rid, KEY)).encode()
    assert _apply(queue, raw, clock) == "complaint"
    assert "complaint" in queue.recipient(rid)["last_reply"]
    assert suppression.lookup(queue.connection, "annoyed@isp.test", now=clock())["source"] == "arf"


def test_forged_or_unknown_tokens_do_nothing(queue, clock):
    rid = queued(queue, "x@customer.test")
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


def _report(rid: int, blocks: list[dict[str, str]], *, mid: str, encode=None) -> bytes:
    """A DSN to rid's VERP address with one per-recipient block each (field -> value)."""
    envelope = verp.make_address("bounces", "bounce.example.test", rid, KEY)
    status = "Reporting-MTA: dns; mx.customer.test\n\n" + "\n".join(
        "".join(f"{k}: {v}\n" for k, v in block.items()) for block in blocks
    )
    body, cte = status.encode("latin-1"), ""
    if encode is not None:
        body, cte = encode[1](body), f"Content-Transfer-Encoding: {encode[0]}\n"
    return (
        (
            f"From: MAILER-DAEMON@mx.customer.test\nTo: {envelope}\nSubject: Delivery Status Notification\n"
            f"Message-ID: <{mid}@mx.customer.test>\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
            "--B\nContent-Type: text/plain\n\nreport\n\n--B\nContent-Type: message/delivery-status\n"
        ).encode()
        + f"{cte}\n".encode()
        + body
        + b"\n--B--\n"
    )


def _block(address: str, action: str, status: str, diagnostic: str = "", original: str = "") -> dict:
    block = {"Final-Recipient": f"rfc822; {address}", "Action": action, "Status": status}
    if original:
        block["Original-Recipient"] = f"rfc822; {original}"
    if diagnostic:
        block["Diagnostic-Code"] = f"smtp; {diagnostic}"
    return block


def test_delay_warnings_never_suppress(queue, clock):
    rid = queued(queue, "slow@customer.test")
    for n in range(4):
        clock.now = T0 + n * 3600
        raw = _report(
            rid, [_block("slow@customer.test", "delayed", "4.4.1", "connection timed out")], mid=f"d{n}"
        )
        assert _apply(queue, raw, clock) == "delayed"
    assert suppression.list_entries(queue.connection) == []
    assert queue.recipient(rid)["state"] == "queued"


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_success_actions_never_count(queue, clock, action):
    rid = queued(queue, "fine@customer.test")
    raw = _report(rid, [_block("fine@customer.test", action, "2.0.0")], mid=f"ok-{action}")
    assert _apply(queue, raw, clock) == "notice"
    assert suppression.list_entries(queue.connection) == []


def test_multi_recipient_dsn_judges_each_recipient_by_its_own_entry(queue, clock):
    ours = "ours@customer.test"
    rid = queued(queue, ours)
    other_failed = _block("other@customer.test", "failed", "5.1.1", "550 user unknown")
    # someone else failed, ours was delivered: nobody of ours is suppressed
    raw = _report(rid, [other_failed, _block(ours, "delivered", "2.0.0")], mid="m1")
    assert _apply(queue, raw, clock) == "other-recipient"
    # someone else failed hard, ours only delayed
    raw = _report(rid, [other_failed, _block(ours, "delayed", "4.2.2")], mid="m2")
    assert _apply(queue, raw, clock) == "delayed"
    assert suppression.list_entries(queue.connection) == []
    # ours failed soft, the other hard: ours counts as soft (its own status), not hard
    raw = _report(rid, [other_failed, _block(ours, "failed", "4.2.2")], mid="m3")
    assert _apply(queue, raw, clock) == "soft-counted"
    assert queue.recipient(rid)["dsn"] == "4.2.2"
    # ours failed hard
    raw = _report(
        rid, [_block("other@customer.test", "delayed", "4.4.1"), _block(ours, "failed", "5.1.1")], mid="m4"
    )
    assert _apply(queue, raw, clock) == "suppressed"
    assert [e["address"] for e in suppression.list_entries(queue.connection)] == [ours]


def test_forwarded_recipient_matches_by_original_recipient(queue, clock):
    rid = queued(queue, "alias@customer.test")
    block = _block(
        "target@elsewhere.test", "failed", "5.1.1", "550 no such user", original="alias@customer.test"
    )
    assert _apply(queue, _report(rid, [block], mid="fwd"), clock) == "suppressed"
    assert suppression.lookup(queue.connection, "alias@customer.test", now=clock()) is not None


@pytest.mark.parametrize(
    "encode", [("base64", base64.encodebytes), ("quoted-printable", quopri.encodestring)], ids=["b64", "qp"]
)
def test_transfer_encoded_report_and_latin1_diagnostic(queue, clock, encode):
    rid = queued(queue, "weg@kunde.test")
    block = _block("weg@kunde.test", "failed", "5.1.1", "550 Empfänger unbekannt")
    raw = _report(rid, [block], mid=f"enc-{encode[0]}", encode=encode)
    analysis = analyse(raw, key=KEY)
    assert analysis.format == "rfc3464"
    assert analysis.failures[0].diagnostic == "550 Empfänger unbekannt"
    assert _apply(queue, raw, clock) == "suppressed"


def _daemon_text(rid: int, body: str, *, sender: str = "MAILER-DAEMON@odd.test", headers: str = "") -> bytes:
    envelope = verp.make_address("bounces", "bounce.example.test", rid, KEY)
    return (
        f"Return-Path: <>\nFrom: {sender}\nTo: {envelope}\nSubject: Notice\n"
        f"Message-ID: <odd-{rid}-{len(body)}@odd.test>\n{headers}\n{body}\n"
    ).encode()


def test_verp_address_is_evidence_of_a_bounce_nobody_parses(queue, clock):
    rid = queued(queue, "odd@customer.test")
    vague = _daemon_text(
        rid, "We could not hand over your message. Sorry.", headers="Auto-Submitted: auto-replied\n"
    )
    analysis = analyse(vague, key=KEY)
    assert (analysis.category, analysis.format, analysis.failures[0].kind) == ("bounce", "verp-only", "soft")
    assert _apply(queue, vague, clock) == "soft-counted"
    hard = _daemon_text(
        rid, "Permanent error 5.1.1: that mailbox does not exist.", sender="postmaster@odd.test"
    )
    assert analyse(hard, key=KEY).failures[0].kind == "hard"
    assert _apply(queue, hard, clock) == "suppressed"


def test_verp_evidence_needs_a_mailer_and_a_valid_token(queue, clock):
    rid = queued(queue, "person@customer.test")
    person = _daemon_text(rid, "Thanks, I will pay next week.", sender="Person <person@customer.test>")
    assert analyse(person.replace(b"Return-Path: <>\n", b""), key=KEY).category == "human"
    forged = _daemon_text(rid, "We could not hand over your message.").replace(b"+r", b"+r9")
    assert analyse(forged, key=KEY).category == "human"


def _soft_suppress(queue, clock, address: str, tag: str, expiry_days: int = 30) -> str:
    outcome = ""
    for n in range(3):
        rid = queued(queue, address)
        raw = _dsn(rid, address, "4.2.2", "452 4.2.2 Mailbox full", mid=f"{tag}{n}")
        analysis = analyse(raw, key=KEY)
        key = policy.message_key(raw, analysis.message_id)
        outcome = policy.apply(
            queue, analysis, key=key, policy=policy.Policy(3, 7, soft_expiry_days=expiry_days), now=clock()
        )
    return outcome


def test_soft_suppression_expires_hard_and_complaints_do_not(queue, clock):
    assert _soft_suppress(queue, clock, "full@customer.test", "s") == "suppressed"
    entry = suppression.lookup(queue.connection, "full@customer.test", now=clock())
    assert entry["expires_at"] == clock() + 30 * DAY
    assert suppression.lookup(queue.connection, "full@customer.test", now=clock() + 30 * DAY) is None
    # 0 = soft suppressions never lapse
    assert _soft_suppress(queue, clock, "kept@customer.test", "k", expiry_days=0) == "suppressed"
    assert suppression.lookup(queue.connection, "kept@customer.test", now=clock())["expires_at"] is None
    # a hard bounce is for good, and later soft bounces do not shorten it
    rid = queued(queue, "gone@customer.test")
    assert (
        _apply(queue, _dsn(rid, "gone@customer.test", "5.1.1", "550 5.1.1 User unknown"), clock)
        == "suppressed"
    )
    _soft_suppress(queue, clock, "gone@customer.test", "g")
    assert suppression.lookup(queue.connection, "gone@customer.test", now=clock() + 400 * DAY) is not None
