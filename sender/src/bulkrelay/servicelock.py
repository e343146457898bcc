"""The lock beside the queue that says a `bulkrelay serve` runs on it.

Its own module, importing nothing heavy, so that `bulkrelay status` can ask whether the service
runs without importing the service (aiosmtpd, asyncio, the delivery stack): most of its
start-up time before (docs/benchmarks.md).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bulkrelay.cli import UsageError


def single_instance(queue_path: str):
    """Hold an exclusive lock beside the queue: two services on one queue would double-send."""
    lock_path = f"{queue_path}.lock"
    try:
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 (held for the life of the process)
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except BlockingIOError:
        raise UsageError(
            f"another `bulkrelay serve` already runs on {queue_path} (lock {lock_path}); stop it first"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot lock {lock_path}: {exc.strerror}; check [queue] path permissions") from None
    return handle


def service_state(queue_path: str) -> dict:
    """Whether a `bulkrelay serve` holds the queue's lock: {"running": bool|None, "pid": int|None}.

    ``running`` is None when the lock file cannot be read (e.g. run as another user).
    """
    lock_path = f"{queue_path}.lock"
    try:
        with open(lock_path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
                return {"running": True, "pid": int(text) if text.isdigit() else None}
            fcntl.flock(handle, fcntl.LOCK_UN)
            return {"running": False, "pid": None}
    except FileNotFoundError:
        return {"running": False, "pid": None}
    except OSError:
        return {"running": None, "pid": None}
