"""Commands for scripts: ``enqueue`` (.eml files), ``send`` (build one message), and helpers
for the operator: ``config check`` (validate sender.toml and the files it names) and
``intake-password`` (a line for the intake's auth_file).

``enqueue`` and ``send`` write straight into the queue database named by the config, with the
same validation as the SMTP intake, so they work while ``bulkrelay serve`` runs (or not).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from bulkrelay import config as configmod
from bulkrelay.cli import UsageError
from bulkrelay.message import BadMessage, build, check_address
from bulkrelay.normalise import Accepted, accept

EX_TEMPFAIL = 75  # sysexits.h: try again later (the queue could not commit)
PROGRESS_FROM = 20  # show a progress line when enqueueing at least this many files


def _open_queue(config: configmod.Config) -> Any:
    from bulkrelay.queue import Queue, QueueUnavailable  # noqa: PLC0415

    path = Path(config.queue.path)
    try:
        owner = path.stat().st_uid
    except FileNotFoundError:
        owner = None
    if owner is not None and os.geteuid() == 0 and owner != 0:
        # root would leave root-owned -wal/-shm files the service cannot open afterwards
        raise UsageError(
            f"the queue {path} belongs to uid {owner}; run this as that user, "
            f"e.g. sudo -u bulkrelay bulkrelay {' '.join(sys.argv[1:2])} ..."
        )
    try:
        return Queue(config.queue.path)
    except QueueUnavailable as exc:
        raise UsageError(f"{exc}; check [queue] path in {config.source_path} and its permissions") from None


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


def _accept_file(raw: bytes, mail_from: str | None, to: list[str] | None, *, max_size: int) -> Accepted:
    """The file normalised and checked (as the intake and the hot folder do): --from/--to win
    over the headers; ``--from ""`` is the null sender."""
    recipients = [check_address(r, what="--to address") for r in to] if to else None
    if mail_from:
        check_address(mail_from, what="--from address")
    return accept(raw, max_size=max_size, mail_from=mail_from, recipients=recipients)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from bulkrelay.ops import Progress  # noqa: PLC0415
    from bulkrelay.queue import QueueUnavailable  # noqa: PLC0415

    config = configmod.load(args.config)
    max_size = config.intake.max_message_size
    queue = _open_queue(config)
    progress = Progress(len(args.files), label="enqueue") if len(args.files) >= PROGRESS_FROM else None
    queued = rejected = 0
    try:
        for i, name in enumerate(args.files, start=1):
            try:
                accepted = _accept_file(_read_input(name), args.mail_from, args.to, max_size=max_size)
                recipients = accepted.recipients
                message = queue.enqueue(
                    accepted.raw, accepted.mail_from, recipients, source=f"cli:{Path(name).name}"
                )
                if accepted.repairs and not args.quiet:
                    print(f"{name}: repaired: {'; '.join(accepted.repairs)}", file=sys.stderr)
            except OSError as exc:
                rejected += 1
                print(f"{name}: not queued: cannot read ({exc.strerror})", file=sys.stderr)
            except BadMessage as exc:
                rejected += 1
                print(f"{name}: not queued: {exc.reason}", file=sys.stderr)
            except QueueUnavailable as exc:
                left = len(args.files) - i + 1
                print(
                    f"{name}: not queued: {exc}; {queued} file(s) queued, {left} not - run again for those",
                    file=sys.stderr,
                )
                return EX_TEMPFAIL
            else:
                queued += 1
                if not args.quiet:
                    print(f"{name}: queued as message {message} ({len(recipients)} recipient(s))")
            if progress:
                progress.update(i)
    finally:
        if progress:
            progress.finish()
        queue.close()
    if len(args.files) > 1:
        print(f"{queued} queued, {rejected} rejected", file=sys.stderr)
    return 1 if rejected else 0


def cmd_send(args: argparse.Namespace) -> int:
    from bulkrelay.queue import QueueUnavailable  # noqa: PLC0415

    if (args.body is None) == (args.body_file is None):
        raise UsageError("give the text as --body TEXT or --body-file FILE (one of them)")
    if args.body_file is not None:
        try:
            body_bytes = _read_input(args.body_file)
        except OSError as exc:
            raise UsageError(f"--body-file {args.body_file}: cannot read ({exc.strerror})") from None
        try:
            body = body_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(
                f"--body-file {args.body_file}: not UTF-8 text; convert it or attach it"
            ) from None
    else:
        body = args.body
    config = configmod.load(args.config)
    try:
        built = build(args.mail_from, args.to, args.subject, body, args.attach or [])
        sender = check_address(args.envelope_from or _address_of(args.mail_from), what="envelope sender")
        raw = accept(built, max_size=config.intake.max_message_size, mail_from=sender, recipients=args.to).raw
    except BadMessage as exc:
        raise UsageError(exc.reason) from None
    queue = _open_queue(config)
    try:
        message = queue.enqueue(raw, sender, list(args.to), source="cli:send")
    except QueueUnavailable as exc:
        print(f"bulkrelay send: not queued: {exc}; try again later", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        queue.close()
    print(f"queued as message {message} ({len(args.to)} recipient(s))")
    return 0


def _address_of(from_: str) -> str:
    import email.utils  # noqa: PLC0415

    return email.utils.parseaddr(from_)[1]


def cmd_config_check(args: argparse.Namespace) -> int:
    """Parse the config and open every file it names, as the service will."""
    from bulkrelay.intake import load_auth_file, tls_context  # noqa: PLC0415

    config = configmod.load(args.config)
    if args.settings_only:
        if not args.quiet:
            print(f"{config.source_path}: settings OK (the files they name were not opened)")
        return 0
    where = config.source_path
    intake = config.intake
    if intake.tls_cert:
        try:
            tls_context(intake.tls_cert, intake.tls_key)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{where}: intake.tls_cert/tls_key: cannot load ({exc}); check both files"
            ) from None
    if intake.auth_file:
        try:
            load_auth_file(intake.auth_file)
        except OSError as exc:
            raise UsageError(f"{where}: intake.auth_file: cannot read ({exc.strerror})") from None
        except ValueError as exc:
            raise UsageError(f"{where}: intake.auth_file: {exc}") from None
    config.verp_key()
    queue_dir = Path(config.queue.path).parent
    if not queue_dir.is_dir():
        raise UsageError(f"{where}: queue.path: directory {queue_dir} does not exist; create it")
    if config.hotfolder.path and not Path(config.hotfolder.path).is_dir():
        raise UsageError(f"{where}: hotfolder.path: {config.hotfolder.path} is not a directory; create it")
    if not args.quiet:
        print(f"{where}: OK")
    return 0


def cmd_intake_password(args: argparse.Namespace) -> int:
    from bulkrelay.intake import hash_password  # noqa: PLC0415

    user = args.user
    if not user or ":" in user or any(c.isspace() for c in user):
        raise UsageError(f"user name {user!r} must be non-empty without ':' or spaces")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ; try again")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise UsageError("use a password of at least 12 characters")
    print(f"{user}:{hash_password(password)}")
    return 0


def register(subparsers: Any) -> None:
    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=configmod.DEFAULT_PATH, help="sender.toml (default: %(default)s)")

    p = subparsers.add_parser(
        "enqueue",
        help="queue .eml files (envelope from the headers unless --from/--to)",
        description="Queue RFC 5322 files. Without --to the recipients are the To, Cc and Bcc "
        "addresses; Bcc: is removed before queueing. Exit 1 if any file was rejected, 75 if the "
        "queue was unavailable (run again: files already queued are listed).",
    )
    with_config(p)
    p.add_argument("files", nargs="+", metavar="FILE", help=".eml file, or - for standard input")
    p.add_argument(
        "--from", dest="mail_from", metavar="ADDRESS", help="envelope sender (default: From: header)"
    )
    p.add_argument(
        "--to", action="append", metavar="ADDRESS", help="recipient (repeat); replaces the headers"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    p.set_defaults(func=cmd_enqueue)

    p = subparsers.add_parser("send", help="build and queue one message (text + attachments)")
    with_config(p)
    p.add_argument("--from", dest="mail_from", required=True, metavar="FROM", help='"Name <addr>" or addr')
    p.add_argument("--to", action="append", required=True, metavar="ADDRESS", help="recipient (repeat)")
    p.add_argument("--subject", required=True)
    p.add_argument("--body", help="the text")
    p.add_argument("--body-file", metavar="FILE", help="read the text (UTF-8) from FILE, - for stdin")
    p.add_argument("--attach", action="append", metavar="FILE", help="attach a file (repeat)")
    p.add_argument("--envelope-from", metavar="ADDRESS", help="envelope sender (default: the --from address)")
    p.set_defaults(func=cmd_send)

    p = subparsers.add_parser("config", help="configuration tools")
    actions = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    a = actions.add_parser("check", help="validate sender.toml and the files it names")
    with_config(a)
    a.add_argument("-q", "--quiet", action="store_true")
    a.add_argument(
        "--settings-only",
        action="store_true",
        help="check the settings but open none of the files they name (a check away from the relay)",
    )
    a.set_defaults(func=cmd_config_check)

    p = subparsers.add_parser("intake-password", help="print a user:hash line for [intake] auth_file")
    p.add_argument("user")
    p.set_defaults(func=cmd_intake_password)
