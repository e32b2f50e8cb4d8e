"""The report's figures: forest plot, per-day metric per arm (Figure 9 analogue), accumulated lift (Figure 10)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.arms import REFERENCES


def figures(res: Mapping[str, Any], out: Path) -> list[str]:
    """Forest plot, Figure 9 analogue (per-day metric per arm, with bands) and Figure 10 analogue
    (accumulated lift, with bands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, title = res["series"], res["data"]["dataset"]
    days = list(range(1, series["days"] + 1))
    names = [forest(res, out)]
    window = series.get("window", 1)
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for arm, s in series["per_arm"].items():
        ref = arm in REFERENCES  # dashed, no band: a level to read the arms against
        for ax, metric in zip(axes, ("ctr_top", "gauc"), strict=True):
            _band(ax, days, s[metric], arm, 1.0, band=not ref, ls="--" if ref else "-")
    axes[0].set_ylabel(f"click rate of top-{res['params']['top_n']}")
    axes[1].set_ylabel("GAUC per user-day")
    axes[1].set_xlabel(f"live day ({window}-day trailing window; band: 95% bootstrap over users)")
    axes[0].legend(ncol=4, fontsize=8)
    _save(fig, out / "fig9_daily.png", f"{title}: per-day metrics per arm (Figure 9 analogue)")
    names.append("fig9_daily.png")
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, acc in series["accumulated"].items():
        _band(axes[0], days, acc["ctr_top"], _pair(name), 100.0)
        _band(axes[1], days, acc["gauc"], _pair(name), 1.0)
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("accumulated lift, click rate top-ranked (%)")
    axes[1].set_ylabel("accumulated ΔGAUC")
    axes[1].set_xlabel("live day (band: 95% paired bootstrap over users)")
    axes[0].legend(fontsize=8)
    _save(fig, out / "fig10_accumulated_lift.png",
          f"{title}: accumulated lift over days, paired users (Figure 10 analogue)")
    names.append("fig10_accumulated_lift.png")
    return names


def _band(ax: Any, days: Sequence[int], m: Mapping[str, Sequence[float | None]], label: str, scale: float,
          band: bool = True, ls: str = "-") -> None:
    """A line with its CI band; None (no data that day) leaves a gap."""
    val, lo, hi = (np.array([np.nan if v is None else scale * v for v in m[k]], dtype=float)
                   for k in ("value", "lo", "hi"))
    (line,) = ax.plot(days, val, label=label, lw=1.4, ls=ls)
    if band:
        ax.fill_between(days, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def _save(fig: Any, path: Path, title: str, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def forest(res: Mapping[str, Any], out: Path) -> str:
    """forest.png: every paired lift (ΔGAUC, ΔGAUC per user-day) and headroom share with its 95% CI."""
    import matplotlib.pyplot as plt

    hr = res["headroom"]
    panels = [("paired lift (all live events)", res["lifts"], "difference", 0.0),
              (f"share of the {hr['reference'] or '–'} headroom", hr["shares"], "share", 1.0)]
    rows = max(1, len(res["lifts"]), len(hr["shares"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.42 * rows))
    for ax, (title, items, xlabel, ref) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        labels = list(items)
        if not labels:
            ax.text(0.5, 0.5, "no reference rows", ha="center", transform=ax.transAxes)
            continue
        for j, (metric, marker, shift) in enumerate((("gauc", "o", -0.15), ("gauc_user_day", "s", 0.15))):
            for i, name in enumerate(labels):
                m = items[name].get(metric) if items[name].get("users") else None
                if not m or m.get("value") is None:
                    continue
                lo, hi = m.get("lo"), m.get("hi")
                err = [[m["value"] - lo], [hi - m["value"]]] if lo is not None and hi is not None else None
                ax.errorbar(m["value"], i + shift, xerr=err, fmt=marker, color=f"C{j}", ms=4, capsize=2)
        ax.axvline(0, color="grey", lw=0.8)
        if ref:
            ax.axvline(ref, color="grey", lw=0.8, ls=":")
        ax.set_yticks(range(len(labels)), [_pair(n) for n in labels], fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlabel(xlabel)
    handles = [plt.Line2D([], [], color=f"C{j}", marker=mk, ls="") for j, mk in enumerate("os")]
    fig.legend(handles, ["GAUC", "GAUC per user-day"], loc="lower center", ncol=2, fontsize=8)
    fig.subplots_adjust(bottom=0.1)
    _save(fig, out / "forest.png", f"{res['data']['dataset']}: lifts and headroom shares (95% CI)",
          rect=(0, 0.06, 1, 1))
    return "forest.png"


def _pair(name: str) -> str:
    return name.replace("_vs_", " − ")
