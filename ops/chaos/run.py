"""`ChaosRun`: day plans through real worker processes with the day barrier, the bad input and noise mixed
in, workers SIGKILLed mid-stage and restarted, and a `Ledger` of everything injected for exact reconciling."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiokafka import TopicPartition

from core.privacy import device_pseudonym
from ops.audit.exports import RunRecords
from ops.chaos.cloudrun import merged_worker_stats
from ops.chaos.inputs import Injected, bad_message
from ops.chaos.noise import NOISE_KINDS, duplicates, ghost_pulls
from ops.chaos.oracle import distinct_letters
from ops.replay.publish import DAY, DayPlan
from ops.stack.pipeline import WORKER_TOPICS, Processes, barrier
from streams.internals import refresh_metadata
from streams.kafka import committed_offsets, consumer, end_offsets, ensure_topics, producer
from streams.schemas import (
    DayEnd,
    PullRequest,
    UpEnvelope,
    encode,
)
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Ledger:
    """Everything a chaos run sent to the up-tunnel, for exact reconciliation afterwards."""

    valid_envelopes: int = 0
    pulls: int = 0
    noise: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)  # by mutation
    reasons: Counter[str] = field(default_factory=Counter)  # by expected dead-letter reason
    bad_raw: Counter[bytes] = field(default_factory=Counter)
    bad_kind: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # raw -> (mutation, reason)
    kills: list[dict[str, Any]] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return self.valid_envelopes + self.pulls + sum(self.noise.values())

    @property
    def invalid(self) -> int:
        return sum(self.bad.values())

    def add(self, item: Injected) -> None:
        if item.reason is None:
            self.noise[item.category] += 1
        else:
            self.bad[item.category] += 1
            self.reasons[item.reason] += 1
            self.bad_raw[item.raw or b""] += 1
            self.bad_kind[item.raw or b""] = (item.category, item.reason)

    def as_dict(self) -> dict[str, Any]:
        return {"valid_envelopes": self.valid_envelopes, "pulls": self.pulls, "noise": dict(self.noise),
                "invalid": self.invalid, "bad_by_mutation": dict(self.bad), "bad_by_reason": dict(self.reasons),
                "kills": self.kills}


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL worker `worker` on `day` once `stage` ('ingest' or 'assemble') has produced output."""

    day: int
    stage: str
    worker: int = 0


_KILL_OUTPUT = {"ingest": "samples", "assemble": "down"}


@dataclass
class ChaosRun:
    """A cloud-only replay through real worker processes with bad input, redelivery and kills mixed in."""

    settings: Settings
    topics: Topics
    workers: int = 1
    pulls_per_day: int = 2
    pull_batches: int = 12  # max_batches of each pull request (12: a day's whole quota at once)
    bad_per_day: int = 0
    oversize_per_day: int = 0  # bad messages over max_envelope_bytes (about 1 MB each)
    noise_per_day: int = 0  # valid no-op envelopes per day
    noise_kinds: Sequence[str] = NOISE_KINDS
    ghost_pulls_per_day: int = 0
    repeat_pulls: bool = False  # re-send the previous round's pull requests (redelivery)
    shuffle_events: bool = False  # send each envelope's events in random order
    kills: Sequence[Kill] = ()
    seed: int = 0
    say: Callable[[str], None] = lambda message: None
    ledger: Ledger = field(default_factory=Ledger)
    timings: dict[str, float] = field(default_factory=dict)
    _procs: Processes | None = None

    async def run(self, plans: Sequence[DayPlan]) -> dict[str, Any]:
        """Replay every day; returns the workers' merged stats (last incarnation of each)."""
        await ensure_topics(self.settings, self.topics)
        rng = random.Random(self.seed)
        self._procs = Processes(self.settings)
        started = time.monotonic()
        try:
            for i in range(self.workers):
                self._procs.spawn("worker", str(i))
            prod = producer(self.settings)
            await prod.start()
            try:
                for n, plan in enumerate(plans):
                    await self._day(prod, plan, plans[:n], rng)
                    self.say(f"day {plan.day}: {plan.events} events, {self.ledger.invalid} bad so far")
            finally:
                await prod.stop()
            self.timings["replay_s"] = time.monotonic() - started
            await asyncio.sleep(1.5)  # the workers' 1 s stats timer writes its last figures
            self.check_alive()
            return self.worker_stats()
        finally:
            self._procs.stop()

    def check_alive(self) -> None:
        assert self._procs is not None
        self._procs.check()

    async def _day(self, prod: Any, plan: DayPlan, earlier: Sequence[DayPlan], rng: random.Random) -> None:
        up = self.topics.name("up")
        traffic: list[Injected] = []
        for device, events in plan.by_device:
            evs = list(events)
            if self.shuffle_events:
                rng.shuffle(evs)
            traffic.append(Injected(device.encode(), encode(UpEnvelope(device, evs, events[-1].ts)), "valid", None))
        self.ledger.valid_envelopes += len(traffic)
        for _ in range(self.bad_per_day):
            device, events = rng.choice(plan.by_device)
            traffic.append(bad_message(UpEnvelope(device, list(events), events[-1].ts), rng, self.settings,
                                       self.topics))
        for _ in range(self.oversize_per_day):
            device, events = rng.choice(plan.by_device)
            traffic.append(bad_message(UpEnvelope(device, list(events), events[-1].ts), rng, self.settings,
                                       self.topics, "oversize"))
        traffic += duplicates(plan, earlier, rng, self.noise_per_day, self.noise_kinds)
        rng.shuffle(traffic)
        for item in traffic:
            if item.category != "valid":
                self.ledger.add(item)
        await self._publish(prod, up, traffic, plan.day, "ingest")
        await self._barrier()
        for partition in range(self.topics["samples"].partitions):
            await prod.send(self.topics.name("samples"), encode(DayEnd(plan.day)), key=b"day-end",
                            partition=partition)
        await prod.flush()
        await self._barrier()
        previous: list[Injected] = []
        for round_ in range(self.pulls_per_day):
            pulls = []
            for device, events in plan.by_device:
                # request ids travel past ingest verbatim: like the device runtime's, they name the
                # device by its pseudonym, never by its raw id
                pseudonym = device_pseudonym(self.settings.pseudonym_key, device)[:16]
                request = PullRequest(device, events[0].user_id, plan.day * DAY + DAY - 1,
                                      f"pull-{plan.day}-{round_}-{pseudonym}", self.pull_batches)
                pulls.append(Injected(device.encode(), encode(request), "pull", None))
            self.ledger.pulls += len(pulls)
            extra = ghost_pulls(plan.day, self.ghost_pulls_per_day) if round_ == 0 else []
            if self.repeat_pulls:
                extra += [Injected(p.key, p.raw, "redelivered_pull", None) for p in previous]
            for item in extra:
                self.ledger.add(item)
            batch = pulls + extra
            rng.shuffle(batch)
            await self._publish(prod, up, batch, plan.day, "assemble")
            previous = pulls
            await self._barrier()

    async def _publish(self, prod: Any, topic: str, items: Sequence[Injected], day: int, stage: str) -> None:
        kill = next((k for k in self.kills if k.day == day and k.stage == stage
                     and not any(d["day"] == day and d["stage"] == stage for d in self.ledger.kills)), None)
        victim = self._worker(kill.worker) if kill else None
        if kill is None or victim is None:
            await _send_all(prod, topic, items)
            return
        async with OutputWatch(self.settings, self.topics.name(_KILL_OUTPUT[stage])) as watch:
            os.kill(victim.pid, signal.SIGSTOP)  # let the stage's input pile up, then kill it mid-way
            try:
                await _send_all(prod, topic, items)
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            await self._kill_mid_stage(kill, victim, watch)

    async def _kill_mid_stage(self, kill: Kill, victim: Any, watch: OutputWatch) -> None:
        if not await watch.grew(timeout_s=60):
            raise TimeoutError(f"worker {kill.worker} produced nothing on {watch.topic} within 60 s")
        victim.kill()
        victim.wait()
        killed_at = time.monotonic()
        uncommitted = await self.uncommitted(WORKER_TOPICS)
        self.ledger.kills.append({"day": kill.day, "stage": kill.stage, "worker": kill.worker,
                                  "output_before": watch.before, "uncommitted_input": uncommitted})
        self.say(f"SIGKILLed worker {kill.worker} during {kill.stage} of day {kill.day}; "
                 f"{uncommitted} input records were not committed")
        assert self._procs is not None
        self._procs.procs.remove(victim)
        self._procs.spawn("worker", str(kill.worker))
        self.timings.setdefault("restarts", 0.0)
        self.timings["restarts"] += 1
        self.timings["kill_to_spawn_s"] = time.monotonic() - killed_at

    def _worker(self, index: int) -> Any:
        assert self._procs is not None
        for proc in self._procs.procs:
            if proc.args[3:6] == ["worker", "--id", str(index)]:
                return proc
        raise LookupError(f"no worker {index}")

    async def uncommitted(self, names: Sequence[str]) -> int:
        """Records of the workers' input topics that their group has not committed."""
        full = [self.topics.name(n) for n in names]
        ends = await end_offsets(self.settings, full)
        committed = await committed_offsets(self.settings, self.settings.app_id, sorted(ends))
        return sum(max(0, end - max(committed[tp], 0)) for tp, end in ends.items())

    async def _barrier(self) -> None:
        await barrier(self.settings, self.topics, self.workers, False, self._procs, timeout_s=300)

    def worker_stats(self) -> dict[str, Any]:
        return merged_worker_stats(self.settings, self.workers)


def reconcile(stats: dict[str, Any], ledger: Ledger, letters: int) -> dict[str, Any]:
    """in = processed + dead-lettered per stage; ingest's dead letters = the invalid messages injected."""
    broken = [s for s, c in stats.items() if isinstance(c, dict) and {"in", "processed", "dead_lettered"} <= set(c)
              and c["in"] != c["processed"] + c["dead_lettered"]]
    ingest = stats.get("ingest", {})
    return {"stages_balanced": not broken, "broken": broken,
            "ingest_in": ingest.get("in"), "ingest_processed": ingest.get("processed"),
            "ingest_dead_lettered": ingest.get("dead_lettered"), "injected_invalid": ledger.invalid,
            "injected_valid": ledger.valid, "dead_letter_topic": letters,
            "ok": not broken and ingest.get("dead_lettered") == ledger.invalid == letters
            and ingest.get("processed") == ledger.valid}


def dead_letter_mismatch(run: RunRecords, topics: Topics, ledger: Ledger) -> dict[str, Any]:
    """Each distinct up-tunnel dead letter against the ledger: same raw bytes, same reasons."""
    letters = distinct_letters(run, topics.name("up"))
    raw = Counter(bytes(d.raw) for d in letters.values())
    reasons = Counter(d.reason for d in letters.values())
    missing = [(*ledger.bad_kind.get(r, ("?", "?")), len(r), n) for r, n in (ledger.bad_raw - raw).items()]
    unexpected = [(d.reason, d.partition, d.offset, len(d.raw)) for d in letters.values()
                  if bytes(d.raw) in raw - ledger.bad_raw]
    return {"letters": len(letters), "raw_equal": raw == ledger.bad_raw, "reasons_equal": reasons == ledger.reasons,
            "reasons": dict(reasons), "all_have_origin": all(d.offset >= 0 and d.detail for d in letters.values()),
            "missing": missing[:10], "unexpected": unexpected[:10]}


def chaos_plans(users: int, days: int, seed: int) -> list[DayPlan]:
    """A synthetic dataset as day plans (the same one for a chaos run and its reference)."""
    from ops.datasets import load_dataset
    from ops.replay.publish import plan_days

    dataset = load_dataset("synthetic", n_users=users, seed=seed, days=days, events_per_user=(5, 12))
    return plan_days(dataset.events)


async def _send_all(prod: Any, topic: str, items: Sequence[Injected]) -> None:
    for item in items:
        await prod.send(topic, item.raw, key=item.key)
    await prod.flush()


class OutputWatch:
    """Sees a stage's first output within milliseconds, so the kill lands before its input is committed.

    One long-lived client asks the broker for the reported end offsets (one ListOffsets request a
    poll): a fresh client a poll took long enough on a loaded machine for the worker to finish and
    commit the whole input first. Any new batch moves the reported end, on Tansu as on Kafka.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic, self.before = topic, 0
        self._client = consumer(settings, enable_auto_commit=False)
        self._parts: list[TopicPartition] = []

    async def __aenter__(self) -> Self:
        await self._client.start()
        await refresh_metadata(self._client)
        self._parts = [TopicPartition(self.topic, p) for p in sorted(self._client.partitions_for_topic(self.topic) or ())]
        if not self._parts:
            raise RuntimeError(f"no partitions found for {self.topic}")
        self.before = await self._reported()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.stop()

    async def _reported(self) -> int:
        return sum((await self._client.end_offsets(self._parts)).values())

    async def grew(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while await self._reported() <= self.before:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True
