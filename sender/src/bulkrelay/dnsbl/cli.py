"""`bulkrelay dnsbl check|cron|lists` and the Nagios-style `check_dnsbl` console script.

`check` is the Nagios/Icinga plugin (exit 0/1/2/3, one summary line, perfdata, --json);
`cron` is the scheduled run that keeps the state file and alerts only on change; `lists`
prints the lists a check would ask.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from bulkrelay.cli import UsageError
from bulkrelay.dnsbl.checker import Checker
from bulkrelay.dnsbl.lists import Settings
from bulkrelay.dnsbl.names import InputError, parse_domain_target, parse_ip_target, parse_nameserver
from bulkrelay.dnsbl.report import EXIT_CODES, Thresholds, as_dict, plugin_output
from bulkrelay.dnsbl.state import DEFAULT_STATE_PATH

DEFAULT_CONFIG = "/etc/bulkrelay/dnsbl/settings.json"  # written by the role dnsbl_monitor
SELFTEST_CACHE_NAME = "selftest.json"  # beside the state file (bulkrelay.dnsbl.selftest_cache)
DEFAULT_SELFTEST_CACHE = os.path.join(os.path.dirname(DEFAULT_STATE_PATH), SELFTEST_CACHE_NAME)


def _usage_error(message: str) -> Exception:
    return UsageError(message)


def _read_settings_file(path: str | None) -> dict[str, Any]:
    if path is None:
        folder = os.path.dirname(DEFAULT_CONFIG)
        hidden = os.path.isdir(folder) and not os.access(folder, os.X_OK)  # there, but not for us
        if os.path.exists(DEFAULT_CONFIG) or hidden:
            path = DEFAULT_CONFIG
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        hint = (
            " (run as root or a member of group bulkrelay-dnsbl, or pass --config)" if exc.errno == 13 else ""
        )
        raise _usage_error(f"cannot read settings file {path}: {exc.strerror}{hint}") from None
    except ValueError as exc:
        raise _usage_error(f"settings file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _usage_error(f"settings file {path} must hold a JSON object")
    return data


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.nameserver:
        overrides["nameservers"] = tuple(parse_nameserver(ns) for ns in args.nameserver)
    if args.timeout is not None:
        if not 0.1 <= args.timeout <= 60:
            raise InputError(f"--timeout {args.timeout:g}: give 0.1 to 60 seconds")
        overrides["timeout"] = args.timeout
    if args.retries is not None:
        if not 0 <= args.retries <= 5:
            raise InputError(f"--retries {args.retries}: give 0 to 5")
        overrides["retries"] = args.retries
    return overrides


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings file (if any), then the DQS key from BULKRELAY_DQS_KEY, then command-line options.
    Sets args.targets: -H/-d when given, else the settings file's ips/domains."""
    data = _read_settings_file(args.config)
    if os.environ.get("BULKRELAY_DQS_KEY"):
        data["dqs_key"] = os.environ["BULKRELAY_DQS_KEY"]
    try:
        settings = replace(Settings.from_mapping(data), **_overrides(args))
        ips, domains = (
            (args.host, args.domain) if args.host or args.domain else (settings.ips, settings.domains)
        )
        targets = [parse_ip_target(h) for h in ips] + [parse_domain_target(d) for d in domains]
    except InputError as exc:
        raise _usage_error(str(exc)) from None
    if not targets:
        raise _usage_error(
            "nothing to check: give -H IP and/or -d DOMAIN (or ips/domains in the settings file)"
        )
    args.targets = targets
    return settings


def _thresholds(args: argparse.Namespace) -> Thresholds:
    try:
        return Thresholds(warning=args.warning, critical=args.critical)
    except ValueError as exc:
        raise _usage_error(f"-w/-c: {exc}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-H", "--host", action="append", default=[], metavar="IP", help="IPv4/IPv6 address to check"
    )
    parser.add_argument(
        "-d", "--domain", action="append", default=[], metavar="DOMAIN", help="domain to check"
    )
    parser.add_argument("-w", "--warning", type=int, default=1, metavar="N", help="WARNING at N listings (1)")
    parser.add_argument(
        "-c", "--critical", type=int, default=1, metavar="N", help="CRITICAL at N listings (1)"
    )
    parser.add_argument(
        "-s",
        "--nameserver",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="resolver to ask (repeatable; default: settings file, then /etc/resolv.conf)",
    )
    parser.add_argument(
        "-t", "--timeout", type=float, metavar="SEC", help="per-query timeout incl. retries (4)"
    )
    parser.add_argument(
        "-r", "--retries", type=int, metavar="N", help="retries per query within the timeout (1)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"JSON settings: lists, nameservers, ips, domains... (default {DEFAULT_CONFIG} if present)",
    )


def _selftest_cache_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--selftest-cache",
        metavar="FILE",
        help=f"keep the lists' RFC 5782 self-test results here for two hours ({default}; '' = ask every run)",
    )


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    thresholds = _thresholds(args)
    cache = DEFAULT_SELFTEST_CACHE if args.selftest_cache is None else args.selftest_cache
    result = Checker(settings, selftest_cache=cache or None).run(args.targets)
    if args.json:
        print(json.dumps(as_dict(result, thresholds), indent=2))
        return EXIT_CODES[as_dict(result, thresholds)["status"]]
    text, code = plugin_output(result, thresholds)
    print(text)
    return code


def cmd_cron(args: argparse.Namespace) -> int:
    # the cron run's state, syslog and mail code stays out of the Nagios plugin's start-up
    from bulkrelay.dnsbl.cron import (  # noqa: PLC0415
        AlreadyRunning,
        MailSettings,
        hostname_default,
        run_cron,
        syslog_logger,
    )

    settings = load_settings(args)
    thresholds = _thresholds(args)
    if args.alert_after < 1:
        raise _usage_error("--alert-after must be at least 1")
    mail = MailSettings(args.mail_to, args.mail_from, args.mail_command) if args.mail_to else None
    logger = syslog_logger(not args.no_syslog)
    cache = args.selftest_cache
    if cache is None:
        cache = os.path.join(os.path.dirname(args.state) or ".", SELFTEST_CACHE_NAME)
    checker = Checker(settings, selftest_cache=cache or None)
    try:
        state, _events = run_cron(
            lambda: as_dict(checker.run(args.targets), thresholds),
            args.state,
            mail,
            logger,
            alert_after=args.alert_after,
            critical=thresholds.critical,
            prometheus_path=args.prometheus,
            hostname=hostname_default(),
        )
    except AlreadyRunning:
        return 0
    except OSError as exc:
        raise _usage_error(f"cannot write {exc.filename or args.state}: {exc.strerror or exc}") from None
    if args.verbose:
        print(json.dumps(state, indent=2))
    return 0


def cmd_lists(args: argparse.Namespace) -> int:
    args.host = args.host or ["127.0.0.2"]
    settings = load_settings(args)
    for item in settings.lists:
        role = "allowlist" if item.allowlist else "blocklist"
        # The families an IP list is asked about: "ip4", "ip6" (an IPv6-only list) or "ip4+6",
        # and the self-test points of each, so an operator sees what "self-test failed" refers to.
        versions = [v for v, on in ((4, item.ipv4), (6, item.ipv6)) if on] if item.kind == "ip" else [0]
        kind = "ip" + "+".join(map(str, versions)) if item.kind == "ip" else item.kind
        selftest = ",".join("/".join(item.test_points(v)) for v in versions) if item.selftest else "no"
        print(
            f"{item.label:<28} {kind:<6} {role:<9} listed={','.join(item.listed.text)} "
            f"errors={','.join(item.errors.text)} selftest={selftest}  {item.name}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    dnsbl = subparsers.add_parser("dnsbl", help="check the relay against DNS blacklists")
    sub = dnsbl.add_subparsers(dest="dnsbl_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="Nagios/Icinga plugin: exit 0/1/2/3 with perfdata")
    _common(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON (same exit code)")
    _selftest_cache_option(check, DEFAULT_SELFTEST_CACHE)
    check.set_defaults(func=cmd_check)

    cron = sub.add_parser("cron", help="scheduled check: state file, syslog, mail only on change")
    _common(cron)
    cron.add_argument(
        "--state", default=DEFAULT_STATE_PATH, help=f"state file (default {DEFAULT_STATE_PATH})"
    )
    cron.add_argument(
        "--mail-to", action="append", default=[], metavar="ADDR", help="alert recipient (repeatable)"
    )
    cron.add_argument("--mail-from", default="", metavar="ADDR", help="alert sender (bulkrelay-dnsbl@HOST)")
    cron.add_argument(
        "--mail-command",
        default="/usr/sbin/sendmail -t -oi",
        help="command reading the alert on stdin (default: /usr/sbin/sendmail -t -oi)",
    )
    cron.add_argument(
        "--alert-after", type=int, default=2, metavar="N", help="report a broken list after N failed runs (2)"
    )
    cron.add_argument("--prometheus", metavar="FILE", help="also write a node-exporter textfile (.prom)")
    cron.add_argument("--no-syslog", action="store_true", help="log to stderr instead of syslog")
    cron.add_argument("-v", "--verbose", action="store_true", help="print the new state")
    _selftest_cache_option(cron, f"{SELFTEST_CACHE_NAME} beside --state")
    cron.set_defaults(func=cmd_cron)

    lists = sub.add_parser("lists", help="print the lists a check asks")
    _common(lists)
    lists.set_defaults(func=cmd_lists)


class _PluginParser(argparse.ArgumentParser):
    """Option errors become UsageError, printed on stdout: argparse prints them on stderr, which
    Nagios does not show (the service then reads "(null)")."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def check_dnsbl_main(argv: Sequence[str] | None = None) -> int:
    """`check_dnsbl`: the plugin under its Nagios name; usage errors exit 3 (UNKNOWN)."""
    parser = _PluginParser(
        prog="check_dnsbl", description="Nagios plugin: is this IP/domain on a DNS blacklist?"
    )
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON (same exit code)")
    _selftest_cache_option(parser, DEFAULT_SELFTEST_CACHE)
    try:
        return cmd_check(parser.parse_args(argv))  # --help still exits 0 from parse_args
    except UsageError as exc:
        print(f"DNSBL UNKNOWN - {exc}")
        return 3


def main() -> None:
    sys.exit(check_dnsbl_main())
