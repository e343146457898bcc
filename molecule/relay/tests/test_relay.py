"""Behaviour of the send-only relay, proven from the outside with real Postfix, OpenDKIM,
Dovecot and nftables: an app server, an outsider and a sink that receives the mail."""

import base64
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import dkim
import pytest
import testinfra

testinfra_hosts = ["docker://br-relay-relay"]

RELAY_V4 = "198.51.100.20"
RELAY_APPS_V4 = "203.0.113.200"
SINK_MAILDIR = "/var/mail/sink/customer.test/all"
SASL_USER, SASL_PASS = "app1", "lab-only-app1-secret"
SELECTOR, DOMAIN = "lab2026", "example.test"
PROJECT = Path(__file__).resolve().parents[3]


def _docker(name):
    return testinfra.get_host(f"docker://{name}")


@pytest.fixture(scope="module")
def relay():
    return _docker("br-relay-relay")


@pytest.fixture(scope="module")
def app():
    return _docker("br-relay-app")


@pytest.fixture(scope="module")
def outsider():
    return _docker("br-relay-outsider")


@pytest.fixture(scope="module")
def sink():
    return _docker("br-relay-sink")


def _global_v6(h, prefix):
    out = h.check_output("ip -6 -o addr show scope global")
    for line in out.splitlines():
        addr = line.split()[3].split("/")[0]
        if addr.startswith(prefix):
            return addr
    return None


def _probe(client, address, port, timeout=3):
    """Try a TCP connect from `client`: 'open', 'refused' or 'timeout' (= dropped)."""
    script = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {address!r} else socket.AF_INET)\n"
        f"s.settimeout({timeout})\n"
        f"try:\n s.connect(({address!r},{port})); print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except (TimeoutError, socket.timeout): print('timeout')\n"
        "except OSError as e: print('error', e)\n"
    )
    return client.check_output(f"python3 -c {_q(script)}")


def _q(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _mails_to(sink, rcpt):
    """Files of the sink's catch-all Maildir whose envelope recipient (Delivered-To) is rcpt."""
    res = sink.run(f"grep -l -i -x -F 'Delivered-To: {rcpt}' {SINK_MAILDIR}/new/* 2>/dev/null")
    return res.stdout.split()


def _wait_for_mail(sink, rcpt, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = _mails_to(sink, rcpt)
        if files:
            return [sink.check_output(f"base64 -w0 {f}") for f in files]
        time.sleep(1)
    return []


def _auth_plain(password=SASL_PASS):
    """swaks arguments: AUTH PLAIN as the app's SASL user."""
    return ["--auth", "PLAIN", "--auth-user", SASL_USER, "--auth-password", password]


def _swaks(client, server, *args, port=587):
    cmd = ["swaks", "--server", server, "--port", str(port), "--timeout", "15", *args]
    return client.run(" ".join(_q(a) for a in cmd))


# --- listening policy -------------------------------------------------------------------


def test_port_25_listens_on_loopback_only(relay):
    listeners = relay.check_output("ss -Hltn 'sport = :25'").splitlines()
    locals_ = sorted(line.split()[3] for line in listeners)
    assert locals_ == ["127.0.0.1:25", "[::1]:25"], locals_


def test_submission_listens_on_public_addresses(relay):
    listeners = relay.check_output("ss -Hltn 'sport = :587'")
    assert f"{RELAY_V4}:587" in listeners
    assert f"{RELAY_APPS_V4}:587" in listeners


def test_postfix_settings_are_send_only(relay):
    conf = relay.check_output(
        "postconf -h myhostname smtp_helo_name mydestination mynetworks inet_interfaces"
    )
    assert conf.splitlines() == [
        "relay.example.test",
        "$myhostname",
        "",
        "127.0.0.0/8 [::1]/128",
        "loopback-only",
    ]
    assert relay.check_output("postconf -h smtpd_forbid_bare_newline") == "normalize"
    assert relay.check_output("postconf -h smtp_tls_security_level") == "may"
    assert relay.run("postfix check").rc == 0


def test_big_receivers_get_their_own_transport(relay):
    assert relay.check_output("postmap -q gmail.com texthash:/etc/postfix/transport") == "bulk_gmail:"
    assert relay.check_output("postmap -q t-online.de texthash:/etc/postfix/transport") == "bulk_tonline:"
    assert relay.check_output("postconf -h bulk_tonline_destination_rate_delay") == "2s"
    assert re.search(r"^bulk_gmail\s+unix\s", relay.check_output("postconf -M"), re.M)


def test_role_addresses_go_to_the_admin(relay):
    out = relay.check_output("postmap -q abuse@relay.example.test texthash:/etc/postfix/virtual")
    assert out == "postmaster@example.test"


def test_private_keys_are_owned_by_the_signer_and_0600(relay):
    key = relay.file(f"/etc/dkimkeys/{DOMAIN}/{SELECTOR}.private")
    assert key.user == "opendkim"
    assert key.mode == 0o600


# --- the allowed path -------------------------------------------------------------------


def _relay_public_key(relay):
    pem = relay.check_output(f"openssl pkey -pubout -in /etc/dkimkeys/{DOMAIN}/{SELECTOR}.private")
    p = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return f"v=DKIM1; k=rsa; p={p}".encode()


def test_app_submission_arrives_at_sink_with_valid_dkim(relay, app, sink):
    token = uuid.uuid4().hex[:12]
    rcpt = f"user-{token}@customer.test"
    res = _swaks(
        app,
        RELAY_APPS_V4,
        "--tls",
        *_auth_plain(),
        "--from",
        f"billing@{DOMAIN}",
        "--to",
        rcpt,
        "--header",
        f"Subject: invoice {token}",
        "--header",
        f"From: Billing <billing@{DOMAIN}>",
        "--body",
        f"Invoice {token} attached.",
    )
    assert res.rc == 0, res.stdout + res.stderr
    mails = _wait_for_mail(sink, rcpt)
    assert len(mails) == 1, "the mail did not arrive (once) at the sink"
    raw = base64.b64decode(mails[0])
    assert b"DKIM-Signature:" in raw
    assert f"s={SELECTOR}".encode() in raw and f"d={DOMAIN}".encode() in raw
    txt = _relay_public_key(relay)
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name)
        return txt if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    assert dkim.verify(raw, dnsfunc=dnsfunc), "DKIM signature does not verify with the relay's key"
    assert asked, "dkimpy never asked for the key"
    # A tampered body must fail: the check above could otherwise pass vacuously.
    assert not dkim.verify(raw.replace(token.encode(), b"tampered", 1) + b"x", dnsfunc=dnsfunc)


def test_submission_refuses_auth_without_tls(app):
    res = _swaks(
        app,
        RELAY_APPS_V4,
        *_auth_plain(),
        "--to",
        "x@customer.test",
        "--quit-after",
        "AUTH",
    )
    assert res.rc != 0
    assert "STARTTLS" in res.stdout or "not advertised" in res.stdout or "AUTH" in res.stdout


def test_submission_refuses_a_wrong_password(app):
    res = _swaks(
        app,
        RELAY_APPS_V4,
        "--tls",
        *_auth_plain("wrong"),
        "--to",
        "x@customer.test",
        "--quit-after",
        "AUTH",
    )
    assert res.rc != 0
    assert re.search(r"^<[~*]\* 535 ", res.stdout, re.M), res.stdout


# --- the firewall -----------------------------------------------------------------------


def test_own_table_and_dockers_rules_kept(relay):
    tables = relay.check_output("nft list tables")
    assert "table inet bulkrelay" in tables
    assert "table ip nat" in tables, "Docker's nat table inside the container was removed"
    assert "DOCKER_OUTPUT" in relay.check_output("nft list table ip nat")


def test_outsider_cannot_open_25_or_submission_v4(outsider):
    assert _probe(outsider, RELAY_V4, 25) == "timeout"
    assert _probe(outsider, RELAY_V4, 587) == "timeout"


def test_outsider_cannot_open_25_or_submission_v6(relay, outsider):
    relay_v6 = _global_v6(relay, "2001:db8:100:")
    if relay_v6 is None or _global_v6(outsider, "2001:db8:100:") is None:
        pytest.skip("the lab containers have no IPv6 on bulkrelay-inet")
    assert _probe(outsider, relay_v6, 25) == "timeout"
    assert _probe(outsider, relay_v6, 587) == "timeout"


def test_app_reaches_submission_but_never_25(relay, app):
    assert _probe(app, RELAY_APPS_V4, 587) == "open"
    before = relay.check_output("nft list chain inet bulkrelay input")
    assert _probe(app, RELAY_APPS_V4, 25) == "timeout"
    after = relay.check_output("nft list chain inet bulkrelay input")
    assert before != after, "the port-25 drop counter did not move"
    relay_v6 = _global_v6(relay, "2001:db8:113:")
    if relay_v6 and _global_v6(app, "2001:db8:113:"):
        assert _probe(app, relay_v6, 587) == "open"
        assert _probe(app, relay_v6, 25) == "timeout"


# --- without the firewall Postfix still refuses everything ------------------------------

TRICKS = {
    "foreign sender and recipient": ("someone@foreign.test", "victim@customer.test"),
    "percent hack": ("someone@foreign.test", "victim%customer.test@relay.example.test"),
    "bang path": ("someone@foreign.test", "customer.test!victim@relay.example.test"),
    "quoted local part with @": ("someone@foreign.test", '"victim@customer.test"@relay.example.test'),
    "source routing": ("someone@foreign.test", "@relay.example.test:victim@customer.test"),
}


@pytest.fixture
def firewall_down(relay):
    relay.check_output("systemctl stop bulkrelay-firewall.service")
    assert "bulkrelay" not in relay.check_output("nft list tables")
    try:
        yield
    finally:
        relay.check_output("systemctl start bulkrelay-firewall.service")
        assert "bulkrelay" in relay.check_output("nft list tables")


@pytest.mark.usefixtures("firewall_down")
def test_without_firewall_nothing_listens_publicly_on_25(outsider):
    assert _probe(outsider, RELAY_V4, 25) == "refused"


@pytest.mark.usefixtures("firewall_down")
@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_without_firewall_relay_tricks_are_rejected(trick, outsider, app, sink):
    sender, rcpt = TRICKS[trick]
    for client, server in ((outsider, RELAY_V4), (app, RELAY_APPS_V4)):
        res = _swaks(client, server, "--tls", "--from", sender, "--to", rcpt)
        assert res.rc != 0, f"{trick} from {client.backend.name} was accepted:\n{res.stdout}"
        rcpt_lines = [line for line in res.stdout.splitlines() if re.match(r"<[~*]\* 5\d\d ", line)]
        assert rcpt_lines, f"{trick}: no 5xx rejection:\n{res.stdout}"
    assert not _mails_to(sink, "victim@customer.test"), "a relay trick delivered mail"


# --- SMTP smuggling -----------------------------------------------------------------------

SMUGGLER = r"""
import smtplib, ssl, sys
token = sys.argv[1]
c = smtplib.SMTP("203.0.113.200", 587, timeout=20)
c.ehlo("app.example.test")
c.starttls(context=ssl._create_unverified_context())
c.ehlo("app.example.test")
c.login("app1", "lab-only-app1-secret")
c.mail("billing@example.test")
c.rcpt(f"first-{token}@customer.test")
code, _ = c.docmd("DATA")
assert code == 354, code
payload = (f"From: billing@example.test\r\nSubject: smuggle {token}\r\n\r\nhello\n.\n"
           f"MAIL FROM:<billing@example.test>\nRCPT TO:<smuggled-{token}@customer.test>\nDATA\n"
           f"smuggled body\r\n.\r\n")
c.send(payload.encode())
code, msg = c.getreply()
print("END-OF-DATA", code, msg.decode(errors="replace"))
try:
    c.quit()
except Exception as e:
    print("QUIT", e)
"""


def test_bare_lf_smuggling_is_not_a_second_message(app, sink):
    token = uuid.uuid4().hex[:10]
    res = app.run(f"python3 -c {_q(SMUGGLER)} {token}")
    assert "END-OF-DATA" in res.stdout, res.stdout + res.stderr
    code = int(res.stdout.split("END-OF-DATA", 1)[1].split()[0])
    if code == 250:  # normalised: one message, the smuggled commands stay content
        mails = _wait_for_mail(sink, f"first-{token}@customer.test")
        assert len(mails) == 1
        assert b"smuggled body" in base64.b64decode(mails[0])
    else:
        assert 500 <= code < 600, res.stdout
    time.sleep(3)
    assert not _mails_to(sink, f"smuggled-{token}@customer.test"), "the smuggled message was delivered"


# --- wrong variables fail fast ------------------------------------------------------------


def _run_playbook(tmp_path, overrides, playbook=PROJECT / "playbooks" / "relay.yml", callback=None):
    """ansible-playbook --check against the scenario's relay, with the lab inventory values."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n    relays:\n      hosts:\n        br-relay-relay:\n"
        "          ansible_connection: community.docker.docker\n"
    )
    inv_dir = PROJECT / "molecule" / "inventory"
    extra = tmp_path / "overrides.json"
    extra.write_text(json.dumps(overrides))
    env = dict(
        os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(PROJECT / "roles")
    )
    if callback:
        env["ANSIBLE_STDOUT_CALLBACK"] = callback
    return subprocess.run(
        [
            "ansible-playbook",
            "--check",
            "-i",
            str(inventory),
            "-e",
            f"@{inv_dir / 'group_vars' / 'all.yml'}",
            "-e",
            f"@{inv_dir / 'host_vars' / 'br-relay-relay.yml'}",
            "-e",
            f"@{extra}",
            str(playbook),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT,
        timeout=300,
    )


def _run_playbook_expecting_failure(tmp_path, overrides):
    proc = _run_playbook(tmp_path, overrides)
    assert proc.returncode != 0, proc.stdout
    out = proc.stdout + proc.stderr
    assert "changed=0" in out, "a change happened before the validation failed"
    assert "Traceback" not in out
    return out


def test_app_network_that_is_not_a_cidr_fails_fast(tmp_path):
    out = _run_playbook_expecting_failure(
        tmp_path, {"bulkrelay_app_networks": ["203.0.113.0/24", "apps.example"]}
    )
    assert '["apps.example"], which is not a CIDR network' in out, out


def test_hostname_that_is_not_an_fqdn_fails_fast(tmp_path):
    out = _run_playbook_expecting_failure(tmp_path, {"bulkrelay_fqdn": "relay"})
    assert '"relay", which is not a fully qualified host name' in out, out


def test_firewall_refuses_to_cut_off_the_controller(tmp_path):
    out = _run_playbook_expecting_failure(tmp_path, {"relay_firewall__controller_address": "192.0.2.99"})
    assert "refusing to apply the ruleset: Ansible connects from 192.0.2.99" in out, out


def test_public_keys_fact_matches_the_signing_key(relay, tmp_path):
    proc = _run_playbook(
        tmp_path,
        {},
        playbook=PROJECT / "molecule" / "relay" / "fact_probe.yml",
        callback="ansible.posix.json",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Other enabled callbacks (profile_tasks) may print around the JSON document.
    report = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])
    shown = [
        host["relay_dkim__public_keys"]
        for play in report["plays"]
        for task in play["tasks"]
        for host in task["hosts"].values()
        if "relay_dkim__public_keys" in host
    ]
    assert shown == [{DOMAIN: {"selector": SELECTOR, "txt": _relay_public_key(relay).decode()}}]
