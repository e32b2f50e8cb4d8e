"""Tests for device.storage: limits never exceeded, lifecycle applied in SQL, the bounded connection pool."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from samplegen import DAY, START, SampleMaker, make_samples

from core.lifecycle import FilterOutcome, OutsideRole
from device.storage import DatabasePool, Limits, open_store, sample_from_blob, sample_to_blob


def test_sample_blob_round_trip() -> None:
    """A stored sample comes back equal, tuples and all."""
    for s in make_samples(5):
        assert sample_from_blob(sample_to_blob(s)) == s


ops = st.lists(
    st.tuples(st.sampled_from(["local", "outside", "filter"]), st.integers(1, 30), st.integers(0, 9)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops, local_limit=st.integers(2, 25), outside_limit=st.integers(2, 25))
def test_storage_never_exceeds_its_limits(sequence: list, local_limit: int, outside_limit: int) -> None:
    """Random inserts and filter outcomes: after every flush each table is within its limit, DB intact."""
    asyncio.run(_run_sequence(sequence, Limits(local_limit, outside_limit)))


async def _run_sequence(sequence: list, limits: Limits) -> None:
    pool = DatabasePool(2)
    directory = Path(tempfile.mkdtemp(prefix="coda-storage-"))
    try:
        for step, (kind, n, day) in enumerate(sequence):
            async with open_store(pool, directory, limits) as store:
                batch = make_samples(n, f"{kind}{step}-", START + day * DAY, seed=step)
                if kind == "local":
                    store.add_local(batch)
                elif kind == "outside":
                    store.add_outside(batch, f"r{step}")
                else:  # score what is unscored: half kept, half deleted
                    pending = await store.outside(OutsideRole.NEW)
                    keep = {s.sample_id: 0.2 + 0.01 * i for i, s in enumerate(pending[::2])}
                    await store.apply_filter(FilterOutcome([s.sample_id for s in pending[1::2]], keep))
                await store.flush()
                assert await store.count_local() <= limits.local
                assert await store.count_outside() <= limits.outside
                assert await store.integrity() == "ok"
    finally:
        await pool.close_all()


async def test_forced_cleanup_keeps_best_outside_and_newest_local(tmp_path: Path) -> None:
    """A full outside table loses its lowest scores; a full local table its oldest samples."""
    pool = DatabasePool(1)
    limits = Limits(local=4, outside=4)
    async with open_store(pool, tmp_path, limits) as store:
        outside = make_samples(4, "o")
        store.add_outside(outside, "r1")
        await store.flush()
        await store.apply_filter(
            FilterOutcome([], {s.sample_id: 0.3 + 0.1 * i for i, s in enumerate(outside)})
        )
        store.add_outside(make_samples(1, "new"), "r2")
        store.add_local(make_samples(6, "l"))
        result = await store.flush()
        kept = {s.sample_id for s in await store.outside(OutsideRole.KEPT)}
        new = {s.sample_id for s in await store.outside(OutsideRole.NEW)}
        split = await store.local_split(START, 3, 7)
    await pool.close_all()
    assert kept == {"o2", "o3"} and new == {"new0"}  # halved to 2 before the insert
    assert [s.sample_id for s in split.validate] == ["l4", "l5"]  # 6 into 4: halved to 2, newest kept
    assert result.dropped_outside == 2 and result.dropped_local == 4


async def test_expiry_and_batches(tmp_path: Path, samples: SampleMaker) -> None:
    """Local samples older than t' are deleted; batch ids are remembered, then forgotten by day."""
    pool = DatabasePool(1)
    async with open_store(pool, tmp_path, Limits()) as store:
        store.add_local(samples(3, "old", START) + samples(2, "new", START + 8 * DAY))
        store.add_batch("b1", "r1", 3, 25, 900, "stored")
        await store.flush()
        assert await store.expire_local(START + 8 * DAY, 7) == 3
        assert await store.count_local() == 2
        assert await store.batch_status("b1") == "stored"
        assert await store.forget_batches(4) == 1
        assert await store.batch_status("b1") is None
    await pool.close_all()


async def test_failed_work_writes_nothing(tmp_path: Path, samples: SampleMaker) -> None:
    """An exception inside the store's block discards the buffered writes."""
    pool = DatabasePool(1)
    try:
        async with open_store(pool, tmp_path, Limits()) as store:
            store.add_local(samples(3))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    async with open_store(pool, tmp_path, Limits()) as store:
        assert await store.count_local() == 0
    await pool.close_all()


async def test_pool_bounds_open_connections(tmp_path: Path, samples: SampleMaker) -> None:
    """40 databases used concurrently through a pool of 3: never more than 3 open, all data lands."""
    pool = DatabasePool(3)
    peak = 0

    async def use(i: int) -> None:
        nonlocal peak
        async with open_store(pool, tmp_path / f"d{i}", Limits()) as store:
            peak = max(peak, pool.open_now)
            store.add_local(samples(2, f"d{i}-"))
            await asyncio.sleep(0.001)

    await asyncio.gather(*(use(i) for i in range(40)))
    assert peak <= 3 and pool.open_now <= 3
    assert pool.stats.opened == pool.stats.closed + pool.open_now
    for i in (0, 39):
        async with open_store(pool, tmp_path / f"d{i}", Limits()) as store:
            assert await store.count_local() == 2
    await pool.close_all()
    assert pool.open_now == 0
