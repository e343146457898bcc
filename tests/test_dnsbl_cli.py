"""The CLI: operator mistakes give one line and the right exit code, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import LoopbackDns

BIN = Path(sys.executable).parent  # the venv's console scripts, whatever PATH says


def run(command, *args):
    return subprocess.run(
        [str(BIN / command), *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_bulkrelay_dnsbl_usage_errors_exit_2(tmp_path):
    bad = run("bulkrelay", "dnsbl", "check", "-H", "example.com")
    assert bad.returncode == 2 and "check domains with -d/--domain" in bad.stderr
    assert "Traceback" not in bad.stderr
    cfg = tmp_path / "dnsbl.json"
    cfg.write_text(json.dumps({"lists": [{"zone": "dnsbl.sorbs.net"}]}))
    sorbs = run("bulkrelay", "dnsbl", "check", "--config", str(cfg), "-H", "192.0.2.1")
    assert sorbs.returncode == 2 and "SORBS" in sorbs.stderr and "remove it" in sorbs.stderr
    cfg.write_text("{broken")
    broken = run("bulkrelay", "dnsbl", "check", "--config", str(cfg), "-H", "192.0.2.1")
    assert broken.returncode == 2 and "not valid JSON" in broken.stderr


def test_check_dnsbl_usage_errors_are_nagios_unknown():
    none = run("check_dnsbl")
    assert none.returncode == 3 and none.stdout.startswith("DNSBL UNKNOWN - nothing to check")
    bad_ns = run("check_dnsbl", "-H", "192.0.2.1", "-s", "resolver.example")
    assert bad_ns.returncode == 3 and "not an IP address" in bad_ns.stdout
    bad_opt = run("check_dnsbl", "--bogus")
    assert bad_opt.returncode == 3


def test_check_dnsbl_option_errors_name_the_fix_on_stdout():
    """Nagios shows stdout only: argparse's own errors (stderr) would show as "(null)"."""
    bogus = run("check_dnsbl", "--bogus")
    assert bogus.returncode == 3
    assert bogus.stdout.startswith("DNSBL UNKNOWN - unrecognized arguments: --bogus")
    assert "check_dnsbl --help" in bogus.stdout and len(bogus.stdout.splitlines()) == 1
    bad_w = run("check_dnsbl", "-H", "192.0.2.1", "-w", "x")
    assert bad_w.returncode == 3
    assert bad_w.stdout.startswith("DNSBL UNKNOWN - argument -w/--warning: invalid int value: 'x'")


def test_lists_prints_curated_defaults(tmp_path):
    out = run("bulkrelay", "dnsbl", "lists", "--config", str(tmp_path / "absent.json"))
    assert out.returncode == 2 and "cannot read settings file" in out.stderr
    cfg = tmp_path / "empty.json"
    cfg.write_text("{}")
    out = run("bulkrelay", "dnsbl", "lists", "--config", str(cfg))
    assert out.returncode == 0 and "zen.spamhaus.org" in out.stdout and "allowlist" in out.stdout
    zen = next(line for line in out.stdout.splitlines() if line.startswith("zen.spamhaus.org"))
    assert " ip4+6 " in zen and "127.0.0.2/127.0.0.1,::ffff:7f00:2/::ffff:7f00:1" in zen


def test_python_m_form_loads_only_the_dnsbl_code(tmp_path):
    """The cron job's form: same subcommands, and it must not import other subcommand modules."""
    code = (
        "import sys, runpy; sys.argv = ['x', 'lists', '--config', sys.argv[1]];"
        "import bulkrelay.cli as c; c.COMMANDS['zz'] = 'bulkrelay.no_such_module';"
        "runpy.run_module('bulkrelay.dnsbl', run_name='__main__')"
    )
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"lists": [{"zone": "bl.lab.test"}]}))
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("bl.lab.test")


def test_cron_keeps_the_selftest_cache_beside_its_state_and_check_reads_it(tmp_path):
    table = {("2.0.0.127.bl.lab.test.", "A"): "127.0.0.2"}
    server = LoopbackDns(table)
    cfg = tmp_path / "s.json"
    cfg.write_text(
        json.dumps({"lists": [{"zone": "bl.lab.test"}], "nameservers": [f"127.0.0.1:{server.port}"]})
    )
    state = tmp_path / "state" / "state.json"
    try:
        cron = run(
            "bulkrelay", "dnsbl", "cron", "--config", str(cfg), "-H", "192.0.2.1", "--state", str(state)
        )
        assert cron.returncode == 0, cron.stderr
        assert len(server.seen) == 3
        cache = state.parent / "selftest.json"
        assert [e["zone"] for e in json.loads(cache.read_text())["entries"].values()] == ["bl.lab.test"]
        plugin = run("check_dnsbl", "--config", str(cfg), "-H", "192.0.2.1", "--selftest-cache", str(cache))
        assert plugin.returncode == 0 and plugin.stdout.startswith("DNSBL OK"), plugin.stdout
        assert len(server.seen) == 4  # one question: the self-test came from the cron job's file
        uncached = run("check_dnsbl", "--config", str(cfg), "-H", "192.0.2.1", "--selftest-cache", "")
        assert uncached.returncode == 0 and len(server.seen) == 7
    finally:
        server.close()


def test_a_plugin_run_leaves_the_cron_code_and_unused_dns_modules_unimported(tmp_path):
    """Nagios starts check_dnsbl every few minutes: with nameservers configured and no truncated
    answer, it needs neither the cron run's code nor dns.resolver / dns.asyncquery (~12 ms)."""
    server = LoopbackDns({("2.0.0.127.bl.lab.test.", "A"): "127.0.0.2"})
    cfg = tmp_path / "s.json"
    cfg.write_text(
        json.dumps({"lists": [{"zone": "bl.lab.test"}], "nameservers": [f"127.0.0.1:{server.port}"]})
    )
    code = (
        "import sys; from bulkrelay.dnsbl import cli;"
        "status = cli.check_dnsbl_main(['--config', sys.argv[1], '-H', '192.0.2.1', '--selftest-cache', '']);"
        "heavy = [m for m in ('bulkrelay.dnsbl.cron', 'dns.resolver', 'dns.asyncquery') if m in sys.modules];"
        "print(status, heavy)"
    )
    try:
        argv = [sys.executable, "-c", code, str(cfg)]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "0 []", out.stdout
