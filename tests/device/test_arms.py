"""Tests for the experiment arms on a device: who pulls, what coda and the controls keep, when local trains."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from samplegen import DAY, START, make_events
from test_runtime import DEVICE_ID, USER, batch, similar_samples

from core.arms import ARMS, assign_arm, random_like
from core.privacy import device_pseudonym
from core.sample import Sample
from core.training import FilterResult, filter_matched
from device.device import Device
from device.initialmodel import fresh_initial
from device.record import KEPT_KEY
from device.runtime import Runtime
from device.storage import open_store
from streams.schemas import DeviceActions, DownNotice, PullRequest
from streams.settings import Settings


def test_rotation_puts_every_device_in_every_arm_over_five_seeds() -> None:
    """Seeds 0..4 rotate a device through all five arms; one seed splits devices into five buckets."""
    devices = [device_pseudonym("k", f"dev-{i}") for i in range(200)]
    for d in devices[:20]:
        assert {assign_arm("buckets", s, d) for s in range(5)} == set(ARMS)
    counts = {arm: sum(assign_arm("buckets", 0, d) == arm for d in devices) for arm in ARMS}
    assert min(counts.values()) > 20
    assert all(assign_arm("coda", s, d) == "coda" for s in range(3) for d in devices[:5])
    with pytest.raises(ValueError):
        assign_arm("nonsense", 0, devices[0])


@asynccontextmanager
async def arm_device(tmp_path: Path, arm: str, **changes: object) -> AsyncIterator[Device]:
    """DEVICE_ID's device on a fresh runtime whose arm seed puts it in `arm`; the runtime is closed after."""
    pseudonym = device_pseudonym(Settings().pseudonym_key, DEVICE_ID)
    seed = next(s for s in range(5) if assign_arm("buckets", s, pseudonym) == arm)
    s = Settings(state_dir=tmp_path, arm_mode="buckets", arm_seed=seed, pull_trigger="day_end", **changes)
    rt = Runtime(s, fresh_initial(s.features))
    try:
        yield Device(rt, device_pseudonym(rt.settings.pseudonym_key, DEVICE_ID), DEVICE_ID)
    finally:
        await rt.close()


async def act(dev: Device, day: int, n: int = 30, seed: int = 0) -> None:
    out = await dev.on_actions(DeviceActions(DEVICE_ID, make_events(USER, n, day, seed=seed), day))
    assert out.rejected is None


async def kept_ids(dev: Device) -> list[str]:
    async with open_store(dev.rt.pool, dev.dir, dev.rt.limits) as store:
        return list(await store.get_state(KEPT_KEY, []))


@pytest.mark.parametrize("arm", ["cloud", "local"])
async def test_cloud_and_local_never_pull(tmp_path: Path, arm: str) -> None:
    """Neither arm asks the cloud for samples; their evaluations use M0 until local trains."""
    async with arm_device(tmp_path, arm) as dev:
        await act(dev, 0)
        _, pull = await dev.on_day_end(START // DAY)
        assert pull is None and (await dev.state()).arm == arm
        assert {r[4] for r in await dev.evaluations()} == {dev.rt.initial.version}


async def test_local_trains_at_the_end_of_a_used_day(tmp_path: Path) -> None:
    """Local samples old enough to train (t < age ≤ t') + recent ones to validate → Algorithm 3 at day end."""
    async with arm_device(tmp_path, "local") as dev:
        await act(dev, 0, 60)
        await dev.on_day_end(START // DAY)
        assert (await dev.state()).trains == 0  # all samples are validation-age: nothing to train on
        await act(dev, 4, 60, seed=1)
        await dev.on_day_end(START // DAY + 4)
        assert (await dev.state()).trains == 1


async def test_coda_pulls_at_day_end_and_follow_ups_stay_in_that_day(tmp_path: Path) -> None:
    """The day-end pull and a follow-up after a short answer are both dated in the quota day."""
    async with arm_device(tmp_path, "coda") as dev:
        await act(dev, 0, 40)
        day = START // DAY
        _, pull = await dev.on_day_end(day)
        assert isinstance(pull, PullRequest) and pull.ts // DAY == day
        out = await dev.on_batch(batch(dev, f"{pull.request_id}-0", similar_samples(30, 0), pull.request_id, 0))
        follow = out.up[-1]
        assert isinstance(follow, PullRequest) and follow.ts // DAY == day and follow.max_batches == 11


async def _filter_as_the_device(dev: Device, matched: list[Sample], sigma: float) -> FilterResult:
    """Algorithm 2 rerun with the device's local samples, seed and classifier model: what it scored."""
    rt = dev.rt
    async with open_store(rt.pool, dev.dir, rt.limits) as store:
        local = (await store.local_split((START // DAY + 1) * DAY, 3, 7)).classifier
    return filter_matched(local, sorted(matched, key=lambda x: (x.ts, x.sample_id)), rt.space, sigma,
                          rt.settings.classifier_share, dev._seed("filter", 0),  # noqa: SLF001 - the device's seed
                          model=rt.settings.classifier_model)


@pytest.mark.parametrize(("model", "sigma"), [("mlp", 0.5), ("centroid", 0.8)])
async def test_filters_keep_what_each_arm_promises(tmp_path: Path, model: str, sigma: float) -> None:
    """coda keeps exactly the classifier's picks (score ≥ σ); coda_random as many, but its own random draw
    (not the picks); coda_nofilter every matched sample."""
    matched = similar_samples(40, 0)
    kept: dict[str, set[str]] = {}
    picks: dict[str, set[str]] = {}
    for arm in ("coda_nofilter", "coda_random", "coda"):
        async with arm_device(tmp_path / arm, arm, sigma=sigma, classifier_model=model) as dev:
            await act(dev, 0, 40)
            await dev.on_batch(batch(dev, "b0", matched))
            kept[arm] = set(await kept_ids(dev))
            if arm == "coda_nofilter":
                continue
            result = await _filter_as_the_device(dev, matched, sigma)
            picks[arm] = {x.sample_id[:12] for x in result.kept}
            assert all(result.scores[x.sample_id] >= sigma for x in result.kept)
            assert 0 < len(picks[arm]) < len(result.scored_ids)  # a strict choice: chance could not match it
            if arm == "coda_random":
                drawn = random_like(result, sigma, dev._seed("random", 0))  # noqa: SLF001 - the device's seed
                assert kept[arm] == {sid[:12] for sid in drawn.keep}
    assert kept["coda_nofilter"] == {x.sample_id[:12] for x in matched}
    assert kept["coda"] == picks["coda"]
    assert len(kept["coda_random"]) == len(picks["coda_random"]) and kept["coda_random"] != picks["coda_random"]
    assert kept["coda_random"] <= {x.sample_id[:12] for x in matched}


async def test_notice_ends_the_day_for_every_pulling_arm(tmp_path: Path) -> None:
    """A quota notice stops pulling for the day in the control arms too."""
    async with arm_device(tmp_path, "coda_random") as dev:
        await act(dev, 0, 40)
        _, pull = await dev.on_day_end(START // DAY)
        assert pull is not None
        await dev.on_notice(DownNotice(dev.pseudonym, pull.request_id, START // DAY, "exhausted", 0))
        assert (await dev.state()).stopped
