"""Dot-led lines through the SMTP intake and through real Postfix smtpd (the Debian package,
with ``smtpd_forbid_bare_newline = normalize``): the same DATA bytes sent to both, and the
bodies each stores compared (Postfix's read with postcat from its hold queue).

Postfix removes the stuffed dot of a line that begins after a bare LF as after CRLF, and so
must the intake: clients that send bare LF (Python's smtplib with bytes) stuff after every LF,
and a message stored with the stuffing dots left in is silently changed.
"""

from __future__ import annotations

import base64
import random
import shutil
import smtplib
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import needs_postfix, pick_free_port, start_postfix, stop_postfix

from bulkrelay import config as cfg

pytestmark = needs_postfix

SENDER, RECIPIENT = "billing@example.test", "alice@customer.test"
HEAD = b"From: billing@example.test\r\nTo: alice@customer.test\r\nSubject: dots\r\n\r\n"


@pytest.fixture(scope="module")
def postfix():
    """(smtpd's port, config directory) of a Postfix that holds every message it accepts."""
    base = Path(tempfile.mkdtemp(prefix="bulkrelay-pfdots-", dir="/tmp"))
    base.chmod(0o755)  # Postfix's own processes read below it
    port = pick_free_port()
    etc = start_postfix(
        base,
        port,
        # the exclusions default to $mynetworks, which would exempt 127.0.0.1
        main_cf="smtpd_forbid_bare_newline = normalize\n"
        "smtpd_forbid_bare_newline_exclusions =\n"
        "smtpd_end_of_data_restrictions = check_client_access static:HOLD\n",
    )
    yield port, etc
    stop_postfix(etc)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def intake(tmp_path, intake_server):
    conf = cfg.parse(
        {
            "queue": {"path": str(tmp_path / "queue.sqlite")},
            "intake": {"listen": [f"127.0.0.1:{pick_free_port()}"], "allowed_networks": ["127.0.0.0/8"]},
        }
    )
    return intake_server(conf)


def send_data(port: int, data: bytes) -> str:
    """DATA's bytes sent as they are; returns its reply, after checking that it was the only
    reply (QUIT's 221 comes next: nothing after a false end was taken as a command)."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        smtp.ehlo("app.example.test")
        smtp.mail(SENDER)
        smtp.rcpt(RECIPIENT)
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(data)
        code, reply = smtp.getreply()
        assert code == 250, reply
        assert smtp.docmd("QUIT")[0] == 221
    finally:
        smtp.close()
    return reply.decode()


def postfix_body(etc: Path, reply: str) -> bytes:
    """The body Postfix stored for the message its ``reply`` names ("... queued as ID"), one LF
    a line (postcat prints records, not line ends)."""
    qid = reply.rpartition(" ")[2]
    shown = subprocess.run(["postcat", "-c", str(etc), "-bq", qid], capture_output=True, check=True).stdout
    return shown.removeprefix(b"\n")  # the empty line that ends the headers comes first


def intake_body(server) -> bytes:
    """The body of the one message the intake queued, one LF a line."""
    conn = sqlite3.connect(server.conf.queue.path)
    try:
        (raw,) = [body for (body,) in conn.execute("SELECT body FROM messages")]
    finally:
        conn.close()
    return raw.partition(b"\r\n\r\n")[2].replace(b"\r\n", b"\n")


def lines(end: bytes, count: int) -> bytes:
    """A body of ``count`` dot-led lines between two others, each line stuffed and ended with
    ``end``, then the end of DATA (after a CRLF that smtplib adds when the last end is LF)."""
    body = [b"top", *[b"..%d" % i for i in range(count)], b"bottom"]
    return b"".join(line + end for line in body) + b"\r\n" * (end == b"\n") + b".\r\n"


DOT_LED = {
    "smtplib's stuffing of bytes with bare LF": b"line one\n..hidden\n\r\n.\r\n",
    "CRLF": b"line one\r\n..hidden\r\n.\r\n",
    "mixed, the first body line too": b"..a\r\n..b\n..c\r\n.d\n...\n\n..\r\n.\r\n",
    "a stuffed dot alone": b"x\r\n..\n..\r\n.\r\n",
    **{f"{count} dot-led, {end!r}": lines(end, count) for end in (b"\n", b"\r\n") for count in (0, 1, 2)},
}


@pytest.mark.parametrize("name", DOT_LED)
def test_dot_led_lines_are_stored_as_postfix_stores_them(name, postfix, intake):
    port, etc = postfix
    data = HEAD + DOT_LED[name]
    send_data(intake.port, data)
    assert intake_body(intake) == postfix_body(etc, send_data(port, data))


AFTER = b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@customer.test>\r\nDATA\r\nforged\r\n"


@pytest.mark.parametrize("fake", [b"\n.\r\n", b"\r\n.\n", b"\n.\n"])
def test_a_lone_dot_next_to_a_bare_lf_ends_nothing_in_either(fake, postfix, intake):
    """SMTP smuggling: in both, one message holds what follows the false end. They differ in
    one line on purpose: Postfix drops the lone dot's line, the intake removes its dot as of
    every line that begins with one (RFC 5321 4.5.2) and keeps the line, empty. Neither is
    content a client can mean (one that stuffs sends ".." for a dot alone), and the one rule
    keeps read_data to one search with nothing but the stuffing dots taken out."""
    port, etc = postfix
    data = HEAD + b"hello" + fake + AFTER + b".\r\n"
    after = AFTER.replace(b"\r\n", b"\n")
    send_data(intake.port, data)
    assert intake_body(intake) == b"hello\n\n" + after
    assert postfix_body(etc, send_data(port, data)) == b"hello\n" + after


def sendmail_to_both(postfix, intake, message: bytes) -> tuple[bytes, bytes]:
    """``message`` sent with smtplib's sendmail (MAIL, RCPT and data()) to the intake and to
    Postfix (data() called directly there, for the reply that names its queue id); returns the
    two stored bodies (the intake's, Postfix's)."""
    port, etc = postfix
    with smtplib.SMTP("127.0.0.1", intake.port, timeout=30) as smtp:
        assert smtp.sendmail(SENDER, [RECIPIENT], message) == {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.mail(SENDER)
        smtp.rcpt(RECIPIENT)
        code, reply = smtp.data(message)
    assert code == 250, reply
    return intake_body(intake), postfix_body(etc, reply.decode())


def test_smtplib_sendmail_of_bytes_with_bare_lf(postfix, intake):
    """Python's smtplib stuffs a bytes message after every LF and leaves bare LF as it is: the
    intake stores the lines as written, as Postfix does."""
    message = HEAD.replace(b"\r\n", b"\n") + b"line one\n.hidden\n..two\n.\nlast\n"
    ours, theirs = sendmail_to_both(postfix, intake, message)
    assert ours == b"line one\n.hidden\n..two\n.\nlast\n\n"  # smtplib adds CRLF after the last LF
    assert theirs == ours


def test_an_invoice_of_bare_lf_lines_over_the_line_limit(postfix, intake):
    """A 200 KB invoice sent as bytes with bare LF (smtplib.sendmail), which holds no CRLF for
    more than the intake's 64 KiB line limit: Postfix takes its lines as lines, and so must the
    intake (it stored nothing and answered "500 Line too long" before)."""
    pdf = base64.encodebytes(random.Random(16).randbytes(150_000))  # lines of 76, each with LF
    message = HEAD.replace(b"\r\n", b"\n") + b"Your invoice, attached.\n\n" + pdf
    assert len(message) > 200_000 and b"\r\n" not in message
    ours, theirs = sendmail_to_both(postfix, intake, message)
    assert theirs == ours
    assert ours.endswith(pdf + b"\n")  # smtplib adds CRLF after the last LF
