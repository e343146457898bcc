"""`bulkrelay suppress ...` and `bulkrelay bounces parse` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

from bulkrelay.cli import main

CORPUS = Path(__file__).parent / "data" / "bounces"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_remove(tmp_path, capsys):
    db = str(tmp_path / "q.sqlite")
    code, out, _ = run(
        capsys, "suppress", "add", "A@Customer.TEST", "b@customer.test", "--reason", "asked", "--db", db
    )
    assert code == 0 and "suppressed A@customer.test" in out
    code, out, err = run(capsys, "suppress", "list", "--db", db)
    assert code == 0 and out.count("\tcli\tasked\tfor good\n") == 2 and "2 suppressed" in err
    code, out, _ = run(capsys, "suppress", "remove", "b@CUSTOMER.test", "nobody@customer.test", "--db", db)
    assert code == 1 and "removed b@CUSTOMER.test" in out and "not on the list: nobody@customer.test" in out
    code, out, _ = run(capsys, "suppress", "list", "--json", "--db", db)
    assert [e["address"] for e in json.loads(out)] == ["A@customer.test"]


def test_expired_entries_only_with_all(tmp_path, capsys):
    db = str(tmp_path / "q.sqlite")
    run(capsys, "suppress", "add", "old@customer.test", "--expires", "2001-01-01", "--db", db)
    assert "old@customer.test" not in run(capsys, "suppress", "list", "--db", db)[1]
    assert "old@customer.test" in run(capsys, "suppress", "list", "--all", "--db", db)[1]
    run(capsys, "suppress", "add", "later@customer.test", "--expires", "2099-01-31", "--db", db)
    assert "later@customer.test\t" in run(capsys, "suppress", "list", "--db", db)[1]
    assert "\tuntil 2099-01-31T00:00:00Z\n" in run(capsys, "suppress", "list", "--db", db)[1]


def test_import_export_round_trip(tmp_path, capsys):
    db = str(tmp_path / "q.sqlite")
    source = tmp_path / "in.csv"
    source.write_text('address,reason\nx@customer.test,"user unknown, says ISP"\ny@customer.test,\n')
    code, out, _ = run(capsys, "suppress", "import", str(source), "--db", db)
    assert code == 0 and "imported 2 entries" in out
    target = tmp_path / "out.csv"
    code, _, err = run(capsys, "suppress", "export", str(target), "--db", db)
    assert code == 0 and "exported 2 entries" in err
    lines = target.read_text().splitlines()
    assert lines[0] == "address,reason,source,created_at,expires_at"
    assert lines[1].startswith('x@customer.test,"user unknown, says ISP",import:in.csv,')
    assert lines[2].startswith("y@customer.test,imported,import:in.csv,")


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    db = str(tmp_path / "q.sqlite")
    bad = tmp_path / "bad.csv"
    bad.write_text("address\nok@customer.test\nnot an address\n")
    code, _, err = run(capsys, "suppress", "import", str(bad), "--db", db)
    assert code == 2 and "line 3" in err and "local@domain" in err and "Traceback" not in err
    assert run(capsys, "suppress", "list", "--db", db)[1] == ""  # nothing half-imported
    code, _, err = run(capsys, "suppress", "add", "nope", "--db", db)
    assert code == 2 and "'nope' is not an e-mail address" in err
    code, _, err = run(capsys, "suppress", "add", "a@customer.test", "--expires", "soon", "--db", db)
    assert code == 2 and "--expires 'soon' is not a time" in err
    code, _, err = run(capsys, "suppress", "import", str(tmp_path / "missing.csv"), "--db", db)
    assert code == 2 and "cannot read" in err


def test_poll_without_config_names_the_file(tmp_path, capsys):
    code, _, err = run(capsys, "bounces", "poll", "--once", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "none.toml: no such file" in err


def test_parse_prints_classification(capsys):
    code, out, _ = run(
        capsys, "bounces", "parse", str(CORPUS / "qmail_no_mailbox.eml"), str(CORPUS / "human_reply.eml")
    )
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["category"] == "bounce" and first["failures"][0]["status"] == "5.1.1"
    assert second["category"] == "human"
