"""DANE's local validating resolver (roles/relay_resolver): unbound's configuration as the role
renders it, the role's place in playbooks/relay.yml, its validation, the probe judge (dig's
reply: validated, not validated, could not tell) and the audit's dane check."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import render_template, role_validation

from bulkrelay import audit, tlspolicy

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "relay_resolver"
sys.path.insert(0, str(ROLE / "filter_plugins"))
from relay_resolver_probe import relay_resolver_probe_problem  # noqa: E402

LAB_ANCHOR = "lab.test. DS 12345 13 2 " + "ab" * 32
# dig's replies as Debian 12's bind9-dnsutils prints them (headers trimmed to what matters)
VALIDATED = """; <<>> DiG 9.18.28-1~deb12u2-Debian <<>> +dnssec @127.0.0.1 dane.test. SOA
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242
;; flags: qr rd ra ad; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1
"""
INSECURE = VALIDATED.replace("qr rd ra ad;", "qr rd ra;")
SERVFAIL = VALIDATED.replace("status: NOERROR", "status: SERVFAIL").replace("qr rd ra ad;", "qr rd ra;")
TIMEOUT = """; <<>> DiG 9.18.28-1~deb12u2-Debian <<>> +dnssec @127.0.0.1 dane.test. SOA
;; global options: +cmd
;; no servers could be reached
"""


def defaults(**overrides) -> dict:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()) | overrides


def unbound_conf(**overrides) -> list[str]:
    text = render_template(ROLE, "etc/unbound/unbound.conf.j2", defaults(**overrides))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# --- unbound's configuration ------------------------------------------------------------------


def test_production_default_recurses_with_the_root_anchor_on_loopback_only():
    lines = unbound_conf()
    assert [line for line in lines if line.startswith("interface:")] == ["interface: 127.0.0.1"]
    assert 'auto-trust-anchor-file: "/var/lib/unbound/root.key"' in lines
    assert not [line for line in lines if line.startswith(("forward", "trust-anchor", "local-zone"))]


def test_lab_forwards_with_its_own_anchors_and_no_root():
    lines = unbound_conf(
        relay_resolver__root_anchor=False,
        relay_resolver__forwarders=["198.51.100.71", "2001:db8::53"],
        relay_resolver__trust_anchors=[LAB_ANCHOR],
        relay_resolver__resolve_local_zones=["test."],
    )
    assert not [line for line in lines if "root.key" in line]
    assert f'trust-anchor: "{LAB_ANCHOR}"' in lines
    assert 'local-zone: "test." nodefault' in lines
    zone = lines[lines.index("forward-zone:") :]
    assert zone == ["forward-zone:", 'name: "."', "forward-addr: 198.51.100.71", "forward-addr: 2001:db8::53"]


@pytest.mark.skipif(not shutil.which("unbound-checkconf"), reason="unbound is not installed here")
def test_unbound_accepts_the_rendered_configuration(tmp_path):
    conf = tmp_path / "unbound.conf"
    conf.write_text(
        render_template(
            ROLE,
            "etc/unbound/unbound.conf.j2",
            defaults(relay_resolver__root_anchor=False, relay_resolver__trust_anchors=[LAB_ANCHOR]),
        )
    )
    subprocess.run(["unbound-checkconf", str(conf)], check=True, capture_output=True)


def test_argument_specs_cover_every_default():
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert set(specs["main"]["options"]) == set(defaults())


def test_relay_playbook_runs_the_resolver_for_dane_only_and_before_postfix():
    play = yaml.safe_load((ROOT / "playbooks" / "relay.yml").read_text())[0]
    roles = [r["role"] for r in play["roles"]]
    assert roles.index("relay_resolver") < roles.index("relay_postfix")
    resolver = next(r for r in play["roles"] if r["role"] == "relay_resolver")
    assert resolver["when"] == "relay_resolver_on"
    level = play["vars"]["relay_postfix__smtp_tls_security_level"]
    assert level == "{{ bulkrelay_tls_policy | default('may') }}"


# --- the role's validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "relay_resolver__root_anchor": False,
            "relay_resolver__trust_anchors": [LAB_ANCHOR, "lab.test. DNSKEY 257 3 13 AbCd=="],
            "relay_resolver__forwarders": ["198.51.100.71", "2001:db8::53"],
            "relay_resolver__probe_name": "lab.test.",
            "relay_resolver__bogus_name": "bogus.test.",
            "relay_resolver__resolve_local_zones": ["test.", "100.51.198.in-addr.arpa."],
        },
    ],
)
def test_good_settings_pass_validation(overrides):
    assert role_validation(ROLE, defaults(**overrides))[0]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"relay_resolver__trust_anchors": ["lab.test DS 1 2 3"]}, "relay_resolver__trust_anchors has"),
        ({"relay_resolver__forwarders": ["ns.lab.test"]}, 'forwarders has ["ns.lab.test"]: list IP'),
        ({"relay_resolver__probe_name": "lab.test"}, '["lab.test"]: relay_resolver__probe_name'),
        ({"relay_resolver__probe_name": ""}, "the probe is required"),
        ({"relay_resolver__resolve_local_zones": ["test"]}, '["test"]'),
        ({"relay_resolver__root_anchor": False}, "unbound would validate nothing"),
        ({"relay_resolver__probe_timeout": 0}, "relay_resolver__probe_timeout is 0: set 1-30"),
    ],
)
def test_bad_settings_are_named_with_the_fix(overrides, words):
    holds, message = role_validation(ROLE, defaults(**overrides))
    assert not holds
    assert message.startswith("relay_resolver: invalid settings.")
    assert words in message, message


# --- the probe: dig's reply judged ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "stdout", "bogus", "verdict", "words"),
    [
        (0, VALIDATED, False, tlspolicy.VALIDATED, "dane.test. SOA came back validated (AD flag)"),
        (0, INSECURE, False, tlspolicy.NOT_VALIDATED, "NOERROR without the AD flag"),
        (0, SERVFAIL, False, tlspolicy.NOT_VALIDATED, "SERVFAIL (validation failed"),
        (9, TIMEOUT, False, tlspolicy.UNKNOWN, "got no reply (dig exit 9: no servers could be reached)"),
        (0, "", False, tlspolicy.UNKNOWN, "no output"),
        (0, SERVFAIL, True, tlspolicy.VALIDATED, "(must fail validation) came back SERVFAIL"),
        (0, VALIDATED, True, tlspolicy.NOT_VALIDATED, "came back NOERROR with AD: forged answers"),
        (0, INSECURE, True, tlspolicy.NOT_VALIDATED, "came back NOERROR: forged"),
        (9, TIMEOUT, True, tlspolicy.UNKNOWN, "got no reply"),
    ],
)
def test_dig_replies_are_judged(rc, stdout, bogus, verdict, words):
    got, why = tlspolicy.judge_dig(rc, stdout, "dane.test.", bogus=bogus)
    assert got == verdict
    assert words in why, why


def problem(name, rc, stdout, bogus_name="bogus.test."):
    return relay_resolver_probe_problem({"item": name, "rc": rc, "stdout": stdout}, bogus_name)


def test_the_roles_filter_names_each_name_that_did_not_do_as_wanted():
    assert problem("dane.test.", 0, VALIDATED) == ""
    assert problem("bogus.test.", 0, SERVFAIL) == ""
    assert problem("dane.test.", 0, SERVFAIL).startswith("not validated: dane.test. SOA came back SERVFAIL")
    assert problem("bogus.test.", 0, VALIDATED).startswith("not validated: bogus.test. must fail")
    assert problem("dane.test.", 9, TIMEOUT, "").startswith("could not tell: dane.test. SOA got no reply")


# --- the audit's dane check ---------------------------------------------------------------------


def ok(stdout="", rc=0):
    return {"rc": rc, "stdout": stdout, "stderr": ""}


def postconf(level):
    return ok(f"smtp_tls_security_level = {level}\nsmtp_tls_policy_maps = {tlspolicy.TABLE}\n")


def unit(active="active", sub="running"):
    return ok(f"Id={tlspolicy.RESOLVER_UNIT}\nActiveState={active}\nSubState={sub}\nResult=success\n")


RESOLV_CONF = "# managed by bulkrelay\nnameserver 127.0.0.1\noptions edns0 trust-ad\n"


def judge(level="dane", table=None, unit_raw=None, probe=VALIDATED, name="dane.test.", resolv=RESOLV_CONF):
    """judge_dane on readable answers; probe is dig's output (None: the role never ran)."""
    return audit.judge_dane(
        postconf(level),
        table or ok(""),
        unit_raw or unit(),
        probe=None if probe is None else ok(probe),
        probe_name=name,
        resolv_conf=ok(resolv),
    )


def test_dane_in_use_with_a_validating_resolver_passes():
    result = judge()
    assert result.status == "pass", result
    assert f"{tlspolicy.RESOLVER_UNIT} runs and validates (dane.test. SOA came back validated" in (
        result.message
    )
    # an override is enough to need it
    assert judge("may", table=ok("partner.example\tdane-only\n")).status == "pass"


def test_dane_not_in_use_passes_without_asking():
    stopped = unit("inactive", "dead")
    result = judge("may", table=ok("partner.example\tencrypt\n"), unit_raw=stopped, probe=None)
    assert (result.status, result.message) == ("pass", "DANE is not in use (smtp_tls_security_level = may)")


def test_a_stopped_resolver_fails():
    result = judge(unit_raw=unit("inactive", "dead"))
    assert result.status == "fail", result
    assert f"{tlspolicy.RESOLVER_UNIT} is inactive/dead" in result.message
    assert f"systemctl restart {tlspolicy.RESOLVER_UNIT}" in result.fix


@pytest.mark.parametrize("reply", [INSECURE, SERVFAIL])
def test_a_resolver_that_does_not_validate_fails(reply):
    result = judge(probe=reply)
    assert result.status == "fail", result
    assert "the local resolver does not validate: dane.test. SOA came back" in result.message
    assert "trust anchors" in result.fix


@pytest.mark.parametrize(
    ("resolv", "problem"),
    [
        ("nameserver 127.0.0.1\n", "lacks `options trust-ad`"),
        (
            "options trust-ad\nnameserver 127.0.0.1\nnameserver 192.0.2.53\n",
            "names 127.0.0.1, 192.0.2.53, not 127.0.0.1 alone",
        ),
        ("nameserver 192.0.2.53\noptions trust-ad\n", "names 192.0.2.53, not 127.0.0.1 alone"),
        ("# nameserver 127.0.0.1\noptions trust-ad\n", "names no nameserver"),
    ],
)
def test_a_resolv_conf_that_bypasses_the_validating_resolver_fails(resolv, problem):
    """The probe asks unbound directly; Postfix asks glibc, which reads resolv.conf."""
    result = judge(resolv=resolv)
    assert result.status == "fail", result
    assert problem in result.message
    assert "/etc/resolv.conf" in result.fix


def test_an_unreadable_resolv_conf_is_could_not_tell():
    result = audit.judge_dane(
        postconf("dane"),
        ok(""),
        unit(),
        probe=ok(VALIDATED),
        probe_name="dane.test.",
        resolv_conf=ok("", rc=1),
    )
    assert result.status == "error", result
    assert result.message.startswith("could not tell: /etc/resolv.conf failed")


def test_dane_without_the_roles_resolver_fails():
    result = judge(probe=None, name="")
    assert result.status == "fail", result
    assert "no local validating resolver" in result.message


@pytest.mark.parametrize(
    ("postconf_raw", "unit_raw", "probe"),
    [
        (ok("", rc=1), unit(), ok(VALIDATED)),
        (postconf("dane"), ok("", rc=1), ok(VALIDATED)),
        (postconf("dane"), unit(), ok(TIMEOUT, rc=9)),
    ],
)
def test_what_cannot_be_read_or_times_out_is_could_not_tell(postconf_raw, unit_raw, probe):
    result = audit.judge_dane(
        postconf_raw, ok(""), unit_raw, probe=probe, probe_name="dane.test.", resolv_conf=ok(RESOLV_CONF)
    )
    assert result.status == "error", result
    assert result.message.startswith("could not tell")


def test_an_unread_override_table_is_could_not_tell_unless_the_global_level_is_dane():
    unread = ok("", rc=1)
    result = audit.judge_dane(
        postconf("may"), unread, unit(), probe=None, probe_name="", resolv_conf=ok(RESOLV_CONF)
    )
    assert result.status == "error", result
    assert result.message.startswith("could not tell")
    assert judge(table=unread).status == "pass"
