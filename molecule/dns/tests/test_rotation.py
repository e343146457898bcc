"""The DKIM rotation end to end against the lab BIND: playbooks/dkim-rotate.yml run as an
operator would, messages signed by the relay's OpenDKIM before, during and after it, each
verified by Debian's dkimpy on the BIND container with the lab BIND as its only DNS.

Runs after test_dns.py (file order): the audit tests there expect the first selector.
The rotation is done once (module fixture); the tests read what each stage left."""

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

testinfra_hosts = ["br-dns-bind"]

ROOT = Path(__file__).resolve().parents[3]
NS = "198.51.100.53"
DOMAIN = "example.test"
OLD = "lab2026"
STATE = "/etc/ansible/facts.d/bulkrelay_dkim.fact"

# dkimpy on the BIND container; its only DNS is this BIND (never a real resolver).
VERIFY = """
import base64, sys
import dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
def txt(name, timeout=5):
    try:
        answer = r.resolve(name.decode(), "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b"".join(b"".join(rd.strings) for rd in answer)
print("verified" if dkim.verify(base64.b64decode(sys.argv[1]), dnsfunc=txt) else "failed")
"""


def ansible_env():
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LIBRARY=str(ROOT / "library"))
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return env


def inventory():
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def playbook(path, *extra):
    proc = subprocess.run(
        ["ansible-playbook", "-i", inventory(), str(path), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ansible_env(),
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def rotate(*extra):
    return playbook(ROOT / "playbooks" / "dkim-rotate.yml", *extra)


def relay_json(module, args):
    """Run one module on the relay; its result."""
    env = ansible_env() | {"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"}
    proc = subprocess.run(
        ["ansible", "relay-dns", "-i", inventory(), "-m", module, "-a", args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"ansible -m {module}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    # ansible.cfg's profile_tasks prints lines before and after the JSON
    out = "\n" + proc.stdout
    data, _ = json.JSONDecoder().raw_decode(out, out.index("\n{") + 1)
    return data["plays"][0]["tasks"][0]["hosts"]["relay-dns"]


def sign(label):
    """A message signed by the relay's running OpenDKIM (the milter Postfix uses)."""
    out = relay_json("bulkrelay_milter_probe", f"mail_from=billing-{label}@{DOMAIN} helo=relay.example.test")
    assert out["state"] == "signed", out
    return out["message"].encode()


def selector_of(message):
    header = message.split(b"DKIM-Signature:", 1)[1].split(b"\r\n\r\n", 1)[0]
    return re.search(rb"(?:^|[;\s])s=([a-z0-9-]+)", header).group(1).decode()


def verifies(bind, message):
    out = bind.run("python3 -c %s %s", VERIFY, base64.b64encode(message).decode())
    assert out.rc == 0, out.stderr
    return out.stdout.strip() == "verified"


def state():
    return json.loads(base64.b64decode(relay_json("ansible.builtin.slurp", f"src={STATE}")["content"]))


def served(name):
    """What the lab BIND serves at name: 'NXDOMAIN' or the TXT strings joined."""
    response = dns.query.udp(dns.message.make_query(name, "TXT"), NS, timeout=3)
    if response.rcode() == dns.rcode.NXDOMAIN:
        return "NXDOMAIN"
    return "".join(b"".join(rd.strings).decode() for rrset in response.answer for rd in rrset)


def key_files():
    out = relay_json("ansible.builtin.find", f"paths=/etc/dkimkeys/{DOMAIN} patterns=*.private")
    return sorted(Path(f["path"]).name for f in out["files"])


@pytest.fixture(scope="module")
def rotation(host):
    """Run the rotation stage by stage; keep what each stage showed."""
    seen = {"outputs": []}
    before = sign("before")
    seen["before"] = (selector_of(before), verifies(host, before))

    # Step 1 with the record only printed: DNS does not serve it, the switch must be refused.
    rc, out = rotate("-e", "dns_records__apply=false")
    seen["outputs"].append(out)
    seen["refused"] = (rc, out, state(), key_files())
    new = seen["refused"][2]["next"]
    seen["new"] = new
    seen["new_served_when_refused"] = served(f"{new}._domainkey.{DOMAIN}.")
    during = sign("during")
    seen["during"] = (selector_of(during), verifies(host, during))

    # The same run again, now with RFC 2136: published, served, switched.
    rc, out = rotate()
    seen["outputs"].append(out)
    seen["switched"] = (rc, out, state(), key_files(), served(f"{new}._domainkey.{DOMAIN}."))
    after = sign("after")
    seen["after"] = (selector_of(after), verifies(host, after))
    seen["all_in_grace"] = [verifies(host, m) for m in (before, during, after)]

    # relay_dkim alone (site.yml) keeps the rotated selector: nothing to change in check mode.
    rc, out = playbook(ROOT / "molecule" / "dns" / "relay.yml", "--check", "--diff")
    seen["outputs"].append(out)
    seen["relay_role_again"] = (rc, out)

    # Check mode of step 3 says what it would remove and removes nothing.
    rc, out = rotate("-e", "relay_dkim__rotate_grace_days=0", "--check", "--diff")
    seen["outputs"].append(out)
    seen["check"] = (rc, out, served(f"{OLD}._domainkey.{DOMAIN}."), key_files(), state())

    # Step 3 (grace over): the old key and record go.
    rc, out = rotate("-e", "relay_dkim__rotate_grace_days=0")
    seen["outputs"].append(out)
    seen["retired"] = (rc, out, served(f"{OLD}._domainkey.{DOMAIN}."), key_files(), state())
    seen["after_retire"] = [verifies(host, m) for m in (before, after)]
    seen["signed_after_retire"] = selector_of(sign("late"))
    return seen


def test_messages_signed_before_and_during_verify_with_the_old_selector(rotation):
    assert rotation["before"] == (OLD, True)
    assert rotation["during"] == (OLD, True)


def test_switch_refused_while_dns_does_not_serve_the_new_key(rotation):
    rc, out, st, keys = rotation["refused"]
    new = rotation["new"]
    assert rc != 0
    assert "DNS does not serve the new DKIM key on every authoritative nameserver yet" in out
    assert f"still signs with {OLD}" in out
    assert f'publish TXT at {new}._domainkey.{DOMAIN}: "v=DKIM1; k=rsa; p=' in out
    for address in (NS, "2001:db8:100::53"):
        assert f"ns.example.test ({address}): fail" in out
    assert rotation["new_served_when_refused"] == "NXDOMAIN"
    # step 1 happened and was recorded: the next run continues from here
    assert st["active"] == OLD and new.startswith("bulk") and st["previous"] == ""
    assert keys == sorted([f"{OLD}.private", f"{new}.private"])


def test_switch_after_every_nameserver_serves_it(rotation):
    rc, out, st, keys, served_txt = rotation["switched"]
    new = rotation["new"]
    assert rc == 0, out[-3000:]
    assert keys == sorted([f"{OLD}.private", f"{new}.private"])
    assert st["active"] == new and st["previous"] == OLD and st["next"] == ""
    assert served_txt.startswith("v=DKIM1; k=rsa; p=")
    assert rotation["after"] == (new, True)
    assert rotation["all_in_grace"] == [True, True, True]


def test_relay_role_keeps_the_rotated_selector(rotation):
    rc, out = rotation["relay_role_again"]
    assert rc == 0, out[-3000:]
    assert "changed=0" in out, out[-3000:]


def test_check_mode_removes_nothing(rotation):
    rc, out, old_txt, keys, st = rotation["check"]
    assert rc == 0, out[-3000:]
    assert "step 3: remove the old key" in out
    # what it would do is reported: the record, the key and the state
    assert "changed: [relay-dns -> localhost] => (item=absent lab2026._domainkey.example.test. TXT)" in out
    assert '-    "previous": "lab2026",' in out
    assert old_txt.startswith("v=DKIM1;") and f"{OLD}.private" in keys and st["previous"] == OLD


def test_step_3_removes_the_old_key_and_record(rotation):
    rc, out, old_txt, keys, st = rotation["retired"]
    new = rotation["new"]
    assert rc == 0, out[-3000:]
    assert old_txt == "NXDOMAIN"
    assert keys == [f"{new}.private"]
    assert st == {"active": new, "next": "", "previous": "", "published_at": 0, "switched_at": 0}
    # the new key still verifies; the old record is really gone for a verifier
    assert rotation["after_retire"] == [False, True]
    assert rotation["signed_after_retire"] == new


def test_private_keys_never_in_the_output(rotation):
    for out in rotation["outputs"]:
        assert "PRIVATE KEY" not in out
