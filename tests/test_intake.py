"""SMTP intake against a real aiosmtpd server on loopback and a real SQLite queue.

250 only after the COMMIT; 451 (never 250) when the database is locked or full; bad input refused
with a reason and nothing queued; clients outside the allow-list get 554 at connect.
"""

import asyncio
import email.utils
import smtplib
import sqlite3
import ssl
import subprocess

import pytest
from conftest import IntakeServer as Intake
from conftest import pick_free_port as free_port
from support import RawClient

from bulkrelay import config as cfg
from bulkrelay.intake import (
    IntakeHandler,
    hash_password,
    load_auth_file,
    parse_networks,
    peer_allowed,
    serve_intake,
    verify_password,
)
from bulkrelay.queue import Queue

GOOD = (
    b"From: Billing <billing@example.test>\r\nTo: alice@customer.test\r\nSubject: Invoice 1\r\n"
    b"Message-ID: <inv-1@example.test>\r\n\r\nHello\r\n"
)


def submit(smtp, data=GOOD):
    """One transaction billing@example.test -> alice@customer.test in an open session: the
    reply to DATA."""
    smtp.mail("billing@example.test")
    smtp.rcpt("alice@customer.test")
    return smtp.data(data)


def make_conf(tmp_path, **intake):
    data = {
        "queue": {"path": str(tmp_path / "queue.sqlite")},
        "intake": {"listen": [f"127.0.0.1:{free_port()}"], "allowed_networks": ["127.0.0.0/8"], **intake},
    }
    return cfg.parse(data)


@pytest.fixture
def intake(tmp_path):
    conf = make_conf(tmp_path, max_message_size=4096)
    server = Intake(conf, lambda: Queue(conf.queue.path))
    yield server
    server.close()


def messages(conf):
    conn = sqlite3.connect(conf.queue.path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchall():
            return []  # the queue was never even opened
        return conn.execute("SELECT id, mail_from, source, body FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


def test_accepts_and_commits_before_250(intake):
    with intake.client() as smtp:
        code, msg = smtp.ehlo("app.example.test")
        assert b"SIZE 4096" in msg
        smtp.mail("billing@example.test")
        smtp.rcpt("alice@customer.test")
        smtp.rcpt("bob@customer.test")
        code, reply = smtp.data(GOOD)
    assert code == 250
    message_id = int(reply.decode().rsplit(" ", 1)[1])
    q = Queue(intake.conf.queue.path)
    try:
        stored = q.message(message_id)
        assert stored["source"] == "smtp:127.0.0.1"
        assert [r["address"] for r in stored["recipients"]] == ["alice@customer.test", "bob@customer.test"]
        body = q.body(message_id)
        assert b"Received: from app.example.test ([127.0.0.1])" in body.split(b"\r\n\r\n")[0]
        assert body.endswith(GOOD)
    finally:
        q.close()


@pytest.mark.parametrize(
    ("helo", "shown"),
    [
        (b"app.example.test", b"app.example.test"),
        (b"[192.0.2.1]", b"[192.0.2.1]"),
        (b"app\rx.example.test", b"appx.example.test"),  # a bare CR must not end the header line
        (b"app example.test", b"appexample.test"),
        (b"app\x7f\x01\tx.test", b"appx.test"),
        (b"a" * 100, b"a" * 64),
        (b"\x01\x7f", b"unknown"),  # nothing printable left: still a well-formed "from" clause
    ],
)
def test_the_helo_name_in_received_is_printable_ascii_without_space(intake, helo, shown):
    """The client's EHLO name goes into the Received: header of every message it sends:
    control bytes, white space and DEL are dropped, the name is cut at 64 characters, and a
    name with nothing left reads "unknown". Raw socket: smtplib refuses to send these names."""
    client = RawClient(intake.port)
    try:
        assert client.reply().startswith(b"220")
        for line, code in [
            (b"EHLO " + helo, b"250"),
            (b"MAIL FROM:<billing@example.test>", b"250"),
            (b"RCPT TO:<alice@customer.test>", b"250"),
            (b"DATA", b"354"),
            (GOOD + b".", b"250"),
        ]:
            client.send(line + b"\r\n")
            assert client.reply().startswith(code)
    finally:
        client.close()
    (_id, _from, _source, body), *_ = messages(intake.conf)
    assert body.split(b"\r\n", 1)[0] == b"Received: from " + shown + b" ([127.0.0.1])"


def test_the_reference_is_kept_out_of_the_message_and_on_its_events(intake):
    with intake.client() as smtp:
        smtp.ehlo("app.example.test")
        code, reply = submit(smtp, GOOD.replace(b"Subject:", b"X-Bulkrelay-Ref: INV-1\r\nSubject:"))
    assert code == 250
    q = Queue(intake.conf.queue.path)
    try:
        assert b"X-Bulkrelay-Ref" not in q.body(int(reply.decode().rsplit(" ", 1)[1]))
        got = [(e["type"], e["ref"], e["source"], e["recipient"]) for e in q.events_since(0)]
        assert got == [("accepted", "INV-1", "intake", "alice@customer.test")]
    finally:
        q.close()


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (GOOD.replace(b"From: Billing <billing@example.test>\r\n", b""), 550, "no From:"),
        (GOOD.replace(b"Subject: Invoice 1", "Subject: Rechnung für".encode("latin-1")), 550, "not UTF-8"),
        (b"this is not a mail\r\njust text\r\n", 550, "header"),
        (
            GOOD.replace(b"Subject:", b"X-Bulkrelay-Ref: \r\nSubject:"),
            550,
            "X-Bulkrelay-Ref: header is empty",
        ),
    ],
)
def test_bad_messages_refused_nothing_queued(intake, raw, code, words):
    with intake.client() as smtp:
        smtp.ehlo("app.example.test")
        got, reply = submit(smtp, raw)
        assert got == code and words in reply.decode()
        # the session goes on: a good message right after is accepted
        assert submit(smtp)[0] == 250
    assert len(messages(intake.conf)) == 1


def test_invalid_recipient_refused_at_rcpt(intake):
    with intake.client() as smtp:
        smtp.ehlo("app.example.test")
        smtp.mail("billing@example.test")
        code, reply = smtp.rcpt("alice@localhost")
        assert code == 553 and b"not fully qualified" in reply
        code, _ = smtp.rcpt("alice@customer.test")
        assert code == 250
        assert smtp.data(GOOD)[0] == 250
    rows = messages(intake.conf)
    assert len(rows) == 1


def test_invalid_sender_refused(intake):
    with intake.client() as smtp:
        smtp.ehlo("app.example.test")
        code, _ = smtp.mail("billing@@example.test")
        assert code in (501, 553)
    assert messages(intake.conf) == []


def test_oversized_refused(intake):
    with intake.client() as smtp:
        smtp.ehlo("app.example.test")
        code, _ = submit(smtp, GOOD + (b"x" * 900 + b"\r\n") * 6)
        assert code == 552
    assert messages(intake.conf) == []


def test_locked_database_gives_451_never_250(tmp_path):
    conf = make_conf(tmp_path)
    Queue(conf.queue.path).close()  # schema exists
    server = Intake(conf, lambda: Queue(conf.queue.path, busy_timeout=0.3))
    try:
        locker = sqlite3.connect(conf.queue.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        with server.client() as smtp:
            smtp.ehlo("app.example.test")
            code, reply = submit(smtp)
            assert code == 451, reply
            assert reply.startswith(b"4.3.0")
            locker.execute("ROLLBACK")
            locker.close()
            # the client retries (same session) and now it is stored, exactly once
            assert submit(smtp)[0] == 250
    finally:
        server.close()
    assert len(messages(conf)) == 1


def test_disk_full_gives_451(tmp_path):
    conf = make_conf(tmp_path)

    def open_full_queue():
        q = Queue(conf.queue.path)
        pages = q.connection.execute("PRAGMA page_count").fetchone()[0]
        q.connection.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on growth
        return q

    server = Intake(conf, open_full_queue)
    try:
        with server.client() as smtp:
            smtp.ehlo("app.example.test")
            code, _ = submit(smtp, GOOD + (b"x" * 900 + b"\r\n") * 100)
            assert code == 451
    finally:
        server.close()
    assert messages(conf) == []


def test_client_outside_allowed_networks_gets_554(tmp_path):
    conf = make_conf(tmp_path, allowed_networks=["203.0.113.192/26", "2001:db8:113::/64"])
    server = Intake(conf, lambda: Queue(conf.queue.path))
    try:
        with pytest.raises(smtplib.SMTPConnectError) as info:
            server.client()
        assert info.value.smtp_code == 554
        # raw socket: 554 banner, EHLO answered 503, then closed
        client = RawClient(server.port)
        try:
            assert client.reply().startswith(b"554 ")
            client.send(b"EHLO x\r\n")
            assert client.reply().startswith(b"503 ")
            assert client.reply() == b""
        finally:
            client.close()
    finally:
        server.close()
    assert not (tmp_path / "queue.sqlite").exists() or messages(conf) == []


def test_peer_allowed_v4_v6_mapped():
    nets = parse_networks(["203.0.113.192/26", "2001:db8:113::/64"])
    assert peer_allowed(("203.0.113.206", 1234), nets)
    assert peer_allowed(("::ffff:203.0.113.206", 1234, 0, 0), nets)
    assert peer_allowed(("2001:db8:113::6", 1234, 0, 0), nets)
    assert not peer_allowed(("198.51.100.31", 1234), nets)
    assert not peer_allowed(("2001:db8:100::31", 1, 0, 0), nets)
    assert not peer_allowed(None, nets)
    assert not peer_allowed(("127.0.0.1", 1), [])


def test_password_hash_roundtrip(tmp_path):
    stored = hash_password("s3cret", iterations=1000)
    assert verify_password(b"s3cret", stored)
    assert not verify_password(b"wrong", stored)
    path = tmp_path / "users"
    path.write_text(f"# comment\napp1:{stored}\n")
    assert load_auth_file(str(path)) == {"app1": stored}
    path.write_text("app1:plaintext\n")
    with pytest.raises(ValueError, match="line 1"):
        load_auth_file(str(path))


@pytest.fixture
def tls_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subj = "/CN=relay.example.test"
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subj]
    subprocess.run(
        [*cmd, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_starttls_and_auth(tmp_path, tls_files):
    cert, key = tls_files
    users = tmp_path / "users"
    users.write_text(f"app1:{hash_password('s3cret', iterations=1000)}\n")
    conf = make_conf(tmp_path, tls_cert=cert, tls_key=key, auth_file=str(users))
    server = Intake(conf, lambda: Queue(conf.queue.path))
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    try:
        with server.client() as smtp:
            smtp.ehlo("app.example.test")
            assert smtp.has_extn("starttls")
            # AUTH is not offered before TLS, and mail without AUTH is refused
            assert not smtp.has_extn("auth")
            code, _ = smtp.mail("billing@example.test")
            assert code == 530
        with server.client() as smtp:
            smtp.starttls(context=context)
            smtp.ehlo("app.example.test")
            assert "PLAIN" in smtp.esmtp_features["auth"]
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("app1", "wrong")
            smtp.login("app1", "s3cret")
            assert submit(smtp)[0] == 250
    finally:
        server.close()
    rows = messages(conf)
    assert len(rows) == 1 and b"with ESMTPSA" in rows[0][3]


def test_serve_intake_runs_until_cancelled(tmp_path):
    """The coroutine `bulkrelay serve` runs: listens, queues through its own connection, stops."""
    conf = make_conf(tmp_path)
    port = int(conf.intake.listen[0].rpartition(":")[2])

    async def scenario():
        task = asyncio.create_task(serve_intake(conf, None))
        for _ in range(50):
            await asyncio.sleep(0.05)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                continue

        def submit():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                return smtp.sendmail("billing@example.test", ["alice@customer.test"], GOOD)

        assert await asyncio.to_thread(submit) == {}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(scenario())
    assert len(messages(conf)) == 1


def test_serve_intake_without_listen_returns(tmp_path):
    conf = cfg.parse({"queue": {"path": str(tmp_path / "q.sqlite")}})
    asyncio.run(serve_intake(conf, None))
    assert not (tmp_path / "q.sqlite").exists()


def test_received_date_is_the_clocks_second_formatted_once_a_second():
    times = iter([0.0, 0.99, 1.0, 86400 * 365.25 * 56 + 0.5])
    handler = IntakeHandler(None, networks=[], max_size=1000, hostname="r.test", clock=lambda: next(times))
    session = type("Session", (), {"host_name": "app", "peer": ("127.0.0.1", 1)})()
    dates = [handler.received_header(session, "ESMTP").rsplit(b"\t", 1)[1] for _ in range(4)]
    assert dates == [
        b"Thu, 01 Jan 1970 00:00:00 GMT\r\n",
        b"Thu, 01 Jan 1970 00:00:00 GMT\r\n",
        b"Thu, 01 Jan 1970 00:00:01 GMT\r\n",
        email.utils.formatdate(86400 * 365.25 * 56 + 0.5, usegmt=True).encode() + b"\r\n",
    ]
