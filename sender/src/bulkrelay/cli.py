"""The `bulkrelay` command: one entry point whose subcommands live beside the code they drive.

Each module in COMMANDS exposes ``register(subparsers)``, which adds its subcommands and sets
``func`` (called with the parsed arguments, returns the exit code). Only the module of the
command being run is imported, so `bulkrelay status` on a relay does not pay for the DNS,
IMAP and asyncio stacks of the other commands; `--help` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bulkrelay import __version__

# command name -> module that registers it
COMMANDS: dict[str, str] = {
    "serve": "bulkrelay.service",
    "status": "bulkrelay.ops",
    "queue": "bulkrelay.ops",
    "pause": "bulkrelay.ops",
    "resume": "bulkrelay.ops",
    "enqueue": "bulkrelay.submitcli",
    "send": "bulkrelay.submitcli",
    "config": "bulkrelay.submitcli",
    "intake-password": "bulkrelay.submitcli",
    "bounces": "bulkrelay.bounces.cli",
    "suppress": "bulkrelay.bounces.cli",
    "dnsbl": "bulkrelay.dnsbl.cli",
    "dns": "bulkrelay.dns.cli",
    "report": "bulkrelay.report",
    "events": "bulkrelay.events",
    "message": "bulkrelay.events",
    "webhooks": "bulkrelay.webhooks.cli",
}


class UsageError(Exception):
    """Bad input from the operator: printed as one line, exit code 2, no traceback."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the subcommands needed for ``argv`` (all of them when unsure)."""
    parser = argparse.ArgumentParser(
        prog="bulkrelay",
        description="Throttled sending, bounce processing and DNS/DNSBL checks for a bulk-mail relay.",
    )
    parser.add_argument("--version", action="version", version=f"bulkrelay {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    if first is None and "--version" in (argv or []):
        return parser  # answered before any subcommand: building them all took ~340 ms
    modules = [COMMANDS[first]] if first in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed subcommand: bad input (UsageError) is one line on stderr and exit 2."""
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"bulkrelay {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
