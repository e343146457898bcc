"""`bulkrelay enqueue`, `send`, `config check`, `intake-password` through the real console script."""

import email
import email.policy
import sqlite3
import subprocess

import pytest

from bulkrelay.intake import load_auth_file, verify_password

GOOD = (
    b"From: Billing <billing@example.test>\r\nTo: alice@customer.test\r\nBcc: carol@customer.test\r\n"
    b"Subject: Invoice 9\r\nMessage-ID: <inv-9@example.test>\r\n\r\nHello\r\n"
)


def run(*args, stdin=None):
    return subprocess.run(["bulkrelay", *args], capture_output=True, input=stdin, check=False)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "sender.toml"
    path.write_text(f'[queue]\npath = "{tmp_path}/queue.sqlite"\n\n[intake]\nmax_message_size = 4096\n')
    return path


def rows(conf):
    db = conf.parent / "queue.sqlite"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        out = []
        for mid, mail_from, source, body in conn.execute("SELECT id, mail_from, source, body FROM messages"):
            rcpts = [
                r[0]
                for r in conn.execute("SELECT address FROM recipients WHERE message = ? ORDER BY id", (mid,))
            ]
            out.append({"id": mid, "from": mail_from, "source": source, "body": bytes(body), "rcpts": rcpts})
        return out
    finally:
        conn.close()


def test_enqueue_envelope_from_headers(conf, tmp_path):
    eml = tmp_path / "inv9.eml"
    eml.write_bytes(GOOD)
    result = run("enqueue", "--config", str(conf), str(eml))
    assert result.returncode == 0, result.stderr
    assert b"queued as message 1 (2 recipient(s))" in result.stdout
    [row] = rows(conf)
    assert row["from"] == "billing@example.test" and row["source"] == "cli:inv9.eml"
    assert row["rcpts"] == ["alice@customer.test", "carol@customer.test"]
    assert b"Bcc" not in row["body"]


def test_enqueue_overrides_and_stdin(conf):
    result = run(
        "enqueue",
        "--config",
        str(conf),
        "--from",
        "",
        "--to",
        "dave@customer.test",
        "--to",
        "eve@customer.test",
        "-",
        stdin=GOOD,
    )
    assert result.returncode == 0, result.stderr
    [row] = rows(conf)
    assert row["from"] == "" and row["rcpts"] == ["dave@customer.test", "eve@customer.test"]


def test_enqueue_bad_files_reported_good_ones_queued(conf, tmp_path):
    files = {
        "good.eml": GOOD,
        "nofrom.eml": GOOD.replace(b"From: Billing <billing@example.test>\r\n", b""),
        "eightbit.eml": GOOD.replace(b"Subject: Invoice 9", "Subject: Grüße".encode("latin-1")),
        "big.eml": GOOD + (b"x" * 900 + b"\r\n") * 6,
        "garbage.eml": b"\x89PNG\r\n\x1a\n",
        "longref.eml": GOOD.replace(b"Subject:", b"X-Bulkrelay-Ref: " + b"9" * 200 + b"\r\nSubject:"),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    paths = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.eml")]
    result = run("enqueue", "--config", str(conf), *paths)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "nofrom.eml: not queued: message has no From:" in err
    assert "eightbit.eml: not queued: header Subject: has 8-bit bytes that are not UTF-8" in err
    assert "big.eml: not queued: message is" in err
    assert "garbage.eml: not queued:" in err
    assert "missing.eml: not queued: cannot read" in err
    assert "longref.eml: not queued: X-Bulkrelay-Ref: header has 200 characters; shorten it" in err
    assert "1 queued, 6 rejected" in err
    assert "Traceback" not in err
    assert len(rows(conf)) == 1


def test_enqueue_invalid_recipient_override(conf, tmp_path):
    (tmp_path / "a.eml").write_bytes(GOOD)
    result = run("enqueue", "--config", str(conf), "--to", "not-an-address", str(tmp_path / "a.eml"))
    assert result.returncode == 1 and b"--to address 'not-an-address'" in result.stderr
    assert rows(conf) == []


def test_send_with_attachment(conf, tmp_path):
    pdf = tmp_path / "invoice.pdf"
    pdf.write_bytes(b"%PDF-1.4 test")
    result = run(
        "send",
        "--config",
        str(conf),
        "--from",
        "Billing <billing@example.test>",
        "--to",
        "alice@customer.test",
        "--subject",
        "Rechnung 10",
        "--body",
        "Anbei die Rechnung.",
        "--attach",
        str(pdf),
    )
    assert result.returncode == 0, result.stderr
    [row] = rows(conf)
    assert row["from"] == "billing@example.test" and row["rcpts"] == ["alice@customer.test"]
    msg = email.message_from_bytes(row["body"], policy=email.policy.default)
    assert msg["Subject"] == "Rechnung 10"
    assert next(msg.iter_attachments()).get_filename() == "invoice.pdf"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--subject", "Hi\nBcc: victim@customer.test"], "--subject contains a line break"),
        (["--subject", "Hi\r\nX-Evil: 1"], "header injection is refused"),
        (["--to", "alice@customer.test\nBcc: victim@customer.test"], "--to contains a line break"),
        (["--from", "billing@example.test\r\nBcc: victim@customer.test"], "--from contains a line break"),
        (["--to", "alice@localhost"], "not fully qualified"),
        (["--attach", "/nonexistent/invoice.pdf"], "cannot read attachment"),
    ],
)
def test_send_refuses_bad_arguments(conf, args, words):
    base = {"--from": "billing@example.test", "--to": "alice@customer.test", "--subject": "s", "--body": "b"}
    extra = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[flag] = value
        else:
            extra += [flag, value]
    argv = [x for kv in base.items() for x in kv] + extra
    result = run("send", "--config", str(conf), *argv)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert rows(conf) == []


def test_send_needs_one_body(conf):
    result = run(
        "send", "--config", str(conf), "--from", "a@example.test", "--to", "b@customer.test", "--subject", "s"
    )
    assert result.returncode == 2 and b"--body" in result.stderr


def test_missing_config_is_a_clear_error(tmp_path):
    result = run("enqueue", "--config", str(tmp_path / "nope.toml"), "x.eml")
    assert result.returncode == 2 and b"no such file" in result.stderr and b"Traceback" not in result.stderr


TLS_FILES_MISSING = '[intake]\ntls_cert = "/nonexistent/c.pem"\ntls_key = "/nonexistent/k.pem"\n'


def test_config_check(conf, tmp_path):
    assert run("config", "check", "--config", str(conf)).returncode == 0
    # --settings-only judges the settings without the files (the relay's, checked from the controller)
    bad = tmp_path / "bad.toml"
    bad.write_text(TLS_FILES_MISSING)
    assert run("config", "check", "--settings-only", "--config", str(bad)).returncode == 0


@pytest.mark.parametrize(
    ("toml", "words", "flags"),
    [
        ('[intake]\nlisten = ["0.0.0.0:2525"]\n', b"allows no network", []),
        (
            '[intake]\nlisten = ["0.0.0.0:25"]\nallowed_networks = ["203.0.113.0/24"]\n',
            b"intake.listen: port 25",
            [],
        ),
        ('[hotfolder]\npath = "spool/in"\n', b"hotfolder.path: 'spool/in' is not an absolute path", []),
        (TLS_FILES_MISSING, b"intake.tls_cert", []),
        ("[intake]\nlistn = []\n", b"intake.listn: unknown key", []),
        ("[intake]\nlistn = []\n", b"intake.listn: unknown key", ["--settings-only"]),
    ],
)
def test_config_check_names_the_bad_setting(tmp_path, toml, words, flags):
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    result = run("config", "check", *flags, "--config", str(bad))
    assert result.returncode == 2 and words in result.stderr


def test_intake_password(tmp_path):
    result = run("intake-password", "app1", stdin=b"correct horse battery\n")
    assert result.returncode == 0
    line = result.stdout.decode().strip()
    assert line.startswith("app1:pbkdf2_sha256$")
    users = tmp_path / "users"
    users.write_text(line + "\n")
    assert verify_password(b"correct horse battery", load_auth_file(str(users))["app1"])
    assert run("intake-password", "app1", stdin=b"short\n").returncode == 2
