"""Checks that a message and its envelope are fit to queue, and builds messages for `bulkrelay send`.

Everything that enters the queue (SMTP intake, hot folder, `bulkrelay enqueue`, `bulkrelay send`)
goes through :func:`validate`. A refusal raises :class:`BadMessage`, whose ``reason`` is one line
that names the problem and the fix; callers turn it into an SMTP reply, a ``.reason`` file or a
CLI error. Nothing here touches the queue, the network or the clock.
"""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from bulkrelay.names import is_label

# RFC 5322 2.2: a field name is printable US-ASCII except colon.
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")
# RFC 5322 3.2.3 atext, for dot-atom local parts.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
# RFC 5321 4.1.2 Quoted-string: printable ASCII, with backslash escapes.
_QUOTED = re.compile(r'^"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
# One search in C instead of a Python step per character: each runs for every address and
# header line the intake takes (issue 16).
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_NOT_HEADER_TEXT = re.compile(rb"[^\t\x20-\x7e]")  # raw 8-bit or control bytes, TAB allowed
_LINE_LIMIT = 998  # RFC 5322 2.1.1, without CRLF
# The application's reference for the delivery events; removed before the message is stored.
REF_HEADER = "X-Bulkrelay-Ref"
REF_MAX = 128


class BadMessage(ValueError):
    """A message or envelope that must not be queued; ``reason`` is one line for the sender."""

    def __init__(self, reason: str, *, smtp_code: int = 550, enhanced: str = "5.6.0") -> None:
        super().__init__(reason)
        self.reason = reason
        self.smtp_code = smtp_code
        self.enhanced = enhanced

    def smtp_reply(self) -> str:
        """The SMTP reply line the intake answers with."""
        return f"{self.smtp_code} {self.enhanced} {self.reason}"


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable mailbox (``local@domain.tld``), or None when it is.

    Only plain ASCII mailboxes are accepted: no display names, angle brackets, domain literals,
    source routes or SMTPUTF8; the domain must be a fully qualified host name.
    """
    if not address:
        return "is empty"
    if _NOT_PRINTABLE.search(address):
        return "contains control or non-ASCII characters (internationalised addresses are not supported)"
    if len(address) > 254:
        return "is longer than 254 characters"
    if address.startswith("@"):
        return "uses a source route; give a plain mailbox like user@example.com"
    local, sep, domain = address.rpartition("@")
    if not sep or not local:
        return "has no local part and @domain; give a plain mailbox like user@example.com"
    return _local_problem(local) or _domain_problem(domain)


def _local_problem(local: str) -> str | None:
    if len(local) > 64:
        return "has a local part longer than 64 characters"
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        return "has an invalid local part (spaces, brackets or a misplaced dot?)"
    return None


def _domain_problem(domain: str) -> str | None:
    if domain.startswith("["):
        return "uses an IP address literal as domain; use a host name"
    labels = domain.removesuffix(".").split(".")
    problem = None
    if len(labels) < 2:
        problem = "that is not fully qualified; use a domain like example.com"
    elif not all(is_label(label.lower()) for label in labels):
        problem = "that is not a valid host name"
    elif labels[-1].isdigit():
        problem = "that looks like an IP address; use a host name"
    return f"has a domain {problem}" if problem else None


def check_address(address: str, *, what: str, show: bool = True) -> str:
    """Return ``address`` if usable, else raise :class:`BadMessage` naming ``what`` it is.

    ``show=False`` for addresses taken from a message's content: the reason then names the
    problem without quoting the address."""
    problem = address_problem(address)
    if problem:
        enhanced = "5.1.7" if what.startswith("sender") else "5.1.3"
        shown = f" {_show(address)}" if show else ""
        raise BadMessage(f"{what}{shown} {problem}", smtp_code=553, enhanced=enhanced)
    return address


def _show(value: str) -> str:
    """A bounded, printable rendering of user input for reasons and logs."""
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)


@dataclass(frozen=True)
class HeaderBlock:
    """The header section of a raw message, split without interpretation."""

    fields: list[tuple[str, bytes]]  # (lower-case name, raw value incl. folded lines)
    body_offset: int


def split_headers(raw: bytes) -> HeaderBlock:
    """Split the header section strictly (RFC 5322 2.2) or raise :class:`BadMessage`."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    lineno = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            end = len(raw)
        line = raw[pos:end]
        lineno += 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if line == b"":
            if not fields:
                raise BadMessage("message has no header section (it starts with a blank line)")
            return HeaderBlock(fields, min(end + 1, len(raw)))
        _add_header_line(fields, line, lineno)
        pos = end + 1
    # Headers with no blank line and no body: acceptable (an empty body).
    return HeaderBlock(fields, len(raw))


def _add_header_line(fields: list[tuple[str, bytes]], line: bytes, lineno: int) -> None:
    if b"\r" in line:
        raise BadMessage(f"header line {lineno} contains a bare CR; end lines with CRLF or LF only")
    if len(line) > _LINE_LIMIT:
        raise BadMessage(f"header line {lineno} is longer than {_LINE_LIMIT} characters; fold it")
    if line[:1] in (b" ", b"\t"):
        if not fields:
            raise BadMessage("message starts with a continuation line; it is not an RFC 5322 message")
        name, value = fields[-1]
        fields[-1] = (name, value + b"\n" + line)
    else:
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.match(name):
            if not fields:
                raise BadMessage(
                    "message does not start with a header field (Name: value); is this an RFC 5322 .eml file?"
                )
            # no quote of the line: a rejected file's content never goes into a reason or a log
            raise BadMessage(
                f"header line {lineno} is not 'Name: value' and is not indented; "
                "a blank line must separate headers from the body"
            )
        fields.append((name.decode("ascii").lower(), value))
    if _NOT_HEADER_TEXT.search(line):
        raise BadMessage(
            f"header {fields[-1][0]!r} contains raw 8-bit or control bytes; "
            "encode non-ASCII text with RFC 2047 (=?utf-8?...?=)"
        )


_BARE_LF = re.compile(rb"\n(?<!\r\n)")  # starts with a literal: the search skips to each LF in C


def has_bare_lf(data: bytes) -> bool:
    """Whether a LF of ``data`` has no CR before it. One search that stops at the first: over
    a 200 KB invoice of CRLF lines ~90 us, where counting LF and CRLF takes ~240 us."""
    return _BARE_LF.search(data) is not None


def line_over(data: bytes, limit: int, end: bytes = b"\r\n", *, start: int = 0) -> bool:
    """True when a line of ``data[start:]`` (lines end with ``end``) is longer than ``limit``.

    At C speed without copying or splitting a large body into one object per line: each step
    jumps to the last line end within ``limit`` of the current line's start."""
    while len(data) - start > limit:
        found = data.rfind(end, start, start + limit + len(end))
        if found < 0:
            return True
        start = found + len(end)
    return False


def _header_addresses(value: str) -> list[tuple[str, str]]:
    return email.utils.getaddresses([value])


def validate(
    raw: bytes,
    mail_from: str,
    recipients: Sequence[str],
    *,
    max_size: int,
    envelope_from_content: bool = False,
    body_lines_checked: bool = False,
) -> None:
    """Raise :class:`BadMessage` unless ``raw`` with this envelope may be queued.

    ``mail_from`` may be "" (null sender); the sender replaces it with a VERP address anyway.
    ``envelope_from_content``: the envelope was read from the message's headers (hot folder),
    so reasons name the problem without quoting the addresses. ``body_lines_checked``: the
    caller (``normalise``) found every body line within the limit already: not scanned again.
    """
    show = not envelope_from_content
    if len(raw) > max_size:
        raise BadMessage(
            f"message is {len(raw)} bytes, over the {max_size}-byte limit; "
            "send large files as links or raise [intake] max_message_size",
            smtp_code=552,
            enhanced="5.3.4",
        )
    if not raw or raw.isspace():  # what strip() would leave, without copying the message
        raise BadMessage("message is empty")
    if mail_from:
        check_address(mail_from, what="sender address", show=show)
    if not recipients:
        raise BadMessage("message has no recipients; give at least one", smtp_code=554, enhanced="5.5.1")
    for rcpt in recipients:
        check_address(rcpt, what="recipient address", show=show)
    block = split_headers(raw)
    _check_header_fields(block)
    if body_lines_checked or not line_over(raw, _LINE_LIMIT, b"\n", start=block.body_offset):
        return
    for lineno, line in enumerate(raw[block.body_offset :].split(b"\n"), start=1):
        if len(line.rstrip(b"\r")) > _LINE_LIMIT:
            raise BadMessage(
                f"body line {lineno} is longer than {_LINE_LIMIT} characters; "
                "use quoted-printable or base64 transfer encoding"
            )


def _check_header_fields(block: HeaderBlock) -> None:
    froms = [value for name, value in block.fields if name == "from"]
    if not froms:
        raise BadMessage("message has no From: header; add 'From: Name <sender@your-domain>'")
    if len(froms) > 1:
        raise BadMessage("message has more than one From: header; keep exactly one")
    from_value = froms[0].decode("ascii").replace("\n", "")
    addresses = [addr for _, addr in _header_addresses(from_value) if addr]
    if not addresses:
        raise BadMessage("From: header holds no address; add 'From: Name <sender@your-domain>'")
    for addr in addresses:
        check_address(addr, what="From: header address", show=False)
    counts = Counter(name for name, _ in block.fields)
    for unique in ("date", "message-id", "subject", "to", "cc", "sender", "reply-to", "x-bulkrelay-ref"):
        if counts[unique] > 1:
            raise BadMessage(f"message has more than one {unique!r} header; RFC 5322 allows one")
    for name, value in block.fields:
        if name == "x-bulkrelay-ref":
            read_ref(value)


def read_ref(value: bytes) -> str:
    """The application reference in a raw ``X-Bulkrelay-Ref:`` value (folded lines joined).

    A reference is what the application finds its events by (an invoice number): printable
    ASCII, at most ``REF_MAX`` characters. Anything else is refused rather than replaced by the
    Message-ID, since events under another reference would never reach the invoice."""
    ref = re.sub(rb"\r?\n", b"", value).decode("ascii", "replace").strip()
    if not ref:
        raise BadMessage(f"{REF_HEADER}: header is empty; give the application's reference or leave it out")
    if len(ref) > REF_MAX:
        raise BadMessage(f"{REF_HEADER}: header has {len(ref)} characters; shorten it to at most {REF_MAX}")
    if _NOT_PRINTABLE.search(ref):
        raise BadMessage(
            f"{REF_HEADER}: header holds control or non-ASCII characters; use printable ASCII only"
        )
    return ref


def _parsed_headers(raw: bytes) -> Any:
    block = split_headers(raw)
    return BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[: block.body_offset])


def header_sender(raw: bytes) -> str:
    """The first From: address of the message ("" when there is none)."""
    return _first_sender(_parsed_headers(raw))


def _first_sender(headers: Any) -> str:
    senders = [a for _, a in _header_addresses(" ".join(str(v) for v in headers.get_all("from", [])))]
    return next((a for a in senders if a), "")


def envelope_from_headers(raw: bytes, *, bcc: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The envelope a message's own headers imply: (From address, To+Cc+Bcc addresses).

    Used by the hot folder and ``bulkrelay enqueue`` without --from/--to; ``bcc``: addresses of
    Bcc: fields already removed. Duplicates are dropped (domain compared case-insensitively);
    raises :class:`BadMessage` when there is no recipient.
    """
    headers = _parsed_headers(raw)
    mail_from = _first_sender(headers)
    found: list[str] = []
    seen: set[str] = set()
    for field in ("to", "cc", "bcc"):
        values = [str(v) for v in headers.get_all(field, [])]
        pairs = _header_addresses(" , ".join(values))
        if field == "bcc":
            pairs += [("", a) for a in bcc]
        for _, addr in pairs:
            if not addr:
                continue
            key = normalise_key(addr)
            if key not in seen:
                seen.add(key)
                found.append(addr)
    if not found:
        raise BadMessage("message has no recipient in To:, Cc: or Bcc:; add one or give --to")
    return mail_from, found


def normalise_key(address: str) -> str:
    """Comparison key: local part as given, domain lower-cased."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


@dataclass(frozen=True)
class Attachment:
    """A file to attach: its name as shown to the recipient, the bytes and the MIME type."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"

    @classmethod
    def from_path(cls, path: str | Path) -> Attachment:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadMessage(f"cannot read attachment {str(path)!r}: {exc.strerror}") from None
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"
        return cls(path.name, data, ctype)


def _check_header_argument(value: str, what: str) -> str:
    if any(c in value for c in ("\r", "\n", "\x00")):
        raise BadMessage(
            f"{what} contains a line break or NUL ({_show(value)}); header injection is refused - "
            "give a single line"
        )
    if any(ord(c) < 32 and c != "\t" for c in value):
        raise BadMessage(f"{what} contains control characters ({_show(value)}); give plain text")
    return value


def build(
    from_: str,
    to: str | Sequence[str],
    subject: str,
    body: str,
    attachments: Iterable[Attachment | str | Path] = (),
    *,
    date: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """A MIME message for ``bulkrelay send``; raises :class:`BadMessage` on unsafe arguments.

    ``from_`` may carry a display name ("Billing <billing@example.com>"); each ``to`` is a plain
    address. Line breaks in any header argument are refused (header injection), non-ASCII text
    is encoded (RFC 2047 in headers, UTF-8 body). Date and Message-ID are added when not given.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients:
        raise BadMessage("no recipient given; pass --to ADDRESS")
    _check_header_argument(from_, "--from")
    _check_header_argument(subject, "--subject")
    for rcpt in recipients:
        _check_header_argument(rcpt, "--to")
        check_address(rcpt, what="--to address")
    name, addr = email.utils.parseaddr(from_)
    if not addr or ("<" in from_ and not from_.rstrip().endswith(">")):
        raise BadMessage(f"--from {_show(from_)} is not 'address' or 'Name <address>'")
    check_address(addr, what="--from address")
    if "\x00" in body:
        raise BadMessage("--body contains a NUL character; give text")

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((name, addr)) if name else addr
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = date or email.utils.formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=addr.rpartition("@")[2])
    msg["MIME-Version"] = "1.0"
    msg.set_content(body if body.endswith("\n") else body + "\n", cte="quoted-printable")
    for item in attachments:
        att = item if isinstance(item, Attachment) else Attachment.from_path(item)
        _check_header_argument(att.filename, "attachment file name")
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
    return msg.as_bytes(policy=email.policy.SMTP)
