"""Outbound MTA-STS (roles/relay_mta_sts): the resolver's configuration as the role renders it,
the map's place in Postfix's smtp_tls_policy_maps (after the overrides), and the audit's check
that lookups are in effect, judged from recorded output and from the host's real postmap asking
a real socketmap server."""

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import jinja2
import pytest
import yaml
from support import render_template, role_validation

from bulkrelay import audit, ststesting, tlspolicy

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "relay_mta_sts"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin:/sbin:/bin")
needs_postfix = pytest.mark.skipif(not POSTMAP, reason="postfix is not installed (lab/lab.sh installs it)")
MAP = "socketmap:inet:127.0.0.1:8461:postfix"


def defaults(**overrides) -> dict:
    values = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()) | overrides
    # the one derived default, as Ansible resolves it
    derived = jinja2.Template(values["relay_mta_sts__postfix_map"])
    values["relay_mta_sts__postfix_map"] = derived.render(values)
    return values


def config(**overrides) -> dict:
    return yaml.safe_load(render_template(ROLE, "etc/mta-sts-daemon.yml.j2", defaults(**overrides)))


# --- the resolver's configuration -------------------------------------------------------------


def test_default_configuration_listens_on_loopback_and_caches_on_disk():
    cfg = config()
    assert (cfg["host"], cfg["port"], cfg["reuse_port"]) == ("127.0.0.1", 8461, True)
    assert cfg["cache"] == {"type": "sqlite", "options": {"filename": "/var/lib/mta-sts/cache.db"}}
    assert cfg["cache_grace"] == 60
    assert cfg["proactive_policy_fetching"] == {"enabled": True, "interval": 86400}
    # testing policies are not enforced; SNI as RFC 8461 asks
    assert cfg["default_zone"] == {"strict_testing": False, "timeout": 4, "require_sni": True}
    # the zone tracking asks about testing policies (bulkrelay.ststesting), strict; Postfix's
    # zone is the default one
    assert cfg["zones"] == {
        ststesting.TESTING_ZONE: {"strict_testing": True, "timeout": 4, "require_sni": True}
    }
    assert defaults()["relay_mta_sts__postfix_map"].endswith(":" + ststesting.ENFORCED_ZONE)


def test_internal_cache_and_no_background_refresh():
    cfg = config(
        relay_mta_sts__cache_type="internal", relay_mta_sts__cache_size=5, relay_mta_sts__refresh_interval=0
    )
    assert cfg["cache"] == {"type": "internal", "options": {"cache_size": 5}}
    assert cfg["proactive_policy_fetching"]["enabled"] is False


def test_the_map_postfix_is_given_is_where_the_daemon_listens():
    values = defaults(relay_mta_sts__listen_host="127.0.0.2", relay_mta_sts__listen_port=9461)
    assert values["relay_mta_sts__postfix_map"] == "socketmap:inet:127.0.0.2:9461:postfix"
    cfg = config(relay_mta_sts__listen_host="127.0.0.2", relay_mta_sts__listen_port=9461)
    assert (cfg["host"], cfg["port"]) == ("127.0.0.2", 9461)
    assert defaults()["relay_mta_sts__postfix_map"] == MAP


def test_argument_specs_cover_every_default():
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    specs = specs["main"]["options"]
    assert set(specs) == set(defaults())
    assert specs["relay_mta_sts__cache_type"]["choices"] == ["sqlite", "internal"]


def test_the_sandbox_keeps_only_the_cache_writable():
    dropin = ROLE / "templates/etc/systemd/system/postfix-mta-sts-resolver.service.d/bulkrelay.conf.j2"
    text = dropin.read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    # the empty assignment resets Debian's list (which also allows Postfix's spool)
    assert lines.index("ReadWritePaths=") + 1 == lines.index("ReadWritePaths=/var/lib/mta-sts")
    assert "ProtectProc=invisible" in lines


def test_relay_playbook_puts_the_map_after_the_overrides_and_runs_the_role_before_postfix():
    play = yaml.safe_load((ROOT / "playbooks" / "relay.yml").read_text())[0]
    assert "relay_mta_sts__postfix_map" in play["vars"]["relay_postfix__tls_policy_maps_extra"]
    roles = [r["role"] for r in play["roles"]]
    assert roles.index("relay_mta_sts") < roles.index("relay_postfix")
    # opted out, the resolver stops only after the roles' handlers (Postfix reloaded without the map)
    off = [
        t
        for t in play["post_tasks"]
        if t.get("ansible.builtin.include_role", {}).get("name") == "relay_mta_sts"
    ]
    assert [(t["ansible.builtin.include_role"]["tasks_from"], t["when"]) for t in off] == [
        ("off.yml", "not relay_mta_sts_on")
    ]
    main_cf = (ROOT / "roles/relay_postfix/templates/etc/postfix/main.cf.j2").read_text()
    assert (
        "smtp_tls_policy_maps = {{ (['" + tlspolicy.TABLE + "'] + relay_postfix__tls_policy_maps_extra)"
        in main_cf
    )


# --- the audit's judgement -----------------------------------------------------------------------


def ok(stdout="", rc=0, stderr=""):
    return {"rc": rc, "stdout": stdout, "stderr": stderr}


def postconf(maps=f"{tlspolicy.TABLE}, {MAP}"):
    return ok(f"smtp_tls_security_level = may\nsmtp_tls_policy_maps = {maps}\n")


def unit(active="active", sub="running"):
    return ok(f"Id={tlspolicy.MTA_STS_UNIT}\nActiveState={active}\nSubState={sub}\nResult=success\n")


FOUND = ok("secure match=mx.example.test servername=hostname\n")
NOT_FOUND = ok(rc=1)
REFUSED = ok(
    rc=1,
    stderr=f"postmap: warning: connect to 127.0.0.1:8461: Connection refused\n"
    f"postmap: fatal: table {MAP}: query error: Connection refused\n",
)


def judge(postconf_raw=None, unit_raw=None, query=FOUND, expected=True):
    return audit.judge_mta_sts(
        postconf_raw or postconf(), unit_raw or unit(), query, expected, "example.test"
    )


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (FOUND, "(example.test: secure match=mx.example.test servername=hostname)"),
        (NOT_FOUND, "(example.test: no policy enforced)"),
    ],
)
def test_running_resolver_that_answers_passes(query, words):
    result = judge(query=query)
    assert (result.check, result.subject, result.status) == ("postfix", "mta-sts", "pass")
    assert f"{tlspolicy.MTA_STS_UNIT} runs and {MAP} answers {words}" in result.message


def test_a_stopped_resolver_fails():
    result = judge(unit_raw=unit("inactive", "dead"), query=REFUSED)
    assert result.status == "fail"
    assert f"{tlspolicy.MTA_STS_UNIT} is inactive/dead" in result.message
    assert "TLS policy lookup error" in result.message
    assert f"systemctl restart {tlspolicy.MTA_STS_UNIT}" in result.fix


def test_a_map_that_errs_fails_with_postmaps_reason():
    result = judge(query=REFUSED)
    assert result.status == "fail"
    assert "does not answer (postmap -q example.test: postmap: fatal:" in result.message
    assert "query error: Connection refused" in result.message


def test_no_socketmap_fails_unless_turned_off():
    off = judge(postconf(tlspolicy.TABLE), query=None)
    assert off.status == "fail" and "MTA-STS lookups are off" in off.message
    assert "--tags relay_mta_sts,relay_postfix" in off.fix
    chosen = judge(postconf(tlspolicy.TABLE), query=None, expected=False)
    assert chosen.status == "pass" and "bulkrelay_mta_sts: false" in chosen.message


def test_mta_sts_before_the_overrides_fails():
    result = judge(postconf(f"{MAP}, {tlspolicy.TABLE}"))
    assert result.status == "fail" and "overrides no longer win" in result.message


@pytest.mark.parametrize(
    ("postconf_raw", "unit_raw", "query"),
    [
        (ok(rc=1, stderr="postconf: fatal: open /etc/postfix/main.cf"), None, FOUND),
        (None, ok(rc=1, stderr="Failed to connect to bus"), FOUND),
        (None, ok("Id=other.service\nActiveState=active\n"), FOUND),
        (None, None, None),  # the map was never asked
    ],
)
def test_what_cannot_be_read_is_could_not_tell(postconf_raw, unit_raw, query):
    result = judge(postconf_raw, unit_raw, query)
    assert result.status == "error" and result.message.startswith("could not tell"), result.message


# --- the host's postmap and a real socketmap server ---------------------------------------------


class SocketmapServer:
    """A socketmap server (Postfix's netstring protocol) that answers one policy for one name."""

    def __init__(self, name, value):
        self.answers = {f"postfix {name}".encode(): f"OK {value}".encode()}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b","):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                length, _, rest = data.partition(b":")
                answer = self.answers.get(rest[: int(length or 0)], b"NOTFOUND ")
                conn.sendall(b"%d:%s," % (len(answer), answer))

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone may not
        self.thread.join(5)
        self.sock.close()


@needs_postfix
def test_the_judge_reads_real_postmap_output(tmp_path):
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    server = SocketmapServer("partner.example", "secure match=mx.partner.example servername=hostname")
    socketmap = f"socketmap:inet:127.0.0.1:{server.port}:postfix"

    def ask(domain):
        argv = [POSTMAP, "-c", str(tmp_path), "-q", domain, socketmap]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    maps = postconf(f"{tlspolicy.TABLE}, {socketmap}")
    try:
        found = audit.judge_mta_sts(maps, unit(), ask("partner.example"), True, "partner.example")
        missing = audit.judge_mta_sts(maps, unit(), ask("other.example"), True, "other.example")
    finally:
        server.close()
    assert found.status == "pass" and "(partner.example: secure match=mx.partner.example" in found.message
    assert missing.status == "pass" and "(other.example: no policy enforced)" in missing.message
    refused = audit.judge_mta_sts(maps, unit(), ask("partner.example"), True, "partner.example")
    assert refused.status == "fail" and "Connection refused" in refused.message


# --- the role's validation (tasks/validate.yml), evaluated by Ansible's own templar -------------


def validate(**overrides) -> tuple[bool, str]:
    return role_validation(ROLE, defaults(**overrides))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"relay_mta_sts__listen_host": "127.0.0.53", "relay_mta_sts__refresh_interval": 0}],
)
def test_good_settings_pass_validation(overrides):
    assert validate(**overrides)[0]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {"relay_mta_sts__listen_host": "0.0.0.0"},
            'relay_mta_sts__listen_host is "0.0.0.0": the policy map',
        ),
        ({"relay_mta_sts__listen_host": "198.51.100.70"}, "set an IPv4 loopback address such as 127.0.0.1"),
        ({"relay_mta_sts__listen_host": "127.0.0.256"}, 'relay_mta_sts__listen_host is "127.0.0.256"'),
        ({"relay_mta_sts__listen_port": 0}, "relay_mta_sts__listen_port out of range"),
        (
            {"relay_mta_sts__timeout": 61, "relay_mta_sts__cache_grace": -1},
            "relay_mta_sts__timeout, relay_mta_sts__cache_grace out of range",
        ),
    ],
)
def test_bad_settings_are_named_with_the_fix(overrides, words):
    holds, message = validate(**overrides)
    assert not holds
    assert message.startswith("relay_mta_sts: invalid settings.")
    assert words in message, message
