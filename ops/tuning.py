"""Tuning within the method without touching the test events: variants scored on a split of the history only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from core.arms import ARMS
from ops import abtest
from ops.experiment import Params, Split
from ops.offline import run_offline
from streams.settings import Settings

# (name, settings changes): the paper, then fewer personalized parameters. (A smaller learning
# rate is no device-only knob here: `learning_rate` also trains the global model.)
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("paper", {}),
    ("personalize=mlp", {"personalize": "mlp"}),
    ("personalize=head", {"personalize": "head"}),
    ("one_class_gate=skip", {"one_class_gate": "skip"}),
)


def history_split(split: Split, share: float) -> Split:
    """The history days cut again at `share`: a validation experiment that ends before the test starts."""
    days = split.history
    cut = days[0].day + max(1, round((days[-1].day - days[0].day + 1) * share))
    history, live = [p for p in days if p.day < cut], [p for p in days if p.day >= cut]
    if not history or not live:
        raise ValueError("the history is too short to split again for tuning")
    return Split(f"{split.name} (history only)", split.events, split.groups, cut, history, live)


def tune(settings: Settings, split: Split, params: Params, say: Callable[[str], None],
         variants: Sequence[tuple[str, dict[str, Any]]] = VARIANTS) -> dict[str, Any]:
    """Each variant's coda-vs-cloud and coda-vs-local paired lifts on the history-only split (offline engine)."""
    inner = history_split(split, params.history_share)
    out: dict[str, Any] = {"split": {"cut_day": inner.cut_day, "history_days": len(inner.history),
                                     "live_days": len(inner.live)}, "variants": []}
    for name, changes in variants:
        rows = []
        for seed in params.seeds:
            s = params.settings_for(settings, "tune", seed).replace(**changes)
            rows += run_offline(inner, s, seed, params.global_seed).rows
        us = abtest.units(rows, params.top_n)
        by_arm = {arm: [u for u in us if u.arm == arm] for arm in ARMS}
        cell = {"name": name, "changes": changes,
                "arms": {arm: abtest.point_metrics(by_arm[arm]) for arm in ARMS},
                "coda_vs_cloud": abtest.paired_lift(by_arm["coda"], by_arm["cloud"], 200),
                "coda_vs_local": abtest.paired_lift(by_arm["coda"], by_arm["local"], 200)}
        out["variants"].append(cell)
        say(f"tune {name}: ΔGAUC coda−cloud {_v(cell['coda_vs_cloud'], 'gauc')}, "
            f"Δlogloss {_v(cell['coda_vs_cloud'], 'logloss')}")
    return out


def _v(lift: dict[str, Any], metric: str) -> str:
    m = lift.get(metric)
    return "–" if not isinstance(m, dict) or m.get("value") is None else f"{m['value']:+.4f}"


def with_params(params: Params, **changes: Any) -> Params:
    return replace(params, **changes)
