"""Filters of the relay_dkim role: DKIM DNS records from `openssl pkey -pubout` output."""

from __future__ import annotations


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


class FilterModule:
    """Ansible entry point: every relay_dkim_* name of this file is a filter."""

    def filters(self) -> dict:
        return {name: value for name, value in globals().items() if name.startswith("relay_dkim_")}
