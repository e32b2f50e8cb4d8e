"""Feature hashing, sample construction from behaviour events, and the user feature of Algorithm 1."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.sample import DAY, SAMPLE_ACTIONS, Sample


@dataclass(frozen=True, slots=True)
class FeatureSpace:
    """Sizes of the hashed feature spaces; the models and the user vectors share them."""

    item_buckets: int = 4096
    tag_buckets: int = 256  # few collisions for tag vocabularies of ~20-50 (MovieLens: 19 genres)
    profile_buckets: int = 256
    seq_len: int = 20
    # the user-side feature whose mean is the user's vector (Algorithm 1): "sequence" (the paper:
    # tag histogram of the behaviour sequence and target) or "clicks" (a business statistic: the
    # tags of what the user clicked, less a third for what was shown and passed over — where
    # exposure does not follow taste, only outcomes show it)
    user_feature: str = "sequence"
    # Algorithm 2's classifier input: "sequence" (the paper: behaviour-sequence histogram and
    # length) or "outcome" (that, plus the sample's own target tags signed by its label: which
    # items this user clicks or passes over)
    classifier_input: str = "sequence"
    # 0 (the paper): the user vector is one mean over the user's whole life. N: each sample's
    # user feature lands in buckets keyed by its N-day calendar period as well, so two users are
    # alike when they liked the same things in the same periods: a taste that changes over time is
    # compared period by period instead of being averaged away (the vector keeps its size)
    user_period_days: int = 0
    # which events extend a user's behaviour sequence: "all" (every event the log holds, shown or
    # clicked) or "clicks" (clicks and other positive actions, DIN's "user behaviours": where
    # exposure does not follow taste, only what the user picked says who the user is)
    sequence_actions: str = "all"


USER_FEATURES = ("sequence", "clicks")
CLASSIFIER_INPUTS = ("sequence", "outcome")
# "clicks": a pass weighs a third of a click, the odds of a click at a 25 % click rate, so an
# average user's vector is near zero and cosine compares what each user picks beyond the average
PASS_WEIGHT = 1 / 3


def bucket(value: object, buckets: int, salt: str = "") -> int:
    """Stable hash of `value` into [0, buckets); never Python's randomized `hash`."""
    return _hashed(f"{salt}\x1f{value}", buckets)


@functools.lru_cache(maxsize=1 << 16)
def _hashed(text: str, buckets: int) -> int:
    """Item ids, tags and profile values recur in every event: hash each text once (ingest's top cost)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def item_bucket(item_id: object, space: FeatureSpace) -> int:
    return bucket(item_id, space.item_buckets, "item")


def tag_buckets(tags: Iterable[object], space: FeatureSpace) -> tuple[int, ...]:
    return tuple(sorted({bucket(t, space.tag_buckets, "tag") for t in tags}))


def profile_buckets(profile: Mapping[str, object] | None, space: FeatureSpace) -> tuple[int, ...]:
    """Hash `field=value` pairs: the raw personal values never leave this function."""
    if not profile:
        return ()
    return tuple(sorted({bucket(f"{k}={v}", space.profile_buckets, "profile") for k, v in profile.items()}))


def sample_id(user: str, ts: int, item_id: object, action: str) -> str:
    """Deterministic id, so a redelivered event yields the same sample (idempotence)."""
    raw = f"{user}\x1f{ts}\x1f{item_id}\x1f{action}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class History:
    """The user's recent behaviour: item buckets and their tag buckets, oldest first."""

    items: tuple[int, ...] = ()
    tags: tuple[tuple[int, ...], ...] = ()

    def push(self, item: int, tags: tuple[int, ...], seq_len: int) -> History:
        return History((self.items + (item,))[-seq_len:], (self.tags + (tags,))[-seq_len:])


def event_to_sample(
    user: str,
    event: Mapping[str, object],
    history: History,
    space: FeatureSpace,
) -> tuple[Sample, History]:
    """Turn one behaviour event into a sample whose sequence is the behaviour *before* it.

    `event` needs `ts`, `item_id`, `item_tags`, `action`, optional `profile` and `label`
    (label defaults to 1 for a click action, else 0). Returns the sample and the history
    extended by this event (with `space.sequence_actions == "clicks"`, only if it was clicked or
    is not a sample action at all, e.g. a purchase).
    """
    ts = int(event["ts"])  # type: ignore[call-overload]
    action = str(event["action"])
    item = item_bucket(event["item_id"], space)
    tags = tag_buckets(event.get("item_tags") or (), space)  # type: ignore[arg-type]
    label = event.get("label")
    label_value = int(label) if label is not None else int(action == "click")  # type: ignore[call-overload]
    sample = Sample(
        sample_id=sample_id(user, ts, event["item_id"], action),
        user=user,
        ts=ts,
        item=item,
        tags=tags,
        seq=history.items,
        seq_tags=history.tags,
        profile=profile_buckets(event.get("profile"), space),  # type: ignore[arg-type]
        label=label_value,
    )
    if not extends_sequence(action, label_value, space):
        return sample, history
    return sample, history.push(item, tags, space.seq_len)


def extends_sequence(action: str, label: int | None, space: FeatureSpace) -> bool:
    """Whether an event joins its user's behaviour sequence: always, unless `space.sequence_actions` is
    "clicks" and it is a sample action that was not clicked (shown and passed over)."""
    if space.sequence_actions == "all" or action not in SAMPLE_ACTIONS:
        return True
    return bool(label) if label is not None else action == "click"


def sequence_tag_histogram(seq_tags: Sequence[Sequence[int]], space: FeatureSpace) -> list[float]:
    """User-side feature of one sample: normalized tag histogram of its behaviour sequence.

    An empty sequence gives the zero vector (it contributes nothing to a direction).
    """
    hist = [0.0] * space.tag_buckets
    for tags in seq_tags:
        if not tags:
            continue
        share = 1.0 / len(tags)
        for t in tags:
            hist[t] += share
    total = sum(hist)
    return [h / total for h in hist] if total > 0 else hist


def user_feature(sample: Sample, space: FeatureSpace) -> list[float]:
    """The feature that enters the user's mean vector (Algorithm 1).

    The behaviour-sequence tag histogram plus the target item's own tags, so a user's very
    first sample (empty sequence) still says something about taste.
    """
    if space.user_feature == "clicks" or space.user_period_days:
        dense = [0.0] * space.tag_buckets
        for bucket_, value in user_feature_sparse(sample, space.user_feature, space.user_period_days,
                                                  space.tag_buckets).items():
            dense[bucket_] = value
        return dense
    seq_tags = list(sample.seq_tags) + [sample.tags]
    return sequence_tag_histogram(seq_tags, space)


def user_feature_sparse(sample: Sample, kind: str = "sequence", period_days: int = 0,
                        buckets: int = 0) -> dict[int, float]:
    """`user_feature`'s non-zero entries, bucket -> value, with bit-identical values.

    The same additions in the same order (a zero adds nothing to a sum of non-negative
    floats), without building, dividing and adding a dense vector per sample. With
    `period_days`, each entry moves to the bucket of (its tag bucket, the sample's calendar
    period) among `buckets`.
    """
    values = _user_feature_values(sample, kind)
    return _in_period(values, sample.ts // DAY // period_days, buckets) if period_days else values


def _in_period(values: dict[int, float], period: int, buckets: int) -> dict[int, float]:
    """Re-key tag buckets by calendar period; two tags meeting in one bucket add, in tag order."""
    out: dict[int, float] = {}
    for tag, value in values.items():
        key = bucket(f"{tag}\x1f{period}", buckets, "period")
        out[key] = out.get(key, 0.0) + value
    return out


def _user_feature_values(sample: Sample, kind: str) -> dict[int, float]:
    if kind == "clicks":  # a click spreads +1 over the item's tags, a pass −PASS_WEIGHT
        weight = 1.0 if sample.label else -PASS_WEIGHT
        return {t: weight / len(sample.tags) for t in sample.tags}
    hist: dict[int, float] = {}
    for tags in [*sample.seq_tags, sample.tags]:
        if not tags:
            continue
        share = 1.0 / len(tags)
        for t in tags:
            hist[t] = hist.get(t, 0.0) + share
    order = sorted(hist)
    total = sum(hist[t] for t in order)
    return {t: hist[t] / total for t in order} if total > 0 else {}


def is_finite_vector(vector: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in vector)
