"""``bulkrelay dns ...``: the live-DNS checks from a shell (cron, CI, by hand).

Exit codes: 0 pass (or warn), 1 fail, 3 could not tell (DNS timeout/SERVFAIL), 2 usage error.
Output: one line per check (``STATUS check subject: message [Fix: ...]``), or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys

from bulkrelay.cli import UsageError
from bulkrelay.dns import dkim, dmarc, fcrdns, mx, spf
from bulkrelay.dns.resolver import NameserverError, make_resolver
from bulkrelay.dns.result import ERROR, FAIL, CheckResult

EXIT = {"pass": 0, "warn": 0, FAIL: 1, ERROR: 3}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "dns",
        help="check SPF, FCrDNS, MX, DKIM or DMARC in live DNS",
        description="Live-DNS checks of a bulk relay's records (the same code as the Ansible modules). "
        "Exit 0 pass/warn, 1 fail, 3 could not tell, 2 usage error.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-n", "--nameserver", action="append", default=[], help="IP, IP:port or [IPv6]:port (repeatable)"
    )
    common.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds per query (default 5)")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    checks = parser.add_subparsers(dest="dns_check", metavar="CHECK", required=True)

    p = checks.add_parser("spf", parents=[common], help="does DOMAIN's SPF authorise IP?")
    p.add_argument("domain")
    p.add_argument("ip")
    p.add_argument("--helo", default="")
    p.add_argument("--sender", default="")
    p.set_defaults(func=run, check=lambda r, a: spf.check(r, a.domain, a.ip, helo=a.helo, sender=a.sender))

    p = checks.add_parser("fcrdns", parents=[common], help="PTR of IP confirmed by its A/AAAA")
    p.add_argument("ip")
    p.add_argument("--name", default="", help="expected PTR name")
    p.add_argument("--helo", default="", help="HELO name that must equal the PTR name")
    p.set_defaults(func=run, check=lambda r, a: fcrdns.check(r, a.ip, expected_name=a.name, helo=a.helo))

    p = checks.add_parser("mx", parents=[common], help="NAME has MX records that resolve")
    p.add_argument("name")
    p.add_argument("--expect", action="append", default=[], help="target that must be an MX (repeatable)")
    p.add_argument("--forbid", action="append", default=[], help="target that must not be an MX")
    p.set_defaults(func=run, check=lambda r, a: mx.check(r, a.name, expected=a.expect, forbidden=a.forbid))

    p = checks.add_parser("dkim", parents=[common], help="DKIM key at SELECTOR._domainkey.DOMAIN")
    p.add_argument("domain")
    p.add_argument("selector")
    p.add_argument("--key", default="", help="the relay's DKIM TXT or p= value to compare")
    p.set_defaults(func=run, check=lambda r, a: dkim.check(r, a.domain, a.selector, expected=a.key))

    p = checks.add_parser("dmarc", parents=[common], help="DMARC of DOMAIN: valid, policy, alignment")
    p.add_argument("domain")
    p.add_argument("--return-path", default="", help="Return-Path domain used by the relay")
    p.add_argument("--dkim-domain", default="", help="DKIM d= domain used by the relay")
    p.add_argument("--min-policy", default="none", choices=["none", "quarantine", "reject"])
    p.set_defaults(
        func=run,
        check=lambda r, a: dmarc.check(
            r, a.domain, return_path_domain=a.return_path, dkim_domain=a.dkim_domain, min_policy=a.min_policy
        ),
    )


def run(args) -> int:
    try:
        resolver = make_resolver(args.nameserver, args.timeout)
        result: CheckResult = args.check(resolver, args)
    except NameserverError as exc:
        raise UsageError(str(exc)) from None
    except spf.SpfUnavailable as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:  # a malformed IP address and the like
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        print(result.summary())
        for warning in result.warnings:
            print(f"  warning: {warning}", file=sys.stderr)
    return EXIT[result.status]
