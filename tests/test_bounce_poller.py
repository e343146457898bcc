"""The poller's mailbox rules against an in-memory IMAP double (the real Dovecot run is in
molecule/bounces): bounces moved never deleted, other mail never marked read, forwards once,
MOVE/COPY fallbacks, and a failed move never counts a bounce twice."""

from __future__ import annotations

import smtplib

import pytest
from conftest import queued

from bulkrelay import suppression, verp
from bulkrelay.bounces import poller
from bulkrelay.bounces.policy import Policy

KEY = b"poller-test-key-0123456789abcdef"
T0 = 1_800_000_000.0


class FakeIMAP:
    """Just enough of imaplib.IMAP4 for poll_once, recording every command."""

    def __init__(self, capabilities=("IMAP4REV1", "MOVE", "UIDPLUS")):
        self.capabilities = tuple(capabilities)
        self.folders: dict[str, dict[int, dict]] = {"INBOX": {}}
        self.next_uid = 1
        self.selected = ""
        self.commands: list[tuple] = []
        self.fail_move = False

    def add(self, raw: bytes, folder="INBOX", flags=()):
        self.folders[folder][self.next_uid] = {"raw": raw, "flags": set(flags)}
        self.next_uid += 1

    def list(self, ref, pattern):
        name = pattern.strip('"')
        return "OK", [b'(\\HasNoChildren) "/" "' + name.encode() + b'"'] if name in self.folders else [None]

    def create(self, name):
        self.folders.setdefault(name.strip('"'), {})
        return "OK", [b"created"]

    def subscribe(self, name):
        return "OK", [b""]

    def select(self, name):
        self.selected = name.strip('"')
        return "OK", [str(len(self.folders[self.selected])).encode()]

    def response(self, code):
        return code, [b"42"]

    def uid(self, command, *args):
        self.commands.append((command, *args))
        box = self.folders[self.selected]
        if command == "SEARCH":
            return "OK", [b" ".join(str(u).encode() for u in sorted(box))]
        uid = int(args[0])
        if command == "FETCH":
            assert args[1] == "(BODY.PEEK[])", "must never set \\Seen"
            return "OK", [(b"1 (UID %d BODY[] {n}" % uid, box[uid]["raw"]), b")"]
        if command == "MOVE":
            if self.fail_move:
                return "NO", [b"[SERVERBUG] move failed"]
            self.folders[args[1].strip('"')][uid] = box.pop(uid)
            return "OK", [b""]
        if command == "COPY":
            self.folders[args[1].strip('"')][uid] = {"raw": box[uid]["raw"], "flags": set(box[uid]["flags"])}
            return "OK", [b""]
        if command == "STORE":
            box[uid]["flags"].add("\\Deleted")
            return "OK", [b""]
        if command == "EXPUNGE":
            if "\\Deleted" in box[uid]["flags"]:
                box.pop(uid)
            return "OK", [b""]
        raise AssertionError(f"unexpected UID {command}")


@pytest.fixture
def clock():
    return lambda: T0


def dsn(rid, address, status="5.1.1", diagnostic="550 5.1.1 User unknown", mid="d1"):
    envelope = verp.make_address("bounces", "bounce.example.test", rid, KEY)
    return (
        f"From: MAILER-DAEMON@mx.customer.test\nTo: {envelope}\nSubject: Undelivered Mail\n"
        f"Message-ID: <{mid}@x>\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        f"Final-Recipient: rfc822; {address}\nAction: failed\nStatus: {status}\n"
        f"Diagnostic-Code: smtp; {diagnostic}\n"
        "\n--B--\n"
    ).encode()


HUMAN = b"From: Dave <dave@customer.test>\nTo: bounces@bounce.example.test\nSubject: Re: invoice\n\nWrong.\n"
AUTO = (
    b"From: carla@customer.test\nTo: bounces@bounce.example.test\nSubject: Out of office\n"
    b"Auto-Submitted: auto-replied\n\nAway.\n"
)
SETTINGS = poller.PollSettings(
    forward_to="humans@example.test",
    forward_from="bounces@bounce.example.test",
    policy=Policy(soft_limit=2, soft_window_days=7),
)


def test_bounce_moved_others_kept_unread_and_forwarded_once(queue):
    imap = FakeIMAP()
    rid = queued(queue, "nobody@customer.test")
    imap.add(dsn(rid, "nobody@customer.test"))
    imap.add(HUMAN)
    imap.add(AUTO)
    sent = []
    forward = lambda message, mail_from, rcpt: sent.append((message, mail_from, rcpt))  # noqa: E731

    result = poller.poll_once(imap, queue, key=KEY, settings=SETTINGS, forward=forward, clock=lambda: T0)
    assert result.outcomes == {"suppressed": 1, "human-forwarded": 1, "autoreply": 1}
    assert list(imap.folders["bulkrelay/processed"]) == [1]
    assert sorted(imap.folders["INBOX"]) == [2, 3]
    assert all(not m["flags"] for m in imap.folders["INBOX"].values()), "nothing marked read or deleted"
    assert queue.recipient(rid)["state"] == "bounced"
    assert suppression.lookup(queue.connection, "nobody@customer.test", now=T0)
    assert len(sent) == 1
    message, mail_from, rcpt = sent[0]
    assert (mail_from, rcpt) == ("bounces@bounce.example.test", "humans@example.test")
    assert message["Reply-To"] == "Dave <dave@customer.test>" and message["Subject"] == "Fwd: Re: invoice"

    again = poller.poll_once(imap, queue, key=KEY, settings=SETTINGS, forward=forward, clock=lambda: T0)
    assert again.examined == 0 and again.kept == 2 and len(sent) == 1


def test_failed_forward_is_retried_next_time(queue):
    imap = FakeIMAP()
    imap.add(HUMAN)

    def broken(message, mail_from, rcpt):
        raise smtplib.SMTPServerDisconnected("connection lost")

    first = poller.poll_once(imap, queue, key=KEY, settings=SETTINGS, forward=broken, clock=lambda: T0)
    assert first.errors and first.forwarded == 0
    sent = []
    second = poller.poll_once(
        imap, queue, key=KEY, settings=SETTINGS, forward=lambda *a: sent.append(a), clock=lambda: T0
    )
    assert second.forwarded == 1 and len(sent) == 1 and not second.errors


def test_failed_move_never_counts_twice(queue):
    imap = FakeIMAP()
    rid = queued(queue, "full@customer.test")
    imap.add(dsn(rid, "full@customer.test", "4.2.2", "452 4.2.2 Mailbox full", mid="soft1"))
    imap.fail_move = True
    first = poller.poll_once(imap, queue, key=KEY, settings=SETTINGS, clock=lambda: T0)
    assert first.outcomes == {"soft-counted": 1} and first.errors and 1 in imap.folders["INBOX"]
    imap.fail_move = False
    second = poller.poll_once(imap, queue, key=KEY, settings=SETTINGS, clock=lambda: T0)
    assert second.outcomes == {"duplicate": 1} and not second.errors
    # with soft_limit 2, counting the same DSN twice would have suppressed the address
    assert suppression.lookup(queue.connection, "full@customer.test", now=T0) is None
    assert list(imap.folders["bulkrelay/processed"]) == [1]


def test_without_move_copy_and_expunge_only_that_uid(queue):
    imap = FakeIMAP(capabilities=("IMAP4REV1", "UIDPLUS"))
    imap.add(b"From: someone@else\nSubject: flagged by a person\n\nx\n", flags={"\\Deleted"})
    rid = queued(queue, "nobody@customer.test")
    imap.add(dsn(rid, "nobody@customer.test"))
    poller.poll_once(imap, queue, key=KEY, settings=poller.PollSettings(), clock=lambda: T0)
    assert ("EXPUNGE", b"2") in imap.commands and ("EXPUNGE", b"1") not in imap.commands
    assert 1 in imap.folders["INBOX"], "a message someone else flagged is not expunged"
    assert 2 in imap.folders["bulkrelay/processed"]


def test_without_move_or_uidplus_nothing_is_expunged(queue):
    imap = FakeIMAP(capabilities=("IMAP4REV1",))
    rid = queued(queue, "nobody@customer.test")
    imap.add(dsn(rid, "nobody@customer.test"))
    poller.poll_once(imap, queue, key=KEY, settings=poller.PollSettings(), clock=lambda: T0)
    assert not [c for c in imap.commands if c[0] == "EXPUNGE"]
    assert imap.folders["INBOX"][1]["flags"] == {"\\Deleted"} and 1 in imap.folders["bulkrelay/processed"]


def test_connect_refuses_plain_imap():
    with pytest.raises(poller.PollError, match="plain IMAP is not supported"):
        poller.connect("127.0.0.1", 143, tls="none", user="u", password="p")


def test_other_folder_moves_but_keeps_unread(queue):
    imap = FakeIMAP()
    imap.add(HUMAN)
    settings = poller.PollSettings(other_folder="kept")
    result = poller.poll_once(imap, queue, key=KEY, settings=settings, clock=lambda: T0)
    assert result.moved == 1 and result.outcomes == {"human": 1}
    assert imap.folders["INBOX"] == {} and imap.folders["kept"][1]["flags"] == set()


def test_missing_ca_file_is_named(tmp_path):
    with pytest.raises(poller.PollError, match=r"missing\.pem does not exist"):
        poller.connect(
            "127.0.0.1", 993, tls="ssl", user="u", password="p", ca_file=str(tmp_path / "missing.pem")
        )


class MaildirDovecot(FakeIMAP):
    """Debian's stock Dovecot with Maildir++: '.' between levels, '/' refused in names; or a
    server that puts personal folders under a namespace prefix, or forbids CREATE."""

    def __init__(self, delimiter=".", prefix="", forbid_create=False):
        caps = ("IMAP4REV1", "MOVE", "UIDPLUS") + (("NAMESPACE",) if prefix else ())
        super().__init__(capabilities=caps)
        self.delimiter, self.prefix, self.forbid_create = delimiter, prefix, forbid_create

    def list(self, ref, pattern):
        if pattern == '""':
            return "OK", [b'(\\Noselect) "' + self.delimiter.encode() + b'" ""']
        return super().list(ref, pattern)

    def namespace(self):
        return "OK", [b'(("' + self.prefix.encode() + b'" "' + self.delimiter.encode() + b'")) NIL NIL']

    def create(self, name):
        if self.forbid_create:
            return "NO", [b"[NOPERM] Permission denied"]
        if "/" in name and self.delimiter != "/":
            return "NO", [b"[CANNOT] Invalid mailbox name: Name must not have '/' characters."]
        return super().create(name)


@pytest.mark.parametrize(
    ("server", "folder"),
    [
        (MaildirDovecot("."), "bulkrelay.processed"),
        (MaildirDovecot("/"), "bulkrelay/processed"),
        (MaildirDovecot(".", prefix="INBOX."), "INBOX.bulkrelay.processed"),
    ],
    ids=["maildir-dot", "slash", "namespace-prefix"],
)
def test_folders_spelled_as_the_server_spells_them(queue, server, folder):
    rid = queued(queue, "gone@customer.test")
    server.add(dsn(rid, "gone@customer.test"))
    result = poller.poll_once(server, queue, key=KEY, settings=SETTINGS, forward=lambda *a: None)
    assert result.errors == [] and result.moved == 1
    assert len(server.folders[folder]) == 1 and server.folders["INBOX"] == {}


def test_forbidden_create_is_one_clear_error(queue):
    server = MaildirDovecot(".", forbid_create=True)
    with pytest.raises(poller.PollError) as caught:
        poller.poll_once(server, queue, key=KEY, settings=SETTINGS, forward=lambda *a: None)
    message = str(caught.value)
    assert "'bulkrelay.processed'" in message and "[NOPERM]" in message
    assert "doveadm mailbox create" in message and "bounce_poller__processed_folder" in message
    # an existing folder needs no CREATE
    server.folders["bulkrelay.processed"] = {}
    poller.poll_once(server, queue, key=KEY, settings=SETTINGS, forward=lambda *a: None)


def test_server_name_rules():
    dot = poller.Hierarchy(".", "")
    assert poller.server_name("INBOX", poller.Hierarchy(".", "INBOX.")) == "INBOX"
    assert poller.server_name("", dot) == ""
    assert poller.server_name("a/b/c", dot) == "a.b.c"
    assert poller.server_name("already.dotted", dot) == "already.dotted"
    assert poller.server_name("INBOX.x", poller.Hierarchy(".", "INBOX.")) == "INBOX.x"
