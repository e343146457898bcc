"""`python -m bulkrelay.dnsbl check|cron|lists`: the same subcommands as `bulkrelay dnsbl`, with
a parser that loads nothing but the DNSBL code. The cron job and the role use this form, so
DNSBL monitoring keeps running even if another subcommand module cannot be imported on a host."""

from __future__ import annotations

import argparse
import sys

from bulkrelay.cli import run
from bulkrelay.dnsbl.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bulkrelay", add_help=False)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dnsbl", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except BrokenPipeError:  # output piped into head & co.
        return 0


if __name__ == "__main__":
    sys.exit(main())
