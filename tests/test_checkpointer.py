"""A connection that leaves its WAL checkpoints to a ``Checkpointer`` (the service's queue, the
intake's commit thread) never checkpoints inside its own COMMITs, and the checkpointer's
thread keeps the database file current. A real SQLite queue: the database file's size shows
whether a checkpoint ran (committed pages are only in the WAL until one does)."""

import logging
import os
import threading

import pytest
from support import INVOICE_BODY as BODY
from support import invoice, wait_for_size

from bulkrelay.queue import Checkpointer, Queue, QueueUnavailable, Storage


def enqueue(queue, numbers):
    for number in numbers:
        queue.enqueue(invoice(number), "billing@example.test", ["a@customer.test"], source="test")


@pytest.mark.parametrize("count", [0, 1, 2])
def test_the_checkpointer_copies_every_commit_into_the_database_file(tmp_path, count):
    path = tmp_path / "queue.sqlite"
    queue = Queue(path)
    start = os.path.getsize(path)
    checkpointer = Checkpointer(lambda: Storage(path), every=0.01)
    queue.checkpoint_elsewhere(checkpointer)
    try:
        enqueue(queue, range(count))
        if count:
            wait_for_size(path, start + count * BODY)  # while the queue's connection stays open
        else:
            threading.Event().wait(0.05)
            assert os.path.getsize(path) == start  # nothing committed: nothing to copy
    finally:
        checkpointer.close()
        queue.close()
    assert len(Queue(path).list_recipients()) == count


def test_commits_leave_the_checkpoints_to_the_checkpointer(tmp_path):
    path = tmp_path / "queue.sqlite"
    queue = Queue(path)
    checkpointer = Checkpointer(lambda: Storage(path), every=3600)
    queue.checkpoint_elsewhere(checkpointer)
    try:
        enqueue(queue, [0])
        wait_for_size(path, BODY)  # the checkpointer's one run before its long pause
        before = os.path.getsize(path)
        enqueue(queue, range(1, 21))
        # SQLite's own checkpoint in a COMMIT would have copied at least 4 MB by now
        assert os.path.getsize(path) - before < 4 * BODY
        assert os.path.getsize(f"{path}-wal") > 20 * BODY
    finally:
        checkpointer.close()
        queue.close()  # the last connection: SQLite copies the WAL at close
    assert os.path.getsize(path) > 21 * BODY


def test_a_checkpointer_that_cannot_open_the_queue_warns_and_loses_nothing(tmp_path, caplog):
    path = tmp_path / "queue.sqlite"
    queue = Queue(path)

    def unavailable():
        raise QueueUnavailable("queue: disk I/O error")

    checkpointer = Checkpointer(unavailable, every=0.01)
    queue.checkpoint_elsewhere(checkpointer)
    with caplog.at_level(logging.WARNING, logger="bulkrelay.queue"):
        enqueue(queue, range(2))
        for _ in range(500):
            if "event=checkpoint_failed" in caplog.text:
                break
            threading.Event().wait(0.01)
        checkpointer.close()
    assert "disk I/O error" in caplog.text
    queue.close()
    assert [r["address"] for r in Queue(path).list_recipients()] == ["a@customer.test"] * 2
