"""Down-tunnel checks: a batch's size, payload, sample count and feature buckets, before it is stored."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from core.features import FeatureSpace
from core.sample import Sample
from device.outcomes import Rejected
from streams.schemas import DownBatch, SchemaError, unpack_samples
from streams.settings import Settings

INFLATE_FACTOR = 20  # a payload may inflate to this many times the envelope limit


def validate_batch(pseudonym: str, batch: DownBatch, s: Settings, space: FeatureSpace) -> list[Sample]:
    """The batch's samples, or `Rejected` with the dead-letter reason."""
    where = f"batch {batch.batch_id}"
    max_payload = s.max_envelope_bytes
    if len(batch.payload) > max_payload:
        raise Rejected(pseudonym, "oversize", f"{where}: payload {len(batch.payload)} B > {max_payload} B")
    if batch.n_samples > s.batch_max:
        raise Rejected(pseudonym, "oversize", f"{where}: {batch.n_samples} samples > {s.batch_max}")
    try:
        samples = unpack_samples(batch.payload, max_payload * INFLATE_FACTOR)
    except SchemaError as err:
        raise Rejected(pseudonym, err.reason, f"{where}: {err.detail}") from None
    if len(samples) != batch.n_samples:
        raise Rejected(
            pseudonym,
            "count_mismatch",
            f"{where}: payload holds {len(samples)} samples, header says {batch.n_samples}",
        )
    if out_of_space(samples, space):  # one pass for the batch; per sample only to name the culprit
        for x in samples:
            bad = out_of_space([x], space)
            if bad:
                raise Rejected(pseudonym, "out_of_space", f"{where}: sample {x.sample_id}: {bad}")
    return samples


def out_of_space(samples: Sequence[Sample], space: FeatureSpace) -> str:
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
