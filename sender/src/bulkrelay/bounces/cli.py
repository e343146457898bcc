"""``bulkrelay bounces poll|parse`` and ``bulkrelay suppress list|check|add|remove|import|export``."""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import logging
import smtplib
import sys
import time
from pathlib import Path

from bulkrelay import config as configmod
from bulkrelay import suppression
from bulkrelay.bounces import health, poller
from bulkrelay.bounces.parse import analyse
from bulkrelay.bounces.policy import Policy
from bulkrelay.bounces.poller import PollSettings
from bulkrelay.cli import UsageError
from bulkrelay.dnsbl.cron import MailSettings, build_message, hostname_default
from bulkrelay.queue import Queue, QueueUnavailable

log = logging.getLogger("bulkrelay.bounces")


def _config(path: str):
    return configmod.load(path)


def _queue(config, db: str | None):
    path = db or config.queue.path
    try:
        queue = Queue(path)
    except QueueUnavailable as exc:
        raise UsageError(f"{exc}; check [queue] path and its permissions") from None
    suppression.ensure_schema(queue.connection)
    return queue


def _default_config() -> str:
    return configmod.DEFAULT_PATH


# -- bounces ----------------------------------------------------------------------------------
def _settings(config):
    b = config.bounces
    domain = config.envelope.bounce_domain
    forward_from = f"{config.envelope.verp_prefix}@{domain}" if domain else b.imap_user
    if b.forward_to and "@" not in forward_from:
        raise UsageError("bounces.forward_to needs envelope.bounce_domain (the forward's sender); set it")
    return PollSettings(
        mailbox=b.mailbox,
        processed_folder=b.processed_folder,
        other_folder=b.other_folder,
        forward_to=b.forward_to,
        forward_from=forward_from,
        verp_prefix=config.envelope.verp_prefix,
        imap_user=b.imap_user,
        policy=Policy(
            soft_limit=b.soft_limit, soft_window_days=b.soft_window_days, soft_expiry_days=b.soft_expiry_days
        ),
    )


def _password(config) -> str:
    path = config.bounces.imap_password_file
    if not path:
        raise UsageError(
            "bounces.imap_password_file is not set; point it at a file holding the IMAP password"
        )
    try:
        return Path(path).read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise UsageError(
            f"bounces.imap_password_file: cannot read {path} ({exc.strerror}); fix the path or mode"
        ) from None


def _one_pass(b, *, password: str, queue, key: bytes, settings, forward) -> tuple[bool, str]:
    """Connect, poll once, log out: (worked, one-line summary or the error)."""
    try:
        imap = poller.connect(
            b.imap_host,
            b.imap_port,
            tls=b.imap_tls,
            user=b.imap_user,
            password=password,
            ca_file=b.tls_ca_file,
        )
        try:
            result = poller.poll_once(imap, queue, key=key, settings=settings, forward=forward)
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                imap.logout()
    except poller.PollError as exc:
        print(f"bulkrelay bounces poll: {exc}", file=sys.stderr, flush=True)
        return False, str(exc)
    print(result.summary(), flush=True)
    first = f"; first error: {result.errors[0]}" if result.errors else ""
    return not result.errors, result.summary() + first


def _report_health(b, queue, *, ok: bool, detail: str, mail_from: str, send) -> None:
    """Record the pass; mail the admin once after alert_after failures, once on recovery."""
    due = health.record(queue.connection, ok=ok, detail=detail, now=time.time(), alert_after=b.alert_after)
    if not due or not b.alert_to:
        return
    host = hostname_default()
    state = health.read(queue.connection, now=time.time())
    subject, body = health.alert_text(due, state, host, b.alert_after)
    mail = MailSettings(recipients=b.alert_to, sender=mail_from or f"bulkrelay-bounces@{host}")
    try:
        send(build_message(mail, subject, body, host), mail.sender, list(b.alert_to))
    except (OSError, smtplib.SMTPException) as exc:
        log.error(
            "event=alert_failed to=%s error=%r (tried again after the next pass)", ",".join(b.alert_to), exc
        )
    else:
        health.alert_sent(queue.connection, due)
        log.warning("event=alert_sent kind=%s to=%s", due, ",".join(b.alert_to))


def run_poll(args) -> int:
    config = _config(args.config)
    if args.bounces_config:
        config = config._replace(bounces=_config(args.bounces_config).bounces)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="level=%(levelname)s logger=%(name)s %(message)s"
    )
    key = config.verp_key()
    if not key:
        raise UsageError("envelope.verp_key_file is not set: without the VERP key no bounce can be matched")
    settings = _settings(config)
    password = _password(config)
    submit = poller.smtp_forwarder(config.submit.host, config.submit.port)
    forward = submit if settings.forward_to else None
    b = config.bounces
    queue = _queue(config, args.db)
    try:
        while True:
            ok, detail = _one_pass(
                b, password=password, queue=queue, key=key, settings=settings, forward=forward
            )
            _report_health(b, queue, ok=ok, detail=detail, mail_from=settings.forward_from, send=submit)
            if args.once:
                return 0 if ok else 1
            time.sleep(b.poll_interval)
    finally:
        queue.close()


def run_parse(args) -> int:
    key = b""
    prefix = "bounces"
    if args.config:
        config = _config(args.config)
        key, prefix = config.verp_key(), config.envelope.verp_prefix
    for name in args.files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {name} ({exc.strerror})") from None
        result = analyse(raw, key=key, prefix=prefix)
        print(
            json.dumps(
                {
                    "file": name,
                    "category": result.category,
                    "format": result.format,
                    "recipient_id": result.recipient_id,
                    "failures": [f.__dict__ for f in result.failures],
                    "complained": result.complained,
                },
                sort_keys=True,
            )
        )
    return 0


# -- suppress ---------------------------------------------------------------------------------
_iso = suppression.iso_time


def run_list(args) -> int:
    queue = _queue(_config(args.config) if not args.db else None, args.db)
    try:
        entries = suppression.list_entries(queue.connection, now=None if args.all else time.time())
    finally:
        queue.close()
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    for e in entries:
        # soft-bounce suppressions lapse ([bounces] soft_expiry_days); hard ones and complaints do not
        expiry = f"until {_iso(e['expires_at'])}" if e["expires_at"] is not None else "for good"
        print(f"{e['address']}\t{_iso(e['created_at'])}\t{e['source']}\t{e['reason']}\t{expiry}")
    print(f"{len(entries)} suppressed", file=sys.stderr)
    return 0


def run_check(args) -> int:
    """Exit 0 "not suppressed", 1 with the reason and since when, 2 for a malformed address."""
    try:
        suppression.normalize(args.address)
    except suppression.BadAddress as exc:
        raise UsageError(str(exc)) from None
    queue = _queue(_config(args.config) if not args.db else None, args.db)
    try:
        entry = suppression.lookup(queue.connection, args.address, now=time.time())
    finally:
        queue.close()
    if entry is None:
        print(f"{args.address}: not suppressed")
        return 0
    until = f", until {_iso(entry['expires_at'])}" if entry["expires_at"] is not None else ""
    print(
        f"{entry['address']}: suppressed since {_iso(entry['created_at'])}{until} "
        f"({entry['source']}): {entry['reason']}"
    )
    return 1


def run_add(args) -> int:
    try:
        expires = suppression.parse_time(args.expires or "", what="--expires")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    queue = _queue(_config(args.config) if not args.db else None, args.db)
    try:
        for address in args.addresses:
            try:
                entry = suppression.add(
                    queue.connection,
                    address,
                    reason=args.reason,
                    source="cli",
                    expires_at=expires,
                    now=time.time(),
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            print(f"suppressed {entry['address']}")
    finally:
        queue.close()
    return 0


def run_remove(args) -> int:
    queue = _queue(_config(args.config) if not args.db else None, args.db)
    missing = 0
    try:
        for address in args.addresses:
            try:
                removed = suppression.remove(queue.connection, address)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            print(f"{'removed' if removed else 'not on the list:'} {address}")
            missing += not removed
    finally:
        queue.close()
    return 1 if missing else 0


def run_import(args) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig") if args.file != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {args.file} ({exc}); give a UTF-8 CSV file") from None
    now = time.time()
    try:
        entries = suppression.read_csv(text, default_source=f"import:{Path(args.file).name}", now=now)
    except ValueError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    queue = _queue(_config(args.config) if not args.db else None, args.db)
    try:
        count = suppression.import_entries(queue.connection, entries, now=now)
    finally:
        queue.close()
    print(f"imported {count} entries from {args.file}")
    return 0


def run_export(args) -> int:
    queue = _queue(_config(args.config) if not args.db else None, args.db)
    try:
        if args.file == "-":
            count = suppression.export_csv(queue.connection, sys.stdout)
        else:
            tmp = Path(args.file + ".tmp")
            with tmp.open("w", encoding="utf-8", newline="") as out:
                count = suppression.export_csv(queue.connection, out)
            tmp.replace(args.file)
    finally:
        queue.close()
    print(f"exported {count} entries", file=sys.stderr)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=_default_config(), help="sender TOML (default: %(default)s)")
    parser.add_argument("--db", help="queue database to use instead of the config's [queue] path")


def register(subparsers) -> None:
    bounces = subparsers.add_parser("bounces", help="read the bounce mailbox (IMAP) and parse bounces")
    sub = bounces.add_subparsers(dest="bounces_command", metavar="ACTION", required=True)
    poll = sub.add_parser("poll", help="process the bounce mailbox (loop, or one pass with --once)")
    _common(poll)
    poll.add_argument("--once", action="store_true", help="one pass, then exit (for a systemd timer or cron)")
    poll.add_argument(
        "--bounces-config",
        help="TOML whose [bounces] section replaces the --config file's (written by roles/bounce_poller)",
    )
    poll.set_defaults(func=run_poll)
    parse = sub.add_parser("parse", help="classify .eml files and print one JSON line each")
    parse.add_argument("files", nargs="+")
    parse.add_argument("--config", help="sender TOML, to match VERP tokens with its key")
    parse.set_defaults(func=run_parse)

    sup = subparsers.add_parser(
        "suppress", help="the suppression list: list, check, add, remove, import, export"
    )
    sub = sup.add_subparsers(dest="suppress_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="active entries (address, since, source, reason, until when)")
    _common(p)
    p.add_argument("--all", action="store_true", help="include expired entries")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_list)
    p = sub.add_parser(
        "check", help="is an address suppressed? exit 0 no, 1 yes (why, since when), 2 malformed"
    )
    _common(p)
    p.add_argument("address")
    p.set_defaults(func=run_check)
    p = sub.add_parser("add", help="suppress addresses")
    _common(p)
    p.add_argument("addresses", nargs="+")
    p.add_argument("--reason", default="added by operator")
    p.add_argument("--expires", help="ISO date/time when the entry lapses (default: never)")
    p.set_defaults(func=run_add)
    p = sub.add_parser("remove", help="take addresses off the list")
    _common(p)
    p.add_argument("addresses", nargs="+")
    p.set_defaults(func=run_remove)
    p = sub.add_parser("import", help="add entries from CSV (address[,reason,source,created_at,expires_at])")
    _common(p)
    p.add_argument("file", help="CSV file, or - for standard input")
    p.set_defaults(func=run_import)
    p = sub.add_parser("export", help="write all entries as CSV")
    _common(p)
    p.add_argument("file", nargs="?", default="-", help="output file (default: standard output)")
    p.set_defaults(func=run_export)
