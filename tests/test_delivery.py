"""Submission into a real SMTP server on loopback (aiosmtpd): VERP, queue ids, 4xx/5xx, outages."""

import asyncio
import contextlib
import re
import shutil
import socket
import sqlite3
import subprocess
import time

import pytest
from conftest import KEY, RAW, sink_user
from conftest import SmtpReceiver as Receiver
from conftest import pick_free_port as free_port

from bulkrelay import suppression, verp
from bulkrelay.config import Config, EnvelopeConfig, PolicyConfig, QueueConfig, SubmitConfig, TrackingConfig
from bulkrelay.delivery import SmtpClient, SmtpConnectionError, Submitter, backoff, encode_body, encode_data
from bulkrelay.queue import Queue
from bulkrelay.service import ReleaseLoop, resolve_ambiguous


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def make_config(tmp_path, port, **policy):
    keyfile = tmp_path / "verp.key"
    keyfile.write_bytes(KEY)
    return Config(
        queue=QueueConfig(path=str(tmp_path / "q.sqlite")),
        submit=SubmitConfig(
            host="127.0.0.1", port=port, connections=2, timeout=5, retry_base=60, retry_max=600
        ),
        policy=PolicyConfig(**policy),
        envelope=EnvelopeConfig(bounce_domain="bounce.example.test", verp_key_file=str(keyfile)),
        tracking=TrackingConfig(source="file", path=str(tmp_path / "mail.log")),
    )


@pytest.fixture
def relay(tmp_path, receiver):
    """The sender's config toward ``receiver``, and its queue (closed after the test)."""
    config = make_config(tmp_path, receiver.port)
    queue = Queue(config.queue.path)
    yield config, queue
    queue.close()


def run(coro):
    return asyncio.run(coro)


def test_encode_data_normalises_line_endings_and_stuffs_dots():
    assert encode_data(b"a\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert encode_data(b".\r\n") == b"..\r\n.\r\n"


def line_by_line(raw: bytes) -> bytes:
    """encode_body's result, the slow obvious way: each line ends in CRLF, a leading "." doubled."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


BASE64 = b"".join(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo%06d\n" % i for i in range(5000))  # 200 KB, no dot


@pytest.mark.parametrize(
    "raw",
    [
        BASE64,  # no dot at all
        BASE64.replace(b"\n", b"\r\n"),
        b"a.b\n" + BASE64 + b".last line\n",  # a dot line after the dots looked at one by one
        BASE64[:80] + b"x.y\n.z\n" + BASE64,  # a dot line among the first dots
        b".first\r\n" + BASE64.replace(b"\n", b"\r\n"),
        b"end of sentence.\r\n" * 3000 + b".\r\n..\r\ntext.",  # more dots than are looked at
        BASE64[:4000] + b"\r\n" + BASE64[4000:8000] + b"mixed.\n.dot\r\n",  # bare LF among CRLF
        b"short.\n.line\n",
        BASE64.replace(b"\n", b"\r\n") + b".tail\n",  # one bare LF, the last byte
        b"\n" + BASE64.replace(b"\n", b"\r\n"),  # one bare LF, the first byte
        b"a\r\n\n.b\r\n",  # a bare LF right after a CRLF
    ],
)
def test_encode_body_stuffs_every_dot_line_and_no_other(raw):
    assert encode_body(raw) == line_by_line(raw)


def test_backoff_grows_and_caps():
    assert [backoff(n, base=60, maximum=600) for n in (1, 2, 3, 4, 5)] == [60, 120, 240, 480, 600]


def test_release_loop_submits_with_verp_sender_and_records_queue_ids(relay, receiver):
    config, queue = relay
    mid = queue.enqueue(RAW, "billing@example.test", [f"c{i}@customer.test" for i in range(6)], source="t")
    loop = ReleaseLoop(config, queue)

    async def go():
        await loop.step()
        await loop.submitter.close()

    run(go())
    assert len(receiver.messages) == 6
    header_mid = queue.message(mid)["message_id"].encode()
    for msg in receiver.messages:
        (rcpt,) = msg["rcpt_tos"]
        row = next(r for r in queue.message(mid)["recipients"] if r["address"] == rcpt)
        assert msg["mail_from"] == verp.make_address("bounces", "bounce.example.test", row["id"], KEY)
        assert verp.parse_address(msg["mail_from"], KEY) == row["id"]
        assert row["state"] == "submitted"
        assert row["postfix_qid"] == msg["qid"]
        assert b"Message-ID: " + header_mid in msg["content"]
        assert b"\r\n.leading dot\r\n" in msg["content"]  # dot-stuffing undone by the server
    # connections are reused: six transactions over at most two sessions
    assert len({m["session"] for m in receiver.messages}) <= 2


def test_4xx_is_retried_with_backoff_and_5xx_fails_with_the_reply(relay, receiver, caplog):
    config, queue = relay
    queue.enqueue(RAW, "billing@example.test", ["tempfail@customer.test", "reject@customer.test"], source="t")
    ok = queue.enqueue(RAW, "billing@example.test", ["fine@customer.test"], source="t")
    loop = ReleaseLoop(config, queue)

    async def go():
        await loop.step()
        await loop.submitter.close()

    with caplog.at_level("INFO"):
        run(go())
    temp = queue.list_recipients(state="queued")
    assert [r["address"] for r in temp] == ["tempfail@customer.test"]
    row = queue.recipient(temp[0]["id"])
    assert row["attempts"] == 1 and row["last_reply"].startswith("451 4.3.0")
    assert row["next_attempt"] == pytest.approx(time.time() + 60, abs=5)
    (failed,) = queue.list_recipients(state="failed")
    assert failed["address"] == "reject@customer.test" and "550 5.1.1" in failed["last_reply"]
    assert queue.message(ok)["recipients"][0]["state"] == "submitted"
    assert [m["rcpt_tos"] for m in receiver.messages] == [["fine@customer.test"]]
    # the log names message, recipient and reason
    text = caplog.text
    assert f"event=submit_failed message=1 recipient={failed['id']} address=reject@customer.test" in text
    assert "event=submit_deferred message=1" in text and "451 4.3.0" in text


def test_receiver_down_keeps_everything_queued_then_drains(tmp_path):
    port = free_port()
    config = make_config(tmp_path, port)
    queue = Queue(config.queue.path)
    queue.enqueue(RAW, "billing@example.test", [f"c{i}@customer.test" for i in range(5)], source="t")
    loop = ReleaseLoop(config, queue)

    delay = run(loop.step())
    assert delay > 0
    assert queue.counts()["queued"] == 5
    assert queue.released_since(0) == 0  # nothing counted against the batch while down

    receiver = Receiver(port).start()
    try:

        async def go():
            await loop.step()
            await loop.submitter.close()

        run(go())
        assert queue.counts()["submitted"] == 5
        assert len(receiver.messages) == 5
    finally:
        receiver.stop()
        queue.close()


def test_suppressed_recipients_are_skipped(relay, receiver):
    config, queue = relay
    suppression.ensure_schema(queue.connection)
    suppression.add(queue.connection, "gone@customer.test", reason="5.1.1 user unknown", source="dsn", now=0)
    queue.enqueue(RAW, "billing@example.test", ["gone@CUSTOMER.test", "here@customer.test"], source="t")
    loop = ReleaseLoop(config, queue)

    async def go():
        await loop.step()
        await loop.submitter.close()

    run(go())
    assert [m["rcpt_tos"] for m in receiver.messages] == [["here@customer.test"]]
    (row,) = queue.list_recipients(state="suppressed")
    assert row["address"] == "gone@CUSTOMER.test" and "5.1.1 user unknown" in row["last_reply"]


class DropAfterDot:
    """A raw SMTP server that swallows the message and closes the connection before replying."""

    def __init__(self):
        self.port = free_port()
        self.received = 0

    async def handle(self, reader, writer):
        writer.write(b"220 drop ESMTP\r\n")
        while line := await reader.readline():
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                writer.write(b"250-drop\r\n250 8BITMIME\r\n")
            elif cmd == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while (await reader.readline()) != b".\r\n":
                    pass
                self.received += 1
                writer.close()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()


def test_reply_lost_after_the_dot_is_ambiguous_and_resolved_from_the_log(tmp_path):
    server = DropAfterDot()
    config = make_config(tmp_path, server.port)
    queue = Queue(config.queue.path)
    queue.enqueue(RAW, "billing@example.test", ["a@customer.test"], source="t")
    queue.enqueue(RAW, "billing@example.test", ["b@customer.test"], source="t")

    async def go():
        srv = await asyncio.start_server(server.handle, "127.0.0.1", server.port)
        submitter = Submitter(queue, config.submit)
        rows = queue.take(2, now=time.time(), envelope=lambda r: f"bounces+{r['id']}@bounce.example.test")
        result = await submitter.submit(rows)
        await submitter.close()
        srv.close()
        return result

    result = run(go())
    assert server.received >= 1
    assert len(result.ambiguous) == server.received
    assert queue.counts()["submitting"] == len(result.ambiguous)
    # Postfix logged the first one (cleanup/qmgr lines seen by tracking), not the second
    first, *rest = sorted(result.ambiguous)
    queue.note_postfix("4ABCDEF12", envelope_from=f"bounces+{first}@bounce.example.test")
    found, resent = resolve_ambiguous(queue)
    assert (found, resent) == (1, len(rest))
    assert queue.recipient(first)["state"] == "submitted"
    assert queue.recipient(first)["postfix_qid"] == "4ABCDEF12"
    for rid in rest:
        assert queue.recipient(rid)["state"] == "queued"
    queue.close()


def test_client_uses_pipelining_when_offered():
    """Against Postfix's smtp-sink (which offers PIPELINING) one transaction is one write."""
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    proc = subprocess.Popen([sink, *sink_user(), f"127.0.0.1:{port}", "10"])
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)

        async def go():
            client = await SmtpClient.connect("127.0.0.1", port, timeout=5, helo="relay.test")
            replies = [await client.send("a@b.test", f"r{i}@c.test", RAW) for i in range(3)]
            await client.close()
            return client.pipelining, replies

        pipelining, replies = run(go())
        assert pipelining
        assert [r.code for r in replies] == [250, 250, 250]
        assert all(r.stage == "dot" for r in replies)
    finally:
        proc.terminate()
        proc.wait()


def test_idle_connections_are_closed_between_batches(relay):
    config, queue = relay
    queue.enqueue(RAW, "billing@example.test", ["a@customer.test"], source="t")
    loop = ReleaseLoop(config, queue)

    async def go():
        await loop.step()
        assert len(loop.submitter.pool) == 1
        assert await loop.submitter.close_idle() == 0  # just used: kept for the next batch
        loop.submitter.pool[0].last_used -= Submitter.IDLE_CLOSE
        assert await loop.submitter.close_idle() == 1
        assert loop.submitter.pool == []

    run(go())


class PipeliningServer:
    """A raw SMTP server that offers PIPELINING, reads commands as they stream in, answers
    450/550 for "tempfail"/"reject" recipients, 554 to DATA without a recipient, and can drop
    the connection right after receiving the N-th message (before answering it), or once while
    reading the N-th message's body."""

    def __init__(self, drop_after=None, *, drop_in_body=None):
        self.port = free_port()
        self.drop_after = drop_after
        self.drop_in_body = drop_in_body  # close while reading this message's body (1-based)
        self.messages = []  # (mail_from, rcpt, body)

    async def handle(self, reader, writer):
        writer.write(b"220 pipe ESMTP\r\n")
        mail = rcpt = None
        while line := await reader.readline():
            cmd = line.decode().strip()
            upper = cmd.upper()
            if upper.startswith("EHLO"):
                writer.write(b"250-pipe\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif upper.startswith("MAIL FROM:"):
                mail, rcpt = cmd[10:].strip("<>"), None
                writer.write(b"250 2.1.0 Ok\r\n")
            elif upper.startswith("RCPT TO:"):
                address = cmd[8:].strip("<>")
                if address.startswith("tempfail"):
                    writer.write(b"450 4.2.0 try later\r\n")
                elif address.startswith("reject"):
                    writer.write(b"550 5.1.1 unknown\r\n")
                else:
                    rcpt = address
                    writer.write(b"250 2.1.5 Ok\r\n")
            elif upper == "DATA":
                if rcpt is None:
                    writer.write(b"554 5.5.1 Error: no valid recipients\r\n")
                    continue
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk
                    if self.drop_in_body == len(self.messages) + 1:
                        self.drop_in_body = None  # once
                        writer.close()
                        return
                self.messages.append((mail, rcpt, body))
                if self.drop_after and len(self.messages) == self.drop_after:
                    writer.close()
                    return
                writer.write(f"250 2.0.0 Ok: queued as P{len(self.messages):05d}\r\n".encode())
            elif upper == "RSET":
                mail = rcpt = None
                writer.write(b"250 2.0.0 Ok\r\n")
            elif upper == "QUIT":
                writer.write(b"221 Bye\r\n")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(b"502 5.5.2 unknown command\r\n")
            await writer.drain()


def _submit_to(server, tmp_path, addresses, connections=1):
    config = make_config(tmp_path, server.port)._replace(
        submit=SubmitConfig(port=server.port, connections=connections)
    )
    queue = Queue(config.queue.path)
    for i, address in enumerate(addresses):
        queue.enqueue(
            RAW.replace(b"Invoice", f"Invoice {i}".encode()), "b@example.test", [address], source="t"
        )

    async def go():
        srv = await asyncio.start_server(server.handle, "127.0.0.1", server.port)
        submitter = Submitter(queue, config.submit)
        rows = queue.take(len(addresses), now=time.time(), envelope=lambda r: f"bounces+{r['id']}@b.test")
        result = await submitter.submit(rows)
        await submitter.close()
        srv.close()
        return result

    return queue, run(go())


def test_streamed_transactions_keep_each_result_with_its_recipient(tmp_path):
    server = PipeliningServer()
    addresses = ["a@c.test", "tempfail1@c.test", "b@c.test", "reject1@c.test", "reject2@c.test", "c@c.test"]
    queue, result = _submit_to(server, tmp_path, addresses)
    assert (result.submitted, result.retried, result.failed) == (3, 1, 2)
    assert [(m[1], m[0]) for m in server.messages] == [
        ("a@c.test", "bounces+1@b.test"),
        ("b@c.test", "bounces+3@b.test"),
        ("c@c.test", "bounces+6@b.test"),
    ]
    assert [b"Invoice 0" in server.messages[0][2], b"Invoice 2" in server.messages[1][2]] == [True, True]
    states = {r["address"]: (r["state"], r["postfix_qid"]) for r in queue.list_recipients()}
    assert states["a@c.test"] == ("submitted", "P00001")
    assert states["b@c.test"] == ("submitted", "P00002")
    assert states["c@c.test"] == ("submitted", "P00003")
    assert states["tempfail1@c.test"][0] == "queued"
    assert states["reject1@c.test"][0] == states["reject2@c.test"][0] == "failed"
    queue.close()


def test_connection_lost_mid_stream_leaves_one_ambiguous_and_returns_the_rest(tmp_path):
    server = PipeliningServer(drop_after=2)
    addresses = [f"r{i}@c.test" for i in range(6)]
    queue, result = _submit_to(server, tmp_path, addresses)
    # message 2 reached the server but its reply never came: ambiguous (settled from the Postfix
    # log later, never resent blindly); r2, whose envelope rode along, went back and was sent
    # after the reconnect with everything else
    assert result.ambiguous == [2]
    assert queue.recipient(2)["state"] == "submitting"
    assert queue.counts()["submitted"] == 5 and result.returned == 0
    arrived = [m[1] for m in server.messages]
    assert sorted(arrived) == [f"r{i}@c.test" for i in range(6)]  # each exactly once
    queue.close()


class DotWatch:
    """Wraps a connection's StreamWriter: when a final "." is written, notes which of the
    messages this connection finished before are still 'submitting' in the database (read
    from another connection, so it sees committed results only)."""

    def __init__(self, writer, db, uncommitted):
        self.writer, self.db, self.uncommitted = writer, db, uncommitted
        self.envelopes, self.finished = [], []

    def write(self, data):
        self.envelopes += re.findall(rb"RCPT TO:<([^>]+)>", data)
        if data.startswith(b".\r\n") or b"\r\n.\r\n" in data:  # a final "." (bodies are dot-stuffed)
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
                for address in self.finished:
                    (state,) = conn.execute(
                        "SELECT state FROM recipients WHERE address = ?", (address.decode(),)
                    ).fetchone()
                    if state == "submitting":
                        self.uncommitted.append(address)
            self.finished.append(self.envelopes.pop(0))
        self.writer.write(data)

    def __getattr__(self, name):
        return getattr(self.writer, name)


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("body_lines", [0, 600])  # 600 lines: over SPLIT_BODY, written apart
def test_each_result_is_committed_before_the_next_final_dot_on_its_connection(
    tmp_path, smtp_receiver, pipelining, body_lines
):
    """The crash bound: when a connection sends a final ".", the results of its earlier messages
    are committed, so a kill leaves at most one ambiguous row per connection."""
    receiver = smtp_receiver(pipelining=pipelining)
    config = make_config(tmp_path, receiver.port)
    queue = Queue(config.queue.path)
    addresses = [f"r{i}@c.test" for i in range(8)]
    raw = RAW + b"an invoice line of a large message, long enough to fill a body quickly\r\n" * body_lines
    for address in addresses:
        queue.enqueue(raw, "b@example.test", [address], source="t")
    uncommitted, watched = [], []

    async def connect():
        client = await SmtpClient.connect("127.0.0.1", receiver.port, timeout=5)
        client.writer = DotWatch(client.writer, config.queue.path, uncommitted)
        watched.append(client.writer)
        return client

    async def go():
        submitter = Submitter(queue, config.submit, connector=connect)
        result = await submitter.submit(queue.take(8, now=time.time()))
        await submitter.close()
        return result

    assert run(go()).submitted == 8
    assert len(watched) == 2 and sorted(a for w in watched for a in w.finished) == [
        a.encode() for a in addresses
    ]
    assert uncommitted == []
    body = raw.partition(b"\r\n\r\n")[2]
    assert len(receiver.messages) == 8 and all(m["content"].endswith(body) for m in receiver.messages)
    queue.close()


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("count", [0, 1, 2])
def test_submit_zero_one_two_with_and_without_pipelining(tmp_path, smtp_receiver, pipelining, count):
    receiver = smtp_receiver(pipelining=pipelining)
    config = make_config(tmp_path, receiver.port)
    queue = Queue(config.queue.path)
    for i in range(count):
        queue.enqueue(
            RAW.replace(b"Invoice", f"Invoice {i}".encode()), "b@example.test", [f"r{i}@c.test"], source="t"
        )

    async def go():
        submitter = Submitter(queue, config.submit)
        rows = queue.take(10, now=time.time(), envelope=lambda r: f"bounces+{r['id']}@b.test")
        result = await submitter.submit(rows)
        await submitter.close()
        return result

    result = run(go())
    assert (result.submitted, result.retried, result.failed, result.returned) == (count, 0, 0, 0)
    assert sorted(m["rcpt_tos"][0] for m in receiver.messages) == [f"r{i}@c.test" for i in range(count)]
    for i, message in enumerate(sorted(receiver.messages, key=lambda m: m["rcpt_tos"])):
        assert f"Invoice {i}".encode() in message["content"]
        assert b"\r\n..leading dot\r\n" not in message["content"]  # aiosmtpd undid the stuffing
        assert b"\r\n.leading dot\r\n" in message["content"]
    states = {r["address"]: (r["state"], r["postfix_qid"]) for r in queue.list_recipients()}
    assert states == {m["rcpt_tos"][0]: ("submitted", m["qid"]) for m in receiver.messages}
    submitted = [e for e in queue.events_since(0) if e["type"] == "submitted"]
    assert sorted(e["recipient"] for e in submitted) == sorted(states)
    queue.close()


def test_connection_dropped_mid_body_loses_nothing_and_sends_nothing_twice(tmp_path):
    """The body of message 2 is cut off before its final ".": Postfix would discard it. The row
    is held back as ambiguous (the "." may have been on its way), the log does not know it, so it
    is sent again - once; the rows behind it go back unsent."""
    server = PipeliningServer(drop_in_body=2)
    addresses = [f"r{i}@c.test" for i in range(4)]
    queue, result = _submit_to(server, tmp_path, addresses)
    assert result.ambiguous == [2]
    assert sorted(m[1] for m in server.messages) == ["r0@c.test", "r2@c.test", "r3@c.test"]
    assert resolve_ambiguous(queue) == (0, 1)

    async def again():
        srv = await asyncio.start_server(server.handle, "127.0.0.1", server.port)
        submitter = Submitter(queue, SubmitConfig(port=server.port, connections=1))
        result = await submitter.submit(queue.take(10, now=time.time() + 1, envelope=lambda r: "b@b.test"))
        await submitter.close()
        srv.close()
        return result

    assert run(again()).submitted == 1
    assert sorted(m[1] for m in server.messages) == sorted(addresses)  # each exactly once
    assert queue.counts()["submitted"] == 4
    queue.close()


class ReplyServer:
    """Answers a fixed script of reply bytes, each write after the client's line that asks for
    it, cut into pieces of ``chunk`` bytes with a pause between them."""

    def __init__(self, greeting: bytes, script: list[bytes], chunk: int):
        self.port = free_port()
        self.greeting, self.script, self.chunk = greeting, script, chunk

    async def send(self, writer, data):
        for i in range(0, len(data), self.chunk):
            writer.write(data[i : i + self.chunk])
            await writer.drain()
            await asyncio.sleep(0.001)

    async def handle(self, reader, writer):
        await self.send(writer, self.greeting)
        for reply in self.script:
            if not await reader.readline():
                return
            await self.send(writer, reply)
        await reader.read()
        writer.close()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_replies_parse_whatever_pieces_they_arrive_in(chunk):
    script = [
        b"250-relay\r\n250-PIPELINING\r\n250 8BITMIME\r\n",  # EHLO
        b"250 2.1.0 Ok\r\n",  # RSET
        b"451-4.3.0 first line\r\n451 4.3.0 second line\r\n",  # NOOP
        b"2x0 garbage\r\n",
    ]
    server = ReplyServer(b"220 relay ESMTP\r\n", script, chunk)

    async def go():
        srv = await asyncio.start_server(server.handle, "127.0.0.1", server.port)
        client = await SmtpClient.connect("127.0.0.1", server.port, timeout=5, helo="relay.test")
        await client.reset()
        multi = await client.command("NOOP", "noop")
        with pytest.raises(SmtpConnectionError, match="garbled reply at noop"):
            await client.command("NOOP", "noop")
        closed = client.closed
        await client.close()
        srv.close()
        return client.pipelining, multi, closed

    pipelining, multi, closed = run(go())
    assert pipelining
    assert (multi.code, multi.text) == (451, "4.3.0 first line\n4.3.0 second line")
    assert closed


def test_record_submissions_writes_what_the_marks_write_one_by_one(tmp_path):
    outcomes = [
        ("submitted", "250 2.0.0 Ok: queued as SUB001", 0.0),
        ("retry", "451 4.3.0 try again later", 60.0),
        ("failed", "550 5.1.1 <x@customer.test>: Recipient address rejected: User unknown", 0.0),
    ]

    def state(path, batched):
        clock = iter(float(t) for t in range(1000, 2000))
        queue = Queue(path, clock=lambda: next(clock))
        for i in range(3):
            queue.enqueue(RAW, "b@example.test", [f"r{i}@customer.test"], source="t")
        rows = queue.take(3, now=5000.0)
        if batched:
            queue.record_submissions([])  # nothing: no error, no event
            queue.record_submissions([(r["id"], *o) for r, o in zip(rows, outcomes, strict=True)])
        else:
            queue.mark_submitted(rows[0]["id"], outcomes[0][1])
            queue.mark_retry(rows[1]["id"], outcomes[1][1], delay=60.0)
            queue.mark_failed(rows[2]["id"], outcomes[2][1])
        recipients = [
            {k: r[k] for k in ("address", "state", "postfix_qid", "last_reply", "attempts")}
            for r in queue.list_recipients()
        ]
        events = [
            {k: v for k, v in e.items() if k not in ("id", "at", "timestamp", "ref", "message_id")}
            for e in queue.events_since(0)
        ]
        queue.close()
        return recipients, events

    one_by_one, batched = state(tmp_path / "a.sqlite", False), state(tmp_path / "b.sqlite", True)
    assert batched == one_by_one
    recipients, events = batched
    assert [r["state"] for r in recipients] == ["submitted", "queued", "failed"]
    assert [e["type"] for e in events if e["type"] not in ("accepted", "released")] == [
        "submitted",
        "deferred",
        "bounced",
    ]


def test_record_submissions_is_one_transaction(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    for i in range(2):
        queue.enqueue(RAW, "b@example.test", [f"r{i}@customer.test"], source="t")
    rows = queue.take(2, now=time.time())
    with pytest.raises(ValueError, match="unknown submission outcome"):
        queue.record_submissions(
            [
                (rows[0]["id"], "submitted", "250 2.0.0 Ok: queued as A1", 0.0),
                (rows[1]["id"], "sent", "250", 0.0),
            ]
        )
    assert queue.counts()["submitting"] == 2  # the first was rolled back with the second
    assert [e["type"] for e in queue.events_since(0)].count("submitted") == 0
    queue.close()
