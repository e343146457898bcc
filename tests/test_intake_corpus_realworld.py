"""Real-world mail through the real SMTP intake: every message of the corpus flufl.bounce ships
(Mailman's samples, written by many MTAs nobody here wrote, with their own line ends, long
lines, dot-led lines and broken headers) sent by Python's smtplib (which dot-stuffs), each with its line ends
made CRLF first as RFC 5321 asks of a client, and each again with bare LF as the files have it
(smtplib sends a bytes message's bare LFs as they are and stuffs a dot after every LF).

The corpus is fetched from PyPI at test time (never copied into the tree). Over the wire, each
message must get what the intake's checks (``normalise.accept``) give the same bytes handed over
directly: queued with the same body, or refused with the same reply; besides those, only a line
over SMTP's 1000 octets may be refused (500), which the test measures itself. Nothing is lost
or stored twice.
"""

from __future__ import annotations

import re
import smtplib
import sqlite3

from conftest import IntakeServer, pick_free_port

from bulkrelay import config as cfg
from bulkrelay.intake import IntakeSMTP
from bulkrelay.message import BadMessage
from bulkrelay.normalise import accept
from bulkrelay.queue import Queue

FLUFL = "flufl.bounce==4.0"
DATA_DIR = "flufl/bounce/tests/data/"
SENDER, RECIPIENT = "billing@example.test", "alice@customer.test"


def crlf(raw: bytes) -> bytes:
    """Every line end CRLF, and a CRLF after the last line (as ``SMTP.data`` adds one)."""
    return with_end(re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", raw))


def with_end(raw: bytes) -> bytes:
    """``raw`` with the CRLF that ``SMTP.data`` adds when it does not end with one."""
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def dot_led(raw: bytes) -> bytes:
    """``raw`` with a dot before every body line (which smtplib then stuffs)."""
    head, blank, body = crlf(raw).partition(b"\r\n\r\n")
    return head + blank + re.sub(rb"(?m)^", b".", body) if body else raw


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def expected(sent: bytes, max_size: int) -> bytes | str:
    """The body ``accept`` keeps from the bytes as sent, or the reply it refuses them with."""
    try:
        return body_of(
            accept(with_end(sent), max_size=max_size, mail_from=SENDER, recipients=[RECIPIENT]).raw
        )
    except BadMessage as exc:
        return exc.smtp_reply()


def test_every_corpus_message_gets_over_smtp_what_the_checks_give_it(tmp_path, pypi_sdist):
    corpus = {
        name: data
        for name, data in pypi_sdist(FLUFL).items()
        if name.startswith(DATA_DIR) and not name.endswith(".py")
    }
    assert len(corpus) > 100, sorted(corpus)
    # none of its lines starts with a dot: each message also goes with a dot before every body line
    corpus |= {f"{name} (dot-led)": dot_led(raw) for name, raw in corpus.items()}
    sent = {name: crlf(raw) for name, raw in corpus.items()}
    sent |= {f"{name} (bare LF)": raw.replace(b"\r\n", b"\n") for name, raw in sent.items()}
    conf = cfg.parse(
        {
            "queue": {"path": str(tmp_path / "queue.sqlite")},
            "intake": {"listen": [f"127.0.0.1:{pick_free_port()}"], "allowed_networks": ["127.0.0.0/8"]},
        }
    )
    server = IntakeServer(conf, lambda: Queue(conf.queue.path))
    answers = {}
    try:
        with server.client() as smtp:
            for name, raw in sorted(sent.items()):
                try:
                    smtp.sendmail(SENDER, [RECIPIENT], raw)
                    answers[name] = "queued"
                except smtplib.SMTPDataError as exc:
                    answers[name] = f"{exc.smtp_code} {exc.smtp_error.decode()}"
    finally:
        server.close()
    conn = sqlite3.connect(conf.queue.path)
    stored = iter([body_of(body) for (body,) in conn.execute("SELECT body FROM messages ORDER BY id")])
    conn.close()
    queued = [name for name, answer in answers.items() if answer == "queued"]
    long_line = [name for name, answer in answers.items() if answer.startswith("500 Line too long")]
    checked = len(answers) - len(queued) - len(long_line)
    print(
        f"{len(sent)} messages: {len(queued)} queued, {len(long_line)} refused for a long line, "
        f"{checked} refused by the checks"
    )
    for name, answer in answers.items():
        if name in long_line:
            longest = max(len(line) for line in with_end(sent[name]).split(b"\n"))
            assert longest + 1 > IntakeSMTP.line_length_limit, name  # a line as sent, with its LF
            continue
        want = expected(sent[name], conf.intake.max_message_size)
        if answer == "queued":
            assert next(stored) == want, name
        else:
            assert answer == want, name
    assert next(stored, None) is None  # nothing stored twice or for a refused message
    # stuffed dots reached the queue, after CRLF and after bare LF
    assert any(name.endswith("(dot-led)") for name in queued)
    assert any(name.endswith("(dot-led) (bare LF)") for name in queued)
