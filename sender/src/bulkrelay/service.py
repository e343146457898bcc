"""``bulkrelay serve``: the sender service (release loop, delivery tracking, intake, metrics).

Start-up order matters for crash safety:

1. open the queue; catch the tracking source up to the end of the Postfix log;
2. settle recipients left in 'submitting' by a crash: a queue id seen in the log for the
   row's VERP envelope sender (or, for a one-recipient message, its Message-ID) means Postfix
   has it -> 'submitted'; otherwise it goes back to 'queued' and is sent again. Only rows that
   were between the final "." and the recorded reply can be duplicated this way, which is at
   most ``[submit] connections`` recipients per crash;
3. then release batches as the policy allows, follow the log, and run intake and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from bulkrelay import config as configmod
from bulkrelay import hotfolder, intake, metrics, suppression, tracking, verp
from bulkrelay.cli import UsageError
from bulkrelay.delivery import Connector, Submitter
from bulkrelay.failures import record_failure
from bulkrelay.policy import Policy
from bulkrelay.queue import Checkpointer, Queue, QueueUnavailable, Storage
from bulkrelay.servicelock import single_instance
from bulkrelay.ststesting import StsTestingLog

log = logging.getLogger("bulkrelay.service")

POLL = 1.0  # longest sleep between looks at the queue (intake writes from another connection)
MAINTENANCE_EVERY = 30.0
AMBIGUOUS_GRACE = 60.0  # a row lost after "." waits this long for Postfix's log before resending
KEEP_RELEASES = 2 * 86400.0
QUEUE_RETRY = 5.0  # seconds before the release loop retries after QueueUnavailable
# "asyncio" runs the service on asyncio's own loop although uvloop is installed; "uvloop" insists.
EVENT_LOOP_ENV = "BULKRELAY_EVENT_LOOP"


def resolve_ambiguous(
    queue: Queue, *, older_than: float | None = None, suppress: Callable[[str, str], None] | None = None
) -> tuple[int, int]:
    """Settle 'submitting' rows from what the Postfix log showed; returns (found, resent).

    ``suppress(address, reason)`` is called for a resolved row whose logged result is a hard
    bounce (the tracker could not do it while the row had no queue id yet).
    """
    found = resent = 0
    for row in queue.submitting():
        if older_than is not None and row["updated_at"] > older_than:
            continue
        qids = queue.postfix_qids(envelope_from=row["envelope_from"]) if row["envelope_from"] else []
        if not qids and len(queue.recipients_of(row["message"])) == 1:
            qids = queue.postfix_qids(message_id=row["message_id_header"])
        qid = qids[-1] if qids else None
        result = queue.resolve_submitting(row["id"], qid)
        if qid:
            found += 1
            log.info(
                "event=ambiguous_resolved message=%s recipient=%s address=%s qid=%s result=%s",
                row["message"],
                row["id"],
                row["address"],
                qid,
                result["state"] if result else "-",
            )
            if result and result["state"] == "bounced" and (result["dsn"] or "").startswith("5") and suppress:
                suppress(row["address"], f"{result['dsn']} {result['reply']}"[:500])
        else:
            resent += 1
            log.warning(
                "event=ambiguous_resent message=%s recipient=%s address=%s "
                "reason='no queue id in the Postfix log; sending again'",
                row["message"],
                row["id"],
                row["address"],
            )
    return found, resent


def envelope_builder(config: configmod.Config) -> Callable[[dict], str]:
    """Envelope sender per recipient: the VERP address when a bounce domain is set."""
    env = config.envelope
    if not env.bounce_domain:
        return lambda row: row["mail_from"]
    key = config.verp_key()
    return lambda row: verp.make_address(env.verp_prefix, env.bounce_domain, row["id"], key)


def suppression_check(queue: Queue, clock: Callable[[], float]) -> Callable[[str], str | None]:
    suppression.ensure_schema(queue.connection)

    def skip(address: str) -> str | None:
        entry = suppression.lookup(queue.connection, address, now=clock())
        return f"{entry['source']}: {entry['reason']}" if entry else None

    return skip


class ReleaseLoop:
    """Asks the policy, takes a batch from the queue, submits it, sleeps until the next chance."""

    def __init__(
        self,
        config: configmod.Config,
        queue: Queue,
        *,
        clock: Callable[[], float] = time.time,
        connector: Connector | None = None,
        suppress: Callable[[str, str], None] | None = None,
    ):
        self.config = config
        self.suppress = suppress
        self.queue = queue
        self.clock = clock
        self.policy = Policy(config.policy, dnsbl_state_file=config.dnsbl.state_file)
        self.submitter = Submitter(queue, config.submit, connector=connector)
        self.envelope = envelope_builder(config)
        self.skip = suppression_check(queue, clock)
        self.last_maintenance = 0.0
        self.unavailable = 0
        self.last_decision = None
        self.batches = 0
        self.stop = asyncio.Event()

    def maintenance(self, now: float) -> None:
        self.queue.prune(
            before=now - max(KEEP_RELEASES, 2 * self.config.policy.interval),
            events_before=now - self.config.events.keep_days * 86400.0,
        )
        resolve_ambiguous(self.queue, older_than=now - AMBIGUOUS_GRACE, suppress=self.suppress)
        self.last_maintenance = now

    async def step(self) -> float:
        """One round; returns how long to sleep before the next."""
        now = self.clock()
        if now - self.last_maintenance >= MAINTENANCE_EVERY:
            self.maintenance(now)
        decision = self.policy.decide(self.queue, now)
        if self.last_decision is None or decision.reason != self.last_decision.reason:
            level = logging.WARNING if decision.paused else logging.INFO
            log.log(level, "event=policy_state reason=%r allowed=%d", decision.reason, decision.allowed)
        self.last_decision = decision
        ready_at = self.queue.next_ready_at()
        wake = now + POLL
        if decision.next_at is not None:
            wake = min(wake, decision.next_at)
        if ready_at is None:
            return max(wake - now, 0.0)
        if ready_at > now:
            return max(min(wake, ready_at) - now, 0.0)
        if decision.allowed <= 0:
            return max(wake - now, 0.0)
        if not await self.submitter.ready():
            self.unavailable += 1
            return min(2.0**self.unavailable, 30.0)
        self.unavailable = 0
        return await self._release(wake)

    async def _release(self, wake: float) -> float:
        """Take and submit a batch. The policy is asked again here, after ``ready()`` awaited a
        connection: meanwhile an operator may have paused, a DNSBL listing may have arrived."""
        now = self.clock()
        decision = self.policy.decide(self.queue, now)
        if decision.allowed <= 0:
            return max(wake - now, 0.0)
        rows = self.queue.take(
            decision.allowed,
            now=now,
            domain_remaining=decision.per_domain,
            skip=self.skip,
            envelope=self.envelope,
        )
        if not rows:
            blocked = [d for d, left in decision.per_domain.items() if left <= 0]
            waits = [self.policy.domain_next_at(self.queue, d, now) for d in blocked]
            return max(min([wake, *waits]) - now, 0.0)
        self.batches += 1
        log.info(
            "event=batch_released count=%d allowed=%d batch=%d", len(rows), decision.allowed, self.batches
        )
        result = await self.submitter.submit(rows, stop=self.stop)
        log.info(
            "event=batch_done count=%d submitted=%d retried=%d failed=%d returned=%d ambiguous=%d",
            len(rows),
            result.submitted,
            result.retried,
            result.failed,
            result.returned,
            len(result.ambiguous),
        )
        return 0.0

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        try:
            while not stop.is_set():
                try:
                    delay = await self.step()
                except QueueUnavailable as exc:
                    # e.g. an operator command holds the write lock, or the disk is full:
                    # nothing was lost (the transaction rolled back); try again shortly.
                    log.error("event=queue_unavailable error=%r retry_in=%.0f", str(exc), QUEUE_RETRY)
                    delay = QUEUE_RETRY
                await self.submitter.close_idle()  # do not hold Postfix smtpd processes between batches
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self.submitter.close()


EX_SOFTWARE = 70  # sysexits.h; any non-zero exit makes systemd (Restart=on-failure) restart us


class ComponentFailed(Exception):
    """A part of the service raised or stopped; the whole service stops with EX_SOFTWARE."""

    def __init__(self, component: str, error: BaseException):
        super().__init__(f"component {component} failed: {type(error).__name__}: {error}")
        self.component = component
        self.error = error


async def run_components(
    components: dict[str, Awaitable[None]],
    stop: asyncio.Event,
    *,
    optional: frozenset[str] = frozenset(),
    cancel_on_stop: frozenset[str] = frozenset(),
) -> None:
    """Run every component until ``stop``; raise :class:`ComponentFailed` for the first that
    raises, or that returns while the service runs (unless it is listed in ``optional``).

    The other components are stopped either way: those in ``cancel_on_stop`` are cancelled,
    the rest are awaited (they finish their step and return once ``stop`` is set).
    """
    tasks = {asyncio.ensure_future(coro): name for name, coro in components.items()}
    for task, name in tasks.items():
        task.set_name(name)
    stopped = asyncio.ensure_future(stop.wait())
    pending: set[asyncio.Future] = {stopped, *tasks}
    try:
        while stopped in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                name = tasks[task]
                error = asyncio.CancelledError() if task.cancelled() else task.exception()
                if error is None and (stop.is_set() or name in optional):
                    continue
                if error is None:
                    error = RuntimeError("returned while the service was running")
                log.error(
                    "event=component_failed component=%s error=%r",
                    name,
                    f"{type(error).__name__}: {error}",
                    exc_info=error,
                )
                raise ComponentFailed(name, error) from error
    finally:
        stop.set()
        for task, name in tasks.items():
            if name in cancel_on_stop:
                task.cancel()
        stopped.cancel()
        await asyncio.gather(*tasks, stopped, return_exceptions=True)


async def serve(
    config: configmod.Config,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    connector: Connector | None = None,
) -> None:
    stop = stop or asyncio.Event()
    queue = Queue(config.queue.path, clock=clock)
    sts_map = config.tracking.mta_sts_map
    tracker = tracking.Tracker(queue, clock=clock, sts_testing=StsTestingLog(sts_map) if sts_map else None)
    source = tracking.make_source(config.tracking.source, config.tracking.path, queue, clock=clock)
    seen = await tracking.catch_up(source, tracker)
    found, resent = resolve_ambiguous(queue, suppress=tracker.suppress)
    log.info(
        "event=started queue=%s loop=%s log_events=%d ambiguous_found=%d ambiguous_resent=%d counts=%s",
        config.queue.path,
        running_loop_name(),
        seen,
        found,
        resent,
        ",".join(f"{k}:{v}" for k, v in queue.counts().items() if v),
    )
    loop = ReleaseLoop(config, queue, clock=clock, connector=connector, suppress=tracker.suppress)
    components: dict[str, Awaitable[None]] = {
        "release": loop.run(stop),
        "tracking": tracking.follow(source, tracker, stop),
    }
    if config.intake.listen:
        components["intake"] = intake.serve_intake(config, queue)
    if config.hotfolder.path:
        components["hotfolder"] = hotfolder.run_hotfolder(config, stop)
    if config.metrics.listen:
        components["metrics"] = metrics.serve_metrics(config, queue, loop, tracker, stop)
    # Not in the event loop: a checkpoint inside a result's COMMIT would hold up the next ".".
    checkpointer = Checkpointer(lambda: Storage(config.queue.path), name="service-checkpoint")
    queue.checkpoint_elsewhere(checkpointer)
    try:
        # Release and tracking finish their step on stop; the others are cancelled. Metrics may
        # return (its port is taken): they are for watching, sending goes on without them.
        await run_components(
            components,
            stop,
            optional=frozenset({"metrics"}),
            cancel_on_stop=frozenset({"intake", "hotfolder", "metrics"}),
        )
    except ComponentFailed as exc:
        record_failure(queue, exc.component, exc.error, clock())
        raise
    finally:
        checkpointer.close()
        queue.close()
        log.info("event=stopped")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="level=%(levelname)s logger=%(name)s %(message)s",
    )
    # aiosmtpd logs every SMTP command at INFO on "mail.log"; the intake logs its own events.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # The format uses none of these, and a drain logs a line per recipient: skip the caller's
    # frame walk and the thread/process look-ups per record (the logging HOWTO's optimisations).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (Debian's python3-uvloop), else None: asyncio's own.

    ``choice`` (default: the environment variable ``BULKRELAY_EVENT_LOOP``) is "" for that
    automatic choice, "asyncio" to stay on asyncio's loop, or "uvloop" to require uvloop.
    """
    choice = os.environ.get(EVENT_LOOP_ENV, "") if choice is None else choice
    if choice not in ("", "asyncio", "uvloop"):
        raise UsageError(f"{EVENT_LOOP_ENV}={choice!r}: use 'asyncio', 'uvloop' or leave it unset")
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional, and only `serve` needs it
    except ImportError:
        if choice == "uvloop":
            raise UsageError(f"{EVENT_LOOP_ENV}=uvloop: uvloop is not installed (python3-uvloop)") from None
        return None
    return uvloop.new_event_loop


def running_loop_name() -> str:
    """'uvloop' or 'asyncio': the top-level package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def _run(args) -> int:
    config = configmod.load(args.config)
    new_loop = loop_factory()
    setup_logging(args.log_level)
    lock = single_instance(config.queue.path)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop)

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(main())
    except QueueUnavailable as exc:
        raise UsageError(f"{exc}; check [queue] path and free disk space") from None
    except ComponentFailed as exc:
        # The traceback is in the log (event=component_failed); systemd restarts the service.
        print(f"bulkrelay serve: {exc}; see the log for the traceback", file=sys.stderr)
        return EX_SOFTWARE
    finally:
        lock.close()
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the sender service (release loop, tracking, intake, metrics)"
    )
    parser.add_argument("--config", default=configmod.DEFAULT_PATH, help="sender.toml (default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=_run)
