"""What the ERP heard: the events the app host's webhook receiver accepted, counted by type.

Runs on the lab's app host (python3 only): python3 received_events.py FIRST COUNT [TIMEOUT]
waits (up to TIMEOUT seconds, default 120) until invoices INV-FIRST .. INV-(FIRST+COUNT-1) each
have a delivered event, then prints one line: the events by type (distinct ids) and how many
copies came twice (delivery is at least once). Exit 1 when some invoice never got its event.
"""

import collections
import json
import sys
import time
from pathlib import Path

EVENTS = Path("/var/lib/lab-webhooks/events.jsonl")  # fixture lab_webhook_receiver


def received():
    lines = EVENTS.read_text().splitlines() if EVENTS.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def main():
    first, count = int(sys.argv[1]), int(sys.argv[2])
    deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 120)
    refs = {f"INV-{n:05d}" for n in range(first, first + count)}
    while True:
        events = received()
        missing = refs - {e["ref"] for e in events if e["type"] == "delivered"}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    unique = {e["id"]: e for e in events}
    by_type = collections.Counter(e["type"] for e in unique.values())
    counts = ", ".join(f"{kind} {n}" for kind, n in by_type.most_common()) or "none"
    print(f"{len(unique)} events ({counts}; {len(events) - len(unique)} sent twice, same id)")
    if missing:
        print(f"ERROR: no delivered event for {len(missing)} invoices, e.g. {sorted(missing)[:3]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
