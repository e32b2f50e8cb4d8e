"""The A/B experiment through the real pipeline: data split, one namespace per seed, read-back of every arm."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.privacy import user_pseudonym
from device.fleet import DeviceExport
from ops.replay import DAY, DayPlan, plan_days
from streams.schemas import BatchRecord, MatchResult
from streams.settings import Settings

log = logging.getLogger(__name__)

Say = Callable[[str], None]

# synthetic "where the premise holds": strong group taste, few samples per user, and exposure that
# follows taste, so the behaviour sequence (the matching feature) says which group a user is in
SYNTHETIC_DEFAULTS: dict[str, Any] = {"n_users": 400, "n_groups": 8, "heterogeneity": 0.9,
                                      "events_per_user": (6, 30), "days": 14, "exposure_bias": 0.8}
# K per dataset: the paper's 100 for MovieLens; on the synthetic data K must stay below a group's
# size (400 users / 8 groups = 50), or even a perfect matcher fills K with other groups
DEFAULT_K = {"movielens-100k": 100, "synthetic": 20}


@dataclass(frozen=True)
class Params:
    """Everything that defines an experiment run (recorded in results.json)."""

    dataset: str = "movielens-100k"
    seeds: tuple[int, ...] = (0, 1, 2)
    k: int = 100
    sigma: float = 0.2
    users: int | None = None  # keep this many users (deterministic by hash); None: all
    history_share: float = 0.6  # first share of event time: the cloud's pool; the rest is live
    global_seed: int = 0  # the global model is the same in every seed: seeds vary arms and devices
    top_n: int = 3  # online analogue: each user's top-n scored items of a day are "shown"
    bootstrap: int = 1000
    synthetic: dict[str, Any] = field(default_factory=lambda: dict(SYNTHETIC_DEFAULTS))
    index_url: str = ""  # "": the settings' index

    def settings_for(self, root: Settings, namespace: str, seed: int) -> Settings:
        from ops.namespace import in_namespace

        scoped = in_namespace(root, namespace).replace(
            pull_trigger="day_end", arm_mode="buckets", arm_seed=seed, k_neighbours=self.k, sigma=self.sigma)
        return scoped.replace(index_url=self.index_url) if self.index_url else scoped


@dataclass
class Split:
    """The data, cut by a global time split: history days feed the cloud's pool, live days the devices."""

    name: str
    events: list[dict[str, Any]]
    groups: dict[str, int] | None
    cut_day: int  # first live day
    history: list[DayPlan]
    live: list[DayPlan]

    @property
    def live_users(self) -> set[str]:
        return {e.user_id for p in self.live for _, evs in p.by_device for e in evs}


def _keep_users(events: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """A deterministic subset of `n` users (by a hash of the id, not by activity)."""
    users = sorted({e["user_id"] for e in events}, key=lambda u: hashlib.blake2b(u.encode()).hexdigest())
    kept = set(users[:n])
    return [e for e in events if e["user_id"] in kept]


def prepare(params: Params) -> Split:
    """Load the dataset and cut it at `history_share` of its event-time span (whole days)."""
    from ops.datasets import load_dataset

    if params.dataset == "synthetic":
        options = dict(params.synthetic)
        if params.users:
            options["n_users"] = params.users
        data = load_dataset("synthetic", seed=0, **options)
        events = data.events
    else:
        data = load_dataset(params.dataset)
        events = _keep_users(data.events, params.users) if params.users else data.events
    plans = plan_days(events)
    first, last = plans[0].day, plans[-1].day
    cut_day = first + max(1, round((last - first + 1) * params.history_share))
    history = [p for p in plans if p.day < cut_day]
    live = [p for p in plans if p.day >= cut_day]
    if not history or not live:
        raise ValueError(f"history share {params.history_share} leaves no history or no live days")
    return Split(params.dataset, events, data.groups, cut_day, history, live)


@dataclass
class SeedRun:
    """What one seed's pipeline run left behind, read back after its processes stopped."""

    seed: int
    namespace: str
    devices: list[DeviceExport]
    batches: list[BatchRecord]
    matches: list[MatchResult]
    global_model: dict[str, Any]
    timings: dict[str, float]
    fleet_stats: dict[str, Any]
    pseudonym_key: str


async def run_seed(root: Settings, split: Split, params: Params, seed: int, namespace: str,
                   say: Say, keep_state: bool = False, bar: bool = True) -> SeedRun:
    """One full pipeline run: history → pool, train-global, live days with barriers, read-back."""
    from ops.cmd_cloud import train_and_publish
    from ops.pipeline import Processes, barrier
    from ops.replay import Progress, Publisher
    from ops.topicio import read_records
    from streams.kafka import bootstrap_servers, ensure_topics
    from streams.topics import load_topics

    s = params.settings_for(root, namespace, seed).replace(bootstrap=bootstrap_servers(root))
    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    procs = Processes(s)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        procs.spawn("worker", "0")
        async with Publisher(s, topics) as pub:
            for plan in split.history:  # the pool needs no day ticks: no device pulls before the split
                await pub.up(plan)
            await barrier(s, topics, 1, False, procs)
            timings["history_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            model = await train_and_publish(s, split.history[-1].day, epochs=2, seed=params.global_seed)
            timings["global_model_s"] = time.monotonic() - t1
            say(f"seed {seed}: global model {model['version']} (holdout AUC {model['holdout_auc']})")
            procs.spawn("fleet", "0")
            t2 = time.monotonic()
            progress = Progress(sum(p.events for p in split.live), f"seed {seed} live", force=bar)
            async with DayBarrier(s, topics, procs) as quiet:
                for n, plan in enumerate(split.live, 1):
                    await pub.actions(plan)
                    await quiet.wait()  # the cloud has the whole day before anyone pulls
                    await pub.day_end("samples", plan.day)
                    await pub.day_end("actions", plan.day)
                    await quiet.wait()  # pulls answered, filtered, trained: the next day may start
                    progress.advance(plan.events, f"day {n}/{len(split.live)}")
                    if not bar and (n % 10 == 0 or n == len(split.live)):
                        say(f"seed {seed}: live day {n}/{len(split.live)} ({time.monotonic() - t2:.0f} s)")
            progress.close()
            timings["live_s"] = time.monotonic() - t2
    finally:
        procs.stop()
    devices = await _read_devices(s)
    batches = [r for r in await read_records(s, topics.name("batch-log")) if isinstance(r, BatchRecord)]
    matches = [r for r in await read_records(s, topics.name("matches")) if isinstance(r, MatchResult)]
    stats = _fleet_stats(s)
    timings["total_s"] = time.monotonic() - t0
    if not keep_state:
        shutil.rmtree(s.state_dir, ignore_errors=True)
    return SeedRun(seed, s.topic_prefix, devices, batches, matches, model, timings, stats, s.pseudonym_key)


class DayBarrier:
    """ops.pipeline.barrier for a whole replay: one lag probe kept open instead of one per wait.

    Opening the probe (a client per consumer group) cost more than the waits themselves on quiet days.
    """

    def __init__(self, settings: Settings, topics: Any, procs: Any, poll_s: float = 0.1) -> None:
        from ops.pipeline import subscriptions
        from ops.topicio import LagProbe

        self.procs, self.poll_s = procs, poll_s
        self.probe = LagProbe(settings, subscriptions(settings, topics, 1, True))

    async def __aenter__(self) -> DayBarrier:
        await self.probe.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.probe.__aexit__(*exc)

    async def wait(self, timeout_s: float = 900, stable_polls: int = 2) -> None:
        """Until every group has had zero lag for `stable_polls` polls in a row."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < stable_polls:
            self.procs.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"namespace not quiet after {timeout_s:.0f} s")
            quiet = quiet + 1 if await self.probe.lag() == 0 else 0
            await asyncio.sleep(self.poll_s)


async def _read_devices(s: Settings) -> list[DeviceExport]:
    from device.fleet import read_devices

    return await read_devices(s.state_dir)


def _fleet_stats(s: Settings) -> dict[str, Any]:
    import json

    path = s.state_dir / "fleets" / "0.json"
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: stats.get(k) for k in ("in", "processed", "dead_lettered", "devices_hosted", "counts")}


def run_streaming(root: Settings, split: Split, params: Params, say: Say, keep_state: bool = False,
                  label: str = "exp", parallel: int = 1) -> list[SeedRun]:
    """Every seed in its own namespace, on the configured broker or an embedded one started here.

    `parallel` seeds run at once (each its own worker and fleet): on a machine with a spare core
    the pipelines overlap their waits, at the price of more processes at a time.
    """
    from ops import stack
    from streams.kafka import stack_file
    from streams.topics import load_topics

    started = False
    if root.embedded and stack.StackState.load(stack_file(root)) is None:
        stack.up(root, load_topics())
        started = True
    stamp = int(time.time())

    async def seeds() -> list[SeedRun]:
        gate = asyncio.Semaphore(max(1, parallel))

        async def one(seed: int) -> SeedRun:
            async with gate:
                return await run_seed(root, split, params, seed, f"{label}-{stamp}-s{seed}", say, keep_state,
                                      bar=parallel == 1)

        return list(await asyncio.gather(*(one(seed) for seed in params.seeds)))

    try:
        return asyncio.run(seeds())
    finally:
        if started:
            stack.down(root)


# --------------------------------------------------------------------------- rows for the analysis
@dataclass(frozen=True, slots=True)
class EvalRow:
    """One progressive-validation score of a live event, with who was scored in which arm."""

    seed: int
    arm: str
    user: str  # raw user id (the experiment owns the data, so it may join on it)
    day: int  # live day index, 0 = first live day
    ts: int
    label: int
    score: float


def eval_rows(seed: int, devices: Sequence[DeviceExport], cut_day: int) -> list[EvalRow]:
    return [EvalRow(seed, d.arm, d.user_id, ts // DAY - cut_day, ts, label, score)
            for d in devices for _, ts, label, score, _ in d.evaluations if ts // DAY >= cut_day]


def stderr_say(prefix: str) -> Say:
    def say(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return say


def pseudonyms(key: str, users: Sequence[str]) -> dict[str, str]:
    """user pseudonym → raw user id, to join the cloud's logs (pseudonymous) with the dataset."""
    return {user_pseudonym(key, u): u for u in users}
