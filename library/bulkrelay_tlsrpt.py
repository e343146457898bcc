#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dns.tlsrpt (sender/).
"""Ansible module: Check a domain's TLS-RPT record (RFC 8460): one valid v=TLSRPTv1 with rua (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_tlsrpt
short_description: "Check a domain's TLS-RPT record: one valid v=TLSRPTv1 record with report URIs"
description:
  - Reads C(_smtp._tls.<domain>) and checks that exactly one TXT record there starts with
    C(v=TLSRPTv1) and lists valid report URIs (C(mailto:) or C(https:)) in C(rua=) (RFC 8460).
  - A record that lists other URIs than O(rua) is a warning, not a failure.
  - Read-only; never changes anything. A missing or invalid record fails the task with the
    record to publish. A DNS timeout or SERVFAIL fails as "could not tell".
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  domain:
    description: The domain whose mail servers the reports are about (a sending domain).
    type: str
    required: true
  rua:
    description:
      - The report URIs the record should list (C({domain}) is replaced), used in the fix and
        compared with the published ones; [] = any valid record passes.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: TLS-RPT of example.com is published
  bulkrelay_tlsrpt:
    domain: example.com
    rua: ["mailto:tlsrpt@{domain}"]
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
  description: The record to publish when the check fails.
  type: str
  returned: always
check:
  description: The full check result (check, subject, status, message, fix, details, warnings).
  type: dict
  returned: always
record:
  description: The TLS-RPT record found.
  type: str
  returned: always
rua:
  description: Its report URIs.
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, run_dns_check

with bulkrelay_imports():
    from bulkrelay.dns import tlsrpt


def main() -> None:
    run_dns_check(
        {
            "domain": {"type": "str", "required": True},
            "rua": {"type": "list", "elements": "str", "default": []},
        },
        lambda resolver, p: tlsrpt.check(resolver, p["domain"], rua=p["rua"]),
        details={"record": "", "rua": []},
    )


if __name__ == "__main__":
    main()
