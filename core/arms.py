"""Experiment arms: which device runs which variant of CoDA, and what each variant keeps after filtering."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from core.lifecycle import FilterOutcome, after_filter
from core.training import FilterResult

# Order matters for the rotation design: neighbours in this tuple share users most often when
# fewer than five seeds rotate the arms (cloud–coda and coda–local are adjacent).
ARMS: tuple[str, ...] = ("cloud", "coda", "local", "coda_nofilter", "coda_random")
ARM_MODES = ("coda", "buckets")
PULLING = frozenset({"coda", "coda_nofilter", "coda_random"})
_CODA_SCHEDULE = ("after filtering, once {trigger} filtered samples wait or on the cloud's notice that the day's "
                  "batches are over (quota or exhausted); on its local samples alone when the day kept nothing")
# When each arm runs Algorithm 3 (the report states it): every personalizing arm gets a chance on
# every active day on which it has something new.
SCHEDULES: dict[str, str] = {
    "cloud": "never trains: serves the global model M0",
    "local": "at the end of every active day, on its own local samples only (no pulls)",
    "coda": _CODA_SCHEDULE,
    "coda_nofilter": _CODA_SCHEDULE.replace("after filtering", "keeping every matched sample"),
    "coda_random": _CODA_SCHEDULE.replace("after filtering", "after a random choice of the classifier's count"),
}


def schedules(train_trigger: int) -> dict[str, str]:
    return {arm: text.format(trigger=train_trigger) for arm, text in SCHEDULES.items()}


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


def device_seed(pseudonym: str, *parts: object) -> int:
    """The device's seed for one piece of work (filter n, train n): stable across restarts."""
    return _digest(pseudonym, *parts)


def pulls(arm: str) -> bool:
    return arm in PULLING


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
