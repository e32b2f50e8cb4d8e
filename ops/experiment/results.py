"""Experiment results: assemble results.json from the seeds' rows (arms, lifts, headroom, groups, funnel,
schedules) and the stream-vs-offline agreement. report.py writes them; tables.py, markdown.py and figures.py
render them."""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from operator import countOf
from typing import Any

import numpy as np

from core.arms import ARMS, REFERENCES
from ops.experiment import abtest
from ops.experiment.runner import EvalRow, Params, Split, pseudonyms

log = logging.getLogger(__name__)

# besides every arm and reference against cloud: what each control isolates
COMPARISONS = (("coda", "local"), ("coda", "coda_random"), ("coda", "coda_nofilter"))
ACCUMULATED = (("coda", "cloud"), ("coda", "local"), ("local", "cloud"))
VALID_NOTE = ("measured on the same local validation samples that selected the steps (in-sample: an accepted "
              "step raises it by construction)")
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
    steps: dict[str, tuple[int, int]] = field(default_factory=dict)  # device → (accepted gated steps, all steps)
    model_change: dict[str, float] = field(default_factory=dict)  # device → ‖M − M0‖ / ‖M0‖ of its final model
    schedule: dict[str, str] = field(default_factory=dict)  # arm → when it trains, in one line
    # device → (validation metric before, after) per training that took steps; see VALID_NOTE
    valid: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def comparisons(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every arm and reference against cloud, then the controls' comparisons, for the names present."""
    return [*((n, "cloud") for n in names if n != "cloud"),
            *((a, b) for a, b in COMPARISONS if a in names and b in names)]


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


def _arm_of_user(lg: SeedLogs, to_raw: Mapping[str, str]) -> dict[str, str]:
    """user pseudonym → the arm of that user's device in this seed."""
    arm_of_raw = {lg.users[d]: arm for d, arm in lg.arms.items() if d in lg.users}
    return {p: arm_of_raw[u] for p, u in to_raw.items() if u in arm_of_raw}


def _share(c: Counter[str]) -> float | None:
    return round(c["same"] / c["all"], 4) if c["all"] else None


def group_purity(logs: Sequence[SeedLogs], groups: Mapping[str, int], key: str) -> dict[str, Any]:
    """How often neighbours, matched samples and kept samples come from the user's own latent group."""
    to_raw = pseudonyms(key, list(groups))
    group_of = {p: groups[u] for p, u in to_raw.items()}
    sizes = Counter(groups.values())
    n = len(groups)
    chance = sum(s * (s - 1) for s in sizes.values()) / (n * (n - 1)) if n > 1 else None
    neigh: dict[str, Counter[str]] = defaultdict(Counter)
    matched: dict[str, Counter[str]] = defaultdict(Counter)
    kept: dict[str, Counter[str]] = defaultdict(Counter)
    for lg in logs:
        arm_of = _arm_of_user(lg, to_raw)
        for user, ns in lg.neighbours:
            g = group_of.get(user)
            for c in (neigh["all"], neigh[arm_of.get(user, "?")]):
                c["same"] += countOf(map(group_of.get, ns), g)
                c["all"] += len(ns)
        owner_of: dict[tuple[str, str], str] = {}
        for dev, user, ids, owners in lg.batches:
            g = group_of.get(user)
            c = matched[lg.arms.get(dev, "?")]
            c["same"] += countOf(map(group_of.get, owners), g)
            c["all"] += len(owners)
            owner_of.update(((dev, i[:12]), o) for i, o in zip(ids, owners, strict=True))
        for dev, ids in lg.kept.items():
            g = groups.get(lg.users.get(dev, ""))
            c = kept[lg.arms.get(dev, "?")]
            for i in ids:
                owner = owner_of.get((dev, i))
                c["same"] += owner is not None and group_of.get(owner) == g
                c["all"] += 1
    return {"chance": round(chance, 4) if chance is not None else None, "neighbours": _share(neigh["all"]),
            "neighbours_n": neigh["all"]["all"],
            "neighbours_by_arm": {arm: _share(c) for arm, c in sorted(neigh.items()) if arm != "all"},
            "matched_samples": {arm: _share(c) for arm, c in sorted(matched.items())},
            "kept_samples": {arm: _share(c) for arm, c in sorted(kept.items())},
            "kept_n": {arm: c["all"] for arm, c in sorted(kept.items())}}


def neighbour_agreement(logs: Sequence[SeedLogs], events: Sequence[Mapping[str, Any]], key: str,
                        seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per arm: how often a KNN neighbour's label on an item both users have equals the user's, against
    a random other user for each pair. Each (user, neighbour) pair counts once."""
    users = sorted({e["user_id"] for e in events})
    pos = {u: i for i, u in enumerate(users)}
    to_raw = pseudonyms(key, users)
    to_idx = {p: pos[u] for p, u in to_raw.items()}
    pairs: dict[str, np.ndarray] = {}  # arm → user × user 0/1: (user, neighbour) seen
    for lg in logs:
        arm_of = _arm_of_user(lg, to_raw)
        for user, ns in dict.fromkeys((user, tuple(ns)) for user, ns in lg.neighbours):  # daily repeats
            if user in to_idx:
                m = pairs.setdefault(arm_of.get(user, "?"), np.zeros((len(users), len(users)), dtype=np.float32))
                m[to_idx[user], [to_idx[n] for n in ns if n in to_idx]] = 1.0
    labels = _label_matrices(events, pos)
    rng = np.random.default_rng(seed)
    out = {}
    for arm, m in sorted(pairs.items()):
        np.fill_diagonal(m, 0.0)
        (agree, shared), (r_agree, r_shared) = (_agree(labels, x) for x in (m, _random_pairs(m, rng)))
        out[arm] = {"pairs": int(m.sum()), "shared_items": shared, "neighbours": _rate(agree, shared),
                    "random_shared_items": r_shared, "random": _rate(r_agree, r_shared)}
    return out


def _label_matrices(events: Sequence[Mapping[str, Any]], pos: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """user × item indicators of a positive and of a negative label (the last label of a pair stands)."""
    items = {i: n for n, i in enumerate(sorted({e["item_id"] for e in events}))}
    last = {(pos[e["user_id"]], items[e["item_id"]]): int(e["label"]) for e in events}
    ones, zeros = (np.zeros((len(pos), len(items)), dtype=np.float32) for _ in range(2))
    for (u, i), y in last.items():
        (ones if y else zeros)[u, i] = 1.0
    return ones, zeros


def _random_pairs(pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every (user, neighbour) pair, the same user with a random other user (counts)."""
    n = pairs.shape[0]
    rows = np.repeat(np.arange(n), pairs.sum(axis=1).astype(int))
    draws = rng.integers(0, max(1, n - 1), rows.size)
    out = np.zeros_like(pairs)
    np.add.at(out, (rows, draws + (draws >= rows)), 1.0)  # skip the user's own position
    return out


def _agree(labels: tuple[np.ndarray, np.ndarray], pairs: np.ndarray) -> tuple[int, int]:
    """Items both users of each pair have, and how many of those carry the same label (pair-weighted)."""
    ones, zeros = labels
    same = sum(float((x * (pairs @ x)).sum(dtype=np.float64)) for x in (ones, zeros))
    both = ones + zeros
    return round(same), round(float((both * (pairs @ both)).sum(dtype=np.float64)))


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def schedules(logs: Sequence[SeedLogs]) -> dict[str, dict[str, Any]]:
    """Per arm: when it trains, trainings per device, share of gated steps accepted, how far models moved."""
    acc: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    text: dict[str, str] = {}
    for lg in logs:
        for arm, line in lg.schedule.items():
            text.setdefault(arm, line)
        for dev, arm in lg.arms.items():
            a = acc[arm]
            a["trains"].append(lg.trains.get(dev, 0))
            if lg.steps:
                a["steps"].append(lg.steps.get(dev, (0, 0)))
            if lg.model_change:  # a device missing from a filled map never changed its model
                a["change"].append(lg.model_change.get(dev, 0.0))
            a["valid"] += lg.valid.get(dev, [])
    out = {}
    for arm, a in sorted(acc.items(), key=lambda kv: _order(kv[0])):
        accepted, total = (sum(x[i] for x in a["steps"]) for i in (0, 1))
        change = a["change"]
        before, after = ([v[i] for v in a["valid"]] for i in (0, 1))
        out[arm] = {"schedule": text.get(arm), "devices": len(a["trains"]),
                    "trainings_per_device": round(statistics.fmean(a["trains"]), 2),
                    "trainings_median": statistics.median(a["trains"]),
                    "steps_accepted": accepted, "steps_total": total,
                    "accepted_share": round(accepted / total, 4) if total else None,
                    "model_change_mean": round(statistics.fmean(change), 5) if change else None,
                    "model_change_median": round(statistics.median(change), 5) if change else None,
                    "changed_share": round(sum(c > 0 for c in change) / len(change), 4) if change else None,
                    "valid_before_mean": round(statistics.fmean(before), 4) if before else None,
                    "valid_after_mean": round(statistics.fmean(after), 4) if after else None,
                    "valid_note": VALID_NOTE}
    return out


def _order(name: str) -> int:
    names = (*ARMS, *REFERENCES)
    return names.index(name) if name in names else len(names)


def headroom(by_arm: Mapping[str, Sequence[abtest.Unit]], reps: int) -> dict[str, Any]:
    """Every arm's and reference's share of the headroom over cloud: the oracle's where the truth is known,
    own_future's otherwise (a reference, not a bound)."""
    base = next((r for r in ("oracle", "own_future") if by_arm.get(r)), None)
    if base is None or not by_arm.get("cloud"):
        return {"reference": None, "label": "no oracle or own_future rows: no headroom to share", "shares": {}}
    label = ("share of the oracle headroom, (x − cloud) ÷ (oracle − cloud), oracle = the true click probabilities"
             if base == "oracle" else
             "share of the own_future headroom, (x − cloud) ÷ (own_future − cloud): no oracle on this data, and "
             "own_future is a reference, not a bound (shares above 1 are possible)")
    shares = {n: abtest.headroom_share(us, by_arm["cloud"], by_arm[base], reps)
              for n, us in by_arm.items() if n not in ("cloud", base) and us}
    return {"reference": base, "label": label, "shares": shares}


def funnel(res: Mapping[str, Any], groups: Mapping[str, Any] | None,
           agreement_: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stage by stage per arm: matching → what the filter keeps (against the random control) → gate → model
    change → lift over cloud. A null is located at the first stage that shows no signal."""
    g = groups or {}
    control = g.get("kept_samples", {}).get("coda_random")
    arms = {}
    for arm in (a for a in ARMS if a in res["arms"]):
        sched = res["schedules"].get(arm, {})
        lift = res["lifts"].get(f"{arm}_vs_cloud", {})
        agree = (agreement_ or {}).get(arm, {})
        arms[arm] = {"matching_precision": g.get("neighbours_by_arm", {}).get(arm),
                     "matched_own_group": g.get("matched_samples", {}).get(arm),
                     "kept_own_group": g.get("kept_samples", {}).get(arm),
                     "kept": g.get("kept_n", {}).get(arm, res["devices"].get(arm, {}).get("kept")),
                     "neighbour_agreement": agree.get("neighbours"), "random_agreement": agree.get("random"),
                     "accepted_share": sched.get("accepted_share"),
                     "model_change_mean": sched.get("model_change_mean"),
                     "lift_vs_cloud": {m: lift.get(m) for m in abtest.HEADROOM} if lift.get("users") else None,
                     "headroom_share": res["headroom"]["shares"].get(arm, {}).get("gauc")}
    return {"chance": g.get("chance"), "control_kept_own_group": control, "arms": arms}


def analyse(rows: Sequence[EvalRow], split: Split, params: Params, logs: Sequence[SeedLogs],
            key: str) -> dict[str, Any]:
    """Every number of the report, from the seeds' progressive-validation rows (arms and references)."""
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
    present = {r.arm for r in rows}
    names = [n for n in (*ARMS, *REFERENCES) if n in present]
    out["references"] = [n for n in REFERENCES if n in present]
    for tag, after in (("", False), ("_after_first_day", True)):
        us = abtest.units(rows, params.top_n, after)
        by_arm = {n: [u for u in us if u.arm == n] for n in names}
        out[f"arms{tag}"] = {n: abtest.arm_metrics(by_arm[n], b) for n in names}
        out[f"lifts{tag}"] = {f"{a}_vs_{c}": abtest.paired_lift(by_arm[a], by_arm[c], b)
                              for a, c in comparisons(names)}
        if after:
            continue
        out["headroom"] = headroom(by_arm, b)
        seeds = abtest.per_seed([u for u in us if u.seed >= 0], params.seeds)  # references: seed −1
        out["per_seed"] = seeds
        out["per_seed_summary"] = {arm: {m: abtest.t_interval(v) for m, v in ms.items()} for arm, ms in seeds.items()}
        out["per_seed_lifts"] = {
            f"{a}_vs_{c}": {m: abtest.t_interval([_diff(m, x, y) for x, y in zip(seeds[a][m], seeds[c][m], strict=True)])
                            for m in (*abtest.OFFLINE, *abtest.ONLINE)}
            for a, c in comparisons(names) if a in ARMS and c in ARMS}
        window = 7 if days > 14 else 1  # long runs: a week smooths weekday effects; short ones keep each day
        out["series"] = {"days": days, "window": window, "per_arm": abtest.day_series(us, days, names, b, window),
                         "accumulated": {f"{a}_vs_{c}": abtest.accumulated_lift(by_arm[a], by_arm[c], days, b)
                                         for a, c in ACCUMULATED if a in names and c in names}}
    out["devices"] = device_summary(logs)
    out["schedules"] = schedules(logs)
    if split.groups:
        out["groups"] = group_purity(logs, split.groups, key)
    agree = neighbour_agreement(logs, split.events, key) if any(lg.neighbours for lg in logs) else None
    if agree is not None:
        out["neighbour_agreement"] = agree
    out["funnel"] = funnel(out, out.get("groups"), agree)
    return out


def _diff(metric: str, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b - 1 if metric in abtest.ONLINE else a - b


def agreement(stream: Sequence[EvalRow], offline: Sequence[EvalRow]) -> dict[str, Any]:
    """Per arm and reference present: evaluation counts, GAUC and logloss of both; score differences on
    shared events, joined by (seed, arm, sample id): many events share their user's (user, ts)."""
    out: dict[str, Any] = {"agreement": {}}
    present = {r.arm for r in (*stream, *offline)}
    for arm in (n for n in (*ARMS, *REFERENCES) if n in present):
        s_us = abtest.units([r for r in stream if r.arm == arm], 3)
        o_us = abtest.units([r for r in offline if r.arm == arm], 3)
        ps, po = abtest.point_metrics(s_us), abtest.point_metrics(o_us)
        out["agreement"][arm] = {"events_stream": sum(u.n for u in s_us), "events_offline": sum(u.n for u in o_us),
                                 "gauc_stream": ps["gauc"], "gauc_offline": po["gauc"],
                                 "logloss_stream": ps["logloss"], "logloss_offline": po["logloss"]}
    a, b = _by_sample(stream), _by_sample(offline)
    shared = set(a) & set(b)
    diffs = [abs(a[k] - b[k]) for k in shared]
    out["shared_events"] = len(shared)
    out["unkeyed_rows"] = sum(not r.sample_id for r in (*stream, *offline))
    out["max_score_diff"] = max(diffs) if diffs else None
    out["identical_share"] = round(sum(x <= 1e-6 for x in diffs) / len(diffs), 4) if diffs else None
    return out


def _by_sample(rows: Sequence[EvalRow]) -> dict[tuple[int, str, str], float]:
    return {(r.seed, r.arm, r.sample_id): r.score for r in rows if r.sample_id}
