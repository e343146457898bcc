"""Validation filters of the relay_postfix role (pure functions, unit-tested in tests/)."""

from __future__ import annotations

import ipaddress
import re

# The FQDN, CIDR and TLS-level rules live in the bulkrelay package (installed in the controller's
# venv, as the library/ modules that import it need too), shared with the sender, the DNS records
# and the audit.
from bulkrelay import names, tlspolicy

relay_postfix_bad_cidrs = names.bad_cidrs
relay_postfix_is_fqdn = names.is_fqdn
relay_postfix_bad_tls_overrides = tlspolicy.bad_overrides
relay_postfix_uses_dane = tlspolicy.uses_dane

_DURATION = re.compile(r"^\d+[smhdw]?$")


def relay_postfix_cidr(value: str) -> str:
    """A network in Postfix cidr-table form: IPv6 without brackets, host bits cleared."""
    return str(ipaddress.ip_network(value.strip(), strict=False))


def relay_postfix_listen(address: str) -> str:
    """An address in master.cf listener form: IPv6 in brackets."""
    ip = ipaddress.ip_address(address.strip())
    return f"[{ip}]" if ip.version == 6 else str(ip)


def relay_postfix_bad_durations(values: list) -> list:
    """Values that are not a Postfix time (a number with optional s/m/h/d/w unit)."""
    return [v for v in values if not _DURATION.match(str(v))]


def relay_postfix_parse_passwd(text: str) -> dict[str, str]:
    """{user: hash} of a Dovecot passwd-file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        name, rest = line.split(":", 1)
        out[name.strip()] = rest.split(":", 1)[0].strip()
    return out


def relay_postfix_sasl_hashes(users: list, current: dict, checks: list, fresh: list) -> dict[str, str]:
    """The hash to write per user: a supplied password_hash; else the current hash when
    `doveadm pw -t` confirmed it (rc 0); else the freshly generated one."""
    confirmed = {
        r["item"]["name"]
        for r in checks
        if not r.get("skipped") and r.get("rc") == 0 and r["item"]["name"] in current
    }
    generated = {r["item"]["item"]["name"]: r["stdout"].strip() for r in fresh if r.get("stdout")}
    out: dict[str, str] = {}
    for user in users:
        name = user["name"]
        if user.get("password_hash"):
            out[name] = user["password_hash"]
        elif name in confirmed:
            out[name] = current[name]
        elif name in generated:
            out[name] = generated[name]
    return out


class FilterModule:
    """Ansible entry point: every relay_postfix_* name of this file is a filter."""

    def filters(self) -> dict:
        return {name: value for name, value in globals().items() if name.startswith("relay_postfix_")}
