"""The intake's fast path for plain MAIL/RCPT addresses gives what aiosmtpd's parser gives.

``IntakeSMTP._getaddr`` answers ``<local@domain>`` itself and hands everything else to
aiosmtpd's ``SMTP._getaddr`` (the email package's header parser); both are called on the same
arguments, hand-picked and random, and must agree. Over a real session, parameters and the
null sender still get aiosmtpd's replies.
"""

import asyncio
import random

import pytest
from aiosmtpd.smtp import SMTP
from conftest import pick_free_port as free_port

from bulkrelay import config as cfg
from bulkrelay.intake import _PLAIN_PATH, IntakeHandler, IntakeSMTP

PLAIN = [
    "<a@b>",
    "<billing@example.test>",
    "<first.last+tag@mail.example-corp.test>",
    "<o'brien!#$%&*/=^_`{|}~-@x.test>",
    "<a@b.test> SIZE=1000",
    "<a@b.test>  BODY=8BITMIME SMTPUTF8",
    "<a@b.test>\tSIZE=12",
    "<a@b.test>SIZE=1",  # no space: the parser leaves it as the rest too
]
SLOW = [
    "<>",
    "<> SIZE=10",
    '<"quoted local"@x.test>',
    '<"a\\"b"@x.test>',
    "<@relay.test,@other.test:a@x.test>",  # source route
    "<a@[192.0.2.1]>",
    "<a @x.test>",
    "< a@x.test>",
    "<a@x.test> (comment) SIZE=1",
    "<a@x.test>(comment)",
    "<a..b@x.test>",
    "<.a@x.test>",
    "<a.@x.test>",
    "<a@x..test>",
    "<a@x.test.>",
    "<=?utf-8?q?a?=@x.test>",  # the parser decodes an encoded word
    "<jörg@x.test>",  # SMTPUTF8
    "<a@bücher.test>",
    "a@x.test",  # no angle brackets
    "<a@x.test",
    "<a@x.test>>",
    "<a@x.test> \x0c SIZE=1",
]


@pytest.fixture
def smtp():
    loop = asyncio.new_event_loop()
    conf = cfg.parse({"queue": {"path": ":memory:"}})
    handler = IntakeHandler(None, networks=[], max_size=conf.intake.max_message_size)
    yield IntakeSMTP(handler, loop=loop)
    loop.close()


@pytest.mark.parametrize("arg", PLAIN + SLOW)
def test_same_address_and_rest_as_aiosmtpd(smtp, arg):
    assert smtp._getaddr(arg) == SMTP._getaddr(smtp, arg)


def test_the_fast_path_takes_only_plain_addresses():
    assert all(_PLAIN_PATH.match(arg) for arg in PLAIN)
    taken = [arg for arg in SLOW if _PLAIN_PATH.match(arg) and not arg.startswith("<a@x.test>")]
    assert taken == []


def test_local_part_limit_applies_on_the_fast_path(smtp):
    smtp.local_part_limit = 5
    assert smtp._getaddr("<abcdef@x.test>") == (None, None) == SMTP._getaddr(smtp, "<abcdef@x.test>")
    assert smtp._getaddr("<abcde@x.test>") == ("abcde@x.test", "")


def test_random_arguments_agree_with_aiosmtpd(smtp):
    rng = random.Random(16)
    # mostly what the fast path takes, now and then a character or piece that it must not
    pieces = ["a", "Z0", "b-c", "x+y", "=", "'", "~", ".", ".", "?", '"', " ", "\\", "ö", "(", "[1]", "@"]

    def part(common):
        return "".join(rng.choice(common if rng.random() < 0.9 else pieces) for _ in range(rng.randint(0, 4)))

    plain = 0
    for _ in range(20000):
        local, domain = part(["a", "Z0", "x+y", "b-c", "=", "."]), part(["a", "Z0", "b-c", "."])
        arg = rng.choice(["<", "<", " <", "<@r.test:"]) + local + "@" + domain + rng.choice([">", ">", ""])
        arg += rng.choice(["", "", " SIZE=1", "  BODY=8BITMIME", " (c) x", "x", "\t", " \x0c"])
        plain += bool(_PLAIN_PATH.match(arg))
        try:
            expected = SMTP._getaddr(smtp, arg)
        except Exception as exc:  # the parser's own failures must stay the same failures
            with pytest.raises(type(exc)):
                smtp._getaddr(arg)
            continue
        assert smtp._getaddr(arg) == expected, arg
    assert plain > 1000  # the fast path was tried, not only the parser


# (command, reply code): what aiosmtpd and the handler answered before the fast path existed.
# Each MAIL comes after a RSET; the RCPTs follow the one MAIL accepted.
SESSION = [
    ("MAIL FROM:<billing@example.test> SIZE=999999999", 552),  # over max_message_size
    ("MAIL FROM:<billing@example.test> BODY=BINARYMIME", 501),
    ("MAIL FROM:<billing@example.test> SMTPUTF8", 501),  # disabled: addresses stay ASCII
    ("MAIL FROM:<billing@example.test> FOO=1", 555),
    ("MAIL FROM:<billing@example.test> SIZE=", 501),
    ("MAIL FROM:<>", 553),
    ("MAIL FROM:<bill ing@example.test>", 250),  # the parser's obsolete syntax, not the fast path
    ("MAIL FROM:<billing@example.test> BODY=8BITMIME SIZE=100", 250),
    ("RCPT TO:<alice@customer.test> NOTIFY=NEVER", 555),
    ("RCPT TO:<@relay.test:alice@customer.test>", 250),  # source route: the route is dropped
    ('RCPT TO:<"alice smith"@customer.test>', 250),
    ("RCPT TO:<alice@[192.0.2.1]>", 553),
    ("RCPT TO:<alice@customer.test>", 250),
]


def test_session_replies_to_parameters_and_odd_addresses(tmp_path, intake_server):
    conf = cfg.parse(
        {
            "queue": {"path": str(tmp_path / "queue.sqlite")},
            "intake": {
                "listen": [f"127.0.0.1:{free_port()}"],
                "allowed_networks": ["127.0.0.0/8"],
                "max_message_size": 4096,
            },
        }
    )
    smtp = intake_server(conf).client()
    smtp.ehlo("app.example.test")
    got = []
    for command, _ in SESSION:
        if command.startswith("MAIL"):
            smtp.rset()
        got.append((command, smtp.docmd(command)[0]))
    assert got == SESSION
    smtp.quit()
