#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.fcrdns (sender/).
"""Ansible module: Check forward-confirmed reverse DNS (PTR <-> A/AAAA) of a relay IP (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_fcrdns
short_description: "Check forward-confirmed reverse DNS (PTR <-> A/AAAA) of a relay IP"
description:
  - Looks up the PTR of O(ip), checks that each PTR name's A (or AAAA for IPv6) record contains
    O(ip), that the PTR name is O(expected_name) and that it equals the HELO name O(helo).
  - The PTR is set by the hosting provider, not in your zone; the failure message says what to
    request (see the PTR request note written by the dns_records role).
  - Read-only; never changes anything. A failed check fails the task with a message that says
    which record to set to what. A DNS timeout or SERVFAIL fails as "could not tell".
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  ip:
    description: The relay's sending address, IPv4 or IPv6.
    type: str
    required: true
  expected_name:
    description: The name the PTR must point to (the relay FQDN); empty = any forward-confirmed name.
    type: str
    default: ""
  helo:
    description: The relay's HELO/EHLO name, which must equal the PTR name; empty = not compared.
    type: str
    default: ""
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: PTR of the relay IP is relay.example.com and confirms back
  bulkrelay_fcrdns:
    ip: 203.0.113.25
    expected_name: relay.example.com
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
  description: The record to set (or request) when the check fails.
  type: str
  returned: always
check:
  description: The full check result (check, subject, status, message, fix, details, warnings).
  type: dict
  returned: always
ptr_names:
  description: The names the PTR record(s) of the IP point to.
  type: list
  elements: str
  returned: always
confirmed_names:
  description: The PTR names whose A/AAAA record contains the IP.
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, run_dns_check

with bulkrelay_imports():
    from bulkrelay.dns import fcrdns


def main() -> None:
    run_dns_check(
        {
            "ip": {"type": "str", "required": True},
            "expected_name": {"type": "str", "default": ""},
            "helo": {"type": "str", "default": ""},
        },
        lambda resolver, p: fcrdns.check(resolver, p["ip"], expected_name=p["expected_name"], helo=p["helo"]),
        details={"ptr_names": [], "confirmed_names": []},
    )


if __name__ == "__main__":
    main()
