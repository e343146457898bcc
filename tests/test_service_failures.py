"""A component that fails stops the whole service, loudly: traceback in the log, a count in the
queue database that `bulkrelay status` and the metrics show, and exit code 70 for systemd."""

import asyncio
import json
import logging
import socket
import subprocess

import pytest

from bulkrelay import config as configmod
from bulkrelay import failures, hotfolder, intake, metrics, ops, service, tracking
from bulkrelay.queue import Queue


def serve_once(config_path, timeout=10):
    config = configmod.load(str(config_path))

    async def go():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(timeout, stop.set)  # a hang fails, it does not block
        await service.serve(config, stop=stop)

    asyncio.run(go())
    return config


def boom(*args, **kwargs):
    raise RuntimeError("disk on fire")


async def aboom(*args, **kwargs):
    raise RuntimeError("disk on fire")


async def returns_early(*args, **kwargs):
    return None


BREAK = {
    "release": (service.ReleaseLoop, "step", aboom),
    "tracking": (tracking, "follow", aboom),
    "intake": (intake, "serve_intake", aboom),
    "hotfolder": (hotfolder, "scan_hotfolder", boom),
}


@pytest.mark.parametrize("component", sorted(BREAK))
def test_failing_component_stops_the_service_and_is_counted(
    component, tmp_path, sender_config, smtp_receiver, free_port, monkeypatch, caplog
):
    receiver = smtp_receiver()
    path = sender_config(receiver.port, intake_port=free_port(), hotfolder=tmp_path / "hot")
    (tmp_path / "hot" / "incoming").mkdir(parents=True)
    (tmp_path / "hot" / "incoming" / "a.eml").write_bytes(
        b"From: a@example.test\r\nTo: b@customer.test\r\n\r\nx\r\n"
    )
    Queue(str(tmp_path / "q.sqlite")).enqueue(
        b"From: a@example.test\r\n\r\nx\r\n", "a@example.test", ["b@c.test"], source="t"
    )
    target, name, replacement = BREAK[component]
    monkeypatch.setattr(target, name, replacement)
    with caplog.at_level(logging.INFO), pytest.raises(service.ComponentFailed) as failed:
        serve_once(path)
    assert failed.value.component == component
    record = next(r for r in caplog.records if "event=component_failed" in r.getMessage())
    assert f"component={component}" in record.getMessage() and "disk on fire" in record.getMessage()
    assert record.exc_info is not None  # the traceback goes to the log
    queue = Queue(str(tmp_path / "q.sqlite"))
    counts, last = failures.component_failures(queue)
    assert counts[component] == 1 and sum(counts.values()) == 1
    assert last["component"] == component and last["error"] == "RuntimeError: disk on fire"
    assert f'bulkrelay_component_failures_total{{component="{component}"}} 1' in metrics.render(queue)
    queue.close()


def test_component_that_returns_while_running_is_a_failure(sender_config, smtp_receiver, monkeypatch):
    path = sender_config(smtp_receiver().port)
    monkeypatch.setattr(tracking, "follow", returns_early)
    with pytest.raises(service.ComponentFailed, match="tracking failed: RuntimeError: returned while"):
        serve_once(path)


def test_no_failure_none_shown_two_failures_counted(
    tmp_path, sender_config, smtp_receiver, monkeypatch, capsys
):
    path = sender_config(smtp_receiver().port)
    config = serve_once(path, timeout=0.5)  # a clean run: stop, no failure
    queue = Queue(config.queue.path)
    assert failures.component_failures(queue) == ({c: 0 for c in failures.COMPONENTS}, None)
    assert "component failures" not in ops.format_status(ops.status_data(config, queue, now=0))
    assert 'bulkrelay_component_failures_total{component="release"} 0' in metrics.render(queue)
    queue.close()
    monkeypatch.setattr(service.ReleaseLoop, "step", aboom)
    for _ in range(2):
        with pytest.raises(service.ComponentFailed):
            serve_once(path)
    queue = Queue(config.queue.path)
    text = ops.format_status(ops.status_data(config, queue, now=0))
    assert "component failures: release=2" in text
    assert "release: RuntimeError: disk on fire (traceback in the log)" in text
    queue.close()


def test_serve_exits_70_when_the_intake_cannot_listen(tmp_path, sender_config, smtp_receiver, bulkrelay_cmd):
    """A real failure in a real process: the intake's port is taken. The service does not run on
    without its intake (it used to log component_missing and carry on)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = sender_config(
            smtp_receiver().port,
            extra=f'[intake]\nlisten = ["127.0.0.1:{port}"]\nallowed_networks = ["127.0.0.0/8"]\n',
        )
        result = subprocess.run(
            [bulkrelay_cmd, "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 70, result.stderr[-2000:]
    assert "event=component_failed component=intake" in result.stderr
    assert "Traceback" in result.stderr  # from the log record
    assert (
        result.stderr.strip().splitlines()[-1].startswith("bulkrelay serve: component intake failed: OSError")
    )
    status = subprocess.run(
        [bulkrelay_cmd, "status", "--json", "--config", str(path)], capture_output=True, text=True, check=True
    )
    data = json.loads(status.stdout)
    assert data["component_failures"]["intake"] == 1
    assert data["last_failure"]["component"] == "intake"
