"""Generate the DNS records a bulk relay needs, from the inventory and the live zone.

Pure functions (no DNS): the caller reads the live SPF/DMARC records and passes them in, so
the logic is unit-tested with plain strings. ``bulkrelay_dns_records`` (the role's module)
does the live reads through :mod:`bulkrelay.dns.resolver` and calls :func:`generate`.

Records produced, per relay and sending domain:

* A/AAAA for the relay name, and an MX for it pointing at the company's normal MX (receivers
  check that a sending name has an MX; the relay itself accepts no inbound mail);
* SPF for each sending domain and the bounce (Return-Path) domain, MERGED into the live record
  (the relay's ip4:/ip6: added in front, everything else kept), plus ``v=spf1 ip4:.. -all``
  for the relay name itself (the HELO identity);
* DKIM TXT ``<selector>._domainkey.<domain>``, split into 255-byte strings;
* DMARC ``_dmarc.<domain>``: the live record is kept when it exists, else ``p=none`` with rua;
* the MX of the bounce domain, pointing at a host that accepts mail (never the relay).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from bulkrelay.dns import dkim, spf
from bulkrelay.dns.resolver import relative
from bulkrelay.dns.tags import TagSyntaxError
from bulkrelay.names import is_domain

TXT_STRING_MAX = 255
SPF_UDP_SAFE = 450  # RFC 7208 3.4: keep the answer small enough for one UDP packet


class RecordError(ValueError):
    """Inputs that cannot give correct records (message names the variable to fix)."""


def split_txt(value: str, size: int = TXT_STRING_MAX) -> list[str]:
    """Split a TXT value into character-strings of at most ``size`` bytes (RFC 1035 3.3.14).

    Splits on UTF-8 byte boundaries without cutting a character in two.
    """
    data = value.encode("utf-8")
    parts: list[str] = []
    while data:
        cut = min(size, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # do not split a UTF-8 sequence
            cut -= 1
        parts.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    return parts or [""]


def quote_txt(value: str) -> str:
    """Zone-file presentation of a TXT value: quoted 255-byte strings separated by spaces."""
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in split_txt(value))


@dataclass
class SpfMerge:
    """A merged SPF record and what happened on the way."""

    record: str
    changed: bool
    added: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def merge_spf(
    existing: list[str],
    ipv4: str = "",
    ipv6: str = "",
    *,
    new_terms: tuple[str, ...] | list[str] = ("mx",),
    new_all: str = "~all",
    domain: str = "",
) -> SpfMerge:
    """Add the relay's ``ip4:``/``ip6:`` to the live SPF record instead of replacing it.

    ``existing`` is the list of v=spf1 records now published (other TXT records removed).
    The new terms go right after ``v=spf1`` so they match before any ``all``/``redirect``;
    an address already covered by an ip4:/ip6: term (network included) is not added again.
    With no record yet, the result is ``v=spf1 <ip terms> <new_terms> <new_all>``.
    """
    where = f" of {domain}" if domain else ""
    warnings: list[str] = []
    ips = [(v, ip) for v, ip in (("ip4", ipv4), ("ip6", ipv6)) if ip]
    for version, ip in ips:
        if ipaddress.ip_address(ip).version != int(version[-1]):
            raise RecordError(f"{ip} is not an IPv{version[-1]} address (check bulkrelay_ip{version[-1]}v)")
    records = [r.strip() for r in existing if spf.RE_SPF_START.match(r.strip())]
    if len(records) > 1:
        warnings.append(
            f"{len(records)} SPF records{where}: receivers answer permerror; the relay was merged into the "
            f"first, delete the others: {records[1:]}"
        )
    if not records:
        base_terms: list[str] = []
        tail = [*new_terms, new_all]
        changed = True
    else:
        base_terms = spf.terms(records[0])
        tail = []
        changed = False
    added = []
    current = "v=spf1 " + " ".join(base_terms)
    for version, ip in ips:
        if records and spf.authorises_statically(current, ip):
            continue
        term = f"{version}:{ip}"
        added.append(term)
    if added:
        changed = True
    record = " ".join(["v=spf1", *added, *base_terms, *tail]).strip()
    lookups = len(spf.lookup_terms(record))
    if lookups > spf.MAX_LOOKUPS:
        warnings.append(
            f"SPF{where} has {lookups} DNS-lookup terms in itself, more than {spf.MAX_LOOKUPS}: permerror"
        )
    size = len(record.encode("utf-8"))
    if size > TXT_STRING_MAX:
        warnings.append(
            f"SPF{where} is {size} bytes: published as {len(split_txt(record))} strings of at most "
            "255 bytes; some DNS web interfaces cut it, check the result"
        )
    if size > SPF_UDP_SAFE:
        warnings.append(f"SPF{where} is {size} bytes, over {SPF_UDP_SAFE}: answers may need TCP")
    return SpfMerge(record, changed, added, warnings)


DMARC_DEFAULTS = {"p": "none", "adkim": "r", "aspf": "r"}


def dmarc_record(policy: str = "none", rua: str = "", extra: dict[str, str] | None = None) -> str:
    """``v=DMARC1; p=none; rua=mailto:...; adkim=r; aspf=r`` (tags in a stable order)."""
    if policy not in ("none", "quarantine", "reject"):
        raise RecordError(f"DMARC policy {policy!r} is not none, quarantine or reject")
    tags = {"v": "DMARC1", "p": policy}
    if rua:
        tags["rua"] = ",".join(u if u.startswith("mailto:") else f"mailto:{u}" for u in rua.split(","))
    tags.update({"adkim": "r", "aspf": "r"})
    tags.update(extra or {})
    return "; ".join(f"{k}={v}" for k, v in tags.items())


@dataclass
class Record:
    """One resource record to publish. ``value`` is zone-file presentation."""

    name: str
    type: str
    value: str
    ttl: int
    group: str
    purpose: str
    txt: str = ""  # the unsplit TXT text (TXT records only)

    @property
    def fqdn(self) -> str:
        return relative(self.name) + "."


@dataclass
class RecordSet:
    records: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.records.append(Record(*args, **kwargs))

    def groups(self) -> list[str]:
        return list(dict.fromkeys(r.group for r in self.records))

    def as_dict(self) -> dict[str, Any]:
        out = {"records": [], "warnings": self.warnings, "notes": self.notes, "groups": {}}
        for rec in self.records:
            item = asdict(rec)
            item["fqdn"] = rec.fqdn
            item["strings"] = split_txt(rec.txt) if rec.type == "TXT" else []
            out["records"].append(item)
            out["groups"].setdefault(rec.group, []).append(item)
        return out


def _check_name(value: str, variable: str) -> str:
    name = relative(value or "")
    # DNS owner names, not host names: any octets per label (underscores included), no length cap
    if not is_domain(name, min_labels=2, ldh=False, max_length=None):
        raise RecordError(f"{variable} must be a full domain name like relay.example.com, got {value!r}")
    return name


def _validate(
    relay_fqdn: str, *, ipv4: str, ipv6: str, relay_mx: str, bounce_domain: str, bounce_mx: str
) -> None:
    fqdn = _check_name(relay_fqdn, "bulkrelay_fqdn")
    if not ipv4 and not ipv6:
        raise RecordError("set bulkrelay_ipv4 (and optionally bulkrelay_ipv6): the relay needs an address")
    for ip, var, version in ((ipv4, "bulkrelay_ipv4", 4), (ipv6, "bulkrelay_ipv6", 6)):
        if ip:
            try:
                ok = ipaddress.ip_address(ip).version == version
            except ValueError:
                ok = False
            if not ok:
                raise RecordError(f"{var} must be an IPv{version} address, got {ip!r}")
    if _check_name(relay_mx, "the relay's MX target (bulkrelay_company_mx)") == fqdn:
        raise RecordError(
            "the relay's MX must not point at the relay (it accepts no mail): use the company MX"
        )
    if bounce_domain:
        _check_name(bounce_domain, "bulkrelay_bounce_domain")
        if _check_name(bounce_mx, "bulkrelay_bounce_mx") == fqdn:
            raise RecordError(
                "bulkrelay_bounce_mx is the relay itself, which accepts no inbound mail: "
                "point it at a host that accepts mail (the company's MX)"
            )


def _relay_records(out: RecordSet, fqdn: str, *, ipv4: str, ipv6: str, relay_mx: str, ttl: int) -> None:
    if ipv4:
        out.add(fqdn, "A", ipv4, ttl, "relay", "the relay's address; must equal its PTR (FCrDNS)")
    if ipv6:
        out.add(fqdn, "AAAA", ipaddress.ip_address(ipv6).compressed, ttl, "relay", "IPv6 address; = its PTR")
    out.add(
        fqdn,
        "MX",
        f"10 {relative(relay_mx)}.",
        ttl,
        "relay",
        "receivers check that a sending name has an MX; it points at the company's normal MX "
        "because the relay itself accepts no inbound mail",
    )
    ip_terms = [*([f"ip4:{ipv4}"] if ipv4 else []), *([f"ip6:{ipv6}"] if ipv6 else [])]
    helo_spf = " ".join(["v=spf1", *ip_terms, "-all"])
    out.add(fqdn, "TXT", quote_txt(helo_spf), ttl, "relay", "SPF for the HELO name", txt=helo_spf)


def _dkim_dmarc_records(
    out: RecordSet, name: str, *, key: dict[str, str], live_dmarc: list[str], policy: str, rua: str, ttl: int
) -> None:
    if key.get("txt"):
        selector = key.get("selector") or ""
        if not selector:
            raise RecordError(f"the DKIM key for {name} has no selector (set bulkrelay_dkim_selector)")
        try:
            txt = dkim.normalize(key["txt"])
        except TagSyntaxError as exc:
            raise RecordError(f"the DKIM public key TXT for {name} does not parse ({exc})") from None
        out.add(f"{selector}._domainkey.{name}", "TXT", quote_txt(txt), ttl, name, "DKIM public key", txt=txt)
    else:
        out.warnings.append(
            f"no DKIM public key for {name}: run playbooks/relay.yml first (fact relay_dkim__public_keys) "
            "or set dns_records__dkim_keys; the DKIM record was left out"
        )
    existing = [d.strip() for d in live_dmarc if d.strip().lower().startswith("v=dmarc1")]
    if len(existing) == 1:
        txt = existing[0]
    else:
        if len(existing) > 1:
            out.warnings.append(f"_dmarc.{name} has {len(existing)} DMARC records: keep exactly one")
        txt = dmarc_record(policy, rua.replace("{domain}", name))
    # the purpose text does not depend on what is published, so regenerating after an apply
    # gives identical files (idempotent); `notes` says what happened this run
    purpose = "DMARC: a published record is kept; a new one starts with reports, tighten later"
    out.notes.setdefault(name, []).append("DMARC kept" if len(existing) == 1 else f"DMARC new (p={policy})")
    out.add(f"_dmarc.{name}", "TXT", quote_txt(txt), ttl, name, purpose, txt=txt)


def generate(
    *,
    relay_fqdn: str,
    ipv4: str,
    ipv6: str,
    sending_domains: list[str],
    bounce_domain: str,
    bounce_mx: str,
    relay_mx: str,
    live_spf: dict[str, list[str]],
    dkim: dict[str, dict[str, str]],
    live_dmarc: dict[str, list[str]] | None = None,
    dmarc_policy: str = "none",
    dmarc_rua: str = "",
    ttl: int = 3600,
    spf_new_terms: tuple[str, ...] | list[str] = ("mx",),
    spf_new_all: str = "~all",
) -> RecordSet:
    """Build every record (see the module docstring). ``live_spf``/``live_dmarc`` map a name to
    the v=spf1 / v=DMARC1 records it has now ([] = none); ``dkim`` maps a domain to
    ``{"selector": s, "txt": "v=DKIM1; k=rsa; p=..."}`` (the relay_dkim__public_keys fact)."""
    _validate(
        relay_fqdn, ipv4=ipv4, ipv6=ipv6, relay_mx=relay_mx, bounce_domain=bounce_domain, bounce_mx=bounce_mx
    )
    fqdn = relative(relay_fqdn)
    domains = [_check_name(d, "bulkrelay_sending_domains") for d in sending_domains]
    if not domains:
        raise RecordError("bulkrelay_sending_domains is empty: list the From: domains the relay sends for")
    bounce = relative(bounce_domain) if bounce_domain else ""
    live_dmarc = live_dmarc or {}
    out = RecordSet()
    _relay_records(out, fqdn, ipv4=ipv4, ipv6=ipv6, relay_mx=relay_mx, ttl=ttl)
    for name in [*domains, *([bounce] if bounce and bounce not in domains else [])]:
        merged = merge_spf(
            live_spf.get(name, []), ipv4, ipv6, new_terms=spf_new_terms, new_all=spf_new_all, domain=name
        )
        out.warnings += merged.warnings
        purpose = "SPF: the published record with the relay's addresses merged in (nothing else changed)"
        state = "new" if not live_spf.get(name) else ("relay added" if merged.changed else "unchanged")
        out.notes.setdefault(name, []).append(f"SPF {state}")
        out.add(name, "TXT", quote_txt(merged.record), ttl, name, purpose, txt=merged.record)
    for name in domains:
        _dkim_dmarc_records(
            out,
            name,
            key=dkim.get(name) or {},
            live_dmarc=live_dmarc.get(name, []),
            policy=dmarc_policy,
            rua=dmarc_rua,
            ttl=ttl,
        )
    if bounce:
        out.add(
            bounce,
            "MX",
            f"10 {relative(bounce_mx)}.",
            ttl,
            bounce,
            "bounces (DSNs) to the Return-Path domain go to a host that accepts mail, never the relay",
        )
    return out


def ptr_request(relay_fqdn: str, ip: str, nameservers: list[str] | None = None) -> str:
    """The note an operator sends to the hosting provider to set the PTR of ``ip``."""
    from bulkrelay.dns.resolver import reverse_name  # noqa: PLC0415 - small helper

    fqdn = relative(relay_fqdn)
    addr = ipaddress.ip_address(ip)
    rtype = "AAAA" if addr.version == 6 else "A"
    ns = f" @{nameservers[0]}" if nameservers else ""
    return "\n".join(
        [
            f"# PTR request for {addr.compressed}",
            "",
            "To the hosting provider / network operator of this address:",
            "",
            f"Please set the reverse DNS (PTR) record of **{addr.compressed}** to **{fqdn}**.",
            "",
            f"- PTR owner: `{reverse_name(ip)}`",
            f"- PTR value: `{fqdn}.`",
            "",
            "Why: this address sends transactional mail. Receiving mail servers look up the PTR of the",
            f"connecting address and then the {rtype} record of that name (forward-confirmed reverse",
            "DNS). Both must point at each other, and the name must be the one the server greets with",
            f"(HELO/EHLO {fqdn}); mail from addresses without matching reverse DNS is rejected or filed",
            "as spam by the large mailbox providers.",
            "",
            f"We publish `{fqdn}. {rtype} {addr.compressed}` ourselves; only the PTR is set by you.",
            "",
            "Verify afterwards:",
            "",
            "```",
            f"dig +short -x {addr.compressed}{ns}        # must print {fqdn}.",
            f"dig +short {rtype} {fqdn}.{ns}   # must print {addr.compressed}",
            "ansible localhost -m bulkrelay_fcrdns \\",
            f"    -a 'ip={addr.compressed} expected_name={fqdn} helo={fqdn}'",
            "```",
            "",
        ]
    )
