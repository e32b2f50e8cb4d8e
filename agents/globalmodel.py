"""The global-model job: train the global DIN on the cloud's sample pool and publish it, versioned.

Run by `coda cloud train-global`, the demo, experiments and benchmarks once the cloud's history is in."""

from __future__ import annotations

import asyncio
import time

from core.sample import DAY
from streams.settings import Settings


class NoSamples(RuntimeError):
    """The samples topic holds nothing to train on; `letters` are the dead letters that explain why."""

    def __init__(self, message: str, letters: list[object]) -> None:
        super().__init__(message)
        self.letters = letters


async def train_and_publish(settings: Settings, until_day: int | None, epochs: int, seed: int) -> dict[str, object]:
    from core.globalmodel import train_global
    from core.training import TrainConfig
    from streams.kafka import producer
    from streams.schemas import GlobalModel, SampleBatch, SampleBatchV1, encode
    from streams.topicio import read_records
    from streams.topics import load_topics

    topics = load_topics(settings.topics_file, settings.topic_prefix)
    pool = {}
    for record in await read_records(settings, topics.name("samples")):
        if isinstance(record, SampleBatch | SampleBatchV1):
            for s in record.to_samples():
                if until_day is None or s.ts // DAY <= until_day:
                    pool.setdefault(s.sample_id, s)
    if not pool:
        raise await _no_samples(settings, topics.name("samples"), topics.name("dead-letters"))
    cfg = TrainConfig(lr=settings.learning_rate, batch_size=256, epochs=epochs, seed=seed)
    trained = await asyncio.to_thread(train_global, list(pool.values()), settings.features, cfg)
    space = settings.features
    metrics = {"train_samples": trained.train_samples, "holdout_samples": trained.holdout_samples,
               "holdout_auc": trained.holdout_auc, "holdout_logloss": trained.holdout_logloss}
    model = GlobalModel(trained.version, int(time.time()), trained.weights,
                        {k: str(v) for k, v in vars_of(space).items()}, {k: str(v) for k, v in metrics.items()})
    out = producer(settings)
    await out.start()
    try:
        await out.send_and_wait(topics.name("models"), encode(model), key=trained.version.encode())
    finally:
        await out.stop()
    return {"version": trained.version, "topic": topics.name("models"), **metrics}


async def _no_samples(settings: Settings, samples: str, dead_topic: str) -> NoSamples:
    """The error names its cause: what the dead-letter topic says, or that nothing was rejected."""
    from streams.deadletterview import cause
    from streams.schemas import DeadLetter
    from streams.topicio import read_records

    letters = [r for r in await read_records(settings, dead_topic) if isinstance(r, DeadLetter)]
    why = (f"{sum(1 for _ in letters):,} message(s) were dead-lettered: {cause(letters)}" if letters else
           "nothing was dead-lettered either: does the input hold `impression` or `click` events "
           "(only those become samples)?")
    return NoSamples(f"no samples on {samples} to train the global model on; {why}", letters)


def vars_of(space: object) -> dict[str, object]:
    return {name: getattr(space, name) for name in space.__slots__}  # type: ignore[attr-defined]
