"""Shared test helpers. Test modules never import each other; they use these (as fixtures,
or, where a list of cases is needed while collecting, as functions imported from here).

The SMTP receiver is aiosmtpd on 127.0.0.1 (a real SMTP server, no mocks). It can advertise
PIPELINING or not (aiosmtpd reads pipelined commands either way, it only does not announce the
extension) and can hold back its 220 greeting, which is what makes connections of one batch
come up in a different order than they were opened. A throwaway Postfix (``start_postfix``, as
root) runs with its own config, queue and log on 127.0.0.1. Corpora from other projects
(flufl.bounce's bounces, the RFC 7208 suite) are fetched from PyPI at test time, never copied
into the tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from support import VERP_KEY, write_sender_toml
from support import free_port as pick_free_port

from bulkrelay.intake import GroupCommitter, start_intake
from bulkrelay.queue import Queue

PROJECT = Path(__file__).resolve().parent.parent
KEY = VERP_KEY  # the VERP key of every sender.toml written here
RAW = b"From: billing@example.test\r\nSubject: Invoice\r\n\r\nLine one\r\n.leading dot\r\n"


def pytest_configure(config):
    """``BULKRELAY_EVENT_LOOP=uvloop``: the tests' own event loops are uvloop's as well (the
    `bulkrelay serve` children read the same variable), so the suite shows the code works on it."""
    if os.environ.get("BULKRELAY_EVENT_LOOP") == "uvloop":
        import uvloop  # noqa: PLC0415 - only in this mode

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def sink_user() -> list[str]:
    """smtp-sink refuses to run as root without -u."""
    return ["-u", "nobody"] if os.geteuid() == 0 else []


def start_smtp_sink(port: int, dump: Path) -> subprocess.Popen:
    """Postfix's smtp-sink on 127.0.0.1:``port``, writing each transaction to a file in ``dump``
    (it drops to "nobody": ``dump`` must be writable for that user)."""
    return subprocess.Popen(
        ["/usr/sbin/smtp-sink", *sink_user(), "-d", f"{dump}/%H%M%S.", f"127.0.0.1:{port}", "64"]
    )


def sink_recipients(dump: Path) -> list[str]:
    """Recipients of every message smtp-sink wrote to ``dump`` (one file per transaction)."""
    out = []
    for f in Path(dump).iterdir():
        m = re.search(rb"^X-Rcpt-Args: <([^>]+)>", f.read_bytes()[:4096], re.M)
        if m:
            out.append(m.group(1).decode())
    return out


POSTFIX = "/usr/sbin/postfix"
needs_postfix = pytest.mark.skipif(
    not os.path.exists(POSTFIX) or os.geteuid() != 0, reason="needs Postfix installed and root to start it"
)

POSTFIX_SERVICES = """\
smtp      inet  n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def start_postfix(base: Path, port: int, sink_port: int | None = None, main_cf: str = "") -> Path:
    """A throwaway Postfix under ``base`` (its own config in base/etc, queue, and log file
    base/mail.log) with smtpd on 127.0.0.1:``port``, relaying all mail to smtp-sink on
    ``sink_port`` when given; ``main_cf``: more main.cf lines. Returns the config directory
    (for ``postfix -c``, ``postcat -c`` and :func:`stop_postfix`)."""
    etc = base / "etc"
    etc.mkdir()
    (base / "data").mkdir()
    shutil.chown(base / "data", "postfix", "postfix")
    services = POSTFIX_SERVICES.replace("smtp      inet", f"127.0.0.1:{port} inet", 1)
    (etc / "master.cf").write_text(services)
    (etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
myhostname = relay.bulkrelay.test
mydomain = bulkrelay.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = {f"[127.0.0.1]:{sink_port}" if sink_port else ""}
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file = {base}/mail.log
maillog_file_prefixes = {base}
syslog_name = postfix-test
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtp_dns_support_level = disabled
default_destination_concurrency_limit = 4
{main_cf}""")
    (base / "queue").mkdir()
    started = subprocess.run([POSTFIX, "-c", str(etc), "start"], capture_output=True, check=False, timeout=60)
    if started.returncode:
        # postfix prints its fatal reason only to a terminal; script(1) provides one
        why = subprocess.run(
            ["script", "-qc", f"{POSTFIX} -c {etc} check", "/dev/null"],
            capture_output=True,
            text=True,
            check=False,
        )
        raise AssertionError(f"throwaway Postfix did not start: {why.stdout.strip()}")
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return etc
        time.sleep(0.1)
    raise AssertionError("throwaway Postfix did not listen: " + (base / "mail.log").read_text()[-2000:])


def stop_postfix(etc: Path) -> None:
    subprocess.run([POSTFIX, "-c", str(etc), "stop"], capture_output=True, check=False, timeout=60)


def start_serve(config: Path, log: Path) -> subprocess.Popen:
    """``bulkrelay serve`` (the venv's) with ``config``, its output appended to ``log``."""
    bulkrelay = Path(sys.executable).parent / "bulkrelay"
    out = open(log, "ab")  # noqa: SIM115 - the child writes to it until it is killed
    return subprocess.Popen([str(bulkrelay), "serve", "--config", str(config)], stdout=out, stderr=out)


def enqueue_invoices(path: Path, count: int) -> list[str]:
    """``count`` one-recipient invoices (to c0@customer.test, c1@... ) in the queue at ``path``;
    returns their recipients."""
    queue = Queue(path)
    expected = [f"c{i}@customer.test" for i in range(count)]
    for i, rcpt in enumerate(expected):
        raw = f"From: billing@example.test\r\nSubject: Invoice {i}\r\n\r\nInvoice {i}\r\n".encode()
        queue.enqueue(raw, "billing@example.test", [rcpt], source="test")
    queue.close()
    return expected


def queued(queue: Queue, address: str) -> int:
    """Recipient id of one message to ``address``, queued."""
    message = queue.enqueue(RAW, "billing@example.test", [address], source="test")
    return queue.message(message)["recipients"][0]["id"]


def submitted(queue: Queue, recipients: list[str], qids: list[str]) -> list[int]:
    """Recipient ids of one message to ``recipients``, taken and marked submitted, each with its
    Postfix queue id from ``qids``."""
    queue.enqueue(RAW, "billing@example.test", recipients, source="t")
    rows = queue.take(len(recipients), now=time.time())
    for row, qid in zip(rows, qids, strict=True):
        queue.mark_submitted(row["id"], f"250 2.0.0 Ok: queued as {qid}")
    return [row["id"] for row in rows]


def submitting(queue: Queue, address: str) -> int:
    """Recipient id of one message to ``address`` taken for submission, its Postfix queue id not
    known yet (the state a crash leaves), envelope bounces+r1-x@bounce.example.test."""
    queue.enqueue(RAW, "billing@example.test", [address], source="t")
    (row,) = queue.take(1, now=time.time(), envelope=lambda r: "bounces+r1-x@bounce.example.test")
    return row["id"]


@pytest.fixture
def clock() -> Callable[[], float]:
    """The queue fixture's clock: the real one, unless the test module has its own."""
    return time.time


@pytest.fixture
def queue(tmp_path, clock):
    """A queue in tmp_path on the test module's ``clock`` fixture (its injected time)."""
    q = Queue(tmp_path / "q.sqlite", clock=clock)
    yield q
    q.close()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a currently unused TCP port on 127.0.0.1."""
    return pick_free_port


class IntakeServer:
    """An intake running in its own event-loop thread, as `bulkrelay serve` would run it."""

    def __init__(self, conf, open_queue):
        self.conf = conf
        self.committer = GroupCommitter(open_queue)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = asyncio.run_coroutine_threadsafe(
            start_intake(conf, self.committer.enqueue, hostname="relay.example.test"),
            self.loop,
        ).result(10)
        self.port = int(conf.intake.listen[0].rpartition(":")[2])

    def close(self):
        if not self.thread.is_alive():
            return

        async def stop():
            for s in self.servers:
                s.close()
                await s.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.committer.close()

    def client(self):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)


@pytest.fixture
def intake_server():
    """Factory: ``intake_server(conf, open_queue=None)`` runs the SMTP intake of ``conf`` in its
    own event-loop thread (as `bulkrelay serve` does); stopped after the test."""
    from bulkrelay.queue import Queue  # noqa: PLC0415

    started: list[IntakeServer] = []

    def start(conf, open_queue=None) -> IntakeServer:
        server = IntakeServer(conf, open_queue or (lambda: Queue(conf.queue.path)))
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


class LoopbackDns:
    """A real UDP DNS server on loopback answering from a table, to test the live Resolver:
    (name., TYPE) -> a record in zone-file form, a list of them, "nxdomain" (also every name not
    in the table), "nodata", "servfail" or "drop" (no answer: the query times out)."""

    def __init__(self, table):
        self.table = table
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self.peers = set()  # the (address, port) questions came from
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            q = query.question[0]
            self.seen.append(q.name.to_text())
            self.peers.add(peer)
            action = self.table.get((q.name.to_text(), dns.rdatatype.to_text(q.rdtype)), "nxdomain")
            if action == "drop":
                continue
            resp = dns.message.make_response(query)
            if action == "nxdomain":
                resp.set_rcode(dns.rcode.NXDOMAIN)
            elif action == "servfail":
                resp.set_rcode(dns.rcode.SERVFAIL)
            elif action != "nodata":  # one record, or a list of records of the RRset
                records = action if isinstance(action, list) else [action]
                resp.answer.append(dns.rrset.from_text(q.name, 300, "IN", q.rdtype, *records))
            self.sock.sendto(resp.to_wire(), peer)

    def close(self):
        self.sock.close()


def run_module(
    module: str, args: dict, check: bool = False, diff: bool = False, library: str = "library"
) -> dict:
    """The result of one of the project's modules (in ``library``, a folder of the project) run by
    ``ansible -m`` on localhost, with the venv's python (the modules import bulkrelay);
    ``check``: in check mode, ``diff``: with --diff."""
    env = dict(
        os.environ,
        ANSIBLE_LIBRARY=str(PROJECT / library),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.json",  # no profile_tasks line before the JSON
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    ansible = Path(sys.executable).parent / "ansible"
    cmd = [str(ansible), "localhost", "-i", "localhost,", "-c", "local", "-m", module, "-a", json.dumps(args)]
    cmd += ["--check"] * check + ["--diff"] * diff
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT, env=env, check=False)
    data = json.loads(proc.stdout)
    return next(iter(data["plays"][0]["tasks"][0]["hosts"].values()))


@pytest.fixture(scope="module")
def ns(request) -> str:
    """``127.0.0.1:port`` of a LoopbackDns answering from the test module's ``DNS_TABLE``."""
    server = LoopbackDns(request.module.DNS_TABLE)
    yield f"127.0.0.1:{server.port}"
    server.close()


class FakeDns:
    """A DNSBL checker's transport (bulkrelay.dnsbl.lookup.Transport) answering from a table:
    answers: name -> {"A": [...], "TXT": [...]} | "NXDOMAIN" | "SERVFAIL" | "REFUSED" | "TIMEOUT".
    Names absent from the table are NXDOMAIN. `asked` records every question."""

    def __init__(self, answers):
        self.answers = {k.lower(): v for k, v in answers.items()}
        self.asked = []

    async def __call__(self, query, server, timeout):
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.asked.append((name, rdtype, str(server)))
        entry = self.answers.get(name, "NXDOMAIN")
        response = dns.message.make_response(query)
        if entry == "TIMEOUT":
            await asyncio.sleep(3600)
        if isinstance(entry, str):
            response.set_rcode(dns.rcode.from_text(entry))
            return response
        values = entry.get(rdtype, [])
        if values:
            if rdtype == "TXT":
                values = ['"' + v + '"' for v in values]
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, values))
        return response


class RecordingHandler:
    """Records each transaction and answers like Postfix ("queued as ...").

    Recipients whose local part starts with "tempfail" get 451, "reject" 550.
    """

    def __init__(self, *, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        self.counter = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("tempfail"):
            return "451 4.3.0 Temporary lookup failure"
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.counter += 1
            qid = f"4Q{self.counter:08X}"
            self.messages.append(
                {
                    "at": time.time(),
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "content": envelope.original_content,
                    "session": id(session),
                    "qid": qid,
                }
            )
        return f"250 2.0.0 Ok: queued as {qid}"


class _SlowGreetingSMTP(SMTP):
    def __init__(self, handler, *, greeting_delay: Callable[[], float], **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._greeting_delay = greeting_delay

    async def _handle_client(self) -> None:
        await asyncio.sleep(self._greeting_delay())
        await super()._handle_client()


class _Controller(Controller):
    def __init__(self, handler, *, greeting_delay: Callable[[], float], **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._greeting_delay = greeting_delay

    def factory(self) -> SMTP:
        return _SlowGreetingSMTP(self.handler, greeting_delay=self._greeting_delay, **self.SMTP_kwargs)


class SmtpReceiver:
    """A receiver on loopback: ``start()``, ``port``, ``messages`` (one dict per transaction),
    ``stop()``. Recipients named tempfail* get 451, reject* 550."""

    def __init__(
        self,
        port: int | None = None,
        *,
        pipelining: bool = False,
        greeting_delay: Callable[[], float] = lambda: 0.0,
    ):
        self.port = port or pick_free_port()
        self.handler = RecordingHandler(pipelining=pipelining)
        self.controller = _Controller(
            self.handler, hostname="127.0.0.1", port=self.port, greeting_delay=greeting_delay
        )

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    @property
    def messages(self) -> list[dict]:
        return self.handler.messages

    def stop(self) -> None:
        if self.controller.loop.is_running():
            self.controller.stop()


@pytest.fixture
def smtp_receiver():
    """Factory: ``smtp_receiver(pipelining=..., greeting_delay=...)`` starts a receiver on
    loopback; every receiver started is stopped after the test."""
    started: list[SmtpReceiver] = []

    def start(**kwargs) -> SmtpReceiver:
        receiver = SmtpReceiver(**kwargs).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def sender_config(tmp_path):
    """Factory: ``sender_config(submit_port, extra="")`` writes a sender.toml for `bulkrelay serve`
    under tmp_path (or ``directory``) and returns its path: loopback receiver, VERP with
    ``KEY``, file log source, metrics off unless ``metrics_port``, intake on ``intake_port``
    for 127.0.0.0/8, hot folder at ``hotfolder``. ``extra`` is TOML appended as is."""

    def write(
        submit_port: int,
        extra: str = "",
        *,
        directory: Path | None = None,
        batch_size: int = 100,
        interval: float = 2.0,
        connections: int = 2,
        timeout: float = 10,
        retry_base: float | None = None,
        metrics_port: int | None = None,
        intake_port: int | None = None,
        hotfolder: Path | None = None,
        from_domains: tuple[str, ...] = (),
    ) -> Path:
        return write_sender_toml(
            directory or tmp_path,
            submit_port,
            connections=connections,
            timeout=timeout,
            retry_base=retry_base,
            batch_size=batch_size,
            interval=interval,
            metrics=f"127.0.0.1:{metrics_port}" if metrics_port else "",
            intake=f"127.0.0.1:{intake_port}" if intake_port else "",
            from_domains=from_domains,
            hotfolder=hotfolder,
            extra=extra,
        )

    return write


@pytest.fixture
def bulkrelay_cmd() -> str:
    """Path of the `bulkrelay` command installed in the test venv."""
    return os.path.join(os.path.dirname(sys.executable), "bulkrelay")


PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q")
SDIST_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "bulkrelay-sdists"


def _norm(text: str) -> str:  # sdist file names vary: flufl.bounce-4.0, flufl_bounce-6.0.0
    return text.replace("-", "_").replace(".", "_").lower()


def fetch_sdist(requirement: str) -> Path:
    """The sdist tarball of ``requirement`` ("name==version"), downloaded from PyPI once.

    A failed download fails the test with pip's own words: a corpus that cannot be fetched
    must never turn into a silent skip. Nothing is unpacked into the tree (yamllint and ruff
    read every file below the project).
    """
    name, _, version = requirement.partition("==")
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)

    def cached() -> list[Path]:
        return [p for p in SDIST_CACHE.glob("*.tar.gz") if _norm(p.name) == _norm(f"{name}-{version}.tar.gz")]

    if cached():
        return cached()[0]
    proc = subprocess.run(
        [*PIP_DOWNLOAD, requirement, "-d", str(SDIST_CACHE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not cached():
        pytest.fail(
            f"could not fetch the {requirement} sdist from PyPI (pip download said: "
            f"{proc.stderr.strip()[-400:] or 'nothing'}); the test needs PyPI or a pip mirror"
        )
    return cached()[0]


def read_sdist(requirement: str) -> dict[str, bytes]:
    """The files of ``requirement``'s sdist by their path inside it (without the top folder)."""
    files: dict[str, bytes] = {}
    with tarfile.open(fetch_sdist(requirement)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                data = tar.extractfile(member)
                files[member.name.partition("/")[2]] = data.read() if data else b""
    return files


@pytest.fixture(scope="session")
def pypi_sdist():
    """``pypi_sdist("name==version")`` -> {path in the sdist: bytes}, fetched from PyPI at test time."""
    return read_sdist
