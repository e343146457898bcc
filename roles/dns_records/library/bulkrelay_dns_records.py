#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.records (sender/).
"""Ansible module: compute the DNS records of a relay, merging into the live SPF (read-only), and
write them as files for people to paste."""
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_dns_records
short_description: "Compute the DNS records a bulk relay needs, merged into the live zone, and write them"
description:
  - Reads the live TXT records of each sending domain and of the bounce domain, and the live
    DMARC records, then computes the relay's records with bulkrelay.dns.records - A/AAAA and
    MX for the relay name, SPF merged into the live record, DKIM, DMARC, TLS-RPT, the bounce MX -
    and the PTR request notes. Changes no DNS; the role optionally applies the RRsets.
  - With O(output_dir), writes the records there for people to paste, in one module run -
    per group (C(relay), each sending domain, the bounce domain) C(<group>.zone),
    C(<group>.json) and C(<group>.md), per relay address C(ptr-request-<ip>.md) - each only when
    its content or mode differs (reported in RV(files_changed), one diff per file).
  - A DNS failure while reading a live record fails the task - the SPF is never generated
    without knowing what is published.
version_added: "0.1.0"
author: bulkrelay
options:
  relay_fqdn: {description: "The relay's name (HELO, PTR target, A/AAAA owner).", type: str, required: true}
  ipv4: {description: The relay's sending IPv4 address., type: str, default: ""}
  ipv6: {description: The relay's sending IPv6 address., type: str, default: ""}
  sending_domains: {description: From domains., type: list, elements: str, required: true}
  bounce_domain: {description: Return-Path domain; empty = none., type: str, default: ""}
  bounce_mx: {description: MX target of the bounce domain (accepts mail)., type: str, default: ""}
  relay_mx: {description: MX target published for the relay name., type: str, required: true}
  dkim_keys:
    description: "Domain -> {selector, txt} (the relay_dkim__public_keys fact)."
    type: dict
    default: {}
  dmarc_policy:
    description: Policy of a new DMARC record.
    type: str
    default: none
    choices: [none, quarantine, reject]
  dmarc_rua: {description: "Aggregate report address; {domain} is replaced.", type: str, default: ""}
  tlsrpt_rua:
    description: "TLS-RPT report URIs (mailto: or https:; {domain} is replaced); [] = no TLS-RPT records."
    type: list
    elements: str
    default: []
  ttl: {description: TTL of every record., type: int, default: 3600}
  spf_new_terms:
    description: Terms of a new SPF record besides the relay's.
    type: list
    elements: str
    default: [mx]
  spf_new_all: {description: Final all of a new SPF record., type: str, default: "~all"}
  spf_existing:
    description: "Name -> SPF record to merge into instead of the live one (offline use)."
    type: dict
    default: {}
  live: {description: Read live records (false = treat every name as empty)., type: bool, default: true}
  output_dir:
    description: "Folder (created, mode 0755) to write the files into (mode 0644); empty = write none."
    type: path
    default: ""
extends_documentation_fragment:
  - bulkrelay_dns_check
attributes:
  check_mode:
    support: full
    details: Reports the files it would write, and their diffs, without writing.
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Compute the relay's records
  bulkrelay_dns_records:
    relay_fqdn: relay.example.com
    ipv4: 203.0.113.25
    sending_domains: [example.com]
    bounce_domain: bounce.example.com
    bounce_mx: mail.example.com
    relay_mx: mail.example.com
    output_dir: build/dns/relay.example.com
  delegate_to: localhost
"""

RETURN = r"""
records:
  description: Every record (name, fqdn, type, value, ttl, group, purpose, txt, strings).
  type: list
  elements: dict
  returned: success
groups:
  description: The records by group (relay, each sending domain, the bounce domain).
  type: dict
  returned: success
rrsets:
  description: Complete RRsets to apply (fqdn, type, ttl, rdata), other live TXT kept.
  type: list
  elements: dict
  returned: success
ptr_requests:
  description: One PTR request note (Markdown) per relay IP (ip, ptr_owner, text).
  type: list
  elements: dict
  returned: success
files_changed:
  description: The files of O(output_dir) written (in check mode, that would be written), by name.
  type: list
  elements: str
  returned: success
warnings_found:
  description: Warnings about the records (multiple SPF, lookup limits, missing DKIM key).
  type: list
  elements: str
  returned: success
"""

import os

from ansible.module_utils.bulkrelay import DNS_OPTIONS, bulkrelay_imports, bulkrelay_module, dns_resolver
from ansible.module_utils.bulkrelay_files import write_files

with bulkrelay_imports():
    from bulkrelay.dns import records as rec
    from bulkrelay.dns import spf
    from bulkrelay.dns.resolver import relative


def presentation(parts) -> str:
    """TXT character-strings (bytes) as zone-file text, keeping the published split."""
    out = []
    for part in parts:
        text = part.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'"{text}"')
    return " ".join(out)


def read_live(module, resolver, names):
    """name -> list of (text, presentation) of its TXT records; fails on a DNS error."""
    live = {}
    for name in names:
        answer = resolver.query(name, "TXT")
        if answer.failed:
            module.fail_json(
                msg=f"could not read the live TXT records of {name} ({answer.error}); refusing to generate "
                "records without knowing what is published - fix DNS reachability (dns_records__nameservers) "
                "or set dns_records__spf_existing for an offline run"
            )
        live[name] = [(b"".join(p).decode("utf-8", "replace"), presentation(p)) for p in answer.records]
    return live


def main() -> None:
    module = bulkrelay_module(
        {
            "relay_fqdn": {"type": "str", "required": True},
            "ipv4": {"type": "str", "default": ""},
            "ipv6": {"type": "str", "default": ""},
            "sending_domains": {"type": "list", "elements": "str", "required": True},
            "bounce_domain": {"type": "str", "default": ""},
            "bounce_mx": {"type": "str", "default": ""},
            "relay_mx": {"type": "str", "required": True},
            "dkim_keys": {"type": "dict", "default": {}},
            "dmarc_policy": {"type": "str", "default": "none", "choices": ["none", "quarantine", "reject"]},
            "dmarc_rua": {"type": "str", "default": ""},
            "tlsrpt_rua": {"type": "list", "elements": "str", "default": []},
            "ttl": {"type": "int", "default": 3600},
            "spf_new_terms": {"type": "list", "elements": "str", "default": ["mx"]},
            "spf_new_all": {"type": "str", "default": "~all"},
            "spf_existing": {"type": "dict", "default": {}},
            "live": {"type": "bool", "default": True},
            "output_dir": {"type": "path", "default": ""},
            **DNS_OPTIONS,
        }
    )
    p = module.params
    resolver = dns_resolver(module)
    domains = [relative(d) for d in p["sending_domains"]]
    overridden = {relative(k) for k in p["spf_existing"]}
    spf_names = rec.spf_names(domains, p["bounce_domain"])
    to_read = [n for n in spf_names if n not in overridden] if p["live"] else []
    live_txt = read_live(module, resolver, to_read)
    live_dmarc_txt = read_live(module, resolver, [f"_dmarc.{d}" for d in domains]) if p["live"] else {}
    try:
        out = rec.plan(
            relay_fqdn=p["relay_fqdn"],
            ipv4=p["ipv4"],
            ipv6=p["ipv6"],
            sending_domains=domains,
            bounce_domain=p["bounce_domain"],
            live_txt=live_txt,
            live_dmarc_txt=live_dmarc_txt,
            spf_existing=p["spf_existing"],
            nameservers=p["nameservers"],
            bounce_mx=p["bounce_mx"],
            relay_mx=p["relay_mx"],
            dkim=p["dkim_keys"],
            dmarc_policy=p["dmarc_policy"],
            dmarc_rua=p["dmarc_rua"],
            tlsrpt_rua=p["tlsrpt_rua"],
            ttl=p["ttl"],
            spf_new_terms=p["spf_new_terms"],
            spf_new_all=p["spf_new_all"],
        )
    except rec.RecordError as exc:
        module.fail_json(msg=f"cannot generate the DNS records: {exc}")
    if p["live"]:
        for name, record in out.spf.items():
            out.warnings += spf.lookup_warnings(resolver, name, record)
    for warning in out.warnings:
        module.warn(warning)
    changed, diffs = [], []
    if p["output_dir"]:
        folder = p["output_dir"]
        if not os.path.isdir(folder):
            diffs.append(
                {"before_header": folder, "after_header": folder, "before": "", "after": "(folder)\n"}
            )
            if not module.check_mode:
                os.makedirs(folder, mode=0o755)
        files = rec.output_files(out, relay_fqdn=p["relay_fqdn"], ipv4=p["ipv4"], ipv6=p["ipv6"])
        paths = {os.path.join(folder, name): text for name, text in sorted(files.items())}
        written, file_diffs = write_files(module, paths, 0o644)
        changed = [os.path.basename(path) for path in written]
        diffs += file_diffs
    module.exit_json(
        changed=bool(changed),
        files_changed=changed,
        diff=diffs,
        records=out.records,
        groups=out.groups,
        rrsets=out.rrsets,
        ptr_requests=out.ptr_requests,
        warnings_found=out.warnings,
    )


if __name__ == "__main__":
    main()
