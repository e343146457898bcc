"""The delivery loop: POST the outbox's events to each webhook, in cursor order, at least once.

Per webhook, one step (``Deliverer.step``):

1. read the webhook's cursor and retry state (``webhook_cursors``);
2. fetch up to ``batch`` events after the cursor; those the webhook's ``events`` filter leaves
   out are not sent but the cursor passes them;
3. POST the rest, signed (``signing.sign``);
4. 2xx: move the cursor past the batch, durably, AFTER the response. A crash between the POST
   and that commit sends the same events (same ids) again: the documented duplicate that
   receivers remove by event id. A crash before the POST loses nothing (the cursor has not
   moved).
5. connection error, timeout, 3xx, 401, 403, 404, 408, 429, 5xx: the batch stays at the head
   (so the order per recipient holds) and is retried after retry_base * 2**(failures-1)
   seconds, capped at retry_max. 401/403/404 say the secret or the URL is wrong, not the event,
   so they are retried like an outage rather than parking every event. A batch still failing
   ``dead_after`` seconds after its first failure is parked as 'dead' and the loop goes on.
6. any other 4xx: the receiver rejects the payload. The batch is sent again one event at a
   time; only the events rejected on their own are parked ('rejected', with the status and the
   first 200 characters of the reply), the others are delivered.

A webhook seen for the first time starts at cursor 0: the oldest event still in the outbox.
A renamed webhook is a new one and replays the outbox (at least once, by design).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bulkrelay import __version__
from bulkrelay.queue.storage import QueueUnavailable
from bulkrelay.queue.webhooks import REPLY_KEPT, WebhookLedger
from bulkrelay.webhooks.settings import Delivery, Webhook
from bulkrelay.webhooks.signing import HEADER, sign

log = logging.getLogger("bulkrelay.webhooks")

USER_AGENT = f"bulkrelay/{__version__}"
IDLE_POLL = 1.0  # seconds between looks at the outbox when nothing is due
# 4xx answers that say the request could not be taken now or the webhook is misconfigured:
# retried with backoff, never parked one event at a time.
RETRY_4XX = frozenset({401, 403, 404, 408, 429})

# step() results
IDLE, WAITING, SENT, FAILED = "idle", "waiting", "sent", "failed"

Fetch = Callable[[int, int], list[dict[str, Any]]]


@dataclass(frozen=True)
class Response:
    status: int
    reply: str = ""


class TransportError(Exception):
    """No HTTP answer: connection refused, TLS not verified, timeout."""


Transport = Callable[[Webhook, bytes, dict[str, str], float], Response]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as is (a 3xx, retried and logged): urllib would turn a POST into a GET."""

    def redirect_request(self, *args, **kwargs):
        return None


def _opener(webhook: Webhook) -> urllib.request.OpenerDirector:
    # Verified TLS: the system CAs, or only the webhook's private CA when ca_file is set.
    context = ssl.create_default_context(cafile=webhook.ca_file or None)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect)


def urllib_transport() -> Transport:
    """The real transport: stdlib urllib, one opener (TLS context) per webhook."""
    openers: dict[str, urllib.request.OpenerDirector] = {}

    def post(webhook: Webhook, body: bytes, headers: dict[str, str], timeout: float) -> Response:
        opener = openers.get(webhook.name) or openers.setdefault(webhook.name, _opener(webhook))
        # the URL is https or loopback http (settings.py checks it)
        request = urllib.request.Request(webhook.url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with opener.open(request, timeout=timeout) as reply:
                return Response(reply.status, reply.read(REPLY_KEPT * 4).decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(exc.code, exc.read(REPLY_KEPT * 4).decode("utf-8", "replace"))
        except urllib.error.URLError as exc:
            raise TransportError(str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None

    return post


def _kind(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 and status not in RETRY_4XX:
        return "reject"
    return "retry"


class Deliverer:
    """One webhook's delivery: its state in ``ledger``, its events from ``fetch(cursor, limit)``."""

    def __init__(
        self,
        webhook: Webhook,
        delivery: Delivery,
        ledger: WebhookLedger,
        fetch: Fetch,
        *,
        transport: Transport,
        clock: Callable[[], float] = time.time,
    ):
        self.webhook = webhook
        self.delivery = delivery
        self.ledger = ledger
        self.fetch = fetch
        self.transport = transport
        self.clock = clock

    def step(self) -> str:
        """Handle the batch at the head once: IDLE, WAITING (backoff), SENT (progress) or FAILED."""
        name = self.webhook.name
        state = self.ledger.webhook_state(name)
        if state["next_attempt"] > self.clock():
            return WAITING
        events = self.fetch(state["cursor"], self.delivery.batch)
        if not events:
            return IDLE
        if state["cursor"] and events[0]["cursor"] > state["cursor"] + 1:
            # ids are never reused, so a gap is events pruned ([events] keep_days) before delivery
            log.error(
                "event=webhook_gap webhook=%s after=%d next=%d fix='raise [events] keep_days above the "
                "longest outage; the application can page the outbox with bulkrelay events --since'",
                name,
                state["cursor"],
                events[0]["cursor"],
            )
        end = events[-1]["cursor"]
        wanted = [e for e in events if self.webhook.wants(e)]
        if not wanted:
            self.ledger.webhook_advance(name, end, now=self.clock())
            return SENT
        outcome = self._post(wanted)
        if isinstance(outcome, Response) and _kind(outcome.status) == "ok":
            self.ledger.webhook_advance(name, end, now=self.clock())
            return SENT
        if isinstance(outcome, Response) and _kind(outcome.status) == "reject":
            return self._one_by_one(wanted, end, outcome)
        return self._failed(wanted, end, outcome)

    def _post(self, events: Sequence[dict[str, Any]]) -> Response | TransportError:
        body = json.dumps({"events": list(events)}, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            HEADER: sign(self.webhook.secret, body, self.clock()),
            "X-Bulkrelay-Webhook": self.webhook.name,
        }
        try:
            return self.transport(self.webhook, body, headers, self.delivery.timeout)
        except TransportError as exc:
            return exc

    def _one_by_one(self, events: list[dict[str, Any]], end: int, first: Response) -> str:
        """The receiver rejected the batch: find the event(s) it rejects, park only those."""
        if len(events) > 1:
            log.warning(
                "event=webhook_rejected webhook=%s status=%d events=%d action=one_at_a_time",
                self.webhook.name,
                first.status,
                len(events),
            )
        for i, event in enumerate(events):
            outcome = first if len(events) == 1 else self._post([event])
            kind = _kind(outcome.status) if isinstance(outcome, Response) else "retry"
            if kind == "retry":
                return self._failed(events[i:], end, outcome)
            parked = []
            if kind == "reject":
                assert isinstance(outcome, Response)
                log.warning(
                    "event=webhook_parked webhook=%s status=%d event_id=%s cursor=%d reason=rejected",
                    self.webhook.name,
                    outcome.status,
                    event["id"],
                    event["cursor"],
                )
                parked = [
                    {"event": event, "reason": "rejected", "status": outcome.status, "reply": outcome.reply}
                ]
            self.ledger.webhook_advance(self.webhook.name, event["cursor"], now=self.clock(), parked=parked)
        self.ledger.webhook_advance(self.webhook.name, end, now=self.clock())
        return SENT

    def _failed(self, events: list[dict[str, Any]], end: int, outcome: Any) -> str:
        """A retryable failure of the head batch: back off, or park it as dead after dead_after."""
        now = self.clock()
        failures = self.ledger.webhook_state(self.webhook.name)["failures"] + 1
        delay = min(self.delivery.retry_base * 2 ** (failures - 1), self.delivery.retry_max)
        if isinstance(outcome, Response):
            status, error = str(outcome.status), f"HTTP {outcome.status}"
        else:
            status, error = "-", f"no answer: {outcome}"
        log.warning(
            "event=webhook_failed webhook=%s status=%s error=%r failures=%d retry_in=%.0f",
            self.webhook.name,
            status,
            error,
            failures,
            delay,
        )
        state = self.ledger.webhook_failed(self.webhook.name, error, now=now, next_attempt=now + delay)
        if now - state["failing_since"] < self.delivery.dead_after:
            return FAILED
        log.error(
            "event=webhook_dead webhook=%s status=%s events=%d failing_for=%.0f",
            self.webhook.name,
            status,
            len(events),
            now - state["failing_since"],
        )
        code = outcome.status if isinstance(outcome, Response) else None
        reply = outcome.reply if isinstance(outcome, Response) else error
        parked = [{"event": e, "reason": "dead", "status": code, "reply": reply} for e in events]
        self.ledger.webhook_advance(self.webhook.name, end, now=now, parked=parked)
        return FAILED


def run_once(deliverers: Sequence[Deliverer], stop: threading.Event | None = None) -> bool:
    """Deliver until nothing is due; True when every webhook is left with nothing undelivered."""
    done = True
    for d in deliverers:
        result = SENT
        while result == SENT and not (stop and stop.is_set()):
            result = d.step()
        done = done and result == IDLE
    return done


def run(deliverers: Sequence[Deliverer], stop: threading.Event, *, idle: float = IDLE_POLL) -> None:
    """The long-running loop; returns after the current request once ``stop`` is set."""
    while not stop.is_set():
        progress = False
        try:
            for d in deliverers:
                if stop.is_set():
                    return
                progress = d.step() == SENT or progress
        except QueueUnavailable as exc:
            # a long write by another process, a full disk: try again later, do not die
            log.error("event=webhooks_queue_unavailable error=%r", str(exc))
        if not progress:
            stop.wait(idle)
