"""Tests for ops.abtest: weighted AUC, paired lifts, headroom shares, t-intervals, day series."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from core.metrics import auc
from ops.experiment import abtest
from ops.experiment.runner import EvalRow

# two-sided 95% Student-t quantiles t(0.975, n − 1) from printed tables, for n = 2..30 and 60
T975 = {2: 12.7062, 3: 4.3027, 4: 3.1824, 5: 2.7764, 6: 2.5706, 7: 2.4469, 8: 2.3646, 9: 2.3060, 10: 2.2622,
        11: 2.2281, 12: 2.2010, 13: 2.1788, 14: 2.1604, 15: 2.1448, 16: 2.1314, 17: 2.1199, 18: 2.1098,
        19: 2.1009, 20: 2.0930, 21: 2.0860, 22: 2.0796, 23: 2.0739, 24: 2.0687, 25: 2.0639, 26: 2.0595,
        27: 2.0555, 28: 2.0518, 29: 2.0484, 30: 2.0452, 60: 2.0010}
LABELS = (1, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # 3 clicks, 7 impressions: 21 ranked pairs per user


def _rows(arm: str, scores_by_user: dict[str, list[tuple[int, float]]], seed: int = 0) -> list[EvalRow]:
    """Each user's events alternate between live days 0 and 1."""
    return [EvalRow(seed, arm, u, i % 2, 1000 * (i % 2) + i, label, score, f"{u}-{i}")
            for u, rs in scores_by_user.items() for i, (label, score) in enumerate(rs)]


def _ranked(beaten: tuple[int, int, int]) -> list[tuple[int, float]]:
    """One user's events: positive j scores above exactly beaten[j] of the 7 negatives (AUC = Σ beaten / 21)."""
    negatives = [(0, 0.1 * (k + 1)) for k in range(7)]
    positives = [(1, 0.1 * b + 0.05 + 0.001 * j) for j, b in enumerate(beaten)]
    return positives + negatives


def _users(n: int, better: int, seed: int = 0) -> dict[str, list[tuple[int, float]]]:
    """Users whose rankings differ widely (AUC from ~0.1 to ~0.9); `better` more pairs ranked right each."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        beaten = sorted(rng.integers(0, 6, 3).tolist())
        beaten[0] += better  # 0..5 + better ≤ 7
        out[f"u{i:02d}"] = _ranked(tuple(beaten))
    return out


def test_weighted_auc_matches_auc_and_bootstrap_weights() -> None:
    """Unit weights give the plain AUC exactly; integer user weights equal repeating each user's events."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    p = np.round(rng.random(200), 2)  # ties on purpose, within and across users
    owner = rng.integers(0, 12, 200)
    pairs = abtest.pair_counts(y, p, owner, 12)
    assert abtest.weighted_auc(pairs, np.ones((1, 12)))[0] == auc(y, p)
    w = rng.integers(0, 3, (5, 12)).astype(float)
    for row, got in zip(w, abtest.weighted_auc(pairs, w), strict=True):
        rep = np.repeat(np.arange(200), row[owner].astype(int))
        assert got == auc(y[rep], p[rep])  # exact: every count is an integer or a half
    one_class = abtest.pair_counts(np.ones(4), np.arange(4.0), np.zeros(4, dtype=int), 1)
    assert np.isnan(abtest.weighted_auc(one_class, np.ones((1, 1)))[0])


def _independent_ci_width(a: list[abtest.Unit], b: list[abtest.Unit], reps: int) -> float:
    """What a version that resamples each arm's users on its own would report for ΔGAUC."""
    ta, tb = abtest.table(a), abtest.table(b)
    rng = np.random.default_rng(0)
    draws = [abtest.metrics(ta, wa)["gauc"] - abtest.metrics(tb, wb)["gauc"]
             for wa, wb in zip(abtest._replicates(len(ta.users), reps, rng),  # noqa: SLF001
                               abtest._replicates(len(tb.users), reps, rng), strict=True)]  # noqa: SLF001
    lo, hi = np.percentile(np.concatenate(draws), [2.5, 97.5])
    return float(hi - lo)


def test_paired_lift_bootstraps_users_in_both_arms_together() -> None:
    """Users differ widely, and every user gains exactly one ranked pair (+1/21) in arm a.

    Paired, every replicate sees that gain: the CI collapses onto +1/21. Resampling each arm's
    users independently mixes the spread between users into the lift: the same data gives a CI
    wider than 0.1, which the width assertion below would refuse.
    """
    base = _users(40, 0)
    better = {u: _ranked(_beaten(rs, 1)) for u, rs in base.items()}
    a = abtest.units(_rows("coda", better) + _rows("coda", {"only-in-a": _ranked((6, 6, 6))}), 3)
    b = abtest.units(_rows("cloud", base, seed=1), 3)
    gaucs = [x.auc for x in b]
    assert max(gaucs) - min(gaucs) > 0.5  # users really differ
    lift = abtest.paired_lift(a, b, 200)
    g = lift["gauc"]  # type: ignore[index]
    assert lift["users"] == 40  # the user seen in one arm only is not paired
    assert g["value"] == pytest.approx(1 / 21) and g["lo"] == pytest.approx(1 / 21)
    width = g["hi"] - g["lo"]
    assert width < 0.02
    assert _independent_ci_width(a[:-1], b, 200) > 0.1  # what an unpaired bootstrap reports instead


def test_paired_lift_is_zero_for_identical_arms_and_positive_for_a_better_ranking() -> None:
    """Same scores in both arms → every lift 0; a perfect ranking beats a reversed one."""
    users = _users(8, 0)
    perfect = {u: _ranked((7, 7, 7)) for u in users}
    worse = {u: [(label, 1 - s) for label, s in rs] for u, rs in perfect.items()}
    cloud = abtest.units(_rows("cloud", users, seed=1), 3)
    same = abtest.paired_lift(abtest.units(_rows("coda", users), 3), cloud, 50)
    assert same["users"] == 8 and same["gauc"]["value"] == 0 and same["ctr_top"]["value"] == 0  # type: ignore[index]
    best = abtest.units(_rows("coda", perfect), 3)
    lift = abtest.paired_lift(best, abtest.units(_rows("cloud", worse, seed=1), 3), 50)
    assert lift["gauc"]["value"] == 1.0 and lift["gauc"]["lo"] == 1.0  # type: ignore[index]
    assert abtest.paired_lift(best, cloud, 50)["ctr_top"]["value"] > 0  # type: ignore[index]


def test_headroom_share_is_a_paired_ratio_of_means() -> None:
    """cloud c, oracle c + 4 pairs, arm c + 2 pairs for every user → exactly half, in every replicate;
    a user missing from the oracle is left out of all three."""
    cloud = _users(30, 0, seed=2)
    arm = {u: _ranked(_beaten(rs, 2)) for u, rs in cloud.items()}
    oracle = {u: _ranked(_beaten(rs, 4)) for u, rs in cloud.items() if u != "u00"}
    share = abtest.headroom_share(*(abtest.units(_rows(name, x, s), 3) for name, x, s in
                                    (("coda", arm, 0), ("cloud", cloud, 1), ("oracle", oracle, -1))), 100)
    assert share["users"] == 29
    g, day = share["gauc"], share["gauc_user_day"]  # type: ignore[index]
    assert [g["value"], g["lo"], g["hi"]] == pytest.approx([0.5] * 3)
    assert g["headroom"] == pytest.approx(4 / 21) and g["oracle"] - g["cloud"] == pytest.approx(g["headroom"])
    assert day["lo"] <= day["value"] <= day["hi"]  # the extra pairs may span two days: not exactly a half


def test_headroom_share_ci_covers_the_noisy_truth() -> None:
    """Arm gains vary by user around a third of the headroom: the CI holds the estimate and straddles 1/3."""
    rng = np.random.default_rng(3)
    cloud = _users(60, 0, seed=4)
    arm = {u: _ranked(_beaten(rs, int(rng.integers(0, 3)))) for u, rs in cloud.items()}
    oracle = {u: _ranked(_beaten(rs, 3)) for u, rs in cloud.items()}
    share = abtest.headroom_share(abtest.units(_rows("coda", arm), 3), abtest.units(_rows("cloud", cloud, 1), 3),
                                  abtest.units(_rows("oracle", oracle, -1), 3), 300)["gauc"]  # type: ignore[index]
    assert share["lo"] < share["value"] < share["hi"] and share["lo"] < 1 / 3 < share["hi"]
    assert abtest.headroom_share([], abtest.units(_rows("cloud", cloud), 3), [], 10) == {"users": 0}


def _beaten(events: list[tuple[int, float]], extra: int) -> tuple[int, int, int]:
    """The negatives each positive beats in `_ranked` output, `extra` more spread from the lowest positive."""
    beaten = [int(10 * s) for lab, s in events if lab == 1]  # s = 0.1·beaten + 0.05 + 0.001·j
    for _ in range(extra):
        j = min((k for k in range(3) if beaten[k] < 7), key=lambda k: beaten[k])
        beaten[j] += 1
    return tuple(beaten)  # type: ignore[return-value]


@pytest.mark.parametrize("n", [*range(2, 31), 60])
def test_t_interval_uses_the_exact_t_quantile(n: int) -> None:
    """Half-width = t(0.975, n − 1) · sd / √n for every n (no normal fallback beyond ten seeds)."""
    values = [math.sin(k) for k in range(n)]
    t = abtest.t_interval(values)
    half = (t["hi"] - t["lo"]) / 2  # type: ignore[operator]
    assert half / (t["sd"] / math.sqrt(n)) == pytest.approx(T975[n], abs=6e-5)  # type: ignore[operator]
    assert abtest.t_quantile(0.025, n - 1) == pytest.approx(-T975[n], abs=6e-5)


def test_t_quantile_edges() -> None:
    assert abtest.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)
    assert abtest.t_quantile(0.975, 10_000) == pytest.approx(1.960201, abs=1e-6)
    assert abtest.t_quantile(0.975, 10**9) == pytest.approx(1.959964, abs=1e-6)  # the normal's
    assert abtest.t_cdf(abtest.t_quantile(0.9, 4.5), 4.5) == pytest.approx(0.9, abs=1e-10)
    assert abtest.t_interval([1.0])["lo"] is None and abtest.t_interval([None])["n"] == 0
    with pytest.raises(ValueError):
        abtest.t_quantile(1.0, 3)


def test_after_first_day_drops_each_users_first_live_day() -> None:
    """Only events after a user's first live day remain (the days where arms can differ)."""
    rows = [EvalRow(0, "coda", "u", d, 100 * d + i, i % 2, 0.5) for d in (3, 3, 5, 6) for i in range(2)]
    [unit] = abtest.units(rows, 3, after_first_day=True)
    assert unit.n == 4 and set(unit.days.tolist()) == {5, 6}


def test_day_series_bands_and_accumulated_lift() -> None:
    """Per-day values match a direct computation; bands hold them; a constant gain accumulates as itself."""
    base = _users(20, 0, seed=5)
    better = {u: _ranked(_beaten(rs, 1)) for u, rs in base.items()}
    a, b = abtest.units(_rows("coda", better), 1), abtest.units(_rows("cloud", base, 1), 1)
    series = abtest.day_series(a + b, 2, ("coda", "cloud"), 100)
    by_day: dict[int, list[float]] = defaultdict(list)
    for u in a:
        for day in (0, 1):
            mask = u.days == day
            by_day[day].append(auc(u.labels[mask], u.scores[mask]) or 0.0)  # 5 events a day, both classes
    gauc = series["coda"]["gauc"]
    assert gauc["value"] == pytest.approx([np.mean(by_day[0]), np.mean(by_day[1])])
    assert all(lo <= v <= hi for v, lo, hi in zip(gauc["value"], gauc["lo"], gauc["hi"], strict=True))
    assert series["coda"]["events"] == [100, 100]
    acc = abtest.accumulated_lift(a, b, 2, 100)
    assert acc["gauc"]["value"][-1] == pytest.approx(1 / 21)
    assert acc["gauc"]["lo"][-1] == pytest.approx(1 / 21) == acc["gauc"]["hi"][-1]
