"""Synthetic icon-click events shaped like the paper's task: latent user groups, tunable heterogeneity."""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.sample import DAY
from ops.datasets import Dataset, device_id_for

__all__ = [
    "ANIMATIONS",
    "CATEGORIES",
    "N_ICONS",
    "PROFILE_FIELDS",
    "SyntheticParams",
    "generate",
    "item_catalogue",
]

logger = logging.getLogger(__name__)

NAME = "synthetic"
# Paper, Table 2: the target is one of 10 icons shown with an animation type.
N_ICONS = 10
ANIMATIONS = ("static", "blink", "bounce", "glow")
CATEGORIES = ("game", "shop", "video", "social", "tool")  # coarse: icon i belongs to CATEGORIES[i % 5]
PROFILE_FIELDS: dict[str, tuple[str, ...]] = {
    "age": ("<18", "18-24", "25-34", "35-49", "50+"),
    "gender": ("F", "M"),
    "city_tier": ("1", "2", "3", "4"),
    "phone": ("low", "mid", "high"),
}
DEFAULT_START_TS = 1_699_920_000  # 2023-11-14 00:00 UTC: day boundaries fall on midnight
WEIGHT_SCALE = 1.0  # std of global/group tag weights; an item's affinity sums 3 of them
GROUP_BIAS_SCALE = 0.8  # std (logit) of a group's overall click propensity


@dataclass(frozen=True)
class SyntheticParams:
    """Every knob of the generator; recorded in `Dataset.meta["params"]`."""

    n_users: int = 1000
    n_groups: int = 8
    heterogeneity: float = 0.7  # 0: everyone follows the global preference; 1: only the group's
    events_per_user: tuple[int, int] = (10, 40)  # inclusive range, uniform
    days: int = 14
    start_ts: int = DEFAULT_START_TS
    seed: int = 0
    personal_scale: float = 0.3  # std of each user's own deviation from the group/global mix
    exposure_bias: float = 0.5  # 0: icons shown uniformly; 1: shown in proportion to softmax(affinity)
    profile_noise: float = 0.3  # chance a profile field is uniform noise instead of the group's mode
    ctr: float = 0.2  # expected overall click rate; the logit intercept is solved for it
    activity: tuple[float, float] = (1.5, 3.0)  # Beta(a, b) share of days a user is active
    page_view_rate: float = 0.0  # page_view events per icon event (label 0), 0 = none
    # days (0-based) on which every group's taste is drawn anew: a model trained before goes stale
    change_days: tuple[int, ...] = ()
    # events on each active day, uniform in [lo, hi]; None: events_per_user spread over the active days
    events_per_day: tuple[int, int] | None = None

    def validate(self) -> None:
        lo, hi = self.events_per_user
        checks = {
            "n_users >= 1": self.n_users >= 1,
            "n_groups >= 1": self.n_groups >= 1,
            "0 <= heterogeneity <= 1": 0.0 <= self.heterogeneity <= 1.0,
            "1 <= events_per_user[0] <= events_per_user[1]": 1 <= lo <= hi,
            "days >= 1": self.days >= 1,
            "0 <= exposure_bias <= 1": 0.0 <= self.exposure_bias <= 1.0,
            "0 <= profile_noise <= 1": 0.0 <= self.profile_noise <= 1.0,
            "0 < ctr < 1": 0.0 < self.ctr < 1.0,
            "personal_scale >= 0": self.personal_scale >= 0.0,
            "activity > 0": min(self.activity) > 0.0,
            "page_view_rate >= 0": self.page_view_rate >= 0.0,
            "0 < change_days < days, increasing": all(0 < d < self.days for d in self.change_days)
            and list(self.change_days) == sorted(set(self.change_days)),
            "1 <= events_per_day[0] <= events_per_day[1]": self.events_per_day is None
            or 1 <= self.events_per_day[0] <= self.events_per_day[1],
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid synthetic parameters: {', '.join(failed)}")


def _tag_names() -> list[str]:
    icons = [f"icon:{i}" for i in range(N_ICONS)]
    return icons + [f"anim:{a}" for a in ANIMATIONS] + [f"cat:{c}" for c in CATEGORIES]


def item_catalogue() -> list[tuple[str, list[str]]]:
    """(item_id, tags) for every icon x animation, in a fixed order."""
    return [
        (f"icon{i}-{a}", [f"icon:{i}", f"anim:{a}", f"cat:{CATEGORIES[i % len(CATEGORIES)]}"])
        for i in range(N_ICONS)
        for a in ANIMATIONS
    ]


def _design(items: list[tuple[str, list[str]]]) -> np.ndarray:
    """Item x feature multi-hot; the last column is a constant so weights carry a bias."""
    tags = _tag_names()
    col = {t: n for n, t in enumerate(tags)}
    x = np.zeros((len(items), len(tags) + 1))
    for row, (_, item_tags) in enumerate(items):
        x[row, [col[t] for t in item_tags]] = 1.0
    x[:, -1] = 1.0
    return x


def _centre(w: np.ndarray) -> np.ndarray:
    """Zero-mean each tag block (icons, animations, categories): the average item is neutral for
    everyone, so tastes differ in *which* icons they like; overall propensity sits in the bias."""
    w = w.copy()
    start = 0
    for size in (N_ICONS, len(ANIMATIONS), len(CATEGORIES)):
        block = w[:, start : start + size]
        block -= block.mean(axis=1, keepdims=True)
        start += size
    return w


def _group_weights(p: SyntheticParams, n_features: int, rng: np.random.Generator) -> np.ndarray:
    group_w = _centre(rng.normal(0.0, WEIGHT_SCALE, (p.n_groups, n_features)))
    bias = rng.normal(0.0, GROUP_BIAS_SCALE, p.n_groups)
    group_w[:, -1] = bias - bias.mean() if p.n_groups > 1 else 0.0
    return group_w


def _preferences(
    p: SyntheticParams, groups: np.ndarray, n_features: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Global, group and user weight vectors (features + bias); "user" is [phase, user, feature].

    Phase k runs from change_days[k-1] to change_days[k]: each change draws every group's taste
    anew, while the global taste and each user's own deviation stay.
    """
    global_w = _centre(rng.normal(0.0, WEIGHT_SCALE, (1, n_features)))[0]
    global_w[-1] = 0.0  # the overall level is calibrated to `ctr`
    group_w = _group_weights(p, n_features, rng)
    later = [_group_weights(p, n_features, np.random.default_rng([p.seed, 5, k])) for k in range(len(p.change_days))]
    phases = np.stack([group_w, *later])  # the first phase draws from `rng`: stable without changes
    # sqrt weights keep the total preference variance fixed, so the knob moves *where* taste
    # comes from (global vs group) without making everyone more or less decisive.
    h = p.heterogeneity
    user_rng = np.random.default_rng([p.seed, 1])
    personal = user_rng.normal(0.0, p.personal_scale, (p.n_users, n_features))
    user_w = math.sqrt(1.0 - h) * global_w + math.sqrt(h) * phases[:, groups] + personal
    return {"global": global_w, "group": group_w, "phases": phases, "user": user_w}


def _profiles(p: SyntheticParams, groups: np.ndarray, rng: np.random.Generator) -> list[dict[str, str]]:
    """Profile fields follow the group's modal value, replaced by uniform noise at `profile_noise`."""
    user_rng = np.random.default_rng([p.seed, 2])
    columns: dict[str, list[str]] = {}
    for field, values in PROFILE_FIELDS.items():
        modes = rng.integers(len(values), size=p.n_groups)
        noisy = user_rng.random(p.n_users) < p.profile_noise
        picks = np.where(noisy, user_rng.integers(len(values), size=p.n_users), modes[groups])
        columns[field] = [values[v] for v in picks.tolist()]
    return [{f: columns[f][u] for f in PROFILE_FIELDS} for u in range(p.n_users)]


def _schedule(p: SyntheticParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per event: user index and ts; per user: number of active days. Users are active on a few days."""
    if p.events_per_day is not None:
        return _daily_schedule(p, rng)
    lo, hi = p.events_per_user
    counts = rng.integers(lo, hi + 1, size=p.n_users)
    share = rng.beta(*p.activity, size=p.n_users)
    active = np.clip(rng.binomial(p.days, share), 1, np.minimum(p.days, counts))
    day_parts: list[np.ndarray] = []
    for n, k in zip(counts.tolist(), active.tolist(), strict=True):
        chosen = rng.choice(p.days, size=k, replace=False)
        per_day = 1 + rng.multinomial(n - k, np.full(k, 1.0 / k))  # every active day gets one
        day_parts.append(np.repeat(chosen, per_day))
    return _timestamps(p, counts, np.concatenate(day_parts), active, rng)


def _daily_schedule(p: SyntheticParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each day a user is active with their own Beta(activity) chance, with events_per_day events."""
    assert p.events_per_day is not None
    lo, hi = p.events_per_day
    share = rng.beta(*p.activity, size=p.n_users)
    on = rng.random((p.n_users, p.days)) < share[:, None]
    on[np.arange(p.n_users), rng.integers(p.days, size=p.n_users)] = True  # everyone appears once
    per_day = np.where(on, rng.integers(lo, hi + 1, size=on.shape), 0)
    counts = per_day.sum(axis=1)
    day = np.concatenate([np.repeat(np.arange(p.days), row) for row in per_day])
    return _timestamps(p, counts, day, on.sum(axis=1), rng)


def _timestamps(p: SyntheticParams, counts: np.ndarray, day: np.ndarray, active: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per event: user index and ts (users in order, each user's events in day order)."""
    user = np.repeat(np.arange(p.n_users), counts)
    # Seconds stop short of midnight so _unique_ts's +1 nudges never spill into the next day.
    ts = p.start_ts + day.astype(np.int64) * DAY + rng.integers(0, DAY - 60, size=user.size)
    return user, _unique_ts(user, ts), active


def _unique_ts(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Nudge same-second events of one user apart, so (user, ts) identifies an event."""
    ts = ts.copy()
    while True:
        order = np.lexsort((ts, user))
        dup = (user[order][1:] == user[order][:-1]) & (ts[order][1:] == ts[order][:-1])
        if not dup.any():
            return ts
        ts[order[1:][dup]] += 1


def _sample_items(probs: np.ndarray, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per event from its user's exposure distribution (inverse-CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(user.size)[:, None] * cdf[user, -1:]
    picks: np.ndarray = np.minimum((cdf[user] < u).sum(axis=1), probs.shape[1] - 1)
    return picks


def _phased_items(p: SyntheticParams, affinity: np.ndarray, user: np.ndarray, phase: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Items under each event's own phase of taste (exposure follows the taste of the day)."""
    probs = (1.0 - p.exposure_bias) / affinity.shape[2] + p.exposure_bias * _softmax(
        affinity.reshape(-1, affinity.shape[2]))
    return _sample_items(probs, phase * p.n_users + user, rng)


def _intercept(affinity: np.ndarray, exposure: np.ndarray, counts: np.ndarray, ctr: float) -> float:
    """Logit intercept whose expected click rate over everyone's exposure equals `ctr` (bisection):
    exposure follows taste, so a fixed intercept would give a level that depends on the draw."""
    weight = exposure * counts[:, None] / counts.sum()
    lo, hi = -20.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        rate = float((weight / (1.0 + np.exp(-(mid + affinity)))).sum())
        lo, hi = (mid, hi) if rate < ctr else (lo, mid)
    return (lo + hi) / 2


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probs


def _page_views(p: SyntheticParams, user: np.ndarray, ts: np.ndarray, cat_affinity: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Browsing events (label 0) near the user's icon events, on categories the user likes."""
    n = rng.poisson(p.page_view_rate * user.size)
    anchor = rng.integers(0, user.size, size=n)
    pv_user = user[anchor]
    day_start = ts[anchor] - (ts[anchor] - p.start_ts) % DAY
    pv_ts = np.maximum(ts[anchor] - rng.integers(1, 600, size=n), day_start)  # shortly before, same day
    pv_cat = _sample_items(_softmax(cat_affinity), pv_user, rng)
    return pv_user, pv_ts, pv_cat


def generate(**options: Any) -> Dataset:
    """Generate the dataset; `options` are SyntheticParams fields (events_per_user may be an int)."""
    started = time.perf_counter()
    if isinstance(options.get("events_per_user"), numbers.Integral):
        options["events_per_user"] = (int(options["events_per_user"]),) * 2
    for key in ("events_per_user", "activity"):
        if key in options:
            options[key] = tuple(options[key])
    p = SyntheticParams(**options)
    p.validate()

    rng = np.random.default_rng([p.seed, 0])  # structure: same groups' tastes for any n_users
    items = item_catalogue()
    x = _design(items)
    groups = np.random.default_rng([p.seed, 3]).permutation(p.n_users) % p.n_groups  # balanced
    prefs = _preferences(p, groups, x.shape[1], rng)
    profiles = _profiles(p, groups, rng)

    ev_rng = np.random.default_rng([p.seed, 4])
    affinity = prefs["user"] @ x.T  # phases x users x items, logit minus the intercept
    exposure = (1.0 - p.exposure_bias) / len(items) + p.exposure_bias * _softmax(affinity[0])
    user, ts, active = _schedule(p, ev_rng)
    phase = np.searchsorted(np.asarray(p.change_days, dtype=np.int64), (ts - p.start_ts) // DAY, side="right")
    item = _sample_items(exposure, user, ev_rng) if not p.change_days else _phased_items(p, affinity, user, phase,
                                                                                          ev_rng)
    base = _intercept(affinity[0], exposure, np.bincount(user, minlength=p.n_users), p.ctr)
    click_p = 1.0 / (1.0 + np.exp(-(base + affinity[phase, user, item])))
    label = (ev_rng.random(user.size) < click_p).astype(np.int64)
    before_p = 1.0 / (1.0 + np.exp(-(base + affinity[np.maximum(phase - 1, 0), user, item])))

    pages = None
    if p.page_view_rate > 0:
        cat_cols = slice(N_ICONS + len(ANIMATIONS), N_ICONS + len(ANIMATIONS) + len(CATEGORIES))
        pages = _page_views(p, user, ts, prefs["user"][0][:, cat_cols], ev_rng)

    width = max(5, len(str(p.n_users - 1)))
    user_ids = [f"u{u:0{width}d}" for u in range(p.n_users)]  # zero-padded: string order = numeric
    events = _build_events(user_ids, profiles, items, user, ts, item, label, pages)
    meta = _meta(p, items, prefs, x, events, active, base)
    # the generator's truth per icon event, keyed (user_id, ts): the click probability it drew the
    # label from, and the one the taste before the event's last change would have given
    meta["truth"] = {(user_ids[u], t): (float(pt), float(pb)) for u, t, pt, pb in
                     zip(user.tolist(), ts.tolist(), click_p.tolist(), before_p.tolist(), strict=True)}  # fmt: skip
    logger.info("generated %d synthetic events for %d users in %.2fs", len(events), p.n_users,
                time.perf_counter() - started)  # fmt: skip
    return Dataset(
        name=NAME, events=events, groups=dict(zip(user_ids, groups.tolist(), strict=True)), meta=meta
    )


def _build_events(
    user_ids: list[str],
    profiles: list[dict[str, str]],
    items: list[tuple[str, list[str]]],
    user: np.ndarray,
    ts: np.ndarray,
    item: np.ndarray,
    label: np.ndarray,
    pages: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> list[dict[str, Any]]:
    devices = [device_id_for(u) for u in user_ids]
    rows = [(t, user_ids[u], u, items[i][0], i, lab) for u, t, i, lab in
            zip(user.tolist(), ts.tolist(), item.tolist(), label.tolist(), strict=True)]  # fmt: skip
    if pages is not None:
        rows += [(t, user_ids[u], u, f"page:{CATEGORIES[c]}", -1 - c, -1) for u, t, c in
                 zip(*(a.tolist() for a in pages), strict=True)]  # fmt: skip
    rows.sort()  # (ts, user_id, user index, item_id): the documented event order
    events: list[dict[str, Any]] = []
    for t, uid, u, iid, i, lab in rows:
        if lab < 0:  # page view: browsing, never a click
            tags, action, lab = [f"cat:{CATEGORIES[-1 - i]}"], "page_view", 0
        else:
            tags, action = list(items[i][1]), ("click" if lab else "impression")
        events.append({
            "user_id": uid, "device_id": devices[u], "ts": t, "item_id": iid, "item_tags": tags,
            "action": action, "label": lab, "profile": dict(profiles[u]),
        })  # fmt: skip
    return events


def _meta(
    p: SyntheticParams,
    items: list[tuple[str, list[str]]],
    prefs: dict[str, np.ndarray],
    x: np.ndarray,
    events: list[dict[str, Any]],
    active: np.ndarray,
    base: float,
) -> dict[str, Any]:
    global_ctr = 1.0 / (1.0 + np.exp(-(base + x @ prefs["global"])))
    icon_events = [e for e in events if e["action"] != "page_view"]
    return {
        "params": asdict(p),
        "features": [*_tag_names(), "bias"],
        "intercept": round(base, 4),
        "global_weights": prefs["global"].round(4).tolist(),
        "group_weights": prefs["group"].round(4).tolist(),
        # Business statistics of the paper's Table 2: each icon's click rate under the global taste.
        "items": {
            iid: {"tags": tags, "global_ctr": round(float(c), 4)}
            for (iid, tags), c in zip(items, global_ctr, strict=True)
        },
        "n_events": len(events),
        "n_icon_events": len(icon_events),
        "click_rate": sum(e["label"] for e in icon_events) / max(1, len(icon_events)),
        "active_days_mean": float(active.mean()),
    }
