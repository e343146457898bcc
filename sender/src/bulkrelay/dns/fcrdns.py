"""Forward-confirmed reverse DNS: PTR of the relay IP -> names -> A/AAAA contain the IP.

Also checks that the PTR name is the expected relay name and equals the HELO name, because
receivers compare all three (connecting IP, its PTR name, the EHLO greeting).
"""

from __future__ import annotations

import ipaddress

from bulkrelay.dns import result as res
from bulkrelay.dns.resolver import DnsSource, relative, reverse_name


def check(  # noqa: PLR0911 - one return per verdict reads clearest
    source: DnsSource, ip: str, *, expected_name: str = "", helo: str = ""
) -> res.CheckResult:
    addr = ipaddress.ip_address(ip)
    ip = addr.compressed
    rtype = "AAAA" if addr.version == 6 else "A"
    expected = relative(expected_name) if expected_name else ""
    helo = relative(helo) if helo else ""
    owner = reverse_name(ip)
    details: dict = {"ip": ip, "ptr_owner": owner, "ptr_names": [], "confirmed_names": [], "forward": {}}
    outcome = res.Outcome("fcrdns", ip, details)
    request = f"ask the provider of {ip} to set its PTR ({owner}) to {expected or 'the relay name'}"
    ptr = source.query(owner, "PTR")
    if ptr.failed:
        return outcome.error(ptr.describe())
    if not ptr.ok:
        return outcome.fail(f"{ip} has no PTR record ({ptr.describe()})", fix=request)
    names = sorted(set(ptr.records))
    details["ptr_names"] = names
    if len(names) > 1:
        outcome.warnings.append(f"{ip} has {len(names)} PTR records {names}; keep one")
    if expected and expected not in names:
        # a definite failure whether or not the other name resolves (often it is the provider's)
        return outcome.fail(f"PTR of {ip} is {', '.join(names)}, expected {expected}", fix=request)
    unknown = []
    for name in names:
        fwd = source.query(name, rtype)
        if fwd.failed:
            unknown.append(fwd.describe())
            continue
        addrs = [ipaddress.ip_address(a).compressed for a in fwd.records] if fwd.ok else []
        details["forward"][name] = addrs
        if ip in addrs:
            details["confirmed_names"].append(name)
    confirmed = details["confirmed_names"]
    if not confirmed and unknown:
        return outcome.error("; ".join(unknown))
    if not confirmed:
        name = names[0]
        got = details["forward"].get(name) or "nothing"
        return outcome.fail(
            f"PTR of {ip} is {name}, but {name} {rtype} is {got}, not {ip}: "
            "reverse DNS is not forward-confirmed",
            fix=f"publish {name}. {rtype} {ip}"
            + (f" (or {request})" if expected and expected != name else ""),
        )
    if expected and expected not in confirmed:
        return outcome.fail(
            f"PTR of {ip} is {expected}, but {expected} {rtype} does not contain {ip}",
            fix=f"publish {expected}. {rtype} {ip}",
        )
    name = expected or confirmed[0]
    if helo and helo != name:
        return outcome.fail(
            f"HELO name {helo} differs from the PTR name {name} of {ip}",
            fix=f"set the relay's HELO (Postfix smtp_helo_name / myhostname) to {name}, or the PTR to {helo}",
        )
    return outcome.passed(f"{ip} -> {name} -> {ip} (forward-confirmed{', matches HELO' if helo else ''})")
