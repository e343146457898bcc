"""The delivery-events outbox: one event per state change, written atomically with it, and the
pull commands (`bulkrelay events`, `message show`, `suppress check`) over real SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bulkrelay import config as configmod
from bulkrelay import suppression
from bulkrelay.cli import main
from bulkrelay.message import BadMessage
from bulkrelay.normalise import accept
from bulkrelay.queue import Queue, QueueUnavailable
from bulkrelay.queue.events import DEFERRED_EVERY, EVENT_TYPES
from bulkrelay.service import ReleaseLoop

T0 = 1_800_000_000.0
RAW = (
    b"From: Billing <billing@example.test>\r\n"
    b"Subject: Invoice\r\nMessage-ID: <inv@example.test>\r\n\r\nHi\r\n"
)
REF_RAW = RAW.replace(b"Subject:", b"X-Bulkrelay-Ref: INV-10042\r\nSubject:")
OLD_SCHEMA = Path(__file__).parent / "data" / "queue_schema_before_events.sql"


@pytest.fixture
def now():
    return [T0]


@pytest.fixture
def clock(now):
    """The clock of conftest's queue fixture: ``now[0]``, which the tests move."""
    return lambda: now[0]


def events(q, **kw):
    return q.events_since(0, limit=1000, **kw)


def types(q):
    return [e["type"] for e in events(q)]


def new_events(q, before):
    return q.events_since(before, limit=1000)


def released(q, raw=REF_RAW, rcpts=("bob@customer.test",), now=T0):
    """One message enqueued and taken: its rows ('submitting') and the cursor after that."""
    q.enqueue(raw, "billing@example.test", list(rcpts), source="smtp:10.0.0.5")
    rows = q.take(10, now=now)
    return rows, q.last_event_cursor()


# -- one event per transition -----------------------------------------------------------------


def test_enqueue_writes_one_accepted_event_per_recipient_with_ref_and_source(queue):
    with pytest.raises(ValueError, match="at least one recipient"):
        queue.enqueue(REF_RAW, "billing@example.test", [], source="smtp:10.0.0.5")
    assert events(queue) == []
    queue.enqueue(REF_RAW, "billing@example.test", ["a@customer.test"], source="smtp:10.0.0.5")
    queue.enqueue(RAW, "billing@example.test", ["b@customer.test", "c@other.test"], source="hotfolder:ab12")
    queue.enqueue(RAW, "billing@example.test", ["d@customer.test"], source="cli:invoice.eml")
    got = events(queue)
    assert [(e["type"], e["recipient"], e["ref"], e["source"]) for e in got] == [
        ("accepted", "a@customer.test", "INV-10042", "intake"),
        ("accepted", "b@customer.test", "<inv@example.test>", "hotfolder"),
        ("accepted", "c@other.test", "<inv@example.test>", "hotfolder"),
        ("accepted", "d@customer.test", "<inv@example.test>", "cli"),
    ]
    first = got[0]
    assert set(first) == {
        "id", "cursor", "type", "at", "timestamp", "ref", "message_id", "recipient",
        "queue_id", "dsn", "reply", "kind", "source", "reason", "tls",
    }  # fmt: skip
    assert first["message_id"] == "<inv@example.test>" and first["timestamp"] == T0
    assert first["at"] == "2027-01-15T08:00:00Z" and first["queue_id"] is None
    assert len({e["id"] for e in got}) == 4 and all(len(e["id"]) == 32 for e in got)
    assert [e["cursor"] for e in got] == [1, 2, 3, 4]


def test_event_ids_are_unique_and_sort_by_time(queue, now):
    """Ids land on the right edge of their index (a random UUID cost more per 100k as the
    queue grew): later events sort after earlier ones, events of one instant stay unique."""
    queue.enqueue(RAW, "billing@example.test", ["a@customer.test", "b@customer.test"], source="cli:x")
    now[0] += 0.002
    queue.enqueue(RAW, "billing@example.test", ["c@customer.test"], source="cli:x")
    first, second, later = (e["id"] for e in events(queue))
    assert first != second and first[:12] == second[:12] == f"{int(T0 * 1000):012x}"
    assert max(first, second) < later and all(int(i, 16) >= 0 for i in (first, second, later))


def test_take_writes_released_and_suppressed_with_the_reason(queue):
    queue.enqueue(REF_RAW, "billing@example.test", ["ok@customer.test", "gone@customer.test"], source="cli:x")
    before = queue.last_event_cursor()
    rows = queue.take(10, now=T0, skip=lambda a: "hard bounce 5.1.1" if a.startswith("gone") else None)
    assert [r["address"] for r in rows] == ["ok@customer.test"]
    got = new_events(queue, before)
    assert [(e["type"], e["recipient"], e["reason"]) for e in got] == [
        ("released", "ok@customer.test", None),
        ("suppressed", "gone@customer.test", "hard bounce 5.1.1"),
    ]
    assert queue.counts()["suppressed"] == 1
    # a domain at its cap is not taken and writes nothing
    queue.enqueue(RAW, "billing@example.test", ["x@capped.test"], source="cli:x")
    before = queue.last_event_cursor()
    assert queue.take(10, now=T0, domain_remaining={"capped.test": 0}) == []
    assert new_events(queue, before) == []


def test_submitted_then_log_results_each_write_one_event(queue):
    rows, before = released(queue, rcpts=("a@customer.test", "b@customer.test", "c@customer.test"))
    a, b, c = (r["id"] for r in rows)
    for rid, qid in ((a, "AAA111"), (b, "BBB222"), (c, "CCC333")):
        assert queue.mark_submitted(rid, f"250 2.0.0 Ok: queued as {qid}") == qid
    got = new_events(queue, before)
    assert [(e["type"], e["queue_id"], e["source"], e["ref"]) for e in got] == [
        ("submitted", "AAA111", "submission", "INV-10042"),
        ("submitted", "BBB222", "submission", "INV-10042"),
        ("submitted", "CCC333", "submission", "INV-10042"),
    ]
    assert got[0]["reply"] == "250 2.0.0 Ok: queued as AAA111"
    before = queue.last_event_cursor()
    queue.record_result("AAA111", "a@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    queue.record_result(
        "BBB222", "b@customer.test", state="bounced", dsn="5.1.1", reply="550 5.1.1 user unknown"
    )
    queue.record_result(
        "CCC333", "c@customer.test", state="bounced", dsn="5.4.7", reply="expired in the Postfix queue"
    )
    got = new_events(queue, before)
    assert [(e["type"], e["recipient"], e["dsn"], e["kind"], e["source"], e["queue_id"]) for e in got] == [
        ("delivered", "a@customer.test", "2.0.0", None, "log", "AAA111"),
        ("bounced", "b@customer.test", "5.1.1", "hard", "log", "BBB222"),
        ("expired", "c@customer.test", "5.4.7", "soft", "log", "CCC333"),
    ]
    assert got[1]["reply"] == "550 5.1.1 user unknown"
    # the same lines read again after a restart, a late deferral, a queue id not ours: nothing
    before = queue.last_event_cursor()
    queue.record_result("AAA111", "a@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    queue.record_result(
        "BBB222", "b@customer.test", state="bounced", dsn="5.1.1", reply="550 5.1.1 user unknown"
    )
    queue.record_result("AAA111", "a@customer.test", state="deferred", dsn="4.4.1", reply="timeout")
    queue.record_result("ZZZ999", "z@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    assert new_events(queue, before) == []


def test_deferred_the_first_time_then_once_a_day(queue, now):
    rows, before = released(queue)
    rid = rows[0]["id"]
    queue.mark_retry(rid, "451 4.3.0 try again later", delay=60)
    got = new_events(queue, before)
    assert [(e["type"], e["dsn"], e["source"], e["reply"]) for e in got] == [
        ("deferred", "4.3.0", "submission", "451 4.3.0 try again later")
    ]
    now[0] += 60
    queue.take(10, now=now[0])
    queue.mark_submitted(rid, "250 2.0.0 Ok: queued as DEF123")
    before = queue.last_event_cursor()
    for step in range(5):  # Postfix logs a deferral at every retry
        now[0] += 3600
        queue.record_result("DEF123", "bob@customer.test", state="deferred", dsn="4.4.1", reply=f"try {step}")
    assert new_events(queue, before) == []  # within a day of the first deferral
    now[0] = T0 + DEFERRED_EVERY
    queue.record_result("DEF123", "bob@customer.test", state="deferred", dsn="4.4.1", reply="still down")
    now[0] += 3600
    queue.record_result("DEF123", "bob@customer.test", state="deferred", dsn="4.4.1", reply="still down")
    got = new_events(queue, before)
    assert [(e["type"], e["source"], e["queue_id"], e["reply"]) for e in got] == [
        ("deferred", "log", "DEF123", "still down")
    ]


def test_failed_at_submission_is_a_bounce_with_the_classified_kind(queue):
    rows, before = released(queue, rcpts=("a@customer.test", "b@customer.test"))
    queue.mark_failed(rows[0]["id"], "550 5.1.1 <a@customer.test>: Recipient address rejected: User unknown")
    queue.mark_failed(rows[1]["id"], "552 5.3.4 Message size exceeds fixed limit")
    got = new_events(queue, before)
    assert [(e["type"], e["dsn"], e["kind"], e["source"]) for e in got] == [
        ("bounced", "5.1.1", "hard", "submission"),
        ("bounced", "5.3.4", "soft", "submission"),
    ]


def test_dsn_bounces_and_complaints(queue):
    rows, _ = released(
        queue, rcpts=("a@customer.test", "b@customer.test", "c@customer.test", "d@customer.test")
    )
    a, b, c, d = (r["id"] for r in rows)
    for rid, qid in ((a, "QA0001"), (b, "QB0001"), (c, "QC0001"), (d, "QD0001")):
        queue.mark_submitted(rid, f"250 2.0.0 Ok: queued as {qid}")
    queue.record_result("QA0001", "a@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    queue.record_result("QD0001", "d@customer.test", state="bounced", dsn="5.1.1", reply="550 5.1.1 unknown")
    before = queue.last_event_cursor()
    queue.record_bounce(a, status="5.2.1", diagnostic="mailbox disabled", kind="hard")  # after delivered
    queue.record_bounce(b, status="4.2.2", diagnostic="mailbox full", kind="soft")
    queue.record_bounce(c, status="complaint", diagnostic="ARF abuse", kind="complaint")
    queue.record_bounce(d, status="5.1.1", diagnostic="550 5.1.1 unknown", kind="hard")  # Postfix's own DSN
    got = new_events(queue, before)
    assert [(e["type"], e["recipient"], e["dsn"], e["kind"], e["source"], e["queue_id"]) for e in got] == [
        ("bounced", "a@customer.test", "5.2.1", "hard", "dsn", "QA0001"),
        ("bounced", "b@customer.test", "4.2.2", "soft", "dsn", "QB0001"),
        ("complained", "c@customer.test", None, None, "dsn", "QC0001"),
    ]
    assert got[0]["reply"] == "mailbox disabled" and got[2]["reply"] == "complaint: ARF abuse"
    assert queue.recipient(b)["state"] == "deferred"


def test_crash_recovery_resolution_and_pending_results(queue):
    rows, before = released(queue, rcpts=("a@customer.test", "b@customer.test", "c@customer.test"))
    a, b, c = (r["id"] for r in rows)
    # the log showed results for queue ids the rows did not know yet
    queue.record_result("PEND01", "a@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    queue.record_result("PEND02", "c@customer.test", state="bounced", dsn="5.1.1", reply="550 unknown")
    assert new_events(queue, before) == []
    assert queue.resolve_submitting(a, "PEND01")["state"] == "delivered"
    assert queue.resolve_submitting(b, None) is None  # not in the log: queued again, no event
    queue.mark_submitted(c, "250 2.0.0 Ok: queued as PEND02")
    got = new_events(queue, before)
    assert [(e["type"], e["recipient"], e["queue_id"], e["source"]) for e in got] == [
        ("submitted", "a@customer.test", "PEND01", "log"),
        ("delivered", "a@customer.test", "PEND01", "log"),
        ("submitted", "c@customer.test", "PEND02", "submission"),
        ("bounced", "c@customer.test", "PEND02", "log"),
    ]
    assert queue.recipient(b)["state"] == "queued"
    before = queue.last_event_cursor()
    assert queue.resolve_submitting(a, "PEND01") is None  # already settled: nothing again
    assert new_events(queue, before) == []


def test_give_back_retry_and_drop_write_nothing(queue):
    rows, before = released(queue, rcpts=("a@customer.test", "b@customer.test"))
    queue.give_back([rows[0]["id"]], reason="stopping")
    queue.mark_failed(rows[1]["id"], "550 5.1.1 unknown")
    before = queue.last_event_cursor()
    assert queue.retry(state="failed") == 1
    queue.drop(rows[0]["message"])
    assert new_events(queue, before) == []
    assert types(queue).count("released") == 2  # the events outlive the dropped message


# -- atomicity --------------------------------------------------------------------------------


def _fail_on(queue, table: str, op: str) -> None:
    queue.connection.execute(
        f"CREATE TRIGGER fail_{table} BEFORE {op} ON {table} BEGIN SELECT RAISE(ABORT, 'disk gone'); END"
    )


def test_event_and_state_change_commit_together_or_not_at_all(queue):
    rows, before = released(queue)
    rid = rows[0]["id"]
    _fail_on(queue, "events", "INSERT")
    with pytest.raises(QueueUnavailable, match="disk gone"):
        queue.mark_submitted(rid, "250 2.0.0 Ok: queued as ATOM01")
    assert queue.recipient(rid)["state"] == "submitting" and queue.recipient(rid)["postfix_qid"] is None
    with pytest.raises(QueueUnavailable):
        queue.enqueue(RAW, "billing@example.test", ["new@customer.test"], source="cli:x")
    assert queue.counts()["queued"] == 0
    assert queue.connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    assert queue.last_event_cursor() == before
    queue.connection.execute("DROP TRIGGER fail_events")
    _fail_on(queue, "recipients", "UPDATE")
    with pytest.raises(QueueUnavailable):
        queue.mark_submitted(rid, "250 2.0.0 Ok: queued as ATOM01")
    with pytest.raises(QueueUnavailable):
        queue.record_bounce(rid, status="5.1.1", diagnostic="unknown", kind="hard")
    assert queue.last_event_cursor() == before


def test_events_survive_reopening_the_database(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    q.enqueue(REF_RAW, "billing@example.test", ["a@customer.test"], source="cli:x")
    q.close()
    q = Queue(tmp_path / "q.sqlite")
    assert [(e["type"], e["ref"]) for e in events(q)] == [("accepted", "INV-10042")]
    q.close()


# -- the reference ----------------------------------------------------------------------------


def test_ref_header_is_removed_from_the_stored_message(queue):
    folded = RAW.replace(b"Subject:", b"x-bulkrelay-ref:  INV-\r\n 7\r\nSubject:")
    last = RAW.replace(b"\r\n\r\nHi", b"\r\nX-Bulkrelay-Ref: LAST-1\r\n\r\nHi")
    no_body = b"From: b@example.test\nX-Bulkrelay-Ref: NB-1"
    for raw, ref in ((REF_RAW, "INV-10042"), (folded, "INV- 7"), (last, "LAST-1"), (no_body, "NB-1")):
        mid = queue.enqueue(raw, "billing@example.test", ["a@customer.test"], source="cli:x")
        body = queue.body(mid)
        assert b"bulkrelay-ref" not in body.lower()
        assert queue.messages_with_ref(ref) == [mid]
    assert queue.body(1).endswith(b"Subject: Invoice\r\nMessage-ID: <inv@example.test>\r\n\r\nHi\r\n")
    assert queue.body(3).endswith(b"Message-ID: <inv@example.test>\r\n\r\nHi\r\n")
    # without the header the reference is the Message-ID, the one added when missing too
    mid = queue.enqueue(
        b"From: b@example.test\r\n\r\nx\r\n", "b@example.test", ["a@customer.test"], source="t"
    )
    message_id = queue.message(mid)["message_id"]
    assert queue.messages_with_ref(message_id) == [mid]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"X-Bulkrelay-Ref:   \r\n", "header is empty"),
        (b"X-Bulkrelay-Ref: " + b"A" * 129 + b"\r\n", "129 characters; shorten it to at most 128"),
        (b"X-Bulkrelay-Ref: INV\t1\r\n", "control or non-ASCII"),
        (b"X-Bulkrelay-Ref: A\r\nX-Bulkrelay-Ref: B\r\n", "more than one 'x-bulkrelay-ref' header"),
    ],
)
def test_bad_ref_is_refused_at_intake_with_the_reason(queue, header, reason):
    raw = RAW.replace(b"Subject:", header + b"Subject:")
    with pytest.raises(BadMessage, match=reason):
        accept(raw, max_size=10**6, mail_from="billing@example.test", recipients=["a@customer.test"])
    if b"B\r\n" not in header:  # the queue refuses it too when validation was skipped
        with pytest.raises(ValueError, match=reason.split(";")[0]):
            queue.enqueue(raw, "billing@example.test", ["a@customer.test"], source="t")
    assert queue.connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_a_ref_of_128_printable_characters_is_accepted(queue):
    ref = "INV 2026/11-" + "x" * 116
    raw = RAW.replace(b"Subject:", f"X-Bulkrelay-Ref: {ref}\r\nSubject:".encode())
    done = accept(raw, max_size=10**6, mail_from="billing@example.test", recipients=["a@customer.test"])
    queue.enqueue(done.raw, done.mail_from, done.recipients, source="t")
    assert [e["ref"] for e in events(queue)] == [ref]


# -- reading, paging, pruning, migration ------------------------------------------------------


def test_paging_with_zero_one_and_two_events(queue):
    assert queue.events_since(0) == [] and queue.last_event_cursor() == 0
    assert queue.oldest_event_after(0) is None and queue.count_events_after(0) == 0
    queue.enqueue(REF_RAW, "billing@example.test", ["a@customer.test"], source="cli:x")
    assert [e["cursor"] for e in queue.events_since(0)] == [1] and queue.events_since(1) == []
    queue.enqueue(RAW, "billing@example.test", ["b@customer.test"], source="cli:x")
    assert [e["cursor"] for e in queue.events_since(0, limit=1)] == [1]
    assert [e["cursor"] for e in queue.events_since(1, limit=1)] == [2]
    assert queue.last_event_cursor() == 2 and queue.count_events_after(1) == 1
    assert queue.oldest_event_after(1) == T0
    assert [e["recipient"] for e in queue.events_since(0, ref="INV-10042")] == ["a@customer.test"]
    assert queue.events_since(0, ref="nope") == []
    queue.take(10, now=T0)
    assert [e["cursor"] for e in queue.events_since(0, types=["released"])] == [3, 4]
    assert len(queue.events_since(0, types=["released", "accepted"])) == 4
    assert [e["cursor"] for e in queue.events_since(2, ref="INV-10042", types=("released",))] == [3]


def test_prune_drops_old_events_and_never_reuses_a_cursor(queue, now):
    queue.enqueue(REF_RAW, "billing@example.test", ["a@customer.test"], source="cli:x")
    now[0] += 10 * 86400
    queue.enqueue(RAW, "billing@example.test", ["b@customer.test"], source="cli:x")
    queue.prune(before=now[0], events_before=now[0] - 86400)
    assert [e["cursor"] for e in events(queue)] == [2]
    queue.prune(before=now[0])  # without events_before: events untouched
    assert queue.count_events_after(0) == 1
    queue.prune(before=now[0], events_before=now[0] + 1)
    assert events(queue) == [] and queue.last_event_cursor() == 0
    queue.enqueue(RAW, "billing@example.test", ["c@customer.test"], source="cli:x")
    assert [e["cursor"] for e in events(queue)] == [3]


def test_release_loop_maintenance_prunes_events_after_keep_days(tmp_path, now):
    config = configmod.parse(
        {"queue": {"path": str(tmp_path / "q.sqlite")}, "events": {"keep_days": 2}}, source_path="t"
    )
    q = Queue(config.queue.path, clock=lambda: now[0])
    q.enqueue(RAW, "billing@example.test", ["a@customer.test"], source="cli:x")
    now[0] += 86400
    q.enqueue(RAW, "billing@example.test", ["b@customer.test"], source="cli:x")
    loop = ReleaseLoop(config, q, clock=lambda: now[0])
    loop.maintenance(T0 + 2.5 * 86400)
    assert [e["recipient"] for e in events(q)] == ["b@customer.test"]
    q.close()


def test_events_config_keep_days():
    assert configmod.parse({}).events.keep_days == 30
    assert configmod.parse({"events": {"keep_days": 7}}).events.keep_days == 7
    with pytest.raises(configmod.ConfigError, match=r"events\.keep_days: 0 is below the minimum 1"):
        configmod.parse({"events": {"keep_days": 0}})
    with pytest.raises(configmod.ConfigError, match=r"events\.keep: unknown key"):
        configmod.parse({"events": {"keep": 7}})


def test_an_old_database_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA.read_text())
    old.execute(
        "INSERT INTO messages(id, mail_from, message_id, source, size, created_at, body) "
        "VALUES (1, 'b@example.test', '<old@example.test>', 'smtp:10.0.0.5', 1, 1.0, x'00')"
    )
    old.execute(
        "INSERT INTO recipients(message, address, domain, next_attempt, created_at, updated_at, "
        "state, postfix_qid) VALUES (1, 'a@customer.test', 'customer.test', 1, 1, 1, 'submitted', 'OLD001')"
    )
    old.commit()
    old.close()
    for _ in range(2):  # and opening it again changes nothing
        q = Queue(path)
        assert q.messages_with_ref("<old@example.test>") == [1]
        q.close()
    q = Queue(path)
    q.record_result("OLD001", "a@customer.test", state="delivered", dsn="2.0.0", reply="250 ok")
    assert [(e["type"], e["ref"], e["message_id"]) for e in events(q)] == [
        ("delivered", "<old@example.test>", "<old@example.test>")
    ]
    q.enqueue(REF_RAW, "billing@example.test", ["n@customer.test"], source="cli:x")
    assert q.messages_with_ref("INV-10042") == [2]
    q.close()


# -- the commands -----------------------------------------------------------------------------


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "sender.toml"
    path.write_text(f'[queue]\npath = "{tmp_path / "q.sqlite"}"\n')
    return str(path)


def _open(conf):
    return Queue(configmod.load(conf).queue.path)


def test_events_command_pages_with_zero_one_and_two_events(conf, capsys):
    code, out, err = run(capsys, "events", "--since", "0", "--config", conf)
    assert (code, out, err) == (0, "", "next_cursor=0\n")
    q = _open(conf)
    q.enqueue(REF_RAW, "billing@example.test", ["a@customer.test"], source="smtp:10.0.0.5")
    code, out, err = run(capsys, "events", "--config", conf)
    assert code == 0 and err == "next_cursor=1\n"
    assert out.split()[:5] == ["1", out.split()[1], "accepted", "INV-10042", "a@customer.test"]
    assert "source=intake" in out and len(out.splitlines()) == 1
    q.enqueue(RAW, "billing@example.test", ["b@customer.test"], source="cli:x")
    q.close()
    code, out, err = run(capsys, "events", "--since", "0", "--limit", "1", "--json", "--config", conf)
    assert [json.loads(line)["cursor"] for line in out.splitlines()] == [1] and err == "next_cursor=1\n"
    code, out, err = run(capsys, "events", "--since", "1", "--limit", "1", "--json", "--config", conf)
    event = json.loads(out)
    assert (event["cursor"], event["recipient"], event["ref"]) == (2, "b@customer.test", "<inv@example.test>")
    assert err == "next_cursor=2\n"
    code, out, err = run(capsys, "events", "--since", "2", "--json", "--config", conf)
    assert (code, out, err) == (0, "", "next_cursor=2\n")
    code, out, _ = run(capsys, "events", "--ref", "INV-10042", "--json", "--config", conf)
    assert [json.loads(line)["recipient"] for line in out.splitlines()] == ["a@customer.test"]
    code, out, _ = run(
        capsys, "events", "--type", "released,suppressed", "--type", "bounced", "--config", conf
    )
    assert (code, out) == (0, "")


def test_events_command_refuses_bad_arguments(conf, capsys):
    code, _, err = run(capsys, "events", "--type", "deliverd", "--config", conf)
    assert code == 2 and "unknown event type deliverd; use one of: accepted" in err
    for bad in (["--since", "-1"], ["--since", "x"], ["--limit", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["events", *bad, "--config", conf])
        assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    code, _, err = run(capsys, "events", "--config", conf + ".missing")
    assert code == 2 and "no such file" in err


def test_message_show_gives_the_history_of_a_reference(conf, capsys):
    code, out, err = run(capsys, "message", "show", "INV-10042", "--config", conf)
    assert code == 1 and out == "" and "no message with reference 'INV-10042'" in err
    q = _open(conf)
    q.enqueue(REF_RAW, "billing@example.test", ["a@customer.test", "b@customer.test"], source="cli:x")
    q.enqueue(RAW, "billing@example.test", ["c@customer.test"], source="cli:x")  # another ref
    rows = q.take(10, now=q.clock())
    q.mark_submitted(rows[0]["id"], "250 2.0.0 Ok: queued as SHOW01")
    q.mark_failed(rows[1]["id"], "550 5.1.1 user unknown")
    q.close()
    code, out, _ = run(capsys, "message", "show", "INV-10042", "--json", "--config", conf)
    data = json.loads(out)
    assert code == 0 and data["ref"] == "INV-10042" and len(data["messages"]) == 1
    recipients = data["messages"][0]["recipients"]
    assert [(r["address"], r["state"], r["queue_id"]) for r in recipients] == [
        ("a@customer.test", "submitted", "SHOW01"),
        ("b@customer.test", "failed", None),
    ]
    assert [e["type"] for e in recipients[0]["events"]] == ["accepted", "released", "submitted"]
    assert [e["type"] for e in recipients[1]["events"]] == ["accepted", "released", "bounced"]
    code, out, _ = run(capsys, "message", "show", "INV-10042", "--config", conf)
    assert code == 0 and "a@customer.test: submitted  queue_id=SHOW01" in out
    assert "bounced INV-10042 b@customer.test dsn=5.1.1 kind=hard source=submission" in out
    assert "c@customer.test" not in out


def test_suppress_check_exit_codes(conf, capsys):
    code, out, _ = run(capsys, "suppress", "check", "bob@customer.test", "--config", conf)
    assert (code, out) == (0, "bob@customer.test: not suppressed\n")
    q = _open(conf)
    suppression.ensure_schema(q.connection)
    suppression.add(
        q.connection, "Bob@Customer.test", reason="hard bounce 5.1.1", source="postfix-log", now=T0
    )
    q.close()
    code, out, _ = run(capsys, "suppress", "check", "Bob@CUSTOMER.test", "--config", conf)
    assert code == 1
    assert (
        out == "Bob@customer.test: suppressed since 2027-01-15T08:00:00Z (postfix-log): hard bounce 5.1.1\n"
    )
    code, out, _ = run(capsys, "suppress", "check", "bob@customer.test", "--config", conf)
    assert (code, out) == (0, "bob@customer.test: not suppressed\n")  # the local part's case counts
    code, out, err = run(capsys, "suppress", "check", "not an address", "--config", conf)
    assert code == 2 and out == "" and "is not an e-mail address" in err and "Traceback" not in err


def test_every_event_type_is_documented():
    doc = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()
    assert all(f"`{t}`" in doc for t in EVENT_TYPES)
