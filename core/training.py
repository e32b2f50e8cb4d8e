"""Training loops: the cloud's plain BCE, Algorithm 2's sample filter, Algorithm 3's gated fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.features import FeatureSpace
from core.metrics import auc_or_fallback
from core.models import DIN, SampleClassifier, state_from_bytes
from core.optim import Adam
from core.sample import Sample
from core.tensors import Batch, classifier_features, collate, din_inputs, index_batch, seq_tag_histograms


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Optimiser settings for the CTR model and the sample classifier (Adam for both).

    `classifier_batch_size` 0 means full batch: the classifier sees a few hundred dense rows,
    so one step per epoch is the cheap, deterministic choice on a phone.
    """

    lr: float = 0.01
    batch_size: int = 32
    epochs: int = 1
    classifier_epochs: int = 20
    classifier_lr: float = 0.05
    classifier_batch_size: int = 0
    seed: int = 0
    # a local validation set with one class cannot judge ranking: "fit" gates on exp(−logloss)
    # there (calibration only); "skip" takes no step, as when there is no validation at all
    one_class_gate: str = "fit"
    # when Algorithm 3 judges the update: "step" after every mini-batch (the paper); "epoch" after
    # each pass over the training samples — with a few dozen local validation samples a single
    # mini-batch rarely moves the AUC, so per-step gating rejects most of what a pass would learn
    gate: str = "step"
    # stop training after this many judgements in a row were rejected (0: never, the paper): a
    # rejected pass restores the model, so what follows starts again from the same weights, and
    # on a few dozen local validation samples one rejection predicts the next
    patience: int = 0


def model_for_space(space: FeatureSpace, seed: int = 0) -> DIN:
    """The CTR model every party agrees on (paper's sizes), freshly initialised from `seed`."""
    return DIN(space, seed=seed)


def global_model_from_bytes(data: bytes, space: FeatureSpace) -> DIN:
    """Rebuild the cloud's global model from `core.models.state_to_bytes` output."""
    return state_from_bytes(model_for_space(space), data)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _epoch(data: Batch, n: int, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
    """One epoch's mini-batches of `data`'s `n` rows, shuffled by `gen`; batch_size 0 or ≥ n: all
    rows as they are (a full batch needs no shuffle). The shuffled rows are gathered once per epoch,
    one copy of each tensor, and the mini-batches are contiguous slices of it."""
    if not 0 < batch_size < n:
        yield data
        return
    shuffled = index_batch(data, torch.randperm(n, generator=gen))
    for start in range(0, n, batch_size):
        yield index_batch(shuffled, slice(start, start + batch_size))


def _bce_step(model: nn.Module, opt: Adam, batch: Mapping[str, torch.Tensor]) -> None:
    _mode(model, training=True)
    opt.zero_grad()
    F.binary_cross_entropy_with_logits(model(batch), batch["label"]).backward()
    opt.step()


def _mode(model: nn.Module, training: bool) -> None:
    """Train or eval mode, switched only when it changes: `Module.train` walks every submodule,
    which a step-by-step loop would otherwise pay on each mini-batch."""
    if model.training != training:
        model.train(training)


def _probabilities(model: nn.Module, batch: Batch) -> np.ndarray:
    _mode(model, training=False)
    with torch.no_grad():
        return torch.sigmoid(model(batch)).numpy()


def predict(model: nn.Module, samples: Sequence[Sample], space: FeatureSpace) -> np.ndarray:
    """Click probabilities for `samples`, in eval mode without gradients."""
    if not samples:
        return np.zeros(0, dtype=np.float32)
    return _probabilities(model, din_inputs(collate(samples, space)))


def train_epochs(
    model: nn.Module, samples: Sequence[Sample], space: FeatureSpace, cfg: TrainConfig
) -> nn.Module:
    """Plain mini-batch BCE training (the cloud's global model); trains `model` in place."""
    if not samples:
        return model
    data = din_inputs(collate(samples, space))
    opt = Adam(model.parameters(), lr=cfg.lr)
    gen = _generator(cfg.seed)
    for _ in range(cfg.epochs):
        for batch in _epoch(data, len(samples), cfg.batch_size, gen):
            _bce_step(model, opt, batch)
    return model


# --- Algorithm 2: fine filtering of matched samples on the device ---


@dataclass(frozen=True, slots=True)
class FilterResult:
    """What the filter kept, and how it got there (ids in the order they were used)."""

    kept: list[Sample]
    scores: dict[str, float]  # classifier score of every scored (held-out) matched sample
    classifier_train_ids: list[str]  # matched samples used as the classifier's negatives
    scored_ids: list[str]


def split_matched(
    matched: Sequence[Sample], train_share: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Shuffle with `seed`, then first ⌈share·n⌉ → classifier negatives, the rest → to be scored."""
    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must lie strictly between 0 and 1, got {train_share}")
    order = np.random.default_rng(seed).permutation(len(matched))
    n_train = math.ceil(round(len(matched) * train_share, 9))  # round: 300·(1/3) must give 100
    shuffled = [matched[i] for i in order]
    return shuffled[:n_train], shuffled[n_train:]


def _train_classifier(
    clf: SampleClassifier, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cfg: TrainConfig, seed: int
) -> None:
    opt = Adam(clf.parameters(), lr=cfg.classifier_lr)
    gen = _generator(seed)
    clf.train()
    data = {"x": x, "y": y, "w": w}
    for _ in range(cfg.classifier_epochs):
        for batch in _epoch(data, len(y), cfg.classifier_batch_size, gen):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(clf(batch["x"]), batch["y"], weight=batch["w"], reduction="sum")
            (loss / batch["w"].sum()).backward()
            opt.step()


# scores matched samples from the local ones alone: (local, matched, space) -> a score per matched sample
Scorer = Callable[[Sequence[Sample], Sequence[Sample], FeatureSpace], list[float]]


def centroid_scores(local: Sequence[Sample], matched: Sequence[Sample], space: FeatureSpace) -> list[float]:
    """Cosine of each matched sample's behaviour-sequence tag histogram to the local samples' mean one.

    Histograms are non-negative, so a score lies in [0, 1]; a sample with an empty sequence (or a
    device whose local sequences are all empty) scores 0: nothing says it is like the user.
    """
    reference = seq_tag_histograms(local, space).double().mean(dim=0, keepdim=True)
    hist = seq_tag_histograms(matched, space).double()
    norms = hist.norm(dim=1) * reference.norm()
    dots = (hist @ reference.T).squeeze(1)
    return torch.where(norms > 0, dots / norms.clamp(min=1e-300), 0.0).tolist()


# Algorithm 2's classifier: "mlp" (the paper's two-class model, trained local against a share of
# the matched samples: None here) or "centroid" (nearest centroid: no training, no negatives spent)
CLASSIFIER_MODELS: dict[str, Scorer | None] = {"mlp": None, "centroid": centroid_scores}


def filter_matched(
    local: Sequence[Sample],
    matched: Sequence[Sample],
    space: FeatureSpace,
    sigma: float = 0.2,
    train_share: float = 1 / 3,
    seed: int = 0,
    cfg: TrainConfig | None = None,
    hidden: int = 16,
    model: str | Scorer = "mlp",
) -> FilterResult:
    """Algorithm 2: keep the matched samples a personalised classifier finds local-like.

    Matched samples are split (see `split_matched`); a `SampleClassifier` learns local (1)
    against the first share (0) with class-balanced weights (each class carries half the
    loss, so 200 local vs 100 outside does not tilt it), then scores the rest; scores ≥ sigma
    are kept, in scored order. The classifier's own negatives are never kept, as in the paper.
    `seed` fixes split, initialisation and shuffling; `cfg` gives only the classifier's
    optimiser settings. With no local samples there is nothing to learn "local" from, and with
    no matched samples nothing to keep: both give an empty result. Any other `model` (a name in
    `CLASSIFIER_MODELS`, or a `Scorer`) scores every matched sample: no split, no training.
    """
    if isinstance(model, str) and model not in CLASSIFIER_MODELS:
        raise ValueError(f"classifier model {model!r}: expected one of {', '.join(CLASSIFIER_MODELS)}")
    scorer = CLASSIFIER_MODELS[model] if isinstance(model, str) else model
    cfg = cfg or TrainConfig()
    if not local or not matched:
        return FilterResult([], {}, [], [])
    if scorer is not None:
        return _kept_by_score(list(matched), scorer(local, matched, space), sigma, [])
    negatives, to_score = split_matched(matched, train_share, seed)
    train_ids = [s.sample_id for s in negatives]
    if not to_score:
        return FilterResult([], {}, train_ids, [])
    n_pos, n_neg = len(local), len(negatives)
    x = classifier_features([*local, *negatives, *to_score], space)
    y = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])
    w = torch.cat([torch.full((n_pos,), 0.5 / n_pos), torch.full((n_neg,), 0.5 / n_neg)])
    clf = SampleClassifier(space, hidden=hidden, seed=seed)
    _train_classifier(clf, x[: n_pos + n_neg], y, w, cfg, seed)
    clf.eval()
    with torch.no_grad():
        probs = torch.sigmoid(clf(x[n_pos + n_neg :])).tolist()
    return _kept_by_score(to_score, probs, sigma, train_ids)


def _kept_by_score(scored: list[Sample], scores: list[float], sigma: float, train_ids: list[str]) -> FilterResult:
    kept = [s for s, p in zip(scored, scores, strict=True) if p >= sigma]
    by_id = {s.sample_id: p for s, p in zip(scored, scores, strict=True)}
    return FilterResult(kept, by_id, train_ids, [s.sample_id for s in scored])


# --- Algorithm 3: training gated by local validation ---


@dataclass(frozen=True, slots=True)
class GatedResult:
    """Outcome of `train_gated`; the validation metric is `auc_or_fallback` on the local split."""

    model: nn.Module
    accepted_steps: int
    total_steps: int
    valid_auc_before: float | None  # None: no validation samples, so no step could be judged
    valid_auc_after: float | None
    valid_history: list[float] = field(default_factory=list)  # metric after each accepted step


ONE_CLASS_GATES = ("fit", "skip")
GATES = ("step", "epoch")
Snapshot = tuple[list[torch.Tensor], list[dict[str, object]]]


def _clone_state(state: Mapping[str, object]) -> dict[str, object]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _snapshot(params: list[nn.Parameter], opt: Adam) -> Snapshot:
    return [p.detach().clone() for p in params], [_clone_state(opt.state[p]) for p in params]


def _restore(params: list[nn.Parameter], opt: Adam, snap: Snapshot) -> None:
    """Undo a rejected step: weights *and* Adam moments, so it leaves no trace at all."""
    weights, states = snap
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
    for p, s in zip(params, states, strict=True):
        opt.state[p] = _clone_state(s)  # clone: the snapshot may be restored again later


def train_gated(
    model: nn.Module,
    train: Sequence[Sample],
    valid: Sequence[Sample],
    space: FeatureSpace,
    cfg: TrainConfig,
) -> GatedResult:
    """Algorithm 3: mini-batch Adam over `train`; a step stays only if the local metric rises.

    After every mini-batch the model is scored on `valid` (local samples only); unless the
    metric is strictly greater than the best so far, weights and optimiser state are restored.
    So the returned model's metric is never below the starting one, and `valid_history` is
    strictly increasing. Without validation samples no step can be judged, so none is taken
    and the model is returned untouched. Trains `model` in place.
    """
    if cfg.one_class_gate not in ONE_CLASS_GATES:
        raise ValueError(f"one_class_gate {cfg.one_class_gate!r}: expected one of {', '.join(ONE_CLASS_GATES)}")
    if cfg.gate not in GATES:
        raise ValueError(f"gate {cfg.gate!r}: expected one of {', '.join(GATES)}")
    if not valid:
        return GatedResult(model, 0, 0, None, None)
    vdata = din_inputs(collate(valid, space))
    vlabels = vdata["label"].numpy()
    if cfg.one_class_gate == "skip" and len(set(vlabels.tolist())) < 2:
        return GatedResult(model, 0, 0, None, None)
    best = auc_or_fallback(vlabels, _probabilities(model, vdata))
    start, total = best, 0
    history: list[float] = []
    if train:
        data = din_inputs(collate(train, space))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = Adam(params, lr=cfg.lr)
        gen = _generator(cfg.seed)
        snap = _snapshot(params, opt)
        patience, stop = _Patience(cfg.patience), False
        for _ in range(cfg.epochs):
            for batch in _epoch(data, len(train), cfg.batch_size, gen):
                _bce_step(model, opt, batch)
                total += 1
                if cfg.gate == "step":
                    best, snap = _judge(model, params, opt, snap, vdata, vlabels, best, history)
                    if stop := patience.spent(len(history)):
                        break
            if cfg.gate == "epoch":
                best, snap = _judge(model, params, opt, snap, vdata, vlabels, best, history)
                stop = patience.spent(len(history))
            if stop:
                break
    return GatedResult(model, len(history), total, start, best, history)


class _Patience:
    """Counts the judgements rejected in a row (`accepted` is how many were kept so far)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.accepted, self.rejected = limit, 0, 0

    def spent(self, accepted: int) -> bool:
        """Call once after each judgement; True once `limit` (> 0) rejections came in a row."""
        self.rejected = 0 if accepted > self.accepted else self.rejected + 1
        self.accepted = accepted
        return 0 < self.limit <= self.rejected


def _judge(model: nn.Module, params: list[nn.Parameter], opt: Adam, snap: Snapshot,
           vdata: Batch, vlabels: np.ndarray, best: float, history: list[float]) -> tuple[float, Snapshot]:
    """Keep the update if the local validation metric rose above the best so far, else undo it."""
    metric = auc_or_fallback(vlabels, _probabilities(model, vdata))
    if metric > best:
        history.append(metric)
        return metric, _snapshot(params, opt)
    _restore(params, opt, snap)
    return best, snap
