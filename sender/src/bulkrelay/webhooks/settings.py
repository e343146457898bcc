"""``/etc/bulkrelay/webhooks.toml``: the delivery settings and the webhooks, parsed strictly.

A file of its own, apart from sender.toml, because it holds the HMAC secrets (mode 0640
root:bulkrelay). Errors name the key and the fix and never show a secret.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path
from typing import Any, NamedTuple

from bulkrelay.config import ConfigError, fail, read_toml, want_int, want_number, want_str, want_str_list
from bulkrelay.queue import EVENT_TYPES

DEFAULT_PATH = "/etc/bulkrelay/webhooks.toml"
MIN_SECRET = 16
_NAME = re.compile(r"^[a-z0-9_-]+$")


# Named tuples, not dataclasses: `bulkrelay status` reads this file and runs without importing
# dataclasses (issue 16, its start-up time).
class Delivery(NamedTuple):
    batch: int = 100  # events per POST
    timeout: float = 10.0  # seconds per request
    retry_base: float = 5.0  # backoff retry_base * 2**(failures-1) ...
    retry_max: float = 600.0  # ... capped here
    dead_after: float = 86400.0  # a batch failing this long is parked as dead


class Webhook(NamedTuple):
    name: str
    url: str
    secret: str
    events: tuple[str, ...] = ()  # () = every type
    ca_file: str = ""

    def wants(self, event: dict[str, Any]) -> bool:
        return not self.events or event["type"] in self.events

    def __repr__(self) -> str:  # without the secret
        return (
            f"Webhook(name={self.name!r}, url={self.url!r}, events={self.events!r}, ca_file={self.ca_file!r})"
        )


class Settings(NamedTuple):
    delivery: Delivery = Delivery()
    webhooks: tuple[Webhook, ...] = ()


def _delivery(body: Any) -> Delivery:
    if not isinstance(body, dict):
        raise fail("delivery", "expected a [delivery] table", "write [delivery] and its keys below it")
    known = set(Delivery._fields)
    values: dict[str, Any] = {}
    for name, value in body.items():
        key = f"delivery.{name}"
        if name not in known:
            raise fail(key, "unknown key", f"remove it or use one of: {', '.join(sorted(known))}")
        if name == "batch":
            values[name] = want_int(key, value, minimum=1)
        else:
            values[name] = want_number(key, value, minimum=0.0, exclusive=True)
    delivery = Delivery(**values)
    if delivery.retry_max < delivery.retry_base:
        raise fail("delivery.retry_max", "is below retry_base", "use retry_max >= retry_base")
    return delivery


def _check_url(key: str, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise fail(key, f"{url!r} is not an http(s) URL", 'write url = "https://app.example.com/events"')
    if parts.username or parts.password:
        raise fail(
            key, "credentials in the URL", "remove user:password@; the requests are signed with the secret"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise fail(key, f"{url!r} has a bad port", "use a port 1..65535") from None
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise fail(key, "plain http leaves the relay unencrypted", "use https (http only to 127.0.0.1)")


def _secret(key: str, value: Any) -> str:
    # the value is never part of a message
    if not isinstance(value, str):
        raise fail(key, "expected a string", 'quote it: secret = "..."')
    if len(value) < MIN_SECRET:
        raise fail(
            key, f"shorter than {MIN_SECRET} characters", "use a random string: `openssl rand -hex 32`"
        )
    return value


def _events(key: str, value: Any) -> tuple[str, ...]:
    """The filter; () = every type."""
    events = want_str_list(key, value)
    if not events:
        raise fail(key, "an empty filter sends nothing", "remove the key to send every type")
    for e in events:
        if e not in EVENT_TYPES:
            raise fail(key, f"{e!r} is not an event type", f"use some of: {', '.join(EVENT_TYPES)}")
    return () if set(events) == set(EVENT_TYPES) else events


def _webhook(i: int, body: Any) -> Webhook:
    where = f"webhook[{i}]"
    if not isinstance(body, dict):
        raise fail(where, "expected a [[webhook]] table", "write [[webhook]] and its keys below it")
    known = set(Webhook._fields)
    for name in body:
        if name not in known:
            raise fail(
                f"{where}.{name}", "unknown key", f"remove it or use one of: {', '.join(sorted(known))}"
            )
    for name in ("name", "url", "secret"):
        if name not in body:
            raise fail(f"{where}.{name}", "missing", f"add {name} = ... to this [[webhook]]")
    name = want_str(f"{where}.name", body["name"])
    if not _NAME.match(name):
        raise fail(
            f"{where}.name", f"{name!r} is not a webhook name", "use lower-case letters, digits, - and _"
        )
    where = f"webhook {name}"
    url = want_str(f"{where}.url", body["url"])
    _check_url(f"{where}.url", url)
    secret = _secret(f"{where}.secret", body["secret"])
    events = _events(f"{where}.events", body.get("events", list(EVENT_TYPES)))
    ca_file = want_str(f"{where}.ca_file", body.get("ca_file", ""))
    if ca_file and urllib.parse.urlsplit(url).scheme != "https":
        raise fail(f"{where}.ca_file", "a CA file is for https", "remove ca_file or use an https URL")
    if ca_file and not Path(ca_file).is_file():
        raise fail(f"{where}.ca_file", f"{ca_file} is not a file", "fix the path or remove ca_file")
    return Webhook(name=name, url=url, secret=secret, events=events, ca_file=ca_file)


def parse(data: dict[str, Any]) -> Settings:
    """Settings from already-parsed TOML; raises ConfigError."""
    for section in data:
        if section not in ("delivery", "webhook"):
            raise fail(f"[{section}]", "unknown section", "use [delivery] and [[webhook]]")
    raw = data.get("webhook", [])
    if not isinstance(raw, list):
        raise fail(
            "webhook", "expected [[webhook]] tables", "write [[webhook]] (double brackets) per webhook"
        )
    webhooks = tuple(_webhook(i, body) for i, body in enumerate(raw))
    names = [w.name for w in webhooks]
    for name in names:
        if names.count(name) > 1:
            raise fail(f"webhook {name}", "the name is used twice", "give every [[webhook]] its own name")
    return Settings(delivery=_delivery(data.get("delivery", {})), webhooks=webhooks)


def load(path: str | Path = DEFAULT_PATH) -> Settings:
    """Read and validate ``path``; raises ConfigError with a one-line reason."""
    data = read_toml(path, option="--webhooks")
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
