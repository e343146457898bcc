"""Network filters of the relay_firewall role (pure functions, unit-tested in tests/)."""

from __future__ import annotations

import ipaddress


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network a CIDR string names (host bits tolerated), or None when it is not one."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None


def relay_firewall_bad_cidrs(values: list) -> list:
    """The entries of `values` that are not an IPv4/IPv6 address or CIDR network."""
    return [v for v in values if _network(v) is None]


def relay_firewall_networks(values: list, family: int) -> list[str]:
    """Valid networks of one IP family (4 or 6), in canonical form, duplicates removed."""
    seen: list[str] = []
    for value in values:
        net = _network(value)
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
    return any((net := _network(v)) is not None and ip.version == net.version and ip in net for v in values)


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
    """Ansible entry point."""

    def filters(self) -> dict:
        return {
            "relay_firewall_bad_cidrs": relay_firewall_bad_cidrs,
            "relay_firewall_networks": relay_firewall_networks,
            "relay_firewall_ip_in_networks": relay_firewall_ip_in_networks,
            "relay_firewall_ssh_client": relay_firewall_ssh_client,
        }
