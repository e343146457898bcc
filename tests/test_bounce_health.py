"""The poller's health: last pass in the queue database, one admin mail after N failures in a
row and one on recovery (the DNSBL cron's rule), shown by `bulkrelay status`."""

from __future__ import annotations

import json
import re
import smtplib
import time
from types import SimpleNamespace

from bulkrelay.bounces import cli as bounces_cli
from bulkrelay.bounces import health
from bulkrelay.cli import main
from bulkrelay.queue import Queue


def test_never_polled_reads_none(queue):
    assert health.read(queue.connection, now=100.0) is None


def test_one_alert_after_n_failures_and_one_on_recovery(queue):
    due = [
        health.record(queue.connection, ok=ok, detail=f"pass {n}", now=100.0 + n, alert_after=3)
        for n, ok in enumerate([False, False, True, False, False])
    ]
    assert due == ["", "", "", "", ""], "a success in between starts the count again"
    assert (
        health.record(queue.connection, ok=False, detail="CREATE refused", now=110.0, alert_after=3)
        == "failing"
    )
    health.alert_sent(queue.connection, "failing")
    assert health.record(queue.connection, ok=False, detail="still", now=111.0, alert_after=3) == ""
    state = health.read(queue.connection, now=121.0)
    assert state == {
        "last_poll_at": 111.0,
        "age_seconds": 10.0,
        "ok": False,
        "detail": "still",
        "failures_in_a_row": 4,
        "admin_alerted": True,
    }
    assert (
        health.record(queue.connection, ok=True, detail="examined=0", now=130.0, alert_after=3) == "recovered"
    )
    health.alert_sent(queue.connection, "recovered")
    assert health.record(queue.connection, ok=True, detail="examined=0", now=131.0, alert_after=3) == ""


def _settings(alert_to=("admin@example.test",)):
    return SimpleNamespace(alert_to=alert_to, alert_after=2)


def test_report_health_mails_once_and_retries_a_failed_mail(queue):
    sent, broken = [], [True]

    def send(message, mail_from, rcpts):
        if broken[0]:
            raise smtplib.SMTPServerDisconnected("postfix down")
        sent.append((message["Subject"], mail_from, rcpts))

    def report(ok):
        bounces_cli._report_health(
            _settings(), queue, ok=ok, detail="IMAP down", mail_from="bounces@b.test", send=send
        )

    report(False)
    report(False)  # due, but the mail fails: stays due
    assert sent == []
    broken[0] = False
    report(False)
    report(False)
    assert (
        len(sent) == 1
        and "FAILING" in sent[0][0]
        and sent[0][1:] == ("bounces@b.test", ["admin@example.test"])
    )
    report(True)
    report(True)
    assert len(sent) == 2 and "recovered" in sent[1][0]


def test_no_alert_address_no_mail(queue):
    def send(*args):
        raise AssertionError("no mail without alert_to")

    for _ in range(3):
        bounces_cli._report_health(_settings(()), queue, ok=False, detail="x", mail_from="", send=send)
    assert health.read(queue.connection, now=0)["failures_in_a_row"] == 3


def test_status_shows_the_last_pass_and_its_age(tmp_path, capsys):
    config = tmp_path / "sender.toml"
    config.write_text(f'[queue]\npath = "{tmp_path / "q.sqlite"}"\n')
    queue = Queue(tmp_path / "q.sqlite")
    try:
        assert main(["status", "--json", "--config", str(config)]) == 0
        assert json.loads(capsys.readouterr().out)["bounce_poller"] is None  # never ran
        for _ in range(2):
            health.record(
                queue.connection, ok=False, detail="IMAP CREATE refused", now=time.time() - 90, alert_after=3
            )
    finally:
        queue.close()
    assert main(["status", "--json", "--config", str(config)]) == 0
    state = json.loads(capsys.readouterr().out)["bounce_poller"]
    assert state["ok"] is False and state["failures_in_a_row"] == 2 and 89 <= state["age_seconds"] < 120
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"bounce poller: last pass \S+ \((9\d|1[01]\d)s ago\) FAILED \(2 in a row\): IMAP CREATE refused", out
    )
