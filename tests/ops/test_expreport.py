"""Tests for the experiment report (ops/experiment/results.py, report.py and what they use): analyse() end to end on synthetic rows, the funnel, the report and its figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.arms import ARMS
from ops.experiment import report
from ops.experiment.results import SeedLogs, agreement, analyse, neighbour_agreement
from ops.experiment.runner import EvalRow, Params, Split, pseudonyms
from ops.replay.publish import DAY, plan_days

KEY = "test-key"
USERS = [f"u{i:02d}" for i in range(30)]
GROUPS = {u: i % 3 for i, u in enumerate(USERS)}
HISTORY_DAYS, LIVE_DAYS, PER_DAY = 2, 6, 8
# how well each arm / reference ranks a user's events (a signal-to-noise scale)
QUALITY = {"cloud": 0.3, "local": 0.4, "coda": 0.8, "coda_nofilter": 0.5, "coda_random": 0.45,
           "oracle": 2.0, "own_future": 0.6, "group_oracle": 1.4}


def _events() -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for u in USERS:
        for day in range(HISTORY_DAYS + LIVE_DAYS):
            for k in range(PER_DAY):
                label = int(rng.random() < 0.35)
                out.append({"user_id": u, "device_id": f"dev-{u}", "ts": day * DAY + 60 * k,
                            "item_id": f"i{GROUPS[u]}-{rng.integers(12)}", "item_tags": ["t"],
                            "action": "click" if label else "impression", "label": label})
    return sorted(out, key=lambda e: (e["ts"], e["user_id"], e["item_id"]))


def _split(groups: dict[str, int] | None) -> Split:
    events = _events()
    plans = plan_days(events)
    return Split("fixture", events, groups, HISTORY_DAYS, plans[:HISTORY_DAYS], plans[HISTORY_DAYS:])


def _rows(split: Split, seeds: tuple[int, ...], references: tuple[str, ...]) -> list[EvalRow]:
    """Each seed rotates users through the arms; references score every user once (seed −1)."""
    rng = np.random.default_rng(1)
    live = [e for e in split.events if e["ts"] // DAY >= split.cut_day]
    out = []
    for seed, arm_of in [*((s, lambda i, s=s: ARMS[(i + s) % len(ARMS)]) for s in seeds),
                         *((-1, lambda i, r=r: r) for r in references)]:
        for e in live:
            arm = arm_of(USERS.index(e["user_id"]))
            signal = QUALITY[arm] * (2 * e["label"] - 1) + rng.normal()
            out.append(EvalRow(seed, arm, e["user_id"], e["ts"] // DAY - split.cut_day, e["ts"], e["label"],
                               1 / (1 + math.exp(-signal)), f"{e['user_id']}-{e['ts']}"))
    return out


def _logs(seeds: tuple[int, ...]) -> list[SeedLogs]:
    """Neighbours mostly from the user's own group; coda keeps own-group samples, coda_random any."""
    pseud = {u: p for p, u in pseudonyms(KEY, USERS).items()}
    out = []
    for s in seeds:
        arms = {f"dev-{u}": ARMS[(i + s) % len(ARMS)] for i, u in enumerate(USERS)}
        lg = SeedLogs(s, arms, {f"dev-{u}": u for u in USERS}, {}, [],
                      schedule={"local": "day end of an active day", "coda": "on notice or day end"})
        for i, u in enumerate(USERS):
            dev, arm = f"dev-{u}", arms[f"dev-{u}"]
            mates = [v for v in USERS if v != u and GROUPS[v] == GROUPS[u]][:4] + [USERS[(i + 1) % 30]]
            lg.neighbours.append((pseud[u], [pseud[v] for v in mates]))
            lg.trains[dev] = 2 if arm != "cloud" else 0
            lg.steps[dev] = (3, 10) if arm != "cloud" else (0, 0)
            if arm != "cloud":
                lg.model_change[dev] = 0.01 * (i % 4)
                lg.valid[dev] = [(0.6, 0.65)]
            if arm.startswith("coda"):
                ids = [f"{dev}-s{k}" for k in range(len(mates))]
                lg.batches.append((dev, pseud[u], ids, [pseud[v] for v in mates]))
                keep = ids[:4] if arm == "coda" else ids[1:]
                lg.kept[dev] = [x[:12] for x in keep]
        out.append(lg)
    return out


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    seeds = (0, 1, 2)
    split = _split(GROUPS)
    params = Params(dataset="synthetic", seeds=seeds, k=5, bootstrap=60, top_n=1)
    return analyse(_rows(split, seeds, ("oracle", "own_future", "group_oracle")), split, params,
                             _logs(seeds), KEY)


def test_analyse_covers_arms_references_and_the_issue_comparisons(results: dict[str, Any]) -> None:
    """Arm tables and lifts include the references; per-seed analyses ignore them."""
    names = [*ARMS, "oracle", "own_future", "group_oracle"]
    assert list(results["arms"]) == names
    assert results["references"] == ["oracle", "own_future", "group_oracle"]
    expected = {f"{n}_vs_cloud" for n in names if n != "cloud"} | {
        "coda_vs_local", "coda_vs_coda_random", "coda_vs_coda_nofilter"}
    assert set(results["lifts"]) == expected == set(results["lifts_after_first_day"])
    assert results["lifts"]["oracle_vs_cloud"]["users"] == 18  # in cloud in one of the three seeds
    assert set(results["per_seed"]) == set(ARMS)
    assert all(n in {*ARMS} for pair in results["per_seed_lifts"] for n in pair.split("_vs_"))
    assert results["lifts"]["oracle_vs_cloud"]["gauc"]["lo"] > 0


def test_headroom_uses_the_oracle_and_orders_the_arms(results: dict[str, Any]) -> None:
    hr = results["headroom"]
    assert hr["reference"] == "oracle" and "oracle" in hr["label"]
    assert set(hr["shares"]) == {"coda", "local", "coda_nofilter", "coda_random", "own_future", "group_oracle"}
    coda = hr["shares"]["coda"]["gauc"]
    assert 0 < coda["lo"] <= coda["value"] <= coda["hi"] < 1
    assert hr["shares"]["group_oracle"]["gauc"]["value"] > coda["value"]
    assert set(hr["shares"]["coda"]) >= {"users", "gauc", "gauc_user_day"}


def test_headroom_falls_back_to_own_future_without_an_oracle() -> None:
    seeds = (0, 1)
    split = _split(None)
    res = analyse(_rows(split, seeds, ("own_future",)), split,
                            Params(seeds=seeds, k=5, bootstrap=20, top_n=1), _logs(seeds), KEY)
    assert res["headroom"]["reference"] == "own_future" and "not a bound" in res["headroom"]["label"]
    assert "coda" in res["headroom"]["shares"] and "own_future" not in res["headroom"]["shares"]
    # real data: no groups, the funnel reads the neighbours' label agreement instead
    assert "groups" not in res and res["funnel"]["chance"] is None
    row = res["funnel"]["arms"]["coda"]
    assert row["matching_precision"] is None and 0 <= row["neighbour_agreement"] <= 1
    assert 0 <= row["random_agreement"] <= 1


def test_schedules_count_trainings_steps_and_model_change(results: dict[str, Any]) -> None:
    sched = results["schedules"]
    assert set(sched) == set(ARMS)
    assert sched["cloud"]["trainings_per_device"] == 0 and sched["cloud"]["accepted_share"] is None
    local = sched["local"]
    assert local["schedule"] == "day end of an active day" and local["trainings_per_device"] == 2
    assert local["accepted_share"] == 0.3 and local["devices"] == 18
    assert local["model_change_mean"] is not None and 0 < local["changed_share"] < 1
    assert local["valid_after_mean"] == 0.65 and "same local validation samples" in local["valid_note"]


def test_funnel_has_every_stage_per_arm(results: dict[str, Any]) -> None:
    """Synthetic: own-group shares of neighbours (4 of 5 are mates), matched, kept; the random control."""
    f = results["funnel"]
    assert f["chance"] == pytest.approx(9 / 29, abs=1e-4)
    assert list(f["arms"]) == list(ARMS)
    stages = {"matching_precision", "matched_own_group", "kept_own_group", "kept", "neighbour_agreement",
              "random_agreement", "accepted_share", "model_change_mean", "lift_vs_cloud", "headroom_share"}
    assert all(set(row) == stages for row in f["arms"].values())
    coda = f["arms"]["coda"]
    assert coda["matching_precision"] == coda["matched_own_group"] == 0.8
    assert coda["kept_own_group"] == 1.0 and f["control_kept_own_group"] == 0.75
    assert f["arms"]["cloud"]["lift_vs_cloud"] is None and f["arms"]["cloud"]["kept_own_group"] is None
    assert coda["lift_vs_cloud"]["gauc"]["value"] > 0


def test_series_carry_bands(results: dict[str, Any]) -> None:
    series = results["series"]
    assert series["window"] == 1 and set(series["per_arm"]) == set(results["arms"])
    day = series["per_arm"]["coda"]["gauc"]
    assert len(day["value"]) == LIVE_DAYS and all(lo <= v <= hi for v, lo, hi in
                                                  zip(day["value"], day["lo"], day["hi"], strict=True))
    acc = series["accumulated"]["coda_vs_cloud"]["gauc"]
    assert acc["lo"][-1] < acc["value"][-1] < acc["hi"][-1]


def test_write_makes_the_report_the_forest_plot_and_the_targets(results: dict[str, Any], tmp_path: Path) -> None:
    report.write({**results, "elapsed_s": 12.5}, tmp_path)
    for name in ("forest.png", "fig9_daily.png", "fig10_accumulated_lift.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    body = json.loads((tmp_path / "results.json").read_text())
    targets = {t["target"]: t for t in body["targets"]}
    assert len(targets) == 6
    assert targets["the run finishes in ≤ 15 minutes"]["met"] is True
    assert all(t["met"] in (True, False) for t in targets.values())
    coda_vs_local = targets["CoDA − local ≥ +0.02 GAUC, 95 % CI above zero"]
    assert coda_vs_local["met_user_day"] in (True, False) and "per user-day" in coda_vs_local["figure"]
    md = (tmp_path / "report.md").read_text()
    for section in ("## Targets of the known-answer experiment", "## References and headroom",
                    "## Mechanism funnel", "## Schedules", "![forest.png](forest.png)"):
        assert section in md, section
    assert "in-sample" in md and "same local validation samples" in md


def test_agreement_joins_events_by_sample_id() -> None:
    """Two events of a user at one ts are told apart; references count as arms; a wrong score shows."""
    def rows(score_b: float) -> list[EvalRow]:
        return [EvalRow(0, "coda", "u", 0, 100, 1, 0.9, "s-a"), EvalRow(0, "coda", "u", 0, 100, 0, score_b, "s-b"),
                EvalRow(-1, "oracle", "u", 0, 100, 1, 0.7, "s-a")]

    agree = agreement(rows(0.2), rows(0.5))
    assert agree["shared_events"] == 3 and agree["max_score_diff"] == pytest.approx(0.3)
    assert agree["identical_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert set(agree["agreement"]) == {"coda", "oracle"}


def test_a_run_without_references_still_reports(tmp_path: Path) -> None:
    """No reference rows (e.g. an old export): no headroom, targets on it not measurable, figures still drawn."""
    seeds = (0, 1)
    split = _split(GROUPS)
    res = analyse(_rows(split, seeds, ()), split, Params(seeds=seeds, k=5, bootstrap=20, top_n=1),
                            _logs(seeds), KEY)
    assert res["references"] == [] and res["headroom"]["reference"] is None and not res["headroom"]["shares"]
    report.write(res, tmp_path)
    assert (tmp_path / "forest.png").stat().st_size > 0
    targets = json.loads((tmp_path / "results.json").read_text())["targets"]
    assert [t["met"] for t in targets if "headroom" in t["target"]] == [None, None]
    assert "no oracle or own_future rows" in (tmp_path / "report.md").read_text()


def test_neighbour_agreement_counts_shared_items_per_pair() -> None:
    """a's neighbour b shares i1 (same label) and i2 (not): 1 of 2; the last label of a (user, item) stands."""
    events = [{"user_id": u, "item_id": i, "label": y} for u, i, y in
              (("a", "i1", 0), ("a", "i1", 1), ("a", "i2", 0), ("b", "i1", 1), ("b", "i2", 1), ("c", "i1", 0),
               ("c", "i3", 1))]
    pseud = {u: p for p, u in pseudonyms(KEY, ["a", "b", "c"]).items()}
    arms = {"dev-a": "coda", "dev-b": "cloud", "dev-c": "coda_random"}
    lg = SeedLogs(0, arms, {d: d[4:] for d in arms}, {}, [],
                  [(pseud["a"], [pseud["b"]]), (pseud["a"], [pseud["b"]]), (pseud["c"], [pseud["a"]])])
    out = neighbour_agreement([lg], events, KEY)
    assert set(out) == {"coda", "coda_random"}
    assert (out["coda"]["pairs"], out["coda"]["shared_items"], out["coda"]["neighbours"]) == (1, 2, 0.5)
    assert out["coda"]["random"] in (0.5, 0.0)  # b (1 of 2) or c (0 of 1)
    assert (out["coda_random"]["shared_items"], out["coda_random"]["neighbours"]) == (1, 0.0)  # c–a on i1
