"""Suppression list: case rules, expiry, upsert, transactions, CSV import/export."""

from __future__ import annotations

import io
import sqlite3

import pytest

from bulkrelay import suppression as sup

NOW = 1_800_000_000.0


@pytest.fixture
def conn(tmp_path):
    c = sqlite3.connect(tmp_path / "q.sqlite", isolation_level=None)
    sup.ensure_schema(c)
    sup.ensure_schema(c)  # idempotent
    yield c
    c.close()


def test_domain_case_insensitive_local_part_exact(conn):
    sup.add(conn, "Alice@Customer.TEST", reason="hard bounce 5.1.1", source="dsn", now=NOW)
    assert sup.lookup(conn, "Alice@customer.test", now=NOW)["reason"] == "hard bounce 5.1.1"
    assert sup.lookup(conn, "<Alice@CUSTOMER.test>", now=NOW) is not None
    assert sup.lookup(conn, "alice@customer.test", now=NOW) is None
    assert sup.list_entries(conn)[0]["address"] == "Alice@customer.test"


def test_expiry(conn):
    sup.add(conn, "bob@customer.test", reason="soft", source="dsn", expires_at=NOW + 10, now=NOW)
    assert sup.lookup(conn, "bob@customer.test", now=NOW + 9) is not None
    assert sup.lookup(conn, "bob@customer.test", now=NOW + 10) is None
    assert sup.list_entries(conn, now=NOW + 11) == []
    assert len(sup.list_entries(conn)) == 1


def test_upsert_keeps_first_created_at_and_remove(conn):
    sup.add(conn, "c@customer.test", reason="first", source="a", now=NOW)
    entry = sup.add(conn, "c@customer.test", reason="second", source="b", now=NOW + 100)
    assert entry["created_at"] == NOW and entry["reason"] == "second" and entry["source"] == "b"
    assert sup.remove(conn, "C@customer.TEST") is False  # local part differs
    assert sup.remove(conn, "c@CUSTOMER.test") is True
    assert sup.lookup(conn, "c@customer.test", now=NOW) is None
    assert sup.remove(conn, "c@customer.test") is False


def test_writes_are_committed_and_visible_to_another_connection(conn, tmp_path):
    sup.add(conn, "d@customer.test", reason="x", source="cli", now=NOW)
    other = sqlite3.connect(tmp_path / "q.sqlite")
    assert other.execute("SELECT count(*) FROM suppression").fetchone()[0] == 1


def test_caller_transaction_is_not_committed(conn, tmp_path):
    conn.execute("BEGIN IMMEDIATE")
    sup.add(conn, "e@customer.test", reason="x", source="cli", now=NOW)
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert sup.lookup(conn, "e@customer.test", now=NOW) is None


def test_legacy_isolation_connection_commits(tmp_path):
    c = sqlite3.connect(tmp_path / "legacy.sqlite")
    sup.ensure_schema(c)
    sup.add(c, "f@customer.test", reason="x", source="cli", now=NOW)
    assert not c.in_transaction
    other = sqlite3.connect(tmp_path / "legacy.sqlite")
    assert other.execute("SELECT count(*) FROM suppression").fetchone()[0] == 1


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@", "@b.test", "a b@c.test", "a@-bad-.test", "a@b"])
def test_bad_addresses(conn, bad):
    with pytest.raises(sup.BadAddress, match="local@domain"):
        sup.add(conn, bad, reason="x", source="cli", now=NOW)
    assert sup.lookup(conn, bad, now=NOW) is None


def test_reason_required(conn):
    with pytest.raises(ValueError, match="reason"):
        sup.add(conn, "g@customer.test", reason=" ", source="cli", now=NOW)


def test_csv_round_trip(conn, tmp_path):
    sup.add(conn, "a@customer.test", reason="hard bounce 5.1.1, user unknown", source="dsn", now=NOW)
    sup.add(conn, "b@customer.test", reason="complaint", source="arf", expires_at=NOW + 86400, now=NOW)
    buf = io.StringIO()
    assert sup.export_csv(conn, buf) == 2
    text = buf.getvalue()
    assert text.splitlines()[0] == "address,reason,source,created_at,expires_at"
    assert '"hard bounce 5.1.1, user unknown"' in text
    c2 = sqlite3.connect(tmp_path / "other.sqlite", isolation_level=None)
    sup.ensure_schema(c2)
    entries = sup.read_csv(text, default_source="import", now=NOW + 5)
    assert sup.import_entries(c2, entries, now=NOW + 5) == 2
    assert sup.list_entries(c2) == sup.list_entries(conn)


def test_csv_without_header_is_one_address_per_line(conn):
    entries = sup.read_csv("x@customer.test\nY@Customer.test\n\n", default_source="import:f.csv", now=NOW)
    assert [e["address"] for e in entries] == ["x@customer.test", "Y@customer.test"]
    assert entries[0]["source"] == "import:f.csv" and entries[0]["reason"] == "imported"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("email,reason\nx@y.test,z\n", "no 'address' column"),
        ("address,colour\nx@y.test,red\n", "unknown column 'colour'"),
        ("address,reason\nx@y.test,ok\nnot-an-address,bad\n", "line 3"),
        ("address,expires_at\nx@y.test,next tuesday\n", "line 2: expires_at"),
        ("address,reason\nx@y.test,a,b\n", "line 2: 3 fields"),
    ],
)
def test_csv_errors_name_line_and_fix(text, message):
    with pytest.raises(ValueError, match=message):
        sup.read_csv(text, default_source="import", now=NOW)


def test_import_is_all_or_nothing(conn):
    entries = sup.read_csv("address\nok@customer.test\n", default_source="i", now=NOW)
    entries.append({"address": "bad", "reason": "x", "source": "i", "created_at": NOW, "expires_at": None})
    with pytest.raises(sup.BadAddress):
        sup.import_entries(conn, entries, now=NOW)
    assert sup.list_entries(conn) == []
