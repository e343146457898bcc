"""Shared plumbing for the benchmarks: throwaway servers, the sender service, figures and verdicts.

Everything runs on loopback (127.0.0.0/8) with throwaway instances started here and stopped by
the context managers, so a benchmark never leaves a daemon behind and never touches the
network beyond this machine. Every figure that decides a verdict is a ratio against a baseline
measured in the same run; absolute numbers are printed for the record only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # support.py: the helpers the tests use too
from support import free_port, write_sender_toml  # noqa: E402, F401 (free_port: c.free_port in the benchmarks)

VENV_BIN = ROOT / ".venv" / "bin"
BULKRELAY = str(VENV_BIN / "bulkrelay") if (VENV_BIN / "bulkrelay").exists() else "bulkrelay"
WORK = Path(os.environ.get("BENCH_WORK") or Path(tempfile.gettempdir()) / "bulkrelay-bench")
RESULTS = Path(os.environ.get("BENCH_RESULTS", str(ROOT / "build" / "bench")))
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
FROM = "billing@example.test"
TO = "customer@customer.test"


class BenchError(Exception):
    """A benchmark could not run (missing tool, server did not start): printed, exit 2."""


def need(path: str, package: str) -> None:
    if not (shutil.which(path) or os.path.exists(path)):
        raise BenchError(
            f"{path} not found: install the Debian package {package} (apt-get install {package})"
        )


def wait_port(host: str, port: int, timeout: float = 10.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on {host}:{port} within {timeout:g}s")


def byte_compile() -> None:
    """Compile the package's bytecode, as pip does when the role installs the wheel on a relay:
    the tree here runs with PYTHONDONTWRITEBYTECODE (Makefile), so without this every timed
    process start would compile bulkrelay's sources again - a cost no relay pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "sender" / "src")], check=True)


def workdir(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --- messages ----------------------------------------------------------------------------------


def _pdf(size: int, seed: int = 7) -> bytes:
    """A small but well-formed PDF whose content stream pads it to about ``size`` bytes."""
    rng = random.Random(seed)  # noqa: S311 (filler bytes, not a secret)
    stream = bytes(rng.getrandbits(8) for _ in range(max(size - 600, 0)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def make_message(kind: str) -> bytes:
    """``small``: a 5 KB text notice; ``pdf``: about 200 KB with a PDF invoice attached."""
    msg = EmailMessage()
    msg["From"] = f"Example Billing <{FROM}>"
    msg["To"] = TO
    msg["Subject"] = "Your invoice 2026-000123"
    msg["Date"] = "Fri, 27 Nov 2026 12:00:00 +0000"
    msg["Message-ID"] = "<bench-0001@example.test>"
    line = "Thank you for your order. This notice lists what you bought and what you owe us.\n"
    if kind == "small":
        text = line * (5 * 1024 // len(line))
        msg.set_content(text)
    elif kind == "pdf":
        msg.set_content(line * 20)
        # 200 KB on the wire: base64 grows the PDF by 4/3.
        msg.add_attachment(_pdf(146 * 1024), maintype="application", subtype="pdf", filename="invoice.pdf")
    else:
        raise ValueError(kind)
    return msg.as_bytes().replace(b"\r\n", b"\n")


def write_message(directory: Path, kind: str) -> Path:
    path = directory / f"{kind}.eml"
    path.write_bytes(make_message(kind))
    return path


# --- throwaway servers -------------------------------------------------------------------------


@contextlib.contextmanager
def smtp_sink(port: int, *, pipelining: bool = True) -> Iterator[subprocess.Popen]:
    """Postfix's smtp-sink on 127.0.0.1:port (discards everything, announces PIPELINING)."""
    need(SMTP_SINK, "postfix")
    argv = [SMTP_SINK, "-u", "nobody"]
    if not pipelining:
        argv.append("-p")
    argv += [f"127.0.0.1:{port}", "256"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, what="smtp-sink")
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


MAIN_CF = """\
# managed by bulkrelay bench: a throwaway Postfix on loopback, removed after the run
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
myhostname = bench-postfix.localhost
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_forbid_bare_newline = normalize
smtpd_forbid_bare_newline_exclusions = $mynetworks
default_transport = {transport}
relay_transport = {transport}
maillog_file = {dir}/postfix.log
maillog_file_prefixes = {dir}
syslog_name = postfix-bench
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
message_size_limit = 26214400
"""


@contextlib.contextmanager
def postfix(directory: Path, port: int, *, transport: str = "discard:") -> Iterator[Path]:
    """A real Postfix (master, smtpd, cleanup, qmgr) with its own config and queue directory.

    smtpd listens on 127.0.0.1:port and writes every message into its queue (fsync'ed, as on
    the relay); ``transport`` then takes it out again (``discard:`` by default, or
    ``smtp:[127.0.0.1]:PORT`` to relay into a sink).
    """
    need("/usr/sbin/postfix", "postfix")
    etc = directory / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (directory / "queue").mkdir(exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    (etc / "main.cf").write_text(MAIN_CF.format(dir=directory, transport=transport))
    lines = []
    for raw in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = raw.split()
        if raw.startswith(("#", " ", "\t")) or len(fields) < 8:
            lines.append(raw)
            continue
        if fields[0] == "smtp" and fields[1] == "inet":
            fields[0] = f"127.0.0.1:{port}"
        fields[4] = "n"  # no chroot: the queue lives in a scratch directory
        lines.append("  ".join(fields))
    (etc / "master.cf").write_text("\n".join(lines) + "\n")
    shutil.chown(directory / "data", "postfix", "postfix")
    run = ["/usr/sbin/postfix", "-c", str(etc)]
    started = subprocess.run([*run, "start"], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        # Postfix only prints its fatal message to a terminal: ask again through script(1).
        why = subprocess.run(
            ["script", "-qc", " ".join([*run, "check"]), "/dev/null"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        raise BenchError(f"throwaway Postfix did not start: {why or started.stderr.strip() or 'no message'}")
    try:
        wait_port("127.0.0.1", port, what="Postfix smtpd")
        yield etc
    finally:
        subprocess.run([*run, "stop"], capture_output=True, check=False)
        for _ in range(50):
            if not (directory / "queue" / "pid" / "master.pid").exists():
                break
            time.sleep(0.1)


def postfix_queue_size(etc: Path) -> int:
    """Messages still in the throwaway Postfix's queue (incoming+active+deferred+maildrop)."""
    queue = Path(
        subprocess.run(
            ["/usr/sbin/postconf", "-c", str(etc), "-h", "queue_directory"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    total = 0
    for sub in ("maildrop", "incoming", "active", "deferred"):
        for _root, _dirs, files in os.walk(queue / sub):
            total += len(files)
    return total


# --- the sender service ------------------------------------------------------------------------


def sender_config(directory: Path, *, submit_port: int, connections: int = 1, batch_size: int = 1000,
                  interval: float = 0.001, per_domain: dict[str, int] | None = None,
                  intake: str = "", metrics: str = "") -> Path:  # fmt: skip
    """Write a sender.toml for a benchmark run (no VERP); returns its path."""
    return write_sender_toml(
        directory,
        submit_port,
        queue_file="queue.sqlite",
        connections=connections,
        timeout=30,
        helo="relay.example.test",
        batch_size=batch_size,
        interval=interval,
        per_domain=per_domain,
        bounce_domain="",
        metrics=metrics,
        intake=intake,
    )


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([BULKRELAY, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"bulkrelay {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Service:
    """``bulkrelay serve`` as a child process; logs go to ``service.log`` in its directory."""

    def __init__(self, config: Path, log_level: str = "INFO"):
        self.config = config
        self.log_path = config.parent / "service.log"
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [BULKRELAY, "serve", "--config", str(self.config), "--log-level", self.log_level],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "event=started" in self.log_path.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise BenchError(f"bulkrelay serve exited at start; see {self.log_path}")
            time.sleep(0.05)
        raise BenchError(f"bulkrelay serve did not start within 20s; see {self.log_path}")

    def rss_peak_kib(self) -> int:
        """VmHWM (peak resident set) of the service process, KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, n FROM state_counts").fetchall())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}")


def smtp_source(port: int, message: Path, *, count: int, sessions: int) -> float:
    """Run Postfix's smtp-source (reusing connections, -d); returns wall seconds.

    Each recipient address is its own (-N: a sequence number before ``TO``), as in the
    sender's queue and in a month-end run. With one address for every message, a Postfix
    receiver answers each from its address caches (smtp-source(1): "the artificial 100% hit
    rate in the resolve and rewrite client caches"): the baseline's Postfix would skip work
    that the Postfix receiving the sender's drain does for every message."""
    need(SMTP_SOURCE, "postfix")
    argv = [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(count), "-F", str(message),
            "-f", FROM, "-t", TO, "-N", "-M", "app.example.test", f"127.0.0.1:{port}"]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(
            f"smtp-source failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[:300]}"
        )
    return elapsed


# --- figures -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def round_args(doc: str, rounds: int, rounds_help: str) -> argparse.Namespace:
    """The command line of a benchmark that alternates rounds: --rounds (the figures are their
    median) and --quick (a tenth of the messages, a smoke test)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages (smoke test)")
    return parser.parse_args()


class Report:
    """Collects figures and verdicts, prints them as they come, saves JSON at the end."""

    def __init__(self, name: str, title: str):
        self.name = name
        self.data: dict[str, Any] = {
            "benchmark": name,
            "title": title,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "figures": {},
            "verdicts": [],
        }
        print(f"== {name}: {title}", flush=True)

    def figure(self, key: str, value: float, unit: str, note: str = "") -> None:
        self.data["figures"][key] = {"value": value, "unit": unit, "note": note}
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        print(f"   {key:<52} {shown:>14} {unit}{'  (' + note + ')' if note else ''}", flush=True)

    def verdict(self, key: str, value: float, op: str, target: float, what: str) -> bool:
        ok = value >= target if op == ">=" else value <= target
        self.data["verdicts"].append(
            {"key": key, "value": round(value, 4), "op": op, "target": target, "ok": ok, "what": what}
        )
        print(f"   {'PASS' if ok else 'MISS'} {key}: {value:.3f} {op} {target:g}  ({what})", flush=True)
        return ok

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2) + "\n")
        return path


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_at_start": [round(x, 2) for x in load],
    }


def main(run: Callable[[], int]) -> None:
    """Run a benchmark's body; a BenchError is one line on stderr and exit 2."""
    try:
        sys.exit(run())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
