"""bulkrelay.normalise on its own: what is repaired (and said so), what is refused (and why)."""

import email
import email.policy
import random
import re
from email.message import EmailMessage

import pytest

from bulkrelay.message import BadMessage, validate
from bulkrelay.normalise import accept, normalise

CLEAN = (
    b"From: billing@example.test\r\nTo: a@customer.test\r\nSubject: s\r\nMessage-ID: <1@x.test>\r\n\r\nhi\r\n"
)


def test_zero_one_two_repairs():
    assert normalise(CLEAN).repairs == [] and normalise(CLEAN).raw == CLEAN
    one = normalise(b"\xef\xbb\xbf" + CLEAN)
    assert one.raw == CLEAN and one.repairs == ["dropped the UTF-8 byte order mark before the first header"]
    two = normalise(b"\xef\xbb\xbf" + CLEAN.replace(b"\r\n", b"\n"))
    assert two.raw == CLEAN and len(two.repairs) == 2 and "6 bare LF" in two.repairs[1]


def test_multipart_long_lines_reencoded_decoded_content_unchanged():
    msg = EmailMessage()
    msg["From"] = "billing@example.test"
    msg["To"] = "a@customer.test"
    msg["Subject"] = "invoice"
    html = ("<tr><td>Pos 1</td><td>12,00 €</td></tr>" * 80 + "\r\n").encode()
    # 8-bit data in one "line" (8bit MIME is line-based: no NUL, CR or LF in it)
    blob = bytes(range(14, 256)) * 8
    msg.set_content("see attachment\r\n")
    msg.add_alternative(html, maintype="text", subtype="html", cte="8bit")
    msg.add_attachment(blob, maintype="application", subtype="octet-stream", cte="8bit", filename="b.bin")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    assert max(len(line) for line in raw.split(b"\r\n")) > 998
    done = normalise(raw)
    assert max(len(line) for line in done.raw.split(b"\r\n")) <= 998
    (repair,) = [r for r in done.repairs if r.startswith("body lines")]
    assert "(text/html) to quoted-printable" in repair and "(application/octet-stream) to base64" in repair
    parsed = email.message_from_bytes(done.raw, policy=email.policy.default)
    parts = {p.get_content_type(): p for p in parsed.walk() if not p.is_multipart()}
    assert parts["text/html"].get_payload(decode=True) == html
    assert parts["application/octet-stream"].get_payload(decode=True) == blob
    assert parts["text/plain"].get_content().strip() == "see attachment"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (CLEAN.replace(b"hi", b"h\x00i"), "NUL bytes (first at byte"),
        (CLEAN.replace(b"Subject: s", b"Subject: caf\xe9"), "Subject: has 8-bit bytes that are not UTF-8"),
        (CLEAN.replace(b"To: a@customer.test", "To: jörg@customer.test".encode()), "non-ASCII address"),
        (
            CLEAN.replace(b"Message-ID: <1@x.test>", "Message-ID: <ö@x.test>".encode()),
            "8-bit text where none",
        ),
        (CLEAN.replace(b"Subject: s", b"Subject: " + b"x" * 1200), "no place to fold it"),
    ],
)
def test_what_cannot_be_repaired_is_refused_with_a_reason(raw, words):
    with pytest.raises(BadMessage) as err:
        accept(raw, max_size=100_000)
    assert words in err.value.reason and "\n" not in err.value.reason
    assert "jörg" not in err.value.reason and "xxxx" not in err.value.reason


def test_long_unstructured_header_is_folded_at_white_space():
    words = " ".join(f"word{i}" for i in range(300))
    done = normalise(CLEAN.replace(b"Subject: s", b"Subject: " + words.encode()))
    parsed = email.message_from_bytes(done.raw, policy=email.policy.default)
    assert parsed["Subject"] == words
    assert max(len(line) for line in done.raw.split(b"\r\n")) <= 78


def test_trace_goes_on_top_and_bcc_addresses_are_returned():
    raw = CLEAN.replace(b"Subject: s", b"Bcc: x@customer.test, Y <y@customer.test>\r\nSubject: s")
    done = normalise(raw, trace=b"Received: from app by relay; Mon, 30 Nov 2026 03:00:00 +0000\r\n")
    assert done.raw.startswith(b"Received: from app") and b"Bcc" not in done.raw
    assert done.bcc == ["x@customer.test", "y@customer.test"]


@pytest.mark.parametrize(
    ("body", "lone_lf", "lone_cr"),
    [
        (b"hi\r\n", 0, 0),
        (b"\r\n\r\n\r\n", 0, 0),
        (b"hi\n", 1, 0),  # a bare LF last
        (b"hi\r", 0, 1),  # a bare CR last
        (b"\nhi\r\n", 1, 0),  # right after the blank line
        (b"a\rb\r\n", 0, 1),
        (b"a\n\rb\r\n", 1, 1),  # LF CR is not a line end pair
        (b"a\r\r\nb\r\n", 0, 1),
        (b"a\r\n\nb\r\n", 1, 0),
        (b"base64line\r\n" * 3000 + b"\n", 1, 0),  # the only bare one far into the body
    ],
)
def test_line_ends_every_bare_lf_and_cr_is_found_and_counted(body, lone_lf, lone_cr):
    head = b"From: billing@example.test\r\nTo: a@customer.test\r\n\r\n"
    done = normalise(head + body)
    assert done.raw == head + re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    said = [r for r in done.repairs if r.startswith("line ends")]
    if not lone_lf and not lone_cr:
        assert said == [] and done.raw == head + body
    else:
        assert len(said) == 1
        assert (f"{lone_lf} bare LF" in said[0]) == bool(lone_lf)
        assert (f"{lone_cr} bare CR" in said[0]) == bool(lone_cr)
    if lone_lf:  # also as the very first byte, with nothing before it
        assert "1 bare LF" in normalise(b"\n" + head + b"x\r\n").repairs[0]


def test_the_line_check_normalise_hands_to_validate_agrees_with_validates_own():
    """``accept`` lets validate skip its body-line scan when normalise found every line short:
    on random bodies (lines around the 998 limit, bare CR and LF, with and without a final
    line end) validate answers the same with that finding as with its own scan."""
    rng = random.Random(16)
    pieces = [b"x" * n for n in (0, 1, 996, 997, 998, 999, 1000)] + [b"a\rb", b"a\nb", b"\r", b"\n"]
    checked = 0
    for _ in range(400):
        body = b"\r\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        raw = CLEAN.replace(b"hi\r\n", body + rng.choice([b"", b"\r\n", b"\n", b"\r"]))
        done = normalise(raw)
        outcomes = []
        for lines_checked in (done.short_lines, False):
            try:
                validate(done.raw, "billing@example.test", ["a@customer.test"], max_size=10**6,
                         body_lines_checked=lines_checked)  # fmt: skip
                outcomes.append(None)
            except BadMessage as exc:
                outcomes.append(exc.reason)
        assert outcomes[0] == outcomes[1], raw
        checked += done.short_lines
    assert 100 < checked < 400  # both ways taken
