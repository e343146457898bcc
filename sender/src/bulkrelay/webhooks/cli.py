"""`bulkrelay webhooks run|once|status`: the delivery loop and what it has left to do."""

from __future__ import annotations

import json
import logging
import signal
import stat
import sys
import threading
import time
from pathlib import Path

from bulkrelay import config as configmod
from bulkrelay.ops import open_queue
from bulkrelay.queue import Queue
from bulkrelay.webhooks import settings as settingsmod
from bulkrelay.webhooks.delivery import Deliverer, run, run_once, urllib_transport
from bulkrelay.webhooks.status import NONE_CONFIGURED, configured_status, format_rows

log = logging.getLogger("bulkrelay.webhooks")


def deliverers(queue: Queue, settings: settingsmod.Settings, **kwargs) -> list[Deliverer]:
    """One Deliverer per webhook, reading the queue's outbox (kwargs: transport, clock)."""
    kwargs.setdefault("transport", urllib_transport())

    def fetch(cursor: int, limit: int):
        return queue.events_since(cursor, limit=limit)

    return [Deliverer(w, settings.delivery, queue, fetch, **kwargs) for w in settings.webhooks]


def _setup(args) -> tuple[Queue, list[Deliverer]]:
    settings = settingsmod.load(args.webhooks)
    if Path(args.webhooks).stat().st_mode & stat.S_IROTH:
        log.warning(
            "event=webhooks_settings_readable path=%s fix='chmod 640 %s; chown root:bulkrelay %s' "
            "(it holds the secrets)",
            args.webhooks,
            args.webhooks,
            args.webhooks,
        )
    _config, queue = open_queue(args)
    return queue, deliverers(queue, settings)


def cmd_run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    queue, workers = _setup(args)
    stop = threading.Event()
    # SIGTERM (systemctl stop): finish the current request, commit, leave.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("event=webhooks_started webhooks=%s", ",".join(d.webhook.name for d in workers) or "-")
    try:
        run(workers, stop)
    finally:
        queue.close()
    log.info("event=webhooks_stopped")
    return 0


def cmd_once(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    queue, workers = _setup(args)
    try:
        return 0 if run_once(workers) else 1
    finally:
        queue.close()


def cmd_status(args) -> int:
    if Path(args.webhooks).exists():
        _config, queue = open_queue(args)
        try:
            data = configured_status(queue, args.webhooks, now=time.time())
        finally:
            queue.close()
    else:  # no webhooks (the audit passes this): the queue is not even opened
        data = NONE_CONFIGURED
    if data["error"]:
        raise configmod.ConfigError(data["error"])
    if args.json:
        print(json.dumps({"webhooks_file": args.webhooks, **data}, indent=2, sort_keys=True))
    elif not data["configured"]:
        print(f"no webhooks configured ({args.webhooks})")
    else:
        print("\n".join(format_rows(data["webhooks"])))
    return 0


def cmd_check(args) -> int:
    """Validate webhooks.toml as `run` will read it (the role runs this before it writes the file)."""
    settingsmod.load(args.webhooks)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("webhooks", help="deliver the delivery events to the application's URLs")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("run", help="the delivery loop (bulkrelay-webhooks.service); SIGTERM stops it")
    a.set_defaults(func=cmd_run)
    a = actions.add_parser("once", help="one pass; exit 0 when nothing is left undelivered, 1 otherwise")
    a.set_defaults(func=cmd_once)
    a = actions.add_parser("status", help="per webhook: cursor, pending events, failures, parked events")
    a.add_argument("--json", action="store_true", help="machine-readable output (read by the audit)")
    a.set_defaults(func=cmd_status)
    a = actions.add_parser("check", help="validate webhooks.toml (exit 2 with the reason when it is bad)")
    a.set_defaults(func=cmd_check)
    for a in actions.choices.values():
        a.add_argument("--config", default=configmod.DEFAULT_PATH, help="sender.toml (default: %(default)s)")
        a.add_argument(
            "--webhooks", default=settingsmod.DEFAULT_PATH, help="webhooks.toml (default: %(default)s)"
        )
