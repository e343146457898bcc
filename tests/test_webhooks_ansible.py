"""The Ansible and lab side of the webhooks (issue 15), without containers.

- roles/relay_sender's webhooks.toml template, rendered by Ansible's own templating for 0, 1
  and 2 webhooks, is read back by the package's loader with every value intact (a secret with
  quotes, backslashes and non-ASCII survives the TOML quoting).
- The lab's receiver (molecule/lab/files/webhook_receiver.py, its own stdlib code) accepts what
  the package signs and refuses a tampered body, another key, an old timestamp and a broken
  header: two independent implementations of the documented format agree. It runs for real,
  over HTTPS, as the lab runs it.
"""

import importlib.util
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from bulkrelay.webhooks import settings, signing

PROJECT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT / "roles/relay_sender/templates/etc/bulkrelay/webhooks.toml.j2"
RECEIVER = PROJECT / "molecule/lab/files/webhook_receiver.py"
SECRET = 'lab "secret" with \\ backslash, ümlaut and = sign'


def render(tmp_path, webhooks, delivery=None):
    """webhooks.toml as the role writes it (CA files as tasks/webhooks.yml names them)."""
    ca_files = {}
    for hook in webhooks:
        if hook.get("ca_cert"):
            ca_files[hook["name"]] = str(tmp_path / f"{hook['name']}.pem")
            Path(ca_files[hook["name"]]).write_text(hook["ca_cert"])
    variables = {
        "relay_sender__user": "bulkrelay",
        "relay_sender__webhooks": webhooks,
        "relay_sender__webhooks_delivery": delivery or {},
        "relay_sender__webhook_ca_files": ca_files,
    }
    templar = Templar(loader=DataLoader(), variables=variables)
    # as the template action renders a file: trusted text, trim_blocks on, backslashes kept
    text = templar.template(
        trust_as_template(TEMPLATE.read_text()), escape_backslashes=False, overrides={"trim_blocks": True}
    )
    path = tmp_path / "webhooks.toml"
    path.write_text(text)
    return settings.load(path)


def test_no_webhooks_renders_a_valid_empty_file(tmp_path):
    assert render(tmp_path, []) == settings.Settings()


def test_one_webhook_keeps_its_secret_filter_and_ca(tmp_path):
    url = "https://erp.example.test/e"
    hook = {"name": "erp", "url": url, "secret": SECRET, "events": ["bounced"], "ca_cert": "PEM"}
    loaded = render(tmp_path, [hook], delivery={"retry_max": 10, "timeout": 2.5})
    (read,) = loaded.webhooks
    assert (read.name, read.url, read.secret, read.events) == ("erp", url, SECRET, ("bounced",))
    assert read.ca_file == str(tmp_path / "erp.pem")
    assert (loaded.delivery.retry_max, loaded.delivery.timeout, loaded.delivery.batch) == (10, 2.5, 100)


def test_two_webhooks_each_their_own(tmp_path):
    loaded = render(
        tmp_path,
        [
            {"name": "erp", "url": "https://erp.example.test/e", "secret": SECRET},
            {"name": "crm", "url": "https://crm.example.test/e", "secret": "x" * 16, "events": None},
        ],
    )
    assert [(w.name, w.secret, w.events, w.ca_file) for w in loaded.webhooks] == [
        ("erp", SECRET, (), ""),
        ("crm", "x" * 16, (), ""),
    ]


# --- the lab's receiver --------------------------------------------------------------------

spec = importlib.util.spec_from_file_location("webhook_receiver", RECEIVER)
receiver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(receiver)


def test_receiver_check_agrees_with_the_package_signature():
    body, now = b'{"events": []}', time.time()
    header = signing.sign(SECRET, body, now)
    ok = receiver.signature_ok
    assert ok(header, body, SECRET.encode(), now, 300)
    assert not ok(header, body + b" ", SECRET.encode(), now, 300)  # tampered body
    assert not ok(header, body, b"another key of enough length", now, 300)
    assert not ok(signing.sign(SECRET, body, now - 301), body, SECRET.encode(), now, 300)  # replayed
    assert ok(signing.sign(SECRET, body, now - 299), body, SECRET.encode(), now, 300)
    old_and_new = f"{header},v1={'0' * 64}"  # a second v1 (secret rotation): one must match
    assert ok(old_and_new, body, SECRET.encode(), now, 300)
    for broken in ("", "t=,v1=", "garbage", header.replace("t=", "t=x"), header.split(",")[0]):
        assert not ok(broken, body, SECRET.encode(), now, 300), broken


@pytest.fixture
def running_receiver(tmp_path, free_port):
    """The receiver as the lab runs it: HTTPS with a certificate from a CA made with openssl."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"]
    openssl("req", "-x509", *key, "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt")
    openssl(
        *("req", "-x509", "-CA", "ca.crt", "-CAkey", "ca.key", *key, "-subj", "/CN=localhost"),
        *("-addext", "subjectAltName=DNS:localhost", "-keyout", "server.key", "-out", "server.crt"),
    )
    (tmp_path / "secret").write_text(SECRET + "\n")
    port, out = free_port(), tmp_path / "events.jsonl"
    files = ["--cert", "server.crt", "--key", "server.key", "--secret-file", "secret", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER), "--listen", f"127.0.0.1:{port}", *files],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "listening" in process.stderr.readline()
    tls = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))

    def post(body, header):
        request = urllib.request.Request(
            f"https://localhost:{port}/events", data=body, headers={signing.HEADER: header}, method="POST"
        )
        try:
            return urllib.request.urlopen(request, context=tls, timeout=10).status
        except urllib.error.HTTPError as error:
            return error.code

    def recorded():
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    yield post, recorded
    process.terminate()
    process.wait(timeout=10)


def test_receiver_records_accepted_events_and_nothing_else(running_receiver):
    post, recorded = running_receiver
    events = [{"id": f"e{i}", "type": "delivered", "ref": f"INV-{i:05d}"} for i in range(3)]
    for batch in ([], events[:1], events[1:]):  # 0, 1 and 2 events a request
        body = json.dumps({"events": batch}).encode()
        assert post(body, signing.sign(SECRET, body, time.time())) == 200
    assert recorded() == events
    forged = json.dumps({"events": [{"id": "forged", "type": "bounced"}]}).encode()
    assert post(forged, signing.sign(SECRET, forged.replace(b"bounced", b"delivered"), time.time())) == 401
    assert post(forged, signing.sign("another key of enough length", forged, time.time())) == 401
    assert post(forged, signing.sign(SECRET, forged, time.time() - 600)) == 401
    assert post(b"not json", signing.sign(SECRET, b"not json", time.time())) == 400
    assert recorded() == events
