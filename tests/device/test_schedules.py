"""Tests for fair training schedules on event-time days, and a device that starts with its user's past."""

from __future__ import annotations

from pathlib import Path

from samplegen import DAY, START, make_events
from test_arms import act, arm_device
from test_runtime import DEVICE_ID, USER

from core.features import History, event_to_sample
from streams.schemas import DevicePast, DownNotice


async def _day(dev, day: int, n: int = 40, seed: int = 0):  # type: ignore[no-untyped-def]
    """One active day: actions, the day-end tick (the pull, if the arm pulls), and the cloud's notice."""
    await act(dev, day, n, seed=seed)
    _, pull = await dev.on_day_end(START // DAY + day)
    if pull is None:
        return None
    return await dev.on_notice(DownNotice(dev.pseudonym, pull.request_id, START // DAY + day, "exhausted", 0))


async def test_every_personalizing_arm_trains_on_every_active_day(tmp_path: Path) -> None:
    """Local at day end, the CoDA arms on the notice even when the cloud sent nothing; cloud never.

    On a fake clock of event-time days 0 and 4..6: day 0 has only validation-age samples (no training
    set), from day 4 on every active day trains once — the same count for local and the CoDA arms.
    """
    trains = {}
    for arm in ("cloud", "local", "coda", "coda_nofilter", "coda_random"):
        async with arm_device(tmp_path / arm, arm) as dev:
            per_day = []
            for n, day in enumerate((0, 4, 5, 6)):
                await _day(dev, day, seed=n)
                per_day.append((await dev.state()).trains)
            trains[arm] = per_day
    assert trains["cloud"] == [0, 0, 0, 0]
    assert trains["local"] == [0, 1, 2, 3]
    for arm in ("coda", "coda_nofilter", "coda_random"):
        assert trains[arm] == trains["local"], (arm, trains)


async def test_a_device_trains_once_a_day_when_nothing_is_kept(tmp_path: Path) -> None:
    """A second notice on the same day (redelivery, or a second request) does not train again on the same data."""
    async with arm_device(tmp_path, "coda") as dev:
        await _day(dev, 0)
        out = await _day(dev, 4, seed=1)
        assert out is not None and out.trained is not None and not out.trained.skipped
        again = await dev.on_notice(DownNotice(dev.pseudonym, "other", START // DAY + 4, "quota", 0))
        assert again.trained is None and (await dev.state()).trains == 1


async def test_past_builds_the_history_and_nothing_else(tmp_path: Path) -> None:
    """DevicePast: the first live sample's sequence is the user's past; no samples, scores or reports."""
    async with arm_device(tmp_path, "coda") as dev:
        past = make_events(USER, 25, 0, seed=7)
        out = await dev.on_past(DevicePast(DEVICE_ID, past))
        assert out.rejected is None and not out.up and out.samples == 0
        assert await dev.evaluations() == []
        space = dev.rt.space
        history = History()
        for raw in sorted(past, key=lambda e: (e.ts, e.item_id, e.action)):
            _, history = event_to_sample(USER, _fields(raw), history, space)
        st = await dev.state()
        assert tuple(st.items) == history.items and len(st.items) == space.seq_len
        await act(dev, 1, 5, seed=8)
        assert len(await dev.evaluations()) > 0
        wrong = await dev.on_past(DevicePast("dev-mallory", past))
        assert wrong.rejected is not None and wrong.rejected.reason == "wrong_device"


def _fields(e):  # type: ignore[no-untyped-def]
    return {"ts": e.ts, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action,
            "profile": e.profile, "label": e.label}
