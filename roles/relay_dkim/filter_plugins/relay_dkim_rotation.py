"""Filters of the relay_dkim role for playbooks/dkim-rotate.yml; the logic is in the bulkrelay
package (bulkrelay.dkimrotation, bulkrelay.dns.records) on the controller."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from bulkrelay.dkimrotation import RotationError, plan
from bulkrelay.dns.records import dkim_rrset


def relay_dkim_rotation(fact, configured: str, now: float, grace_days: float, prefix: str) -> dict:
    """Where the rotation stands (the local fact bulkrelay_dkim; {} = never rotated) and what the
    run does next: see bulkrelay.dkimrotation.plan."""
    try:
        return plan(
            fact or None,
            configured=configured,
            now=int(now),
            grace_days=float(grace_days),
            prefix=prefix,
            where="/etc/ansible/facts.d/bulkrelay_dkim.fact",
        )
    except RotationError as exc:
        raise AnsibleFilterError(str(exc)) from None


def relay_dkim_rrsets(records: list[dict], ttl: int) -> list[dict]:
    """The RRsets (dns_records apply.yml's shape) of relay_dkim_records output."""
    return [dkim_rrset(r["domain"], r["selector"], r["txt"], int(ttl)) for r in records]


def relay_dkim_rrsets_absent(domains: list[str], selector: str) -> list[dict]:
    """The RRsets to remove (every TXT at the selector's name) of a retired selector."""
    return [dkim_rrset(d, selector, "", 0) | {"rdata": [], "state": "absent"} for d in domains]


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict:
        return {
            "relay_dkim_rotation": relay_dkim_rotation,
            "relay_dkim_rrsets": relay_dkim_rrsets,
            "relay_dkim_rrsets_absent": relay_dkim_rrsets_absent,
        }
