"""Batch shapes against connection timing: the release path must survive every combination.

Each round releases a batch of 1 to 8 recipients over 1 to 4 fresh connections to a loopback
receiver that does or does not offer PIPELINING and holds back each greeting for a random
0 to 200 ms, so connections of one batch come up in any order (issue 12: a pipelining
connection used to drain the batch while another worker was still connecting, and that worker
then crashed the service with QueueEmpty). Passes only when no round raises, every recipient
ends 'submitted' or 'failed', and the receiver got each address at most once (exactly once
when submitted). Rounds run in several lanes at once (own queue each) to stay within seconds.

Reproduce a failure with the seed printed in the assertion: STRESS_SEED=<seed>.
"""

import asyncio
import collections
import os
import random
import time

from bulkrelay.config import (
    Config,
    DnsblConfig,
    EnvelopeConfig,
    PolicyConfig,
    QueueConfig,
    SubmitConfig,
    TrackingConfig,
)
from bulkrelay.delivery import SmtpClient, Submitter
from bulkrelay.policy import PAUSE_KEY
from bulkrelay.queue import Queue
from bulkrelay.service import ReleaseLoop

ROUNDS = 300
LANES = 6
TIME_LIMIT = 120.0  # a hang fails instead of blocking CI; the test takes ~10 s here
RAW = b"From: billing@example.test\r\nSubject: Invoice\r\n\r\nLine one\r\n"


def test_no_batch_shape_crashes_or_duplicates(tmp_path, smtp_receiver):
    seed = int(os.environ.get("STRESS_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    delays = random.Random(seed + 1)  # used from the receiver's thread
    receivers = {
        flag: smtp_receiver(pipelining=flag, greeting_delay=lambda: delays.uniform(0.0, 0.2))
        for flag in (True, False)
    }
    plan = [(rng.randint(1, 8), rng.randint(1, 4), rng.choice((True, False))) for _ in range(ROUNDS)]
    rejected_every = 7  # some 550s, so 'failed' rows and RSET paths are part of the mix
    expected = {}  # address -> final state

    async def lane(number: int) -> None:
        queue = Queue(str(tmp_path / f"lane{number}.sqlite"))
        try:
            for index in range(number, ROUNDS, LANES):
                size, connections, pipelining = plan[index]
                receiver = receivers[pipelining]
                addresses = []
                for i in range(size):
                    local = "reject" if (index * 8 + i) % rejected_every == 0 else "ok"
                    addresses.append(f"{local}-{index}-{i}@customer.test")
                queue.enqueue(RAW, "billing@example.test", addresses, source="stress")
                rows = queue.take(size, now=time.time())
                assert len(rows) == size
                config = SubmitConfig(
                    host="127.0.0.1", port=receiver.port, connections=connections, timeout=10
                )
                submitter = Submitter(queue, config)
                try:
                    await submitter.submit(rows)
                except Exception as exc:
                    raise AssertionError(
                        f"round {index} (batch {size}, {connections} connections, "
                        f"pipelining={pipelining}) raised {exc!r}; STRESS_SEED={seed}"
                    ) from exc
                finally:
                    await submitter.close()
                states = {r["address"]: r["state"] for r in queue.list_recipients(limit=10_000)}
                for address in addresses:
                    want = "failed" if address.startswith("reject") else "submitted"
                    got = states[address]
                    assert got == want, (
                        f"round {index}: {address} ended {got!r}, not {want!r}; STRESS_SEED={seed}"
                    )
                    expected[address] = want
        finally:
            queue.close()

    async def main() -> None:
        async with asyncio.timeout(TIME_LIMIT):
            await asyncio.gather(*(lane(n) for n in range(LANES)))

    asyncio.run(main())
    received = collections.Counter(
        rcpt
        for receiver in receivers.values()
        for message in receiver.messages
        for rcpt in message["rcpt_tos"]
    )
    twice = sorted(a for a, n in received.items() if n > 1)
    assert not twice, f"sent more than once: {twice[:5]}; STRESS_SEED={seed}"
    submitted = {a for a, state in expected.items() if state == "submitted"}
    assert set(received) == submitted, f"receiver and queue disagree; STRESS_SEED={seed}"
    assert len(expected) == sum(size for size, _, _ in plan)


def test_pause_while_connecting_holds_the_batch(tmp_path, smtp_receiver):
    """The release decision is taken again after the connection is up: a pause that arrived
    while connecting releases nothing (it used to release one more batch)."""
    receiver = smtp_receiver(pipelining=True)
    keyfile = tmp_path / "verp.key"
    keyfile.write_bytes(b"k" * 32)
    config = Config(
        queue=QueueConfig(path=str(tmp_path / "q.sqlite")),
        submit=SubmitConfig(host="127.0.0.1", port=receiver.port, connections=2, timeout=5),
        policy=PolicyConfig(batch_size=10, interval=60),
        envelope=EnvelopeConfig(bounce_domain="bounce.example.test", verp_key_file=str(keyfile)),
        tracking=TrackingConfig(source="file", path=str(tmp_path / "mail.log")),
        dnsbl=DnsblConfig(state_file=str(tmp_path / "dnsbl.json")),
    )
    queue = Queue(config.queue.path)
    queue.enqueue(RAW, "billing@example.test", ["a@customer.test", "b@customer.test"], source="t")

    async def connect_then_pause():
        client = await SmtpClient.connect("127.0.0.1", receiver.port, timeout=5)
        queue.set_state(PAUSE_KEY, "maintenance")
        return client

    loop = ReleaseLoop(config, queue, connector=connect_then_pause)

    async def go():
        delay = await loop.step()
        await loop.submitter.close()
        return delay

    assert asyncio.run(go()) > 0
    assert receiver.messages == []
    assert queue.counts()["queued"] == 2 and queue.released_since(0) == 0
    queue.close()
