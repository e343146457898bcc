"""Filters of the relay_dkim role: DKIM DNS records from `openssl pkey -pubout` output, and the
rotation's steps and records (playbooks/dkim-rotate.yml). The rotation logic lives in the bulkrelay
package (bulkrelay.dkimrotation, bulkrelay.dns.records), which the controller has."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from bulkrelay.dkimrotation import RotationError, plan
from bulkrelay.dns.records import dkim_rrset


def relay_dkim_txt(pem: str) -> str:
    """The DKIM TXT value for a PEM public key (SubjectPublicKeyInfo, base64 body as p=)."""
    lines = [line.strip() for line in (pem or "").splitlines()]
    try:
        start = lines.index("-----BEGIN PUBLIC KEY-----")
        end = lines.index("-----END PUBLIC KEY-----", start)
    except ValueError:
        raise ValueError("no public key in the openssl output") from None
    body = "".join(lines[start + 1 : end])
    if not body:
        raise ValueError("no public key in the openssl output")
    return f"v=DKIM1; k=rsa; p={body}"


def relay_dkim_records(results: list, signing_selector: str) -> list[dict]:
    """Records from the registered loop results of `openssl pkey -pubout` over (domain, selector)
    pairs; failed or skipped items (check mode on a fresh host) are left out."""
    records = []
    for result in results:
        if result.get("skipped") or result.get("rc") != 0:
            continue
        domain, selector = result["item"][0], result["item"][1]
        records.append(
            {
                "domain": domain,
                "selector": selector,
                "name": f"{selector}._domainkey.{domain}",
                "signing": selector == signing_selector,
                "txt": relay_dkim_txt(result.get("stdout", "")),
            }
        )
    return records


def relay_dkim_public_keys(records: list[dict]) -> dict:
    """The contract fact: {domain: {"selector": s, "txt": "v=DKIM1; k=rsa; p=..."}} of the
    signing selector of each domain."""
    return {r["domain"]: {"selector": r["selector"], "txt": r["txt"]} for r in records if r["signing"]}


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
    """Ansible entry point: every relay_dkim_* name of this file is a filter."""

    def filters(self) -> dict:
        return {name: value for name, value in globals().items() if name.startswith("relay_dkim_")}
