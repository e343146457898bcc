"""The same kill -9 drill through a real Postfix whose log the sender follows.

sender --SMTP--> throwaway Postfix on 127.0.0.1 (its own config, queue and log file)
       --relayhost--> smtp-sink, which writes one file per message.

With the Postfix log available, rows left 'submitting' by a kill are matched to the queue ids
Postfix logged for their Message-ID / VERP envelope sender, so nothing Postfix accepted is
sent again: the bound checked here is zero duplicates and zero lost. Delivery tracking is
real too: Postfix's "status=sent" lines turn every row 'delivered'.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import enqueue_invoices, sink_recipients, start_serve, start_smtp_sink
from conftest import pick_free_port as free_port

from bulkrelay.queue import Queue

POSTFIX = "/usr/sbin/postfix"
MESSAGES = 600
KILLS = 3

pytestmark = pytest.mark.skipif(
    not os.path.exists(POSTFIX) or os.geteuid() != 0, reason="needs Postfix installed and root to start it"
)

SERVICES = """\
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


def start_postfix(base: Path, port: int, sink_port: int) -> Path:
    etc = base / "etc"
    etc.mkdir()
    (base / "data").mkdir()
    shutil.chown(base / "data", "postfix", "postfix")
    services = SERVICES.replace("smtp      inet", f"127.0.0.1:{port} inet", 1)
    (etc / "master.cf").write_text(services)
    (etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
myhostname = relay.bulkrelay.test
mydomain = bulkrelay.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file = {base}/mail.log
maillog_file_prefixes = {base}
syslog_name = postfix-crashtest
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtp_dns_support_level = disabled
default_destination_concurrency_limit = 4
""")
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
        with __import__("socket").socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return etc
        time.sleep(0.1)
    raise AssertionError("throwaway Postfix did not listen: " + (base / "mail.log").read_text()[-2000:])


def counts(base: Path) -> dict:
    q = Queue(base / "q.sqlite")
    try:
        return q.counts()
    finally:
        q.close()


def test_kill_9_with_postfix_log_resolves_every_ambiguous_row(sender_config):
    base = Path(tempfile.mkdtemp(prefix="bulkrelay-pfcrash-", dir="/tmp"))
    base.chmod(0o755)
    dump = base / "dump"
    dump.mkdir()
    dump.chmod(0o777)
    port, sink_port = free_port(), free_port()
    sink = start_smtp_sink(sink_port, dump)
    etc = None
    try:
        etc = start_postfix(base, port, sink_port)
        config = sender_config(port, directory=base, timeout=20, batch_size=200, interval=0.25)
        expected = enqueue_invoices(base / "q.sqlite", MESSAGES)

        in_flight = []
        for kill in range(KILLS):
            proc = start_serve(config, base / "service.log")
            target = (kill + 1) * MESSAGES // (KILLS + 1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                c = counts(base)
                if c["submitted"] + c["delivered"] >= target:
                    break
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            in_flight.append(counts(base)["submitting"])
            time.sleep(0.5)  # like systemd's RestartSec: Postfix's log lines reach the file

        proc = start_serve(config, base / "service.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            c = counts(base)
            if c["delivered"] == MESSAGES:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        final = counts(base)
        got = Counter(sink_recipients(dump))
        service_log = (base / "service.log").read_text()
    finally:
        if etc is not None:
            subprocess.run([POSTFIX, "-c", str(etc), "stop"], capture_output=True, check=False, timeout=60)
        sink.terminate()
        sink.wait()
        shutil.rmtree(base, ignore_errors=True)

    assert sum(in_flight) > 0, "no kill hit a batch in flight: the drill proved nothing"
    lost = set(expected) - set(got)
    duplicates = sum(n - 1 for n in got.values())
    assert not lost, f"{len(lost)} lost, e.g. {sorted(lost)[:5]}"
    assert duplicates == 0, f"{duplicates} duplicates; in flight at kills: {in_flight}"
    # every recipient's result came from Postfix's own log
    assert final["delivered"] == MESSAGES, final
    found = sum(int(n) for n in re.findall(r"ambiguous_found=(\d+)", service_log))
    print(f"in_flight_at_kill={in_flight} resolved_from_log={found} duplicates=0 lost=0")
