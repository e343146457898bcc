"""DKIM: the selector record exists, parses (RFC 6376 3.6.1) and carries the relay's key."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from bulkrelay.dns import result as res
from bulkrelay.dns.resolver import DnsSource, relative
from bulkrelay.dns.tags import parse_tag_list, parse_tags


def key_of(txt: str) -> str:
    """The ``p=`` value of a DKIM TXT (whitespace removed); '' when absent or unparsable."""
    _, tags, _ = parse_tag_list(txt)
    return "".join(tags.get("p", "").split())


def normalize(txt: str) -> str:
    """A DKIM TXT in canonical form: ``tag=value`` joined by ``; ``, whitespace removed from p=.

    Raises TagSyntaxError when the text is not a tag list.
    """
    pairs = parse_tags(" ".join(str(txt).split()))
    return "; ".join(f"{k}={''.join(v.split()) if k.lower() == 'p' else v}" for k, v in pairs)


def parse_record(txt: str) -> tuple[dict[str, str], list[str], list[str]]:  # noqa: PLR0912 - one branch per rule
    """Parse and validate a DKIM key record. Returns (tags, errors, warnings).

    Raises KeySizeUnknown for an RSA key when the cryptography library is missing.
    """
    pairs, tags, errors = parse_tag_list(txt)
    warnings: list[str] = []
    if errors:
        return tags, errors, warnings
    if "v" in tags and (pairs[0][0].lower() != "v" or tags["v"] != "DKIM1"):
        errors.append("v= must be the first tag and exactly DKIM1")
    key_type = tags.get("k", "rsa").lower()
    if key_type not in ("rsa", "ed25519"):
        errors.append(f"k={key_type} is not rsa or ed25519")
    if "p" not in tags:
        errors.append("the p= (public key) tag is missing")
    key = "".join(tags.get("p", "").split())
    if "p" in tags and not key:
        errors.append("p= is empty: the key is revoked")
    if key:
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            errors.append("p= is not valid base64")
            raw = b""
        if raw and key_type == "rsa":
            bits = _rsa_bits(raw)
            if bits is None:
                errors.append("p= does not hold an RSA public key (SubjectPublicKeyInfo)")
            elif bits < 1024:
                errors.append(f"RSA key of {bits} bits: receivers ignore keys under 1024 bits")
            elif bits < 2048:
                warnings.append(f"RSA key of {bits} bits: use 2048")
        if raw and key_type == "ed25519" and len(raw) != 32:
            errors.append("an ed25519 p= must be 32 bytes")
    if "y" in [f.strip().lower() for f in tags.get("t", "").split(":")]:
        warnings.append("t=y: the domain is in DKIM testing mode, receivers may ignore signatures")
    hashes = [h.strip().lower() for h in tags.get("h", "").split(":") if h.strip()]
    if hashes and "sha256" not in hashes:
        errors.append(f"h={tags['h']} does not allow sha256")
    return tags, errors, warnings


class KeySizeUnknown(Exception):
    """The RSA key size cannot be read here (no cryptography library): could not tell."""


def _rsa_bits(der: bytes) -> int | None:
    try:
        from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415 - optional
        from cryptography.hazmat.primitives.serialization import load_der_public_key  # noqa: PLC0415
    except ImportError:
        # A guessed size would let a weak or broken key pass: say that it was not checked.
        raise KeySizeUnknown("install python3-cryptography to read the RSA key size") from None
    try:
        key = load_der_public_key(der)
    except ValueError:
        return None
    return key.key_size if isinstance(key, rsa.RSAPublicKey) else None


def check(source: DnsSource, domain: str, selector: str, *, expected: str = "") -> res.CheckResult:  # noqa: PLR0911 - one return per verdict
    """``expected``: the relay's DKIM TXT (or just its p= value); '' = only check it parses."""
    domain = relative(domain)
    name = f"{selector}._domainkey.{domain}"
    want = key_of(expected) if "=" in expected else "".join(expected.split())
    fix = f'publish TXT at {name}: "{" ".join(expected.split())}"' if expected else ""
    details: dict = {"name": name, "record": "", "tags": {}}
    outcome = res.Outcome("dkim", name, details, fix=fix)
    ans = source.query(name, "TXT")
    if ans.failed:
        return outcome.error(ans.describe())
    texts = [t for t in ans.texts() if t.strip()] if ans.ok else []
    if not texts:
        return outcome.fail(f"no DKIM key record at {name} ({ans.describe()})")
    if len(texts) > 1:
        return outcome.fail(f"{name} has {len(texts)} TXT records; keep one DKIM key")
    details["record"] = texts[0]
    try:
        tags, errors, warnings = parse_record(texts[0])
    except KeySizeUnknown as exc:
        why = f"could not tell whether the key at {name} is strong: {exc}"
        return outcome.error(why)
    details["tags"] = tags
    if errors:
        return outcome.fail(f"DKIM record at {name} is invalid: {'; '.join(errors)}")
    outcome.warnings = warnings
    published = "".join(tags.get("p", "").split())
    if want and published != want:
        return outcome.fail(
            f"DKIM key at {name} is not the relay's key "
            f"(published p={published[:16]}..., relay p={want[:16]}...)"
        )
    what = "matches the relay's key" if want else "parses"
    return outcome.passed(f"DKIM key at {name} {what}")


def authoritative_addresses(source: DnsSource, name: str) -> tuple[str, list[tuple[str, str]], str]:
    """The zone holding ``name`` and the address of each of its nameservers, asked through
    ``source``: (zone, [(ns host, address)], error). ``error`` is set when DNS could not tell
    (a failed query, or no nameserver with an address); the list is then incomplete."""
    labels = relative(name).split(".")
    for start in range(len(labels) - 1):
        zone = ".".join(labels[start:])
        ans = source.query(zone, "NS")
        if ans.failed:
            return zone, [], ans.describe()
        if ans.ok:
            break
    else:
        return relative(name), [], f"could not tell: no NS record above {relative(name)}"
    servers: list[tuple[str, str]] = []
    for host in sorted(ans.records):
        found = [source.query(host, rdtype) for rdtype in ("A", "AAAA")]
        failed = [a for a in found if a.failed]
        if failed:
            return zone, servers, failed[0].describe()
        servers += [(host, address) for a in found if a.ok for address in a.records]
    if not servers:
        return (
            zone,
            [],
            f"could not tell: no address for the nameservers of {zone} ({', '.join(ans.records)})",
        )
    return zone, servers, ""


def check_authoritative(
    source: DnsSource,
    domain: str,
    selector: str,
    *,
    expected: str = "",
    ask: Callable[[str], DnsSource],
) -> res.CheckResult:
    """:func:`check` asked of every authoritative nameserver of the zone directly (``ask(address)``
    gives a source that asks only that address), found through ``source``. Passes only when each
    one passes; one server without the key fails; a server that could not be asked (timeout,
    SERVFAIL) is "could not tell", never "served". ``details["servers"]`` has one verdict each."""
    name = f"{selector}._domainkey.{relative(domain)}"
    zone, servers, error = authoritative_addresses(source, name)
    details: dict = {"name": name, "record": "", "tags": {}, "zone": zone, "servers": []}
    outcome = res.Outcome("dkim", name, details)
    if error:
        return outcome.error(error)
    verdicts = []
    for host, address in servers:
        one = check(ask(address), domain, selector, expected=expected)
        verdicts.append(one)
        details["servers"].append(
            {"server": f"{host} ({address})", "status": one.status, "message": one.message}
        )
    details["record"] = verdicts[0].details.get("record", "")
    listing = "; ".join(f"{s['server']}: {s['status']}" for s in details["servers"])

    def servers_that(status: str) -> str:
        return ", ".join(s["server"] for s in details["servers"] if s["status"] == status)

    if failing := servers_that(res.FAIL):
        fix = next((v.fix for v in verdicts if v.fix), "")
        return outcome.fail(f"{name}: {failing} does not serve the key ({listing})", fix)
    if unknown := servers_that(res.ERROR):
        return outcome.error(f"{name}: {unknown} could not tell ({listing})")
    outcome.warnings = sorted({w for v in verdicts for w in v.warnings})
    return outcome.passed(f"{verdicts[0].message} on every authoritative nameserver of {zone} ({listing})")
