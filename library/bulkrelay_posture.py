#!/usr/bin/python
# managed in the bulkrelay repository; the logic lives in bulkrelay.audit (sender/).
"""Ansible module: judge a relay's live posture from what playbooks/audit.yml read on it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_posture
short_description: Judge a relay's live posture from read-only command output and outside probes
description:
  - Takes the raw output of read-only commands run on the relay (postconf, postmap -s of the TLS
    policy table, bulkrelay-firewall-diff, ss, systemctl show, postqueue -j, the DNSBL state file,
    stat of the DKIM keys), outside TCP probes and DKIM test signatures, and returns one check per
    concern with pass, warn, fail or error and the fix.
  - Output it cannot read is an error ("could not tell"), never a pass. Never fails itself and
    never reports changed; the audit playbook collects the checks and decides.
  - Runs on the controller (delegate the task to localhost); needs the bulkrelay package there.
version_added: "0.1.0"
author: bulkrelay
options:
  fqdn:
    description: The relay's name (HELO, PTR).
    type: str
    required: true
  raw:
    description:
      - Command results by name (postconf, tls_policy, firewall, sockets, units, queue, webhooks,
        dnsbl_state, dkim_keys), each with rc, stdout and stderr.
    type: dict
    required: true
  now:
    description: The relay's clock (epoch seconds) when the state was read.
    type: float
    required: true
  required_ports:
    description: TCP ports that must listen on non-loopback addresses (the app-facing ports).
    type: list
    elements: int
    default: []
  allowed_ports:
    description: TCP ports that may also listen on non-loopback addresses (SSH).
    type: list
    elements: int
    default: []
  units:
    description: Units to judge, name to kind (running, timer, oneshot).
    type: dict
    default: {}
  dnsbl_max_age:
    description: Seconds the DNSBL cron's last run may be old; 0 = no DNSBL cron to judge.
    type: int
    default: 0
  queue_max_age:
    description: Seconds a deferred message may wait before the audit fails.
    type: int
    default: 3600
  webhook_max_age:
    description: Seconds an event may wait for a webhook (bulkrelay webhooks status) before the audit fails.
    type: int
    default: 3600
  probes:
    description: The probes of library/bulkrelay_tcp_probe (address, port, state, detail).
    type: list
    elements: dict
    default: []
  dkim:
    description:
      - Loop results of library/bulkrelay_milter_probe, one per sending domain (C(item) is the domain).
    type: list
    elements: dict
    default: []
  dkim_key_files:
    description:
      - Sending domain to the path of its DKIM private key on the relay; C(raw.dkim_keys) is
        C(stat -c '%Y %n') of these files. Empty = no key age to judge.
    type: dict
    default: {}
  dkim_key_max_age_days:
    description: Days a DKIM key may be old before the audit warns (rotate it).
    type: int
    default: 180
  mta_sts:
    description:
      - Outbound MTA-STS is meant to be on (playbooks/relay.yml, bulkrelay_mta_sts), so a
        smtp_tls_policy_maps without the socketmap fails.
    type: bool
    default: true
  mta_sts_domain:
    description: Domain whose policy the socketmap was asked for (raw.mta_sts_query).
    type: str
    default: ""
  dane_probe_name:
    description:
      - Name the local validating resolver was asked for (raw.dane_probe, dig); empty when
        roles/relay_resolver never ran (ansible_local.bulkrelay_resolver missing).
    type: str
    default: ""
requirements:
  - dkimpy on the controller
extends_documentation_fragment:
  - bulkrelay_dns_check
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: Judge the posture
  bulkrelay_posture:
    fqdn: relay.example.com
    raw: "{{ audit__raw }}"
    now: "{{ audit__now }}"
  delegate_to: localhost
"""

RETURN = r"""
checks:
  description: One dict per check (check, subject, status, message, fix).
  type: list
  elements: dict
  returned: always
"""

from ansible.module_utils.bulkrelay import DNS_OPTIONS, bulkrelay_imports, bulkrelay_module, dns_resolver

with bulkrelay_imports():
    from bulkrelay.audit import judge_posture


def main():
    module = bulkrelay_module(
        {
            "fqdn": {"type": "str", "required": True},
            "raw": {"type": "dict", "required": True},
            "now": {"type": "float", "required": True},
            "required_ports": {"type": "list", "elements": "int", "default": []},
            "allowed_ports": {"type": "list", "elements": "int", "default": []},
            "units": {"type": "dict", "default": {}},
            "dnsbl_max_age": {"type": "int", "default": 0},
            "queue_max_age": {"type": "int", "default": 3600},
            "webhook_max_age": {"type": "int", "default": 3600},
            "probes": {"type": "list", "elements": "dict", "default": []},
            "dkim": {"type": "list", "elements": "dict", "default": []},
            "dkim_key_files": {"type": "dict", "default": {}},
            "dkim_key_max_age_days": {"type": "int", "default": 180},
            "mta_sts": {"type": "bool", "default": True},
            "mta_sts_domain": {"type": "str", "default": ""},
            "dane_probe_name": {"type": "str", "default": ""},
            **DNS_OPTIONS,
        }
    )
    results = judge_posture(module.params, dns_resolver(module))
    module.exit_json(changed=False, checks=[r.as_dict() for r in results])


if __name__ == "__main__":
    main()
