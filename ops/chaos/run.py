"""Chaos for the cloud flow: bad and redelivered up-tunnel traffic, worker kills, and the checks after.

Three parts, usable on their own:

- **Bad input** (pure): `bad_message` turns a valid envelope into one invalid up-tunnel message
  (truncated, wrong types, wrong versions, huge lists, NaN/inf, missing fields, random bytes,
  oversize, ...). The schema decoder is the oracle: every message it returns fails
  `decode` and `expected_reason` says which dead-letter reason ingest must give.
- **Redelivery noise** (valid, must change nothing): exact and shuffled duplicates of
  envelopes, late duplicates of earlier days, the same events reported by an unknown device,
  redelivered pull requests and pulls of unknown devices.
- **The run**: `ChaosRun` replays day plans through real worker processes with the day
  barrier, mixes the above into the traffic, can SIGKILL a worker in the middle of a stage and
  restart it, and keeps a `Ledger` of everything it injected so counts can be reconciled
  exactly. `expected_state` computes what the vectors must be from the agents' own pure steps.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from agents.ingest import build_samples
from agents.vectors import fold
from core.privacy import device_pseudonym, user_pseudonym
from ops.audit.exports import RunRecords
from ops.chaos.cloudrun import merged_worker_stats
from ops.replay.publish import DAY, DayPlan
from ops.stack.pipeline import WORKER_TOPICS, Processes, barrier
from streams.kafka import committed_offsets, end_offsets, ensure_topics, producer
from streams.schemas import (
    BehaviourEvent,
    DayEnd,
    HistoryState,
    PullRequest,
    SchemaError,
    UpEnvelope,
    UserState,
    decode,
    encode,
    to_plain,
)
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- bad input
MUTATIONS = (
    "truncated", "wrong_type", "wrong_version", "unknown_kind", "other_kind", "missing_field",
    "huge_list", "long_string", "non_finite", "out_of_range", "bool_for_int", "random_bytes",
    "not_a_map", "bad_map_key", "deep_nesting", "empty", "null_value", "oversize",
)
# the cheap ones, weighted; "oversize" (> max_envelope_bytes on the wire) is added sparingly
_WEIGHTS = {m: 1.0 for m in MUTATIONS} | {"oversize": 0.0, "huge_list": 0.3, "deep_nesting": 0.3}
_EVENT_FIELDS = {"user_id": str, "ts": int, "item_id": str, "item_tags": list, "action": str,
                 "profile": dict, "label": int}
_TOP_FIELDS = {"device_id": str, "events": list, "sent_ts": int}
_WRONG = {str: [7, 2.5, [], {}, b"bytes", True], int: ["7", 2.5, [], {}, b"\x07"],
          list: ["a", 3, {"a": "b"}, b"xs"], dict: ["a", 3, ["a"], {"a": 1}, {"a": ["b"]}]}


def expected_reason(raw: bytes | None, settings: Settings, topics: Topics) -> str | None:
    """The dead-letter reason ingest gives `raw`, or None when it is a valid up-tunnel message."""
    try:
        decode(raw, settings.max_envelope_bytes, topics["up"].kinds)  # type: ignore[arg-type]
    except SchemaError as err:
        return err.reason
    return None


def mutate(envelope: UpEnvelope, rng: random.Random, kind: str, max_bytes: int) -> bytes | None:
    """One mutation of `envelope`'s wire form (may, rarely, still be valid: see `bad_message`)."""
    body = to_plain(envelope)
    raw = encode(envelope)
    events = body["events"]
    event = events[rng.randrange(len(events))] if events else None
    if kind == "truncated":
        return raw[: rng.randrange(1, len(raw))]
    if kind == "wrong_type":
        target, fields = (event, _EVENT_FIELDS) if event is not None and rng.random() < 0.7 else (body, _TOP_FIELDS)
        name = rng.choice(sorted(fields))
        target[name] = rng.choice(_WRONG[fields[name]])
    elif kind == "wrong_version":
        body["v"] = rng.choice([0, 2, 99, -1, "1", 1.0])
    elif kind == "unknown_kind":
        body["k"] = rng.choice(["up.event", "", "UP.EVENTS", 7, ["up.events"]])
    elif kind == "other_kind":
        return encode(DayEnd(rng.randrange(100)))  # a real kind that does not belong on `up`
    elif kind == "missing_field":
        if event is not None and rng.random() < 0.7:
            del event[rng.choice(["user_id", "ts", "item_id", "item_tags", "action"])]
        else:
            del body[rng.choice(["device_id", "events"])]
    elif kind == "huge_list":
        if rng.random() < 0.5 or event is None:
            body["events"] = [0] * 100_001  # over the schema's list limit (100,000)
        else:
            event["item_tags"] = [f"t{i}" for i in range(65 + rng.randrange(500))]
    elif kind == "long_string":
        target, name = (event, rng.choice(["user_id", "item_id"])) if event is not None else (body, "device_id")
        target[name] = "x" * (129 + rng.randrange(1000))
    elif kind == "non_finite":
        value = rng.choice([math.nan, math.inf, -math.inf])
        if event is not None:
            event[rng.choice(["ts", "label"])] = value
        else:
            body["sent_ts"] = value
    elif kind == "out_of_range":
        if event is not None:
            name, value = rng.choice([("ts", -1), ("ts", 2**41), ("label", 2), ("label", -1)])
            event[name] = value
        else:
            body["sent_ts"] = -5
    elif kind == "bool_for_int":
        if event is not None:
            event[rng.choice(["ts", "label"])] = rng.choice([True, False])
        else:
            body["sent_ts"] = True
    elif kind == "random_bytes":
        return rng.randbytes(rng.randrange(1, 300))
    elif kind == "not_a_map":
        return msgpack.packb(rng.choice([[1, 2, 3], "up.events", 42, None, [body]]), use_bin_type=True)
    elif kind == "bad_map_key":
        return b"\x81\x01\x02" + raw  # {1: 2} then junk: a non-string key fails strict decoding
    elif kind == "deep_nesting":
        depth = rng.choice([2_000, 200_000])  # the second exceeds msgpack's own stack limit
        head = msgpack.packb({k: v for k, v in body.items() if k != "events"}, use_bin_type=True)
        return bytes([head[0] + 1]) + head[1:] + msgpack.packb("events") + b"\x91" * depth + b"\x01"
    elif kind == "empty":
        return b""
    elif kind == "null_value":
        return None
    elif kind == "oversize":
        body["pad"] = b"\0" * (max_bytes + 1 + rng.randrange(1000))
    else:
        raise ValueError(f"unknown mutation {kind!r}")
    return msgpack.packb(body, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Injected:
    """One message the chaos run put on the up-tunnel besides the plain replay."""

    key: bytes | None
    raw: bytes | None
    category: str
    reason: str | None  # the dead-letter reason it must get; None for valid (no-op) traffic


def bad_message(envelope: UpEnvelope, rng: random.Random, settings: Settings, topics: Topics,
                kind: str | None = None) -> Injected:
    """An invalid up-tunnel message derived from `envelope`, with the reason ingest must give it."""
    for _ in range(20):
        chosen = kind or rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
        raw = mutate(envelope, rng, chosen, settings.max_envelope_bytes)
        reason = expected_reason(raw, settings, topics)
        if reason is not None:
            keys = [envelope.device_id.encode(), b"fuzz", rng.randbytes(8)] + ([None] if raw is not None else [])
            key = rng.choice(keys)  # a Kafka record needs a key or a value
            return Injected(key, raw, chosen, reason)
    raise RuntimeError(f"no invalid mutation of kind {kind!r} after 20 tries")


# --------------------------------------------------------------------------- redelivery noise
NOISE_KINDS = ("duplicate", "shuffled_duplicate", "late_duplicate", "unknown_device")
# "unknown_device" re-reports a user's events from another device, so from another `up` partition.
# Ingest keeps each user's history in a table keyed by user but fed from the device-keyed stream:
# one worker that never restarts handles that, but a restart (table recovery replays the
# changelog partition by partition) or a second worker can then see a stale history. Soaks
# with kills leave it out unless asked (`coda chaos --multi-device`); see ops/cli/cmd_chaos.py.
SINGLE_DEVICE_NOISE = NOISE_KINDS[:3]


def duplicates(plan: DayPlan, earlier: Sequence[DayPlan], rng: random.Random, n: int,
               kinds: Sequence[str] = NOISE_KINDS) -> list[Injected]:
    """Valid envelopes that add nothing: exact, shuffled, late (earlier days) and unknown-device copies."""
    out: list[Injected] = []
    pool = list(plan.by_device)
    old = [pair for p in earlier for pair in p.by_device]
    for i in range(n):
        category = rng.choice(list(kinds))
        device, events = rng.choice(old) if category == "late_duplicate" and old else rng.choice(pool)
        evs = list(events)
        if category != "duplicate":
            rng.shuffle(evs)
        if category == "unknown_device":
            device = f"ghost-device-{plan.day}-{i}"
        env = UpEnvelope(device, evs, evs[-1].ts if category == "duplicate" else rng.randrange(2**31))
        out.append(Injected(device.encode(), encode(env), category, None))
    return out


def ghost_pulls(day: int, n: int) -> list[Injected]:
    """Pull requests of devices and users the cloud never saw: answered with an 'exhausted' notice."""
    out = []
    for i in range(n):
        pull = PullRequest(f"ghost-device-{day}-{i}", f"ghost-user-{day}-{i}", day * DAY + DAY - 1,
                           f"ghost-pull-{day}-{i}", 12)
        out.append(Injected(pull.device_id.encode(), encode(pull), "unknown_device_pull", None))
    return out


# --------------------------------------------------------------------------- the oracle
@dataclass
class Expected:
    """What the cloud must derive from the plans: samples per user and each user's vector."""

    vectors: dict[str, tuple[int, list[float]]]  # user pseudonym -> (count, mean vector)
    samples: dict[str, Any]  # sample id -> core.sample.Sample

    @property
    def sample_ids(self) -> set[str]:
        return set(self.samples)


def expected_state(plans: Sequence[DayPlan], settings: Settings) -> Expected:
    """Run the ingest and user-vector agents' pure steps over the plans, in replay order."""
    key, space = settings.pseudonym_key, settings.features
    histories: dict[str, HistoryState] = {}
    users: dict[str, UserState] = {}
    ids: dict[str, Any] = {}
    for plan in plans:
        for device, events in plan.by_device:
            by_user: dict[str, list[BehaviourEvent]] = {}
            for e in events:
                by_user.setdefault(e.user_id, []).append(e)
            for user_id, evs in by_user.items():
                user = user_pseudonym(key, user_id)
                samples, histories[user] = build_samples(user, evs, histories.get(user) or HistoryState(), space)
                if samples:
                    users[user], _ = fold(users.get(user), samples, space, settings.match_window_days,
                                          device_pseudonym(key, device))
                    ids.update((s.sample_id, s) for s in samples)
    vectors = {u: (st.count, [t / st.count for t in st.total]) for u, st in users.items() if st.count}
    return Expected(vectors, ids)


def compare_vectors(run: RunRecords, expected: dict[str, tuple[int, list[float]]],
                    tol: float = 1e-9) -> dict[str, Any]:
    """Published vectors (newest per user) against `expected`: same users, counts and values."""
    missing = sorted(set(expected) - set(run.vectors))
    extra = sorted(set(run.vectors) - set(expected))
    wrong = []
    worst = 0.0
    for user in set(expected) & set(run.vectors):
        count, vector = expected[user]
        got = run.vectors[user]
        err = max((abs(a - b) for a, b in zip(vector, got.vector, strict=True)), default=0.0)
        worst = max(worst, err)
        if got.count != count or err > tol:
            wrong.append(user)
    return {"users": len(expected), "missing": missing[:5], "extra": extra[:5], "wrong": sorted(wrong)[:5],
            "max_abs_error": worst, "ok": not (missing or extra or wrong)}


def compare_samples(run: RunRecords, expected: Expected) -> dict[str, Any]:
    """The log's samples (first copy per id) against the pure replay's: same ids and the same features."""
    differ = [i for i, s in run.samples.items() if i in expected.samples and s != expected.samples[i]]
    return {"samples": len(run.samples), "expected": len(expected.samples),
            "missing": sorted(set(expected.samples) - set(run.samples))[:5],
            "extra": sorted(set(run.samples) - set(expected.samples))[:5],
            "different_features": len(differ), "example": differ[:3],
            "ok": set(run.samples) == set(expected.samples) and not differ}


def distinct_letters(run: RunRecords, topic: str) -> dict[tuple[int, int], Any]:
    """Dead letters of `topic` by source (partition, offset): a redelivered bad message counts once."""
    return {(d.partition, d.offset): d for d in run.dead if d.topic == topic}


# --------------------------------------------------------------------------- the run
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
        if victim is not None:
            output = self.topics.name(_KILL_OUTPUT[stage])
            before = sum((await end_offsets(self.settings, [output])).values())
            os.kill(victim.pid, signal.SIGSTOP)  # let the stage's input pile up, then kill it mid-way
        try:
            for item in items:
                await prod.send(topic, item.raw, key=item.key)
            await prod.flush()
        finally:
            if victim is not None:
                os.kill(victim.pid, signal.SIGCONT)
        if kill is not None and victim is not None:
            await self._kill_mid_stage(kill, victim, output, before)

    async def _kill_mid_stage(self, kill: Kill, victim: Any, output: str, before: int) -> None:
        deadline = time.monotonic() + 60
        while sum((await end_offsets(self.settings, [output])).values()) <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {kill.worker} produced nothing on {output} within 60 s")
            await asyncio.sleep(0.005)
        victim.kill()
        victim.wait()
        killed_at = time.monotonic()
        uncommitted = await self.uncommitted(WORKER_TOPICS)
        self.ledger.kills.append({"day": kill.day, "stage": kill.stage, "worker": kill.worker,
                                  "output_before": before, "uncommitted_input": uncommitted})
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
