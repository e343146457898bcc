"""The event loop of `bulkrelay serve`: uvloop when installed, asyncio's own otherwise or when
``BULKRELAY_EVENT_LOOP=asyncio`` says so; the same drain works on both."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import RAW, start_serve

from bulkrelay.cli import UsageError
from bulkrelay.queue import Queue
from bulkrelay.service import EVENT_LOOP_ENV, loop_factory, running_loop_name

uvloop = pytest.importorskip("uvloop")  # the dev venv pins Debian 12's version


def loop_name(factory) -> str:
    """The loop ``asyncio.Runner`` would run with this factory, as the service logs it."""

    async def name() -> str:
        return running_loop_name()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(name())


def test_uvloop_when_installed_unless_the_environment_says_asyncio(monkeypatch):
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert loop_name(loop_factory()) == "uvloop"
    assert loop_name(loop_factory("uvloop")) == "uvloop"
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert loop_factory() is None  # asyncio.Runner's default: asyncio's loop (the child in the drain test)


def test_without_uvloop_the_automatic_choice_is_asyncio(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert loop_factory("") is None
    with pytest.raises(UsageError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_a_bad_choice_names_the_variable(monkeypatch, sender_config):
    monkeypatch.setenv(EVENT_LOOP_ENV, "fast")
    with pytest.raises(UsageError, match=r"BULKRELAY_EVENT_LOOP='fast'.*'asyncio', 'uvloop'"):
        loop_factory()
    bulkrelay = os.path.join(os.path.dirname(sys.executable), "bulkrelay")
    config = str(sender_config(9))  # valid: the variable is what is wrong
    result = subprocess.run(
        [bulkrelay, "serve", "--config", config], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "bulkrelay serve: BULKRELAY_EVENT_LOOP='fast': use 'asyncio', 'uvloop' or leave it unset"
    ]


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_serve_drains_pipelined_on_either_loop(kind, tmp_path, monkeypatch, smtp_receiver, sender_config):
    """0, 1 and 2 recipients per message, one connection, pipelined; SIGTERM (the signal handler
    the loop installs) stops the service cleanly."""
    receiver = smtp_receiver(pipelining=True)
    config = sender_config(receiver.port, batch_size=100, interval=0.1, connections=1)
    queue = Queue(tmp_path / "q.sqlite")
    queue.enqueue(RAW, "billing@example.test", ["one@customer.test"], source="test")
    queue.enqueue(RAW, "billing@example.test", ["two@customer.test", "three@customer.test"], source="test")
    monkeypatch.setenv(EVENT_LOOP_ENV, kind)
    log = tmp_path / "service.log"
    proc = start_serve(config, log)
    try:
        deadline = time.monotonic() + 20
        while len(receiver.messages) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        while queue.counts().get("submitted", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert f"event=started queue={tmp_path / 'q.sqlite'} loop={kind} " in text
    assert sorted(m["rcpt_tos"][0] for m in receiver.messages) == [
        "one@customer.test",
        "three@customer.test",
        "two@customer.test",
    ]
    assert queue.counts()["submitted"] == 3
    # the body arrives whole, its dot-stuffed line undone by the receiver
    assert all(m["content"].endswith(b"Line one\r\n.leading dot\r\n") for m in receiver.messages)
