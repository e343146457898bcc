"""The sender's configuration: one TOML file parsed into immutable named tuples.

Every section and key is declared here once, with its type and default. Unknown sections or
keys and values of the wrong type are errors that name the key and say what to write instead,
so a typo in ``/etc/bulkrelay/sender.toml`` stops the service at start instead of being
silently ignored.

The sections are ``typing.NamedTuple`` classes rather than frozen dataclasses: every CLI
command loads this module, and generating a dataclass's methods costs ~1 ms per class at
import plus ~12 ms for ``dataclasses`` and ``inspect`` (issue 16, ``bulkrelay status``).
Change a value with ``section._replace(key=value)``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bulkrelay.cli import UsageError
from bulkrelay.names import is_domain

DEFAULT_PATH = "/etc/bulkrelay/sender.toml"


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or holds a bad key/value."""


def zone(name: str) -> dt.tzinfo:
    """A tzinfo for an IANA name; "UTC" works without tzdata. Raises ValueError."""
    if name in ("UTC", "Etc/UTC", ""):
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if not os.path.isdir("/usr/share/zoneinfo"):
            raise ValueError(f"time zone {name!r} needs the zone database (apt install tzdata)") from None
        raise ValueError(f"unknown time zone {name!r}") from None


class QueueConfig(NamedTuple):
    path: str = "/var/lib/bulkrelay/queue.sqlite"


class IntakeConfig(NamedTuple):
    listen: tuple[str, ...] = ()
    allowed_networks: tuple[str, ...] = ()
    max_message_size: int = 25 * 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    auth_file: str = ""
    # From: domains the intake and the hot folder accept (the relay DKIM-signs what it sends);
    # () = any (for a laptop; the relay role always sets its sending domains)
    from_domains: tuple[str, ...] = ()


class HotfolderConfig(NamedTuple):
    path: str = ""


class SubmitConfig(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 25
    connections: int = 2
    timeout: float = 30.0
    # Backoff after a 4xx reply: retry_base * 2**(attempts-1), capped at retry_max (seconds).
    retry_base: float = 60.0
    retry_max: float = 3600.0
    helo: str = ""


class PolicyConfig(NamedTuple):
    batch_size: int = 100
    interval: float = 300.0
    daily_cap: int = 0
    per_domain: Mapping[str, int] = MappingProxyType({})  # read-only: the default is shared
    warmup: tuple[int, ...] = ()
    warmup_start: dt.date | None = None
    windows: tuple[str, ...] = ()
    timezone: str = "UTC"


class EnvelopeConfig(NamedTuple):
    bounce_domain: str = ""
    verp_prefix: str = "bounces"
    verp_key_file: str = ""


class TrackingConfig(NamedTuple):
    source: str = "journal"
    path: str = "/var/log/mail.log"
    # the MTA-STS daemon's socketmap (IP:port), asked about testing policies; "" = MTA-STS off
    mta_sts_map: str = ""


class DnsblConfig(NamedTuple):
    state_file: str = "/var/lib/bulkrelay/dnsbl/state.json"


class BouncesConfig(NamedTuple):
    imap_host: str = ""
    imap_port: int = 993
    imap_user: str = ""
    imap_password_file: str = ""
    imap_tls: str = "ssl"
    mailbox: str = "INBOX"
    processed_folder: str = "bulkrelay/processed"
    other_folder: str = ""
    forward_to: str = ""
    poll_interval: float = 300.0
    soft_limit: int = 3
    soft_window_days: int = 7
    soft_expiry_days: int = 30
    tls_ca_file: str = ""
    # the admin mail after alert_after failed passes in a row (and on recovery); () = none
    alert_to: tuple[str, ...] = ()
    alert_after: int = 3


class MetricsConfig(NamedTuple):
    listen: str = "127.0.0.1:9468"


class EventsConfig(NamedTuple):
    # days the delivery events stay in the outbox (`bulkrelay events`, webhooks) before pruning
    keep_days: int = 30


class Config(NamedTuple):
    queue: QueueConfig = QueueConfig()
    intake: IntakeConfig = IntakeConfig()
    hotfolder: HotfolderConfig = HotfolderConfig()
    submit: SubmitConfig = SubmitConfig()
    policy: PolicyConfig = PolicyConfig()
    envelope: EnvelopeConfig = EnvelopeConfig()
    tracking: TrackingConfig = TrackingConfig()
    dnsbl: DnsblConfig = DnsblConfig()
    bounces: BouncesConfig = BouncesConfig()
    metrics: MetricsConfig = MetricsConfig()
    events: EventsConfig = EventsConfig()
    source_path: str = ""

    def verp_key(self) -> bytes:
        """The VERP secret, read from ``envelope.verp_key_file`` (b"" when none is set)."""
        if not self.envelope.verp_key_file:
            return b""
        try:
            key = Path(self.envelope.verp_key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"envelope.verp_key_file: cannot read {self.envelope.verp_key_file} "
                f"({exc.strerror}); create it with 32 random bytes or fix the path"
            ) from None
        if len(key) < 16:
            raise ConfigError(
                f"envelope.verp_key_file: {self.envelope.verp_key_file} holds {len(key)} bytes; "
                "write at least 16 random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
            )
        return key


SECTIONS: dict[str, type] = {
    name: type(default) for name, default in Config._field_defaults.items() if name != "source_path"
}

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def _is_config_domain(value: str) -> bool:
    """A domain in sender.toml: any case, a single label allowed (e.g. a lab's "test")."""
    return is_domain(value.lower(), min_labels=1)


def fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}; {fix}")


def want_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise fail(key, f"expected a string, got {type(value).__name__} {value!r}", 'quote it: key = "..."')
    return value


def want_int(key: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(key, f"expected a whole number, got {value!r}", "write a number without quotes")
    if value < minimum:
        raise fail(key, f"{value} is below the minimum {minimum}", f"use a value >= {minimum}")
    return value


def want_number(key: str, value: Any, *, minimum: float = 0.0, exclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(key, f"expected a number, got {value!r}", "write a number without quotes")
    if value < minimum or (exclusive and value == minimum):
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise fail(key, f"{value} is out of range", f"use a value {bound}")
    return float(value)


def want_str_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, f"expected a list of strings, got {value!r}", 'write key = ["a", "b"]')
    return tuple(value)


def _check_listen(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise fail(key, f"{value!r} is not IP:port", 'write "127.0.0.1:2525" or "[::1]:2525"')


def _str_list(key: str, name: str, value: Any) -> tuple[str, ...]:
    values = want_str_list(key, value)
    if name == "listen":
        for v in values:
            _check_listen(key, v)
    if name == "from_domains":
        for v in values:
            if not _is_config_domain(v):
                raise fail(key, f"{v!r} is not a domain name", 'write from_domains = ["example.com"]')
        values = tuple(v.lower() for v in values)
    if name == "allowed_networks":
        for v in values:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise fail(key, f"{v!r} is not a network", 'write CIDR such as "203.0.113.0/24"') from None
    return values


def _convert(section: str, name: str, default: Any, value: Any) -> Any:  # noqa: PLR0911, PLR0912
    key = f"{section}.{name}"
    if (section, name) == ("policy", "per_domain"):
        if not isinstance(value, dict):
            raise fail(key, f"expected a table, got {value!r}", 'write per_domain = { "gmail.com" = 20 }')
        out = {}
        for domain, limit in value.items():
            if not _is_config_domain(domain):
                raise fail(f"{key}.{domain}", "not a domain name", "use the recipient domain, e.g. gmail.com")
            out[domain.lower()] = want_int(f"{key}.{domain}", limit, minimum=1)
        return out
    if (section, name) == ("policy", "warmup_start"):
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise fail(key, f"{value!r} is not a date", "write warmup_start = 2026-01-31")
    if (section, name) == ("policy", "warmup"):
        if not isinstance(value, list):
            raise fail(key, f"expected a list of daily caps, got {value!r}", "write warmup = [50, 100, 200]")
        return tuple(want_int(f"{key}[{i}]", v, minimum=1) for i, v in enumerate(value))
    if (section, name) == ("policy", "windows"):
        windows = want_str_list(key, value)
        for w in windows:
            if not _WINDOW.match(w):
                raise fail(key, f"{w!r} is not a HH:MM-HH:MM window", 'write windows = ["07:00-19:30"]')
        return windows
    if (section, name) == ("policy", "timezone"):
        tz = want_str(key, value)
        try:
            zone(tz)
        except ValueError as exc:
            raise fail(key, str(exc), 'use an IANA name such as "Europe/Berlin" or "UTC"') from None
        return tz
    if isinstance(default, tuple):
        return _str_list(key, name, value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail(key, f"expected true or false, got {value!r}", "write true or false")
        return value
    if isinstance(default, int):
        minimum = (
            1
            if name
            in {
                "port",
                "connections",
                "batch_size",
                "imap_port",
                "soft_limit",
                "max_message_size",
                "keep_days",
            }
            else 0
        )
        result = want_int(key, value, minimum=minimum)
        if name in {"port", "imap_port"} and result > 65535:
            raise fail(key, f"{result} is not a TCP port", "use 1..65535")
        return result
    if isinstance(default, float):
        return want_number(
            key, value, minimum=0.0, exclusive=name in {"interval", "timeout", "poll_interval"}
        )
    return want_str(key, value)


_CHOICES = {
    ("tracking", "source"): ("journal", "file"),
    ("bounces", "imap_tls"): ("ssl", "starttls"),
}


def parse(data: dict[str, Any], *, source_path: str = "") -> Config:
    """Build a Config from already-parsed TOML data (a dict); raises ConfigError."""
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise fail(
                f"[{section}]", "unknown section", f"remove it or use one of: {', '.join(sorted(SECTIONS))}"
            )
        if not isinstance(body, dict):
            raise fail(section, "expected a [section] table", f"write [{section}] and its keys below it")
        cls = SECTIONS[section]
        defaults = cls._field_defaults  # every key has one
        values = {}
        for name, value in body.items():
            if name not in defaults:
                raise fail(
                    f"{section}.{name}",
                    "unknown key",
                    f"remove it or use one of: {', '.join(sorted(defaults))}",
                )
            values[name] = _convert(section, name, defaults[name], value)
            choices = _CHOICES.get((section, name))
            if choices and values[name] not in choices:
                raise fail(
                    f"{section}.{name}", f"{value!r} is not allowed", f"use one of: {', '.join(choices)}"
                )
        sections[section] = cls(**values)
    config = Config(**sections, source_path=source_path)
    _cross_check(config)
    return config


def _cross_check(config: Config) -> None:
    if config.intake.listen and not config.intake.allowed_networks:
        raise fail(
            "intake.allowed_networks",
            "the intake listens but allows no network, so every client would get 554",
            "list the application networks (bulkrelay_app_networks)",
        )
    if any(address.rpartition(":")[2] == "25" for address in config.intake.listen):
        raise fail(
            "intake.listen",
            "port 25 is the relay's closed inbound SMTP port",
            'listen on 2525, e.g. "203.0.113.10:2525"',
        )
    if config.hotfolder.path and not os.path.isabs(config.hotfolder.path):
        raise fail(
            "hotfolder.path", f"{config.hotfolder.path!r} is not an absolute path", "write e.g. /srv/invoices"
        )
    if config.policy.warmup and config.policy.warmup_start is None:
        raise fail("policy.warmup", "a warm-up schedule needs its start day", "add warmup_start = YYYY-MM-DD")
    if bool(config.intake.tls_cert) != bool(config.intake.tls_key):
        raise fail("intake.tls_cert", "tls_cert and tls_key go together", "set both or neither")
    if config.intake.auth_file and not config.intake.tls_cert:
        raise fail(
            "intake.auth_file", "AUTH is offered over TLS only", "set intake.tls_cert and intake.tls_key"
        )
    if config.envelope.bounce_domain and not _is_config_domain(config.envelope.bounce_domain):
        raise fail("envelope.bounce_domain", "not a domain name", "write e.g. bounce.example.com")
    if config.envelope.bounce_domain and not config.envelope.verp_key_file:
        raise fail(
            "envelope.verp_key_file",
            "VERP addresses need a secret",
            "point verp_key_file at a file with 32 random bytes",
        )
    if config.metrics.listen:
        _check_listen("metrics.listen", config.metrics.listen)
    if config.tracking.mta_sts_map:
        _check_listen("tracking.mta_sts_map", config.tracking.mta_sts_map)


def read_toml(path: str | Path, *, option: str = "--config") -> dict[str, Any]:
    """The parsed TOML file at ``path`` (any of the package's settings files); ConfigError else.

    ``option`` is the command-line option that names another file (said when it is missing).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; create it or pass {option} FILE") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); check the path and permissions") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax there") from None
    return data


def load(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and validate the TOML file at ``path``; raises ConfigError with a one-line reason."""
    data = read_toml(path)
    try:
        return parse(data, source_path=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
