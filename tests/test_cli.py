"""The bulkrelay console script answers --version and --help without a relay."""

import subprocess

import bulkrelay


def run(*args):
    return subprocess.run(["bulkrelay", *args], capture_output=True, text=True, check=False)


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bulkrelay {bulkrelay.__version__}"


def test_version_builds_no_subcommand():
    code = (
        "import sys; from bulkrelay import cli; cli.build_parser(['--version']);"
        "loaded = sorted(set(cli.COMMANDS.values()) & set(sys.modules)); assert not loaded, loaded"
    )
    result = subprocess.run(["python", "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_help_lists_usage():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: bulkrelay" in result.stdout


def test_only_the_running_commands_module_is_imported():
    code = (
        "import sys; from bulkrelay import cli; cli.build_parser(['status']);"
        # status needs the queue and the config, not the service and its SMTP/asyncio stack, nor
        # the email package (only storing a message needs it), nor dataclasses (~12 ms with inspect)
        "heavy = [m for m in ('bulkrelay.dnsbl.cli', 'bulkrelay.dns.cli', 'bulkrelay.bounces.cli',"
        " 'bulkrelay.service', 'aiosmtpd', 'asyncio', 'dns', 'email', 'bulkrelay.message',"
        " 'dataclasses', 'inspect')"
        " if m in sys.modules];"
        "assert not heavy, heavy; cli.build_parser(['--help']);"
        "assert 'bulkrelay.dns.cli' in sys.modules"
    )
    result = subprocess.run(["python", "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
