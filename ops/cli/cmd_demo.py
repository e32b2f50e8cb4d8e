"""`coda demo`: the main job — stack, workers, fleets, a dataset replayed in event time, exports."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.sample import DAY
from ops.cli.cmd_validate import add_input_options
from streams.settings import Settings

if TYPE_CHECKING:  # for annotations only: the command imports these lazily, when it runs
    from ops.replay.publish import DayPlan, Publisher
    from ops.stack.pipeline import Processes

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="directory for exports and summary")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", default="synthetic", help="synthetic (default) | movielens-100k | instacart")
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
    from ops.stack.namespace import in_namespace

    args.checked = None
    if args.events:  # the whole file is checked before the stack starts or anything is published
        from ops.cli.cmd_validate import checked_events

        args.checked = checked_events(args.events, args.lenient, args.skip_invalid)
    namespace = args.namespace or f"demo-{int(time.time())}"
    # day-end pulls: the cloud has indexed the whole day before any device asks, so the same
    # input gives the same batches however many workers and fleets run
    scoped = in_namespace(settings, namespace).replace(pull_trigger="day_end")
    summary = asyncio.run(Demo(args, scoped, settings).run())
    print("\n".join(human_summary(summary, args.out)))
    return 0 if summary["ok"] else 1


def human_summary(summary: dict[str, Any], out: Path) -> list[str]:
    """What a person reads at the end of a run; the details are in summary.json (fields: README)."""
    from streams import deadletterview as deadletters

    inp, model, dev, d = summary["input"], summary["global_model"], summary["devices"], summary["dates"]
    lines = [(f"coda demo: {summary['namespace']}, {d['first']} – {d['last']} ({summary['days']} days: "
              f"cloud pool {d['history']}, devices {d['live']}), {summary['elapsed_s']:.0f} s")]
    rejected = f", {inp['rejected']:,} lines rejected ({inp['file']})" if inp and inp["rejected"] else ""
    lines.append(f"  events in       {summary['events']:,}{rejected}")
    lines.append(f"  users           {summary['users']:,}   samples {summary['samples']:,}   "
                 f"matches {summary['matches']:,}   batches {summary['batches']:,}")
    lines.append(f"  devices         {dev['hosted']:,} hosted, {dev['pulls']:,} pulls, {dev['trainings']:,} trainings, "
                 f"{dev['models_kept']:,} model steps kept")
    lines.append(f"  {model_line(model)}")
    lines += [f"  {x}" for x in deadletters.lines(summary["dead_letters"])] or ["  dead letters    none"]
    for name, check in summary["checks"].items():
        problem = check.get("problem") or ", ".join(f"{k} {v}" for k, v in check.get("problems", {}).items()) \
            or ", ".join(check.get("broken", []))
        lines.append(f"  check {name:16} {'ok' if check['ok'] else 'FAILED'}{': ' + problem if problem else ''}")
    w = summary["warnings"]
    lines.append(f"  logs            {summary['logs']} ({w['warnings']:,} warnings, {w['errors']:,} errors)")
    lines.append(f"  exports         {out} (summary.json, dead_letters.jsonl, vectors/samples/matches/batches.jsonl)")
    lines.append("PASS" if summary["ok"] else "FAIL: " + ", ".join(n for n, c in summary["checks"].items() if not c["ok"]))
    return lines


class Demo:
    def __init__(self, args: argparse.Namespace, settings: Settings, root: Settings) -> None:
        self.args, self.settings, self.root = args, settings, root
        self.started_stack = False

    def say(self, message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        from ops.stack import broker as stack
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
        from agents.globalmodel import NoSamples, train_and_publish
        from ops.replay.publish import Publisher, plan_days
        from ops.stack.pipeline import Processes
        from streams.kafka import ensure_topics

        s = self.settings
        await ensure_topics(s, topics)
        plans = plan_days(self._events(), s.max_events_per_envelope)
        cut = max(1, int(len(plans) * self.args.history_share))
        history, live = plans[:cut], plans[cut:]
        self.say(f"namespace {s.topic_prefix}: {sum(p.events for p in plans)} events over {len(plans)} days, "
                 f"{span(plans)} ({len(history)} history days for the cloud pool: {span(history)}; "
                 f"{len(live)} on devices: {span(live)})")
        procs = Processes(s)
        timings: dict[str, float] = {}
        try:
            for i in range(self.args.workers):
                procs.spawn("worker", str(i))
            async with Publisher(s, topics) as pub:
                timings["history_s"] = await self._replay(pub, topics, procs, history, live=False)
                try:
                    model = await train_and_publish(s, history[-1].day, epochs=2, seed=self.args.seed)
                except NoSamples as exc:
                    raise await self._fail(topics, exc, sum(p.events for p in history)) from None
                self.say(model_line(model))
                for i in range(self.args.fleets):
                    procs.spawn("fleet", str(i))
                timings["live_s"] = await self._replay(pub, topics, procs, live, live=True)
            await asyncio.sleep(2.0)  # last stats files
            stats = self._stats()
        finally:
            procs.stop()
        started = time.monotonic()
        summary = await self._report(topics, stats)
        timings["export_and_checks_s"] = time.monotonic() - started
        return {"namespace": s.topic_prefix, "events": sum(p.events for p in plans), "days": len(plans),
                "dates": {"first": day_name(plans[0].day), "last": day_name(plans[-1].day),
                          "history": span(history), "live": span(live)},
                "input": self.args.checked.summary() if self.args.checked else None,
                "global_model": {**model, "small_holdout": model["holdout_samples"] < MIN_HOLDOUT},
                **summary, "stats": stats, "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "logs": str(s.state_dir / "logs"), "warnings": count_warnings(s.state_dir / "logs")}

    async def _replay(self, pub: Publisher, topics: Any, procs: Processes, days: list[DayPlan], live: bool) -> float:
        """Publish days in order, each with its day-end ticks, waiting for every consumer; seconds taken."""
        from ops.replay.publish import Progress
        from ops.stack.pipeline import barrier

        s, started = self.settings, time.monotonic()
        progress = Progress(sum(p.events for p in days), "devices live" if live else "history → cloud pool")
        for plan in days:
            await (pub.actions(plan) if live else pub.up(plan))
            await barrier(s, topics, self.args.workers, live, procs)
            await pub.day_end("samples", plan.day)
            if live:  # live days are on the devices too, so their topic gets the tick as well
                await pub.day_end("actions", plan.day)
            await barrier(s, topics, self.args.workers, live, procs)
            progress.advance(plan.events, day_name(plan.day))
        progress.close()
        return time.monotonic() - started

    async def _report(self, topics: Any, stats: dict[str, Any]) -> dict[str, Any]:
        """Read the run back from its topics, write the exports, check the invariants (with progress)."""
        from ops.audit.checks import batch_rules, knn_recall, vector_norms, vector_parity
        from ops.audit.exports import collect, write_exports
        from ops.audit.features import feature_matrix
        from ops.replay.publish import Progress
        from streams import deadletterview as deadletters

        s = self.settings
        progress = Progress(8, "exports and checks")
        run = await collect(s, topics)
        progress.advance(1, "read back")
        matrix = feature_matrix(run.samples.values(), s.features)  # once: the exports and two checks read it
        progress.advance(1, "sample features")
        counts = write_exports(run, self.args.out, s.features, matrix)
        counts["dead_letters"] = self._write_dead_letters(run.dead)
        progress.advance(1, "exports written")
        fleets = totals(stats, "fleet-")
        checks: dict[str, Any] = {}
        for name, check in (
            ("vector_parity", lambda: vector_parity(run, s.features, matrix)),
            ("vector_norms", lambda: vector_norms(run)),
            ("knn_recall", lambda: knn_recall(run, s.features, s.match_window_days, s.k_neighbours,
                                              matrix=matrix)),
            ("batches", lambda: batch_rules(run, s.batch_size, s.batch_max, s.batches_per_day,
                                            fleets.get("up_PullRequest", 0))),
            ("reconcile", lambda: reconcile(stats)),
        ):
            checks[name] = check()
            progress.advance(1, name)
        progress.close()
        return {"exports": counts, "checks": checks, "ok": all(c["ok"] for c in checks.values()),
                "dead_letters": deadletters.by_reason(run.dead),
                "users": len(run.vectors), "samples": len(run.samples), "matches": len(run.matches),
                "batches": len(run.batches),
                "devices": {"pulls": fleets.get("up_PullRequest", 0), "trainings": fleets.get("trainings", 0),
                            "models_kept": fleets.get("models_kept", 0),
                            "hosted": fleets.get("devices_hosted", 0)}}

    def _write_dead_letters(self, letters: list[Any]) -> int:
        from ops.audit.exports import write_jsonl
        from streams import deadletterview as deadletters

        self.args.out.mkdir(parents=True, exist_ok=True)
        refused = self.args.checked.rejected if self.args.checked else []
        return write_jsonl(self.args.out / "dead_letters.jsonl", deadletters.rows(letters, refused))

    async def _fail(self, topics: Any, exc: Any, history_events: int) -> RuntimeError:
        """No samples to train on: export the dead letters, write what is known, and say why."""
        from streams import deadletterview as deadletters

        rejected = sum(deadletters.events_in(d) for d in exc.letters)
        head = (f"all {history_events:,} history events were rejected" if exc.letters and rejected >= history_events
                else f"{rejected:,} of {history_events:,} history events were rejected" if exc.letters
                else "no samples to train the global model on")
        message = f"{head}: {deadletters.cause(exc.letters)}" if exc.letters else str(exc)
        self._write_dead_letters(exc.letters)
        summary = {"namespace": self.settings.topic_prefix, "ok": False, "error": message,
                   "input": self.args.checked.summary() if self.args.checked else None,
                   "dead_letters": deadletters.by_reason(exc.letters), "logs": str(self.settings.state_dir / "logs")}
        (self.args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return RuntimeError(f"{message} (dead letters in {self.args.out / 'dead_letters.jsonl'})")

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


MIN_HOLDOUT = 500  # holdout samples below which the global model's AUC says little


def day_name(day: int) -> str:
    """An event-time day number as its UTC date."""
    return dt.datetime.fromtimestamp(day * DAY, dt.UTC).date().isoformat()


def span(plans: Any) -> str:
    """'2023-11-14 – 2023-11-16' (one date for one day, 'none' for none)."""
    if not plans:
        return "none"
    first, last = day_name(plans[0].day), day_name(plans[-1].day)
    return first if first == last else f"{first} – {last}"


def model_line(model: dict[str, Any]) -> str:
    n = model["holdout_samples"]
    flag = f" — too few to mean much (< {MIN_HOLDOUT})" if n < MIN_HOLDOUT else ""
    auc = model.get("holdout_auc")
    shown = f"{auc:.3f}" if isinstance(auc, int | float) else "n/a"
    return f"global model {model['version']}: holdout AUC {shown} on {n:,} samples{flag}"


def totals(stats: dict[str, Any], prefix: str) -> dict[str, int]:
    """Counters summed over the processes whose name starts with `prefix` (fleet counts, hosted devices)."""
    out: dict[str, int] = {}
    for proc, st in stats.items():
        if proc.startswith(prefix):
            for k, v in {**st.get("counts", {}), "devices_hosted": st.get("devices_hosted", 0)}.items():
                out[k] = out.get(k, 0) + int(v)
    return out


def count_warnings(log_dir: Path) -> dict[str, int]:
    """WARNING and ERROR records in the run's process logs."""
    counts = {"WARNING": 0, "ERROR": 0}
    for path in sorted(log_dir.glob("*.log")) if log_dir.is_dir() else ():
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    level = json.loads(line).get("level") if line.startswith("{") else None
                except ValueError:
                    continue
                if level in counts:
                    counts[level] += 1
    return {"warnings": counts["WARNING"], "errors": counts["ERROR"]}


def reconcile(stats: dict[str, Any]) -> dict[str, Any]:
    """in = processed + dead-lettered for every stage of every process."""
    broken = []
    for proc, stages in stats.items():
        for stage, c in stages.items():
            if isinstance(c, dict) and {"in", "processed", "dead_lettered"} <= set(c):
                if c["in"] != c["processed"] + c["dead_lettered"]:
                    broken.append(f"{proc}.{stage}")
    return {"ok": not broken, "broken": broken}
