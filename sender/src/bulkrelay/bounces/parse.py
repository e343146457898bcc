"""Read one message from the bounce mailbox and say what it is.

Categories, checked in this order:

* ``complaint`` - an ARF feedback report (RFC 5965, ``message/feedback-report``);
* ``bounce`` - an RFC 3464 DSN (``message/delivery-status``) with failed or delayed
  recipients, or a non-standard bounce recognised by a detector in ``formats``;
* ``notice`` - a DSN that reports only success (delivered/relayed/expanded);
* ``autoreply`` - an automatic reply (RFC 3834 ``Auto-Submitted``, vacation headers);
* ``human`` - everything else: a person wrote to the bounce address. Never acted upon.

The VERP token (``bulkrelay.verp``) maps a bounce back to the queue's recipient row; it is
searched in the delivery headers first, then anywhere in the message (only tokens whose MAC
verifies count, so text a stranger wrote cannot point at another recipient).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
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

    address: str
    status: str
    action: str
    diagnostic: str
    kind: str  # "hard" | "soft"


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

    def worst(self) -> Failure | None:
        """The failure that decides: a hard one if any, else the first."""
        for failure in self.failures:
            if failure.kind == "hard":
                return failure
        return self.failures[0] if self.failures else None


def _one_line(text: str) -> str:
    return " ".join((text or "").split())


def _unwrap(value: str, pattern: re.Pattern) -> str:
    return pattern.sub("", _one_line(value), count=1)


def _clean_address(value: str) -> str:
    value = _unwrap(value, _ADDR_TYPE).strip().strip("<>").strip()
    return value


def _text_of(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        inner = part.get_payload()
        return inner if isinstance(inner, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _status_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a message/delivery-status (or feedback-report) part."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, email.message.Message) for p in payload):
        return payload
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


def _dsn_failures(part: email.message.Message) -> tuple[list[Failure], bool]:
    """Failures of a delivery-status part, and whether it listed any recipient at all."""
    blocks = _status_blocks(part)
    failures: list[Failure] = []
    seen_any = False
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        final = block.get("Final-Recipient") or block.get("Original-Recipient")
        if not final:
            continue
        seen_any = True
        action = _one_line(block.get("Action", "")).lower()
        if action in ("delivered", "relayed", "expanded"):
            continue
        diagnostic = _unwrap(str(block.get("Diagnostic-Code", "")), _DIAG_TYPE)
        status = find_status(str(block.get("Status", ""))) or status_from_text(diagnostic)
        if not action:
            action = "delayed" if status.startswith("4") and "failed" not in diagnostic.lower() else "failed"
        failures.append(
            Failure(
                address=_clean_address(str(final)),
                status=status,
                action=action,
                diagnostic=diagnostic,
                kind=classify(status, diagnostic, action),
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
        for part in dsn_parts:
            found, any_recipient = _dsn_failures(part)
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

    detected = formats.detect(msg, _text_of_all(msg))
    if detected is not None:
        name, items = detected
        result.category, result.format = "bounce", name
        for address, diagnostic in items:
            status = status_from_text(diagnostic)
            result.failures.append(
                Failure(
                    address=address,
                    status=status,
                    action="failed",
                    diagnostic=_one_line(diagnostic)[:500],
                    kind=classify(status, diagnostic, "failed"),
                )
            )
        return result

    if is_autoreply(msg):
        result.category, result.format = "autoreply", "rfc3834"
    return result


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
