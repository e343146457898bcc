"""The service's component-failure ledger, kept in the queue database across restarts.

The service records each failed component here before it exits; ``bulkrelay status`` and the
metrics read it back. Its own module so that the service, the operator commands and the
metrics all import it without importing each other.
"""

from __future__ import annotations

import json
import logging

from bulkrelay.queue import Queue, QueueUnavailable

log = logging.getLogger("bulkrelay.service")  # the service's log, where these lines always were

COMPONENTS = ("release", "tracking", "intake", "hotfolder")
FAILURES_KEY = "service.component_failures"  # JSON {component: count}, kept across restarts
LAST_FAILURE_KEY = "service.last_failure"  # JSON {"at", "component", "error"}


def component_failures(queue: Queue) -> tuple[dict[str, int], dict | None]:
    """(failure count per component, the last failure) as recorded in the queue database."""
    counts = json.loads(queue.get_state(FAILURES_KEY) or "{}")
    last = queue.get_state(LAST_FAILURE_KEY)
    return {name: counts.get(name, 0) for name in (*COMPONENTS, *counts)}, json.loads(last) if last else None


def record_failure(queue: Queue, component: str, error: BaseException, now: float) -> None:
    """Count the failure where `bulkrelay status` and the metrics of the next run can see it."""
    text = f"{type(error).__name__}: {error}"[:300]
    try:
        counts, _ = component_failures(queue)
        counts[component] = counts.get(component, 0) + 1
        queue.set_state(FAILURES_KEY, json.dumps(counts, sort_keys=True))
        queue.set_state(LAST_FAILURE_KEY, json.dumps({"at": now, "component": component, "error": text}))
    except (QueueUnavailable, ValueError) as exc:  # e.g. the disk is full: the log still has it
        log.error("event=component_failure_not_recorded component=%s error=%r", component, str(exc))
