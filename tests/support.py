"""Plain helpers shared by tests/conftest.py and bench/common.py (no pytest, no aiosmtpd here,
so the benchmarks import it without the test toolchain): a free loopback port and a
sender.toml writer for `bulkrelay serve` on loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

VERP_KEY = b"k" * 32  # the key every test and benchmark writes to verp.key


def free_port(host: str = "127.0.0.1") -> int:
    """A currently unused TCP port on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_sender_toml(
    directory: Path,
    submit_port: int,
    *,
    queue_file: str = "q.sqlite",
    connections: int = 2,
    timeout: float = 10,
    retry_base: float | None = None,
    helo: str = "",
    batch_size: int = 100,
    interval: float = 2.0,
    per_domain: dict[str, int] | None = None,
    bounce_domain: str = "bounce.example.test",
    metrics: str = "",
    intake: str = "",
    from_domains: tuple[str, ...] = (),
    hotfolder: Path | None = None,
    extra: str = "",
) -> Path:
    """Write ``directory/sender.toml`` and return its path.

    The queue, the Postfix log (``mail.log``, created empty) and the DNSBL state file live in
    ``directory``; the sender submits to 127.0.0.1:``submit_port``. With a ``bounce_domain``
    the envelope uses VERP with ``VERP_KEY`` (written to ``verp.key``); ``intake`` is a
    listen address for 127.0.0.0/8; ``extra`` is TOML appended as is.
    """
    (directory / "mail.log").touch()
    submit = f"connections = {connections}\ntimeout = {timeout}\n"
    if retry_base is not None:
        submit += f"retry_base = {retry_base}\n"
    if helo:
        submit += f'helo = "{helo}"\n'
    policy = f"batch_size = {batch_size}\ninterval = {interval}\n"
    if per_domain:
        policy += "per_domain = { " + ", ".join(f'"{d}" = {n}' for d, n in per_domain.items()) + " }\n"
    envelope = ""
    if bounce_domain:
        (directory / "verp.key").write_bytes(VERP_KEY)
        key = directory / "verp.key"
        envelope = f'\n[envelope]\nbounce_domain = "{bounce_domain}"\nverp_key_file = "{key}"\n'
    if intake:
        extra += f'\n[intake]\nlisten = ["{intake}"]\nallowed_networks = ["127.0.0.0/8"]\n'
        extra += f"from_domains = {json.dumps(list(from_domains))}\n"
    if hotfolder:
        extra += f'\n[hotfolder]\npath = "{hotfolder}"\n'
    path = directory / "sender.toml"
    path.write_text(
        f"""
[queue]
path = "{directory / queue_file}"

[submit]
host = "127.0.0.1"
port = {submit_port}
{submit}
[policy]
{policy}{envelope}
[tracking]
source = "file"
path = "{directory / "mail.log"}"

[dnsbl]
state_file = "{directory / "dnsbl.json"}"

[metrics]
listen = "{metrics}"
{extra}
"""
    )
    return path
