"""The sender service on the relay, proven from the outside: the unit runs hardened, the app
server submits to the intake and the message is in the queue, the outsider gets nowhere
(firewall drop when the relay's firewall is there, 554 from the allow-list either way), the hot
folder and the CLI queue what is good and reject what is bad with a reason."""

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import testinfra

testinfra_hosts = ["br-sender-relay"]

RELAY_V4 = "198.51.100.30"
RELAY_APPS_V4 = "203.0.113.205"
PORT = 2525
HOT = "/var/spool/bulkrelay/hotfolder"
AS_SENDER = "runuser -u bulkrelay -- /usr/local/bin/bulkrelay"
PROJECT = Path(__file__).resolve().parents[3]


def _docker(name):
    return testinfra.get_host(f"docker://{name}")


@pytest.fixture(scope="module")
def relay():
    return _docker("br-sender-relay")


@pytest.fixture(scope="module")
def app():
    return _docker("br-sender-app")


def test_site_yml_leaves_systemd_healthy_and_the_relay_named(relay):
    state = relay.run("systemctl is-system-running").stdout.strip()
    assert state == "running", relay.run("systemctl --failed --no-legend").stdout
    assert relay.run("hostname -f").stdout.strip() == "relay.example.test"


@pytest.fixture(scope="module")
def outsider():
    return _docker("br-sender-outsider")


def _swaks(client, server, *extra, timeout=8):
    tag = uuid.uuid4().hex[:12]
    cmd = (
        f"swaks --server {server} --port {PORT} --timeout {timeout} --helo {client.backend.get_hostname()} "
        f"--from billing@example.test --to alice@customer.test "
        f"--header 'Subject: sender-test {tag}' --header 'Message-Id: <{tag}@example.test>' {' '.join(extra)}"
    )
    return client.run(cmd), tag


def _queued_as(output):
    match = re.search(r"<-\s+250 2\.0\.0 Ok: queued as (\d+)", output)
    return int(match.group(1)) if match else None


def _show(relay, message_id):
    out = relay.check_output(f"{AS_SENDER} queue show {message_id} --json")
    return json.loads(out)


def test_service_runs_as_unprivileged_user(relay):
    service = relay.service("bulkrelay-sender")
    assert service.is_enabled and service.is_running
    pid = relay.check_output("systemctl show -p MainPID --value bulkrelay-sender")
    assert relay.check_output(f"stat -c %U /proc/{pid}").strip() == "bulkrelay"
    assert relay.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_config_is_checked_and_private(relay):
    conf = relay.file("/etc/bulkrelay/sender.toml")
    # group: the queue group (sender and bounce poller); the intake's own secrets stay "bulkrelay"
    assert conf.user == "root" and conf.group == "bulkrelay-queue" and conf.mode == 0o640
    assert conf.content_string.startswith("# managed by bulkrelay")
    assert relay.run(f"{AS_SENDER} config check").rc == 0
    key = relay.file("/etc/bulkrelay/verp.key")
    assert key.mode == 0o640 and key.group == "bulkrelay-queue" and key.size > 40


def test_contracts_between_roles_reach_the_daemons(relay):
    # The DNSBL state file comes from dnsbl_monitor's published local fact, not a second copy of
    # the path: an unread fact would silently turn the DNSBL pause off ("" in sender.toml).
    fact = json.loads(relay.file("/etc/ansible/facts.d/bulkrelay_dnsbl.fact").content_string)
    conf = relay.check_output("sed -n '/^\\[dnsbl\\]/,/^\\[/p' /etc/bulkrelay/sender.toml")
    assert fact["state_file"] == "/var/lib/bulkrelay/dnsbl/state.json"
    assert f"state_file = {json.dumps(fact['state_file'])}" in conf
    # Postfix talks to the port OpenDKIM listens on (relay_dkim__postfix_milter).
    assert relay.check_output("postconf -h smtpd_milters").strip() == "inet:127.0.0.1:8891"
    assert relay.socket("tcp://127.0.0.1:8891").is_listening


def test_systemd_hardening_score(relay):
    out = relay.check_output("systemd-analyze security --no-pager bulkrelay-sender.service | tail -1")
    print(out)  # the report quotes this line
    score = float(re.search(r"exposure level for bulkrelay-sender.service:\s+([0-9.]+)", out).group(1))
    assert score <= 2.5, out


def test_app_submits_and_message_is_queued(relay, app):
    result, tag = _swaks(app, RELAY_APPS_V4)
    assert result.rc == 0, result.stdout
    message_id = _queued_as(result.stdout)
    assert message_id, result.stdout
    shown = _show(relay, message_id)
    assert shown["mail_from"] == "billing@example.test"
    assert shown["source"] == "smtp:203.0.113.206"
    assert [r["address"] for r in shown["recipients"]] == ["alice@customer.test"]
    body = relay.check_output(f"{AS_SENDER} queue show {message_id} --body")
    assert f"sender-test {tag}" in body
    assert re.search(
        r"Received: from \S+ \(\[203\.0\.113\.206\]\)\s+by relay\.example\.test \(bulkrelay intake\)", body
    )


def test_app_bad_input_refused_with_reason(app):
    result, _ = _swaks(app, RELAY_APPS_V4, "--to", "alice@localhost")
    assert "553 5.1.3" in result.stdout and "not fully qualified" in result.stdout
    assert _queued_as(result.stdout) is None
    result, _ = _swaks(app, RELAY_APPS_V4, "--header", "'From: '", "--add-header", "'X-Test: 1'")
    assert _queued_as(result.stdout) is None


def _firewall_table(relay):
    return relay.run("nft list table inet bulkrelay").rc == 0


def _banner(host, address):
    """The first line the intake sends to a client on `host` ("" when no connection)."""
    cmd = f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{PORT} && head -n1 <&3' 2>/dev/null || true"
    return host.run(cmd).stdout.strip()


def test_outsider_cannot_submit(relay, outsider):
    """Dropped before SMTP: nftables (when the relay's firewall runs) and the unit's IP filter."""
    result, _ = _swaks(outsider, RELAY_V4, timeout=5)
    assert _queued_as(result.stdout) is None
    assert "220 " not in result.stdout and "Error connecting" in result.stderr, result.stdout


def test_allow_list_answers_554_to_clients_outside_app_networks(relay):
    """Third layer, the intake's own allow-list: loopback passes the unit's IP filter but is
    no app network, so it gets 554 at connect."""
    assert _banner(relay, "127.0.0.1").startswith("554 5.7.1")


def test_allow_list_holds_without_the_firewalls(relay, outsider):
    """With the nftables table removed and the unit's IP filter lifted, the outsider reaches
    the intake and still gets 554 at connect; nothing is queued."""
    had_table = _firewall_table(relay)
    try:
        if had_table:
            relay.check_output("nft delete table inet bulkrelay")
        relay.check_output("systemctl set-property --runtime bulkrelay-sender.service IPAddressDeny=")
        result, _ = _swaks(outsider, RELAY_V4, timeout=5)
        assert "554 5.7.1" in result.stdout, result.stdout + result.stderr
        assert _queued_as(result.stdout) is None
    finally:
        relay.check_output("systemctl revert bulkrelay-sender.service && systemctl daemon-reload")
        relay.check_output("systemctl restart bulkrelay-sender.service")
        if had_table:
            relay.check_output("systemctl restart bulkrelay-firewall.service")
            assert _firewall_table(relay)
    assert _banner(outsider, RELAY_V4) == ""


def _wait_for(host, path, seconds=20):
    for _ in range(seconds * 2):
        if host.file(path).exists:
            return True
        time.sleep(0.5)
    return False


def test_hot_folder_done_and_rejected(relay):
    tag = uuid.uuid4().hex[:12]
    good = (
        f"From: Billing <billing@example.test>\\nTo: bob@customer.test\\nSubject: hot {tag}\\n"
        f"Message-ID: <hot-{tag}@example.test>\\n\\nInvoice attached.\\n"
    )
    bad = f"To: bob@customer.test\\nSubject: no sender {tag}\\n\\nbody\\n"
    for name, text in ((f"good-{tag}.eml", good), (f"bad-{tag}.eml", bad)):
        relay.check_output(f"printf '{text}' > {HOT}/tmp/{name} && mv {HOT}/tmp/{name} {HOT}/incoming/{name}")
    assert _wait_for(relay, f"{HOT}/done/good-{tag}.eml")
    assert _wait_for(relay, f"{HOT}/rejected/bad-{tag}.eml.reason")
    reason = relay.file(f"{HOT}/rejected/bad-{tag}.eml.reason").content_string
    assert "no From:" in reason
    assert relay.file(f"{HOT}/rejected/bad-{tag}.eml").exists
    assert not relay.file(f"{HOT}/incoming/good-{tag}.eml").exists
    listed = json.loads(relay.check_output(f"{AS_SENDER} queue list --limit 1000 --json"))
    assert any(r["address"] == "bob@customer.test" for r in listed)


def test_cli_send_and_header_injection(relay):
    ok = relay.run(
        f"{AS_SENDER} send --from billing@example.test --to carol@customer.test --subject 'Invoice 12' "
        "--body 'Attached.' --attach /etc/hostname"
    )
    assert ok.rc == 0 and "queued as message" in ok.stdout, ok.stderr
    bad = relay.run(
        f"{AS_SENDER} send --from billing@example.test --to carol@customer.test "
        "--subject \"$(printf 'Hi\\r\\nBcc: victim@customer.test')\" --body x"
    )
    assert bad.rc == 2 and "header injection is refused" in bad.stderr and "Traceback" not in bad.stderr


def test_intake_survives_restart(relay, app):
    relay.check_output("systemctl restart bulkrelay-sender")
    for _ in range(20):
        if relay.socket(f"tcp://0.0.0.0:{PORT}").is_listening:
            break
        time.sleep(0.5)
    result, _ = _swaks(app, RELAY_APPS_V4)
    assert _queued_as(result.stdout), result.stdout


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"bulkrelay_app_tcp_ports": []}, "Add 2525 to bulkrelay_app_tcp_ports"),
        # sender.toml's rules are judged by `bulkrelay config check`: its messages name the key and the fix
        ({"bulkrelay_sender_intake_addresses": ["relay.example.test"]}, 'not IP:port; write "127.0.0.1:2525'),
        ({"relay_sender__intake_users": [{"user": "app1", "hash": "x"}]}, "AUTH is offered over TLS only"),
        ({"relay_sender__batch_size": "many"}, "relay_sender__batch_size"),
        (
            {"relay_sender__fixed_packages": {"python3-aiosmtpd": "1.4.3-1.1+deb12u9"}},
            "python3-aiosmtpd 1.4.3-1.1+deb12u1 is older than 1.4.3-1.1+deb12u9",
        ),
    ],
)
def test_wrong_settings_fail_before_any_change(relay, tmp_path, extra, words):
    """playbooks/sender.yml refuses bad settings with a message naming the variable and the fix."""
    before = relay.check_output("sha256sum /etc/bulkrelay/sender.toml")
    # the scenario's inventory: the relay over docker, with the lab group_vars/host_vars
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    relays:\n      hosts:\n        br-sender-relay:\n"
        "          ansible_connection: community.docker.docker\n"
    )
    for sub in ("group_vars", "host_vars"):
        (tmp_path / sub).symlink_to(PROJECT / "molecule" / "inventory" / sub)
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    playbook = str(PROJECT / "playbooks" / "sender.yml")
    result = subprocess.run(
        ["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), "-e", json.dumps(extra), playbook],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT,
        check=False,
        timeout=300,
    )
    output = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-2000:]
    assert words in output, output[-2000:]
    assert "changed=0" in output
    assert relay.check_output("sha256sum /etc/bulkrelay/sender.toml") == before


SMUGGLE = r"""
import socket, sys
payload = {"lf-dot-crlf": b"\n.\r\n", "cr-dot-crlf": b"\r.\r\n", "lf-dot-lf": b"\n.\n"}[sys.argv[1]]
tag = sys.argv[2].encode()
s = socket.create_connection(("203.0.113.205", 2525), timeout=20)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline()
        lines.append(line.decode().strip())
        if not line or line[3:4] != b"-":
            return " | ".join(lines)
out = [reply()]
commands = (b"EHLO app.example.test", b"MAIL FROM:<billing@example.test>", b"RCPT TO:<alice@customer.test>")
for cmd in (*commands, b"DATA"):
    s.sendall(cmd + b"\r\n")
    out.append(reply())
s.sendall(b"From: billing@example.test\r\nTo: alice@customer.test\r\nSubject: real " + tag + b"\r\n\r\nhello"
          + payload + b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim-" + tag
          + b"@customer.test>\r\nDATA\r\nFrom: ceo@example.test\r\nSubject: forged\r\n\r\npay now\r\n.\r\n")
out.append(reply())
s.sendall(b"QUIT\r\n")
out.append(reply())
print("\n".join(out))
"""


@pytest.mark.parametrize("payload", ["lf-dot-crlf", "cr-dot-crlf", "lf-dot-lf"])
def test_smtp_smuggling_never_queues_a_second_message(relay, app, payload):
    """CVE-2024-27305 against the relay's intake as installed: Debian's python3-aiosmtpd with the
    fix runs the session, the intake's own read_data reads DATA (only CRLF "." CRLF ends it)."""
    assert relay.check_output("dpkg-query -W -f '${Version}' python3-aiosmtpd") == "1.4.3-1.1+deb12u1"
    tag = uuid.uuid4().hex[:10]
    result = app.run(f"python3 -c {shlex.quote(SMUGGLE)} {payload} {tag}")
    assert result.rc == 0, result.stderr
    replies = result.stdout.strip().splitlines()
    # greeting, EHLO, MAIL, RCPT, DATA, the one end-of-data reply, QUIT: nothing for the smuggled commands
    assert len(replies) == 7 and replies[-1].startswith("221"), replies
    listed = json.loads(relay.check_output(f"{AS_SENDER} queue list --limit 100000 --json"))
    assert not any(r["address"] == f"victim-{tag}@customer.test" for r in listed)


def test_from_outside_the_sending_domains_is_refused(relay, app):
    """bulkrelay_sending_domains is [example.test]: the relay would DKIM-sign anything else."""
    result, _ = _swaks(app, RELAY_APPS_V4, "--header", "'From: CEO <ceo@bank.example>'")
    assert (
        "550 5.7.1 the From: address is not in a sending domain of this relay (example.test)" in result.stdout
    )
    assert _queued_as(result.stdout) is None
    tag = uuid.uuid4().hex[:12]
    text = f"From: ceo@bank.example\\nTo: bob@customer.test\\nSubject: foreign {tag}\\n\\nbody\\n"
    name = f"foreign-{tag}.eml"
    relay.check_output(f"printf '{text}' > {HOT}/tmp/{name} && mv {HOT}/tmp/{name} {HOT}/incoming/{name}")
    assert _wait_for(relay, f"{HOT}/rejected/{name}.reason")
    reason = relay.file(f"{HOT}/rejected/{name}.reason").content_string
    assert "not in a sending domain of this relay (example.test)" in reason and "bank.example" not in reason


def test_8bit_subject_is_encoded_and_postfix_takes_it(relay, app):
    """RFC 2047, not SMTPUTF8: the stored message is ASCII in its headers, the repair is logged,
    and the relay's Postfix accepts it as the sender hands it over."""
    tag = uuid.uuid4().hex[:12]
    cmd = (
        f"swaks --server {RELAY_APPS_V4} --port {PORT} --from billing@example.test --to alice@customer.test "
        f"--header 'Subject: Rechnung für Köln {tag}' --header 'Message-Id: <{tag}@example.test>'"
    )
    result = app.run(cmd)
    message_id = _queued_as(result.stdout)
    assert message_id, result.stdout
    shown = relay.check_output(f"{AS_SENDER} queue show {message_id} --body")
    head = re.split(r"\r?\n\r?\n", shown[shown.index("Received: ") :], maxsplit=1)[0]
    assert head.isascii() and "Subject: =?utf-8?" in head, head
    assert (
        relay.run(f"journalctl -u bulkrelay-sender --no-pager | grep -q 'message={message_id} .*RFC 2047'").rc
        == 0
    )
    handover = (
        "import smtplib, subprocess, sys\n"
        "cmd = ['runuser', '-u', 'bulkrelay', '--', '/usr/local/bin/bulkrelay', 'queue', 'show']\n"
        f"raw = subprocess.run([*cmd, '{message_id}', '--body'], capture_output=True, check=True).stdout\n"
        "raw = raw[raw.index(b'Received: '):]  # the message, without the summary lines above it\n"
        "with smtplib.SMTP('127.0.0.1', 25, timeout=30) as s:\n"
        "    print(s.sendmail('billing@example.test', ['alice@customer.test'], raw))\n"
    )
    sent = relay.run(f"python3 -c {shlex.quote(handover)}")
    assert sent.rc == 0 and sent.stdout.strip() == "{}", sent.stdout + sent.stderr
