"""Prometheus metrics of the sender, served as text on ``[metrics] listen`` (localhost only).

``GET /metrics`` returns the exposition format 0.0.4; anything else gets 404. The numbers come
from the queue database (counts by state, deliveries by TLS level, releases in the current
interval and today) and the running service (submissions, retries, failures, log results since
start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from bulkrelay.failures import component_failures
from bulkrelay.queue import Queue
from bulkrelay.webhooks import settings as webhook_settings
from bulkrelay.webhooks.status import configured_status

log = logging.getLogger("bulkrelay.metrics")


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def render(
    queue: Queue,
    *,
    loop: Any = None,
    tracker: Any = None,
    now: float | None = None,
    webhooks_file: str = webhook_settings.DEFAULT_PATH,
) -> str:
    """The metrics text. ``loop`` is the service's ReleaseLoop, ``tracker`` its Tracker."""
    now = time.time() if now is None else now
    out = [
        "# HELP bulkrelay_recipients Recipients in the queue by state.",
        "# TYPE bulkrelay_recipients gauge",
    ]
    out += [_line("bulkrelay_recipients", n, {"state": s}) for s, n in queue.counts().items()]
    out += [
        "# HELP bulkrelay_deliveries_total Deliveries by TLS level (none .. verified, from the Postfix log).",
        "# TYPE bulkrelay_deliveries_total counter",
    ]
    out += [_line("bulkrelay_deliveries_total", n, {"tls": t}) for t, n in queue.tls_counts().items()]
    out += [
        "# HELP bulkrelay_component_failures_total Service components that failed (kept across restarts).",
        "# TYPE bulkrelay_component_failures_total counter",
    ]
    out += [
        _line("bulkrelay_component_failures_total", n, {"component": c})
        for c, n in component_failures(queue)[0].items()
    ]
    if loop is not None:
        policy = loop.policy
        interval = policy.config.interval
        decision = policy.decide(queue, now)
        day_start, _ = policy._day_bounds(now)
        out += [
            "# HELP bulkrelay_released_interval Recipients released in the last policy interval.",
            "# TYPE bulkrelay_released_interval gauge",
            _line("bulkrelay_released_interval", queue.released_since(now - interval)),
            "# HELP bulkrelay_released_today Recipients released since local midnight.",
            "# TYPE bulkrelay_released_today gauge",
            _line("bulkrelay_released_today", queue.released_since(day_start)),
            "# HELP bulkrelay_paused 1 while releasing is paused (operator or DNSBL listing).",
            "# TYPE bulkrelay_paused gauge",
            _line("bulkrelay_paused", 1 if decision.reason.startswith("paused") else 0),
            "# HELP bulkrelay_release_allowed Recipients the policy would release right now.",
            "# TYPE bulkrelay_release_allowed gauge",
            _line("bulkrelay_release_allowed", decision.allowed),
        ]
        out += ["# HELP bulkrelay_submit_total Submission outcomes since the service started.",
                "# TYPE bulkrelay_submit_total counter"]  # fmt: skip
        out += [_line("bulkrelay_submit_total", n, {"outcome": k}) for k, n in loop.submitter.stats.items()]
    if tracker is not None:
        out += ["# HELP bulkrelay_log_results_total Postfix log results applied since start.",
                "# TYPE bulkrelay_log_results_total counter"]  # fmt: skip
        out += [_line("bulkrelay_log_results_total", n, {"result": k}) for k, n in tracker.stats.items()]
    out += _webhook_lines(configured_status(queue, webhooks_file, now=now))
    return "\n".join(out) + "\n"


_WEBHOOK_METRICS = (
    ("bulkrelay_webhook_pending", "gauge", "pending", "Outbox events the webhook has not handled yet."),
    (
        "bulkrelay_webhook_oldest_pending_seconds",
        "gauge",
        "oldest_pending_age",
        "Age of the oldest event not yet delivered to the webhook (0: none).",
    ),
    ("bulkrelay_webhook_failures", "gauge", "failures", "Failed requests in a row (0: delivering)."),
    ("bulkrelay_webhook_failures_total", "counter", "failures_total", "Failed requests to the webhook."),
    ("bulkrelay_webhook_parked", "gauge", "parked", "Events the webhook gave up on (rejected or dead)."),
)


def _webhook_lines(status: dict[str, Any]) -> list[str]:
    """Per webhook; with webhooks.toml present but unreadable, bulkrelay_webhooks_settings_error 1."""
    out = []
    if status["configured"] or status["error"]:
        out += [
            "# HELP bulkrelay_webhooks_settings_error 1 when webhooks.toml cannot be read or is invalid.",
            "# TYPE bulkrelay_webhooks_settings_error gauge",
            _line("bulkrelay_webhooks_settings_error", 1 if status["error"] else 0),
        ]
    for name, kind, key, text in _WEBHOOK_METRICS if status["webhooks"] else ():
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        out += [_line(name, row[key] or 0, {"webhook": row["name"]}) for row in status["webhooks"]]
    return out


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, make_body) -> None:
    try:
        request = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            pass
        parts = request.decode("latin-1").split()
        if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
            body = make_body().encode()
            head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        else:
            body = b"not found; try /metrics\n"
            head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except (OSError, TimeoutError, UnicodeError) as exc:
        log.debug("event=metrics_request_failed error=%r", str(exc))
    finally:
        writer.close()


async def serve_metrics(config: Any, queue: Queue, loop: Any, tracker: Any, stop: asyncio.Event) -> None:
    host, _, port = config.metrics.listen.rpartition(":")
    host = host.strip("[]")

    def body() -> str:
        return render(queue, loop=loop, tracker=tracker, now=loop.clock() if loop else None)

    try:
        server = await asyncio.start_server(lambda r, w: _handle(r, w, body), host=host, port=int(port))
    except OSError as exc:
        # Metrics are for watching; sending goes on without them.
        log.error("event=metrics_unavailable listen=%s error=%r", config.metrics.listen, str(exc))
        return
    log.info("event=metrics_listening listen=%s", config.metrics.listen)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
