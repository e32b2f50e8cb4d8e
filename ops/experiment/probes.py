"""What Algorithm 2 could know: does the filter's score tell a matched sample's source apart?

Known groups only (synthetic data): for every classifier run of an arm, the probe records each
scored matched sample's score and whether its source user shares the device user's hidden
group. It reports the AUC of that separation three ways:

- `classifier`: the arm's own scores, sample by sample — what the filter acts on;
- `classifier_by_source`: the same scores averaged over each source user's samples in the run
  (a sample alone carries one outcome; its source's several carry more);
- `outcome_agreement`: a per-tag naive-Bayes log-likelihood ratio of the sample's outcome under
  the device's own click rates against the matched pool's — a second, simple scorer of the same
  outcome features, outside the method, so that a classifier at chance is not mistaken for a
  badly trained one (also by source).

Beside them, `picked_share` (the scored samples at or above σ: what coda keeps, and how many
coda_random draws at random) and `picked_own_group_share` (the own-group share among them, against
`own_group_share` among all scored): what the selection buys.

An AUC near 0.5 everywhere says the samples do not carry where they came from, whatever
classifier reads them; the filter can then only thin the matched set, not select from it.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from core.metrics import auc
from core.sample import Sample
from core.training import FilterResult

PRIOR_WEIGHT = 5.0  # pseudo-observations at the overall click rate behind each tag's rate


def noise_std_for_auc(target: float) -> float:
    """The s for which 1 + N(0, s²) against N(0, s²) separates at AUC `target` (0.5 < target < 1)."""
    return 1.0 / (math.sqrt(2.0) * NormalDist().inv_cdf(target))


def _fixed_normal(user: str, sample_id: str) -> float:
    """A standard normal draw fixed by (user, sample id): the same noise whenever the pair is scored."""
    digest = hashlib.blake2b(f"{user}|{sample_id}".encode(), digest_size=8).digest()
    return float(np.random.default_rng(int.from_bytes(digest, "big")).standard_normal())


@dataclass
class _Run:
    own: np.ndarray  # bool per scored sample: source in the device user's group
    picked: np.ndarray  # bool per scored sample: score ≥ σ (coda keeps these; coda_random as many at random)
    sources: list[str]
    scores: dict[str, np.ndarray]  # scorer -> per-sample score


@dataclass
class FilterProbe:
    """Collects, per arm, every classifier run's scores against the sources' known groups."""

    group_of: Mapping[str, int]  # raw user id or pseudonym -> hidden group
    runs: dict[str, list[_Run]] = field(default_factory=lambda: defaultdict(list))
    # True: the filter itself reads the hidden groups (`knows_groups`): what perfect selection gives
    decides: bool = False
    # how well that filter knows them: the AUC its scores give own-group against other samples
    # (1.0: perfectly; less: each score blurred by fixed Gaussian noise, see `knows_groups`)
    knowledge: float = 1.0

    def __post_init__(self) -> None:
        if not 0.5 < self.knowledge <= 1.0:
            raise ValueError(f"filter knowledge is an AUC in (0.5, 1], got {self.knowledge}")

    def knows_groups(self, local: Sequence[Sample], matched: Sequence[Sample], space: object) -> list[float]:
        """A `core.training.Scorer` outside the method: 1 for a matched sample from the device user's group, else 0.

        Below full `knowledge` each score gets noise of the std that puts the own-group AUC there
        (1 + N(0, s²) against N(0, s²): AUC = Φ(1 / (s√2))), drawn from the device user and the
        sample's id, so a sample scores the same on every run: how good must a filter be?
        """
        own = self.group_of.get(local[0].user)
        scores = [float(own is not None and self.group_of.get(x.user) == own) for x in matched]
        if self.knowledge == 1.0:
            return scores
        s = noise_std_for_auc(self.knowledge)
        return [v + s * _fixed_normal(local[0].user, x.sample_id) for v, x in zip(scores, matched, strict=True)]

    def observe(self, arm: str, local: Sequence[Sample], pending: Sequence[Sample], result: FilterResult) -> None:
        """One run of Algorithm 2 on a device of `arm` (`local`: its positives, `pending`: the matched)."""
        own_group = self.group_of.get(local[0].user) if local else None
        by_id = {x.sample_id: x for x in pending}
        scored = [by_id[sid] for sid in result.scored_ids]
        if own_group is None or not scored:
            return
        own = np.array([self.group_of.get(x.user) == own_group for x in scored])
        scores = {"classifier": np.array([result.scores[x.sample_id] for x in scored]),
                  "outcome_agreement": outcome_agreement(local, pending, scored)}
        picked = {x.sample_id for x in result.kept}
        self.runs[arm].append(_Run(own, np.array([x.sample_id in picked for x in scored]), [x.user for x in scored], scores))

    def summary(self) -> dict[str, Any]:
        return {arm: _summarise(runs) for arm, runs in sorted(self.runs.items())}


def outcome_agreement(local: Sequence[Sample], pool: Sequence[Sample], scored: Sequence[Sample]) -> np.ndarray:
    """Per-tag naive Bayes: log P(outcome | own click rates) − log P(outcome | the pool's), tag-share weighted."""
    own_rate, pool_rate = _tag_rates(local), _tag_rates(pool)
    out = np.empty(len(scored))
    for i, x in enumerate(scored):
        llr = 0.0
        for tag in x.tags:
            p_own, p_pool = own_rate(tag), pool_rate(tag)
            llr += math.log(p_own / p_pool) if x.label else math.log((1.0 - p_own) / (1.0 - p_pool))
        out[i] = llr / len(x.tags) if x.tags else 0.0
    return out


def _tag_rates(samples: Sequence[Sample]) -> Callable[[int], float]:
    """Smoothed click rate per tag bucket (each sample spreads one unit over its tags)."""
    clicks: dict[int, float] = defaultdict(float)
    shown: dict[int, float] = defaultdict(float)
    for x in samples:
        for tag in x.tags:
            clicks[tag] += x.label / len(x.tags)
            shown[tag] += 1.0 / len(x.tags)
    overall = (sum(x.label for x in samples) + 1.0) / (len(samples) + 2.0)  # never 0 or 1
    return lambda tag: (clicks[tag] + PRIOR_WEIGHT * overall) / (shown[tag] + PRIOR_WEIGHT)


def by_source(scores: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Each sample's score replaced by the mean over its source's samples in the same run."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        groups[source].append(i)
    out = np.empty(len(scores))
    for idx in groups.values():
        out[idx] = scores[idx].mean()
    return out


def _summarise(runs: Sequence[_Run]) -> dict[str, Any]:
    own, picked = np.concatenate([r.own for r in runs]), np.concatenate([r.picked for r in runs])
    out: dict[str, Any] = {"runs": len(runs), "scored": int(own.size), "own_group_share": round(float(own.mean()), 4),
                           "picked_share": round(float(picked.mean()), 4),
                           "picked_own_group_share": round(float(own[picked].mean()), 4) if picked.any() else None}
    for scorer in ("classifier", "outcome_agreement"):
        out[scorer] = _mean_auc(runs, scorer, pooled=False)
        out[f"{scorer}_by_source"] = _mean_auc(runs, scorer, pooled=True)
    return out


def _mean_auc(runs: Sequence[_Run], scorer: str, pooled: bool) -> float | None:
    """AUC of own-group vs not within each run (scores are comparable only there), mean weighted by size."""
    total = weight = 0.0
    for r in runs:
        scores = by_source(r.scores[scorer], r.sources) if pooled else r.scores[scorer]
        value = auc(r.own, scores)
        if value is not None:
            total, weight = total + value * r.own.size, weight + r.own.size
    return round(total / weight, 4) if weight else None
