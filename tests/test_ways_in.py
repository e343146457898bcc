"""The three ways in (SMTP intake, hot folder, `bulkrelay enqueue`) treat a message alike.

Each case goes in through every way, then the release loop submits the queue to a loopback
receiver; the test checks the SMTP reply / the file's final place / the CLI's exit and message,
the reason text, and what reached the receiver.
"""

import asyncio
import email
import email.header
import email.policy
import logging
import os
import smtplib
from dataclasses import dataclass
from pathlib import Path

import pytest

from bulkrelay import cli
from bulkrelay import config as configmod
from bulkrelay.hotfolder import scan_hotfolder
from bulkrelay.queue import Queue
from bulkrelay.service import ReleaseLoop

WAYS = ("intake", "hotfolder", "cli")
HEAD = b"From: Billing <billing@example.test>\r\nTo: alice@customer.test\r\nSubject: Invoice\r\n"
GOOD = HEAD + b"Message-ID: <m1@example.test>\r\n\r\nHello\r\n"


@dataclass
class Outcome:
    queued: bool
    reason: str  # the SMTP reply text, the .reason file, or the CLI's stderr


class Ways:
    def __init__(self, tmp_path, config_path, receiver, intake, capsys):
        self.tmp_path = tmp_path
        self.config_path = config_path
        self.config = configmod.load(str(config_path))
        self.receiver = receiver
        self.intake = intake
        self.capsys = capsys
        self.count = 0

    def send(self, way: str, raw: bytes, rcpts=("alice@customer.test",)) -> Outcome:
        self.count += 1
        name = f"m{self.count}.eml"
        if way == "intake":
            with smtplib.SMTP("127.0.0.1", self.intake.port, timeout=30) as smtp:
                try:
                    smtp.sendmail("billing@example.test", list(rcpts), raw)
                except smtplib.SMTPResponseException as exc:
                    return Outcome(False, f"{exc.smtp_code} {exc.smtp_error.decode()}")
            return Outcome(True, "")
        if way == "hotfolder":
            root = Path(self.config.hotfolder.path)
            (root / "tmp").mkdir(parents=True, exist_ok=True)
            (root / "incoming").mkdir(parents=True, exist_ok=True)
            (root / "tmp" / name).write_bytes(raw)
            os.rename(root / "tmp" / name, root / "incoming" / name)
            result = scan_hotfolder(self.config, None)
            if result.done == [name]:
                return Outcome(True, "")
            assert result.rejected == [name]
            assert not (root / "incoming" / name).exists()
            return Outcome(False, (root / "rejected" / f"{name}.reason").read_text())
        path = self.tmp_path / name
        path.write_bytes(raw)
        self.capsys.readouterr()
        code = cli.main(["enqueue", "--config", str(self.config_path), str(path)])
        err = self.capsys.readouterr().err
        return Outcome(code == 0, err)

    def deliver(self) -> list[dict]:
        queue = Queue(self.config.queue.path)
        loop = ReleaseLoop(self.config, queue)

        async def go():
            await loop.step()
            await loop.submitter.close()

        asyncio.run(go())
        queue.close()
        return self.receiver.messages


@pytest.fixture
def make_ways(tmp_path, sender_config, smtp_receiver, free_port, intake_server, capsys):
    def make(from_domains=()):
        receiver = smtp_receiver(pipelining=True)
        path = sender_config(
            receiver.port, intake_port=free_port(), hotfolder=tmp_path / "hot", from_domains=from_domains
        )
        config = configmod.load(str(path))
        return Ways(tmp_path, path, receiver, intake_server(config), capsys)

    return make


@pytest.fixture
def ways(make_ways):
    return make_ways()


def header_names(content: bytes) -> list[str]:
    head = content.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


@pytest.mark.parametrize("way", WAYS)
def test_bcc_is_stripped(ways, way):
    raw = HEAD + b"Bcc: Hidden <hidden@customer.test>\r\nMessage-ID: <b@example.test>\r\n\r\nHello\r\n"
    assert ways.send(way, raw, rcpts=("alice@customer.test", "hidden@customer.test")).queued
    got = ways.deliver()
    assert sorted(m["rcpt_tos"][0] for m in got) == ["alice@customer.test", "hidden@customer.test"]
    for message in got:
        assert b"Bcc" not in message["content"] and b"hidden@" not in message["content"]


@pytest.mark.parametrize("way", WAYS)
def test_added_message_id_and_date_go_below_the_trace_headers(ways, way):
    raw = b"Received: from app.example.test by erp.example.test; Mon, 30 Nov 2026 03:00:00 +0000\r\n" + HEAD
    raw += b"\r\nHello\r\n"
    assert ways.send(way, raw).queued
    (message,) = ways.deliver()
    names = header_names(message["content"])
    traces = 2 if way == "intake" else 1  # the intake adds its own Received: on top
    assert names[:traces] == ["Received"] * traces
    assert set(names[traces : traces + 2]) == {"Message-ID", "Date"}
    if way == "intake":
        assert b"(bulkrelay intake)" in message["content"].split(b"\r\n\tby", 1)[1].split(b"\r\n", 1)[0]


@pytest.mark.parametrize("way", WAYS)
def test_nul_is_refused_with_a_reason(ways, way):
    outcome = ways.send(way, GOOD.replace(b"Hello", b"Hel\x00lo secret-body"))
    assert not outcome.queued
    assert "NUL" in outcome.reason and "secret-body" not in outcome.reason
    if way == "intake":
        assert outcome.reason.startswith("550 ")
    assert ways.deliver() == []


@pytest.mark.parametrize("way", WAYS)
def test_bare_cr_and_lf_become_crlf(ways, way):
    raw = b"From: billing@example.test\nTo: alice@customer.test\rSubject: ends\r\n\none\ntwo\rthree\r\n"
    assert ways.send(way, raw).queued
    (message,) = ways.deliver()
    content = message["content"]
    assert content.endswith(b"Subject: ends\r\n" + content.split(b"Subject: ends\r\n")[1])
    assert content.split(b"\r\n\r\n", 1)[1] == b"one\r\ntwo\r\nthree\r\n"
    assert content.count(b"\n") == content.count(b"\r\n") == content.count(b"\r")


LONG_HTML = b"<html><body>" + b"<td>Position 4711 Widget 12,00 EUR</td>" * 60 + b"</body></html>"
REPAIRS = {
    "bom": (b"\xef\xbb\xbf" + GOOD, "byte order mark"),
    "mbox": (b"From billing@example.test Mon Nov 30 03:00:00 2026\r\n" + GOOD, "mbox 'From ' line"),
    "long-body": (
        HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + LONG_HTML + b"\r\n",
        "re-encoded part 1 (text/html) to quoted-printable",
    ),
    "long-to": (
        b"From: billing@example.test\r\nTo: "
        + b",".join(b"c%03d@customer.test" % i for i in range(100))
        + b"\r\nSubject: many\r\n\r\nHello\r\n",
        "header To: refolded",
    ),
    "8bit-subject": (GOOD.replace(b"Subject: Invoice", "Subject: Rechnung für Köln".encode()), "RFC 2047"),
}


@pytest.mark.parametrize("case", sorted(REPAIRS))
@pytest.mark.parametrize("way", WAYS)
def test_repairs(ways, way, case, caplog):
    raw, words = REPAIRS[case]
    rcpts = [f"c{i:03d}@customer.test" for i in range(100)] if case == "long-to" else ["alice@customer.test"]
    with caplog.at_level(logging.INFO):
        outcome = ways.send(way, raw, rcpts=rcpts)
    assert outcome.queued, outcome.reason
    logged = outcome.reason if way == "cli" else caplog.text
    assert words in logged and "repaired" in logged
    got = ways.deliver()
    assert len(got) == len(rcpts)
    content = got[0]["content"]
    assert all(len(line) <= 998 for line in content.split(b"\r\n"))
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert not content.startswith(b"\xef\xbb\xbf") and not content.startswith(b"From ")
    if case == "long-body":
        assert parsed.get_payload(decode=True) == LONG_HTML + b"\r\n"  # what the reader sees
    elif case == "long-to":
        assert [a.addr_spec for a in parsed["To"].addresses] == rcpts
    elif case == "8bit-subject":
        assert str(parsed["Subject"]) == "Rechnung für Köln"
        assert content.isascii() or b"\r\n\r\n" in content  # headers are ASCII now
        assert content.split(b"\r\n\r\n", 1)[0].isascii()
    else:
        assert parsed["Subject"] == "Invoice" and parsed.get_content().rstrip() == "Hello"


FROM_CASES = {
    # From: header -> accepted with from_domains = ["example.test", "billing.example.org"]
    "in-domain": (b"From: Billing <billing@example.test>", True),
    "case-differs": (b"From: billing@EXAMPLE.test", True),
    "second-domain": (b"From: billing@billing.example.org", True),
    "two-both-allowed": (b"From: a@example.test, b@billing.example.org", True),
    "foreign": (b"From: ceo@bank.example", False),
    "subdomain": (b"From: x@mail.example.test", False),
    "two-one-foreign": (b"From: a@example.test, ceo@bank.example", False),
}


@pytest.mark.parametrize("case", sorted(FROM_CASES))
@pytest.mark.parametrize("way", ["intake", "hotfolder"])
def test_from_must_be_a_sending_domain(make_ways, way, case):
    ways = make_ways(from_domains=("example.test", "billing.example.org"))
    header, allowed = FROM_CASES[case]
    raw = header + b"\r\nTo: alice@customer.test\r\nSubject: s\r\n\r\nHello\r\n"
    outcome = ways.send(way, raw)
    assert outcome.queued is allowed, outcome.reason
    if allowed:
        assert len(ways.deliver()) == 1
        return
    assert "not in a sending domain of this relay (billing.example.org, example.test)" in outcome.reason
    assert "relay_sender__extra_from_domains" in outcome.reason
    assert "bank.example" not in outcome.reason and "mail.example" not in outcome.reason
    if way == "intake":
        assert outcome.reason.startswith("550 5.7.1 ")
    assert ways.deliver() == []


@pytest.mark.parametrize("way", WAYS)
def test_without_from_domains_any_from_is_taken(ways, way):
    """from_domains = [] (a laptop, a test bench): no From: check. The CLI is never checked: it is
    run by an operator on the relay, not by an application."""
    raw = b"From: ceo@bank.example\r\nTo: alice@customer.test\r\nSubject: s\r\n\r\nHello\r\n"
    assert ways.send(way, raw).queued
    assert len(ways.deliver()) == 1
