#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.spf (sender/).
"""Ansible module: does a domain's SPF authorise the relay IP? (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_spf
short_description: "Check that a domain's SPF record authorises an IP (RFC 7208 check_host)"
description:
  - Evaluates the SPF policy of O(domain) for mail from O(ip) with the HELO name O(helo), per
    RFC 7208 (every mechanism and modifier, macros, the 10-lookup and 2-void-lookup limits,
    permerror on multiple records), using pyspf through the bulkrelay resolver.
  - Read-only; never changes anything. Fails when the result is not O(expect), with a message
    that says which TXT record to set to what. A DNS timeout or SERVFAIL fails as "could not
    tell", never as a verdict.
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  domain:
    description: The domain whose SPF is checked (the Return-Path / MAIL FROM domain or From domain).
    type: str
    required: true
  ip:
    description: The sending IP address (IPv4 or IPv6).
    type: str
    required: true
  helo:
    description: The HELO/EHLO name of the relay; defaults to O(domain).
    type: str
    default: ""
  sender:
    description: The envelope sender; defaults to C(postmaster@domain).
    type: str
    default: ""
  expect:
    description: The check_host() result that counts as success.
    type: str
    default: pass
    choices: [pass, fail, softfail, neutral, none]
requirements:
  - pyspf on the controller
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: SPF of example.com authorises the relay
  bulkrelay_spf:
    domain: example.com
    ip: 203.0.113.25
    helo: relay.example.com
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
  description: The record to set when the check fails.
  type: str
  returned: always
result:
  description: The check_host() result (pass, fail, softfail, neutral, none, permerror, temperror).
  type: str
  returned: always
explanation:
  description: The explanation string (exp= or pyspf's default).
  type: str
  returned: always
lookups:
  description: DNS-lookup terms used during evaluation (limit 10).
  type: int
  returned: always
void_lookups:
  description: Lookups that returned no answer (limit 2).
  type: int
  returned: always
check:
  description: The full check result (check, subject, status, message, fix, details, warnings).
  type: dict
  returned: always
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, run_dns_check

with bulkrelay_imports():
    from bulkrelay.dns import spf


def main() -> None:
    run_dns_check(
        {
            "domain": {"type": "str", "required": True},
            "ip": {"type": "str", "required": True},
            "helo": {"type": "str", "default": ""},
            "sender": {"type": "str", "default": ""},
            "expect": {
                "type": "str",
                "default": "pass",
                "choices": ["pass", "fail", "softfail", "neutral", "none"],
            },
        },
        lambda resolver, p: spf.check(
            resolver,
            p["domain"],
            p["ip"],
            helo=p["helo"],
            sender=p["sender"],
            expect=p["expect"],
            timeout=p["timeout"],
        ),
        details={"result": "", "explanation": "", "lookups": 0, "void_lookups": 0},
        errors=(spf.SpfUnavailable,),
    )


if __name__ == "__main__":
    main()
