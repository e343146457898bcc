"""DMARC: ``_dmarc.<domain>`` present, tags valid (RFC 7489 6.3), policy, and alignment of
the From domain with the Return-Path (SPF) and DKIM signing domains."""

from __future__ import annotations

import functools
import os
import re

from publicsuffix2 import PublicSuffixList

from bulkrelay.dns import result as res
from bulkrelay.dns.resolver import DnsSource, relative
from bulkrelay.dns.tags import parse_tag_list

POLICIES = ("none", "quarantine", "reject")
KNOWN_TAGS = {"v", "p", "sp", "np", "adkim", "aspf", "pct", "rua", "ruf", "fo", "rf", "ri", "psd", "t"}
RE_MAILTO = re.compile(r"^mailto:[^@\s,!]+@[^@\s,!]+\.[^@\s,!]+(![0-9]+[kmgt]?)?$", re.IGNORECASE)


# Debian's package publicsuffix (relays, and a Debian controller): relay and controller then
# judge alignment with the same list. Elsewhere the copy PyPI's publicsuffix2 ships.
PUBLIC_SUFFIX_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # Parsed once per process (about 0.1 s); never fetched from the internet.
    return PublicSuffixList(PUBLIC_SUFFIX_LIST if os.path.exists(PUBLIC_SUFFIX_LIST) else None)


def org_domain(name: str) -> str:
    """Organizational domain (RFC 7489 3.2): the public suffix plus one label.

    publicsuffix2's get_sld() answers only the TLD for a name under no listed suffix
    (``example.test`` -> ``test``); the list's rule is that "*" then prevails, so the suffix
    is the last label and the organizational domain ``example.test``.
    """
    name = relative(name)
    suffix = _public_suffixes().get_tld(name) or name.rsplit(".", 1)[-1]
    if name == suffix:
        return name
    return ".".join(name.split(".")[-(suffix.count(".") + 2) :])


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): strict = same name, relaxed = same org domain."""
    a, b = relative(a), relative(b)
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def parse_record(txt: str) -> tuple[dict[str, str], list[str], list[str]]:  # noqa: PLR0912 - one branch per rule
    """Parse and validate a DMARC record. Returns (tags, errors, warnings)."""
    pairs, tags, errors = parse_tag_list(txt)
    warnings: list[str] = []
    for tag, value in pairs:
        if re.search(r"\s[A-Za-z][A-Za-z0-9_]*\s*=", value):
            errors.append(f"'{tag}={value}': a ';' is missing between two tags")
    if errors:
        return tags, errors, warnings
    if not pairs or pairs[0][0].lower() != "v" or pairs[0][1] != "DMARC1":
        errors.append("the record must start with v=DMARC1")
    if len(pairs) < 2 or pairs[1][0].lower() != "p":
        errors.append("p= must follow v=DMARC1")
    for tag in ("p", "sp", "np"):
        if tag in tags and tags[tag].lower() not in POLICIES:
            errors.append(f"{tag}={tags[tag]} is not none, quarantine or reject")
    if "p" not in tags:
        errors.append("the p= (policy) tag is missing")
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag].lower() not in ("r", "s"):
            errors.append(f"{tag}={tags[tag]} is not r or s")
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        errors.append(f"pct={tags['pct']} is not a number from 0 to 100")
    if "ri" in tags and not tags["ri"].isdigit():
        errors.append(f"ri={tags['ri']} is not a number of seconds")
    for tag in ("rua", "ruf"):
        for uri in (u.strip() for u in tags.get(tag, "").split(",") if u.strip()):
            if not RE_MAILTO.match(uri):
                errors.append(f"{tag} URI '{uri}' is not mailto:address@domain")
    if "fo" in tags and not all(f.strip() in ("0", "1", "d", "s") for f in tags["fo"].split(":")):
        errors.append(f"fo={tags['fo']} must be 0, 1, d or s (colon separated)")
    if "rf" in tags and any(f.strip().lower() != "afrf" for f in tags["rf"].split(":")):
        errors.append(f"rf={tags['rf']}: only afrf is defined")
    unknown = sorted(set(tags) - KNOWN_TAGS)
    if unknown:
        warnings.append(f"unknown tags ignored by receivers: {', '.join(unknown)}")
    if "rua" not in tags:
        warnings.append("no rua= address: you get no aggregate reports to judge a stricter policy")
    return tags, errors, warnings


def _lookup(source: DnsSource, domain: str) -> tuple[str, object, list[str]]:
    """Find the DMARC record for ``domain``, falling back to its organizational domain."""
    name = f"_dmarc.{domain}"
    ans = source.query(name, "TXT")
    texts = [t for t in ans.texts() if t.strip().lower().startswith("v=dmarc1")] if ans.ok else []
    if not texts and not ans.failed and org_domain(domain) != domain:
        org_name = f"_dmarc.{org_domain(domain)}"
        org = source.query(org_name, "TXT")
        org_texts = [t for t in org.texts() if t.strip().lower().startswith("v=dmarc1")] if org.ok else []
        if org_texts or org.failed:
            return org_name, org, org_texts
    return name, ans, texts


def _alignment(
    details: dict,
    tags: dict[str, str],
    domain: str,
    *,
    return_path_domain: str,
    dkim_domain: str,
    warnings: list[str],
) -> list[str]:
    """Fill details[spf_aligned/dkim_aligned]; return problems, append warnings."""
    problems: list[str] = []
    if return_path_domain:
        details["spf_aligned"] = aligned(return_path_domain, domain, tags.get("aspf", "r").lower())
    if dkim_domain:
        details["dkim_aligned"] = aligned(dkim_domain, domain, tags.get("adkim", "r").lower())
    checked = [v for v in (details["spf_aligned"], details["dkim_aligned"]) if v is not None]
    if checked and not any(checked):
        problems.append(
            f"neither the Return-Path domain {return_path_domain or '-'} (aspf={tags.get('aspf', 'r')}) "
            f"nor the DKIM domain {dkim_domain or '-'} (adkim={tags.get('adkim', 'r')}) aligns with "
            f"From {domain}: DMARC fails"
        )
    elif details["spf_aligned"] is False:
        warnings.append(
            f"Return-Path domain {return_path_domain} does not align with {domain}: DMARC rests on DKIM alone"
        )
    elif details["dkim_aligned"] is False:
        warnings.append(f"DKIM domain {dkim_domain} does not align with {domain}: DMARC rests on SPF alone")
    return problems


def check(
    source: DnsSource,
    domain: str,
    *,
    return_path_domain: str = "",
    dkim_domain: str = "",
    min_policy: str = "none",
    expected: str = "",
) -> res.CheckResult:
    """``return_path_domain``/``dkim_domain``: the envelope sender domain and the DKIM d= of
    the relay's mail for From: ``domain``; ``min_policy``: weakest acceptable p=."""
    domain = relative(domain)
    fix = f'publish TXT at _dmarc.{domain}: "{expected or f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"}"'
    name, ans, texts = _lookup(source, domain)
    details: dict = {"name": name, "record": "", "tags": {}, "spf_aligned": None, "dkim_aligned": None}
    outcome = res.Outcome("dmarc", domain, details, fix=fix)
    if ans.failed:
        return outcome.error(ans.describe())
    if not texts:
        message = f"no DMARC record at _dmarc.{domain}"
        other = [t for t in ans.texts() if t.strip()] if ans.ok else []
        if other:
            message += f" (TXT {other[0]!r} does not start with v=DMARC1)"
        return outcome.fail(message)
    if len(texts) > 1:
        return outcome.fail(f"{name} has {len(texts)} DMARC records: receivers ignore them all")
    details["record"] = texts[0]
    tags, errors, warnings = parse_record(texts[0])
    outcome.warnings = warnings
    details["tags"] = tags
    if errors:
        return outcome.fail(f"DMARC record at {name} is invalid: {'; '.join(errors)}")
    policy = tags["p"].lower()
    if name != f"_dmarc.{domain}":
        policy = tags.get("sp", policy).lower()
    details["policy"] = policy
    problems = []
    if POLICIES.index(policy) < POLICIES.index(min_policy):
        problems.append(f"policy p={policy} is weaker than the required {min_policy}")
    problems += _alignment(
        details,
        tags,
        domain,
        return_path_domain=return_path_domain,
        dkim_domain=dkim_domain,
        warnings=warnings,
    )
    if problems:
        return outcome.fail("; ".join(problems))
    return outcome.passed(f"DMARC of {domain}: p={policy}, aligned")
