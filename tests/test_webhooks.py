"""Webhooks: signing, settings, the delivery loop (real SQLite, a real HTTP receiver), crash safety.

The loop takes its events from a ``fetch(cursor, limit)``; here most tests feed it a list in the
outbox's JSON shape, so the retry, parking and ordering logic is tested on its own. The state
(cursor, failures, parked events) is always in a real queue database.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from support import WebhookReceiver, write_sender_toml

from bulkrelay import audit, cli, metrics
from bulkrelay.config import ConfigError
from bulkrelay.queue import Queue, QueueUnavailable
from bulkrelay.webhooks import settings as settingsmod
from bulkrelay.webhooks.delivery import (
    FAILED,
    IDLE,
    SENT,
    WAITING,
    Deliverer,
    Response,
    TransportError,
    run,
    run_once,
    urllib_transport,
)
from bulkrelay.webhooks.settings import Delivery, Webhook
from bulkrelay.webhooks.signing import sign, verify

SECRET = "s3cret-0123456789abcdef"
T0 = 1_796_036_400.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(cursor: int, type_: str = "delivered", ref: str = "INV-1", recipient: str = "bob@example.test"):
    return {
        "id": uuid.uuid4().hex,
        "cursor": cursor,
        "type": type_,
        "at": dt.datetime.fromtimestamp(T0 + cursor, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "timestamp": T0 + cursor,
        "ref": ref,
        "message_id": f"<{cursor}@example.test>",
        "recipient": recipient,
    }


def list_source(events):
    """fetch(cursor, limit) over a list: what Queue.events_since does, without the filter."""

    def fetch(cursor, limit):
        return [e for e in events if e["cursor"] > cursor][:limit]

    return fetch


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def receiver(clock):
    r = WebhookReceiver(SECRET, clock=clock)
    yield r
    r.close()


def deliverer(queue, receiver_or_url, events, clock, *, name="erp", filter_=(), transport=None, **delivery):
    url = receiver_or_url if isinstance(receiver_or_url, str) else receiver_or_url.url
    hook = Webhook(name=name, url=url, secret=SECRET, events=tuple(filter_))
    return Deliverer(
        hook,
        Delivery(**delivery),
        queue,
        list_source(events),
        transport=transport or urllib_transport(),
        clock=clock,
    )


# --- signing ---------------------------------------------------------------------------------


def test_signature_format_and_verify():
    body = b'{"events":[]}'
    header = sign(SECRET, body, T0)
    t, v1 = header.split(",")
    assert t == f"t={int(T0)}" and v1.startswith("v1=") and len(v1) == 3 + 64
    assert verify(SECRET, header, body, now=T0 + 299)
    assert not verify(SECRET, header, body + b" ", now=T0)  # tampered body
    assert not verify(SECRET, header, body, now=T0 + 301)  # replayed later
    assert not verify(SECRET, header, body, now=T0 - 301)  # from the future
    assert not verify("another-secret-123456", header, body, now=T0)
    assert not verify(SECRET, "", body, now=T0)
    assert not verify(SECRET, f"t={int(T0)},v1=é", body, now=T0)
    # a second v1 (a secret being rotated) is accepted when one matches
    assert verify(SECRET, f"t={int(T0)},v1=00,{v1}", body, now=T0)


def test_receiver_verifies_and_rejects_tampered_and_replayed(receiver, clock):
    post = urllib_transport()
    hook = Webhook(name="erp", url=receiver.url, secret=SECRET)
    body = b'{"events":[{"id":"a"}]}'
    ok = post(hook, body, {"X-Bulkrelay-Signature": sign(SECRET, body, clock())}, 5)
    tampered = post(
        hook, body.replace(b'"a"', b'"b"'), {"X-Bulkrelay-Signature": sign(SECRET, body, clock())}, 5
    )
    replayed = post(hook, body, {"X-Bulkrelay-Signature": sign(SECRET, body, clock() - 600)}, 5)
    assert (ok.status, tampered.status, replayed.status) == (200, 401, 401)
    assert receiver.ids == ["a"]


# --- delivery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2])
def test_zero_one_two_events_delivered_in_order(queue, receiver, clock, n):
    events = [event(c) for c in range(1, n + 1)]
    d = deliverer(queue, receiver, events, clock)
    assert run_once([d]) is True
    assert receiver.ids == [e["id"] for e in events]
    assert len(receiver.requests) == (1 if n else 0)
    assert queue.webhook_state("erp")["cursor"] == n
    headers = receiver.headers[0] if n else {}
    if n:
        assert headers["X-Bulkrelay-Webhook"] == "erp"
        assert headers["User-Agent"].startswith("bulkrelay/")
        assert headers["Content-Type"] == "application/json"
    assert d.step() == IDLE


def test_batches_keep_cursor_order(queue, receiver, clock):
    events = [event(c, recipient=f"r{c % 2}@example.test") for c in range(1, 8)]
    run_once([deliverer(queue, receiver, events, clock, batch=3)])
    assert [len(r) for r in receiver.requests] == [3, 3, 1]
    assert [e["cursor"] for r in receiver.requests for e in r] == list(range(1, 8))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_zero_one_two_webhooks_each_get_every_event(queue, clock, n):
    receivers = [WebhookReceiver(SECRET, clock=clock) for _ in range(n)]
    try:
        events = [event(1), event(2)]
        hooks = [deliverer(queue, r, events, clock, name=f"app{i}") for i, r in enumerate(receivers)]
        assert run_once(hooks) is True
        for i, r in enumerate(receivers):
            assert r.ids == [e["id"] for e in events]
            assert queue.webhook_state(f"app{i}")["cursor"] == 2
    finally:
        for r in receivers:
            r.close()


def test_filter_sends_only_chosen_types_and_passes_the_others(queue, receiver, clock):
    events = [event(1, "accepted"), event(2, "bounced"), event(3, "delivered"), event(4, "released")]
    run_once([deliverer(queue, receiver, events, clock, filter_=("bounced", "delivered"))])
    assert [e["type"] for e in receiver.requests[0]] == ["bounced", "delivered"]
    assert queue.webhook_state("erp")["cursor"] == 4  # the trailing 'released' is passed too
    only_filtered = [event(5, "accepted")]
    d = deliverer(queue, receiver, events + only_filtered, clock, filter_=("bounced",))
    assert d.step() == SENT and queue.webhook_state("erp")["cursor"] == 5
    assert len(receiver.requests) == 1  # nothing was POSTed for it


def test_outage_backs_off_exponentially_then_delivers_in_order(queue, clock, caplog):
    down = {"on": True}
    receiver = WebhookReceiver(SECRET, clock=clock, answer=lambda events: 503 if down["on"] else 200)
    try:
        events = [event(1), event(2)]
        d = deliverer(queue, receiver, events, clock, retry_base=5, retry_max=30)
        waits = []
        with caplog.at_level(logging.WARNING, logger="bulkrelay.webhooks"):
            for _ in range(5):
                assert d.step() == FAILED
                state = queue.webhook_state("erp")
                waits.append(state["next_attempt"] - clock())
                assert d.step() == WAITING  # not before the backoff is over
                clock.now = state["next_attempt"]
        assert waits == [5, 10, 20, 30, 30]
        assert queue.webhook_state("erp") | {"next_attempt": 0} == {
            "cursor": 0, "failures": 5, "failures_total": 5, "failing_since": T0, "next_attempt": 0,
            "last_error": "HTTP 503",
        }  # fmt: skip
        assert "webhook=erp status=503" in caplog.text and SECRET not in caplog.text
        assert '"events"' not in caplog.text  # never the body
        down["on"] = False
        assert run_once([d]) is True
        assert receiver.ids == [e["id"] for e in events]
        assert queue.webhook_state("erp")["failures"] == 0
    finally:
        receiver.close()


def test_connection_refused_is_retried(queue, clock, free_port):
    events = [event(1)]
    d = deliverer(queue, f"http://127.0.0.1:{free_port()}/events", events, clock)
    assert d.step() == FAILED
    state = queue.webhook_state("erp")
    assert (
        state["cursor"] == 0
        and "no answer" in state["last_error"]
        and "refused" in state["last_error"].lower()
    )


def test_dead_after_parks_the_failing_batch_and_goes_on(queue, clock):
    receiver = WebhookReceiver(
        SECRET, clock=clock, answer=lambda events: 500 if events[0]["cursor"] == 1 else 200
    )
    try:
        events = [event(1), event(2)]
        d = deliverer(queue, receiver, events, clock, batch=1, retry_base=60, retry_max=600, dead_after=3600)
        while clock.now - T0 < 3600:
            assert d.step() in (FAILED, WAITING)
            clock.now = max(clock.now, queue.webhook_state("erp")["next_attempt"])
        assert queue.webhook_parked("erp")[0] == 0
        assert d.step() == FAILED  # the first failure at or past dead_after parks it
        count, parked = queue.webhook_parked("erp")
        assert count == 1 and parked[0]["event_id"] == events[0]["id"] and parked[0]["reason"] == "dead"
        assert parked[0]["status"] == 500
        assert run_once([d]) is True
        assert receiver.ids == [events[1]["id"]]
    finally:
        receiver.close()


def test_one_bad_event_in_a_batch_of_two_is_parked_alone(queue, clock):
    def answer(events):
        return 422 if any(e["ref"] == "BAD" for e in events) else 200

    receiver = WebhookReceiver(SECRET, clock=clock, answer=answer)
    try:
        events = [event(1, ref="BAD"), event(2, ref="INV-2"), event(3, ref="INV-3")]
        d = deliverer(queue, receiver, events, clock, batch=2)
        assert run_once([d]) is True
        assert receiver.ids == [events[1]["id"], events[2]["id"]]
        count, parked = queue.webhook_parked("erp")
        assert count == 1
        assert parked[0] | {"at": 0} == {
            "cursor": 1, "event_id": events[0]["id"], "reason": "rejected", "status": 422,
            "reply": "status 422", "at": 0,
        }  # fmt: skip
        assert queue.webhook_state("erp")["cursor"] == 3
    finally:
        receiver.close()


def test_a_bad_secret_is_retried_not_parked(queue, clock):
    receiver = WebhookReceiver("the-receivers-other-secret", clock=clock)
    try:
        d = deliverer(queue, receiver, [event(1), event(2)], clock)
        assert d.step() == FAILED
        assert queue.webhook_parked("erp")[0] == 0
        assert queue.webhook_state("erp")["last_error"] == "HTTP 401"
    finally:
        receiver.close()


# --- crash safety ------------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies here (BaseException: nothing in the loop catches it)."""


def test_crash_after_the_post_resends_the_same_ids(tmp_path, receiver, clock):
    events = [event(1), event(2)]
    real = urllib_transport()

    def post_then_die(*args):
        real(*args)
        raise Crash

    q = Queue(tmp_path / "q.sqlite", clock=clock)
    with pytest.raises(Crash):
        deliverer(q, receiver, events, clock, transport=post_then_die).step()
    q.close()
    q = Queue(tmp_path / "q.sqlite", clock=clock)  # restarted
    assert q.webhook_state("erp")["cursor"] == 0
    assert run_once([deliverer(q, receiver, events, clock)]) is True
    q.close()
    ids = [e["id"] for e in events]
    assert receiver.ids == ids + ids  # the documented duplicate: same ids, receivers de-duplicate
    assert receiver.requests[0] == receiver.requests[1]


def test_crash_before_the_post_loses_nothing(tmp_path, receiver, clock):
    events = [event(1), event(2)]

    def die(*args):
        raise Crash

    q = Queue(tmp_path / "q.sqlite", clock=clock)
    with pytest.raises(Crash):
        deliverer(q, receiver, events, clock, transport=die).step()
    q.close()
    q = Queue(tmp_path / "q.sqlite", clock=clock)
    assert run_once([deliverer(q, receiver, events, clock)]) is True
    q.close()
    assert receiver.ids == [e["id"] for e in events]


def test_transport_errors_never_escape_as_tracebacks(queue, clock):
    def refuse(*args):
        raise TransportError("timed out")

    d = deliverer(queue, "http://127.0.0.1:9/x", [event(1)], clock, transport=refuse)
    assert d.step() == FAILED
    assert queue.webhook_state("erp")["last_error"] == "no answer: timed out"
    assert isinstance(Response(200), Response)


# --- settings ----------------------------------------------------------------------------------

GOOD = f"""
[delivery]
batch = 50
timeout = 5
retry_base = 2
retry_max = 60
dead_after = 3600

[[webhook]]
name = "erp"
url = "https://app.example.test:8443/events"
secret = "{SECRET}"
events = ["delivered", "bounced"]

[[webhook]]
name = "local_2"
url = "http://127.0.0.1:8080/hook"
secret = "{SECRET}"
"""


def test_good_settings(tmp_path):
    path = tmp_path / "webhooks.toml"
    path.write_text(GOOD)
    s = settingsmod.load(path)
    assert s.delivery == Delivery(batch=50, timeout=5, retry_base=2, retry_max=60, dead_after=3600)
    assert [w.name for w in s.webhooks] == ["erp", "local_2"]
    assert s.webhooks[0].events == ("delivered", "bounced") and s.webhooks[1].events == ()
    assert SECRET not in repr(s)
    assert settingsmod.parse({}) == settingsmod.Settings()


HOOK = f'[[webhook]]\nname = "erp"\nurl = "https://a.example.test/e"\nsecret = "{SECRET}"\n'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[delivery]\nbatch = 0\n", "delivery.batch: 0 is below the minimum 1"),
        ('[delivery]\ntimeout = "10"\n', "delivery.timeout: expected a number"),
        ("[delivery]\nretry_base = 10\nretry_max = 5\n", "delivery.retry_max: is below retry_base"),
        ("[delivery]\nbatchsize = 5\n", "delivery.batchsize: unknown key"),
        ("[webhooks]\n", "[webhooks]: unknown section"),
        ("[webhook]\nname = 'erp'\n", "expected [[webhook]] tables"),
        (HOOK.replace('"erp"', '"ERP"'), "is not a webhook name"),
        (HOOK.replace("https://a.example.test/e", "http://a.example.test/e"), "use https"),
        (HOOK.replace("https://a.example.test/e", "ftp://a.example.test/e"), "is not an http(s) URL"),
        (HOOK.replace("https://a.", "https://u:pw@a."), "credentials in the URL"),
        (HOOK.replace(SECRET, "short-secret"), "secret: shorter than 16 characters"),
        (HOOK + 'events = ["delivered", "opened"]\n', "'opened' is not an event type"),
        (HOOK + "events = []\n", "an empty filter sends nothing"),
        (HOOK + 'ca_file = "/nonexistent/ca.pem"\n', "/nonexistent/ca.pem is not a file"),
        (HOOK + 'token = "x"\n', "webhook[0].token: unknown key"),
        (HOOK.replace(f'secret = "{SECRET}"\n', ""), "webhook[0].secret: missing"),
        (HOOK + HOOK, "webhook erp: the name is used twice"),
        ('[[webhook]]\nname = "a"\nurl = "https://x/"\nsecret = "' + SECRET + "\n", "invalid TOML"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix_and_hide_the_secret(tmp_path, text, needle):
    path = tmp_path / "webhooks.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        settingsmod.load(path)
    message = str(exc.value)
    assert needle in message and ";" in message and "\n" not in message
    assert SECRET not in message and "short-secret" not in message


def test_missing_settings_file_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match="pass --webhooks FILE"):
        settingsmod.load(tmp_path / "none.toml")


# --- HTTPS with a private CA ---------------------------------------------------------------------


def _private_ca(tmp_path):
    """A CA and a server certificate for 127.0.0.1 signed by it (files: ca.pem, server.pem, key.pem)."""
    from cryptography import x509  # noqa: PLC0415 - test-only dependency
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bulkrelay test CA"))
        .issuer_name(name("bulkrelay test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "key.pem")
    return tmp_path / "ca.pem", context


def test_https_with_a_private_ca_and_refused_without_it(tmp_path, queue, clock):
    ca_file, context = _private_ca(tmp_path)
    receiver = WebhookReceiver(SECRET, clock=clock, ssl_context=context)
    try:
        events = [event(1)]
        plain = Deliverer(
            Webhook(name="erp", url=receiver.url, secret=SECRET), Delivery(), queue, list_source(events),
            transport=urllib_transport(), clock=clock,
        )  # fmt: skip
        assert plain.step() == FAILED
        assert "CERTIFICATE_VERIFY_FAILED" in queue.webhook_state("erp")["last_error"]
        assert receiver.requests == []
        clock.now += 3600
        text = (
            f'[[webhook]]\nname = "erp"\nurl = "{receiver.url}"\nsecret = "{SECRET}"\nca_file = "{ca_file}"\n'
        )
        hook = settingsmod.parse(tomllib.loads(text)).webhooks[0]
        trusted = Deliverer(
            hook, Delivery(), queue, list_source(events), transport=urllib_transport(), clock=clock
        )
        assert run_once([trusted]) is True
        assert receiver.ids == [events[0]["id"]]
    finally:
        receiver.close()


def test_run_survives_a_busy_queue_and_stops_when_asked(queue, receiver, clock, caplog):
    events = [event(1)]
    calls = []

    def fetch(cursor, limit):
        calls.append(cursor)
        if len(calls) == 1:
            raise QueueUnavailable("queue q.sqlite: database is locked")
        if len(calls) >= 3:
            stop.set()
        return [e for e in events if e["cursor"] > cursor][:limit]

    stop = threading.Event()
    d = Deliverer(Webhook(name="erp", url=receiver.url, secret=SECRET), Delivery(), queue, fetch,
                  transport=urllib_transport(), clock=clock)  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="bulkrelay.webhooks"):
        run([d], stop, idle=0.01)
    assert "event=webhooks_queue_unavailable" in caplog.text
    assert receiver.ids == [events[0]["id"]]


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, False)])
def test_settings_readable_by_everyone_are_warned_about(tmp_path, caplog, mode, warned):
    config = write_sender_toml(tmp_path, 25)
    hooks = tmp_path / "webhooks.toml"
    hooks.write_text("[delivery]\nbatch = 10\n")  # no webhook: nothing to do
    hooks.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="bulkrelay.webhooks"):
        assert cli.main(["webhooks", "once", "--config", str(config), "--webhooks", str(hooks)]) == 0
    assert ("event=webhooks_settings_readable" in caplog.text) == warned


def test_a_gap_in_the_cursors_is_reported(queue, receiver, clock, caplog):
    first, later = event(1), [event(5), event(6)]
    assert run_once([deliverer(queue, receiver, [first], clock)]) is True
    with caplog.at_level(logging.ERROR, logger="bulkrelay.webhooks"):
        assert run_once([deliverer(queue, receiver, [first, *later], clock)]) is True
    assert "event=webhook_gap webhook=erp after=1 next=5" in caplog.text
    assert receiver.ids == [first["id"], later[0]["id"], later[1]["id"]]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bulkrelay.webhooks"):
        run_once([deliverer(queue, receiver, [event(7)], clock)])
    assert "webhook_gap" not in caplog.text


# --- end to end: the real outbox, the CLI ------------------------------------------------------

INVOICE = (
    b"From: billing@example.test\r\nTo: {to}\r\nX-Bulkrelay-Ref: {ref}\r\nSubject: Invoice\r\n\r\nHello\r\n"
)


def enqueue(queue, ref, *recipients):
    raw = INVOICE.replace(b"{to}", recipients[0].encode()).replace(b"{ref}", ref.encode())
    queue.enqueue(raw, "billing@example.test", list(recipients), source="cli")


def write_webhooks(tmp_path, *receivers, extra=""):
    text = "[delivery]\nretry_base = 1\nretry_max = 2\n" + extra
    for i, r in enumerate(receivers):
        text += f'\n[[webhook]]\nname = "app{i}"\nurl = "{r.url}"\nsecret = "{SECRET}"\n'
    path = tmp_path / "webhooks.toml"
    path.write_text(text)
    return path


@pytest.fixture
def relay(tmp_path):
    """sender.toml and its queue (real clock: the CLI runs as on a relay)."""
    config = write_sender_toml(tmp_path, 25)
    q = Queue(tmp_path / "q.sqlite")
    yield config, q
    q.close()


def test_end_to_end_events_from_the_real_queue(tmp_path, relay):
    config, q = relay
    receiver = WebhookReceiver(SECRET)
    try:
        enqueue(q, "INV-10042", "bob@example.test", "carol@example.test")
        enqueue(q, "INV-10043", "dave@example.test")
        hooks = write_webhooks(tmp_path, receiver)
        assert cli.main(["webhooks", "once", "--config", str(config), "--webhooks", str(hooks)]) == 0
        got = [e for r in receiver.requests for e in r]
        assert [(e["type"], e["ref"], e["recipient"]) for e in got] == [
            ("accepted", "INV-10042", "bob@example.test"),
            ("accepted", "INV-10042", "carol@example.test"),
            ("accepted", "INV-10043", "dave@example.test"),
        ]
        assert [e["cursor"] for e in got] == sorted(e["cursor"] for e in got)
        assert q.webhook_state("app0")["cursor"] == q.last_event_cursor()
        # nothing new: nothing sent again
        assert cli.main(["webhooks", "once", "--config", str(config), "--webhooks", str(hooks)]) == 0
        assert len(receiver.ids) == 3
    finally:
        receiver.close()


def test_status_once_and_audit_on_a_real_queue(tmp_path, relay, capsys):
    config, q = relay
    up = {"on": False}
    receiver = WebhookReceiver(SECRET, answer=lambda events: 200 if up["on"] else 503)
    try:
        hooks = write_webhooks(tmp_path, receiver)
        args = ["--config", str(config), "--webhooks", str(hooks)]
        enqueue(q, "INV-1", "bob@example.test")
        assert cli.main(["webhooks", "once", *args]) == 1  # receiver down: left undelivered
        capsys.readouterr()
        assert cli.main(["webhooks", "status", "--json", *args]) == 0
        raw = {"rc": 0, "stdout": capsys.readouterr().out, "stderr": ""}
        row = json.loads(raw["stdout"])["webhooks"][0]
        assert (row["name"], row["pending"], row["failures"], row["last_error"]) == ("app0", 1, 1, "HTTP 503")
        assert SECRET not in raw["stdout"]
        later = row["oldest_pending_timestamp"] + 7200
        assert audit.judge_webhooks(raw, later, 3600).status == "fail"
        assert audit.judge_webhooks(raw, row["oldest_pending_timestamp"] + 60, 3600).status == "pass"
        # bulkrelay status and the metrics show the same
        assert cli.main(["status", *args]) == 0
        assert "webhook app0: cursor 0, 1 pending" in capsys.readouterr().out
        metrics_text = metrics.render(q, webhooks_file=str(hooks))
        assert 'bulkrelay_webhook_pending{webhook="app0"} 1' in metrics_text
        assert 'bulkrelay_webhook_failures_total{webhook="app0"} 1' in metrics_text
        up["on"] = True
        time.sleep(1.1)  # the backoff (retry_base = 1)
        assert cli.main(["webhooks", "once", *args]) == 0
        capsys.readouterr()
        assert cli.main(["webhooks", "status", "--json", *args]) == 0
        raw = {"rc": 0, "stdout": capsys.readouterr().out, "stderr": ""}
        assert audit.judge_webhooks(raw, time.time() + 7200, 3600).status == "pass"
        assert 'bulkrelay_webhook_pending{webhook="app0"} 0' in metrics.render(q, webhooks_file=str(hooks))
    finally:
        receiver.close()


def test_check_accepts_good_settings(tmp_path, relay):
    config, _q = relay
    hooks = write_webhooks(tmp_path)
    assert cli.main(["webhooks", "check", "--config", str(config), "--webhooks", str(hooks)]) == 0


def test_status_without_a_settings_file_says_none(tmp_path, relay, capsys):
    config, _q = relay
    args = ["--config", str(config), "--webhooks", str(tmp_path / "absent.toml")]
    assert cli.main(["webhooks", "status", "--json", *args]) == 0
    raw = {"rc": 0, "stdout": capsys.readouterr().out, "stderr": ""}
    verdict = audit.judge_webhooks(raw, time.time(), 3600)
    assert (verdict.status, verdict.message) == (
        "pass",
        "no webhooks configured (no webhooks.toml on the relay)",
    )
    assert cli.main(["webhooks", "once", *args]) == 2  # run/once need the file
    assert "absent.toml: no such file; create it or pass --webhooks FILE" in capsys.readouterr().err


def test_status_of_a_webhook_that_never_ran_is_its_backlog(tmp_path, relay, capsys):
    # the audit can read a relay before the delivery loop has written anything for a webhook
    # (seen in the lab: a KeyError made the healthy relay's audit "could not tell")
    config, q = relay
    enqueue(q, "INV-1", "bob@example.test")
    hooks = tmp_path / "webhooks.toml"
    hooks.write_text(f'[[webhook]]\nname = "erp"\nurl = "https://app.example.test/"\nsecret = "{SECRET}"\n')
    assert cli.main(["webhooks", "status", "--json", "--config", str(config), "--webhooks", str(hooks)]) == 0
    out = capsys.readouterr().out
    (row,) = json.loads(out)["webhooks"]
    backlog = {key: row[key] for key in ("cursor", "pending", "failures", "failures_total", "parked")}
    assert backlog == {"cursor": 0, "pending": 1, "failures": 0, "failures_total": 0, "parked": 0}
    raw = {"rc": 0, "stdout": out, "stderr": ""}
    assert audit.judge_webhooks(raw, time.time(), 3600).status == "pass"
    assert audit.judge_webhooks(raw, time.time() + 7200, 3600).status == "fail"


def test_bad_settings_file_is_one_line_without_the_secret(tmp_path, relay, capsys):
    config, _q = relay
    hooks = tmp_path / "webhooks.toml"
    hooks.write_text(f'[[webhook]]\nname = "erp"\nurl = "http://app.example.test/"\nsecret = "{SECRET}"\n')
    for action in ("once", "status", "check"):
        assert cli.main(["webhooks", action, "--config", str(config), "--webhooks", str(hooks)]) == 2
        err = capsys.readouterr().err
        assert "webhook erp.url: plain http" in err and SECRET not in err and err.count("\n") == 1


def test_run_stops_on_sigterm_after_the_current_request(tmp_path, relay):
    config, q = relay
    started = threading.Event()

    def slow(events):
        started.set()
        time.sleep(1.5)
        return 200

    receiver = WebhookReceiver(SECRET, answer=slow)
    try:
        enqueue(q, "INV-1", "bob@example.test")
        hooks = write_webhooks(tmp_path, receiver)
        bulkrelay = str(Path(sys.executable).parent / "bulkrelay")
        proc = subprocess.Popen(
            [bulkrelay, "webhooks", "run", "--config", str(config), "--webhooks", str(hooks)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert started.wait(15)
        proc.send_signal(signal.SIGTERM)  # mid-request
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "event=webhooks_stopped" in err
        assert len(receiver.ids) == 1
        assert q.webhook_state("app0")["cursor"] == q.last_event_cursor()  # committed before leaving
    finally:
        receiver.close()


def test_a_rejected_event_on_a_real_queue_is_parked_shown_and_fails_the_audit(tmp_path, relay, capsys):
    config, q = relay
    receiver = WebhookReceiver(
        SECRET, answer=lambda events: 422 if any(e["ref"] == "BAD" for e in events) else 200
    )
    try:
        enqueue(q, "INV-1", "bob@example.test")
        enqueue(q, "BAD", "carol@example.test")
        enqueue(q, "INV-3", "dave@example.test")
        args = ["--config", str(config), "--webhooks", str(write_webhooks(tmp_path, receiver))]
        assert cli.main(["webhooks", "once", *args]) == 0  # nothing left: delivered or parked
        assert [[e["ref"] for e in r] for r in receiver.requests] == [["INV-1"], ["INV-3"]]  # one by one
        capsys.readouterr()
        assert cli.main(["webhooks", "status", *args]) == 0
        text = capsys.readouterr().out
        assert "1 parked" in text and "rejected, status 422: status 422" in text
        assert cli.main(["webhooks", "status", "--json", *args]) == 0
        verdict = audit.judge_webhooks({"rc": 0, "stdout": capsys.readouterr().out}, time.time(), 3600)
        assert verdict.status == "fail" and "webhook app0: 1 event(s) parked" in verdict.message
    finally:
        receiver.close()
