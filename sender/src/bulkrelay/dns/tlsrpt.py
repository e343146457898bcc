"""SMTP TLS Reporting (RFC 8460): the ``_smtp._tls.<domain>`` TXT record, built and checked.

The record (RFC 8460 section 3)::

    tlsrpt-record    = "v=TLSRPTv1" 1*(field-delim tlsrpt-field) [field-delim]
    field-delim      = *WSP ";" *WSP
    tlsrpt-field     = tlsrpt-rua / tlsrpt-extension
    tlsrpt-rua       = "rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)     ; mailto: or https:
    tlsrpt-extension = ext-name "=" ext-value
    ext-name         = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")

TXT records at the name that do not start with ``v=TLSRPTv1`` are not TLS-RPT records; when
more or fewer than one remains, senders treat the domain as publishing none. A comma or
semicolon inside a URI must be %-encoded, so the list splits on both plainly.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from bulkrelay.dns import result as res
from bulkrelay.dns.resolver import DnsSource, relative

VERSION = "v=TLSRPTv1"
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_MAILTO = re.compile(r"^mailto:[^@\s,;]+@[^@\s,;.!]+(\.[^@\s,;.!]+)+$")


def owner(domain: str) -> str:
    """The name the record lives at: ``_smtp._tls.<domain>``."""
    return f"_smtp._tls.{relative(domain)}"


def is_tlsrpt(txt: str) -> bool:
    """Does this TXT record claim to be a TLS-RPT record (first field v=TLSRPTv1)?"""
    return txt.split(";", 1)[0].strip(" \t") == VERSION


def bad_uri(uri: str) -> str:
    """Why ``uri`` cannot receive reports ('' when it can): mailto:address or https://host/path."""
    if uri.startswith("mailto:"):
        return "" if _MAILTO.match(uri) else f"'{uri}' is not mailto:address@domain"
    if uri.startswith("https:"):
        parts = urlsplit(uri)
        return "" if parts.netloc and not re.search(r"[\s,;]", uri) else f"'{uri}' is not https://host/path"
    return f"'{uri}' is neither a mailto: nor an https: URI"


def record(rua: list[str]) -> str:
    """``v=TLSRPTv1; rua=mailto:a@x,https://x/report`` from the report URIs (checked first)."""
    problems = [bad_uri(u) for u in rua if bad_uri(u)] or ([] if rua else ["no rua URI"])
    if problems:
        raise ValueError("; ".join(problems))
    return f"{VERSION}; rua={','.join(rua)}"


def parse_record(txt: str) -> tuple[dict[str, str], list[str]]:
    """A TLS-RPT record's fields and what is wrong with it (empty when it is valid)."""
    if not is_tlsrpt(txt):
        return {}, [f"the record must start with {VERSION}"]
    fields = [f.strip(" \t") for f in txt.strip(" \t").split(";")]
    if not fields[-1]:
        fields.pop()  # the optional trailing delimiter
    tags: dict[str, str] = {}
    errors: list[str] = []
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        if not sep or not _EXT_NAME.match(name):
            errors.append(f"'{field}' is not name=value")
        elif name in tags:
            errors.append(f"'{name}' appears twice")
        else:
            tags[name] = value
    if "rua" not in tags:
        errors.append("the rua= field (where reports go) is missing")
    else:
        uris = [u.strip(" \t") for u in tags["rua"].split(",")]
        errors += [bad_uri(u) for u in uris if bad_uri(u)]
    return tags, errors


def check(source: DnsSource, domain: str, *, rua: list[str] | tuple[str, ...] = ()) -> res.CheckResult:
    """The domain publishes exactly one valid TLS-RPT record. ``rua``: the report URIs the
    inventory asks for ("{domain}" replaced): the fix suggests them, and a valid record that
    lists others is a warning."""
    domain = relative(domain)
    name = owner(domain)
    wanted = [uri.replace("{domain}", domain) for uri in rua]
    fix = f'publish TXT at {name}: "{record(wanted or [f"mailto:tlsrpt@{domain}"])}"'
    details: dict = {"name": name, "record": "", "rua": []}
    outcome = res.Outcome("tlsrpt", domain, details, fix=fix)
    answer = source.query(name, "TXT")
    if answer.failed:
        return outcome.error(answer.describe())
    texts = [t for t in answer.texts() if is_tlsrpt(t)] if answer.ok else []
    if not texts:
        return outcome.fail(f"no TLS-RPT record at {name}")
    if len(texts) > 1:
        return outcome.fail(f"{name} has {len(texts)} TLS-RPT records: senders then report to none")
    details["record"] = texts[0]
    tags, errors = parse_record(texts[0])
    if errors:
        return outcome.fail(f"TLS-RPT record at {name} is invalid: {'; '.join(errors)}")
    details["rua"] = [u.strip(" \t") for u in tags["rua"].split(",")]
    message = f"TLS-RPT of {domain}: reports go to {', '.join(details['rua'])}"
    if wanted and sorted(wanted) != sorted(details["rua"]):
        return res.CheckResult(
            "tlsrpt",
            domain,
            res.WARN,
            f"{message}, not to {', '.join(wanted)} as the inventory says",
            fix=fix,
            details=details,
            warnings=[f"{name} lists other report URIs than bulkrelay_tlsrpt_rua"],
        )
    return outcome.passed(message)
