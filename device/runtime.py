"""What a fleet's devices share: settings, database pool, where torch jobs run, loaded models, accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from core.arms import assign_arm
from core.models import DIN
from core.personalize import limit_training
from core.sample import Sample
from core.training import TrainConfig, filter_matched, train_gated
from device.accounting import Accounting
from device.modelcache import ModelCache
from device.modelstore import ModelFile, atomic_write, encode_model
from device.storage import DatabasePool, Limits
from device.torchconfig import configure_torch
from streams.settings import Settings

T = TypeVar("T")


class Runtime:
    """Shared by a fleet's devices: settings, database pool, where torch jobs run, models, accounting."""

    def __init__(
        self,
        settings: Settings,
        initial: ModelFile,
        executor: Executor | None = None,
        pool: DatabasePool | None = None,
    ) -> None:
        configure_torch(settings.torch_threads)
        assign_arm(settings.arm_mode, settings.arm_seed, "")  # an unknown arm mode fails here, once
        limit_training(DIN(settings.features), settings.personalize)  # so does an unknown scope
        self.settings = settings
        self.space = settings.features
        self.limits = Limits(settings.max_local_samples, settings.max_outside_samples)
        self.pool = pool or DatabasePool(settings.open_databases)
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-torch")
        self.models = ModelCache(self.space)
        self.accounting = Accounting()
        self.initial = initial
        self.initial_path = settings.state_dir / "fleets" / "global" / f"{initial.version}.model"
        if not self.initial_path.exists():
            self.initial_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.initial_path, encode_model(initial))

    async def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
        """Run blocking torch work (on the loop or the executor); returns (result, wall ms, CPU ms).

        Wall and CPU are measured inside the job: the time spent queueing behind other
        devices' work is the fleet's, not the round's (it is kept in `queue_ms`).
        """
        submitted = time.perf_counter()

        def timed() -> tuple[T, float, float, float]:
            start, cpu = time.perf_counter(), time.thread_time()
            out = fn(*args)
            return out, start, (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000

        if self.settings.torch_on_loop:
            result, start, wall_ms, cpu_ms = timed()
        else:
            result, start, wall_ms, cpu_ms = await asyncio.get_running_loop().run_in_executor(
                self.executor, timed
            )
        self.accounting.queued((start - submitted) * 1000)
        return result, wall_ms, cpu_ms

    async def warm_up(self) -> None:
        """Pay torch's one-off import and optimiser set-up costs before the first real round."""

        def job() -> None:
            s = Sample("warm", "", 0, 0, (0,), (1,), ((0,),), (), 1)
            t = Sample("warm2", "", 0, 1, (1,), (0,), ((1,),), (), 0)
            train_gated(
                self.models.scratch(self.initial), [s, t], [s, t], self.space, TrainConfig(batch_size=2)
            )
            filter_matched([s], [t, s], self.space)

        await self.run(job)

    async def close(self) -> None:
        await self.pool.close_all()
        if self._own_executor:
            self.executor.shutdown(wait=True)
