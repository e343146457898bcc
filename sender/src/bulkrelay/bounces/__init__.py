"""Bounce processing: DSN/ARF/auto-reply parsing, hard/soft policy, the IMAP poller and its CLI.

``parse.analyse(raw, key=..., prefix=...)`` reads one message from the bounce mailbox;
``policy.apply(...)`` turns the result into queue and suppression updates;
``poller.poll_once(...)`` walks the mailbox over IMAP (TLS) and moves what it processed.
"""
