"""The SQLite queue: intake durability, state machine, counts, batch picking, scale."""

import sqlite3
import time

import pytest

from bulkrelay.queue import Queue, QueueUnavailable, ensure_ids, queue_id_from_reply

RAW = b"From: Billing <billing@example.test>\r\nTo: a@customer.test\r\nSubject: Invoice 1\r\n\r\nHello\r\n"


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


def real_counts(q):
    rows = q.connection.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    return {s: n for s, n in rows}


def test_enqueue_stores_body_once_and_one_row_per_recipient(queue):
    mid = queue.enqueue(RAW, "billing@example.test", ["a@customer.test", "b@customer.test"], source="test")
    assert queue.connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    msg = queue.message(mid)
    assert [r["address"] for r in msg["recipients"]] == ["a@customer.test", "b@customer.test"]
    assert all(r["state"] == "queued" for r in msg["recipients"])
    assert queue.counts()["queued"] == 2


def test_enqueue_adds_message_id_and_date_when_missing(queue):
    mid = queue.enqueue(RAW, "billing@example.test", ["a@customer.test"], source="test")
    body = queue.body(mid)
    assert body.startswith(b"Message-ID: <")
    assert b"\r\nDate: " in body
    assert body.endswith(RAW)
    header_mid = queue.message(mid)["message_id"]
    assert header_mid.endswith("@example.test>")
    assert f"Message-ID: {header_mid}".encode() in body


def test_enqueue_keeps_existing_message_id_and_date():
    raw = b"Message-Id: <abc@app.test>\nDate: Mon, 1 Jan 2026 10:00:00 +0000\nFrom: a@b.test\n\nx\n"
    body, mid = ensure_ids(raw, "a@b.test", now=0)
    assert body is raw  # nothing added, nothing copied (a 200 KB invoice is one mmap less)
    assert mid == "<abc@app.test>"


def test_duplicate_recipients_stored_once_and_empty_list_refused(queue):
    queue.enqueue(RAW, "b@example.test", ["a@x.test", "a@x.test", " "], source="t")
    assert queue.counts()["queued"] == 1
    with pytest.raises(ValueError, match="at least one recipient"):
        queue.enqueue(RAW, "b@example.test", [], source="t")


def test_enqueue_raises_queue_unavailable_when_database_is_locked(tmp_path, clock):
    q = Queue(tmp_path / "q.sqlite", clock=clock, busy_timeout=0.2)
    blocker = sqlite3.connect(tmp_path / "q.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnavailable, match="locked"):
            q.enqueue(RAW, "b@example.test", ["a@x.test"], source="t")
        assert time.monotonic() - started < 3
    finally:
        blocker.execute("ROLLBACK")
    # nothing half-written: the message table is empty, counts agree
    assert q.counts()["queued"] == 0
    assert q.connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    q.close()


def test_queue_unavailable_when_the_path_cannot_hold_a_database(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(QueueUnavailable, match="adir"):
        Queue(tmp_path / "adir")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(QueueUnavailable, match="afile"):
        Queue(tmp_path / "afile" / "q.sqlite")


def test_take_is_fifo_marks_submitting_and_records_releases(queue, clock):
    for i in range(5):
        queue.enqueue(RAW, "b@example.test", [f"r{i}@x.test"], source="t")
        clock.t += 1
    rows = queue.take(3, now=clock.t, envelope=lambda r: f"bounces+{r['id']}@bounce.test")
    assert [r["address"] for r in rows] == ["r0@x.test", "r1@x.test", "r2@x.test"]
    assert all(queue.recipient(r["id"])["state"] == "submitting" for r in rows)
    assert queue.recipient(rows[0]["id"])["envelope_from"] == f"bounces+{rows[0]['id']}@bounce.test"
    assert queue.released_since(clock.t - 1) == 3
    queue.give_back([rows[2]["id"]], reason="connection lost")
    assert queue.recipient(rows[2]["id"])["state"] == "queued"
    assert queue.released_since(clock.t - 1) == 2


def test_take_honours_domain_caps_and_skips_suppressed(queue, clock):
    addrs = [f"u{i}@gmail.test" for i in range(10)] + ["x@other.test", "bad@other.test", "y@other.test"]
    queue.enqueue(RAW, "b@example.test", addrs, source="t")
    rows = queue.take(
        10,
        now=clock.t,
        domain_remaining={"gmail.test": 3},
        skip=lambda a: "hard bounce" if a.startswith("bad@") else None,
    )
    taken = [r["address"] for r in rows]
    assert taken == ["u0@gmail.test", "u1@gmail.test", "u2@gmail.test", "x@other.test", "y@other.test"]
    counts = queue.counts()
    assert counts["suppressed"] == 1
    assert counts["submitting"] == 5
    assert queue.released_since(clock.t - 1) == 5  # suppressed ones do not use the allowance
    assert queue.take(10, now=clock.t, domain_remaining={"gmail.test": 0}) == []


def test_retry_backoff_hides_rows_until_due(queue, clock):
    queue.enqueue(RAW, "b@example.test", ["a@x.test"], source="t")
    (row,) = queue.take(1, now=clock.t)
    queue.mark_retry(row["id"], "451 4.3.0 try later", delay=60)
    assert queue.take(5, now=clock.t + 59) == []
    assert [r["id"] for r in queue.take(5, now=clock.t + 60)] == [row["id"]]
    assert queue.last_errors(1)[0]["reason"].startswith("retry in 60s: 451")


def test_state_machine_and_counts_stay_consistent(queue, clock):
    queue.enqueue(RAW, "b@example.test", [f"r{i}@x.test" for i in range(6)], source="t")
    rows = queue.take(6, now=clock.t)
    qid = queue.mark_submitted(rows[0]["id"], "250 2.0.0 Ok: queued as 4XyZ12ab")
    assert qid == "4XyZ12ab"
    queue.mark_submitted(rows[1]["id"], "250 2.0.0 Ok: queued as ABCDE1")
    queue.mark_failed(rows[2]["id"], "550 5.1.1 no such user")
    queue.mark_retry(rows[3]["id"], "421 closing", delay=5)
    queue.record_result("4XyZ12ab", "r0@x.test", state="delivered", dsn="2.0.0", reply="250 ok")
    # a deferred line read again after a restart never overwrites the final result
    queue.record_result("4XyZ12ab", "r0@x.test", state="deferred", dsn="4.4.1", reply="timeout")
    assert queue.recipient(rows[0]["id"])["state"] == "delivered"
    queue.record_result("ABCDE1", "R1@X.TEST", state="bounced", dsn="5.1.1", reply="550 unknown")
    assert queue.record_result("NOTOURS", "z@x.test", state="delivered", dsn="2.0.0", reply="") is None
    queue.record_bounce(rows[4]["id"], status="5.1.1", diagnostic="user unknown", kind="hard")
    queue.record_bounce(rows[0]["id"], status="", diagnostic="abuse report", kind="complaint")
    assert queue.recipient(rows[0]["id"])["state"] == "delivered"
    assert queue.recipient(rows[0]["id"])["last_reply"] == "complaint: abuse report"
    expected = {"delivered": 1, "bounced": 2, "failed": 1, "queued": 1, "submitting": 1}
    assert real_counts(queue) == expected
    assert {k: v for k, v in queue.counts().items() if v} == expected
    with pytest.raises(ValueError, match="hard, soft or complaint"):
        queue.record_bounce(rows[4]["id"], status="5.0.0", diagnostic="x", kind="angry")


def test_operator_retry_and_drop(queue, clock):
    m1 = queue.enqueue(RAW, "b@example.test", ["a@x.test"], source="t")
    m2 = queue.enqueue(RAW, "b@example.test", ["b@x.test", "c@x.test"], source="t")
    rows = queue.take(3, now=clock.t)
    queue.mark_failed(rows[0]["id"], "550 no")
    assert queue.retry(state="failed") == 1
    assert queue.recipient(rows[0]["id"])["state"] == "queued"
    with pytest.raises(ValueError, match="being submitted"):
        queue.drop(m2)
    queue.give_back([r["id"] for r in rows[1:]], reason="test")
    assert queue.drop(m2) == 2
    assert queue.message(m2) is None
    assert real_counts(queue) == {"queued": 1}
    assert queue.counts()["queued"] == 1
    with pytest.raises(KeyError):
        queue.drop(m2)
    assert queue.message(m1) is not None


def test_queue_id_from_reply():
    assert queue_id_from_reply("250 2.0.0 Ok: queued as 3F2A81C0B2D") == "3F2A81C0B2D"
    assert queue_id_from_reply("250 2.0.0 Ok") is None


def test_picking_a_batch_and_counting_never_scan_the_recipients(tmp_path):
    """take() walks the ready index (O(batch)), status reads the trigger-kept counts. Asserted
    on SQLite's query plans rather than on timings, which a loaded CI machine makes noisy (the
    speed figures live in make bench)."""
    q = Queue(tmp_path / "big.sqlite", clock=lambda: 1000.0)
    for chunk in range(4):
        q.enqueue(RAW, "b@example.test", [f"u{chunk}-{i}@d{i % 50}.test" for i in range(50_000)], source="t")
    rows = q.take(100, now=2000.0, domain_remaining={"d0.test": 2})
    assert len(rows) == 100
    assert q.counts()["queued"] == 200_000 - 100

    def plan(sql):
        return " ".join(r[3] for r in q.connection.execute("EXPLAIN QUERY PLAN " + sql))

    take_plan = plan(
        "SELECT id FROM recipients INDEXED BY recipients_ready "
        "WHERE state='queued' AND next_attempt <= 1 ORDER BY next_attempt, id LIMIT 100"
    )
    assert "recipients_ready" in take_plan and "TEMP B-TREE" not in take_plan
    assert "recipients" not in plan("SELECT state, n FROM state_counts")
    q.close()


def test_full_database_refuses_cleanly_and_recovers(queue, clock):
    """SQLITE_FULL (a full disk, here a page limit) gives QueueUnavailable and writes nothing."""
    queue.enqueue(RAW, "b@example.test", ["first@x.test"], source="t")
    pages = queue.connection.execute("PRAGMA page_count").fetchone()[0]
    queue.connection.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = RAW + b"x" * 200_000
    with pytest.raises(QueueUnavailable, match="full"):
        queue.enqueue(big, "b@example.test", ["big@x.test"], source="t")
    assert real_counts(queue) == {"queued": 1}
    assert queue.counts()["queued"] == 1
    queue.connection.execute("PRAGMA max_page_count = 1073741823")
    queue.enqueue(big, "b@example.test", ["big@x.test"], source="t")
    assert queue.counts()["queued"] == 2
