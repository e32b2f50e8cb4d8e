"""Experiment results: assemble results.json from the seeds' rows, write report.md and the figures."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.arms import ARMS
from ops import abtest
from ops.experiment import EvalRow, Params, Split, pseudonyms

log = logging.getLogger(__name__)

LIFTS = (("coda", "cloud"), ("coda", "local"), ("coda", "coda_nofilter"), ("coda", "coda_random"),
         ("local", "cloud"), ("coda_nofilter", "cloud"))
DESIGN = (
    "Bucket test with rotation: a fixed hash of the device pseudonym picks a starting arm, seed s "
    "rotates it by s, so within a seed every user is in exactly one arm (a clean A/B/n test on disjoint "
    "users) and across seeds the same user is scored in several arms on identical events. Per-arm "
    "numbers pool all seeds (bootstrap over users); lifts pair each user with itself in the two arms "
    "(users that were in both arms in some seeds), bootstrap over those users; per-seed values give "
    "the spread of a single bucket test. The global model is the same in every seed; seeds change the "
    "arm assignment and the devices' own randomness (classifier split, initialisation, shuffling)."
)


@dataclass
class SeedLogs:
    """What the group analysis needs from one run (streaming or offline)."""

    seed: int
    arms: dict[str, str]  # device → arm
    users: dict[str, str]  # device → raw user id
    kept: dict[str, list[str]]  # device → kept outside sample ids (12-char prefixes, as the device logs them)
    batches: list[tuple[str, str, list[str], list[str]]]  # (device, target user pseudonym, sample ids, owners)
    neighbours: list[tuple[str, list[str]]] = field(default_factory=list)  # (user pseudonym, neighbours)
    trains: dict[str, int] = field(default_factory=dict)


def device_summary(logs: Sequence[SeedLogs]) -> dict[str, dict[str, float]]:
    """Per arm: devices, mean trainings, outside samples received and kept (the filter's keep rate)."""
    acc: dict[str, Counter[str]] = defaultdict(Counter)
    for lg in logs:
        received = Counter(dev for dev, _, ids, _ in lg.batches for _ in ids)
        for dev, arm in lg.arms.items():
            c = acc[arm]
            c["devices"] += 1
            c["trains"] += lg.trains.get(dev, 0)
            c["received"] += received[dev]
            c["kept"] += len(lg.kept.get(dev, ()))
    return {arm: {"devices": c["devices"], "trains_per_device": round(c["trains"] / max(1, c["devices"]), 2),
                  "received": c["received"], "kept": c["kept"],
                  "kept_share": round(c["kept"] / c["received"], 4) if c["received"] else None}
            for arm, c in sorted(acc.items())}


def group_purity(logs: Sequence[SeedLogs], groups: Mapping[str, int], key: str) -> dict[str, Any]:
    """How often neighbours, matched samples and kept samples come from the user's own latent group."""
    group_of = {p: groups[u] for p, u in pseudonyms(key, list(groups)).items()}
    sizes = Counter(groups.values())
    n = len(groups)
    chance = sum(s * (s - 1) for s in sizes.values()) / (n * (n - 1)) if n > 1 else None
    neigh = Counter[str]()
    matched: dict[str, Counter[str]] = defaultdict(Counter)
    kept: dict[str, Counter[str]] = defaultdict(Counter)
    for lg in logs:
        for user, ns in lg.neighbours:
            g = group_of.get(user)
            neigh["same"] += sum(group_of.get(x) == g for x in ns)
            neigh["all"] += len(ns)
        owner_of: dict[tuple[str, str], str] = {}
        for dev, user, ids, owners in lg.batches:
            g = group_of.get(user)
            c = matched[lg.arms.get(dev, "?")]
            c["same"] += sum(group_of.get(o) == g for o in owners)
            c["all"] += len(owners)
            owner_of.update(((dev, i[:12]), o) for i, o in zip(ids, owners, strict=True))
        for dev, ids in lg.kept.items():
            g = groups.get(lg.users.get(dev, ""))
            c = kept[lg.arms.get(dev, "?")]
            for i in ids:
                owner = owner_of.get((dev, i))
                c["same"] += owner is not None and group_of.get(owner) == g
                c["all"] += 1

    def share(c: Counter[str]) -> float | None:
        return round(c["same"] / c["all"], 4) if c["all"] else None

    return {"chance": round(chance, 4) if chance is not None else None, "neighbours": share(neigh),
            "neighbours_n": neigh["all"],
            "matched_samples": {arm: share(c) for arm, c in sorted(matched.items())},
            "kept_samples": {arm: share(c) for arm, c in sorted(kept.items())},
            "kept_n": {arm: c["all"] for arm, c in sorted(kept.items())}}


def analyse(rows: Sequence[EvalRow], split: Split, params: Params, logs: Sequence[SeedLogs],
            key: str) -> dict[str, Any]:
    """Every number of the report, from the seeds' progressive-validation rows."""
    days = len(split.live)
    b = params.bootstrap
    out: dict[str, Any] = {
        "params": {**asdict(params), "seeds": list(params.seeds)},
        "seeds": list(params.seeds),
        "design": DESIGN,
        "data": {"dataset": split.name, "cut_day": split.cut_day, "history_days": len(split.history),
                 "live_days": days, "history_events": sum(p.events for p in split.history),
                 "live_events": sum(p.events for p in split.live), "live_users": len(split.live_users)},
    }
    for tag, after in (("", False), ("_after_first_day", True)):
        us = abtest.units(rows, params.top_n, after)
        by_arm = {arm: [u for u in us if u.arm == arm] for arm in ARMS}
        out[f"arms{tag}"] = {arm: abtest.arm_metrics(by_arm[arm], b) for arm in ARMS}
        out[f"lifts{tag}"] = {f"{a}_vs_{c}": abtest.paired_lift(by_arm[a], by_arm[c], b) for a, c in LIFTS}
        if after:
            continue
        seeds = abtest.per_seed(us, params.seeds)
        out["per_seed"] = seeds
        out["per_seed_summary"] = {arm: {m: abtest.t_interval(v) for m, v in ms.items()} for arm, ms in seeds.items()}
        out["per_seed_lifts"] = {
            f"{a}_vs_{c}": {m: abtest.t_interval([_diff(m, x, y) for x, y in zip(seeds[a][m], seeds[c][m], strict=True)])
                            for m in (*abtest.OFFLINE, *abtest.ONLINE)} for a, c in LIFTS}
        out["series"] = {"days": days, "per_arm": abtest.day_series(us, days),
                         "accumulated": {f"{a}_vs_{c}": abtest.accumulated_lift(by_arm[a], by_arm[c], days)
                                         for a, c in (("coda", "cloud"), ("coda", "local"))}}
    out["devices"] = device_summary(logs)
    if split.groups:
        out["groups"] = group_purity(logs, split.groups, key)
    return out


def _diff(metric: str, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b - 1 if metric in abtest.ONLINE else a - b


# --------------------------------------------------------------------------- report.md
def _ci(m: Mapping[str, Any] | None, digits: int = 4, pct: bool = False) -> str:
    if not m or m.get("value") is None:
        return "–"
    f = (lambda x: f"{100 * x:+.{max(0, digits - 2)}f}%") if pct else (lambda x: f"{x:.{digits}f}")  # noqa: E731
    lo, hi = m.get("lo"), m.get("hi")
    return f"{f(m['value'])} [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else f(m["value"])


def _signed(m: Mapping[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    if m.get("relative"):
        return _ci(m, 4, pct=True)
    return f"{m['value']:+.4f} [{m['lo']:+.4f}, {m['hi']:+.4f}]" if m.get("lo") is not None else f"{m['value']:+.4f}"


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


def report_md(res: Mapping[str, Any], figures: Sequence[str], offline: Mapping[str, Any] | None = None) -> str:
    d, p = res["data"], res["params"]
    lines = [f"# CoDA experiment: {d['dataset']}", "",
             f"Engine: {res.get('engine', 'streaming pipeline')}. Seeds {res['seeds']}, K = {p['k']}, "
             f"σ = {p['sigma']}, top-{p['top_n']} for the online analogues, {p['bootstrap']} bootstrap replicates"
             + (f", {res['elapsed_s']} s wall." if "elapsed_s" in res else "."), "",
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
    lines += _offline_table(res, "arms", "Table 3 analogue — offline metrics per arm (all live events)")
    lines += _offline_table(res, "arms_after_first_day",
                            "Same, events after each user's first live day (where arms can differ)")
    lines += _online_table(res)
    lines += _lift_table(res, "lifts", "Lifts (paired users, all live events)")
    lines += _lift_table(res, "lifts_after_first_day", "Lifts (paired users, after the first live day)")
    lines += _seed_table(res)
    lines += _device_table(res)
    if "groups" in res:
        lines += _group_lines(res["groups"])
    if "sweep" in res:
        lines += _sweep_lines(res["sweep"])
    if "tune" in res:
        lines += _tune_lines(res["tune"])
    if offline:
        lines += _offline_agreement(offline)
    lines += ["## Figures", "", "Figure 9 analogue: each arm's own users per day (7-day means); arms hold different "
              "users on a day, so population noise dominates. Figure 10 analogue: lifts accumulated over days on "
              "users seen in both arms (same events), the comparison to read.", ""]
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


def _offline_table(res: Mapping[str, Any], key: str, title: str) -> list[str]:
    out = [f"## {title}", "", "| arm | users | events | GAUC | GAUC per user-day | AUC | logloss |",
           "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        m = res[key][arm]
        out.append(f"| {arm} | {m['users']['value']} | {m['events']['value']} | {_ci(m['gauc'])} | "
                   f"{_ci(m['gauc_user_day'])} | {_ci(m['auc'])} | {_ci(m['logloss'])} |")
    return [*out, ""]


def _online_table(res: Mapping[str, Any]) -> list[str]:
    n = res["params"]["top_n"]
    out = [f"## Table 4 analogue — online metrics per arm (each user's top-{n} scored items of a day)", "",
           "| arm | click rate of top-ranked | clicks per user-day | share of user-days with a click |",
           "|---|---|---|---|"]
    for arm in ARMS:
        m = res["arms"][arm]
        out.append(f"| {arm} | {_ci(m['ctr_top'])} | {_ci(m['clicks_per_user_day'])} | "
                   f"{_ci(m['share_clicking'])} |")
    return [*out, ""]


def _lift_table(res: Mapping[str, Any], key: str, title: str) -> list[str]:
    out = [f"## {title}", "", "Differences for GAUC/AUC/logloss (lower logloss is better), relative lifts for the "
           "online rates; 95% bootstrap CI over paired users.", "",
           "| comparison | users | ΔGAUC | ΔGAUC per user-day | ΔAUC | Δlogloss | click rate top-ranked | "
           "clicks per user-day | share clicking |", "|---|---|---|---|---|---|---|---|---|"]
    for name, lift in res[key].items():
        if not lift.get("users"):
            out.append(f"| {name} | 0 | – | – | – | – | – | – | – |")
            continue
        out.append(f"| {name} | {lift['users']} | {_signed(lift['gauc'])} | {_signed(lift['gauc_user_day'])} | "
                   f"{_signed(lift['auc'])} | "
                   f"{_signed(lift['logloss'])} | {_signed(lift['ctr_top'])} | "
                   f"{_signed(lift['clicks_per_user_day'])} | {_signed(lift['share_clicking'])} |")
    return [*out, ""]


def _seed_table(res: Mapping[str, Any]) -> list[str]:
    out = ["## Per seed (each seed alone is a bucket test on disjoint users)", "",
           "| arm | GAUC per seed | GAUC per user-day | AUC per seed | logloss per seed |", "|---|---|---|---|---|"]
    fmt = (lambda vs: ", ".join("–" if v is None else f"{v:.4f}" for v in vs))  # noqa: E731
    for arm in ARMS:
        m = res["per_seed"][arm]
        out.append(f"| {arm} | {fmt(m['gauc'])} | {fmt(m['gauc_user_day'])} | {fmt(m['auc'])} | {fmt(m['logloss'])} |")
    out += ["", "| comparison | ΔGAUC mean [t-CI] over seeds | ΔGAUC per user-day | ΔAUC | Δlogloss |",
            "|---|---|---|---|---|"]
    for name, ms in res["per_seed_lifts"].items():
        cells = []
        for metric in ("gauc", "gauc_user_day", "auc", "logloss"):
            t = ms[metric]
            cells.append("–" if t["mean"] is None else
                         f"{t['mean']:+.4f}" + (f" [{t['lo']:+.4f}, {t['hi']:+.4f}]" if t["lo"] is not None else ""))
        out.append(f"| {name} | {' | '.join(cells)} |")
    return [*out, ""]


def _device_table(res: Mapping[str, Any]) -> list[str]:
    out = ["## Devices per arm (all seeds)", "",
           "| arm | devices | trainings per device | outside samples received | kept | kept share |",
           "|---|---|---|---|---|---|"]
    for arm, m in res["devices"].items():
        out.append(f"| {arm} | {m['devices']} | {m['trains_per_device']} | {m['received']} | {m['kept']} | "
                   f"{m['kept_share'] if m['kept_share'] is not None else '–'} |")
    return [*out, ""]


def _group_lines(g: Mapping[str, Any]) -> list[str]:
    out = ["## Where the premise holds: latent groups", "",
           f"Share from the user's own latent group (chance for a random other user: {g['chance']}):", "",
           f"- KNN neighbours (match results): {g['neighbours']} of {g['neighbours_n']}", ""]
    out += ["| arm | matched samples from own group | kept samples from own group | kept samples |",
            "|---|---|---|---|"]
    for arm in sorted(set(g["matched_samples"]) | set(g["kept_samples"])):
        out.append(f"| {arm} | {g['matched_samples'].get(arm, '–')} | {g['kept_samples'].get(arm, '–')} | "
                   f"{g['kept_n'].get(arm, 0)} |")
    return [*out, ""]


def _sweep_lines(sw: Mapping[str, Any]) -> list[str]:
    out = ["## Sweep over K and σ (offline engine, same split and seeds)", "",
           "| K | σ | coda GAUC | ΔGAUC coda−cloud | ΔGAUC coda−local | Δlogloss coda−cloud |", "|---|---|---|---|---|---|"]
    for c in sw["grid"]:
        out.append(f"| {c['k']} | {c['sigma']} | {_num(c['coda']['gauc'])} | {_signed(c['coda_vs_cloud'].get('gauc'))} | "
                   f"{_signed(c['coda_vs_local'].get('gauc'))} | {_signed(c['coda_vs_cloud'].get('logloss'))} |")
    return [*out, ""]


def _tune_lines(tu: Mapping[str, Any]) -> list[str]:
    sp = tu["split"]
    out = ["## Tuning within the method, on the history only", "",
           f"Variants of Algorithm 3's schedule scored on a validation experiment cut from the history days "
           f"({sp['history_days']} pool days, {sp['live_days']} validation days, all before the test period); "
           "offline engine.", "",
           "| variant | coda GAUC | cloud GAUC | ΔGAUC coda−cloud | ΔGAUC coda−local | Δlogloss coda−cloud |",
           "|---|---|---|---|---|---|"]
    for v in tu["variants"]:
        out.append(f"| {v['name']} | {_num(v['arms']['coda']['gauc'])} | {_num(v['arms']['cloud']['gauc'])} | "
                   f"{_signed(v['coda_vs_cloud'].get('gauc'))} | {_signed(v['coda_vs_local'].get('gauc'))} | "
                   f"{_signed(v['coda_vs_cloud'].get('logloss'))} |")
    return [*out, ""]


def _offline_agreement(off: Mapping[str, Any]) -> list[str]:
    out = ["## Offline reference (batch, same split, same seeds)", "",
           "| arm | events stream / offline | GAUC stream / offline | logloss stream / offline |",
           "|---|---|---|---|"]
    for arm, a in off["agreement"].items():
        out.append(f"| {arm} | {a['events_stream']} / {a['events_offline']} | {_num(a['gauc_stream'])} / "
                   f"{_num(a['gauc_offline'])} | {_num(a['logloss_stream'])} / {_num(a['logloss_offline'])} |")
    out += ["", f"Largest score difference on a shared event: {off.get('max_score_diff')}; "
            f"events scored identically (|Δ| ≤ 1e-6): {off.get('identical_share')}.", ""]
    return out


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def agreement(stream: Sequence[EvalRow], offline: Sequence[EvalRow]) -> dict[str, Any]:
    """Per arm: evaluation counts, GAUC and logloss of both; score differences on shared events."""
    out: dict[str, Any] = {"agreement": {}}
    for arm in ARMS:
        s_us = abtest.units([r for r in stream if r.arm == arm], 3)
        o_us = abtest.units([r for r in offline if r.arm == arm], 3)
        ps, po = abtest.point_metrics(s_us), abtest.point_metrics(o_us)
        out["agreement"][arm] = {"events_stream": sum(u.n for u in s_us), "events_offline": sum(u.n for u in o_us),
                                 "gauc_stream": ps["gauc"], "gauc_offline": po["gauc"],
                                 "logloss_stream": ps["logloss"], "logloss_offline": po["logloss"]}
    a = {(r.seed, r.user, r.ts): r.score for r in stream}
    b = {(r.seed, r.user, r.ts): r.score for r in offline}
    shared = set(a) & set(b)
    diffs = [abs(a[k] - b[k]) for k in shared]
    out["shared_events"] = len(shared)
    out["max_score_diff"] = max(diffs) if diffs else None
    out["identical_share"] = round(sum(x <= 1e-6 for x in diffs) / len(diffs), 4) if diffs else None
    return out


# --------------------------------------------------------------------------- figures
def figures(res: Mapping[str, Any], out: Path) -> list[str]:
    """Figure 9 analogue (per-day metric per arm) and Figure 10 analogue (accumulated lift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = res["series"]
    days = list(range(1, series["days"] + 1))
    names = []
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for arm in ARMS:
        s = series["per_arm"][arm]
        for ax, metric in zip(axes, ("ctr_top", "gauc"), strict=True):
            ax.plot(days, _smooth(s[metric]), label=arm, lw=1.4)
    axes[0].set_ylabel(f"click rate of top-{res['params']['top_n']} (7-day mean)")
    axes[1].set_ylabel("daily GAUC (7-day mean)")
    axes[1].set_xlabel("live day")
    axes[0].legend(ncol=5, fontsize=8)
    fig.suptitle(f"{res['data']['dataset']}: per-day metrics per arm (Figure 9 analogue)")
    fig.tight_layout()
    fig.savefig(out / "fig9_daily.png", dpi=110)
    plt.close(fig)
    names.append("fig9_daily.png")
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, acc in series["accumulated"].items():
        axes[0].plot(days, [None if v is None else 100 * v for v in acc["ctr_top"]], label=name)
        axes[1].plot(days, acc["gauc"], label=name)
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("accumulated lift, click rate top-ranked (%)")
    axes[1].set_ylabel("accumulated ΔGAUC")
    axes[1].set_xlabel("live day")
    axes[0].legend()
    fig.suptitle(f"{res['data']['dataset']}: accumulated lift over days, paired users (Figure 10 analogue)")
    fig.tight_layout()
    fig.savefig(out / "fig10_accumulated_lift.png", dpi=110)
    plt.close(fig)
    names.append("fig10_accumulated_lift.png")
    return names


def _smooth(values: Sequence[float | None], window: int = 7) -> list[float | None]:
    out: list[float | None] = []
    for i in range(len(values)):
        xs = [v for v in values[max(0, i - window + 1): i + 1] if v is not None]
        out.append(sum(xs) / len(xs) if xs else None)
    return out


def write(res: Mapping[str, Any], out: Path, offline: Mapping[str, Any] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = figures(res, out)
    body = dict(res)
    if offline:
        body["offline"] = offline
    (out / "results.json").write_text(json.dumps(body, indent=1, default=_plain))
    (out / "report.md").write_text(report_md(res, names, offline))


def _plain(x: object) -> object:
    if hasattr(x, "tolist"):
        return x.tolist()  # type: ignore[no-any-return]
    return str(x)
