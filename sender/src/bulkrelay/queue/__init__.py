"""The durable queue: one SQLite database (WAL) holding messages, recipients and release history.

A message body is stored once; each recipient has its own row and state machine::

    queued -> submitting -> submitted (Postfix queue id) -> delivered | deferred | bounced
                        \\-> failed (5xx at submission)        queued -> suppressed

Every change of a recipient's state writes an event (accepted, released, submitted, delivered,
deferred, bounced, complained, suppressed, expired) into the ``events`` outbox in the same
transaction, under the message's application reference (``X-Bulkrelay-Ref:``, else the
Message-ID); the webhook loop and ``bulkrelay events`` read it by cursor.

``submitting`` is written durably before a recipient's DATA is sent. A row still in that state
after a crash is ambiguous (did Postfix take it?) and is resolved from the Postfix log before
anything is resent (see ``bulkrelay.service``).

Built for 1M+ recipients: picking the next batch walks a partial index of ready rows in
(next_attempt, id) order, and per-state counts live in a table kept current by triggers, so
neither ``take`` nor ``status`` scans the recipients table.

The queue is one ``Queue`` object built from one part per concern, each in its own module with
its own SQL statements:

- ``storage``: schema, migrations, connection, transactions (BEGIN IMMEDIATE .. COMMIT);
- ``enqueue``: storing a message (adding Message-ID and Date when missing);
- ``release``: ``take``, ``next_ready_at``, the submission marks and the release ledger;
- ``reconcile``: results from the Postfix log and from DSNs, settling 'submitting' rows;
- ``commands``: what the operator lists, shows, retries, drops, counts and pauses;
- ``events``: the delivery-events outbox, written by ``enqueue``, ``release`` and ``reconcile``
  inside their transactions, and read by cursor;
- ``webhooks``: each webhook's outbox cursor, retry state and parked events.
"""

from bulkrelay.queue.commands import Commands
from bulkrelay.queue.enqueue import Enqueue, Submission, ensure_ids
from bulkrelay.queue.events import EVENT_TYPES, Events
from bulkrelay.queue.reconcile import Reconciliation
from bulkrelay.queue.release import Release, queue_id_from_reply
from bulkrelay.queue.storage import (
    BUSY_TIMEOUT,
    ERRORS_KEPT,
    FINAL_STATES,
    SCHEMA,
    STATES,
    TLS_LEVELS,
    Checkpointer,
    QueueUnavailable,
    Storage,
    domain_of,
)
from bulkrelay.queue.webhooks import WebhookLedger

__all__ = [
    "BUSY_TIMEOUT",
    "ERRORS_KEPT",
    "EVENT_TYPES",
    "FINAL_STATES",
    "SCHEMA",
    "STATES",
    "TLS_LEVELS",
    "Checkpointer",
    "Queue",
    "QueueUnavailable",
    "Storage",
    "Submission",
    "domain_of",
    "ensure_ids",
    "queue_id_from_reply",
]


class Queue(Enqueue, Release, Reconciliation, Commands, Events, WebhookLedger):
    """The sender's SQLite queue. Safe to share between threads (calls are serialised).

    One connection (``Storage``) shared by the parts; ``Queue(path, clock=..., busy_timeout=...)``
    opens it as before.
    """
