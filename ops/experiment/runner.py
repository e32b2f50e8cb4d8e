"""The A/B experiment through the real pipeline: data split, one namespace per seed, read-back of every arm."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.features import FeatureSpace, extends_sequence
from core.privacy import user_pseudonym
from ops.replay.publish import DAY, DayPlan, plan_days
from streams.schemas import BatchRecord, BehaviourEvent, MatchResult
from streams.settings import Settings

if TYPE_CHECKING:
    from ops.experiment.devices import DeviceExport

log = logging.getLogger(__name__)

Say = Callable[[str], None]

# synthetic "where the premise holds": strong group taste, few samples per user, and exposure that
# follows taste, so the behaviour sequence (the matching feature) says which group a user is in.
# The global model sees the groups too (profiles follow them): little headroom is left.
SYNTHETIC_DEFAULTS: dict[str, Any] = {"n_users": 400, "n_groups": 8, "heterogeneity": 0.9,
                                      "events_per_user": (6, 30), "days": 14, "exposure_bias": 0.8}
# "drift", built for the premise: hidden groups (profiles are noise, exposure is uniform, so neither
# reveals taste), every group's taste drawn anew on day 5 (inside the history: history-only tuning
# sees a change) and on day 10 (the cut: the history-trained global model is stale by construction),
# users active on most days with 5-15 events a day over 10 live days.
DRIFT: dict[str, Any] = {"n_users": 600, "n_groups": 8, "heterogeneity": 0.9, "days": 20, "change_days": (5, 10),
                         "events_per_day": (5, 15), "activity": (8.0, 1.5), "exposure_bias": 0.0,
                         "profile_noise": 1.0, "ctr": 0.25}
SCENARIOS: dict[str, dict[str, Any]] = {"default": SYNTHETIC_DEFAULTS, "drift": DRIFT}
# Device recipes: "paper" is the paper's Algorithms 1-3 as the settings' defaults give them;
# "tuned" holds the choices `coda experiment --tune` made on history-only validation
# (docs/experiments.md shows that run); either can be asked for on any dataset.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    # chosen on the drift scenario's history-only split (days 0-4 pool, 5-9 validation; the test
    # days 10-19 unread): the signed-clicks user vector, the outcome-aware classifier, five passes
    # of Algorithm 3 judged per pass, a filter that drops only what its classifier finds clearly
    # unlike the user (σ 0.02) and spends 2 % of the matched samples, not a third, as its negatives
    # (the classifier's scores barely know a sample's source here, so the rule keeps preferring a
    # filter that drops less), a behaviour sequence of the user's clicks instead of every exposure,
    # and training that stops after two rejected passes in a row — ΔGAUC coda − M0 +0.096 against
    # −0.012 for the paper (docs/experiments/drift-tuning/)
    "tuned": {"match_feature": "clicks", "classifier_input": "outcome", "gate": "epoch", "train_epochs": 5,
              "sigma": 0.02, "classifier_share": 0.02, "sequence_actions": "clicks", "train_patience": 2},
}
PAPER_SIGMA = 0.2
# the recipe a scenario runs unless told: tuned where it was chosen (on that scenario's history)
DEFAULT_RECIPE = {"drift": "tuned"}
SCENARIO_HISTORY_SHARE = {"default": 0.6, "drift": 0.5}  # drift: the cut falls on its second change
# K per dataset: the paper's 100 for MovieLens; on the synthetic data K must stay below a group's
# size (400 users / 8 groups = 50), or even a perfect matcher fills K with other groups
DEFAULT_K = {"movielens-100k": 100, "synthetic": 20, "instacart": 100}


@dataclass(frozen=True)
class Params:
    """Everything that defines an experiment run (recorded in results.json)."""

    dataset: str = "movielens-100k"
    scenario: str = "default"  # synthetic only: a key of SCENARIOS
    seeds: tuple[int, ...] = (0, 1, 2)
    k: int = 100
    sigma: float | None = None  # filter threshold σ; None: the recipe's (the paper's 0.2 unless it says)
    users: int | None = None  # keep this many users (deterministic by hash); None: all
    history_share: float = 0.6  # first share of event time: the cloud's pool; the rest is live
    live_days: int | None = None  # only the first n live days (quick runs); None: all
    global_seed: int = 0  # the global model is the same in every seed: seeds vary arms and devices
    top_n: int = 3  # online analogue: each user's top-n scored items of a day are "shown"
    bootstrap: int = 1000
    synthetic: dict[str, Any] | None = None  # None: the scenario's generator options
    index_url: str = ""  # "": the settings' index
    recipe: str = "paper"  # device training and matching settings: a key of RECIPES
    # how long an idle consumer waits in a fetch: with three pipelines on two cores, 20 ms made the
    # broker answering empty fetches the busiest process; it changes latency, not results
    fetch_max_wait_ms: int = 100
    # a day barrier sees the cloud's day end only once the workers commit it: at the default 1 s a
    # MovieLens live day waited ~0.5 s a barrier for commits alone (idle workers commit nothing)
    commit_interval_s: float = 0.2
    # partitions of the co-partitioned flow topics in each seed's namespace: a seed runs one worker
    # and one fleet, so topics.yaml's eight only multiplied what every fetch covers and what every
    # pull fans out to (a drift seed's worker and broker spent ~26 % more CPU); results are the same
    partitions: int = 2
    # devices a seed's fleet handles at once: the pipelines share two cores, so CPU sets the pace, and
    # at the default 4 each device's SQLite thread queues for the GIL behind another device's torch job
    # (400-device fleet cycles: SQLite threads 2.06 vs 0.17 CPU s; 7 % more CPU a device); results the same
    fleet_concurrency: int = 1

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe {self.recipe!r}: expected one of {', '.join(RECIPES)}")
        if self.sigma is None:  # frozen: resolved once, so results.json records the σ that ran
            object.__setattr__(self, "sigma", RECIPES[self.recipe].get("sigma", PAPER_SIGMA))

    def settings_for(self, root: Settings, namespace: str, seed: int) -> Settings:
        from ops.stack.namespace import in_namespace

        scoped = in_namespace(root, namespace).replace(
            pull_trigger="day_end", arm_mode="buckets", arm_seed=seed, k_neighbours=self.k,
            fetch_max_wait_ms=self.fetch_max_wait_ms, commit_interval_s=self.commit_interval_s,
            fleet_concurrency=self.fleet_concurrency,
            **{**RECIPES[self.recipe], "sigma": self.sigma})
        return scoped.replace(index_url=self.index_url) if self.index_url else scoped

    def recorded_settings(self, root: Settings) -> dict[str, dict[str, Any]]:
        """The matching and device settings the runs used (recipe, σ and environment overrides applied)."""
        ran = self.settings_for(root, "experiment", self.seeds[0])
        return {name: ran.section(name) for name in ("matching", "device")}

    def generator_options(self) -> dict[str, Any]:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {', '.join(SCENARIOS)}")
        return dict(self.synthetic if self.synthetic is not None else SCENARIOS[self.scenario])


@dataclass
class Split:
    """The data, cut by a global time split: history days feed the cloud's pool, live days the devices."""

    name: str
    events: list[dict[str, Any]]
    groups: dict[str, int] | None
    cut_day: int  # first live day
    history: list[DayPlan]
    live: list[DayPlan]
    # the generator's (true, before-the-last-change) click probability per (user_id, ts); None on real data
    truth: dict[tuple[str, int], tuple[float, float]] | None = None

    @property
    def live_users(self) -> set[str]:
        return {e.user_id for p in self.live for _, evs in p.by_device for e in evs}

    def past(self, space: FeatureSpace) -> list[tuple[str, list[BehaviourEvent]]]:
        """Each live device's last `space.seq_len` history events that join a behaviour sequence (all
        such a sequence can hold): a device starts the live days with its own user's behaviour
        history, as the cloud's samples do."""
        live = {device for p in self.live for device, _ in p.by_device}
        before: dict[str, list[BehaviourEvent]] = {}
        for plan in self.history:
            for device, events in plan.by_device:
                if device in live:
                    before.setdefault(device, []).extend(e for e in events if extends_sequence(e.action, e.label, space))
        return [(device, sorted(evs, key=lambda e: (e.ts, e.item_id, e.action))[-space.seq_len:])
                for device, evs in sorted(before.items()) if evs]


def reports_day(n: int, days: int) -> bool:
    """Whether a replay of `days` live days says so after its `n`-th (1-based): about ten times, and the last."""
    return n % max(1, days // 10) == 0 or n == days


def _keep_users(events: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """A deterministic subset of `n` users (by a hash of the id, not by activity)."""
    users = sorted({e["user_id"] for e in events}, key=lambda u: hashlib.blake2b(u.encode()).hexdigest())
    kept = set(users[:n])
    return [e for e in events if e["user_id"] in kept]


def prepare(params: Params) -> Split:
    """Load the dataset and cut it at `history_share` of its event-time span (whole days)."""
    from ops.datasets import load_dataset

    if params.dataset == "synthetic":
        options = params.generator_options()
        if params.users:
            options["n_users"] = params.users
        data = load_dataset("synthetic", seed=0, **options)
        events = data.events
    elif params.scenario != "default":
        raise ValueError(f"--scenario {params.scenario} needs --dataset synthetic")
    else:
        data = load_dataset(params.dataset)
        events = _keep_users(data.events, params.users) if params.users else data.events
    plans = plan_days(events)
    first, last = plans[0].day, plans[-1].day
    cut_day = first + max(1, round((last - first + 1) * params.history_share))
    history = [p for p in plans if p.day < cut_day]
    live = [p for p in plans if p.day >= cut_day][: params.live_days]
    if not history or not live:
        raise ValueError(f"history share {params.history_share} leaves no history or no live days")
    name = params.dataset if params.scenario == "default" else f"{params.dataset} ({params.scenario})"
    return Split(name, events, data.groups, cut_day, history, live, data.meta.get("truth"))


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
    from ops.replay.publish import Publisher
    from ops.stack.pipeline import Processes
    from streams.kafka import bootstrap_servers, ensure_topics
    from streams.topics import load_topics, write_flow_partitions

    s = params.settings_for(root, namespace, seed).replace(bootstrap=bootstrap_servers(root))
    s = s.replace(topics_file=write_flow_partitions(s.topics_file, params.partitions, s.state_dir / "topics.yaml"))
    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    procs = Processes(s)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        procs.spawn("worker", "0")
        async with Publisher(s, topics) as pub:
            model = await _pool(s, topics, split, params, pub, procs, timings)
            say(f"seed {seed}: global model {model['version']} (holdout AUC {model['holdout_auc']})")
            procs.spawn("fleet", "0")
            await _live(s, topics, split, seed, pub, procs, say, bar, timings)
    finally:
        procs.stop()
    run = await _read_back(s, topics, seed, model, timings)
    timings["total_s"] = time.monotonic() - t0
    if not keep_state:
        shutil.rmtree(s.state_dir, ignore_errors=True)
    return run


async def _pool(s: Settings, topics: Any, split: Split, params: Params, pub: Any, procs: Any,
                timings: dict[str, float]) -> dict[str, Any]:
    """History days up the tunnel into the cloud's pool, then the global model from it."""
    from agents.globalmodel import train_and_publish
    from ops.stack.pipeline import barrier

    t0 = time.monotonic()
    for plan in split.history:  # the pool needs no day ticks: no device pulls before the split
        await pub.up(plan)
    await barrier(s, topics, 1, False, procs)
    timings["history_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    model = await train_and_publish(s, split.history[-1].day, epochs=2, seed=params.global_seed)
    timings["global_model_s"] = time.monotonic() - t1
    return model


async def _live(s: Settings, topics: Any, split: Split, seed: int, pub: Any, procs: Any, say: Say, bar: bool,
                timings: dict[str, float]) -> None:
    """Live days as device actions: publish, barrier, day-end ticks (pulls), barrier."""
    from ops.replay.publish import Progress

    t0 = time.monotonic()
    progress = Progress(sum(p.events for p in split.live), f"seed {seed} live", force=bar)
    # where a live day goes, summed over the days: publishing, the cloud's day, the devices' day
    async with DayBarrier(s, topics, procs) as quiet:
        await pub.past(split.past(s.features))
        for n, plan in enumerate(split.live, 1):
            with timed(timings, "live_publish_s"):
                await pub.actions(plan)
            with timed(timings, "live_cloud_s"):
                await quiet.wait()  # the cloud has the whole day before anyone pulls
            with timed(timings, "live_publish_s"):
                await pub.day_end("samples", plan.day)
                await pub.day_end("actions", plan.day)
            with timed(timings, "live_devices_s"):
                await quiet.wait()  # pulls answered, filtered, trained: the next day may start
            progress.advance(plan.events, f"day {n}/{len(split.live)}")
            if not bar and reports_day(n, len(split.live)):
                say(f"seed {seed}: live day {n}/{len(split.live)} ({time.monotonic() - t0:.0f} s)")
        timings["live_barrier_polls"] = quiet.polls
    progress.close()
    timings["live_s"] = time.monotonic() - t0


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str, ndigits: int | None = None) -> Iterator[None]:
    """Add the block's wall time to `phases[name]` (rounded to `ndigits`, if given, as it adds up)."""
    started = time.monotonic()
    try:
        yield
    finally:
        total = phases.get(name, 0.0) + time.monotonic() - started
        phases[name] = total if ndigits is None else round(total, ndigits)


async def _read_back(s: Settings, topics: Any, seed: int, model: dict[str, Any],
                     timings: dict[str, float]) -> SeedRun:
    """The devices' databases and the cloud's logs, once every process has stopped."""
    from ops.experiment.devices import read_devices
    from streams.topicio import read_records

    devices = await read_devices(s.state_dir)
    batches = [r for r in await read_records(s, topics.name("batch-log")) if isinstance(r, BatchRecord)]
    matches = [r for r in await read_records(s, topics.name("matches")) if isinstance(r, MatchResult)]
    return SeedRun(seed, s.topic_prefix, devices, batches, matches, model, timings, _fleet_stats(s),
                   s.pseudonym_key)


class DayBarrier:
    """ops.stack.pipeline.barrier for a whole replay, cheaper per poll: same rule, lighter on the broker.

    The probe stays open for the replay instead of one per wait, and a poll first compares
    committed offsets with the broker's *reported* end offsets from a long-lived client (one
    ListOffsets request). Tansu reports at most the true end, so any group behind those is
    surely busy; only when none is does the poll pay for the exact check (a fresh reader that
    fetches every partition's last batch).
    """

    def __init__(self, settings: Settings, topics: Any, procs: Any, poll_s: float = 0.15,
                 busy_poll_max_s: float = 0.3) -> None:
        from ops.stack.pipeline import subscriptions
        from streams.kafka import consumer
        from streams.topicio import LagProbe

        self.procs, self.poll_s, self.busy_poll_max_s = procs, poll_s, busy_poll_max_s
        self.polls = 0  # over the replay: what the waits cost the broker
        self.probe = LagProbe(settings, subscriptions(settings, topics, 1, True))
        self._ends = consumer(settings, enable_auto_commit=False)
        self._parts: list[Any] = []

    async def __aenter__(self) -> DayBarrier:
        from aiokafka import TopicPartition

        from streams.internals import refresh_metadata

        await self.probe.__aenter__()
        await self._ends.start()
        await refresh_metadata(self._ends)
        self._parts = [TopicPartition(t, p) for t in self.probe.topics
                       for p in sorted(self._ends.partitions_for_topic(t) or ())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ends.stop()
        await self.probe.__aexit__(*exc)

    async def _poll(self) -> tuple[bool, int]:
        """(some group is behind the reported ends, the sum of every group's committed offsets)."""
        reported = await self._ends.end_offsets(self._parts)
        behind, progress = False, 0
        for group, names in self.probe.subscriptions.items():
            mine = {tp for tp in reported if tp.topic in names}
            found = await self.probe.committed(group, mine)
            behind = behind or any(reported[tp] > max(found[tp], 0) for tp in mine)
            progress += sum(max(found[tp], 0) for tp in mine)
        return behind, progress

    async def wait(self, stalled_s: float = 900, stable_polls: int = 2) -> None:
        """Until every group has had zero lag for `stable_polls` polls in a row.

        Raises when no group commits anything for `stalled_s`: a hung consumer, not a slow day (a
        loaded machine once took more than 15 minutes over one day's training and pulls).
        """
        last_progress, since = -1, time.monotonic()
        quiet, delay = 0, self.poll_s
        while quiet < stable_polls:
            self.procs.check()
            self.polls += 1
            behind, progress = await self._poll()
            if progress != last_progress:
                last_progress, since = progress, time.monotonic()
            elif time.monotonic() - since > stalled_s:
                raise TimeoutError(f"namespace not quiet: no consumer group committed for {stalled_s:.0f} s")
            busy = behind or await self.probe.lag() > 0
            quiet = 0 if busy else quiet + 1
            # a poll costs the broker a request per group: back off while busy, but not far — the end
            # is seen up to busy_poll_max_s late, and at 1 s that was ~0.5 s a barrier, a fifth of a
            # MovieLens live day; confirm quiet at full speed
            delay = min(2 * delay, self.busy_poll_max_s) if busy else self.poll_s
            await asyncio.sleep(delay)


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
    from ops.stack import broker as stack
    from streams.kafka import stack_file
    from streams.topics import load_topics

    started = False
    if root.embedded and stack.StackState.running(stack_file(root)) is None:
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
    sample_id: str = ""  # the scored event's sample id: joins arms, references and engines event by event


def eval_rows(seed: int, devices: Sequence[DeviceExport], cut_day: int) -> list[EvalRow]:
    return [EvalRow(seed, d.arm, d.user_id, ts // DAY - cut_day, ts, label, score, sid)
            for d in devices for sid, ts, label, score, _ in d.evaluations if ts // DAY >= cut_day]


def stderr_say(prefix: str) -> Say:
    def say(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return say


def pseudonyms(key: str, users: Sequence[str]) -> dict[str, str]:
    """user pseudonym → raw user id, to join the cloud's logs (pseudonymous) with the dataset."""
    return {user_pseudonym(key, u): u for u in users}
