#!/usr/bin/python
# managed in the bulkrelay repository.
"""Ansible module: run read-only commands on a host and return each one's rc and output."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_read_state
short_description: Run read-only commands and return each one's rc, stdout and stderr
description:
  - One task instead of one per command (each task costs a round trip to the relay), for the
    audit's reads of live state (postconf, nft, ss, systemctl show, postqueue -j).
  - A command that fails or is missing is returned with its rc and message, never raised;
    the caller judges it ("could not tell"). Runs the commands in check mode too (they only read).
version_added: "0.1.0"
author: bulkrelay
options:
  commands:
    description: Name to argv (list of strings); run without a shell.
    type: dict
    required: true
extends_documentation_fragment:
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: Read Postfix's settings and the sockets
  bulkrelay_read_state:
    commands:
      postconf: [postconf, inet_interfaces]
      sockets: [ss, -Hltnp]
"""

RETURN = r"""
raw:
  description: Name to a dict with rc, stdout and stderr.
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={"commands": {"type": "dict", "required": True}}, supports_check_mode=True
    )
    raw = {}
    for name, argv in module.params["commands"].items():
        try:
            rc, out, err = module.run_command([str(a) for a in argv])
        except OSError as exc:
            rc, out, err = 127, "", str(exc)
        raw[name] = {"rc": rc, "stdout": out, "stderr": err}
    module.exit_json(changed=False, raw=raw)


if __name__ == "__main__":
    main()
