"""The IMAP poller: read the bounce mailbox over TLS, act on bounces, keep everything else.

Rules that make it safe to point at a real mailbox:

* messages are fetched with ``BODY.PEEK[]``: reading never sets ``\\Seen``;
* nothing is ever deleted: a processed bounce is moved (IMAP MOVE, or COPY + \\Deleted +
  UID EXPUNGE of that one UID when the server lacks MOVE) to ``processed_folder``;
* mail that is not a bounce (a person's reply, an auto-reply) stays where it is, unseen, or is
  moved to ``other_folder`` when one is set; a human reply is forwarded once to ``forward_to``;
* the database is committed before the message is moved, and a processed bounce is
  remembered by key, so a crash between the two never counts a bounce twice; messages kept in
  the mailbox are remembered by (UIDVALIDITY, UID) so they are forwarded once.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
import imaplib
import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

from bulkrelay.bounces import policy as bounce_policy
from bulkrelay.bounces.parse import analyse
from bulkrelay.config import BouncesConfig

log = logging.getLogger("bulkrelay.bounces")

SEEN_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bounce_mailbox_seen (mailbox TEXT NOT NULL, uidvalidity INTEGER NOT NULL, "
    "uid INTEGER NOT NULL, outcome TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (mailbox, uidvalidity, uid))"
)


class PollError(Exception):
    """The mailbox could not be read (connection, TLS, login, missing folder): one line, the fix."""


@dataclass
class PollSettings:
    mailbox: str = BouncesConfig().mailbox
    processed_folder: str = BouncesConfig().processed_folder
    other_folder: str = BouncesConfig().other_folder
    forward_to: str = ""
    forward_from: str = ""
    verp_prefix: str = "bounces"
    imap_user: str = ""  # named in the "create the folder" advice
    policy: bounce_policy.Policy = field(default_factory=bounce_policy.Policy)


@dataclass
class PollResult:
    examined: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    kept: int = 0
    moved: int = 0
    errors: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> str:
        parts = [f"examined={self.examined}"]
        parts += [f"{k}={v}" for k, v in sorted(self.outcomes.items())]
        parts += [
            f"moved={self.moved}",
            f"kept={self.kept}",
            f"forwarded={self.forwarded}",
            f"errors={len(self.errors)}",
        ]
        return " ".join(parts)


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Verifying TLS context: the system CAs, or only ``ca_file`` when given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect(
    host: str, port: int, *, tls: str, user: str, password: str, ca_file: str = "", timeout: float = 30.0
):
    """Log in to the IMAP server over TLS ("ssl" = implicit TLS, "starttls"); raises PollError."""
    if not host or not user:
        raise PollError("bounces.imap_host and bounces.imap_user must be set in the [bounces] section")
    if ca_file and not os.path.isfile(ca_file):
        raise PollError(
            f"bounces.tls_ca_file: {ca_file} does not exist; fix the path, or leave it empty for system CAs"
        )
    try:
        context = tls_context(ca_file)
        if tls == "ssl":
            imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
        elif tls == "starttls":
            imap = imaplib.IMAP4(host, port, timeout=timeout)
            imap.starttls(ssl_context=context)
        else:
            raise PollError(f"bounces.imap_tls: {tls!r} is not ssl or starttls; plain IMAP is not supported")
    except ssl.SSLCertVerificationError as exc:
        raise PollError(
            f"IMAP {host}:{port}: TLS certificate not trusted ({exc.verify_message}); "
            "set bounces.tls_ca_file to the CA that signed the server's certificate"
        ) from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise PollError(
            f"IMAP {host}:{port}: cannot connect ({exc}); check imap_host, imap_port and imap_tls"
        ) from None
    try:
        imap.login(user, password)
    except imaplib.IMAP4.error:
        imap.shutdown()
        raise PollError(
            f"IMAP {host}:{port}: login as {user} refused; check imap_user and the password file"
        ) from None
    # the capabilities change after login (MOVE, UIDPLUS are often announced only then)
    typ, data = imap.capability()
    if typ == "OK" and data and data[0]:
        imap.capabilities = tuple(data[0].decode("ascii", "replace").upper().split())
    return imap


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(typ: str, data, what: str) -> list:
    if typ != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise PollError(f"IMAP {what} failed: {detail or typ}")
    return data


@dataclass(frozen=True)
class Hierarchy:
    """How the server spells folder names: its delimiter and personal namespace prefix."""

    delimiter: str = "/"
    prefix: str = ""


_QUOTED = rb'"((?:\\.|[^"\\])*)"'


def _unquote(value: bytes) -> str:
    return re.sub(rb"\\(.)", rb"\1", value).decode("utf-8", "replace")


def hierarchy(imap) -> Hierarchy:
    """Ask the server: ``LIST "" ""`` gives the delimiter, NAMESPACE (RFC 2342) the prefix."""
    delimiter = "/"
    typ, data = imap.list('""', '""')
    for item in data or []:
        line = item if isinstance(item, bytes) else b""
        found = re.match(rb"\([^)]*\)\s+(?:" + _QUOTED + rb"|NIL)", line, re.I)
        if typ == "OK" and found:
            delimiter = _unquote(found.group(1)) if found.group(1) is not None else ""
            break
    prefix = ""
    if "NAMESPACE" in set(imap.capabilities):
        typ, data = imap.namespace()
        first = data[0] if typ == "OK" and data and isinstance(data[0], bytes) else b""
        found = re.match(rb"\(\(" + _QUOTED, first)
        if found:
            prefix = _unquote(found.group(1))
    return Hierarchy(delimiter, prefix)


def server_name(name: str, where: Hierarchy) -> str:
    """A folder configured with "/" between levels ("bulkrelay/processed"), as the server spells
    it: its own delimiter between levels ("bulkrelay.processed" on Dovecot with Maildir++), under
    its personal namespace prefix ("INBOX.bulkrelay.processed" on Courier). INBOX stays INBOX."""
    if not name or name.upper() == "INBOX":
        return name
    levels = [level for level in name.split("/") if level]
    spelled = (where.delimiter or "_").join(levels)
    if where.prefix and not spelled.startswith(where.prefix) and spelled.upper() != "INBOX":
        spelled = where.prefix + spelled
    return spelled


def _ensure_folder(imap, folder: str, setting: str, user: str) -> None:
    if not folder:
        return
    typ, data = imap.list('""', _quote(folder))
    if typ == "OK" and any(d for d in data if d):
        return
    typ, data = imap.create(_quote(folder))
    detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
    if typ != "OK" and "exists" not in detail.lower():
        raise PollError(
            f"IMAP server refused to create the folder {folder!r} ({detail or typ}); create it on the "
            f"server (Dovecot: doveadm mailbox create -u {user or 'USER'} '{folder}'; or in a mail "
            f"client), or set bounces.{setting} (inventory: bounce_poller__{setting}) to a folder "
            "that exists"
        )
    imap.subscribe(_quote(folder))


def _uidvalidity(imap) -> int:
    _, data = imap.response("UIDVALIDITY")
    try:
        return int(data[0])
    except (TypeError, ValueError, IndexError):
        return 0


def _move(imap, uid: bytes, folder: str) -> None:
    capabilities = set(imap.capabilities)
    if "MOVE" in capabilities:
        _ok(*imap.uid("MOVE", uid, _quote(folder)), f"MOVE to {folder}")
        return
    _ok(*imap.uid("COPY", uid, _quote(folder)), f"COPY to {folder}")
    _ok(*imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE \\Deleted")
    if "UIDPLUS" in capabilities:
        _ok(*imap.uid("EXPUNGE", uid), "UID EXPUNGE")
    # without UIDPLUS the original stays flagged \Deleted: a plain EXPUNGE could remove
    # messages someone else flagged, so it is left to the mailbox's owner


def _fetch(imap, uid: bytes) -> bytes | None:
    typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
    _ok(typ, data, f"FETCH {uid!r}")
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            return item[1]
    return None


def build_forward(raw: bytes, *, forward_to: str, forward_from: str) -> EmailMessage:
    """The original attached as message/rfc822, Reply-To its author, so a person can answer."""
    original = email.message_from_bytes(raw, policy=email.policy.default)
    subject = " ".join(str(original.get("Subject", "")).split())
    author = str(original.get("From", ""))
    forward = EmailMessage()
    forward["From"] = forward_from
    forward["To"] = forward_to
    forward["Subject"] = f"Fwd: {subject}" if subject else "Fwd: reply to the bounce address"
    forward["Date"] = email.utils.formatdate(localtime=False)
    forward["Message-ID"] = email.utils.make_msgid(domain=forward_from.rpartition("@")[2] or None)
    forward["Auto-Submitted"] = "auto-forwarded"
    if author:
        forward["Reply-To"] = author
    forward.set_content(
        "This reply arrived at the bulk-mail bounce address and is not a bounce.\n"
        f"From: {author}\nSubject: {subject}\n\n"
        "The original is attached; it was left unread in the bounce mailbox.\n"
    )
    forward.add_attachment(raw, maintype="message", subtype="rfc822", filename="reply.eml")
    return forward


def smtp_forwarder(host: str, port: int, *, timeout: float = 30.0) -> Callable[..., None]:
    """A forwarder that submits through an SMTP server (the relay's local Postfix); also sends
    the admin's alerts."""

    def send(message: EmailMessage, mail_from: str, rcpt: str | list[str]) -> None:
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.send_message(
                message, from_addr=mail_from, to_addrs=[rcpt] if isinstance(rcpt, str) else rcpt
            )

    return send


def poll_once(
    imap,
    queue,
    *,
    key: bytes,
    settings: PollSettings,
    forward: Callable[[EmailMessage, str, str], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> PollResult:
    """One pass over ``settings.mailbox``; the caller owns the IMAP connection."""
    conn = queue.connection
    bounce_policy.ensure_schema(conn)
    conn.execute(SEEN_SCHEMA)
    result = PollResult()
    where = hierarchy(imap)
    settings = dataclasses.replace(
        settings,
        mailbox=server_name(settings.mailbox, where),
        processed_folder=server_name(settings.processed_folder, where),
        other_folder=server_name(settings.other_folder, where),
    )
    _ensure_folder(imap, settings.processed_folder, "processed_folder", settings.imap_user)
    _ensure_folder(imap, settings.other_folder, "other_folder", settings.imap_user)
    typ, data = imap.select(_quote(settings.mailbox))
    if typ != "OK":
        raise PollError(
            f"IMAP SELECT {settings.mailbox!r} failed; check bounces.mailbox "
            "(inventory: bounce_poller__mailbox)"
        )
    uidvalidity = _uidvalidity(imap)
    typ, data = imap.uid("SEARCH", None, "ALL")
    uids = _ok(typ, data, "UID SEARCH")[0].split() if data and data[0] else []
    for uid in uids:
        seen = conn.execute(
            "SELECT outcome FROM bounce_mailbox_seen WHERE mailbox = ? AND uidvalidity = ? AND uid = ?",
            (settings.mailbox, uidvalidity, int(uid)),
        ).fetchone()
        if seen is not None:
            result.kept += 1
            continue
        try:
            _handle(
                imap,
                queue,
                uid,
                uidvalidity,
                key=key,
                settings=settings,
                forward=forward,
                clock=clock,
                result=result,
            )
        except (PollError, smtplib.SMTPException, OSError) as exc:
            message = f"uid={int(uid)}: {exc}"
            result.errors.append(message)
            log.error("event=bounce_error mailbox=%s %s", settings.mailbox, message)
    log.info("event=poll_done mailbox=%s %s", settings.mailbox, result.summary())
    return result


def _handle(
    imap, queue, uid: bytes, uidvalidity: int, *, key, settings, forward, clock, result: PollResult
) -> None:
    raw = _fetch(imap, uid)
    if raw is None:
        return
    result.examined += 1
    analysis = analyse(raw, key=key, prefix=settings.verp_prefix)
    now = clock()
    if analysis.is_bounce:
        message_key = bounce_policy.message_key(raw, analysis.message_id)
        outcome = bounce_policy.apply(queue, analysis, key=message_key, policy=settings.policy, now=now)
        failure = analysis.worst()
        log.info(
            "event=bounce uid=%d category=%s format=%s recipient=%s status=%s kind=%s outcome=%s",
            int(uid),
            analysis.category,
            analysis.format,
            analysis.recipient_id,
            failure.status if failure else "",
            failure.kind if failure else "",
            outcome,
        )
        result.count(outcome)
        _move(imap, uid, settings.processed_folder)
        result.moved += 1
        return
    # not a bounce: never deleted, never marked read
    outcome = analysis.category
    if analysis.category == "human" and settings.forward_to:
        if forward is None:
            raise PollError("forward_to is set but no SMTP forwarder is configured")
        message = build_forward(raw, forward_to=settings.forward_to, forward_from=settings.forward_from)
        forward(message, settings.forward_from, settings.forward_to)
        result.forwarded += 1
        outcome = "human-forwarded"
    result.count(outcome)
    log.info(
        "event=kept uid=%d category=%s from=%r subject=%r forwarded_to=%s",
        int(uid),
        analysis.category,
        analysis.sender,
        analysis.subject,
        settings.forward_to if outcome == "human-forwarded" else "",
    )
    conn = queue.connection
    conn.execute(
        "INSERT OR REPLACE INTO bounce_mailbox_seen(mailbox, uidvalidity, uid, outcome, at) "
        "VALUES (?, ?, ?, ?, ?)",
        (settings.mailbox, uidvalidity, int(uid), outcome, now),
    )
    if conn.in_transaction:
        conn.commit()
    if settings.other_folder:
        _move(imap, uid, settings.other_folder)
        result.moved += 1
    else:
        result.kept += 1
