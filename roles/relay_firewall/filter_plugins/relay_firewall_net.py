"""Network filters of the relay_firewall role (pure functions, unit-tested in tests/)."""

from __future__ import annotations

import ipaddress

# The CIDR rule lives in the bulkrelay package (installed in the controller's venv, as the
# library/ modules that import it need too).
from bulkrelay import names

relay_firewall_bad_cidrs = names.bad_cidrs


def relay_firewall_networks(values: list, family: int) -> list[str]:
    """Valid networks of one IP family (4 or 6), in canonical form, duplicates removed."""
    seen: list[str] = []
    for value in values:
        net = names.network(value)
        if net is not None and net.version == int(family) and str(net) not in seen:
            seen.append(str(net))
    return seen


def relay_firewall_ip_in_networks(address: str, values: list) -> bool:
    """True when `address` lies in one of the networks `values` (invalid entries ignored)."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except (ValueError, AttributeError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(
        (net := names.network(v)) is not None and ip.version == net.version and ip in net for v in values
    )


def relay_firewall_ssh_client(ssh_connection: str) -> str:
    """The client address of an SSH_CONNECTION value ('client port server port'), or ''."""
    parts = (ssh_connection or "").split()
    if len(parts) != 4:
        return ""
    try:
        return str(ipaddress.ip_address(parts[0].split("%", 1)[0]))
    except ValueError:
        return ""


class FilterModule:
    """Ansible entry point: every relay_firewall_* name of this file is a filter."""

    def filters(self) -> dict:
        return {name: value for name, value in globals().items() if name.startswith("relay_firewall_")}
