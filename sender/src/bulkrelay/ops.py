"""Operator commands: ``status``, ``queue list|show|retry|drop``, ``pause``, ``resume``.

They open the same SQLite database as the running service (WAL lets both work at once), so
they work whether or not ``bulkrelay serve`` is running. ``Progress`` is the progress display
used by ``status --watch`` for long drains and available to other commands (enqueue).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import IO, Any

from bulkrelay import config as configmod
from bulkrelay.bounces import health as bounce_health
from bulkrelay.cli import UsageError
from bulkrelay.failures import component_failures
from bulkrelay.policy import Policy, pause, resume
from bulkrelay.queue import STATES, Queue, QueueUnavailable
from bulkrelay.servicelock import service_state
from bulkrelay.webhooks import settings as webhook_settings
from bulkrelay.webhooks.status import configured_status, format_rows


def open_queue(args) -> tuple[configmod.Config, Queue]:
    config = configmod.load(args.config)
    try:
        return config, Queue(config.queue.path)
    except QueueUnavailable as exc:
        raise UsageError(f"{exc}; check [queue] path in {args.config} and its permissions") from None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _poller_state(queue: Queue, now: float) -> dict[str, Any] | None:
    """The bounce poller's last pass (None: it never ran against this queue)."""
    state = bounce_health.read(queue.connection, now=now)
    if state is not None:
        state["last_poll_at"] = _iso(state["last_poll_at"])
    return state


def status_data(
    config: configmod.Config, queue: Queue, *, now: float, webhooks_file: str = webhook_settings.DEFAULT_PATH
) -> dict[str, Any]:
    policy = Policy(config.policy, dnsbl_state_file=config.dnsbl.state_file)
    decision = policy.decide(queue, now)
    counts = queue.counts()
    ready_at = queue.next_ready_at()
    if counts["queued"] == 0 or (decision.allowed <= 0 and decision.next_at is None):
        next_release = None  # nothing queued, or paused until an operator resumes
    elif decision.allowed > 0 and ready_at is not None and ready_at <= now:
        next_release = now
    else:
        candidates = [t for t in (decision.next_at, ready_at) if t is not None]
        next_release = max(candidates) if candidates else None
    day_start, _ = policy._day_bounds(now)
    interval = config.policy.interval
    per_domain = {
        domain: {"limit": limit, "released_last_interval": limit - decision.per_domain.get(domain, limit)}
        for domain, limit in config.policy.per_domain.items()
    }
    failures, last_failure = component_failures(queue)
    return {
        "service": service_state(config.queue.path),
        "component_failures": failures,
        "last_failure": last_failure and {**last_failure, "at": _iso(last_failure["at"])},
        "per_domain": per_domain,
        "counts": counts,
        "deliveries_by_tls": queue.tls_counts(),
        "pending": counts["queued"] + counts["submitting"],
        "paused": decision.paused,
        "policy": decision.reason,
        "release_allowed_now": decision.allowed,
        "next_release": _iso(next_release),
        "rates": {
            "interval_seconds": interval,
            "released_last_interval": queue.released_since(now - interval),
            "batch_size": config.policy.batch_size,
            "released_last_hour": queue.released_since(now - 3600),
            "released_today": queue.released_since(day_start),
            "daily_limit": policy.daily_limit(now),
        },
        "bounce_poller": _poller_state(queue, now),
        "webhooks": configured_status(queue, webhooks_file, now=now),
        "last_errors": [
            {
                "at": _iso(e["at"]),
                "message": e["message"],
                "recipient": e["recipient"],
                "address": e["address"],
                "reason": e["reason"],
            }
            for e in queue.last_errors(5)
        ],
    }


def format_status(data: dict[str, Any]) -> str:
    lines = []
    service = data["service"]
    if service["running"] is None:
        lines.append("service: unknown (cannot read the lock file; run as the service user)")
    elif service["running"]:
        lines.append(f"service: running (pid {service['pid'] or '?'})")
    else:
        lines.append("service: NOT running (start it: systemctl start bulkrelay-sender)")
    last = data["last_failure"]
    if last:
        total = "  ".join(f"{c}={n}" for c, n in data["component_failures"].items())
        lines.append(f"component failures: {total}")
        lines.append(f"  last: {last['at']} {last['component']}: {last['error']} (traceback in the log)")
    counts = "  ".join(f"{s}={n}" for s, n in data["counts"].items())
    lines.append(f"recipients: {counts}")
    tls = "  ".join(f"{level}={n}" for level, n in data["deliveries_by_tls"].items())
    lines.append(f"deliveries by TLS: {tls}")
    state = "PAUSED" if data["paused"] else "running"
    lines.append(f"release: {state} ({data['policy']}); allowed now {data['release_allowed_now']}")
    lines.append(f"next release: {data['next_release'] or '-'}")
    r = data["rates"]
    limit = r["daily_limit"] if r["daily_limit"] is not None else "none"
    lines.append(
        f"rates: {r['released_last_interval']}/{r['batch_size']} in the last {r['interval_seconds']:g}s, "
        f"{r['released_last_hour']} in the last hour, {r['released_today']} today (daily limit {limit})"
    )
    for domain, use in data["per_domain"].items():
        lines.append(f"  {domain}: {use['released_last_interval']}/{use['limit']} in the last interval")
    poll = data.get("bounce_poller")
    if poll is not None:
        verdict = "ok" if poll["ok"] else f"FAILED ({poll['failures_in_a_row']} in a row)"
        lines.append(
            f"bounce poller: last pass {poll['last_poll_at']} ({poll['age_seconds']:.0f}s ago) {verdict}: "
            f"{poll['detail']}"
        )
    hooks = data["webhooks"]
    if hooks["error"]:
        lines.append(f"webhooks: settings unreadable: {hooks['error']}")
    lines.extend(format_rows(hooks["webhooks"]))
    if data["last_errors"]:
        lines.append("last errors:")
        lines.extend(
            f"  {e['at']} message={e['message']} recipient={e['recipient']} {e['address']}: {e['reason']}"
            for e in data["last_errors"]
        )
    return "\n".join(lines)


class Progress:
    """A one-line progress display: ``label: done/total (pct) rate/s ETA``.

    On a terminal the line is redrawn in place; otherwise one line is printed per update so
    logs and pipes stay readable.
    """

    def __init__(
        self, total: int, *, label: str = "progress", stream: IO[str] | None = None, clock=time.monotonic
    ):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = self.total - self.done
        eta = f"ETA {dt.timedelta(seconds=int(left / rate))}" if rate > 0 and left > 0 else "ETA -"
        return f"{self.label}: {self.done}/{self.total} ({pct:.1f}%) {rate:.1f}/s {eta}"

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _watch(config: configmod.Config, queue: Queue, every: float, out: IO[str]) -> int:
    first = queue.counts()
    pending0 = first["queued"] + first["submitting"]
    progress = Progress(pending0, label="drain", stream=out)
    try:
        while True:
            counts = queue.counts()
            pending = counts["queued"] + counts["submitting"]
            progress.total = max(progress.total, progress.done + pending)
            progress.update(progress.total - pending)
            if pending == 0:
                break
            time.sleep(every)
    finally:
        progress.finish()
    return 0


def cmd_status(args) -> int:
    config, queue = open_queue(args)
    try:
        if args.watch:
            return _watch(config, queue, args.watch, sys.stdout)
        data = status_data(config, queue, now=time.time(), webhooks_file=args.webhooks)
        print(json.dumps(data, indent=2, sort_keys=True) if args.json else format_status(data))
        return 0
    finally:
        queue.close()


def cmd_queue(args) -> int:
    _config, queue = open_queue(args)
    try:
        return _QUEUE_ACTIONS[args.action](args, queue)
    finally:
        queue.close()


def _list(args, queue: Queue) -> int:
    if args.state and args.state not in STATES:
        raise UsageError(f"unknown state {args.state!r}; use one of: {', '.join(STATES)}")
    rows = queue.list_recipients(state=args.state, limit=args.limit, after=args.after)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'recipient':>9} {'message':>8} {'state':<10} {'tries':>5} {'qid':<12} address / last reply")
    for r in rows:
        reply = f"  {r['last_reply']}" if r["last_reply"] else ""
        print(
            f"{r['id']:>9} {r['message']:>8} {r['state']:<10} {r['attempts']:>5} "
            f"{r['postfix_qid'] or '-':<12} {r['address']}{reply}"
        )
    return 0


def _show(args, queue: Queue) -> int:
    message = queue.message(args.id)
    if message is None:
        raise UsageError(f"no message {args.id} in the queue; find ids with `bulkrelay queue list`")
    if args.json:
        print(json.dumps(message, indent=2))
        return 0
    print(f"message {message['id']}  Message-ID {message['message_id']}")
    print(f"  from {message['mail_from']}  source {message['source']}  size {message['size']}")
    print(f"  queued {_iso(message['created_at'])}")
    for r in message["recipients"]:
        print(
            f"  recipient {r['id']} {r['address']}: {r['state']} tries={r['attempts']} "
            f"qid={r['postfix_qid'] or '-'} dsn={r['dsn'] or '-'} updated {_iso(r['updated_at'])}"
        )
        if r["last_reply"]:
            print(f"    last reply: {r['last_reply']}")
    if args.body:
        sys.stdout.write(queue.body(message["id"]).decode("utf-8", "replace"))
    return 0


def _retry(args, queue: Queue) -> int:
    if args.state:
        try:
            n = queue.retry(state=args.state)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.ids:
        ids: list[int] = []
        for mid in args.ids:
            found = queue.recipients_of(mid)
            if not found:
                raise UsageError(f"no message {mid} in the queue; find ids with `bulkrelay queue list`")
            ids += found
        n = queue.retry(recipient_ids=ids)
    else:
        raise UsageError("name message ids or --state failed|deferred|bounced")
    print(f"{n} recipient(s) queued again")
    return 0


def _drop(args, queue: Queue) -> int:
    total = 0
    for mid in args.ids:
        try:
            total += queue.drop(mid)
        except KeyError:
            raise UsageError(f"no message {mid} in the queue; find ids with `bulkrelay queue list`") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    print(f"dropped {len(args.ids)} message(s), {total} recipient(s)")
    return 0


_QUEUE_ACTIONS = {"list": _list, "show": _show, "retry": _retry, "drop": _drop}


def cmd_pause(args) -> int:
    _config, queue = open_queue(args)
    try:
        pause(queue, args.reason)
        print(f"paused: {args.reason}; nothing is released until `bulkrelay resume`")
    finally:
        queue.close()
    return 0


def cmd_resume(args) -> int:
    _config, queue = open_queue(args)
    try:
        was = resume(queue)
        print("resumed" if was else "was not paused")
    finally:
        queue.close()
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("needs a positive number of seconds")
    return value


def register(subparsers) -> None:
    def add(name: str, help_text: str):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("--config", default=configmod.DEFAULT_PATH, help="sender.toml (default: %(default)s)")
        return p

    p = add("status", "queue counts, release state, next release, rates, last errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--webhooks", default=webhook_settings.DEFAULT_PATH, help="webhooks.toml (default: %(default)s)"
    )
    p.add_argument(
        "--watch", type=_positive, nargs="?", const=2.0, default=None, metavar="SECONDS",
        help="show drain progress every SECONDS (default 2) until the queue is empty",
    )  # fmt: skip
    p.set_defaults(func=cmd_status)

    p = add("queue", "list, show, retry or drop queued mail")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="recipients, oldest first")
    a.add_argument("--state", help=f"only this state ({', '.join(STATES)})")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--after", type=int, default=0, help="start after this recipient id (paging)")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("show", help="one message with its recipients")
    a.add_argument("id", type=int, help="message id")
    a.add_argument("--body", action="store_true", help="print the stored message too")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("retry", help="queue failed/deferred recipients again now")
    a.add_argument("ids", type=int, nargs="*", help="message ids")
    a.add_argument("--state", help="every recipient in this state (failed, deferred, bounced)")
    a = actions.add_parser("drop", help="delete messages from the queue")
    a.add_argument("ids", type=int, nargs="+", help="message ids")
    for a in actions.choices.values():
        a.add_argument(
            "--config", default=argparse.SUPPRESS, help="sender.toml (also accepted before ACTION)"
        )
    p.set_defaults(func=cmd_queue)

    p = add("pause", "stop releasing mail (persists across restarts)")
    p.add_argument("--reason", default="paused by operator", help="shown in status and logs")
    p.set_defaults(func=cmd_pause)
    p = add("resume", "release mail again after `pause`")
    p.set_defaults(func=cmd_resume)
