"""Tests for device.device: local samples, progressive validation, batch validation, triggers, inference."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from samplegen import DAY, START, make_events, make_samples

from core.features import History, event_to_sample
from core.models import DIN, state_to_bytes
from core.privacy import device_pseudonym
from core.sample import Sample
from device.device import Device
from device.initialmodel import fresh_initial
from device.modelstore import M
from device.runtime import Runtime
from streams.schemas import DeviceActions, DownBatch, DownNotice, PullRequest, UpEnvelope, pack_samples
from streams.settings import Settings

DEVICE_ID = "dev-alice"
USER = "alice"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    s = Settings(state_dir=tmp_path, train_trigger=1000, max_envelope_bytes=50_000)
    rt = Runtime(s, fresh_initial(s.features))
    yield rt
    await rt.close()


def new_device(rt: Runtime, device_id: str = DEVICE_ID) -> Device:
    return Device(rt, device_pseudonym(rt.settings.pseudonym_key, device_id), device_id)


def similar_samples(n: int, day: int, seed: int = 7) -> list[Sample]:
    """Samples of another user with the same taste (same item/tag pool) as `make_events` users."""
    out, history = [], History()
    for e in make_events("bob", n, day, seed=seed):
        fields = {"ts": e.ts, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action}
        sample, history = event_to_sample("bob", fields, history, Settings().features)
        out.append(sample)
    return out


def batch(
    device: Device,
    batch_id: str,
    samples: list[Sample],
    request: str = "r",
    day: int = 0,
    of: int = 1,
    **changes: object,
) -> DownBatch:
    fields = dict(
        device=device.pseudonym,
        batch_id=batch_id,
        request_id=request,
        day=START // DAY + day,
        n_samples=len(samples),
        payload=pack_samples(samples),
        of=of,
    )
    fields.update(changes)
    return DownBatch(**fields)  # type: ignore[arg-type]


async def act(device: Device, day: int, n: int = 30, seed: int = 0) -> list:
    out = await device.on_actions(DeviceActions(device.device_id, make_events(USER, n, day, seed=seed), day))
    assert out.rejected is None
    return out.up


async def test_actions_make_scored_samples_an_envelope_and_a_pull(runtime: Runtime) -> None:
    """Impressions/clicks become samples scored by M0 first; all events go up; a pull asks for 12."""
    dev = new_device(runtime)
    up = await act(dev, 0, 20)
    envelope, pull = up
    assert isinstance(envelope, UpEnvelope) and envelope.device_id == DEVICE_ID and len(envelope.events) == 20
    assert isinstance(pull, PullRequest) and pull.max_batches == 12 and pull.user_id == USER
    assert pull.ts // DAY == START // DAY
    rows = await dev.evaluations()
    assert len(rows) == 18  # two page views only extend the history
    assert {r[4] for r in rows} == {runtime.initial.version}
    assert all(0.0 < r[3] < 1.0 for r in rows)
    again = await act(dev, 0, 20)  # redelivered: nothing new, the unanswered pull goes out again
    assert len(await dev.evaluations()) == 18
    assert isinstance(again[1], PullRequest) and again[1].request_id == pull.request_id


@pytest.mark.parametrize(
    "case, reason",
    [
        ("garbled", "bad_payload"),
        ("oversize_payload", "oversize"),
        ("too_many", "oversize"),
        ("count", "count_mismatch"),
        ("space", "out_of_space"),
    ],
)
async def test_rejects_bad_batches(runtime: Runtime, case: str, reason: str) -> None:
    """Garbled, oversized, miscounted or out-of-space batches are rejected with a reason, stored never."""
    dev = new_device(runtime)
    await act(dev, 0)
    good = make_samples(5)
    bad = {
        "garbled": batch(dev, "b", good, payload=b"\x78\x9c not zlib at all"),
        "oversize_payload": batch(dev, "b", good, payload=os.urandom(60_000)),
        "too_many": batch(dev, "b", make_samples(41)),
        "count": batch(dev, "b", good, n_samples=6),
        "space": batch(dev, "b", [Sample("x", "", START, 10**6, (1,), (), (), (), 0)]),
    }[case]
    out = await dev.on_batch(bad)
    assert out.rejected is not None and out.rejected.reason == reason
    assert dev.pseudonym in str(out.rejected)
    assert out.samples == 0
    assert (await dev.on_batch(bad)).duplicate  # redelivered: already handled, not rejected twice


async def test_rejects_a_batch_addressed_to_another_device(runtime: Runtime) -> None:
    """A batch or notice for another pseudonym is refused before anything is touched."""
    dev = new_device(runtime)
    other = new_device(runtime, "dev-mallory")
    out = await dev.on_batch(batch(other, "b1", make_samples(3)))
    assert out.rejected is not None and out.rejected.reason == "wrong_device"
    notice = await dev.on_notice(DownNotice(other.pseudonym, "r", 1, "quota"))
    assert notice.rejected is not None and notice.rejected.reason == "wrong_device"
    actions = await dev.on_actions(DeviceActions("dev-mallory", make_events(USER, 2), 0))
    assert actions.rejected is not None and actions.rejected.reason == "wrong_device"


async def test_request_cycle_filters_pulls_again_stops_on_notice_and_trains(runtime: Runtime) -> None:
    """3 of 12 batches → filter, pull 9 more; 9 → quota used, no pull; notice → train; new day → pull."""
    dev = new_device(runtime)
    await act(dev, 0, 40)
    up = await act(dev, 1, 40)
    first = up[-1]
    matched = similar_samples(300, 1)
    outs = [
        await dev.on_batch(
            batch(dev, f"{first.request_id}-{i}", matched[25 * i : 25 * i + 25], first.request_id, 1, of=3)
        )
        for i in range(3)
    ]
    assert [o.filtered for o in outs[:2]] == [0, 0] and outs[2].filtered > 0  # once the request is complete
    second = outs[2].up[-1]
    assert (
        isinstance(second, PullRequest) and second.max_batches == 9 and second.request_id != first.request_id
    )
    outs = [
        await dev.on_batch(
            batch(
                dev,
                f"{second.request_id}-{i}",
                matched[75 + 25 * i : 100 + 25 * i],
                second.request_id,
                1,
                of=9,
            )
        )
        for i in range(9)
    ]
    assert all(not o.up for o in outs)  # 12 used: no more pulls today
    assert (await dev.state()).used == 12
    done = await dev.on_notice(DownNotice(dev.pseudonym, second.request_id, START // DAY + 1, "quota", 12))
    assert done.trained is not None and not done.trained.skipped
    assert done.trained.n_valid > 0
    stats = runtime.accounting.summary()
    assert stats["round"]["n"] == 1 and stats["round"]["bytes_mean"] > 0
    assert not (await act(dev, 1, 5, seed=3))[1:]  # same day after the notice: no pull
    assert isinstance((await act(dev, 2, 5))[-1], PullRequest)


async def test_filtered_reaching_the_trigger_trains_on_filtered_only_while_local_is_recent(
    tmp_path: Path,
) -> None:
    """train_trigger reached → Algorithm 3; with no local sample older than t, it trains on filtered only."""
    s = Settings(state_dir=tmp_path, train_trigger=3)
    rt = Runtime(s, fresh_initial(s.features))
    try:
        dev = new_device(rt)
        await act(dev, 0, 60)
        out = await dev.on_batch(batch(dev, "b1", similar_samples(40, 0)))
        assert out.filtered >= 3 and out.trained is not None
        assert out.trained.n_train == out.filtered  # local samples are all ≤ t days old: validation only
        assert out.trained.n_valid == 54
        assert (await dev.state()).trains == 1
    finally:
        await rt.close()


async def test_predict_reads_m_or_m0_while_m_is_locked(runtime: Runtime) -> None:
    """Inference serves M; while a training holds the lock it serves M0."""
    dev = new_device(runtime)
    await act(dev, 0)
    candidates = [{"ts": START + 3600, "item_id": f"item{i}", "item_tags": [f"tag{i % 6}"]} for i in range(5)]
    before = await dev.predict(candidates)
    async with dev.models.lock() as training:
        training.write_buffer(state_to_bytes(DIN(runtime.space, seed=42)), training.base())
        training.keep()
    assert (dev.dir / M).exists()
    after = await dev.predict(candidates)
    assert not np.allclose(before, after)
    async with dev.models.lock():
        during = await dev.predict(candidates)
    np.testing.assert_allclose(during, before)


async def test_day_end_expires_old_local_samples(runtime: Runtime) -> None:
    """The end of day d ages samples as of day d+1: day-0 samples (age 8 > t') go at day 7's end, once."""
    dev = new_device(runtime)
    await act(dev, 0, 10)
    await act(dev, 5, 10)
    assert (await dev.on_day_end(START // DAY + 6))[0] == 0
    assert (await dev.on_day_end(START // DAY + 7))[0] == 9
    assert (await dev.on_day_end(START // DAY + 7))[0] == 0
