"""Group commit of the SMTP intake: concurrent sessions share one COMMIT, no session hears 250
before the transaction holding its message is committed, and a failed COMMIT answers 451 to
every session of its group and leaves none of them stored.

A real intake, real SQLite; the queue is instrumented only to hold its COMMIT at a gate (so the
test decides which sessions share a transaction) and to record what was committed when.
"""

import sqlite3
import threading
from contextlib import contextmanager

import pytest
from conftest import IntakeServer
from conftest import pick_free_port as free_port

from bulkrelay import config as cfg
from bulkrelay.queue import Queue

BODY = "From: billing@example.test\r\nTo: {rcpt}\r\nSubject: Invoice\r\n\r\nHello\r\n"


class GatedQueue(Queue):
    """A Queue that waits at ``gate`` before each COMMIT, can fail it, and logs what it did."""

    def __init__(self, path, log, gate, *, fail_commit=False):
        super().__init__(path)
        self.log, self.gate, self.fail_commit = log, gate, fail_commit

    def enqueue_group(self, group):
        self.log.append(("group", sorted(r for s in group for r in s.recipients)))
        results = super().enqueue_group(group)
        self.log.append(("committed", results))
        return results

    @contextmanager
    def transaction(self, *, durable=True):
        with super().transaction(durable=durable) as conn:
            yield conn
            self.log.append(("before-commit", None))
            assert self.gate.wait(30)
            if self.fail_commit:
                raise sqlite3.OperationalError("disk I/O error (test)")


@pytest.fixture
def gated(tmp_path):
    """(start(fail_commit=False) -> server, log, gate); the gate starts closed."""
    started = []

    def start(*, fail_commit=False):
        conf = cfg.parse(
            {
                "queue": {"path": str(tmp_path / "queue.sqlite")},
                "intake": {"listen": [f"127.0.0.1:{free_port()}"], "allowed_networks": ["127.0.0.0/8"]},
            }
        )
        Queue(conf.queue.path).close()  # the schema, before the gated connection opens
        log, gate = [], threading.Event()
        server = IntakeServer(conf, lambda: GatedQueue(conf.queue.path, log, gate, fail_commit=fail_commit))
        started.append((server, gate))
        return server, log, gate

    yield start
    for server, gate in started:
        gate.set()
        server.close()


class Session(threading.Thread):
    """One SMTP session sending one message; ``reply`` is (code, text) once DATA was answered."""

    def __init__(self, server, rcpt, log):
        super().__init__(daemon=True)
        self.server, self.rcpt, self.log = server, rcpt, log
        self.reply = None
        self.smtp = server.client()
        self.smtp.ehlo("app.example.test")
        self.smtp.mail("billing@example.test")
        self.smtp.rcpt(rcpt)

    def run(self):
        self.reply = self.smtp.data(BODY.format(rcpt=self.rcpt).encode())
        self.log.append(("reply", self.rcpt, self.reply[0]))
        self.smtp.quit()


def stored(server):
    conn = sqlite3.connect(server.conf.queue.path)
    try:
        return {
            "messages": conn.execute("SELECT count(*) FROM messages").fetchone()[0],
            "recipients": sorted(r for (r,) in conn.execute("SELECT address FROM recipients")),
            "events": conn.execute("SELECT count(*) FROM events WHERE type = 'accepted'").fetchone()[0],
        }
    finally:
        conn.close()


def wait_for(predicate, what):
    for _ in range(1000):
        if predicate():
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_session_opens_no_transaction(gated):
    server, log, _gate = gated()
    server.close()
    assert log == []


def test_one_session_answers_after_its_commit(gated):
    server, log, gate = gated()
    one = Session(server, "a@customer.test", log)
    one.start()
    wait_for(lambda: ("before-commit", None) in log, "the COMMIT")
    one.join(0.5)
    assert one.is_alive() and one.reply is None  # held at the COMMIT: no reply yet
    gate.set()
    one.join(10)
    assert one.reply[0] == 250
    kinds = [entry[0] for entry in log]
    assert kinds == ["group", "before-commit", "committed", "reply"]
    assert log[2][1] == [int(one.reply[1].split()[-1])]  # the id in the 250 is the committed one
    assert stored(server) == {"messages": 1, "recipients": ["a@customer.test"], "events": 1}


def one_then_two(server, log, gate):
    """Session a alone in the first group; b and c send while its COMMIT is held at the gate,
    so they wait together for the next one. Returns the three sessions after their replies."""
    first = Session(server, "a@customer.test", log)
    first.start()
    wait_for(lambda: ("before-commit", None) in log, "the first COMMIT")
    second, third = Session(server, "b@customer.test", log), Session(server, "c@customer.test", log)
    second.start()
    third.start()
    wait_for(lambda: server.committer.waiting == 2, "b and c waiting for the next transaction")
    threading.Event().wait(0.2)
    assert first.reply is None and second.reply is None and third.reply is None
    gate.set()
    for session in (first, second, third):
        session.join(10)
    assert [entry[1] for entry in log if entry[0] == "group"] == [
        ["a@customer.test"],
        ["b@customer.test", "c@customer.test"],
    ]
    return first, second, third


def test_two_sessions_waiting_share_one_commit(gated):
    server, log, gate = gated()
    sessions = one_then_two(server, log, gate)
    assert [session.reply[0] for session in sessions] == [250, 250, 250]
    # every 250 comes after the COMMIT of the group holding that message
    for session in sessions:
        reply_at = log.index(("reply", session.rcpt, 250))
        group_at = next(i for i, entry in enumerate(log) if entry[0] == "group" and session.rcpt in entry[1])
        committed_at = next(i for i, entry in enumerate(log) if entry[0] == "committed" and i > group_at)
        assert committed_at < reply_at, log
    assert stored(server)["recipients"] == ["a@customer.test", "b@customer.test", "c@customer.test"]
    assert stored(server)["events"] == 3


def test_failed_group_commit_answers_451_to_every_session_and_stores_nothing(gated):
    server, log, gate = gated(fail_commit=True)
    sessions = one_then_two(server, log, gate)
    assert [session.reply[0] for session in sessions] == [451, 451, 451]
    assert not any(entry[0] == "committed" for entry in log)
    assert stored(server) == {"messages": 0, "recipients": [], "events": 0}


def test_a_refused_message_does_not_fail_its_group(tmp_path):
    """Queue.enqueue_group: a message refused before any write (no recipient) fails alone."""
    from bulkrelay.queue import Submission  # noqa: PLC0415

    queue = Queue(tmp_path / "queue.sqlite")
    try:
        raw = BODY.format(rcpt="a@customer.test").encode()
        results = queue.enqueue_group(
            [Submission(raw, "billing@example.test", ["a@customer.test"], "smtp:x"),
             Submission(raw, "billing@example.test", [" "], "smtp:x"),
             Submission(raw, "billing@example.test", ["b@customer.test"], "smtp:x")]
        )  # fmt: skip
        assert isinstance(results[0], int) and isinstance(results[2], int)
        assert isinstance(results[1], ValueError)
        assert queue.enqueue_group([]) == []
    finally:
        queue.close()
    conn = sqlite3.connect(tmp_path / "queue.sqlite")
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    conn.close()
