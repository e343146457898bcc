"""The suppression list: addresses the sender must not mail, kept in the queue's SQLite database.

One row per address with why (``reason``), who decided (``source``: a bounce, a complaint, an
operator, an import), when (``created_at``) and until when (``expires_at``, None = for good).
Addresses compare case-insensitively on the domain and exactly on the local part (RFC 5321
leaves the local part's case to the receiving host).

Functions take the sqlite3 connection (``Queue.connection``) and never open or commit a
transaction the caller already holds: the release loop calls ``lookup`` inside its own
transaction. Writes issued outside a transaction are committed at once.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
import sqlite3
from collections.abc import Iterable

from bulkrelay.names import is_domain

log = logging.getLogger("bulkrelay.suppression")

SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
)
"""

CSV_FIELDS = ("address", "reason", "source", "created_at", "expires_at")
_LOCAL = re.compile(r"^[^\s@<>()\[\],;:\\\"]{1,64}$|^\"[^\"\r\n]{1,62}\"$")


class BadAddress(ValueError):
    """An address that cannot be suppressed (syntax); the message names it and the fix."""


def normalize(address: str) -> str:
    """``Local@Example.COM`` -> ``Local@example.com``; raises BadAddress for non-addresses."""
    addr = (address or "").strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    local, at, domain = addr.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not _LOCAL.match(local) or not is_domain(domain, min_labels=2):
        raise BadAddress(f"{address!r} is not an e-mail address; write it as local@domain.example")
    return f"{local}@{domain}"


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table when missing (idempotent)."""
    _write(conn, SCHEMA)


def _write(conn: sqlite3.Connection, sql: str, params: Iterable = ()) -> int:
    """Run one write; commit only when the caller holds no transaction of its own."""
    own = not conn.in_transaction
    count = conn.execute(sql, tuple(params)).rowcount
    if own and conn.in_transaction:
        conn.commit()
    return count


def add(
    conn: sqlite3.Connection,
    address: str,
    *,
    reason: str,
    source: str,
    expires_at: float | None = None,
    now: float,
) -> dict:
    """Suppress ``address`` (insert, or update reason/source/expiry of an existing entry).

    The first ``created_at`` is kept when an entry is renewed, so the list shows since when
    an address has been suppressed. Returns the stored entry.
    """
    key = normalize(address)
    if not reason or not reason.strip():
        raise ValueError("a suppression needs a reason (e.g. 'hard bounce 5.1.1')")
    reason = " ".join(reason.split())[:500]
    _write(
        conn,
        "INSERT INTO suppression(address, reason, source, created_at, expires_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(address) DO UPDATE SET reason = excluded.reason, source = excluded.source, "
        "expires_at = excluded.expires_at, "
        "created_at = CASE WHEN suppression.expires_at IS NOT NULL AND suppression.expires_at <= ? "
        "THEN excluded.created_at ELSE suppression.created_at END",
        (key, reason, source, now, expires_at, now),
    )
    log.info("event=suppressed address=%s source=%s reason=%r expires_at=%s", key, source, reason, expires_at)
    entry = _get(conn, key)
    assert entry is not None
    return entry


def remove(conn: sqlite3.Connection, address: str) -> bool:
    """Take ``address`` off the list; True when it was there."""
    key = normalize(address)
    removed = _write(conn, "DELETE FROM suppression WHERE address = ?", (key,)) > 0
    if removed:
        log.info("event=unsuppressed address=%s", key)
    return removed


def _row(row) -> dict:
    return dict(zip(CSV_FIELDS, tuple(row), strict=True))


def _get(conn: sqlite3.Connection, key: str) -> dict | None:
    row = conn.execute(
        "SELECT address, reason, source, created_at, expires_at FROM suppression WHERE address = ?", (key,)
    ).fetchone()
    return _row(row) if row else None


def lookup(conn: sqlite3.Connection, address: str, *, now: float) -> dict | None:
    """The active entry for ``address``, or None when it may be mailed.

    An expired entry counts as absent. An unparsable address is not on the list (None): the
    intake's validation, not the suppression list, is where bad syntax is refused.
    """
    try:
        key = normalize(address)
    except BadAddress:
        return None
    entry = _get(conn, key)
    if entry is None or (entry["expires_at"] is not None and entry["expires_at"] <= now):
        return None
    return entry


def list_entries(conn: sqlite3.Connection, *, now: float | None = None) -> list[dict]:
    """All entries by address; with ``now`` only the active ones."""
    rows = conn.execute(
        "SELECT address, reason, source, created_at, expires_at FROM suppression ORDER BY address"
    ).fetchall()
    entries = [_row(r) for r in rows]
    if now is not None:
        entries = [e for e in entries if e["expires_at"] is None or e["expires_at"] > now]
    return entries


# -- CSV ---------------------------------------------------------------------------------------
def iso_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, *, what: str) -> float | None:
    """ISO 8601 date or date-time (UTC when no offset), or epoch seconds; "" -> None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{what} {text!r} is not a time; write e.g. 2026-12-31 or 2026-12-31T23:59:00Z"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def export_csv(conn: sqlite3.Connection, out: io.TextIOBase) -> int:
    """Write every entry as CSV (header ``address,reason,source,created_at,expires_at``)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    entries = list_entries(conn)
    for e in entries:
        writer.writerow(
            [e["address"], e["reason"], e["source"], iso_time(e["created_at"]), iso_time(e["expires_at"])]
        )
    return len(entries)


def read_csv(text: str, *, default_source: str, now: float) -> list[dict]:
    """Parse an import file; every problem raises ValueError naming the line and the fix.

    The header must contain ``address``; ``reason``, ``source``, ``created_at`` and
    ``expires_at`` are optional. A file without a header line is read as one address per line.
    """
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError("the file is empty; write a header 'address,reason' and one address per line")
    reader = csv.reader(lines)
    first = next(reader)
    header = [h.strip().lower() for h in first]
    if "address" not in header:
        if len(first) == 1 and "@" in first[0]:
            header, rows = ["address"], [(1, first), *((n, r) for n, r in enumerate(reader, start=2))]
        else:
            raise ValueError(
                f"line 1: header {','.join(first)!r} has no 'address' column; "
                "start the file with 'address,reason,source,expires_at'"
            )
    else:
        unknown = [h for h in header if h not in CSV_FIELDS]
        if unknown:
            raise ValueError(f"line 1: unknown column {unknown[0]!r}; allowed: {', '.join(CSV_FIELDS)}")
        rows = list(enumerate(reader, start=2))
    out: dict[str, dict] = {}
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise ValueError(
                f"line {number}: {len(row)} fields for {len(header)} columns; quote values with commas"
            )
        record = dict(zip(header, (c.strip() for c in row), strict=False))
        try:
            address = normalize(record.get("address", ""))
            expires = parse_time(record.get("expires_at", ""), what="expires_at")
            created = parse_time(record.get("created_at", ""), what="created_at")
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        out[address] = {
            "address": address,
            "reason": record.get("reason") or "imported",
            "source": record.get("source") or default_source,
            "created_at": created if created is not None else now,
            "expires_at": expires,
        }
    return list(out.values())


def import_entries(conn: sqlite3.Connection, entries: list[dict], *, now: float) -> int:
    """Add parsed entries in one transaction (all or nothing); returns how many."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        for e in entries:
            add(
                conn,
                e["address"],
                reason=e["reason"],
                source=e["source"],
                expires_at=e["expires_at"],
                now=now,
            )
            conn.execute(
                "UPDATE suppression SET created_at = min(created_at, ?) WHERE address = ?",
                (e["created_at"], e["address"]),
            )
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(entries)
