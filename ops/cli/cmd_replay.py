"""`coda replay`: publish a dataset, an events file or a historical topic range into a namespace."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ops.cli.cmd_validate import add_input_options
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="built-in dataset: movielens-100k | instacart | synthetic")
    source.add_argument("--events", type=Path, help="JSON Lines of behaviour events (see README)")
    source.add_argument("--from-topic", help="a historical topic (full name) carrying up-tunnel or action messages")
    parser.add_argument("--start-offset", type=int, help="first offset (per partition) of --from-topic")
    parser.add_argument("--end-offset", type=int, help="end offset (exclusive, per partition) of --from-topic")
    parser.add_argument("--start-time", help="only events at/after this event time (unix s or ISO date)")
    parser.add_argument("--end-time", help="only events before this event time (unix s or ISO date)")
    parser.add_argument("--namespace", help="replay into an isolated namespace (topics, groups, index, state)")
    parser.add_argument("--to", choices=["actions", "up"], default="actions",
                        help="actions: the user's side, fed to device fleets; up: straight to the cloud")
    parser.add_argument("--speed", type=float, default=0.0, help="event-time speed factor (0 = as fast as possible)")
    parser.add_argument("--barrier", action="store_true",
                        help="after each day wait until the namespace's groups caught up, then tick end-of-day")
    parser.add_argument("--workers", type=int, default=1, help="cloud workers running (for --barrier)")
    parser.add_argument("--fleets", action="store_true", help="device fleets are running (for --barrier)")
    parser.add_argument("--restart", action="store_true", help="ignore the checkpoint and replay from the start")
    parser.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    add_input_options(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.stack.namespace import in_namespace

    if args.namespace:
        settings = in_namespace(settings, args.namespace)
    args.checked = None
    if args.events:  # the whole file is checked before anything is published
        from ops.cli.cmd_validate import checked_events

        args.checked = checked_events(args.events, args.lenient, args.skip_invalid)
    published = asyncio.run(replay(args, settings))
    skipped = f"; {len(args.checked.rejected)} invalid lines skipped" if args.checked else ""
    print(f"replayed {published} events into {settings.topic_prefix}.{args.to}{skipped}")
    return 0


def _time(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    return int(dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp())


async def _events(args: argparse.Namespace, settings: Settings) -> Iterable[Mapping[str, Any]]:
    from ops.datasets import load_dataset

    if args.dataset:
        options = {"seed": args.seed} if args.dataset == "synthetic" else {}
        return load_dataset(args.dataset, **options).events
    if args.events:
        from ops.cli.cmd_validate import checked_events

        checked = getattr(args, "checked", None) or checked_events(args.events, args.lenient, args.skip_invalid)
        return checked.events
    return await topic_events(settings, args.from_topic, args.start_offset, args.end_offset)


async def topic_events(settings: Settings, name: str, start: int | None, end: int | None) -> list[dict[str, Any]]:
    """Behaviour events carried by a historical topic's envelopes or action messages."""
    from streams.schemas import DeviceActions, SchemaError, UpEnvelope, decode
    from streams.topicio import read_topic

    events = []
    for m in sorted(await read_topic(settings, name), key=lambda m: (m.partition, m.offset)):
        if (start is not None and m.offset < start) or (end is not None and m.offset >= end):
            continue
        try:
            record = decode(m.value, 1 << 30)
        except SchemaError:
            continue
        if isinstance(record, UpEnvelope | DeviceActions):
            for e in record.events:
                events.append({"user_id": e.user_id, "device_id": record.device_id, "ts": e.ts, "item_id": e.item_id,
                               "item_tags": e.item_tags, "action": e.action, "profile": e.profile, "label": e.label})
    return events


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay.publish import Checkpoint, Progress, Publisher, plan_days, replay_days
    from ops.stack.pipeline import barrier
    from streams.kafka import ensure_topics
    from streams.topics import load_topics

    topics = load_topics(settings.topics_file, settings.topic_prefix)
    await ensure_topics(settings, topics)
    lo, hi = _time(args.start_time), _time(args.end_time)
    events = [e for e in await _events(args, settings)
              if (lo is None or int(e["ts"]) >= lo) and (hi is None or int(e["ts"]) < hi)]
    plans = plan_days(events, settings.max_events_per_envelope)
    checkpoint = Checkpoint(settings.state_dir / f"replay-{settings.topic_prefix}-{args.to}.json")
    if args.restart:
        checkpoint.path.unlink(missing_ok=True)
    progress = Progress(len(events), f"replay → {settings.topic_prefix}")
    async with Publisher(settings, topics) as pub:
        async def publish(plan):  # type: ignore[no-untyped-def]
            await (pub.actions(plan) if args.to == "actions" else pub.up(plan))

        async def end_of_day(plan):  # type: ignore[no-untyped-def]
            await barrier(settings, topics, args.workers, args.fleets)
            await pub.day_end("samples", plan.day)
            if args.to == "actions":
                await pub.day_end("actions", plan.day)
            await barrier(settings, topics, args.workers, args.fleets)

        published = await replay_days(plans, publish, end_of_day if args.barrier else None, checkpoint,
                                      args.speed, progress)
    progress.close()
    return published
