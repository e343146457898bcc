#!/usr/bin/python
# managed in the bulkrelay repository.
"""Ansible module: try TCP connections and say for each one: connected, refused or timeout."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_tcp_probe
short_description: Try TCP connections from this host and report connected, refused or timeout
description:
  - Connects to each O(targets) entry once and tells the three outcomes apart, which
    M(ansible.builtin.wait_for) does not. A timeout is not "closed"; the caller judges it.
  - Read-only; never reports changed. Self-contained (standard library only), so it runs on the
    controller or on any inventory host chosen as the vantage point.
version_added: "0.1.0"
author: bulkrelay
options:
  addresses:
    description: Addresses to connect to (IPv4 or IPv6).
    type: list
    elements: str
    required: true
  ports:
    description: TCP ports tried on every address.
    type: list
    elements: int
    required: true
  timeout:
    description: Seconds to wait for each connection.
    type: float
    default: 3
extends_documentation_fragment:
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: Port 25 of the relay from the controller
  bulkrelay_tcp_probe:
    addresses: [192.0.2.25]
    ports: [25]
  delegate_to: localhost
"""

RETURN = r"""
probes:
  description:
    - One per address and port; C(state) is connected, refused, timeout or error (C(detail) says why).
  type: list
  elements: dict
  returned: always
"""

import socket
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule


def probe(address, port, timeout):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, int(port)))
    except ConnectionRefusedError as exc:
        return "refused", str(exc)
    except TimeoutError as exc:
        return "timeout", str(exc) or f"no answer within {timeout} s"
    except OSError as exc:  # no route, network unreachable, ...: could not tell
        return "error", str(exc)
    finally:
        sock.close()
    return "connected", ""


def main():
    module = AnsibleModule(
        argument_spec={
            "addresses": {"type": "list", "elements": "str", "required": True},
            "ports": {"type": "list", "elements": "int", "required": True},
            "timeout": {"type": "float", "default": 3},
        },
        supports_check_mode=True,
    )
    targets = [(a, p) for a in module.params["addresses"] for p in module.params["ports"]]
    # in parallel: each dropped port costs the full timeout
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        outcomes = list(pool.map(lambda t: probe(t[0], t[1], module.params["timeout"]), targets))
    probes = [
        {"address": a, "port": p, "state": state, "detail": detail}
        for (a, p), (state, detail) in zip(targets, outcomes, strict=True)
    ]
    module.exit_json(changed=False, probes=probes)


if __name__ == "__main__":
    main()
