"""`coda demo`: the main job — stack, workers, fleets, a dataset replayed in event time, exports."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ops.cmd_validate import add_input_options
from streams.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="directory for exports and summary")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", default="synthetic", help="synthetic (default) | movielens-100k")
    source.add_argument("--events", type=Path, help="replay your own behaviour-event log (JSON Lines)")
    parser.add_argument("--users", type=int, default=200, help="synthetic: number of users")
    parser.add_argument("--days", type=int, default=8, help="synthetic: event-time days")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history-share", type=float, default=0.5,
                        help="share of days that form the cloud's pool before devices personalize")
    parser.add_argument("--workers", type=int, default=1, help="cloud worker processes")
    parser.add_argument("--fleets", type=int, default=1, help="device fleet processes")
    parser.add_argument("--namespace", help="namespace (default: demo-<time>)")
    add_input_options(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.namespace import in_namespace

    args.checked = None
    if args.events:  # the whole file is checked before the stack starts or anything is published
        from ops.cmd_validate import checked_events

        args.checked = checked_events(args.events, args.lenient, args.skip_invalid)
    namespace = args.namespace or f"demo-{int(time.time())}"
    # day-end pulls: the cloud has indexed the whole day before any device asks, so the same
    # input gives the same batches however many workers and fleets run
    scoped = in_namespace(settings, namespace).replace(pull_trigger="day_end")
    summary = asyncio.run(Demo(args, scoped, settings).run())
    print(json.dumps({k: summary[k] for k in ("namespace", "events", "checks", "elapsed_s")}, indent=1))
    print(f"exports and summary in {args.out}")
    return 0 if all(c.get("ok", True) for c in summary["checks"].values()) else 1


class Demo:
    def __init__(self, args: argparse.Namespace, settings: Settings, root: Settings) -> None:
        self.args, self.settings, self.root = args, settings, root
        self.started_stack = False

    def say(self, message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        from ops import stack
        from streams.kafka import stack_file
        from streams.topics import load_topics

        t0 = time.monotonic()
        if self.root.embedded and stack.StackState.running(stack_file(self.root)) is None:
            await asyncio.to_thread(stack.up, self.root, load_topics())
            self.started_stack = True
        settings = self._bind(self.settings)
        self.settings = settings
        try:
            summary = await self._run(load_topics(settings.topics_file, settings.topic_prefix))
        finally:
            if self.started_stack:
                stack.down(self.root)
        summary["elapsed_s"] = round(time.monotonic() - t0, 1)
        (self.args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _bind(self, settings: Settings) -> Settings:
        from streams.kafka import bootstrap_servers

        return settings.replace(bootstrap=bootstrap_servers(self.root))

    def _events(self) -> list[dict[str, Any]]:
        from ops.datasets import load_dataset

        if self.args.events:
            return self.args.checked.events  # type: ignore[no-any-return]
        if self.args.dataset == "synthetic":
            return load_dataset("synthetic", n_users=self.args.users, days=self.args.days, seed=self.args.seed).events
        return load_dataset(self.args.dataset).events

    async def _run(self, topics: Any) -> dict[str, Any]:
        from ops.checks import batch_rules, knn_recall, vector_parity
        from ops.cmd_cloud import train_and_publish
        from ops.exports import collect, write_exports
        from ops.pipeline import Processes, barrier
        from ops.replay import Progress, Publisher, plan_days
        from streams.kafka import ensure_topics

        s = self.settings
        await ensure_topics(s, topics)
        plans = plan_days(self._events(), s.max_events_per_envelope)
        cut = max(1, int(len(plans) * self.args.history_share))
        history, live = plans[:cut], plans[cut:]
        self.say(f"namespace {s.topic_prefix}: {sum(p.events for p in plans)} events over {len(plans)} days "
                 f"({len(history)} history days for the cloud pool, {len(live)} on devices)")
        procs = Processes(s)
        timings: dict[str, float] = {}
        try:
            for i in range(self.args.workers):
                procs.spawn("worker", str(i))
            async with Publisher(s, topics) as pub:
                started = time.monotonic()
                progress = Progress(sum(p.events for p in history), "history → cloud pool", force=True)
                for plan in history:
                    await pub.up(plan)
                    await barrier(s, topics, self.args.workers, False, procs)
                    await pub.day_end("samples", plan.day)
                    await barrier(s, topics, self.args.workers, False, procs)
                    progress.advance(plan.events, f"day {plan.day}")
                progress.close()
                timings["history_s"] = time.monotonic() - started
                model = await train_and_publish(s, history[-1].day, epochs=2, seed=self.args.seed)
                self.say(f"global model {model['version']}: holdout AUC {model['holdout_auc']}")
                for i in range(self.args.fleets):
                    procs.spawn("fleet", str(i))
                started = time.monotonic()
                progress = Progress(sum(p.events for p in live), "devices live", force=True)
                for plan in live:
                    await pub.actions(plan)
                    await barrier(s, topics, self.args.workers, True, procs)
                    await pub.day_end("samples", plan.day)
                    await pub.day_end("actions", plan.day)
                    await barrier(s, topics, self.args.workers, True, procs)
                    progress.advance(plan.events, f"day {plan.day}")
                progress.close()
                timings["live_s"] = time.monotonic() - started
            await asyncio.sleep(2.0)  # last stats files
            stats = self._stats()
        finally:
            procs.stop()
        run = await collect(s, topics)
        counts = write_exports(run, self.args.out, s.features)
        checks = {
            "vector_parity": vector_parity(run, s.features),
            "knn_recall": knn_recall(run, s.features, s.match_window_days, s.k_neighbours),
            "batches": batch_rules(run, s.batch_size, s.batch_max, s.batches_per_day),
            "reconcile": reconcile(stats),
        }
        return {"namespace": s.topic_prefix, "events": sum(p.events for p in plans), "days": len(plans),
                "input": self.args.checked.summary() if self.args.checked else None,
                "global_model": model, "exports": counts, "checks": checks, "stats": stats,
                "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "dead_letters": len(run.dead)}

    def _stats(self) -> dict[str, Any]:
        from agents.worker import worker_dir

        out: dict[str, Any] = {}
        for i in range(self.args.workers):
            path = worker_dir(self.settings, str(i)) / "stats.json"
            out[f"worker-{i}"] = json.loads(path.read_text()) if path.exists() else {}
        for i in range(self.args.fleets):
            path = self.settings.state_dir / "fleets" / f"{i}.json"
            out[f"fleet-{i}"] = json.loads(path.read_text()) if path.exists() else {}
        return out


def reconcile(stats: dict[str, Any]) -> dict[str, Any]:
    """in = processed + dead-lettered for every stage of every process."""
    broken = []
    for proc, stages in stats.items():
        for stage, c in stages.items():
            if isinstance(c, dict) and {"in", "processed", "dead_lettered"} <= set(c):
                if c["in"] != c["processed"] + c["dead_lettered"]:
                    broken.append(f"{proc}.{stage}")
    return {"ok": not broken, "broken": broken}
