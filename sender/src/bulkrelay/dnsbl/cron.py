"""One cron run: check, compare with the last state, alert on change, write the state.

Everything with side effects is injected (`check` callable, `send_mail`, logger, clock), so the
change logic is tested without DNS or mail, and the lab tests run it for real.
"""

from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from bulkrelay.dnsbl.state import (
    Event,
    advance,
    alert_body,
    alert_subject,
    prometheus_text,
    read_state,
    write_atomic,
)

LOG_IDENT = "bulkrelay-dnsbl"


class AlreadyRunning(Exception):
    """Another run holds the lock (the previous one still waits for a slow list)."""


@dataclass
class MailSettings:
    recipients: Sequence[str]
    sender: str = ""
    command: str = "/usr/sbin/sendmail -t -oi"


def kv(**fields: Any) -> str:
    """One structured log line: key=value, values quoted when they contain spaces."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(ch in text for ch in ' "='):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def syslog_logger(use_syslog: bool = True) -> logging.Logger:
    logger = logging.getLogger(LOG_IDENT)
    if logger.handlers:
        return logger
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler: logging.Handler
    if use_syslog and Path("/dev/log").exists():
        handler = logging.handlers.SysLogHandler(address="/dev/log", facility="mail")
        handler.ident = f"{LOG_IDENT}: "
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


def build_message(mail: MailSettings, subject: str, body: str, hostname: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail.sender or f"bulkrelay-dnsbl@{hostname}"
    message["To"] = ", ".join(mail.recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=hostname)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message


def send_with_command(mail: MailSettings, message: EmailMessage) -> None:
    """Pipe the message to the mail command (sendmail -t reads recipients from the headers)."""
    argv = shlex.split(mail.command)
    if not argv:
        raise OSError("mail command is empty")
    proc = subprocess.run(argv, input=message.as_bytes(), capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OSError(f"{argv[0]} exited {proc.returncode}: {err[-1] if err else 'no message'}")


def run_cron(
    check: Callable[[], dict[str, Any]],
    state_path: str | Path,
    mail: MailSettings | None,
    logger: logging.Logger,
    *,
    alert_after: int = 2,
    critical: int = 1,
    prometheus_path: str | Path | None = None,
    send: Callable[[MailSettings, EmailMessage], None] = send_with_command,
    hostname: str | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> tuple[dict[str, Any], list[Event]]:
    """Run one check under a lock and return (new state, events)."""
    host = hostname or socket.getfqdn()
    state_file = Path(state_path)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with open(state_file.parent / f".{state_file.name}.lock", "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning(kv(event="skipped", reason="previous run still active", state=state_file))
            raise AlreadyRunning(str(state_file)) from None
        previous = read_state(state_file)
        current = check()
        state, events = advance(previous, current, alert_after=alert_after, critical=critical)

        logger.info(
            kv(
                event="check",
                status=state["status"],
                listed=len(state["listings"]),
                errors=len(state["errors"]),
                checked=state.get("checked", 0),
                elapsed=state.get("elapsed", 0),
            )
        )
        for item in state["listings"]:
            logger.warning(
                kv(
                    event="listing",
                    target=item["target"],
                    zone=item["zone"],
                    codes=",".join(item.get("codes", [])),
                    reason=item.get("reason", ""),
                    stale=item.get("stale", False),
                )
            )
        for err in state["errors"]:
            logger.warning(
                kv(event="list_error", zone=err["zone"], target=err.get("target"), error=err.get("error"))
            )
        for ev in events:
            target = {"target": ev.target} if ev.target else {}
            logger.warning(kv(event="change", change=ev.kind, **target, zone=ev.zone, detail=ev.detail))

        if events and mail and mail.recipients:
            message = build_message(mail, alert_subject(events, host), alert_body(events, state, host), host)
            try:
                send(mail, message)
            except (OSError, subprocess.SubprocessError) as exc:
                # Keep what the admin was last told: the same changes are alerted next run.
                state["notified"] = (previous or {}).get("notified", {"listings": [], "broken": []})
                state["alert_pending"] = True
                logger.error(kv(event="alert_failed", to=",".join(mail.recipients), error=exc))
            else:
                state["alert_pending"] = False
                logger.info(kv(event="alert_sent", to=",".join(mail.recipients), changes=len(events)))
        write_atomic(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")
        if prometheus_path:
            write_atomic(prometheus_path, prometheus_text(state, wall_clock()))
    return state, events


def hostname_default() -> str:
    return os.environ.get("BULKRELAY_HOSTNAME") or socket.getfqdn()
