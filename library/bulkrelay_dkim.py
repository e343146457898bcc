#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.dkim (sender/).
"""Ansible module: Check a DKIM selector record: present, valid, and carrying the relay's key (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_dkim
short_description: "Check a DKIM selector record: present, valid, and carrying the relay's key"
description:
  - Reads the TXT record C(<selector>._domainkey.<domain>), validates its tags (v, k, p, h, t;
    base64 key, RSA size) and compares its C(p=) with the relay's public key O(expected).
  - Read-only; never changes anything. A failed check fails the task with a message that says
    which record to set to what. A DNS timeout or SERVFAIL fails as "could not tell", and so
    does an RSA key when the cryptography library (requirements.txt) is missing.
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  domain:
    description: The signing domain (d=).
    type: str
    required: true
  selector:
    description: The DKIM selector (s=).
    type: str
    required: true
  expected:
    description:
      - The relay's DKIM TXT (C(v=DKIM1; k=rsa; p=...)) or only its p= value, e.g. from the fact
        C(relay_dkim__public_keys). Empty = only check that the record is valid.
    type: str
    default: ""
  authoritative:
    description:
      - Ask each authoritative nameserver of the zone directly (found through O(nameservers)) and
        pass only when every one serves the record; RV(servers) has one verdict per server. A
        server that times out or answers SERVFAIL is "could not tell", never "served".
    type: bool
    default: false
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: The published DKIM key is the relay's key
  bulkrelay_dkim:
    domain: example.com
    selector: bulk2026
    expected: "{{ relay_dkim__public_keys['example.com'].txt }}"
    nameservers: [198.51.100.53]
  delegate_to: localhost
"""

RETURN = r"""
status:
  description: pass, warn, fail or error (could not tell).
  type: str
  returned: always
message:
  description: What was found.
  type: str
  returned: always
fix:
  description: The record to set (or request) when the check fails.
  type: str
  returned: always
check:
  description: The full check result (check, subject, status, message, fix, details, warnings).
  type: dict
  returned: always
record:
  description: The published DKIM record (strings joined).
  type: str
  returned: always
servers:
  description: With O(authoritative), one C({server, status, message}) per nameserver address.
  type: list
  elements: dict
  returned: always
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, run_dns_check

with bulkrelay_imports():
    from bulkrelay.dns import dkim
    from bulkrelay.dns.resolver import make_resolver


def main() -> None:
    run_dns_check(
        {
            "domain": {"type": "str", "required": True},
            "selector": {"type": "str", "required": True},
            "expected": {"type": "str", "default": "", "no_log": False},
            "authoritative": {"type": "bool", "default": False},
        },
        lambda resolver, p: (
            dkim.check_authoritative(
                resolver,
                p["domain"],
                p["selector"],
                expected=p["expected"],
                ask=lambda address: make_resolver([address], p["timeout"]),
            )
            if p["authoritative"]
            else dkim.check(resolver, p["domain"], p["selector"], expected=p["expected"])
        ),
        details={"record": "", "servers": []},
    )


if __name__ == "__main__":
    main()
