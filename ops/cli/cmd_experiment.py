"""`coda experiment`: the paper's arms and controls as a bucket test through the real pipeline, with a report."""

from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.arms import schedules
from streams.settings import Settings

log = logging.getLogger(__name__)

QUICK = {"movielens-100k": {"users": 300, "seeds": 2}, "synthetic": {"users": 120, "seeds": 2},
         "instacart": {"users": 200, "seeds": 2, "live_days": 30}}
SWEEP_K = (10, 30, 100)
SWEEP_SIGMA = (0.05, 0.2, 0.5)
Phases = dict[str, float]


def phase(phases: Phases, name: str) -> AbstractContextManager[None]:
    """Add the wall time of the block to `phases[name]` (printed at the end, kept in results.json)."""
    from ops.experiment.runner import timed

    return timed(phases, name, ndigits=1)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="movielens-100k",
                        help="movielens-100k (default) | instacart | synthetic")
    parser.add_argument("--scenario", default="default", choices=("default", "drift"),
                        help="synthetic only: default (the global model sees the groups: little headroom) | "
                        "drift (hidden groups whose tastes change at the cut: a known headroom)")
    parser.add_argument("--out", type=Path, default=Path("out/experiment"), help="directory for the report")
    parser.add_argument("--seeds", type=int, default=3, help="pipeline runs; seed s rotates the arms by s "
                        "(5 seeds put every user once in every arm)")
    parser.add_argument("--k", type=int, help="K nearest users (default: the paper's 100 on movielens-100k, "
                        "20 on synthetic, below its group size of 50)")
    parser.add_argument("--sigma", type=float, help="filter threshold σ (default: the recipe's; paper: 0.2)")
    parser.add_argument("--users", type=int, help="keep this many users (movielens: a hashed subset; "
                        "synthetic: generated users, default 400)")
    parser.add_argument("--history-share", type=float,
                        help="share of the event-time span that is the cloud's history (global time split; "
                        "default 0.6, 0.5 for the drift scenario, whose cut is its second change)")
    parser.add_argument("--live-days", type=int, help="replay only the first N live days")
    parser.add_argument("--top-n", type=int, help="online analogue: top-n scored events per user-day (default 3 "
                        "on movielens-100k; 1 on synthetic, whose users have ~2 events a day)")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates for the CIs")
    parser.add_argument("--quick", action="store_true", help="a small, fast run (fewer users, 2 seeds)")
    parser.add_argument("--offline", action="store_true",
                        help="also run the offline (batch) reference on the same split and report agreement")
    parser.add_argument("--sweep", action="store_true",
                        help=f"K × σ sweep (default {SWEEP_K} × {SWEEP_SIGMA}) with the offline reference")
    parser.add_argument("--sweep-k", type=_ints, default=SWEEP_K, help="K values of the sweep, e.g. 30,100")
    parser.add_argument("--sweep-sigma", type=_floats, default=SWEEP_SIGMA, help="σ values of the sweep, e.g. 0.2,0.5")
    parser.add_argument("--parallel", type=int, default=3, help="seeds whose pipelines (or offline runs) run at once "
                        "(1: one after another, leanest; default 3 fits the 20-minute budget on 2 cores)")
    parser.add_argument("--tune", action="store_true", help="score training-schedule variants on a split of "
                        "the history only (offline engine; never the test events)")
    parser.add_argument("--tune-only", action="store_true", help="--tune without the test run: nothing but "
                        "history is read; writes tune.json and tune.md under --out")
    parser.add_argument("--tune-variants", type=_names, help="with --tune: only these variants, by name "
                        "(comma-separated; default: all of ops.tuning.VARIANTS)")
    parser.add_argument("--engine", choices=("stream", "offline"), default="stream",
                        help="stream: the real pipeline (default); offline: the batch reference only "
                        "(minutes instead of tens of minutes; for sweeps and tuning)")
    parser.add_argument("--recipe", choices=("paper", "tuned"),
                        help="device settings: paper (Algorithms 1-3 as published) | tuned (the choices "
                        "`--tune` made on the drift scenario's history-only validation; see docs/experiments.md). "
                        "Default: tuned for --scenario drift, where it was chosen; paper elsewhere")
    parser.add_argument("--keep-state", action="store_true", help="keep each seed's device databases")
    parser.add_argument("--index-url", default="", help="vector index for the runs (default: the settings')")


def params_from(args: argparse.Namespace) -> Any:
    from ops.experiment.runner import DEFAULT_K, DEFAULT_RECIPE, Params

    quick = QUICK.get(args.dataset, {}) if args.quick else {}
    seeds = quick.get("seeds", args.seeds)
    k = args.k or DEFAULT_K.get(args.dataset, 100)
    from ops.experiment.runner import SCENARIO_HISTORY_SHARE

    share = args.history_share or SCENARIO_HISTORY_SHARE[args.scenario]
    return Params(dataset=args.dataset, scenario=args.scenario, seeds=tuple(range(seeds)), k=k, sigma=args.sigma,
                  users=args.users or quick.get("users"), history_share=share,
                  live_days=args.live_days or quick.get("live_days"),
                  top_n=args.top_n or (1 if args.dataset == "synthetic" else 3),
                  bootstrap=args.replicates, index_url=args.index_url,
                  recipe=args.recipe or DEFAULT_RECIPE.get(args.scenario, "paper"))


def _tune_only(args: argparse.Namespace, settings: Settings, split: Any, params: Any, say: Any, t0: float) -> int:
    """Score the variants on the history-only split and stop: the test events are never replayed."""
    from ops.experiment.tables import tune_lines
    from ops.experiment.tuning import tune, variants_named

    result = tune(settings, split, params, say, variants_named(args.tune_variants))
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "tune.md").write_text("\n".join(tune_lines(result)) + "\n")
    say(f"tuned in {result['elapsed_s']} s: chosen {result['chosen']}; {args.out / 'tune.md'}")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ops.experiment.runner import prepare, stderr_say

    say = stderr_say("experiment")
    params = params_from(args)
    t0 = time.monotonic()
    phases: Phases = {}
    with phase(phases, "prepare"):
        split = prepare(params)
    say(f"{split.name}: {len(split.history)} history days, {len(split.live)} live days, "
        f"{len(split.live_users)} live users; seeds {list(params.seeds)}")
    if args.tune_only:
        return _tune_only(args, settings, split, params, say, t0)
    if args.engine == "offline":
        results = run_batch(settings, split, params, say, phases, args.parallel)
    else:
        results = run_experiment(settings, split, params, say, args.offline, args.keep_state, args.parallel,
                                 args.out, phases)
    results["settings"] = params.recorded_settings(settings)  # params alone miss environment overrides
    if args.sweep:
        with phase(phases, "sweep"):
            results["sweep"] = sweep(settings, split, params, say, args.sweep_k, args.sweep_sigma)
    if args.tune:
        from ops.experiment.tuning import tune, variants_named

        with phase(phases, "tune"):
            results["tune"] = tune(settings, split, params, say, variants_named(args.tune_variants))
    from ops.experiment import report

    with phase(phases, "report"):
        results["elapsed_s"] = round(time.monotonic() - t0, 1)  # the run's figure: report writing excluded
        results["phases_s"] = phases
        report.write(results, args.out, results.pop("offline", None))
    say(f"done in {results['elapsed_s']} s (+ {phases['report']} s writing the report): {args.out / 'report.md'}; "
        + ", ".join(f"{k} {v} s" for k, v in phases.items()))
    print(json.dumps(headline(results), indent=1))
    return 0


def run_experiment(settings: Settings, split: Any, params: Any, say: Any, offline: bool = False,
                   keep_state: bool = False, parallel: int = 1, out: Path | None = None,
                   phases: Phases | None = None) -> dict[str, Any]:
    """Streaming runs for every seed, then the analysis (and the offline agreement if asked).

    With `out`, every device's evaluation rows are exported to out/evaluations/seed-<s>.jsonl.gz.
    """
    from ops.experiment.devices import write_evaluations
    from ops.experiment.results import agreement, analyse
    from ops.experiment.runner import eval_rows, run_streaming

    phases = {} if phases is None else phases
    with phase(phases, "pipelines"):
        runs = run_streaming(settings, split, params, say, keep_state, parallel=parallel)
    with phase(phases, "export"):
        if out is not None:
            for run in runs:
                write_evaluations(run.devices, out / "evaluations" / f"seed-{run.seed}.jsonl.gz")
        rows = [r for run in runs for r in eval_rows(run.seed, run.devices, split.cut_day)]
        logs = [stream_logs(run, settings.train_trigger) for run in runs]
    key = runs[0].pseudonym_key
    with phase(phases, "references"):
        references, notes = _references(settings, split, params, say)
    with phase(phases, "analysis"):
        results = analyse([*rows, *references], split, params, logs, key)
    results["reference_notes"] = notes
    results["engine"] = "streaming pipeline (broker, cloud worker, device fleet)"
    results["runs"] = [{"seed": r.seed, "namespace": r.namespace, "global_model": r.global_model,
                        "timings_s": {k: round(v, 1) for k, v in r.timings.items()}, "fleet": r.fleet_stats}
                       for r in runs]
    if offline:
        from ops.experiment.offline import run_offline

        off_rows = []
        with phase(phases, "offline engine"):
            for seed in params.seeds:
                off = run_offline(split, params.settings_for(settings, "offline", seed), seed, params.global_seed)
                off_rows += off.rows
            results["offline"] = agreement(rows, off_rows)
    return results


def run_batch(settings: Settings, split: Any, params: Any, say: Any, phases: Phases | None = None,
              parallel: int = 1) -> dict[str, Any]:
    """The same analysis from the offline reference alone (labelled as such in the results)."""
    from ops.experiment.results import SeedLogs, analyse

    phases = {} if phases is None else phases
    rows, logs = [], []
    with phase(phases, "offline engine"):
        for off in _offline_runs(settings, split, params, say, parallel):
            rows += off.rows
            logs.append(SeedLogs(off.seed, off.arms, off.users, off.kept, off.batch_log, off.matches,
                                 off.trains, off.steps, off.model_change,
                                 schedules(settings.train_trigger), off.valid))
    with phase(phases, "references"):
        references, notes = _references(settings, split, params, say)
    with phase(phases, "analysis"):
        results = analyse([*rows, *references], split, params, logs, settings.pseudonym_key)
    results["reference_notes"] = notes
    results["engine"] = "offline reference (ops/experiment/offline.py), not the streaming pipeline"
    return results


def _offline_runs(settings: Settings, split: Any, params: Any, say: Any, parallel: int) -> list[Any]:
    """One offline run per seed, in seed order; `parallel` > 1 runs that many seeds in worker processes
    (spawned: a fork would copy the parent's torch state). Each seed is independent, so the rows are
    the same either way."""
    from ops.experiment.offline import run_offline

    jobs = [(split, params.settings_for(settings, "offline", seed), seed, params.global_seed) for seed in params.seeds]
    if parallel <= 1 or len(jobs) == 1:
        return [run_offline(*job, say) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    say(f"offline engine: {len(jobs)} seeds, {min(parallel, len(jobs))} at a time")
    with ProcessPoolExecutor(min(parallel, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_offline_seed, jobs))


def _offline_seed(job: tuple[Any, Settings, int, int]) -> Any:
    from ops.experiment.offline import run_offline
    from ops.experiment.runner import stderr_say

    return run_offline(*job, stderr_say("experiment"))


def _references(settings: Settings, split: Any, params: Any, say: Any) -> tuple[list[Any], dict[str, Any]]:
    """oracle / own_future / group_oracle on the arms' live events (ops/experiment/references.py), with timing."""
    from ops.experiment.references import reference_rows

    t0 = time.monotonic()
    rows, notes = reference_rows(split, params.settings_for(settings, "references", 0), params.k,
                                 params.global_seed, say=say)
    notes["elapsed_s"] = round(time.monotonic() - t0, 1)
    return rows, notes


def stream_logs(run: Any, train_trigger: int) -> Any:
    from ops.experiment.results import SeedLogs

    return SeedLogs(run.seed, {d.pseudonym: d.arm for d in run.devices},
                    {d.pseudonym: d.user_id for d in run.devices}, {d.pseudonym: d.kept_ids for d in run.devices},
                    [(b.device, b.user, list(b.sample_ids), list(b.sample_owners)) for b in run.batches],
                    [(m.user, list(m.neighbours)) for m in run.matches],
                    {d.pseudonym: d.trains for d in run.devices}, {d.pseudonym: d.steps for d in run.devices},
                    {d.pseudonym: d.model_change for d in run.devices}, schedules(train_trigger),
                    {d.pseudonym: d.valid for d in run.devices})


def sweep(settings: Settings, split: Any, params: Any, say: Any, ks: tuple[int, ...] = SWEEP_K,
          sigmas: tuple[float, ...] = SWEEP_SIGMA) -> dict[str, Any]:
    """K × σ with the offline reference (it reproduces the stream's scores; see tests/ops/test_experiment.py)."""
    from core.arms import ARMS
    from ops.experiment import abtest
    from ops.experiment.offline import run_offline

    out: dict[str, Any] = {"engine": "offline reference", "grid": []}
    for k in ks:
        for sigma in sigmas:
            p = replace(params, k=k, sigma=sigma)
            rows = []
            for seed in params.seeds:
                rows += run_offline(split, p.settings_for(settings, "sweep", seed), seed, p.global_seed).rows
            us = abtest.units(rows, p.top_n)
            by_arm = {arm: [u for u in us if u.arm == arm] for arm in ARMS}
            cell = {"k": k, "sigma": sigma,
                    "coda": abtest.point_metrics(by_arm["coda"]),
                    "coda_vs_cloud": abtest.paired_lift(by_arm["coda"], by_arm["cloud"], 200),
                    "coda_vs_local": abtest.paired_lift(by_arm["coda"], by_arm["local"], 200)}
            out["grid"].append(cell)
            say(f"sweep K={k} σ={sigma}: coda GAUC {cell['coda']['gauc']}")
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    arms = {arm: {m: results["arms"][arm][m]["value"] for m in ("gauc", "auc", "logloss")}
            for arm in results["arms"]}
    lifts = {name: {m: lift.get(m, {}).get("value") if isinstance(lift.get(m), dict) else None
                    for m in ("gauc", "ctr_top")} for name, lift in results["lifts"].items()}
    return {"arms": arms, "lifts": lifts, "elapsed_s": results.get("elapsed_s"), "phases_s": results.get("phases_s")}
