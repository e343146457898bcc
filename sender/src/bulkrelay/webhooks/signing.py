"""The webhook signature: ``X-Bulkrelay-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is HMAC-SHA256 with the webhook's secret over ``b"<t>." + body`` (the exact bytes of the
request body). A receiver recomputes it, compares in constant time and rejects a ``t`` more
than ``window`` seconds (300) from its own clock, so a captured request cannot be replayed
later. Several ``v1=`` values may appear (while a secret is being changed); one must match.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Bulkrelay-Signature"
WINDOW = 300


def _mac(secret: str | bytes, body: bytes, timestamp: int) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | float) -> str:
    """The header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    t = int(timestamp)
    return f"t={t},v1={_mac(secret, body, t)}"


def verify(secret: str | bytes, header: str, body: bytes, *, now: float, window: float = WINDOW) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within ``window`` of ``now``."""
    t, macs = None, []
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            t = int(value)
        elif name == "v1":
            macs.append(value)
    if t is None or not macs or abs(now - t) > window:
        return False
    expected = _mac(secret, body, t)
    return any(hmac.compare_digest(expected.encode(), m.encode()) for m in macs)
