"""MX: a name has MX records, each target resolves, optionally the expected targets."""

from __future__ import annotations

from bulkrelay.dns import result as res
from bulkrelay.dns.resolver import DnsSource, relative


def check(
    source: DnsSource, name: str, *, expected: list[str] | None = None, forbidden: list[str] | None = None
) -> res.CheckResult:
    """``expected``: target names that must be among the MX targets; ``forbidden``: names that
    must not be (the relay itself, which accepts no mail)."""
    name = relative(name)
    expected = [relative(e) for e in expected or []]
    forbidden = [relative(f) for f in forbidden or []]
    want = expected[0] if expected else "<your mail server>"
    fix = f"publish {name}. MX 10 {want}."
    details: dict = {"name": name, "mx": [], "targets": {}}
    outcome = res.Outcome("mx", name, details, fix=fix)
    mx = source.query(name, "MX")
    if mx.failed:
        return outcome.error(mx.describe())
    if not mx.ok:
        return outcome.fail(f"{name} has no MX record ({mx.describe()})")
    records = sorted(mx.records)
    details["mx"] = [{"preference": p, "exchange": h} for p, h in records]
    if len(records) == 1 and records[0][1] in ("", "."):
        return outcome.fail(f"{name} publishes a null MX (RFC 7505): it accepts no mail")
    targets = [h for _, h in records]
    problems, unknown = [], []
    for target in targets:
        found = []
        for rtype in ("A", "AAAA"):
            ans = source.query(target, rtype)
            if ans.failed:
                unknown.append(ans.describe())
            found += ans.records if ans.ok else []
        details["targets"][target] = found
        if not found and not unknown:
            problems.append(f"MX target {target} has no A/AAAA record")
    missing = [e for e in expected if e not in targets]
    if missing:
        problems.append(f"MX of {name} is {', '.join(targets)}, expected {', '.join(missing)}")
    bad = [f for f in forbidden if f in targets]
    if bad:
        problems.append(f"MX of {name} points at {', '.join(bad)}, which accepts no mail")
    if problems:
        return outcome.fail("; ".join(problems))
    if unknown:
        return outcome.error("; ".join(unknown))
    return outcome.passed(f"{name} MX {', '.join(targets)} (all resolve)")
