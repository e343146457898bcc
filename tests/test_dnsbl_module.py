"""library/bulkrelay_dnsbl.py run by ansible against a real UDP DNS server on loopback that
serves test blacklist zones: listed -> fails naming list and reason; clean -> ok; a dead list ->
UNKNOWN; check mode gives the same; never `changed`."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

ROOT = Path(__file__).resolve().parent.parent
ZONE = {
    "2.0.0.127.bl.test.": ("127.0.0.2", "RFC 5782 test point"),
    "25.100.51.198.bl.test.": ("127.0.0.2", "Listed for spam trap hits"),
    "*.dead.test.": ("127.0.0.2", "everything is listed"),
}


class TinyRbl:
    """A one-thread UDP DNS server answering A/TXT from ZONE, NXDOMAIN otherwise."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def lookup(self, name):
        if name in ZONE:
            return ZONE[name]
        parent = "*." + name.split(".", 4)[-1] if name.count(".") > 4 else None  # 4 reversed octets
        return ZONE.get(parent)

    def serve(self):
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            question = query.question[0]
            response = dns.message.make_response(query)
            entry = self.lookup(question.name.to_text().lower())
            if entry is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                rdtype = dns.rdatatype.to_text(question.rdtype)
                value = entry[0] if rdtype == "A" else f'"{entry[1]}"'
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", rdtype, value))
            self.sock.sendto(response.to_wire(), peer)


@pytest.fixture(scope="module")
def ns():
    server = TinyRbl()
    yield f"127.0.0.1:{server.port}"
    server.sock.close()


def run(args, check=False):
    env = dict(
        os.environ, ANSIBLE_LIBRARY=str(ROOT / "library"), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"
    )
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.builtin.json"  # no profile_tasks line before the JSON
    env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
    cmd = [
        "ansible",
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        "bulkrelay_dnsbl",
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    ansible = Path(sys.executable).parent / "ansible"
    proc = subprocess.run(
        [str(ansible), *cmd[1:]], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    data = json.loads(proc.stdout)
    return next(iter(data["plays"][0]["tasks"][0]["hosts"].values()))


@pytest.mark.parametrize("check", [False, True])
def test_listed_fails_naming_list_and_reason(ns, check):
    res = run({"ips": ["198.51.100.25"], "nameservers": [ns], "lists": [{"zone": "bl.test"}]}, check)
    assert res["failed"] and not res["changed"]
    assert res["status"] == "CRITICAL"
    assert "198.51.100.25 listed on bl.test (127.0.0.2: Listed for spam trap hits)" in res["msg"]
    assert "request removal" in res["msg"]


@pytest.mark.parametrize("check", [False, True])
def test_clean_passes(ns, check):
    res = run({"ips": ["198.51.100.26"], "nameservers": [ns], "lists": [{"zone": "bl.test"}]}, check)
    assert not res.get("failed") and not res["changed"]
    assert res["status"] == "OK" and res["checked"] == 1 and res["listings"] == []


def test_dead_list_is_unknown_and_fails_only_on_request(ns):
    args = {"ips": ["198.51.100.26"], "nameservers": [ns], "lists": [{"zone": "dead.test"}]}
    res = run(args)
    assert not res.get("failed") and res["status"] == "UNKNOWN" and res["listings"] == []
    assert "dead list" in res["errors"][0]["error"]
    res = run({**args, "fail_on_error": True})
    assert res["failed"] and "dead list" in res["msg"]


def test_bad_input_names_the_problem(ns):
    res = run({"ips": ["not-an-ip"], "nameservers": [ns]})
    assert res["failed"] and "neither an IP address" in res["msg"] and "Traceback" not in res["msg"]
    res = run({"ips": ["192.0.2.1"], "lists": [{"zone": "dnsbl.sorbs.net"}], "nameservers": [ns]})
    assert res["failed"] and "SORBS" in res["msg"]
