"""Hard/soft decisions for the status codes and texts receivers really send."""

from __future__ import annotations

import pytest

from bulkrelay.bounces.classify import classify, find_status, status_from_text


@pytest.mark.parametrize(
    ("status", "diagnostic", "action", "kind"),
    [
        ("5.1.1", "550 5.1.1 User unknown", "failed", "hard"),
        ("", "This user doesn't have a yahoo.com account", "failed", "hard"),
        ("", "Invalid final delivery userid: x@example.test", "failed", "hard"),
        ("5.0.0", "5.0.0 (recipient reached disk quota)", "failed", "soft"),
        ("", "Delivery failed 20 attempts: x@example.test", "failed", "soft"),
        ("5.1.2", "Host or domain name not found", "failed", "hard"),
        ("5.1.10", "RecipientNotFound", "failed", "hard"),
        ("5.2.1", "mailbox disabled", "failed", "hard"),
        ("5.2.2", "mailbox full", "failed", "soft"),
        ("4.2.2", "mailbox full", "failed", "soft"),
        ("4.4.1", "connection timed out", "failed", "soft"),
        ("5.1.1", "", "delayed", "soft"),
        ("5.7.1", "blocked using zen.dnsbl.test", "failed", "soft"),
        ("5.7.1", "Recipient address rejected: Access denied", "failed", "soft"),
        ("5.7.1", "550 5.7.1 user unknown", "failed", "hard"),
        ("5.0.0", "550 message rejected as spam", "failed", "soft"),
        ("5.0.0", "550 Requested action not taken: mailbox unavailable", "failed", "hard"),
        ("5.1.8", "Sender address rejected: Domain not found", "failed", "soft"),
        ("5.4.7", "delivery time expired", "failed", "soft"),
        ("", "Unrouteable address", "failed", "hard"),
        ("", "something odd happened", "failed", "soft"),
    ],
)
def test_classify(status, diagnostic, action, kind):
    assert classify(status, diagnostic, action) == kind


def test_status_extraction():
    assert find_status("550-5.1.1 The email account") == "5.1.1"
    assert find_status("(#5.2.2)") == "5.2.2"
    assert find_status("version 10.5.1.1 of the server") == ""
    assert status_from_text("550 User unknown") == "5.1.1"
    assert status_from_text("over quota") == "4.2.2"
    assert status_from_text("554 rejected") == "5.0.0"
    assert status_from_text("nothing") == ""
