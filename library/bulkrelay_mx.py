#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.mx (sender/).
"""Ansible module: Check that a name has MX records that resolve (and the expected targets) (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_mx
short_description: "Check that a name has MX records that resolve (and the expected targets)"
description:
  - Looks up the MX of O(name), checks that each target has an A or AAAA record, that every name
    in O(expected) is a target and that no name in O(forbidden) is (e.g. the relay itself, which
    accepts no inbound mail). A null MX (RFC 7505) fails.
  - Read-only; never changes anything. A failed check fails the task with a message that says
    which record to set to what. A DNS timeout or SERVFAIL fails as "could not tell".
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  name:
    description: The name whose MX is checked (the relay FQDN, the bounce domain).
    type: str
    required: true
  expected:
    description: Target host names that must be among the MX targets.
    type: list
    elements: str
    default: []
  forbidden:
    description: Target host names that must not be MX targets.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: The relay name has an MX pointing at the company's mail server
  bulkrelay_mx:
    name: relay.example.com
    expected: [mail.example.com]
    forbidden: [relay.example.com]
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
mx:
  description: The MX records found, as preference and exchange.
  type: list
  elements: dict
  returned: always
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, run_dns_check

with bulkrelay_imports():
    from bulkrelay.dns import mx


def main() -> None:
    run_dns_check(
        {
            "name": {"type": "str", "required": True},
            "expected": {"type": "list", "elements": "str", "default": []},
            "forbidden": {"type": "list", "elements": "str", "default": []},
        },
        lambda resolver, p: mx.check(resolver, p["name"], expected=p["expected"], forbidden=p["forbidden"]),
        details={"mx": []},
    )


if __name__ == "__main__":
    main()
