"""A cloud worker: the Faust app with every agent, its vector-index replica and its stats file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import faust
from aiokafka import TopicPartition

from agents import assemble, ingest, match, neighbours, vectors
from agents.context import CloudContext
from agents.index import UserPoint, open_index
from streams import codec  # noqa: F401 - registers the "coda" codec used by tables
from streams.app import create_app
from streams.kafka import committed_offsets, consumer
from streams.logs import logging_config
from streams.metrics import Metrics, consumer_lag, metrics_port
from streams.process import tune_gc
from streams.schemas import SchemaError, UserVector, decode
from streams.settings import Settings
from streams.topics import Topics, load_topics

log = logging.getLogger(__name__)


# A flush (persist + HNSW optimize) holds the GIL and fsyncs. A stream in bursts leaves the
# replica caught up for a moment between them; flushing at each such moment stalled every
# agent of the worker about once per burst. Two quiet polls (~0.4 s) mean a real pause.
FLUSH_AFTER_QUIET_POLLS = 2
LAG_INTERVAL_S = 5.0


def worker_dir(settings: Settings, worker_id: str) -> Path:
    return settings.state_dir / "workers" / f"{settings.topic_prefix}-{worker_id}"


def local_index_dirs(home: Path) -> list[Path]:
    return [home / "index", home / "qdrant-local"]


def build_worker(settings: Settings, worker_id: str = "0", topics: Topics | None = None) -> CloudContext:
    """The app with all agents; each worker holds its own index replica (or shares a server)."""
    topics = topics or load_topics(settings.topics_file, settings.topic_prefix)
    app = create_app(settings, topics)
    ctx = CloudContext(settings, topics, app)
    home = worker_dir(settings, worker_id)
    home.mkdir(parents=True, exist_ok=True)
    ctx.index = open_index(settings.index_url, settings.tag_buckets, home)
    ctx.index_home = home
    ingest.register(ctx)
    user_tables = vectors.register(ctx)
    neighbours.register(ctx, user_tables)
    match.register(ctx, user_tables.users)
    assemble.register(ctx)
    replica_group = f"{settings.app_id}-index-{worker_id}"

    @app.task
    async def index_replica() -> None:
        await follow_user_vectors(ctx, replica_group)

    ctx.metrics = Metrics("worker", worker_id)
    lag: dict[str, int | None] = {"lag": None}

    @app.task
    async def measure_lag() -> None:
        """Every few seconds, off the stats timer: positions go through Faust's consumer thread."""
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            lag["lag"] = await consumer_lag(app.consumer)

    @app.timer(1.0)
    async def write_stats() -> None:
        current = {**stats(ctx), **lag}
        write_json(home / "stats.json", current)
        ctx.metrics.update(current)

    return ctx


def stats(ctx: CloudContext) -> dict[str, object]:
    out: dict[str, object] = {name: c.as_dict() for name, c in ctx.counters.items()}
    out["dead_letter_reasons"] = dict(ctx.letters.counts) if ctx.letters else {}
    up = ctx.topics.name("up")  # co-partitioned: the worker's partitions of every stream topic
    out["partitions"] = sorted(tp.partition for tp in ctx.app.assignor.assigned_actives() if tp.topic == up)
    return out


def write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def latest_points(records: Sequence[bytes]) -> list[UserPoint]:
    """Compaction done by the reader: the newest vector per user wins (Tansu does not compact)."""
    latest: dict[str, UserVector] = {}
    for raw in records:
        try:
            vector = decode(raw, 1 << 24, (UserVector,))
        except SchemaError as err:
            log.warning("skipping undecodable user vector: %s", err)
            continue
        assert isinstance(vector, UserVector)
        latest[vector.user] = vector
    return [UserPoint(v.user, v.vector, v.count, v.last_ts) for v in latest.values()]


async def follow_user_vectors(ctx: CloudContext, group: str, stop: asyncio.Event | None = None) -> None:
    """Keep `index` equal to the compacted user-vectors topic, from its start.

    Committing under a per-replica group makes the replica's lag visible to `coda stack
    status` and to the day barrier of replays; an empty index always reads from offset 0.
    """
    name = ctx.topics.name("user-vectors")
    reader = consumer(ctx.settings, name, group_id=group, enable_auto_commit=False,
                      auto_offset_reset="earliest", max_poll_records=5000)
    await reader.start()
    try:
        if not await has_commits(ctx, group):
            # A replica that never followed this topic (e.g. the in-memory broker restarted)
            # must not keep points from an earlier life: start it empty, read from offset 0.
            await ctx.index_call(reset_local_index, ctx)
            await reader.seek_to_beginning()
        dirty = False
        quiet = 0  # empty polls in a row
        while stop is None or not stop.is_set():
            batch = await reader.getmany(timeout_ms=200)
            raw = [r.value for records in batch.values() for r in records]
            quiet = 0 if raw else quiet + 1
            if raw:
                await ctx.index_call(ctx.index.upsert, latest_points(raw))
                await reader.commit()  # upserted points are searchable before any flush
                ctx.stage("index").received += len(raw)
                ctx.stage("index").processed += len(raw)
                dirty = True
            elif dirty and quiet >= FLUSH_AFTER_QUIET_POLLS:
                # caught up: persist and let the engine build HNSW now, off the hot path
                await ctx.index_call(ctx.index.flush)
                ctx.stage("index").extra["points"] = await ctx.index_call(ctx.index.count)
                dirty = False
    finally:
        await reader.stop()


async def has_commits(ctx: CloudContext, group: str) -> bool:
    name = ctx.topics.name("user-vectors")
    parts = [TopicPartition(name, p) for p in range(ctx.topics["user-vectors"].partitions)]
    committed = await committed_offsets(ctx.settings, group, parts)
    return any(off >= 0 for off in committed.values())


def reset_local_index(ctx: CloudContext) -> None:
    """Empty an embedded/local replica; a shared server collection is left alone (upserts are idempotent)."""
    if ctx.settings.index_url.split(":", 1)[0] not in ("edge", "qdrant-local", "memory", "exact"):
        return
    ctx.index.close()
    for path in local_index_dirs(ctx.index_home):
        shutil.rmtree(path, ignore_errors=True)
    ctx.index = open_index(ctx.settings.index_url, ctx.settings.tag_buckets, ctx.index_home)


def run_worker(settings: Settings, worker_id: str) -> None:
    """Blocking: run one worker until SIGINT/SIGTERM (Faust's worker handles signals)."""
    ctx = build_worker(settings, worker_id)
    if settings.metrics_host:
        port = ctx.metrics.start(settings.metrics_host, metrics_port(settings.worker_metrics_port, worker_id),
                                 settings.state_dir)
        log.info("worker %s: metrics on http://%s:%s/metrics", worker_id, settings.metrics_host, port)
    tune_gc()
    # Faust sets up logging itself: hand it the same JSON configuration as every `coda` process
    worker = faust.Worker(ctx.app, loglevel=settings.log_level.upper(), quiet=True,
                          logging_config=logging_config(settings.log_level.upper()))
    worker.execute_from_commandline()
