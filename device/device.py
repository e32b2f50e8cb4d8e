"""The virtual device: local samples, progressive validation, down-tunnel triggers, Algorithms 2–3, inference.

A `Device` holds only ids and a few counters; its samples and state live in its SQLite
database and its models in its model store, loaded when a message needs them. Everything a
fleet's devices share (settings, the database pool, where torch jobs run, a small cache of
loaded models, accounting) is the `Runtime`.

Triggers (paper section 4.4, docs/design.md):

- `on_actions`: each new event → a local sample; it is scored with the current model *before*
  it becomes a training sample (progressive validation, table `evaluations`); the events go
  up in one `UpEnvelope`; if today's quota allows and no request is open, a `PullRequest`.
- `on_batch`: validated, stored, then filtered (Algorithm 2) once every batch of its request
  is in — one classifier per ~300 matched samples instead of twelve per 25 (cheaper, and the
  classifier sees ~100 negatives instead of ~8). If storing would overflow the outside table,
  the pending samples are filtered first, so forced cleanup ranks real scores, not zeros.
  Filtered ≥ `train_trigger` → train; a complete request with quota left → pull again.
- `on_notice`: today's batches are over → filter what is pending, train if filtered samples wait.
- `train`: Algorithm 3 on local-train (t < age ≤ t') ∪ filtered, gated on local-validation
  (age ≤ t) only. While a device has no local samples older than t, it trains on filtered
  samples alone: its recent samples stay validation-only as the lifecycle says, so the gate
  keeps every local sample it has. Without validation samples no step can be judged, so
  training is skipped and the filtered samples wait.

The device's arm (core.arms) says whether it pulls, what the filter keeps and which of these
triggers train; the text above describes the CoDA arms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core import lifecycle
from core.arms import device_arm, device_seed, select_kept
from core.features import event_to_sample
from core.lifecycle import OutsideRole
from core.models import state_to_bytes
from core.personalize import limit_training
from core.privacy import device_pseudonym
from core.sample import DAY, Sample
from core.training import TrainConfig, predict, train_gated
from device.accounting import RoundRecord
from device.modelstore import ModelStore, Training
from device.outcomes import Outcome, Rejected, TrainOutcome
from device.record import KEPT_KEY, SEEN_ID_CHARS, STATE_KEY, DeviceRecord, event_fields
from device.runtime import Runtime
from device.storage import DB_FILE, DeviceStore, open_store
from device.torchconfig import device_train_config
from device.validation import validate_batch
from streams.schemas import (
    BehaviourEvent,
    DeviceActions,
    DevicePast,
    DownBatch,
    DownNotice,
    PullRequest,
    UpEnvelope,
)
from streams.settings import Settings

log = logging.getLogger(__name__)


def device_dir(state_dir: Path, pseudonym: str) -> Path:
    """Two-level fan-out so 10,000 device directories do not crowd one folder."""
    return state_dir / "devices" / pseudonym[:2] / pseudonym


class Device:
    """One virtual device. Message handlers serialise on the device's lock; `predict` does not."""

    def __init__(self, runtime: Runtime, pseudonym: str, device_id: str = "") -> None:
        self.rt = runtime
        self.pseudonym = pseudonym
        self.device_id = device_id
        self.dir = device_dir(runtime.settings.state_dir, pseudonym)
        self.models = ModelStore(self.dir, pseudonym)
        self.lock = asyncio.Lock()
        self._prepared = False
        self.last_day_end = -1
        self.arm = device_arm(runtime.settings.arm_mode, runtime.settings.arm_seed, pseudonym)
        # day-ends with work to do (a pull, local training, samples or batch ids to expire); None:
        # unknown, because the database predates this process — then every day-end opens it
        self._due: set[int] | None = None

    def __repr__(self) -> str:
        return f"Device({self.pseudonym})"

    @property
    def s(self) -> Settings:
        return self.rt.settings

    async def prepare(self) -> None:
        """First touch in this process: repair the model files, create M0 if new."""
        if self._prepared:
            return
        if self._due is None and not (self.dir / DB_FILE).exists():
            self._due = set()  # a new device: this process sees its whole life
        self.dir.mkdir(parents=True, exist_ok=True)
        self.models.recover()
        self.models.ensure_initial(self.rt.initial, self.rt.initial_path)
        self._prepared = True

    def _store(self) -> Any:
        return open_store(self.rt.pool, self.dir, self.rt.limits, self.pseudonym)

    async def _load(self, store: DeviceStore) -> DeviceRecord:
        st = DeviceRecord.from_plain(await store.get_state(STATE_KEY))
        if self.device_id and not st.device_id:
            st.device_id = self.device_id
        self.device_id = self.device_id or st.device_id
        st.arm = self.arm.name
        return st

    def _wrong_device(self, detail: str) -> Outcome:
        return Outcome(rejected=Rejected(self.pseudonym, "wrong_device", detail))

    def _seed(self, *parts: object) -> int:
        if self.s.arm_mode == "buckets":  # experiment seeds also vary the device's own randomness
            return device_seed(self.pseudonym, f"s{self.s.arm_seed}", *parts)
        return device_seed(self.pseudonym, *parts)

    async def _log_kept(self, store: DeviceStore, kept: Sequence[str]) -> None:
        """Experiments: remember which outside samples were kept. Owners are not on the wire, so an
        analysis joins these ids with the cloud's batch log to learn whose samples they were."""
        if self.s.arm_mode != "buckets" or not kept:
            return
        ids: list[str] = await store.get_state(KEPT_KEY, [])
        ids.extend(sid[:SEEN_ID_CHARS] for sid in kept)
        store.set_state(KEPT_KEY, ids)

    # ---- the user's side
    async def on_actions(self, actions: DeviceActions) -> Outcome:
        """New behaviour: local samples (scored first), an UpEnvelope, maybe a PullRequest."""
        device_id, events = actions.device_id, actions.events
        expected = device_pseudonym(self.s.pseudonym_key, device_id)
        if expected != self.pseudonym:
            return self._wrong_device(f"actions of device pseudonym {expected}")
        out = Outcome()
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                st.device_id = st.device_id or device_id
                self.device_id = st.device_id
                samples, fresh = st.extend(events, self.rt.space)
                if samples:
                    await self._evaluate(store, samples)
                    store.add_local(samples)
                out.samples = len(samples)
                if events:
                    st.now_ts = max(st.now_ts, max(e.ts for e in events))
                    if st.now_ts // DAY > st.day >= 0:  # a new day: expire as DayEnd would
                        await store.expire_local(st.now_ts, self.s.lifecycle_t2_days)
                    st.roll_day(st.now_ts // DAY)
                    self._mark_due(st.day)
                    # all events, also on redelivery: ingest drops the ones it has (sample ids)
                    out.up.extend(self._envelopes(st, events))
                pull = self._pull(st, resend=fresh == 0) if self.s.pull_trigger == "events" else None
                if pull is not None:
                    out.up.append(pull)
                store.set_state(STATE_KEY, st.to_plain())
        return out

    async def on_past(self, past: DevicePast) -> Outcome:
        """The user's behaviour before the replay: it extends the history the samples' sequences come from."""
        expected = device_pseudonym(self.s.pseudonym_key, past.device_id)
        if expected != self.pseudonym:
            return self._wrong_device(f"past of device pseudonym {expected}")
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                st.device_id = st.device_id or past.device_id
                self.device_id = st.device_id
                st.extend(past.events, self.rt.space)  # history and seen ids only: these are not samples
                store.set_state(STATE_KEY, st.to_plain())
        return Outcome()

    def _mark_due(self, day: int) -> None:
        """An active day: its own day-end pulls (or trains), t' days later its samples expire, a day
        after that its batch ids are forgotten."""
        if self._due is not None:
            t2 = self.s.lifecycle_t2_days
            self._due.update((day, day + t2, day + t2 + 1))

    def _envelopes(self, st: DeviceRecord, events: Sequence[BehaviourEvent]) -> list[UpEnvelope]:
        """The up-tunnel report, split so no envelope exceeds the cloud's per-envelope event limit."""
        size = max(1, self.s.max_events_per_envelope)
        return [
            UpEnvelope(st.device_id, list(events[i : i + size]), st.now_ts)
            for i in range(0, len(events), size)
        ]

    async def _evaluate(self, store: DeviceStore, samples: list[Sample]) -> None:
        """Progressive validation: the current model scores each sample before it can train on it."""

        def job() -> tuple[np.ndarray, str]:
            model = self.models.current()
            return predict(self.rt.models.module(model), samples, self.rt.space), model.version

        (scores, version), _, _ = await self.rt.run(job)
        for s, p in zip(samples, scores.tolist(), strict=True):
            store.add_evaluation(s.sample_id, s.ts, s.label, p, version)

    def _pull(self, st: DeviceRecord, resend: bool = False) -> PullRequest | None:
        """A pull for the rest of today's quota, unless stopped, exhausted or one is open.

        `resend`: a redelivered message re-sends an open request no batch has answered yet
        (its first send may be lost with a crash); the cloud ignores a request id it holds.
        """
        if not self.arm.pulls:  # cloud and local arms never ask the cloud for samples
            return None
        remaining = self.s.batches_per_day - st.used
        if st.stopped or remaining <= 0 or not (st.user_id and st.device_id) or st.day < 0:
            return None
        if st.request_open:
            if not (resend and st.request_of == 0):
                return None
        else:
            st.pulls += 1
            st.request, st.request_of, st.request_got = f"{self.pseudonym[:16]}-{st.day}-{st.pulls}", 0, []
        # dated inside the quota day it asks for: after a day-end tick the clock is already
        # tomorrow, and a follow-up pull must not spend tomorrow's quota tonight
        ts = min(max(st.now_ts, st.day * DAY), st.day * DAY + DAY - 1)
        return PullRequest(st.device_id, st.user_id, ts, st.request, remaining)

    # ---- the down-tunnel
    async def on_batch(self, batch: DownBatch) -> Outcome:
        """Store a batch of matched samples; filter, train and pull as the triggers say."""
        if batch.device != self.pseudonym:
            return self._wrong_device(f"batch {batch.batch_id} is addressed to {batch.device}")
        out = Outcome()
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                if await store.batch_status(batch.batch_id) is not None:
                    out.duplicate = True
                    return out
                st = await self._load(store)
                st.roll_day(batch.day)
                st.now_ts = max(st.now_ts, batch.day * DAY)
                if batch.day == st.day:
                    st.used += 1
                ours = batch.request_id == st.request and bool(st.request)
                if ours:
                    st.request_of = batch.of
                    st.request_got.append(batch.batch_id)
                try:
                    samples = validate_batch(self.pseudonym, batch, self.s, self.rt.space)
                except Rejected as rej:
                    out.rejected = rej
                    store.add_batch(
                        batch.batch_id,
                        batch.request_id,
                        batch.day,
                        0,
                        len(batch.payload),
                        f"rejected:{rej.reason}"[:64],
                    )
                    samples = []
                kept = await self._store_batch(store, st, batch, samples, out)
                if not ours or not st.request_open:  # the request's answer is complete
                    await store.flush()
                    out.filtered += await self._filter(store, st)
                    kept = await store.count_outside(OutsideRole.KEPT)
                if self.arm.trains_when_kept(kept, self.s.train_trigger):
                    out.trained = await self._train(store, st)
                if ours and not st.request_open:
                    pull = self._pull(st)
                    if pull is not None:
                        out.up.append(pull)
                store.set_state(STATE_KEY, st.to_plain())
        return out

    async def _store_batch(
        self, store: DeviceStore, st: DeviceRecord, batch: DownBatch, samples: list[Sample], out: Outcome
    ) -> int:
        """Buffer the samples (filtering first if they would overflow); returns the kept count."""
        counts = await store.outside_counts()
        kept = counts[OutsideRole.KEPT]
        if (
            samples
            and sum(counts.values()) + len(samples) > self.rt.limits.outside
            and counts[OutsideRole.NEW]
        ):
            out.filtered += await self._filter(store, st)  # rank by real scores before forced cleanup strikes
            kept = await store.count_outside(OutsideRole.KEPT)
        if samples:
            store.add_outside(samples, batch.request_id)
            store.add_batch(
                batch.batch_id, batch.request_id, batch.day, len(samples), len(batch.payload), "stored"
            )
            st.bytes_unfiltered += len(batch.payload)
            st.bytes_since_train += len(batch.payload)
            out.samples = len(samples)
        return kept

    async def on_notice(self, notice: DownNotice) -> Outcome:
        """Today's batches are over (exhausted / quota): stop pulling, train on what was filtered."""
        if notice.device != self.pseudonym:
            return self._wrong_device(
                f"notice for request {notice.request_id} is addressed to {notice.device}"
            )
        out = Outcome()
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                st.roll_day(notice.day)
                if notice.day == st.day:
                    st.stopped = True
                    st.request, st.request_of, st.request_got = "", 0, []
                out.filtered = await self._filter(store, st)
                kept = await store.count_outside(OutsideRole.KEPT)
                if self.arm.trains_on_notice(kept, trained_today=st.trained_day >= st.day):
                    out.trained = await self._train(store, st)
                store.set_state(STATE_KEY, st.to_plain())
        return out

    async def on_day_end(self, day: int) -> tuple[int, PullRequest | None]:
        """End of event-time day `day`: pull (if pulls wait for the tick), age the samples, expire old ones.

        Returns local samples deleted and the pull to send, if any.
        """
        if self.last_day_end >= day:
            return 0, None
        if self._due is not None and not any(d <= day for d in self._due):
            self.last_day_end = day  # nothing this day-end would change: leave the database closed
            return 0, None
        pull = None
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                if st.maintained_day >= day:
                    self.last_day_end = st.maintained_day
                    return 0, None
                if self.s.pull_trigger == "day_end" and st.day == day:
                    pull = self._pull(st)  # the day's pull, now that the cloud has the whole day
                active = st.day == day
                st.now_ts = max(st.now_ts, (day + 1) * DAY)
                expired = await store.expire_local(st.now_ts, self.s.lifecycle_t2_days)
                await store.forget_batches(day - self.s.lifecycle_t2_days)
                if self.arm.trains_at_day_end(active):  # the local arm's personalisation
                    await self._train(store, st)
                st.maintained_day = day
                store.set_state(STATE_KEY, st.to_plain())
        self.last_day_end = day
        if self._due is not None:
            self._due = {d for d in self._due if d > day}
        return expired, pull

    # ---- Algorithm 2
    async def _filter(self, store: DeviceStore, st: DeviceRecord) -> int:
        """Filter every not-yet-filtered outside sample against the local ones; returns how many were kept."""
        pending = await store.outside(OutsideRole.NEW)
        if not pending:
            return 0
        local: list[Sample] = []
        if self.arm.classifies:
            local = (
                await store.local_split(st.now_ts, self.s.lifecycle_t_days, self.s.lifecycle_t2_days)
            ).classifier
            if not local:
                return 0  # nothing says "local" yet: the samples wait (and count toward the limit)
        seeds = self._seed("filter", st.filters), self._seed("random", st.filters)
        args = (self.arm, local, pending, self.rt.space, self.s.sigma, self.s.classifier_share, *seeds)
        select = partial(select_kept, model=self.s.classifier_model)
        if self.arm.classifies:  # torch work: on the executor, timed
            outcome, wall, cpu = await self.rt.run(select, *args)
        else:
            outcome, wall, cpu = select(*args), 0.0, 0.0
        if outcome is None:  # select_kept's own "no local samples": ruled out above, before the executor
            return 0
        await store.apply_filter(outcome)
        await self._log_kept(store, list(outcome.keep))
        acc = self.rt.accounting
        sizes = (st.bytes_unfiltered, len(pending), len(outcome.keep), st.now_ts)
        acc.record(RoundRecord(self.pseudonym, "filter", wall, cpu, acc.rss_mb(), *sizes))
        st.filters += 1
        st.bytes_unfiltered = 0
        st.filter_ms_since_train += wall
        st.filter_cpu_ms_since_train += cpu
        return len(outcome.keep)

    # ---- Algorithm 3
    async def train(self) -> TrainOutcome:
        """Train now on whatever is there (e.g. the experiment driver's end of day)."""
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                await self._filter(store, st)
                outcome = await self._train(store, st)
                store.set_state(STATE_KEY, st.to_plain())
        return outcome

    async def _train(self, store: DeviceStore, st: DeviceRecord) -> TrainOutcome:
        s = self.s
        split = await store.local_split(st.now_ts, s.lifecycle_t_days, s.lifecycle_t2_days)
        if split.expired:
            await store.expire_local(st.now_ts, s.lifecycle_t2_days)
        kept = await store.outside(OutsideRole.KEPT)
        train_set, valid = [*split.train, *kept], split.validate
        if not valid or not train_set:
            return TrainOutcome(
                "no_validation" if not valid else "nothing_to_train", len(train_set), len(valid)
            )
        st.trained_day = st.day
        cfg = device_train_config(s, self._seed("train", st.trains))
        async with self.models.lock() as training:
            outcome, wall, cpu = await self.rt.run(self._train_job, training, train_set, valid, cfg)
        if outcome.total_steps > 0:
            await store.delete_outside(lifecycle.after_training(x.sample_id for x in kept))
        acc = self.rt.accounting
        rss = acc.rss_mb()
        sizes = (st.bytes_since_train, len(train_set), outcome.accepted_steps, st.now_ts)
        acc.record(RoundRecord(self.pseudonym, "train", wall, cpu, rss, *sizes))
        acc.record(RoundRecord(self.pseudonym, "round", wall + st.filter_ms_since_train,
                               cpu + st.filter_cpu_ms_since_train, rss, *sizes))
        st.trains += 1
        st.steps_accepted += outcome.accepted_steps
        st.steps_total += outcome.total_steps
        if outcome.total_steps and outcome.valid_before is not None and outcome.valid_after is not None:
            st.valid_log.append([outcome.valid_before, outcome.valid_after])
        st.version = outcome.version
        st.bytes_since_train = 0
        st.filter_ms_since_train = st.filter_cpu_ms_since_train = 0.0
        log.info(
            "device %s: trained on %d (+%d valid): %d/%d steps kept, model %s",
            self.pseudonym,
            len(train_set),
            len(valid),
            outcome.accepted_steps,
            outcome.total_steps,
            outcome.version,
        )
        return outcome

    def _train_job(
        self, training: Training, train_set: list[Sample], valid: list[Sample], cfg: TrainConfig
    ) -> TrainOutcome:
        """Executor thread: gated training from the current model; keep via M_buf or roll back."""
        base = training.base()
        module = limit_training(self.rt.models.scratch(base), self.s.personalize)
        res = train_gated(module, train_set, valid, self.rt.space, cfg)
        out = TrainOutcome(
            "",
            len(train_set),
            len(valid),
            res.accepted_steps,
            res.total_steps,
            res.valid_auc_before,
            res.valid_auc_after,
            base.version,
        )
        if res.accepted_steps > 0:
            training.write_buffer(state_to_bytes(module), base)
            out.version, out.kept = training.keep().version, True
        return out

    # ---- inference
    async def predict(self, candidates: Sequence[BehaviourEvent | Mapping[str, Any]]) -> np.ndarray:
        """CTR of each candidate given the user's current history, from M (M0 while M is locked)."""
        if not self._prepared:
            async with self.lock:
                await self.prepare()
        async with self._store() as store:
            st = DeviceRecord.from_plain(await store.get_state(STATE_KEY))
        history = st.history()
        samples = [
            event_to_sample(st.user_id, event_fields(c), history, self.rt.space)[0] for c in candidates
        ]

        def job() -> np.ndarray:
            return predict(self.rt.models.module(self.models.current()), samples, self.rt.space)

        scores, _, _ = await self.rt.run(job)
        return scores

    async def evaluations(self) -> list[tuple[str, int, int, float, str]]:
        """Progressive-validation rows: (sample_id, ts, label, score, model_version)."""
        async with self._store() as store:
            return await store.evaluations()

    def rounds(self) -> list[RoundRecord]:
        """This device's recent cost records (filter / train / round), oldest first."""
        return self.rt.accounting.for_device(self.pseudonym)

    async def state(self) -> DeviceRecord:
        async with self._store() as store:
            return DeviceRecord.from_plain(await store.get_state(STATE_KEY))
