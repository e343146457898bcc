"""The intake's DATA reader (``read_data``) on a real asyncio.StreamReader: the end marker found
wherever the network splits it, only CRLF "." CRLF ending the data, dot-unstuffing after CRLF
and after a bare LF, the size and line limits, and the bytes after the end left for the next
command."""

import asyncio
import random

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


# A lone dot next to a bare LF is a line that begins with a dot, so it loses that dot and stays
# an empty line, in the message. (Postfix's smtpd_forbid_bare_newline = normalize drops the
# line instead; neither is content a client can mean: a client that stuffs sends "..".)
SMUGGLED_ENDS = [
    (b"\n.\r\n", b"\n\r\n"),
    (b"\r\n.\n", b"\r\n\n"),
    (b"\n.\n", b"\n\n"),
    (b"\r.\r\n", b"\r.\r\n"),  # no line begins after a bare CR: the dot stays
    (b"\r\n. \r\n", b"\r\n \r\n"),
]


@pytest.mark.parametrize(("fake", "kept"), SMUGGLED_ENDS)
def test_only_crlf_dot_crlf_ends_the_data(fake, kept):
    after = b"MAIL FROM:<x@example.test>\r\n"
    assert read([b"hello" + fake + after + b".\r\n"]) == (b"hello" + kept + after, b"")


@pytest.mark.parametrize(("fake", "kept"), SMUGGLED_ENDS[:3])
def test_a_smuggled_end_wherever_the_split_keeps_what_follows_inside(fake, kept):
    after = b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<v@customer.test>\r\nDATA\r\nforged\r\n"
    wire = b"real" + fake + after + b".\r\nQUIT\r\n"
    for chunks in every_split(wire):
        assert read(chunks) == (b"real" + kept + after, b"QUIT\r\n"), chunks


# (wire before the end, content): what smtplib.sendmail sends for bytes with bare LF (stuffed
# after every LF, CRLF added at the end), the same with CRLF, and both in one message.
DOT_LED = [
    (b"line one\n..hidden\n\r\n", b"line one\n.hidden\n\r\n"),
    (b"line one\r\n..hidden\r\n", b"line one\r\n.hidden\r\n"),
    (b"..a\r\n..b\n..c\r\n.d\n...\n\n..\r\n", b".a\r\n.b\n.c\r\nd\n..\n\n.\r\n"),
]


@pytest.mark.parametrize(("sent", "content"), DOT_LED)
def test_dot_led_lines_after_crlf_or_a_bare_lf_lose_the_stuffed_dot(sent, content):
    wire = sent + b".\r\nQUIT\r\n"
    for chunks in [[wire], *every_split(wire)]:
        assert read(chunks) == (content, b"QUIT\r\n"), chunks


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
@pytest.mark.parametrize("count", [0, 1, 2])
def test_none_one_or_two_dot_led_lines(count, end):
    lines = [b"top", *[b".%d" % i for i in range(count)], b"bottom"]
    sent = b"".join(b"." * line.startswith(b".") + line + end for line in lines)
    wire = sent + (b"\r\n" if end == b"\n" else b"") + b".\r\nQUIT\r\n"
    content = b"".join(line + end for line in lines) + (b"\r\n" if end == b"\n" else b"")
    assert read([wire]) == (content, b"QUIT\r\n")
    assert read([bytes([b]) for b in wire]) == (content, b"QUIT\r\n")  # one byte a read


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


def test_a_bare_lf_ends_a_line_for_the_line_limit():
    """As in Postfix's smtpd: a message of bare-LF lines (smtplib with bytes) is many short
    lines, not one long one; a line is counted as sent, with its LF and its stuffed dot."""
    body = b"".join(b"line %05d of a bare-LF invoice\n" % i for i in range(400))  # 12,800 octets
    wire = body + b"\r\n.\r\n"
    assert read([wire], size_limit=None, line_limit=1000, limit=1024)[0] == body + b"\r\n"
    wire = b"top\n." + b"y" * 98 + b"\nend\r\n.\r\n"  # 100 octets with the dot and the LF
    assert read([wire], line_limit=100)[0] == b"top\n" + b"y" * 98 + b"\nend\r\n"
    assert read([wire], line_limit=99)[0].startswith("500 ")
    wire = b"a\r" + b"y" * 97 + b"\r\n.\r\n"  # a bare CR ends no line: 101 octets
    assert read([wire], line_limit=101)[0] == wire[:-3]
    assert read([wire], line_limit=100)[0].startswith("500 ")


def test_the_size_limit_counts_the_stuffed_dots_after_bare_lf_as_sent():
    wire = b"aa\r\nx" + b"\n." * 8 + b"\r\n.\r\n"  # 23 octets before the end
    assert read([wire], size_limit=23)[0] == b"aa\r\nx" + b"\n" * 8 + b"\r\n"
    assert read([wire], size_limit=22)[0] == "552 Error: Too much mail data"


# --- the one pass against the separate searches it replaced -------------------------------------


def separate_searches(stream, size_limit, line_limit):
    """What ``read_data`` returns, by separate searches on the whole stream at once: the first
    CRLF "." CRLF (the data starts a line), the size and line limits on the data as sent, then
    the leading dot of every line removed, after CRLF or a bare LF; and what is left for the
    next command. A line ends at LF, CRLF or bare."""
    end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    assert end >= 0, "a test stream must hold the end marker"
    sent, rest = stream[:end], stream[end + 3 :]
    if size_limit and len(sent) > size_limit:
        return "552 Error: Too much mail data", rest
    if any(len(line) > line_limit - 1 for line in sent.split(b"\n")):  # a line with its LF
        return "500 Line too long (see RFC5321 4.5.3.1.6)", rest
    return (b"\r\n" + sent).replace(b"\n.", b"\n")[2:], rest


def cut(wire, rng):
    """The wire in 1 to 6 pieces at random offsets."""
    offsets = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(0, 5))))
    return [wire[a:b] for a, b in zip([0, *offsets], [*offsets, len(wire)], strict=True)]


EDGE_BODIES = [
    b"",  # the end marker first
    b".\r\n",  # a stuffed empty line... then the end
    b"..\r\n",
    b"x\r\n",
    b".x\r\n..\r\n...\r\n",
    b"a\r\n.\r\r\n",  # a stuffed dot, then CR, then CRLF
    b"a\r\r\n.\n.\r\n",
    b"\r\n\r\n",
    b"\n.\r\n\r.\r\n",  # bare LF / CR around a dot: not the end
    b"\r\n.\n.\n\n.\r\n",  # lone dots next to bare LFs, one after the other
    b"line one\n..hidden\n\r\n",  # smtplib's stuffing of bytes with bare LF
    b"..\n..\n\r\n",
    b"." + b"y" * 98 + b"\n\r\n",  # 100 octets with the stuffed dot and a bare LF: the line limit
    b"." + b"y" * 99 + b"\n\r\n",  # one more
    b"y" * 97 + b"\r\r\n",  # 100 octets, a bare CR in it: the limit
    b"y" * 98 + b"\r\r\n",  # one more
    b"z" * 150 + b"\r\n",  # over the small stream limit, over the line limit
    b"." + b"y" * 97 + b"\r\n",  # 98 octets with the stuffed dot: exactly the line limit
    b"." + b"y" * 98 + b"\r\n",  # one more
    b"p" * 198 + b"\r\n",  # exactly the size limit of the test below
    b"p" * 199 + b"\r\n",
]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_edge_bodies_cut_at_every_offset_read_as_the_separate_searches_did(body):
    wire = body + b".\r\nQUIT\r\n"
    want = separate_searches(wire, 200, 100)
    for limit in (16, 64):
        assert read([wire], size_limit=200, line_limit=100, limit=limit) == want
        for chunks in every_split(wire):
            assert read(chunks, size_limit=200, line_limit=100, limit=limit) == want, chunks
        for i in range(1, len(wire) - 1):  # three pieces: a dot, CR or LF alone at any place
            chunks = [wire[:i], wire[i : i + 1], wire[i + 1 :]]
            assert read(chunks, size_limit=200, line_limit=100, limit=limit) == want, chunks


def test_random_bodies_in_random_pieces_read_as_the_separate_searches_did():
    rng = random.Random(16)
    alphabet = [b"\r\n", b"\r\n.", b".", b"\r", b"\n", b"x", b"yy", b"\r\n.\r", b"\r\n..", b"\x00", b"\n.."]
    for _ in range(3000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        wire = body + b"\r\n.\r\nNEXT\r\n"  # the first marker may come earlier, inside the body
        limits = {"size_limit": rng.choice([None, 0, 20, 60]), "line_limit": rng.choice([6, 12, 1000])}
        want = separate_searches(wire, limits["size_limit"], limits["line_limit"])
        got = read(cut(wire, rng), limit=rng.choice([8, 16, 64]), **limits)
        assert got == want, (wire, limits)
