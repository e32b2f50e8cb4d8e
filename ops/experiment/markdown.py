"""report.md: the summary, the verdicts and the sections, in order, from a results dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ops.experiment.tables import (
    _device_table,
    _funnel_lines,
    _headroom_lines,
    _lift_table,
    _offline_agreement,
    _offline_table,
    _online_table,
    _schedule_lines,
    _seed_table,
    _signed,
    _sweep_lines,
    _target_lines,
    tune_lines,
)


def _verdict(lift: Mapping[str, Any], metric: str, higher_better: bool = True) -> str:
    m = lift.get(metric)
    if not isinstance(m, Mapping) or m.get("lo") is None:
        return "not measurable"
    lo, hi = m["lo"], m["hi"]
    if (lo > 0) if higher_better else (hi < 0):
        return "better"
    if (hi < 0) if higher_better else (lo > 0):
        return "worse"
    return "no significant difference"


def _phase_lines(res: Mapping[str, Any]) -> list[str]:
    """Where the wall time went, phase by phase (the report's own writing is the last, partial figure)."""
    phases = res.get("phases_s")
    if not phases:
        return []
    return ["Wall time by phase: " + ", ".join(f"{k} {v} s" for k, v in phases.items()) + ".", ""]


def report_md(res: Mapping[str, Any], figures: Sequence[str], offline: Mapping[str, Any] | None = None) -> str:
    d, p = res["data"], res["params"]
    lines = [f"# CoDA experiment: {d['dataset']}", "",
             f"Engine: {res.get('engine', 'streaming pipeline')}. Seeds {res['seeds']}, K = {p['k']}, "
             f"σ = {p['sigma']}, top-{p['top_n']} for the online analogues, {p['bootstrap']} bootstrap replicates"
             + (f", {res['elapsed_s']} s wall." if "elapsed_s" in res else "."), "",
             *_phase_lines(res),
             "## Data and split", "",
             f"Global time split at day {d['cut_day']}: {d['history_days']} history days "
             f"({d['history_events']} events) form the cloud's pool and train the global model; "
             f"{d['live_days']} live days ({d['live_events']} events, {d['live_users']} users) are replayed "
             "through the devices as actions. Every live event is scored by its device's current model "
             "before it becomes a sample (progressive validation): these scores are what is evaluated.", "",
             "## Design", "", res["design"], "",
             "Metrics: GAUC = impression-weighted mean of per-user AUC over users with both classes (as the paper); "
             "GAUC per user-day = the same over (user, day) groups — within a day one model scored every event, "
             "while a user's AUC over several days also ranks scores of different model versions against each "
             "other, so a shift in a device's score level after training moves it; AUC pools all events; logloss "
             "is the mean cross-entropy. Online analogues rank each user's events of a day by score and 'show' the "
             "top n: click rate of the shown, clicks per user-day, share of user-days with a click.", ""]
    lines += _summary(res)
    lines += _target_lines(res)
    lines += _offline_table(res, "arms", "Table 3 analogue — offline metrics per arm and reference (all live events)")
    lines += _offline_table(res, "arms_after_first_day",
                            "Same, events after each user's first live day (where arms can differ)")
    lines += _online_table(res)
    lines += _headroom_lines(res)
    lines += _lift_table(res, "lifts", "Lifts (paired users, all live events)")
    lines += _lift_table(res, "lifts_after_first_day", "Lifts (paired users, after the first live day)")
    lines += _funnel_lines(res)
    lines += _schedule_lines(res)
    lines += _seed_table(res)
    lines += _device_table(res)
    if "sweep" in res:
        lines += _sweep_lines(res["sweep"])
    if "tune" in res:
        lines += tune_lines(res["tune"])
    if offline:
        lines += _offline_agreement(offline)
    window = res["series"].get("window", 1)
    lines += ["## Figures", "", "Forest plot: every paired lift and headroom share with its 95% CI. Figure 9 "
              f"analogue: each arm's own users per day ({window}-day trailing window, bootstrap band over users); "
              "arms hold different users on a day, so population noise dominates. Figure 10 analogue: lifts "
              "accumulated over days on users seen in both arms (same events), paired bootstrap band: the "
              "comparison to read.", ""]
    lines += [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _summary(res: Mapping[str, Any]) -> list[str]:
    """The plain statement: does CoDA beat both baselines, by how much, how stable over seeds."""
    out = ["## Summary", ""]
    for key, scope in (("lifts", "all live events"), ("lifts_after_first_day", "after each user's first live day")):
        for base in ("cloud", "local"):
            lift = res[key].get(f"coda_vs_{base}", {})
            if not lift.get("users"):
                out.append(f"- CoDA vs {base} ({scope}): no user was in both arms.")
                continue
            out.append(f"- CoDA vs {base} ({scope}, {lift['users']} paired users): ΔGAUC {_signed(lift['gauc'])} "
                       f"→ {_verdict(lift, 'gauc')}; ΔGAUC per user-day {_signed(lift['gauc_user_day'])} → "
                       f"{_verdict(lift, 'gauc_user_day')}; Δlogloss {_signed(lift['logloss'])} → "
                       f"{_verdict(lift, 'logloss', higher_better=False)}; click rate of top-ranked "
                       f"{_signed(lift['ctr_top'])} → {_verdict(lift, 'ctr_top')}.")
    beats = all(_verdict(res["lifts"].get(f"coda_vs_{b}", {}), "gauc") == "better" for b in ("cloud", "local"))
    out.append("")
    out.append(f"**CoDA {'beats' if beats else 'does not beat'} both baselines on GAUC** (95% CI of the paired "
               "lift excluding zero for both).")
    seeds = res["per_seed_lifts"]
    for base in ("cloud", "local"):
        vals = [v for v in _per_seed_diff(res, base) if v is not None]
        t = seeds[f"coda_vs_{base}"]["gauc"]
        if vals:
            out.append(f"Per seed, ΔGAUC coda−{base}: {', '.join(f'{v:+.4f}' for v in vals)} "
                       f"({sum(v > 0 for v in vals)} of {len(vals)} positive; mean {t['mean']:+.4f}).")
    return [*out, ""]


def _per_seed_diff(res: Mapping[str, Any], base: str) -> list[float | None]:
    a, b = res["per_seed"]["coda"]["gauc"], res["per_seed"][base]["gauc"]
    return [None if x is None or y is None else x - y for x, y in zip(a, b, strict=True)]
