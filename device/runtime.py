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
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import resource
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import torch

from core import lifecycle
from core.arms import assign_arm, device_arm, device_seed, select_kept
from core.features import FeatureSpace, History, event_to_sample
from core.lifecycle import OutsideRole
from core.models import DIN, state_to_bytes
from core.personalize import limit_training
from core.privacy import device_pseudonym
from core.sample import DAY, SAMPLE_ACTIONS, Sample
from core.training import TrainConfig, filter_matched, global_model_from_bytes, predict, train_gated
from device.modelstore import ModelFile, ModelStore, Training, atomic_write, encode_model, version_id
from device.storage import DB_FILE, DatabasePool, DeviceStore, Limits, open_store
from streams.schemas import (
    BehaviourEvent,
    DeviceActions,
    DevicePast,
    DownBatch,
    DownNotice,
    PullRequest,
    Record,
    SchemaError,
    UpEnvelope,
    unpack_samples,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

SEEN_CAP = 512  # recent event ids remembered, so a redelivered message adds nothing twice
SEEN_ID_CHARS = 12  # 48 bits of the event's sample id: collisions among 512 are negligible, state stays small
STATE_KEY = "device"
KEPT_KEY = "kept_ids"  # experiments only: which outside samples the filter kept (id prefixes)
INFLATE_FACTOR = 20  # a payload may inflate to this many times the envelope limit

T = TypeVar("T")


class Rejected(Exception):
    """A down-tunnel message the device refuses; `reason` is the dead-letter reason code."""

    def __init__(self, device: str, reason: str, detail: str) -> None:
        super().__init__(f"device {device}: {reason}: {detail}")
        self.device = device
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- state
@dataclass
class DeviceState:
    """Everything a device remembers between messages (one msgpack row in its database)."""

    device_id: str = ""  # raw id: only the device knows it (up-tunnel key)
    user_id: str = ""  # raw user id, used locally and in pull requests (ingest pseudonymizes)
    now_ts: int = 0  # the device's event-time clock
    day: int = -1  # quota day
    used: int = 0  # batches received on `day`
    stopped: bool = False  # a notice ended pulling for `day`
    request: str = ""  # open pull request
    request_of: int = 0  # batches announced for it (0: none seen yet)
    request_got: list[str] = field(default_factory=list)
    pulls: int = 0
    items: list[int] = field(default_factory=list)  # behaviour history (hashed), oldest first
    tags: list[list[int]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    version: str = ""  # model version in use
    trains: int = 0
    filters: int = 0
    bytes_unfiltered: int = 0
    bytes_since_train: int = 0
    filter_ms_since_train: float = 0.0
    filter_cpu_ms_since_train: float = 0.0
    maintained_day: int = -1
    arm: str = ""  # the experiment arm this device runs (see core.arms)
    trained_day: int = -1  # the last quota day Algorithm 3 ran on
    steps_accepted: int = 0  # gated updates kept, over every training
    steps_total: int = 0
    # (before, after) of the gate's metric per training that took steps: measured on the same local
    # validation samples that selected the steps, so "after" is in-sample by construction
    valid_log: list[list[float]] = field(default_factory=list)

    @classmethod
    def from_plain(cls, body: Mapping[str, Any] | None) -> DeviceState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (body or {}).items() if k in known})

    def to_plain(self) -> dict[str, Any]:
        """Shallow: msgpack walks the lists itself (dataclasses.asdict would deep-copy them)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def history(self) -> History:
        return History(tuple(self.items), tuple(tuple(t) for t in self.tags))

    def roll_day(self, day: int) -> None:
        """A new event-time day: fresh quota, pulling allowed again."""
        if day > self.day:
            self.day, self.used, self.stopped = day, 0, False
            self.request, self.request_of, self.request_got = "", 0, []

    @property
    def request_open(self) -> bool:
        return bool(self.request) and (self.request_of == 0 or len(self.request_got) < self.request_of)


# --------------------------------------------------------------------------- accounting
@dataclass(frozen=True, slots=True)
class RoundRecord:
    """Cost of one piece of device work. `kind`: filter | train | round (filters since last train + train)."""

    device: str
    kind: str
    wall_ms: float
    cpu_ms: float
    rss_mb: float
    bytes: int  # payload bytes downloaded for it
    n_in: int  # filter: matched samples; train: training samples
    n_out: int  # filter: kept; train: accepted steps
    ts: int  # device event time


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class Accounting:
    """Recent round records (bounded) and running totals, for `Fleet.stats()`."""

    def __init__(self, keep: int = 20_000) -> None:
        self.records: deque[RoundRecord] = deque(maxlen=keep)
        self.totals: Counter[str] = Counter()
        self.queue_ms: deque[float] = deque(maxlen=keep)  # executor wait before each job
        self._proc = psutil.Process()

    def rss_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def queued(self, ms: float) -> None:
        self.queue_ms.append(ms)

    def record(self, rec: RoundRecord) -> None:
        self.records.append(rec)
        self.totals[f"{rec.kind}s"] += 1
        self.totals[f"{rec.kind}_bytes"] += rec.bytes

    def for_device(self, pseudonym: str) -> list[RoundRecord]:
        return [r for r in self.records if r.device == pseudonym]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "totals": dict(self.totals),
            "rss_mb": round(self.rss_mb(), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        for kind in ("filter", "train", "round"):
            recs = [r for r in self.records if r.kind == kind]
            walls, cpus = [r.wall_ms for r in recs], [r.cpu_ms for r in recs]
            out[kind] = {
                "n": len(recs),
                "wall_ms_p50": _round(percentile(walls, 50)),
                "wall_ms_p95": _round(percentile(walls, 95)),
                "cpu_ms_p50": _round(percentile(cpus, 50)),
                "cpu_ms_p95": _round(percentile(cpus, 95)),
                "bytes_mean": _round(float(np.mean([r.bytes for r in recs])) if recs else None),
            }
        queue = list(self.queue_ms)
        out["executor_queue_ms"] = {
            "p50": _round(percentile(queue, 50)),
            "p95": _round(percentile(queue, 95)),
        }
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# --------------------------------------------------------------------------- models in memory
class ModelCache:
    """Loaded models by version (content-addressed, so safe to share); a per-thread training copy.

    Devices hold no model between rounds: most of them serve the same M0, which stays here.
    """

    def __init__(self, space: FeatureSpace, size: int = 16) -> None:
        self.space = space
        self.size = size
        self._models: OrderedDict[str, DIN] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.hits = self.misses = 0

    def module(self, model: ModelFile) -> DIN:
        """A shared, read-only module for inference: never train it."""
        with self._lock:
            found = self._models.get(model.version)
            if found is not None:
                self._models.move_to_end(model.version)
                self.hits += 1
                return found
        built = global_model_from_bytes(model.weights, self.space).eval()
        with self._lock:
            self.misses += 1
            self._models[model.version] = built
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return built

    def scratch(self, model: ModelFile) -> DIN:
        """This thread's training module, loaded with `model`'s weights (training changes it in place)."""
        module: DIN | None = getattr(self._local, "module", None)
        if module is None:
            module = DIN(self.space)
            self._local.module = module
        module.load_state_dict(self.module(model).state_dict())
        return module


# --------------------------------------------------------------------------- shared runtime
_torch_configured = False


def device_train_config(s: Settings, seed: int) -> TrainConfig:
    """Algorithm 3's optimiser and gate from the settings (the offline engine uses the same)."""
    return TrainConfig(lr=s.device_learning_rate, batch_size=s.train_batch, epochs=s.train_epochs, seed=seed,
                       one_class_gate=s.one_class_gate, gate=s.gate)


def configure_torch(threads: int) -> None:
    """Set torch's intra-op threads once per process (deliberately: devices share a core budget)."""
    global _torch_configured
    if not _torch_configured:
        torch.set_num_threads(max(1, threads))
        _torch_configured = True


def device_dir(state_dir: Path, pseudonym: str) -> Path:
    """Two-level fan-out so 10,000 device directories do not crowd one folder."""
    return state_dir / "devices" / pseudonym[:2] / pseudonym


def initial_model_file(weights: bytes, origin: str = "") -> ModelFile:
    return ModelFile(version_id(0, weights), origin, 0, weights)


def fresh_initial(space: FeatureSpace, seed: int = 0) -> ModelFile:
    return initial_model_file(state_to_bytes(DIN(space, seed=seed)), f"fresh-seed-{seed}")


class Runtime:
    """Shared by a fleet's devices: settings, database pool, where torch jobs run, models, accounting."""

    def __init__(
        self,
        settings: Settings,
        initial: ModelFile,
        executor: Executor | None = None,
        pool: DatabasePool | None = None,
    ) -> None:
        configure_torch(settings.torch_threads)
        assign_arm(settings.arm_mode, settings.arm_seed, "")  # an unknown arm mode fails here, once
        limit_training(DIN(settings.features), settings.personalize)  # so does an unknown scope
        self.settings = settings
        self.space = settings.features
        self.limits = Limits(settings.max_local_samples, settings.max_outside_samples)
        self.pool = pool or DatabasePool(settings.open_databases)
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-torch")
        self.models = ModelCache(self.space)
        self.accounting = Accounting()
        self.initial = initial
        self.initial_path = settings.state_dir / "fleets" / "global" / f"{initial.version}.model"
        if not self.initial_path.exists():
            self.initial_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.initial_path, encode_model(initial))

    async def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
        """Run blocking torch work (on the loop or the executor); returns (result, wall ms, CPU ms).

        Wall and CPU are measured inside the job: the time spent queueing behind other
        devices' work is the fleet's, not the round's (it is kept in `queue_ms`).
        """
        submitted = time.perf_counter()

        def timed() -> tuple[T, float, float, float]:
            start, cpu = time.perf_counter(), time.thread_time()
            out = fn(*args)
            return out, start, (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000

        if self.settings.torch_on_loop:
            result, start, wall_ms, cpu_ms = timed()
        else:
            result, start, wall_ms, cpu_ms = await asyncio.get_running_loop().run_in_executor(
                self.executor, timed
            )
        self.accounting.queued((start - submitted) * 1000)
        return result, wall_ms, cpu_ms

    async def warm_up(self) -> None:
        """Pay torch's one-off import and optimiser set-up costs before the first real round."""

        def job() -> None:
            s = Sample("warm", "", 0, 0, (0,), (1,), ((0,),), (), 1)
            t = Sample("warm2", "", 0, 1, (1,), (0,), ((1,),), (), 0)
            train_gated(
                self.models.scratch(self.initial), [s, t], [s, t], self.space, TrainConfig(batch_size=2)
            )
            filter_matched([s], [t, s], self.space)

        await self.run(job)

    async def close(self) -> None:
        await self.pool.close_all()
        if self._own_executor:
            self.executor.shutdown(wait=True)


# --------------------------------------------------------------------------- outcomes
@dataclass
class TrainOutcome:
    skipped: str = ""  # "", "no_validation", "nothing_to_train"
    n_train: int = 0
    n_valid: int = 0
    accepted_steps: int = 0
    total_steps: int = 0
    valid_before: float | None = None
    valid_after: float | None = None
    version: str = ""
    kept: bool = False


@dataclass
class Outcome:
    """What a message did: messages to send up, and what happened on the way."""

    up: list[Record] = field(default_factory=list)
    rejected: Rejected | None = None
    duplicate: bool = False
    samples: int = 0  # local samples added / outside samples stored
    filtered: int = 0  # kept by the filter in this call
    trained: TrainOutcome | None = None


# --------------------------------------------------------------------------- the device
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

    async def _load(self, store: DeviceStore) -> DeviceState:
        st = DeviceState.from_plain(await store.get_state(STATE_KEY))
        if self.device_id and not st.device_id:
            st.device_id = self.device_id
        self.device_id = self.device_id or st.device_id
        st.arm = self.arm.name
        return st

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
            return Outcome(
                rejected=Rejected(self.pseudonym, "wrong_device", f"actions of device pseudonym {expected}")
            )
        out = Outcome()
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                st.device_id = st.device_id or device_id
                self.device_id = st.device_id
                samples, fresh = self._extend(st, events)
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
            return Outcome(rejected=Rejected(self.pseudonym, "wrong_device", f"past of device pseudonym {expected}"))
        async with self.lock:
            await self.prepare()
            async with self._store() as store:
                st = await self._load(store)
                st.device_id = st.device_id or past.device_id
                self.device_id = st.device_id
                self._extend(st, past.events)  # history and seen ids only: these are not samples
                store.set_state(STATE_KEY, st.to_plain())
        return Outcome()

    def _mark_due(self, day: int) -> None:
        """An active day: its own day-end pulls (or trains), t' days later its samples expire, a day
        after that its batch ids are forgotten."""
        if self._due is not None:
            t2 = self.s.lifecycle_t2_days
            self._due.update((day, day + t2, day + t2 + 1))

    def _envelopes(self, st: DeviceState, events: Sequence[BehaviourEvent]) -> list[UpEnvelope]:
        """The up-tunnel report, split so no envelope exceeds the cloud's per-envelope event limit."""
        size = max(1, self.s.max_events_per_envelope)
        return [
            UpEnvelope(st.device_id, list(events[i : i + size]), st.now_ts)
            for i in range(0, len(events), size)
        ]

    def _extend(self, st: DeviceState, events: Sequence[BehaviourEvent]) -> tuple[list[Sample], int]:
        """Unseen events → history (all) and samples (impressions and clicks), in event-time order."""
        history, seen = st.history(), dict.fromkeys(st.seen)
        samples, fresh = [], 0
        for e in sorted(events, key=lambda e: (e.ts, e.item_id, e.action)):
            fields = {
                "ts": e.ts,
                "item_id": e.item_id,
                "item_tags": e.item_tags,
                "action": e.action,
                "profile": e.profile,
                "label": e.label,
            }
            sample, extended = event_to_sample(e.user_id, fields, history, self.rt.space)
            event_id = sample.sample_id[:SEEN_ID_CHARS]
            if event_id in seen:
                continue
            seen[event_id] = None
            fresh += 1
            history = extended
            st.user_id = e.user_id
            if e.action in SAMPLE_ACTIONS:
                samples.append(sample)
        st.items, st.tags = list(history.items), [list(t) for t in history.tags]
        st.seen = list(seen)[-SEEN_CAP:]
        return samples, fresh

    async def _evaluate(self, store: DeviceStore, samples: list[Sample]) -> None:
        """Progressive validation: the current model scores each sample before it can train on it."""

        def job() -> tuple[np.ndarray, str]:
            model = self.models.current()
            return predict(self.rt.models.module(model), samples, self.rt.space), model.version

        (scores, version), _, _ = await self.rt.run(job)
        for s, p in zip(samples, scores.tolist(), strict=True):
            store.add_evaluation(s.sample_id, s.ts, s.label, p, version)

    def _pull(self, st: DeviceState, resend: bool = False) -> PullRequest | None:
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
    def _validate(self, batch: DownBatch) -> list[Sample]:
        where = f"batch {batch.batch_id}"
        max_payload = self.s.max_envelope_bytes
        if len(batch.payload) > max_payload:
            raise Rejected(
                self.pseudonym, "oversize", f"{where}: payload {len(batch.payload)} B > {max_payload} B"
            )
        if batch.n_samples > self.s.batch_max:
            raise Rejected(
                self.pseudonym, "oversize", f"{where}: {batch.n_samples} samples > {self.s.batch_max}"
            )
        try:
            samples = unpack_samples(batch.payload, max_payload * INFLATE_FACTOR)
        except SchemaError as err:
            raise Rejected(self.pseudonym, err.reason, f"{where}: {err.detail}") from None
        if len(samples) != batch.n_samples:
            raise Rejected(
                self.pseudonym,
                "count_mismatch",
                f"{where}: payload holds {len(samples)} samples, header says {batch.n_samples}",
            )
        space = self.rt.space
        if _out_of_space(samples, space):  # one pass for the batch; per sample only to name the culprit
            for s in samples:
                bad = _out_of_space([s], space)
                if bad:
                    raise Rejected(self.pseudonym, "out_of_space", f"{where}: sample {s.sample_id}: {bad}")
        return samples

    async def on_batch(self, batch: DownBatch) -> Outcome:
        """Store a batch of matched samples; filter, train and pull as the triggers say."""
        if batch.device != self.pseudonym:
            return Outcome(
                rejected=Rejected(
                    self.pseudonym, "wrong_device", f"batch {batch.batch_id} is addressed to {batch.device}"
                )
            )
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
                    samples = self._validate(batch)
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
        self, store: DeviceStore, st: DeviceState, batch: DownBatch, samples: list[Sample], out: Outcome
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
            return Outcome(
                rejected=Rejected(
                    self.pseudonym,
                    "wrong_device",
                    f"notice for request {notice.request_id} is addressed to {notice.device}",
                )
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
    async def _filter(self, store: DeviceStore, st: DeviceState) -> int:
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
        if self.arm.classifies:  # torch work: on the executor, timed
            outcome, wall, cpu = await self.rt.run(select_kept, *args)
        else:
            outcome, wall, cpu = select_kept(*args), 0.0, 0.0
        if outcome is None:  # select_kept's own "no local samples": ruled out above, before the executor
            return 0
        await store.apply_filter(outcome)
        await self._log_kept(store, list(outcome.keep))
        self.rt.accounting.record(
            RoundRecord(
                self.pseudonym,
                "filter",
                wall,
                cpu,
                self.rt.accounting.rss_mb(),
                st.bytes_unfiltered,
                len(pending),
                len(outcome.keep),
                st.now_ts,
            )
        )
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

    async def _train(self, store: DeviceStore, st: DeviceState) -> TrainOutcome:
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
        acc.record(
            RoundRecord(
                self.pseudonym,
                "train",
                wall,
                cpu,
                rss,
                st.bytes_since_train,
                len(train_set),
                outcome.accepted_steps,
                st.now_ts,
            )
        )
        acc.record(
            RoundRecord(
                self.pseudonym,
                "round",
                wall + st.filter_ms_since_train,
                cpu + st.filter_cpu_ms_since_train,
                rss,
                st.bytes_since_train,
                len(train_set),
                outcome.accepted_steps,
                st.now_ts,
            )
        )
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
            st = DeviceState.from_plain(await store.get_state(STATE_KEY))
        history = st.history()
        samples = [
            event_to_sample(st.user_id, _event_fields(c), history, self.rt.space)[0] for c in candidates
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

    async def state(self) -> DeviceState:
        async with self._store() as store:
            return DeviceState.from_plain(await store.get_state(STATE_KEY))


def _event_fields(e: BehaviourEvent | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(e, BehaviourEvent):
        return {
            "ts": e.ts,
            "item_id": e.item_id,
            "item_tags": e.item_tags,
            "action": e.action,
            "profile": e.profile,
            "label": e.label,
        }
    return {"action": "impression", **e}


def _out_of_space(samples: Sequence[Sample], space: FeatureSpace) -> str:
    """Why the samples' buckets do not fit this device's feature space ('' if they do).

    One pass over a whole batch (the usual case: nothing to name); call it per sample to
    find the culprit.
    """
    chain = itertools.chain.from_iterable
    checks = (
        ("item", [*(s.item for s in samples), *chain(s.seq for s in samples)], space.item_buckets),
        ("tag", [*chain(s.tags for s in samples), *chain(chain(s.seq_tags) for s in samples)], space.tag_buckets),
        ("profile", list(chain(s.profile for s in samples)), space.profile_buckets),
    )
    for name, values, buckets in checks:
        if values and (min(values) < 0 or max(values) >= buckets):
            return f"{name} bucket outside [0, {buckets})"
    for s in samples:
        if len(s.seq) != len(s.seq_tags):
            return f"seq has {len(s.seq)} items but {len(s.seq_tags)} tag lists"
    return ""
