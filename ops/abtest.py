"""A/B analysis of progressive-validation rows: per-arm metrics, paired lifts, bootstrap CIs, day series."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.arms import ARMS
from core.metrics import LOGLOSS_EPS, auc
from ops.experiment import EvalRow

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


def _day_auc(labels: np.ndarray, scores: np.ndarray, days: np.ndarray) -> tuple[float, int]:
    """Per-day AUC of one user, impression-weighted: within a day one model scored every event."""
    num, den = 0.0, 0
    for day in np.unique(days):
        mask = days == day
        a = auc(labels[mask], scores[mask])
        if a is not None:
            num += a * int(mask.sum())
            den += int(mask.sum())
    return num, den


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
        out.append(Unit(seed, arm, user, y, p, d, auc(y, p), _day_auc(y, p, d), loss, clicks, shown, len(by_day),
                        sum(k for _, _, k in by_day.values()), by_day))
    return out


# --------------------------------------------------------------------------- metrics on a set of units
def _weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each weight row (bootstrap replicates) over the same events; ties count one half."""
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * (1 - y), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
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
    labels: np.ndarray  # every event, with its user's position in `users`
    scores: np.ndarray
    owner: np.ndarray


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
    return Table(users, **cols, labels=cat(labels), scores=cat(scores), owner=cat(owner).astype(int))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def metrics(t: Table, w: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric under user weights `w` (rows: replicates; a row of ones is the estimate)."""
    out = {
        "gauc": _ratio(w @ t.gauc_num, w @ t.gauc_den),
        "gauc_user_day": _ratio(w @ t.gud_num, w @ t.gud_den),
        "logloss": _ratio(w @ t.loss, w @ t.n),
        "ctr_top": _ratio(w @ t.clicks, w @ t.shown),
        "clicks_per_user_day": _ratio(w @ t.clicks, w @ t.user_days),
        "share_clicking": _ratio(w @ t.click_days, w @ t.user_days),
    }
    out["auc"] = (_weighted_auc(t.labels, t.scores, w[:, t.owner]) if t.labels.size
                  else np.full(w.shape[0], np.nan))
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
    return a / b - 1.0 if metric in ONLINE else a - b


# --------------------------------------------------------------------------- across seeds, days
def t_interval(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and 95% t-interval over seeds (None when fewer than two)."""
    from math import sqrt

    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "n": 0}
    if v.size == 1:
        return {"mean": float(v[0]), "lo": None, "hi": None, "sd": None, "n": 1}
    t975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
    half = t975.get(int(v.size), 1.96) * v.std(ddof=1) / sqrt(v.size)
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


def day_series(us: Sequence[Unit], days: int) -> dict[str, dict[str, list[float | None]]]:
    """arm → per live day: click rate of the top-n, GAUC of that day's users, events."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for arm in ARMS:
        mine = [u for u in us if u.arm == arm]
        ctr, gauc_d, events = [], [], []
        for day in range(days):
            c = s = 0
            num = den = 0.0
            n_ev = 0
            for u in mine:
                if day in u.by_day:
                    c += u.by_day[day][0]
                    s += u.by_day[day][1]
                    mask = u.days == day
                    n_ev += int(mask.sum())
                    a = auc(u.labels[mask], u.scores[mask])
                    if a is not None:
                        num += a * mask.sum()
                        den += mask.sum()
            ctr.append(c / s if s else None)
            gauc_d.append(num / den if den else None)
            events.append(n_ev)
        out[arm] = {"ctr_top": ctr, "gauc": gauc_d, "events": events}
    return out


def accumulated_lift(a: Sequence[Unit], b: Sequence[Unit], days: int) -> dict[str, list[float | None]]:
    """Paired users only: lift of a over b in top-n click rate and GAUC, accumulated from day 0 to each day."""
    common = {u.user for u in a} & {u.user for u in b}
    out: dict[str, list[float | None]] = {"ctr_top": [], "gauc": []}
    for day in range(days):
        vals = []
        for units_ in (a, b):
            mine = [u for u in units_ if u.user in common]
            c = sum(v[0] for u in mine for d, v in u.by_day.items() if d <= day)
            s = sum(v[1] for u in mine for d, v in u.by_day.items() if d <= day)
            num = den = 0.0
            for u in mine:
                mask = u.days <= day
                x = auc(u.labels[mask], u.scores[mask]) if mask.any() else None
                if x is not None:
                    num += x * mask.sum()
                    den += mask.sum()
            vals.append((c / s if s else None, num / den if den else None))
        (ca, ga), (cb, gb) = vals
        out["ctr_top"].append(ca / cb - 1 if ca is not None and cb else None)
        out["gauc"].append(ga - gb if ga is not None and gb is not None else None)
    return out
