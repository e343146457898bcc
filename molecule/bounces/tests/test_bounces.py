"""The bounce path end to end, with real Postfix, Dovecot (IMAPS), systemd and SQLite.

sender (relay_sender + bounce_poller) --VERP envelope--> mailhost (customer.test's MX), which
accepts unknown users and bounces them --DSN--> bounces+TOKEN@bounce.example.test (a Maildir
on the mailhost) --IMAPS--> `bulkrelay bounces poll --once` (the bounce_poller's unit, as its
own user). The mailhost runs Debian's STOCK Dovecot configuration with Maildir (hierarchy
separator "."); one test switches it to `separator = /` and back.
"""

import json
import re
import shlex
import uuid

import pytest
import testinfra
from labexec import poller_pass, wait_for

SENDER = "br-bounces-sender"
testinfra_hosts = [SENDER]

MAILHOST = "198.51.100.40"
BULKRELAY = "/opt/bulkrelay/venv/bin/bulkrelay"
PYTHON = "/opt/bulkrelay/venv/bin/python"
CONFIG = "/etc/bulkrelay/sender.toml"
BOUNCES_CONFIG = "/etc/bulkrelay/bounces.toml"
POLLER_USER = "bulkrelay-bounces"
PROCESSED = "bulkrelay.processed"  # "bulkrelay/processed" as Dovecot's stock Maildir++ spells it


@pytest.fixture(scope="module")
def sender():
    return testinfra.get_host(f"docker://{SENDER}")


@pytest.fixture(scope="module")
def mail():
    return testinfra.get_host("docker://br-bounces-mail")


def as_sender_user(host, *argv):
    return host.run("runuser -u bulkrelay -- " + " ".join(shlex.quote(a) for a in argv))


def bulkrelay(host, *args):
    return as_sender_user(host, BULKRELAY, *args, "--config", CONFIG)


def poll_by_hand(host, bounces_config=BOUNCES_CONFIG):
    """`bulkrelay bounces poll --once` as the poller's user, with its own settings file."""
    argv = [BULKRELAY, "bounces", "poll", "--once", "--config", CONFIG, "--bounces-config", bounces_config]
    return host.run(f"runuser -u {POLLER_USER} -- " + " ".join(shlex.quote(a) for a in argv))


def py(host, code):
    """Run Python with the installed package as the service user; return parsed JSON output."""
    result = as_sender_user(host, PYTHON, "-c", code)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def recipient(host, rid):
    return py(
        host,
        "import json; from bulkrelay.queue import Queue; "
        f"q = Queue('/var/lib/bulkrelay/queue.sqlite'); print(json.dumps(q.recipient({rid}), default=str))",
    )


def message(host, message_id):
    return py(
        host,
        "import json; from bulkrelay.queue import Queue; "
        f"print(json.dumps(Queue('/var/lib/bulkrelay/queue.sqlite').message({message_id}), default=str))",
    )


def verp_address(host, rid):
    return py(
        host,
        "import json; from bulkrelay import config, verp; c = config.load('/etc/bulkrelay/sender.toml'); "
        "e = c.envelope; "
        f"print(json.dumps(verp.make_address(e.verp_prefix, e.bounce_domain, {rid}, c.verp_key())))",
    )


def mailbox(mail, folder="INBOX"):
    """[(flags, subject)] of a folder of the bounce mailbox, read with doveadm (no IMAP flags touched)."""
    result = mail.run(
        f"doveadm -f tab fetch -u bounces 'flags hdr.subject' mailbox {shlex.quote(folder)} all"
    )
    assert result.rc == 0, result.stderr
    rows = [line.split("\t", 1) for line in result.stdout.splitlines()[1:] if line.strip()]
    return [(r[0], r[1] if len(r) > 1 else "") for r in rows]


def new_bounce_count(mail):
    return int(
        mail.run(
            "ls /home/bounces/Maildir/new /home/bounces/Maildir/cur 2>/dev/null | grep -c . || true"
        ).stdout
        or 0
    )


def poll(sender):
    """Run the poller's own systemd unit once (what the timer starts) and return its journal."""
    result, since = poller_pass(SENDER)
    journal = "journalctl -u bulkrelay-bounces.service --no-pager"
    assert result.returncode == 0, sender.run(f"{journal} -n 30").stdout
    return sender.run(f"{journal} --since @{since} -o cat").stdout


def test_units_are_installed_and_timer_active(sender):
    assert sender.service("bulkrelay-bounces.timer").is_enabled
    assert sender.service("bulkrelay-bounces.timer").is_running
    password_file = sender.file("/etc/bulkrelay/imap-password")
    assert password_file.mode == 0o640 and password_file.user == "root" and password_file.group == POLLER_USER


def test_poller_runs_as_its_own_user_and_secrets_stay_apart(sender):
    assert (
        sender.run("systemctl show -p User --value bulkrelay-bounces.service").stdout.strip() == POLLER_USER
    )
    groups = sender.run(f"id -nG {POLLER_USER}").stdout.split()
    assert "bulkrelay-queue" in groups and "bulkrelay" not in groups, groups
    # the intake's user cannot read the IMAP password (nor the poller's settings)
    for path in ("/etc/bulkrelay/imap-password", BOUNCES_CONFIG):
        assert sender.run(f"runuser -u bulkrelay -- cat {path}").rc != 0, path
        assert sender.run(f"runuser -u {POLLER_USER} -- cat {path}").rc == 0, path
    # the poller's user reads no file of the sender's own group (the intake's secrets)
    for path in sender.run("find /etc/bulkrelay -type f -group bulkrelay").stdout.split():
        assert sender.run(f"runuser -u {POLLER_USER} -- cat {path}").rc != 0, path
    # both need the queue database and the VERP key
    for user in ("bulkrelay", POLLER_USER):
        assert sender.run(f"runuser -u {user} -- cat /etc/bulkrelay/verp.key").rc == 0, user


def test_poller_unit_exposure_is_at_most_2(sender):
    out = sender.run("systemd-analyze security bulkrelay-bounces.service --no-pager").stdout
    level = float(re.search(r"Overall exposure level for bulkrelay-bounces.service: ([\d.]+)", out).group(1))
    assert level <= 2.0, out[-2000:]


def test_quick_manual_starts_never_hit_the_start_limit(sender):
    """systemd refuses a sixth start within ten seconds by default (start-limit-hit); the
    poller's unit opts out, because its timer already sets the pace."""
    for _ in range(8):
        poll(sender)
    state = sender.run("systemctl show -p Result --value bulkrelay-bounces.service").stdout.strip()
    assert state == "success", state


def test_password_never_in_logs(sender):
    journal = sender.run("journalctl --no-pager -o cat").stdout
    assert "lab-bounce-imap-secret" not in journal


def test_swaks_bounce_is_ingested_and_suppressed(sender, mail):
    """The path of the brief, independent of the release loop: a recipient row created in the
    queue (paused so the service does not send it), mail sent with swaks with that row's VERP
    address as envelope sender to an unknown user, the DSN polled over IMAPS."""
    assert bulkrelay(sender, "pause", "--reason", "swaks test").rc == 0
    try:
        unknown = f"nobody-{uuid.uuid4().hex[:8]}@customer.test"
        rid = real_bounce(sender, mail, unknown)
        journal = poll(sender)
        assert "event=bounce" in journal and "outcome=suppressed" in journal, journal
        row = recipient(sender, rid)
        assert row["state"] == "bounced" and row["dsn"] == "5.1.1", row
        listed = bulkrelay(sender, "suppress", "list")
        assert unknown in listed.stdout, listed.stdout + listed.stderr
    finally:
        bulkrelay(sender, "resume")


def test_processed_bounces_are_moved_not_deleted(mail):
    processed = mailbox(mail, PROCESSED)
    assert processed, "processed bounces are kept in their folder"
    assert any("Undelivered Mail" in subject for _, subject in processed)
    assert not [s for _, s in processed if "Re: Invoice" in s or "Automatic reply" in s], "only bounces"
    assert not [s for _, s in mailbox(mail) if "Undelivered Mail" in s], "no bounce left in INBOX"


def test_sender_path_next_message_is_not_sent(sender, mail):
    """The release loop sends with VERP, the bounce comes back, the next mail is suppressed."""
    unknown = f"gone-{uuid.uuid4().hex[:8]}@customer.test"
    mid = queue_mail(sender, unknown, "Invoice 1", "one")

    def row():
        return message(sender, mid)["recipients"][0]

    wait_for("the release loop to submit", lambda: row()["state"] in ("submitted", "delivered"))
    assert row()["envelope_from"].startswith("bounces+r"), row()
    wait_for(
        "the DSN for the released message",
        lambda: mail.run(f"grep -rl {shlex.quote(unknown)} /home/bounces/Maildir/new").rc == 0,
    )
    journal = poll(sender)
    assert "outcome=suppressed" in journal, journal
    assert row()["state"] == "bounced"

    mid2 = queue_mail(sender, unknown, "Invoice 2", "two")

    def rows2():
        return message(sender, mid2)

    wait_for("the second message to be suppressed", lambda: rows2()["recipients"][0]["state"] == "suppressed")
    assert "suppressed" in rows2()["recipients"][0]["last_reply"]
    # the mailhost saw exactly one delivery attempt for that address
    attempts = mail.run(f"journalctl --no-pager -o cat | grep -c 'to=<{unknown}>' || true").stdout.strip()
    assert attempts == "1", attempts


def test_human_reply_stays_unread_and_is_forwarded_once(sender, mail):
    token = f"human-{uuid.uuid4().hex[:8]}"
    reply_to = verp_address(sender, 1)
    sent = sender.run(
        f"swaks --server {MAILHOST} --from dave@customer.test --to {shlex.quote(reply_to)} "
        f"--header 'Subject: Re: Invoice {token}' --hide-all "
        "--body 'The invoice lists 12 items, we ordered 10.'"
    )
    assert sent.rc == 0, sent.stdout
    wait_for("the reply in the bounce mailbox", lambda: any(token in s for _, s in mailbox(mail)))
    poll(sender)
    poll(sender)  # a second pass must neither forward again nor touch the reply
    kept = [(flags, s) for flags, s in mailbox(mail) if token in s]
    assert len(kept) == 1 and "\\Seen" not in kept[0][0], kept

    def forwards():
        return mail.run(
            f"grep -l 'Fwd: Re: Invoice {token}' /home/humans/Maildir/new/* 2>/dev/null"
        ).stdout.split()

    forwarded = wait_for("the forward to humans@example.test", forwards)
    assert len(forwarded) == 1, forwarded
    body = mail.file(forwarded[0]).content_string
    assert "Reply-To: dave@customer.test" in body


def test_autoreply_stays_unread_and_is_not_forwarded(sender, mail):
    token = f"ooo-{uuid.uuid4().hex[:8]}"
    sent = sender.run(
        f"swaks --server {MAILHOST} --from carla@customer.test --to {shlex.quote(verp_address(sender, 1))} "
        f"--header 'Subject: Automatic reply: {token}' --header 'Auto-Submitted: auto-replied' "
        "--body 'Out of office.' --hide-all"
    )
    assert sent.rc == 0
    wait_for("the auto-reply in the bounce mailbox", lambda: any(token in s for _, s in mailbox(mail)))
    poll(sender)
    kept = [(flags, s) for flags, s in mailbox(mail) if token in s]
    assert len(kept) == 1 and "\\Seen" not in kept[0][0]
    assert mail.run(f"grep -l {shlex.quote(token)} /home/humans/Maildir/new/* 2>/dev/null").stdout == ""


def test_bad_password_is_one_clear_line(sender):
    sender.run("cp -p /etc/bulkrelay/imap-password /tmp/pw.bak && echo wrong > /etc/bulkrelay/imap-password")
    try:
        result = poll_by_hand(sender)
    finally:
        sender.run("cp -p /tmp/pw.bak /etc/bulkrelay/imap-password")
    assert result.rc == 1
    assert "login as bounces refused" in result.stderr and "Traceback" not in result.stderr
    assert "lab-bounce-imap-secret" not in result.stdout + result.stderr


def _variant_config(sender, name, **changes):
    """A copy of the poller's bounces.toml with some keys changed, readable by the poller's user."""
    text = sender.file(BOUNCES_CONFIG).content_string
    for key, value in changes.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
        assert count == 1, key
    path = f"/tmp/{name}.toml"
    sender.run(f"cat > {path} <<'EOF'\n{text}EOF\nchown root:{POLLER_USER} {path}; chmod 0640 {path}")
    return path


def test_starttls_on_143_works_too(sender):
    path = _variant_config(sender, "starttls", imap_port=143, imap_tls="starttls")
    result = poll_by_hand(sender, path)
    assert result.rc == 0, result.stderr
    assert result.stdout.startswith("examined=")


def test_untrusted_certificate_is_refused_with_the_fix(sender):
    path = _variant_config(sender, "badca", tls_ca_file="")  # the system CAs do not know the lab CA
    result = poll_by_hand(sender, path)
    assert result.rc == 1
    assert "TLS certificate not trusted" in result.stderr and "bounces.tls_ca_file" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_ca_file_is_named(sender):
    path = _variant_config(sender, "noca", tls_ca_file="/etc/bulkrelay/missing-ca.pem")
    result = poll_by_hand(sender, path)
    assert (
        result.rc == 1
        and "/etc/bulkrelay/missing-ca.pem" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_refused_create_is_one_clear_error(sender, mail):
    """A server that does not let the poller create its folder (here: the Maildir is read-only
    for the mailbox's owner, so Dovecot refuses CREATE) gets one line naming the folder and
    how to create it."""
    path = _variant_config(sender, "nocreate", processed_folder="bulkrelay/elsewhere")
    mail.run("chmod a-w /home/bounces/Maildir")
    try:
        result = poll_by_hand(sender, path)
    finally:
        mail.run("chmod u+w /home/bounces/Maildir")
    assert result.rc == 1
    assert "refused to create the folder 'bulkrelay.elsewhere'" in result.stderr, result.stderr
    assert "doveadm mailbox create -u bounces 'bulkrelay.elsewhere'" in result.stderr
    assert "bounce_poller__processed_folder" in result.stderr and "Traceback" not in result.stderr
    assert "bulkrelay.elsewhere" not in mail.run("doveadm mailbox list -u bounces").stdout


def queue_paused_recipient(sender, address):
    """A recipient row (the queue paused, so the service does not send it) and its VERP address."""
    rid = message(sender, queue_mail(sender, address, "Invoice", "hi"))["recipients"][0]["id"]
    return rid, verp_address(sender, rid)


def queue_mail(sender, address, subject, body):
    """`bulkrelay send` one mail from billing@example.test; returns the queue's message id."""
    queued = bulkrelay(
        sender,
        "send",
        "--from",
        "billing@example.test",
        "--to",
        address,
        "--subject",
        subject,
        "--body",
        body,
    )
    assert queued.rc == 0, queued.stderr
    return int(re.search(r"queued as message (\d+)", queued.stdout).group(1))


def real_bounce(sender, mail, unknown):
    """The mailhost's own DSN for ``unknown`` (mail sent with swaks under the row's VERP address)."""
    rid, envelope = queue_paused_recipient(sender, unknown)
    before = new_bounce_count(mail)
    sent = sender.run(
        f"swaks --server {MAILHOST} --from {shlex.quote(envelope)} --to {shlex.quote(unknown)} "
        "--header 'Subject: Invoice' --body 'hello' --hide-all"
    )
    assert sent.rc == 0, sent.stdout + sent.stderr
    wait_for("the DSN in the bounce mailbox", lambda: new_bounce_count(mail) > before)
    return rid


def test_stock_dovecot_separator_is_a_dot(mail):
    """The fixture is what a Debian server has: stock config, Maildir++, '.' between levels."""
    assert mail.file("/etc/dovecot/dovecot.conf").contains("!include conf.d/\\*.conf")
    assert mail.run("doveconf -h namespace/inbox/separator").stdout.strip() == ""
    folders = mail.run("doveadm mailbox list -u bounces").stdout.split()
    assert PROCESSED in folders and "bulkrelay/processed" not in folders, folders


def test_delay_warning_suppresses_nobody(sender, mail):
    """An `Action: delayed` DSN (Postfix's delay warning) is information only."""
    address = f"slow-{uuid.uuid4().hex[:8]}@customer.test"
    assert bulkrelay(sender, "pause", "--reason", "delay test").rc == 0
    try:
        rid, envelope = queue_paused_recipient(sender, address)
        warning = (
            f"From: MAILER-DAEMON@mail.example.test (Mail Delivery System)\nTo: {envelope}\n"
            "Subject: Delayed Mail (still being retried)\nAuto-Submitted: auto-replied\nMIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="W"\n\n'
            "--W\nContent-Type: text/plain\n\nThis is a warning only; you do not need to resend.\n\n"
            "--W\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mail.example.test\n\n"
            f"Final-Recipient: rfc822; {address}\nAction: delayed\nStatus: 4.4.1\n"
            "Diagnostic-Code: X-Postfix; connect to mx.customer.test[192.0.2.9]:25: Connection timed out\n"
            "\n--W--\n"
        )
        sender.run(f"cat > /tmp/delay.eml <<'EOF'\n{warning}EOF")
        for _ in range(3):  # three of them used to suppress a live customer
            sent = sender.run(
                f"swaks --server {MAILHOST} --from '<>' --to {shlex.quote(envelope)} --data /tmp/delay.eml "
                f"--add-header 'Message-ID: <delay-{uuid.uuid4().hex}@mail.example.test>' --hide-all"
            )
            assert sent.rc == 0, sent.stdout + sent.stderr
        wait_for("the warnings", lambda: len([s for _, s in mailbox(mail) if "Delayed Mail" in s]) >= 3)
        journal = poll(sender)
        assert journal.count("outcome=delayed") == 3, journal
        assert "outcome=suppressed" not in journal and "outcome=soft-counted" not in journal, journal
        assert address not in bulkrelay(sender, "suppress", "list").stdout
        assert recipient(sender, rid)["state"] == "queued"
        assert not [s for _, s in mailbox(mail) if "Delayed Mail" in s], "warnings are moved, not left"
    finally:
        bulkrelay(sender, "resume")


def test_slash_separator_variant(sender, mail):
    """The same Dovecot with `separator = /`: the folder is then bulkrelay/processed."""
    dropin = "/etc/dovecot/conf.d/99-zz-separator.conf"
    mail.run(f"printf 'namespace inbox {{\\n  separator = /\\n}}\\n' > {dropin} && systemctl reload dovecot")
    assert bulkrelay(sender, "pause", "--reason", "separator test").rc == 0
    try:
        assert mail.run("doveconf -h namespace/inbox/separator").stdout.strip() == "/"
        unknown = f"nobody-{uuid.uuid4().hex[:8]}@customer.test"
        rid = real_bounce(sender, mail, unknown)
        journal = poll(sender)
        assert "outcome=suppressed" in journal, journal
        assert recipient(sender, rid)["state"] == "bounced"
        folders = mail.run("doveadm mailbox list -u bounces").stdout.split()
        assert "bulkrelay/processed" in folders, folders
        processed = mail.run("doveadm -f tab fetch -u bounces 'body' mailbox bulkrelay/processed all")
        assert unknown in processed.stdout
    finally:
        bulkrelay(sender, "resume")
        mail.run(f"rm -f {dropin} && systemctl reload dovecot")


def alice_alerts(mail):
    out = mail.run("grep -h '^Subject: \\[bulkrelay\\] bounce poller' /home/alice/Maildir/new/* 2>/dev/null")
    return out.stdout.splitlines()


def in_hand(host):
    """Messages Postfix is still handling (maildrop, incoming, active); deferred ones wait."""
    rows = [json.loads(line) for line in host.run("postqueue -j").stdout.splitlines() if line.strip()]
    return [row for row in rows if row["queue_name"] != "deferred"]


def poller_status(sender):
    status = json.loads(bulkrelay(sender, "status", "--json").stdout)
    return status["bounce_poller"]


def test_failing_poller_is_seen_and_the_admin_told_once(sender, mail):
    poll(sender)  # a good pass first: the count starts from zero (and any earlier alert recovers)
    state = poller_status(sender)
    assert state["ok"] is True and state["admin_alerted"] is False, state
    # A recovery mail of earlier tests' failures was handed to Postfix by that pass: once
    # neither Postfix has mail in hand, it is in the mailbox and counts as "before".
    wait_for("both Postfix queues to settle", lambda: not in_hand(sender) and not in_hand(mail))
    before = alice_alerts(mail)
    sender.run("cp -p /etc/bulkrelay/imap-password /tmp/pw.bak && echo wrong > /etc/bulkrelay/imap-password")
    try:
        for _ in range(3):
            assert poller_pass(SENDER)[0].returncode != 0
        # what the audit reads: the unit has failed, and status says why and since when
        assert sender.run("systemctl is-failed bulkrelay-bounces.service").stdout.strip() == "failed"
        state = poller_status(sender)
        assert state["ok"] is False and state["failures_in_a_row"] == 3 and state["admin_alerted"] is True
        assert "login as bounces refused" in state["detail"] and state["age_seconds"] < 60
        text = bulkrelay(sender, "status").stdout
        assert "bounce poller: last pass" in text and "FAILED (3 in a row)" in text, text
        new = wait_for("the alert mail", lambda: alice_alerts(mail)[len(before) :])
        assert len(new) == 1 and "FAILING" in new[0], new
    finally:
        sender.run("cp -p /tmp/pw.bak /etc/bulkrelay/imap-password")
    poll(sender)
    poll(sender)
    assert sender.run("systemctl is-failed bulkrelay-bounces.service").stdout.strip() != "failed"
    assert poller_status(sender)["ok"] is True
    new = wait_for(
        "the alert and the recovery mail",
        lambda: len(alice_alerts(mail)) >= len(before) + 2 and alice_alerts(mail)[len(before) :],
    )
    assert len(new) == 2 and "recovered" in new[1], new
