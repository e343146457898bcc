"""Hot folder: every file ends in done/ or rejected/ (with a reason), never twice in the queue."""

import os
import sqlite3
from pathlib import Path

import pytest

import bulkrelay.hotfolder as hf
from bulkrelay import config as cfg
from bulkrelay.hotfolder import HotFolder, ScanResult, scan_hotfolder
from bulkrelay.queue import Queue, QueueUnavailable

GOOD = (
    b"From: Billing <billing@example.test>\r\nTo: alice@customer.test\r\nCc: bob@customer.test\r\n"
    b"Bcc: carol@customer.test\r\nSubject: Invoice 7\r\nMessage-ID: <inv-7@example.test>\r\n\r\nHello\r\n"
)


@pytest.fixture
def conf(tmp_path):
    return cfg.parse(
        {
            "queue": {"path": str(tmp_path / "queue.sqlite")},
            "hotfolder": {"path": str(tmp_path / "hot")},
            "intake": {"max_message_size": 4096},
        }
    )


def drop(conf, name, raw):
    """The documented protocol: write in tmp/, rename into incoming/."""
    root = conf.hotfolder.path
    os.makedirs(f"{root}/tmp", exist_ok=True)
    os.makedirs(f"{root}/incoming", exist_ok=True)
    with open(f"{root}/tmp/{name}", "wb") as f:
        f.write(raw)
    os.rename(f"{root}/tmp/{name}", f"{root}/incoming/{name}")


def listing(conf, sub):
    return sorted(os.listdir(f"{conf.hotfolder.path}/{sub}"))


def queued(conf):
    conn = sqlite3.connect(conf.queue.path)
    try:
        return conn.execute("SELECT id, mail_from, source, body FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


def rcpts(conf, message):
    conn = sqlite3.connect(conf.queue.path)
    try:
        return [
            r[0]
            for r in conn.execute("SELECT address FROM recipients WHERE message = ? ORDER BY id", (message,))
        ]
    finally:
        conn.close()


def test_good_file_queued_and_moved_to_done(conf):
    drop(conf, "inv7.eml", GOOD)
    result = scan_hotfolder(conf, None)
    assert result.done == ["inv7.eml"] and not result.rejected
    assert listing(conf, "incoming") == [] and listing(conf, "done") == ["inv7.eml"]
    [(mid, mail_from, source, body)] = queued(conf)
    assert mail_from == "billing@example.test"
    assert source.startswith("hotfolder:")
    assert rcpts(conf, mid) == ["alice@customer.test", "bob@customer.test", "carol@customer.test"]
    assert b"Bcc" not in body and b"carol" not in body


BAD = {
    "malformed.eml": (b"%PDF-1.7 not a mail\n\x01", "header"),
    "nofrom.eml": (GOOD.replace(b"From: Billing <billing@example.test>\r\n", b""), "no From:"),
    "eightbit.eml": (
        GOOD.replace(b"Subject: Invoice 7", "Subject: Rechnung für".encode("latin-1")),
        "not UTF-8",
    ),
    "big.eml": (GOOD + (b"x" * 900 + b"\r\n") * 6, "4096-byte limit"),
    "badrcpt.eml": (GOOD.replace(b"To: alice@customer.test", b"To: alice@localhost"), "not fully qualified"),
    "norcpt.eml": (b"From: billing@example.test\r\nSubject: x\r\n\r\nbody\r\n", "no recipient"),
    "badref.eml": (GOOD.replace(b"Subject:", b"X-Bulkrelay-Ref: INV\t7\r\nSubject:"), "control or non-ASCII"),
}


def test_bad_files_rejected_with_reason_and_good_file_unaffected(conf):
    for name, (raw, _) in BAD.items():
        drop(conf, name, raw)
    drop(conf, "good.eml", GOOD)
    result = scan_hotfolder(conf, None)
    assert result.done == ["good.eml"]
    assert sorted(result.rejected) == sorted(BAD)
    assert listing(conf, "incoming") == []
    rejected = listing(conf, "rejected")
    for name, (raw, words) in BAD.items():
        assert name in rejected and f"{name}.reason" in rejected
        reason = Path(f"{conf.hotfolder.path}/rejected/{name}.reason").read_text()
        assert words in reason and reason.count("\n") == 1, (name, reason)
        assert Path(f"{conf.hotfolder.path}/rejected/{name}").read_bytes() == raw
    assert len(queued(conf)) == 1


def test_ignores_temp_and_other_names(conf):
    drop(conf, ".partial.eml", GOOD)
    drop(conf, "notes.txt", GOOD)
    assert scan_hotfolder(conf, None) == ScanResult()
    assert listing(conf, "incoming") == [".partial.eml", "notes.txt"]
    assert not os.path.exists(conf.queue.path)  # nothing to do: the queue was not even opened


def test_queue_unavailable_leaves_file_for_retry(conf):
    q = Queue(conf.queue.path, busy_timeout=0.2)
    drop(conf, "a.eml", GOOD)
    drop(conf, "b.eml", GOOD.replace(b"inv-7", b"inv-8"))
    locker = sqlite3.connect(conf.queue.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        result = HotFolder(conf.hotfolder.path, q, max_size=4096).scan()
        assert sorted(result.retry) == ["a.eml", "b.eml"] and not result.done
        assert scan_hotfolder(conf, None).retry == ["a.eml", "b.eml"]  # cannot even open the queue
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert listing(conf, "incoming") == ["a.eml", "b.eml"]
    assert sorted(HotFolder(conf.hotfolder.path, q, max_size=4096).scan().done) == ["a.eml", "b.eml"]
    q.close()
    assert len(queued(conf)) == 2


def test_failed_enqueue_is_retried_once(conf, monkeypatch):
    drop(conf, "a.eml", GOOD)
    q = Queue(conf.queue.path)
    real = q.enqueue

    def full(*args, **kwargs):
        raise QueueUnavailable("database or disk is full")

    monkeypatch.setattr(q, "enqueue", full)
    assert HotFolder(conf.hotfolder.path, q, max_size=4096).scan().retry == ["a.eml"]
    monkeypatch.setattr(q, "enqueue", real)
    assert HotFolder(conf.hotfolder.path, q, max_size=4096).scan().done == ["a.eml"]
    q.close()
    assert len(queued(conf)) == 1


def test_crash_after_commit_before_move_does_not_duplicate(conf, monkeypatch):
    """Enqueue committed, then the process died before recording the digest and moving the file."""
    drop(conf, "a.eml", GOOD)
    q = Queue(conf.queue.path)

    class Crash(BaseException):
        pass

    def crash(self, digest, message):
        raise Crash

    monkeypatch.setattr(HotFolder, "_record", crash)
    with pytest.raises(Crash):
        HotFolder(conf.hotfolder.path, q, max_size=4096).scan()
    q.close()
    assert listing(conf, "incoming") == ["a.eml"] and len(queued(conf)) == 1
    monkeypatch.undo()
    result = scan_hotfolder(conf, None)  # "restart"
    assert result.done == ["a.eml"] and listing(conf, "incoming") == []
    assert len(queued(conf)) == 1


def test_crash_after_record_before_move_does_not_duplicate(conf, monkeypatch):
    drop(conf, "a.eml", GOOD)
    real_move = hf._move
    monkeypatch.setattr(hf, "_move", lambda path, directory: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        scan_hotfolder(conf, None)
    monkeypatch.setattr(hf, "_move", real_move)
    assert scan_hotfolder(conf, None).done == ["a.eml"]
    assert len(queued(conf)) == 1


def test_identical_file_under_another_name_is_rejected_as_duplicate(conf):
    drop(conf, "a.eml", GOOD)
    scan_hotfolder(conf, None)
    drop(conf, "b.eml", GOOD)
    result = scan_hotfolder(conf, None)
    assert result.rejected == ["b.eml"]
    reason = Path(f"{conf.hotfolder.path}/rejected/b.eml.reason").read_text()
    assert "identical to a.eml" in reason and "message 1" in reason
    assert len(queued(conf)) == 1


def test_name_clash_in_done_keeps_both(conf):
    drop(conf, "a.eml", GOOD)
    scan_hotfolder(conf, None)
    drop(conf, "a.eml", GOOD.replace(b"inv-7", b"inv-8"))
    assert scan_hotfolder(conf, None).done == ["a.eml"]
    assert listing(conf, "done") == ["a.eml", "a.eml.1"]
    assert len(queued(conf)) == 2


SECRET = b"PASSWORD=hunter2-do-not-leak\n"


def reason_of(conf, name):
    return Path(f"{conf.hotfolder.path}/rejected/{name}.reason").read_text()


def make_incoming(conf):
    os.makedirs(f"{conf.hotfolder.path}/incoming", exist_ok=True)
    return Path(conf.hotfolder.path) / "incoming"


@pytest.mark.parametrize("target", ["secret", "mail"])
def test_symbolic_link_is_rejected_unread(conf, tmp_path, caplog, target):
    """A link to a credential file or to a mail file the service could read: neither is read."""
    outside = tmp_path / "outside"
    outside.write_bytes(SECRET if target == "secret" else GOOD)
    outside.chmod(0o600)
    (make_incoming(conf) / "x.eml").symlink_to(outside)
    with caplog.at_level("INFO"):
        result = scan_hotfolder(conf, None)
    assert result.rejected == ["x.eml"] and result.done == []
    reason = reason_of(conf, "x.eml")
    assert "is a symbolic link" in reason and "rename it in" in reason
    assert os.path.islink(f"{conf.hotfolder.path}/rejected/x.eml")  # the link moved, not its target
    assert outside.read_bytes() == (SECRET if target == "secret" else GOOD)
    assert b"hunter2" not in reason.encode() and "hunter2" not in caplog.text
    assert not os.path.exists(conf.queue.path) or queued(conf) == []


def test_directory_fifo_and_hard_link_are_rejected_with_reasons(conf, tmp_path):
    incoming = make_incoming(conf)
    (incoming / "dir.eml").mkdir()
    os.mkfifo(incoming / "pipe.eml")
    elsewhere = tmp_path / "mailbox"
    elsewhere.write_bytes(GOOD)
    os.link(elsewhere, incoming / "hard.eml")
    result = scan_hotfolder(conf, None)  # returns: the FIFO is never opened for reading
    assert sorted(result.rejected) == ["dir.eml", "hard.eml", "pipe.eml"]
    assert "is a directory" in reason_of(conf, "dir.eml")
    assert "is a FIFO" in reason_of(conf, "pipe.eml")
    assert "has 2 hard links" in reason_of(conf, "hard.eml")
    assert listing(conf, "incoming") == []
    assert os.path.isdir(f"{conf.hotfolder.path}/rejected/dir.eml")
    # a second scan and a "restart" find nothing left
    assert scan_hotfolder(conf, None) == ScanResult()


def test_device_is_rejected(conf):
    incoming = make_incoming(conf)
    try:
        os.mknod(incoming / "null.eml", 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create a device node here (needs CAP_MKNOD)")
    assert scan_hotfolder(conf, None).rejected == ["null.eml"]
    assert "is a character device" in reason_of(conf, "null.eml")


def test_reason_never_quotes_the_rejected_content(conf, caplog):
    drop(conf, "creds.eml", b"X-Note: a\r\n" + SECRET + b"\r\nbody\r\n")
    drop(conf, "from.eml", b"From: hunter2-do-not-leak\r\nTo: a@customer.test\r\n\r\nx\r\n")
    with caplog.at_level("INFO"):
        result = scan_hotfolder(conf, None)
    assert sorted(result.rejected) == ["creds.eml", "from.eml"]
    assert "header line 2 is not 'Name: value'" in reason_of(conf, "creds.eml")
    assert "sender address has no local part" in reason_of(conf, "from.eml")
    for name in ("creds.eml", "from.eml"):
        assert "hunter2" not in reason_of(conf, name)
    assert "hunter2" not in caplog.text


def test_entry_that_cannot_be_moved_is_logged_once_and_never_read(conf, monkeypatch, caplog):
    incoming = make_incoming(conf)
    (incoming / "dir.eml").mkdir()
    drop(conf, "bad.eml", b"not a message\r\n")

    def cannot_move(root, path, reason):
        raise PermissionError(13, "Permission denied")

    reads = []
    real_read = HotFolder._read_regular
    monkeypatch.setattr(hf, "reject", cannot_move)
    monkeypatch.setattr(
        HotFolder, "_read_regular", lambda self, p: reads.append(p.name) or real_read(self, p)
    )
    stuck = hf.Stuck()
    with caplog.at_level("INFO"):
        results = [scan_hotfolder(conf, None, stuck=stuck) for _ in range(3)]
    assert sorted(results[0].stuck) == ["bad.eml", "dir.eml"]
    assert results[1] == results[2] == ScanResult()
    assert caplog.text.count("event=hotfolder.stuck file=dir.eml") == 1
    assert caplog.text.count("event=hotfolder.stuck file=bad.eml") == 1
    assert "not read again" in caplog.text
    assert reads.count("bad.eml") == 1  # read once to find it bad, never again
    assert "not a message" not in caplog.text
    assert listing(conf, "incoming") == ["bad.eml", "dir.eml"]


def test_no_hot_folder_entries_one_and_two(conf):
    make_incoming(conf)
    assert scan_hotfolder(conf, None) == ScanResult()
    drop(conf, "one.eml", GOOD)
    assert scan_hotfolder(conf, None).done == ["one.eml"]
    drop(conf, "two-a.eml", GOOD.replace(b"inv-7", b"inv-8"))
    drop(conf, "two-b.eml", GOOD.replace(b"inv-7", b"inv-9"))
    assert sorted(scan_hotfolder(conf, None).done) == ["two-a.eml", "two-b.eml"]
    assert len(queued(conf)) == 3
