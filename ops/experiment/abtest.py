"""A/B analysis of progressive-validation rows: per-arm metrics, paired lifts, bootstrap CIs, day series."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.arms import ARMS
from core.metrics import LOGLOSS_EPS, auc
from ops.experiment.runner import EvalRow

ONLINE = ("ctr_top", "clicks_per_user_day", "share_clicking")
OFFLINE = ("gauc", "gauc_user_day", "auc", "logloss")


@dataclass
class Unit:
    """One user in one arm of one seed: scored events and their top-n daily outcomes."""

    seed: int
    arm: str
    user: str
    labels: np.ndarray
    scores: np.ndarray
    days: np.ndarray
    auc: float | None
    day_auc: tuple[float, int]  # Σ n·AUC and Σ n over the user's days with both classes
    day_aucs: dict[int, tuple[float, int]]  # day → (n·AUC, n), days with both classes only
    loss_sum: float
    clicks: int  # clicks among each day's top-n scored events
    shown: int  # events in each day's top-n
    user_days: int
    click_days: int  # days with ≥ 1 click in the top-n
    by_day: dict[int, tuple[int, int, int]]  # day → (clicks, shown, clicked ≥ 1)

    @property
    def n(self) -> int:
        return int(self.labels.size)


def _top(labels: np.ndarray, scores: np.ndarray, ts: np.ndarray, days: np.ndarray,
         n: int) -> dict[int, tuple[int, int, int]]:
    """Per day: clicks among the n best-scored events (ties: earlier first), how many shown, any click."""
    out = {}
    for day in np.unique(days):
        idx = np.flatnonzero(days == day)
        order = idx[np.lexsort((ts[idx], -scores[idx]))][:n]
        clicks = int(labels[order].sum())
        out[int(day)] = (clicks, int(order.size), int(clicks > 0))
    return out


def _day_aucs(labels: np.ndarray, scores: np.ndarray, days: np.ndarray) -> dict[int, tuple[float, int]]:
    """Per-day AUC of one user, impression-weighted: within a day one model scored every event."""
    out = {}
    for day in np.unique(days):
        mask = days == day
        a = auc(labels[mask], scores[mask])
        if a is not None:
            out[int(day)] = (a * int(mask.sum()), int(mask.sum()))
    return out


def units(rows: Sequence[EvalRow], top_n: int, after_first_day: bool = False) -> list[Unit]:
    """Group rows by (seed, arm, user); `after_first_day` keeps only events after the user's first live day.

    On its first live day a user is scored by M0 in every arm (devices learn at day end), so
    only later events can tell the arms apart.
    """
    grouped: dict[tuple[int, str, str], list[EvalRow]] = defaultdict(list)
    for r in rows:
        grouped[(r.seed, r.arm, r.user)].append(r)
    out = []
    for (seed, arm, user), rs in sorted(grouped.items()):
        rs.sort(key=lambda r: r.ts)
        if after_first_day:
            first = rs[0].day
            rs = [r for r in rs if r.day > first]
            if not rs:
                continue
        y = np.array([r.label for r in rs], dtype=np.float64)
        p = np.array([r.score for r in rs], dtype=np.float64)
        d = np.array([r.day for r in rs])
        ts = np.array([r.ts for r in rs])
        pc = np.clip(p, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        loss = float(-(y * np.log(pc) + (1 - y) * np.log1p(-pc)).sum())
        by_day = _top(y, p, ts, d, top_n)
        clicks = sum(c for c, _, _ in by_day.values())
        shown = sum(s for _, s, _ in by_day.values())
        day_aucs = _day_aucs(y, p, d)
        day_auc = (sum(a for a, _ in day_aucs.values()), sum(n for _, n in day_aucs.values()))
        out.append(Unit(seed, arm, user, y, p, d, auc(y, p), day_auc, day_aucs, loss, clicks, shown, len(by_day),
                        sum(k for _, _, k in by_day.values()), by_day))
    return out


# --------------------------------------------------------------------------- metrics on a set of units
@dataclass(frozen=True)
class PairCounts:
    """What a pooled AUC under user weights needs, counted once: `ranked[u, v]` = pairs (a positive of
    user u, a negative of user v) that the scores order right, ties one half; positives and negatives
    per user. A replicate with user weights w then has AUC = w·ranked·w / ((w·positives)(w·negatives)):
    every term is an integer or a half, so the sums are exact and the AUC is the one `core.metrics.auc`
    gives on the events repeated by their weights — without expanding weights to every event."""

    ranked: np.ndarray  # [k, k]
    positives: np.ndarray  # [k]
    negatives: np.ndarray  # [k]


def pair_counts(labels: np.ndarray, scores: np.ndarray, owner: np.ndarray, k: int) -> PairCounts:
    """`PairCounts` of events with 0/1 `labels`, `scores` and their user's position `owner` (< k)."""
    pos, neg = labels == 1, labels != 1
    by_score = np.argsort(scores[pos], kind="stable")  # sorted needles: searchsorted walks memory in order
    pos_scores, pos_owner = scores[pos][by_score], owner[pos][by_score]
    by_user = np.lexsort((scores[neg], owner[neg]))  # negatives grouped by user, scores ascending
    neg_scores, neg_owner = scores[neg][by_user], owner[neg][by_user]
    bounds = np.searchsorted(neg_owner, np.arange(k + 1))
    ranked = np.zeros((k, k))
    for v in np.flatnonzero(np.diff(bounds)):
        theirs = neg_scores[bounds[v]:bounds[v + 1]]
        below = np.searchsorted(theirs, pos_scores, "left")
        tied = np.searchsorted(theirs, pos_scores, "right") - below
        ranked[:, v] = np.bincount(pos_owner, weights=below + 0.5 * tied, minlength=k)
    return PairCounts(ranked, np.bincount(pos_owner, minlength=k).astype(float),
                      np.bincount(neg_owner, minlength=k).astype(float))


def weighted_auc(pairs: PairCounts, w: np.ndarray) -> np.ndarray:
    """Pooled AUC of each user-weight row of `w` (bootstrap replicates); NaN without both classes."""
    num = ((w @ pairs.ranked) * w).sum(axis=1)
    den = (w @ pairs.positives) * (w @ pairs.negatives)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


@dataclass
class Table:
    """Per-user aggregates of one arm's units, aligned to a user list (for bootstraps)."""

    users: list[str]
    gauc_num: np.ndarray  # Σ n·auc over the user's units with both classes
    gauc_den: np.ndarray  # Σ n over those units
    gud_num: np.ndarray  # the same over the user's days (one model per group)
    gud_den: np.ndarray
    loss: np.ndarray
    n: np.ndarray
    clicks: np.ndarray
    shown: np.ndarray
    user_days: np.ndarray
    click_days: np.ndarray
    pairs: PairCounts  # the pooled AUC's pair counts between users


def table(us: Sequence[Unit], users: Sequence[str] | None = None) -> Table:
    """Aggregate units per user; with `users` given, only those (in that order)."""
    users = list(users) if users is not None else sorted({u.user for u in us})
    pos = {u: i for i, u in enumerate(users)}
    k = len(users)
    cols = {name: np.zeros(k) for name in ("gauc_num", "gauc_den", "gud_num", "gud_den", "loss", "n", "clicks",
                                           "shown", "user_days", "click_days")}
    labels, scores, owner = [], [], []
    for u in us:
        i = pos.get(u.user)
        if i is None:
            continue
        if u.auc is not None:
            cols["gauc_num"][i] += u.n * u.auc
            cols["gauc_den"][i] += u.n
        cols["gud_num"][i] += u.day_auc[0]
        cols["gud_den"][i] += u.day_auc[1]
        cols["loss"][i] += u.loss_sum
        cols["n"][i] += u.n
        cols["clicks"][i] += u.clicks
        cols["shown"][i] += u.shown
        cols["user_days"][i] += u.user_days
        cols["click_days"][i] += u.click_days
        labels.append(u.labels)
        scores.append(u.scores)
        owner.append(np.full(u.n, i))
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))  # noqa: E731
    return Table(users, **cols, pairs=pair_counts(cat(labels), cat(scores), cat(owner).astype(int), k))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _gaucs(t: Table, w: np.ndarray) -> dict[str, np.ndarray]:
    """GAUC and GAUC per user-day under user weights `w` (cheap: no pooled AUC)."""
    return {"gauc": _ratio(w @ t.gauc_num, w @ t.gauc_den), "gauc_user_day": _ratio(w @ t.gud_num, w @ t.gud_den)}


def metrics(t: Table, w: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric under user weights `w` (rows: replicates; a row of ones is the estimate)."""
    out = {
        **_gaucs(t, w),
        "logloss": _ratio(w @ t.loss, w @ t.n),
        "ctr_top": _ratio(w @ t.clicks, w @ t.shown),
        "clicks_per_user_day": _ratio(w @ t.clicks, w @ t.user_days),
        "share_clicking": _ratio(w @ t.click_days, w @ t.user_days),
    }
    out["auc"] = weighted_auc(t.pairs, w)
    return out


def _replicates(k: int, b: int, rng: np.random.Generator, chunk: int = 100) -> list[np.ndarray]:
    """Bootstrap user weights (multinomial counts), in chunks to bound memory."""
    return [rng.multinomial(k, np.full(k, 1.0 / k), size=min(chunk, b - i)).astype(np.float64)
            for i in range(0, b, chunk)] if k else []


def _summ(point: float, reps: np.ndarray) -> dict[str, float | None]:
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(point):
        return {"value": None, "lo": None, "hi": None}
    lo, hi = (np.percentile(reps, [2.5, 97.5]) if reps.size else (np.nan, np.nan))
    return {"value": float(point), "lo": _f(lo), "hi": _f(hi)}


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def arm_metrics(us: Sequence[Unit], b: int, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Each metric of one arm with a 95% bootstrap CI over users."""
    t = table(us)
    k = len(t.users)
    point = {m: float(v[0]) for m, v in metrics(t, np.ones((1, k))).items()}
    reps: dict[str, list[np.ndarray]] = defaultdict(list)
    for w in _replicates(k, b, np.random.default_rng(seed)):
        for m, v in metrics(t, w).items():
            reps[m].append(v)
    out = {m: _summ(point[m], np.concatenate(reps[m]) if reps[m] else np.zeros(0)) for m in point}
    out["users"] = {"value": k}  # type: ignore[dict-item]
    out["events"] = {"value": int(t.n.sum())}  # type: ignore[dict-item]
    return out


def paired_lift(a: Sequence[Unit], b: Sequence[Unit], reps: int, seed: int = 0) -> dict[str, object]:
    """Arm a − arm b on the users seen in both (same events, different arms), bootstrap over those users.

    Rates (ctr_top, clicks per user-day, share clicking) are reported as relative lifts
    (a / b − 1); GAUC, AUC and logloss as differences.
    """
    common = sorted({u.user for u in a} & {u.user for u in b})
    ta, tb = table(a, common), table(b, common)
    k = len(common)
    if not k:
        return {"users": 0}
    ones = np.ones((1, k))
    pa, pb = metrics(ta, ones), metrics(tb, ones)
    draws: dict[str, list[np.ndarray]] = defaultdict(list)
    for w in _replicates(k, reps, np.random.default_rng(seed)):
        ma, mb = metrics(ta, w), metrics(tb, w)
        for m in ma:
            draws[m].append(_lift(m, ma[m], mb[m]))
    out: dict[str, object] = {"users": k, "events": int(ta.n.sum())}
    for m in pa:
        out[m] = {**_summ(float(_lift(m, pa[m], pb[m])[0]), np.concatenate(draws[m]) if draws[m] else np.zeros(0)),
                  "a": _f(float(pa[m][0])), "b": _f(float(pb[m][0])), "relative": m in ONLINE}
    return out


def _lift(metric: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # a replicate without clicks in b: no relative lift
        return a / b - 1.0 if metric in ONLINE else a - b


HEADROOM = ("gauc", "gauc_user_day")


def headroom_share(arm: Sequence[Unit], cloud: Sequence[Unit], oracle: Sequence[Unit], reps: int,
                   seed: int = 0) -> dict[str, object]:
    """(arm − cloud) ÷ (oracle − cloud) on GAUC and GAUC per user-day, users present in all three.

    A ratio of the three means (not a mean of per-user ratios: one user's headroom can be ~0),
    with a bootstrap over those users that reweights all three with the same draw, as `paired_lift`.
    """
    common = sorted({u.user for u in arm} & {u.user for u in cloud} & {u.user for u in oracle})
    k = len(common)
    if not k:
        return {"users": 0}
    ts = [table(x, common) for x in (arm, cloud, oracle)]
    point = [_gaucs(t, np.ones((1, k))) for t in ts]
    draws: dict[str, list[np.ndarray]] = defaultdict(list)
    for w in _replicates(k, reps, np.random.default_rng(seed)):
        ma, mc, mo = (_gaucs(t, w) for t in ts)
        for m in HEADROOM:
            draws[m].append(_share(ma[m], mc[m], mo[m]))
    out: dict[str, object] = {"users": k, "events": int(ts[0].n.sum())}
    for m in HEADROOM:
        pa, pc, po = (float(p[m][0]) for p in point)
        out[m] = {**_summ(float(_share(*(p[m] for p in point))[0]),
                          np.concatenate(draws[m]) if draws[m] else np.zeros(0)),
                  "arm": _f(pa), "cloud": _f(pc), "oracle": _f(po), "headroom": _f(po - pc)}
    return out


def _share(a: np.ndarray, c: np.ndarray, o: np.ndarray) -> np.ndarray:
    """(a − c) / (o − c); NaN where there is no headroom to share."""
    den = o - c
    return np.where(den != 0, (a - c) / np.where(den != 0, den, 1), np.nan)


# --------------------------------------------------------------------------- across seeds, days
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz), x < (a + 1) / (a + b + 2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t distribution function with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile by bisection on `t_cdf` (exact to ~1e-12; scipy is not a dependency)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and 95% t-interval over seeds (None when fewer than two)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "n": 0}
    if v.size == 1:
        return {"mean": float(v[0]), "lo": None, "hi": None, "sd": None, "n": 1}
    half = t_quantile(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half),
            "sd": float(v.std(ddof=1)), "n": int(v.size)}


def point_metrics(us: Sequence[Unit]) -> dict[str, float | None]:
    t = table(us)
    return {m: _f(float(v[0])) for m, v in metrics(t, np.ones((1, len(t.users)))).items()}


def per_seed(us: Sequence[Unit], seeds: Sequence[int]) -> dict[str, dict[str, list[float | None]]]:
    """arm → metric → value per seed (each seed alone is a bucket test on disjoint users)."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for arm in ARMS:
        vals = [point_metrics([u for u in us if u.arm == arm and u.seed == s]) for s in seeds]
        out[arm] = {m: [v[m] for v in vals] for m in (*OFFLINE, *ONLINE)}
    return out


def _grid(us: Sequence[Unit], users: Sequence[str], days: int, accumulate: bool) -> dict[str, np.ndarray]:
    """Per user (rows, aligned to `users`) and live day (columns): Σ n·AUC, Σ n, top-n clicks and shown.

    Per day, or with `accumulate` over every event up to that day (AUC then ranks the whole span).
    """
    pos = {u: i for i, u in enumerate(users)}
    g = {k: np.zeros((len(users), days)) for k in ("num", "den", "clicks", "shown", "events")}
    for u in us:
        i = pos.get(u.user)
        if i is None:
            continue
        num, den = np.zeros(days), np.zeros(days)
        for day in sorted(d for d in u.by_day if 0 <= d < days):
            if accumulate:  # until the next active day the span (and its AUC) stays as it is
                mask = u.days <= day
                a = auc(u.labels[mask], u.scores[mask])
                num[day:], den[day:] = (a * int(mask.sum()), int(mask.sum())) if a is not None else (0.0, 0)
            else:
                num[day], den[day] = u.day_aucs.get(day, (0.0, 0))
            c, shown, _ = u.by_day[day]
            g["clicks"][i, day] += c
            g["shown"][i, day] += shown
            g["events"][i, day] += int((u.days == day).sum())
        g["num"][i] += num
        g["den"][i] += den
    if accumulate:
        for key in ("clicks", "shown", "events"):
            g[key] = np.cumsum(g[key], axis=1)
    return g


def _window(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing sums over `window` days along the columns."""
    c = np.cumsum(x, axis=1)
    out = c.copy()
    out[:, window:] -= c[:, :-window]
    return out


def _bands(point: np.ndarray, reps: list[np.ndarray]) -> dict[str, list[float | None]]:
    """Per column: the estimate and its 95% bootstrap interval."""
    r = np.concatenate(reps) if reps else np.zeros((0, point.size))
    cols = [_summ(float(point[d]), r[:, d]) for d in range(point.size)]
    return {k: [c[k] for c in cols] for k in ("value", "lo", "hi")}


def _day_rates(g: Mapping[str, np.ndarray], w: np.ndarray) -> dict[str, np.ndarray]:
    return {"ctr_top": _ratio(w @ g["clicks"], w @ g["shown"]), "gauc": _ratio(w @ g["num"], w @ g["den"])}


def day_series(us: Sequence[Unit], days: int, arms: Sequence[str], reps: int, window: int = 1,
               seed: int = 0) -> dict[str, dict[str, Any]]:
    """arm → per live day over the trailing `window` days: top-n click rate and GAUC per user-day, each with
    a bootstrap band over the arm's users, and the events scored that day."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        mine = [u for u in us if u.arm == arm]
        users = sorted({u.user for u in mine})
        raw = _grid(mine, users, days, False)
        g = {k: _window(v, window) for k, v in raw.items()}
        point = _day_rates(g, np.ones((1, len(users))))
        draws: dict[str, list[np.ndarray]] = defaultdict(list)
        for w in _replicates(len(users), reps, np.random.default_rng(seed)):
            for m, v in _day_rates(g, w).items():
                draws[m].append(v)
        out[arm] = {"events": [int(x) for x in raw["events"].sum(axis=0)],
                    **{m: _bands(point[m][0], draws[m]) for m in point}}
    return out


def accumulated_lift(a: Sequence[Unit], b: Sequence[Unit], days: int, reps: int,
                     seed: int = 0) -> dict[str, dict[str, list[float | None]]]:
    """Paired users only: lift of a over b in top-n click rate (relative) and GAUC (difference), over the
    events from day 0 to each day, with a paired bootstrap band (same user draw for both arms)."""
    users = sorted({u.user for u in a} & {u.user for u in b})
    ga, gb = _grid(a, users, days, True), _grid(b, users, days, True)

    def lift(w: np.ndarray) -> dict[str, np.ndarray]:
        ra, rb = _day_rates(ga, w), _day_rates(gb, w)
        return {m: _lift(m, ra[m], rb[m]) for m in ra}

    point = lift(np.ones((1, len(users))))
    draws: dict[str, list[np.ndarray]] = defaultdict(list)
    for w in _replicates(len(users), reps, np.random.default_rng(seed)):
        for m, v in lift(w).items():
            draws[m].append(v)
    return {m: _bands(point[m][0], draws[m]) for m in point}
