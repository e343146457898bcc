#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.dmarc (sender/).
"""Ansible module: Check a domain's DMARC record: present, valid tags, policy and alignment (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_dmarc
short_description: "Check a domain's DMARC record: present, valid tags, policy and alignment"
description:
  - Reads C(_dmarc.<domain>) (falling back to the organizational domain), validates every tag
    (v, p, sp, np, adkim, aspf, pct, rua, ruf, fo, rf, ri), checks the policy is at least
    O(min_policy) and that the From domain aligns with the Return-Path domain (SPF) and/or the
    DKIM signing domain.
  - The organizational domain comes from the Public Suffix List (C(example.co.uk), not
    C(co.uk)), read from Debian's package publicsuffix when installed, else from the copy
    publicsuffix2 ships.
  - Read-only; never changes anything. A failed check fails the task with a message that says
    which record to set to what. A DNS timeout or SERVFAIL fails as "could not tell".
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  domain:
    description: The From domain.
    type: str
    required: true
  return_path_domain:
    description: The envelope sender (Return-Path) domain the relay uses; empty = not checked.
    type: str
    default: ""
  dkim_domain:
    description: The DKIM d= domain the relay signs with; empty = not checked.
    type: str
    default: ""
  min_policy:
    description: The weakest acceptable policy.
    type: str
    default: none
    choices: [none, quarantine, reject]
  expected:
    description: The record to suggest in the failure message.
    type: str
    default: ""
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: DMARC of example.com is valid and aligned
  bulkrelay_dmarc:
    domain: example.com
    return_path_domain: bounce.example.com
    dkim_domain: example.com
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
  description: The DMARC record found.
  type: str
  returned: always
policy:
  description: The effective policy (p=, or sp= when found at the organizational domain).
  type: str
  returned: when the record parses
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, run_dns_check

with bulkrelay_imports():
    from bulkrelay.dns import dmarc


def main() -> None:
    run_dns_check(
        {
            "domain": {"type": "str", "required": True},
            "return_path_domain": {"type": "str", "default": ""},
            "dkim_domain": {"type": "str", "default": ""},
            "min_policy": {"type": "str", "default": "none", "choices": ["none", "quarantine", "reject"]},
            "expected": {"type": "str", "default": ""},
        },
        lambda resolver, p: dmarc.check(
            resolver,
            p["domain"],
            return_path_domain=p["return_path_domain"],
            dkim_domain=p["dkim_domain"],
            min_policy=p["min_policy"],
            expected=p["expected"],
        ),
        details={"record": "", "policy": ""},
    )


if __name__ == "__main__":
    main()
