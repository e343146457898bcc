"""SMTP smuggling (CVE-2024-27305): a bare-LF or bare-CR "end of data" inside DATA must not end
the message, so the commands after it can never queue a second, forged message.

Runs against the aiosmtpd the tests install (requirements.txt); molecule's `sender` scenario
sends the same payloads to the relay's Debian package. Raw sockets: smtplib would repair the
line ends and hide the attack.
"""

import sqlite3

import pytest
from support import RawClient

from bulkrelay import config as configmod

PAYLOADS = {"lf-dot-crlf": b"\n.\r\n", "cr-dot-crlf": b"\r.\r\n", "lf-dot-lf": b"\n.\n"}


def queued(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT m.id, group_concat(r.address) FROM messages m JOIN recipients r ON r.message = m.id "
            "GROUP BY m.id ORDER BY m.id"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_smuggled_second_message_is_never_queued(
    name, sender_config, free_port, intake_server, smtp_receiver
):
    path = sender_config(smtp_receiver().port, intake_port=free_port(), from_domains=("example.test",))
    config = configmod.load(str(path))
    server = intake_server(config)
    client = RawClient(server.port)
    try:
        assert client.reply().startswith(b"220")
        client.send(b"EHLO app.example.test\r\n")
        assert client.reply().startswith(b"250")
        client.send(b"MAIL FROM:<billing@example.test>\r\n")
        assert client.reply().startswith(b"250")
        client.send(b"RCPT TO:<alice@customer.test>\r\n")
        assert client.reply().startswith(b"250")
        client.send(b"DATA\r\n")
        assert client.reply().startswith(b"354")
        client.send(
            b"From: billing@example.test\r\nTo: alice@customer.test\r\nSubject: real\r\n\r\nhello"
            + PAYLOADS[name]
            + b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@customer.test>\r\nDATA\r\n"
            b"From: ceo@example.test\r\nTo: victim@customer.test\r\nSubject: forged\r\n\r\npay now\r\n.\r\n"
        )
        replies = [client.reply()]
        client.send(b"QUIT\r\n")
        replies.append(client.reply())
    finally:
        client.close()
    # one reply for the one message (250 or a refusal), then QUIT's 221: no MAIL/RCPT/DATA replies
    assert replies[-1].startswith(b"221"), replies
    assert len(replies) == 2, replies
    rows = queued(config.queue.path)
    assert len(rows) <= 1, rows
    assert all(addresses == "alice@customer.test" for _, addresses in rows), rows
