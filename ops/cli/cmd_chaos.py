"""`coda chaos`: a soak run — bad and redelivered up-tunnel traffic and worker kills, then exact reconciliation."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=10_000,
                        help="bad and redelivered messages to mix into the replay (at least this many)")
    parser.add_argument("--users", type=int, default=200, help="synthetic users of the valid replay")
    parser.add_argument("--days", type=int, default=4, help="event-time days of the valid replay")
    parser.add_argument("--workers", type=int, default=1, help="cloud worker processes")
    parser.add_argument("--kills", type=int, default=2,
                        help="SIGKILL a worker this many times, alternately mid-ingest and mid-assemble, and restart it")
    parser.add_argument("--bad-share", type=float, default=0.8, help="share of --messages that are invalid")
    parser.add_argument("--multi-device", action="store_true",
                        help="also re-report users' events from unknown devices (other `up` partitions); with "
                             "--kills this exposes the user-keyed ingest history fed from the device-keyed stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--namespace", help="namespace (default: chaos-<time>)")
    parser.add_argument("--out", type=Path, help="also write the summary JSON here")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.stack.namespace import in_namespace

    namespace = args.namespace or f"chaos-{int(time.time())}"
    scoped = in_namespace(settings, namespace).replace(k_neighbours=min(settings.k_neighbours, 20))
    summary = asyncio.run(_soak(args, scoped, settings))
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if summary["ok"] else 1


def _say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


async def _soak(args: argparse.Namespace, settings: Settings, root: Settings) -> dict[str, Any]:
    from ops.audit.checks import batch_rules, vector_parity
    from ops.audit.exports import collect
    from ops.chaos.noise import NOISE_KINDS, SINGLE_DEVICE_NOISE
    from ops.chaos.oracle import compare_samples, compare_vectors, distinct_letters, expected_state
    from ops.chaos.run import ChaosRun, Kill, chaos_plans, dead_letter_mismatch, reconcile
    from ops.stack import broker as stack
    from streams.kafka import bootstrap_servers, stack_file
    from streams.topics import load_topics

    started = time.monotonic()
    own_stack = root.embedded and stack.StackState.running(stack_file(root)) is None
    if own_stack:
        await asyncio.to_thread(stack.up, root, load_topics())
    try:
        s = settings.replace(bootstrap=bootstrap_servers(root))
        topics = load_topics(s.topics_file, s.topic_prefix)
        plans = chaos_plans(args.users, args.days, args.seed)
        days = len(plans)
        bad = math.ceil(args.messages * args.bad_share / days)
        noise = math.ceil(args.messages * (1 - args.bad_share) / days * 0.8)
        ghosts = max(1, math.ceil(args.messages * (1 - args.bad_share) / days * 0.2))
        stages = ["ingest", "assemble"]
        kills = [Kill(plans[min(days - 1, 1 + i // 2)].day, stages[i % 2], i % args.workers)
                 for i in range(args.kills)]
        _say(f"namespace {s.topic_prefix}: {sum(p.events for p in plans)} events over {days} days, "
             f"~{bad} bad + ~{noise + ghosts} redelivered/unknown-device messages a day, {len(kills)} kill(s)")
        kinds = NOISE_KINDS if args.multi_device or not kills else SINGLE_DEVICE_NOISE
        chaos = ChaosRun(s, topics, workers=args.workers, bad_per_day=bad, oversize_per_day=1, noise_per_day=noise,
                         noise_kinds=kinds, ghost_pulls_per_day=ghosts, repeat_pulls=True, shuffle_events=True,
                         pull_batches=1, kills=kills, seed=args.seed, say=_say)
        stats = await chaos.run(plans)
        run = await collect(s, topics)
    finally:
        if own_stack:
            stack.down(root)
    ledger = chaos.ledger
    letters = dead_letter_mismatch(run, topics, ledger)
    expected = expected_state(plans, s)
    resent = len(run.batches) - len({b.batch_id for b in run.batches})
    run.batches = list({b.batch_id: b for b in run.batches}.values())  # readers keep one per batch id
    checks: dict[str, Any] = {
        "dead_letters": {**letters, "injected_invalid": ledger.invalid,
                         "ok": letters["raw_equal"] and letters["reasons_equal"] and letters["all_have_origin"]
                         and letters["letters"] == ledger.invalid},
        "vectors_vs_pure_replay": compare_vectors(run, expected.vectors),
        "samples_vs_pure_replay": compare_samples(run, expected),
        "vector_parity": vector_parity(run, s.features),
        "batches": {**batch_rules(run, s.batch_size, s.batch_max, s.batches_per_day), "resent_after_kill": resent},
    }
    balance = reconcile(stats, ledger, len(distinct_letters(run, topics.name("up"))))
    if kills:  # a killed incarnation's counters die with it: only the restarted one can balance
        balance["ok"] = balance["stages_balanced"]
        balance["note"] = "with kills, counters cover the last incarnation of each worker only"
    checks["reconcile"] = balance
    ok = all(c.get("ok", True) for c in checks.values())
    return {"namespace": s.topic_prefix, "ok": ok, "injected": ledger.as_dict(),
            "messages_injected": ledger.invalid + sum(ledger.noise.values()),
            "worker_stats": stats, "checks": checks,
            "elapsed_s": round(time.monotonic() - started, 1), "timings_s": chaos.timings}
