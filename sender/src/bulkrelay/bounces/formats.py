"""Detectors for bounces that are not RFC 3464 DSNs: qmail, Exim, old Sendmail, Exchange's
"did not reach", any mailer that names the failed recipients in ``X-Failed-Recipients``, and
flufl.bounce (Mailman's detectors for many more MTAs, ``flufl_recipients``).

Each detector takes the parsed message and its plain-text body and returns the failed
recipients with the text that explains each failure, or None when the format is not its own.
The text is classified afterwards (``classify.status_from_text``) like a DSN's
Diagnostic-Code.
"""

from __future__ import annotations

import email.message
import email.utils
import logging
import re
from collections.abc import Callable

from flufl.bounce import all_failures

log = logging.getLogger("bulkrelay.bounces")

Items = list[tuple[str, str]]

_ADDRESS = r"[^\s<>@\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
_BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery (subsystem|system)", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|failure notice|returned mail|mail delivery failed"
    r"|delivery failure|non[- ]?delivery|could not be delivered|delivery has failed",
    re.I,
)


def looks_like_bounce(msg: email.message.Message) -> bool:
    """From a mailer daemon, with a null Return-Path, or a bounce-style subject."""
    if _BOUNCE_FROM.search(str(msg.get("From", ""))):
        return True
    if str(msg.get("Return-Path", "")).strip() == "<>":
        return True
    return bool(_BOUNCE_SUBJECT.search(str(msg.get("Subject", ""))))


def _qmail(msg: email.message.Message, text: str) -> Items | None:
    if "This is the qmail-send program" not in text:
        return None
    body = text.split("--- Below this line is a copy of the message.", 1)[0]
    permanent = "permanent error" in body
    items: Items = []
    for match in re.finditer(rf"^<({_ADDRESS})>:[ \t]*\r?\n((?:.+\r?\n?)*)", body, re.M):
        diagnostic = " ".join(match.group(2).split())
        if not permanent and not re.search(r"#[245]\.", diagnostic):
            diagnostic = f"(#4.0.0 temporary) {diagnostic}"
        items.append((match.group(1), diagnostic))
    return items or None


def _exim(msg: email.message.Message, text: str) -> Items | None:
    if "could not be delivered to one or more of its" not in text and not (
        msg.get("X-Failed-Recipients") and "address(es) failed" in text
    ):
        return None
    body = re.split(r"^-{3,} This is a copy of the message", text, maxsplit=1, flags=re.M)[0]
    _, marker, listing = body.partition("failed:")
    if not marker:
        return None
    items: Items = []
    current: list[str] | None = None
    for line in listing.splitlines():
        address = re.match(rf"^  (?! )<?({_ADDRESS})>?\s*$", line)
        if address:
            current = [address.group(1), ""]
            items.append(current)  # type: ignore[arg-type]
        elif current is not None and line.startswith("    "):
            current[1] = (current[1] + " " + line.strip()).strip()
        elif line.strip() and current is not None and not line.startswith(" "):
            current = None
    return [(a, d) for a, d in items] or None


def _sendmail_text(msg: email.message.Message, text: str) -> Items | None:
    match = re.search(
        r"-----\s*The following addresses had (permanent fatal|transient non-fatal) errors\s*-----", text
    )
    if not match:
        return None
    transient = match.group(1).startswith("transient")
    section = text[match.end() :].split("-----", 1)[0]
    items: Items = []
    for found in re.finditer(rf"^<?({_ADDRESS})>?[ \t]*\r?\n((?:[ \t]+.+\r?\n?)*)", section, re.M):
        diagnostic = " ".join(found.group(2).split())
        reason = re.search(r"\(reason:\s*(.*)\)", diagnostic)
        diagnostic = reason.group(1) if reason else diagnostic
        if transient and not re.search(r"\b4\.\d", diagnostic):
            diagnostic = f"4.0.0 {diagnostic}"
        items.append((found.group(1), diagnostic))
    return items or None


def _did_not_reach(msg: email.message.Message, text: str) -> Items | None:
    """Exchange 5.x/Internet Mail Service: "did not reach the following recipient(s):" then
    X.400-style lines such as ``c=US;a= ;p=ORG;o=Site;dda:SMTP=user@example.com; on <date>``."""
    marker = re.search(r"did not reach the following recipient\(?s?\)?:?", text, re.I)
    if not marker:
        return None
    section = re.split(r"\n\s*\n\s*\n", text[marker.end() :].lstrip("\r\n"), maxsplit=1)[0]
    items: Items = []
    for found in re.finditer(rf"(?:SMTP=|<|^\s*)({_ADDRESS})", section, re.M):
        rest = section[found.end() :].split("\n\n", 1)[0]
        items.append((found.group(1), " ".join(rest.split())[:500] or "did not reach the recipient"))
    return items or None


def _failed_recipients_header(msg: email.message.Message, text: str) -> Items | None:
    values = msg.get_all("X-Failed-Recipients") or []
    addresses = [a for _, a in email.utils.getaddresses([str(v) for v in values]) if "@" in a]
    if not addresses:
        return None
    diagnostic = ""
    for line in text.splitlines():
        if re.search(r"\b[45]\.\d{1,3}\.\d{1,3}\b|\b[45]\d\d[ -]", line):
            diagnostic = line.strip()
            break
    return [(a, diagnostic or "delivery failed (no reason given)") for a in addresses]


DETECTORS: list[tuple[str, Callable[[email.message.Message, str], Items | None]]] = [
    ("qmail", _qmail),
    ("exim", _exim),
    ("sendmail-text", _sendmail_text),
    ("exchange-text", _did_not_reach),
    ("x-failed-recipients", _failed_recipients_header),
]


def detect(msg: email.message.Message, text: str) -> tuple[str, Items] | None:
    """(format name, [(address, diagnostic)]) of the first detector that recognises the bounce.

    Only messages that look like they come from a mailer (``looks_like_bounce``) are tried, so
    a person quoting a bounce in a reply is not taken for one.
    """
    if not looks_like_bounce(msg):
        return None
    for name, detector in DETECTORS:
        items = detector(msg, text)
        if items:
            return name, items
    return None


def is_address(text: str) -> bool:
    return re.fullmatch(_ADDRESS, text or "") is not None


def flufl_recipients(msg: email.message.Message) -> tuple[set[str], set[str]]:
    """(temporary, permanent) recipients that flufl.bounce finds; only e-mail addresses count.

    flufl's "temporary" are warnings (delivery still being retried); its "permanent" are all
    real failures, mailbox-full included: how hard each one is, is decided from the words.
    """
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # flufl's heuristics must never stop the poller
        log.warning("event=flufl_error error=%r", exc)
        return set(), set()

    def clean(found) -> set[str]:
        out = set()
        for item in found:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            text = text.strip().strip("<>").strip()
            if is_address(text):
                out.add(text)
        return out

    permanent_found = clean(permanent)
    return clean(temporary) - permanent_found, permanent_found
