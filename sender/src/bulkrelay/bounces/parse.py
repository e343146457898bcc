"""Read one message from the bounce mailbox and say what it is.

Categories, checked in this order:

* ``complaint`` - an ARF feedback report (RFC 5965, ``message/feedback-report``);
* ``bounce`` - an RFC 3464 DSN (``message/delivery-status``) with failed or delayed
  recipients, or a non-standard bounce: our detectors in ``formats`` (which keep each
  recipient's reason) and flufl.bounce (Mailman's detectors for many MTAs) find the recipients;
  or, when nothing names a recipient, a message from a mailer daemon (null sender,
  MAILER-DAEMON, postmaster) to a valid VERP address: a bounce for that address;
* ``notice`` - a DSN that reports only success (delivered/relayed/expanded);
* ``autoreply`` - an automatic reply (RFC 3834 ``Auto-Submitted``, vacation headers);
* ``human`` - everything else: a person wrote to the bounce address. Never acted upon.

Status and Action always come from our own reading (RFC 3464 fields, else the receiver's words
in ``classify``): mailbox full is soft, warnings (flufl's "temporary") are ``delayed``.

The VERP token (``bulkrelay.verp``) maps a bounce back to the queue's recipient row; it is
searched in the delivery headers first, then anywhere in the message (only tokens whose MAC
verifies count, so text a stranger wrote cannot point at another recipient).
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import email.utils
import quopri
import re
from dataclasses import dataclass, field

from bulkrelay import verp
from bulkrelay.bounces import formats
from bulkrelay.bounces.classify import classify, find_status, status_from_text

_ADDR_TYPE = re.compile(r"^\s*(rfc822|utf-8)\s*;\s*", re.I)
_DIAG_TYPE = re.compile(r"^\s*(smtp|x-[a-z0-9-]+)\s*;\s*", re.I)
_DELIVERY_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")


@dataclass
class Failure:
    """One recipient a bounce reports on."""

    address: str  # "" when the bounce names no address (VERP evidence only)
    status: str
    action: str  # failed | delayed (a warning: never counts toward suppression)
    diagnostic: str
    kind: str  # "hard" | "soft"
    original: str = ""  # RFC 3464 Original-Recipient, when it differs from the final one


@dataclass
class Analysis:
    category: str  # complaint | bounce | notice | autoreply | human
    format: str  # rfc3464, arf, qmail, exim, sendmail-text, generic-text, rfc3834, ...
    recipient_id: int | None = None
    failures: list[Failure] = field(default_factory=list)
    complained: str = ""  # ARF: the original recipient who complained
    feedback_type: str = ""
    message_id: str = ""
    subject: str = ""
    sender: str = ""

    @property
    def is_bounce(self) -> bool:
        return self.category in ("bounce", "complaint", "notice")

    def worst(self, failures: list[Failure] | None = None) -> Failure | None:
        """The failure that decides: a hard failed one if any, else a failed one, else the first."""
        failures = self.failures if failures is None else failures
        ranked = sorted(failures, key=lambda f: (f.action != "failed", f.kind != "hard"))
        return ranked[0] if ranked else None


def _one_line(text: str) -> str:
    return " ".join((text or "").split())


def _unwrap(value: str, pattern: re.Pattern) -> str:
    return pattern.sub("", _one_line(value), count=1)


def _clean_address(value: str) -> str:
    value = _unwrap(value, _ADDR_TYPE).strip().strip("<>").strip()
    return value


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes as text: UTF-8 when they are valid UTF-8, else the declared charset, else Latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(charset or "latin-1", "replace")
    except LookupError:
        return data.decode("latin-1")


def _text_of(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        inner = part.get_payload()
        return inner if isinstance(inner, str) else ""
    return decode_text(payload, part.get_content_charset())


def _field(block: email.message.Message, name: str, charset: str | None) -> str:
    """A report field as text; raw 8-bit bytes (kept as surrogates by the parser) decoded."""
    value = str(block.get(name, "") or "")
    if any("\udc80" <= c <= "\udcff" for c in value):
        value = decode_text(value.encode("ascii", "surrogateescape"), charset)
    return value


def _encoded_body(part: email.message.Message) -> bytes:
    """The body of a report part whose Content-Transfer-Encoding the parser did not undo."""
    raw = part.as_bytes(policy=email.policy.compat32)
    body = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[-1]
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==", validate=False)
    return quopri.decodestring(body)


def _status_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a message/delivery-status (or feedback-report) part."""
    payload = part.get_payload()
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte in ("base64", "quoted-printable"):
        text = decode_text(_encoded_body(part), part.get_content_charset())
    elif isinstance(payload, list) and all(isinstance(p, email.message.Message) for p in payload):
        return payload
    else:
        text = _text_of(part)
    blocks = [b for b in re.split(r"\r?\n\s*\r?\n", text.strip()) if b.strip()]
    return [email.message_from_string(b.strip() + "\n", policy=email.policy.compat32) for b in blocks]


def _header_text(msg: email.message.Message) -> str:
    return "\n".join(f"{k}: {v}" for k, v in msg.items())


def _find_recipient_id(msg: email.message.Message, raw: bytes, key: bytes, prefix: str) -> int | None:
    if not key:
        return None
    for name in _DELIVERY_HEADERS:
        for value in msg.get_all(name, []) or []:
            for _, addr in email.utils.getaddresses([str(value)]):
                found = verp.parse_address(addr, key, prefix)
                if found is not None:
                    return found
    return verp.find_in_text(raw.decode("utf-8", "replace"), key, prefix)


def _parts(msg: email.message.Message) -> list[email.message.Message]:
    return list(msg.walk())


def _dsn_failures(part: email.message.Message, charset: str | None) -> tuple[list[Failure], bool]:
    """Failed and delayed recipients of a delivery-status part, each with its own status, and
    whether the part listed any recipient at all (success-only reports list some)."""
    blocks = _status_blocks(part)
    failures: list[Failure] = []
    seen_any = False
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        final = _field(block, "Final-Recipient", charset) or _field(block, "Original-Recipient", charset)
        if not final:
            continue
        seen_any = True
        action = _one_line(block.get("Action", "")).lower()
        if action in ("delivered", "relayed", "expanded"):
            continue
        diagnostic = _unwrap(_field(block, "Diagnostic-Code", charset), _DIAG_TYPE)
        status_field = _one_line(str(block.get("Status", "")))
        if not diagnostic and "(" in status_field:
            diagnostic = status_field  # "5.0.0 (recipient reached disk quota)"
        status = find_status(status_field) or status_from_text(diagnostic)
        if action not in ("failed", "delayed"):
            action = "delayed" if status.startswith("4") and "failed" not in diagnostic.lower() else "failed"
        address = _clean_address(final)
        original = _clean_address(_field(block, "Original-Recipient", charset))
        if original and not formats.is_address(address):
            address, original = original, ""  # an X.400 final recipient: the one we mailed
        failures.append(
            Failure(
                address=address,
                status=status,
                action=action,
                diagnostic=diagnostic,
                kind=classify(status, diagnostic, action),
                original=original if original.lower() != address.lower() else "",
            )
        )
    return failures, seen_any


def _arf(msg: email.message.Message, part: email.message.Message) -> tuple[str, str]:
    blocks = _status_blocks(part)
    fields = blocks[0] if blocks else email.message.Message()
    feedback_type = _one_line(fields.get("Feedback-Type", "")).lower() or "abuse"
    complained = _clean_address(str(fields.get("Original-Rcpt-To", "")))
    if not complained:
        for sub in _parts(msg):
            if sub.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
                inner = sub.get_payload()
                if isinstance(inner, list) and inner:
                    to = inner[0].get("To", "")
                else:
                    to = email.message_from_string(_text_of(sub), policy=email.policy.compat32).get("To", "")
                addrs = email.utils.getaddresses([str(to)])
                if addrs and addrs[0][1]:
                    complained = addrs[0][1]
                    break
    return feedback_type, complained


def is_autoreply(msg: email.message.Message) -> bool:
    """RFC 3834 Auto-Submitted, or the headers vacation programs and Exchange set."""
    auto = _one_line(str(msg.get("Auto-Submitted", ""))).lower()
    if auto and auto != "no":
        return True
    if (
        msg.get("X-Autoreply")
        or msg.get("X-Autorespond")
        or msg.get("X-Auto-Response-Suppress", "").lower() == "all"
    ):
        return True
    precedence = _one_line(str(msg.get("Precedence", ""))).lower()
    return precedence in ("auto_reply", "auto-reply")


def analyse(raw: bytes, *, key: bytes = b"", prefix: str = "bounces") -> Analysis:
    """Classify one raw message (never raises on malformed input)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    result = Analysis(category="human", format="none")
    result.message_id = _one_line(str(msg.get("Message-ID", "")))
    result.subject = _one_line(str(msg.get("Subject", "")))[:200]
    result.sender = _one_line(str(msg.get("From", "")))[:200]
    result.recipient_id = _find_recipient_id(msg, raw, key, prefix)
    parts = _parts(msg)

    for part in parts:
        if part.get_content_type() == "message/feedback-report":
            result.category, result.format = "complaint", "arf"
            result.feedback_type, result.complained = _arf(msg, part)
            return result

    dsn_parts = [
        p
        for p in parts
        if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    ]
    if dsn_parts:
        failures: list[Failure] = []
        listed = False
        charset = msg.get_content_charset()
        for part in dsn_parts:
            found, any_recipient = _dsn_failures(part, part.get_content_charset() or charset)
            failures.extend(found)
            listed = listed or any_recipient
        if listed:
            result.format = "rfc3464"
            result.failures = failures
            result.category = "bounce" if failures else "notice"
            return result

    if is_autoreply(msg) and not formats.looks_like_bounce(msg):
        result.category, result.format = "autoreply", "rfc3834"
        return result

    text = _text_of_all(msg)
    name, failures = _nonstandard_failures(msg, text)
    if failures:
        result.category, result.format, result.failures = "bounce", name, failures
        return result

    if result.recipient_id is not None and from_mailer(msg):
        # VERP is evidence: a mailer daemon wrote to one of our VERP addresses, in a form
        # nothing above understands. A bounce for that recipient, soft unless it says more.
        diagnostic = _one_line(text)[:500] or result.subject or "unrecognised bounce"
        status = find_status(text)
        # hard only with a 5.x.x code or an unambiguous phrase (classify's rules)
        kind = classify(status, text, "failed")
        result.category, result.format = "bounce", "verp-only"
        result.failures = [Failure("", status or "", "failed", diagnostic, kind)]
        return result

    if is_autoreply(msg):
        result.category, result.format = "autoreply", "rfc3834"
    return result


def from_mailer(msg: email.message.Message) -> bool:
    """Sent by a mail system: MAILER-DAEMON or postmaster, or the null sender (not an auto-reply)."""
    addresses = [a for _, a in email.utils.getaddresses([str(msg.get("From", ""))])]
    if any(re.match(r"(mailer-daemon|postmaster)@", a or "", re.I) for a in addresses):
        return True
    null = str(msg.get("Return-Path", "")).strip() in ("<>", "")
    return null and "Return-Path" in msg and not is_autoreply(msg)


def _nonstandard_failures(msg: email.message.Message, text: str) -> tuple[str, list[Failure]]:
    """Our detectors (which keep each recipient's own reason) first, then flufl.bounce's."""
    items: list[tuple[str, str]] = []
    name = "none"
    detected = formats.detect(msg, text)
    if detected is not None:
        name, items = detected
    temporary, permanent = formats.flufl_recipients(msg)
    known = {a.lower() for a, _ in items}
    extra = sorted(a for a in temporary | permanent if a.lower() not in known)
    if extra and name == "none":
        name = "flufl"
    only_one = len(items) + len(extra) == 1
    items += [(a, _reason_near(text, a, whole=only_one)) for a in extra]
    warned = {a.lower() for a in temporary}
    failures = []
    for address, diagnostic in items:
        status = status_from_text(diagnostic)
        action = "delayed" if address.lower() in warned else "failed"
        if action == "delayed" and not status.startswith("4"):
            status = "4.0.0"
        failures.append(
            Failure(
                address=address,
                status=status,
                action=action,
                diagnostic=_one_line(diagnostic)[:500],
                kind=classify(status, diagnostic, action),
            )
        )
    return name, failures


def _reason_near(text: str, address: str, *, whole: bool) -> str:
    """The words that explain one failure: the lines from the address on, else (when the
    bounce names only this recipient) the bounce's whole human-readable text."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if address.lower() in line.lower():
            near = " ".join(x.strip() for x in lines[number : number + 4])
            if status_from_text(near) or not whole:
                return near
            break
    body = re.split(r"^-+ *(Original message|This is a copy|Below this line)", text, flags=re.M | re.I)[0]
    return _one_line(body)[:2000] if whole else f"{address}: reported by the bounce, no reason given"


def _text_of_all(msg: email.message.Message) -> str:
    """The first text/plain body (the human-readable part of a non-standard bounce)."""
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() == "text/plain":
            return _text_of(part)
        if part.get_content_type() == "message/rfc822":
            break
    return _text_of(msg) if not msg.is_multipart() else ""


def header_summary(msg: email.message.Message) -> str:
    return _header_text(msg)
