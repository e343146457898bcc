"""The bulkrelay console script answers --version and --help without a relay."""

import subprocess

import bulkrelay


def run(*args):
    return subprocess.run(["bulkrelay", *args], capture_output=True, text=True, check=False)


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bulkrelay {bulkrelay.__version__}"


def test_help_lists_usage():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: bulkrelay" in result.stdout
