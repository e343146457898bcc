#!/usr/bin/env python3
"""(5) DNSBL check: 40 lists behind a 100 ms DNS delay, against the slowest query and check_rbl.

Set-up, all on loopback and stopped at the end:

- a throwaway rbldnsd on 127.0.0.152:5353 serving 40 ip4set zones ``blNN.bench.test``, each
  with the RFC 5782 test point 127.0.0.2 listed; ``--listed`` of them also list the target;
- a delay proxy on 127.0.0.153:53 (UDP): every query waits ``--delay`` (100 ms) before it is
  forwarded to rbldnsd over one socket, like a resolver in front of distant list servers. (A proxy, not
  ``tc netem``: this kernel has no netem qdisc, and on ``lo`` it would slow every other
  process on this shared machine.)

Measured, each ``--rounds`` times (median):

- slowest single query: every list's A query for the target asked alone, one after another
  (dnspython, through the proxy) - the floor for any checker that asks all lists;
- ``Checker.check`` in process (the code the CLI, cron and Ansible module run): wall time, with
  the cache file a previous run left (the steady state: a run asks one question per list, and a
  listing known from that run has its TXT reason and self-test asked at once with it) and
  without (a run that asks all three, and a listing's reason after its answer: the first one,
  then one every two hours);
- the Nagios plugins as Nagios runs them, each a fresh process: ``check_dnsbl -H IP`` (self-tests
  cached) and Debian's ``check_rbl -H IP -n 127.0.0.153 -s zone ...`` (monitoring-plugins-contrib),
  both on the same 40 zones; check_rbl with its default 20 workers and with 40. The package is
  byte-compiled first, as pip leaves it on a relay. ``check_dnsbl`` runs twice: from the
  project's venv (PyPI's dnspython 2.6, which imports ``importlib.metadata`` at start-up) and
  as a relay runs it (``relay``: Debian's python3 and python3-dnspython 2.3, the package
  installed from its wheel into a ``--system-site-packages`` venv, as roles/relay_sender does).
  Each plugin runs ``--plugin-runs`` times a round, interleaved.

Targets: in-process wall <= 1.3x the slowest single query; check_dnsbl <= 1.0x check_rbl.
``--profile N`` also prints the N costliest functions (cProfile) of one check of each kind.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import common as c
import dns.asyncquery
import dns.message
import dns.query

from bulkrelay.dnsbl.checker import Checker
from bulkrelay.dnsbl.lists import Settings

RBLDNSD_ADDR = ("127.0.0.152", 5353)
PROXY_ADDR = ("127.0.0.153", 53)
CHECK_RBL = "/usr/lib/nagios/plugins/check_rbl"
TARGET = "198.51.100.10"
DEBIAN_PYTHON = "/usr/bin/python3"


class DelayProxy(asyncio.DatagramProtocol):
    """Holds every query ``delay`` seconds, then forwards it over the one upstream socket and
    relays the answer back: the instrument's cost per question is a timer and two sends, so
    40-120 questions released together are not serialised behind socket set-ups.

    Each forwarded query gets a proxy-wide id (clients pick theirs at random, and two of 120 may
    match); the answer goes back with the client's id to the client's address."""

    def __init__(self, delay: float):
        self.delay = delay
        self.clients: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[bytes, tuple[str, int]]] = {}  # our id -> client's id, address
        self.next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.clients = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12:  # a DNS header; anything shorter is dropped
            asyncio.get_running_loop().call_later(self.delay, self.forward, data, addr)

    def forward(self, data: bytes, addr: tuple[str, int]) -> None:
        self.next_id = (self.next_id + 1) % 65536  # reused only after 65536 newer queries
        self.pending[self.next_id] = (data[:2], addr)
        assert self.upstream is not None
        self.upstream.sendto(self.next_id.to_bytes(2, "big") + data[2:])

    def answer(self, reply: bytes) -> None:
        client = self.pending.pop(int.from_bytes(reply[:2], "big"), None)
        if client is not None and self.clients is not None:
            self.clients.sendto(client[0] + reply[2:], client[1])


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: DelayProxy):
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.proxy.answer(data)


async def serve_proxy(delay: float) -> None:
    loop = asyncio.get_running_loop()
    proxy = DelayProxy(delay)
    proxy.upstream, _ = await loop.create_datagram_endpoint(lambda: Upstream(proxy), remote_addr=RBLDNSD_ADDR)
    await loop.create_datagram_endpoint(lambda: proxy, local_addr=PROXY_ADDR, reuse_port=False)
    print("proxy ready", flush=True)
    await asyncio.Event().wait()


def zones(count: int) -> list[str]:
    return [f"bl{i:02d}.bench.test" for i in range(1, count + 1)]


def start_rbldnsd(work: Path, names: list[str], listed: int) -> subprocess.Popen:
    c.need("/usr/sbin/rbldnsd", "rbldnsd")
    data = work / "zones"
    data.mkdir()
    specs = []
    for i, zone in enumerate(names):
        lines = [f":127.0.0.2:listed in {zone}, see https://{zone}/lookup", "127.0.0.2"]
        if i < listed:
            lines.append(TARGET)
        (data / zone).write_text("\n".join(lines) + "\n")
        specs.append(f"{zone}:ip4set:{zone}")
    shutil.chown(data, "nobody")
    proc = subprocess.Popen(
        [
            "/usr/sbin/rbldnsd",
            "-n",
            "-q",
            "-b",
            f"{RBLDNSD_ADDR[0]}/{RBLDNSD_ADDR[1]}",
            "-w",
            str(data),
            "-u",
            "nobody",
            *specs,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ask = dns.message.make_query(f"2.0.0.127.{names[0]}.", "A")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            dns.query.udp(ask, RBLDNSD_ADDR[0], port=RBLDNSD_ADDR[1], timeout=0.5)
            return proc
        except (OSError, dns.exception.Timeout):
            if proc.poll() is not None:
                raise c.BenchError(f"rbldnsd exited: {proc.stderr.read().decode()[:300]}") from None
            time.sleep(0.1)
    proc.kill()
    raise c.BenchError("rbldnsd did not answer within 10s")


def start_proxy(delay: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-proxy", "--delay", str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "proxy ready" not in line:
        proc.kill()
        raise c.BenchError(f"delay proxy did not start on {PROXY_ADDR[0]}:53: {proc.stderr.read()[:300]}")
    return proc


def single_queries(names: list[str]) -> list[float]:
    reversed_ip = ".".join(reversed(TARGET.split(".")))
    times = []
    for zone in names:
        query = dns.message.make_query(f"{reversed_ip}.{zone}.", "A")
        started = time.perf_counter()
        dns.query.udp(query, PROXY_ADDR[0], port=PROXY_ADDR[1], timeout=4)
        times.append(time.perf_counter() - started)
    return times


def parallel_fanout(names: list[str], prefixes: tuple[str, ...]) -> float:
    """Wall time of one question per list and prefix (the reversed target, or also the two RFC
    5782 test points), all sent at once with bare dnspython: the floor of this host and proxy."""
    questions = [f"{prefix}.{zone}." for zone in names for prefix in prefixes]

    async def fan_out() -> None:
        await asyncio.gather(
            *(
                dns.asyncquery.udp(
                    dns.message.make_query(q, "A"), PROXY_ADDR[0], port=PROXY_ADDR[1], timeout=4
                )
                for q in questions
            )
        )

    started = time.perf_counter()
    asyncio.run(fan_out())
    return time.perf_counter() - started


def profile(checker: Checker, top: int) -> None:
    """The costliest functions of one check, by own time (cProfile)."""
    profiler = cProfile.Profile()
    profiler.runcall(checker.run, [TARGET])
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def settings(names: list[str]) -> dict:
    return {
        "lists": [{"zone": z} for z in names],
        "nameservers": [PROXY_ADDR[0]],
        "timeout": 4.0,
        "retries": 1,
    }


def relay_plugin(work: Path) -> str | None:
    """check_dnsbl installed as roles/relay_sender installs it; None (said why) without Debian's dnspython."""
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import dns.message"], capture_output=True, check=False)
    if probe.returncode:
        print(f"   check_dnsbl as on a relay not measured: {DEBIAN_PYTHON} lacks python3-dnspython (apt)")
        return None
    wheels, venv = work / "wheels", work / "relay-venv"
    shutil.rmtree(venv, ignore_errors=True)
    build_wheel = c.ROOT / "roles/relay_sender/files/build_wheel.py"
    build = [sys.executable, str(build_wheel), str(c.ROOT / "sender"), str(wheels)]
    wheel = subprocess.run(build, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(venv / "bin/pip"), "-q", "--disable-pip-version-check", "install"]
    subprocess.run([*pip, "--no-deps", "--no-index", wheel], check=True)
    return str(venv / "bin/check_dnsbl")


def timed(argv: list[str], expect: set[int]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode not in expect:
        raise c.BenchError(f"{argv[0]} exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[:300]}")
    return elapsed, proc.stdout.strip()


def run() -> int:  # noqa: PLR0912, PLR0915 (one linear script)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=40)
    parser.add_argument("--listed", type=int, default=0, help="lists that list the target")
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plugin-runs", type=int, default=3, help="runs of each plugin per round")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N")
    parser.add_argument("--serve-proxy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        asyncio.run(serve_proxy(args.delay))
        return 0
    c.need(CHECK_RBL, "monitoring-plugins-contrib")
    c.byte_compile()
    name = "dnsbl" if not args.listed else f"dnsbl_listed{args.listed}"
    work = c.workdir(name)
    names = zones(args.lists)
    (work / "dnsbl.json").write_text(json.dumps(settings(names)))
    report = c.Report(
        name, f"{args.lists} lists behind {args.delay * 1000:g} ms, target listed on {args.listed}"
    )
    check_dnsbl = str(c.VENV_BIN / "check_dnsbl")
    dnsbl_argv = [check_dnsbl, "-H", TARGET, "--config", str(work / "dnsbl.json")]
    dnsbl_argv += ["--selftest-cache", str(work / "plugin-selftest.json")]
    relay_check_dnsbl = relay_plugin(work)
    relay_argv = [relay_check_dnsbl, *dnsbl_argv[1:]] if relay_check_dnsbl else None
    rbl_argv = [CHECK_RBL, "-H", TARGET, "-n", PROXY_ADDR[0], "-t", "30", "--query-timeout", "4"]
    for zone in names:
        rbl_argv += ["-s", zone]
    want = {0} if not args.listed else {1, 2}
    reversed_ip = ".".join(reversed(TARGET.split(".")))
    rbldnsd = start_rbldnsd(work, names, args.listed)
    proxy = None
    try:
        proxy = start_proxy(args.delay)
        uncached = Checker(Settings.from_mapping(settings(names)))
        cached = Checker(Settings.from_mapping(settings(names)), selftest_cache=work / "selftest.json")
        cached.run([TARGET])  # fills the cache, as the previous run would have
        timed(dnsbl_argv, want)  # the same for the plugin's cache file
        slowest, medians, fanout1, fanout3, inproc, inproc_uncached, ours, ours_relay, rbl20, rbl40 = (
            [] for _ in range(10)
        )
        start_ours, start_rbl = [], []
        outputs = {}
        for _ in range(args.rounds):
            singles = single_queries(names)
            slowest.append(max(singles))
            medians.append(c.median(singles))
            fanout1.append(parallel_fanout(names, (reversed_ip,)))
            fanout3.append(parallel_fanout(names, (reversed_ip, "2.0.0.127", "1.0.0.127")))
            for checker, times in ((cached, inproc), (uncached, inproc_uncached)):
                started = time.perf_counter()
                result = checker.run([TARGET])
                times.append(time.perf_counter() - started)
                if result.errors or len(result.listings) != args.listed:
                    raise c.BenchError(
                        f"checker saw {len(result.listings)} listings and {len(result.errors)} errors, "
                        f"expected {args.listed} and 0: {result.error_zones()}"
                    )
            for _ in range(args.plugin_runs):
                seconds, outputs["check_dnsbl"] = timed(dnsbl_argv, want)
                ours.append(seconds)
                if relay_argv:
                    seconds, outputs["check_dnsbl_relay"] = timed(relay_argv, want)
                    ours_relay.append(seconds)
                seconds, outputs["check_rbl"] = timed(rbl_argv, want)
                rbl20.append(seconds)
                seconds, outputs["check_rbl_w40"] = timed([*rbl_argv, "--workers", "40"], want)
                rbl40.append(seconds)
            start_ours.append(timed([check_dnsbl, "--help"], {0})[0])
            start_rbl.append(timed([CHECK_RBL, "-V"], {3})[0])
        if args.profile:
            for label, checker in (("self-tests cached", cached), ("uncached", uncached)):
                print(f"   cProfile of one check, {label}:")
                profile(checker, args.profile)
    finally:
        for proc in (proxy, rbldnsd):
            if proc is not None:
                proc.terminate()
                proc.wait(5)
    note = f"median of {args.rounds}"

    def ms(key: str, samples: list[float], what: str = note) -> None:
        report.figure(key, round(c.median(samples) * 1000, 1), "ms", what)

    ms("single_query_median", medians)
    ms("single_query_slowest", slowest)
    ms("parallel_fanout_bare_dnspython", fanout1, f"{len(names)} queries")
    ms("parallel_fanout_bare_dnspython_3x", fanout3, f"{3 * len(names)} queries (with the self-tests)")
    ms("checker_in_process", inproc, f"self-tests cached, {note}")
    ms("checker_in_process_uncached", inproc_uncached, f"3 questions a list, {note}")
    plugin_note = f"median of {args.rounds} x {args.plugin_runs}"
    ms("check_dnsbl_process", ours, f"self-tests cached, {plugin_note}")
    if ours_relay:
        ms("check_dnsbl_relay_process", ours_relay, f"Debian's python3 and dnspython, {plugin_note}")
    ms("check_rbl_process_20_workers", rbl20, plugin_note)
    ms("check_rbl_process_40_workers", rbl40, plugin_note)
    ms("check_dnsbl_startup", start_ours, "check_dnsbl --help")
    ms("check_rbl_startup", start_rbl, "check_rbl -V")
    net = "process minus its start-up"
    report.figure("check_dnsbl_net", round((c.median(ours) - c.median(start_ours)) * 1000, 1), "ms", net)
    report.figure("check_rbl_20_net", round((c.median(rbl20) - c.median(start_rbl)) * 1000, 1), "ms", net)
    report.figure("check_rbl_40_net", round((c.median(rbl40) - c.median(start_rbl)) * 1000, 1), "ms", net)
    for key, text in outputs.items():
        print(f"   {key}: {text.splitlines()[0][:150] if text else '(no output)'}")
    report.verdict(
        "checker_vs_slowest_query",
        c.median(inproc) / c.median(slowest),
        "<=",
        1.3,
        "all lists in parallel, self-tests cached: wall time close to the slowest single query",
    )
    report.figure(
        "checker_uncached_vs_slowest_query", round(c.median(inproc_uncached) / c.median(slowest), 3), "x"
    )
    report.figure("checker_vs_parallel_fanout", round(c.median(inproc) / c.median(fanout1), 3), "x")
    report.figure(
        "checker_uncached_vs_parallel_fanout_3x", round(c.median(inproc_uncached) / c.median(fanout3), 3), "x"
    )
    report.verdict(
        "check_dnsbl_vs_check_rbl_20",
        c.median(ours) / c.median(rbl20),
        "<=",
        1.0,
        "plugin process vs check_rbl (default workers)",
    )
    report.verdict(
        "check_dnsbl_vs_check_rbl_40",
        c.median(ours) / c.median(rbl40),
        "<=",
        1.0,
        "plugin process vs check_rbl --workers 40",
    )
    if ours_relay:
        for workers, rbl in (("20", rbl20), ("40", rbl40)):
            report.verdict(
                f"check_dnsbl_relay_vs_check_rbl_{workers}",
                c.median(ours_relay) / c.median(rbl),
                "<=",
                1.0,
                f"the plugin as the relay runs it vs check_rbl --workers {workers}",
            )
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    if "--serve-proxy" not in sys.argv:
        socket.setdefaulttimeout(10)
    c.main(run)
