"""Subprocess for the crash tests: writes models and samples in a loop until it is SIGKILLed.

Usage: python crash_worker.py STATE_DIR files|device. Prints "ready" once the loop runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from samplegen import make_events, make_samples

from device.modelstore import ModelFile, ModelStore, version_id
from device.storage import DatabasePool, Limits, open_store
from streams.schemas import DeviceActions, DownBatch, DownNotice, pack_samples
from streams.settings import Settings

LIMITS = Limits(local=40, outside=40)
DEVICE_ID = "dev-crash"


def crash_settings(state_dir: Path) -> Settings:
    return Settings(
        state_dir=state_dir,
        max_local_samples=LIMITS.local,
        max_outside_samples=LIMITS.outside,
        train_trigger=30,
    )


async def files_loop(state_dir: Path) -> None:
    """Model writes under the lock (big files: more time inside a write) interleaved with DB flushes."""
    store = ModelStore(state_dir / "files")
    weights0 = os.urandom(1 << 20)
    store.ensure_initial(ModelFile(version_id(0, weights0), "", 0, weights0))
    pool = DatabasePool(1)
    i = 0
    while True:
        async with store.lock() as training:
            training.write_buffer(os.urandom(1 << 20), training.base())
            if i % 3:
                training.keep()
        async with open_store(pool, state_dir / "files", LIMITS) as db:
            db.add_local(make_samples(7, f"l{i}-", seed=i))
            db.add_outside(make_samples(9, f"o{i}-", seed=i + 1), f"r{i}")
        if i == 0:
            print("ready", flush=True)
        i += 1


async def device_loop(state_dir: Path) -> None:
    """The real device: actions, a request's batches, a notice (training), day after day."""
    from device.device import Device  # torch: only this mode pays the import
    from device.initialmodel import fresh_initial
    from device.runtime import Runtime

    settings = crash_settings(state_dir)
    runtime = Runtime(settings, fresh_initial(settings.features))
    await runtime.warm_up()
    from core.privacy import device_pseudonym

    device = Device(runtime, device_pseudonym(settings.pseudonym_key, DEVICE_ID), DEVICE_ID)
    print("ready", flush=True)
    day = 0
    while True:
        await device.on_actions(DeviceActions(DEVICE_ID, make_events("u-crash", 20, day), day))
        st = await device.state()
        for b in range(4):
            batch = make_samples(25, f"d{day}b{b}-", seed=day * 10 + b)
            await device.on_batch(
                DownBatch(
                    device.pseudonym, f"{st.request}-{b}", st.request, st.day, 25, pack_samples(batch), of=4
                )
            )
        await device.on_notice(DownNotice(device.pseudonym, st.request, st.day, "quota", 4))
        await device.on_day_end(st.day)
        day += 1


def main() -> None:
    state_dir, mode = Path(sys.argv[1]), sys.argv[2]
    asyncio.run(files_loop(state_dir) if mode == "files" else device_loop(state_dir))


if __name__ == "__main__":
    main()
