"""Samples to padded, masked tensors: the one place model inputs are laid out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np
import torch

from core.features import FeatureSpace
from core.sample import Sample

MAX_TAGS = 4  # tags kept per item; `tag_buckets` sorts them, so truncation is deterministic

Batch = dict[str, torch.Tensor]


def _lengths(rows: Sequence[Sequence[object]]) -> np.ndarray:
    return np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))


def _positions(lengths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Flat positions of ragged rows: row r covers starts[r] .. starts[r] + lengths[r] − 1."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def _scatter(rows: Sequence[Sequence[int]], starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int rows written at `starts` into `size` zeros; returns the values and a 0/1 mask.

    Vectorised: the only Python-level work is flattening the rows, not one loop step per value.
    """
    pos = _positions(_lengths(rows), starts)
    values = np.zeros(size, dtype=np.int64)
    mask = np.zeros(size, dtype=np.float32)
    values[pos] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=pos.size)
    mask[pos] = 1.0
    return values, mask


def _padded(rows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int rows to `width`, truncating longer ones; [n, width] values and mask."""
    n = len(rows)
    values, mask = _scatter([r[:width] for r in rows], np.arange(n) * width, n * width)
    return values.reshape(n, width), mask.reshape(n, width)


def _sequences(samples: Sequence[Sample], seq_len: int) -> tuple[np.ndarray, ...]:
    """Left-pad each behaviour sequence to `seq_len`, keeping the most recent items.

    Items and their tag lists are aligned by the end, so the newest item sits in the last slot.
    """
    n, width = len(samples), MAX_TAGS
    row_ends = (np.arange(n) + 1) * seq_len
    items = [s.seq[-seq_len:] for s in samples]
    seq, seq_mask = _scatter(items, row_ends - _lengths(items), n * seq_len)
    tag_lists = [s.seq_tags[-seq_len:] for s in samples]
    n_lists = _lengths(tag_lists)
    slots = _positions(n_lists, row_ends - n_lists)
    flat_lists = [t[:width] for lists in tag_lists for t in lists]
    tags, tags_mask = _scatter(flat_lists, slots * width, n * seq_len * width)
    return (
        seq.reshape(n, seq_len),
        seq_mask.reshape(n, seq_len),
        tags.reshape(n, seq_len, width),
        tags_mask.reshape(n, seq_len, width),
    )


def _check_range(name: str, values: np.ndarray, buckets: int) -> None:
    """Fail with a clear message instead of an opaque embedding index error."""
    if values.size and (values.min() < 0 or values.max() >= buckets):
        raise ValueError(f"{name} bucket out of range [0, {buckets}): {values.min()}..{values.max()}")


def collate(samples: Sequence[Sample], space: FeatureSpace) -> Batch:
    """Lay samples out as tensors for `DIN`; masks are float 0/1, 1 = real value.

    Keys: `item` [n], `tags`/`tags_mask` [n, MAX_TAGS], `seq`/`seq_mask` [n, seq_len]
    (left-padded), `seq_tags`/`seq_tags_mask` [n, seq_len, MAX_TAGS], `profile`/`profile_mask`
    [n, P] with P the longest profile here (at least 1), `label` [n] float.
    """
    n = len(samples)
    item = np.fromiter((s.item for s in samples), dtype=np.int64, count=n)
    label = np.fromiter((s.label for s in samples), dtype=np.float32, count=n)
    tags, tags_mask = _padded([s.tags for s in samples], MAX_TAGS)
    profile_width = max((len(s.profile) for s in samples), default=0) or 1
    profile, profile_mask = _padded([s.profile for s in samples], profile_width)
    seq, seq_mask, seq_tags, seq_tags_mask = _sequences(samples, space.seq_len)
    _check_range("item", item, space.item_buckets)
    _check_range("seq item", seq, space.item_buckets)
    _check_range("tag", tags, space.tag_buckets)
    _check_range("seq tag", seq_tags, space.tag_buckets)
    _check_range("profile", profile, space.profile_buckets)
    arrays = {
        "item": item,
        "tags": tags,
        "tags_mask": tags_mask,
        "seq": seq,
        "seq_mask": seq_mask,
        "seq_tags": seq_tags,
        "seq_tags_mask": seq_tags_mask,
        "profile": profile,
        "profile_mask": profile_mask,
        "label": label,
    }
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def din_inputs(batch: Mapping[str, torch.Tensor]) -> Batch:
    """`collate` output laid out the way `DIN.forward` reads it, computed once per batch, not per step.

    Keys: `items` [n, 1+L] and `tags` [n, 1+L, MAX_TAGS] (the target in slot 0, its behaviours
    after it), `tag_weights` [n, 1+L, 1, MAX_TAGS] and `profile_weights` [n, 1, P] (the masks as
    mean weights), `seq_mask`, `profile`, `label`. None of it carries a gradient, so a training
    loop can build it before its first mini-batch; the values are the ones the forward pass used
    to compute itself, so the model's numbers do not change.
    """
    tags_mask = torch.cat([batch["tags_mask"].unsqueeze(1), batch["seq_tags_mask"]], dim=1)
    return {
        "items": torch.cat([batch["item"].unsqueeze(1), batch["seq"]], dim=1),
        "tags": torch.cat([batch["tags"].unsqueeze(1), batch["seq_tags"]], dim=1),
        "tag_weights": _mean_weights(tags_mask),
        "seq_mask": batch["seq_mask"],
        "profile": batch["profile"],
        "profile_weights": _mean_weights(batch["profile_mask"]),
        "label": batch["label"],
    }


def _mean_weights(mask: torch.Tensor) -> torch.Tensor:
    """A 0/1 mask over the last axis as weights of a mean (all-masked rows: zeros), with a matmul axis."""
    return (mask / mask.sum(-1, keepdim=True).clamp(min=1.0)).unsqueeze(-2)


def index_batch(batch: Mapping[str, torch.Tensor], idx: torch.Tensor | slice) -> Batch:
    """Rows `idx` of every tensor: mini-batches without re-collating."""
    return {k: v[idx] for k, v in batch.items()}


def seq_tag_histograms(samples: Sequence[Sample], space: FeatureSpace) -> torch.Tensor:
    """[n, tag_buckets]: `core.features.sequence_tag_histogram` of each sample, all tags kept.

    Same arithmetic, vectorised with one bincount: ~4x faster at 256 buckets, which matters
    because the filter featurises every local and matched sample each round.
    """
    n, width = len(samples), space.tag_buckets
    item_lists = [tags for s in samples for tags in s.seq_tags]
    per_item = np.fromiter(map(len, item_lists), dtype=np.int64, count=len(item_lists))
    rows = np.repeat(np.repeat(np.arange(n), [len(s.seq_tags) for s in samples]), per_item)
    cols = np.fromiter(chain.from_iterable(item_lists), dtype=np.int64, count=int(per_item.sum()))
    _check_range("seq tag", cols, width)  # else a bad tag would spill into the next row
    # each item spreads one unit over its tags; items without tags repeat zero times
    shares = np.repeat(1.0 / np.maximum(per_item, 1), per_item)
    counts = np.bincount(rows * width + cols, weights=shares, minlength=n * width)
    hist = counts.astype(np.float64, copy=False).reshape(n, width)  # bincount of nothing is int
    total = hist.sum(axis=1, keepdims=True)
    hist = np.divide(hist, total, out=np.zeros_like(hist), where=total > 0)
    return torch.from_numpy(hist.astype(np.float32))


def classifier_width(space: FeatureSpace) -> int:
    return space.tag_buckets + 1 + (space.tag_buckets if space.classifier_input == "outcome" else 0)


def classifier_features(samples: Sequence[Sample], space: FeatureSpace) -> torch.Tensor:
    """[n, classifier_width]: behaviour-sequence features (histogram, then length / seq_len); with
    classifier_input "outcome" also the target's tags, +1 for a click and −1 for a pass, per tag share."""
    n = len(samples)
    lengths = np.fromiter((min(len(s.seq), space.seq_len) for s in samples), dtype=np.float32, count=n)
    length_feature = torch.from_numpy(lengths / space.seq_len).unsqueeze(1)
    parts = [seq_tag_histograms(samples, space), length_feature]
    if space.classifier_input == "outcome":
        outcome = np.zeros((n, space.tag_buckets), dtype=np.float32)
        for row, s in enumerate(samples):
            if s.tags:
                outcome[row, list(s.tags)] = (1.0 if s.label else -1.0) / len(s.tags)
        parts.append(torch.from_numpy(outcome))
    return torch.cat(parts, dim=1)
