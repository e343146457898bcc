"""Change detection: alert on listed / delisted / broken / back, never on an unchanged state,
never 'delisted' because a list went silent; failed alerts are retried."""

import json
import logging

from bulkrelay.dnsbl.cron import MailSettings, kv, run_cron
from bulkrelay.dnsbl.state import advance, alert_body, alert_subject, prometheus_text, read_state

LISTING = {
    "target": "198.51.100.25",
    "zone": "bl.test",
    "list": "BL",
    "codes": ["127.0.0.2"],
    "reason": "spam",
}


def current(listings=(), errors=(), status=None, at="2026-01-01T00:00:00Z"):
    if status is None:
        status = "CRITICAL" if listings else ("UNKNOWN" if errors else "OK")
    return {
        "status": status,
        "checked_at": at,
        "listings": list(listings),
        "errors": list(errors),
        "checked": 3,
    }


def err(zone="slow.test", target="198.51.100.25"):
    return {"target": target, "zone": zone, "list": zone, "error": "timeout after 4s"}


def kinds(events):
    return [e.kind for e in events]


def test_listing_then_unchanged_then_delisted():
    s1, e1 = advance(None, current([LISTING]))
    assert kinds(e1) == ["listed"] and "spam" in e1[0].detail
    s2, e2 = advance(s1, current([LISTING], at="2026-01-01T01:00:00Z"))
    assert e2 == []
    assert s2["listings"][0]["since"] == "2026-01-01T00:00:00Z"
    s3, e3 = advance(s2, current([]))
    assert kinds(e3) == ["delisted"] and s3["listings"] == [] and s3["status"] == "OK"
    _s4, e4 = advance(s3, current([]))
    assert e4 == []


def test_silent_list_keeps_the_listing_and_never_says_delisted():
    s1, _ = advance(None, current([LISTING]))
    s2, e2 = advance(s1, current([], [err(zone="bl.test")]))
    assert "delisted" not in kinds(e2)
    assert s2["listings"] and s2["listings"][0]["stale"] is True
    assert s2["status"] == "CRITICAL"  # the sender keeps pausing
    s3, e3 = advance(s2, current([LISTING]))
    assert e3 == [] and s3["listings"][0]["stale"] is False


def test_broken_list_alerted_once_after_two_runs_then_back():
    s1, e1 = advance(None, current([], [err()]))
    assert e1 == []  # one timeout is not worth a mail
    s2, e2 = advance(s1, current([], [err()]))
    assert kinds(e2) == ["broken"] and "timeout" in e2[0].detail
    s3, e3 = advance(s2, current([], [err()]))
    assert e3 == []
    _s4, e4 = advance(s3, current([]))
    assert kinds(e4) == ["recovered"]


def test_single_failed_run_between_good_runs_is_silent():
    s1, _ = advance(None, current([]))
    s2, e2 = advance(s1, current([], [err()]))
    _s3, e3 = advance(s2, current([]))
    assert e2 == [] and e3 == []


def test_alert_text():
    state, events = advance(None, current([LISTING]))
    assert alert_subject(events, "relay.example.test") == (
        "[bulkrelay DNSBL] relay.example.test: 198.51.100.25 LISTED on bl.test"
    )
    body = alert_body(events, state, "relay.example.test")
    assert "LISTED: 198.51.100.25 is now listed on bl.test (127.0.0.2: spam)" in body
    assert "sender pauses" in body
    two = advance(state, current([], [err()], status="UNKNOWN"), alert_after=1)[1]
    assert alert_subject(two, "h") == "[bulkrelay DNSBL] h: 2 changes (1 broken, 1 delisted)"


def test_prometheus_text():
    state, _ = advance(None, current([LISTING]))
    text = prometheus_text(state, 1700000000)
    assert "bulkrelay_dnsbl_status 2\n" in text
    assert 'bulkrelay_dnsbl_listed{target="198.51.100.25",zone="bl.test"} 1' in text


def test_kv_quotes():
    assert kv(a=1, b="two words", c="") == 'a=1 b="two words" c=""'


class Mailbox:
    def __init__(self, fail=False):
        self.sent = []
        self.fail = fail

    def __call__(self, mail, message):
        if self.fail:
            raise OSError("sendmail exited 75: queue file write error")
        self.sent.append(message)


def cron(tmp_path, checks, mailbox, **kw):
    logger = logging.getLogger("test-dnsbl-cron")
    return run_cron(
        lambda: checks,
        tmp_path / "state.json",
        MailSettings(["postmaster@example.test"]),
        logger,
        send=mailbox,
        hostname="relay.example.test",
        prometheus_path=tmp_path / "dnsbl.prom",
        **kw,
    )


def test_cron_mails_once_per_change_and_writes_state_atomically(tmp_path):
    box = Mailbox()
    cron(tmp_path, current([LISTING]), box)
    cron(tmp_path, current([LISTING]), box)
    assert len(box.sent) == 1 and "LISTED" in box.sent[0]["Subject"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["listings"][0]["target"] == "198.51.100.25" and saved["status"] == "CRITICAL"
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".state.json.") and "lock" not in p.name
    ] == []
    cron(tmp_path, current([]), box)
    assert len(box.sent) == 2 and "delisted" in box.sent[1]["Subject"]
    assert "bulkrelay_dnsbl_status 0" in (tmp_path / "dnsbl.prom").read_text()


def test_failed_alert_is_retried_next_run(tmp_path):
    failing = Mailbox(fail=True)
    state, events = cron(tmp_path, current([LISTING]), failing)
    assert events and state["alert_pending"] is True
    box = Mailbox()
    cron(tmp_path, current([LISTING]), box)
    assert len(box.sent) == 1 and "LISTED" in box.sent[0]["Subject"]
    cron(tmp_path, current([LISTING]), box)
    assert len(box.sent) == 1


def test_unreadable_state_is_treated_as_no_state(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert read_state(path) is None
    box = Mailbox()
    cron(tmp_path, current([LISTING]), box)
    assert len(box.sent) == 1
