"""Plain helpers shared by tests/conftest.py and bench/common.py (no pytest, no aiosmtpd here,
so the benchmarks import it without the test toolchain): a free loopback port and a
sender.toml writer for `bulkrelay serve` on loopback, a webhook receiver, a raw SMTP client."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import jinja2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkrelay.webhooks import signing

VERP_KEY = b"k" * 32  # the key every test and benchmark writes to verp.key


def render_template(role: Path, template: str, values: dict, filters: dict | None = None) -> str:
    """A role's template rendered as Ansible's template module does (trim_blocks); an undefined
    variable is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(role / "templates"), trim_blocks=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(filters or {})
    return env.get_template(template).render(values)


def role_validation(role: Path, variables: dict) -> tuple[bool, str]:
    """Whether the first task of a role's tasks/validate.yml (an assert) holds for
    ``variables``, and its fail_msg on one line, both evaluated by Ansible's own templar."""
    import yaml  # noqa: PLC0415 - Ansible only for the tests that need it, not the benchmarks
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.template import Templar, trust_as_template  # noqa: PLC0415

    check = yaml.safe_load((role / "tasks" / "validate.yml").read_text())[0]
    # the task's vars are templates, as Ansible's YAML loader marks them
    variables = variables | {name: trust_as_template(v) for name, v in check["vars"].items()}
    templar = Templar(loader=DataLoader(), variables=variables)
    holds = all(
        templar.template(trust_as_template("{{ (" + condition + ") | bool }}"))
        for condition in check["ansible.builtin.assert"]["that"]
    )
    message = templar.template(trust_as_template(check["ansible.builtin.assert"]["fail_msg"]))
    return holds, " ".join(message.split())


INVOICE_BODY = 300_000  # 20 of them (6 MB) are past SQLite's automatic checkpoint (1000 pages, 4 MB)


def invoice(number: int) -> bytes:
    """A message with a ~300 KB base64-like body and the Message-ID ``<number@x.test>``."""
    head = f"From: billing@example.test\r\nTo: a@customer.test\r\nMessage-ID: <{number}@x.test>\r\n\r\n"
    return head.encode() + (b"QUJD" * 19 + b"\r\n") * (INVOICE_BODY // 78)


def wait_for_size(path: Path | str, size: int, timeout: float = 10.0) -> None:
    """Wait until the file at ``path`` is larger than ``size`` bytes (a database file that a WAL
    checkpoint on another thread is filling)."""
    deadline = time.monotonic() + timeout
    while Path(path).stat().st_size <= size:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} stayed under {size} bytes")
        time.sleep(0.01)


def free_port(host: str = "127.0.0.1") -> int:
    """A currently unused TCP port on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_sender_toml(
    directory: Path,
    submit_port: int,
    *,
    queue_file: str = "q.sqlite",
    connections: int = 2,
    timeout: float = 10,
    retry_base: float | None = None,
    helo: str = "",
    batch_size: int = 100,
    interval: float = 2.0,
    per_domain: dict[str, int] | None = None,
    bounce_domain: str = "bounce.example.test",
    metrics: str = "",
    intake: str = "",
    from_domains: tuple[str, ...] = (),
    hotfolder: Path | None = None,
    extra: str = "",
) -> Path:
    """Write ``directory/sender.toml`` and return its path.

    The queue, the Postfix log (``mail.log``, created empty) and the DNSBL state file live in
    ``directory``; the sender submits to 127.0.0.1:``submit_port``. With a ``bounce_domain``
    the envelope uses VERP with ``VERP_KEY`` (written to ``verp.key``); ``intake`` is a
    listen address for 127.0.0.0/8; ``extra`` is TOML appended as is.
    """
    (directory / "mail.log").touch()
    submit = f"connections = {connections}\ntimeout = {timeout}\n"
    if retry_base is not None:
        submit += f"retry_base = {retry_base}\n"
    if helo:
        submit += f'helo = "{helo}"\n'
    policy = f"batch_size = {batch_size}\ninterval = {interval}\n"
    if per_domain:
        policy += "per_domain = { " + ", ".join(f'"{d}" = {n}' for d, n in per_domain.items()) + " }\n"
    envelope = ""
    if bounce_domain:
        (directory / "verp.key").write_bytes(VERP_KEY)
        key = directory / "verp.key"
        envelope = f'\n[envelope]\nbounce_domain = "{bounce_domain}"\nverp_key_file = "{key}"\n'
    if intake:
        extra += f'\n[intake]\nlisten = ["{intake}"]\nallowed_networks = ["127.0.0.0/8"]\n'
        extra += f"from_domains = {json.dumps(list(from_domains))}\n"
    if hotfolder:
        extra += f'\n[hotfolder]\npath = "{hotfolder}"\n'
    path = directory / "sender.toml"
    path.write_text(
        f"""
[queue]
path = "{directory / queue_file}"

[submit]
host = "127.0.0.1"
port = {submit_port}
{submit}
[policy]
{policy}{envelope}
[tracking]
source = "file"
path = "{directory / "mail.log"}"

[dnsbl]
state_file = "{directory / "dnsbl.json"}"

[metrics]
listen = "{metrics}"
{extra}
"""
    )
    return path


class RawClient:
    """An SMTP client on a raw socket, for what smtplib would repair or refuse to send."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def reply(self):
        """One complete (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b"\n".join(lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\n".join(lines)

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1 (a real http.server in a thread), as an application runs it.

    It verifies ``X-Bulkrelay-Signature`` with ``secret`` (401 when it does not verify) and records
    every verified request's events in ``requests`` (a list of event lists). ``answer(events)``
    picks the status of a verified request (default 200); ``clock`` is the receiver's clock.
    """

    def __init__(self, secret: str, *, answer=None, clock=time.time, ssl_context=None):
        self.secret = secret
        self.answer = answer or (lambda events: 200)
        self.clock = clock
        self.requests: list[list[dict]] = []
        self.rejected: list[int] = []  # statuses of refused requests
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.headers.append(dict(self.headers))
                header = self.headers.get(signing.HEADER, "")
                if not signing.verify(receiver.secret, header, body, now=receiver.clock()):
                    status = 401
                else:
                    events = json.loads(body)["events"]
                    status = receiver.answer(events)
                    if 200 <= status < 300:
                        receiver.requests.append(events)
                if not 200 <= status < 300:
                    receiver.rejected.append(status)
                reply = f"status {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def ids(self) -> list[str]:
        """Event ids received (verified, 2xx), in arrival order."""
        return [e["id"] for events in self.requests for e in events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dkim_txt(bits: int = 2048) -> str:
    """The DKIM TXT of a fresh RSA key (``v=DKIM1; k=rsa; p=...``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
