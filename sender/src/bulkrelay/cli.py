"""The `bulkrelay` command: one entry point whose subcommands live beside the code they drive.

Each module in COMMAND_MODULES exposes ``register(subparsers)``, which adds its subcommands
and sets ``func`` (called with the parsed arguments, returns the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bulkrelay import __version__

COMMAND_MODULES: list[str] = [
    "bulkrelay.report",
    "bulkrelay.dnsbl.cli",
    "bulkrelay.service",
    "bulkrelay.ops",
    "bulkrelay.submitcli",
    "bulkrelay.bounces.cli",
    "bulkrelay.dns.cli",
]


class UsageError(Exception):
    """Bad input from the operator: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkrelay",
        description="Throttled sending, bounce processing and DNS/DNSBL checks for a bulk-mail relay.",
    )
    parser.add_argument("--version", action="version", version=f"bulkrelay {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"bulkrelay {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
