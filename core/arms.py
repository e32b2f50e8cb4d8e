"""Experiment arms: which device runs which variant of CoDA, when it trains, what it keeps after filtering."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from core.features import FeatureSpace
from core.lifecycle import FilterOutcome, after_filter
from core.sample import Sample
from core.training import FilterResult, Scorer, filter_matched

ARM_MODES = ("coda", "buckets")
_CODA_SCHEDULE = ("after filtering, once {trigger} filtered samples wait or on the cloud's notice that the day's "
                  "batches are over (quota or exhausted); on its local samples alone when the day kept nothing")


class Arm:
    """One variant of CoDA: whether it pulls matched samples, when it trains (Algorithm 3), what it keeps.

    The base never pulls, never trains and keeps nothing; each arm overrides what it does.
    Engines ask these questions at their triggers instead of comparing arm names.
    """

    name: ClassVar[str]
    schedule: ClassVar[str]  # when it trains, for the report ("{trigger}": the train trigger)
    pulls: ClassVar[bool] = False  # asks the cloud for matched samples
    classifies: ClassVar[bool] = False  # runs Algorithm 2's classifier over what it pulled

    def trains_at_day_end(self, active: bool) -> bool:
        """At the end of an event-time day; `active`: the device had events on it."""
        return False

    def trains_when_kept(self, kept: int, trigger: int) -> bool:
        """After storing a batch (filtered, once its request is complete), with `kept` samples waiting."""
        return False

    def trains_on_notice(self, kept: int, trained_today: bool) -> bool:
        """On the cloud's notice that today's batches are over (quota or exhausted)."""
        return False

    def keep(
        self, pending_ids: Sequence[str], result: FilterResult | None, sigma: float, seed: int
    ) -> FilterOutcome:
        """What becomes of the pending matched samples (`result`: the classifier's, if it `classifies`)."""
        return FilterOutcome(list(pending_ids), {})

    def __repr__(self) -> str:
        return f"Arm({self.name})"


class CloudArm(Arm):
    """The global model M0 for everyone: the baseline every arm is compared with."""

    name = "cloud"
    schedule = "never trains: serves the global model M0"


class LocalArm(Arm):
    """Personalisation on the device's own samples only."""

    name = "local"
    schedule = "at the end of every active day, on its own local samples only (no pulls)"

    def trains_at_day_end(self, active: bool) -> bool:
        return active


class _PullingArm(Arm):
    """The CoDA arms: the same pulls and schedule, so they differ only in what they keep."""

    pulls = True
    schedule = _CODA_SCHEDULE

    def trains_when_kept(self, kept: int, trigger: int) -> bool:
        return kept >= trigger

    def trains_on_notice(self, kept: int, trained_today: bool) -> bool:
        # a fair schedule: train on what was kept, or on the local samples alone when the day
        # brought nothing to keep and the device has not trained yet today
        return kept > 0 or not trained_today


class CodaArm(_PullingArm):
    """CoDA: the classifier's picks (score ≥ σ); its negatives and low scorers go."""

    name = "coda"
    classifies = True

    def keep(
        self, pending_ids: Sequence[str], result: FilterResult | None, sigma: float, seed: int
    ) -> FilterOutcome:
        scored = _classified(self, result)
        return after_filter(scored.classifier_train_ids, scored.scores, sigma)


class CodaNoFilterArm(_PullingArm):
    """Control: no classifier, every matched sample is kept."""

    name = "coda_nofilter"
    schedule = _CODA_SCHEDULE.replace("after filtering", "keeping every matched sample")

    def keep(
        self, pending_ids: Sequence[str], result: FilterResult | None, sigma: float, seed: int
    ) -> FilterOutcome:
        return keep_all(pending_ids)


class CodaRandomArm(_PullingArm):
    """Control: as many as the classifier picks, drawn at random with the arm's seed."""

    name = "coda_random"
    schedule = _CODA_SCHEDULE.replace("after filtering", "after a random choice of the classifier's count")
    classifies = True

    def keep(
        self, pending_ids: Sequence[str], result: FilterResult | None, sigma: float, seed: int
    ) -> FilterOutcome:
        return random_like(_classified(self, result), sigma, seed)


def _classified(arm: Arm, result: FilterResult | None) -> FilterResult:
    if result is None:
        raise ValueError(f"{arm!r} keeps from the classifier's scores: pass its FilterResult")
    return result


# Rotation order matters: neighbours in it share users most often when fewer than five seeds
# rotate the arms (cloud–coda and coda–local are adjacent).
REGISTRY: dict[str, Arm] = {arm.name: arm for arm in (CloudArm(), CodaArm(), LocalArm(), CodaNoFilterArm(),
                                                       CodaRandomArm())}
ARMS: tuple[str, ...] = tuple(REGISTRY)
# When each arm runs Algorithm 3 (the report states it): every personalizing arm gets a chance on
# every active day on which it has something new.
SCHEDULES: dict[str, str] = {name: REGISTRY[name].schedule  # in the order the reports have always listed them
                              for name in ("cloud", "local", "coda", "coda_nofilter", "coda_random")}


def schedules(train_trigger: int) -> dict[str, str]:
    return {arm: text.format(trigger=train_trigger) for arm, text in SCHEDULES.items()}


def arm_named(name: str) -> Arm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"arm {name!r}: expected one of {', '.join(ARMS)}") from None


# Reference scores computed after a run on the same live events as the arms (seed −1 in the rows):
# the generator's true probabilities, a cross-fitted fine-tune on the user's own live events, and
# the same on the live samples of the user's true group-mates (synthetic only).
REFERENCES: tuple[str, ...] = ("oracle", "own_future", "group_oracle")


def _digest(*parts: object) -> int:
    raw = ":".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=4).digest(), "big") & 0x7FFFFFFF


def assign_arm(mode: str, seed: int, pseudonym: str) -> str:
    """The device's arm: "coda" for everyone, or a bucket rotated by `seed`.

    Buckets: a fixed hash of the pseudonym picks a starting arm and `seed` rotates it, so seeds
    0..4 put every device once in every arm (a crossover: each user's arms can be paired).
    """
    if mode == "coda":
        return "coda"
    if mode != "buckets":
        raise ValueError(f"arm_mode {mode!r}: expected one of {', '.join(ARM_MODES)}")
    return ARMS[(_digest("arm", pseudonym) + seed) % len(ARMS)]


def device_arm(mode: str, seed: int, pseudonym: str) -> Arm:
    """The device's arm as the object the engines ask (see `assign_arm`)."""
    return arm_named(assign_arm(mode, seed, pseudonym))


def device_seed(pseudonym: str, *parts: object) -> int:
    """The device's seed for one piece of work (filter n, train n): stable across restarts."""
    return _digest(pseudonym, *parts)


def select_kept(
    arm: Arm,
    local: Sequence[Sample],
    pending: Sequence[Sample],
    space: FeatureSpace,
    sigma: float,
    classifier_share: float,
    filter_seed: int,
    random_seed: int,
    observe: Callable[[FilterResult], None] | None = None,
    model: str | Scorer = "mlp",
) -> FilterOutcome | None:
    """Algorithm 2 (or the arm's control) over the pending matched samples: what is kept, what goes.

    The streaming device and the offline engine both call this. None: the arm needs the
    classifier, but no local sample says "local" yet, so the pending samples wait. `observe`, if
    given, sees the classifier's full result (every scored sample's score) before the arm decides;
    `model` is the classifier's (`core.training.CLASSIFIER_MODELS`).
    """
    pending_ids = [x.sample_id for x in pending]
    if not arm.classifies:
        return arm.keep(pending_ids, None, sigma, random_seed)
    if not local:
        return None
    result = filter_matched(local, pending, space, sigma, classifier_share, filter_seed, model=model)
    if observe is not None:
        observe(result)
    return arm.keep(pending_ids, result, sigma, random_seed)


def keep_all(pending_ids: Sequence[str]) -> FilterOutcome:
    """coda_nofilter: every matched sample is kept (score 1, so forced cleanup drops the oldest)."""
    return FilterOutcome([], dict.fromkeys(pending_ids, 1.0))


def random_like(result: FilterResult, sigma: float, seed: int) -> FilterOutcome:
    """coda_random: as many as the classifier would keep, drawn at random from the scored share.

    The classifier still runs (it sets the count), so the only difference to coda is *which*
    samples are kept: does the classifier beat chance?
    """
    n = sum(1 for p in result.scores.values() if p >= sigma)
    ids = result.scored_ids
    chosen = sorted(np.random.default_rng(seed).choice(len(ids), size=n, replace=False).tolist()) if n else []
    picked = {ids[i] for i in chosen}
    scores = {sid: (result.scores[sid] if sid in picked else -1.0) for sid in ids}
    outcome = after_filter(result.classifier_train_ids, scores, -0.5)  # threshold between −1 and [0, 1]
    return FilterOutcome(outcome.delete, {sid: result.scores[sid] for sid in outcome.keep})
