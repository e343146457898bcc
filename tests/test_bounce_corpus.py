"""Every message of the bounce corpus is classified as the format it imitates says it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkrelay.bounces.parse import analyse

CORPUS = Path(__file__).parent / "data" / "bounces"
KEY = b"bulkrelay-test-corpus-key-0123456789"

# file: (category, format, recipient id, [(failed address, status, kind)])
EXPECTED = {
    "postfix_user_unknown.eml": ("bounce", "rfc3464", 101, [("nobody@customer.test", "5.1.1", "hard")]),
    "postfix_mailbox_full.eml": ("bounce", "rfc3464", 102, [("full@customer.test", "4.2.2", "soft")]),
    "exim_user_unknown.eml": ("bounce", "exim", 103, [("gone@customer.test", "5.1.1", "hard")]),
    "exim_text_unrouteable.eml": (
        "bounce",
        "exim",
        104,
        [("someone@no-such-domain.customer.test", "5.1.1", "hard")],
    ),
    "sendmail_dsn.eml": ("bounce", "rfc3464", 105, [("olduser@customer.test", "5.1.1", "hard")]),
    "sendmail_text_oldstyle.eml": (
        "bounce",
        "sendmail-text",
        106,
        [("jdoe@legacy.customer.test", "5.1.1", "hard")],
    ),
    "qmail_no_mailbox.eml": ("bounce", "qmail", 107, [("ghost@qmail-customer.test", "5.1.1", "hard")]),
    "qmail_over_quota.eml": ("bounce", "qmail", 108, [("busy@qmail-customer.test", "5.2.2", "soft")]),
    "exchange_recipient_not_found.eml": (
        "bounce",
        "rfc3464",
        109,
        [("left.company@corp.customer.test", "5.1.10", "hard")],
    ),
    "outlook_com_mailbox_unavailable.eml": (
        "bounce",
        "rfc3464",
        110,
        [("closed.account@outlook.test", "5.5.0", "hard")],
    ),
    "gmail_no_such_user.eml": ("bounce", "rfc3464", 111, [("no.such.user@gmail.test", "5.1.1", "hard")]),
    "gmail_over_quota.eml": ("bounce", "rfc3464", 112, [("full.inbox@gmail.test", "4.2.2", "soft")]),
    "policy_block_5_7_1.eml": (
        "bounce",
        "rfc3464",
        113,
        [("valid.user@strict.customer.test", "5.7.1", "soft")],
    ),
    "success_notice.eml": ("notice", "rfc3464", 114, []),
    "arf_complaint.eml": ("complaint", "arf", 115, []),
    "autoreply_vacation.eml": ("autoreply", "rfc3834", 116, []),
    "human_reply.eml": ("human", "none", 117, []),
}


def test_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classification(name):
    category, fmt, recipient_id, failures = EXPECTED[name]
    result = analyse((CORPUS / name).read_bytes(), key=KEY)
    assert (result.category, result.format, result.recipient_id) == (category, fmt, recipient_id)
    assert [(f.address, f.status, f.kind) for f in result.failures] == failures
    for failure in result.failures:
        assert failure.diagnostic, "a failure keeps the receiver's words for the operator"


def test_arf_names_the_complainer():
    result = analyse((CORPUS / "arf_complaint.eml").read_bytes(), key=KEY)
    assert result.feedback_type == "abuse"
    assert result.complained == "annoyed@isp.test"


def test_without_the_key_no_recipient_is_found():
    result = analyse((CORPUS / "postfix_user_unknown.eml").read_bytes(), key=b"another-key-0123456789")
    assert result.recipient_id is None
    assert result.category == "bounce"


def test_crlf_line_endings_parse_the_same():
    raw = (CORPUS / "gmail_no_such_user.eml").read_bytes().replace(b"\n", b"\r\n")
    result = analyse(raw, key=KEY)
    assert (result.category, result.recipient_id, result.failures[0].status) == ("bounce", 111, "5.1.1")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage without headers",
        b"Content-Type: multipart/report; boundary=x\n\n--x\n",
        b"\xff\xfe\x00\x01",
    ],
)
def test_malformed_input_is_human_not_a_crash(raw):
    assert analyse(raw, key=KEY).category == "human"
