"""Reference scores on an experiment's live events: the truth, the user's own hindsight, perfect matching.

They bracket the arms on exactly the events the arms were scored on (same sample ids):
- `oracle` (synthetic): the generator's true click probability — the ceiling of any model;
- `own_future`: the global model fine-tuned on the user's own live samples, cross-fitted (train on
  alternate events, score the others, and the reverse) — what the user's own data could teach with
  hindsight. A reference, not a bound: augmentation can and should beat it;
- `group_oracle` (synthetic): the global model fine-tuned on the live samples of K true group-mates,
  cross-fitted over users (two folds per group, each scored by a model trained on the other) — what
  perfect matching would give, and whether the model and its training step can represent the change.
The fine-tuning recipe is plain mini-batch Adam (no gate), recorded in the results.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core.arms import device_seed
from core.features import FeatureSpace, History, event_to_sample
from core.globalmodel import train_global
from core.models import DIN
from core.sample import DAY, SAMPLE_ACTIONS, Sample
from core.training import TrainConfig, model_for_space, predict, train_epochs
from ops.experiment.offline import history_pool
from ops.experiment.runner import EvalRow, Split

REFERENCE_SEED = -1  # reference rows belong to no seed: they are the same for every rotation


@dataclass(frozen=True)
class Recipe:
    """Plain fine-tuning for the references (the recipe found to represent a group's change)."""

    lr: float = 0.01
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0

    def config(self, *parts: object) -> TrainConfig:
        seed = device_seed(str(self.seed), *parts)
        return TrainConfig(lr=self.lr, batch_size=self.batch_size, epochs=self.epochs, seed=seed)


def live_samples(split: Split, space: FeatureSpace) -> dict[str, list[Sample]]:
    """Each user's live samples as a device builds them: the sequence carries the user's whole past."""
    histories: dict[str, History] = {}
    seen: set[str] = set()
    out: dict[str, list[Sample]] = defaultdict(list)
    cut_ts, end_ts = split.cut_day * DAY, (split.live[-1].day + 1) * DAY  # the replayed live days only
    for e in sorted(split.events, key=lambda e: (e["ts"], e["user_id"], e["item_id"], e["action"])):
        if e["ts"] >= end_ts:
            break
        user = e["user_id"]
        sample, extended = event_to_sample(user, e, histories.get(user, History()), space)
        if sample.sample_id in seen:
            continue
        seen.add(sample.sample_id)
        histories[user] = extended
        if e["action"] in SAMPLE_ACTIONS and e["ts"] >= cut_ts:
            out[user].append(sample)
    return dict(out)


def score_rows(name: str, split: Split, samples: Sequence[Sample], scores: Sequence[float]) -> list[EvalRow]:
    return [EvalRow(REFERENCE_SEED, name, x.user, x.ts // DAY - split.cut_day, x.ts, x.label, float(p), x.sample_id)
            for x, p in zip(samples, scores, strict=True)]


def _tuned(m0: DIN, space: FeatureSpace, train: Sequence[Sample], cfg: TrainConfig) -> DIN:
    model = model_for_space(space)
    model.load_state_dict(m0.state_dict())
    return train_epochs(model, train, space, cfg)


def oracle_rows(split: Split, by_user: Mapping[str, list[Sample]]) -> list[EvalRow]:
    truth = split.truth or {}
    rows: list[EvalRow] = []
    for samples in by_user.values():
        known = [x for x in samples if (x.user, x.ts) in truth]
        rows += score_rows("oracle", split, known, [truth[(x.user, x.ts)][0] for x in known])
    return rows


def own_future_rows(split: Split, by_user: Mapping[str, list[Sample]], m0: DIN, space: FeatureSpace,
                    recipe: Recipe) -> list[EvalRow]:
    """Alternate events in two halves; each half is scored by M0 fine-tuned on the other."""
    rows: list[EvalRow] = []
    for user, samples in sorted(by_user.items()):
        halves = (samples[0::2], samples[1::2])
        for k, (train, score) in enumerate((halves, halves[::-1])):
            if not score:
                continue
            model = _tuned(m0, space, train, recipe.config("own", user, k))
            rows += score_rows("own_future", split, score, predict(model, score, space).tolist())
    return rows


def group_oracle_rows(split: Split, by_user: Mapping[str, list[Sample]], m0: DIN, space: FeatureSpace,
                      recipe: Recipe, mates: int) -> list[EvalRow]:
    """Per group, users in two folds (by a hash); a fold is scored by M0 fine-tuned on `mates` of the other."""
    members: dict[int, list[str]] = defaultdict(list)
    for user, group in sorted((split.groups or {}).items()):
        if by_user.get(user):
            members[group].append(user)
    rows: list[EvalRow] = []
    for group, users in sorted(members.items()):
        ordered = sorted(users, key=lambda u: device_seed("fold", u))
        folds = (ordered[0::2], ordered[1::2])
        for k, (scored, others) in enumerate((folds, folds[::-1])):
            train = [x for u in others[:mates] for x in by_user[u]]
            if not scored or not train:
                continue
            model = _tuned(m0, space, train, recipe.config("group", group, k))
            for user in scored:
                scores = predict(model, by_user[user], space).tolist()
                rows += score_rows("group_oracle", split, by_user[user], scores)
    return rows


def global_model(split: Split, settings: Any, global_seed: int = 0) -> DIN:
    """M0 as the experiment trains it (`coda cloud train-global` on the history pool)."""
    cloud = history_pool(settings, split.history)
    last = split.history[-1].day
    pool = [x for x in cloud.pool.values() if x.ts // DAY <= last]
    cfg = TrainConfig(lr=settings.learning_rate, batch_size=256, epochs=2, seed=global_seed)
    return train_global(pool, settings.features, cfg).model


def reference_rows(split: Split, settings: Any, k: int, global_seed: int = 0, recipe: Recipe | None = None,
                   say: Callable[[str], None] | None = None) -> tuple[list[EvalRow], dict[str, Any]]:
    """Every reference this split allows, and a description of how each was computed."""
    from device.torchconfig import configure_torch

    configure_torch(settings.torch_threads)
    recipe = recipe or Recipe()
    space = settings.features
    by_user = live_samples(split, space)
    m0 = global_model(split, settings, global_seed)
    rows = own_future_rows(split, by_user, m0, space, recipe)
    notes: dict[str, Any] = {"recipe": asdict(recipe), "own_future": "cross-fitted on alternate live events"}
    if split.truth:
        rows += oracle_rows(split, by_user)
        notes["oracle"] = "the generator's true click probabilities"
    if split.groups:
        rows += group_oracle_rows(split, by_user, m0, space, recipe, k)
        notes["group_oracle"] = f"M0 fine-tuned on the live samples of {k} true group-mates, cross-fitted over users"
    if say:
        say(f"references: {', '.join(n for n in ('oracle', 'own_future', 'group_oracle') if n in notes)} "
            f"({len(rows)} scores)")
    return rows, notes
