"""Hard or soft: what a delivery failure says about the recipient address.

Hard means the address itself is bad (no such user, no such domain, mailbox disabled) and is
suppressed at once. Soft means the failure may pass (mailbox full, greylisting, timeouts) or
is about us rather than the address (policy/spam blocks, 5.7.x): those only suppress after the
soft limit, so a blacklisting of the relay never wipes out a valid customer list.
"""

from __future__ import annotations

import re

# RFC 3463 enhanced status code, with an optional leading '#' as qmail writes it.
_STATUS = re.compile(r"(?<![\d.])#?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<!\d)([45])\d\d(?=[ -])")

_HARD_TEXT = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|doesn't exist"
    r"|recipient not found|recipientnotfound|invalid (recipient|mailbox|address)"
    r"|mailbox unavailable|mailbox not found|no mailbox here|unrouteable address|unknown recipient"
    r"|account (has been )?disabled|account is disabled|host or domain name not found"
    r"|domain not found|name service error|not our customer|user not found"
    r"|doesn't have an? [\w.-]+ account|invalid (final delivery )?userid|no valid recipients",
    re.I,
)
_SOFT_TEXT = re.compile(
    r"mailbox (is )?full|over ?quota|quota exceeded|disk quota|insufficient (system )?storage|out of storage"
    r"|temporar(il)?y|try again|greylist|deferred|timed? ?out|connection refused|too many",
    re.I,
)
# 5.1.7/5.1.8 bad sender, 5.2.3 too big, 5.3.1/5.3.2/5.3.4 receiving system, 5.4.1 no answer,
# 5.4.7 expired: nothing wrong with the recipient address itself.
_ABOUT_US = frozenset({"1.7", "1.8", "2.3", "3.1", "3.2", "3.4", "4.1", "4.7"})
_POLICY_TEXT = re.compile(r"spam|blacklist|blocklist|block ?list|reputation|policy|dnsbl|rbl\b", re.I)


def find_status(text: str) -> str:
    """The first enhanced status code (e.g. "5.1.1") in ``text``, or ""."""
    match = _STATUS.search(text or "")
    return ".".join(match.groups()) if match else ""


def status_from_text(text: str) -> str:
    """An enhanced status code read from a diagnostic, or one inferred from its words/SMTP code."""
    found = find_status(text)
    if found:
        return found
    if _HARD_TEXT.search(text or ""):
        return "5.1.1"
    if re.search(r"mailbox (is )?full|over ?quota|quota exceeded|disk quota", text or "", re.I):
        return "4.2.2"
    code = _SMTP_CODE.search(text or "")
    if code:
        return f"{code.group(1)}.0.0"
    return ""


def classify(status: str, diagnostic: str = "", action: str = "failed") -> str:  # noqa: PLR0911
    """Say whether one failed recipient is a "hard" or a "soft" failure."""
    action = (action or "failed").lower()
    if action == "delayed":
        return "soft"
    parts = (status or "").split(".")
    klass = parts[0] if parts and parts[0] in ("2", "4", "5") else ""
    subject = ".".join(parts[1:3]) if len(parts) == 3 else ""
    text = diagnostic or ""
    if klass == "4":
        return "soft"
    if klass == "5":
        hard_words = bool(_HARD_TEXT.search(text))
        policy = bool(_POLICY_TEXT.search(text))
        if subject in _ABOUT_US:
            # bad *sender* address, message too big, expired, receiving system full:
            # about the message or the relay, not the recipient's address
            return "soft"
        if subject.startswith("7."):
            # policy/security: usually a block of the relay or the content; some receivers
            # still use 5.7.1 for "no such user", so the words decide
            return "hard" if hard_words and not policy else "soft"
        if subject == "2.2" or (not hard_words and (policy or _SOFT_TEXT.search(text))):
            return "soft"
        return "hard"
    # no usable status: decide by the words
    if _HARD_TEXT.search(text) and not _POLICY_TEXT.search(text):
        return "hard"
    return "soft"
