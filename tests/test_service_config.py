"""sender.toml parsing: defaults, every contract key, and errors that name the key and the fix."""

import datetime as dt
from pathlib import Path

import pytest

from bulkrelay.config import Config, ConfigError, load, parse

FULL = """
[queue]
path = "/var/lib/bulkrelay/queue.sqlite"

[intake]
listen = ["203.0.113.200:2525", "[2001:db8:113::200]:2525"]
allowed_networks = ["203.0.113.192/26", "2001:db8:113::/64"]
max_message_size = 10485760
tls_cert = "/etc/bulkrelay/intake.pem"
tls_key = "/etc/bulkrelay/intake.key"
auth_file = "/etc/bulkrelay/intake.users"

[hotfolder]
path = "/var/spool/bulkrelay/hotfolder"

[submit]
host = "127.0.0.1"
port = 25
connections = 4
timeout = 30

[policy]
batch_size = 100
interval = 300
daily_cap = 20000
per_domain = { "gmail.com" = 20, "t-online.de" = 10 }
warmup = [500, 1000, 2000]
warmup_start = 2026-12-01
windows = ["07:00-19:30"]
timezone = "Europe/Berlin"

[envelope]
bounce_domain = "bounce.example.test"
verp_prefix = "bounces"
verp_key_file = "/etc/bulkrelay/verp.key"

[tracking]
source = "journal"
path = "/var/log/mail.log"

[dnsbl]
state_file = "/var/lib/bulkrelay/dnsbl/state.json"

[bounces]
imap_host = "mail.example.test"
imap_port = 993
imap_user = "bounces"
imap_password_file = "/etc/bulkrelay/imap.pass"
imap_tls = "ssl"
mailbox = "INBOX"
processed_folder = "bulkrelay/processed"
other_folder = "bulkrelay/other"
forward_to = "postmaster@example.test"
poll_interval = 300
soft_limit = 3
soft_window_days = 7
tls_ca_file = ""

[metrics]
listen = "127.0.0.1:9468"
"""


def test_defaults_match_the_contract():
    c = Config()
    assert c.queue.path == "/var/lib/bulkrelay/queue.sqlite"
    assert c.intake.listen == () and c.intake.max_message_size == 25 * 1024 * 1024
    assert (c.submit.host, c.submit.port, c.submit.connections, c.submit.timeout) == ("127.0.0.1", 25, 2, 30)
    assert (c.policy.batch_size, c.policy.interval, c.policy.daily_cap) == (100, 300, 0)
    assert c.envelope.verp_prefix == "bounces"
    assert (c.tracking.source, c.tracking.path) == ("journal", "/var/log/mail.log")
    assert c.dnsbl.state_file == "/var/lib/bulkrelay/dnsbl/state.json"
    assert c.bounces.imap_port == 993 and c.bounces.processed_folder == "bulkrelay/processed"
    assert c.metrics.listen == "127.0.0.1:9468"


def test_every_contract_key_parses(tmp_path):
    path = tmp_path / "sender.toml"
    path.write_text(FULL)
    c = load(path)
    assert c.intake.listen == ("203.0.113.200:2525", "[2001:db8:113::200]:2525")
    assert c.policy.per_domain == {"gmail.com": 20, "t-online.de": 10}
    assert c.policy.warmup == (500, 1000, 2000) and c.policy.warmup_start == dt.date(2026, 12, 1)
    assert c.policy.interval == 300.0 and isinstance(c.policy.interval, float)
    assert c.bounces.other_folder == "bulkrelay/other"
    assert c.source_path == str(path)


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[polcy]\nbatch_size = 1", ["[polcy]", "unknown section", "policy"]),
        ("[policy]\nbatchsize = 1", ["policy.batchsize", "unknown key", "batch_size"]),
        ('[policy]\nbatch_size = "100"', ["policy.batch_size", "whole number"]),
        ("[policy]\nbatch_size = 0", ["policy.batch_size", ">= 1"]),
        ("[policy]\ninterval = 0", ["policy.interval", "> 0"]),
        ('[policy]\nwindows = ["7-19"]', ["policy.windows", "HH:MM-HH:MM"]),
        ('[policy]\ntimezone = "Mars/Olympus"', ["policy.timezone", "IANA"]),
        ("[policy]\nwarmup = [100, 200]", ["policy.warmup", "warmup_start"]),
        ('[policy]\nper_domain = { "gmail.com" = 0 }', ["policy.per_domain.gmail.com", ">= 1"]),
        ('[policy]\nper_domain = { "not a domain" = 5 }', ["per_domain.not a domain", "domain"]),
        ('[tracking]\nsource = "syslog"', ["tracking.source", "journal, file"]),
        ('[intake]\nlisten = ["localhost:25"]', ["intake.listen", "IP:port"]),
        ('[intake]\nallowed_networks = ["10.0.0.0/33"]', ["intake.allowed_networks", "CIDR"]),
        ('[intake]\nfrom_domains = ["billing@example.com"]', ["intake.from_domains", "not a domain name"]),
        ('[intake]\ntls_cert = "/x.pem"', ["intake.tls_cert", "both"]),
        ('[envelope]\nbounce_domain = "bounce.example.test"', ["envelope.verp_key_file", "random bytes"]),
        ("[submit]\nport = 70000", ["submit.port", "1..65535"]),
        ('[metrics]\nlisten = "9468"', ["metrics.listen", "IP:port"]),
        ("queue = 1", ["queue", "[queue]"]),
    ],
)
def test_bad_values_name_the_key_and_the_fix(toml, names):
    with pytest.raises(ConfigError) as err:
        parse(__import__("tomllib").loads(toml))
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_file_problems_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such file; create it or pass --config"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue\npath = 1")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML .*fix the syntax"):
        load(bad)


def test_verp_key_is_read_and_checked(tmp_path):
    key = tmp_path / "verp.key"
    key.write_bytes(b"short")
    c = parse({"envelope": {"bounce_domain": "bounce.example.test", "verp_key_file": str(key)}})
    with pytest.raises(ConfigError, match="at least 16 random bytes"):
        c.verp_key()
    key.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    assert c.verp_key() == b"0123456789abcdef0123456789abcdef"
    key.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        c.verp_key()


def test_laptop_example_config_parses_and_matches_its_readme(tmp_path):
    """sender/sender.toml.example (the README's laptop setup) stays a valid configuration."""
    example = Path(__file__).resolve().parents[1] / "sender" / "sender.toml.example"
    config = load(str(example))
    assert config.intake.listen == ("127.0.0.1:2525",) and config.submit.port == 2526
    assert config.intake.from_domains == ("example.test",)
    assert config.tracking.source == "file" and config.hotfolder.path == "/tmp/bulkrelay/hot"
