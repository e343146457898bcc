"""Generate the DNS records a bulk relay needs, from the inventory and the live zone.

Pure functions (no DNS): the caller reads the live TXT records and passes them in, so the
logic is unit-tested with plain strings. ``bulkrelay_dns_records`` (the role's module) does the
live reads through :mod:`bulkrelay.dns.resolver` and calls :func:`plan`, which runs
:func:`generate` and shapes its records into RRsets and PTR request notes.

Records produced, per relay and sending domain:

* A/AAAA for the relay name, and an MX for it pointing at the company's normal MX (receivers
  check that a sending name has an MX; the relay itself accepts no inbound mail);
* SPF for each sending domain and the bounce (Return-Path) domain, MERGED into the live record
  (the relay's ip4:/ip6: added in front, everything else kept), plus ``v=spf1 ip4:.. -all``
  for the relay name itself (the HELO identity);
* DKIM TXT ``<selector>._domainkey.<domain>``, split into 255-byte strings;
* DMARC ``_dmarc.<domain>``: the live record is kept when it exists, else ``p=none`` with rua;
* TLS-RPT ``_smtp._tls.<domain>`` (RFC 8460) when report URIs are given;
* the MX of the bounce domain, pointing at a host that accepts mail (never the relay).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bulkrelay.dns import dkim, spf, tlsrpt
from bulkrelay.dns.rdata import RecordError, quote_txt, split_txt
from bulkrelay.dns.resolver import relative, reverse_name
from bulkrelay.dns.tags import TagSyntaxError
from bulkrelay.names import is_domain

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


def dkim_rrset(domain: str, selector: str, txt: str, ttl: int) -> dict[str, Any]:
    """The RRset of one DKIM key, as :func:`plan` gives RRsets (for a selector published on its
    own, e.g. by a rotation). Raises TagSyntaxError when ``txt`` is not a tag list."""
    value = quote_txt(dkim.normalize(txt))
    return {"fqdn": f"{selector}._domainkey.{relative(domain)}.", "type": "TXT", "ttl": ttl, "rdata": [value]}


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


def _tlsrpt_record(out: RecordSet, name: str, rua: list[str], ttl: int) -> None:
    try:
        txt = tlsrpt.record([uri.replace("{domain}", name) for uri in rua])
    except ValueError as exc:
        raise RecordError(f"bulkrelay_tlsrpt_rua: {exc} (list mailto: or https: URIs)") from None
    purpose = "TLS-RPT: where sending servers report failed TLS to this domain's mail servers"
    out.add(tlsrpt.owner(name), "TXT", quote_txt(txt), ttl, name, purpose, txt=txt)


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
    tlsrpt_rua: list[str] | None = None,
) -> RecordSet:
    """Build every record (see the module docstring). ``live_spf``/``live_dmarc`` map a name to
    the v=spf1 / v=DMARC1 records it has now ([] = none); ``dkim`` maps a domain to
    ``{"selector": s, "txt": "v=DKIM1; k=rsa; p=..."}`` (the relay_dkim__public_keys fact);
    ``tlsrpt_rua``: TLS-RPT report URIs ("{domain}" replaced), [] = no TLS-RPT records."""
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
        merged = spf.merge_spf(
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
        if tlsrpt_rua:
            _tlsrpt_record(out, name, tlsrpt_rua, ttl)
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


def spf_names(sending_domains: list[str], bounce_domain: str) -> list[str]:
    """The names that get an SPF record: each sending domain, then the bounce domain."""
    domains = [relative(d) for d in sending_domains]
    bounce = relative(bounce_domain) if bounce_domain else ""
    return [*domains, *([bounce] if bounce and bounce not in domains else [])]


@dataclass
class Plan:
    """Everything ``bulkrelay_dns_records`` returns, and the SPF records to count lookups of."""

    records: list[dict[str, Any]]
    groups: dict[str, list[dict[str, Any]]]
    rrsets: list[dict[str, Any]]
    ptr_requests: list[dict[str, str]]
    warnings: list[str]
    spf: dict[str, str]  # name -> its generated SPF record


def plan(
    *,
    relay_fqdn: str,
    ipv4: str,
    ipv6: str,
    sending_domains: list[str],
    bounce_domain: str,
    live_txt: dict[str, list[tuple[str, str]]],
    live_dmarc_txt: dict[str, list[tuple[str, str]]],
    spf_existing: dict[str, str | list[str]] | None = None,
    nameservers: list[str] | None = None,
    **options: Any,
) -> Plan:
    """The records of :func:`generate` as complete RRsets, plus the PTR request notes.

    ``live_txt`` maps each SPF name to its published TXT records as (text, zone-file
    presentation) pairs, ``live_dmarc_txt`` does the same for ``_dmarc.<domain>``; a name left
    out has none. ``spf_existing`` (name -> SPF record) replaces the live SPF of a name. An SPF
    RRset keeps the name's other TXT records, and the published string split of the SPF record
    when it is unchanged. ``options`` go to :func:`generate` (bounce_mx, relay_mx, dkim, ...).
    """
    domains = [relative(d) for d in sending_domains]
    bounce = relative(bounce_domain) if bounce_domain else ""
    names = spf_names(domains, bounce)
    overrides = {relative(k): v for k, v in (spf_existing or {}).items()}
    live_spf = {n: spf.spf_records([t for t, _ in live_txt.get(n, [])]) for n in names}
    live_spf.update({n: [v] if isinstance(v, str) else list(v) for n, v in overrides.items()})
    live_dmarc = {d: [t for t, _ in live_dmarc_txt.get(f"_dmarc.{d}", [])] for d in domains}
    out = generate(
        relay_fqdn=relay_fqdn,
        ipv4=ipv4,
        ipv6=ipv6,
        sending_domains=domains,
        bounce_domain=bounce,
        live_spf=live_spf,
        live_dmarc=live_dmarc,
        **options,
    )
    data = out.as_dict()
    rrsets: dict[tuple[str, str], dict[str, Any]] = {}
    spf_txt: dict[str, str] = {}
    for item in data["records"]:
        key = (item["fqdn"], item["type"])
        rrsets.setdefault(key, {"fqdn": item["fqdn"], "type": item["type"], "ttl": item["ttl"], "rdata": []})
        rrsets[key]["rdata"].append(item["value"])
        name = relative(item["fqdn"])
        if item["type"] == "TXT" and name in names and item["txt"].lower().startswith("v=spf1"):
            published = live_txt.get(name, [])
            others = [pres for text, pres in published if not spf.RE_SPF_START.match(text.strip())]
            same = [pres for text, pres in published if text.strip() == item["txt"]]
            rrsets[key]["rdata"] = [*others, *(same[:1] or [item["value"]])]
            spf_txt[name] = item["txt"]
    ptr = [
        {"ip": ip, "ptr_owner": reverse_name(ip), "text": ptr_request(relay_fqdn, ip, nameservers)}
        for ip in (ipv4, ipv6)
        if ip
    ]
    return Plan(data["records"], data["groups"], list(rrsets.values()), ptr, list(out.warnings), spf_txt)


MANAGED = "managed by bulkrelay, changes are overwritten (dns_records role)"


def output_files(result: Plan, *, relay_fqdn: str, ipv4: str, ipv6: str) -> dict[str, str]:
    """The files for people to paste, name -> text: per group (the relay, each sending domain,
    the bounce domain) ``<group>.zone`` (BIND snippet), ``.json`` (the records as data) and
    ``.md`` (a summary); per relay address ``ptr-request-<ip>.md`` (``:`` as ``_``)."""
    fqdn = relative(relay_fqdn)
    files = {}
    for group, items in result.groups.items():
        zone = [f"; {MANAGED}", f"; {group}: records for relay {fqdn}"]
        zone.append("; Paste into the zone that holds these names (absolute names, trailing dot).")
        for r in items:
            zone += [f"; {r['purpose']}", f"{r['fqdn']}\t{r['ttl']}\tIN\t{r['type']}\t{r['value']}"]
        files[f"{group}.zone"] = "\n".join(zone) + "\n"
        data = {
            "managed_by": MANAGED,
            "group": group,
            "relay": fqdn,
            "records": items,
            "warnings": result.warnings,
        }
        files[f"{group}.json"] = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        files[f"{group}.md"] = _summary(
            group, items, result.warnings, fqdn, [ip for ip in (ipv4, ipv6) if ip]
        )
    for note in result.ptr_requests:
        files[f"ptr-request-{note['ip'].replace(':', '_')}.md"] = f"<!-- {MANAGED} -->\n{note['text']}"
    return files


def _summary(group: str, items: list[dict[str, Any]], warnings: list[str], fqdn: str, ips: list[str]) -> str:
    """``<group>.md``: the records as a table, the DMARC path when the group has DMARC, the warnings."""
    lines = [
        f"<!-- {MANAGED} -->",
        f"# DNS records: {group}",
        "",
        f"For relay **{fqdn}** ({', '.join(ips)}).",
        f"Paste `{group}.zone` into a BIND zone, or enter each line below at your DNS provider",
        "(name, type, value; strings in quotes are one TXT record, several quoted strings are joined).",
        "",
        "| Name | Type | Value | Why |",
        "| --- | --- | --- | --- |",
    ]
    for r in items:
        value = r["txt"] if r["type"] == "TXT" else r["value"]
        lines.append(f"| `{r['fqdn']}` | {r['type']} | `{value}` | {r['purpose']} |")
    if any(r["fqdn"].startswith("_dmarc.") for r in items):
        lines += [
            "",
            "DMARC path: keep `p=none` while the `rua` reports show every legitimate source passing SPF or",
            "DKIM aligned; then `p=quarantine` (optionally `pct=25` -> `50` -> `100`), then `p=reject`.",
        ]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in warnings)]
    lines += [
        "",
        "The PTR of each relay address is set by the hosting provider, not in this zone: see the",
        "`ptr-request-*.md` notes beside this file. Verify everything with `playbooks/audit.yml`.",
    ]
    return "\n".join(lines) + "\n"
