"""Crashes: a cloud worker SIGKILLed mid-stage recovers exactly; a broker outage is survived, and replay restores."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition
from relhelp import PULL_BATCHES, Reference, namespace

from ops.audit.checks import batch_rules
from ops.audit.exports import collect
from ops.chaos.oracle import compare_samples, compare_vectors, distinct_letters, expected_state
from ops.chaos.run import ChaosRun, Kill, chaos_plans
from ops.replay.publish import DAY, Publisher
from ops.stack import broker as stack
from ops.stack.pipeline import Processes, barrier
from streams.app import true_highwaters
from streams.kafka import admin, client_options, consumer, ensure_topics
from streams.schemas import SampleBatch
from streams.settings import Settings
from streams.topicio import read_records
from streams.topics import load_topics


async def test_faust_recovery_reads_the_whole_changelog(settings: Settings) -> None:
    """Tansu reports the last batch's base offset + 1 as the end; recovery's highwater is corrected to the true end."""
    from aiokafka.admin import NewTopic

    name = f"{settings.topic_prefix}.changelog-probe"
    client = await admin(settings)
    try:
        await client.create_topics([NewTopic(name, 1, 1)])
    finally:
        await client.close()
    p = AIOKafkaProducer(**client_options(settings), linger_ms=200)  # one record batch of 50
    await p.start()
    try:
        futures = [await p.send(name, b"v%d" % i, key=b"k%d" % i, partition=0) for i in range(50)]
        await p.flush()
        assert {(await f).offset for f in futures} == set(range(50))
    finally:
        await p.stop()
    tp = TopicPartition(name, 0)
    c = consumer(settings)
    await c.start()
    try:
        reported = await c.end_offsets([tp])
    finally:
        await c.stop()
    assert reported[tp] < 50  # the broker's answer: what Faust's recovery used to stop at
    assert await true_highwaters(settings, reported) == {tp: 50}


async def test_sigkill_mid_ingest_and_mid_assemble_recovers_exactly(reference: Reference, tmp_path: Path) -> None:
    """Killed during day 1's ingest and its assemble: vectors, samples, sent sets and quotas as if never killed."""
    ref = reference
    settings = namespace(ref.settings.bootstrap, tmp_path, "crash")
    topics = load_topics(prefix=settings.topic_prefix)
    day1 = ref.plans[1].day  # day 0 filled every table: the restarts must recover all of them
    chaos = ChaosRun(settings, topics, pull_batches=PULL_BATCHES, bad_per_day=20, seed=5,
                     kills=[Kill(day1, "ingest"), Kill(day1, "assemble")])
    await chaos.run(ref.plans)
    kills = chaos.ledger.kills
    assert [(k["day"], k["stage"]) for k in kills] == [(day1, "ingest"), (day1, "assemble")]
    assert all(k["uncommitted_input"] > 0 for k in kills), kills  # killed with input in flight
    run = await collect(settings, topics)

    # user vectors (counts and values) and the sample pool: exactly the uninterrupted run's
    assert compare_samples(run, expected_state(ref.plans, settings))["ok"]
    assert set(run.samples) == set(ref.run.samples)
    vectors = compare_vectors(run, {u: (v.count, v.vector) for u, v in ref.run.vectors.items()})
    assert vectors["ok"], vectors
    # sent-sample sets and quotas: the same batches to the same devices, no sample twice, within 12/day
    # (a batch re-sent after the crash has the same id: the log's readers, devices included, keep one)
    got = sorted({b.batch_id: (b.device, b.day, tuple(b.sample_ids)) for b in run.batches}.values())
    want = sorted({b.batch_id: (b.device, b.day, tuple(b.sample_ids)) for b in ref.run.batches}.values())
    assert got == want, _batch_diff(run, ref.run)
    s = settings
    resent = len(run.batches) - len({b.batch_id for b in run.batches})
    run.batches = list({b.batch_id: b for b in run.batches}.values())
    rules = batch_rules(run, s.batch_size, s.batch_max, s.batches_per_day)
    assert rules["ok"], (rules, resent)  # includes: every owner is in a published match (the audit trail)
    # bad input redelivered after the crash is dead-lettered again, never lost: one letter per source offset
    assert len(distinct_letters(run, topics.name("up"))) == chaos.ledger.invalid


def _batch_diff(run, ref) -> str:  # type: ignore[no-untyped-def]
    """Which batches differ, for the assertion message."""
    mine = {(b.device, b.day, tuple(b.sample_ids)): b.batch_id for b in run.batches}
    theirs = {(b.device, b.day, tuple(b.sample_ids)): b.batch_id for b in ref.batches}
    extra = [(k[0][:6], k[1], len(k[2]), v) for k, v in mine.items() if k not in theirs]
    missing = [(k[0][:6], k[1], len(k[2]), v) for k, v in theirs.items() if k not in mine]
    return f"{len(run.batches)} vs {len(ref.batches)} batches; extra {extra[:8]}; missing {missing[:8]}"


async def _until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll an async `check` every 0.3 s until true, or fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


@contextmanager
def _held(procs: Processes) -> Iterator[None]:
    """SIGSTOP every child for the block, SIGCONT after it (also on failure)."""
    for proc in procs.procs:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs.procs:
            proc.send_signal(signal.SIGCONT)


async def test_broker_outage_clients_retry_and_resume_and_replay_restores(tmp_path: Path) -> None:
    """Stop and restart the embedded broker under a running worker and fleet: they survive, reconnect and resume;
    the in-memory broker lost every topic, and replaying the input into a fresh namespace restores the vectors."""
    root = Settings(state_dir=tmp_path / "broker", broker_port=stack.free_port())
    broker = await asyncio.to_thread(stack.start_broker, root)
    broker.save(stack.stack_file(root))
    procs: Processes | None = None
    try:
        try:
            live = namespace(broker.bootstrap, tmp_path, "live").replace(pull_trigger="day_end")
            topics = load_topics(prefix=live.topic_prefix)
            await ensure_topics(live, topics)
            plans = chaos_plans(users=10, days=2, seed=4)
            procs = Processes(live)
            procs.spawn("worker", "0")
            procs.spawn("fleet", "0")
            async with Publisher(live, topics) as pub:
                await pub.up(plans[0])  # the cloud's pool
                await pub.actions(plans[0])  # and the same day on the devices (they report it again: no-op)
            await barrier(live, topics, 1, True, procs, timeout_s=120)
            before = await collect(live, topics)
            assert compare_vectors(before, expected_state(plans[:1], live).vectors)["ok"]

            await asyncio.to_thread(stack.down, root)  # SIGTERM: every topic, offset and changelog is gone
            await asyncio.sleep(4)
            procs.check()  # worker and fleet ride out the outage
            # Tansu creates a topic a client's metadata request names, with its own default partition
            # count (a production cluster runs with auto.create.topics.enable=false): hold the clients
            # while the new broker starts and the topics are declared, or one may win the race
            with _held(procs):
                broker = await asyncio.to_thread(stack.start_broker, root)  # same port
                broker.save(stack.stack_file(root))
                assert await ensure_topics(live, topics)  # recreated: the new broker had none of them

            async with Publisher(live, topics) as pub:
                await pub.actions(plans[1])  # the devices live on; their reports must reach the cloud again

            async def resumed() -> bool:
                samples = [r for r in await read_records(live, topics.name("samples")) if isinstance(r, SampleBatch)]
                return any(s.ts // DAY == plans[1].day for b in samples for s in b.to_samples())

            await _until(resumed, 120, "samples of the day after the outage")
            procs.check()
            after = await collect(live, topics)
            lost = [s for s in after.samples.values() if s.ts // DAY == plans[0].day]
            assert not lost  # what the broker held before the outage is gone from the log
            logs = {p.name: p.read_text(errors="replace") for p in (live.state_dir / "logs").glob("*.log")}
            assert "Connect call failed" in logs["worker-0.log"] or "Unable connect" in logs["worker-0.log"]
            assert "fetch failed" in logs["fleet-0.log"] or "Unable connect" in logs["fleet-0.log"]
        finally:
            if procs is not None:
                procs.stop()

        # replay the input into a fresh namespace on the new broker: the same vectors as before the outage
        fresh = namespace(broker.bootstrap, tmp_path, "replayed")
        fresh_topics = load_topics(prefix=fresh.topic_prefix)
        await ChaosRun(fresh, fresh_topics).run(plans[:1])
        replayed = await collect(fresh, fresh_topics)
        assert compare_vectors(replayed, {u: (v.count, v.vector) for u, v in before.vectors.items()})["ok"]
        assert set(replayed.samples) == set(before.samples)
    finally:  # the broker stops whatever failed above
        await asyncio.to_thread(stack.down, root)
