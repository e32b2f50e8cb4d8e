"""Offline reference: the experiment's arms in one batch process, from the core code — no broker, no SQLite.

It replays the same split day by day and applies, in plain Python, the rules the streaming
system spreads over agents and devices: the cloud's pool, incremental user means and exact
KNN (Algorithm 1, with the match cache the end-of-day re-match fills), each neighbour's newest
unserved in-window samples merged in rank order into batches under the daily quota; and on
each device progressive evaluation, the lifecycle, Algorithm 2 (or the arm's control) and
Algorithm 3 with the same seeds. What it leaves out is the transport: message order across
devices, redelivery, and the HNSW index (run the stream with `exact://` to compare like with like).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from agents.index import UserPoint
from agents.index.exact import ExactIndex
from core import lifecycle
from core.arms import Arm, device_arm, device_seed, select_kept
from core.batching import DailyQuota, chunk
from core.features import History, event_to_sample
from core.globalmodel import train_global
from core.lifecycle import OutsideRole, Row
from core.matching import merge_answers, most_recent_unserved, per_neighbour_ask, window_start_ts
from core.models import DIN, relative_change
from core.personalize import limit_training
from core.privacy import device_pseudonym, user_pseudonym
from core.sample import DAY, SAMPLE_ACTIONS, Sample
from core.training import TrainConfig, model_for_space, predict, train_gated
from core.vectors import UserAccumulator, absorb
from device.record import SEEN_ID_CHARS
from device.torchconfig import configure_torch, device_train_config
from ops.experiment.probes import FilterProbe
from ops.experiment.runner import EvalRow, Split, reports_day
from ops.replay.publish import DayPlan
from streams.schemas import BehaviourEvent
from streams.settings import Settings

log = logging.getLogger(__name__)


def _fields(e: BehaviourEvent) -> dict[str, Any]:
    return {"ts": e.ts, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action,
            "profile": e.profile, "label": e.label}


def _order(events: Sequence[BehaviourEvent]) -> list[BehaviourEvent]:
    return sorted(events, key=lambda e: (e.ts, e.item_id, e.action))


# --------------------------------------------------------------------------- the cloud
@dataclass
class _Served:
    ids: dict[str, int] = field(default_factory=dict)  # sample id → ts

    def since(self, ts: int) -> dict[str, int]:
        return {i: t for i, t in self.ids.items() if t >= ts}


class Cloud:
    """Pool, user means, exact KNN with the match cache, neighbour answers, assembly and quotas."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.space = s.features
        self.histories: dict[str, tuple[History, set[str]]] = {}
        self.users: dict[str, UserAccumulator] = {}
        self.index = ExactIndex(self.space.tag_buckets)
        self.pool: dict[str, Sample] = {}
        self.cache: dict[str, dict[int, list[str]]] = {}
        self.matches: list[tuple[str, list[str]]] = []  # every KNN result, as the `matches` topic logs them
        self.served: dict[tuple[str, str], _Served] = {}
        self.sent: dict[str, _Served] = {}
        self.quota: dict[str, DailyQuota] = {}
        self.batch_log: list[tuple[str, str, list[str], list[str]]] = []  # (device, user, ids, owners)

    def ingest_envelope(self, events: Sequence[BehaviourEvent]) -> None:
        """An up-tunnel envelope: ingest splits it by user, as agents/ingest.py does."""
        by_user: dict[str, list[BehaviourEvent]] = {}
        for e in events:
            by_user.setdefault(e.user_id, []).append(e)
        for user_id, evs in by_user.items():
            self.ingest(user_id, evs)

    def ingest(self, user_id: str, events: Sequence[BehaviourEvent]) -> None:
        """An up-tunnel envelope of one user's day: samples with the cloud's history, then the mean."""
        user = user_pseudonym(self.s.pseudonym_key, user_id)
        history, seen = self.histories.get(user, (History(), set()))
        samples = []
        for e in _order(events):
            sample, extended = event_to_sample(user, _fields(e), history, self.space)
            if sample.sample_id in seen:
                continue
            seen.add(sample.sample_id)
            history = extended
            if e.action in SAMPLE_ACTIONS:
                samples.append(sample)
        self.histories[user] = (history, seen)
        if not samples:
            return
        acc = self.users.setdefault(user, UserAccumulator())
        fresh = absorb(acc, samples, self.space, self.s.match_window_days)  # as the user-vector agent
        self.pool.update((x.sample_id, x) for x in fresh)
        if fresh:
            self.index.upsert([UserPoint(user, acc.mean, acc.count, acc.last_ts)])

    def knn(self, user: str, day: int) -> list[str]:
        acc = self.users.get(user)
        if acc is None or acc.count == 0:
            return []
        found = self.index.search(acc.mean, self.s.k_neighbours, exclude_user=user,
                                  min_last_ts=window_start_ts(day, self.s.match_window_days))
        return [n.user for n in found]

    def remember(self, user: str, day: int, neighbours: list[str]) -> None:
        self.matches.append((user, neighbours))
        days = self.cache.setdefault(user, {})
        days[day] = neighbours
        for d in [d for d in days if d <= day - self.s.match_window_days]:
            del days[d]

    def rematch(self, day: int) -> None:
        """End of `day`: users active that day are matched again for tomorrow (agents/vectors.py)."""
        for user, acc in self.users.items():
            if acc.last_ts // DAY == day:
                self.remember(user, day + 1, self.knn(user, day + 1))

    def pull(self, device: str, user_id: str, day: int, max_batches: int) -> tuple[list[list[Sample]], str]:
        """A device's pull: its batches, and the notice that follows them ("" if none)."""
        s = self.s
        user = user_pseudonym(s.pseudonym_key, user_id)
        quota = self.quota.get(device, DailyQuota()).on(day)
        remaining = min(quota.remaining(s.batches_per_day), max_batches)
        if remaining <= 0:
            return [], "quota"
        neighbours = self.cache.get(user, {}).get(day)
        if neighbours is None:
            neighbours = self.knn(user, day)
            self.remember(user, day, neighbours)
        since = window_start_ts(day, s.match_window_days)
        by_owner = self._answers(device, neighbours, per_neighbour_ask(remaining * s.batch_size, len(neighbours)),
                                 since)
        sent = self.sent.setdefault(device, _Served())
        sent.ids = sent.since(since)
        merged = merge_answers(by_owner, neighbours, sent.ids, remaining * s.batch_max)
        batches = chunk(merged, s.batch_size, s.batch_max)[:remaining]
        for batch in batches:
            sent.ids.update((x.sample_id, x.ts) for x in batch)
            self.batch_log.append((device, user, [x.sample_id for x in batch], [x.user for x in batch]))
        quota = quota.spend(len(batches))
        self.quota[device] = quota
        if not batches:
            return [], "exhausted"
        return batches, "quota" if quota.remaining(s.batches_per_day) == 0 else ""

    def _answers(self, device: str, neighbours: list[str], want: int, since: int) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {}
        for n in neighbours:
            acc = self.users.get(n)
            if acc is None:
                continue
            served = self.served.setdefault((device, n), _Served())
            served.ids = served.since(since)
            chosen = most_recent_unserved(acc.recent, set(served.ids), want, since)
            if chosen:
                served.ids.update((c.sample_id, c.ts) for c in chosen)
                out[n] = chosen
        return out


# --------------------------------------------------------------------------- a device
@dataclass
class _Outside:
    sample: Sample
    role: OutsideRole = OutsideRole.NEW
    score: float | None = None


@dataclass
class OfflineDevice:
    """The device's state as plain data, with the same triggers as device/device.py."""

    pseudonym: str
    device_id: str
    user_id: str
    arm: Arm
    model: dict[str, torch.Tensor] | None = None  # None: M0
    history: History = field(default_factory=History)
    seen: set[str] = field(default_factory=set)
    local: dict[str, Sample] = field(default_factory=dict)
    outside: dict[str, _Outside] = field(default_factory=dict)
    now_ts: int = 0
    day: int = -1
    used: int = 0
    stopped: bool = False
    filters: int = 0
    trains: int = 0
    trained_day: int = -1
    steps: tuple[int, int] = (0, 0)  # gated updates accepted, taken
    valid: list[tuple[float, float]] = field(default_factory=list)  # gate metric (before, after) per training
    kept_ids: list[str] = field(default_factory=list)


class Offline:
    """One seed of the experiment, in batch."""

    def __init__(self, s: Settings, global_model: DIN, cloud: Cloud, probe: FilterProbe | None = None) -> None:
        self.s = s
        self.probe = probe
        # Algorithm 2's classifier; a probe that decides replaces it with the hidden groups (tuning's ceiling)
        self.filter_model = probe.knows_groups if probe is not None and probe.decides else s.classifier_model
        self.space = s.features
        self.cloud = cloud
        self.m0 = global_model
        self.scratch = model_for_space(self.space)
        self.devices: dict[str, OfflineDevice] = {}
        self.rows: list[tuple[str, str, str, int, int, float]] = []  # (arm, user, sample id, ts, label, score)

    # ---- helpers
    def _seed(self, d: OfflineDevice, *parts: object) -> int:
        return device_seed(d.pseudonym, f"s{self.s.arm_seed}", *parts)

    def _module(self, d: OfflineDevice) -> DIN:
        self.scratch.load_state_dict(d.model if d.model is not None else self.m0.state_dict())
        return self.scratch

    def _split(self, d: OfflineDevice) -> lifecycle.LocalSplit[Sample]:
        ordered = sorted(d.local.values(), key=lambda x: (x.ts, x.sample_id))
        return lifecycle.split_local(ordered, d.now_ts, self.s.lifecycle_t_days, self.s.lifecycle_t2_days)

    def _expire(self, d: OfflineDevice) -> None:
        keep_from = lifecycle.cutoffs(d.now_ts, 0, self.s.lifecycle_t2_days).keep_from
        d.local = {k: v for k, v in d.local.items() if v.ts >= keep_from}

    def _outside(self, d: OfflineDevice, role: OutsideRole) -> list[Sample]:
        return sorted((o.sample for o in d.outside.values() if o.role == role), key=lambda x: (x.ts, x.sample_id))

    # ---- the user's side
    def _device(self, device_id: str, user_id: str) -> OfflineDevice:
        pseudonym = device_pseudonym(self.s.pseudonym_key, device_id)
        d = self.devices.get(pseudonym)
        if d is None:
            arm = device_arm(self.s.arm_mode, self.s.arm_seed, pseudonym)
            d = self.devices[pseudonym] = OfflineDevice(pseudonym, device_id, user_id, arm)
        return d

    def _extend(self, d: OfflineDevice, events: Sequence[BehaviourEvent]) -> list[Sample]:
        samples = []
        for e in _order(events):
            sample, extended = event_to_sample(e.user_id, _fields(e), d.history, self.space)
            if sample.sample_id[:SEEN_ID_CHARS] in d.seen:
                continue
            d.seen.add(sample.sample_id[:SEEN_ID_CHARS])
            d.history = extended
            if e.action in SAMPLE_ACTIONS:
                samples.append(sample)
        return samples

    def past(self, device_id: str, events: Sequence[BehaviourEvent]) -> None:
        """As Device.on_past: the user's earlier behaviour builds the history, nothing else."""
        self._extend(self._device(device_id, events[0].user_id), events)

    def actions(self, device_id: str, events: Sequence[BehaviourEvent]) -> None:
        d = self._device(device_id, events[0].user_id)
        samples = self._extend(d, events)
        if samples:
            scores = predict(self._module(d), samples, self.space)
            self.rows += [(d.arm.name, d.user_id, x.sample_id, x.ts, x.label, float(p))
                          for x, p in zip(samples, scores.tolist(), strict=True)]
        d.now_ts = max(d.now_ts, max(e.ts for e in events))
        if d.now_ts // DAY > d.day >= 0:
            self._expire(d)
        if d.now_ts // DAY > d.day:
            d.day, d.used, d.stopped = d.now_ts // DAY, 0, False
        self._insert_local(d, samples)
        self.cloud.ingest_envelope(events)  # the device's up-tunnel report of the same events

    def _insert_local(self, d: OfflineDevice, samples: Sequence[Sample]) -> None:
        fresh = [x for x in samples if x.sample_id not in d.local]
        existing = [Row(x.sample_id, x.ts) for x in d.local.values()]
        drop = set(lifecycle.plan_insert(existing, [Row(x.sample_id, x.ts) for x in fresh],
                                         self.s.max_local_samples, lifecycle.cleanup_local))
        d.local = {k: v for k, v in d.local.items() if k not in drop}
        d.local.update((x.sample_id, x) for x in fresh if x.sample_id not in drop)

    # ---- end of day
    def day_end(self, day: int) -> None:
        self.cloud.rematch(day)
        for d in self.devices.values():
            active = d.day == day
            d.now_ts = max(d.now_ts, (day + 1) * DAY)  # the tick moves the clock before the batches come
            self._expire(d)
            if d.arm.trains_at_day_end(active):
                self._train(d)
            if active and d.arm.pulls:
                self._pull_cycle(d)

    def _pull_cycle(self, d: OfflineDevice) -> None:
        """Pull, take the batches, pull again while the quota allows, then the notice."""
        while not d.stopped and self.s.batches_per_day - d.used > 0:
            batches, notice = self.cloud.pull(d.pseudonym, d.user_id, d.day, self.s.batches_per_day - d.used)
            for n, batch in enumerate(batches):
                self._batch(d, batch, last=n == len(batches) - 1)
            if notice:
                self._notice(d)
                break

    def _batch(self, d: OfflineDevice, samples: list[Sample], last: bool) -> None:
        """As Device.on_batch: a mid-request batch is written after the train check, the last one before."""
        d.used += 1
        pending = any(o.role == OutsideRole.NEW for o in d.outside.values())
        if len(d.outside) + len(samples) > self.s.max_outside_samples and pending:
            self._filter(d)  # rank by real scores before forced cleanup strikes
        if last:
            self._insert_outside(d, samples)
            self._filter(d)
        if d.arm.trains_when_kept(self._kept(d), self.s.train_trigger):
            self._train(d)
        if not last:
            self._insert_outside(d, samples)

    def _notice(self, d: OfflineDevice) -> None:
        d.stopped = True
        self._filter(d)
        if d.arm.trains_on_notice(self._kept(d), trained_today=d.trained_day >= d.day):
            self._train(d)

    @staticmethod
    def _kept(d: OfflineDevice) -> int:
        return sum(1 for o in d.outside.values() if o.role == OutsideRole.KEPT)

    def _insert_outside(self, d: OfflineDevice, samples: Sequence[Sample]) -> None:
        fresh = [x for x in dict((x.sample_id, x) for x in samples).values() if x.sample_id not in d.outside]
        existing = [Row(k, o.sample.ts, o.score) for k, o in d.outside.items()]
        drop = set(lifecycle.plan_insert(existing, [Row(x.sample_id, x.ts) for x in fresh],
                                         self.s.max_outside_samples, lifecycle.cleanup_outside))
        d.outside = {k: o for k, o in d.outside.items() if k not in drop}
        d.outside.update((x.sample_id, _Outside(x)) for x in fresh if x.sample_id not in drop)

    # ---- Algorithm 2 and the controls
    def _filter(self, d: OfflineDevice) -> None:
        pending = self._outside(d, OutsideRole.NEW)
        if not pending:
            return
        local = self._split(d).classifier if d.arm.classifies else []
        observe = None if self.probe is None else partial(self.probe.observe, d.arm.name, local, pending)
        outcome = select_kept(d.arm, local, pending, self.space, self.s.sigma, self.s.classifier_share,
                              self._seed(d, "filter", d.filters), self._seed(d, "random", d.filters), observe,
                              self.filter_model)
        if outcome is None:  # nothing says "local" yet: the samples wait
            return
        for sid in outcome.delete:
            d.outside.pop(sid, None)
        for sid, score in outcome.keep.items():
            if sid in d.outside:
                d.outside[sid].role, d.outside[sid].score = OutsideRole.KEPT, score
        d.kept_ids += [sid[:SEEN_ID_CHARS] for sid in outcome.keep]
        d.filters += 1

    # ---- Algorithm 3
    def _train(self, d: OfflineDevice) -> None:
        split = self._split(d)
        if split.expired:
            self._expire(d)
        kept = self._outside(d, OutsideRole.KEPT)
        train_set, valid = [*split.train, *kept], split.validate
        if not valid or not train_set:
            return
        d.trained_day = d.day
        cfg = device_train_config(self.s, self._seed(d, "train", d.trains))
        res = train_gated(limit_training(self._module(d), self.s.personalize), train_set, valid, self.space, cfg)
        if res.total_steps > 0:
            for x in kept:
                d.outside.pop(x.sample_id, None)
        if res.accepted_steps > 0:
            d.model = {k: v.detach().clone() for k, v in self.scratch.state_dict().items()}
        d.trains += 1
        d.steps = (d.steps[0] + res.accepted_steps, d.steps[1] + res.total_steps)
        if res.total_steps and res.valid_auc_before is not None and res.valid_auc_after is not None:
            d.valid.append((res.valid_auc_before, res.valid_auc_after))

    def model_change(self, d: OfflineDevice) -> float:
        return relative_change(d.model, self.m0.state_dict()) if d.model is not None else 0.0


# --------------------------------------------------------------------------- a whole run
@dataclass
class OfflineRun:
    seed: int
    rows: list[EvalRow]
    kept: dict[str, list[str]]  # device pseudonym → kept outside sample ids (prefixes)
    arms: dict[str, str]  # device pseudonym → arm
    users: dict[str, str]  # device pseudonym → user id
    trains: dict[str, int]
    steps: dict[str, tuple[int, int]]  # device pseudonym → gated updates accepted, taken
    model_change: dict[str, float]  # device pseudonym → ‖M − M0‖ / ‖M0‖
    valid: dict[str, list[tuple[float, float]]]  # device pseudonym → gate metric (before, after) per training
    batch_log: list[tuple[str, str, list[str], list[str]]]  # (device, user pseudonym, sample ids, owners)
    matches: list[tuple[str, list[str]]]
    global_version: str
    global_auc: float | None


def history_pool(s: Settings, plans: Sequence[DayPlan]) -> Cloud:
    """The cloud after the history days came up the tunnel."""
    cloud = Cloud(s)
    for plan in plans:
        for _, events in plan.by_device:
            cloud.ingest_envelope(events)
    return cloud


def run_offline(split: Split, s: Settings, seed: int, global_seed: int = 0,
                progress: Callable[[str], None] | None = None, probe: FilterProbe | None = None) -> OfflineRun:
    """The arms of `s` (arm_mode="buckets", arm_seed=`seed`) on `split`, in batch; `probe` sees every filter run."""
    s = s.replace(arm_mode="buckets", arm_seed=seed)
    configure_torch(s.torch_threads)  # as the fleet: small ops on 2 threads cost ~20x the CPU under load
    cloud = history_pool(s, split.history)
    last = split.history[-1].day
    pool = [x for x in cloud.pool.values() if x.ts // DAY <= last]
    cfg = TrainConfig(lr=s.learning_rate, batch_size=256, epochs=2, seed=global_seed)  # as `coda cloud train-global`
    trained = train_global(pool, s.features, cfg)
    run = Offline(s, trained.model, cloud, probe)
    for device_id, events in split.past(s.features):
        run.past(device_id, events)
    for n, plan in enumerate(split.live):
        for device_id, events in plan.by_device:
            run.actions(device_id, events)
        run.day_end(plan.day)
        if progress and reports_day(n + 1, len(split.live)):
            progress(f"offline seed {seed}: day {n + 1}/{len(split.live)}")
    rows = [EvalRow(seed, arm, user, ts // DAY - split.cut_day, ts, label, score, sid)
            for arm, user, sid, ts, label, score in run.rows]
    devices = run.devices.values()
    return OfflineRun(seed, rows, {d.pseudonym: d.kept_ids for d in devices},
                      {d.pseudonym: d.arm.name for d in devices},
                      {d.pseudonym: d.user_id for d in devices}, {d.pseudonym: d.trains for d in devices},
                      {d.pseudonym: d.steps for d in devices}, {d.pseudonym: run.model_change(d) for d in devices},
                      {d.pseudonym: d.valid for d in devices},
                      cloud.batch_log, cloud.matches, trained.version, trained.holdout_auc)
