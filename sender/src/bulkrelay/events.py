"""``bulkrelay events`` and ``bulkrelay message show``: the delivery events, pulled.

``events --since CURSOR`` pages through the outbox (``bulkrelay.queue.events``) in cursor order:
one line per event, or one JSON object per line with ``--json`` (the same object a webhook
carries); the cursor to pass next time goes to standard error as ``next_cursor=N``, so a script
reads events from stdout and keeps the cursor. ``message show REF`` is the whole history of one
application reference: every message stored under it, every recipient's current state and its
events (those not yet pruned, ``[events] keep_days``).
"""

from __future__ import annotations

import argparse
import json
import sys

from bulkrelay import config as configmod
from bulkrelay.cli import UsageError
from bulkrelay.ops import open_queue
from bulkrelay.queue import EVENT_TYPES, Queue
from bulkrelay.suppression import iso_time

MAX_LIMIT = 10000


def format_event(event: dict) -> str:
    """One event as a line: cursor, time, type, ref, recipient, then what applies (key=value)."""
    extra = [f"{key}={event[key]}" for key in ("queue_id", "dsn", "kind", "source", "tls") if event[key]]
    extra += [f"{key}={event[key]!r}" for key in ("reason", "reply") if event[key]]
    return " ".join(
        [
            str(event["cursor"]),
            event["at"],
            event["type"],
            event["ref"] or "-",
            event["recipient"] or "-",
            *extra,
        ]
    )


def cmd_events(args) -> int:
    types = [t.strip() for value in args.type or () for t in value.split(",") if t.strip()]
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise UsageError(f"unknown event type {', '.join(unknown)}; use one of: {', '.join(EVENT_TYPES)}")
    _config, queue = open_queue(args)
    try:
        events = queue.events_since(args.since, limit=args.limit, ref=args.ref, types=types or None)
    finally:
        queue.close()
    for event in events:
        print(json.dumps(event, sort_keys=True) if args.json else format_event(event))
    print(f"next_cursor={events[-1]['cursor'] if events else args.since}", file=sys.stderr)
    return 0


def history(queue: Queue, ref: str) -> list[dict]:
    """Every message stored under ``ref`` with its recipients, their states and events."""
    out = []
    for message_id in queue.messages_with_ref(ref):
        message = queue.message(message_id)
        if message is None:  # dropped meanwhile
            continue
        message["created_at"] = iso_time(message["created_at"])
        message["recipients"] = [
            {
                "address": r["address"],
                "state": r["state"],
                "queue_id": r["postfix_qid"],
                "dsn": r["dsn"],
                "last_reply": r["last_reply"],
                "updated_at": iso_time(r["updated_at"]),
                "events": queue.recipient_events(r["id"]),
            }
            for r in message["recipients"]
        ]
        out.append(message)
    return out


def format_history(ref: str, messages: list[dict]) -> str:
    lines = []
    for m in messages:
        lines.append(f"message {m['id']} ref {ref}  Message-ID {m['message_id']}")
        lines.append(f"  from {m['mail_from']}  source {m['source']}  queued {m['created_at']}")
        for r in m["recipients"]:
            detail = "  ".join(f"{k}={r[k]}" for k in ("queue_id", "dsn") if r[k])
            lines.append(f"  {r['address']}: {r['state']}  {detail}".rstrip())
            lines.extend(f"    {format_event(e)}" for e in r["events"])
    return "\n".join(lines)


def cmd_message(args) -> int:
    _config, queue = open_queue(args)
    try:
        messages = history(queue, args.ref)
    finally:
        queue.close()
    if not messages:
        print(f"bulkrelay message: no message with reference {args.ref!r} in the queue", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ref": args.ref, "messages": messages}, indent=2))
    else:
        print(format_history(args.ref, messages))
    return 0


def _cursor(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a cursor; give 0 or the next_cursor printed last time"
        )
    return int(text)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of events from 1 to {MAX_LIMIT}")
    return int(text)


def register(subparsers) -> None:
    p = subparsers.add_parser("events", help="delivery events after a cursor (pull; the webhooks push them)")
    p.add_argument("--config", default=configmod.DEFAULT_PATH, help="sender.toml (default: %(default)s)")
    p.add_argument("--since", type=_cursor, default=0, metavar="CURSOR", help="after this cursor (default 0)")
    p.add_argument("--ref", help="only the events of this application reference")
    p.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help=f"only these types (repeat or comma-separate): {', '.join(EVENT_TYPES)}",
    )
    p.add_argument("--limit", type=_limit, default=500, help="at most this many events (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    p = subparsers.add_parser("message", help="the history of one application reference")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser(
        "show", help="every recipient of a reference, its state and its events (exit 1: unknown)"
    )
    a.add_argument("ref", help="the X-Bulkrelay-Ref: value, or the Message-ID of a message sent without it")
    a.add_argument("--config", default=configmod.DEFAULT_PATH, help="sender.toml (default: %(default)s)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_message)
