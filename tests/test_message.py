"""bulkrelay.message: every kind of bad input is refused with a one-line reason; good mail passes."""

import email
import email.policy

import pytest

from bulkrelay.message import (
    Attachment,
    BadMessage,
    address_problem,
    build,
    envelope_from_headers,
    validate,
)
from bulkrelay.normalise import normalise

GOOD = (
    b"From: Billing <billing@example.test>\r\n"
    b"To: alice@customer.test\r\n"
    b"Subject: Invoice 42\r\n"
    b"Message-ID: <42@example.test>\r\n"
    b"\r\n"
    b"Your invoice is attached.\r\n"
)


def refused(raw, mail_from="billing@example.test", rcpts=("alice@customer.test",), max_size=10_000):
    with pytest.raises(BadMessage) as info:
        validate(raw, mail_from, list(rcpts), max_size=max_size)
    reason = info.value.reason
    assert "\n" not in reason and reason
    return info.value


def test_good_message_passes():
    validate(GOOD, "billing@example.test", ["alice@customer.test"], max_size=10_000)


def test_lf_only_and_null_sender_pass():
    validate(GOOD.replace(b"\r\n", b"\n"), "", ["alice@customer.test"], max_size=10_000)


def test_folded_header_and_8bit_body_pass():
    raw = GOOD.replace(b"Subject: Invoice 42", b"Subject: Invoice\r\n 42 folded") + "Grüße\r\n".encode()
    validate(raw, "billing@example.test", ["alice@customer.test"], max_size=10_000)


def test_malformed_eml_not_a_message():
    err = refused(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    assert "header" in err.reason


def test_malformed_garbage_header_line():
    err = refused(GOOD.replace(b"Subject: Invoice 42\r\n", b"Subject: Invoice 42\r\nthis is no header\r\n"))
    assert "line 4" in err.reason and "blank line" in err.reason


def test_malformed_starts_with_blank_line():
    refused(b"\r\n" + GOOD)


def test_malformed_bare_cr():
    refused(GOOD.replace(b"Subject: Invoice 42", b"Subject: Invoice\r42"))


def test_missing_from():
    err = refused(GOOD.replace(b"From: Billing <billing@example.test>\r\n", b""))
    assert "From:" in err.reason and "add" in err.reason


def test_from_without_address():
    err = refused(GOOD.replace(b"Billing <billing@example.test>", b"Billing"))
    assert "From:" in err.reason


def test_two_from_headers():
    refused(b"From: a@example.test\r\n" + GOOD)


def test_duplicate_subject():
    refused(b"Subject: twice\r\n" + GOOD)


def test_8bit_header():
    err = refused(GOOD.replace(b"Subject: Invoice 42", "Subject: Rechnung für März".encode()))
    assert "8-bit" in err.reason and "'subject'" in err.reason and "RFC 2047" in err.reason


@pytest.mark.parametrize("byte", range(256))
def test_every_byte_in_a_header_value(byte):
    """A header line may hold TAB and printable ASCII (0x20-0x7e) and nothing else; CR and LF
    end lines, so a bare CR has a reason of its own and LF splits the line."""
    raw = GOOD.replace(b"Subject: Invoice 42", b"Subject: Invoice" + bytes([byte]) + b"42")
    if byte == 9 or 0x20 <= byte <= 0x7E:
        validate(raw, "billing@example.test", ["alice@customer.test"], max_size=10_000)
    elif byte == 10:
        assert "not 'Name: value'" in refused(raw).reason
    else:
        reason = refused(raw).reason
        assert ("bare CR" if byte == 13 else "raw 8-bit or control bytes") in reason


@pytest.mark.parametrize("code", [*range(0x80), 0x80, 0xA0, 0xFF, 0x100, 0x2028, 0x1F600])
def test_every_character_in_an_address(code):
    """An address holds printable ASCII only: every control or non-ASCII character is refused
    with the same reason, whatever else the address's syntax allows."""
    address = f"a{chr(code)}b@example.test"
    problem = address_problem(address)
    if 0x20 <= code <= 0x7E:
        assert problem is None or "control or non-ASCII" not in problem
    else:
        assert problem is not None and "control or non-ASCII" in problem


def test_8bit_in_folded_continuation():
    refused(GOOD.replace(b"Subject: Invoice 42", "Subject: Invoice\r\n für".encode()))


def test_oversized():
    err = refused(GOOD + b"x" * 2000 + b"\r\n", max_size=1000)
    assert err.smtp_code == 552 and "1000-byte limit" in err.reason


def test_overlong_body_line():
    refused(GOOD + b"y" * 1200 + b"\r\n", max_size=100_000)


def test_empty_message():
    refused(b"\r\n\r\n")


@pytest.mark.parametrize(
    "rcpt",
    [
        "alice",
        "alice@",
        "@customer.test",
        "alice@localhost",
        "alice@customer..test",
        "alice@[198.51.100.7]",
        "al ice@customer.test",
        "<alice@customer.test>",
        "alice@-customer.test",
        "alice@customer.test\r\nRCPT TO:<x@y.test>",
        "ali\u00e9@customer.test",
        ".alice@customer.test",
        "alice.@customer.test",
        "a" * 65 + "@customer.test",
        "alice@198.51.100.7",
        "@relay.test:alice@customer.test",
        "",
    ],
)
def test_invalid_recipient_syntax(rcpt):
    err = refused(GOOD, rcpts=[rcpt])
    assert err.smtp_code == 553 and "recipient address" in err.reason


def test_invalid_sender_syntax():
    err = refused(GOOD, mail_from="billing")
    assert err.enhanced == "5.1.7"


def test_no_recipients():
    refused(GOOD, rcpts=[])


@pytest.mark.parametrize(
    "addr",
    ["alice@customer.test", '"a b"@customer.test', "a.b+tag@sub.customer.test", "x@xn--bcher-kva.test"],
)
def test_valid_addresses(addr):
    assert address_problem(addr) is None


def test_envelope_from_headers_to_cc_bcc_dedup():
    raw = (
        b"From: Billing <billing@example.test>\r\nTo: a@customer.test, B <b@Customer.TEST>\r\n"
        b"Cc: b@customer.test\r\nBcc: c@customer.test,\r\n d@customer.test\r\nSubject: s\r\n\r\nbody\r\n"
    )
    sender, rcpts = envelope_from_headers(raw)
    assert sender == "billing@example.test"
    assert rcpts == ["a@customer.test", "b@Customer.TEST", "c@customer.test", "d@customer.test"]
    done = normalise(raw)
    assert b"Bcc" not in done.raw and b"d@customer.test" not in done.raw
    assert done.raw.endswith(b"\r\n\r\nbody\r\n") and b"Cc: b@customer.test" in done.raw
    assert envelope_from_headers(done.raw, bcc=done.bcc) == (sender, rcpts)


def test_envelope_from_headers_needs_recipient():
    with pytest.raises(BadMessage, match="no recipient"):
        envelope_from_headers(b"From: a@example.test\r\nSubject: s\r\n\r\nx\r\n")


def test_build_roundtrip_with_attachment():
    raw = build(
        "Billing Dept <billing@example.test>",
        ["alice@customer.test"],
        "Rechnung März",
        "Hallo Grüße",
        [Attachment("invoice.pdf", b"%PDF-1.7 fake", "application/pdf")],
    )
    validate(raw, "billing@example.test", ["alice@customer.test"], max_size=10_000)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(msg["Subject"]) == "Rechnung März"
    assert msg["Message-ID"].endswith("@example.test>")
    assert msg["Date"]
    parts = list(msg.iter_attachments())
    assert parts[0].get_filename() == "invoice.pdf"
    assert parts[0].get_content() == b"%PDF-1.7 fake"
    assert "Grüße" in msg.get_body(("plain",)).get_content()


def test_build_attachment_from_path(tmp_path):
    pdf = tmp_path / "invoice.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    raw = build("billing@example.test", "alice@customer.test", "s", "b", [pdf])
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert next(msg.iter_attachments()).get_content_type() == "application/pdf"


def test_build_missing_attachment():
    with pytest.raises(BadMessage, match="cannot read attachment"):
        build("billing@example.test", "alice@customer.test", "s", "b", ["/nonexistent/x.pdf"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hi\r\nBcc: victim@customer.test"),
        ("subject", "Hi\nX-Injected: 1"),
        ("subject", "Hi\x00"),
        ("from_", "billing@example.test\r\nBcc: victim@customer.test"),
        ("to", "alice@customer.test\nBcc: victim@customer.test"),
    ],
)
def test_build_refuses_header_injection(field, value):
    args = {"from_": "billing@example.test", "to": "alice@customer.test", "subject": "s", "body": "b"}
    args[field] = value
    with pytest.raises(BadMessage) as info:
        build(**args)
    assert "\n" not in info.value.reason
    assert "line break" in info.value.reason or "NUL" in info.value.reason or "invalid" in info.value.reason


def test_build_refuses_bad_from():
    with pytest.raises(BadMessage, match="--from"):
        build("not an address", "alice@customer.test", "s", "b")


@pytest.mark.parametrize(
    ("raw", "dropped"),
    [
        (b"From billing@example.test Mon Nov 30 03:00:00 2026\nFrom: a@example.test\n\nx\n", True),
        (b"From : a@example.test\nTo: b@customer.test\n\nx\n", False),  # obsolete header syntax
        (b"From: a@example.test\nTo: b@customer.test\n\nx\n", False),
    ],
)
def test_only_an_mbox_from_line_is_dropped(raw, dropped):
    done = normalise(raw)
    assert b"Mon Nov 30" not in done.raw
    assert done.raw.split(b"\r\n", 1)[0] == (b"From: a@example.test" if dropped else raw.split(b"\n", 1)[0])
    assert ("dropped the leading mbox 'From ' line" in done.repairs) is dropped


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
def test_line_over_finds_a_long_line_anywhere(end):
    from bulkrelay.message import line_over  # noqa: PLC0415

    ok = b"x" * 10
    assert not line_over(b"", 10, end)
    assert not line_over(ok, 10, end)  # one line, no end: exactly the limit
    assert line_over(ok + b"x", 10, end)
    for lines in ([ok] * 50, [b""] * 30 + [ok], [ok, b"", b"y" * 3] * 20):
        data = end.join(lines) + end
        assert not line_over(data, 10, end)
        for at in range(len(lines)):  # one line made too long, at every position
            longer = list(lines)
            longer[at] += b"z" * (11 - len(longer[at]))
            assert line_over(end.join(longer) + end, 10, end), at
    data = b"z" * 30 + end + ok + end
    assert line_over(data, 10, end)
    assert not line_over(data, 10, end, start=30 + len(end))
