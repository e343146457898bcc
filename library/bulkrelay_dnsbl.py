#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.dnsbl (sender/).
"""Ansible module: check addresses and domains against DNS blacklists (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_dnsbl
short_description: Check the relay's addresses and domains against DNS blacklists
description:
  - Asks every configured DNSBL about each address in O(ips) (IPv4 reversed, IPv6 as nibbles)
    and each domain in O(domains), in parallel, with the same checker as the Nagios plugin and the
    cron job of the role dnsbl_monitor (the bulkrelay package).
  - Each list is self-tested (RFC 5782 test points) in the same pass; a dead list, a refused
    resolver, error return codes (Spamhaus 127.255.255.x) and timeouts are reported as errors
    (status UNKNOWN), never as "listed" and never as "clean". Allowlists are reported apart.
  - Read-only; never changes anything. Fails when listed (the message names list, code and
    reason), and, with O(fail_on_error=true), when a list could not be checked.
  - Runs where the bulkrelay package is importable - the controller (delegate the task to
    localhost), or the relay with C(ansible_python_interpreter=/opt/bulkrelay/venv/bin/python).
version_added: "0.1.0"
author: bulkrelay
options:
  ips:
    description: IPv4/IPv6 addresses to check.
    type: list
    elements: str
    default: []
  domains:
    description: Domains to check on domain lists (e.g. Spamhaus DBL).
    type: list
    elements: str
    default: []
  nameservers:
    description:
      - Resolvers to ask, each C(IP), C(IP:port) or C([IPv6]:port). Empty = the system's
        resolvers. Spamhaus refuses public resolvers.
    type: list
    elements: str
    default: []
  lists:
    description:
      - The lists; empty = the curated defaults. Each a dict with C(zone) and optionally C(kind)
        (ip/domain), C(name), C(ipv4) and C(ipv6) (the address families an IP list serves),
        C(listed), C(errors) (return codes, ranges or networks), C(selftest), C(test_listed) and
        C(test_clean) (IPv4 or domain self-test points), C(test_listed6) and C(test_clean6) (IPv6
        self-test points), C(allowlist), C(dqs_zone), C(nameservers). See
        roles/dnsbl_monitor/README.md.
    type: list
    elements: dict
    default: []
  extra_lists:
    description: Lists added to O(lists) (or to the defaults).
    type: list
    elements: dict
    default: []
  disabled_lists:
    description: Zones removed from the set.
    type: list
    elements: str
    default: []
  dqs_key:
    description: Spamhaus DQS key; ZEN/DBL are then asked through the DQS zones.
    type: str
    default: ""
  timeout:
    description: Seconds per query including retries; the whole check ends within this plus 0.5 s.
    type: float
    default: 4
  retries:
    description: Retries per query within O(timeout).
    type: int
    default: 1
  warning:
    description: Listings at which the status is WARNING.
    type: int
    default: 1
  critical:
    description: Listings at which the status is CRITICAL.
    type: int
    default: 1
  fail_on_listed:
    description: Fail the task when the status is WARNING or CRITICAL.
    type: bool
    default: true
  fail_on_error:
    description: Fail the task when a list could not be checked (status UNKNOWN).
    type: bool
    default: false
requirements:
  - bulkrelay (sender/ of this repository) where the module runs
extends_documentation_fragment:
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: The relay is on no blacklist
  bulkrelay_dnsbl:
    ips: [198.51.100.25, "2001:db8:100::25"]
    domains: [example.com, bounce.example.com]
    nameservers: [192.0.2.53]
  delegate_to: localhost

- name: Audit only (report, never fail), with a Spamhaus DQS key
  bulkrelay_dnsbl:
    ips: ["{{ bulkrelay_ipv4 }}"]
    dqs_key: "{{ vault_spamhaus_dqs_key }}"
    fail_on_listed: false
  delegate_to: localhost
  register: dnsbl
"""

RETURN = r"""
status:
  description: OK, WARNING, CRITICAL or UNKNOWN (a list could not be checked).
  type: str
  returned: always
message:
  description: The Nagios-style summary line.
  type: str
  returned: always
listings:
  description: Listings, each with target, zone, list, codes and reason.
  type: list
  elements: dict
  returned: always
errors:
  description: Checks that could not be answered, each with target, zone, list and error.
  type: list
  elements: dict
  returned: always
allowlisted:
  description: Allowlist hits (never counted as listings).
  type: list
  elements: dict
  returned: always
checked:
  description: Number of (list, address/domain) checks that gave a definite answer.
  type: int
  returned: always
elapsed:
  description: Seconds the check took.
  type: float
  returned: always
"""

from ansible.module_utils.bulkrelay import bulkrelay_imports, bulkrelay_module

with bulkrelay_imports():
    from bulkrelay.dnsbl.checker import Checker
    from bulkrelay.dnsbl.lists import Settings
    from bulkrelay.dnsbl.names import InputError, parse_domain_target, parse_ip_target
    from bulkrelay.dnsbl.report import Thresholds, as_dict, status_of, summary


def run_check(p: dict) -> tuple[dict, str]:
    """The module's work without Ansible: (result dict, summary line). Raises InputError/ValueError."""
    settings = Settings.from_mapping(
        {
            "lists": p["lists"],
            "extra_lists": p["extra_lists"],
            "disabled_lists": p["disabled_lists"],
            "nameservers": p["nameservers"],
            "timeout": p["timeout"],
            "retries": p["retries"],
            "dqs_key": p["dqs_key"],
        }
    )
    thresholds = Thresholds(p["warning"], p["critical"])
    targets = [parse_ip_target(ip) for ip in p["ips"]] + [parse_domain_target(d) for d in p["domains"]]
    if not targets:
        raise InputError("nothing to check: set ips and/or domains")
    result = Checker(settings).run(targets)
    return as_dict(result, thresholds), summary(result, status_of(result, thresholds))


def main() -> None:
    module = bulkrelay_module(
        {
            "ips": {"type": "list", "elements": "str", "default": []},
            "domains": {"type": "list", "elements": "str", "default": []},
            "nameservers": {"type": "list", "elements": "str", "default": []},
            "lists": {"type": "list", "elements": "dict", "default": []},
            "extra_lists": {"type": "list", "elements": "dict", "default": []},
            "disabled_lists": {"type": "list", "elements": "str", "default": []},
            "dqs_key": {"type": "str", "default": "", "no_log": True},
            "timeout": {"type": "float", "default": 4.0},
            "retries": {"type": "int", "default": 1},
            "warning": {"type": "int", "default": 1},
            "critical": {"type": "int", "default": 1},
            "fail_on_listed": {"type": "bool", "default": True},
            "fail_on_error": {"type": "bool", "default": False},
        },
        required_one_of=[("ips", "domains")],
    )
    p = module.params
    try:
        data, message = run_check(p)
    except (InputError, ValueError) as exc:
        module.fail_json(msg=f"bulkrelay_dnsbl: {exc}")
    out = {
        "changed": False,
        "status": data["status"],
        "message": message,
        "listings": data["listings"],
        "errors": data["errors"],
        "allowlisted": data["allowlisted"],
        "checked": data["checked"],
        "elapsed": data["elapsed"],
    }
    if p["fail_on_listed"] and data["status"] in ("WARNING", "CRITICAL"):
        module.fail_json(
            msg=message + ". Find and stop the cause, then request removal on each list's web site.", **out
        )
    if p["fail_on_error"] and data["status"] == "UNKNOWN":
        module.fail_json(msg=message, **out)
    if data["status"] == "UNKNOWN":
        module.warn(message)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
