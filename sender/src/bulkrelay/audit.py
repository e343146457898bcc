"""Judge a relay's live posture from what playbooks/audit.yml read on it (and probed from outside).

Every judge takes raw command output (rc, stdout, stderr) and returns CheckResults. Output that
cannot be read, a command that failed, a probe that timed out without firewall evidence: all
are ERROR ("could not tell"), never PASS. Each FAIL names the fault and the fix.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import dkim

from bulkrelay import tlspolicy
from bulkrelay.dns.result import ERROR, FAIL, PASS, WARN, CheckResult

LOOPBACK_NAMES = {"loopback-only", "localhost", "127.0.0.1", "[::1]", "::1"}
TLS_LEVELS = set(tlspolicy.LEVELS) - {"none"}  # the global levels that encrypt when they can
# A restriction list is closed when one of these comes before any catch-all permit.
CLOSING = {"reject", "reject_unauth_destination", "defer_unauth_destination", "defer"}
SAFE_PERMITS = {"permit_mynetworks", "permit_sasl_authenticated", "permit_tls_clientcerts"}
RERUN = "re-run site.yml (--tags {tag}) to restore it"


def _cmd(raw: Mapping[str, Any] | None) -> tuple[int, str, str]:
    raw = raw or {}
    return (
        int(raw.get("rc", -1)),
        str(raw.get("stdout", "")),
        str(raw.get("stderr", "") or raw.get("msg", "")),
    )


def _unread(check: str, subject: str, what: str, raw: Mapping[str, Any] | None) -> CheckResult:
    rc, _, err = _cmd(raw)
    return CheckResult(
        check, subject, ERROR, f"could not tell: {what} failed (rc {rc}): {err.strip() or 'no output'}"
    )


def parse_postconf(stdout: str) -> dict[str, str]:
    """`postconf name ...` output (``name = value`` lines) as a dict."""
    values = {}
    for line in stdout.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
        elif line.strip().endswith(" ="):
            values[line.strip()[:-2].strip()] = ""
    return values


def _tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", value) if t]


def _is_loopback_net(token: str) -> bool:
    """A mynetworks entry or a listening address inside loopback (*, 0.0.0.0 and :: are not)."""
    text = token.strip("[]").replace("]/", "/")
    try:
        return ipaddress.ip_network(text, strict=False).subnet_of(
            ipaddress.ip_network("127.0.0.0/8" if ":" not in text else "::1/128")
        )
    except (ValueError, TypeError):
        return False


def judge_postfix(raw: Mapping[str, Any], fqdn: str) -> list[CheckResult]:
    """Postfix's effective settings (postconf, defaults included) that make it a send-only relay."""
    names = [
        "myhostname",
        "inet_interfaces",
        "mynetworks",
        "smtpd_relay_restrictions",
        "smtp_tls_security_level",
    ]
    rc, out, _ = _cmd(raw)
    values = parse_postconf(out)
    if rc != 0 or any(n not in values for n in names):
        return [_unread("postfix", n, "postconf", raw) for n in names]
    fix_tag = RERUN.format(tag="relay_postfix")
    results = []
    host = values["myhostname"]
    results.append(
        CheckResult("postfix", "myhostname", PASS, f"myhostname (the HELO name) is {host}")
        if host == fqdn
        else CheckResult(
            "postfix",
            "myhostname",
            FAIL,
            f"myhostname (the HELO name) is {host}, not {fqdn} (the PTR name)",
            f"set myhostname = {fqdn}; {fix_tag}",
        )
    )
    ifaces = _tokens(values["inet_interfaces"])
    results.append(
        CheckResult("postfix", "inet_interfaces", PASS, f"inet_interfaces = {values['inet_interfaces']}")
        if ifaces and all(i in LOOPBACK_NAMES for i in ifaces)
        else CheckResult(
            "postfix",
            "inet_interfaces",
            FAIL,
            f"inet_interfaces = {values['inet_interfaces'] or '(empty: all)'}: Postfix listens for mail on "
            "non-loopback addresses; with the relay's MX record that is an inbound mail server",
            f"set inet_interfaces = loopback-only and restart Postfix; {fix_tag}",
        )
    )
    wide = [t for t in _tokens(values["mynetworks"]) if not _is_loopback_net(t)]
    results.append(
        CheckResult("postfix", "mynetworks", PASS, f"mynetworks = {values['mynetworks']} (loopback only)")
        if not wide
        else CheckResult(
            "postfix",
            "mynetworks",
            FAIL,
            f"mynetworks = {values['mynetworks']}: {', '.join(wide)} may relay without authentication",
            f"set mynetworks = 127.0.0.0/8 [::1]/128 (apps use the intake or SASL submission); {fix_tag}",
        )
    )
    restrictions = _tokens(values["smtpd_relay_restrictions"])
    problem = ""
    for token in restrictions:
        if token in CLOSING:
            break
        if token.startswith("permit") and token not in SAFE_PERMITS:
            problem = f"{token} lets any client relay"
            break
    else:
        problem = "nothing rejects unauthorised relaying (no reject or reject_unauth_destination)"
    results.append(
        CheckResult(
            "postfix",
            "smtpd_relay_restrictions",
            PASS,
            f"smtpd_relay_restrictions = {', '.join(restrictions)}",
        )
        if not problem
        else CheckResult(
            "postfix",
            "smtpd_relay_restrictions",
            FAIL,
            f"smtpd_relay_restrictions = {values['smtpd_relay_restrictions'] or '(empty)'}: {problem} "
            "(an open relay)",
            f"set smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject; {fix_tag}",
        )
    )
    level = values["smtp_tls_security_level"]
    results.append(
        CheckResult("postfix", "smtp_tls_security_level", PASS, f"smtp_tls_security_level = {level}")
        if level in TLS_LEVELS
        else CheckResult(
            "postfix",
            "smtp_tls_security_level",
            FAIL,
            f"smtp_tls_security_level = {level or '(empty: none)'}: mail leaves in clear text "
            "(Gmail/Yahoo/Microsoft mark or refuse it)",
            f"set smtp_tls_security_level = may (or dane); {fix_tag}",
        )
    )
    return results


def judge_tls_policy(postconf: Mapping[str, Any] | None, table: Mapping[str, Any] | None) -> CheckResult:
    """The per-domain TLS overrides in effect: `postconf smtp_tls_security_level
    smtp_tls_policy_maps` and `postmap -s` of the table relay_postfix writes (tlspolicy.TABLE).
    WARN names each domain set below the global level (none, or may under a stricter level:
    its mail may leave in clear text); a table that cannot be read is could-not-tell."""
    subject = "smtp_tls_policy_maps"
    rc, out, _ = _cmd(postconf)
    values = parse_postconf(out)
    if rc != 0 or subject not in values or "smtp_tls_security_level" not in values:
        return _unread("postfix", subject, "postconf", postconf)
    level = values["smtp_tls_security_level"] or "none"
    maps = _tokens(values[subject])
    fix = "re-run site.yml (--tags relay_postfix): it writes the overrides to " + tlspolicy.TABLE
    if not maps:
        return CheckResult(
            "postfix", subject, PASS, f"no per-domain TLS overrides: every domain gets {level}"
        )
    if tlspolicy.TABLE not in maps:
        return CheckResult(
            "postfix",
            subject,
            ERROR,
            f"could not tell: smtp_tls_policy_maps = {values[subject]} does not hold {tlspolicy.TABLE}, "
            "the table the audit reads",
            fix,
        )
    others = [m for m in maps if m != tlspolicy.TABLE and not m.startswith("socketmap:")]
    also = f" (also consults {', '.join(others)}, not read by the audit)" if others else ""
    if len(others) < len(maps) - 1:
        also += " (then the MTA-STS socketmap: see the mta-sts check)"
    rc, out, _ = _cmd(table)
    if rc != 0:
        return _unread("postfix", subject, f"postmap -s {tlspolicy.TABLE}", table)
    overrides = tlspolicy.parse_table(out)
    lowered = tlspolicy.lowered(level, overrides)
    if lowered:
        listed = ", ".join(f"{domain} ({low})" for domain, low in lowered.items())
        return CheckResult(
            "postfix",
            subject,
            WARN,
            f"mail to {listed} may leave in clear text: overridden below smtp_tls_security_level = {level}"
            + also,
            "drop the override from bulkrelay_tls_policy_overrides once the receiver's TLS works, then "
            "re-run site.yml --tags relay_postfix",
            details={"overrides": overrides, "lowered": lowered},
        )
    listed = ", ".join(f"{domain} ({high})" for domain, high in overrides.items()) or "none"
    return CheckResult(
        "postfix",
        subject,
        PASS,
        f"per-domain TLS overrides: {listed}; none below smtp_tls_security_level = {level}{also}",
        details={"overrides": overrides, "lowered": {}},
    )


MTA_STS_FIX = "re-run site.yml --tags relay_mta_sts,relay_postfix"


def _unit_down(
    subject: str, unit: Mapping[str, Any] | None, name: str, consequence: str, fix: str
) -> CheckResult | None:
    """None when `systemctl show` (the audit's units read) says ``name`` runs, else the postfix
    ``subject`` check's result: could-not-tell when unread, FAIL with ``consequence`` when down."""
    rc, out, _ = _cmd(unit)
    state = parse_units(out).get(name) if rc == 0 else None
    if state is None:
        return _unread("postfix", subject, f"systemctl show {name}", unit)
    if (state.get("ActiveState"), state.get("SubState")) != ("active", "running"):
        return CheckResult(
            "postfix",
            subject,
            FAIL,
            f"{name} is {state.get('ActiveState')}/{state.get('SubState')}: {consequence}",
            fix,
        )
    return None


def judge_mta_sts(
    postconf: Mapping[str, Any] | None,
    unit: Mapping[str, Any] | None,
    query: Mapping[str, Any] | None,
    expected: bool,
    domain: str,
) -> CheckResult:
    """Outbound MTA-STS lookups in effect (roles/relay_mta_sts): `postconf smtp_tls_policy_maps`
    names a socketmap after tlspolicy.TABLE (the overrides win), `systemctl show` of the units
    (tlspolicy.MTA_STS_UNIT among them) says it runs, and `postmap -q
    DOMAIN <socketmap>` answers: a policy (rc 0) or none (rc 1, silent). A stopped resolver or a
    map that errs FAILs: Postfix then defers every mail ("TLS policy lookup error")."""
    rc, out, _ = _cmd(postconf)
    values = parse_postconf(out)
    if rc != 0 or "smtp_tls_policy_maps" not in values:
        return _unread("postfix", "mta-sts", "postconf", postconf)
    maps = _tokens(values["smtp_tls_policy_maps"])
    socket = next((m for m in maps if m.startswith("socketmap:")), "")
    if not socket:
        if not expected:
            return CheckResult(
                "postfix", "mta-sts", PASS, "MTA-STS lookups are off (bulkrelay_mta_sts: false)"
            )
        return CheckResult(
            "postfix",
            "mta-sts",
            FAIL,
            f"MTA-STS lookups are off: smtp_tls_policy_maps = {values['smtp_tls_policy_maps'] or '(empty)'} "
            "names no socketmap: receivers' enforce policies are ignored",
            MTA_STS_FIX,
        )
    if tlspolicy.TABLE in maps and maps.index(tlspolicy.TABLE) > maps.index(socket):
        return CheckResult(
            "postfix",
            "mta-sts",
            FAIL,
            f"smtp_tls_policy_maps asks {socket} before {tlspolicy.TABLE}: the overrides no longer win",
            MTA_STS_FIX,
        )
    return _judge_mta_sts_resolver(socket, unit, query, domain)


def _judge_mta_sts_resolver(
    socket: str, unit: Mapping[str, Any] | None, query: Mapping[str, Any] | None, domain: str
) -> CheckResult:
    """The resolver behind ``socket`` runs and answers (judge_mta_sts)."""
    name = tlspolicy.MTA_STS_UNIT
    fix = f"see journalctl -u {name}; systemctl restart {name} or {MTA_STS_FIX}"
    down = _unit_down(
        "mta-sts",
        unit,
        name,
        f"Postfix's lookups in {socket} fail, so mail is deferred with 'TLS policy lookup error'",
        fix,
    )
    if down:
        return down
    if query is None:
        return CheckResult("postfix", "mta-sts", ERROR, f"could not tell: {socket} was not asked")
    rc, out, err = _cmd(query)
    if not (rc == 0 and out.strip()) and not (rc == 1 and not err.strip()):
        reason = (err.strip().splitlines() or ["no output"])[-1]
        return CheckResult(
            "postfix",
            "mta-sts",
            FAIL,
            f"{socket} does not answer (postmap -q {domain}: {reason}): Postfix defers mail it cannot "
            "look up",
            fix,
        )
    answer = out.strip() or "no policy enforced"
    return CheckResult(
        "postfix",
        "mta-sts",
        PASS,
        f"MTA-STS lookups in effect: {name} runs and {socket} answers ({domain}: {answer})",
    )


DANE_FIX = "re-run site.yml --tags relay_resolver,relay_postfix"


def judge_dane(
    postconf: Mapping[str, Any] | None,
    table: Mapping[str, Any] | None,
    unit: Mapping[str, Any] | None,
    *,
    probe: Mapping[str, Any] | None,
    probe_name: str,
    resolv_conf: Mapping[str, Any] | None,
) -> CheckResult:
    """DANE's local validating resolver (roles/relay_resolver), judged when the live
    smtp_tls_security_level or an override (`postmap -s` of tlspolicy.TABLE) says dane or
    dane-only: `systemctl show` of the units says tlspolicy.RESOLVER_UNIT runs, `dig` of the
    role's probe name (the local fact) comes back validated (tlspolicy.judge_dig), and
    /etc/resolv.conf sends Postfix to it alone (tlspolicy.resolv_conf_problem). Without a
    validating resolver Postfix finds no secure TLSA and DANE silently degrades to may."""
    rc, out, _ = _cmd(postconf)
    values = parse_postconf(out)
    if rc != 0 or "smtp_tls_security_level" not in values:
        return _unread("postfix", "dane", "postconf", postconf)
    level = values["smtp_tls_security_level"] or "none"
    rc, out, _ = _cmd(table)
    overrides = tlspolicy.parse_table(out) if rc == 0 else {}
    if rc != 0 and not tlspolicy.uses_dane(level, {}):
        # an override might say dane: unread, "not in use" would be a guess
        return _unread("postfix", "dane", f"postmap -s {tlspolicy.TABLE}", table)
    if not tlspolicy.uses_dane(level, overrides):
        return CheckResult("postfix", "dane", PASS, f"DANE is not in use (smtp_tls_security_level = {level})")
    return _judge_dane_resolver(unit, probe, probe_name, resolv_conf)


def _judge_dane_resolver(
    unit: Mapping[str, Any] | None,
    probe: Mapping[str, Any] | None,
    probe_name: str,
    resolv_conf: Mapping[str, Any] | None,
) -> CheckResult:
    """The validating resolver runs and validates its probe name (judge_dane)."""
    name = tlspolicy.RESOLVER_UNIT
    fix = f"see journalctl -u {name}; systemctl restart {name} or {DANE_FIX}"
    down = _unit_down(
        "dane",
        unit,
        name,
        "Postfix cannot resolve (mail is deferred) or gets no validated answers (DANE degrades to may)",
        fix,
    )
    if down:
        return down
    if probe is None or not probe_name:
        return CheckResult(
            "postfix",
            "dane",
            FAIL,
            "DANE is in use but bulkrelay set up no local validating resolver (no "
            "ansible_local.bulkrelay_resolver): TLSA records are never trusted",
            f"set bulkrelay_tls_policy: dane, then {DANE_FIX}",
        )
    verdict, why = tlspolicy.judge_dig(*_cmd(probe)[:2], probe_name)
    if verdict == tlspolicy.UNKNOWN:
        return CheckResult("postfix", "dane", ERROR, f"could not tell: {why}", fix)
    if verdict == tlspolicy.NOT_VALIDATED:
        return CheckResult(
            "postfix",
            "dane",
            FAIL,
            f"DANE is in use but the local resolver does not validate: {why}; TLSA records are never trusted",
            "check unbound's trust anchors (relay_resolver__root_anchor, relay_resolver__trust_anchors); "
            + fix,
        )
    return _judge_resolv_conf(resolv_conf) or CheckResult(
        "postfix", "dane", PASS, f"DANE in effect: {name} runs and validates ({why})"
    )


def _judge_resolv_conf(resolv_conf: Mapping[str, Any] | None) -> CheckResult | None:
    """Postfix asks glibc, not the probe's resolver: resolv.conf must name it alone (judge_dane)."""
    rc, text, _ = _cmd(resolv_conf)
    if rc != 0:
        return _unread("postfix", "dane", "/etc/resolv.conf", resolv_conf)
    problem = tlspolicy.resolv_conf_problem(text, tlspolicy.RESOLVER_ADDRESS)
    if problem:
        return CheckResult(
            "postfix",
            "dane",
            FAIL,
            f"DANE is in use but Postfix does not get validated answers: {problem}",
            f"{DANE_FIX} (it writes /etc/resolv.conf)",
        )
    return None


def judge_dkim_key_age(
    raw: Mapping[str, Any] | None, files: Mapping[str, str], now: float, max_age_days: int
) -> list[CheckResult]:
    """Each sending domain's DKIM private key (``files``: domain -> path on the relay) is younger
    than ``max_age_days``, judged from `stat -c '%Y %n' <files>` (mtime: when the key was
    generated or supplied). WARN for an older key; a file stat could not read is could-not-tell."""
    _, out, err = _cmd(raw)
    mtimes = {}
    for line in out.splitlines():
        stamp, _, path = line.partition(" ")
        if stamp.isdigit():
            mtimes[path.strip()] = int(stamp)
    fix = (
        "rotate the key: publish a new selector's key in DNS, switch relay_dkim to it once DNS serves "
        "it, then remove the old one (roles/relay_dkim/README.md, Rotation)"
    )
    results = []
    for domain, path in files.items():
        if path not in mtimes:
            reason = next((e for e in err.splitlines() if path in e), err.strip() or "no output")
            results.append(
                CheckResult("dkim-key-age", domain, ERROR, f"could not tell: stat {path} failed: {reason}")
            )
            continue
        days = int((now - mtimes[path]) // 86400)
        if days > max_age_days:
            results.append(
                CheckResult(
                    "dkim-key-age",
                    domain,
                    WARN,
                    f"the DKIM key of {domain} ({path}) is {days} days old (limit {max_age_days})",
                    fix,
                )
            )
        else:
            results.append(
                CheckResult(
                    "dkim-key-age",
                    domain,
                    PASS,
                    f"the DKIM key of {domain} is {days} days old (limit {max_age_days})",
                )
            )
    return results


def judge_firewall(raw: Mapping[str, Any]) -> CheckResult:
    """bulkrelay-firewall-diff: rc 0 live table == rendered, 1 differs (diff), 2 table missing."""
    rc, out, err = _cmd(raw)
    fix = "re-run site.yml (--tags relay_firewall): the role compares the live table and reloads it"
    if rc == 0:
        return CheckResult(
            "firewall", "table inet bulkrelay", PASS, "the live table equals the rendered ruleset"
        )
    if rc == 1:
        diff = " | ".join(
            line for line in out.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
        )
        return CheckResult(
            "firewall",
            "table inet bulkrelay",
            FAIL,
            f"the live table differs from the rendered ruleset (-rendered +live): {diff[:600]}",
            fix,
        )
    if rc == 2:
        return CheckResult(
            "firewall",
            "table inet bulkrelay",
            FAIL,
            "the table inet bulkrelay is not loaded: nothing drops inbound port 25 or the intake "
            "(the oneshot unit may still say active)",
            fix,
        )
    return _unread(
        "firewall", "table inet bulkrelay", "bulkrelay-firewall-diff", (raw or {}) | {"stderr": err or out}
    )


def parse_listeners(stdout: str) -> list[tuple[str, int, str]]:
    """`ss -Hltnp` lines as (address, port, process)."""
    found = []
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        address, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        proc = re.search(r'\(\("([^"]+)"', line)
        found.append((address.strip("[]").split("%")[0], int(port), proc.group(1) if proc else "?"))
    return found


def judge_listeners(raw: Mapping[str, Any], required: Iterable[int], allowed: Iterable[int]) -> CheckResult:
    """TCP listeners on non-loopback addresses: exactly the required ports (plus allowed ones)."""
    rc, out, _ = _cmd(raw)
    if rc != 0:
        return _unread("listeners", "non-loopback TCP", "ss -Hltnp", raw)
    required, allowed = set(map(int, required)), set(map(int, allowed))
    public = [(a, p, n) for a, p, n in parse_listeners(out) if not _is_loopback_net(a)]
    unexpected = sorted({f"{a or '*'}:{p} ({n})" for a, p, n in public if p not in required | allowed})
    missing = sorted(required - {p for _, p, _ in public})
    seen = ", ".join(sorted({f"{a or '*'}:{p} ({n})" for a, p, n in public})) or "none"
    if unexpected:
        return CheckResult(
            "listeners",
            "non-loopback TCP",
            FAIL,
            f"unexpected listeners on non-loopback addresses: {', '.join(unexpected)} (expected ports "
            f"{sorted(required | allowed)})",
            "stop the listener or bind it to loopback (Postfix: inet_interfaces = loopback-only); "
            "re-run site.yml",
        )
    if missing:
        return CheckResult(
            "listeners",
            "non-loopback TCP",
            FAIL,
            f"nothing listens on port(s) {missing} for the app networks (listening: {seen})",
            "start the sender (systemctl start bulkrelay-sender) or re-run site.yml --tags relay_sender",
        )
    return CheckResult("listeners", "non-loopback TCP", PASS, f"listening on non-loopback addresses: {seen}")


def parse_units(stdout: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p Id,...` for several units (blocks separated by blank lines)."""
    units, block = {}, {}
    for line in [*stdout.splitlines(), ""]:
        if not line.strip():
            if block.get("Id"):
                units[block["Id"]] = block
            block = {}
            continue
        key, _, value = line.partition("=")
        block[key] = value
    return units


def judge_units(raw: Mapping[str, Any], expected: Mapping[str, str]) -> list[CheckResult]:
    """Each unit in ``expected`` (name -> how it should be: running | timer | oneshot) is
    loaded, in that state, and its last run succeeded."""
    rc, out, _ = _cmd(raw)
    units = parse_units(out) if rc == 0 else {}
    results = []
    for name, kind in expected.items():
        unit = units.get(name)
        if unit is None:
            results.append(_unread("service", name, "systemctl show", raw))
            continue
        state = f"{unit.get('ActiveState')}/{unit.get('SubState')}, last result {unit.get('Result')}"
        fix = f"see journalctl -u {name}; fix the cause, then systemctl restart {name} or re-run site.yml"
        if unit.get("LoadState") != "loaded":
            results.append(
                CheckResult("service", name, FAIL, f"{name} is not installed ({unit.get('LoadState')})", fix)
            )
            continue
        # a timer is "running" while the service it started runs
        ok_states = {
            "running": {("active", "running")},
            "timer": {("active", "waiting"), ("active", "running")},
        }
        if kind == "oneshot" and unit.get("ActiveState") == "activating":
            # systemd resets Result when a run starts: the last run's outcome is gone until this one ends
            results.append(
                CheckResult(
                    "service", name, ERROR, f"could not tell: {name} is running a pass now ({state})", fix
                )
            )
            continue
        if kind == "oneshot":
            good = unit.get("Result") == "success" and unit.get("ActiveState") != "failed"
            outcome = "succeeded" if good else "FAILED"
            message = f"{name}: last run {outcome} ({state}, exit {unit.get('ExecMainStatus')})"
        else:
            good = (unit.get("ActiveState"), unit.get("SubState")) in ok_states.get(kind, set()) and unit.get(
                "Result"
            ) == "success"
            message = f"{name} is {state}"
        results.append(CheckResult("service", name, PASS if good else FAIL, message, "" if good else fix))
    return results


def judge_dnsbl_cron(raw: Mapping[str, Any], now: float, max_age: int) -> CheckResult:
    """The DNSBL cron job's state file is fresh (checked_at within max_age seconds)."""
    rc, out, _ = _cmd(raw)
    subject = "last run"
    fix = (
        "check /etc/cron.d/bulkrelay-dnsbl, that cron runs and the job's log (journalctl -t bulkrelay-dnsbl)"
    )
    if rc != 0:
        return CheckResult(
            "dnsbl-cron",
            subject,
            FAIL,
            "no DNSBL state file: the cron job never ran or the monitor is not installed "
            f"({_cmd(raw)[2].strip()})",
            fix,
        )
    try:
        checked = datetime.fromisoformat(json.loads(out)["checked_at"].replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return CheckResult(
            "dnsbl-cron", subject, ERROR, f"could not tell: the state file is unreadable ({exc})", fix
        )
    age = int(now - checked)
    if age > max_age:
        return CheckResult(
            "dnsbl-cron", subject, FAIL, f"the DNSBL cron job last ran {age} s ago (limit {max_age} s)", fix
        )
    return CheckResult(
        "dnsbl-cron", subject, PASS, f"the DNSBL cron job last ran {age} s ago (limit {max_age} s)"
    )


def judge_queue(raw: Mapping[str, Any], now: float, max_age: int) -> CheckResult:
    """No deferred message older than max_age seconds (`postqueue -j`)."""
    rc, out, _ = _cmd(raw)
    if rc != 0:
        return _unread("queue", "deferred", "postqueue -j", raw)
    old, total = [], 0
    try:
        for line in out.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("queue_name") != "deferred":
                continue
            total += 1
            age = int(now - float(entry["arrival_time"]))
            if age > max_age:
                rcpt = (entry.get("recipients") or [{}])[0]
                old.append(
                    (age, entry.get("queue_id", "?"), rcpt.get("address", "?"), rcpt.get("delay_reason", ""))
                )
    except (ValueError, KeyError, TypeError) as exc:
        return CheckResult(
            "queue", "deferred", ERROR, f"could not tell: postqueue -j output unreadable ({exc})"
        )
    if old:
        age, qid, rcpt, reason = max(old)
        return CheckResult(
            "queue",
            "deferred",
            FAIL,
            f"{len(old)} deferred message(s) older than {max_age} s; oldest {qid} to {rcpt}, "
            f"{age} s old: {reason[:200]}",
            "fix the cause in the delay reason (DNS, TLS, receiver refusing), then postqueue -f to retry, "
            "or postsuper -d <queue id> to drop mail that can never leave",
        )
    return CheckResult("queue", "deferred", PASS, f"{total} deferred message(s), none older than {max_age} s")


def judge_webhooks(raw: Mapping[str, Any], now: float, max_age: int) -> CheckResult:
    """No event waits longer than max_age seconds for a webhook, none parked.

    Judges `bulkrelay webhooks status --json`. Without /etc/bulkrelay/webhooks.toml the relay
    has no webhooks (the command says configured=false): PASS, nothing to deliver.
    """
    rc, out, _ = _cmd(raw)
    subject = "event delivery"
    if rc != 0:
        return _unread("webhooks", subject, "bulkrelay webhooks status --json", raw)
    try:
        data = json.loads(out)
        rows = [
            (r["name"], r["oldest_pending_timestamp"], int(r["pending"]), int(r["parked"]), r["last_error"])
            for r in data["webhooks"]
        ]
        configured = bool(data["configured"])
    except (ValueError, KeyError, TypeError) as exc:
        return CheckResult(
            "webhooks", subject, ERROR, f"could not tell: bulkrelay webhooks status output unreadable ({exc})"
        )
    if not configured:
        return CheckResult(
            "webhooks", subject, PASS, "no webhooks configured (no webhooks.toml on the relay)"
        )
    problems, fixes = [], []
    for name, oldest, pending, parked, error in rows:
        age = None if oldest is None else int(now - float(oldest))
        if age is not None and age > max_age:
            problems.append(
                f"webhook {name}: {pending} event(s) undelivered, the oldest {age} s old "
                f"(limit {max_age} s; last error: {error or 'none'})"
            )
            fixes.append(
                f"make {name}'s receiver answer 2xx (see `bulkrelay webhooks status` and "
                "journalctl -u bulkrelay-webhooks), check that bulkrelay-webhooks.service runs"
            )
        if parked:
            problems.append(f"webhook {name}: {parked} event(s) parked (rejected by the receiver or dead)")
            fixes.append(
                f"read the parked events of {name} in `bulkrelay webhooks status --json` (last_parked: "
                "status and reply) and fix the receiver; the application must learn their outcome "
                "another way (`bulkrelay events --since`)"
            )
    if problems:
        return CheckResult("webhooks", subject, FAIL, "; ".join(problems), "; ".join(dict.fromkeys(fixes)))
    pending = sum(r[2] for r in rows)
    return CheckResult(
        "webhooks",
        subject,
        PASS,
        f"{len(rows)} webhook(s), {pending} event(s) pending, none older than {max_age} s, none parked",
    )


def judge_probe(  # noqa: PLR0917 - one probe's facts
    address: str, port: int, state: str, detail: str, firewall: CheckResult, what: str
) -> CheckResult:
    """A TCP connect from outside: refused passes, connected fails, a timeout passes only when
    the live firewall equals the rendered (dropping) ruleset; anything else is could-not-tell."""
    subject = f"{address} port {port}"
    fix = (
        f"nothing outside may reach {what}: re-run site.yml (firewall table, Postfix "
        "inet_interfaces = loopback-only) and check the hosting provider's firewall"
    )
    if state == "connected":
        return CheckResult(
            "reach", subject, FAIL, f"{what} on {address}:{port} accepts connections from outside", fix
        )
    if state == "refused":
        return CheckResult(
            "reach", subject, PASS, f"{address}:{port} refuses connections (nothing listens for outsiders)"
        )
    if state == "timeout" and firewall.status == PASS:
        return CheckResult(
            "reach",
            subject,
            PASS,
            f"{address}:{port} gives no answer, and the live firewall (equal to the rendered one) drops it",
        )
    if state == "timeout":
        return CheckResult(
            "reach",
            subject,
            ERROR,
            f"could not tell: {address}:{port} gave no answer, but the live firewall is not the rendered one "
            f"({firewall.status}), so the silence is not proven to be the relay's own drop",
            "re-run site.yml --tags relay_firewall, then audit again",
        )
    return CheckResult(
        "reach",
        subject,
        ERROR,
        f"could not tell: probe of {address}:{port} failed ({state}: {detail})",
        "check that the vantage point can route to the relay (audit__vantage_host)",
    )


def judge_dkim_signature(domain: str, probe: Mapping[str, Any], txt_lookup: Any) -> CheckResult:
    """OpenDKIM's answer to a test message (library/bulkrelay_milter_probe) verifies against
    the key published in DNS. ``txt_lookup(name: bytes) -> bytes`` reads DNS (dkimpy's dnsfunc)."""
    subject = domain
    state = probe.get("state", "error")
    fix_milter = "start OpenDKIM (systemctl start opendkim) or re-run site.yml --tags relay_dkim"
    if state in ("refused", "timeout"):
        return CheckResult(
            "dkim-sign",
            subject,
            FAIL,
            f"the DKIM milter does not answer on {probe.get('socket', '?')} ({state}): Postfix holds every "
            "message (milter_default_action = tempfail) or sends it unsigned",
            fix_milter,
        )
    if state != "signed":
        return CheckResult(
            "dkim-sign",
            subject,
            FAIL if state == "unsigned" else ERROR,
            f"OpenDKIM did not sign a test message from {domain}: {probe.get('detail', state)}",
            "check /etc/opendkim/signing.table and key.table for the domain; "
            "re-run site.yml --tags relay_dkim",
        )
    message = probe.get("message", "").encode()
    try:
        ok = dkim.verify(message, dnsfunc=txt_lookup)
    except Exception as exc:  # dkimpy raises many kinds; all mean "could not tell"
        return CheckResult(
            "dkim-sign", subject, ERROR, f"could not tell: verifying the test signature failed ({exc})"
        )
    if not ok:
        return CheckResult(
            "dkim-sign",
            subject,
            FAIL,
            f"OpenDKIM signed a test message from {domain}, but the signature does not verify against the "
            "key published in DNS (the relay's key and the DNS record differ)",
            "publish the relay's key (site.yml publishes it with dns_records__apply; else paste "
            "the record from the DNS note) or re-run site.yml --tags relay_dkim",
        )
    return CheckResult(
        "dkim-sign",
        subject,
        PASS,
        f"OpenDKIM signs mail from {domain} and the signature verifies against DNS",
    )


def txt_lookup_from(source: Any) -> Any:
    """dkimpy's dnsfunc over a bulkrelay DnsSource; a failed query raises (could not tell)."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        answer = source.query(name.decode().rstrip("."), "TXT")
        if answer.failed:
            raise RuntimeError(answer.describe())
        texts = answer.texts()
        return texts[0].encode() if texts else None

    return lookup


def judge_posture(params: Mapping[str, Any], source: Any) -> list[CheckResult]:
    """Every posture check, from what playbooks/audit.yml collected (see library/bulkrelay_posture)."""
    raw = params["raw"]
    now = float(params["now"])
    results = judge_postfix(raw.get("postconf"), params["fqdn"])
    results.append(judge_tls_policy(raw.get("postconf"), raw.get("tls_policy")))
    results.append(
        judge_mta_sts(
            raw.get("postconf"),
            raw.get("units"),
            raw.get("mta_sts_query"),
            bool(params.get("mta_sts", True)),
            str(params.get("mta_sts_domain", "")),
        )
    )
    results.append(
        judge_dane(
            raw.get("postconf"),
            raw.get("tls_policy"),
            raw.get("units"),
            probe=raw.get("dane_probe"),
            probe_name=str(params.get("dane_probe_name", "")),
            resolv_conf=raw.get("resolv_conf"),
        )
    )
    results.extend(
        judge_dkim_key_age(
            raw.get("dkim_keys"),
            params.get("dkim_key_files") or {},
            now,
            int(params.get("dkim_key_max_age_days", 180)),
        )
    )
    firewall = judge_firewall(raw.get("firewall"))
    results.append(firewall)
    results.append(judge_listeners(raw.get("sockets"), params["required_ports"], params["allowed_ports"]))
    results.extend(judge_units(raw.get("units"), params["units"]))
    if params.get("dnsbl_max_age"):
        results.append(judge_dnsbl_cron(raw.get("dnsbl_state"), now, int(params["dnsbl_max_age"])))
    results.append(judge_queue(raw.get("queue"), now, int(params["queue_max_age"])))
    results.append(judge_webhooks(raw.get("webhooks"), now, int(params["webhook_max_age"])))
    for probe in params.get("probes") or []:
        results.append(
            judge_probe(
                probe["address"],
                int(probe["port"]),
                probe["state"],
                probe.get("detail", ""),
                firewall,
                "inbound SMTP" if int(probe["port"]) == 25 else "an app-facing port (intake/submission)",
            )
        )
    lookup = txt_lookup_from(source)
    for probe in params.get("dkim") or []:
        results.append(judge_dkim_signature(str(probe.get("item", "?")), probe, lookup))
    return results
