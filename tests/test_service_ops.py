"""Operator commands: status, queue list/show/retry/drop, pause/resume, progress display."""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from bulkrelay.cli import UsageError, main
from bulkrelay.config import Config, MetricsConfig, QueueConfig
from bulkrelay.metrics import serve_metrics
from bulkrelay.ops import Progress
from bulkrelay.queue import Queue
from bulkrelay.service import ReleaseLoop
from bulkrelay.servicelock import single_instance

RAW = b"From: billing@example.test\r\nSubject: Invoice\r\n\r\nbody\r\n"


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "sender.toml"
    config.write_text(
        f'[queue]\npath = "{tmp_path / "q.sqlite"}"\n[policy]\nbatch_size = 2\ninterval = 600\n'
        'per_domain = { "x.test" = 5 }\n'
    )
    queue = Queue(tmp_path / "q.sqlite")
    yield str(config), queue
    queue.close()


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_reports_counts_policy_rates_and_errors(setup, capsys):
    config, queue = setup
    m1 = queue.enqueue(RAW, "billing@example.test", ["a@x.test", "b@x.test", "c@x.test"], source="t")
    rows = queue.take(2, now=queue.clock())
    queue.mark_failed(rows[0]["id"], "550 5.1.1 no such user")
    code, out, _ = cli(capsys, "status", "--json", "--config", config)
    data = json.loads(out)
    assert code == 0
    assert (
        data["counts"]["queued"] == 1 and data["counts"]["failed"] == 1 and data["counts"]["submitting"] == 1
    )
    assert data["release_allowed_now"] == 0 and data["policy"].startswith("batch sent")
    assert data["rates"]["released_last_interval"] == 2 and data["rates"]["batch_size"] == 2
    assert data["next_release"] is not None
    assert data["service"] == {"running": False, "pid": None}
    assert data["per_domain"] == {"x.test": {"limit": 5, "released_last_interval": 2}}
    (err,) = data["last_errors"]
    assert err["message"] == m1 and err["address"] == "a@x.test" and "550 5.1.1" in err["reason"]
    code, out, _ = cli(capsys, "status", "--config", config)
    assert "queued=1" in out and "failed=1" in out and "a@x.test: failed: 550 5.1.1" in out
    assert "service: NOT running" in out and "x.test: 2/5 in the last interval" in out


def test_queue_show_retry_drop(setup, capsys):
    config, queue = setup
    m1 = queue.enqueue(RAW, "billing@example.test", ["a@x.test"], source="t")
    m2 = queue.enqueue(RAW, "billing@example.test", ["b@x.test", "c@x.test"], source="t")
    (row,) = queue.take(1, now=queue.clock())
    queue.mark_failed(row["id"], "550 rejected")
    code, out, _ = cli(capsys, "queue", "show", str(m1), "--config", config)
    assert code == 0 and "a@x.test: failed" in out and "last reply: 550 rejected" in out
    code, out, _ = cli(capsys, "queue", "--config", config, "show", str(m1), "--body")
    assert code == 0 and "Subject: Invoice" in out
    code, out, _ = cli(capsys, "queue", "list", "--state", "failed", "--config", config)
    assert "a@x.test" in out and "b@x.test" not in out
    code, out, _ = cli(capsys, "queue", "retry", "--state", "failed", "--config", config)
    assert code == 0 and out.strip() == "1 recipient(s) queued again"
    assert queue.recipient(row["id"])["state"] == "queued"
    code, out, _ = cli(capsys, "queue", "drop", str(m2), "--config", config)
    assert code == 0 and "2 recipient(s)" in out and queue.message(m2) is None
    # operator mistakes: one line, exit 2
    code, _, err = cli(capsys, "queue", "show", "999", "--config", config)
    assert code == 2 and "no message 999" in err
    code, _, err = cli(capsys, "queue", "list", "--state", "lost", "--config", config)
    assert code == 2 and "unknown state 'lost'" in err
    code, _, err = cli(capsys, "queue", "retry", "--state", "submitted", "--config", config)
    assert code == 2 and "retry applies to" in err
    code, _, err = cli(capsys, "queue", "drop", "999", "--config", config)
    assert code == 2 and "no message 999" in err


def test_pause_and_resume(setup, capsys):
    config, _queue = setup
    code, out, _ = cli(capsys, "pause", "--reason", "complaint spike", "--config", config)
    assert code == 0 and "complaint spike" in out
    data = json.loads(cli(capsys, "status", "--json", "--config", config)[1])
    assert data["paused"] and "complaint spike" in data["policy"]
    assert cli(capsys, "resume", "--config", config)[1].strip() == "resumed"
    assert cli(capsys, "resume", "--config", config)[1].strip() == "was not paused"


def test_missing_config_is_a_usage_error(tmp_path, capsys):
    code, _, err = cli(capsys, "status", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and "no such file" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_queue_created_by_root_belongs_to_the_state_directory_owner(tmp_path, capsys):
    """`bulkrelay pause` run by root before the first start must not lock the service out."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    config = tmp_path / "sender.toml"
    config.write_text(f'[queue]\npath = "{state / "q.sqlite"}"\n')
    assert cli(capsys, "pause", "--config", str(config))[0] == 0
    owners = {
        p.name: (p.stat().st_uid, p.stat().st_gid) for p in state.iterdir() if not p.name.endswith(".lock")
    }
    assert "q.sqlite" in owners and set(owners.values()) == {(65534, 65534)}, owners


def test_progress_line_and_tty_redraw():
    now = [100.0]
    out = io.StringIO()
    p = Progress(1000, label="drain", stream=out, clock=lambda: now[0])
    now[0] = 110.0
    p.update(250)
    assert out.getvalue() == "drain: 250/1000 (25.0%) 25.0/s ETA 0:00:30\n"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = Progress(10, label="enqueue", stream=tty, clock=lambda: now[0])
    now[0] = 111.0
    p.update(5)
    now[0] = 112.0
    p.update(10)
    p.finish()
    frames = tty.getvalue().split("\r\x1b[K")
    assert frames == ["", "enqueue: 5/10 (50.0%) 5.0/s ETA 0:00:01", "enqueue: 10/10 (100.0%) 5.0/s ETA -\n"]


def test_status_watch_ends_when_the_queue_is_drained(setup):
    config, _queue = setup
    bulkrelay = os.path.join(os.path.dirname(sys.executable), "bulkrelay")
    result = subprocess.run(
        [bulkrelay, "status", "--watch", "0.1", "--config", config],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("drain: 0/0 (100.0%)")


def test_only_one_service_per_queue(tmp_path):
    held = single_instance(str(tmp_path / "q.sqlite"))
    try:
        with pytest.raises(UsageError, match="already runs"):
            single_instance(str(tmp_path / "q.sqlite"))
    finally:
        held.close()
    single_instance(str(tmp_path / "q.sqlite")).close()


def test_metrics_endpoint_serves_prometheus_text_and_404(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config(
        queue=QueueConfig(path=str(tmp_path / "q.sqlite")), metrics=MetricsConfig(f"127.0.0.1:{port}")
    )
    queue = Queue(config.queue.path)
    queue.enqueue(RAW, "billing@example.test", ["a@x.test", "b@x.test"], source="t")
    loop = ReleaseLoop(config, queue)

    def fetch(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(serve_metrics(config, queue, loop, None, stop))
        await asyncio.sleep(0.2)
        # a second server on the same port is logged, not fatal
        await asyncio.wait_for(serve_metrics(config, queue, loop, None, asyncio.Event()), 5)
        results = await asyncio.gather(asyncio.to_thread(fetch, "/metrics"), asyncio.to_thread(fetch, "/"))
        stop.set()
        await task
        return results

    (code, text), (missing, _) = asyncio.run(go())
    assert code == 200 and missing == 404
    assert 'bulkrelay_recipients{state="queued"} 2' in text
    assert "bulkrelay_release_allowed 100" in text and "bulkrelay_paused 0" in text
    queue.close()
