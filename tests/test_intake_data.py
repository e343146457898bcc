"""The intake's DATA reader (``read_data``) on a real asyncio.StreamReader: the end marker found
wherever the network splits it, only CRLF "." CRLF ending the data, dot-unstuffing, the size
and line limits, and the bytes after the end left for the next command."""

import asyncio

import pytest

from bulkrelay.intake import read_data

LIMIT = 64  # a small stream limit so the pieces cut at the buffer limit are exercised too


def read(chunks, *, size_limit=10_000, line_limit=1000, limit=LIMIT):
    """read_data over ``chunks`` fed one at a time; returns (result, what is left unread)."""

    async def run():
        reader = asyncio.StreamReader(limit=limit)

        async def feed():
            for chunk in chunks:
                reader.feed_data(chunk)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeding = asyncio.create_task(feed())
        result = await read_data(reader, size_limit, line_limit)
        await feeding
        return result, await reader.read()

    return asyncio.run(run())


def every_split(wire):
    """The wire in two pieces at every offset."""
    return [[wire[:i], wire[i:]] for i in range(1, len(wire))]


def test_empty_data_ends_at_the_first_dot():
    assert read([b".\r\nQUIT\r\n"]) == (b"", b"QUIT\r\n")


@pytest.mark.parametrize("chunks", every_split(b"one line\r\n.\r\nQUIT\r\n"))
def test_one_line_then_the_end_wherever_the_split(chunks):
    assert read(chunks) == (b"one line\r\n", b"QUIT\r\n")


def test_dot_stuffed_lines_are_unstuffed():
    wire = b"..leading\r\nmid\r\n...\r\n.x\r\n.\r\n"
    assert read([wire]) == (b".leading\r\nmid\r\n..\r\nx\r\n", b"")


@pytest.mark.parametrize(
    ("fake", "kept"),
    [
        (b"\n.\r\n", b"\n.\r\n"),
        (b"\r.\r\n", b"\r.\r\n"),
        (b"\n.\n", b"\n.\n"),
        (b"\r\n.\n", b"\r\n\n"),  # a line that starts with a dot: unstuffed, not the end
        (b"\r\n. \r\n", b"\r\n \r\n"),
    ],
)
def test_only_crlf_dot_crlf_ends_the_data(fake, kept):
    after = b"MAIL FROM:<x@example.test>\r\n"
    assert read([b"hello" + fake + after + b".\r\n"]) == (b"hello" + kept + after, b"")


def test_a_long_message_over_the_stream_limit_in_small_pieces():
    body = b"".join(b"line %d with some text\r\n" % i for i in range(400))
    wire = body + b".\r\nQUIT\r\n"
    chunks = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    assert read(chunks) == (body, b"QUIT\r\n")


def test_end_marker_cut_at_the_buffer_limit():
    """A line without CRLF longer than the stream limit forces pieces cut at the limit; the
    marker right after it is still found, byte by byte or whole."""
    body = b"x" * (LIMIT * 3) + b"\r\n"
    for chunks in ([body + b".\r\nNEXT"], [body[:-1], body[-1:] + b".", b"\r\nNEXT"]):
        assert read(chunks) == (body, b"NEXT")


def test_over_the_size_limit_is_read_to_the_end_then_refused():
    wire = b"a" * 50 + b"\r\n" + b"b" * 50 + b"\r\n.\r\nQUIT\r\n"
    assert read([wire], size_limit=100) == ("552 Error: Too much mail data", b"QUIT\r\n")
    assert read([wire], size_limit=104)[0] == wire[:104]  # exactly the limit: taken
    assert read([wire], size_limit=0)[0] == wire[:104]  # 0 or None: no limit (aiosmtpd's rule)
    assert read([wire], size_limit=None)[0] == wire[:104]


def test_a_line_over_the_line_limit_is_refused():
    wire = b"short\r\n" + b"y" * 200 + b"\r\n.\r\n"
    assert read([wire], line_limit=150)[0].startswith("500 ")
    assert read([wire], line_limit=202)[0] == wire[:-3]
