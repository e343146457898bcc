"""WAL checkpoints of the intake run beside its COMMITs, and a committed message never
depends on one.

A real SQLite queue. A WAL checkpoint copies committed pages into the database file; until
then they are only in the WAL, so the database file's size shows whether one ran.
"""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

from support import INVOICE_BODY as BODY
from support import invoice, wait_for_size

from bulkrelay.intake import GroupCommitter
from bulkrelay.queue import Queue

COUNT = 20


def stored(path):
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT message_id, length(body) FROM messages ORDER BY id").fetchall()
    conn.close()
    return rows


def test_committed_messages_only_in_the_wal_survive_kill_9(tmp_path):
    path = tmp_path / "queue.sqlite"
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from support import invoice
        from bulkrelay.queue import Queue
        queue = Queue({str(path)!r})
        queue.defer_checkpoints(100_000)
        for number in range({COUNT}):
            queue.enqueue(invoice(number), "billing@example.test", ["a@customer.test"], source="test")
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no last checkpoint
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=os.path.dirname(__file__), check=False)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.getsize(path) < BODY  # the messages are in the WAL only
    assert os.path.getsize(f"{path}-wal") > COUNT * BODY
    Queue(path).close()  # opening replays the WAL
    assert [mid for mid, _ in stored(path)] == [f"<{n}@x.test>" for n in range(COUNT)]
    assert all(size > len(invoice(0)) for _, size in stored(path))  # with the Date: added


def commit(committer, numbers):
    async def send():
        for number in numbers:
            await committer.enqueue(invoice(number), "billing@example.test", ["a@customer.test"], "test")

    asyncio.run(send())


def test_the_committer_leaves_checkpoints_to_its_own_thread(tmp_path):
    path = tmp_path / "queue.sqlite"
    Queue(path).close()
    committer = GroupCommitter(lambda: Queue(path), checkpoint_every=3600)
    try:
        commit(committer, [0])
        wait_for_size(path, BODY)  # the checkpoint thread's one run before its long pause
        before = os.path.getsize(path)
        commit(committer, range(1, COUNT + 1))
        # SQLite's own checkpoint in a COMMIT would have copied at least 4 MB by now
        assert os.path.getsize(path) - before < 4 * BODY
        assert len(stored(path)) == COUNT + 1
    finally:
        committer.close()  # the checkpoint thread's last run
    assert os.path.getsize(path) > (COUNT + 1) * BODY


def test_the_checkpoint_thread_keeps_the_database_file_current(tmp_path):
    path = tmp_path / "queue.sqlite"
    Queue(path).close()
    committer = GroupCommitter(lambda: Queue(path), checkpoint_every=0.01)
    try:
        commit(committer, range(COUNT))
        wait_for_size(path, COUNT * BODY)  # the last run comes after the last COMMIT
    finally:
        committer.close()
